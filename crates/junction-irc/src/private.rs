//! Private messages: a query between an IRC user and the puppet of someone on another network.
//!
//! A PRIVMSG to a puppet's nick arrives on that puppet's connection; it becomes an event of
//! the conversation ([`junction_core::private::Conversation`]) between its sender and the
//! puppet's owner. A delivery to a conversation is said by the sender's puppet (or relayed by
//! the bot) to the IRC user's nick, with no channel to join. The text of private messages is
//! never logged.

use crate::inbound::{self, account_of_user_id};
use irc_proto::{Command, Message};
use junction_core::private::{is_private, Conversation};
use junction_core::{AdapterContext, Inbound, RoomId, RoomRef, UserRef};
use std::borrow::Cow;

/// Where lines for `room` go on the wire: the channel itself, or for a private conversation
/// the nick of its IRC user (a nick that IRC could not carry becomes one no server gives).
pub fn wire_target(room: &RoomId) -> Cow<'_, str> {
    if !is_private(room) {
        return Cow::Borrowed(room.as_str());
    }
    let Some(c) = Conversation::parse(&RoomRef::new("irc", room.clone())) else {
        return Cow::Borrowed(INVALID);
    };
    let id = c.local.as_str();
    let nick = account_of_user_id(id)
        .or_else(|| id.strip_prefix("$n:"))
        .unwrap_or(id);
    if valid_nick(nick) {
        Cow::Owned(nick.to_owned())
    } else {
        Cow::Borrowed(INVALID)
    }
}

/// A target no IRC server knows (the server answers ERR_NOSUCHNICK, nothing is said).
const INVALID: &str = "*";

/// A nick that is one token of an IRC line and names no channel.
fn valid_nick(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with(['#', '&', ':', '$', '+', '!'])
        && n.chars()
            .all(|c| !c.is_whitespace() && !c.is_control() && !matches!(c, ',' | '*' | '?' | '@'))
}

/// True when the room is a private conversation, which no connection joins.
pub fn is_query(room: &RoomId) -> bool {
    is_private(room)
}

/// The event of a PRIVMSG that `owner`'s puppet received, in the conversation between its
/// sender and `owner`; None for what is not a private message to be relayed (notices, CTCP
/// other than ACTION, lines of our own puppets).
pub fn event_of(
    cx: &AdapterContext,
    owner: &UserRef,
    msg: &Message,
) -> Option<junction_core::Event> {
    let Command::PRIVMSG(_, _) = &msg.command else {
        return None;
    };
    let nick = msg.source_nickname()?;
    if cx.store.puppet_owner(nick).ok().flatten().is_some() {
        return None;
    }
    let sender = inbound::sender_user_id(msg, nick);
    let room = Conversation::new(cx.network.clone(), sender.into(), owner.clone()).room();
    let events = inbound::map(
        &cx.network,
        msg,
        &|_| Some(room.room.to_string()),
        &|_| Vec::new(),
        &|_| false,
        &|_| None,
    );
    events.into_iter().next()
}

/// Passes a private message to `owner`'s puppet on to the gateway.
pub(crate) async fn received(cx: &AdapterContext, owner: UserRef, msg: Message) {
    let Some(event) = event_of(cx, &owner, &msg) else {
        return;
    };
    tracing::debug!(network = %cx.network, to = %owner, "Private message to a puppet.");
    // Kept like a channel's lines, for the quote of a reply or a reaction to it.
    if let junction_core::EventKind::Message(m) = &event.kind {
        crate::lookup::remember(
            cx.store.as_ref(),
            &event.origin,
            &event.remote_id,
            &event.sender.display_name,
            &m.body.to_plain(),
        );
    }
    if cx.inbound.send(Inbound::new(event)).await.is_err() {
        tracing::debug!("gateway gone; private message not passed on");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use junction_core::{NetworkId, UserId};

    fn conv(local: &str) -> RoomId {
        Conversation::new(
            NetworkId::from("irc:local"),
            UserId::from(local),
            UserRef::new("matrix", "@alice:m.test"),
        )
        .room()
        .room
    }

    #[test]
    fn queries_go_to_the_nick_and_channels_stay_channels() {
        assert_eq!(wire_target(&RoomId::from("#lobby")), "#lobby");
        assert_eq!(wire_target(&conv("bob")), "bob");
        assert_eq!(wire_target(&conv("$a:bobacct")), "bobacct");
        assert_eq!(wire_target(&conv("$n:$odd")), INVALID);
        for bad in ["x :hi\r\nQUIT", "#chan", "a b", "x,y", ":x"] {
            assert_eq!(wire_target(&conv(bad)), INVALID, "{bad:?}");
        }
    }
}
