//! A small in-memory store for this crate's unit tests: the tables the adapter uses (kv,
//! puppets) work; the gateway's tables answer empty.

use junction_core::router::{Link, Planned};
use junction_core::{Delivered, Event, EventId, MessageId, NetworkId, RoomRef, UserRef};
use junction_store::{AuditEntry, Recorded, Result, Store};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

#[derive(Default)]
pub struct TestStore {
    kv: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    txns: Mutex<HashSet<String>>,
    puppets: Mutex<HashMap<(NetworkId, String), UserRef>>,
}

impl Store for TestStore {
    fn record_inbound(&self, _: &Event, _: Vec<Planned>) -> Result<Recorded> {
        Ok(Recorded::New(Vec::new()))
    }
    fn record_delivered(&self, _: &Delivered) -> Result<()> {
        Ok(())
    }
    fn event_for(&self, _: &RoomRef, _: &MessageId) -> Result<Option<EventId>> {
        Ok(None)
    }
    fn remote_ids(&self, _: &EventId, _: &RoomRef) -> Result<Vec<MessageId>> {
        Ok(Vec::new())
    }
    fn pending(&self, _: &NetworkId) -> Result<Vec<junction_core::Delivery>> {
        Ok(Vec::new())
    }
    fn outbox_depth(&self, _: &NetworkId) -> Result<usize> {
        Ok(0)
    }
    fn txn_done(&self, key: &str) -> Result<bool> {
        Ok(self
            .txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key))
    }
    fn mark_txn(&self, key: &str) -> Result<()> {
        self.txns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned());
        Ok(())
    }
    fn puppet(&self, network: &NetworkId, user: &UserRef) -> Result<Option<String>> {
        Ok(self
            .puppets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|((n, _), u)| n == network && *u == user)
            .map(|((_, id), _)| id.clone()))
    }
    fn set_puppet(&self, network: &NetworkId, user: &UserRef, identity: &str) -> Result<()> {
        self.puppets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((network.clone(), identity.to_owned()), user.clone());
        Ok(())
    }
    fn puppet_owner(&self, network: &NetworkId, identity: &str) -> Result<Option<UserRef>> {
        Ok(self
            .puppets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(network.clone(), identity.to_owned()))
            .cloned())
    }
    fn links(&self) -> Result<Vec<Link>> {
        Ok(Vec::new())
    }
    fn put_link(&self, _: &Link) -> Result<()> {
        Ok(())
    }
    fn remove_link(&self, _: &junction_core::BridgeName) -> Result<()> {
        Ok(())
    }
    fn cursor(&self, _: &RoomRef) -> Result<Option<String>> {
        Ok(None)
    }
    fn set_cursor(&self, _: &RoomRef, _: &str) -> Result<()> {
        Ok(())
    }
    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .kv
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(ns.to_owned(), key.to_owned()))
            .cloned())
    }
    fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<()> {
        self.kv
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((ns.to_owned(), key.to_owned()), value.to_vec());
        Ok(())
    }
    fn kv_remove(&self, ns: &str, key: &str) -> Result<()> {
        self.kv
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(ns.to_owned(), key.to_owned()));
        Ok(())
    }
    fn kv_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self
            .kv
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|((n, _), _)| n == ns)
            .map(|((_, k), v)| (k.clone(), v.clone()))
            .collect())
    }
    fn audit(&self, _: &AuditEntry) -> Result<()> {
        Ok(())
    }
    fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        Ok(Vec::new())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}
