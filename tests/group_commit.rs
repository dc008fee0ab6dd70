//! Group commit in the route loop, in process: an event is acknowledged only after a flush
//! that covers its record; an adapter's answer (`Delivered`) makes no flush of its own but
//! rides on the next inbound batch's, and when no inbound batch comes it is still flushed
//! (within `MARKS_WITHIN`) without anything else happening.

#[path = "support/loop_rig.rs"]
mod loop_rig;

use junction_core::{
    Event, EventKind, Inbound, MessageId, NetworkId, NetworkStatus, RoomRef, Sender, UserRef,
};
use junction_store::{Call, Faulty, Store};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The calls the loop makes that matter here, in order.
type Log = Arc<Mutex<Vec<String>>>;

/// A store that lets everything through and logs inbound records, answers and flushes.
fn logging() -> (Arc<Faulty>, Log) {
    let log: Log = Arc::default();
    let seen = log.clone();
    let store = Faulty::new(move |call| {
        let entry = match call {
            Call::RecordInbound(e) => format!("inbound {}", e.remote_id.as_str()),
            Call::Method(m @ ("flush" | "record_delivered")) => m.to_owned(),
            Call::Method(_) => return None,
        };
        seen.lock().expect("log").push(entry);
        None
    });
    (Arc::new(store), log)
}

fn calls(log: &Log) -> Vec<String> {
    log.lock().expect("log").clone()
}

fn message(remote: &str) -> Event {
    Event::new(
        RoomRef::new("xmpp", loop_rig::MUC),
        MessageId::new(remote),
        Sender::new(UserRef::new("xmpp", "alice@xmpp.test"), "alice"),
        junction_core::clock::now_ms(),
        EventKind::Message(junction_core::Message {
            body: junction_core::RichText::plain(format!("text of {remote}")),
            ..Default::default()
        }),
    )
}

/// Says `remote` on XMPP (the ack is not awaited).
fn say(rig: &loop_rig::LoopRig, remote: &str) -> anyhow::Result<AckRx> {
    let (inb, ack) = Inbound::with_ack(message(remote));
    rig.xmpp
        .inbound
        .try_send(inb)
        .map_err(|_| anyhow::anyhow!("loop gone"))?;
    Ok(ack)
}

type AckRx = tokio::sync::oneshot::Receiver<Result<(), String>>;

async fn acked(ack: AckRx) -> anyhow::Result<()> {
    tokio::time::timeout(Duration::from_secs(30), ack)
        .await?
        .map_err(|_| anyhow::anyhow!("ack dropped"))?
        .map_err(|e| anyhow::anyhow!("refused: {e}"))
}

/// Takes the next delivery for IRC and answers it with `id`; returns how many calls the log
/// held before the answer.
async fn answer_next(rig: &mut loop_rig::LoopRig, log: &Log, id: &str) -> anyhow::Result<usize> {
    let d = tokio::time::timeout(Duration::from_secs(30), rig.irc.deliveries.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no delivery"))?;
    let before = calls(log).len();
    rig.irc
        .delivered
        .send(d.answer(Ok(vec![MessageId::new(id)])))
        .map_err(|_| anyhow::anyhow!("loop gone"))?;
    Ok(before)
}

#[tokio::test]
async fn answers_ride_on_the_next_flush_or_get_one_of_their_own() -> anyhow::Result<()> {
    let (store, log) = logging();
    let mut rig = loop_rig::start("rate_per_minute = 0", store.clone())?;
    rig.irc.status.send_replace(NetworkStatus::Connected);
    let irc = NetworkId::new("irc:local");

    // An event is durable when its acknowledgement comes: a flush follows its record.
    acked(say(&rig, "m1")?).await?;
    let seen = calls(&log);
    let at = seen.iter().position(|c| c == "inbound m1").expect("m1");
    assert_eq!(
        seen.get(at + 1).map(String::as_str),
        Some("flush"),
        "{seen:?}"
    );

    // Its delivery is answered, and the next event comes before any flush for the answer:
    // one flush covers both.
    let before = answer_next(&mut rig, &log, "irc-1").await?;
    let ack2 = say(&rig, "m2")?;
    acked(ack2).await?;
    assert_eq!(
        calls(&log)[before..],
        ["record_delivered", "inbound m2", "flush"],
        "the answer shares the next batch's flush"
    );
    assert_eq!(
        store.remote_ids(&message("m1").id, &RoomRef::new("irc:local", "#lobby"))?,
        [MessageId::new("irc-1")]
    );

    // An answer with nothing after it: flushed all the same, with no other call.
    let before = answer_next(&mut rig, &log, "irc-2").await?;
    let mut flushed = false;
    for _ in 0..200 {
        if calls(&log)[before..] == ["record_delivered", "flush"] {
            flushed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(flushed, "{:?}", &calls(&log)[before..]);
    assert_eq!(store.outbox_depth(&irc)?, 0);

    rig.shutdown.cancel();
    rig.task.await??;
    Ok(())
}
