//! A [`MemStore`] that fails where a test tells it to, for the failure paths of the store's
//! users (a full disk, a record that cannot be encoded).

use crate::{AuditEntry, Dropped, MemStore, Recorded, Result, Row, Store, StoreError};
use junction_core::router::{Link, Planned};
use junction_core::{
    BridgeName, Delivered, Delivery, Event, EventId, MessageId, NetworkId, RoomRef, UserRef,
};

/// One call to a [`Faulty`] store, as its fault sees it.
#[derive(Clone, Copy, Debug)]
pub enum Call<'a> {
    /// [`Store::record_inbound`] of this event.
    RecordInbound(&'a Event),
    /// Any other method, by name (`"kv_get"`, `"pending"`...).
    Method(&'static str),
}

/// The fault of a [`Faulty`] store: the error a call fails with, or `None` to let it through.
type Fault = Box<dyn Fn(Call<'_>) -> Option<StoreError> + Send + Sync>;

/// A [`MemStore`] whose calls fail when its fault says so, and otherwise go to the store.
pub struct Faulty {
    store: MemStore,
    fault: Fault,
}

impl Faulty {
    /// An empty store failing each call for which `fault` gives an error.
    pub fn new(fault: impl Fn(Call<'_>) -> Option<StoreError> + Send + Sync + 'static) -> Self {
        Self {
            store: MemStore::new(),
            fault: Box::new(fault),
        }
    }

    fn check(&self, call: Call<'_>) -> Result<()> {
        (self.fault)(call).map_or(Ok(()), Err)
    }
}

impl std::fmt::Debug for Faulty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faulty").finish_non_exhaustive()
    }
}

/// Methods that the fault sees by name and that otherwise go to the store.
macro_rules! through {
    ($(fn $name:ident(&self $(, $arg:ident: $ty:ty)*) -> $ret:ty;)*) => {
        $(
            fn $name(&self $(, $arg: $ty)*) -> Result<$ret> {
                self.check(Call::Method(stringify!($name)))?;
                self.store.$name($($arg),*)
            }
        )*
    };
}

impl Store for Faulty {
    fn record_inbound(&self, event: &Event, planned: Vec<Planned>) -> Result<Recorded> {
        self.check(Call::RecordInbound(event))?;
        self.store.record_inbound(event, planned)
    }

    fn set_aside(&self) -> u64 {
        self.store.set_aside()
    }

    through! {
        fn record_delivered(&self, d: &Delivered) -> ();
        fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Option<EventId>;
        fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Vec<MessageId>;
        fn sender_of(&self, event: &EventId) -> Option<UserRef>;
        fn pending(&self, network: &NetworkId) -> Vec<Delivery>;
        fn outbox_depth(&self, network: &NetworkId) -> usize;
        fn drop_outbox(
            &self,
            network: &NetworkId,
            older_than_ms: u64,
            keep_newest: usize,
            spare: &dyn Fn(u64) -> bool
        ) -> Vec<Dropped>;
        fn prune_before(&self, before_ms: u64, limit: usize) -> usize;
        fn prune_private_before(&self, before_ms: u64, limit: usize) -> usize;
        fn prune_audit_before(&self, before_ms: u64, limit: usize) -> usize;
        fn txn_done(&self, key: &str) -> bool;
        fn mark_txn(&self, key: &str) -> ();
        fn puppet(&self, network: &NetworkId, user: &UserRef) -> Option<String>;
        fn set_puppet(&self, network: &NetworkId, user: &UserRef, identity: &str) -> ();
        fn puppet_owner(&self, network: &NetworkId, identity: &str) -> Option<UserRef>;
        fn links(&self) -> Vec<Link>;
        fn put_link(&self, link: &Link) -> ();
        fn remove_link(&self, bridge: &BridgeName) -> ();
        fn cursor(&self, room: &RoomRef) -> Option<String>;
        fn set_cursor(&self, room: &RoomRef, cursor: &str) -> ();
        fn kv_get(&self, ns: &str, key: &str) -> Option<Vec<u8>>;
        fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> ();
        fn kv_remove(&self, ns: &str, key: &str) -> ();
        fn kv_scan(&self, ns: &str) -> Vec<(String, Vec<u8>)>;
        fn kv_put_dated(&self, ns: &str, key: &str, value: &[u8], ts_ms: u64) -> ();
        fn kv_put_private(&self, ns: &str, key: &str, value: &[u8], ts_ms: u64) -> ();
        fn prune_kv_before(&self, before_ms: u64, limit: usize) -> usize;
        fn audit(&self, entry: &AuditEntry) -> ();
        fn audit_log(&self) -> Vec<AuditEntry>;
        fn export(&self, out: &mut dyn FnMut(Row) -> Result<()>) -> ();
        fn import(&self, row: Row) -> ();
        fn flush(&self) -> ();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn fails_only_where_told() {
        let s = Faulty::new(|call| {
            matches!(call, Call::Method("kv_get")).then(|| StoreError::Backend("disk gone".into()))
        });
        s.kv_put("t", "k", b"v").unwrap();
        assert!(s.kv_get("t", "k").is_err());
        assert_eq!(
            s.kv_scan("t").unwrap(),
            vec![("k".to_owned(), b"v".to_vec())]
        );
    }
}
