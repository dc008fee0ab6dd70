//! What the adapter keeps in the store besides puppet nicks: the first words of messages seen
//! on IRC, so a reply or reaction can quote what it refers to, even after a restart.

use crate::outbound::Quoted;
use junction_core::{Delivery, EventKind, MessageId, NetworkId, UserRef};
use junction_store::Store;

fn ns(network: &NetworkId) -> String {
    format!("{network}/quotes")
}

/// The nick that shows `user` on `network`: their own nick when they are an IRC user of this
/// network, else their puppet's nick when they have one.
pub fn nick_of(store: &dyn Store, network: &NetworkId, user: &UserRef) -> Option<String> {
    if &user.network == network {
        let u = user.user.0.as_str();
        return Some(u.split('!').next().unwrap_or(u).to_owned());
    }
    store.puppet(network, user).ok().flatten()
}

/// The message a reply or a reaction refers to, as IRC saw it, when known.
pub fn quoted(store: &dyn Store, network: &NetworkId, d: &Delivery) -> Option<Quoted> {
    let id = match &d.event.kind {
        EventKind::Message(m) if m.reply_to.is_some() => d.reply_to.first(),
        EventKind::React { .. } => d.target_ids.first(),
        _ => None,
    }?;
    let raw = store.kv_get(&ns(network), &id.0).ok().flatten()?;
    Quoted::decode(&raw)
}

/// Remembers who said message `id` on IRC and its text.
pub fn remember(store: &dyn Store, network: &NetworkId, id: &MessageId, nick: &str, text: &str) {
    let q = Quoted {
        nick: nick.to_owned(),
        text: crate::outbound::snippet(text),
    };
    if let Err(e) = store.kv_put(&ns(network), &id.0, &q.encode()) {
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
