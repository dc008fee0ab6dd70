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
const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const NS_MODERATE: &str = crate::inbound::NS_MODERATE;
const NS_MODERATE_0: &str = crate::inbound::NS_MODERATE_0;
const NS_RETRACT_0: &str = "urn:xmpp:message-retract:0";
const NS_FASTEN: &str = "urn:xmpp:fasten:0";
const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_MAM: &str = "urn:xmpp:mam:2";
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
const NS_DATA: &str = "jabber:x:data";
const NS_PING: &str = "urn:xmpp:ping";

/// Attribute setting by plain name on minidom's builder (which takes an
/// `NcName`); every name used here is a constant valid XML name.
pub(crate) trait Attr {
    /// Sets attribute `name` (a constant, valid XML name) to `value`.
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

/// Renders rich text as XEP-0393 styling (`*bold*`, `_italic_`, `~strike~`,
/// `` `code` ``, code blocks and `> ` quotes) through the core converter.
pub fn styled(text: &RichText) -> String {
    junction_core::format::styling::render(text)
}

/// Accepts a new room's default configuration (an "instant room", XEP-0045 §10.1.2),
/// which unlocks a room the server keeps locked until its owner configures it.
pub fn instant_room(from: &str, room: &str, id: &str) -> Element {
    Element::builder("iq", NS_CLIENT)
        .a("type", "set")
        .a("from", from)
        .a("to", room)
        .a("id", id)
        .append(
            Element::builder("query", "http://jabber.org/protocol/muc#owner")
                .append(
                    Element::builder("x", "jabber:x:data")
                        .a("type", "submit")
                        .build(),
                )
                .build(),
        )
        .build()
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

/// `text` followed by the URL of each attachment, one a line (how attachments show in a
/// body).
pub fn with_links(mut text: String, attachments: &[junction_core::Attachment]) -> String {
    for a in attachments {
        if !text.is_empty() {
            text.push('\n');
        }
        text.push_str(&a.url);
    }
    text
}

/// The same stanza as a one-to-one chat (`type='chat'`): a room's message, correction,
/// retraction, reactions or reply said in a private conversation.
pub fn as_chat(mut el: Element) -> Element {
    if let Some(ty) = el
        .attrs_mut()
        .get_mut(&minidom::rxml::Namespace::NONE, "type")
    {
        *ty = "chat".to_owned();
    }
    el
}

/// A one-to-one chat message (an answer to an admin command).
pub fn chat(from: &str, to: &str, id: &str, text: &str) -> Element {
    Element::builder("message", NS_CLIENT)
        .a("type", "chat")
        .a("from", from)
        .a("to", to)
        .a("id", id)
        .append(body(text))
        .build()
}

fn iq(ty: &str, from: &str, to: &str, id: &str) -> ElementBuilder {
    Element::builder("iq", NS_CLIENT)
        .a("type", ty)
        .a("from", from)
        .a("to", to)
        .a("id", id)
}

/// What a MUC admin request (XEP-0045 §8–9) changes about an occupant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminItem {
    /// Kick: the occupant with this nick gets role `none`.
    Kick {
        /// The occupant's nick.
        nick: String,
    },
    /// Ban: this bare JID gets affiliation `outcast`.
    Ban {
        /// The user's bare JID.
        jid: String,
    },
}

/// A `muc#admin` request from `from` (an occupant with rights) to `room`.
pub fn admin(from: &str, room: &str, id: &str, item: &AdminItem, reason: Option<&str>) -> Element {
    let mut it = Element::builder("item", NS_MUC_ADMIN);
    it = match item {
        AdminItem::Kick { nick } => it.a("nick", nick.as_str()).a("role", "none"),
        AdminItem::Ban { jid } => it.a("jid", jid.as_str()).a("affiliation", "outcast"),
    };
    if let Some(r) = reason {
        it = it.append(Element::builder("reason", NS_MUC_ADMIN).append(r));
    }
    iq("set", from, room, id)
        .append(
            Element::builder("query", NS_MUC_ADMIN)
                .append(it.build())
                .build(),
        )
        .build()
}

/// The form of XEP-0425 message moderation a room offers, as its disco#info says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModerationForm {
    /// `urn:xmpp:message-moderate:1` (version 0.3 on), built on XEP-0424's `<retract/>`.
    Retract,
    /// `urn:xmpp:message-moderate:0` (before 0.3, Prosody's `mod_muc_moderation` in Debian's
    /// prosody-modules), built on XEP-0422 fastening.
    Fastening,
}

/// A disco#info query (XEP-0030) to `to`, e.g. a room, to learn what it offers.
pub fn disco_info(from: &str, to: &str, id: &str) -> Element {
    iq("get", from, to, id)
        .append(Element::builder("query", NS_DISCO_INFO).build())
        .build()
}

/// A XEP-0425 moderation request in the room's `form`: retract the room message `target`
/// (its stanza-id) for everyone.
///
/// - [`ModerationForm::Retract`]: `<moderate xmlns='urn:xmpp:message-moderate:1' id='S'>
///   <retract xmlns='urn:xmpp:message-retract:1'/><reason>…</reason></moderate>`;
/// - [`ModerationForm::Fastening`]: `<apply-to xmlns='urn:xmpp:fasten:0' id='S'>
///   <moderate xmlns='urn:xmpp:message-moderate:0'><retract
///   xmlns='urn:xmpp:message-retract:0'/><reason>…</reason></moderate></apply-to>`.
pub fn moderate(
    form: ModerationForm,
    from: &str,
    room: &str,
    id: &str,
    target: &str,
    reason: Option<&str>,
) -> Element {
    let payload = match form {
        ModerationForm::Retract => {
            let mut m = Element::builder("moderate", NS_MODERATE)
                .a("id", target)
                .append(Element::builder("retract", NS_RETRACT).build());
            if let Some(r) = reason {
                m = m.append(Element::builder("reason", NS_MODERATE).append(r));
            }
            m.build()
        }
        ModerationForm::Fastening => {
            let mut m = Element::builder("moderate", NS_MODERATE_0)
                .append(Element::builder("retract", NS_RETRACT_0).build());
            if let Some(r) = reason {
                m = m.append(Element::builder("reason", NS_MODERATE_0).append(r));
            }
            Element::builder("apply-to", NS_FASTEN)
                .a("id", target)
                .append(m.build())
                .build()
        }
    };
    iq("set", from, room, id).append(payload).build()
}

/// Where a MAM query (XEP-0313) on a room starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MamFrom {
    /// Every archived message after this stanza-id, oldest first.
    After(String),
    /// The whole archive, oldest first.
    Start,
    /// Only the newest message (to learn where the archive ends).
    Last,
}

/// A MAM query to `room`'s archive, one page of at most `max` messages.
pub fn mam_query(
    from: &str,
    room: &str,
    id: &str,
    queryid: &str,
    start: &MamFrom,
    max: u32,
) -> Element {
    let form = Element::builder("x", NS_DATA)
        .a("type", "submit")
        .append(
            Element::builder("field", NS_DATA)
                .a("var", "FORM_TYPE")
                .a("type", "hidden")
                .append(Element::builder("value", NS_DATA).append(NS_MAM))
                .build(),
        )
        .build();
    let mut set = Element::builder("set", NS_RSM)
        .append(Element::builder("max", NS_RSM).append(max.to_string()));
    set = match start {
        MamFrom::After(s) => set.append(Element::builder("after", NS_RSM).append(s.as_str())),
        MamFrom::Start => set,
        MamFrom::Last => set.append(Element::builder("before", NS_RSM).build()),
    };
    iq("set", from, room, id)
        .append(
            Element::builder("query", NS_MAM)
                .a("queryid", queryid)
                .append(form)
                .append(set.build())
                .build(),
        )
        .build()
}

/// A XEP-0199 ping: to the server, or (XEP-0410) from an occupant to its own
/// occupant JID `room/nick`, which tells whether it is still in the room.
pub fn ping(from: &str, to: &str, id: &str) -> Element {
    iq("get", from, to, id)
        .append(Element::builder("ping", NS_PING).build())
        .build()
}

/// The nick a puppet asks for on its `attempt`-th try (0 first, one more after each 409
/// conflict): with origin marks `alice[m]`, `alice[m]2`...; without, the bare `alice` first,
/// then as [`next_nick`]. Either way a nick someone holds is never taken from them.
pub fn puppet_nick(wanted: &str, tag: &str, attempt: u32, marks: bool) -> String {
    next_nick(wanted, tag, if marks { attempt + 1 } else { attempt })
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

    #[test]
    fn a_room_stanza_turns_into_a_chat_keeping_the_rest() {
        let el = as_chat(correction(
            "p@c/junction",
            "alice@x/phone",
            "i2",
            "u1",
            "fixed",
        ));
        assert_eq!(el.attr("type"), Some("chat"));
        assert_eq!(el.attr("to"), Some("alice@x/phone"));
        assert_eq!(el.attr("id"), Some("i2"));
        let r = el
            .get_child("replace", "urn:xmpp:message-correct:0")
            .expect("replace");
        assert_eq!(r.attr("id"), Some("u1"));
    }

    #[test]
    fn an_instant_room_submits_an_empty_form_to_the_owner_namespace() {
        let el = instant_room("junction@c.example/junction", "new@muc.example", "i1");
        assert_eq!(el.attr("type"), Some("set"));
        assert_eq!(el.attr("to"), Some("new@muc.example"));
        let q = el
            .get_child("query", "http://jabber.org/protocol/muc#owner")
            .expect("owner query");
        let x = q.get_child("x", "jabber:x:data").expect("form");
        assert_eq!(x.attr("type"), Some("submit"));
        assert_eq!(x.children().count(), 0);
    }

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
    fn styled_text_uses_xep0393_directives() {
        use junction_core::format::Span;
        let t = RichText {
            spans: vec![
                Span::Bold(vec![Span::Text("bold".into())]),
                Span::Text(" and ".into()),
                Span::Code("x".into()),
            ],
        };
        assert_eq!(styled(&t), "*bold* and `x`");
    }

    #[test]
    fn admin_moderation_mam_and_ping_shapes() {
        let el = admin(
            P,
            R,
            "a1",
            &AdminItem::Kick { nick: "bob".into() },
            Some("spam"),
        );
        let item = el
            .get_child("query", NS_MUC_ADMIN)
            .and_then(|q| q.get_child("item", NS_MUC_ADMIN));
        assert_eq!(item.and_then(|i| i.attr("role")), Some("none"));
        assert_eq!(item.and_then(|i| i.attr("nick")), Some("bob"));
        let el = admin(
            P,
            R,
            "a2",
            &AdminItem::Ban {
                jid: "bob@x.test".into(),
            },
            None,
        );
        let item = el
            .get_child("query", NS_MUC_ADMIN)
            .and_then(|q| q.get_child("item", NS_MUC_ADMIN));
        assert_eq!(item.and_then(|i| i.attr("affiliation")), Some("outcast"));
        let el = moderate(ModerationForm::Retract, P, R, "m1", "S1", None);
        assert_eq!(
            el.get_child("moderate", NS_MODERATE)
                .and_then(|m| m.attr("id")),
            Some("S1")
        );
        // A moderator of another network: the request names them in its reason.
        let moderator = junction_core::Sender::new(
            junction_core::UserRef::new("matrix", "@mod:matrix.test"),
            "Mod",
        );
        let why = junction_core::authority::moderation_reason(&moderator, Some("spam"));
        assert_eq!(
            why,
            "Removed by Mod (@mod:matrix.test, moderator on matrix): spam"
        );
        let el = moderate(ModerationForm::Retract, P, R, "m2", "S2", Some(&why));
        let m = el.get_child("moderate", NS_MODERATE);
        assert!(m.and_then(|m| m.get_child("retract", NS_RETRACT)).is_some());
        assert_eq!(
            m.and_then(|m| m.get_child("reason", NS_MODERATE))
                .map(|r| r.text()),
            Some(why.clone())
        );
        assert_eq!(el.attr("type"), Some("set"));
        // The older form, as Prosody's mod_muc_moderation reads it: the target on
        // <apply-to/>, the retraction and the reason inside <moderate/>.
        let el = moderate(ModerationForm::Fastening, P, R, "m3", "S3", Some(&why));
        assert_eq!(el.attr("type"), Some("set"));
        assert_eq!(el.attr("to"), Some(R));
        let apply = el.get_child("apply-to", NS_FASTEN);
        assert_eq!(apply.and_then(|a| a.attr("id")), Some("S3"));
        let m = apply.and_then(|a| a.get_child("moderate", NS_MODERATE_0));
        assert!(m
            .and_then(|m| m.get_child("retract", NS_RETRACT_0))
            .is_some());
        assert_eq!(
            m.and_then(|m| m.get_child("reason", NS_MODERATE_0))
                .map(|r| r.text()),
            Some(why)
        );
        assert!(el.get_child("moderate", NS_MODERATE).is_none());
        let q = disco_info(P, R, "d1");
        assert_eq!(q.attr("type"), Some("get"));
        assert!(q.get_child("query", NS_DISCO_INFO).is_some());
        let el = mam_query(P, R, "q1", "qid", &MamFrom::After("S9".into()), 50);
        let q = el.get_child("query", NS_MAM);
        assert_eq!(q.and_then(|q| q.attr("queryid")), Some("qid"));
        let after = q
            .and_then(|q| q.get_child("set", NS_RSM))
            .and_then(|s| s.get_child("after", NS_RSM))
            .map(Element::text);
        assert_eq!(after.as_deref(), Some("S9"));
        let el = mam_query(P, R, "q2", "qid", &MamFrom::Last, 1);
        assert!(el
            .get_child("query", NS_MAM)
            .and_then(|q| q.get_child("set", NS_RSM))
            .is_some_and(|s| s.has_child("before", NS_RSM)));
        let el = ping(P, "lobby@conference.xmpp.test/alice", "p1");
        assert_eq!(el.attr("type"), Some("get"));
        assert!(el.has_child("ping", NS_PING));
        let el = chat("bridge.xmpp.test", "bob@xmpp.test/x", "c1", "ok");
        assert_eq!(el.attr("type"), Some("chat"));
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
        assert_eq!(puppet_nick("alice", "m", 0, true), "alice[m]");
        assert_eq!(puppet_nick("alice", "m", 1, true), "alice[m]2");
        assert_eq!(puppet_nick("alice", "i", 0, false), "alice");
        assert_eq!(puppet_nick("alice", "i", 1, false), "alice[i]");
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
