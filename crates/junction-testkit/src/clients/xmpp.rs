//! An ordinary XMPP user: a c2s client over plaintext TCP to the local Prosody.
//!
//! Written by hand rather than with tokio-xmpp: the workspace pins tokio-xmpp with only
//! the component feature, and its client needs TLS or a separate insecure transport
//! feature set that would change the gateway's dependency tree. This is test-only code
//! that needs nothing but SASL PLAIN, resource binding and a stanza splitter; each
//! complete top-level stanza is handed to minidom to parse.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use base64::Engine;
use minidom::Element;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::servers::Servers;
use junction_core::format::html::escaped;

const NS_CLIENT: &str = "jabber:client";
const NS_MUC_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_SID: &str = "urn:xmpp:sid:0";

/// Stanzas nested deeper than this are skipped, not parsed: minidom builds and drops trees
/// recursively, and hostile-input tests send stanzas nested tens of thousands deep.
const MAX_PARSED_DEPTH: usize = 500;

/// Splits the byte stream into complete top-level stanzas (as text), skipping the
/// stream header; the depth is tracked from tags alone, with quoted attribute values
/// respected. A new `<stream:stream>` (after SASL) resets it.
#[derive(Default)]
struct Splitter {
    buf: Vec<u8>,
    depth: usize,
    /// The deepest nesting of the stanza being read.
    deepest: usize,
    start: usize,
    pos: usize,
}

impl Splitter {
    fn push(&mut self, data: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let Some(lt) = self.buf[self.pos..].iter().position(|&b| b == b'<') else {
                if self.depth == 0 {
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.start = 0;
                }
                break;
            };
            let open = self.pos + lt;
            // Find the closing '>' outside quotes.
            let mut quote: Option<u8> = None;
            let mut end = None;
            for (i, &b) in self.buf[open..].iter().enumerate() {
                match quote {
                    Some(q) if b == q => quote = None,
                    Some(_) => {}
                    None if b == b'"' || b == b'\'' => quote = Some(b),
                    None if b == b'>' => {
                        end = Some(open + i);
                        break;
                    }
                    None => {}
                }
            }
            let Some(end) = end else { break };
            let tag = &self.buf[open..=end];
            self.pos = end + 1;
            if tag.starts_with(b"<?") || tag.starts_with(b"<!") {
                continue;
            }
            if tag.starts_with(b"<stream:stream") {
                self.depth = 0;
                continue;
            }
            if tag.starts_with(b"</stream:stream") {
                continue;
            }
            if tag.starts_with(b"</") {
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    if std::mem::take(&mut self.deepest) > MAX_PARSED_DEPTH {
                        tracing::debug!("XMPP stanza nested too deep to parse; skipped");
                    } else {
                        out.push(
                            String::from_utf8_lossy(&self.buf[self.start..self.pos]).into_owned(),
                        );
                    }
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.start = 0;
                }
                continue;
            }
            let self_closing = tag.ends_with(b"/>");
            if self.depth == 0 {
                self.start = open;
                if self_closing {
                    out.push(String::from_utf8_lossy(&self.buf[open..self.pos]).into_owned());
                    self.buf.drain(..self.pos);
                    self.pos = 0;
                    self.start = 0;
                    continue;
                }
            }
            if !self_closing {
                self.depth += 1;
                self.deepest = self.deepest.max(self.depth);
            }
        }
        out
    }
}

/// Parses one stanza's text, giving it the namespaces the stream header declared.
fn parse_stanza(text: &str) -> Option<Element> {
    let head_end = text.find('>')?;
    let name_end = text[1..]
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .map(|i| i + 1)?;
    let mut extra = String::new();
    if text[..name_end].contains("stream:") {
        extra.push_str(" xmlns:stream='http://etherx.jabber.org/streams'");
        if !text[..head_end].contains("xmlns=") {
            extra.push_str(" xmlns='jabber:client'");
        }
    } else if !text[..head_end].contains("xmlns=") {
        extra.push_str(" xmlns='jabber:client'");
    }
    let fixed = format!("{}{}{}", &text[..name_end], extra, &text[name_end..]);
    match fixed.parse::<Element>() {
        Ok(e) => Some(e),
        Err(e) => {
            tracing::debug!(error = %e, "unparsable XMPP stanza skipped");
            None
        }
    }
}

/// A connected, bound XMPP user. Reading runs in a background task that answers pings
/// and records every stanza; dropping the user ends the connection.
pub struct XmppUser {
    jid: String,
    backlog: Arc<Mutex<Vec<Element>>>,
    /// When each backlog entry was read, index for index (locked after `backlog`).
    received: Arc<Mutex<Vec<Instant>>>,
    out: mpsc::UnboundedSender<String>,
    reader: tokio::task::JoinHandle<()>,
    ids: AtomicU64,
}

impl Drop for XmppUser {
    fn drop(&mut self) {
        let _ = self.out.send("</stream:stream>".to_owned());
        self.reader.abort();
    }
}

fn header(domain: &str) -> String {
    format!(
        "<?xml version='1.0'?><stream:stream to='{}' xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>",
        escaped(domain)
    )
}

impl XmppUser {
    /// Registers `user@domain` (idempotent) and connects.
    pub async fn register(servers: &Servers, user: &str, password: &str) -> anyhow::Result<Self> {
        servers.register_xmpp_user(user, password).await?;
        Self::connect(servers, user, password).await
    }

    /// Connects, authenticates with SASL PLAIN, binds a resource and sends presence.
    pub async fn connect(servers: &Servers, user: &str, password: &str) -> anyhow::Result<Self> {
        let domain = servers.xmpp.domain.clone();
        let stream = TcpStream::connect(servers.xmpp.c2s).await?;
        // A measuring client: each stanza goes out when it is sent, not when the server's
        // delayed ACK lets Nagle's algorithm release it.
        stream.set_nodelay(true)?;
        let (mut rd, mut wr) = stream.into_split();
        let backlog: Arc<Mutex<Vec<Element>>> = Arc::default();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let out2 = out.clone();
        let backlog2 = backlog.clone();
        let received: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let received2 = received.clone();
        let reader = tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                while let Some(s) = out_rx.recv().await {
                    if wr.write_all(s.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
            let mut splitter = Splitter::default();
            let mut buf = vec![0u8; 16384];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                for text in splitter.push(&buf[..n]) {
                    let Some(el) = parse_stanza(&text) else {
                        continue;
                    };
                    if el.name() == "iq"
                        && el.attr("type") == Some("get")
                        && el.has_child("ping", "urn:xmpp:ping")
                    {
                        let _ = out2.send(format!(
                            "<iq type='result' id='{}' to='{}'/>",
                            escaped(el.attr("id").unwrap_or("")),
                            escaped(el.attr("from").unwrap_or(""))
                        ));
                    }
                    let mut b = backlog2.lock().unwrap_or_else(|e| e.into_inner());
                    b.push(el);
                    received2
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(Instant::now());
                }
            }
            writer.abort();
        });
        let mut me = XmppUser {
            jid: format!("{user}@{domain}"),
            backlog,
            received,
            out,
            reader,
            ids: AtomicU64::new(0),
        };
        let t = Duration::from_secs(15);
        me.send_raw(&header(&domain))?;
        me.wait_for(t, |e| e.name() == "features").await?;
        let creds =
            base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
        me.send_raw(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{creds}</auth>"
        ))?;
        let r = me
            .wait_for(t, |e| e.name() == "success" || e.name() == "failure")
            .await?;
        if r.name() == "failure" {
            anyhow::bail!("SASL PLAIN failed for {user}: {}", String::from(&r));
        }
        me.clear();
        me.send_raw(&header(&domain))?;
        me.wait_for(t, |e| {
            e.name() == "features" && e.has_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
        })
        .await?;
        me.send_raw(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>test</resource></bind></iq>",
        )?;
        let bound = me
            .wait_for(t, |e| e.name() == "iq" && e.attr("id") == Some("bind1"))
            .await?;
        let jid = bound
            .get_child("bind", "urn:ietf:params:xml:ns:xmpp-bind")
            .and_then(|b| b.get_child("jid", "urn:ietf:params:xml:ns:xmpp-bind"))
            .map(|j| j.text())
            .context("bind gave no jid")?;
        me.jid = jid;
        me.send_raw("<presence/>")?;
        Ok(me)
    }

    fn clear(&self) {
        let mut b = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        b.clear();
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    /// The full bound JID, `user@domain/resource`.
    pub fn jid(&self) -> &str {
        &self.jid
    }

    /// The bare JID, `user@domain`.
    pub fn bare_jid(&self) -> &str {
        self.jid.split('/').next().unwrap_or(&self.jid)
    }

    /// A fresh stanza id.
    pub fn next_id(&self) -> String {
        crate::unique(&format!("x{}-", self.ids.fetch_add(1, Ordering::Relaxed)))
    }

    /// Sends raw XML.
    pub fn send_raw(&self, xml: &str) -> anyhow::Result<()> {
        self.out
            .send(xml.to_owned())
            .map_err(|_| anyhow::anyhow!("XMPP connection closed"))
    }

    /// Joins a MUC as `nick` without history; waits for our self-presence (status 110).
    pub async fn join_muc(&self, room: &str, nick: &str) -> anyhow::Result<Element> {
        self.send_raw(&format!(
            "<presence to='{}/{}'><x xmlns='http://jabber.org/protocol/muc'>\
             <history maxstanzas='0'/></x></presence>",
            escaped(room),
            escaped(nick)
        ))?;
        let room = room.to_owned();
        self.wait_for(Duration::from_secs(15), move |e| {
            e.name() == "presence"
                && bare(e.attr("from").unwrap_or("")) == room
                && (muc_status(e, "110") || e.attr("type") == Some("error"))
        })
        .await
        .and_then(|e| {
            if e.attr("type") == Some("error") {
                anyhow::bail!("MUC join refused: {}", String::from(&e))
            }
            Ok(e)
        })
    }

    /// Sends a groupchat message with an origin-id; returns that id (also the stanza id).
    pub fn send_groupchat(&self, room: &str, body: &str) -> anyhow::Result<String> {
        self.send_groupchat_with(room, body, "")
    }

    /// Sends a groupchat message with extra child XML; returns the origin id.
    pub fn send_groupchat_with(
        &self,
        room: &str,
        body: &str,
        extra: &str,
    ) -> anyhow::Result<String> {
        let id = self.next_id();
        self.send_raw(&format!(
            "<message type='groupchat' to='{}' id='{id}'><body>{}</body>\
             <origin-id xmlns='urn:xmpp:sid:0' id='{id}'/>{extra}</message>",
            escaped(room),
            escaped(body)
        ))?;
        Ok(id)
    }

    /// Corrects our message `replace_id` (XEP-0308: the corrected message's own id).
    pub fn send_correction(
        &self,
        room: &str,
        replace_id: &str,
        body: &str,
    ) -> anyhow::Result<String> {
        self.send_groupchat_with(
            room,
            body,
            &format!(
                "<replace xmlns='urn:xmpp:message-correct:0' id='{}'/>",
                escaped(replace_id)
            ),
        )
    }

    /// Retracts our message (XEP-0424); in a MUC `id` is the stanza-id the room assigned.
    pub fn send_retraction(&self, room: &str, id: &str) -> anyhow::Result<String> {
        let mid = self.next_id();
        self.send_raw(&format!(
            "<message type='groupchat' to='{}' id='{mid}'>\
             <retract xmlns='urn:xmpp:message-retract:1' id='{}'/>\
             <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:message-retract:1'/>\
             <body>This person attempted to retract a previous message, but it's unsupported by your client.</body>\
             <store xmlns='urn:xmpp:hints'/></message>",
            escaped(room),
            escaped(id)
        ))?;
        Ok(mid)
    }

    /// Reacts (XEP-0444) to the message with the room's `stanza_id`; `emojis` replaces
    /// our previous reactions to it.
    pub fn send_reaction(
        &self,
        room: &str,
        stanza_id: &str,
        emojis: &[&str],
    ) -> anyhow::Result<String> {
        let mid = self.next_id();
        let rs: String = emojis
            .iter()
            .map(|e| format!("<reaction>{}</reaction>", escaped(e)))
            .collect();
        self.send_raw(&format!(
            "<message type='groupchat' to='{}' id='{mid}'>\
             <reactions xmlns='urn:xmpp:reactions:0' id='{}'>{rs}</reactions>\
             <store xmlns='urn:xmpp:hints'/></message>",
            escaped(room),
            escaped(stanza_id)
        ))?;
        Ok(mid)
    }

    /// Replies (XEP-0461) to the message with the room's `to_stanza_id`, sent by
    /// `to_jid` (its occupant JID); the body starts with a `> ` quote of `to_jid` marked as
    /// fallback (XEP-0428).
    pub fn send_reply(
        &self,
        room: &str,
        to_stanza_id: &str,
        to_jid: &str,
        body: &str,
    ) -> anyhow::Result<String> {
        let quote = format!("> {}\n", to_jid.rsplit('/').next().unwrap_or(to_jid));
        let end = quote.chars().count();
        let id = self.next_id();
        self.send_raw(&format!(
            "<message type='groupchat' to='{}' id='{id}'><body>{}{}</body>\
             <origin-id xmlns='urn:xmpp:sid:0' id='{id}'/>\
             <reply xmlns='urn:xmpp:reply:0' to='{}' id='{}'/>\
             <fallback xmlns='urn:xmpp:fallback:0' for='urn:xmpp:reply:0'><body start='0' end='{end}'/></fallback>\
             </message>",
            escaped(room),
            escaped(&quote),
            escaped(body),
            escaped(to_jid),
            escaped(to_stanza_id)
        ))?;
        Ok(id)
    }

    /// Sets the room subject.
    pub fn set_subject(&self, room: &str, subject: &str) -> anyhow::Result<()> {
        self.send_raw(&format!(
            "<message type='groupchat' to='{}'><subject>{}</subject></message>",
            escaped(room),
            escaped(subject)
        ))
    }

    async fn admin(&self, room: &str, item: &str) -> anyhow::Result<Element> {
        let payload = format!("<query xmlns='http://jabber.org/protocol/muc#admin'>{item}</query>");
        self.iq_set(room, &payload, "muc#admin").await
    }

    /// Sends an IQ set carrying `payload` to `to` and waits for its answer; an error answer
    /// is an error naming `what`.
    async fn iq_set(&self, to: &str, payload: &str, what: &str) -> anyhow::Result<Element> {
        let id = self.next_id();
        self.send_raw(&format!(
            "<iq type='set' to='{}' id='{id}'>{payload}</iq>",
            escaped(to)
        ))?;
        let r = self
            .wait_for(Duration::from_secs(15), |e| {
                e.name() == "iq" && e.attr("id") == Some(id.as_str())
            })
            .await?;
        if r.attr("type") != Some("result") {
            anyhow::bail!("{what} refused: {}", String::from(&r));
        }
        Ok(r)
    }

    /// As the room's owner, sets one field of the room's configuration (`muc#roomconfig_*`,
    /// e.g. `muc#roomconfig_membersonly` to `1`); an error when the room refuses.
    pub async fn configure_room(&self, room: &str, field: &str, value: &str) -> anyhow::Result<()> {
        let payload = format!(
            "<query xmlns='http://jabber.org/protocol/muc#owner'>\
             <x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='{}'><value>{}</value></field></x></query>",
            escaped(field),
            escaped(value)
        );
        self.iq_set(room, &payload, "room configuration").await?;
        Ok(())
    }

    /// Kicks an occupant by nick.
    pub async fn kick(&self, room: &str, nick: &str) -> anyhow::Result<()> {
        self.admin(
            room,
            &format!("<item nick='{}' role='none'/>", escaped(nick)),
        )
        .await?;
        Ok(())
    }

    /// Bans a bare JID (affiliation outcast).
    pub async fn ban(&self, room: &str, jid: &str) -> anyhow::Result<()> {
        self.admin(
            room,
            &format!("<item jid='{}' affiliation='outcast'/>", escaped(jid)),
        )
        .await?;
        Ok(())
    }

    /// Sets a bare JID's affiliation (`owner`, `admin`, `member`, `none`), as a room owner
    /// does to let the gateway's listener change the subject and moderate.
    pub async fn set_affiliation(
        &self,
        room: &str,
        jid: &str,
        affiliation: &str,
    ) -> anyhow::Result<()> {
        self.admin(
            room,
            &format!(
                "<item jid='{}' affiliation='{}'/>",
                escaped(jid),
                escaped(affiliation)
            ),
        )
        .await?;
        Ok(())
    }

    /// Moderates (XEP-0425) the room message with stanza-id `stanza_id`: retracts it for
    /// everyone, with `reason`, in the form Prosody's `mod_muc_moderation` (Debian's
    /// prosody-modules) reads (`urn:xmpp:message-moderate:0`, on XEP-0422 fastening). Needs
    /// the role moderator; returns the room's answer, an error when it refused.
    pub async fn moderate(
        &self,
        room: &str,
        stanza_id: &str,
        reason: &str,
    ) -> anyhow::Result<Element> {
        let payload = format!(
            "<apply-to xmlns='urn:xmpp:fasten:0' id='{}'>\
             <moderate xmlns='urn:xmpp:message-moderate:0'>\
             <retract xmlns='urn:xmpp:message-retract:0'/><reason>{}</reason>\
             </moderate></apply-to>",
            escaped(stanza_id),
            escaped(reason)
        );
        self.iq_set(room, &payload, "moderation").await
    }

    /// Everything received since binding.
    pub fn backlog(&self) -> Vec<Element> {
        self.backlog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// How many stanzas have been received (an index for [`Self::received_since`], taken
    /// without copying the backlog).
    pub fn len(&self) -> usize {
        self.backlog.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing has been received yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stanzas received from backlog index `from` on, each with when it was read
    /// (for latency measurements); `from` past the end gives nothing.
    pub fn received_since(&self, from: usize) -> Vec<(Instant, Element)> {
        let b = self.backlog.lock().unwrap_or_else(|e| e.into_inner());
        let r = self.received.lock().unwrap_or_else(|e| e.into_inner());
        r.iter()
            .zip(b.iter())
            .skip(from)
            .map(|(t, e)| (*t, e.clone()))
            .collect()
    }

    /// Waits until a received stanza matches `pred` (the backlog is searched too).
    pub async fn wait_for(
        &self,
        deadline: Duration,
        pred: impl Fn(&Element) -> bool,
    ) -> anyhow::Result<Element> {
        crate::eventually(deadline, "an XMPP stanza", || {
            let found = self
                .backlog
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|e| pred(e))
                .cloned();
            async move { found }
        })
        .await
    }
}

/// The bare part of a JID.
pub fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap_or(jid)
}

/// A message's `<body>` text.
pub fn body(el: &Element) -> Option<String> {
    el.get_child("body", NS_CLIENT).map(|b| b.text())
}

/// The resource of `from` (in a MUC, the sender's nick).
pub fn from_nick(el: &Element) -> Option<&str> {
    el.attr("from")?.split_once('/').map(|(_, n)| n)
}

/// The `<stanza-id>` the room (`by` = the room's bare JID, i.e. `from`'s bare part) set.
pub fn stanza_id(el: &Element) -> Option<String> {
    let room = bare(el.attr("from")?);
    el.children()
        .find(|c| c.is("stanza-id", NS_SID) && c.attr("by") == Some(room))
        .and_then(|c| c.attr("id").map(str::to_owned))
}

/// The sender's `<origin-id>`.
pub fn origin_id(el: &Element) -> Option<String> {
    el.get_child("origin-id", NS_SID)
        .and_then(|c| c.attr("id").map(str::to_owned))
}

/// Whether a MUC presence carries the status `code` (110: one's own; 301: banned; 303: a
/// nick change; 307: kicked).
pub fn muc_status(el: &Element, code: &str) -> bool {
    el.get_child("x", NS_MUC_USER).is_some_and(|x| {
        x.children()
            .any(|s| s.name() == "status" && s.attr("code") == Some(code))
    })
}

/// Whether `el` says that `occupant` (a full MUC JID) left the room (or left its nick).
pub fn is_leaving(el: &Element, occupant: &str) -> bool {
    el.name() == "presence"
        && el.attr("type") == Some("unavailable")
        && el.attr("from") == Some(occupant)
}

/// Whether `el` is a groupchat message from `room`.
pub fn is_groupchat_from(el: &Element, room: &str) -> bool {
    el.name() == "message"
        && el.attr("type") == Some("groupchat")
        && el.attr("from").is_some_and(|f| bare(f) == room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_splits_stanzas() {
        let mut s = Splitter::default();
        let a = s.push(b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' id='x'><stream:features><m xmlns='urn:x' a='>'/>");
        assert!(a.is_empty());
        let b = s.push(b"</stream:features><presence/><message><body>a&gt;b</body></mess");
        assert_eq!(b.len(), 2);
        let c = s.push(b"age>");
        assert_eq!(c, vec!["<message><body>a&gt;b</body></message>".to_owned()]);
        let f = parse_stanza(&b[0]).expect("features");
        assert_eq!(f.name(), "features");
        let m = parse_stanza(&c[0]).expect("message");
        assert_eq!(body(&m).as_deref(), Some("a>b"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_users_in_a_muc() -> anyhow::Result<()> {
        let s = crate::servers::servers().await?;
        let a = XmppUser::register(s, &crate::unique("xa"), "pw-xa-1").await?;
        let b = XmppUser::register(s, &crate::unique("xb"), "pw-xb-1").await?;
        let room = format!("{}@{}", crate::unique("muc"), s.xmpp.muc);
        a.join_muc(&room, "anna").await?;
        b.join_muc(&room, "bert").await?;
        let t = Duration::from_secs(15);
        let id = a.send_groupchat(&room, "hi bert")?;
        let got = b
            .wait_for(t, |e| {
                is_groupchat_from(e, &room) && body(e).as_deref() == Some("hi bert")
            })
            .await?;
        assert_eq!(from_nick(&got), Some("anna"));
        assert_eq!(origin_id(&got).as_deref(), Some(id.as_str()));
        assert!(stanza_id(&got).is_some());
        // Every stanza read has its time, in reading order.
        let all = b.received_since(0);
        assert_eq!(all.len(), b.backlog().len());
        assert!(all.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(all
            .iter()
            .any(|(_, e)| body(e).as_deref() == Some("hi bert")));
        a.send_correction(&room, &id, "hi, bert")?;
        let fix = b
            .wait_for(t, |e| {
                is_groupchat_from(e, &room) && body(e).as_deref() == Some("hi, bert")
            })
            .await?;
        assert_eq!(
            fix.get_child("replace", "urn:xmpp:message-correct:0")
                .and_then(|r| r.attr("id")),
            Some(id.as_str())
        );
        let sid = stanza_id(&got).unwrap_or_default();
        b.send_reaction(&room, &sid, &["👍"])?;
        a.wait_for(t, |e| {
            is_groupchat_from(e, &room)
                && e.get_child("reactions", "urn:xmpp:reactions:0")
                    .is_some_and(|r| r.attr("id") == Some(sid.as_str()))
        })
        .await?;
        b.send_reply(&room, &sid, &format!("{room}/anna"), "yes?")?;
        let reply = a
            .wait_for(t, |e| {
                is_groupchat_from(e, &room) && e.has_child("reply", "urn:xmpp:reply:0")
            })
            .await?;
        assert_eq!(body(&reply).as_deref(), Some("> anna\nyes?"));
        a.send_retraction(&room, &sid)?;
        b.wait_for(t, |e| {
            is_groupchat_from(e, &room)
                && e.get_child("retract", "urn:xmpp:message-retract:1")
                    .is_some_and(|r| r.attr("id") == Some(sid.as_str()))
        })
        .await?;
        a.set_subject(&room, "new subject")?;
        b.wait_for(t, |e| {
            is_groupchat_from(e, &room)
                && e.get_child("subject", NS_CLIENT)
                    .map(|s| s.text())
                    .as_deref()
                    == Some("new subject")
        })
        .await?;
        a.kick(&room, "bert").await?;
        b.wait_for(t, |e| {
            e.name() == "presence" && e.attr("type") == Some("unavailable") && muc_status(e, "307")
        })
        .await?;
        Ok(())
    }
}
