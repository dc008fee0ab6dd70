//! Groupchat stanzas from a MUC → gateway events.
//!
//! Only the copy addressed to the room's listener is read (every puppet gets
//! its own copy of every room message); the caller checks the `to` address and
//! dedupes by the room's stanza-id. This module maps one stanza to what it
//! means, without state: corrections are resolved through a lookup the caller
//! passes in, and reactions come out as the occupant's full set for the caller
//! to diff against the last set it saw (XEP-0444 has replace semantics).

use junction_core::clock::now_ms;

use junction_core::format::styling;
#[cfg(test)]
use junction_core::format::RichText;
use junction_core::{
    Attachment, Event, EventKind, Message, MessageId, MessageKind, RoomRef, Sender, UserRef,
};
use minidom::Element;

use crate::ids::is_ours;

/// The namespace of stanzas on a XEP-0114 component stream.
pub const NS_CLIENT: &str = "jabber:component:accept";
const NS_SID: &str = "urn:xmpp:sid:0";
const NS_DELAY: &str = "urn:xmpp:delay";
const NS_REPLACE: &str = "urn:xmpp:message-correct:0";
const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
/// XEP-0425 as MUCs offer it today (version 0.3 on): the request and the room's
/// announcement are built on XEP-0424's `<retract/>`.
pub const NS_MODERATE: &str = "urn:xmpp:message-moderate:1";
/// XEP-0425 before version 0.3, as Prosody's `mod_muc_moderation` in Debian's
/// prosody-modules speaks it: built on XEP-0422 fastening (`<apply-to/>`).
pub const NS_MODERATE_0: &str = "urn:xmpp:message-moderate:0";
const NS_RETRACT_0: &str = "urn:xmpp:message-retract:0";
const NS_FASTEN: &str = "urn:xmpp:fasten:0";
/// Most bytes of a retraction's or moderation's reason kept (the rest is cut).
pub const MAX_REASON_BYTES: usize = 1024;
const NS_REACTIONS: &str = "urn:xmpp:reactions:0";
const NS_REPLY: &str = "urn:xmpp:reply:0";
const NS_OOB: &str = "jabber:x:oob";
const NS_OCCUPANT_ID: &str = "urn:xmpp:occupant-id:0";
const NS_FALLBACK: &str = "urn:xmpp:fallback:0";

/// Where a stanza is read: the linked room and our component.
#[derive(Clone, Debug)]
pub struct RoomContext {
    /// The room as written in the link (`lobby@conference.xmpp.test`).
    pub room: RoomRef,
    /// The room's bare JID as the server writes it (usually the same string).
    pub room_jid: String,
    /// Our component domain; occupants whose real JID is on it are our puppets.
    pub component: String,
    /// Nicks our own puppets and listener hold in this room (echo suppression
    /// where the room hides real JIDs).
    pub our_nicks: Vec<String>,
}

/// What one groupchat stanza means.
#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// A gateway event.
    Event(Event),
    /// The occupant's complete reaction set on `target` (XEP-0444); the caller
    /// diffs it against the previous set into React/Unreact events.
    Reactions {
        /// The room's stanza-id (or message id) of this reaction stanza.
        remote_id: MessageId,
        /// Who reacted.
        sender: Sender,
        /// The message reacted to (stanza-id in groupchat).
        target: MessageId,
        /// Every key the occupant now has on that message.
        keys: Vec<String>,
        /// Keys of the stanza dropped by the per-stanza cap (over the cap, repeated, empty
        /// or too long).
        dropped: usize,
    },
    /// Nothing to bridge; the reason is for debug logs.
    Ignored(&'static str),
    /// An occupant claimed what only the room may say (a moderation announcement): nothing
    /// is bridged, and the caller logs and counts the refusal. The reason is for the log.
    Refused(&'static str),
}

/// A message moderated in a room (XEP-0425), as the room announces it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moderation {
    /// The moderated message: its stanza-id in the room.
    pub target: String,
    /// The moderator's occupant JID (`room@service/nick`), when the room names them.
    pub by: Option<String>,
    /// The moderator's XEP-0421 occupant id, when the announcement carries it.
    pub occupant_id: Option<String>,
    /// The moderator's reason, bounded to [`MAX_REASON_BYTES`].
    pub reason: Option<String>,
}

/// A reason's text, empty as none, cut to [`MAX_REASON_BYTES`] on a character boundary.
fn bounded_reason(el: Option<&Element>) -> Option<String> {
    let mut text = el.map(Element::text).filter(|r| !r.is_empty())?;
    if text.len() > MAX_REASON_BYTES {
        let mut end = MAX_REASON_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    Some(text)
}

/// The moderation a message announces, in either form of XEP-0425, whoever sent it (only
/// the room's own announcement is to be trusted: the caller checks the sender):
///
/// - `urn:xmpp:message-moderate:1`: `<retract xmlns='urn:xmpp:message-retract:1' id='S'>
///   <moderated by='room/mod'><occupant-id id='…'/></moderated><reason>…</reason></retract>`;
/// - `urn:xmpp:message-moderate:0`: `<apply-to xmlns='urn:xmpp:fasten:0' id='S'>
///   <moderated by='room/mod'><retract xmlns='urn:xmpp:message-retract:0'/>
///   <reason>…</reason></moderated></apply-to>`.
///
/// A version-0 moderation that does not retract the message (the form allows others) is
/// not one the gateway carries: `None`.
pub fn moderation(el: &Element) -> Option<Moderation> {
    if let Some(retract) = child(el, "retract", NS_RETRACT) {
        let moderated = child(retract, "moderated", NS_MODERATE)?;
        return Some(Moderation {
            target: retract.attr("id")?.to_string(),
            by: moderated.attr("by").map(str::to_string),
            occupant_id: child(moderated, "occupant-id", NS_OCCUPANT_ID)
                .and_then(|o| o.attr("id"))
                .map(str::to_string),
            reason: bounded_reason(
                child(retract, "reason", NS_RETRACT)
                    .or_else(|| child(moderated, "reason", NS_MODERATE)),
            ),
        });
    }
    let apply_to = child(el, "apply-to", NS_FASTEN)?;
    let moderated = child(apply_to, "moderated", NS_MODERATE_0)?;
    child(moderated, "retract", NS_RETRACT_0)?;
    Some(Moderation {
        target: apply_to.attr("id")?.to_string(),
        by: moderated.attr("by").map(str::to_string),
        occupant_id: child(moderated, "occupant-id", NS_OCCUPANT_ID)
            .and_then(|o| o.attr("id"))
            .map(str::to_string),
        reason: bounded_reason(child(moderated, "reason", NS_MODERATE_0)),
    })
}

/// The form of message moderation a room's disco#info result offers, the current one
/// ([`NS_MODERATE`]) preferred; `None` when it offers neither (or `iq` is no such result).
pub fn offered_moderation(iq: &Element) -> Option<crate::outbound::ModerationForm> {
    use crate::outbound::ModerationForm;
    const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
    if iq.attr("type") != Some("result") {
        return None;
    }
    let query = child(iq, "query", NS_DISCO_INFO)?;
    let offers = |ns: &str| {
        query
            .children()
            .any(|f| f.is("feature", NS_DISCO_INFO) && f.attr("var") == Some(ns))
    };
    if offers(NS_MODERATE) {
        Some(ModerationForm::Retract)
    } else if offers(NS_MODERATE_0) {
        Some(ModerationForm::Fastening)
    } else {
        None
    }
}

/// Whether a message claims to announce a moderation in either form (with or without a
/// retraction, well formed or not): an occupant sending one is refused. (An archived
/// message the room replaced by a tombstone carries `<moderated/>` directly, without
/// `<retract/>` or `<apply-to/>` around it, and no body: it is no claim, and is skipped.)
fn claims_moderation(el: &Element) -> bool {
    child(el, "retract", NS_RETRACT).is_some_and(|r| child(r, "moderated", NS_MODERATE).is_some())
        || child(el, "apply-to", NS_FASTEN)
            .is_some_and(|a| child(a, "moderated", NS_MODERATE_0).is_some())
}

/// The first child named `name` in namespace `ns`.
fn child<'a>(el: &'a Element, name: &str, ns: &str) -> Option<&'a Element> {
    el.children().find(|c| c.is(name, ns))
}

/// The stanza-id the room stamped (`by` = the room's bare JID), if any.
pub fn room_stanza_id(el: &Element, room_jid: &str) -> Option<String> {
    el.children()
        .filter(|c| c.is("stanza-id", NS_SID))
        .find(|c| {
            c.attr("by")
                .is_some_and(|by| by.eq_ignore_ascii_case(room_jid))
        })
        .and_then(|c| c.attr("id"))
        .map(str::to_string)
}

/// The id the sender gave its message: origin-id (XEP-0359) or the `id` attribute.
pub fn sender_message_id(el: &Element) -> Option<String> {
    child(el, "origin-id", NS_SID)
        .and_then(|c| c.attr("id"))
        .or_else(|| el.attr("id"))
        .map(str::to_string)
}

/// The occupant's nick from a `room@service/nick` address.
fn nick_of<'a>(from: &'a str, room_jid: &str) -> Option<&'a str> {
    let (bare, nick) = from.split_once('/')?;
    (bare.eq_ignore_ascii_case(room_jid) && !nick.is_empty()).then_some(nick)
}

/// Who sent a stanza: occupant-id (XEP-0421) when the room gives one, else the
/// occupant JID; the display name is the nick.
fn sender_of(el: &Element, from: &str, nick: &str, cx: &RoomContext) -> Sender {
    let user = child(el, "occupant-id", NS_OCCUPANT_ID)
        .and_then(|c| c.attr("id"))
        .map_or_else(|| from.to_string(), |id| format!("occupant:{id}"));
    Sender {
        user: UserRef::new(cx.room.network.as_str(), user),
        display_name: nick.to_string(),
        address: None,
    }
}

/// The body with the XEP-0428 fallback (a reply's quote) cut out.
fn body_without_fallback(el: &Element, body: &str) -> String {
    let Some(fallback) = el
        .children()
        .find(|c| c.is("fallback", NS_FALLBACK) && c.attr("for") == Some(NS_REPLY))
    else {
        return body.to_string();
    };
    let Some(range) = child(fallback, "body", NS_FALLBACK) else {
        return body.to_string();
    };
    // XEP-0428 offsets count unicode code points.
    let start = range.attr("start").and_then(|s| s.parse::<usize>().ok());
    let end = range.attr("end").and_then(|s| s.parse::<usize>().ok());
    match (start, end) {
        (Some(start), Some(end)) if start <= end => body
            .chars()
            .take(start)
            .chain(body.chars().skip(end))
            .collect(),
        _ => body.to_string(),
    }
}

/// Maps one `<message type='groupchat'/>` from `room_jid/nick` to what it means.
///
/// `correction_target` turns the message id a XEP-0308 correction names (the
/// sender's own id of its original) into the room's stanza-id the gateway knows
/// that message by; when it returns `None` the id is used as it is.
pub fn parse_groupchat(
    el: &Element,
    cx: &RoomContext,
    correction_target: &dyn Fn(&str) -> Option<String>,
) -> Parsed {
    if el.name() != "message" || el.attr("type") != Some("groupchat") {
        return Parsed::Ignored("not groupchat");
    }
    let Some(from) = el.attr("from") else {
        return Parsed::Ignored("no from");
    };
    if child(el, "delay", NS_DELAY).is_some() {
        return Parsed::Ignored("history replay");
    }
    let remote_id = match room_stanza_id(el, &cx.room_jid).or_else(|| sender_message_id(el)) {
        Some(id) => MessageId::new(id),
        None => return Parsed::Ignored("no id"),
    };
    let Some(nick) = nick_of(from, &cx.room_jid) else {
        if from.eq_ignore_ascii_case(&cx.room_jid) {
            if let Some(m) = moderation(el) {
                return moderated(m, remote_id, cx);
            }
        }
        // From the room itself: subject changes by the service, status messages.
        return Parsed::Ignored("from the room");
    };
    if cx.our_nicks.iter().any(|n| n == nick) || is_ours(nick, &cx.component) {
        return Parsed::Ignored("our own puppet");
    }
    // Only the room announces a moderation; an occupant who sends one forges it.
    if claims_moderation(el) {
        return Parsed::Refused("a moderation announcement from an occupant, not the room");
    }
    let sender = sender_of(el, from, nick, cx);
    let event = |kind| {
        Parsed::Event(Event::new(
            cx.room.clone(),
            remote_id.clone(),
            sender.clone(),
            now_ms(),
            kind,
        ))
    };

    match said(el, correction_target) {
        Said::Kind(kind) => event(kind),
        Said::Reactions {
            target,
            keys,
            dropped,
        } => Parsed::Reactions {
            remote_id,
            sender,
            target,
            keys,
            dropped,
        },
        Said::Ignored(why) => Parsed::Ignored(why),
    }
}

/// What a message stanza says, in a room or a chat alike.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Said {
    /// An event of that kind: a message, an edit, a retraction or a topic.
    Kind(EventKind),
    /// The sender's complete reaction set on `target` (XEP-0444).
    Reactions {
        /// The message reacted to.
        target: MessageId,
        /// Every key the sender now has on it.
        keys: Vec<String>,
        /// Keys dropped by the per-stanza cap.
        dropped: usize,
    },
    /// Nothing to bridge; the reason is for debug logs.
    Ignored(&'static str),
}

/// Reads what a message stanza says: a retraction (XEP-0424), reactions (XEP-0444), a
/// correction (XEP-0308, its target turned by `correction_target` into the id the gateway
/// knows, else kept), a subject, or a message with its reply (XEP-0461, the XEP-0428
/// fallback quote cut out) and attachments (XEP-0066).
pub(crate) fn said(el: &Element, correction_target: &dyn Fn(&str) -> Option<String>) -> Said {
    // In a room, moderation (XEP-0425) and retraction (XEP-0424) name the room's stanza-id.
    if let Some(retract) = child(el, "retract", NS_RETRACT) {
        let Some(target) = retract.attr("id") else {
            return Said::Ignored("retract without id");
        };
        let reason = bounded_reason(
            child(retract, "reason", NS_RETRACT)
                .or_else(|| retract.children().find(|c| c.name() == "reason")),
        );
        return Said::Kind(EventKind::Redact {
            target: MessageId::new(target),
            reason,
        });
    }
    if let Some(reactions) = child(el, "reactions", NS_REACTIONS) {
        let Some(target) = reactions.attr("id") else {
            return Said::Ignored("reactions without id");
        };
        // One stanza may carry any number of children: at most a few distinct, short keys
        // cross (each becomes an event on every other network).
        let (keys, dropped) = junction_core::limits::reaction_keys(
            reactions
                .children()
                .filter(|c| c.is("reaction", NS_REACTIONS))
                .map(Element::text),
        );
        if dropped > 0 {
            tracing::info!(
                dropped,
                kept = keys.len(),
                "xmpp: reactions over the per-stanza cap, repeated or too long were dropped"
            );
        }
        return Said::Reactions {
            target: MessageId::new(target),
            keys,
            dropped,
        };
    }

    let body = child(el, "body", NS_CLIENT)
        .or_else(|| el.children().find(|c| c.name() == "body"))
        .map(Element::text);
    if let Some(replace) = child(el, "replace", NS_REPLACE) {
        let (Some(id), Some(body)) = (replace.attr("id"), body) else {
            return Said::Ignored("correction without id or body");
        };
        let target = correction_target(id).unwrap_or_else(|| id.to_string());
        let text = body.strip_prefix("/me ").unwrap_or(&body);
        return Said::Kind(EventKind::Edit {
            target: MessageId::new(target),
            body: styling::parse(text),
        });
    }
    if let Some(subject) = el.children().find(|c| c.name() == "subject") {
        if body.is_none() {
            return Said::Kind(EventKind::Topic {
                text: subject.text(),
            });
        }
    }
    let Some(body) = body else {
        return Said::Ignored("no body");
    };
    let reply_to = child(el, "reply", NS_REPLY)
        .and_then(|r| r.attr("id"))
        .map(MessageId::new);
    let mut text = if reply_to.is_some() {
        body_without_fallback(el, &body)
    } else {
        body.clone()
    };
    let attachments: Vec<Attachment> = el
        .children()
        .filter(|c| c.is("x", NS_OOB))
        .filter_map(|x| child(x, "url", NS_OOB))
        .map(Element::text)
        .filter(|u| !u.is_empty())
        .map(|url| Attachment {
            name: url.rsplit('/').next().unwrap_or_default().to_string(),
            url,
            mime: None,
            size: None,
        })
        .collect();
    // The body of an OOB message is its URL: the attachment says it already.
    if attachments.iter().any(|a| a.url == text.trim()) {
        text.clear();
    }
    let (kind, text) = match text.strip_prefix("/me ") {
        Some(rest) => (MessageKind::Emote, rest.to_string()),
        None => (MessageKind::Text, text),
    };
    Said::Kind(EventKind::Message(Message {
        kind,
        body: styling::parse(&text),
        reply_to,
        attachments,
    }))
}

/// The room's announcement of a moderation: a deletion by the moderator it names, marked
/// `by_moderator` (the room vouches for it). The gateway's own moderations, named by its
/// listener's or a puppet's nick, are its echo.
fn moderated(m: Moderation, remote_id: MessageId, cx: &RoomContext) -> Parsed {
    let nick = m.by.as_deref().and_then(|by| nick_of(by, &cx.room_jid));
    if let Some(nick) = nick {
        if cx.our_nicks.iter().any(|n| n == nick) || is_ours(nick, &cx.component) {
            return Parsed::Ignored("our own moderation");
        }
    }
    // Named as in its other events: occupant-id where the room gives one, else the occupant
    // JID; a moderator the room does not name is the room.
    let user = match (&m.occupant_id, &m.by) {
        (Some(id), _) => format!("occupant:{id}"),
        (None, Some(by)) if nick.is_some() => by.clone(),
        _ => cx.room_jid.clone(),
    };
    let sender = Sender {
        user: UserRef::new(cx.room.network.as_str(), user),
        display_name: nick.unwrap_or("a moderator").to_string(),
        address: None,
    };
    Parsed::Event(
        Event::new(
            cx.room.clone(),
            remote_id,
            sender,
            now_ms(),
            EventKind::Redact {
                target: MessageId::new(m.target),
                reason: m.reason,
            },
        )
        .moderated(true),
    )
}

/// The prefix of every message id our component mints; a room message whose
/// origin-id starts with it was sent by one of our occupants (echo).
pub const OUR_ID_PREFIX: &str = "jx-";

/// One message from a room's archive (XEP-0313 result), unwrapped.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedMessage {
    /// The `queryid` of the query it answers.
    pub queryid: String,
    /// The archive id, which in a MUC archive is the room's stanza-id.
    pub stanza_id: String,
    /// The archived groupchat message, with the room's stanza-id stamped on it
    /// and no delay marker, so [`parse_groupchat`] reads it like a live one.
    pub message: Element,
}

const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_FORWARD: &str = "urn:xmpp:forward:0";

/// Unwraps a MAM result message from `room_jid`'s archive; `None` when `el`
/// is not one (or is malformed).
pub fn archived(el: &Element, room_jid: &str) -> Option<ArchivedMessage> {
    let result = child(el, "result", NS_MAM)?;
    let queryid = result.attr("queryid").unwrap_or_default().to_string();
    let stanza_id = result.attr("id")?.to_string();
    let fwd = child(result, "forwarded", NS_FORWARD)?;
    let inner = fwd.children().find(|c| c.name() == "message")?;
    // The archived copy, without delay markers or stanza-ids others stamped,
    // then the room's stanza-id the archive gives.
    let mut msg = inner.clone();
    while msg.remove_child("delay", NS_DELAY).is_some() {}
    while msg.remove_child("stanza-id", NS_SID).is_some() {}
    if msg.attr("type").is_none() {
        msg.set_attr(
            rxml::Namespace::NONE,
            rxml::NcName::try_from("type").ok()?,
            "groupchat".to_string(),
        );
    }
    let mut sid = Element::builder("stanza-id", NS_SID).build();
    sid.set_attr(
        rxml::Namespace::NONE,
        rxml::NcName::try_from("id").ok()?,
        stanza_id.clone(),
    );
    sid.set_attr(
        rxml::Namespace::NONE,
        rxml::NcName::try_from("by").ok()?,
        room_jid.to_string(),
    );
    msg.append_child(sid);
    Some(ArchivedMessage {
        queryid,
        stanza_id,
        message: msg,
    })
}

/// The end of a MAM query (the `<fin/>` of its IQ result): whether the archive
/// has no more pages, and the last stanza-id of this page.
pub fn mam_fin(iq: &Element) -> Option<(bool, Option<String>)> {
    let fin = child(iq, "fin", NS_MAM)?;
    let complete = fin.attr("complete") == Some("true");
    let last = fin
        .children()
        .find(|c| c.name() == "set")
        .and_then(|s| s.children().find(|c| c.name() == "last"))
        .map(Element::text)
        .filter(|l| !l.is_empty());
    Some((complete, last))
}

/// The defined condition of a stanza error (`forbidden`, `not-acceptable`...).
pub fn error_condition(el: &Element) -> Option<String> {
    el.children()
        .find(|c| c.name() == "error")?
        .children()
        .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
        .map(|c| c.name().to_string())
}

/// What a XEP-0410 self-ping answer says about the occupant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelfPing {
    /// Still in the room.
    Joined,
    /// No longer in the room: join again.
    Gone,
    /// Cannot tell now (remote server trouble, timeouts): try later.
    Unknown,
}

/// Reads a self-ping answer as XEP-0410 §3 says: a result, or the errors
/// `service-unavailable` / `feature-not-implemented` (the client does not do
/// pings, but the room routed it), mean joined; `remote-server-*` and
/// `timeout` mean unknown; any other error means not joined.
pub fn self_ping_result(iq: &Element) -> SelfPing {
    match iq.attr("type") {
        Some("result") => SelfPing::Joined,
        Some("error") => match error_condition(iq).as_deref() {
            Some("service-unavailable" | "feature-not-implemented") => SelfPing::Joined,
            Some("remote-server-not-found" | "remote-server-timeout" | "timeout") | None => {
                SelfPing::Unknown
            }
            Some(_) => SelfPing::Gone,
        },
        _ => SelfPing::Unknown,
    }
}

/// A person writing to the gateway itself: `type=chat` (or normal) with a
/// body, to the component's domain or the listener's JID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectMessage {
    /// The sender's full JID (where the answer goes).
    pub from: String,
    /// The sender's bare JID (who the server vouches for).
    pub bare: String,
    /// The address written to (the answer comes from it).
    pub to: String,
    /// The text.
    pub body: String,
}

/// Reads a direct message to the gateway; `None` for anything else: groupchat,
/// errors, messages without a body, private messages through a MUC (the
/// sender's real JID is unknown there), and anything from our own component.
pub fn direct_message(
    el: &Element,
    component: &str,
    listener_bare: &str,
    rooms: &[String],
) -> Option<DirectMessage> {
    if el.name() != "message" {
        return None;
    }
    if !matches!(el.attr("type"), None | Some("chat" | "normal")) {
        return None;
    }
    let to = el.attr("to")?;
    let to_bare = to.split('/').next().unwrap_or(to);
    if !(to_bare.eq_ignore_ascii_case(component) || to_bare.eq_ignore_ascii_case(listener_bare)) {
        return None;
    }
    let from = el.attr("from")?;
    let bare = person(from, component, rooms)?;
    if el
        .children()
        .any(|c| c.is("x", "http://jabber.org/protocol/muc#user"))
    {
        return None;
    }
    let body = child(el, "body", NS_CLIENT)
        .or_else(|| el.children().find(|c| c.name() == "body"))
        .map(Element::text)?;
    if body.trim().is_empty() {
        return None;
    }
    Some(DirectMessage {
        from: from.to_string(),
        bare,
        to: to.to_string(),
        body,
    })
}

/// The bare JID (lower-cased) of `from` when it is a person who may give the gateway
/// commands: a user at some server, not the component or one of its puppets, and not an
/// occupant of a linked room writing privately through it.
pub fn person(from: &str, component: &str, rooms: &[String]) -> Option<String> {
    let bare = from.split('/').next().unwrap_or(from);
    let domain = bare.rsplit('@').next().unwrap_or(bare);
    if !bare.contains('@') || domain.eq_ignore_ascii_case(component) || is_ours(bare, component) {
        return None;
    }
    if rooms.iter().any(|r| r.eq_ignore_ascii_case(bare)) {
        return None;
    }
    Some(bare.to_lowercase())
}

/// Diffs an occupant's previous reaction set against its new one: keys added
/// (React) and keys taken back (Unreact), each in the order they were given.
pub fn diff_reactions(previous: &[String], now: &[String]) -> (Vec<String>, Vec<String>) {
    let added = now
        .iter()
        .filter(|k| !previous.contains(k))
        .cloned()
        .collect();
    let removed = previous
        .iter()
        .filter(|k| !now.contains(k))
        .cloned()
        .collect();
    (added, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> RoomContext {
        RoomContext {
            room: RoomRef::new("xmpp", "lobby@conference.xmpp.test"),
            room_jid: "lobby@conference.xmpp.test".into(),
            component: "bridge.xmpp.test".into(),
            our_nicks: vec!["junction".into(), "alice[m]".into()],
        }
    }

    fn parse(xml: &str) -> Parsed {
        let el: Element = match xml.parse() {
            Ok(el) => el,
            Err(e) => panic!("fixture does not parse: {e}"),
        };
        parse_groupchat(&el, &cx(), &|id| {
            (id == "orig-1").then(|| "S-1".to_string())
        })
    }

    fn kind(p: Parsed) -> (MessageId, Sender, EventKind) {
        match p {
            Parsed::Event(e) => (e.remote_id, e.sender, e.kind),
            other => panic!("expected an event, got {other:?}"),
        }
    }

    #[test]
    fn styled_body_becomes_rich_text() {
        use junction_core::format::Span;
        let (_, _, k) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='s1' \
               from='lobby@conference.xmpp.test/bob'><body>say *hi*</body></message>",
        ));
        match k {
            EventKind::Message(m) => assert_eq!(
                m.body.spans,
                vec![
                    Span::Text("say ".into()),
                    Span::Bold(vec![Span::Text("hi".into())])
                ]
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn archived_message_reads_like_a_live_one() {
        let el: Element =
            "<message xmlns='jabber:component:accept' from='lobby@conference.xmpp.test' \
               to='junction@bridge.xmpp.test/junction'>\
               <result xmlns='urn:xmpp:mam:2' queryid='q1' id='S-42'>\
                 <forwarded xmlns='urn:xmpp:forward:0'>\
                   <delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/>\
                   <message xmlns='jabber:client' type='groupchat' id='m1' \
                     from='lobby@conference.xmpp.test/bob'><body>missed</body></message>\
                 </forwarded></result></message>"
                .parse()
                .unwrap_or_else(|e| panic!("{e}"));
        let a = archived(&el, "lobby@conference.xmpp.test").unwrap_or_else(|| panic!("no result"));
        assert_eq!(a.queryid, "q1");
        assert_eq!(a.stanza_id, "S-42");
        let (id, sender, k) = kind(parse_groupchat(&a.message, &cx(), &|_| None));
        assert_eq!(id.as_str(), "S-42");
        assert_eq!(sender.display_name, "bob");
        assert!(matches!(k, EventKind::Message(m) if m.body.to_plain() == "missed"));
        let fin: Element = "<iq xmlns='jabber:component:accept' type='result' id='q'>\
               <fin xmlns='urn:xmpp:mam:2' complete='true'>\
               <set xmlns='http://jabber.org/protocol/rsm'><first>S-1</first><last>S-42</last></set>\
               </fin></iq>"
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mam_fin(&fin), Some((true, Some("S-42".into()))));
    }

    #[test]
    fn self_ping_answers() {
        let p = |x: &str| -> Element { x.parse().unwrap_or_else(|e| panic!("{e}")) };
        assert_eq!(
            self_ping_result(&p(
                "<iq xmlns='jabber:component:accept' type='result' id='1'/>"
            )),
            SelfPing::Joined
        );
        let err = |c: &str| {
            p(&format!(
                "<iq xmlns='jabber:component:accept' type='error' id='1'><error type='cancel'>\
                 <{c} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
            ))
        };
        assert_eq!(
            self_ping_result(&err("service-unavailable")),
            SelfPing::Joined
        );
        assert_eq!(
            self_ping_result(&err("feature-not-implemented")),
            SelfPing::Joined
        );
        assert_eq!(self_ping_result(&err("not-acceptable")), SelfPing::Gone);
        assert_eq!(self_ping_result(&err("item-not-found")), SelfPing::Gone);
        assert_eq!(
            self_ping_result(&err("remote-server-timeout")),
            SelfPing::Unknown
        );
    }

    #[test]
    fn direct_messages_to_the_gateway() {
        let p = |x: &str| -> Element { x.parse().unwrap_or_else(|e| panic!("{e}")) };
        let rooms = vec!["lobby@conference.xmpp.test".to_string()];
        let dm = |x: &str| {
            direct_message(
                &p(x),
                "bridge.xmpp.test",
                "junction@bridge.xmpp.test",
                &rooms,
            )
        };
        let d = dm(
            "<message xmlns='jabber:component:accept' type='chat' from='Bob@xmpp.test/pc' \
                    to='bridge.xmpp.test'><body>status</body></message>",
        );
        assert_eq!(d.as_ref().map(|d| d.bare.as_str()), Some("bob@xmpp.test"));
        assert_eq!(d.map(|d| d.body), Some("status".into()));
        assert!(dm(
            "<message xmlns='jabber:component:accept' type='chat' from='bob@xmpp.test/pc' \
                    to='junction@bridge.xmpp.test/junction'><body>status</body></message>"
        )
        .is_some());
        // A MUC private message, a puppet, a groupchat, no body.
        assert!(dm("<message xmlns='jabber:component:accept' type='chat' \
                    from='lobby@conference.xmpp.test/bob' to='bridge.xmpp.test'><body>x</body>\
                    <x xmlns='http://jabber.org/protocol/muc#user'/></message>")
        .is_none());
        assert!(dm("<message xmlns='jabber:component:accept' type='chat' \
                    from='a%matrix@bridge.xmpp.test/junction' to='bridge.xmpp.test'><body>x</body></message>")
            .is_none());
        assert!(
            dm("<message xmlns='jabber:component:accept' type='groupchat' \
                    from='bob@xmpp.test/pc' to='bridge.xmpp.test'><body>x</body></message>")
            .is_none()
        );
        assert!(dm("<message xmlns='jabber:component:accept' type='chat' \
                    from='bob@xmpp.test/pc' to='bridge.xmpp.test'><active xmlns='http://jabber.org/protocol/chatstates'/></message>")
            .is_none());
    }

    #[test]
    fn groupchat_with_stanza_id() {
        let (id, sender, k) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m1' \
               from='lobby@conference.xmpp.test/bob' to='junction@bridge.xmpp.test/junction'>\
               <body>hello *world*</body>\
               <occupant-id xmlns='urn:xmpp:occupant-id:0' id='occ-bob'/>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='lobby@conference.xmpp.test' id='S-9'/>\
             </message>",
        ));
        assert_eq!(id.as_str(), "S-9");
        assert_eq!(sender.display_name, "bob");
        assert_eq!(sender.user.user.as_str(), "occupant:occ-bob");
        match k {
            EventKind::Message(m) => {
                assert_eq!(m.kind, MessageKind::Text);
                assert_eq!(m.body.to_plain(), "hello world");
                assert!(!m.body.is_plain(), "*world* is bold");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn emote_and_fallback_id() {
        let (id, _, k) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m2' \
               from='lobby@conference.xmpp.test/bob'><body>/me waves</body></message>",
        ));
        assert_eq!(id.as_str(), "m2");
        assert!(
            matches!(k, EventKind::Message(m) if m.kind == MessageKind::Emote && m.body.to_plain() == "waves")
        );
    }

    #[test]
    fn correction_maps_to_stanza_id() {
        let (_, _, k) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m3' \
               from='lobby@conference.xmpp.test/bob'><body>fixed</body>\
               <replace xmlns='urn:xmpp:message-correct:0' id='orig-1'/>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='lobby@conference.xmpp.test' id='S-10'/>\
             </message>",
        ));
        assert_eq!(
            k,
            EventKind::Edit {
                target: MessageId::new("S-1"),
                body: RichText::plain("fixed")
            }
        );
    }

    #[test]
    fn retraction_names_the_stanza_id() {
        let (_, _, k) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m4' \
               from='lobby@conference.xmpp.test/bob'>\
               <retract xmlns='urn:xmpp:message-retract:1' id='S-1'/>\
               <body>This person attempted to retract a previous message.</body></message>",
        ));
        assert_eq!(
            k,
            EventKind::Redact {
                target: MessageId::new("S-1"),
                reason: None
            }
        );
    }

    /// The room's announcement of a moderation (XEP-0425, version 0.3 on): a deletion by
    /// the moderator it names, vouched for by the room.
    #[test]
    fn the_rooms_moderation_announcement_is_a_moderators_deletion() {
        let p = parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m5' \
               from='lobby@conference.xmpp.test'>\
               <retract xmlns='urn:xmpp:message-retract:1' id='S-2'>\
                 <moderated xmlns='urn:xmpp:message-moderate:1' by='lobby@conference.xmpp.test/mod'>\
                   <occupant-id xmlns='urn:xmpp:occupant-id:0' id='occ-7'/></moderated>\
                 <reason>spam</reason></retract>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='lobby@conference.xmpp.test' id='S-20'/>\
             </message>",
        );
        let Parsed::Event(e) = p else {
            panic!("expected an event, got {p:?}")
        };
        assert!(e.by_moderator);
        assert_eq!(e.remote_id.as_str(), "S-20");
        assert_eq!(e.sender.user.user.as_str(), "occupant:occ-7");
        assert_eq!(e.sender.display_name, "mod");
        assert_eq!(
            e.kind,
            EventKind::Redact {
                target: MessageId::new("S-2"),
                reason: Some("spam".into())
            }
        );
    }

    /// Prosody's `mod_muc_moderation` (Debian's prosody-modules) announces in the form before
    /// version 0.3: fastening, `urn:xmpp:message-moderate:0`.
    #[test]
    fn the_older_announcement_form_is_read_too() {
        let p = parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m6' \
               from='lobby@conference.xmpp.test'>\
               <apply-to xmlns='urn:xmpp:fasten:0' id='S-3'>\
                 <moderated xmlns='urn:xmpp:message-moderate:0' by='lobby@conference.xmpp.test/mod'>\
                   <retract xmlns='urn:xmpp:message-retract:0'/><reason>off topic</reason>\
                 </moderated></apply-to></message>",
        );
        let Parsed::Event(e) = p else {
            panic!("expected an event, got {p:?}")
        };
        assert!(e.by_moderator);
        assert_eq!(e.remote_id.as_str(), "m6");
        assert_eq!(
            e.sender.user.user.as_str(),
            "lobby@conference.xmpp.test/mod"
        );
        assert_eq!(
            e.kind,
            EventKind::Redact {
                target: MessageId::new("S-3"),
                reason: Some("off topic".into())
            }
        );
        // A moderation that does not retract, and a moderator the room does not name.
        assert_eq!(
            parse(
                "<message xmlns='jabber:component:accept' type='groupchat' id='m7' \
                   from='lobby@conference.xmpp.test'>\
                   <apply-to xmlns='urn:xmpp:fasten:0' id='S-3'>\
                     <moderated xmlns='urn:xmpp:message-moderate:0' by='lobby@conference.xmpp.test/mod'/>\
                   </apply-to></message>",
            ),
            Parsed::Ignored("from the room")
        );
        let (_, sender, _) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m8' \
               from='lobby@conference.xmpp.test'>\
               <apply-to xmlns='urn:xmpp:fasten:0' id='S-4'>\
                 <moderated xmlns='urn:xmpp:message-moderate:0'>\
                   <retract xmlns='urn:xmpp:message-retract:0'/></moderated></apply-to></message>",
        ));
        assert_eq!(sender.user.user.as_str(), "lobby@conference.xmpp.test");
        assert_eq!(sender.display_name, "a moderator");
    }

    /// An occupant sending what only the room may say is refused, in either form; the
    /// gateway's own moderation, echoed by the room, is not news.
    #[test]
    fn forged_and_own_moderations_are_not_bridged() {
        for body in [
            "<retract xmlns='urn:xmpp:message-retract:1' id='S-2'>\
               <moderated xmlns='urn:xmpp:message-moderate:1' by='lobby@conference.xmpp.test/mod'/>\
             </retract>",
            "<apply-to xmlns='urn:xmpp:fasten:0' id='S-2'>\
               <moderated xmlns='urn:xmpp:message-moderate:0' by='lobby@conference.xmpp.test/mod'>\
               <retract xmlns='urn:xmpp:message-retract:0'/></moderated></apply-to>",
        ] {
            let p = parse(&format!(
                "<message xmlns='jabber:component:accept' type='groupchat' id='f1' \
                   from='lobby@conference.xmpp.test/mod'>{body}</message>"
            ));
            assert!(matches!(p, Parsed::Refused(_)), "{p:?}");
            let own = parse(&format!(
                "<message xmlns='jabber:component:accept' type='groupchat' id='f2' \
                   from='lobby@conference.xmpp.test'>{}</message>",
                body.replace("/mod'", "/junction'")
            ));
            assert_eq!(own, Parsed::Ignored("our own moderation"));
        }
    }

    #[test]
    fn the_offered_moderation_form_is_read_from_disco_info() {
        use crate::outbound::ModerationForm;
        let info = |features: &str| -> Element {
            format!(
                "<iq xmlns='jabber:component:accept' type='result' id='d1' \
                   from='lobby@conference.xmpp.test'>\
                   <query xmlns='http://jabber.org/protocol/disco#info'>\
                   <identity category='conference' type='text'/>{features}</query></iq>"
            )
            .parse()
            .expect("fixture")
        };
        let f = |ns: &str| format!("<feature var='{ns}'/>");
        assert_eq!(
            offered_moderation(&info(&f(NS_MODERATE_0))),
            Some(ModerationForm::Fastening)
        );
        assert_eq!(
            offered_moderation(&info(&format!("{}{}", f(NS_MODERATE_0), f(NS_MODERATE)))),
            Some(ModerationForm::Retract)
        );
        assert_eq!(offered_moderation(&info(&f("urn:xmpp:mam:2"))), None);
        let error: Element = "<iq xmlns='jabber:component:accept' type='error' id='d1'/>"
            .parse()
            .expect("fixture");
        assert_eq!(offered_moderation(&error), None);
    }

    #[test]
    fn reasons_are_bounded() {
        let long = "é".repeat(MAX_REASON_BYTES);
        let m = moderation(
            &format!(
                "<message xmlns='jabber:component:accept' from='lobby@conference.xmpp.test'>\
                   <apply-to xmlns='urn:xmpp:fasten:0' id='S-5'>\
                   <moderated xmlns='urn:xmpp:message-moderate:0'>\
                   <retract xmlns='urn:xmpp:message-retract:0'/><reason>{long}</reason>\
                   </moderated></apply-to></message>"
            )
            .parse::<Element>()
            .expect("fixture"),
        )
        .expect("a moderation");
        let reason = m.reason.expect("a reason");
        assert!(reason.len() <= MAX_REASON_BYTES && reason.len() >= MAX_REASON_BYTES - 1);
        assert!(reason.chars().all(|c| c == 'é'));
    }

    #[test]
    fn reactions_carry_the_full_set() {
        let p = parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m6' \
               from='lobby@conference.xmpp.test/bob'>\
               <reactions xmlns='urn:xmpp:reactions:0' id='S-1'>\
                 <reaction>👍</reaction><reaction>🎉</reaction></reactions>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='lobby@conference.xmpp.test' id='S-11'/>\
             </message>",
        );
        match p {
            Parsed::Reactions { target, keys, .. } => {
                assert_eq!(target.as_str(), "S-1");
                assert_eq!(keys, vec!["👍".to_string(), "🎉".to_string()]);
                let (added, removed) = diff_reactions(&["👍".into(), "❤".into()], &keys);
                assert_eq!(added, vec!["🎉".to_string()]);
                assert_eq!(removed, vec!["❤".to_string()]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reactions_over_the_cap_are_reported_as_dropped() {
        let rs: String = (0..25)
            .map(|i| format!("<reaction>k{}</reaction>", i % 20))
            .collect();
        let p = parse(&format!(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m6' \
               from='lobby@conference.xmpp.test/bob'>\
               <reactions xmlns='urn:xmpp:reactions:0' id='S-1'>{rs}</reactions>\
               <stanza-id xmlns='urn:xmpp:sid:0' by='lobby@conference.xmpp.test' id='S-12'/>\
             </message>"
        ));
        match p {
            Parsed::Reactions { keys, dropped, .. } => {
                assert_eq!(keys.len(), junction_core::limits::MAX_REACTIONS_PER_ITEM);
                assert_eq!(dropped, 25 - keys.len());
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn reply_strips_the_fallback_quote() {
        let (_, _, k) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m7' \
               from='lobby@conference.xmpp.test/bob'>\
               <body>&gt; carol: hi\nhello back</body>\
               <reply xmlns='urn:xmpp:reply:0' to='lobby@conference.xmpp.test/carol' id='S-1'/>\
               <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'>\
                 <body start='0' end='12'/></fallback></message>",
        ));
        match k {
            EventKind::Message(m) => {
                assert_eq!(m.reply_to, Some(MessageId::new("S-1")));
                assert_eq!(m.body.to_plain(), "hello back");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn oob_attachment_subject_history_and_echo() {
        let (_, _, k) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m8' \
               from='lobby@conference.xmpp.test/bob'><body>https://up.test/a/cat.png</body>\
               <x xmlns='jabber:x:oob'><url>https://up.test/a/cat.png</url></x></message>",
        ));
        match k {
            EventKind::Message(m) => {
                assert_eq!(m.attachments.len(), 1);
                assert_eq!(m.attachments[0].name, "cat.png");
                assert!(m.body.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let (_, _, k) = kind(parse(
            "<message xmlns='jabber:component:accept' type='groupchat' id='m9' \
               from='lobby@conference.xmpp.test/bob'><subject>Welcome</subject></message>",
        ));
        assert_eq!(
            k,
            EventKind::Topic {
                text: "Welcome".into()
            }
        );
        assert_eq!(
            parse(
                "<message xmlns='jabber:component:accept' type='groupchat' id='h1' \
                   from='lobby@conference.xmpp.test/bob'><body>old</body>\
                   <delay xmlns='urn:xmpp:delay' stamp='2026-01-01T00:00:00Z'/></message>",
            ),
            Parsed::Ignored("history replay")
        );
        assert_eq!(
            parse(
                "<message xmlns='jabber:component:accept' type='groupchat' id='e1' \
                   from='lobby@conference.xmpp.test/alice[m]'><body>echo</body></message>",
            ),
            Parsed::Ignored("our own puppet")
        );
    }
}
