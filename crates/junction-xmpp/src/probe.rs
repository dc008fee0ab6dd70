//! A short-lived component connection for `junction doctor`: log in as the component (the
//! same connector as the adapter, so the depth bound holds), ask a few IQs from the
//! listener's JID, and close. It never joins a room, so it changes nothing anyone sees.
//!
//! The server allows one connection per component: while a gateway is connected, a probe is
//! refused with `conflict` ([`ProbeError::Busy`]) and the gateway is left as it was (the
//! server's default keeps the first connection).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use minidom::Element;

use crate::config::XmppConfig;
use crate::connection::{self, Conn};
use crate::inbound::NS_CLIENT;
use crate::outbound::Attr;

const NS_DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
const NS_MUC_ADMIN: &str = "http://jabber.org/protocol/muc#admin";

/// Why the component could not log in.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Nothing answered at the server's component port (refused, unreachable, timed out).
    #[error("cannot reach {server}: {why}")]
    Unreachable {
        /// The configured `host:port`.
        server: String,
        /// What the connection said.
        why: String,
    },
    /// The server refused the handshake: a wrong secret, or a domain it does not know as a
    /// component.
    #[error("the server refused the component handshake: {0}")]
    Refused(String),
    /// The server already has this component connected (a running gateway): it refused a
    /// second connection, which also shows the secret is right.
    #[error("the component is already connected (conflict)")]
    Busy,
}

/// The answer to one IQ.
#[derive(Debug)]
pub enum IqAnswer {
    /// `type='result'`: the answer's first child, if any.
    Result(Option<Element>),
    /// `type='error'`: the defined condition (`item-not-found`, `forbidden`...).
    Error(String),
}

/// A logged-in component connection used only to ask questions.
pub struct Probe {
    conn: Conn,
    component: String,
    next_id: u64,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("component", &self.component)
            .finish_non_exhaustive()
    }
}

/// Most stanzas read while waiting for one answer (pushes to the component are skipped).
const MAX_SKIPPED: usize = 200;

impl Probe {
    /// Logs in as the configured component, within `timeout`.
    pub async fn connect(config: &XmppConfig, timeout: Duration) -> Result<Probe, ProbeError> {
        let cut = Arc::new(AtomicU64::new(0));
        let attempt = tokio::time::timeout(timeout, connection::connect(config, &cut)).await;
        let why = match attempt {
            Ok(Ok(conn)) => {
                return Ok(Probe {
                    conn,
                    component: config.component.clone(),
                    next_id: 0,
                })
            }
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {} s", timeout.as_secs()),
        };
        match classify(&config.server, why) {
            ProbeError::Refused(why) => {
                // tokio-xmpp reports every refusal alike; the stream error says which it was.
                match tokio::time::timeout(timeout, refusal(config)).await {
                    Ok(Some(c)) if c == "conflict" => Err(ProbeError::Busy),
                    Ok(Some(c)) => Err(ProbeError::Refused(c)),
                    _ => Err(ProbeError::Refused(why)),
                }
            }
            other => Err(other),
        }
    }

    /// The bare JID the gateway's listener occupant uses (`junction@<component>`): the one
    /// rooms make admin, and the one the probe asks from.
    pub fn listener(&self) -> String {
        format!("junction@{}", self.component)
    }

    /// Sends `<iq type='get'>` with `payload` to `to` from the listener's JID and waits up
    /// to `timeout` for its answer.
    pub async fn get(
        &mut self,
        to: &str,
        payload: Element,
        timeout: Duration,
    ) -> Result<IqAnswer, String> {
        self.next_id += 1;
        let id = format!("doctor-{}", self.next_id);
        let iq = Element::builder("iq", NS_CLIENT)
            .a("type", "get")
            .a("id", id.as_str())
            .a("from", self.listener())
            .a("to", to)
            .append(payload)
            .build();
        if !connection::send(&mut self.conn, iq).await {
            return Err("the connection was lost".into());
        }
        let wait = async {
            for _ in 0..MAX_SKIPPED {
                let Some(s) = self.conn.next().await else {
                    return Err("the server closed the stream".to_owned());
                };
                let el = connection::from_stanza(s);
                if el.name() != "iq" || el.attr("id") != Some(id.as_str()) {
                    continue;
                }
                return Ok(match el.attr("type") {
                    Some("result") => IqAnswer::Result(el.children().next().cloned()),
                    _ => IqAnswer::Error(error_condition(&el)),
                });
            }
            Err("no answer among the stanzas that came".to_owned())
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
    }

    /// The features a room's disco#info lists (`urn:xmpp:mam:2`, `muc_persistent`...), or
    /// the error condition the room answered with (`item-not-found` when it does not exist).
    pub async fn room_features(
        &mut self,
        room: &str,
        timeout: Duration,
    ) -> Result<Result<Vec<String>, String>, String> {
        let query = Element::builder("query", NS_DISCO_INFO).build();
        Ok(match self.get(room, query, timeout).await? {
            IqAnswer::Result(Some(q)) => Ok(q
                .children()
                .filter(|c| c.name() == "feature")
                .filter_map(|c| c.attr("var"))
                .take(500)
                .map(str::to_owned)
                .collect()),
            IqAnswer::Result(None) => Ok(Vec::new()),
            IqAnswer::Error(condition) => Err(condition),
        })
    }

    /// The bare JIDs a room lists with `affiliation` (`owner`, `admin`), asked from the
    /// listener's JID, or the error condition (`forbidden`: the listener may not see the
    /// list, so it is neither owner nor admin).
    pub async fn affiliations(
        &mut self,
        room: &str,
        affiliation: &str,
        timeout: Duration,
    ) -> Result<Result<Vec<String>, String>, String> {
        let query = Element::builder("query", NS_MUC_ADMIN)
            .append(
                Element::builder("item", NS_MUC_ADMIN)
                    .a("affiliation", affiliation)
                    .build(),
            )
            .build();
        Ok(match self.get(room, query, timeout).await? {
            IqAnswer::Result(Some(q)) => Ok(q
                .children()
                .filter(|c| c.name() == "item")
                .filter_map(|c| c.attr("jid"))
                .take(10_000)
                .map(|j| j.split('/').next().unwrap_or(j).to_owned())
                .collect()),
            IqAnswer::Result(None) => Ok(Vec::new()),
            IqAnswer::Error(condition) => Err(condition),
        })
    }

    /// Closes the stream.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(5), self.conn.send_end()).await;
    }
}

/// The defined condition of an IQ error (`item-not-found`), or `unknown`.
fn error_condition(iq: &Element) -> String {
    iq.children()
        .find(|c| c.name() == "error")
        .and_then(|e| {
            e.children()
                .find(|c| c.ns() == "urn:ietf:params:xml:ns:xmpp-stanzas" && c.name() != "text")
        })
        .map(|c| c.name().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Most bytes read from the server while looking for its refusal's condition.
const MAX_REFUSAL_BYTES: usize = 8 * 1024;

/// Logs in once more, by hand, only to read the condition of the server's stream error
/// (`conflict` when a gateway holds the component, `not-authorized` for a wrong secret):
/// tokio-xmpp's component login reports every refusal as one error and drops the
/// condition. The XEP-0114 exchange is three lines; the answer is read only up to
/// `MAX_REFUSAL_BYTES` and searched as text, never parsed into a tree.
async fn refusal(config: &XmppConfig) -> Option<String> {
    use sha1::{Digest, Sha1};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(&config.server).await.ok()?;
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{}'>",
        junction_core::format::html::escaped(&config.component)
    );
    tcp.write_all(header.as_bytes()).await.ok()?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let id = loop {
        let n = tcp.read(&mut buf).await.ok()?;
        if n == 0 || got.len() + n > MAX_REFUSAL_BYTES {
            return None;
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(start) = text.find("<stream:stream") {
            if let Some(end) = text[start..].find('>') {
                let head = &text[start..start + end];
                break stream_id(head)?;
            }
        }
    };
    let digest = Sha1::digest(format!("{id}{}", config.secret.expose()).as_bytes());
    let handshake = format!("<handshake>{}</handshake>", hex::encode(digest));
    tcp.write_all(handshake.as_bytes()).await.ok()?;
    got.clear();
    loop {
        let n = tcp.read(&mut buf).await.ok()?;
        if n > 0 && got.len() + n <= MAX_REFUSAL_BYTES {
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got);
        for condition in [
            "conflict",
            "not-authorized",
            "host-unknown",
            "improper-addressing",
        ] {
            if text.contains(&format!("<{condition}")) {
                return Some(condition.to_owned());
            }
        }
        if text.contains("<handshake") || n == 0 || got.len() >= MAX_REFUSAL_BYTES {
            return None;
        }
    }
}

/// The `id` attribute of a stream header's text.
fn stream_id(head: &str) -> Option<String> {
    for quote in ['\'', '"'] {
        let key = format!(" id={quote}");
        if let Some(i) = head.find(&key) {
            let rest = &head[i + key.len()..];
            return rest.find(quote).map(|j| rest[..j].to_owned());
        }
    }
    None
}

/// Sorts a connection failure by what the operator has to fix.
fn classify(server: &str, why: String) -> ProbeError {
    let lower = why.to_ascii_lowercase();
    if lower.contains("conflict") {
        ProbeError::Busy
    } else if lower.contains("not-authorized")
        || lower.contains("authentication")
        || lower.contains("host-unknown")
        || lower.contains("improper-addressing")
    {
        ProbeError::Refused(why)
    } else {
        ProbeError::Unreachable {
            server: server.to_owned(),
            why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_sorted() {
        assert!(matches!(
            classify("x:1", "stream error: conflict".into()),
            ProbeError::Busy
        ));
        assert!(matches!(
            classify(
                "x:1",
                "authentication error: component authentication failure".into()
            ),
            ProbeError::Refused(_)
        ));
        assert!(matches!(
            classify("x:1", "I/O error: Connection refused (os error 111)".into()),
            ProbeError::Unreachable { .. }
        ));
    }

    #[test]
    fn questions_are_stanzas_the_stream_accepts() {
        let q = Element::builder("query", NS_DISCO_INFO).build();
        let iq = Element::builder("iq", NS_CLIENT)
            .a("type", "get")
            .a("id", "doctor-1")
            .a("from", "junction@c.example")
            .a("to", "room@muc.example")
            .append(q)
            .build();
        assert!(tokio_xmpp::parsers::iq::Iq::try_from(iq).is_ok());
    }

    #[test]
    fn stream_ids_are_read() {
        let head = "<stream:stream xmlns='jabber:component:accept' from='c.example' id='abc-1'";
        assert_eq!(stream_id(head).as_deref(), Some("abc-1"));
        assert_eq!(stream_id("<stream:stream id=\"x\"").as_deref(), Some("x"));
        assert_eq!(stream_id("<stream:stream from='c'"), None);
    }

    #[test]
    fn error_conditions_are_read() {
        let iq: Element = "<iq xmlns='jabber:component:accept' type='error' id='a'>\
            <error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>\
            <text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>gone</text></error></iq>"
            .parse()
            .expect("xml");
        assert_eq!(error_condition(&iq), "item-not-found");
    }
}
