//! Render then parse returns the same tree, for trees each format can express.

use junction_core::format::{html, irc, RichText, Span};
use proptest::prelude::*;

/// The network whose users pills name in these tests.
fn pills() -> junction_core::NetworkId {
    junction_core::NetworkId::new("matrix")
}

/// Merges adjacent text spans and drops empty ones, as every parser does.
fn normal(spans: Vec<Span>) -> Vec<Span> {
    let mut out: Vec<Span> = Vec::new();
    for s in spans {
        let s = match s {
            Span::Bold(c) => Span::Bold(normal(c)),
            Span::Italic(c) => Span::Italic(normal(c)),
            Span::Underline(c) => Span::Underline(normal(c)),
            Span::Strike(c) => Span::Strike(normal(c)),
            other => other,
        };
        match (out.last_mut(), s) {
            (_, Span::Text(t)) if t.is_empty() => {}
            (Some(Span::Text(prev)), Span::Text(t)) => prev.push_str(&t),
            (_, s) => out.push(s),
        }
    }
    out
}

fn html_tree() -> impl Strategy<Value = Vec<Span>> {
    let leaf = prop_oneof![
        "[a-z <>&\"']{1,8}".prop_map(Span::Text),
        "[a-z <>&]{0,6}".prop_map(Span::Code),
    ];
    let span = leaf.prop_recursive(3, 16, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 1..3).prop_map(Span::Bold),
            prop::collection::vec(inner.clone(), 1..3).prop_map(Span::Italic),
            prop::collection::vec(inner.clone(), 1..3).prop_map(Span::Underline),
            prop::collection::vec(inner, 1..3).prop_map(Span::Strike),
        ]
    });
    prop::collection::vec(span, 0..4).prop_map(normal)
}

proptest! {
    #[test]
    fn html_round_trip(spans in html_tree()) {
        let t = RichText { spans };
        prop_assert_eq!(html::parse(&html::render(&t, &pills()), &pills()), t);
    }
}

#[test]
fn irc_round_trip_literal() {
    let t = RichText {
        spans: vec![
            Span::Text("a".into()),
            Span::Bold(vec![Span::Text("b".into())]),
        ],
    };
    assert_eq!(irc::parse(&irc::render(&t)), t);
}
