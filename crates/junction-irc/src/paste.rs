//! Pastes: the whole text of a message too long for IRC, kept in the store so that the
//! gateway's web listener can serve it at `<paste_url>/<id>` while IRC gets the first lines
//! and a link.
//!
//! Table [`TABLE`]: key = the id (32 lowercase hex digits), value = creation time (ms since
//! the epoch, 8 bytes big-endian) followed by the text (UTF-8). Ids are unguessable: an
//! HMAC-SHA256 (first 128 bits) of the message and the target room under a random 256-bit
//! key kept in [`KEY_TABLE`]. The same delivery rendered again (after a reconnect, or
//! relayed by the bot when its puppet could not speak) gets the same id, so it never leaves a
//! second copy behind.

use hmac::{Hmac, Mac};
use junction_core::clock::now_ms;
use junction_core::Delivery;
use junction_store::{Result, Store};
use sha2::Sha256;
use std::time::Duration;

/// Store kv table of the pastes.
pub const TABLE: &str = "paste";
/// Store kv table holding the key ids are derived with.
pub const KEY_TABLE: &str = "paste.key";
/// Pastes older than this are removed ([`prune`]) and no longer served.
pub const MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// One stored paste.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paste {
    /// When it was made, in ms since the epoch.
    pub created_ms: u64,
    /// The whole text, plain (no IRC codes).
    pub text: String,
}

impl Paste {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(8 + self.text.len());
        v.extend_from_slice(&self.created_ms.to_be_bytes());
        v.extend_from_slice(self.text.as_bytes());
        v
    }

    /// Reads what [`put`] stored; None for anything else.
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

/// The key ids are derived with, made (from the OS's random source) on first use.
fn key(store: &dyn Store) -> Result<Vec<u8>> {
    if let Some(k) = store.kv_get(KEY_TABLE, "hmac")? {
        if k.len() == 32 {
            return Ok(k);
        }
    }
    let k: [u8; 32] = rand::random();
    store.kv_put(KEY_TABLE, "hmac", &k)?;
    Ok(k.to_vec())
}

/// The id of the paste for `origin` (anything naming one message in one place).
fn id_for(key: &[u8], origin: &str) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(m) => m,
        // HMAC takes keys of any length; this arm is never taken.
        Err(_) => return hex::encode(rand::random::<[u8; 16]>()),
    };
    mac.update(origin.as_bytes());
    hex::encode(&mac.finalize().into_bytes()[..16])
}

/// Stores `text` for `origin` unless a paste for it exists, makes it durable, and returns
/// its id.
pub fn put(store: &dyn Store, origin: &str, text: &str, now_ms: u64) -> Result<String> {
    let id = id_for(&key(store)?, origin);
    if store.kv_get(TABLE, &id)?.is_none() {
        let paste = Paste {
            created_ms: now_ms,
            text: text.to_owned(),
        };
        store.kv_put(TABLE, &id, &paste.encode())?;
        // The link goes out on IRC right after this: the text must outlive a crash.
        store.flush()?;
    }
    Ok(id)
}

/// The paste `id`, unless it is unknown or expired at `now_ms`.
pub fn get(store: &dyn Store, id: &str, now_ms: u64) -> Result<Option<Paste>> {
    if !is_id(id) {
        return Ok(None);
    }
    Ok(store
        .kv_get(TABLE, id)?
        .and_then(|raw| Paste::decode(&raw))
        .filter(|p| !p.expired(now_ms)))
}

/// Removes the pastes older than [`MAX_AGE`] at `now_ms` (and rows that are not pastes);
/// returns how many went.
pub fn prune(store: &dyn Store, now_ms: u64) -> Result<usize> {
    let mut removed = 0;
    for (id, raw) in store.kv_scan(TABLE)? {
        if Paste::decode(&raw).is_none_or(|p| p.expired(now_ms)) {
            store.kv_remove(TABLE, &id)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// What names the paste of one delivery: the message and the room it goes to.
pub fn origin_of(d: &Delivery) -> String {
    format!("{}\n{}", d.event.id, d.target)
}

/// A paste maker for rendering `d`: stores the text it is given and returns its URL under
/// `base` (`<base>/<id>`), or None (logged) when the store fails.
pub fn maker<'a>(
    store: &'a dyn Store,
    base: &'a str,
    d: &'a Delivery,
) -> impl Fn(&str) -> Option<String> + 'a {
    move |text| match put(store, &origin_of(d), text, now_ms()) {
        Ok(id) => Some(format!("{}/{id}", base.trim_end_matches('/'))),
        Err(e) => {
            tracing::warn!(error = %e, outbox = d.outbox_id, "Could not store the whole text of a long message; IRC gets it cut.");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store::TestStore;

    #[test]
    fn stored_once_found_by_id_and_pruned_when_old() {
        let store = TestStore::default();
        let now = 1_700_000_000_000;
        let id = put(&store, "$e\nirc:local/#lobby", "one\ntwo", now).expect("put");
        assert!(is_id(&id), "{id}");
        // The same message to the same room: the same paste, not a second one.
        let again = put(&store, "$e\nirc:local/#lobby", "one\ntwo", now + 5).expect("put");
        assert_eq!(id, again);
        let other = put(&store, "$e\nirc:other/#lobby", "one\ntwo", now).expect("put");
        assert_ne!(id, other);
        let p = get(&store, &id, now).expect("get").expect("found");
        assert_eq!((p.created_ms, p.text.as_str()), (now, "one\ntwo"));
        assert_eq!(get(&store, "nothere", now).expect("get"), None);
        assert_eq!(get(&store, &"0".repeat(32), now).expect("get"), None);

        let month = MAX_AGE.as_millis() as u64;
        let later = now + month + 1;
        let fresh = put(&store, "$f\nirc:local/#lobby", "new", later).expect("put");
        assert_eq!(get(&store, &id, later).expect("get"), None, "expired");
        assert_eq!(prune(&store, later).expect("prune"), 2);
        assert!(store.kv_get(TABLE, &id).expect("kv").is_none());
        assert!(get(&store, &fresh, later).expect("get").is_some());
    }

    #[test]
    fn ids_are_keyed_per_store() {
        let (a, b) = (TestStore::default(), TestStore::default());
        let ia = put(&a, "$e\nirc:local/#lobby", "x", 0).expect("put");
        let ib = put(&b, "$e\nirc:local/#lobby", "x", 0).expect("put");
        assert_ne!(ia, ib, "the key is random per store");
    }

    #[test]
    fn only_hex_ids_are_ids() {
        assert!(is_id("0123456789abcdef0123456789abcdef"));
        assert!(!is_id("0123456789ABCDEF0123456789ABCDEF"));
        assert!(!is_id("../../etc/passwd"));
        assert!(!is_id(""));
    }
}
