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
use crate::inbound::{diff_reactions, person, said, sender_message_id, Said};
use crate::pending::answer_now;
use junction_core::clock::now_ms;
use junction_core::private::Conversation;
use junction_core::{
    AdapterContext, Delivery, Event, EventKind, Inbound, MessageId, MessageKind, Sender, UserRef,
};
use minidom::Element;

/// Conversation → the full JID its XMPP person last wrote from (`room/nick` for a MUC
/// private message).
pub(crate) const PRIVATE_TO: &str = "private_to";
/// `<real bare JID>\n<puppet bare JID>` → the id of the person in a room, for a conversation
/// with someone known by their room identity who was written to at their real JID: their
/// chat back belongs to the same conversation.
const PRIVATE_AS: &str = "private_as";
/// The namespace of a MUC private message's marker.
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";

/// A chat to one of our puppet JIDs from a person: the conversation's events, passed on to
/// the gateway. False when the stanza is no such chat (the caller looks at it further).
pub(crate) async fn received(
    st: &mut State,
    cx: &AdapterContext,
    el: &Element,
    rooms: &[String],
) -> bool {
    let Some((events, from)) = events_of(st, el, rooms) else {
        return false;
    };
    let Some(first) = events.first() else {
        // A chat to a puppet that means nothing to carry (a chat state, an empty body).
        return true;
    };
    if let Err(e) = st
        .store
        .put(PRIVATE_TO, first.origin.room.as_str(), from.as_bytes())
    {
        tracing::warn!(error = %e, "xmpp: could not keep where a private message came from");
    }
    tracing::debug!(to = %first.origin.network, "xmpp: a private message to a puppet");
    for event in events {
        if cx.inbound.send(Inbound::new(event)).await.is_err() {
            tracing::debug!("xmpp: gateway gone; private message not passed on");
            break;
        }
    }
    true
}

/// The events of a chat to a puppet JID (a message, a correction, a retraction, or the
/// reactions the sender added and took back) and the full JID it came from; None when the
/// stanza is no chat to a puppet.
fn events_of(st: &mut State, el: &Element, rooms: &[String]) -> Option<(Vec<Event>, String)> {
    if el.name() != "message" || !matches!(el.attr("type"), None | Some("chat" | "normal")) {
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
    let owner = st.store.puppet_owner(&to_bare).ok().flatten()?;
    if owner.network == st.network {
        return None;
    }
    let from_bare = from.split('/').next().unwrap_or(from);
    let (id, name, address) = if rooms.iter().any(|r| r.eq_ignore_ascii_case(from_bare)) {
        // A MUC private message: the occupant is who they are in the room.
        let (_, nick) = from.split_once('/')?;
        let known = st.occupants.get(from);
        let id = el
            .children()
            .find(|c| c.is("occupant-id", "urn:xmpp:occupant-id:0"))
            .and_then(|c| c.attr("id"))
            .map(str::to_owned)
            .or_else(|| known.and_then(|o| o.occupant_id.clone()))
            .map_or_else(|| from.to_owned(), |oid| format!("occupant:{oid}"));
        (id, nick.to_owned(), known.and_then(|o| o.jid.clone()))
    } else {
        if el.children().any(|c| c.is("x", NS_MUC_USER)) {
            return None;
        }
        let bare = person(from, component, rooms)?;
        let key = format!("{bare}\n{to_bare}");
        let local = bare.split('@').next().unwrap_or(&bare).to_owned();
        let kept = st
            .store
            .get(PRIVATE_AS, &key)
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8(v).ok());
        let (id, name) = match kept {
            Some(id) => (id, local),
            None => match room_identity(st, &bare, rooms) {
                // Someone seen in a linked room writes as who they are there (the ghost and
                // the puppet the others know), in this conversation from now on.
                Some((id, nick)) => {
                    if let Err(e) = st.store.put(PRIVATE_AS, &key, id.as_bytes()) {
                        tracing::warn!(error = %e, "xmpp: could not keep who a private chat is with");
                    }
                    (id, nick)
                }
                None => (bare.clone(), local),
            },
        };
        (id, name, Some(bare))
    };
    let user = UserRef::new(st.network.clone(), id);
    let room = Conversation::new(st.network.clone(), user.user.clone(), owner).room();
    let id = sender_message_id(el)
        .unwrap_or_else(|| format!("chat-{}-{}", now_ms(), rand::random::<u32>()));
    let mut sender = Sender::new(user, name);
    if let Some(a) = address {
        sender = sender.with_address(a);
    }
    let event = |id: String, kind| {
        Event::new(
            room.clone(),
            MessageId::new(id),
            sender.clone(),
            now_ms(),
            kind,
        )
    };
    let events = match said(el, &|_| None) {
        Said::Kind(EventKind::Message(m))
            if m.body.to_plain().trim().is_empty() && m.attachments.is_empty() =>
        {
            Vec::new()
        }
        Said::Kind(
            kind @ (EventKind::Message(_) | EventKind::Edit { .. } | EventKind::Redact { .. }),
        ) => vec![event(id, kind)],
        Said::Kind(_) | Said::Ignored(_) => Vec::new(),
        Said::Reactions { target, keys, .. } => {
            let k = (
                room.room.as_str().to_owned(),
                sender.user.user.as_str().to_owned(),
                target.as_str().to_owned(),
            );
            let prev = st.reactions.get(&k).cloned().unwrap_or_default();
            let (added, removed) = diff_reactions(&prev, &keys);
            st.reactions.put(k, keys);
            added
                .into_iter()
                .map(|key| (key, true))
                .chain(removed.into_iter().map(|key| (key, false)))
                .enumerate()
                .map(|(n, (key, add))| {
                    let target = target.clone();
                    let kind = if add {
                        EventKind::React { target, key }
                    } else {
                        EventKind::Unreact { target, key }
                    };
                    event(format!("{id}#{n}"), kind)
                })
                .collect()
        }
    };
    Some((events, from.to_owned()))
}

/// Who the person of real JID `bare` is in the first linked room (in `rooms` order) that
/// shows them with it: their id as the room's events name them (occupant-id, else
/// `room/nick`) and their nick.
fn room_identity(st: &State, bare: &str, rooms: &[String]) -> Option<(String, String)> {
    rooms.iter().find_map(|room| {
        st.occupants.iter().find_map(|(k, o)| {
            let (r, nick) = k.split_once('/')?;
            let here = r.eq_ignore_ascii_case(room)
                && o.jid
                    .as_deref()
                    .is_some_and(|j| j.split('/').next().unwrap_or(j).eq_ignore_ascii_case(bare));
            here.then(|| {
                let id = o
                    .occupant_id
                    .as_ref()
                    .map_or_else(|| k.clone(), |oid| format!("occupant:{oid}"));
                (id, nick.to_owned())
            })
        })
    })
}

/// Says a delivery of a conversation to its XMPP person: a chat from the sender's puppet JID
/// (the gateway's own notices from the listener) to where the person last wrote from, or
/// their bare JID. Messages (with their replies, XEP-0461, and attachments), edits
/// (XEP-0308), redactions (XEP-0424) and reactions (XEP-0444) are said as in a room, each
/// naming the id of the chat message it refers to. False when the connection is lost (the
/// delivery is kept for the next one).
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
    if !junction_core::private::carries(&d.event.kind) {
        answer_now(cx, &d, Ok(Vec::new()));
        return true;
    }
    let (from, puppet) = if d.event.sender.user.network.is_gateway() {
        (st.listener(), st.listener_bare())
    } else {
        let puppet = puppet_jid(&d.event.sender.user, &st.config.component);
        if let Err(e) = st.store.set_puppet(&d.event.sender.user, &puppet) {
            tracing::warn!(error = %e, "xmpp: puppet JID not stored");
        }
        (format!("{puppet}/junction"), puppet)
    };
    let Some(to) = address(st, cx, &c, &puppet) else {
        answer_now(
            cx,
            &d,
            Err("the person is not in a room the gateway sees any more".into()),
        );
        return true;
    };
    let id = st.new_id();
    let Some(el) = stanza(st, &d, &from, &to, &puppet, &id) else {
        answer_now(cx, &d, Err("what it refers to is unknown here".into()));
        return true;
    };
    let mut el = crate::outbound::as_chat(el);
    let rooms = crate::rooms::linked_rooms(cx);
    let to_bare = to.split('/').next().unwrap_or(&to);
    if rooms.iter().any(|r| r.eq_ignore_ascii_case(to_bare)) {
        el.append_child(Element::builder("x", NS_MUC_USER).build());
    }
    if !send(conn, el).await {
        st.redo.push(d);
        return false;
    }
    let is_message = matches!(d.event.kind, EventKind::Message(_));
    answer_now(
        cx,
        &d,
        Ok(if is_message {
            vec![MessageId::new(id)]
        } else {
            Vec::new()
        }),
    );
    true
}

/// The stanza (built as a room's, turned into a chat by the caller) of a delivery from
/// `from` to `to`; None for an edit, redaction or reaction whose target is unknown here.
fn stanza(
    st: &mut State,
    d: &Delivery,
    from: &str,
    to: &str,
    puppet: &str,
    id: &str,
) -> Option<Element> {
    use crate::outbound as out;
    let target = d.target_ids.first().map(|t| t.as_str().to_owned());
    Some(match &d.event.kind {
        EventKind::Message(m) => {
            let text = out::with_links(out::styled(&m.body), &m.attachments);
            match (d.reply_to.first(), m.attachments.first()) {
                (Some(r), _) => out::reply(from, to, id, r.as_str(), None, None, &text),
                (None, Some(a)) if m.body.is_empty() && m.attachments.len() == 1 => {
                    out::attachment(from, to, id, &a.url)
                }
                _ => out::message(from, to, id, &text, m.kind == MessageKind::Emote),
            }
        }
        EventKind::Edit { body, .. } => out::correction(from, to, id, &target?, &out::styled(body)),
        EventKind::Redact { .. } => out::retraction(from, to, id, &target?),
        EventKind::React { key, .. } | EventKind::Unreact { key, .. } => {
            let target = target?;
            let keys = crate::deliver::our_reactions(
                st,
                d.target.room.as_str(),
                puppet,
                &target,
                &d.event.kind,
                key,
            );
            out::reactions(from, to, id, &target, &keys)
        }
        _ => return None,
    })
}

/// Where a conversation's messages go: where its person last wrote from; their JID; for
/// someone known by their room identity, their real JID where the room shows it (kept, so
/// their chat back to `puppet` belongs to this conversation), else a private message to
/// their nick in the room.
fn address(st: &State, cx: &AdapterContext, c: &Conversation, puppet: &str) -> Option<String> {
    let key = c.room();
    if let Some(to) = st
        .store
        .get(PRIVATE_TO, key.room.as_str())
        .ok()
        .flatten()
        .and_then(|v| String::from_utf8(v).ok())
    {
        return Some(to);
    }
    let local = c.local.as_str();
    if !local.starts_with("occupant:") && !local.contains('/') {
        return local.contains('@').then(|| local.to_owned());
    }
    for room in crate::rooms::linked_rooms(cx) {
        let (nick, jid) = crate::rooms::find_occupant(st, &room, local);
        if let Some(jid) = jid {
            let jid = jid.split('/').next().unwrap_or(&jid).to_lowercase();
            if let Err(e) = st
                .store
                .put(PRIVATE_AS, &format!("{jid}\n{puppet}"), local.as_bytes())
            {
                tracing::warn!(error = %e, "xmpp: could not keep who a private chat is with");
            }
            return Some(jid);
        }
        if let Some(nick) = nick {
            return Some(format!("{room}/{nick}"));
        }
    }
    None
}
