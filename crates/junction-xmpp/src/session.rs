//! The component connection (XEP-0114) and the adapter's run loop.
//!
//! One connection per component domain. The listener occupant
//! (`junction@<component>/junction`) joins every linked room and is the only
//! address whose copy of room traffic is read; puppets join a room the first
//! time they speak there. After a disconnect the loop reconnects with jittered
//! backoff and rejoins the listener and every puppet that was in a room.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use junction_core::{
    AdapterContext, AdapterError, Delivered, Delivery, EventKind, Inbound, MessageId, RoomRef,
};
use junction_store::Store;
use minidom::Element;
use tokio_xmpp::connect::{DnsConfig, TcpServerConnector};
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Component, Stanza};

use crate::config::XmppConfig;
use crate::inbound::{
    diff_reactions, parse_groupchat, room_stanza_id, sender_message_id, Parsed, RoomContext,
};
use crate::jid::{is_ours, puppet_jid};
use crate::outbound;

/// How many room stanza-ids are remembered for deduplication.
const DEDUPE_WINDOW: usize = 4096;
/// Interval of XEP-0199 pings to the server, which also keeps the stream's
/// read timeout from firing on a quiet link.
const PING_EVERY: Duration = Duration::from_secs(25);

/// Store kv table: our message id `U` → the room's stanza-id `S`.
const KV_U2S: &str = "xmpp.u2s";

/// The nick of the listener occupant.
pub const LISTENER_NICK: &str = "junction";

/// What the adapter remembers while it runs.
pub(crate) struct State {
    pub config: XmppConfig,
    pub store: Arc<dyn Store>,
    /// (room, puppet bare JID) → nick it holds there.
    pub joined: HashMap<(String, String), String>,
    /// (room, puppet bare JID) → the nick it wanted and how many conflicts it met.
    pub wanted: HashMap<(String, String), (String, u32)>,
    /// Occupant JIDs (`room/nick`) present in each room, as the listener sees them.
    pub occupants: HashSet<String>,
    /// Rooms where the listener's own presence has arrived (occupants seen
    /// before it were already there: no Join events for them).
    pub listening: HashSet<String>,
    /// Recent room stanza-ids already handled.
    pub seen: HashSet<String>,
    pub seen_order: VecDeque<String>,
    /// Our message id `U` → the room's stanza-id `S`, learnt from reflections.
    pub u_to_s: HashMap<String, String>,
    /// A sender's message id → room stanza-id, for corrections by XMPP users.
    pub msgid_to_s: HashMap<String, String>,
    /// (room, occupant, target) → that occupant's last reaction set.
    pub reactions: HashMap<(String, String, String), Vec<String>>,
    /// (room, puppet, target) → the set we sent for that puppet.
    pub our_reactions: HashMap<(String, String, String), Vec<String>>,
    next_id: u64,
    /// Notified to drop the current connection (the adapter then reconnects).
    pub reconnect: Arc<tokio::sync::Notify>,
    /// How many times the component has logged in and joined its rooms.
    pub sessions: Arc<std::sync::atomic::AtomicU64>,
}

impl State {
    pub fn new(config: XmppConfig, store: Arc<dyn Store>) -> Self {
        Self {
            config,
            store,
            joined: HashMap::new(),
            wanted: HashMap::new(),
            occupants: HashSet::new(),
            listening: HashSet::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            u_to_s: HashMap::new(),
            msgid_to_s: HashMap::new(),
            reactions: HashMap::new(),
            our_reactions: HashMap::new(),
            next_id: 0,
            reconnect: Arc::new(tokio::sync::Notify::new()),
            sessions: Arc::default(),
        }
    }

    fn listener(&self) -> String {
        format!("junction@{}/{LISTENER_NICK}", self.config.component)
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        let r: u64 = rand::random();
        format!("jx-{r:016x}-{}", self.next_id)
    }

    /// The room's stanza-id `S` for our message id `U` (memory, then the
    /// store, so it survives restarts); `U` itself when never learnt.
    fn stanza_id_for(&self, u: &str) -> String {
        if let Some(s) = self.u_to_s.get(u) {
            return s.clone();
        }
        match self.store.kv_get(KV_U2S, u) {
            Ok(Some(v)) => String::from_utf8(v).unwrap_or_else(|_| u.to_string()),
            Ok(None) => u.to_string(),
            Err(e) => {
                tracing::warn!(error = %e, "xmpp: stanza-id lookup failed");
                u.to_string()
            }
        }
    }

    /// Records that the room reflected our message `U` with stanza-id `S`.
    fn learn_stanza_id(&mut self, u: String, s: String) {
        if let Err(e) = self.store.kv_put(KV_U2S, &u, s.as_bytes()) {
            tracing::warn!(error = %e, "xmpp: could not store a stanza-id");
        }
        self.u_to_s.insert(u, s);
    }

    fn remember(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_string()) {
            return false;
        }
        self.seen_order.push_back(id.to_string());
        if self.seen_order.len() > DEDUPE_WINDOW {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

type Conn = Component<TcpServerConnector>;

/// Turns a built element into a typed stanza for tokio-xmpp.
fn to_stanza(el: Element) -> Option<Stanza> {
    match el.name() {
        "message" => Message::try_from(el).ok().map(Stanza::from),
        "presence" => Presence::try_from(el).ok().map(Stanza::from),
        "iq" => Iq::try_from(el).ok().map(Stanza::from),
        _ => None,
    }
}

fn from_stanza(s: Stanza) -> Element {
    match s {
        Stanza::Message(m) => m.into(),
        Stanza::Presence(p) => p.into(),
        Stanza::Iq(i) => i.into(),
    }
}

async fn send(conn: &mut Conn, el: Element) -> bool {
    match to_stanza(el) {
        Some(s) => conn.send_stanza(s).await.is_ok(),
        None => {
            tracing::warn!("xmpp: built a stanza the parser refuses; not sent");
            true
        }
    }
}

async fn connect(config: &XmppConfig) -> Result<Conn, String> {
    Component::new_plaintext(
        &config.component,
        config.secret.expose(),
        DnsConfig::addr(&config.server),
        Timeouts::tight(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Runs the adapter until shutdown.
pub(crate) async fn run(mut st: State, mut cx: AdapterContext) -> Result<(), AdapterError> {
    let mut backoff = Duration::from_millis(250);
    let mut retry: Option<Delivery> = None;
    loop {
        if cx.shutdown.is_cancelled() {
            return Ok(());
        }
        let conn = tokio::select! {
            () = cx.shutdown.cancelled() => return Ok(()),
            c = connect(&st.config) => c,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "xmpp: component connection failed; retrying");
                let jitter = Duration::from_millis(rand::random::<u64>() % 250);
                tokio::select! {
                    () = cx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(backoff + jitter) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        backoff = Duration::from_millis(250);
        tracing::info!(component = %st.config.component, "xmpp: component connected");
        if !join_all(&mut st, &mut conn, &cx).await {
            continue;
        }
        st.sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(d) = retry.take() {
            let (outcome, alive) = deliver(&mut st, &mut conn, &d).await;
            if !alive {
                retry = Some(d);
                continue;
            }
            let _ = cx.delivered.send(Delivered {
                outbox_id: d.outbox_id,
                target: d.target.clone(),
                event: d.event.id.clone(),
                outcome,
            });
        }
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let reconnect = st.reconnect.clone();
        let mut rooms_open = true;
        loop {
            tokio::select! {
                changed = cx.rooms.changed(), if rooms_open => {
                    if changed.is_err() {
                        rooms_open = false;
                        continue;
                    }
                    // Newly linked rooms: the listener joins them (joining
                    // again where it already is only refreshes its presence).
                    if !join_all(&mut st, &mut conn, &cx).await {
                        break;
                    }
                }
                () = reconnect.notified() => {
                    tracing::info!("xmpp: dropping the component connection on request");
                    break;
                }
                () = cx.shutdown.cancelled() => {
                    let _ = conn.send_end().await;
                    return Ok(());
                }
                d = cx.deliveries.recv() => {
                    let Some(d) = d else { return Ok(()) };
                    let outbox_id = d.outbox_id;
                    let (outcome, alive) = deliver(&mut st, &mut conn, &d).await;
                    if !alive {
                        // Not sent: a transient failure is not answered; the
                        // delivery goes first after the reconnect.
                        retry = Some(d);
                        break;
                    }
                    let _ = cx.delivered.send(Delivered { outbox_id, target: d.target.clone(), event: d.event.id.clone(), outcome });
                }
                s = conn.next() => {
                    let Some(s) = s else {
                        tracing::warn!("xmpp: component stream ended; reconnecting");
                        break;
                    };
                    if !handle(&mut st, &mut conn, &cx, from_stanza(s)).await {
                        break;
                    }
                }
                _ = ping.tick() => {
                    let id = st.new_id();
                    let el = Element::builder("iq", crate::inbound::NS_CLIENT)
                        .append(Element::builder("ping", "urn:xmpp:ping").build())
                        .build();
                    let mut el = el;
                    set(&mut el, "type", "get");
                    set(&mut el, "id", id);
                    set(&mut el, "from", st.config.component.clone());
                    set(&mut el, "to", server_domain(&st.config.component));
                    if !send(&mut conn, el).await { break; }
                }
            }
        }
    }
}

/// Sets an unqualified attribute; names here are constant valid XML names.
fn set(el: &mut Element, name: &str, value: impl Into<String>) {
    if let Ok(n) = rxml::NcName::try_from(name) {
        el.set_attr(rxml::Namespace::NONE, n, value.into());
    }
}

/// The server's domain: the component domain less its first label.
fn server_domain(component: &str) -> String {
    component
        .split_once('.')
        .map_or(component, |(_, rest)| rest)
        .to_string()
}

async fn join_all(st: &mut State, conn: &mut Conn, cx: &AdapterContext) -> bool {
    let rooms = cx.rooms.borrow().clone();
    let listener = st.listener();
    for room in &rooms {
        let id = st.new_id();
        if !send(
            conn,
            outbound::join(&listener, room.as_str(), LISTENER_NICK, &id),
        )
        .await
        {
            return false;
        }
    }
    let puppets: Vec<((String, String), String)> = st
        .joined
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for ((room, puppet), nick) in puppets {
        let id = st.new_id();
        if !send(
            conn,
            outbound::join(&format!("{puppet}/junction"), &room, &nick, &id),
        )
        .await
        {
            return false;
        }
    }
    true
}

/// Renders one delivery; the outcome, and whether the connection still works.
async fn deliver(
    st: &mut State,
    conn: &mut Conn,
    d: &Delivery,
) -> (Result<Vec<MessageId>, String>, bool) {
    let room = d.target.room.as_str().to_string();
    let sender = &d.event.sender;
    let puppet = puppet_jid(&sender.user, &st.config.component);
    let from = format!("{puppet}/junction");
    let key = (room.clone(), puppet.clone());
    if !st.joined.contains_key(&key) && !matches!(d.event.kind, EventKind::Leave { .. }) {
        let nick = if sender.display_name.is_empty() {
            sender.user.user.as_str().to_string()
        } else {
            sender.display_name.clone()
        };
        let id = st.new_id();
        if !send(conn, outbound::join(&from, &room, &nick, &id)).await {
            return (Err("xmpp connection lost".into()), false);
        }
        st.wanted.insert(key.clone(), (nick.clone(), 0));
        st.joined.insert(key.clone(), nick);
    }
    let id = st.new_id();
    let target = d.target_ids.first().map(|t| t.as_str().to_string());
    let el = match &d.event.kind {
        EventKind::Message(m) => {
            let text = outbound::styled(&m.body);
            let mut text = text;
            for a in &m.attachments {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&a.url);
            }
            let emote = m.kind == junction_core::MessageKind::Emote;
            match (d.reply_to.first(), m.attachments.first()) {
                (Some(r), _) => {
                    let s = st.stanza_id_for(r.as_str());
                    outbound::reply(&from, &room, &id, &s, None, None, &text)
                }
                (None, Some(a)) if m.body.is_empty() && m.attachments.len() == 1 => {
                    outbound::attachment(&from, &room, &id, &a.url)
                }
                _ => outbound::message(&from, &room, &id, &text, emote),
            }
        }
        EventKind::Edit { body, .. } => {
            let Some(t) = target else {
                return (Err("edit target unknown here".into()), true);
            };
            outbound::correction(&from, &room, &id, &t, &outbound::styled(body))
        }
        EventKind::Redact { .. } => {
            let Some(t) = target else {
                return (Err("redact target unknown here".into()), true);
            };
            let s = st.stanza_id_for(&t);
            outbound::retraction(&from, &room, &id, &s)
        }
        EventKind::React { key: k, .. } | EventKind::Unreact { key: k, .. } => {
            let Some(t) = target else {
                return (Err("reaction target unknown here".into()), true);
            };
            let s = st.stanza_id_for(&t);
            let set = st
                .our_reactions
                .entry((room.clone(), puppet.clone(), s.clone()))
                .or_default();
            if matches!(d.event.kind, EventKind::React { .. }) {
                if !set.contains(k) {
                    set.push(k.clone());
                }
            } else {
                set.retain(|x| x != k);
            }
            let keys = set.clone();
            outbound::reactions(&from, &room, &id, &s, &keys)
        }
        EventKind::Topic { text } => outbound::subject(&from, &room, &id, text),
        EventKind::Join => return (Ok(Vec::new()), true),
        EventKind::Leave { reason, .. } => {
            let Some(nick) = st.joined.remove(&key) else {
                return (Ok(Vec::new()), true);
            };
            let ok = send(
                conn,
                outbound::leave(&from, &room, &nick, reason.as_deref()),
            )
            .await;
            return (Ok(Vec::new()), ok);
        }
        EventKind::NickChange { new_name } => {
            let id = st.new_id();
            let ok = send(conn, outbound::join(&from, &room, new_name, &id)).await;
            st.joined.insert(key, new_name.clone());
            return (Ok(Vec::new()), ok);
        }
        EventKind::Kick { .. } | EventKind::Ban { .. } => {
            return (
                Err("moderation from other networks is not bridged to XMPP yet".into()),
                true,
            )
        }
    };
    if send(conn, el).await {
        (Ok(vec![MessageId::new(id)]), true)
    } else {
        (Err("xmpp connection lost".into()), false)
    }
}

/// Handles one stanza from the server; false when the connection is unusable.
async fn handle(st: &mut State, conn: &mut Conn, cx: &AdapterContext, el: Element) -> bool {
    match el.name() {
        "iq" => answer_iq(st, conn, &el).await,
        "message" => {
            on_message(st, cx, &el).await;
            true
        }
        "presence" => {
            if el.attr("to") == Some(st.listener().as_str()) {
                on_room_presence(st, cx, &el).await;
                true
            } else {
                on_puppet_presence(st, conn, &el).await
            }
        }
        _ => true,
    }
}

/// Every IQ get/set gets an answer: ping → result, disco#info → identity and
/// features, anything else → service-unavailable.
async fn answer_iq(st: &mut State, conn: &mut Conn, el: &Element) -> bool {
    let ty = el.attr("type").unwrap_or_default();
    if ty != "get" && ty != "set" {
        return true;
    }
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return true;
    };
    let id = el.attr("id").unwrap_or_default().to_string();
    let ns = crate::inbound::NS_CLIENT;
    let mut reply = Element::builder("iq", ns).build();
    if el.has_child("ping", "urn:xmpp:ping") {
        // result, no payload
    } else if let Some(q) = el.get_child("query", "http://jabber.org/protocol/disco#info") {
        let mut query = Element::builder("query", "http://jabber.org/protocol/disco#info").build();
        let (cat, kind) = if to.contains('@') {
            ("client", "bot")
        } else {
            ("gateway", "xmpp")
        };
        let mut ident =
            Element::builder("identity", "http://jabber.org/protocol/disco#info").build();
        set(&mut ident, "category", cat);
        set(&mut ident, "type", kind);
        set(&mut ident, "name", "Junction");
        query.append_child(ident);
        for f in [
            "http://jabber.org/protocol/disco#info",
            "urn:xmpp:ping",
            "urn:xmpp:message-correct:0",
            "urn:xmpp:message-retract:1",
            "urn:xmpp:reactions:0",
            "urn:xmpp:reply:0",
        ] {
            let mut fe =
                Element::builder("feature", "http://jabber.org/protocol/disco#info").build();
            set(&mut fe, "var", f);
            query.append_child(fe);
        }
        if let Some(node) = q.attr("node") {
            set(&mut query, "node", node.to_string());
        }
        reply.append_child(query);
    } else {
        let mut error = Element::builder("error", ns).build();
        set(&mut error, "type", "cancel");
        error.append_child(
            Element::builder("service-unavailable", "urn:ietf:params:xml:ns:xmpp-stanzas").build(),
        );
        set(&mut reply, "type", "error");
        reply.append_child(error);
    }
    if reply.attr("type").is_none() {
        set(&mut reply, "type", "result");
    }
    set(&mut reply, "id", id);
    set(&mut reply, "from", to.to_string());
    set(&mut reply, "to", from.to_string());
    let _ = st;
    send(conn, reply).await
}

async fn on_message(st: &mut State, cx: &AdapterContext, el: &Element) {
    if el.attr("type") != Some("groupchat") || el.attr("to") != Some(st.listener().as_str()) {
        return;
    }
    let Some(from) = el.attr("from") else { return };
    let Some((room_jid, nick)) = from.split_once('/') else {
        return;
    };
    let rooms = cx.rooms.borrow().clone();
    let Some(room) = rooms
        .iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(room_jid))
        .cloned()
    else {
        return;
    };
    let s = room_stanza_id(el, room_jid);
    if let Some(s) = &s {
        if !st.remember(s) {
            return;
        }
        if let Some(u) = sender_message_id(el) {
            st.msgid_to_s.insert(u.clone(), s.clone());
            if st
                .joined
                .iter()
                .any(|((r, _), n)| r == room_jid && n == nick)
            {
                // A reflection of our own puppet's message: learn U → S.
                st.learn_stanza_id(u, s.clone());
                return;
            }
        }
    }
    let our_nicks: Vec<String> = st
        .joined
        .iter()
        .filter(|((r, _), _)| r == room_jid)
        .map(|(_, n)| n.clone())
        .chain(std::iter::once(LISTENER_NICK.to_string()))
        .collect();
    let rcx = RoomContext {
        room: RoomRef::new(cx.network.as_str(), room.as_str()),
        room_jid: room_jid.to_string(),
        component: st.config.component.clone(),
        our_nicks,
    };
    let map = st.msgid_to_s.clone();
    let parsed = parse_groupchat(el, &rcx, &|id| map.get(id).cloned());
    match parsed {
        Parsed::Event(e) => {
            if is_ours(e.sender.user.user.as_str(), &st.config.component) {
                return;
            }
            let _ = cx.inbound.send(Inbound::new(e)).await;
        }
        Parsed::Reactions {
            remote_id,
            sender,
            target,
            keys,
        } => {
            let k = (
                room_jid.to_string(),
                sender.user.user.as_str().to_string(),
                target.as_str().to_string(),
            );
            let prev = st.reactions.get(&k).cloned().unwrap_or_default();
            let (added, removed) = diff_reactions(&prev, &keys);
            st.reactions.insert(k, keys);
            for (n, (key, add)) in added
                .into_iter()
                .map(|k| (k, true))
                .chain(removed.into_iter().map(|k| (k, false)))
                .enumerate()
            {
                let kind = if add {
                    EventKind::React {
                        target: target.clone(),
                        key,
                    }
                } else {
                    EventKind::Unreact {
                        target: target.clone(),
                        key,
                    }
                };
                let rid = MessageId::new(format!("{}#{n}", remote_id.as_str()));
                let e = junction_core::Event::new(rcx.room.clone(), rid, sender.clone(), 0, kind);
                let _ = cx.inbound.send(Inbound::new(e)).await;
            }
        }
        Parsed::Ignored(why) => tracing::debug!(why, "xmpp: stanza not bridged"),
    }
}

/// Most nick conflicts a puppet works around before it gives up on a room.
const MAX_NICK_ATTEMPTS: u32 = 10;

/// Presence addressed to one of our puppets: a 409 nick conflict makes it
/// retry with `nick[x]`, `nick[x]2`...; its own unavailable presence (kick,
/// ban, room gone) marks it not joined, so the next delivery joins again.
async fn on_puppet_presence(st: &mut State, conn: &mut Conn, el: &Element) -> bool {
    let (Some(to), Some(from)) = (el.attr("to"), el.attr("from")) else {
        return true;
    };
    let Some((room, nick)) = from.split_once('/') else {
        return true;
    };
    let puppet = to.split('/').next().unwrap_or(to).to_string();
    let key = (room.to_string(), puppet.clone());
    if st.joined.get(&key).map(String::as_str) != Some(nick) {
        return true;
    }
    match el.attr("type") {
        Some("error") => {
            let conflict = el
                .get_child("error", crate::inbound::NS_CLIENT)
                .is_some_and(|e| e.has_child("conflict", "urn:ietf:params:xml:ns:xmpp-stanzas"));
            st.joined.remove(&key);
            if !conflict {
                tracing::warn!(room, "xmpp: a puppet could not join");
                return true;
            }
            let Some((wanted, attempt)) = st.wanted.get(&key).cloned() else {
                return true;
            };
            if attempt + 1 > MAX_NICK_ATTEMPTS {
                tracing::warn!(room, "xmpp: no free nick for a puppet");
                return true;
            }
            let tag = crate::jid::parse_puppet(&puppet, &st.config.component)
                .and_then(|p| p.network.chars().next())
                .unwrap_or('x')
                .to_string();
            let next = outbound::next_nick(&wanted, &tag, attempt + 1);
            st.wanted.insert(key.clone(), (wanted, attempt + 1));
            st.joined.insert(key, next.clone());
            let id = st.new_id();
            send(
                conn,
                outbound::join(&format!("{puppet}/junction"), room, &next, &id),
            )
            .await
        }
        Some("unavailable") => {
            let own = el
                .children()
                .filter(|x| x.name() == "x")
                .flat_map(|x| x.children())
                .any(|c| c.name() == "status" && c.attr("code") == Some("110"));
            if own {
                tracing::info!(room, "xmpp: a puppet left or was removed from the room");
                st.joined.remove(&key);
            }
            true
        }
        _ => true,
    }
}

fn has_status(el: &Element, code: &str) -> bool {
    el.children()
        .filter(|x| x.name() == "x")
        .flat_map(|x| x.children())
        .any(|c| c.name() == "status" && c.attr("code") == Some(code))
}

/// The `<item>` of a MUC presence.
fn muc_item(el: &Element) -> Option<&Element> {
    el.children()
        .filter(|x| x.name() == "x")
        .flat_map(|x| x.children())
        .find(|c| c.name() == "item")
}

/// Room presence as the listener sees it → join, leave, nick change, kick, ban.
async fn on_room_presence(st: &mut State, cx: &AdapterContext, el: &Element) {
    let Some(from) = el.attr("from") else { return };
    let Some((room_jid, nick)) = from.split_once('/') else {
        return;
    };
    let rooms = cx.rooms.borrow().clone();
    let Some(room) = rooms
        .iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(room_jid))
        .cloned()
    else {
        return;
    };
    if has_status(el, "110") {
        st.listening.insert(room_jid.to_string());
        return;
    }
    let ty = el.attr("type");
    if ty == Some("error") {
        return;
    }
    let item = muc_item(el);
    let real = item.and_then(|i| i.attr("jid"));
    let ours = st
        .joined
        .iter()
        .any(|((r, _), n)| r == room_jid && n == nick)
        || nick == LISTENER_NICK
        || real.is_some_and(|j| is_ours(j, &st.config.component));
    let was_present = if ty == Some("unavailable") {
        st.occupants.remove(from)
    } else {
        !st.occupants.insert(from.to_string())
    };
    if ours || !st.listening.contains(room_jid) {
        return;
    }
    let user = el
        .get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .and_then(|c| c.attr("id"))
        .map_or_else(|| from.to_string(), |id| format!("occupant:{id}"));
    let sender = junction_core::Sender {
        user: junction_core::UserRef::new(cx.network.as_str(), user),
        display_name: nick.to_string(),
    };
    let reason = item
        .and_then(|i| i.children().find(|c| c.name() == "reason"))
        .map(Element::text)
        .filter(|r| !r.is_empty());
    let kind = if ty == Some("unavailable") {
        if has_status(el, "303") {
            let Some(new) = item.and_then(|i| i.attr("nick")) else {
                return;
            };
            st.occupants.insert(format!("{room_jid}/{new}"));
            EventKind::NickChange {
                new_name: new.to_string(),
            }
        } else if has_status(el, "307") || has_status(el, "301") {
            let actor = item
                .and_then(|i| i.children().find(|c| c.name() == "actor"))
                .and_then(|a| a.attr("nick"))
                .unwrap_or(room_jid)
                .to_string();
            let kicker = junction_core::Sender {
                user: junction_core::UserRef::new(
                    cx.network.as_str(),
                    format!("{room_jid}/{actor}"),
                ),
                display_name: actor,
            };
            let kind = if has_status(el, "301") {
                EventKind::Ban {
                    target: sender,
                    reason,
                }
            } else {
                EventKind::Kick {
                    target: sender,
                    reason,
                }
            };
            let id = MessageId::new(st.new_id());
            let room = RoomRef::new(cx.network.as_str(), room.as_str());
            let e = junction_core::Event::new(room, id, kicker, now_ms(), kind);
            let _ = cx.inbound.send(Inbound::new(e)).await;
            return;
        } else {
            EventKind::Leave {
                reason: el
                    .children()
                    .find(|c| c.name() == "status")
                    .map(Element::text)
                    .filter(|r| !r.is_empty()),
                quit: false,
            }
        }
    } else if was_present {
        return;
    } else {
        EventKind::Join
    };
    let id = MessageId::new(st.new_id());
    let room = RoomRef::new(cx.network.as_str(), room.as_str());
    let e = junction_core::Event::new(room, id, sender, now_ms(), kind);
    let _ = cx.inbound.send(Inbound::new(e)).await;
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
