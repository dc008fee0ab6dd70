//! The normalised event: what every adapter produces from its network's wire traffic and what
//! every adapter renders back into its own network's closest native form.

use crate::format::RichText;
use crate::ids::{EventId, MessageId, RoomRef, UserRef};
use serde::{Deserialize, Serialize};

/// One thing that happened in a linked room.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The gateway's id, derived from `origin` and `remote_id` (see [`EventId::derive`]).
    pub id: EventId,
    /// The room it happened in.
    pub origin: RoomRef,
    /// The origin network's id of this event (message id, stanza-id, msgid...).
    pub remote_id: MessageId,
    /// Who did it.
    pub sender: Sender,
    /// Origin timestamp, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// True when the origin adapter saw the sender act as a moderator of the origin room
    /// (MUC role moderator or affiliation admin/owner, a Matrix power level at least the
    /// room's `redact` level, an IRC channel operator). Only then may a redaction of
    /// someone else's message cross, and only then does a target network use the gateway's
    /// own power for it (see [`crate::authority`]).
    #[serde(default)]
    pub by_moderator: bool,
}

impl Event {
    /// Builds an event and derives its id from origin room and remote id.
    pub fn new(
        origin: RoomRef,
        remote_id: MessageId,
        sender: Sender,
        ts_ms: u64,
        kind: EventKind,
    ) -> Self {
        Self {
            id: EventId::derive(&origin, &remote_id),
            origin,
            remote_id,
            sender,
            ts_ms,
            kind,
            by_moderator: false,
        }
    }

    /// Flattens any rich-text body nested deeper than [`crate::format::MAX_DEPTH`] (see
    /// [`RichText::bounded`]), so the event can be stored and read back whatever built it.
    pub fn bound_bodies(&mut self) {
        match &mut self.kind {
            EventKind::Message(Message { body, .. }) | EventKind::Edit { body, .. } => {
                *body = std::mem::take(body).bounded();
            }
            _ => {}
        }
    }

    /// The same event, marked as made by a moderator of its origin room when `yes`.
    pub fn moderated(mut self, yes: bool) -> Self {
        self.by_moderator = yes;
        self
    }

    /// The message ids this event refers to in its origin room (reply target, edit target...),
    /// which the router resolves into each target room's own ids.
    pub fn references(&self) -> Vec<&MessageId> {
        match &self.kind {
            EventKind::Message(m) => m.reply_to.iter().collect(),
            EventKind::Edit { target, .. }
            | EventKind::Redact { target, .. }
            | EventKind::React { target, .. }
            | EventKind::Unreact { target, .. } => vec![target],
            _ => Vec::new(),
        }
    }
}

/// The person (or bot) behind an event.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Sender {
    /// Stable identity on the origin network.
    pub user: UserRef,
    /// The human-facing name (Matrix displayname, MUC nick, IRC nick).
    pub display_name: String,
    /// Where the origin network shows the sender connecting from, when it shows it: on IRC
    /// the `nick!user@host` of the line. Bans match it, so a nick change does not evade one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Sender {
    /// Builds a sender.
    pub fn new(user: UserRef, display_name: impl Into<String>) -> Self {
        Self {
            user,
            display_name: display_name.into(),
            address: None,
        }
    }

    /// The same sender, with the network address it connects from (see [`Sender::address`]).
    pub fn with_address(mut self, address: impl Into<String>) -> Self {
        self.address = Some(address.into());
        self
    }
}

/// The kind of a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum MessageKind {
    /// An ordinary message.
    #[default]
    Text,
    /// A `/me` action.
    Emote,
    /// A notice (bots, announcements); never answered automatically.
    Notice,
}

/// A file or image attached to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Where the other networks can fetch it (an http(s) URL, or `mxc://` resolved by the
    /// Matrix adapter's media proxy).
    pub url: String,
    /// File name as shown to people.
    pub name: String,
    /// MIME type when known.
    pub mime: Option<String>,
    /// Size in bytes when known.
    pub size: Option<u64>,
}

/// A chat message.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Default)]
pub struct Message {
    /// Text, emote or notice.
    pub kind: MessageKind,
    /// The message body as rich text.
    pub body: RichText,
    /// The origin-network id of the message this one replies to.
    pub reply_to: Option<MessageId>,
    /// Attached files.
    pub attachments: Vec<Attachment>,
}

/// What happened.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EventKind {
    /// A chat message.
    Message(Message),
    /// A correction of an earlier message.
    Edit {
        /// Origin-network id of the corrected message.
        target: MessageId,
        /// The new body.
        body: RichText,
    },
    /// A redaction/retraction of an earlier message.
    Redact {
        /// Origin-network id of the removed message.
        target: MessageId,
        /// Optional reason.
        reason: Option<String>,
    },
    /// A reaction to a message.
    React {
        /// Origin-network id of the message reacted to.
        target: MessageId,
        /// The reaction key, usually one emoji.
        key: String,
    },
    /// A reaction taken back.
    Unreact {
        /// Origin-network id of the message reacted to.
        target: MessageId,
        /// The reaction key that was removed.
        key: String,
    },
    /// The sender joined the room.
    Join,
    /// The sender left the room (part or quit).
    Leave {
        /// Part/quit message.
        reason: Option<String>,
        /// True for a disconnect (IRC QUIT, netsplit) rather than leaving this room.
        quit: bool,
    },
    /// The sender changed their display name.
    NickChange {
        /// The new display name (the old one is `sender.display_name`).
        new_name: String,
    },
    /// The sender set the room topic.
    Topic {
        /// The new topic.
        text: String,
    },
    /// The sender kicked someone.
    Kick {
        /// Who was kicked.
        target: Sender,
        /// Why.
        reason: Option<String>,
    },
    /// The sender banned someone.
    Ban {
        /// Who was banned.
        target: Sender,
        /// Why.
        reason: Option<String>,
    },
}

impl EventKind {
    /// A short machine name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Message(_) => "message",
            EventKind::Edit { .. } => "edit",
            EventKind::Redact { .. } => "redact",
            EventKind::React { .. } => "react",
            EventKind::Unreact { .. } => "unreact",
            EventKind::Join => "join",
            EventKind::Leave { .. } => "leave",
            EventKind::NickChange { .. } => "nick",
            EventKind::Topic { .. } => "topic",
            EventKind::Kick { .. } => "kick",
            EventKind::Ban { .. } => "ban",
        }
    }

    /// True for membership noise (join, leave, nick change), which bridges may summarise.
    pub fn is_membership(&self) -> bool {
        matches!(
            self,
            EventKind::Join | EventKind::Leave { .. } | EventKind::NickChange { .. }
        )
    }
}
