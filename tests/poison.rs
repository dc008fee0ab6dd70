//! Poison items in the route loop, in process: an inbound event the store can never hold is
//! answered as handled (so Synapse stops resending it and archive positions move on) and
//! counted in `junction_refused_total`, while a backend failure (a full disk) still fails the
//! acknowledgement so nothing is lost. The next event is recorded either way.

#[path = "support/loop_rig.rs"]
mod loop_rig;

use junction_core::router::{Link, Planned};
use junction_core::{
    BridgeName, Delivered, Delivery, Event, EventId, EventKind, Inbound, MessageId, NetworkId,
    RoomRef, Sender, UserRef,
};
use junction_store::{AuditEntry, MemStore, Recorded, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// A `MemStore` whose `record_inbound` fails for remote ids starting with `poison` (as a
/// record that cannot be encoded) or `disk` (as a backend failure).
#[derive(Default)]
struct Failing(MemStore);

impl Store for Failing {
    fn record_inbound(
        &self,
        event: &Event,
        planned: Vec<Planned>,
    ) -> junction_store::Result<Recorded> {
        let id = event.remote_id.as_str();
        if id.starts_with("poison") {
            return Err(StoreError::Codec("recursion limit exceeded".into()));
        }
        if id.starts_with("disk") {
            return Err(StoreError::Backend("No space left on device".into()));
        }
        self.0.record_inbound(event, planned)
    }
    fn record_delivered(&self, d: &Delivered) -> junction_store::Result<()> {
        self.0.record_delivered(d)
    }
    fn event_for(
        &self,
        room: &RoomRef,
        remote: &MessageId,
    ) -> junction_store::Result<Option<EventId>> {
        self.0.event_for(room, remote)
    }
    fn remote_ids(
        &self,
        event: &EventId,
        room: &RoomRef,
    ) -> junction_store::Result<Vec<MessageId>> {
        self.0.remote_ids(event, room)
    }
    fn pending(&self, network: &NetworkId) -> junction_store::Result<Vec<Delivery>> {
        self.0.pending(network)
    }
    fn outbox_depth(&self, network: &NetworkId) -> junction_store::Result<usize> {
        self.0.outbox_depth(network)
    }
    fn txn_done(&self, key: &str) -> junction_store::Result<bool> {
        self.0.txn_done(key)
    }
    fn mark_txn(&self, key: &str) -> junction_store::Result<()> {
        self.0.mark_txn(key)
    }
    fn puppet(
        &self,
        network: &NetworkId,
        user: &UserRef,
    ) -> junction_store::Result<Option<String>> {
        self.0.puppet(network, user)
    }
    fn set_puppet(
        &self,
        network: &NetworkId,
        user: &UserRef,
        identity: &str,
    ) -> junction_store::Result<()> {
        self.0.set_puppet(network, user, identity)
    }
    fn puppet_owner(
        &self,
        network: &NetworkId,
        identity: &str,
    ) -> junction_store::Result<Option<UserRef>> {
        self.0.puppet_owner(network, identity)
    }
    fn links(&self) -> junction_store::Result<Vec<Link>> {
        self.0.links()
    }
    fn put_link(&self, link: &Link) -> junction_store::Result<()> {
        self.0.put_link(link)
    }
    fn remove_link(&self, bridge: &BridgeName) -> junction_store::Result<()> {
        self.0.remove_link(bridge)
    }
    fn cursor(&self, room: &RoomRef) -> junction_store::Result<Option<String>> {
        self.0.cursor(room)
    }
    fn set_cursor(&self, room: &RoomRef, cursor: &str) -> junction_store::Result<()> {
        self.0.set_cursor(room, cursor)
    }
    fn kv_get(&self, ns: &str, key: &str) -> junction_store::Result<Option<Vec<u8>>> {
        self.0.kv_get(ns, key)
    }
    fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> junction_store::Result<()> {
        self.0.kv_put(ns, key, value)
    }
    fn kv_remove(&self, ns: &str, key: &str) -> junction_store::Result<()> {
        self.0.kv_remove(ns, key)
    }
    fn kv_scan(&self, ns: &str) -> junction_store::Result<Vec<(String, Vec<u8>)>> {
        self.0.kv_scan(ns)
    }
    fn audit(&self, entry: &AuditEntry) -> junction_store::Result<()> {
        self.0.audit(entry)
    }
    fn audit_log(&self) -> junction_store::Result<Vec<AuditEntry>> {
        self.0.audit_log()
    }
    fn flush(&self) -> junction_store::Result<()> {
        self.0.flush()
    }
}

fn message(remote: &str) -> Event {
    Event::new(
        RoomRef::new("xmpp", loop_rig::MUC),
        MessageId::new(remote),
        Sender::new(UserRef::new("xmpp", "mallory@xmpp.test"), "mallory"),
        1,
        EventKind::Message(junction_core::Message {
            body: junction_core::RichText::plain(format!("text of {remote}")),
            ..Default::default()
        }),
    )
}

#[tokio::test]
async fn poison_items_are_answered_as_handled_and_counted() -> anyhow::Result<()> {
    let store = Arc::new(Failing::default());
    let rig = loop_rig::start("", store.clone())?;

    let answer = |remote: &'static str| {
        let inbound = rig.xmpp.inbound.clone();
        async move {
            let (inb, ack) = Inbound::with_ack(message(remote));
            inbound
                .send(inb)
                .await
                .map_err(|_| anyhow::anyhow!("loop gone"))?;
            tokio::time::timeout(Duration::from_secs(30), ack)
                .await?
                .map_err(|_| anyhow::anyhow!("ack dropped"))
        }
    };
    assert_eq!(
        answer("poison-1").await?,
        Ok(()),
        "a poison item is answered as handled"
    );
    assert!(
        answer("disk-1").await?.is_err(),
        "a backend failure fails the acknowledgement"
    );
    assert_eq!(answer("ok-1").await?, Ok(()));
    assert_eq!(
        store.pending(&NetworkId::new("irc:local"))?.len(),
        1,
        "only the ordinary event was recorded"
    );

    let text = rig.metrics.render();
    assert!(
        text.contains("junction_refused_total{network=\"xmpp\",reason=\"unencodable\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("junction_errors_total{network=\"xmpp\",kind=\"store\"} 1\n"),
        "{text}"
    );
    rig.shutdown.cancel();
    rig.task.await??;
    Ok(())
}
