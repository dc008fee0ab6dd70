//! What the adapter keeps in the store besides puppet nicks: the first words of messages seen
//! on IRC, so a reply or reaction can quote what it refers to, even after a restart.
//!
//! Table [`QUOTES`] of the adapter's store handle (`irc:<name>/quotes`, the name it always
//! had): key = the message's IRC id, value = [`Quoted::encode`].

use crate::outbound::Quoted;
use junction_core::{AdapterStore, Delivery, EventKind, MessageId, RoomRef, UserRef};

/// The table of quotes.
pub const QUOTES: &str = "quotes";

/// The nick that shows `user` on this network: their own nick when they are an IRC user of
/// this network, else their puppet's nick when they have one.
pub fn nick_of(store: &dyn AdapterStore, user: &UserRef) -> Option<String> {
    if &user.network == store.network() {
        let u = user.user.0.as_str();
        return Some(u.split('!').next().unwrap_or(u).to_owned());
    }
    store.puppet(user).ok().flatten()
}

/// The message a reply or a reaction refers to, as IRC saw it, when known.
pub fn quoted(store: &dyn AdapterStore, d: &Delivery) -> Option<Quoted> {
    let id = match &d.event.kind {
        EventKind::Message(m) if m.reply_to.is_some() => d.reply_to.first(),
        EventKind::React { .. } => d.target_ids.first(),
        _ => None,
    }?;
    let raw = store.get(QUOTES, &id.0).ok().flatten()?;
    Quoted::decode(&raw)
}

/// Remembers who said message `id` in `room` on IRC and its text (kept only as long as
/// private rows are when `room` is a private conversation).
pub fn remember(store: &dyn AdapterStore, room: &RoomRef, id: &MessageId, nick: &str, text: &str) {
    let q = Quoted {
        nick: nick.to_owned(),
        text: crate::outbound::snippet(text),
    };
    if let Err(e) = store.put_dated_for(room, QUOTES, &id.0, &q.encode()) {
        tracing::debug!(error = %e, "quote not stored");
    }
}

/// The plain text of a delivered message worth remembering for quotes (messages only).
pub fn quotable(d: &Delivery) -> Option<String> {
    match &d.event.kind {
        EventKind::Message(m) => Some(m.body.to_plain()),
        EventKind::Edit { body, .. } => Some(body.to_plain()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::NetworkId;
    use junction_store::{MemStore, Store};
    use std::sync::Arc;

    /// Quotes were always kept as `<network>/quotes`: the handle's table `quotes` is that
    /// table, so quotes stored before the handle are read without moving anything.
    #[test]
    fn quotes_stored_under_the_old_name_are_read_through_the_handle() {
        let raw = Arc::new(MemStore::new());
        let old = Quoted {
            nick: "bob".into(),
            text: "hello there".into(),
        };
        raw.kv_put("irc:local/quotes", "m1", &old.encode())
            .expect("put");
        let store = junction_store::scoped(raw.clone(), NetworkId::new("irc:local"));
        assert_eq!(
            store
                .get(QUOTES, "m1")
                .expect("get")
                .and_then(|v| Quoted::decode(&v)),
            Some(old)
        );
        let lobby = RoomRef::new("irc:local", "#lobby");
        remember(
            store.as_ref(),
            &lobby,
            &MessageId::new("m2"),
            "eve",
            "line\ntwo",
        );
        assert!(raw.kv_get("irc:local/quotes", "m2").expect("get").is_some());
        // Another network's handle does not see them.
        let other = junction_store::scoped(raw, NetworkId::new("irc:other"));
        assert_eq!(other.get(QUOTES, "m1").expect("get"), None);
    }

    #[test]
    fn the_nick_of_a_native_user_is_their_own_and_of_a_remote_one_their_puppets() {
        let store = junction_store::scoped(Arc::new(MemStore::new()), NetworkId::new("irc:a"));
        let native = UserRef::new("irc:a", "carol!c@host");
        assert_eq!(nick_of(store.as_ref(), &native), Some("carol".into()));
        let remote = UserRef::new("matrix", "@alice:m.test");
        assert_eq!(nick_of(store.as_ref(), &remote), None);
        store.set_puppet(&remote, "alice[m]").expect("set");
        assert_eq!(nick_of(store.as_ref(), &remote), Some("alice[m]".into()));
    }
}
