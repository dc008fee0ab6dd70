//! The component stream (XEP-0114): logging in through the depth bound
//! ([`crate::depth`]), writing stanzas (cleaned of what XML cannot carry) and reading them.
//! The adapter's loop ([`crate::adapter`]) reconnects over it; `junction doctor`'s probe
//! ([`crate::probe`]) logs in through it too.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use minidom::Element;
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Component, Stanza};

use crate::config::XmppConfig;
use crate::depth::DepthBoundConnector;

/// A logged-in component stream.
pub(crate) type Conn = Component<DepthBoundConnector>;

/// Turns a built element into a typed stanza for tokio-xmpp.
fn to_stanza(el: Element) -> Option<Stanza> {
    match el.name() {
        "message" => Message::try_from(el).ok().map(Stanza::from),
        "presence" => Presence::try_from(el).ok().map(Stanza::from),
        "iq" => Iq::try_from(el).ok().map(Stanza::from),
        _ => None,
    }
}

/// A stanza read from the stream, as an element.
pub(crate) fn from_stanza(s: Stanza) -> Element {
    match s {
        Stanza::Message(m) => m.into(),
        Stanza::Presence(p) => p.into(),
        Stanza::Iq(i) => i.into(),
    }
}

/// True for characters XML 1.0 allows in a document.
fn xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Removes characters XML can not carry (NUL, CTCP's U+0001, ESC...) from every text and
/// attribute of `el`. Other networks' text reaches stanzas unfiltered otherwise, and the
/// XML writer refuses such characters (the stream would be lost for every room).
fn xml_clean(el: &mut Element) {
    for t in el.texts_mut() {
        if !t.chars().all(xml_char) {
            t.retain(xml_char);
        }
    }
    for v in el.attrs_mut().values_mut() {
        if !v.chars().all(xml_char) {
            v.retain(xml_char);
        }
    }
    for child in el.children_mut() {
        xml_clean(child);
    }
}

/// Writes `el`, cleaned of characters XML cannot carry; false when the connection is lost
/// (an element the parser refuses is logged and skipped).
pub(crate) async fn send(conn: &mut Conn, mut el: Element) -> bool {
    xml_clean(&mut el);
    match to_stanza(el) {
        Some(s) => conn.send_stanza(s).await.is_ok(),
        None => {
            tracing::warn!("xmpp: built a stanza the parser refuses; not sent");
            true
        }
    }
}

/// Logs in as the component over plain TCP, the server's bytes read through the depth
/// bound (`crate::depth`) so no element tree is ever built deeper than it.
pub(crate) async fn connect(config: &XmppConfig, cut: &Arc<AtomicU64>) -> Result<Conn, String> {
    let connector = DepthBoundConnector {
        dns: DnsConfig::addr(&config.server),
        cut: cut.clone(),
    };
    Component::new_with_connector(
        &config.component,
        config.secret.expose(),
        connector,
        Timeouts::tight(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// The server's domain: the component domain less its first label.
pub(crate) fn server_domain(component: &str) -> String {
    component
        .split_once('.')
        .map_or(component, |(_, rest)| rest)
        .to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn characters_xml_can_not_carry_are_removed_from_texts_and_attributes() {
        let mut el = Element::builder("message", "jabber:component:accept")
            .attr(
                rxml::NcName::try_from("to").unwrap(),
                "room@muc.example/ni\u{1}ck",
            )
            .append(
                Element::builder("body", "jabber:component:accept")
                    .append("a\0b \u{1}ACTION x\u{1} \u{1b}[31mc\ttab\nline ✓")
                    .build(),
            )
            .build();
        xml_clean(&mut el);
        assert_eq!(el.attr("to"), Some("room@muc.example/nick"));
        let body = el.get_child("body", "jabber:component:accept").unwrap();
        assert_eq!(body.text(), "ab ACTION x [31mc\ttab\nline ✓");
        // The cleaned element serialises.
        let mut out = Vec::new();
        el.write_to(&mut out).unwrap();
    }

    #[test]
    fn server_domain_drops_the_first_label() {
        assert_eq!(server_domain("bridge.xmpp.test"), "xmpp.test");
    }
}
