//! Replays and the rate limit, in process: an event the store already holds (a Matrix
//! read-back of the room's timeline, a transaction sent again, an IRC or MUC history replay)
//! and an event in a room linked to nothing spend none of their sender's allowance, so what
//! the sender says next still crosses. And what the limit dropped, offered again once it is
//! old enough to pass as backlog, does not cross late.

#[path = "support/loop_rig.rs"]
mod loop_rig;

use junction_core::{Event, EventKind, MessageId, NetworkId, RoomRef, Sender, UserRef};
use junction_store::{MemStore, Store};
use std::sync::Arc;

/// The limit of these tests: four at once, then one a minute.
const LIMIT: &str = "rate_burst = 4\nrate_per_minute = 1";

/// A line by mallory in `room`, stamped now (so it is live, not backlog).
fn line(room: &str, remote: &str) -> Event {
    line_at(room, remote, junction_core::clock::now_ms())
}

/// A line by mallory in `room`, stamped `ts_ms`.
fn line_at(room: &str, remote: &str, ts_ms: u64) -> Event {
    Event::new(
        RoomRef::new("xmpp", room),
        MessageId::new(remote),
        Sender::new(UserRef::new("xmpp", "mallory@xmpp.test"), "mallory"),
        ts_ms,
        EventKind::Message(junction_core::Message {
            body: junction_core::RichText::plain(format!("text of {remote}")),
            ..Default::default()
        }),
    )
}

/// The value of an unlabelled or `network="xmpp",kind="message"` sample on `/metrics`.
fn sample(text: &str, name: &str, labels: &str) -> u64 {
    let prefix = format!("{name}{labels} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Asserts what is on its way to IRC (remote ids, in order), and how many of mallory's lines
/// `/metrics` counts as over the limit and as duplicates.
fn outcome(
    rig: &loop_rig::LoopRig,
    store: &MemStore,
    crossing: &[&str],
    limited: u64,
    duplicates: u64,
) -> anyhow::Result<()> {
    let pending: Vec<String> = store
        .pending(&NetworkId::new("irc:local"))?
        .iter()
        .map(|d| d.event.remote_id.as_str().to_owned())
        .collect();
    assert_eq!(pending, crossing, "what is on its way to IRC");
    let text = rig.metrics.render();
    let xmpp_messages = "{network=\"xmpp\",kind=\"message\"}";
    assert_eq!(
        sample(&text, "junction_rate_limited_total", xmpp_messages),
        limited,
        "over the limit:\n{text}"
    );
    assert_eq!(
        sample(&text, "junction_duplicates_skipped_total", ""),
        duplicates,
        "duplicates:\n{text}"
    );
    Ok(())
}

#[tokio::test]
async fn replays_and_unlinked_rooms_spend_no_allowance() -> anyhow::Result<()> {
    let store = Arc::new(MemStore::new());
    let rig = loop_rig::start(LIMIT, store.clone())?;

    // Two lines, each replayed three times: two tokens spent, not eight.
    for remote in ["a", "b"] {
        assert_eq!(rig.say(line(loop_rig::MUC, remote)).await?, Ok(()));
    }
    for _ in 0..3 {
        for remote in ["a", "b"] {
            assert_eq!(rig.say(line(loop_rig::MUC, remote)).await?, Ok(()));
        }
    }
    // Ten lines in a room linked to nothing: recorded, routed nowhere, no token spent.
    for i in 0..10 {
        let remote = format!("elsewhere-{i}");
        assert_eq!(
            rig.say(line("other@conference.xmpp.test", &remote)).await?,
            Ok(())
        );
    }
    // The two tokens left take two more lines; the one after them is over the limit.
    for remote in ["c", "d", "e"] {
        assert_eq!(rig.say(line(loop_rig::MUC, remote)).await?, Ok(()));
    }

    outcome(&rig, &store, &["a", "b", "c", "d"], 1, 6)?;
    rig.shutdown.cancel();
    rig.task.await??;
    Ok(())
}

/// Six lines at once: four cross, two are over the limit. The same six come again stamped
/// three minutes ago, as the Matrix read-back finds them once they are old enough to pass as
/// backlog: all six are duplicates now, and the two the limit dropped do not cross late.
#[tokio::test]
async fn what_the_limit_dropped_does_not_cross_when_replayed_as_backlog() -> anyhow::Result<()> {
    let store = Arc::new(MemStore::new());
    let rig = loop_rig::start(LIMIT, store.clone())?;
    let names: Vec<String> = (0..6).map(|i| format!("f{i}")).collect();
    for remote in &names {
        assert_eq!(rig.say(line(loop_rig::MUC, remote)).await?, Ok(()));
    }
    let old = junction_core::clock::now_ms() - 180_000;
    for remote in &names {
        assert_eq!(rig.say(line_at(loop_rig::MUC, remote, old)).await?, Ok(()));
    }
    outcome(&rig, &store, &["f0", "f1", "f2", "f3"], 2, 6)?;
    rig.shutdown.cancel();
    rig.task.await??;
    Ok(())
}
