//! Private conversations: chats between an XMPP user and the puppet JID of someone on another
//! network ([`junction_core::private::Conversation`]).
//!
//! A chat to a puppet JID (`<escaped user>%<network>@<component>`) from a person's JID is an
//! event of the conversation between that person (their bare JID) and the puppet's owner; the
//! full JID it came from is kept (table `xmpp/private_to`), so answers go back where the person
//! wrote from, as chats from the other person's puppet JID. Private text is never logged.

use crate::adapter::State;
use crate::connection::{send, Conn};
use crate::ids::puppet_jid;
use crate::inbound::{person, sender_message_id};
use crate::pending::answer_now;
use junction_core::clock::now_ms;
use junction_core::format::styling;
use junction_core::private::Conversation;
use junction_core::{
    AdapterContext, Delivery, Event, EventKind, Inbound, Message, MessageId, MessageKind, Sender,
    UserRef,
};
use minidom::Element;

/// Conversation → the full JID its XMPP person last wrote from.
pub(crate) const PRIVATE_TO: &str = "private_to";

/// A chat to one of our puppet JIDs from a person: the conversation's event, passed on to the
/// gateway. False when the stanza is no such chat (the caller looks at it further).
pub(crate) async fn received(
    st: &mut State,
    cx: &AdapterContext,
    el: &Element,
    rooms: &[String],
) -> bool {
    let Some((event, from)) = event_of(st, el, rooms) else {
        return false;
    };
    if let Err(e) = st
        .store
        .put(PRIVATE_TO, event.origin.room.as_str(), from.as_bytes())
    {
        tracing::warn!(error = %e, "xmpp: could not keep where a private message came from");
    }
    tracing::debug!(to = %event.origin.network, "xmpp: a private message to a puppet");
    if cx.inbound.send(Inbound::new(event)).await.is_err() {
        tracing::debug!("xmpp: gateway gone; private message not passed on");
    }
    true
}

/// The event of a chat to a puppet JID and the full JID it came from.
fn event_of(st: &State, el: &Element, rooms: &[String]) -> Option<(Event, String)> {
    if el.name() != "message" || !matches!(el.attr("type"), None | Some("chat" | "normal")) {
        return None;
    }
    if el
        .children()
        .any(|c| c.is("x", "http://jabber.org/protocol/muc#user"))
    {
        return None;
    }
    let component = st.config.component.as_str();
    let to = el.attr("to")?;
    let to_bare = to.split('/').next().unwrap_or(to).to_lowercase();
    let (local, domain) = to_bare.split_once('@')?;
    if local.is_empty()
        || !domain.eq_ignore_ascii_case(component)
        || to_bare.eq_ignore_ascii_case(&st.listener_bare())
    {
        return None;
    }
    let from = el.attr("from")?;
    let bare = person(from, component, rooms)?;
    let owner = st.store.puppet_owner(&to_bare).ok().flatten()?;
    if owner.network == st.network {
        return None;
    }
    let text = el
        .children()
        .find(|c| c.name() == "body")
        .map(Element::text)?;
    if text.trim().is_empty() {
        return None;
    }
    let user = UserRef::new(st.network.clone(), bare.clone());
    let name = bare.split('@').next().unwrap_or(&bare).to_owned();
    let room = Conversation::new(st.network.clone(), user.user.clone(), owner).room();
    let (kind, text) = match text.strip_prefix("/me ") {
        Some(rest) => (MessageKind::Emote, rest.to_owned()),
        None => (MessageKind::Text, text),
    };
    let id = sender_message_id(el)
        .unwrap_or_else(|| format!("chat-{}-{}", now_ms(), rand::random::<u32>()));
    let event = Event::new(
        room,
        MessageId::new(id),
        Sender::new(user, name).with_address(bare),
        now_ms(),
        EventKind::Message(Message {
            kind,
            body: styling::parse(&text),
            reply_to: None,
            attachments: Vec::new(),
        }),
    );
    Some((event, from.to_owned()))
}

/// Says a delivery of a conversation to its XMPP person: a chat from the sender's puppet JID
/// (the gateway's own notices from the listener) to where the person last wrote from, or
/// their bare JID. Only messages cross for now; the rest is answered as done. False when the
/// connection is lost (the delivery is kept for the next one).
pub(crate) async fn deliver(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    d: Delivery,
) -> bool {
    let Some(c) = Conversation::parse(&d.target) else {
        answer_now(cx, &d, Err("not a conversation".into()));
        return true;
    };
    let EventKind::Message(m) = &d.event.kind else {
        answer_now(cx, &d, Ok(Vec::new()));
        return true;
    };
    let to = st
        .store
        .get(PRIVATE_TO, d.target.room.as_str())
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
        .unwrap_or_else(|| c.local.to_string());
    let from = if d.event.sender.user.network.is_gateway() {
        st.listener()
    } else {
        let puppet = puppet_jid(&d.event.sender.user, &st.config.component);
        if let Err(e) = st.store.set_puppet(&d.event.sender.user, &puppet) {
            tracing::warn!(error = %e, "xmpp: puppet JID not stored");
        }
        format!("{puppet}/junction")
    };
    let mut text = crate::outbound::styled(&m.body);
    if m.kind == MessageKind::Emote {
        text = format!("/me {text}");
    }
    let id = st.new_id();
    if !send(conn, crate::outbound::chat(&from, &to, &id, &text)).await {
        st.redo.push(d);
        return false;
    }
    answer_now(cx, &d, Ok(vec![MessageId::new(id)]));
    true
}
