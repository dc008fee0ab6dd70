//! Stanzas our puppets send into a MUC.
//!
//! Ids: every message a puppet sends carries an origin-id (XEP-0359) equal to
//! its `id` attribute, `U`. The room reflects it with its own stanza-id `S`.
//! The adapter answers a delivery with `S` (the id XMPP clients use for
//! replies, reactions and retractions in groupchat, and the one inbound events
//! carry as `remote_id`), and keeps `S → U` in its kv table because XEP-0308
//! corrections must name `U`. Where the room stamps no stanza-id (no MAM), `U`
//! is answered and used for both.

use junction_core::format::RichText;
use minidom::{Element, ElementBuilder};

use crate::inbound::NS_CLIENT;

const NS_SID: &str = "urn:xmpp:sid:0";
const NS_REPLACE: &str = "urn:xmpp:message-correct:0";
const NS_RETRACT: &str = "urn:xmpp:message-retract:1";
const NS_REACTIONS: &str = "urn:xmpp:reactions:0";
const NS_REPLY: &str = "urn:xmpp:reply:0";
const NS_FALLBACK: &str = "urn:xmpp:fallback:0";
const NS_OOB: &str = "jabber:x:oob";
const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_HINTS: &str = "urn:xmpp:hints";

/// Attribute setting by plain name on minidom's builder (which takes an
/// `NcName`); every name used here is a constant valid XML name.
trait Attr {
    fn a(self, name: &str, value: impl Into<String>) -> Self;
}

impl Attr for ElementBuilder {
    fn a(self, name: &str, value: impl Into<String>) -> Self {
        match rxml::NcName::try_from(name) {
            Ok(n) => self.attr(n, value.into()),
            Err(_) => self,
        }
    }
}

/// Renders rich text as XEP-0393 styling. Plain text until the core's styling
/// writer lands; the text is sent as it is.
pub fn styled(text: &RichText) -> String {
    text.to_plain()
}

/// The skeleton of a groupchat message from `from` (a puppet's full JID) to
/// `room`, with `id` as both the stanza id and the origin-id.
fn groupchat(from: &str, room: &str, id: &str) -> ElementBuilder {
    Element::builder("message", NS_CLIENT)
        .a("type", "groupchat")
        .a("from", from)
        .a("to", room)
        .a("id", id)
        .append(Element::builder("origin-id", NS_SID).a("id", id))
}

fn body(text: &str) -> Element {
    Element::builder("body", NS_CLIENT).append(text).build()
}

/// A chat message; `emote` prefixes `/me `.
pub fn message(from: &str, room: &str, id: &str, text: &str, emote: bool) -> Element {
    let text = if emote {
        format!("/me {text}")
    } else {
        text.to_string()
    };
    groupchat(from, room, id).append(body(&text)).build()
}

/// A message with an attachment: the URL goes in the body (after any text)
/// and in an OOB element (XEP-0066), as clients show OOB only when the body
/// is exactly the URL.
pub fn attachment(from: &str, room: &str, id: &str, url: &str) -> Element {
    groupchat(from, room, id)
        .append(body(url))
        .append(
            Element::builder("x", NS_OOB)
                .append(Element::builder("url", NS_OOB).append(url))
                .build(),
        )
        .build()
}

/// A XEP-0308 correction of the puppet's earlier message `replaces` (its `U`).
pub fn correction(from: &str, room: &str, id: &str, replaces: &str, text: &str) -> Element {
    groupchat(from, room, id)
        .append(body(text))
        .append(Element::builder("replace", NS_REPLACE).a("id", replaces))
        .build()
}

/// A XEP-0424 retraction of the puppet's own message `target` (the room's `S`),
/// with a fallback body for clients that do not know retractions.
pub fn retraction(from: &str, room: &str, id: &str, target: &str) -> Element {
    groupchat(from, room, id)
        .append(Element::builder("retract", NS_RETRACT).a("id", target))
        .append(
            Element::builder("fallback", NS_FALLBACK)
                .a("for", NS_RETRACT)
                .build(),
        )
        .append(body("This person attempted to retract a previous message."))
        .append(Element::builder("store", NS_HINTS))
        .build()
}

/// XEP-0444 reactions: the puppet's full set of keys on `target` (`S`); an
/// empty set takes every reaction back.
pub fn reactions(from: &str, room: &str, id: &str, target: &str, keys: &[String]) -> Element {
    let set = keys.iter().fold(
        Element::builder("reactions", NS_REACTIONS).a("id", target),
        |b, k| b.append(Element::builder("reaction", NS_REACTIONS).append(k.as_str())),
    );
    groupchat(from, room, id)
        .append(set)
        .append(Element::builder("store", NS_HINTS))
        .build()
}

/// A XEP-0461 reply to `target` (`S`) by occupant `to` (`room/nick`, if
/// known), with a XEP-0428 fallback quote of `quoted` before `text`.
pub fn reply(
    from: &str,
    room: &str,
    id: &str,
    target: &str,
    to: Option<&str>,
    quoted: Option<&str>,
    text: &str,
) -> Element {
    let quote: String = quoted
        .map(|q| {
            q.lines()
                .take(3)
                .map(|l| format!("> {l}\n"))
                .collect::<String>()
        })
        .unwrap_or_default();
    let full = format!("{quote}{text}");
    let mut r = Element::builder("reply", NS_REPLY).a("id", target);
    if let Some(to) = to {
        r = r.a("to", to);
    }
    let mut b = groupchat(from, room, id).append(body(&full)).append(r);
    if !quote.is_empty() {
        // XEP-0428 counts code points.
        let end = quote.chars().count().to_string();
        b = b.append(
            Element::builder("fallback", NS_FALLBACK)
                .a("for", NS_REPLY)
                .append(
                    Element::builder("body", NS_FALLBACK)
                        .a("start", "0")
                        .a("end", end),
                )
                .build(),
        );
    }
    b.build()
}

/// A subject change (room topic).
pub fn subject(from: &str, room: &str, id: &str, text: &str) -> Element {
    Element::builder("message", NS_CLIENT)
        .a("type", "groupchat")
        .a("from", from)
        .a("to", room)
        .a("id", id)
        .append(Element::builder("subject", NS_CLIENT).append(text))
        .build()
}

/// Joins `room` as `nick`, asking for no history replay.
pub fn join(from: &str, room: &str, nick: &str, id: &str) -> Element {
    Element::builder("presence", NS_CLIENT)
        .a("from", from)
        .a("to", format!("{room}/{nick}"))
        .a("id", id)
        .append(
            Element::builder("x", NS_MUC)
                .append(Element::builder("history", NS_MUC).a("maxstanzas", "0"))
                .build(),
        )
        .build()
}

/// Leaves `room` (sent to the occupant JID `room/nick`).
pub fn leave(from: &str, room: &str, nick: &str, reason: Option<&str>) -> Element {
    let mut b = Element::builder("presence", NS_CLIENT)
        .a("from", from)
        .a("to", format!("{room}/{nick}"))
        .a("type", "unavailable");
    if let Some(r) = reason {
        b = b.append(Element::builder("status", NS_CLIENT).append(r));
    }
    b.build()
}

/// The next nick to try after a 409 conflict: `alice` → `alice[m]` →
/// `alice[m]2` → `alice[m]3`..., `tag` being the network's short mark.
pub fn next_nick(wanted: &str, tag: &str, attempt: u32) -> String {
    match attempt {
        0 => wanted.to_string(),
        1 => format!("{wanted}[{tag}]"),
        n => format!("{wanted}[{tag}]{n}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "\\40alice\\3amatrix.test%matrix@bridge.xmpp.test/junction";
    const R: &str = "lobby@conference.xmpp.test";

    fn xml(el: &Element) -> String {
        String::from(el)
    }

    #[test]
    fn message_carries_origin_id() {
        let el = message(P, R, "U1", "waves", true);
        assert_eq!(el.attr("type"), Some("groupchat"));
        assert_eq!(el.attr("id"), Some("U1"));
        let origin = el.get_child("origin-id", NS_SID).map(|o| o.attr("id"));
        assert_eq!(origin, Some(Some("U1")));
        assert_eq!(
            el.get_child("body", NS_CLIENT).map(Element::text),
            Some("/me waves".into())
        );
    }

    #[test]
    fn correction_retraction_reactions_shape() {
        let el = correction(P, R, "U2", "U1", "fixed");
        assert_eq!(
            el.get_child("replace", NS_REPLACE)
                .and_then(|r| r.attr("id")),
            Some("U1")
        );
        let el = retraction(P, R, "U3", "S1");
        assert_eq!(
            el.get_child("retract", NS_RETRACT)
                .and_then(|r| r.attr("id")),
            Some("S1")
        );
        let el = reactions(P, R, "U4", "S1", &["👍".into(), "🎉".into()]);
        let set = el.get_child("reactions", NS_REACTIONS);
        assert_eq!(set.and_then(|s| s.attr("id")), Some("S1"));
        assert_eq!(set.map(|s| s.children().count()), Some(2));
        assert!(xml(&el).contains("👍"));
    }

    #[test]
    fn reply_fallback_round_trips_through_inbound() {
        let el = reply(
            "lobby@conference.xmpp.test/alice",
            R,
            "U5",
            "S1",
            Some("lobby@conference.xmpp.test/bob"),
            Some("hi"),
            "hello back",
        );
        let cx = crate::inbound::RoomContext {
            room: junction_core::RoomRef::new("xmpp", R),
            room_jid: R.into(),
            component: "bridge.xmpp.test".into(),
            our_nicks: vec![],
        };
        match crate::inbound::parse_groupchat(&el, &cx, &|_| None) {
            crate::inbound::Parsed::Event(e) => match e.kind {
                junction_core::EventKind::Message(m) => {
                    assert_eq!(m.body.to_plain(), "hello back");
                    assert_eq!(m.reply_to.map(|r| r.0), Some("S1".to_string()));
                }
                other => panic!("{other:?}"),
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn join_asks_for_no_history_and_nicks_step() {
        let el = join(P, R, "alice", "j1");
        assert_eq!(el.attr("to"), Some("lobby@conference.xmpp.test/alice"));
        let hist = el
            .get_child("x", NS_MUC)
            .and_then(|x| x.get_child("history", NS_MUC))
            .and_then(|h| h.attr("maxstanzas"));
        assert_eq!(hist, Some("0"));
        assert_eq!(next_nick("alice", "m", 0), "alice");
        assert_eq!(next_nick("alice", "m", 1), "alice[m]");
        assert_eq!(next_nick("alice", "m", 2), "alice[m]2");
        let el = attachment(P, R, "U6", "https://up.test/cat.png");
        assert!(el.get_child("x", NS_OOB).is_some());
        let el = leave(P, R, "alice", Some("bye"));
        assert_eq!(el.attr("type"), Some("unavailable"));
        assert_eq!(
            subject(P, R, "U7", "t")
                .get_child("subject", NS_CLIENT)
                .map(Element::text),
            Some("t".into())
        );
    }
}
