//! Ghosts: the Matrix users that stand for people on the other networks.
//!
//! A ghost is registered once (the registered set and each ghost's last display name are kept
//! in the adapter's `ghosts` table, `matrix/ghosts` in the store, so a restart does not
//! register again), gets the
//! remote nick as its display name (with its network's origin mark, `bob[i]`, unless
//! `[matrix] origin_marks` is off), and joins a room before it first speaks there. The
//! store's puppet table maps the remote user to the ghost and back.

use crate::connection::{Client, ClientError};
use crate::ids;
use crate::queues::KeyLocks;
use junction_core::{AdapterStore, NetworkId, Sender};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

/// The adapter's store table of registered ghosts (user id → last display name set;
/// `matrix/ghosts` in the store).
pub const GHOSTS_TABLE: &str = "ghosts";

/// The ghost cache.
pub struct Ghosts {
    client: Client,
    store: Arc<dyn AdapterStore>,
    prefix: String,
    server_name: String,
    /// Display names carry the network's origin mark (`bob[i]`).
    origin_marks: bool,
    /// Registered ghosts and the display name each was last given.
    registered: Mutex<HashMap<String, String>>,
    /// (ghost, room id) pairs known to be joined.
    joined: Mutex<HashSet<(String, String)>>,
    /// One lock per ghost, held while it is registered or renamed: rooms are served at once,
    /// and two of them touching the same ghost then do it one after the other (registering
    /// twice is harmless, `M_USER_IN_USE`, but needless).
    naming: KeyLocks,
}

impl Ghosts {
    /// Loads the registered set from the adapter's part of the store, where the ghosts'
    /// owners are recorded too.
    pub fn new(
        client: Client,
        store: Arc<dyn AdapterStore>,
        prefix: &str,
        server_name: &str,
        origin_marks: bool,
    ) -> Self {
        let registered = match store.scan(GHOSTS_TABLE) {
            Ok(rows) => rows
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the ghost table; ghosts will be registered again.");
                HashMap::new()
            }
        };
        Self {
            client,
            store,
            prefix: prefix.to_owned(),
            server_name: server_name.to_owned(),
            origin_marks,
            registered: Mutex::new(registered),
            joined: Mutex::new(HashSet::new()),
            naming: KeyLocks::default(),
        }
    }

    /// The ghost user id for a remote sender.
    pub fn user_id(&self, sender: &Sender) -> String {
        ids::ghost_user_id(
            &self.prefix,
            &sender.user.network,
            sender.user.user.as_str(),
            &self.server_name,
        )
    }

    /// The display name a ghost of someone from `network` called `name` shows: `name` with the
    /// network's origin mark (`bob[i]`, `carol[x]`), so that nobody on another network can pass
    /// for a Matrix user by their name; `name` as is with marks off, or when it is empty (the
    /// homeserver then shows the ghost's localpart, which names the network).
    pub fn shown_name(&self, network: &NetworkId, name: &str) -> String {
        if self.origin_marks && !name.is_empty() {
            format!("{name}{}", network.origin_mark())
        } else {
            name.to_owned()
        }
    }

    /// True when the ghost was registered by us.
    pub fn is_registered(&self, user_id: &str) -> bool {
        lock(&self.registered).contains_key(user_id)
    }

    /// Makes sure the sender's ghost exists and shows `sender.display_name` (as
    /// [`Ghosts::shown_name`] marks it); returns its id.
    pub async fn ensure(&self, sender: &Sender) -> Result<String, ClientError> {
        let user_id = self.user_id(sender);
        let shown = self.shown_name(&sender.user.network, &sender.display_name);
        let known = lock(&self.registered).get(&user_id).cloned();
        if known.as_deref() == Some(shown.as_str()) {
            return Ok(user_id);
        }
        let _ghost = self.naming.lock(&user_id).await;
        // Another room may have registered or renamed it meanwhile.
        let known = lock(&self.registered).get(&user_id).cloned();
        if known.is_none() {
            let (local, _) = ids::split_user_id(&user_id)
                .ok_or_else(|| ClientError::Decode(format!("bad ghost id {user_id}")))?;
            self.client.register(local).await?;
            if let Err(e) = self.store.set_puppet(&sender.user, &user_id) {
                tracing::warn!(error = %e, ghost = %user_id, "Could not record the ghost's owner.");
            }
            tracing::info!(ghost = %user_id, "Registered a ghost.");
        }
        if known.as_deref() != Some(shown.as_str()) {
            self.name_held(&user_id, &shown).await?;
        }
        Ok(user_id)
    }

    /// Sets a ghost's display name (exactly `name`: see [`Ghosts::shown_name`]) and remembers it.
    pub async fn set_name(&self, user_id: &str, name: &str) -> Result<(), ClientError> {
        let _ghost = self.naming.lock(user_id).await;
        self.name_held(user_id, name).await
    }

    /// [`Ghosts::set_name`] with the ghost's lock held.
    async fn name_held(&self, user_id: &str, name: &str) -> Result<(), ClientError> {
        if !name.is_empty() {
            self.client.set_displayname(user_id, name).await?;
        }
        lock(&self.registered).insert(user_id.to_owned(), name.to_owned());
        if let Err(e) = self.store.put(GHOSTS_TABLE, user_id, name.as_bytes()) {
            tracing::warn!(error = %e, ghost = %user_id, "Could not record the ghost.");
        }
        Ok(())
    }

    /// Makes sure the ghost is in the room: joins, and when the room is invite-only has the
    /// bot invite it first.
    pub async fn ensure_joined(&self, user_id: &str, room_id: &str) -> Result<(), ClientError> {
        let key = (user_id.to_owned(), room_id.to_owned());
        if lock(&self.joined).contains(&key) {
            return Ok(());
        }
        match self.client.join(room_id, Some(user_id)).await {
            Ok(_) => {}
            Err(e) if e.errcode() == Some("M_FORBIDDEN") => {
                self.client.invite(room_id, user_id).await?;
                self.client.join(room_id, Some(user_id)).await?;
            }
            Err(e) => return Err(e),
        }
        lock(&self.joined).insert(key);
        Ok(())
    }

    /// How many distinct ghosts are in at least one room.
    pub fn count(&self) -> usize {
        lock(&self.joined)
            .iter()
            .map(|(u, _)| u.as_str())
            .collect::<HashSet<_>>()
            .len()
    }

    /// Notes that the ghost is in the room already (seen among its members).
    pub fn note_joined(&self, user_id: &str, room_id: &str) {
        lock(&self.joined).insert((user_id.to_owned(), room_id.to_owned()));
    }

    /// Forgets that the ghost is in the room (after it left).
    pub fn forget_joined(&self, user_id: &str, room_id: &str) {
        lock(&self.joined).remove(&(user_id.to_owned(), room_id.to_owned()));
    }
}

/// Locks a mutex, recovering the data if a holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::{Secret, UserRef};
    use junction_store::MemStore;
    use tokio_util::sync::CancellationToken;

    fn handle() -> Arc<dyn AdapterStore> {
        junction_store::scoped(Arc::new(MemStore::new()), NetworkId::new("matrix"))
    }

    fn ghosts(store: Arc<dyn AdapterStore>) -> Ghosts {
        // Nothing listens on the discard port: any call to the homeserver fails.
        let client = Client::new(
            "http://127.0.0.1:9",
            Secret::new("t"),
            CancellationToken::new(),
        )
        .with_attempts(1);
        Ghosts::new(client, store, "_junction_", "matrix.test", false)
    }

    #[tokio::test]
    async fn a_restart_does_not_register_known_ghosts_again() {
        let store = handle();
        let bob = Sender::new(UserRef::new("irc:local", "bob"), "bob");
        let id = ghosts(store.clone()).user_id(&bob);
        assert_eq!(id, "@_junction_irc_local_bob:matrix.test");
        store.put(GHOSTS_TABLE, &id, b"bob").expect("kv");

        let after_restart = ghosts(store.clone());
        assert!(after_restart.is_registered(&id));
        // Known ghost with the same name: no call to the (unreachable) homeserver.
        assert_eq!(
            after_restart.ensure(&bob).await.expect("no network needed"),
            id
        );
        // A new name needs the homeserver, and fails here without changing what is known.
        let renamed = Sender::new(bob.user.clone(), "Robert");
        assert!(after_restart.ensure(&renamed).await.is_err());
        assert_eq!(
            store.get(GHOSTS_TABLE, &id).expect("kv"),
            Some(b"bob".to_vec())
        );
        // An unknown ghost must be registered first.
        let carol = Sender::new(UserRef::new("xmpp", "carol@xmpp.test"), "carol");
        assert!(after_restart.ensure(&carol).await.is_err());
        assert!(!after_restart.is_registered(&after_restart.user_id(&carol)));
    }

    #[test]
    fn display_names_carry_the_origin_mark_unless_turned_off() {
        let client = Client::new(
            "http://127.0.0.1:9",
            Secret::new("t"),
            CancellationToken::new(),
        );
        let store = handle();
        let marked = Ghosts::new(
            client.clone(),
            store.clone(),
            "_junction_",
            "matrix.test",
            true,
        );
        assert_eq!(
            marked.shown_name(&NetworkId::new("irc:local"), "bob"),
            "bob[i]"
        );
        assert_eq!(
            marked.shown_name(&NetworkId::new("xmpp"), "carol"),
            "carol[x]"
        );
        assert_eq!(marked.shown_name(&NetworkId::new("xmpp"), ""), "");
        let bare = Ghosts::new(client, store, "_junction_", "matrix.test", false);
        assert_eq!(bare.shown_name(&NetworkId::new("irc:local"), "bob"), "bob");
    }
}
