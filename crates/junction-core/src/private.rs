//! Private conversations between two people on different networks.
//!
//! A conversation on network N between a local user L of N and the puppet of a person R of
//! another network is a room of N named `dm:<L>\u{1f}<R's network>\u{1f}<R's id>`. Its mirror
//! on R's network is the same pair seen from there: `dm:<R>\u{1f}N\u{1f}<L>`. The router
//! treats a conversation and its mirror as an implicit link (nothing configured, nothing
//! stored), so the message map, the outbox and the resolution of edits and replies work for
//! private messages exactly as for rooms. Adapters map their wire conversations (a direct
//! Matrix room, an IRC query, an XMPP chat) to these names.

use crate::ids::{BridgeName, NetworkId, RoomId, RoomRef, UserId, UserRef};

/// What every conversation's room name starts with (no network's rooms start so).
pub const PREFIX: &str = "dm:";
/// Separates the parts of a conversation's room name (a control character no id carries).
const SEP: char = '\u{1f}';
/// The name the router gives the implicit link between a conversation and its mirror.
pub const BRIDGE: &str = "private";

/// One side of a private conversation.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conversation {
    /// The network this side lives on.
    pub network: NetworkId,
    /// The person of that network who talks.
    pub local: UserId,
    /// The person on another network they talk to (through that person's puppet here).
    pub peer: UserRef,
}

impl Conversation {
    /// The conversation of `local` on `network` with `peer`.
    pub fn new(network: NetworkId, local: UserId, peer: UserRef) -> Self {
        Self {
            network,
            local,
            peer,
        }
    }

    /// Its room name.
    pub fn room(&self) -> RoomRef {
        RoomRef::new(
            self.network.clone(),
            format!(
                "{PREFIX}{}{SEP}{}{SEP}{}",
                self.local, self.peer.network, self.peer.user
            ),
        )
    }

    /// The conversation named by `room`, if it names one.
    pub fn parse(room: &RoomRef) -> Option<Self> {
        let rest = room.room.as_str().strip_prefix(PREFIX)?;
        let mut parts = rest.splitn(3, SEP);
        let (local, network, user) = (parts.next()?, parts.next()?, parts.next()?);
        if local.is_empty() || network.is_empty() || user.is_empty() {
            return None;
        }
        Some(Self {
            network: room.network.clone(),
            local: UserId::from(local),
            peer: UserRef::new(network, user),
        })
    }

    /// The same conversation on the peer's network.
    pub fn mirror(&self) -> Self {
        Self {
            network: self.peer.network.clone(),
            local: self.peer.user.clone(),
            peer: UserRef::new(self.network.clone(), self.local.clone()),
        }
    }

    /// The local user as a user of their network.
    pub fn local_user(&self) -> UserRef {
        UserRef::new(self.network.clone(), self.local.clone())
    }
}

/// True when `room` names a private conversation rather than a room.
pub fn is_private(room: &RoomId) -> bool {
    room.as_str().starts_with(PREFIX)
}

/// True for what crosses in a private conversation: messages and what refers to them
/// (edits, redactions, reactions). Joins, leaves, names and topics stay on their side.
pub fn carries(kind: &crate::EventKind) -> bool {
    use crate::EventKind as K;
    matches!(
        kind,
        K::Message(_) | K::Edit { .. } | K::Redact { .. } | K::React { .. } | K::Unreact { .. }
    )
}

/// The implicit link's name.
pub fn bridge() -> BridgeName {
    BridgeName::from(BRIDGE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_mirror() {
        let c = Conversation::new(
            NetworkId::from("matrix"),
            UserId::from("@alice:m.test"),
            UserRef::new("irc:local", "$a:bob/host"),
        );
        let room = c.room();
        assert!(is_private(&room.room));
        assert_eq!(Conversation::parse(&room), Some(c.clone()));
        let m = c.mirror();
        assert_eq!(m.network.as_str(), "irc:local");
        assert_eq!(m.local.as_str(), "$a:bob/host");
        assert_eq!(m.peer, UserRef::new("matrix", "@alice:m.test"));
        assert_eq!(m.mirror(), c);
        assert_eq!(c.local_user(), UserRef::new("matrix", "@alice:m.test"));
    }

    #[test]
    fn rooms_are_not_conversations() {
        for r in [
            "#lobby",
            "dm:",
            "dm:a\u{1f}b",
            "dm:\u{1f}irc\u{1f}x",
            "!abc:m",
        ] {
            assert_eq!(Conversation::parse(&RoomRef::new("irc:x", r)), None, "{r}");
        }
    }
}
