//! [`Scoped`]: one adapter's namespaced handle on the store (the core's [`AdapterStore`]).

use crate::Store;
use junction_core::store::{AdapterStore, StoreResult};
use junction_core::{NetworkId, RoomRef, UserRef};
use std::sync::Arc;

/// The store as one adapter sees it: its tables are `<network>/<table>`, its puppets and
/// cursors are its network's.
#[derive(Clone)]
pub struct Scoped {
    store: Arc<dyn Store>,
    network: NetworkId,
}

impl std::fmt::Debug for Scoped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("network", &self.network)
            .finish_non_exhaustive()
    }
}

/// The handle adapter `network` gets in its `AdapterContext`.
pub fn scoped(store: Arc<dyn Store>, network: NetworkId) -> Arc<dyn AdapterStore> {
    Arc::new(Scoped::new(store, network))
}

impl Scoped {
    /// A handle on `store` for adapter `network`.
    pub fn new(store: Arc<dyn Store>, network: NetworkId) -> Self {
        Self { store, network }
    }

    /// The full name of this adapter's table `table`.
    pub fn table(&self, table: &str) -> String {
        format!("{}/{table}", self.network)
    }
}

impl AdapterStore for Scoped {
    fn network(&self) -> &NetworkId {
        &self.network
    }

    fn get(&self, table: &str, key: &str) -> StoreResult<Option<Vec<u8>>> {
        self.store.kv_get(&self.table(table), key)
    }

    fn put(&self, table: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        self.store.kv_put(&self.table(table), key, value)
    }

    fn put_dated(&self, table: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        let now = junction_core::clock::now_ms();
        self.store.kv_put_dated(&self.table(table), key, value, now)
    }

    fn put_private(&self, table: &str, key: &str, value: &[u8]) -> StoreResult<()> {
        let now = junction_core::clock::now_ms();
        self.store
            .kv_put_private(&self.table(table), key, value, now)
    }

    fn remove(&self, table: &str, key: &str) -> StoreResult<()> {
        self.store.kv_remove(&self.table(table), key)
    }

    fn scan(&self, table: &str) -> StoreResult<Vec<(String, Vec<u8>)>> {
        self.store.kv_scan(&self.table(table))
    }

    fn adopt(
        &self,
        legacy: &str,
        table: &str,
        rekey: &dyn Fn(&str) -> Option<String>,
    ) -> StoreResult<()> {
        let target = self.table(table);
        if legacy == target {
            return Ok(());
        }
        let mut moved = 0usize;
        for (key, value) in self.store.kv_scan(legacy)? {
            let Some(new_key) = rekey(&key) else {
                continue;
            };
            // Written before removed: a crash in between leaves a row to move again, never
            // a lost one.
            self.store.kv_put(&target, &new_key, &value)?;
            self.store.kv_remove(legacy, &key)?;
            moved += 1;
        }
        if moved > 0 {
            tracing::info!(from = legacy, to = %target, rows = moved, "Moved a table to its new name.");
        }
        Ok(())
    }

    fn puppet(&self, user: &UserRef) -> StoreResult<Option<String>> {
        self.store.puppet(&self.network, user)
    }

    fn set_puppet(&self, user: &UserRef, identity: &str) -> StoreResult<()> {
        self.store.set_puppet(&self.network, user, identity)
    }

    fn puppet_owner(&self, identity: &str) -> StoreResult<Option<UserRef>> {
        self.store.puppet_owner(&self.network, identity)
    }

    fn cursor(&self, room: &RoomRef) -> StoreResult<Option<String>> {
        self.store.cursor(room)
    }

    fn set_cursor(&self, room: &RoomRef, cursor: &str) -> StoreResult<()> {
        self.store.set_cursor(room, cursor)
    }

    fn txn_done(&self, key: &str) -> StoreResult<bool> {
        self.store.txn_done(key)
    }

    fn mark_txn(&self, key: &str) -> StoreResult<()> {
        self.store.mark_txn(key)
    }

    fn flush(&self) -> StoreResult<()> {
        self.store.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemStore;

    #[test]
    fn tables_are_namespaced_and_legacy_rows_are_adopted_once() {
        let store: Arc<dyn Store> = Arc::new(MemStore::new());
        store.kv_put("irc.seen", "irc:a", b"1").expect("put");
        store.kv_put("irc.seen", "irc:b", b"2").expect("put");
        let a = Scoped::new(store.clone(), NetworkId::new("irc:a"));
        let b = Scoped::new(store.clone(), NetworkId::new("irc:b"));
        let only = |n: &'static str| move |k: &str| (k == n).then(String::new);
        a.adopt("irc.seen", "seen", &only("irc:a")).expect("adopt");
        assert_eq!(a.get("seen", "").expect("get"), Some(b"1".to_vec()));
        assert_eq!(b.get("seen", "").expect("get"), None);
        b.adopt("irc.seen", "seen", &only("irc:b")).expect("adopt");
        assert_eq!(b.get("seen", "").expect("get"), Some(b"2".to_vec()));
        assert!(store.kv_scan("irc.seen").expect("scan").is_empty());
        assert_eq!(
            store.kv_get("irc:a/seen", "").expect("get"),
            Some(b"1".to_vec())
        );
        a.put("x", "k", b"v").expect("put");
        assert_eq!(b.get("x", "k").expect("get"), None);
    }
}
