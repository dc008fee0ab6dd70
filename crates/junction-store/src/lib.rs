//! Junction's durable state behind one [`Store`] trait: room links, puppets, the message map,
//! per-network outboxes, Matrix transaction dedupe, per-room backfill cursors and small
//! adapter-private key/value tables.
//!
//! Three backends share one conformance suite: [`SledStore`] (on disk, the default),
//! [`PgStore`] (PostgreSQL) and [`MemStore`] (tests, benchmarks). Only this crate knows sled
//! and PostgreSQL.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

use junction_core::router::{Link, Planned, RefResolver};
use junction_core::{Delivered, Delivery, Event, EventId, MessageId, NetworkId, RoomRef, UserRef};

mod dump;
mod faulty;
mod mem;
mod pg_store;
mod scoped;
mod sled_rows;
mod sled_store;
#[cfg(test)]
mod tests;

pub use dump::{is_empty, Row};
pub use faulty::{Call, Faulty};
pub use mem::MemStore;
pub use pg_store::{check_url as check_postgres_url, ActiveLock, PgStore};
pub use scoped::{scoped, Scoped};
pub use sled_store::{dir_size, Compacted, SledStore, TreeSize};

/// Compact key: parts joined by NUL (ids never contain NUL).
pub(crate) fn key(parts: &[&str]) -> Vec<u8> {
    let mut k = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p.as_bytes());
    }
    k
}

/// The first `n` (2 or 3) NUL-separated parts of a key, the last one taking the rest
/// (missing ones empty).
pub(crate) fn split3_at(k: &[u8], n: usize) -> [String; 3] {
    let mut parts = k.splitn(n, |b| *b == 0);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    [next(), next(), next()]
}

/// The three NUL-separated parts of a key (missing ones empty).
pub(crate) fn split3(k: &[u8]) -> [String; 3] {
    split3_at(k, 3)
}

/// The rows of `rows` (one network's outbox, in order) that [`Store::drop_outbox`] drops.
pub(crate) fn to_drop(
    rows: Vec<Delivery>,
    older_than_ms: u64,
    keep_newest: usize,
    spare: &dyn Fn(u64) -> bool,
) -> Vec<Dropped> {
    let rows: Vec<Delivery> = rows.into_iter().filter(|d| !spare(d.outbox_id)).collect();
    let beyond = rows.len().saturating_sub(keep_newest);
    rows.into_iter()
        .enumerate()
        .filter(|(i, d)| *i < beyond || d.event.ts_ms < older_than_ms)
        .map(|(_, d)| Dropped {
            outbox_id: d.outbox_id,
            event: d.event.id,
            target: d.target,
            bridge: d.bridge,
        })
        .collect()
}

/// Builds the outbox rows for `planned`, ids taken from `next_id`.
pub(crate) fn outbox_rows(
    event: &Event,
    planned: Vec<Planned>,
    mut next_id: impl FnMut() -> Result<u64>,
) -> Result<Vec<Delivery>> {
    planned
        .into_iter()
        .map(|p| {
            Ok(Delivery {
                outbox_id: next_id()?,
                bridge: p.bridge,
                target: p.target,
                event: event.clone(),
                reply_to: p.reply_to,
                target_ids: p.target_ids,
            })
        })
        .collect()
}

/// An outbox row encoded as stored, refused with [`StoreError::Codec`] unless it reads back:
/// whatever the store accepts it can read again (e.g. a body nested past `serde_json`'s
/// recursion limit would be written fine and then never read).
/// True when `event` belongs to a private conversation: said in one, or sent into one (the
/// gateway's answer to a refused private message).
pub(crate) fn is_private_event(event: &Event, planned: &[Planned]) -> bool {
    junction_core::private::is_private(&event.origin.room)
        || planned
            .iter()
            .any(|p| junction_core::private::is_private(&p.target.room))
}

pub(crate) fn encode_row(row: &Delivery) -> Result<Vec<u8>> {
    let bytes = serde_json::to_vec(row).map_err(|e| StoreError::Codec(e.to_string()))?;
    serde_json::from_slice::<Delivery>(&bytes)
        .map_err(|e| StoreError::Codec(format!("would not read back: {e}")))?;
    Ok(bytes)
}

pub use junction_core::store::StoreError;

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// The outcome of [`Store::record_inbound`].
#[derive(Debug, PartialEq)]
pub enum Recorded {
    /// First time this origin message was seen: these outbox rows were written.
    New(Vec<Delivery>),
    /// The origin message was recorded before (a replay, a backfill overlap): nothing written.
    Duplicate,
}

/// One outbox row dropped by [`Store::drop_outbox`].
#[derive(Clone, Debug, PartialEq)]
pub struct Dropped {
    /// The row's outbox id.
    pub outbox_id: u64,
    /// The event it carried.
    pub event: EventId,
    /// The room it was for.
    pub target: RoomRef,
    /// The bridge that room is linked by.
    pub bridge: junction_core::BridgeName,
}

/// One entry of the admin audit trail.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// When, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// Who (network user id as text, e.g. `matrix/@admin:matrix.test`).
    pub actor: String,
    /// The command as given.
    pub action: String,
    /// What came of it.
    pub outcome: String,
}

/// Durable gateway state. Every method is atomic; methods whose doc says "one transaction"
/// write all-or-nothing. Writes are durable after [`Store::flush`] returns.
pub trait Store: Send + Sync + 'static {
    // ---- message map and outboxes ----

    /// All or nothing, even across a crash (one transaction; in sled an intent settled at the
    /// next open): maps `event.origin`/`event.remote_id` to `event.id`, notes the
    /// sender of a message (see [`Store::sender_of`]), and writes one outbox row per planned
    /// target (ids assigned, increasing). If the origin message is
    /// already mapped, writes nothing and returns [`Recorded::Duplicate`].
    fn record_inbound(&self, event: &Event, planned: Vec<Planned>) -> Result<Recorded>;

    /// Maps each returned remote id in `d.target` to `d.event` (both ways, parts in order),
    /// then removes the outbox row. Idempotent. A crash may keep the ids and not the removal
    /// (the row is handed out again, as if unanswered), never the removal without the ids.
    /// The caller need not flush at once: losing an answer only re-sends its line.
    fn record_delivered(&self, d: &Delivered) -> Result<()>;

    /// The gateway event behind `remote` in `room`, if known.
    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Result<Option<EventId>>;

    /// The ids `event` has in `room`, in part order (its origin id when `room` is its origin).
    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Result<Vec<MessageId>>;

    /// Who sent the message `event`, as [`Store::record_inbound`] recorded it for every
    /// message (the author an edit or redaction of it is checked against).
    fn sender_of(&self, event: &EventId) -> Result<Option<UserRef>>;

    /// Undelivered outbox rows for a network, in outbox order.
    fn pending(&self, network: &NetworkId) -> Result<Vec<Delivery>>;

    /// Number of undelivered outbox rows for a network.
    fn outbox_depth(&self, network: &NetworkId) -> Result<usize>;

    /// How many stored records could not be read back (corrupt, or nested too deeply) and
    /// were set aside since the store was opened. Reads skip such a record, log its key and
    /// move it out of the way (the sled backend keeps it in its `quarantine` tree), so one bad
    /// record never stops the others from being handed out.
    fn set_aside(&self) -> u64;

    /// Drops undelivered outbox rows of `network`: those whose event is older than
    /// `older_than_ms` (its origin time, ms since the epoch), and those beyond the
    /// `keep_newest` newest. Rows `spare` names (by outbox id; e.g. already handed to the
    /// adapter) are neither dropped nor counted. Returns what was dropped, in outbox order.
    fn drop_outbox(
        &self,
        network: &NetworkId,
        older_than_ms: u64,
        keep_newest: usize,
        spare: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<Dropped>>;

    // ---- retention ----

    /// Removes the message-map rows of events recorded before `before_ms` (ms since the
    /// epoch): both directions, every part in every room, the sender; and Matrix transaction
    /// keys marked before then. At most `limit` events and keys go per call, oldest first;
    /// returns how many went, so a caller repeats while it gets `limit`. Rows an earlier
    /// version stored without a time count as recorded when this version first opened the
    /// store.
    fn prune_before(&self, before_ms: u64, limit: usize) -> Result<usize>;

    /// Removes what private conversations left before `before_ms`: the message-map rows of
    /// events said in one or sent into one, as [`Store::prune_before`] does,
    /// and the adapter rows written with [`Store::kv_put_private`]. At most `limit` per call,
    /// oldest first; returns how many went. Kept apart from [`Store::prune_before`] so private
    /// messages are forgotten sooner (`[gateway] private_retention_days`); whichever cut comes
    /// first removes them.
    fn prune_private_before(&self, before_ms: u64, limit: usize) -> Result<usize>;

    /// Removes audit entries older than `before_ms`, at most `limit`, oldest first; returns
    /// how many went.
    fn prune_audit_before(&self, before_ms: u64, limit: usize) -> Result<usize>;

    // ---- Matrix transactions ----

    /// True if the transaction key was marked done.
    fn txn_done(&self, key: &str) -> Result<bool>;

    /// Marks a transaction key done.
    fn mark_txn(&self, key: &str) -> Result<()>;

    // ---- puppets ----

    /// The identity (nick, ghost mxid, occupant JID) `user` has on `network`.
    fn puppet(&self, network: &NetworkId, user: &UserRef) -> Result<Option<String>>;

    /// Sets the identity `user` has on `network` (both directions, one transaction).
    fn set_puppet(&self, network: &NetworkId, user: &UserRef, identity: &str) -> Result<()>;

    /// The remote user behind one of our identities on `network`.
    fn puppet_owner(&self, network: &NetworkId, identity: &str) -> Result<Option<UserRef>>;

    // ---- links ----

    /// Runtime links (admin-made), as stored.
    fn links(&self) -> Result<Vec<Link>>;

    /// Stores (replaces) a runtime link.
    fn put_link(&self, link: &Link) -> Result<()>;

    /// Removes a runtime link.
    fn remove_link(&self, bridge: &junction_core::BridgeName) -> Result<()>;

    // ---- cursors ----

    /// The backfill cursor of a room (last seen MAM id, msgid, timestamp...).
    fn cursor(&self, room: &RoomRef) -> Result<Option<String>>;

    /// Moves the backfill cursor of a room.
    fn set_cursor(&self, room: &RoomRef, cursor: &str) -> Result<()>;

    // ---- adapter-private tables ----

    /// Reads a key of an adapter-private table (`ns` e.g. `irc:local/nicks`).
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>>;

    /// Writes a key of an adapter-private table.
    fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<()>;

    /// Removes a key of an adapter-private table.
    fn kv_remove(&self, ns: &str, key: &str) -> Result<()>;

    /// Lists an adapter-private table, in key order.
    fn kv_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Writes a key of an adapter-private table, dated `ts_ms` (ms since the epoch), so that
    /// [`Store::prune_kv_before`] removes it once it is older than the retention.
    fn kv_put_dated(&self, ns: &str, key: &str, value: &[u8], ts_ms: u64) -> Result<()>;

    /// Writes a key of an adapter-private table that belongs to a private conversation, dated
    /// `ts_ms`: removed by [`Store::prune_kv_before`] like any dated row, and sooner by
    /// [`Store::prune_private_before`].
    fn kv_put_private(&self, ns: &str, key: &str, value: &[u8], ts_ms: u64) -> Result<()>;

    /// Removes the adapter-private rows written dated before `before_ms`, at most `limit`,
    /// oldest first; returns how many went. Undated rows are kept.
    fn prune_kv_before(&self, before_ms: u64, limit: usize) -> Result<usize>;

    // ---- audit ----

    /// Appends to the admin audit trail.
    fn audit(&self, entry: &AuditEntry) -> Result<()>;

    /// The audit trail, oldest first.
    fn audit_log(&self) -> Result<Vec<AuditEntry>>;

    // ---- moving stores ----

    /// Hands every row of the store to `out` as the portable dump carries it ([`Row`]):
    /// events and the message map, outbox rows (per network, in order), transaction keys,
    /// puppets, links, cursors, adapter rows and the audit trail (oldest first). Stops at the
    /// first error `out` returns, and returns it.
    fn export(&self, out: &mut dyn FnMut(Row) -> Result<()>) -> Result<()>;

    /// Writes one row of a dump, as [`Store::export`] handed it out; an outbox row gets the
    /// next id, so rows imported in order keep their order, and a row without a time is
    /// dated now.
    fn import(&self, row: Row) -> Result<()>;

    // ---- durability ----

    /// Makes every write so far durable (fsync).
    fn flush(&self) -> Result<()>;
}

/// Judges an edit or redaction against the message map: who wrote the original it names
/// (see [`junction_core::authority::check`]). A store error while looking fails closed
/// (refused unless the sender is a moderator).
pub fn authorise<S: Store + ?Sized>(
    store: &S,
    event: &Event,
) -> std::result::Result<(), junction_core::authority::Refusal> {
    use junction_core::EventKind;
    let target = match &event.kind {
        EventKind::Edit { target, .. } | EventKind::Redact { target, .. } => target,
        _ => return Ok(()),
    };
    let original = match store.event_for(&event.origin, target) {
        Ok(Some(original)) => original,
        Ok(None) => return junction_core::authority::check(event, None),
        Err(e) => {
            tracing::warn!(error = %e, "Message map lookup failed.");
            return junction_core::authority::check(event, Some(None));
        }
    };
    let author = store.sender_of(&original).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "Sender lookup failed.");
        None
    });
    junction_core::authority::check(event, Some(author.as_ref()))
}

/// Any store resolves router references through its message map and puppet table.
/// Lookup failures are logged and treated as "unknown".
pub struct Resolver<'a, S: Store + ?Sized>(pub &'a S);

impl<S: Store + ?Sized> RefResolver for Resolver<'_, S> {
    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Option<EventId> {
        self.0.event_for(room, remote).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Message map lookup failed.");
            None
        })
    }

    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Vec<MessageId> {
        self.0.remote_ids(event, room).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "Message map lookup failed.");
            Vec::new()
        })
    }

    fn is_own_puppet(&self, user: &UserRef) -> bool {
        self.0
            .puppet_owner(&user.network, user.user.as_str())
            .map(|o| o.is_some())
            .unwrap_or(false)
    }
}
