//! The outbox bounds in the route loop, in process: when a network comes back, what waits
//! for it in the gateway beyond `outbox_max_depth` is dropped, with one notice in the room
//! and the count in `junction_outbox_dropped_total`; what its adapter already took still
//! goes, in order, and nothing is doubled.

#[path = "support/loop_rig.rs"]
mod loop_rig;

use junction_core::{
    Event, EventKind, Inbound, MessageId, MessageKind, NetworkId, NetworkStatus, RoomRef, Sender,
    UserRef,
};
use junction_store::{MemStore, Store};
use std::sync::Arc;
use std::time::Duration;

/// Messages said while IRC is away: more than the adapter's channel holds (64, and one in
/// the forwarder's hands), so some still wait in the gateway when it comes back.
const SAID: usize = 70;

fn message(n: usize) -> Event {
    Event::new(
        RoomRef::new("xmpp", loop_rig::MUC),
        MessageId::new(format!("m{n}")),
        Sender::new(UserRef::new("xmpp", "alice@xmpp.test"), "alice"),
        junction_core::clock::now_ms(),
        EventKind::Message(junction_core::Message {
            body: junction_core::RichText::plain(format!("line {n}")),
            ..Default::default()
        }),
    )
}

fn text(e: &Event) -> String {
    match &e.kind {
        EventKind::Message(m) => m.body.to_plain(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn a_network_coming_back_gets_what_it_took_and_the_newest_with_one_notice(
) -> anyhow::Result<()> {
    let irc = NetworkId::new("irc:local");
    let store = Arc::new(MemStore::new());
    let mut rig = loop_rig::start("outbox_max_depth = 2\nrate_per_minute = 0", store.clone())?;
    let (x, i, metrics) = (&rig.xmpp, &mut rig.irc, rig.metrics.clone());

    i.status.send_replace(NetworkStatus::Connected);
    tokio::time::sleep(Duration::from_millis(100)).await;
    i.status.send_replace(NetworkStatus::Down("gone".into()));
    for n in 0..SAID {
        let (inb, ack) = Inbound::with_ack(message(n));
        x.inbound
            .send(inb)
            .await
            .map_err(|_| anyhow::anyhow!("loop gone"))?;
        tokio::time::timeout(Duration::from_secs(10), ack)
            .await
            .map_err(|_| anyhow::anyhow!("no ack for line {n}"))?
            .map_err(|_| anyhow::anyhow!("ack dropped"))?
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    // Let the forwarder fill the adapter's channel.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(store.outbox_depth(&irc)?, SAID);
    i.status.send_replace(NetworkStatus::Connected);
    // The adapter reads its deliveries only once the loop has applied the bounds (a real
    // adapter reading at once may take more of them first: those are spared).
    let counted = "junction_outbox_dropped_total{network=\"irc:local\"} 3\n";
    for _ in 0..100 {
        if metrics.render().contains(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut got: Vec<Event> = Vec::new();
    let notice = loop {
        let d = tokio::time::timeout(Duration::from_secs(10), i.deliveries.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no notice after {} deliveries", got.len()))?
            .ok_or_else(|| anyhow::anyhow!("deliveries closed"))?;
        let is_notice =
            matches!(&d.event.kind, EventKind::Message(m) if m.kind == MessageKind::Notice);
        if is_notice {
            break text(&d.event);
        }
        got.push(d.event);
    };
    // 64 in the adapter's channel and one in the forwarder's hands went; of the 5 that
    // still waited in the gateway, the newest 2 go and 3 are dropped.
    let lines: Vec<String> = got.iter().map(text).collect();
    let mut expected: Vec<String> = (0..65).map(|n| format!("line {n}")).collect();
    expected.extend([format!("line {}", SAID - 2), format!("line {}", SAID - 1)]);
    assert_eq!(lines, expected);
    assert_eq!(
        notice,
        "3 messages from while irc:local was unreachable were not relayed."
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), i.deliveries.recv())
            .await
            .is_err(),
        "nothing more"
    );
    let rendered = metrics.render();
    assert!(rendered.contains(counted), "{rendered}");
    assert!(
        rendered.contains("junction_outbox_dropped_total{network=\"xmpp\"} 0\n"),
        "{rendered}"
    );
    rig.shutdown.cancel();
    rig.task.await??;
    Ok(())
}
