//! The adapter and its run loop.
//!
//! One component connection (XEP-0114, [`crate::connection`]) per component domain. The
//! listener occupant (`junction@<component>/junction`) joins every linked room and is the
//! only address whose copy of room traffic is read ([`crate::rooms`], [`crate::messages`]);
//! puppets join a room the first time they speak there ([`crate::puppets`]). After a
//! disconnect the loop reconnects with jittered backoff and rejoins the listener and every
//! puppet that was in a room.
//!
//! Delivery ([`crate::deliver`], [`crate::pending`]): a message is answered only once the
//! room has reflected it back (matched by its origin-id), with the room's stanza-id as the
//! id. What was sent but not reflected when the connection dropped is sent again after the
//! reconnect, unless the room's archive (XEP-0313, [`crate::backfill`]), read on rejoin from
//! the stored per-room cursor, shows it arrived. The same archive query backfills what other
//! people said while the adapter was away.
//!
//! The adapter keeps its tables in the store through its context's handle
//! ([`AdapterContext::store`]), under short names (`u2s`, `s2u`, `s2p`).

use lru::LruCache;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use junction_core::{
    Adapter, AdapterContext, AdapterError, AdapterStore, Delivery, NetworkId, NetworkStatus,
    PuppetCap, PuppetLimits,
};
use minidom::Element;
use tokio::sync::mpsc;

use crate::backfill::{CursorUpdate, MamQuery};
use crate::commands::Reply;
use crate::config::XmppConfig;
use crate::connection::{connect, from_stanza, send, server_domain, Conn};
use crate::inbound::OUR_ID_PREFIX;
use crate::messages::{MAX_REMEMBERED, S2P, S2U, U2S};
use crate::outbound::{self, ModerationForm};
use crate::pending::Pending;
use crate::rooms::{Occupant, Rights};

/// Interval of XEP-0199 pings to the server, which also keeps the stream's
/// read timeout from firing on a quiet link.
const PING_EVERY: Duration = Duration::from_secs(25);
/// Server pings left unanswered before the connection counts as dead.
const MAX_MISSED_PINGS: u32 = 2;
/// Interval of XEP-0410 self-pings of the listener and every puppet.
const SELF_PING_EVERY: Duration = Duration::from_secs(300);

/// The nick of the listener occupant.
pub const LISTENER_NICK: &str = "junction";

/// The adapter's tables as an earlier version named them in the whole store, with the
/// short names they have under the adapter's handle now.
const LEGACY_TABLES: [(&str, &str); 3] = [("xmpp.u2s", U2S), ("xmpp.s2u", S2U), ("xmpp.s2p", S2P)];

/// The XMPP adapter: one XEP-0114 component connection, a listener occupant in
/// every linked room, and one puppet occupant per remote user.
///
/// A delivery is answered once the room reflects the message back, with the
/// room's stanza-id `S` (what XMPP clients name in replies, reactions and
/// retractions); the puppet's own id `U` (id and origin-id, derived from the
/// outbox row) is kept beside it for XEP-0308 corrections. On every (re)join
/// the room's archive (XEP-0313) is read from a stored cursor, so what was
/// said while the adapter was away is bridged once.
pub struct XmppAdapter {
    config: XmppConfig,
    limits: PuppetLimits,
    cap_refused: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
    reconnect: Arc<tokio::sync::Notify>,
    sessions: Arc<AtomicU64>,
    cut_deep: Arc<AtomicU64>,
}

impl XmppAdapter {
    /// An adapter for `config`. It keeps its state in the store handle of the context it
    /// runs with.
    pub fn new(config: XmppConfig) -> Self {
        Self {
            config,
            limits: PuppetLimits::default(),
            cap_refused: Arc::default(),
            refused: Arc::default(),
            reconnect: Arc::new(tokio::sync::Notify::new()),
            sessions: Arc::default(),
            cut_deep: Arc::default(),
        }
    }

    /// Sets the puppet occupants' lifecycle bounds (`[xmpp] max_occupants`,
    /// `occupant_idle_timeout_seconds`; see [`PuppetLimits`] for the defaults).
    pub fn with_occupant_limits(mut self, limits: PuppetLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Counts, in `refusals`, every time the cap of occupants refused someone an occupant
    /// (for `/metrics`).
    pub fn with_cap_refusals(mut self, refusals: Arc<AtomicU64>) -> Self {
        self.cap_refused = refusals;
        self
    }

    /// Counts, in `refused`, every action refused because its sender may not take it: a
    /// moderation announcement (XEP-0425) sent by an occupant rather than the room (for
    /// `/metrics`).
    pub fn with_refusals(mut self, refused: Arc<AtomicU64>) -> Self {
        self.refused = refused;
        self
    }

    /// A handle that, when notified, drops the current component connection;
    /// the adapter then reconnects and rejoins the listener and its puppets.
    /// For tests and operators who want a fresh connection.
    pub fn reconnect_handle(&self) -> Arc<tokio::sync::Notify> {
        self.reconnect.clone()
    }

    /// A counter of component sessions: incremented each time the adapter
    /// has logged in and sent its room joins.
    pub fn sessions(&self) -> Arc<AtomicU64> {
        self.sessions.clone()
    }

    /// A counter of incoming stanzas that lost elements nested deeper than
    /// [`crate::depth::MAX_STANZA_DEPTH`] (each is also logged once).
    pub fn cut_deep_stanzas(&self) -> Arc<AtomicU64> {
        self.cut_deep.clone()
    }
}

impl Adapter for XmppAdapter {
    async fn run(self, cx: AdapterContext) -> Result<(), AdapterError> {
        adopt_legacy_tables(cx.store.as_ref());
        let st = State::new(self, cx.store.clone(), cx.network.clone());
        run(st, cx).await
    }
}

/// Carries the adapter's maps over from the table names an earlier version used, so an
/// upgraded gateway still knows the stanza-ids of what it sent. A failure is logged: the
/// next start tries again.
fn adopt_legacy_tables(store: &dyn AdapterStore) {
    for (legacy, table) in LEGACY_TABLES {
        if let Err(e) = store.adopt(legacy, table, &|k| Some(k.to_owned())) {
            tracing::warn!(error = %e, table = legacy, "xmpp: could not move a table to its new name");
        }
    }
}

/// What the adapter remembers while it runs.
pub(crate) struct State {
    pub config: XmppConfig,
    /// The adapter's own part of the store.
    pub store: Arc<dyn AdapterStore>,
    pub network: NetworkId,
    /// (room, puppet bare JID) → nick it holds there.
    pub joined: HashMap<(String, String), String>,
    /// (room, puppet bare JID) → the nick it wanted and how many conflicts it met.
    pub wanted: HashMap<(String, String), (String, u32)>,
    /// Occupants (`room/nick`) present in each room, as the listener sees them.
    pub occupants: HashMap<String, Occupant>,
    /// An occupant as events name them (`occupant:<id>` or `room@muc/nick`) → their real
    /// bare JID, where the room showed it to the listener; it rides on their events as
    /// [`junction_core::Sender::address`], which gateway bans by bare JID match (bounded;
    /// kept after the occupant leaves, for what the archive still holds of them).
    pub real_jids: LruCache<String, String>,
    /// Rooms where the listener's own presence has arrived (occupants seen
    /// before it were already there: no Join events for them).
    pub listening: HashSet<String>,
    /// The listener's affiliation and role per room.
    pub rights: HashMap<String, Rights>,
    /// The form of message moderation (XEP-0425) each room offers, as its disco#info
    /// answered (`None`: neither form); a room not here has not answered (yet).
    pub moderation: HashMap<String, Option<ModerationForm>>,
    /// disco#info queries to rooms in flight: IQ id → room.
    pub disco: HashMap<String, String>,
    /// Rooms the listener could not join, with the reason.
    pub failed: HashMap<String, String>,
    /// The last subject seen per room (the one sent on join is not a change).
    pub subjects: HashMap<String, String>,
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
    pub pending: HashMap<String, Pending>,
    /// Deliveries that could not be sent at all (connection lost), in order.
    pub redo: Vec<Delivery>,
    /// Archive queries in flight, by IQ id (also their queryid).
    pub mam: HashMap<String, MamQuery>,
    /// Rooms whose archive is being read after a (re)join.
    pub backfilling: HashSet<String>,
    /// When the current backfill began; deliveries wait until it ends.
    pub resuming: Option<Instant>,
    /// Self-pings in flight: IQ id → (room, occupant bare JID or None for the listener).
    pub pings: HashMap<String, (String, Option<String>)>,
    /// The server ping in flight and how many went unanswered in a row.
    pub server_ping: Option<String>,
    pub missed_pings: u32,
    pub cursor_tx: Option<mpsc::UnboundedSender<CursorUpdate>>,
    next_id: u64,
    /// Notified to drop the current connection (the adapter then reconnects).
    pub reconnect: Arc<tokio::sync::Notify>,
    /// How many times the component has logged in and joined its rooms.
    pub sessions: Arc<AtomicU64>,
    /// Incoming stanzas that lost elements nested deeper than the depth bound.
    pub cut_deep: Arc<AtomicU64>,
    /// XEP-0050 forms sent and not yet submitted.
    pub adhoc: crate::adhoc::Sessions,
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
    pub refusal_warned: Option<Instant>,
}

impl State {
    /// The state `adapter` starts with, keeping its tables in `store`, for `network`.
    pub fn new(adapter: XmppAdapter, store: Arc<dyn AdapterStore>, network: NetworkId) -> Self {
        Self {
            config: adapter.config,
            store,
            network,
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
            reconnect: adapter.reconnect,
            sessions: adapter.sessions,
            cut_deep: adapter.cut_deep,
            adhoc: crate::adhoc::Sessions::new(),
            cap: PuppetCap::new(adapter.limits),
            cap_refused: adapter.cap_refused,
            refused: adapter.refused,
            refusal_warned: None,
        }
    }

    /// The listener's full occupant JID (`junction@<component>/junction`).
    pub fn listener(&self) -> String {
        format!("{}/{LISTENER_NICK}", self.listener_bare())
    }

    /// The listener's bare JID (`junction@<component>`).
    pub fn listener_bare(&self) -> String {
        format!("junction@{}", self.config.component)
    }

    /// A fresh id for a stanza of ours.
    pub fn new_id(&mut self) -> String {
        self.next_id += 1;
        let r: u64 = rand::random();
        format!("{OUR_ID_PREFIX}{r:016x}-{}", self.next_id)
    }
}

/// Runs the adapter until shutdown.
async fn run(mut st: State, mut cx: AdapterContext) -> Result<(), AdapterError> {
    st.cursor_tx = Some(crate::backfill::spawn_cursor_writer(st.store.clone()));
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
        if !crate::rooms::join_all(&mut st, &mut conn, &cx, true).await {
            cx.status
                .send_replace(NetworkStatus::Degraded("reconnecting".into()));
            continue;
        }
        st.sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::rooms::update_status(&st, &cx);
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
                    if !crate::rooms::join_all(&mut st, &mut conn, &cx, false).await {
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
                    if !crate::deliver::deliver(&mut st, &mut conn, &cx, d).await {
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
                    if !crate::pending::housekeeping(&mut st, &mut conn, &cx).await {
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
                    if !crate::rooms::self_ping_all(&mut st, &mut conn).await {
                        break "connection lost";
                    }
                }
            }
        };
        cx.status
            .send_replace(NetworkStatus::Degraded(format!("reconnecting: {why}")));
    }
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
            Some("get" | "set") => crate::iq::answer_iq(st, conn, cx, replies, &el).await,
            _ => crate::iq::on_iq_answer(st, conn, cx, &el).await,
        },
        "message" => crate::messages::on_message(st, conn, cx, replies, &el).await,
        "presence" => {
            if el.attr("to") == Some(st.listener().as_str()) {
                crate::rooms::on_room_presence(st, cx, &el).await;
                if crate::rooms::is_new_locked_room(&el) {
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
                crate::puppets::on_puppet_presence(st, conn, &el).await
            }
        }
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_store::{MemStore, Store};

    #[test]
    fn an_upgraded_gateway_keeps_its_maps_under_the_new_names() {
        let store = Arc::new(MemStore::new());
        store.kv_put("xmpp.u2s", "jx-1", b"S1").expect("put");
        store.kv_put("xmpp.s2u", "S1", b"jx-1").expect("put");
        store
            .kv_put("xmpp.s2p", "S1", b"alice%matrix@c.test")
            .expect("put");
        let handle = junction_store::scoped(store.clone(), NetworkId::new("xmpp"));
        adopt_legacy_tables(handle.as_ref());
        // Twice is harmless: the old tables are empty now.
        adopt_legacy_tables(handle.as_ref());
        for legacy in ["xmpp.u2s", "xmpp.s2u", "xmpp.s2p"] {
            assert!(store.kv_scan(legacy).expect("scan").is_empty(), "{legacy}");
        }
        assert_eq!(
            store.kv_get("xmpp/u2s", "jx-1").expect("get"),
            Some(b"S1".to_vec())
        );
        let st = State::new(
            XmppAdapter::new(crate::messages::tests::config()),
            handle,
            NetworkId::new("xmpp"),
        );
        assert_eq!(st.stanza_id_for("jx-1"), "S1");
        assert_eq!(st.message_id_for("S1"), "jx-1");
        assert_eq!(st.kv(S2P, "S1").as_deref(), Some("alice%matrix@c.test"));
    }
}
