//! Naming: puppet nicks (`<name>[m]` for Matrix users, `<name>[x]` for XMPP users, made safe
//! for IRC), the nick a remote user keeps across restarts, and what names a paste.

use junction_core::{AdapterStore, Delivery, Sender};

/// Characters never allowed in a nick we send.
const FORBIDDEN: &[char] = &[
    ' ', '\r', '\n', '\0', ',', '*', '?', '!', '@', ':', '#', '&', '$',
];

/// The suffix that marks which network a remote user comes from (the network's
/// [`origin_mark`](junction_core::NetworkId::origin_mark), as on every network).
pub fn suffix_for(network: &str) -> &'static str {
    junction_core::NetworkId::new(network).origin_mark()
}

/// Makes `name` a valid nick ending in `suffix`, at most `nicklen` bytes. The name is trimmed
/// (never the suffix, unless NICKLEN leaves no room for it); control characters are dropped, other forbidden or non-ASCII
/// characters become `_`,
/// a leading digit or `-` gets a `_` in front, an empty name becomes `_`.
pub fn sanitise(name: &str, suffix: &str, nicklen: usize) -> String {
    let mut base: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| {
            if FORBIDDEN.contains(&c) || !c.is_ascii() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if base.is_empty() {
        base.push('_');
    }
    if base.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        base.insert(0, '_');
    }
    let nicklen = nicklen.max(1);
    if suffix.len() < nicklen {
        base.truncate(nicklen - suffix.len());
        base.push_str(suffix);
    } else {
        base.truncate(nicklen);
    }
    base
}

/// The nick to try after `nick` was taken: an `_` appended, or when NICKLEN is reached, the
/// last character before the suffix replaced by `_` (then the one before it, and so on).
pub fn next_candidate(nick: &str, suffix: &str, nicklen: usize) -> String {
    if nick.len() < nicklen {
        return format!("{nick}_");
    }
    let (base, suf) = match nick.strip_suffix(suffix) {
        Some(base) => (base, suffix),
        None => (nick, ""),
    };
    let mut chars: Vec<char> = base.chars().collect();
    if let Some(pos) = chars.iter().rposition(|c| *c != '_') {
        chars[pos] = '_';
    } else if let Some(last) = chars.last_mut() {
        *last = '0';
    }
    let mut out: String = chars.into_iter().collect();
    out.push_str(suf);
    out
}

/// The nick a remote user is shown with on IRC: the one kept in the store when they have
/// one, else a new one made from their display name (`_` added while another remote user
/// holds it), kept so it stays the same.
pub fn puppet_nick(store: &dyn AdapterStore, sender: &Sender, nicklen: usize) -> String {
    let user = &sender.user;
    match store.puppet(user) {
        Ok(Some(n)) => return n,
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "puppet nick lookup failed"),
    }
    let name = sender
        .display_name
        .split(['@', ':'])
        .find(|s| !s.is_empty())
        .unwrap_or("user");
    let suffix = suffix_for(user.network.0.as_str());
    let mut candidate = sanitise(name, suffix, nicklen);
    // Another remote user may hold this nick already: add `_` until it is free.
    for _ in 0..16 {
        match store.puppet_owner(&candidate) {
            Ok(Some(owner)) if &owner != user => {
                candidate = next_candidate(&candidate, suffix, nicklen);
            }
            _ => break,
        }
    }
    if let Err(e) = store.set_puppet(user, &candidate) {
        tracing::warn!(error = %e, "puppet nick not stored");
    }
    candidate
}

/// What names the paste of one delivery's whole text: the message and the room it goes to,
/// so the same delivery rendered again (after a reconnect, or relayed by the bot when its
/// puppet could not speak) links the same page.
pub fn paste_origin(d: &Delivery) -> String {
    format!("{}\n{}", d.event.id, d.target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_get_their_suffix() {
        assert_eq!(sanitise("alice", "[m]", 30), "alice[m]");
        assert_eq!(sanitise("bob", "[x]", 30), "bob[x]");
    }

    #[test]
    fn trimmed_to_nicklen_keeping_suffix() {
        assert_eq!(sanitise("alexandria", "[m]", 9), "alexan[m]");
        assert_eq!(sanitise("alice", "[m]", 9), "alice[m]");
        assert_eq!(sanitise("alice", "[m]", 2), "al");
    }

    #[test]
    fn forbidden_and_leading_chars() {
        assert_eq!(sanitise("a b\r\n,c", "[m]", 30), "a_b_c[m]");
        assert_eq!(sanitise("1abc", "[m]", 30), "_1abc[m]");
        assert_eq!(sanitise("-x", "[m]", 30), "_-x[m]");
        assert_eq!(sanitise("", "[m]", 30), "_[m]");
        assert_eq!(sanitise("é@x", "[m]", 30), "__x[m]");
        assert_eq!(sanitise("a\0b", "[m]", 30), "ab[m]");
    }

    #[test]
    fn collisions_add_underscores_within_nicklen() {
        assert_eq!(next_candidate("alice[m]", "[m]", 30), "alice[m]_");
        assert_eq!(next_candidate("alexan[m]", "[m]", 9), "alexa_[m]");
        assert_eq!(next_candidate("alexa_[m]", "[m]", 9), "alex__[m]");
    }

    #[test]
    fn puppet_nicks_are_kept_and_collisions_step() {
        use junction_core::{NetworkId, UserRef};
        use std::sync::Arc;
        let store = junction_store::scoped(
            Arc::new(junction_store::MemStore::new()),
            NetworkId::new("irc:local"),
        );
        let alice = Sender::new(UserRef::new("matrix", "@alice:a.test"), "alice");
        let other = Sender::new(UserRef::new("matrix", "@alice:b.test"), "alice");
        assert_eq!(puppet_nick(store.as_ref(), &alice, 30), "alice[m]");
        assert_eq!(puppet_nick(store.as_ref(), &other, 30), "alice[m]_");
        // Kept: a new display name does not change the stored nick.
        let renamed = Sender::new(alice.user.clone(), "alicia");
        assert_eq!(puppet_nick(store.as_ref(), &renamed, 30), "alice[m]");
        assert_eq!(
            store.puppet_owner("alice[m]_").expect("read"),
            Some(other.user.clone())
        );
    }
}
