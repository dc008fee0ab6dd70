//! In-memory backend: same semantics as the sled one, nothing durable.

use crate::dump::Own;
use crate::{
    encode_row, key, outbox_rows, split3, AuditEntry, Dropped, Recorded, Result, Row, Store,
};
use junction_core::clock::now_ms;
use junction_core::router::{Link, Planned};
use junction_core::{
    BridgeName, Delivered, Delivery, Event, EventId, MessageId, NetworkId, RoomRef, UserRef,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, MutexGuard};

/// What a private conversation left: an event of the message map, or an adapter row.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Private {
    Event(EventId),
    Row(String, String),
}

#[derive(Default)]
struct Inner {
    next_id: u64,
    by_remote: HashMap<Vec<u8>, EventId>,
    /// Keyed `event NUL network NUL room`, ordered so one event's rows are together.
    by_event: BTreeMap<Vec<u8>, Vec<MessageId>>,
    senders: HashMap<EventId, UserRef>,
    /// When each message event was recorded; none for rows stored without a time.
    stamps: HashMap<EventId, u64>,
    by_time: BTreeSet<(u64, EventId)>,
    outbox: HashMap<NetworkId, BTreeMap<u64, Delivery>>,
    /// Transaction key → when it was marked (None: marked without a time).
    txns: HashMap<String, Option<u64>>,
    txn_time: BTreeSet<(u64, String)>,
    kv_stamps: HashMap<(String, String), u64>,
    kv_time: BTreeSet<(u64, String, String)>,
    /// Private conversations' events and adapter rows in age order.
    private_time: BTreeSet<(u64, Private)>,
    /// Rows stored without a time count as recorded then.
    legacy_until: Option<u64>,
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

    /// Test hook: a message-map row and a transaction key as a version that did not date
    /// them stored them, and the store marked as upgraded at `upgraded_ms`.
    #[cfg(test)]
    pub(crate) fn put_legacy(
        &self,
        event: &EventId,
        room: &RoomRef,
        remote: &MessageId,
        txn: &str,
        upgraded_ms: u64,
    ) {
        let mut g = self.lock();
        g.by_remote
            .insert(room_key(room, remote.as_str()), event.clone());
        g.by_event.insert(
            key(&[event.as_str(), room.network.as_str(), room.room.as_str()]),
            vec![remote.clone()],
        );
        g.txns.insert(txn.to_owned(), None);
        g.legacy_until = Some(upgraded_ms);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent maps (each write is one insert).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn room_key(r: &RoomRef, x: &str) -> Vec<u8> {
    key(&[r.network.as_str(), r.room.as_str(), x])
}

/// Takes the oldest entry of a time-ordered index if it is older than `before_ms`.
fn pop_older<T: Ord>(index: &mut BTreeSet<(u64, T)>, before_ms: u64) -> Option<(u64, T)> {
    if index.first()?.0 >= before_ms {
        return None;
    }
    index.pop_first()
}

impl Inner {
    /// Removes the dated adapter row `k` if it was last written at `ts` (not written again
    /// since); true if it went.
    fn forget_row_written_at(&mut self, k: &(String, String), ts: u64) -> bool {
        if self.kv_stamps.get(k) != Some(&ts) {
            return false;
        }
        self.kv_stamps.remove(k);
        self.kv.remove(k);
        true
    }

    /// Removes every message-map row of `event`, its sender and its stamp.
    fn forget_event(&mut self, event: &EventId) {
        let prefix = key(&[event.as_str(), ""]);
        let rows: Vec<(Vec<u8>, Vec<MessageId>)> = self
            .by_event
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (k, ids) in rows {
            let rest = k.get(prefix.len()..).unwrap_or_default();
            for id in ids {
                let mut rk = rest.to_vec();
                rk.push(0);
                rk.extend_from_slice(id.as_str().as_bytes());
                if self.by_remote.get(&rk) == Some(event) {
                    self.by_remote.remove(&rk);
                }
            }
            self.by_event.remove(&k);
        }
        self.senders.remove(event);
        self.stamps.remove(event);
    }
}

impl Store for MemStore {
    fn record_inbound(&self, event: &Event, planned: Vec<Planned>) -> Result<Recorded> {
        let mut g = self.lock();
        let k = room_key(&event.origin, event.remote_id.as_str());
        if g.by_remote.contains_key(&k) {
            return Ok(Recorded::Duplicate);
        }
        let private = crate::is_private_event(event, &planned);
        let rows = outbox_rows(event, planned, || {
            g.next_id += 1;
            Ok(g.next_id)
        })?;
        for r in &rows {
            encode_row(r)?;
        }
        g.by_remote.insert(k, event.id.clone());
        let now = now_ms();
        g.stamps.insert(event.id.clone(), now);
        g.by_time.insert((now, event.id.clone()));
        if private {
            g.private_time
                .insert((now, Private::Event(event.id.clone())));
        }
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
        Ok(self.lock().txns.contains_key(k))
    }

    fn mark_txn(&self, k: &str) -> Result<()> {
        let mut g = self.lock();
        if !g.txns.contains_key(k) {
            let now = now_ms();
            g.txns.insert(k.to_owned(), Some(now));
            g.txn_time.insert((now, k.to_owned()));
        }
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
        let mut g = self.lock();
        let k = (ns.to_owned(), k.to_owned());
        g.kv_stamps.remove(&k);
        g.kv.insert(k, value.to_vec());
        Ok(())
    }

    fn kv_remove(&self, ns: &str, k: &str) -> Result<()> {
        let mut g = self.lock();
        let k = (ns.to_owned(), k.to_owned());
        g.kv_stamps.remove(&k);
        g.kv.remove(&k);
        Ok(())
    }

    fn kv_put_dated(&self, ns: &str, k: &str, value: &[u8], ts_ms: u64) -> Result<()> {
        let mut g = self.lock();
        g.kv_time.insert((ts_ms, ns.to_owned(), k.to_owned()));
        let k = (ns.to_owned(), k.to_owned());
        g.kv_stamps.insert(k.clone(), ts_ms);
        g.kv.insert(k, value.to_vec());
        Ok(())
    }

    fn kv_put_private(&self, ns: &str, k: &str, value: &[u8], ts_ms: u64) -> Result<()> {
        self.kv_put_dated(ns, k, value, ts_ms)?;
        self.lock()
            .private_time
            .insert((ts_ms, Private::Row(ns.to_owned(), k.to_owned())));
        Ok(())
    }

    fn prune_private_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let mut g = self.lock();
        let mut n = 0;
        while n < limit {
            let Some((ts, what)) = pop_older(&mut g.private_time, before_ms) else {
                break;
            };
            match what {
                Private::Event(event) => {
                    g.forget_event(&event);
                    n += 1;
                }
                Private::Row(ns, k) => n += usize::from(g.forget_row_written_at(&(ns, k), ts)),
            }
        }
        Ok(n)
    }

    fn prune_kv_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let mut g = self.lock();
        let due: Vec<(u64, String, String)> = g
            .kv_time
            .iter()
            .take_while(|(t, _, _)| *t < before_ms)
            .cloned()
            .collect();
        let mut n = 0;
        for row in due {
            if n >= limit {
                break;
            }
            g.kv_time.remove(&row);
            let (ts, ns, k) = row;
            if g.forget_row_written_at(&(ns, k), ts) {
                n += 1;
            }
        }
        Ok(n)
    }

    fn drop_outbox(
        &self,
        network: &NetworkId,
        older_than_ms: u64,
        keep_newest: usize,
        spare: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<Dropped>> {
        let dropped = crate::to_drop(self.pending(network)?, older_than_ms, keep_newest, spare);
        if let Some(o) = self.lock().outbox.get_mut(network) {
            for d in &dropped {
                o.remove(&d.outbox_id);
            }
        }
        Ok(dropped)
    }

    fn prune_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let mut g = self.lock();
        let mut n = 0;
        while n < limit {
            let Some((_, event)) = pop_older(&mut g.by_time, before_ms) else {
                break;
            };
            g.forget_event(&event);
            n += 1;
        }
        while n < limit {
            let Some((_, k)) = pop_older(&mut g.txn_time, before_ms) else {
                break;
            };
            g.txns.remove(&k);
            n += 1;
        }
        if g.legacy_until.is_some_and(|t| t < before_ms) {
            let legacy: BTreeSet<EventId> = g
                .by_event
                .keys()
                .filter_map(|k| k.split(|b| *b == 0).next())
                .map(|id| EventId(String::from_utf8_lossy(id).into_owned()))
                .filter(|e| !g.stamps.contains_key(e))
                .collect();
            for e in legacy {
                if n >= limit {
                    return Ok(n);
                }
                g.forget_event(&e);
                n += 1;
            }
            let txns: Vec<String> = g
                .txns
                .iter()
                .filter(|(_, t)| t.is_none())
                .map(|(k, _)| k.clone())
                .collect();
            for k in txns {
                if n >= limit {
                    return Ok(n);
                }
                g.txns.remove(&k);
                n += 1;
            }
            g.legacy_until = None;
        }
        Ok(n)
    }

    fn prune_audit_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let mut g = self.lock();
        let n = g
            .audit
            .iter()
            .take(limit)
            .take_while(|e| e.ts_ms < before_ms)
            .count();
        g.audit.drain(..n);
        Ok(n)
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

    fn export(&self, out: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
        // A copy of what to hand out, so `out` runs without the lock.
        let rows = {
            let g = self.lock();
            let mut rows = Vec::new();
            let private =
                |ts: u64, e: &EventId| g.private_time.contains(&(ts, Private::Event(e.clone())));
            for (ts, e) in &g.by_time {
                rows.push(Row::Event {
                    event: e.clone(),
                    stamp: Some(*ts),
                    sender: g.senders.get(e).cloned(),
                    private: private(*ts, e),
                });
            }
            for (e, sender) in &g.senders {
                if !g.stamps.contains_key(e) {
                    rows.push(Row::Event {
                        event: e.clone(),
                        stamp: None,
                        sender: Some(sender.clone()),
                        private: false,
                    });
                }
            }
            for (k, ids) in &g.by_event {
                let [event, network, room] = split3(k);
                rows.push(Row::Map {
                    event: EventId(event),
                    room: RoomRef::new(network, room),
                    ids: ids.clone(),
                });
            }
            let mut networks: Vec<&NetworkId> = g.outbox.keys().collect();
            networks.sort();
            for n in networks {
                for d in g.outbox[n].values() {
                    rows.push(Row::Outbox {
                        delivery: Box::new(d.clone()),
                    });
                }
            }
            for (k, t) in &g.txns {
                rows.push(Row::Txn {
                    key: k.clone(),
                    stamp: *t,
                });
            }
            for (k, identity) in &g.puppets {
                let [network, un, uid] = split3(k);
                rows.push(Row::Puppet {
                    network: NetworkId::new(network),
                    user: UserRef::new(un, uid),
                    identity: identity.clone(),
                });
            }
            for link in g.links.values() {
                rows.push(Row::Link { link: link.clone() });
            }
            for (k, cursor) in &g.cursors {
                let [network, room, _] = split3(k);
                rows.push(Row::Cursor {
                    room: RoomRef::new(network, room),
                    cursor: cursor.clone(),
                });
            }
            for ((ns, k), v) in &g.kv {
                let stamp = g.kv_stamps.get(&(ns.clone(), k.clone())).copied();
                let private = stamp.is_some_and(|ts| {
                    g.private_time
                        .contains(&(ts, Private::Row(ns.clone(), k.clone())))
                });
                rows.push(Row::kv(ns, k, v, stamp, private));
            }
            for entry in &g.audit {
                rows.push(Row::Audit {
                    entry: entry.clone(),
                });
            }
            rows
        };
        rows.into_iter().try_for_each(out)
    }

    fn import(&self, row: Row) -> Result<()> {
        let Some(own) = crate::dump::import_common(self, row)? else {
            return Ok(());
        };
        let mut g = self.lock();
        match own {
            Own::Event(event, ts, sender, private) => {
                g.stamps.insert(event.clone(), ts);
                g.by_time.insert((ts, event.clone()));
                if private {
                    g.private_time.insert((ts, Private::Event(event.clone())));
                }
                if let Some(sender) = sender {
                    g.senders.insert(event, sender);
                }
            }
            Own::Outbox(mut delivery) => {
                encode_row(&delivery)?;
                g.next_id += 1;
                delivery.outbox_id = g.next_id;
                g.outbox
                    .entry(delivery.target.network.clone())
                    .or_default()
                    .insert(delivery.outbox_id, *delivery);
            }
            Own::Txn(key, ts) => {
                g.txns.insert(key.clone(), Some(ts));
                g.txn_time.insert((ts, key));
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
