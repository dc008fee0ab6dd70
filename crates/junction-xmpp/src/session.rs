//! The component connection (XEP-0114) and the adapter's run loop.
//!
//! One connection per component domain. The listener occupant
//! (`junction@<component>/junction`) joins every linked room and is the only
//! address whose copy of room traffic is read; puppets join a room the first
//! time they speak there. After a disconnect the loop reconnects with jittered
//! backoff and rejoins the listener and every puppet that was in a room.
//!
//! Delivery: a message is answered `Delivered` only once the room has
//! reflected it back (matched by its origin-id), with the room's stanza-id as
//! the id. What was sent but not reflected when the connection dropped is sent
//! again after the reconnect, unless the room's archive (XEP-0313), read on
//! rejoin from the stored per-room cursor, shows it arrived. The same archive
//! query backfills what other people said while the adapter was away.

use junction_core::clock::now_ms;
use lru::LruCache;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use junction_core::format::mention;
use junction_core::{
    AdapterContext, AdapterError, Admit, Delivery, EventKind, Inbound, MessageId, NetworkId,
    NetworkStatus, PuppetCap, PuppetLimits, RoomId, RoomRef, Sender, UserRef,
};
use junction_store::Store;
use minidom::Element;
use tokio::sync::{mpsc, oneshot};
use tokio_xmpp::connect::DnsConfig;
use tokio_xmpp::parsers::iq::Iq;
use tokio_xmpp::parsers::message::Message;
use tokio_xmpp::parsers::presence::Presence;
use tokio_xmpp::xmlstream::Timeouts;
use tokio_xmpp::{Component, Stanza};

use crate::config::XmppConfig;
use crate::depth::DepthBoundConnector;
use crate::inbound::{
    archived, diff_reactions, direct_message, error_condition, mam_fin, offered_moderation,
    parse_groupchat, room_stanza_id, self_ping_result, sender_message_id, Parsed, RoomContext,
    SelfPing, OUR_ID_PREFIX,
};
use crate::jid::{is_ours, puppet_jid};
use crate::outbound::{self, AdminItem, MamFrom, ModerationForm};

/// How many room stanza-ids are remembered for deduplication.
const DEDUPE_WINDOW: usize = 4096;
/// Most entries of each map of ids and reaction sets learnt from the rooms (least recently
/// used evicted first; the store stays the durable source of ids).
pub const MAX_REMEMBERED: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(10_000) {
    Some(n) => n,
    None => panic!("a nonzero constant"),
};
/// Interval of XEP-0199 pings to the server, which also keeps the stream's
/// read timeout from firing on a quiet link.
const PING_EVERY: Duration = Duration::from_secs(25);
/// Server pings left unanswered before the connection counts as dead.
const MAX_MISSED_PINGS: u32 = 2;
/// Interval of XEP-0410 self-pings of the listener and every puppet.
const SELF_PING_EVERY: Duration = Duration::from_secs(300);
/// How long a sent message may wait for the room's reflection (or an IQ for
/// its answer) before it is sent again.
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);
/// Sends of one delivery before it is given up.
const MAX_ATTEMPTS: u32 = 3;
/// How long the archive query after a (re)join may take before queued
/// deliveries go out anyway.
const BACKFILL_WITHIN: Duration = Duration::from_secs(20);
/// Messages per MAM page.
const MAM_PAGE: u32 = 100;

/// Store kv table: our message id `U` → the room's stanza-id `S`.
const KV_U2S: &str = "xmpp.u2s";
/// Store kv table: the room's stanza-id `S` of our message → our id `U`
/// (XEP-0308 corrections name `U`).
const KV_S2U: &str = "xmpp.s2u";
/// Store kv table: the room's stanza-id `S` of our message → the bare JID of
/// the occupant that sent it (retractions come from the sender).
const KV_S2P: &str = "xmpp.s2p";

/// The nick of the listener occupant.
pub const LISTENER_NICK: &str = "junction";

/// What a sent stanza waits for before its delivery is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Wait {
    /// The room's reflection of the message, by origin-id.
    Reflection,
    /// The IQ answer (result or error).
    Iq,
    /// The room's subject message from this nick.
    Subject { nick: String },
}

/// A delivery sent and not yet confirmed.
#[derive(Clone, Debug)]
struct Pending {
    delivery: Delivery,
    stanza: Element,
    wait: Wait,
    room: String,
    /// (room, occupant bare JID) that must be in the room to send it.
    sender: (String, String),
    sent: Instant,
    attempts: u32,
}

/// An occupant as the listener sees it.
#[derive(Clone, Debug, Default)]
struct Occupant {
    /// The real bare JID, where the room shows it.
    jid: Option<String>,
    /// XEP-0421 occupant id.
    occupant_id: Option<String>,
    /// Role and affiliation, as its last presence showed them: a moderator's retraction of
    /// someone else's message may cross, anyone else's may not.
    rights: Rights,
}

/// The listener's standing in a room.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Rights {
    affiliation: String,
    role: String,
}

impl Rights {
    /// The rights a MUC presence's `<item/>` gives (none and participant without one).
    fn of(item: Option<&Element>) -> Self {
        Rights {
            affiliation: item
                .and_then(|i| i.attr("affiliation"))
                .unwrap_or("none")
                .to_string(),
            role: item
                .and_then(|i| i.attr("role"))
                .unwrap_or("participant")
                .to_string(),
        }
    }
    fn moderator(&self) -> bool {
        self.role == "moderator" || matches!(self.affiliation.as_str(), "owner" | "admin")
    }
    fn admin(&self) -> bool {
        matches!(self.affiliation.as_str(), "owner" | "admin")
    }
}

/// An archive query in flight.
#[derive(Clone, Debug)]
struct MamQuery {
    room: RoomId,
    /// Only learning where the archive ends (first join): nothing is emitted.
    baseline: bool,
    /// The newest stanza-id seen in this query.
    last: Option<String>,
}

/// A cursor position to store once the event it follows is durable.
type CursorUpdate = (
    RoomRef,
    String,
    Option<oneshot::Receiver<Result<(), String>>>,
);

/// What the adapter remembers while it runs.
pub(crate) struct State {
    pub config: XmppConfig,
    pub store: Arc<dyn Store>,
    network: NetworkId,
    /// (room, puppet bare JID) → nick it holds there.
    pub joined: HashMap<(String, String), String>,
    /// (room, puppet bare JID) → the nick it wanted and how many conflicts it met.
    pub wanted: HashMap<(String, String), (String, u32)>,
    /// Occupants (`room/nick`) present in each room, as the listener sees them.
    occupants: HashMap<String, Occupant>,
    /// An occupant as events name them (`occupant:<id>` or `room@muc/nick`) → their real
    /// bare JID, where the room showed it to the listener; it rides on their events as
    /// [`Sender::address`], which gateway bans by bare JID match (bounded; kept after the
    /// occupant leaves, for what the archive still holds of them).
    real_jids: LruCache<String, String>,
    /// Rooms where the listener's own presence has arrived (occupants seen
    /// before it were already there: no Join events for them).
    pub listening: HashSet<String>,
    /// The listener's affiliation and role per room.
    rights: HashMap<String, Rights>,
    /// The form of message moderation (XEP-0425) each room offers, as its disco#info
    /// answered (`None`: neither form); a room not here has not answered (yet).
    moderation: HashMap<String, Option<ModerationForm>>,
    /// disco#info queries to rooms in flight: IQ id → room.
    disco: HashMap<String, String>,
    /// Rooms the listener could not join, with the reason.
    failed: HashMap<String, String>,
    /// The last subject seen per room (the one sent on join is not a change).
    subjects: HashMap<String, String>,
    /// Recent room stanza-ids already handled.
    pub seen: HashSet<String>,
    pub seen_order: VecDeque<String>,
    /// Our message id `U` → the room's stanza-id `S`, learnt from reflections (a cache of
    /// the store's table; bounded, an evicted id is read from the store).
    pub u_to_s: LruCache<String, String>,
    /// A sender's message id → room stanza-id, for corrections by XMPP users (bounded: a
    /// correction of a message older than the last [`MAX_REMEMBERED`] names its id as sent).
    pub msgid_to_s: LruCache<String, String>,
    /// (room, occupant, target) → that occupant's last reaction set (bounded).
    pub reactions: LruCache<(String, String, String), Vec<String>>,
    /// (room, puppet, target) → the set we sent for that puppet (bounded).
    pub our_reactions: LruCache<(String, String, String), Vec<String>>,
    /// Sent deliveries waiting for confirmation, by stanza id.
    pending: HashMap<String, Pending>,
    /// Deliveries that could not be sent at all (connection lost), in order.
    redo: Vec<Delivery>,
    /// Archive queries in flight, by IQ id (also their queryid).
    mam: HashMap<String, MamQuery>,
    /// Rooms whose archive is being read after a (re)join.
    backfilling: HashSet<String>,
    /// When the current backfill began; deliveries wait until it ends.
    resuming: Option<Instant>,
    /// Self-pings in flight: IQ id → (room, occupant bare JID or None for the listener).
    pings: HashMap<String, (String, Option<String>)>,
    /// The server ping in flight and how many went unanswered in a row.
    server_ping: Option<String>,
    missed_pings: u32,
    cursor_tx: Option<mpsc::UnboundedSender<CursorUpdate>>,
    next_id: u64,
    /// Notified to drop the current connection (the adapter then reconnects).
    pub reconnect: Arc<tokio::sync::Notify>,
    /// How many times the component has logged in and joined its rooms.
    pub sessions: Arc<std::sync::atomic::AtomicU64>,
    /// Incoming stanzas that lost elements nested deeper than the depth bound.
    pub cut_deep: Arc<std::sync::atomic::AtomicU64>,
    /// XEP-0050 forms sent and not yet submitted.
    adhoc: crate::adhoc::Sessions,
    /// Puppet occupants in rooms, keyed like `joined`, with their last activity: at most
    /// `[xmpp] max_occupants`, idle ones leave (see [`junction_core::PuppetCap`]).
    pub cap: PuppetCap<(String, String)>,
    /// Counts every refusal of the cap, for `/metrics`.
    pub cap_refused: Arc<AtomicU64>,
    /// Counts every action refused because its sender may not take it (a moderation
    /// announcement forged by an occupant), for `/metrics`.
    pub refused: Arc<AtomicU64>,
    /// When a refusal was last logged as a warning (then at most once a minute; the others
    /// at debug level, all of them counted), so a flood of forgeries cannot flood the log.
    refusal_warned: Option<Instant>,
}

impl State {
    /// True when the occupant `room/nick` is a moderator there (role moderator, or
    /// affiliation admin or owner), as its last presence showed.
    fn is_moderator(&self, occupant: &str) -> bool {
        self.occupants
            .get(occupant)
            .is_some_and(|o| o.rights.moderator())
    }

    /// Puts on `sender`, one of this network's occupants as events name them, the real bare
    /// JID the room showed for them, if it did: gateway bans by bare JID match it.
    fn address(&self, sender: &mut Sender) {
        if sender.address.is_some() || sender.user.network != self.network {
            return;
        }
        let user = sender.user.user.as_str();
        sender.address = self
            .real_jids
            .peek(user)
            .cloned()
            .or_else(|| self.occupants.get(user).and_then(|o| o.jid.clone()));
    }

    pub fn new(config: XmppConfig, store: Arc<dyn Store>) -> Self {
        Self {
            config,
            store,
            network: NetworkId::new("xmpp"),
            joined: HashMap::new(),
            wanted: HashMap::new(),
            occupants: HashMap::new(),
            real_jids: LruCache::new(MAX_REMEMBERED),
            listening: HashSet::new(),
            rights: HashMap::new(),
            moderation: HashMap::new(),
            disco: HashMap::new(),
            failed: HashMap::new(),
            subjects: HashMap::new(),
            seen: HashSet::new(),
            seen_order: VecDeque::new(),
            u_to_s: LruCache::new(MAX_REMEMBERED),
            msgid_to_s: LruCache::new(MAX_REMEMBERED),
            reactions: LruCache::new(MAX_REMEMBERED),
            our_reactions: LruCache::new(MAX_REMEMBERED),
            pending: HashMap::new(),
            redo: Vec::new(),
            mam: HashMap::new(),
            backfilling: HashSet::new(),
            resuming: None,
            pings: HashMap::new(),
            server_ping: None,
            missed_pings: 0,
            cursor_tx: None,
            next_id: 0,
            reconnect: Arc::new(tokio::sync::Notify::new()),
            sessions: Arc::default(),
            cut_deep: Arc::default(),
            adhoc: crate::adhoc::Sessions::new(),
            cap: PuppetCap::new(PuppetLimits::default()),
            cap_refused: Arc::default(),
            refused: Arc::default(),
            refusal_warned: None,
        }
    }

    fn listener(&self) -> String {
        format!("{}/{LISTENER_NICK}", self.listener_bare())
    }

    fn listener_bare(&self) -> String {
        format!("junction@{}", self.config.component)
    }

    fn new_id(&mut self) -> String {
        self.next_id += 1;
        let r: u64 = rand::random();
        format!("{OUR_ID_PREFIX}{r:016x}-{}", self.next_id)
    }

    fn kv(&self, table: &str, key: &str) -> Option<String> {
        match self.store.kv_get(table, key) {
            Ok(v) => v.and_then(|v| String::from_utf8(v).ok()),
            Err(e) => {
                tracing::warn!(error = %e, table, "xmpp: store lookup failed");
                None
            }
        }
    }

    fn kv_put(&self, table: &str, key: &str, value: &str) {
        if let Err(e) = self.store.kv_put(table, key, value.as_bytes()) {
            tracing::warn!(error = %e, table, "xmpp: could not store an id");
        }
    }

    /// The room's stanza-id `S` for one of our ids: `U` → `S` where known
    /// (older deliveries answered `U`), else the id itself (already `S`).
    fn stanza_id_for(&self, id: &str) -> String {
        if let Some(s) = self.u_to_s.peek(id) {
            return s.clone();
        }
        self.kv(KV_U2S, id).unwrap_or_else(|| id.to_string())
    }

    /// Our own message id `U` for a delivered id (`S`, or `U` itself).
    fn message_id_for(&self, id: &str) -> String {
        self.kv(KV_S2U, id).unwrap_or_else(|| id.to_string())
    }

    /// Records that the room reflected `sender`'s message `U` with stanza-id `S`.
    fn learn_stanza_id(&mut self, u: &str, s: &str, sender: &str) {
        self.kv_put(KV_U2S, u, s);
        self.kv_put(KV_S2U, s, u);
        self.kv_put(KV_S2P, s, sender);
        self.u_to_s.put(u.to_string(), s.to_string());
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

    /// Whether `nick` in `room` is the listener or one of our puppets.
    fn is_our_nick(&self, room: &str, nick: &str) -> bool {
        nick == LISTENER_NICK
            || self
                .joined
                .iter()
                .any(|((r, _), n)| r.eq_ignore_ascii_case(room) && n == nick)
    }

    /// Stores a cursor position once `ack` (if any) says the event is durable.
    fn advance_cursor(
        &self,
        room: &RoomId,
        s: &str,
        ack: Option<oneshot::Receiver<Result<(), String>>>,
    ) {
        if let Some(tx) = &self.cursor_tx {
            let _ = tx.send((
                RoomRef::new(self.network.as_str(), room.as_str()),
                s.to_string(),
                ack,
            ));
        }
    }
}

/// Writes cursor positions in order, each only after its event is durable; a
/// room whose event could not be recorded keeps its cursor where it was for
/// the rest of the run, so the next rejoin reads the archive from there.
fn spawn_cursor_writer(store: Arc<dyn Store>) -> mpsc::UnboundedSender<CursorUpdate> {
    let (tx, mut rx) = mpsc::unbounded_channel::<CursorUpdate>();
    tokio::spawn(async move {
        let mut stuck: HashSet<RoomRef> = HashSet::new();
        while let Some((room, s, ack)) = rx.recv().await {
            if stuck.contains(&room) {
                continue;
            }
            if let Some(ack) = ack {
                match ack.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(room = %room, error = %e, "xmpp: an event was not recorded; the archive cursor stays put");
                        stuck.insert(room);
                        continue;
                    }
                    Err(_) => {
                        stuck.insert(room);
                        continue;
                    }
                }
            }
            if let Err(e) = store.set_cursor(&room, &s) {
                tracing::warn!(room = %room, error = %e, "xmpp: could not store the archive cursor");
            }
        }
    });
    tx
}

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

/// Sets the status: Connected once the listener is in every linked room,
/// Degraded while some room refused it; unchanged while joins are under way.
fn update_status(st: &State, cx: &AdapterContext) {
    if st.failed.is_empty() {
        let all_in = cx.rooms.borrow().iter().all(|r| {
            st.listening
                .iter()
                .any(|l| l.eq_ignore_ascii_case(r.as_str()))
        });
        if all_in {
            cx.status.send_replace(NetworkStatus::Connected);
        }
    } else {
        let mut rooms: Vec<String> = st
            .failed
            .iter()
            .map(|(r, why)| format!("{r}: {why}"))
            .collect();
        rooms.sort();
        cx.status.send_replace(NetworkStatus::Degraded(format!(
            "rooms not joined: {}",
            rooms.join(", ")
        )));
    }
}

/// A reply to an admin command (a chat message or an ad-hoc command's answer), to send
/// when the gateway has answered.
type Reply = Element;

/// Runs the adapter until shutdown.
pub(crate) async fn run(mut st: State, mut cx: AdapterContext) -> Result<(), AdapterError> {
    st.network = cx.network.clone();
    st.cursor_tx = Some(spawn_cursor_writer(st.store.clone()));
    let (reply_tx, mut reply_rx) = mpsc::unbounded_channel::<Reply>();
    // Reconnect pacing: 250 ms doubling to 30 s, with jitter.
    let mut attempt = 0u32;
    cx.status.send_replace(NetworkStatus::Connecting);
    loop {
        if cx.shutdown.is_cancelled() {
            return Ok(());
        }
        let conn = tokio::select! {
            () = cx.shutdown.cancelled() => return Ok(()),
            c = connect(&st.config, &st.cut_deep) => c,
        };
        let mut conn = match conn {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "xmpp: component connection failed; retrying");
                cx.status.send_replace(NetworkStatus::Down(format!(
                    "cannot connect to {}: {e}",
                    st.config.server
                )));
                let pause = junction_core::clock::backoff(
                    attempt,
                    Duration::from_millis(250),
                    Duration::from_secs(30),
                );
                attempt = attempt.saturating_add(1);
                tokio::select! {
                    () = cx.shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(pause) => {}
                }
                continue;
            }
        };
        attempt = 0;
        tracing::info!(component = %st.config.component, "xmpp: component connected");
        // A fresh session: what the room told the last one no longer holds.
        st.listening.clear();
        st.occupants.clear();
        st.rights.clear();
        st.moderation.clear();
        st.disco.clear();
        st.subjects.clear();
        st.mam.clear();
        st.pings.clear();
        st.server_ping = None;
        st.missed_pings = 0;
        if !join_all(&mut st, &mut conn, &cx, true).await {
            cx.status
                .send_replace(NetworkStatus::Degraded("reconnecting".into()));
            continue;
        }
        st.sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        update_status(&st, &cx);
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.tick().await;
        let mut self_ping = tokio::time::interval(SELF_PING_EVERY);
        self_ping.tick().await;
        let mut check = tokio::time::interval(Duration::from_secs(2));
        let reconnect = st.reconnect.clone();
        let mut rooms_open = true;
        let why = loop {
            let accepting = st.resuming.is_none();
            tokio::select! {
                changed = cx.rooms.changed(), if rooms_open => {
                    if changed.is_err() {
                        rooms_open = false;
                        continue;
                    }
                    // Newly linked rooms: the listener joins them (joining
                    // again where it already is only refreshes its presence).
                    if !join_all(&mut st, &mut conn, &cx, false).await {
                        break "connection lost";
                    }
                }
                () = reconnect.notified() => {
                    tracing::info!("xmpp: dropping the component connection on request");
                    break "reconnect requested";
                }
                () = cx.shutdown.cancelled() => {
                    let _ = conn.send_end().await;
                    return Ok(());
                }
                d = cx.deliveries.recv(), if accepting => {
                    let Some(d) = d else { return Ok(()) };
                    if !deliver(&mut st, &mut conn, &cx, d).await {
                        break "connection lost";
                    }
                    let puppets = st
                        .joined
                        .keys()
                        .map(|(_, p)| p.as_str())
                        .collect::<std::collections::HashSet<_>>()
                        .len();
                    cx.puppets
                        .send_if_modified(|n| std::mem::replace(n, puppets) != puppets);
                }
                r = reply_rx.recv() => {
                    let Some(el) = r else { continue };
                    if !send(&mut conn, el).await {
                        break "connection lost";
                    }
                }
                s = conn.next() => {
                    let Some(s) = s else {
                        tracing::warn!("xmpp: component stream ended; reconnecting");
                        break "stream ended";
                    };
                    if !handle(&mut st, &mut conn, &cx, &reply_tx, from_stanza(s)).await {
                        break "connection lost";
                    }
                }
                _ = check.tick() => {
                    if !housekeeping(&mut st, &mut conn, &cx).await {
                        break "connection lost";
                    }
                }
                _ = ping.tick() => {
                    if st.server_ping.is_some() {
                        st.missed_pings += 1;
                        if st.missed_pings >= MAX_MISSED_PINGS {
                            tracing::warn!("xmpp: the server stopped answering pings; reconnecting");
                            break "server does not answer pings";
                        }
                    }
                    let id = st.new_id();
                    let el = outbound::ping(&st.config.component, &server_domain(&st.config.component), &id);
                    st.server_ping = Some(id);
                    if !send(&mut conn, el).await { break "connection lost"; }
                }
                _ = self_ping.tick() => {
                    if !self_ping_all(&mut st, &mut conn).await {
                        break "connection lost";
                    }
                }
            }
        };
        cx.status
            .send_replace(NetworkStatus::Degraded(format!("reconnecting: {why}")));
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

/// The listener joins every linked room and (after a reconnect) every puppet
/// its rooms again; each room's archive is then read from its cursor, and
/// deliveries wait until that is done.
async fn join_all(st: &mut State, conn: &mut Conn, cx: &AdapterContext, fresh: bool) -> bool {
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
        let known = st.listening.contains(room.as_str())
            || st.backfilling.contains(room.as_str())
            || st.mam.values().any(|q| q.room == *room);
        if (fresh || !known) && !start_backfill(st, conn, room).await {
            return false;
        }
        // Which form of message moderation the room offers: asked once per join or link.
        if !st.moderation.contains_key(room.as_str())
            && !st.disco.values().any(|r| r == room.as_str())
        {
            let id = st.new_id();
            st.disco.insert(id.clone(), room.as_str().to_string());
            if !send(conn, outbound::disco_info(&listener, room.as_str(), &id)).await {
                return false;
            }
        }
    }
    if fresh {
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
        st.resuming = Some(Instant::now());
    }
    true
}

/// Queries a room's archive from its cursor: everything after it, or on the
/// very first join only where the archive ends (nothing before the gateway
/// joined is bridged).
async fn start_backfill(st: &mut State, conn: &mut Conn, room: &RoomId) -> bool {
    let rref = RoomRef::new(st.network.as_str(), room.as_str());
    let (from, baseline) = match st.store.cursor(&rref) {
        Ok(Some(c)) if c.is_empty() => (MamFrom::Start, false),
        Ok(Some(c)) => (MamFrom::After(c), false),
        Ok(None) => (MamFrom::Last, true),
        Err(e) => {
            tracing::warn!(room = %room.as_str(), error = %e, "xmpp: cursor unreadable; no backfill");
            return true;
        }
    };
    send_mam(st, conn, room, &from, baseline).await
}

async fn send_mam(
    st: &mut State,
    conn: &mut Conn,
    room: &RoomId,
    from: &MamFrom,
    baseline: bool,
) -> bool {
    let id = st.new_id();
    let max = if baseline { 1 } else { MAM_PAGE };
    let el = outbound::mam_query(&st.listener(), room.as_str(), &id, &id, from, max);
    st.mam.insert(
        id,
        MamQuery {
            room: room.clone(),
            baseline,
            last: None,
        },
    );
    st.backfilling.insert(room.as_str().to_string());
    send(conn, el).await
}

/// Periodic work: resume deliveries when the backfill is over (or took too
/// long), and resend what the room has not confirmed in time.
async fn housekeeping(st: &mut State, conn: &mut Conn, cx: &AdapterContext) -> bool {
    if let Some(since) = st.resuming {
        if st.backfilling.is_empty() || since.elapsed() > BACKFILL_WITHIN {
            if !st.backfilling.is_empty() {
                tracing::warn!(rooms = ?st.backfilling, "xmpp: archive backfill is slow; sending queued messages now");
                st.backfilling.clear();
            }
            st.resuming = None;
            if !resume(st, conn, cx).await {
                return false;
            }
        }
        return true;
    }
    if !leave_idle(st, conn).await {
        return false;
    }
    let late: Vec<String> = st
        .pending
        .iter()
        .filter(|(_, p)| p.sent.elapsed() > CONFIRM_WITHIN)
        .map(|(k, _)| k.clone())
        .collect();
    for key in late {
        let Some(p) = st.pending.get(&key).cloned() else {
            continue;
        };
        if p.attempts >= MAX_ATTEMPTS {
            tracing::warn!(room = %p.room, "xmpp: the room never confirmed a message; giving up");
            answer(
                st,
                cx,
                &key,
                Err("the room did not confirm the message".into()),
            );
            continue;
        }
        tracing::info!(room = %p.room, "xmpp: no confirmation from the room; sending again");
        if !resend(st, conn, &key).await {
            return false;
        }
    }
    true
}

/// After a (re)connect: the messages still unconfirmed go out again, and
/// deliveries that never went out are rendered, in outbox order.
async fn resume(st: &mut State, conn: &mut Conn, cx: &AdapterContext) -> bool {
    let mut order: Vec<(u64, Option<String>, Option<Delivery>)> = st
        .pending
        .iter()
        .map(|(k, p)| (p.delivery.outbox_id, Some(k.clone()), None))
        .collect();
    order.extend(
        std::mem::take(&mut st.redo)
            .into_iter()
            .map(|d| (d.outbox_id, None, Some(d))),
    );
    order.sort_by_key(|(o, _, _)| *o);
    let mut rest = order.into_iter();
    while let Some((_, key, d)) = rest.next() {
        let ok = match (key, d) {
            (Some(k), _) => resend(st, conn, &k).await,
            (None, Some(d)) => deliver(st, conn, cx, d).await,
            _ => true,
        };
        if !ok {
            // Keep what did not go out for the next connection.
            st.redo.extend(rest.filter_map(|(_, _, d)| d));
            return false;
        }
    }
    true
}

/// Sends a pending stanza again, joining its sender first where needed.
async fn resend(st: &mut State, conn: &mut Conn, key: &str) -> bool {
    let Some(p) = st.pending.get_mut(key) else {
        return true;
    };
    p.attempts += 1;
    p.sent = Instant::now();
    let p = p.clone();
    let (room, who) = p.sender.clone();
    if who != st.listener_bare() && !st.joined.contains_key(&p.sender) {
        if let Some((wanted, attempt)) = st.wanted.get(&p.sender).cloned() {
            let nick = outbound::puppet_nick(
                &wanted,
                origin_tag(st, &who),
                attempt,
                st.config.origin_marks,
            );
            let id = st.new_id();
            if !send(
                conn,
                outbound::join(&format!("{who}/junction"), &room, &nick, &id),
            )
            .await
            {
                return false;
            }
            st.joined.insert(p.sender.clone(), nick);
        }
    }
    send(conn, p.stanza).await
}

/// Answers a pending delivery.
fn answer(st: &mut State, cx: &AdapterContext, key: &str, outcome: Result<Vec<MessageId>, String>) {
    if let Some(p) = st.pending.remove(key) {
        let _ = cx.delivered.send(p.delivery.answer(outcome));
    }
}

/// Answers a delivery at once.
fn answer_now(cx: &AdapterContext, d: &Delivery, outcome: Result<Vec<MessageId>, String>) {
    let _ = cx.delivered.send(d.answer(outcome));
}

/// XEP-0410: the listener and every puppet ping their own occupant JID.
async fn self_ping_all(st: &mut State, conn: &mut Conn) -> bool {
    let listener = st.listener();
    let rooms: Vec<String> = st.listening.iter().cloned().collect();
    for room in rooms {
        let id = st.new_id();
        st.pings.insert(id.clone(), (room.clone(), None));
        let to = format!("{room}/{LISTENER_NICK}");
        if !send(conn, outbound::ping(&listener, &to, &id)).await {
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
        st.pings
            .insert(id.clone(), (room.clone(), Some(puppet.clone())));
        let el = outbound::ping(
            &format!("{puppet}/junction"),
            &format!("{room}/{nick}"),
            &id,
        );
        if !send(conn, el).await {
            return false;
        }
    }
    true
}

/// Renders one delivery. Messages are answered when the room reflects them
/// (or rejects them); membership changes at once. False when the connection
/// is lost: the delivery is then kept and goes out after the reconnect.
async fn deliver(st: &mut State, conn: &mut Conn, cx: &AdapterContext, d: Delivery) -> bool {
    let room = d.target.room.as_str().to_string();
    let gateway = d.event.sender.user.network.is_gateway();
    let sender = d.event.sender.clone();
    let (puppet, from) = if gateway {
        (st.listener_bare(), st.listener())
    } else {
        let p = puppet_jid(&sender.user, &st.config.component);
        let f = format!("{p}/junction");
        (p, f)
    };
    let key = (room.clone(), puppet.clone());
    match &d.event.kind {
        EventKind::Kick { .. } | EventKind::Ban { .. } => {
            return kick_or_ban(st, conn, cx, d).await;
        }
        EventKind::Leave { reason, .. } => {
            if !gateway {
                st.cap.remove(&key);
            }
            let Some(nick) = (!gateway).then(|| st.joined.remove(&key)).flatten() else {
                answer_now(cx, &d, Ok(Vec::new()));
                return true;
            };
            if !send(
                conn,
                outbound::leave(&from, &room, &nick, reason.as_deref()),
            )
            .await
            {
                st.redo.push(d);
                return false;
            }
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        EventKind::Join | EventKind::NickChange { .. } if gateway => {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        _ => {}
    }
    if !gateway && st.joined.contains_key(&key) {
        let speaks = !matches!(d.event.kind, EventKind::Join | EventKind::NickChange { .. });
        st.cap.touch(&key, now_ms(), speaks);
    }
    if !gateway && !st.joined.contains_key(&key) {
        // A rename of someone whose puppet is not in the room shows nothing: it must not
        // make an occupant (a join-and-rename loop would make one per name).
        if matches!(d.event.kind, EventKind::NickChange { .. }) {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        match admit_occupant(st, conn, &key, &d).await {
            Some(true) => {}
            Some(false) => return refused_occupant(st, conn, cx, d).await,
            None => {
                st.redo.push(d);
                return false;
            }
        }
        let wanted = match &d.event.kind {
            EventKind::NickChange { new_name } => new_name.clone(),
            _ if sender.display_name.is_empty() => sender.user.user.as_str().to_string(),
            _ => sender.display_name.clone(),
        };
        let nick =
            outbound::puppet_nick(&wanted, origin_tag(st, &puppet), 0, st.config.origin_marks);
        let id = st.new_id();
        if !send(conn, outbound::join(&from, &room, &nick, &id)).await {
            st.redo.push(d);
            return false;
        }
        if let Err(e) = st.store.set_puppet(&st.network, &sender.user, &puppet) {
            tracing::warn!(error = %e, "xmpp: could not store a puppet");
        }
        st.wanted.insert(key.clone(), (wanted, 0));
        st.joined.insert(key.clone(), nick);
        if matches!(d.event.kind, EventKind::Join | EventKind::NickChange { .. }) {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
    }
    // The id derives from the outbox row: a delivery handed out again after a
    // gateway restart carries the same origin-id, so one the room already has
    // is recognised instead of sent twice.
    let id = delivery_message_id(&d);
    if let Some(s) = st.kv(KV_U2S, &id) {
        tracing::debug!(room, "xmpp: the room already has this message");
        answer_now(cx, &d, Ok(vec![MessageId::new(s)]));
        return true;
    }
    let target = d.target_ids.first().map(|t| t.as_str().to_string());
    let mut sender_key = key.clone();
    let (el, wait) = match &d.event.kind {
        EventKind::Message(m) => {
            let mut text = outbound::styled(&mention_nicks(st, &room, &m.body));
            for a in &m.attachments {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&a.url);
            }
            let emote = m.kind == junction_core::MessageKind::Emote;
            let el = match (d.reply_to.first(), m.attachments.first()) {
                (Some(r), _) => {
                    let s = st.stanza_id_for(r.as_str());
                    outbound::reply(&from, &room, &id, &s, None, None, &text)
                }
                (None, Some(a)) if m.body.is_empty() && m.attachments.len() == 1 => {
                    outbound::attachment(&from, &room, &id, &a.url)
                }
                _ => outbound::message(&from, &room, &id, &text, emote),
            };
            (el, Wait::Reflection)
        }
        EventKind::Edit { body, .. } => {
            let Some(t) = target else {
                answer_now(cx, &d, Err("edit target unknown here".into()));
                return true;
            };
            let u = st.message_id_for(&t);
            (
                outbound::correction(&from, &room, &id, &u, &outbound::styled(body)),
                Wait::Reflection,
            )
        }
        EventKind::Redact { reason, .. } => {
            let Some(t) = target else {
                answer_now(cx, &d, Err("redact target unknown here".into()));
                return true;
            };
            let s = st.stanza_id_for(&t);
            let owner = st.kv(KV_S2P, &s);
            let listener_bare = st.listener_bare();
            match owner {
                // Our own occupant's message: it retracts it (XEP-0424).
                Some(o) if o == puppet => (
                    outbound::retraction(&from, &room, &id, &s),
                    Wait::Reflection,
                ),
                Some(o) if o == listener_bare => {
                    sender_key = (room.clone(), o);
                    (
                        outbound::retraction(&st.listener(), &room, &id, &s),
                        Wait::Reflection,
                    )
                }
                // Someone else's, removed by a moderator of the origin room: XEP-0425
                // moderation, naming the moderator, if the listener may. Nobody else's
                // removal of another person's message is made: the gateway lends no power.
                _ => {
                    if !d.event.by_moderator {
                        answer_now(
                            cx,
                            &d,
                            Err("the sender may not remove another person's message".into()),
                        );
                        return true;
                    }
                    if !st.rights.get(&room).is_some_and(Rights::moderator) {
                        answer_now(
                            cx,
                            &d,
                            Err(format!(
                                "the gateway is not a moderator in {room}: cannot remove another person's message"
                            )),
                        );
                        return true;
                    }
                    // In the form the room offers; one that has not said asks in the
                    // current form, one that offers neither is not asked.
                    let form = match st.moderation.get(&room) {
                        Some(Some(form)) => *form,
                        None => ModerationForm::Retract,
                        Some(None) => {
                            answer_now(
                                cx,
                                &d,
                                Err(format!(
                                    "{room} offers no message moderation (XEP-0425): cannot remove another person's message"
                                )),
                            );
                            return true;
                        }
                    };
                    sender_key = (room.clone(), listener_bare);
                    let why = junction_core::authority::moderation_reason(
                        &d.event.sender,
                        reason.as_deref(),
                    );
                    (
                        outbound::moderate(form, &st.listener(), &room, &id, &s, Some(&why)),
                        Wait::Iq,
                    )
                }
            }
        }
        EventKind::React { key: k, .. } | EventKind::Unreact { key: k, .. } => {
            let Some(t) = target else {
                answer_now(cx, &d, Err("reaction target unknown here".into()));
                return true;
            };
            let s = st.stanza_id_for(&t);
            let set = st
                .our_reactions
                .get_or_insert_mut((room.clone(), puppet.clone(), s.clone()), Vec::new);
            if matches!(d.event.kind, EventKind::React { .. }) {
                if !set.contains(k) && set.len() < junction_core::limits::MAX_REACTIONS_PER_ITEM {
                    set.push(k.clone());
                }
            } else {
                set.retain(|x| x != k);
            }
            let keys = set.clone();
            (
                outbound::reactions(&from, &room, &id, &s, &keys),
                Wait::Reflection,
            )
        }
        EventKind::Topic { text } => {
            let nick = st
                .joined
                .get(&key)
                .cloned()
                .unwrap_or_else(|| LISTENER_NICK.to_string());
            (
                outbound::subject(&from, &room, &id, text),
                Wait::Subject { nick },
            )
        }
        EventKind::Join => {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        EventKind::NickChange { new_name } => {
            let id = st.new_id();
            let nick =
                outbound::puppet_nick(new_name, origin_tag(st, &puppet), 0, st.config.origin_marks);
            if !send(conn, outbound::join(&from, &room, &nick, &id)).await {
                st.redo.push(d);
                return false;
            }
            st.joined.insert(key.clone(), nick);
            st.wanted.insert(key, (new_name.clone(), 0));
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        EventKind::Leave { .. } | EventKind::Kick { .. } | EventKind::Ban { .. } => {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
    };
    send_pending(st, conn, d, id, el, wait, sender_key).await
}

/// Takes a slot of the occupant cap for the puppet `key` before it joins: Some(true) when it
/// may join (a puppet making way has left first), Some(false) when refused (counted), None
/// when the connection was lost.
async fn admit_occupant(
    st: &mut State,
    conn: &mut Conn,
    key: &(String, String),
    d: &Delivery,
) -> Option<bool> {
    // A slot the puppet still holds without being in the room (kicked, no free nick) is
    // taken anew.
    st.cap.remove(key);
    let speaks = !matches!(d.event.kind, EventKind::Join);
    match st.cap.admit(key, now_ms(), speaks) {
        Admit::Present | Admit::Free => Some(true),
        Admit::Evict(old) => {
            tracing::info!(room = %old.0, puppet = %old.1, "xmpp: the cap of occupants is reached; the least recently active puppet leaves");
            if let Some(nick) = st.joined.remove(&old) {
                let from = format!("{}/junction", old.1);
                if !send(conn, outbound::leave(&from, &old.0, &nick, None)).await {
                    return None;
                }
            }
            Some(true)
        }
        Admit::Refused => {
            st.cap_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if st.cap.warn_now(now_ms()) {
                tracing::warn!(max_occupants = st.cap.limits().max, "xmpp: the cap of puppet occupants is reached: a newcomer gets no occupant (their messages are said by the gateway's own occupant). Further refusals are counted in /metrics only.");
            } else {
                tracing::debug!(room = %key.0, puppet = %key.1, "xmpp: no occupant: the cap is reached");
            }
            Some(false)
        }
    }
}

/// Renders a delivery whose sender got no occupant: a message is said by the listener as
/// `<name> text`, a topic change as a line; a join is nothing to show; anything else is
/// given up.
async fn refused_occupant(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    d: Delivery,
) -> bool {
    let name = d.event.sender.display_name.clone();
    let line = match &d.event.kind {
        EventKind::Message(m) => {
            let mut text = outbound::styled(&m.body);
            for a in &m.attachments {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&a.url);
            }
            if m.kind == junction_core::MessageKind::Emote {
                format!("* {name} {text}")
            } else {
                format!("<{name}> {text}")
            }
        }
        EventKind::Topic { text } => format!("{name} set the topic: {text}"),
        EventKind::Join => {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        _ => {
            answer_now(
                cx,
                &d,
                Err("the sender has no occupant here: the cap of occupants is reached".into()),
            );
            return true;
        }
    };
    send_notice(st, conn, d, &line).await
}

/// Puppets idle for the idle timeout leave their rooms. False when the connection is lost.
async fn leave_idle(st: &mut State, conn: &mut Conn) -> bool {
    for key in st.cap.take_idle(now_ms()) {
        let Some(nick) = st.joined.remove(&key) else {
            continue;
        };
        tracing::info!(room = %key.0, puppet = %key.1, "xmpp: an idle puppet leaves");
        let from = format!("{}/junction", key.1);
        if !send(conn, outbound::leave(&from, &key.0, &nick, None)).await {
            return false;
        }
    }
    true
}

/// Our message id (`U`, sent as id and origin-id) for a delivery: stable for
/// its outbox row, target and event, so a redelivery reuses it.
fn delivery_message_id(d: &Delivery) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(d.outbox_id.to_be_bytes());
    h.update(d.target.to_string().as_bytes());
    h.update([0]);
    h.update(d.event.id.to_string().as_bytes());
    let digest = h.finalize();
    format!("{OUR_ID_PREFIX}{}", hex::encode(&digest[..12]))
}

/// Sends a stanza whose delivery is answered later; kept for a resend if
/// the connection drops first.
async fn send_pending(
    st: &mut State,
    conn: &mut Conn,
    d: Delivery,
    id: String,
    el: Element,
    wait: Wait,
    sender: (String, String),
) -> bool {
    let room = d.target.room.as_str().to_string();
    st.pending.insert(
        id,
        Pending {
            delivery: d,
            stanza: el.clone(),
            wait,
            room,
            sender,
            sent: Instant::now(),
            attempts: 1,
        },
    );
    send(conn, el).await
}

/// A line from the listener (gateway notices).
async fn send_notice(st: &mut State, conn: &mut Conn, d: Delivery, text: &str) -> bool {
    let room = d.target.room.as_str().to_string();
    let id = st.new_id();
    let el = outbound::message(&st.listener(), &room, &id, text, false);
    let sender = (room, st.listener_bare());
    send_pending(st, conn, d, id, el, Wait::Reflection, sender).await
}

/// Finds an occupant of `room` from a user id as this adapter writes them
/// (`occupant:<id>`, `room/nick`) or a bare JID: its nick and real JID.
fn find_occupant(st: &State, room: &str, user: &str) -> (Option<String>, Option<String>) {
    let in_room = |k: &str| {
        k.split_once('/')
            .is_some_and(|(r, _)| r.eq_ignore_ascii_case(room))
    };
    let nick_of = |k: &str| k.split_once('/').map(|(_, n)| n.to_string());
    if let Some(oid) = user.strip_prefix("occupant:") {
        return st
            .occupants
            .iter()
            .find(|(k, o)| in_room(k) && o.occupant_id.as_deref() == Some(oid))
            .map_or((None, None), |(k, o)| (nick_of(k), o.jid.clone()));
    }
    if let Some((r, nick)) = user.split_once('/') {
        if r.eq_ignore_ascii_case(room) {
            let jid = st.occupants.get(user).and_then(|o| o.jid.clone());
            return (Some(nick.to_string()), jid);
        }
    }
    let bare = user.to_lowercase();
    let nick = st
        .occupants
        .iter()
        .find(|(k, o)| in_room(k) && o.jid.as_deref() == Some(bare.as_str()))
        .and_then(|(k, _)| nick_of(k));
    (nick, user.contains('@').then_some(bare))
}

/// A kick or ban. From ordinary users it is reflected as a notice line; from
/// the gateway it is enforced: on a user of this network through the MUC
/// admin protocol (where the listener has the rights), and on a user of
/// another network by that user's puppet leaving.
async fn kick_or_ban(st: &mut State, conn: &mut Conn, cx: &AdapterContext, d: Delivery) -> bool {
    let (t, reason, ban) = match &d.event.kind {
        EventKind::Kick { target, reason } => (target.clone(), reason.clone(), false),
        EventKind::Ban { target, reason } => (target.clone(), reason.clone(), true),
        _ => return true,
    };
    let room = d.target.room.as_str().to_string();
    if !d.event.sender.user.network.is_gateway() {
        let verb = if ban { "banned" } else { "kicked" };
        let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
        let text = format!(
            "{} {verb} {}{why}",
            d.event.sender.display_name, t.display_name
        );
        return send_notice(st, conn, d, &text).await;
    }
    if t.user.network != st.network {
        let key = (room.clone(), puppet_jid(&t.user, &st.config.component));
        st.cap.remove(&key);
        if let Some(nick) = st.joined.remove(&key) {
            let from = format!("{}/junction", key.1);
            if !send(
                conn,
                outbound::leave(&from, &room, &nick, reason.as_deref()),
            )
            .await
            {
                answer_now(cx, &d, Ok(Vec::new()));
                return false;
            }
        }
        answer_now(cx, &d, Ok(Vec::new()));
        return true;
    }
    let rights = st.rights.get(&room).cloned().unwrap_or_default();
    let (nick, jid) = find_occupant(st, &room, t.user.user.as_str());
    let item = if ban {
        if !rights.admin() {
            answer_now(
                cx,
                &d,
                Err(format!(
                    "the gateway is not an admin or owner of {room}; it cannot ban there"
                )),
            );
            return true;
        }
        let Some(jid) = jid else {
            answer_now(
                cx,
                &d,
                Err(format!(
                    "the real JID of {} is unknown in {room}",
                    t.display_name
                )),
            );
            return true;
        };
        AdminItem::Ban { jid }
    } else {
        if !rights.moderator() {
            answer_now(
                cx,
                &d,
                Err(format!(
                    "the gateway is not a moderator in {room}; it cannot kick there"
                )),
            );
            return true;
        }
        let Some(nick) = nick else {
            answer_now(cx, &d, Err(format!("{} is not in {room}", t.display_name)));
            return true;
        };
        AdminItem::Kick { nick }
    };
    let id = st.new_id();
    let el = outbound::admin(&st.listener(), &room, &id, &item, reason.as_deref());
    let sender = (room, st.listener_bare());
    send_pending(st, conn, d, id, el, Wait::Iq, sender).await
}

/// Handles one stanza from the server; false when the connection is unusable.
async fn handle(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    el: Element,
) -> bool {
    match el.name() {
        "iq" => match el.attr("type") {
            Some("get" | "set") => answer_iq(st, conn, cx, replies, &el).await,
            _ => on_iq_answer(st, conn, cx, &el).await,
        },
        "message" => on_message(st, conn, cx, replies, &el).await,
        "presence" => {
            if el.attr("to") == Some(st.listener().as_str()) {
                on_room_presence(st, cx, &el).await;
                if is_new_locked_room(&el) {
                    // The listener's join created the room, and the server keeps a new room
                    // locked until its owner configures it (XEP-0045 §10.1.2): accept the
                    // default configuration, an "instant room", so people can come in.
                    let room = el
                        .attr("from")
                        .and_then(|f| f.split('/').next())
                        .unwrap_or_default()
                        .to_string();
                    tracing::info!(%room, "xmpp: created the room; unlocking it");
                    let id = st.new_id();
                    return send(conn, outbound::instant_room(&st.listener(), &room, &id)).await;
                }
                true
            } else {
                on_puppet_presence(st, conn, &el).await
            }
        }
        _ => true,
    }
}

/// True for the listener's own presence (110) in a room it just created (201).
fn is_new_locked_room(el: &Element) -> bool {
    el.attr("type").is_none() && has_status(el, "110") && has_status(el, "201")
}

/// An IQ result or error: a server ping, a self-ping, an archive query's end,
/// or the answer to an admin/moderation request.
async fn on_iq_answer(st: &mut State, conn: &mut Conn, cx: &AdapterContext, el: &Element) -> bool {
    let Some(id) = el.attr("id") else { return true };
    if st.server_ping.as_deref() == Some(id) {
        st.server_ping = None;
        st.missed_pings = 0;
        return true;
    }
    if let Some((room, who)) = st.pings.remove(id) {
        if self_ping_result(el) == SelfPing::Gone {
            tracing::info!(
                room,
                "xmpp: a self-ping says we left the room; joining again"
            );
            let jid = st.new_id();
            let join = match who {
                None => {
                    st.listening.remove(&room);
                    outbound::join(&st.listener(), &room, LISTENER_NICK, &jid)
                }
                Some(p) => {
                    let Some(nick) = st.joined.get(&(room.clone(), p.clone())).cloned() else {
                        return true;
                    };
                    outbound::join(&format!("{p}/junction"), &room, &nick, &jid)
                }
            };
            return send(conn, join).await;
        }
        return true;
    }
    if let Some(q) = st.mam.remove(id) {
        return on_mam_end(st, conn, q, el).await;
    }
    if let Some(room) = st.disco.remove(id) {
        if el.attr("type") == Some("result") {
            let form = offered_moderation(el);
            tracing::debug!(room, ?form, "xmpp: the room's message moderation");
            st.moderation.insert(room, form);
        } else {
            // Not known: the moderation request keeps its current form, and the next join
            // asks again.
            tracing::debug!(room, "xmpp: the room did not answer disco#info");
        }
        return true;
    }
    if st.pending.get(id).is_some_and(|p| p.wait == Wait::Iq) {
        let room = st
            .pending
            .get(id)
            .map(|p| p.room.clone())
            .unwrap_or_default();
        let outcome = if el.attr("type") == Some("result") {
            Ok(Vec::new())
        } else {
            let cond = error_condition(el).unwrap_or_else(|| "error".into());
            Err(format!("{room} refused: {cond}"))
        };
        answer(st, cx, id, outcome);
    }
    true
}

/// The end of one archive page: next page, or the room's backfill is done.
async fn on_mam_end(st: &mut State, conn: &mut Conn, q: MamQuery, el: &Element) -> bool {
    let room = q.room.as_str().to_string();
    if el.attr("type") == Some("error") {
        let cond = error_condition(el).unwrap_or_else(|| "error".into());
        if !q.baseline && cond == "item-not-found" {
            tracing::warn!(room, "xmpp: the archive no longer has our cursor; messages in the gap are not backfilled");
            return send_mam(st, conn, &q.room, &MamFrom::Last, true).await;
        }
        tracing::warn!(room, condition = %cond, "xmpp: the room's archive cannot be read; messages sent while the gateway was away are not backfilled");
        st.backfilling.remove(&room);
        return true;
    }
    let (complete, last) = mam_fin(el).unwrap_or((true, None));
    let last = last.or(q.last);
    if q.baseline {
        st.advance_cursor(&q.room, last.as_deref().unwrap_or(""), None);
        st.backfilling.remove(&room);
        return true;
    }
    match last {
        Some(l) if !complete => send_mam(st, conn, &q.room, &MamFrom::After(l), false).await,
        _ => {
            st.backfilling.remove(&room);
            true
        }
    }
}

/// How a room message reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Via {
    /// Live, the listener's copy.
    Live,
    /// From the archive, missed while away: bridged.
    Archive,
    /// From the archive, only to learn where it ends: not bridged.
    Baseline,
}

async fn on_message(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    el: &Element,
) -> bool {
    let Some(from) = el.attr("from") else {
        return true;
    };
    let from_bare = from.split('/').next().unwrap_or(from).to_string();
    if el.has_child("result", "urn:xmpp:mam:2") {
        if let Some(a) = archived(el, &from_bare) {
            let Some(q) = st.mam.get_mut(&a.queryid) else {
                return true;
            };
            q.last = Some(a.stanza_id.clone());
            let via = if q.baseline {
                Via::Baseline
            } else {
                Via::Archive
            };
            on_room_message(st, cx, &a.message, via).await;
        }
        return true;
    }
    match el.attr("type") {
        Some("groupchat") => {
            if el.attr("to") == Some(st.listener().as_str()) {
                on_room_message(st, cx, el, Via::Live).await;
            }
            true
        }
        Some("error") => on_message_error(st, conn, cx, el).await,
        _ => {
            let rooms = linked_rooms(cx);
            if let Some(dm) = direct_message(el, &st.config.component, &st.listener_bare(), &rooms)
            {
                command(st, cx, replies, dm);
            }
            true
        }
    }
}

/// A person wrote to the gateway: the text goes to the gateway as a command,
/// and its answer comes back as a chat message from the address written to (none when
/// the gateway ignored the command: an empty answer).
fn command(
    st: &mut State,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    dm: crate::inbound::DirectMessage,
) {
    let id = st.new_id();
    let (from, to) = (dm.from, dm.to);
    run_command(st, cx, replies, &dm.bare, dm.body, move |answer| {
        let text = match answer {
            Ok(t) if t.trim().is_empty() => return None,
            Ok(t) | Err(t) => t,
        };
        Some(outbound::chat(&to, &from, &id, &text))
    });
}

/// Sends `text` to the gateway as a command from `bare` (the sender's bare JID, the
/// identity the network vouches for) and waits, in a task of its own, for the answer:
/// `finish` turns it (Err when the gateway could not be asked or did not answer in time)
/// into the stanza to send back, if any.
fn run_command(
    st: &State,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    bare: &str,
    text: String,
    finish: impl FnOnce(Result<String, String>) -> Option<Element> + Send + 'static,
) {
    let name = bare.split('@').next().unwrap_or(bare).to_string();
    let from = vec![UserRef::new(st.network.as_str(), bare.to_string())];
    tracing::info!(from = %bare, "xmpp: a command for the gateway");
    let (commands, replies) = (cx.commands.clone(), replies.clone());
    tokio::spawn(async move {
        let answer = junction_core::adapter::ask(&commands, from, name, text).await;
        if let Some(reply) = finish(answer) {
            let _ = replies.send(reply);
        }
    });
}

/// A XEP-0050 request: answered at once (a form, a cancel, an error), or sent to the
/// gateway as the command line it stands for and answered with the gateway's reply.
fn adhoc_command(
    st: &mut State,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    el: &Element,
    req: &crate::adhoc::Request,
) -> Option<Element> {
    use crate::adhoc::{completed, error_iq, result_iq, Refusal, Step};
    let from = el.attr("from").unwrap_or_default();
    let rooms = linked_rooms(cx);
    let Some(bare) = crate::inbound::person(from, &st.config.component, &rooms) else {
        return Some(error_iq(el, Refusal::FORBIDDEN));
    };
    match st.adhoc.step(req, from, Instant::now()) {
        Step::Answer(c) => Some(result_iq(el, c)),
        Step::Refuse(r) => Some(error_iq(el, r)),
        Step::Run {
            text,
            node,
            sessionid,
        } => {
            let request = el.clone();
            run_command(st, cx, replies, &bare, text, move |answer| {
                let (text, ok) = match answer {
                    Ok(t) => (t, true),
                    Err(t) => (t, false),
                };
                Some(result_iq(&request, completed(&node, &sessionid, &text, ok)))
            });
            None
        }
    }
}

/// An error bounced for something we sent. A message from an occupant that
/// is not in the room (not joined yet, nick conflict, removed) is sent again
/// after a join; a topic the puppet may not set becomes a notice line;
/// anything else gives the delivery up with the reason.
async fn on_message_error(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    el: &Element,
) -> bool {
    let Some(id) = el.attr("id") else { return true };
    let Some(p) = st.pending.get(id).cloned() else {
        tracing::debug!(error = ?error_condition(el), "xmpp: an error for a message not waiting");
        return true;
    };
    let cond = error_condition(el).unwrap_or_else(|| "error".into());
    tracing::info!(room = %p.room, condition = %cond, "xmpp: the room bounced a message");
    if let Wait::Subject { .. } = p.wait {
        if let EventKind::Topic { text } = &p.delivery.event.kind {
            st.pending.remove(id);
            let listener_may = p.sender.1 != st.listener_bare()
                && p.delivery.event.by_moderator
                && st.rights.get(&p.room).is_some_and(Rights::moderator);
            if listener_may {
                // The puppet may not change the subject, the listener may (a moderator), and
                // does so for a moderator of the origin room only.
                let sid = st.new_id();
                let el = outbound::subject(&st.listener(), &p.room, &sid, text);
                let sender = (p.room.clone(), st.listener_bare());
                let wait = Wait::Subject {
                    nick: LISTENER_NICK.to_string(),
                };
                return send_pending(st, conn, p.delivery.clone(), sid, el, wait, sender).await;
            }
            let line = format!(
                "{} changed the topic to: {text}",
                p.delivery.event.sender.display_name
            );
            return send_notice(st, conn, p.delivery.clone(), &line).await;
        }
    }
    if cond == "not-acceptable" && p.attempts < MAX_ATTEMPTS {
        if p.sender.1 == st.listener_bare() {
            let jid = st.new_id();
            if !send(
                conn,
                outbound::join(&st.listener(), &p.room, LISTENER_NICK, &jid),
            )
            .await
            {
                return false;
            }
        }
        return resend(st, conn, id).await;
    }
    answer(
        st,
        cx,
        id,
        Err(format!("{} refused the message: {cond}", p.room)),
    );
    true
}
/// Every IQ get/set gets an answer: ping → result, disco#info → identity and
/// features, disco#items → the ad-hoc commands (on their node), an ad-hoc
/// command → its form or its outcome (later, once the gateway answered),
/// anything else → service-unavailable.
async fn answer_iq(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    el: &Element,
) -> bool {
    use crate::adhoc::{NS_COMMANDS, NS_DISCO_INFO, NS_DISCO_ITEMS};
    let ty = el.attr("type").unwrap_or_default();
    if ty != "get" && ty != "set" {
        return true;
    }
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return true;
    };
    // The gateway's own addresses (the component and the listener) take commands;
    // puppets do not.
    let to_bare = to.split('/').next().unwrap_or(to);
    let gateway = to_bare.eq_ignore_ascii_case(&st.config.component)
        || to_bare.eq_ignore_ascii_case(&st.listener_bare());
    if gateway {
        if let Some(req) = crate::adhoc::parse_request(el) {
            return match adhoc_command(st, cx, replies, el, &req) {
                Some(answer) => send(conn, answer).await,
                None => true,
            };
        }
    }
    let id = el.attr("id").unwrap_or_default().to_string();
    let ns = crate::inbound::NS_CLIENT;
    let mut reply = Element::builder("iq", ns).build();
    let mut refuse = None;
    if el.has_child("ping", "urn:xmpp:ping") {
        // result, no payload
    } else if let Some(q) = el.get_child("query", NS_DISCO_INFO) {
        let node = q.attr("node");
        if let Some(info) = node.filter(|_| gateway).and_then(crate::adhoc::node_info) {
            reply.append_child(info);
        } else {
            let mut query = Element::builder("query", NS_DISCO_INFO).build();
            let (cat, kind) = if to.contains('@') {
                ("client", "bot")
            } else {
                ("gateway", "xmpp")
            };
            let mut ident = Element::builder("identity", NS_DISCO_INFO).build();
            set(&mut ident, "category", cat);
            set(&mut ident, "type", kind);
            set(&mut ident, "name", "Junction");
            query.append_child(ident);
            let commands = gateway.then_some(NS_COMMANDS);
            for f in [
                NS_DISCO_INFO,
                "urn:xmpp:ping",
                "urn:xmpp:message-correct:0",
                "urn:xmpp:message-retract:1",
                "urn:xmpp:reactions:0",
                "urn:xmpp:reply:0",
            ]
            .into_iter()
            .chain(commands)
            {
                let mut fe = Element::builder("feature", NS_DISCO_INFO).build();
                set(&mut fe, "var", f);
                query.append_child(fe);
            }
            if let Some(node) = node {
                set(&mut query, "node", node.to_string());
            }
            reply.append_child(query);
        }
    } else if let Some(q) = el.get_child("query", NS_DISCO_ITEMS) {
        match q.attr("node") {
            Some(NS_COMMANDS) if gateway => {
                reply.append_child(crate::adhoc::command_items(to));
            }
            None => {
                reply.append_child(Element::builder("query", NS_DISCO_ITEMS).build());
            }
            Some(_) => refuse = Some(("cancel", "item-not-found")),
        }
    } else {
        refuse = Some(("cancel", "service-unavailable"));
    }
    if let Some((kind, condition)) = refuse {
        let mut error = Element::builder("error", ns).build();
        set(&mut error, "type", kind);
        error.append_child(
            Element::builder(condition, "urn:ietf:params:xml:ns:xmpp-stanzas").build(),
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
    send(conn, reply).await
}

/// The letter of the origin mark (`m`, `i`) of the network a puppet (bare JID) stands for.
fn origin_tag(st: &State, puppet: &str) -> &'static str {
    let network = crate::jid::parse_puppet(puppet, &st.config.component)
        .map(|p| p.network)
        .unwrap_or_default();
    NetworkId::new(network)
        .origin_mark()
        .trim_start_matches('[')
        .trim_end_matches(']')
}

/// Most nick conflicts a puppet works around before it gives up on a room.
const MAX_NICK_ATTEMPTS: u32 = 10;

/// Presence addressed to one of our puppets: a 409 nick conflict makes it
/// retry with the next nick (`nick[m]`, `nick[m]2`...; see [`outbound::puppet_nick`]); its own unavailable presence (kick,
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
            let next = outbound::puppet_nick(
                &wanted,
                origin_tag(st, &puppet),
                attempt + 1,
                st.config.origin_marks,
            );
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

/// Mentions written as the name people see in `room`: an XMPP user's current nick, or the
/// nick of the puppet that stands for a person of another network; others keep their name.
fn mention_nicks(
    st: &State,
    room: &str,
    body: &junction_core::RichText,
) -> junction_core::RichText {
    let mut body = body.clone();
    junction_core::format::mention::map_mentions(&mut body, |user, name| {
        let Some(u) = user.as_ref() else { return };
        let nick = if u.network == st.network {
            find_occupant(st, room, u.user.as_str()).0
        } else {
            let key = (room.to_string(), puppet_jid(u, &st.config.component));
            st.joined.get(&key).cloned()
        };
        if let Some(n) = nick {
            *name = n;
        }
    });
    body
}

/// The linked room a bare room JID is, as written in the link.
fn linked_room(cx: &AdapterContext, room_jid: &str) -> Option<RoomId> {
    cx.rooms
        .borrow()
        .iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(room_jid))
        .cloned()
}

/// Who an occupant is, as events name them: occupant-id where the room gives
/// one, else the occupant JID.
fn occupant_sender(st: &State, el: &Element, from: &str, nick: &str) -> Sender {
    let user = el
        .get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .and_then(|c| c.attr("id"))
        .map(|id| format!("occupant:{id}"))
        .or_else(|| {
            st.occupants
                .get(from)
                .and_then(|o| o.occupant_id.as_ref())
                .map(|id| format!("occupant:{id}"))
        })
        .unwrap_or_else(|| from.to_string());
    Sender {
        user: UserRef::new(st.network.as_str(), user),
        display_name: nick.to_string(),
        address: None,
    }
}

/// One groupchat message of a linked room, live or from its archive.
async fn on_room_message(st: &mut State, cx: &AdapterContext, el: &Element, via: Via) {
    let Some(from) = el.attr("from") else { return };
    let (room_jid, nick) = from.split_once('/').unwrap_or((from, ""));
    let Some(room) = linked_room(cx, room_jid) else {
        return;
    };
    let s = room_stanza_id(el, room_jid);
    let origin = sender_message_id(el);
    let is_subject =
        el.children().any(|c| c.name() == "subject") && !el.children().any(|c| c.name() == "body");
    if is_subject {
        on_subject(st, cx, el, &room, room_jid, nick, via).await;
        return;
    }
    // From the room itself, only a moderation announcement is news.
    let announced = nick
        .is_empty()
        .then(|| crate::inbound::moderation(el))
        .flatten();
    if nick.is_empty() && announced.is_none() {
        return;
    }
    if let Some(s) = &s {
        if via != Via::Baseline && !st.remember(s) {
            return;
        }
    }
    let real_ours = muc_item(el)
        .and_then(|i| i.attr("jid"))
        .is_some_and(|j| is_ours(j, &st.config.component));
    let ours = st.is_our_nick(room_jid, nick)
        || real_ours
        || origin
            .as_deref()
            .is_some_and(|u| u.starts_with(OUR_ID_PREFIX));
    // The reflection of a message we sent: its delivery is done.
    if let Some(u) = &origin {
        if st
            .pending
            .get(u)
            .is_some_and(|p| p.wait == Wait::Reflection)
        {
            let who = st
                .pending
                .get(u)
                .map(|p| p.sender.1.clone())
                .unwrap_or_default();
            if let Some(s) = &s {
                st.learn_stanza_id(u, s, &who);
            } else {
                tracing::warn!(
                    room = room_jid,
                    "xmpp: the room stamps no stanza-id (no MAM?); using our own id"
                );
            }
            let id = s.clone().unwrap_or_else(|| u.clone());
            answer(st, cx, u, Ok(vec![MessageId::new(id)]));
        }
    }
    let may_advance = via == Via::Archive || !st.backfilling.contains(room_jid);
    if ours {
        // One of ours that nobody waits for (sent before a restart): remember
        // its ids so the redelivery of it is recognised.
        if let (Some(u), Some(s)) = (&origin, &s) {
            if u.starts_with(OUR_ID_PREFIX) && st.kv(KV_U2S, u).is_none() {
                st.kv_put(KV_U2S, u, s);
                st.kv_put(KV_S2U, s, u);
                if let Some(j) = muc_item(el).and_then(|i| i.attr("jid")) {
                    st.kv_put(KV_S2P, s, j.split('/').next().unwrap_or(j));
                }
            }
        }
        if let (Some(s), true) = (&s, via != Via::Baseline && may_advance) {
            st.advance_cursor(&room, s, None);
        }
        return;
    }
    if via == Via::Baseline {
        return;
    }
    if let (Some(u), Some(s)) = (&origin, &s) {
        st.msgid_to_s.put(u.clone(), s.clone());
    }
    let our_nicks: Vec<String> = st
        .joined
        .iter()
        .filter(|((r, _), _)| r.eq_ignore_ascii_case(room_jid))
        .map(|(_, n)| n.clone())
        .chain(std::iter::once(LISTENER_NICK.to_string()))
        .collect();
    let rcx = RoomContext {
        room: RoomRef::new(cx.network.as_str(), room.as_str()),
        room_jid: room_jid.to_string(),
        component: st.config.component.clone(),
        our_nicks,
    };
    let parsed = parse_groupchat(el, &rcx, &|id| st.msgid_to_s.peek(id).cloned());
    let mut last_ack = None;
    match parsed {
        Parsed::Event(mut e) => {
            if is_ours(e.sender.user.user.as_str(), &st.config.component) {
                return;
            }
            // Who acted: the occupant who sent it, or the moderator a room's announcement
            // names (the room vouches for their rights).
            let actor = announced
                .as_ref()
                .and_then(|m| m.by.as_deref())
                .unwrap_or(from);
            let vouched = announced.is_some() && e.by_moderator;
            if let Some(occ) = st.occupants.get(actor).and_then(|o| o.occupant_id.clone()) {
                if !e.sender.user.user.as_str().starts_with("occupant:") {
                    e.sender.user = UserRef::new(cx.network.as_str(), format!("occupant:{occ}"));
                    e = junction_core::Event::new(e.origin, e.remote_id, e.sender, e.ts_ms, e.kind);
                }
            }
            e.by_moderator = vouched || st.is_moderator(from);
            if let EventKind::Message(m) = &mut e.kind {
                let body = std::mem::take(&mut m.body);
                m.body = mention::leading_address(body, |n| resolve_nick(st, room_jid, n));
            }
            st.address(&mut e.sender);
            let (inb, ack) = Inbound::with_ack(e);
            let _ = cx.inbound.send(inb).await;
            last_ack = Some(ack);
        }
        Parsed::Reactions {
            remote_id,
            mut sender,
            target,
            keys,
            dropped,
        } => {
            st.address(&mut sender);
            // Counted once, with the first event the stanza becomes.
            let mut capped = dropped as u64;
            let k = (
                room_jid.to_string(),
                sender.user.user.as_str().to_string(),
                target.as_str().to_string(),
            );
            let prev = st.reactions.get(&k).cloned().unwrap_or_default();
            let (added, removed) = diff_reactions(&prev, &keys);
            st.reactions.put(k, keys);
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
                let e = junction_core::Event::new(
                    rcx.room.clone(),
                    rid,
                    sender.clone(),
                    now_ms(),
                    kind,
                );
                let (mut inb, ack) = Inbound::with_ack(e);
                inb.capped_reactions = std::mem::take(&mut capped);
                let _ = cx.inbound.send(inb).await;
                last_ack = Some(ack);
            }
        }
        Parsed::Ignored(why) => tracing::debug!(why, "xmpp: stanza not bridged"),
        Parsed::Refused(why) => {
            st.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if st
                .refusal_warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                st.refusal_warned = Some(Instant::now());
                tracing::warn!(
                    room = room_jid,
                    occupant = from,
                    why,
                    "xmpp: an occupant's stanza is refused and not bridged (further refusals within a minute are counted in /metrics and logged at debug level)"
                );
            } else {
                tracing::debug!(
                    room = room_jid,
                    occupant = from,
                    why,
                    "xmpp: an occupant's stanza is refused and not bridged"
                );
            }
        }
    }
    if let (Some(s), true) = (&s, may_advance) {
        st.advance_cursor(&room, s, last_ack);
    }
}

/// Who `nick` in `room` is, for a `nick:` address: one of our puppets' owners
/// or an occupant.
fn resolve_nick(st: &State, room: &str, nick: &str) -> Option<UserRef> {
    if let Some(((_, puppet), _)) = st
        .joined
        .iter()
        .find(|((r, _), n)| r.eq_ignore_ascii_case(room) && n.as_str() == nick)
    {
        return st.store.puppet_owner(&st.network, puppet).ok().flatten();
    }
    let occ = format!("{room}/{nick}");
    let o = st.occupants.get(&occ)?;
    let user = o
        .occupant_id
        .as_ref()
        .map_or_else(|| occ.clone(), |id| format!("occupant:{id}"));
    Some(UserRef::new(st.network.as_str(), user))
}

/// A subject message: the one the room sends on join is remembered, a later
/// change by a person becomes a Topic event, and one our puppet set confirms
/// its delivery.
async fn on_subject(
    st: &mut State,
    cx: &AdapterContext,
    el: &Element,
    room: &RoomId,
    room_jid: &str,
    nick: &str,
    via: Via,
) {
    let text = el
        .children()
        .find(|c| c.name() == "subject")
        .map(Element::text)
        .unwrap_or_default();
    let ours = !nick.is_empty() && st.is_our_nick(room_jid, nick);
    if ours {
        let key = st
            .pending
            .iter()
            .find(|(_, p)| {
                p.room.eq_ignore_ascii_case(room_jid)
                    && p.wait
                        == (Wait::Subject {
                            nick: nick.to_string(),
                        })
            })
            .map(|(k, _)| k.clone());
        if let Some(k) = key {
            answer(st, cx, &k, Ok(Vec::new()));
        }
    }
    if via != Via::Live {
        return;
    }
    let prev = st.subjects.insert(room_jid.to_string(), text.clone());
    if ours
        || nick.is_empty()
        || prev.is_none()
        || prev.as_deref() == Some(text.as_str())
        || !st.listening.contains(room_jid)
    {
        return;
    }
    let from = format!("{room_jid}/{nick}");
    let mut sender = occupant_sender(st, el, &from, nick);
    st.address(&mut sender);
    let id = room_stanza_id(el, room_jid).unwrap_or_else(|| st.new_id());
    let e = junction_core::Event::new(
        RoomRef::new(cx.network.as_str(), room.as_str()),
        MessageId::new(id),
        sender,
        now_ms(),
        EventKind::Topic { text },
    )
    .moderated(st.is_moderator(&from));
    let _ = cx.inbound.send(Inbound::new(e)).await;
}

/// Room presence as the listener sees it → join, leave, nick change, kick,
/// ban; and the listener's own standing (joined, rights, refused).
async fn on_room_presence(st: &mut State, cx: &AdapterContext, el: &Element) {
    let Some(from) = el.attr("from") else { return };
    let Some((room_jid, nick)) = from.split_once('/') else {
        return;
    };
    let Some(room) = linked_room(cx, room_jid) else {
        return;
    };
    let ty = el.attr("type");
    if ty == Some("error") {
        let cond = error_condition(el).unwrap_or_else(|| "error".into());
        tracing::warn!(room = room_jid, condition = %cond, "xmpp: the listener could not join a room");
        st.failed.insert(room_jid.to_string(), cond);
        update_status(st, cx);
        return;
    }
    let item = muc_item(el);
    if has_status(el, "110") {
        if ty == Some("unavailable") {
            tracing::warn!(
                room = room_jid,
                "xmpp: the listener was removed from a room"
            );
            st.listening.remove(room_jid);
            st.failed
                .insert(room_jid.to_string(), "removed from the room".into());
        } else {
            st.listening.insert(room_jid.to_string());
            st.rights.insert(room_jid.to_string(), Rights::of(item));
            st.failed.remove(room_jid);
        }
        update_status(st, cx);
        return;
    }
    let real = item
        .and_then(|i| i.attr("jid"))
        .map(|j| j.split('/').next().unwrap_or(j).to_lowercase());
    let occupant_id = el
        .get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .and_then(|c| c.attr("id"))
        .map(str::to_string);
    let ours = st.is_our_nick(room_jid, nick)
        || real
            .as_deref()
            .is_some_and(|j| is_ours(j, &st.config.component));
    let rights = Rights::of(item);
    let was_present = if ty == Some("unavailable") {
        st.occupants.remove(from).is_some()
    } else {
        st.occupants
            .insert(
                from.to_string(),
                Occupant {
                    jid: real.clone(),
                    occupant_id: occupant_id.clone(),
                    rights: rights.clone(),
                },
            )
            .is_some()
    };
    let mut sender = occupant_sender(st, el, from, nick);
    if let (Some(j), false) = (&real, ours) {
        // Who the occupant really is, for gateway bans by bare JID (events name occupants
        // by occupant-id or room/nick). Known where the room shows real JIDs to the listener;
        // noted for occupants already there when the listener joins, too.
        st.real_jids
            .put(sender.user.user.as_str().to_string(), j.clone());
    }
    st.address(&mut sender);
    // One of our puppets removed by a moderator is still news for the other networks
    // (the person it stands for was kicked); its other presence is our own echo.
    let removed = ty == Some("unavailable") && (has_status(el, "307") || has_status(el, "301"));
    if (ours && !removed) || !st.listening.contains(room_jid) {
        return;
    }
    let reason = item
        .and_then(|i| i.children().find(|c| c.name() == "reason"))
        .map(Element::text)
        .filter(|r| !r.is_empty());
    let kind = if ty == Some("unavailable") {
        if has_status(el, "303") {
            let Some(new) = item.and_then(|i| i.attr("nick")) else {
                return;
            };
            st.occupants.insert(
                format!("{room_jid}/{new}"),
                Occupant {
                    jid: real,
                    occupant_id,
                    rights,
                },
            );
            EventKind::NickChange {
                new_name: new.to_string(),
            }
        } else if has_status(el, "307") || has_status(el, "301") {
            let actor = item
                .and_then(|i| i.children().find(|c| c.name() == "actor"))
                .and_then(|a| a.attr("nick"))
                .unwrap_or(room_jid)
                .to_string();
            if st.is_our_nick(room_jid, &actor) {
                // The gateway's own enforcement: already known where it came from.
                return;
            }
            let mut kicker = Sender {
                user: UserRef::new(cx.network.as_str(), format!("{room_jid}/{actor}")),
                display_name: actor,
                address: None,
            };
            st.address(&mut kicker);
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

/// The linked rooms' JIDs, as the command and direct-message checks take them.
fn linked_rooms(cx: &AdapterContext) -> Vec<String> {
    cx.rooms
        .borrow()
        .iter()
        .map(|r| r.as_str().to_string())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use junction_core::{BridgeName, Event, EventKind};
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    fn delivery(outbox_id: u64, room: &str) -> Delivery {
        let sender = Sender {
            user: UserRef::new("matrix", "@a:m.test"),
            display_name: "a".into(),
            address: None,
        };
        Delivery {
            outbox_id,
            bridge: BridgeName::new("lobby"),
            target: RoomRef::new("xmpp", room),
            event: Event::new(
                RoomRef::new("matrix", "#l:m.test"),
                MessageId::new("$e"),
                sender,
                0,
                EventKind::Join,
            ),
            reply_to: Vec::new(),
            target_ids: Vec::new(),
        }
    }

    #[test]
    fn maps_keyed_by_room_input_stay_bounded() {
        let config = XmppConfig {
            component: "c.test".into(),
            server: "127.0.0.1:1".into(),
            secret: junction_core::Secret::new("s"),
            origin_marks: true,
        };
        let mut st = State::new(config, Arc::new(junction_store::MemStore::new()));
        let n = MAX_REMEMBERED.get() * 2;
        for i in 0..n {
            st.learn_stanza_id(&format!("jx-{i}"), &format!("S{i}"), "p@c.test");
            st.msgid_to_s.put(format!("u{i}"), format!("S{i}"));
            let k = ("r@m".to_string(), format!("o{i}"), format!("S{i}"));
            st.reactions.put(k.clone(), vec!["👍".into()]);
            st.our_reactions.put(k, vec!["👍".into()]);
            st.real_jids
                .put(format!("occupant:{i}"), format!("p{i}@x.test"));
        }
        for len in [
            st.u_to_s.len(),
            st.msgid_to_s.len(),
            st.reactions.len(),
            st.our_reactions.len(),
            st.real_jids.len(),
        ] {
            assert_eq!(len, MAX_REMEMBERED.get());
        }
        // The newest stay; an evicted id still resolves through the store.
        assert_eq!(
            st.msgid_to_s.peek(&format!("u{}", n - 1)),
            Some(&format!("S{}", n - 1))
        );
        assert!(st.u_to_s.peek("jx-0").is_none());
        assert_eq!(st.stanza_id_for("jx-0"), "S0");
    }

    #[test]
    fn a_redelivery_reuses_the_message_id() {
        let a = delivery_message_id(&delivery(7, "l@c.test"));
        assert_eq!(a, delivery_message_id(&delivery(7, "l@c.test")));
        assert!(a.starts_with(OUR_ID_PREFIX));
        assert_ne!(a, delivery_message_id(&delivery(8, "l@c.test")));
        assert_ne!(a, delivery_message_id(&delivery(7, "m@c.test")));
    }

    #[test]
    fn rights_decide_kick_and_ban() {
        let r = |a: &str, ro: &str| Rights {
            affiliation: a.into(),
            role: ro.into(),
        };
        assert!(r("owner", "moderator").admin());
        assert!(r("none", "moderator").moderator());
        assert!(!r("none", "moderator").admin());
        assert!(!r("member", "participant").moderator());
    }

    #[test]
    fn server_domain_drops_the_first_label() {
        assert_eq!(server_domain("bridge.xmpp.test"), "xmpp.test");
    }

    fn presence(nick: &str, item: &str, extra: &str) -> Element {
        format!(
            "<presence xmlns='jabber:component:accept' from='room@muc.test/{nick}' \
             to='junction@c.test/junction'><x xmlns='http://jabber.org/protocol/muc#user'>\
             {item}</x>{extra}</presence>"
        )
        .parse()
        .unwrap()
    }

    fn groupchat(nick: &str, sid: &str, extra: &str) -> Element {
        format!(
            "<message xmlns='jabber:component:accept' type='groupchat' \
             from='room@muc.test/{nick}' to='junction@c.test/junction' id='{sid}-u'>\
             <body>hello</body><stanza-id xmlns='urn:xmpp:sid:0' id='{sid}' by='room@muc.test'/>\
             {extra}</message>"
        )
        .parse()
        .unwrap()
    }

    fn next(rx: &mut mpsc::Receiver<Inbound>) -> Event {
        rx.try_recv().unwrap().event
    }

    #[tokio::test]
    async fn an_occupants_real_jid_rides_on_their_events() {
        let config = XmppConfig {
            component: "c.test".into(),
            server: "127.0.0.1:1".into(),
            secret: junction_core::Secret::new("s"),
            origin_marks: true,
        };
        let mut st = State::new(config, Arc::new(junction_store::MemStore::new()));
        let (in_tx, mut in_rx) = mpsc::channel(16);
        let (_d_tx, d_rx) = mpsc::channel(1);
        let (done_tx, _done_rx) = mpsc::unbounded_channel();
        let (_rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new("room@muc.test")]);
        let cx = AdapterContext::standalone(
            junction_store::scoped(st.store.clone(), NetworkId::new("xmpp")),
            in_tx,
            d_rx,
            done_tx,
            rooms_rx,
            CancellationToken::new(),
        );
        let me = "<item affiliation='owner' role='moderator'/><status code='110'/>";
        on_room_presence(&mut st, &cx, &presence("junction", me, "")).await;
        let id = "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='b0b'/>";
        let bob = "<item affiliation='none' role='participant' jid='Bob@X.test/phone'/>";
        on_room_presence(&mut st, &cx, &presence("bob", bob, id)).await;
        let join = next(&mut in_rx);
        assert!(matches!(join.kind, EventKind::Join));
        assert_eq!(join.sender.user.user.as_str(), "occupant:b0b");
        assert_eq!(join.sender.address.as_deref(), Some("bob@x.test"));

        on_room_message(&mut st, &cx, &groupchat("bob", "S1", id), Via::Live).await;
        let said = next(&mut in_rx);
        assert!(matches!(said.kind, EventKind::Message(_)));
        assert_eq!(said.sender.address.as_deref(), Some("bob@x.test"));

        // The room shows no real JID for carol: her events carry none.
        let carol = "<item affiliation='none' role='participant'/>";
        on_room_presence(&mut st, &cx, &presence("carol", carol, "")).await;
        assert_eq!(next(&mut in_rx).sender.address, None);
        on_room_message(&mut st, &cx, &groupchat("carol", "S2", ""), Via::Live).await;
        assert_eq!(next(&mut in_rx).sender.address, None);

        // Gone from the room, bob is still known for what the archive holds of him.
        let gone = format!(
            "<presence xmlns='jabber:component:accept' type='unavailable' \
             from='room@muc.test/bob' to='junction@c.test/junction'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>{bob}</x>{id}</presence>"
        );
        on_room_presence(&mut st, &cx, &gone.parse().unwrap()).await;
        let left = next(&mut in_rx);
        assert!(matches!(left.kind, EventKind::Leave { .. }));
        assert_eq!(left.sender.address.as_deref(), Some("bob@x.test"));
        on_room_message(&mut st, &cx, &groupchat("bob", "S3", id), Via::Archive).await;
        assert_eq!(
            next(&mut in_rx).sender.address.as_deref(),
            Some("bob@x.test")
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod xml_clean_tests {
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
}
