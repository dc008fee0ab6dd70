//! What an adapter may keep: its own tables, its network's puppets, its rooms' cursors and
//! transaction keys, through one [`AdapterStore`] handle from its
//! [`AdapterContext`](crate::AdapterContext).
//!
//! The handle is namespaced: table `seen` of adapter `irc:libera` is stored as
//! `irc:libera/seen`, so no adapter reads another's tables, and every table name has one
//! style. What another part of the gateway needs from an adapter travels in events (an XMPP
//! occupant's real JID on [`Sender::address`](crate::Sender::address)) or through a named
//! interface ([`Pastes`]).
//!
//! The store itself (`junction-store`) implements this trait; core only names it, so it still
//! does no I/O.

use crate::ids::{NetworkId, RoomRef, UserRef};

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend failed (disk, corruption).
    #[error("store backend: {0}")]
    Backend(String),
    /// A record could not be (de)serialised.
    #[error("store record: {0}")]
    Codec(String),
}

impl StoreError {
    /// True when the record itself is at fault (it cannot be encoded, or would not read back):
    /// trying again cannot help, so the item that carried it is refused rather than retried.
    /// A backend error (disk full, I/O) is not permanent.
    pub fn is_permanent(&self) -> bool {
        matches!(self, StoreError::Codec(_))
    }
}

/// Result of store operations.
pub type StoreResult<T> = std::result::Result<T, StoreError>;

/// One adapter's view of the store. Every method is scoped to [`AdapterStore::network`]:
/// tables are the adapter's own, puppets are its network's identities.
pub trait AdapterStore: Send + Sync + std::fmt::Debug + 'static {
    /// The network this handle belongs to.
    fn network(&self) -> &NetworkId;

    /// Reads a key of one of this adapter's tables.
    fn get(&self, table: &str, key: &str) -> StoreResult<Option<Vec<u8>>>;

    /// Writes a key of one of this adapter's tables.
    fn put(&self, table: &str, key: &str, value: &[u8]) -> StoreResult<()>;

    /// Writes a key of one of this adapter's tables, dated now: the gateway removes it once
    /// it is older than the message map's retention (`[gateway] retention_days`). For rows
    /// that only matter while the messages they name are remembered (quotes, stanza ids,
    /// reactions). The default writes it undated, kept until removed.
    fn put_dated(&self, table: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        self.put(table, key, value)
    }

    /// Writes a key of one of this adapter's tables that belongs to a private conversation,
    /// dated now: removed after the shorter private retention
    /// (`[gateway] private_retention_days`). The default writes it as [`Self::put_dated`].
    fn put_private(&self, table: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        self.put_dated(table, key, value)
    }

    /// [`Self::put_private`] when `room` is a private conversation, else [`Self::put_dated`].
    fn put_dated_for(
        &self,
        room: &RoomRef,
        table: &str,
        key: &str,
        value: &[u8],
    ) -> StoreResult<()> {
        if crate::private::is_private(&room.room) {
            self.put_private(table, key, value)
        } else {
            self.put_dated(table, key, value)
        }
    }

    /// Removes a key of one of this adapter's tables.
    fn remove(&self, table: &str, key: &str) -> StoreResult<()>;

    /// Lists one of this adapter's tables, in key order.
    fn scan(&self, table: &str) -> StoreResult<Vec<(String, Vec<u8>)>>;

    /// Moves the rows of a table kept under an older name (`legacy`, a full table name as an
    /// earlier version wrote it) into this adapter's table `table`: each row whose key
    /// `rekey` maps to a new key moves under that key, the others stay. Run at start, so an
    /// upgraded gateway keeps what the previous version stored; a no-op once done.
    fn adopt(
        &self,
        legacy: &str,
        table: &str,
        rekey: &dyn Fn(&str) -> Option<String>,
    ) -> StoreResult<()>;

    /// The identity `user` has on this network, if one was made.
    fn puppet(&self, user: &UserRef) -> StoreResult<Option<String>>;

    /// Sets the identity `user` has on this network (both directions, one transaction).
    fn set_puppet(&self, user: &UserRef, identity: &str) -> StoreResult<()>;

    /// The remote user behind one of this network's puppet identities.
    fn puppet_owner(&self, identity: &str) -> StoreResult<Option<UserRef>>;

    /// The backfill cursor of one of this network's rooms.
    fn cursor(&self, room: &RoomRef) -> StoreResult<Option<String>>;

    /// Moves the backfill cursor of one of this network's rooms.
    fn set_cursor(&self, room: &RoomRef, cursor: &str) -> StoreResult<()>;

    /// Whether an inbound transaction key was already handled (Matrix AS transactions).
    fn txn_done(&self, key: &str) -> StoreResult<bool>;

    /// Marks an inbound transaction key handled.
    fn mark_txn(&self, key: &str) -> StoreResult<()>;

    /// Makes what was written durable.
    fn flush(&self) -> StoreResult<()>;
}

/// Where the whole text of a message too long for a network goes: the gateway's public
/// pages (`[gateway] web`). Owned by the gateway, so adapters never share a table.
pub trait Pastes: Send + Sync + std::fmt::Debug + 'static {
    /// Keeps `text` and returns the public URL where it can be read, or `None` when it could
    /// not be kept (logged by the implementation). `origin` names the message it came from
    /// (its event and part): keeping the same origin again gives the same URL, so a delivery
    /// sent again after a restart links the same page.
    fn keep(&self, origin: &str, text: &str) -> Option<String>;
}
