//! Pastes: the whole text of a message too long for a network (IRC's `max_lines`), kept in
//! the store so that the public pages ([`crate::web`]) serve it at `<public_url>/paste/<id>`
//! while the network gets the first lines and a link.
//!
//! This is the one owner of the paste tables: adapters keep a text through
//! [`junction_core::Pastes`] ([`PasteLinks`], handed to the hub when `[gateway] public_url`
//! is set), the web pages read it back ([`PasteStore::get`]).
//!
//! Table `web/pastes`: key = the id (32 lowercase hex digits), value = creation time (ms since
//! the epoch, 8 bytes big-endian) followed by the text (UTF-8). Ids are unguessable: an
//! HMAC-SHA256 (first 128 bits) of the origin (the message and the room it goes to) under a
//! random 256-bit key kept in `web/paste_key`. The same origin kept again (after a
//! reconnect, or relayed by the bot when its puppet could not speak) gets the same id, so it
//! never leaves a second copy behind. Earlier versions kept the tables as `paste` and
//! `paste.key`; [`PasteStore::open`] moves their rows over, key included, so old links stay.

use hmac::{Hmac, Mac};
use junction_core::clock::now_ms;
use junction_core::{AdapterStore, NetworkId, Pastes, StoreResult};
use junction_store::Store;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

/// The table of pastes.
pub const TABLE: &str = "pastes";
/// The table holding the key ids are derived with.
pub const KEY_TABLE: &str = "paste_key";
/// Pastes older than this are removed ([`PasteStore::prune`]) and no longer served.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// The tables' names in earlier versions: (old, new).
const LEGACY: [(&str, &str); 2] = [("paste.key", KEY_TABLE), ("paste", TABLE)];

/// One stored paste.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paste {
    /// When it was made, in ms since the epoch.
    pub created_ms: u64,
    /// The whole text, plain (no formatting codes).
    pub text: String,
}

impl Paste {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.text.len());
        v.extend_from_slice(&self.created_ms.to_be_bytes());
        v.extend_from_slice(self.text.as_bytes());
        v
    }

    /// Reads what [`PasteStore::put`] stored; None for anything else.
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let (time, text) = raw.split_at_checked(8)?;
        Some(Self {
            created_ms: u64::from_be_bytes(time.try_into().ok()?),
            text: String::from_utf8_lossy(text).into_owned(),
        })
    }

    /// Older than [`MAX_AGE`] at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.created_ms) > MAX_AGE.as_millis() as u64
    }
}

/// True for a string shaped like a paste id (32 lowercase hex digits); anything else is
/// never looked up.
pub fn is_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The id of the paste for `origin` under `key`.
fn id_for(key: &[u8], origin: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return hex::encode(rand::random::<[u8; 16]>()),
    };
    mac.update(origin.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// The paste tables: the public pages' own part of the store (`web/<table>`).
#[derive(Clone, Debug)]
pub struct PasteStore {
    tables: Arc<dyn AdapterStore>,
}

impl PasteStore {
    /// The paste tables of `store`, with the rows earlier versions kept under the old table
    /// names moved over (a failure is logged; the next start tries again).
    pub fn open(store: Arc<dyn Store>) -> Self {
        // Named like an adapter's tables, under `web`, through the same handle.
        let tables = junction_store::scoped(store, NetworkId::new("web"));
        for (old, new) in LEGACY {
            if let Err(e) = tables.adopt(old, new, &|k| Some(k.to_owned())) {
                tracing::warn!(error = %e, table = old, "Could not move the pastes to their new table.");
            }
        }
        Self { tables }
    }

    /// The key ids are derived with, made (from the OS's random source) on first use.
    fn key(&self) -> StoreResult<Vec<u8>> {
        if let Some(k) = self.tables.get(KEY_TABLE, "hmac")? {
            if k.len() == 32 {
                return Ok(k);
            }
        }
        let k: [u8; 32] = rand::random();
        self.tables.put(KEY_TABLE, "hmac", &k)?;
        Ok(k.to_vec())
    }

    /// Stores `text` for `origin` (anything naming one message in one place) unless a paste
    /// for it exists, makes it durable, and returns its id.
    pub fn put(&self, origin: &str, text: &str, now_ms: u64) -> StoreResult<String> {
        let id = id_for(&self.key()?, origin);
        if self.tables.get(TABLE, &id)?.is_none() {
            let paste = Paste {
                created_ms: now_ms,
                text: text.to_owned(),
            };
            self.tables.put(TABLE, &id, &paste.encode())?;
            // The link goes out right after this: the text must outlive a crash.
            self.tables.flush()?;
        }
        Ok(id)
    }

    /// The paste `id`, unless it is unknown or expired at `now_ms`.
    pub fn get(&self, id: &str, now_ms: u64) -> StoreResult<Option<Paste>> {
        if !is_id(id) {
            return Ok(None);
        }
        Ok(self
            .tables
            .get(TABLE, id)?
            .and_then(|raw| Paste::decode(&raw))
            .filter(|p| !p.expired(now_ms)))
    }

    /// Removes the pastes older than [`MAX_AGE`] at `now_ms` (and rows that are not pastes);
    /// returns how many went.
    pub fn prune(&self, now_ms: u64) -> StoreResult<usize> {
        let mut removed = 0;
        for (id, raw) in self.tables.scan(TABLE)? {
            if Paste::decode(&raw).is_none_or(|p| p.expired(now_ms)) {
                self.tables.remove(TABLE, &id)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Removes the pastes older than [`MAX_AGE`] now; logs what it did.
    pub fn prune_now(&self) {
        match self.prune(now_ms()) {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "Old pastes removed."),
            Err(e) => tracing::warn!(error = %e, "Could not remove old pastes."),
        }
    }

    /// These pastes as adapters keep them: linked at `<base>/<id>`.
    pub fn linked(self, base: String) -> PasteLinks {
        PasteLinks {
            pastes: self,
            base: base.trim_end_matches('/').to_owned(),
        }
    }
}

/// [`Pastes`] for the adapters: each text kept in a [`PasteStore`] and linked under the
/// public pages' paste path.
#[derive(Debug)]
pub struct PasteLinks {
    pastes: PasteStore,
    base: String,
}

impl Pastes for PasteLinks {
    fn keep(&self, origin: &str, text: &str) -> Option<String> {
        match self.pastes.put(origin, text, now_ms()) {
            Ok(id) => Some(format!("{}/{id}", self.base)),
            Err(e) => {
                tracing::warn!(error = %e, "Could not store the whole text of a long message; it goes out cut.");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_store::MemStore;

    fn pastes() -> PasteStore {
        PasteStore::open(Arc::new(MemStore::new()))
    }

    #[test]
    fn stored_once_found_by_id_and_pruned_when_old() {
        let store = pastes();
        let now = 1_700_000_000_000;
        let id = store
            .put("$e\nirc:local/#lobby", "one\ntwo", now)
            .expect("put");
        assert!(is_id(&id), "{id}");
        // The same message to the same room: the same paste, not a second one.
        let again = store
            .put("$e\nirc:local/#lobby", "one\ntwo", now + 5)
            .expect("put");
        assert_eq!(id, again);
        let other = store
            .put("$e\nirc:other/#lobby", "one\ntwo", now)
            .expect("put");
        assert_ne!(id, other);
        let p = store.get(&id, now).expect("get").expect("found");
        assert_eq!((p.created_ms, p.text.as_str()), (now, "one\ntwo"));
        assert_eq!(store.get("nothere", now).expect("get"), None);
        assert_eq!(store.get(&"0".repeat(32), now).expect("get"), None);

        let month = MAX_AGE.as_millis() as u64;
        let later = now + month + 1;
        let fresh = store
            .put("$f\nirc:local/#lobby", "new", later)
            .expect("put");
        assert_eq!(store.get(&id, later).expect("get"), None, "expired");
        assert_eq!(store.prune(later).expect("prune"), 2);
        assert!(store.tables.get(TABLE, &id).expect("kv").is_none());
        assert!(store.get(&fresh, later).expect("get").is_some());
    }

    #[test]
    fn ids_are_keyed_per_store() {
        let (a, b) = (pastes(), pastes());
        let ia = a.put("$e\nirc:local/#lobby", "x", 0).expect("put");
        let ib = b.put("$e\nirc:local/#lobby", "x", 0).expect("put");
        assert_ne!(ia, ib, "the key is random per store");
    }

    #[test]
    fn only_hex_ids_are_ids() {
        assert!(is_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_id("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!is_id("../../etc/passwd"));
        assert!(!is_id(""));
    }

    /// Pastes and the key an earlier version kept as `paste` and `paste.key` move to
    /// `web/pastes` and `web/paste_key`: an old link still shows its text, and the same
    /// message kept again gets the id it had.
    #[test]
    fn pastes_under_the_old_table_names_are_adopted() {
        let raw: Arc<dyn Store> = Arc::new(MemStore::new());
        let key = [7u8; 32];
        let now = 1_700_000_000_000;
        let id = id_for(&key, "$e\nirc:local/#lobby");
        let old = Paste {
            created_ms: now,
            text: "the whole text".into(),
        };
        raw.kv_put("paste.key", "hmac", &key).expect("put");
        raw.kv_put("paste", &id, &old.encode()).expect("put");

        let store = PasteStore::open(raw.clone());
        assert_eq!(store.get(&id, now).expect("get"), Some(old));
        assert_eq!(
            store
                .put("$e\nirc:local/#lobby", "the whole text", now)
                .expect("put"),
            id
        );
        assert!(raw.kv_scan("paste").expect("scan").is_empty());
        assert!(raw.kv_scan("paste.key").expect("scan").is_empty());
        assert!(raw.kv_get("web/pastes", &id).expect("get").is_some());
        assert_eq!(
            raw.kv_get("web/paste_key", "hmac").expect("get"),
            Some(key.to_vec())
        );
        assert_eq!(store.tables.scan(TABLE).expect("scan").len(), 1);
        // Opened again: nothing left to move, nothing lost.
        let again = PasteStore::open(raw);
        assert!(again.get(&id, now).expect("get").is_some());
    }

    #[test]
    fn kept_texts_are_linked_under_the_base() {
        let links = pastes().linked("https://chat.example.org/paste/".into());
        let url = links.keep("$e\nirc:local/#lobby", "text").expect("kept");
        let id = url
            .strip_prefix("https://chat.example.org/paste/")
            .expect("under the base");
        assert!(is_id(id), "{url}");
        assert_eq!(
            links.keep("$e\nirc:local/#lobby", "text"),
            Some(url.clone())
        );
        assert_eq!(
            links.pastes.get(id, now_ms()).expect("get").map(|p| p.text),
            Some("text".into())
        );
    }
}
