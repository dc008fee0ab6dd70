//! Typed identifiers. No bare strings cross crate boundaries: a room id of one network can not
//! be passed where a user id or another network's room is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// Wraps a string as this kind of id.
            pub fn new(s: impl Into<String>) -> Self {
                Self(s.into())
            }
            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// A network instance as configured: `matrix`, `xmpp`, or `irc:<name>` for each IRC table.
    NetworkId
);
string_id!(
    /// A room on one network, in that network's own syntax: a Matrix room id (`!abc` or
    /// `!abc:server`), a MUC bare JID (`lobby@conference.xmpp.test`), an IRC channel (`#lobby`).
    RoomId
);
string_id!(
    /// A stable user id on one network: a Matrix user id, a MUC occupant's real/occupant id,
    /// an IRC account or `nick!user@host` mask. Display names are carried separately.
    UserId
);
string_id!(
    /// A message id as its own network knows it: Matrix event id, XMPP stanza-id/origin-id,
    /// IRCv3 msgid (or a gateway-made id where the server has none).
    MessageId
);
string_id!(
    /// The name of a `[[bridge]]` in bridges.toml (or a runtime link).
    BridgeName
);

/// The gateway's own id for an event, derived from where it came from so that seeing the same
/// remote message twice yields the same id (the basis of idempotent delivery).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(pub String);

impl EventId {
    /// Derives the id from the origin room and the origin's remote message id: a short,
    /// stable, URL- and txn-id-safe hex digest.
    pub fn derive(room: &RoomRef, remote: &MessageId) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(room.network.0.as_bytes());
        h.update([0]);
        h.update(room.room.0.as_bytes());
        h.update([0]);
        h.update(remote.0.as_bytes());
        let digest = h.finalize();
        Self(hex::encode(&digest[..16]))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A room together with the network it lives on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RoomRef {
    /// The network instance.
    pub network: NetworkId,
    /// The room on that network.
    pub room: RoomId,
}

impl RoomRef {
    /// Builds a room reference.
    pub fn new(network: impl Into<NetworkId>, room: impl Into<RoomId>) -> Self {
        Self {
            network: network.into(),
            room: room.into(),
        }
    }
}

impl fmt::Display for RoomRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.room)
    }
}

/// A user together with the network they are on.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct UserRef {
    /// The network instance.
    pub network: NetworkId,
    /// The stable user id on that network.
    pub user: UserId,
}

impl UserRef {
    /// Builds a user reference.
    pub fn new(network: impl Into<NetworkId>, user: impl Into<UserId>) -> Self {
        Self {
            network: network.into(),
            user: user.into(),
        }
    }
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.user)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_marks_name_the_network() {
        assert_eq!(NetworkId::new("matrix").origin_mark(), "[m]");
        assert_eq!(NetworkId::new("xmpp").origin_mark(), "[x]");
        assert_eq!(NetworkId::new("irc:local").origin_mark(), "[i]");
    }

    #[test]
    fn event_id_is_stable_and_distinguishes_fields() {
        let a = EventId::derive(&RoomRef::new("irc:local", "#lobby"), &"m1".into());
        let b = EventId::derive(&RoomRef::new("irc:local", "#lobby"), &"m1".into());
        let c = EventId::derive(&RoomRef::new("irc:local", "#lobbym"), &"1".into());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.as_str().len(), 32);
    }
}

/// A secret (token, password). `Debug` and `Display` print `***`, so it can not leak into logs.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl NetworkId {
    /// The gateway itself, as the sender of its own notices and admin actions. Adapters render
    /// events from this network as their bot (Matrix bot, XMPP listener, IRC bot), never as a
    /// puppet; a `Kick`/`Ban` from it is an enforcement the adapter carries out natively on
    /// its network when the target is a native user there.
    pub fn gateway() -> Self {
        Self::new("gateway")
    }

    /// True for [`NetworkId::gateway`].
    pub fn is_gateway(&self) -> bool {
        self.0 == "gateway"
    }

    /// The origin mark a puppet of a person from this network carries after their name on
    /// the other networks, so that a remote person cannot pass for a native one: the first
    /// letter of the network's kind (the id up to any `:`) in brackets, so `[m]` for Matrix,
    /// `[x]` for XMPP, `[i]` for every IRC network; `[?]` when the kind starts with no ASCII
    /// letter.
    pub fn origin_mark(&self) -> &'static str {
        const MARKS: [&str; 26] = [
            "[a]", "[b]", "[c]", "[d]", "[e]", "[f]", "[g]", "[h]", "[i]", "[j]", "[k]", "[l]",
            "[m]", "[n]", "[o]", "[p]", "[q]", "[r]", "[s]", "[t]", "[u]", "[v]", "[w]", "[x]",
            "[y]", "[z]",
        ];
        let first = self.0.bytes().next().map(|b| b.to_ascii_lowercase());
        match first {
            Some(b @ b'a'..=b'z') => MARKS[usize::from(b - b'a')],
            _ => "[?]",
        }
    }
}
