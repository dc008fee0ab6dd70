//! In-memory backend: same semantics as the sled one, nothing durable.

use crate::{encode_row, key, outbox_rows, AuditEntry, Recorded, Result, Store};
use junction_core::router::{Link, Planned};
use junction_core::{
    BridgeName, Delivered, Delivery, Event, EventId, MessageId, NetworkId, RoomRef, UserRef,
};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_remote: HashMap<Vec<u8>, EventId>,
    by_event: HashMap<Vec<u8>, Vec<MessageId>>,
    senders: HashMap<EventId, UserRef>,
    outbox: HashMap<NetworkId, BTreeMap<u64, Delivery>>,
    txns: HashSet<String>,
    puppets: HashMap<Vec<u8>, String>,
    owners: HashMap<Vec<u8>, UserRef>,
    links: BTreeMap<String, Link>,
    cursors: HashMap<Vec<u8>, String>,
    kv: BTreeMap<(String, String), Vec<u8>>,
    audit: Vec<AuditEntry>,
    /// Outbox rows held as bytes (as the sled backend holds every row), read on `pending`.
    raw_outbox: HashMap<NetworkId, BTreeMap<u64, Vec<u8>>>,
    quarantine: Vec<(String, Vec<u8>)>,
    set_aside: u64,
}

/// Store kept in memory behind one mutex, for tests and benchmarks.
#[derive(Default)]
pub struct MemStore(Mutex<Inner>);

impl MemStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Test hook: writes raw bytes as an outbox row.
    #[cfg(test)]
    pub(crate) fn put_raw_outbox(&self, network: &NetworkId, id: u64, raw: &[u8]) {
        self.lock()
            .raw_outbox
            .entry(network.clone())
            .or_default()
            .insert(id, raw.to_vec());
    }

    /// Test hook: how many records were set aside.
    #[cfg(test)]
    pub(crate) fn quarantined(&self) -> usize {
        self.lock().quarantine.len()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (each write is one insert).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn room_key(r: &RoomRef, x: &str) -> Vec<u8> {
    key(&[r.network.as_str(), r.room.as_str(), x])
}

impl Store for MemStore {
    fn record_inbound(&self, event: &Event, planned: Vec<Planned>) -> Result<Recorded> {
        let mut g = self.lock();
        let k = room_key(&event.origin, event.remote_id.as_str());
        if g.by_remote.contains_key(&k) {
            return Ok(Recorded::Duplicate);
        }
        let rows = outbox_rows(event, planned, || {
            g.next_id += 1;
            Ok(g.next_id)
        })?;
        for r in &rows {
            encode_row(r)?;
        }
        g.by_remote.insert(k, event.id.clone());
        if matches!(event.kind, junction_core::EventKind::Message(_)) {
            g.senders
                .insert(event.id.clone(), event.sender.user.clone());
        }
        g.by_event.insert(
            key(&[
                event.id.as_str(),
                event.origin.network.as_str(),
                event.origin.room.as_str(),
            ]),
            vec![event.remote_id.clone()],
        );
        for r in &rows {
            g.outbox
                .entry(r.target.network.clone())
                .or_default()
                .insert(r.outbox_id, r.clone());
        }
        Ok(Recorded::New(rows))
    }

    fn record_delivered(&self, d: &Delivered) -> Result<()> {
        let mut g = self.lock();
        if let Ok(ids) = &d.outcome {
            for id in ids {
                g.by_remote
                    .insert(room_key(&d.target, id.as_str()), d.event.clone());
            }
            g.by_event.insert(
                key(&[
                    d.event.as_str(),
                    d.target.network.as_str(),
                    d.target.room.as_str(),
                ]),
                ids.clone(),
            );
        }
        if let Some(o) = g.outbox.get_mut(&d.target.network) {
            o.remove(&d.outbox_id);
        }
        Ok(())
    }

    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Result<Option<EventId>> {
        Ok(self
            .lock()
            .by_remote
            .get(&room_key(room, remote.as_str()))
            .cloned())
    }

    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Result<Vec<MessageId>> {
        let k = key(&[event.as_str(), room.network.as_str(), room.room.as_str()]);
        Ok(self.lock().by_event.get(&k).cloned().unwrap_or_default())
    }

    fn sender_of(&self, event: &EventId) -> Result<Option<UserRef>> {
        Ok(self.lock().senders.get(event).cloned())
    }

    fn pending(&self, network: &NetworkId) -> Result<Vec<Delivery>> {
        let mut g = self.lock();
        if let Some(raw) = g.raw_outbox.remove(network) {
            for (id, bytes) in raw {
                match serde_json::from_slice::<Delivery>(&bytes) {
                    Ok(d) => {
                        g.outbox.entry(network.clone()).or_default().insert(id, d);
                    }
                    Err(e) => {
                        let k = format!("{network}/{id}");
                        tracing::warn!(table = "outbox", key = %k, error = %e, "A stored record could not be read back; it was set aside.");
                        g.quarantine.push((k, bytes));
                        g.set_aside += 1;
                    }
                }
            }
        }
        Ok(g.outbox
            .get(network)
            .map(|o| o.values().cloned().collect())
            .unwrap_or_default())
    }

    fn set_aside(&self) -> u64 {
        self.lock().set_aside
    }

    fn outbox_depth(&self, network: &NetworkId) -> Result<usize> {
        Ok(self.lock().outbox.get(network).map_or(0, |o| o.len()))
    }

    fn txn_done(&self, k: &str) -> Result<bool> {
        Ok(self.lock().txns.contains(k))
    }

    fn mark_txn(&self, k: &str) -> Result<()> {
        self.lock().txns.insert(k.to_owned());
        Ok(())
    }

    fn puppet(&self, network: &NetworkId, user: &UserRef) -> Result<Option<String>> {
        let k = key(&[network.as_str(), user.network.as_str(), user.user.as_str()]);
        Ok(self.lock().puppets.get(&k).cloned())
    }

    fn set_puppet(&self, network: &NetworkId, user: &UserRef, identity: &str) -> Result<()> {
        let mut g = self.lock();
        let k = key(&[network.as_str(), user.network.as_str(), user.user.as_str()]);
        if let Some(old) = g.puppets.insert(k, identity.to_owned()) {
            g.owners.remove(&key(&[network.as_str(), &old]));
        }
        g.owners
            .insert(key(&[network.as_str(), identity]), user.clone());
        Ok(())
    }

    fn puppet_owner(&self, network: &NetworkId, identity: &str) -> Result<Option<UserRef>> {
        Ok(self
            .lock()
            .owners
            .get(&key(&[network.as_str(), identity]))
            .cloned())
    }

    fn links(&self) -> Result<Vec<Link>> {
        Ok(self.lock().links.values().cloned().collect())
    }

    fn put_link(&self, link: &Link) -> Result<()> {
        self.lock()
            .links
            .insert(link.bridge.as_str().to_owned(), link.clone());
        Ok(())
    }

    fn remove_link(&self, bridge: &BridgeName) -> Result<()> {
        self.lock().links.remove(bridge.as_str());
        Ok(())
    }

    fn cursor(&self, room: &RoomRef) -> Result<Option<String>> {
        let k = key(&[room.network.as_str(), room.room.as_str()]);
        Ok(self.lock().cursors.get(&k).cloned())
    }

    fn set_cursor(&self, room: &RoomRef, cursor: &str) -> Result<()> {
        let k = key(&[room.network.as_str(), room.room.as_str()]);
        self.lock().cursors.insert(k, cursor.to_owned());
        Ok(())
    }

    fn kv_get(&self, ns: &str, k: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().kv.get(&(ns.to_owned(), k.to_owned())).cloned())
    }

    fn kv_put(&self, ns: &str, k: &str, value: &[u8]) -> Result<()> {
        self.lock()
            .kv
            .insert((ns.to_owned(), k.to_owned()), value.to_vec());
        Ok(())
    }

    fn kv_remove(&self, ns: &str, k: &str) -> Result<()> {
        self.lock().kv.remove(&(ns.to_owned(), k.to_owned()));
        Ok(())
    }

    fn kv_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .lock()
            .kv
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }

    fn audit(&self, entry: &AuditEntry) -> Result<()> {
        self.lock().audit.push(entry.clone());
        Ok(())
    }

    fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        Ok(self.lock().audit.clone())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
