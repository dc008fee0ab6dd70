//! Bounded property "fuzzing" of the stanza → event mapping: generated stanzas (known and
//! unknown children, missing and odd attributes, any text) through every public reader of
//! `inbound`, and any text through the writers, which must always give XML that reads back
//! to the same body. Each property runs a fixed number of cases.
#![allow(clippy::unwrap_used)]

use junction_core::format::html::escaped;
use junction_core::RoomRef;
use junction_xmpp::adhoc::{self, Step};
use junction_xmpp::{ids, inbound, outbound};
use minidom::Element;
use proptest::prelude::*;

const ROOM: &str = "lobby@conference.xmpp.test";
const COMPONENT: &str = "bridge.xmpp.test";

/// Printable text of any script (no control or format characters), which XML can carry.
fn xml_text() -> impl Strategy<Value = String> {
    "\\PC{0,60}"
}

/// A child a groupchat or IQ might carry, known or not, well-formed or not.
fn child() -> impl Strategy<Value = String> {
    let id = prop_oneof![Just(String::new()), xml_text()];
    (
        prop::sample::select(vec![
            "<body>{t}</body>",
            "<body/>",
            "<subject>{t}</subject>",
            "<stanza-id xmlns='urn:xmpp:sid:0' by='{room}' id='{id}'/>",
            "<stanza-id xmlns='urn:xmpp:sid:0' id='{id}'/>",
            "<origin-id xmlns='urn:xmpp:sid:0' id='{id}'/>",
            "<delay xmlns='urn:xmpp:delay' stamp='{t}'/>",
            "<replace xmlns='urn:xmpp:message-correct:0' id='{id}'/>",
            "<retract xmlns='urn:xmpp:message-retract:1' id='{id}'/>",
            "<moderated xmlns='urn:xmpp:message-moderate:1'><retract xmlns='urn:xmpp:message-retract:1'/></moderated>",
            "<reactions xmlns='urn:xmpp:reactions:0' id='{id}'><reaction>{t}</reaction><reaction/></reactions>",
            "<reply xmlns='urn:xmpp:reply:0' to='{room}/{t}' id='{id}'/>",
            "<fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='{n}' end='{m}'/></fallback>",
            "<x xmlns='jabber:x:oob'><url>{t}</url></x>",
            "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='{id}'/>",
            "<x xmlns='http://jabber.org/protocol/muc#user'><item jid='{t}' affiliation='owner' role='{t}'/><status code='{n}'/></x>",
            "<error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/><text>{t}</text></error>",
            "<error/>",
            "<fin xmlns='urn:xmpp:mam:2' complete='{t}'><set xmlns='http://jabber.org/protocol/rsm'><last>{id}</last></set></fin>",
            "<result xmlns='urn:xmpp:mam:2' queryid='{id}' id='{id}'><forwarded xmlns='urn:xmpp:forward:0'><message xmlns='jabber:client' type='groupchat' from='{room}/{t}'><body>{t}</body></message></forwarded></result>",
            "<result xmlns='urn:xmpp:mam:2' id='{id}'><forwarded xmlns='urn:xmpp:forward:0'/></result>",
            "<unknown xmlns='urn:example:junk'><deeper>{t}</deeper></unknown>",
            "<command xmlns='http://jabber.org/protocol/commands' node='{t}' action='{t}' sessionid='{id}'/>",
            "<command xmlns='http://jabber.org/protocol/commands' node='link'><x xmlns='jabber:x:data' type='submit'><field var='bridge'><value>{t}</value></field><field var='room'><value>{id}</value><value>{t}</value></field></x></command>",
            "<command xmlns='http://jabber.org/protocol/commands' node='ban' action='complete'><x xmlns='jabber:x:data' type='{t}'><field var='user'><value>{id}</value></field><field var='reason'><value>{t}</value></field><field><value/></field></x></command>",
            "<command xmlns='http://jabber.org/protocol/commands' node='status'/>",
        ]),
        xml_text(),
        id,
        any::<i32>(),
        any::<i32>(),
    )
        .prop_map(|(tpl, t, id, n, m)| {
            tpl.replace("{t}", &escaped(&t))
                .replace("{id}", &escaped(&id))
                .replace("{room}", ROOM)
                .replace("{n}", &n.to_string())
                .replace("{m}", &m.to_string())
        })
}

/// A whole stanza: message, iq or presence, with any type, from and to, and any children.
fn stanza() -> impl Strategy<Value = String> {
    (
        prop::sample::select(vec!["message", "iq", "presence"]),
        prop::option::of(prop::sample::select(vec![
            "groupchat",
            "chat",
            "normal",
            "error",
            "result",
            "get",
            "set",
            "unavailable",
            "x",
        ])),
        prop::option::of(prop_oneof![
            xml_text().prop_map(|t| format!("{ROOM}/{t}")),
            Just(ROOM.to_owned()),
            Just("alice@xmpp.test/res".to_owned()),
            Just(format!("x%matrix@{COMPONENT}")),
            xml_text(),
        ]),
        prop::collection::vec(child(), 0..5),
    )
        .prop_map(|(name, ty, from, children)| {
            let mut s = format!("<{name} xmlns='{}'", inbound::NS_CLIENT);
            if let Some(t) = ty {
                s.push_str(&format!(" type='{t}'"));
            }
            if let Some(f) = from {
                s.push_str(&format!(" from='{}'", escaped(&f)));
            }
            s.push_str(&format!(" to='{COMPONENT}' id='i1'>"));
            s.push_str(&children.concat());
            s.push_str(&format!("</{name}>"));
            s
        })
}

fn read_everywhere(el: &Element) {
    let cx = inbound::RoomContext {
        room: RoomRef::new("xmpp", ROOM),
        room_jid: ROOM.to_owned(),
        component: COMPONENT.to_owned(),
        our_nicks: vec!["junction".to_owned()],
    };
    let _ = inbound::parse_groupchat(el, &cx, &|id| (id == "known").then(|| "sid".to_owned()));
    if let Some(a) = inbound::archived(el, ROOM) {
        let _ = inbound::parse_groupchat(&a.message, &cx, &|_| None);
    }
    let _ = inbound::mam_fin(el);
    let _ = inbound::error_condition(el);
    let _ = inbound::self_ping_result(el);
    let _ = inbound::room_stanza_id(el, ROOM);
    let _ = inbound::sender_message_id(el);
    if let Some(r) = adhoc::parse_request(el) {
        // Whatever the request, the answer is an IQ the stream can carry; a command line
        // made from a form is the verb and its words, on one line.
        let mut sessions = adhoc::Sessions::new();
        let answer = match sessions.step(&r, "alice@xmpp.test/res", std::time::Instant::now()) {
            Step::Answer(c) => adhoc::result_iq(el, c),
            Step::Refuse(why) => adhoc::error_iq(el, why),
            Step::Run {
                text,
                node,
                sessionid,
            } => {
                assert!(text.split(' ').next() == Some(node.as_str()), "{text:?}");
                assert!(!text.contains(['\n', '\r']), "{text:?}");
                adhoc::result_iq(el, adhoc::completed(&node, &sessionid, &text, true))
            }
        };
        let xml = String::from(&answer);
        let back: Element = xml.parse().unwrap();
        assert_eq!(back.name(), "iq");
    }
    let _ = inbound::direct_message(
        el,
        COMPONENT,
        &format!("{ROOM}/junction"),
        &[ROOM.to_owned()],
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any generated stanza is read by every reader without a panic.
    #[test]
    fn stanzas_never_panic(xml in stanza()) {
        let el: Element = xml.parse().unwrap();
        read_everywhere(&el);
    }

    /// Whatever XML parses, every reader takes it.
    #[test]
    fn any_xml_never_panics(text in "<[a-z]{1,8}( [a-z]{1,5}='[^'<&]{0,10}')* xmlns='jabber:component:accept'>(<[a-z]{1,6}/>|[^<&]{0,20})*</[a-z]{1,8}>") {
        if let Ok(el) = text.parse::<Element>() {
            read_everywhere(&el);
        }
    }

    /// A body with any text XML can carry is written so that it reads back the same:
    /// markup in it is text, never a child element.
    #[test]
    fn written_bodies_read_back(text in xml_text(), emote in any::<bool>()) {
        let el = outbound::message(&format!("x%matrix@{COMPONENT}"), ROOM, "id1", &text, emote);
        let xml = String::from(&el);
        let back: Element = xml.parse().unwrap();
        let body = back.children().find(|c| c.name() == "body").map(Element::text);
        let want = if emote { format!("/me {text}") } else { text.clone() };
        prop_assert_eq!(body, Some(want));
        prop_assert_eq!(back.children().filter(|c| c.name() == "body").count(), 1);
    }

    /// Any remote name escapes to a JID node and back.
    #[test]
    fn jid_nodes_round_trip(name in "\\PC{0,40}") {
        // XEP-0106 does not escape leading or trailing spaces; they are trimmed.
        prop_assume!(name.trim() == name && !name.is_empty());
        let node = ids::escape(&name);
        prop_assert!(!node.contains(['@', '/', ' ', '"', '&', '\'', ':', '<', '>']), "{:?}", node);
        prop_assert_eq!(ids::unescape(&node), name);
    }
}

/// A body of a hostile shape about `n` units long: deep quotes, long delimiter runs.
fn hostile_body(shape: u8, n: usize) -> String {
    match shape % 4 {
        0 => ">".repeat(n),
        1 => "> ".repeat(n) + "x",
        2 => "*a ".repeat(n),
        _ => "*_~`".repeat(n),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A groupchat body of a hostile shape (50,000 `>` and more) is read on a 256 KiB stack
    /// into an event with a bounded body, which survives a JSON round trip as stored.
    #[test]
    fn hostile_bodies_read_to_bounded_events(shape in 0u8..4, n in prop_oneof![1usize..64, 1_000usize..100_001]) {
        let xml = format!(
            "<message xmlns='{}' type='groupchat' from='{ROOM}/mallory' to='{COMPONENT}' id='m1'><body>{}</body></message>",
            inbound::NS_CLIENT,
            escaped(&hostile_body(shape, n))
        );
        let el: Element = xml.parse().unwrap();
        let depth = std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, || {
                    let cx = inbound::RoomContext {
                        room: RoomRef::new("xmpp", ROOM),
                        room_jid: ROOM.to_owned(),
                        component: COMPONENT.to_owned(),
                        our_nicks: vec!["junction".to_owned()],
                    };
                    match inbound::parse_groupchat(&el, &cx, &|_| None) {
                        inbound::Parsed::Event(e) => {
                            let json = serde_json::to_string(&e).expect("encode");
                            let back: junction_core::Event =
                                serde_json::from_str(&json).expect("reads back");
                            match back.kind {
                                junction_core::EventKind::Message(m) => m.body.depth(),
                                _ => 0,
                            }
                        }
                        _ => panic!("a message"),
                    }
                })
                .expect("spawn")
                .join()
                .expect("no panic")
        });
        prop_assert!(depth <= junction_core::format::MAX_DEPTH, "depth {}", depth);
    }
}
