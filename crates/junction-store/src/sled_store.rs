//! On-disk backend over sled: one tree per table, compact NUL-joined keys, serde_json values;
//! the message map one row per event with rooms by number (`crate::sled_rows`), beside the
//! layout an earlier version wrote (`by_remote`, `by_event`, `senders`, `stamps`), which is
//! read, extended and pruned as before, never rewritten.
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
//! - `record_inbound` first notes an *intent* (event id → the outbox keys it will write),
//!   then writes its time index and the outbox rows, then the event's row in `events`, the
//!   commit point (the duplicate check finds the origin id through it), then drops the
//!   intent. At open, an intent whose event row is missing is undone: its outbox rows go, so the
//!   origin's resend (the event was never acknowledged) records it once. The other rows it
//!   may have left are keyed by the event id, which the resend writes again.
//! - `record_delivered` writes the ids into `remote`, then into the event's row (one atomic
//!   read-modify-write), then removes the outbox row:
//!   a crash before the removal leaves the row, and the line is handed out again, as when
//!   the answer had not come.
//!
//! The other writes that belong together still run in one sled transaction.

use crate::dump::Own;
use crate::sled_rows::{
    event_from, event_value, push_time_id, remote_key, room_name, time_row_ids, EventRow, Names,
    COMPACT, TIME_ROW,
};
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

mod compact;
mod legacy;

use compact::finish_swap;
pub use compact::{dir_size, Compacted};
use legacy::{event_key, ids_from, ids_value, room_key, user_from};

/// Store kept in a sled database on disk.
pub struct SledStore {
    db: sled::Db,
    /// The message map, one row per event ([`crate::sled_rows`]).
    events: sled::Tree,
    /// A room's number ++ a remote id → the event id ([`crate::sled_rows`]).
    remote: sled::Tree,
    /// Rooms and networks by number.
    names: Names,
    /// The message map as an earlier version wrote it, read and pruned beside `events`:
    /// network NUL room NUL remote id → event id.
    by_remote: sled::Tree,
    /// Event id NUL network NUL room → the ids there.
    by_event: sled::Tree,
    /// Message event id → its sender (`UserRef`, JSON), an earlier version's.
    senders: sled::Tree,
    outbox: sled::Tree,
    txns: sled::Tree,
    puppets: sled::Tree,
    owners: sled::Tree,
    links: sled::Tree,
    cursors: sled::Tree,
    kv: sled::Tree,
    audit: sled::Tree,
    /// Message event id → when it was recorded (ms, 8 bytes big-endian), an earlier
    /// version's.
    stamps: sled::Tree,
    /// When (8 bytes big-endian) ++ event id (as [`event_value`], or text from an earlier
    /// version) → nothing: the message map in age order.
    by_time: sled::Tree,
    /// When ++ transaction key → nothing: the transaction keys in age order (their value in
    /// `txns` is the same time; an empty value is a key an earlier version marked).
    txn_time: sled::Tree,
    /// Dated adapter-private row (`ns` NUL key) → when, an earlier version's (its value
    /// is in `kv`); read and pruned, no longer written.
    kv_stamps: sled::Tree,
    /// Dated adapter-private row (`ns` NUL key) → when (8 bytes big-endian) ++ its value:
    /// one write where an earlier version made two (`kv` and `kv_stamps`).
    kv_dated: sled::Tree,
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
    /// The `by_time` row new events are added to: its key, its value, how many it holds.
    time_row: std::sync::Mutex<Option<TimeRow>>,
    set_aside: AtomicU64,
    /// Test hook: how many of `record_inbound`'s writes to make (a crash after them).
    #[cfg(test)]
    tear_after: std::sync::Mutex<Option<usize>>,
    /// Added to sled's id generator: the last id the database had before
    /// [`SledStore::compact`] copied it into a fresh one (whose generator starts again at 0),
    /// so outbox and audit ids keep increasing; 0 in a store never compacted.
    id_floor: u64,
}

/// An adapter row's new form for [`SledStore::kv_move`].
#[derive(Clone, Copy)]
enum KvRow<'a> {
    /// Its value, in `kv`.
    Undated(&'a [u8]),
    /// When it was written (8 bytes) ++ its value, in `kv_dated`.
    Dated(&'a [u8]),
}

/// The `by_time` row being filled: its key, its value, how many ids it holds.
type TimeRow = (Vec<u8>, Vec<u8>, usize);

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

/// In `meta`: present once a version that dates its rows has opened the store.
const LAYOUT: &[u8] = b"dated";
/// In `meta`: when that happened, if rows without a time were there then (they count as
/// recorded at that time).
const LEGACY_UNTIL: &[u8] = b"legacy_until";
/// In `meta`: where the walk removing undated message-map rows goes on.
const LEGACY_EVENTS: &[u8] = b"legacy_events";
/// In `meta`: where the walk removing undated transaction keys goes on.
const LEGACY_TXNS: &[u8] = b"legacy_txns";
/// In `meta`: the id floor of a compacted store (8 bytes big-endian, see
/// [`SledStore::compact`]).
const ID_FLOOR: &[u8] = b"id_floor";

/// One table's share of a sled store ([`SledStore::tree_sizes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeSize {
    /// The tree's name.
    pub name: String,
    /// How many rows it holds.
    pub rows: u64,
    /// Their keys' bytes.
    pub key_bytes: u64,
    /// Their values' bytes.
    pub value_bytes: u64,
}

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
        finish_swap(path.as_ref())?;
        let db = open_db(path.as_ref(), wait, give_up)?;
        let t = |n: &str| db.open_tree(n).map_err(be);
        let meta = t("meta")?;
        let id_floor = meta.get(ID_FLOOR).map_err(be)?.and_then(|v| stamp(&v));
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
            kv_dated: t("kv_dated")?,
            kv_time: t("kv_time")?,
            private_time: t("private_time")?,
            meta,
            events: t("events")?,
            remote: t("remote")?,
            names: Names::new(t("names")?, t("named")?),
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
            time_row: std::sync::Mutex::new(None),
            set_aside: AtomicU64::new(0),
            #[cfg(test)]
            tear_after: std::sync::Mutex::new(None),
            id_floor: id_floor.unwrap_or(0),
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
        // An intent is keyed as its commit point: the event's key in `events`, or an earlier
        // version's origin key in `by_remote`.
        let undo = !self.events.contains_key(origin).map_err(be)?
            && !self.by_remote.contains_key(origin).map_err(be)?;
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

    /// Every tree holding rows, with its rows' count and bytes: what the store holds, beside
    /// what it takes on disk. Reads every row.
    pub fn tree_sizes(&self) -> Result<Vec<TreeSize>> {
        let mut out = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name).map_err(be)?;
            let mut size = TreeSize {
                name: String::from_utf8_lossy(&name).into_owned(),
                rows: 0,
                key_bytes: 0,
                value_bytes: 0,
            };
            for r in tree.iter() {
                let (k, v) = r.map_err(be)?;
                size.rows += 1;
                size.key_bytes += k.len() as u64;
                size.value_bytes += v.len() as u64;
            }
            if size.rows > 0 {
                out.push(size);
            }
        }
        Ok(out)
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
        self.db
            .generate_id()
            .map(|i| i + 1 + self.id_floor)
            .map_err(be)
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

/// What sled may keep of the database in memory, by its own count. Its default, 1 GiB, let
/// the gateway's RSS grow with every message carried, about 0.9 kB per message for as long
/// as it ran (`bench --compare --flat 100000`: 29.7 → 114.9 MB, still rising). With this
/// bound the same run levelled off at about 95 MB (sled counts less than it holds); what
/// falls out is read from disk again, which only lookups of old messages need.
const CACHE_BYTES: u64 = 32 * 1024 * 1024;

/// Opens the sled database, retrying while its lock is held, until `wait` is over or
/// `give_up` says so.
fn open_db(path: &Path, wait: std::time::Duration, give_up: &dyn Fn() -> bool) -> Result<sled::Db> {
    let deadline = std::time::Instant::now() + wait;
    let mut said = false;
    loop {
        match sled::Config::new()
            .path(path)
            .cache_capacity(CACHE_BYTES)
            .open()
        {
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
        let origin = self.names.number(&room_name(&event.origin))?;
        let id_value = event_value(&event.id);
        // The intent is keyed by the event id, whose row is the commit point.
        let k = id_value.clone();
        let _one = self.recording.lock().unwrap_or_else(|p| p.into_inner());
        if self.event_for(&event.origin, &event.remote_id)?.is_some() {
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
        // An event whose id is derived from its origin is found from there without a
        // `remote` row (see `event_for`); any other needs one.
        let origin_key = (event.id != EventId::derive(&event.origin, &event.remote_id))
            .then(|| remote_key(origin, event.remote_id.as_str()));
        let sender = match event.kind {
            junction_core::EventKind::Message(_) => Some(self.names.sender(&event.sender.user)?),
            _ => None,
        };
        let now = now_ms();
        let row = EventRow {
            time: now,
            private,
            sender,
            rooms: vec![(origin, vec![event.remote_id.clone()])],
        }
        .encode();
        let (tk, tv) = self.next_time_row(now, &id_value);
        let private = private.then(|| time_key(now, &[b"e".as_slice(), &id_value].concat()));
        let intent = encode_keys(encoded.iter().map(|(ok, _)| ok.as_slice()));
        // In this order (see the module's doc): the intent, the rows, the commit point.
        let mut writes: Vec<Write<'_>> = vec![
            (&self.intents, &k, Some(&intent)),
            (&self.by_time, &tk, Some(&tv)),
        ];
        if let Some(pk) = &private {
            writes.push((&self.private_time, pk, Some(&[])));
        }
        for (ok, v) in &encoded {
            writes.push((&self.outbox, ok, Some(v)));
        }
        if let Some(ok) = &origin_key {
            writes.push((&self.remote, ok, Some(&id_value)));
        }
        writes.push((&self.events, &id_value, Some(&row)));
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
            let id_value = event_value(&d.event);
            if self.events.contains_key(&id_value).map_err(be)? {
                let room = self.names.number(&room_name(&d.target))?;
                for id in ids {
                    self.remote
                        .insert(remote_key(room, id.as_str()), id_value.as_slice())
                        .map_err(be)?;
                }
                let mut failed = None;
                self.events
                    .fetch_and_update(&id_value, |old| {
                        let mut row = EventRow::decode(old?).map_err(|e| failed = Some(e)).ok()?;
                        row.set_ids(room, ids.clone());
                        Some(row.encode())
                    })
                    .map_err(be)?;
                if let Some(e) = failed {
                    return Err(e);
                }
            } else {
                // An event an earlier version recorded keeps its rows where they are.
                let v = ids_value(ids)?;
                for id in ids {
                    self.by_remote
                        .insert(room_key(&d.target, id.as_str()), id_value.as_slice())
                        .map_err(be)?;
                }
                self.by_event
                    .insert(event_key(&d.event, &d.target), v)
                    .map_err(be)?;
            }
        }
        self.outbox
            .remove(outbox_key(&d.target.network, d.outbox_id))
            .map(drop)
            .map_err(be)
    }

    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Result<Option<EventId>> {
        if let Some(n) = self.names.get(&room_name(room))? {
            if let Some(v) = self
                .remote
                .get(remote_key(n, remote.as_str()))
                .map_err(be)?
            {
                return Ok(Some(event_from(&v)));
            }
            // An event's origin id has no `remote` row: its id is derived from it.
            let derived = EventId::derive(room, remote);
            if let Some(row) = self.event_row(&derived)? {
                if row
                    .rooms
                    .iter()
                    .any(|(r, ids)| *r == n && ids.contains(remote))
                {
                    return Ok(Some(derived));
                }
            }
        }
        Ok(self
            .by_remote
            .get(room_key(room, remote.as_str()))
            .map_err(be)?
            .map(|v| event_from(&v)))
    }

    fn sender_of(&self, event: &EventId) -> Result<Option<UserRef>> {
        if let Some(row) = self.event_row(event)? {
            return row.sender.as_ref().map(|s| self.names.user(s)).transpose();
        }
        match self.senders.get(event.as_str()).map_err(be)? {
            Some(v) => user_from(&v).map(Some),
            None => Ok(None),
        }
    }

    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Result<Vec<MessageId>> {
        if let Some(row) = self.event_row(event)? {
            let Some(n) = self.names.get(&room_name(room))? else {
                return Ok(Vec::new());
            };
            return Ok(row
                .rooms
                .into_iter()
                .find(|(r, _)| *r == n)
                .map(|(_, ids)| ids)
                .unwrap_or_default());
        }
        match self.by_event.get(event_key(event, room)).map_err(be)? {
            Some(v) => ids_from(&v),
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
        let k = key(&[ns, k]);
        if let Some(v) = self.kv_dated.get(&k).map_err(be)? {
            return Ok(Some(v.get(8..).unwrap_or_default().to_vec()));
        }
        Ok(self.kv.get(k).map_err(be)?.map(|v| v.to_vec()))
    }

    fn kv_put(&self, ns: &str, k: &str, value: &[u8]) -> Result<()> {
        let k = key(&[ns, k]);
        if self.kv_dated.contains_key(&k).map_err(be)?
            || self.kv_stamps.contains_key(&k).map_err(be)?
        {
            return self.kv_move(&k, KvRow::Undated(value));
        }
        self.kv.insert(k, value).map(drop).map_err(be)
    }

    fn kv_remove(&self, ns: &str, k: &str) -> Result<()> {
        let k = key(&[ns, k]);
        // A key is under one form (`kv_move` keeps it so), so at most one of the first two
        // removes writes; an earlier version's time goes last, as a crash before it leaves
        // only a time with no row, which pruning takes away.
        self.kv_dated.remove(&k).map_err(be)?;
        self.kv.remove(&k).map_err(be)?;
        self.kv_stamps.remove(&k).map(drop).map_err(be)
    }

    fn kv_put_dated(&self, ns: &str, k: &str, value: &[u8], ts_ms: u64) -> Result<()> {
        let k = key(&[ns, k]);
        self.kv_time.insert(time_key(ts_ms, &k), &[]).map_err(be)?;
        let row = [ts_ms.to_be_bytes().as_slice(), value].concat();
        if self.kv.contains_key(&k).map_err(be)? {
            return self.kv_move(&k, KvRow::Dated(&row));
        }
        self.kv_dated.insert(k, row).map(drop).map_err(be)
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
                    self.forget_event(&event_from(id))?;
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
        let undated = self
            .kv
            .scan_prefix(&prefix)
            .map(|r| r.map(|(k, v)| (k, v, 0)));
        let dated = self
            .kv_dated
            .scan_prefix(&prefix)
            .map(|r| r.map(|(k, v)| (k, v, 8)));
        // A key is in one of the two trees (a move is one transaction); should a scan meet
        // it in both, the dated row wins, as in `kv_get`. In key order, as before.
        let mut rows = std::collections::BTreeMap::new();
        for r in undated.chain(dated) {
            let (k, v, skip) = r.map_err(be)?;
            let k = String::from_utf8_lossy(&k[prefix.len()..]).into_owned();
            rows.insert(k, v.get(skip..).unwrap_or_default().to_vec());
        }
        Ok(rows.into_iter().collect())
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
                Some(v) => user_from(&v).map(Some),
                None => Ok(None),
            }
        };
        for r in self.by_time.iter() {
            let (tk, v) = r.map_err(be)?;
            let (ts, first) = tk.split_at(8.min(tk.len()));
            for id in time_row_ids(first, &v) {
                let event = event_from(id);
                let (stamp, private) = match self.event_row(&event)? {
                    Some(row) => (Some(row.time), row.private),
                    None => {
                        let pk = time_key(stamp(ts).unwrap_or(0), &[b"e".as_slice(), id].concat());
                        (stamp(ts), self.private_time.contains_key(pk).map_err(be)?)
                    }
                };
                out(Row::Event {
                    sender: self.sender_of(&event)?,
                    event,
                    stamp,
                    private,
                })?;
            }
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
        for r in self.events.iter() {
            let (k, v) = r.map_err(be)?;
            for (room, ids) in EventRow::decode(&v)?.rooms {
                out(Row::Map {
                    event: event_from(&k),
                    room: self.names.room(room)?,
                    ids,
                })?;
            }
        }
        for r in self.by_event.iter() {
            let (k, v) = r.map_err(be)?;
            let [event, network, room] = split3(&k);
            out(Row::Map {
                event: EventId(event),
                room: RoomRef::new(network, room),
                ids: ids_from(&v)?,
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
        let undated = self.kv.iter().map(|r| {
            let (k, v) = r.map_err(be)?;
            let ts = self.kv_stamps.get(&k).map_err(be)?.and_then(|t| stamp(&t));
            Ok((k, v.to_vec(), ts))
        });
        let dated = self.kv_dated.iter().map(|r| {
            let (k, v) = r.map_err(be)?;
            let (ts, v) = v.split_at(8.min(v.len()));
            Ok((k, v.to_vec(), stamp(ts)))
        });
        for r in undated.chain(dated) {
            let (k, v, ts): (sled::IVec, Vec<u8>, Option<u64>) = r?;
            let [ns, key, _] = split3_at(&k, 2);
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
                let id = event_value(&event);
                let mut row = self.event_row(&event)?.unwrap_or_default();
                row.time = ts;
                row.private = private;
                row.sender = sender.map(|u| self.names.sender(&u)).transpose()?;
                self.events
                    .insert(id.as_slice(), row.encode())
                    .map_err(be)?;
                self.by_time.insert(time_key(ts, &id), &[]).map_err(be)?;
                if private {
                    let pk = time_key(ts, &[b"e".as_slice(), &id].concat());
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
        let mut n = self.prune_times(before_ms, limit)?;
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
    /// Writes adapter row `k` as `row` where it is under the other form too (undated in
    /// `kv`, dated in `kv_dated`, or an earlier version's `kv` + `kv_stamps`): in one
    /// transaction, so a crash or a reader never sees both forms or neither. Rare: a table
    /// keeps one form; the usual write is one insert.
    fn kv_move(&self, k: &[u8], row: KvRow<'_>) -> Result<()> {
        (&self.kv, &self.kv_dated, &self.kv_stamps)
            .transaction(|(kv, dated, stamps)| {
                stamps.remove(k)?;
                match row {
                    KvRow::Undated(v) => {
                        dated.remove(k)?;
                        kv.insert(k, v)?;
                    }
                    KvRow::Dated(v) => {
                        kv.remove(k)?;
                        dated.insert(k, v)?;
                    }
                }
                Ok(())
            })
            .map_err(tx)
    }

    /// Removes the dated adapter row `k` if it was last written at the time `ts` holds (not
    /// written again since, at a later time or undated); true if it went.
    fn forget_row_written_at(&self, k: &[u8], ts: &[u8]) -> Result<bool> {
        if let Some(row) = self.kv_dated.get(k).map_err(be)? {
            if row.get(..8).and_then(stamp) != stamp(ts) {
                return Ok(false);
            }
            // Only as read: a write in between (a newer time) keeps its row.
            let gone = self
                .kv_dated
                .compare_and_swap(k, Some(row), None::<&[u8]>)
                .map_err(be)?;
            return Ok(gone.is_ok());
        }
        // A row an earlier version dated: its value in `kv`, its time in `kv_stamps`.
        let current = self.kv_stamps.get(k).map_err(be)?;
        if current.as_deref().and_then(stamp) != stamp(ts) {
            return Ok(false);
        }
        self.kv.remove(k).map_err(be)?;
        self.kv_stamps.remove(k).map_err(be)?;
        Ok(true)
    }

    /// The `by_time` row to write for an event recorded at `now`: the current one with
    /// `id` added, or a new one once that holds [`TIME_ROW`] ids. Not a new one within the
    /// current row's millisecond: two rows of one millisecond sort by their first ids, not in
    /// the order they were made, and pruning (oldest first) would take the later one first.
    fn next_time_row(&self, now: u64, id: &[u8]) -> (Vec<u8>, Vec<u8>) {
        let mut row = self.time_row.lock().unwrap_or_else(|p| p.into_inner());
        match row.as_mut() {
            Some((k, v, n)) if *n < TIME_ROW || k.get(..8).and_then(stamp) == Some(now) => {
                push_time_id(v, id);
                *n += 1;
                (k.clone(), v.clone())
            }
            _ => {
                let k = time_key(now, id);
                *row = Some((k.clone(), Vec::new(), 1));
                (k, Vec::new())
            }
        }
    }

    /// Forgets the events `by_time` holds recorded before `before_ms`, oldest first, at
    /// most `limit`; a row partly pruned is written again with the rest, at its place (its
    /// time, the first id left), then the old row goes. Each id's time is its event's (the
    /// row's for an earlier version's event); ids whose event is gone count, as before. A
    /// row whose key is older than the cut may hold younger events (it began before the cut,
    /// or shares a millisecond with the next one): the walk goes on past it to the cut.
    fn prune_times(&self, before_ms: u64, limit: usize) -> Result<usize> {
        // New events go to a new row from now on, never to one pruned here.
        *self.time_row.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let time_of = |e: &EventId| self.event_row(e).ok().flatten().map(|r| r.time);
        let mut n = 0;
        for r in self.by_time.range(..before_ms.to_be_bytes().to_vec()) {
            if n >= limit {
                break;
            }
            let (tk, v) = r.map_err(be)?;
            let (ts, first) = tk.split_at(8.min(tk.len()));
            let ids = time_row_ids(first, &v);
            let mut gone = 0;
            for id in &ids {
                let event = event_from(id);
                let young = time_of(&event)
                    .or(stamp(ts))
                    .is_some_and(|t| t >= before_ms);
                if n >= limit || young {
                    break;
                }
                self.forget_event(&event)?;
                n += 1;
                gone += 1;
            }
            if gone > 0 && gone < ids.len() {
                let mut v = Vec::new();
                for id in &ids[gone + 1..] {
                    push_time_id(&mut v, id);
                }
                self.by_time
                    .insert(time_key(stamp(ts).unwrap_or(0), ids[gone]), v)
                    .map_err(be)?;
            }
            if gone > 0 {
                self.by_time.remove(&tk).map_err(be)?;
            }
        }
        Ok(n)
    }

    /// The `events` row of `event`, if it has one (not if an earlier version recorded it).
    fn event_row(&self, event: &EventId) -> Result<Option<EventRow>> {
        match self.events.get(event_value(event)).map_err(be)? {
            Some(v) => EventRow::decode(&v).map(Some),
            None => Ok(None),
        }
    }

    /// Removes every message-map row of `event` (each room's ids and the rows mapping them
    /// back), its sender and its stamp, in either layout.
    fn forget_event(&self, event: &EventId) -> Result<()> {
        let id_value = event_value(event);
        if let Some(v) = self.events.get(&id_value).map_err(be)? {
            // A row that does not read leaves its ids in `remote` (each is replaced when
            // its remote id is seen again).
            for (room, ids) in EventRow::decode(&v).map(|r| r.rooms).unwrap_or_default() {
                for id in ids {
                    let rk = remote_key(room, id.as_str());
                    // Only if it still names this event.
                    if self.remote.get(&rk).map_err(be)?.as_deref() == Some(&id_value[..]) {
                        self.remote.remove(&rk).map_err(be)?;
                    }
                }
            }
            self.events.remove(&id_value).map_err(be)?;
        }
        let prefix = key(&[event.as_str(), ""]);
        for r in self.by_event.scan_prefix(&prefix) {
            let (k, v) = r.map_err(be)?;
            let rest = k.get(prefix.len()..).unwrap_or_default();
            // The rest is `network NUL room`: the same bytes begin its ids' reverse keys.
            let ids = ids_from(&v).unwrap_or_default();
            for id in ids {
                let mut rk = rest.to_vec();
                rk.push(0);
                rk.extend_from_slice(id.as_str().as_bytes());
                // Only if it still names this event.
                if self
                    .by_remote
                    .get(&rk)
                    .map_err(be)?
                    .map(|v| event_from(&v))
                    .as_ref()
                    == Some(event)
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
}
