//! Bounded property "fuzzing" of transaction JSON → event: generated client events (every
//! type the adapter reads and some it does not, with fields missing, of the wrong type or
//! full of hostile HTML) through `inbound::convert`, and any text through the id helpers.
//! Each property runs a fixed number of cases.

use junction_core::{NetworkId, RoomId};
use junction_matrix::{ids, inbound, server};
use proptest::prelude::*;
use serde_json::{json, Value};

const ROOM: &str = "!lobby:matrix.test";

/// Any JSON value, a few levels deep.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "\\PC{0,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "body",
                    "msgtype",
                    "format",
                    "formatted_body",
                    "m.relates_to",
                    "rel_type",
                    "event_id",
                    "key",
                    "m.new_content",
                    "m.in_reply_to",
                    "url",
                    "info",
                    "membership",
                    "displayname",
                    "topic",
                    "name",
                    "users",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..5,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// HTML a homeserver could hand over in `formatted_body`.
fn html() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            "\\PC{0,10}",
            prop::sample::select(vec![
                "<b>",
                "</b>",
                "<mx-reply><blockquote>quoted</blockquote></mx-reply>",
                "<a href=\"https://matrix.to/#/@_jt1_irc_bob:matrix.test\">bob</a>",
                "<a href=\"javascript:alert(1)\">",
                "<script>alert(1)</script>",
                "<img src=\"mxc://x/y\" onerror=alert(1)>",
                "<pre><code class=\"language-rust\">",
                "</code></pre>",
                "<",
                "&",
                "&#0;",
                "<br>",
                "<p>",
                "<ol><li>",
            ])
            .prop_map(str::to_owned),
        ],
        0..12,
    )
    .prop_map(|v| v.concat())
}

/// A client event as a transaction carries it: a known or unknown type, the linked room or
/// another, any sender, and content that is sometimes well-formed.
fn event() -> impl Strategy<Value = Value> {
    let kind = prop::sample::select(vec![
        "m.room.message",
        "m.room.message",
        "m.reaction",
        "m.room.redaction",
        "m.room.member",
        "m.room.topic",
        "m.room.name",
        "m.room.power_levels",
        "m.room.encrypted",
        "m.room.create",
        "m.sticker",
        "org.example.unknown",
    ]);
    let room = prop::sample::select(vec![ROOM, "!other:matrix.test", ""]);
    let sender = prop::sample::select(vec![
        "@alice:matrix.test",
        "@_jt1_irc_bob:matrix.test",
        "@jt1bot:matrix.test",
        "@:",
        "nonsense",
    ]);
    let content = prop_oneof![
        any_json(),
        (
            prop::sample::select(vec![
                "m.text", "m.emote", "m.notice", "m.image", "m.file", "x.y"
            ]),
            "\\PC{0,40}",
            html()
        )
            .prop_map(|(t, b, h)| json!({
                "msgtype": t, "body": b, "format": "org.matrix.custom.html", "formatted_body": h,
                "url": "mxc://matrix.test/abc",
            })),
        ("\\PC{0,20}", "\\PC{0,40}").prop_map(|(target, b)| json!({
            "body": format!("* {b}"), "msgtype": "m.text",
            "m.new_content": { "body": b, "msgtype": "m.text" },
            "m.relates_to": { "rel_type": "m.replace", "event_id": target },
        })),
        ("\\PC{0,20}", "\\PC{0,8}").prop_map(|(target, key)| json!({
            "m.relates_to": { "rel_type": "m.annotation", "event_id": target, "key": key },
        })),
    ];
    (kind, room, sender, content, any_json(), any::<bool>()).prop_map(
        |(kind, room, sender, content, state_key, with_key)| {
            let mut ev = json!({
                "type": kind, "room_id": room, "sender": sender, "event_id": "$e1",
                "origin_server_ts": 1, "content": content, "redacts": "$target",
            });
            if with_key {
                ev["state_key"] = state_key;
            }
            ev
        },
    )
}

/// The event converted as the adapter would in a room linked as `ROOM`.
fn convert(ev: &Value) -> inbound::Converted {
    let network = NetworkId::new("matrix");
    let room = |id: &str| (id == ROOM).then(|| RoomId::new(ROOM));
    let name = |_: &str, u: &str| (u == "@alice:matrix.test").then(|| "Alice".to_owned());
    let media = |mxc: &str| Some(format!("http://127.0.0.1/media/{mxc}"));
    let encrypted = |_: &Value, name: &str, _: Option<&str>| {
        Some(format!("http://127.0.0.1/media/encrypted/t/{name}"))
    };
    let reaction = |id: &str| (id == "$target").then(|| ("$orig".to_owned(), "👍".to_owned()));
    let cx = inbound::InboundCx {
        network: &network,
        prefix: "_jt1_",
        server_name: "matrix.test",
        bot: "@jt1bot:matrix.test",
        room: &room,
        name: &name,
        media_link: &media,
        encrypted_media_link: &encrypted,
        reaction: &reaction,
    };
    inbound::convert(ev, &cx)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any event a transaction may carry converts (or is skipped) without a panic.
    #[test]
    fn events_never_panic(ev in event()) {
        let _ = convert(&ev);
    }

    /// Any JSON at all in place of an event, too.
    #[test]
    fn any_json_never_panics(v in any_json()) {
        let _ = convert(&v);
    }

    /// Reply fallbacks of any shape are stripped without a panic.
    #[test]
    fn reply_fallbacks_never_panic(body in "(> \\PC{0,20}\\n){0,3}\\PC{0,40}") {
        let _ = inbound::strip_reply_fallback(&body);
    }

    /// Any remote name becomes a valid localpart (lower-case, the grammar's characters
    /// only) that reads back, and ghost ids of other networks never parse as ours.
    #[test]
    fn localparts_round_trip(name in "\\PC{0,40}") {
        let local = ids::escape_localpart(&name);
        prop_assert!(local.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._=-/+".contains(c)), "{:?}", local);
        prop_assert_eq!(ids::unescape_localpart(&local), Some(name.clone()));
        let network = NetworkId::new("irc:local");
        let ghost = ids::ghost_user_id("_jt1_", &network, &name, "matrix.test");
        prop_assert!(ids::is_ghost("_jt1_", "matrix.test", &ghost));
        prop_assert!(!ids::is_ghost("_jt2_", "matrix.test", &ghost));
    }

    /// The token check answers true only for the exact token.
    #[test]
    fn tokens_match_exactly(given in "\\PC{0,40}", expected in "[a-z0-9_]{1,40}") {
        prop_assert_eq!(server::token_matches(&given, &expected), given == expected);
        prop_assert!(server::token_matches(&expected, &expected));
    }
}

/// A `formatted_body` (and body) of a hostile shape about `n` units long: deep nesting,
/// many children, huge attributes, long delimiter runs.
fn hostile_html(shape: u8, n: usize) -> String {
    match shape % 6 {
        0 => format!("{}x{}", "<b>".repeat(n), "</b>".repeat(n)),
        1 => "<blockquote><i>".repeat(n),
        2 => "<b>x</b>".repeat(n),
        3 => format!("<a href=\"https://e.org/{}\">x</a>", "a".repeat(n)),
        4 => "*a ".repeat(n),
        _ => "> ".repeat(n) + "x",
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A message of a hostile shape (up to 10^5 levels deep) converts on a 256 KiB stack
    /// into an event with a bounded body, which survives a JSON round trip as stored.
    #[test]
    fn hostile_messages_convert_to_bounded_events(shape in 0u8..6, n in prop_oneof![1usize..64, 1_000usize..100_001]) {
        let html = hostile_html(shape, n);
        let ev = json!({
            "type": "m.room.message", "room_id": ROOM, "sender": "@alice:matrix.test",
            "event_id": "$e1", "origin_server_ts": 1,
            "content": {
                "msgtype": "m.text", "body": html.clone(),
                "format": "org.matrix.custom.html", "formatted_body": html,
            },
        });
        let depth = std::thread::scope(|s| {
            std::thread::Builder::new()
                .stack_size(256 * 1024)
                .spawn_scoped(s, || {
                    let event = convert(&ev).event.expect("a message");
                    let json = serde_json::to_string(&event).expect("encode");
                    let back: junction_core::Event = serde_json::from_str(&json).expect("reads back");
                    match back.kind {
                        junction_core::EventKind::Message(m) => m.body.depth(),
                        _ => 0,
                    }
                })
                .expect("spawn")
                .join()
                .expect("no panic")
        });
        prop_assert!(depth <= junction_core::format::MAX_DEPTH, "depth {}", depth);
    }
}
