//! On-disk backend over sled: one tree per table, compact NUL-joined keys, serde_json values.
//!
//! The two writes every relayed message makes, [`Store::record_inbound`] and
//! [`Store::record_delivered`], use no sled transaction: in sled 0.34 each transaction (and
//! each `apply_batch`) pins the log, which writes out and syncs the current I/O buffer twice
//! on sled's I/O threads, whether or not the caller flushes. Measured with the bench's
//! shape (three trees, two writes per message, 20 ms apart): two transactions and two
//! flushes per message cost 0.43–0.50 ms of CPU and 25–30 voluntary context switches; the
//! same writes without transactions and one flush, 0.31 ms and 10.5. Their crash safety
//! rests instead on sled's recovery, which replays the log in order and stops at the first
//! message that is not whole, so what survives a crash is a prefix of the writes in the
//! order they were made:
//! - `record_inbound` first notes an *intent* (origin key → the outbox keys it will write),
//!   then writes the message map, the stamps and the outbox rows, then the origin key in
//!   `by_remote`, the commit point (the duplicate check looks at it), then drops the intent.
//!   At open, an intent whose origin key is missing is undone: its outbox rows go, so the
//!   origin's resend (the event was never acknowledged) records it once. The other rows it
//!   may have left are keyed by the event id, which the resend writes again.
//! - `record_delivered` writes the ids into the message map, then removes the outbox row:
//!   a crash before the removal leaves the row, and the line is handed out again, as when
//!   the answer had not come.
//!
//! The other writes that belong together still run in one sled transaction.

use crate::dump::Own;
use crate::{
    encode_row, key, outbox_rows, split3, split3_at, AuditEntry, Dropped, Recorded, Result, Row,
    Store, StoreError,
};
use junction_core::clock::now_ms;
use junction_core::router::{Link, Planned};
use junction_core::{
    BridgeName, Delivered, Delivery, Event, EventId, MessageId, NetworkId, RoomRef, UserRef,
};
use sled::transaction::TransactionError;
use sled::Transactional;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

/// Store kept in a sled database on disk.
pub struct SledStore {
    db: sled::Db,
    by_remote: sled::Tree,
    by_event: sled::Tree,
    /// Message event id → its sender (`UserRef`, JSON).
    senders: sled::Tree,
    outbox: sled::Tree,
    txns: sled::Tree,
    puppets: sled::Tree,
    owners: sled::Tree,
    links: sled::Tree,
    cursors: sled::Tree,
    kv: sled::Tree,
    audit: sled::Tree,
    /// Message event id → when it was recorded (ms, 8 bytes big-endian).
    stamps: sled::Tree,
    /// When (8 bytes big-endian) ++ event id → nothing: the message map in age order.
    by_time: sled::Tree,
    /// When ++ transaction key → nothing: the transaction keys in age order (their value in
    /// `txns` is the same time; an empty value is a key an earlier version marked).
    txn_time: sled::Tree,
    /// Dated adapter-private row (`ns` NUL key) → when.
    kv_stamps: sled::Tree,
    /// When ++ `ns` NUL key → nothing: dated adapter-private rows in age order.
    kv_time: sled::Tree,
    /// When ++ `e` ++ event id, or when ++ `k` ++ `ns` NUL key → nothing: what private
    /// conversations left (message-map events, adapter rows) in age order.
    private_time: sled::Tree,
    /// The store's own notes: [`LAYOUT`], and while rows an earlier version stored without a
    /// time remain, [`LEGACY_UNTIL`] and the walk's cursors.
    meta: sled::Tree,
    /// Records that could not be read back, keyed by their table's name, NUL, their key.
    quarantine: sled::Tree,
    /// Inbound records begun and not known to be complete: origin key → the outbox keys
    /// they write ([`encode_keys`]). See the module's doc.
    intents: sled::Tree,
    /// Held while an inbound event is checked and recorded, so two records of the same
    /// origin message never interleave (they used to be one transaction).
    recording: std::sync::Mutex<()>,
    set_aside: AtomicU64,
    /// Test hook: how many of `record_inbound`'s writes to make (a crash after them).
    #[cfg(test)]
    tear_after: std::sync::Mutex<Option<usize>>,
}

/// One write of [`Store::record_inbound`]: a tree, a key, the value (`None`: removed).
type Write<'a> = (&'a sled::Tree, &'a [u8], Option<&'a [u8]>);

/// The outbox keys an intent names, each preceded by its length (2 bytes, big-endian).
fn encode_keys<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut v = Vec::new();
    for k in keys {
        let len = u16::try_from(k.len()).unwrap_or(u16::MAX);
        v.extend_from_slice(&len.to_be_bytes());
        v.extend_from_slice(&k[..usize::from(len)]);
    }
    v
}

/// The keys [`encode_keys`] wrote (a truncated tail is ignored).
fn decode_keys(mut v: &[u8]) -> Vec<&[u8]> {
    let mut keys = Vec::new();
    while v.len() >= 2 {
        let len = usize::from(u16::from_be_bytes([v[0], v[1]]));
        let Some(k) = v.get(2..2 + len) else { break };
        keys.push(k);
        v = &v[2 + len..];
    }
    keys
}

fn be(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn codec(e: serde_json::Error) -> StoreError {
    StoreError::Codec(e.to_string())
}

fn tx(e: TransactionError<StoreError>) -> StoreError {
    match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => be(e),
    }
}

fn room_key(r: &RoomRef, x: &str) -> Vec<u8> {
    key(&[r.network.as_str(), r.room.as_str(), x])
}

fn event_key(e: &EventId, r: &RoomRef) -> Vec<u8> {
    key(&[e.as_str(), r.network.as_str(), r.room.as_str()])
}

/// In `meta`: present once a version that dates its rows has opened the store.
const LAYOUT: &[u8] = b"dated";
/// In `meta`: when that happened, if rows without a time were there then (they count as
/// recorded at that time).
const LEGACY_UNTIL: &[u8] = b"legacy_until";
/// In `meta`: where the walk removing undated message-map rows goes on.
const LEGACY_EVENTS: &[u8] = b"legacy_events";
/// In `meta`: where the walk removing undated transaction keys goes on.
const LEGACY_TXNS: &[u8] = b"legacy_txns";

/// A time index key: `ts` big-endian, then `rest`.
fn time_key(ts: u64, rest: &[u8]) -> Vec<u8> {
    let mut k = ts.to_be_bytes().to_vec();
    k.extend_from_slice(rest);
    k
}

/// Walks the time index `index` ([`time_key`]s) oldest first through the entries older than
/// `before_ms`, while fewer than `limit` are counted: `forget(ts, rest)` forgets what an
/// entry stamps and says whether it counts; the entry goes after it, so a crash in between
/// leaves it to prune again. Returns how many counted.
fn prune_index(
    index: &sled::Tree,
    before_ms: u64,
    limit: usize,
    mut forget: impl FnMut(&[u8], &[u8]) -> Result<bool>,
) -> Result<usize> {
    let mut n = 0;
    for r in index.range(..before_ms.to_be_bytes().to_vec()) {
        if n >= limit {
            break;
        }
        let (tk, _) = r.map_err(be)?;
        let (ts, rest) = tk.split_at(8.min(tk.len()));
        n += usize::from(forget(ts, rest)?);
        index.remove(&tk).map_err(be)?;
    }
    Ok(n)
}

/// How far one pass of the legacy prune may go: rows removed so far, the most it may
/// remove, and how many more entries it may look at.
struct Budget {
    n: usize,
    limit: usize,
    walked: usize,
}

/// The time a stamp value holds, if it is one.
fn stamp(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

fn outbox_prefix(n: &NetworkId) -> Vec<u8> {
    let mut k = n.as_str().as_bytes().to_vec();
    k.push(0);
    k
}

fn outbox_key(n: &NetworkId, id: u64) -> Vec<u8> {
    let mut k = outbox_prefix(n);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

impl SledStore {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_within(path, std::time::Duration::from_secs(2), &|| false)
    }

    /// [`SledStore::open`], waiting up to `wait` while another holder (a gateway still
    /// stopping, in this process or another) has the database's lock; `give_up` ends the
    /// wait early (e.g. on shutdown). sled lets go of the lock a moment after its last
    /// handle is dropped, since its flusher thread holds one too.
    pub fn open_within(
        path: impl AsRef<Path>,
        wait: std::time::Duration,
        give_up: &dyn Fn() -> bool,
    ) -> Result<Self> {
        let db = open_db(path.as_ref(), wait, give_up)?;
        let t = |n: &str| db.open_tree(n).map_err(be);
        let meta = t("meta")?;
        if meta.get(LAYOUT).map_err(be)?.is_none() {
            // First opened by a version that dates its rows: those already there count as
            // recorded now.
            let had = !t("by_event")?.is_empty() || !t("txns")?.is_empty();
            if had {
                meta.insert(LEGACY_UNTIL, &now_ms().to_be_bytes())
                    .map_err(be)?;
            }
            meta.insert(LAYOUT, &[1]).map_err(be)?;
        }
        Ok(Self {
            stamps: t("stamps")?,
            by_time: t("by_time")?,
            txn_time: t("txn_time")?,
            kv_stamps: t("kv_stamps")?,
            kv_time: t("kv_time")?,
            private_time: t("private_time")?,
            meta,
            by_remote: t("by_remote")?,
            by_event: t("by_event")?,
            senders: t("senders")?,
            outbox: t("outbox")?,
            txns: t("txns")?,
            puppets: t("puppets")?,
            owners: t("owners")?,
            links: t("links")?,
            cursors: t("cursors")?,
            kv: t("kv")?,
            audit: t("audit")?,
            quarantine: t("quarantine")?,
            intents: t("intents")?,
            recording: std::sync::Mutex::new(()),
            set_aside: AtomicU64::new(0),
            #[cfg(test)]
            tear_after: std::sync::Mutex::new(None),
            db,
        })
        .and_then(|s| {
            s.settle_intents()?;
            Ok(s)
        })
    }

    /// Settles the intents a crash left (see the module's doc): an intent whose origin key
    /// was written is complete and just goes; one whose origin key is missing is undone.
    fn settle_intents(&self) -> Result<()> {
        let mut undone = 0;
        for r in self.intents.iter() {
            let (k, v) = r.map_err(be)?;
            undone += usize::from(self.settle_intent(&k, &v)?);
        }
        if undone > 0 {
            tracing::warn!(
                count = undone,
                "Inbound events a crash interrupted were undone; their origins send them again."
            );
        }
        Ok(())
    }

    /// Settles one intent; true when it was undone.
    fn settle_intent(&self, origin: &[u8], keys: &[u8]) -> Result<bool> {
        let undo = !self.by_remote.contains_key(origin).map_err(be)?;
        if undo {
            for k in decode_keys(keys) {
                self.outbox.remove(k).map_err(be)?;
            }
        }
        self.intents.remove(origin).map_err(be)?;
        Ok(undo)
    }

    /// Test hook: the first `writes` writes of `record_inbound` of `event`, as a crash after
    /// them would leave them.
    #[cfg(test)]
    pub(crate) fn torn_inbound(&self, event: &Event, planned: Vec<Planned>, writes: usize) {
        *self.tear_after.lock().expect("tear") = Some(writes);
        let _ = self.record_inbound(event, planned);
        *self.tear_after.lock().expect("tear") = None;
    }

    /// Decodes a record of `table`; one that does not decode is moved to the quarantine
    /// tree, logged with its key and counted, and reads as `None`.
    fn read_or_set_aside<T: serde::de::DeserializeOwned>(
        &self,
        table: &sled::Tree,
        name: &str,
        k: &[u8],
        v: &[u8],
    ) -> Result<Option<T>> {
        match serde_json::from_slice(v) {
            Ok(t) => Ok(Some(t)),
            Err(e) => {
                let mut qk = name.as_bytes().to_vec();
                qk.push(0);
                qk.extend_from_slice(k);
                self.quarantine.insert(qk, v).map_err(be)?;
                table.remove(k).map_err(be)?;
                self.set_aside.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(table = name, key = %printable(k), error = %e, "A stored record could not be read back; it was set aside.");
                Ok(None)
            }
        }
    }

    /// Every record of `table` (`name` in the log) whose key begins with `prefix`, in key
    /// order; those that cannot be read are set aside ([`Self::read_or_set_aside`]).
    fn read_all<T: serde::de::DeserializeOwned>(
        &self,
        table: &sled::Tree,
        name: &str,
        prefix: &[u8],
    ) -> Result<Vec<T>> {
        let mut rows = Vec::new();
        for r in table.scan_prefix(prefix) {
            let (k, v) = r.map_err(be)?;
            rows.extend(self.read_or_set_aside(table, name, &k, &v)?);
        }
        Ok(rows)
    }

    /// Test hook: writes raw bytes as an outbox row.
    #[cfg(test)]
    pub(crate) fn put_raw_outbox(&self, network: &NetworkId, id: u64, raw: &[u8]) {
        self.outbox
            .insert(outbox_key(network, id), raw)
            .expect("raw outbox row");
    }

    /// Test hook: when the store was first opened by a version dating its rows, if rows
    /// without a time were there then and are not all gone yet.
    #[cfg(test)]
    pub(crate) fn legacy_until(&self) -> Option<u64> {
        self.meta
            .get(LEGACY_UNTIL)
            .ok()
            .flatten()
            .and_then(|v| stamp(&v))
    }

    /// Test hook: how many intents are not settled.
    #[cfg(test)]
    pub(crate) fn intents_left(&self) -> usize {
        self.intents.len()
    }

    /// Test hook: how many records the quarantine tree holds.
    #[cfg(test)]
    pub(crate) fn quarantined(&self) -> usize {
        self.quarantine.len()
    }

    fn next_id(&self) -> Result<u64> {
        // sled ids are monotonic across restarts; +1 keeps 0 unused.
        self.db.generate_id().map(|i| i + 1).map_err(be)
    }
}

/// A key for the log: NUL shown as `/`, other bytes that are not printable as `\xNN`.
fn printable(k: &[u8]) -> String {
    let mut out = String::new();
    for &b in k {
        match b {
            0 => out.push('/'),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Opens the sled database, retrying while its lock is held, until `wait` is over or
/// `give_up` says so.
fn open_db(path: &Path, wait: std::time::Duration, give_up: &dyn Fn() -> bool) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match sled::open(path) {
            Ok(db) => return Ok(db),
            Err(e) => {
                let locked = e.to_string().contains("could not acquire lock");
                if !locked || std::time::Instant::now() >= deadline || give_up() {
                    return Err(be(e));
                }
                if !said && wait > std::time::Duration::from_secs(2) {
                    tracing::warn!(path = %path.display(), wait_s = wait.as_secs(), "The store is in use (a gateway still stopping, or another one running); waiting.");
                    said = true;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }
}

impl Store for SledStore {
    fn record_inbound(&self, event: &Event, planned: Vec<Planned>) -> Result<Recorded> {
        let k = room_key(&event.origin, event.remote_id.as_str());
        let _one = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        if self.by_remote.contains_key(&k).map_err(be)? {
            return Ok(Recorded::Duplicate);
        }
        // An earlier try that failed half-way (a backend error) is undone first.
        if let Some(keys) = self.intents.get(&k).map_err(be)? {
            self.settle_intent(&k, &keys)?;
        }
        let private = crate::is_private_event(event, &planned);
        let rows = outbox_rows(event, planned, || self.next_id())?;
        let encoded = rows
            .iter()
            .map(|r| Ok((outbox_key(&r.target.network, r.outbox_id), encode_row(r)?)))
            .collect::<Result<Vec<_>>>()?;
        let ids = serde_json::to_vec(&[&event.remote_id]).map_err(codec)?;
        let ek = event_key(&event.id, &event.origin);
        let sender = match event.kind {
            junction_core::EventKind::Message(_) => {
                Some(serde_json::to_vec(&event.sender.user).map_err(codec)?)
            }
            _ => None,
        };
        let now = now_ms();
        let tk = time_key(now, event.id.as_str().as_bytes());
        let private = private.then(|| {
            time_key(
                now,
                &[b"e".as_slice(), event.id.as_str().as_bytes()].concat(),
            )
        });
        let intent = encode_keys(encoded.iter().map(|(ok, _)| ok.as_slice()));
        let id = event.id.as_str().as_bytes();
        let stamp = now.to_be_bytes();
        // In this order (see the module's doc): the intent, the rows, the commit point.
        let mut writes: Vec<Write<'_>> = vec![
            (&self.intents, &k, Some(&intent)),
            (&self.by_event, &ek, Some(&ids)),
            (&self.stamps, id, Some(&stamp)),
            (&self.by_time, &tk, Some(&[])),
        ];
        if let Some(pk) = &private {
            writes.push((&self.private_time, pk, Some(&[])));
        }
        if let Some(sender) = &sender {
            writes.push((&self.senders, id, Some(sender)));
        }
        for (ok, v) in &encoded {
            writes.push((&self.outbox, ok, Some(v)));
        }
        writes.push((&self.by_remote, &k, Some(id)));
        writes.push((&self.intents, &k, None));
        #[cfg(test)]
        if let Some(n) = *self.tear_after.lock().expect("tear") {
            writes.truncate(n);
        }
        for (tree, key, value) in writes {
            match value {
                Some(v) => tree.insert(key, v).map(drop),
                None => tree.remove(key).map(drop),
            }
            .map_err(be)?;
        }
        Ok(Recorded::New(rows))
    }

    fn record_delivered(&self, d: &Delivered) -> Result<()> {
        // The ids first, the outbox row last (see the module's doc).
        if let Ok(ids) = &d.outcome {
            let v = serde_json::to_vec(ids).map_err(codec)?;
            for id in ids {
                self.by_remote
                    .insert(
                        room_key(&d.target, id.as_str()),
                        d.event.as_str().as_bytes(),
                    )
                    .map_err(be)?;
            }
            self.by_event
                .insert(event_key(&d.event, &d.target), v)
                .map_err(be)?;
        }
        self.outbox
            .remove(outbox_key(&d.target.network, d.outbox_id))
            .map(drop)
            .map_err(be)
    }

    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Result<Option<EventId>> {
        Ok(self
            .by_remote
            .get(room_key(room, remote.as_str()))
            .map_err(be)?
            .map(|v| EventId(String::from_utf8_lossy(&v).into_owned())))
    }

    fn sender_of(&self, event: &EventId) -> Result<Option<UserRef>> {
        match self.senders.get(event.as_str()).map_err(be)? {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(codec),
            None => Ok(None),
        }
    }

    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Result<Vec<MessageId>> {
        match self.by_event.get(event_key(event, room)).map_err(be)? {
            Some(v) => serde_json::from_slice(&v).map_err(codec),
            None => Ok(Vec::new()),
        }
    }

    fn pending(&self, network: &NetworkId) -> Result<Vec<Delivery>> {
        self.read_all(&self.outbox, "outbox", &outbox_prefix(network))
    }

    fn set_aside(&self) -> u64 {
        self.set_aside.load(Ordering::Relaxed)
    }

    fn outbox_depth(&self, network: &NetworkId) -> Result<usize> {
        Ok(self
            .outbox
            .scan_prefix(outbox_prefix(network))
            .keys()
            .count())
    }

    fn txn_done(&self, k: &str) -> Result<bool> {
        self.txns.contains_key(k).map_err(be)
    }

    fn mark_txn(&self, k: &str) -> Result<()> {
        if self.txns.contains_key(k).map_err(be)? {
            return Ok(());
        }
        let now = now_ms();
        // The index first: a crash in between leaves an index row pointing at nothing.
        self.txn_time
            .insert(time_key(now, k.as_bytes()), &[])
            .map_err(be)?;
        self.txns
            .insert(k, &now.to_be_bytes())
            .map(drop)
            .map_err(be)
    }

    fn puppet(&self, network: &NetworkId, user: &UserRef) -> Result<Option<String>> {
        let k = key(&[network.as_str(), user.network.as_str(), user.user.as_str()]);
        Ok(self
            .puppets
            .get(k)
            .map_err(be)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn set_puppet(&self, network: &NetworkId, user: &UserRef, identity: &str) -> Result<()> {
        let k = key(&[network.as_str(), user.network.as_str(), user.user.as_str()]);
        let owner = serde_json::to_vec(user).map_err(codec)?;
        (&self.puppets, &self.owners)
            .transaction(|(p, o)| {
                if let Some(old) = p.insert(k.as_slice(), identity.as_bytes())? {
                    o.remove(key(&[network.as_str(), &String::from_utf8_lossy(&old)]))?;
                }
                o.insert(key(&[network.as_str(), identity]), owner.as_slice())?;
                Ok(())
            })
            .map_err(tx)
    }

    fn puppet_owner(&self, network: &NetworkId, identity: &str) -> Result<Option<UserRef>> {
        match self
            .owners
            .get(key(&[network.as_str(), identity]))
            .map_err(be)?
        {
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(codec),
            None => Ok(None),
        }
    }

    fn links(&self) -> Result<Vec<Link>> {
        self.read_all(&self.links, "links", b"")
    }

    fn put_link(&self, link: &Link) -> Result<()> {
        let v = serde_json::to_vec(link).map_err(codec)?;
        self.links
            .insert(link.bridge.as_str(), v)
            .map(drop)
            .map_err(be)
    }

    fn remove_link(&self, bridge: &BridgeName) -> Result<()> {
        self.links.remove(bridge.as_str()).map(drop).map_err(be)
    }

    fn cursor(&self, room: &RoomRef) -> Result<Option<String>> {
        let k = key(&[room.network.as_str(), room.room.as_str()]);
        Ok(self
            .cursors
            .get(k)
            .map_err(be)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    fn set_cursor(&self, room: &RoomRef, cursor: &str) -> Result<()> {
        let k = key(&[room.network.as_str(), room.room.as_str()]);
        self.cursors
            .insert(k, cursor.as_bytes())
            .map(drop)
            .map_err(be)
    }

    fn kv_get(&self, ns: &str, k: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.kv.get(key(&[ns, k])).map_err(be)?.map(|v| v.to_vec()))
    }

    fn kv_put(&self, ns: &str, k: &str, value: &[u8]) -> Result<()> {
        let k = key(&[ns, k]);
        self.kv_stamps.remove(&k).map_err(be)?;
        self.kv.insert(k, value).map(drop).map_err(be)
    }

    fn kv_remove(&self, ns: &str, k: &str) -> Result<()> {
        let k = key(&[ns, k]);
        self.kv_stamps.remove(&k).map_err(be)?;
        self.kv.remove(k).map(drop).map_err(be)
    }

    fn kv_put_dated(&self, ns: &str, k: &str, value: &[u8], ts_ms: u64) -> Result<()> {
        let k = key(&[ns, k]);
        self.kv_time.insert(time_key(ts_ms, &k), &[]).map_err(be)?;
        self.kv_stamps
            .insert(k.as_slice(), &ts_ms.to_be_bytes())
            .map_err(be)?;
        self.kv.insert(k, value).map(drop).map_err(be)
    }

    fn kv_put_private(&self, ns: &str, k: &str, value: &[u8], ts_ms: u64) -> Result<()> {
        self.kv_put_dated(ns, k, value, ts_ms)?;
        let rest = [b"k".as_slice(), &key(&[ns, k])].concat();
        self.private_time
            .insert(time_key(ts_ms, &rest), &[])
            .map(drop)
            .map_err(be)
    }

    fn prune_private_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        prune_index(
            &self.private_time,
            before_ms,
            limit,
            |ts, rest| match rest.split_first() {
                Some((b'e', id)) => {
                    self.forget_event(&EventId(String::from_utf8_lossy(id).into_owned()))?;
                    Ok(true)
                }
                Some((b'k', k)) => self.forget_row_written_at(k, ts),
                _ => Ok(false),
            },
        )
    }

    fn prune_kv_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        prune_index(&self.kv_time, before_ms, limit, |ts, k| {
            self.forget_row_written_at(k, ts)
        })
    }

    fn kv_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = key(&[ns, ""]);
        self.kv
            .scan_prefix(&prefix)
            .map(|r| {
                let (k, v) = r.map_err(be)?;
                let k = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
                Ok((k, v.to_vec()))
            })
            .collect()
    }

    fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let v = serde_json::to_vec(entry).map_err(codec)?;
        let id = self.next_id()?;
        self.audit.insert(id.to_be_bytes(), v).map(drop).map_err(be)
    }

    fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        self.read_all(&self.audit, "audit", b"")
    }

    fn flush(&self) -> Result<()> {
        self.db.flush().map(drop).map_err(be)
    }

    fn export(&self, out: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
        let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
        let sender = |id: &[u8]| -> Result<Option<UserRef>> {
            match self.senders.get(id).map_err(be)? {
                Some(v) => serde_json::from_slice(&v).map(Some).map_err(codec),
                None => Ok(None),
            }
        };
        for r in self.by_time.iter() {
            let (tk, _) = r.map_err(be)?;
            let (ts, id) = tk.split_at(8.min(tk.len()));
            let private = time_key(stamp(ts).unwrap_or(0), &[b"e".as_slice(), id].concat());
            out(Row::Event {
                event: EventId(text(id)),
                stamp: stamp(ts),
                sender: sender(id)?,
                private: self.private_time.contains_key(private).map_err(be)?,
            })?;
        }
        for r in self.senders.iter() {
            let (id, _) = r.map_err(be)?;
            if !self.stamps.contains_key(&id).map_err(be)? {
                out(Row::Event {
                    event: EventId(text(&id)),
                    stamp: None,
                    sender: sender(&id)?,
                    private: false,
                })?;
            }
        }
        for r in self.by_event.iter() {
            let (k, v) = r.map_err(be)?;
            let [event, network, room] = split3(&k);
            out(Row::Map {
                event: EventId(event),
                room: RoomRef::new(network, room),
                ids: serde_json::from_slice(&v).map_err(codec)?,
            })?;
        }
        for r in self.outbox.iter() {
            let (k, v) = r.map_err(be)?;
            if let Some(delivery) = self.read_or_set_aside(&self.outbox, "outbox", &k, &v)? {
                out(Row::Outbox {
                    delivery: Box::new(delivery),
                })?;
            }
        }
        for r in self.txns.iter() {
            let (k, v) = r.map_err(be)?;
            out(Row::Txn {
                key: text(&k),
                stamp: stamp(&v),
            })?;
        }
        for r in self.puppets.iter() {
            let (k, v) = r.map_err(be)?;
            let [network, un, uid] = split3(&k);
            out(Row::Puppet {
                network: NetworkId::new(network),
                user: UserRef::new(un, uid),
                identity: text(&v),
            })?;
        }
        for link in self.links()? {
            out(Row::Link { link })?;
        }
        for r in self.cursors.iter() {
            let (k, v) = r.map_err(be)?;
            let [network, room, _] = split3(&k);
            out(Row::Cursor {
                room: RoomRef::new(network, room),
                cursor: text(&v),
            })?;
        }
        for r in self.kv.iter() {
            let (k, v) = r.map_err(be)?;
            let [ns, key, _] = split3_at(&k, 2);
            let ts = self.kv_stamps.get(&k).map_err(be)?.and_then(|t| stamp(&t));
            let private = match ts {
                Some(ts) => self
                    .private_time
                    .contains_key(time_key(ts, &[b"k".as_slice(), &k].concat()))
                    .map_err(be)?,
                None => false,
            };
            out(Row::kv(&ns, &key, &v, ts, private))?;
        }
        for entry in self.audit_log()? {
            out(Row::Audit { entry })?;
        }
        Ok(())
    }

    fn import(&self, row: Row) -> Result<()> {
        let Some(own) = crate::dump::import_common(self, row)? else {
            return Ok(());
        };
        match own {
            Own::Event(event, ts, sender, private) => {
                let id = event.as_str().as_bytes();
                if let Some(sender) = sender {
                    let v = serde_json::to_vec(&sender).map_err(codec)?;
                    self.senders.insert(id, v).map_err(be)?;
                }
                self.stamps.insert(id, &ts.to_be_bytes()).map_err(be)?;
                self.by_time.insert(time_key(ts, id), &[]).map_err(be)?;
                if private {
                    let pk = time_key(ts, &[b"e".as_slice(), id].concat());
                    self.private_time.insert(pk, &[]).map_err(be)?;
                }
            }
            Own::Outbox(mut delivery) => {
                delivery.outbox_id = self.next_id()?;
                let v = encode_row(&delivery)?;
                let k = outbox_key(&delivery.target.network, delivery.outbox_id);
                self.outbox.insert(k, v).map_err(be)?;
            }
            Own::Txn(key, ts) => {
                self.txn_time
                    .insert(time_key(ts, key.as_bytes()), &[])
                    .map_err(be)?;
                self.txns.insert(key, &ts.to_be_bytes()).map_err(be)?;
            }
        }
        Ok(())
    }

    fn drop_outbox(
        &self,
        network: &NetworkId,
        older_than_ms: u64,
        keep_newest: usize,
        spare: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<Dropped>> {
        let dropped = crate::to_drop(self.pending(network)?, older_than_ms, keep_newest, spare);
        for d in &dropped {
            self.outbox
                .remove(outbox_key(network, d.outbox_id))
                .map_err(be)?;
        }
        Ok(dropped)
    }

    fn prune_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let mut n = prune_index(&self.by_time, before_ms, limit, |_, id| {
            self.forget_event(&EventId(String::from_utf8_lossy(id).into_owned()))?;
            Ok(true)
        })?;
        n += prune_index(&self.txn_time, before_ms, limit - n, |_, k| {
            self.txns.remove(k).map_err(be)?;
            Ok(true)
        })?;
        Ok(n + self.prune_legacy(before_ms, limit - n)?)
    }

    fn prune_audit_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let mut n = 0;
        for r in self.audit.iter() {
            if n >= limit {
                break;
            }
            let (k, v) = r.map_err(be)?;
            let Some(entry) = self.read_or_set_aside::<AuditEntry>(&self.audit, "audit", &k, &v)?
            else {
                continue;
            };
            // Appended in time order: the first one young enough ends the pass.
            if entry.ts_ms >= before_ms {
                break;
            }
            self.audit.remove(&k).map_err(be)?;
            n += 1;
        }
        Ok(n)
    }
}

impl SledStore {
    /// Removes the dated adapter row `k` if it was last written at the time `ts` holds (not
    /// written again since, at a later time or undated); true if it went.
    fn forget_row_written_at(&self, k: &[u8], ts: &[u8]) -> Result<bool> {
        let current = self.kv_stamps.get(k).map_err(be)?;
        if current.as_deref().and_then(stamp) != stamp(ts) {
            return Ok(false);
        }
        self.kv.remove(k).map_err(be)?;
        self.kv_stamps.remove(k).map_err(be)?;
        Ok(true)
    }

    /// Removes every message-map row of `event` (each room's ids and the rows mapping them
    /// back), its sender and its stamp.
    fn forget_event(&self, event: &EventId) -> Result<()> {
        let prefix = key(&[event.as_str(), ""]);
        for r in self.by_event.scan_prefix(&prefix) {
            let (k, v) = r.map_err(be)?;
            let rest = k.get(prefix.len()..).unwrap_or_default();
            // The rest is `network NUL room`: the same bytes begin its ids' reverse keys.
            let ids: Vec<MessageId> = serde_json::from_slice(&v).unwrap_or_default();
            for id in ids {
                let mut rk = rest.to_vec();
                rk.push(0);
                rk.extend_from_slice(id.as_str().as_bytes());
                // Only if it still names this event.
                if self.by_remote.get(&rk).map_err(be)?.as_deref()
                    == Some(event.as_str().as_bytes())
                {
                    self.by_remote.remove(&rk).map_err(be)?;
                }
            }
            self.by_event.remove(&k).map_err(be)?;
        }
        self.senders.remove(event.as_str()).map_err(be)?;
        self.stamps.remove(event.as_str()).map_err(be)?;
        Ok(())
    }

    /// Once the time the store was upgraded at is older than `before_ms`: removes the
    /// message-map rows and transaction keys an earlier version stored without a time, at
    /// most `limit` (and a bounded walk), carrying on where the last call stopped.
    fn prune_legacy(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let Some(until) = self.meta.get(LEGACY_UNTIL).map_err(be)? else {
            return Ok(0);
        };
        if stamp(&until).is_some_and(|t| t >= before_ms) || limit == 0 {
            return Ok(0);
        }
        let mut budget = Budget {
            n: 0,
            limit,
            walked: limit.saturating_mul(16),
        };
        let from = self.meta.get(LEGACY_EVENTS).map_err(be)?;
        if from.as_deref() != Some(b"done".as_slice()) {
            let done = self.resume_walk(&self.by_event, LEGACY_EVENTS, &mut budget, |k, _| {
                let id = k.split(|b| *b == 0).next().unwrap_or_default();
                if self.stamps.contains_key(id).map_err(be)? {
                    return Ok(false);
                }
                self.forget_event(&EventId(String::from_utf8_lossy(id).into_owned()))?;
                Ok(true)
            })?;
            if !done {
                return Ok(budget.n);
            }
            self.meta
                .insert(LEGACY_EVENTS, b"done".as_slice())
                .map_err(be)?;
        }
        let done = self.resume_walk(&self.txns, LEGACY_TXNS, &mut budget, |k, v| {
            if !v.is_empty() {
                return Ok(false);
            }
            self.txns.remove(k).map_err(be)?;
            Ok(true)
        })?;
        if !done {
            return Ok(budget.n);
        }
        for k in [LEGACY_UNTIL, LEGACY_EVENTS, LEGACY_TXNS] {
            self.meta.remove(k).map_err(be)?;
        }
        tracing::info!(
            "The message map rows stored without a time by an earlier version are gone."
        );
        Ok(budget.n)
    }

    /// Walks `tree` on from the key kept under `mark` in `meta` (from its start when none),
    /// calling `forget(key, value)` on each entry and counting in `budget` those it says
    /// went. When the count reaches the limit or the walk its length, the next key is kept
    /// under `mark` for the next call and false returned; true once the walk reached the end.
    fn resume_walk(
        &self,
        tree: &sled::Tree,
        mark: &[u8],
        budget: &mut Budget,
        mut forget: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<bool> {
        let start = self
            .meta
            .get(mark)
            .map_err(be)?
            .map(|f| f.to_vec())
            .unwrap_or_default();
        for r in tree.range(start..) {
            let (k, v) = r.map_err(be)?;
            if budget.n >= budget.limit || budget.walked == 0 {
                self.meta.insert(mark, k.to_vec()).map_err(be)?;
                return Ok(false);
            }
            budget.walked -= 1;
            budget.n += usize::from(forget(&k, &v)?);
        }
        Ok(true)
    }
}
