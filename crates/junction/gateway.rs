//! The gateway loop: the one task that sits between the adapters and the store.
//!
//! ```text
//! adapter ──Inbound──▶ route() ──record_inbound (one txn)──▶ store
//!                        │                                     ▲
//!                        └──Delivery (outbox order)──▶ adapter │
//! adapter ──Delivered──▶ route() ──record_delivered (one txn)──┘
//! ```
//!
//! Durability: inbound events are batched, recorded (message map + one outbox row per target
//! in one store transaction each), flushed once per batch, and only then acknowledged to the
//! adapter that waits (Matrix answers its transaction after that) and handed to the target
//! adapters. Undelivered outbox rows are handed out again at start, in order.

use crate::admin::Admin;
use crate::config::Membership;
use crate::metrics::{Health, Metrics, NetworkState};
use crate::ratelimit::{self, Limiter, Verdict};
use junction_core::limits::{Capped, FanoutCaps};
use junction_core::router::RefResolver;
use junction_core::router::Router;
use junction_core::{
    AdapterContext, Command, Delivered, Delivery, Event, EventId, EventKind, Inbound, MessageId,
    NetworkId, NetworkStatus, RoomId, RoomRef,
};
use junction_store::{Recorded, Resolver, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// Most inbound events recorded in one batch before one flush.
const BATCH: usize = 256;

/// How often the outbox depth gauges are recounted while outboxes change.
const DEPTH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Longest a room-list change waits for the announcements of `close`/`unlink` to be answered
/// in the rooms being left (a network that is down must not hold the change for ever).
const PART_WAIT: Duration = Duration::from_secs(30);

/// How often a failing store is tried again, and a waiting room-list change checked.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// The store table the gateway writes to when it tries a failing store again.
const PROBE_TABLE: &str = "gateway/probe";

/// The adapter ends of the channels for one network, created by [`Hub::attach`].
pub struct Attached {
    /// What to hand the adapter's `run`.
    pub context: AdapterContext,
}

/// The router side of every adapter's channels.
pub struct Hub {
    inbound_tx: Option<mpsc::Sender<Inbound>>,
    inbound_rx: mpsc::Receiver<Inbound>,
    delivered_tx: mpsc::UnboundedSender<Delivered>,
    delivered_rx: mpsc::UnboundedReceiver<Delivered>,
    outboxes: HashMap<NetworkId, mpsc::UnboundedSender<Delivery>>,
    rooms: HashMap<NetworkId, watch::Sender<Vec<RoomId>>>,
    commands_tx: mpsc::Sender<Command>,
    commands_rx: mpsc::Receiver<Command>,
    statuses: HashMap<NetworkId, watch::Receiver<NetworkStatus>>,
    puppets: HashMap<NetworkId, watch::Receiver<usize>>,
    store: Arc<dyn Store>,
    pastes: Option<Arc<dyn junction_core::Pastes>>,
}

impl Hub {
    /// A hub with no adapters attached yet, handing each adapter its part of `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        let (inbound_tx, inbound_rx) = mpsc::channel(1024);
        let (delivered_tx, delivered_rx) = mpsc::unbounded_channel();
        let (commands_tx, commands_rx) = mpsc::channel(64);
        Self {
            commands_tx,
            commands_rx,
            statuses: HashMap::new(),
            puppets: HashMap::new(),
            inbound_tx: Some(inbound_tx),
            inbound_rx,
            delivered_tx,
            delivered_rx,
            outboxes: HashMap::new(),
            rooms: HashMap::new(),
            store,
            pastes: None,
        }
    }

    /// Where adapters attached from now on keep the whole text of long messages.
    pub fn with_pastes(mut self, pastes: Arc<dyn junction_core::Pastes>) -> Self {
        self.pastes = Some(pastes);
        self
    }

    /// Creates the channels for one network's adapter. Deliveries reach the adapter through an
    /// unbounded forwarder so the router never waits on a slow adapter (which may itself be
    /// waiting to hand the router an inbound event); the durable outbox is the real queue.
    pub fn attach(
        &mut self,
        network: NetworkId,
        router: &Router,
        shutdown: &CancellationToken,
    ) -> Attached {
        let (fwd_tx, mut fwd_rx) = mpsc::unbounded_channel::<Delivery>();
        let (tx, rx) = mpsc::channel(64);
        let stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    d = fwd_rx.recv() => match d {
                        Some(d) => if tx.send(d).await.is_err() { break },
                        None => break,
                    },
                }
            }
        });
        let (rooms_tx, rooms_rx) = watch::channel(router.rooms_on(&network));
        self.outboxes.insert(network.clone(), fwd_tx);
        self.rooms.insert(network.clone(), rooms_tx);
        let (status_tx, status_rx) = watch::channel(NetworkStatus::Connecting);
        self.statuses.insert(network.clone(), status_rx);
        let (puppets_tx, puppets_rx) = watch::channel(0);
        self.puppets.insert(network.clone(), puppets_rx);
        let store = junction_store::scoped(self.store.clone(), network.clone());
        Attached {
            context: AdapterContext {
                network,
                // After `route` started nothing new is attached; such a sender leads nowhere.
                inbound: match &self.inbound_tx {
                    Some(tx) => tx.clone(),
                    None => mpsc::channel(1).0,
                },
                deliveries: rx,
                delivered: self.delivered_tx.clone(),
                rooms: rooms_rx,
                shutdown: shutdown.clone(),
                commands: self.commands_tx.clone(),
                status: status_tx,
                puppets: puppets_tx,
                store,
                pastes: self.pastes.clone(),
            },
        }
    }
}

/// What the route loop needs besides the adapters' channels.
pub struct Parts {
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// Which rooms are linked.
    pub router: Router,
    /// How membership events cross networks.
    pub membership: Membership,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Per-network state for `/health`.
    pub health: Arc<Health>,
    /// Admin commands and bans.
    pub admin: Admin,
    /// How long the store may refuse writes before [`route`] gives up with an error (for the
    /// supervisor to restart the gateway: sled refuses every write after an I/O error until
    /// the process restarts).
    pub store_retry: Duration,
    /// Per-sender rate limits and fan-out caps on inbound events.
    pub limits: crate::ratelimit::Limits,
}

/// The router loop. Runs until `shutdown` is cancelled, then flushes the store. Returns an
/// error when the store has refused writes for longer than [`Parts::store_retry`].
pub async fn route(parts: Parts, mut hub: Hub, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Parts {
        store,
        router,
        membership,
        metrics,
        health,
        mut admin,
        store_retry,
        limits,
    } = parts;
    // Each adapter's puppet count feeds /metrics.
    for (network, rx) in std::mem::take(&mut hub.puppets) {
        let metrics = metrics.clone();
        follow(
            rx,
            &shutdown,
            move |n| metrics.set_puppets(&network, *n),
            || {},
        );
    }
    let networks: Vec<NetworkId> = hub.outboxes.keys().cloned().collect();
    let seen = health.clone();
    let store_health = health.clone();
    admin.set_status_source(Box::new(move || {
        networks
            .iter()
            .map(|n| {
                let state = match seen.get(n) {
                    Some(s) => match s.reason() {
                        Some(r) => format!("{} ({r})", s.name()),
                        None => s.name().to_owned(),
                    },
                    None => "unknown".to_owned(),
                };
                (n.clone(), state)
            })
            .collect()
    }));
    // Each adapter's connection state feeds /health.
    for (network, rx) in std::mem::take(&mut hub.statuses) {
        let (health, metrics) = (health.clone(), metrics.clone());
        let (closed_health, closed_network) = (health.clone(), network.clone());
        let mut ever_connected = false;
        follow(
            rx,
            &shutdown,
            move |status| {
                let state = network_state(status);
                // Connected again after having been connected once: a reconnect.
                let connected = matches!(state, NetworkState::Connected);
                let was = health.get(&network) == Some(NetworkState::Connected);
                if connected && ever_connected && !was {
                    metrics.reconnect(&network);
                }
                ever_connected |= connected;
                health.set(&network, state);
            },
            move || {
                closed_health.set(
                    &closed_network,
                    NetworkState::Down("adapter stopped".into()),
                )
            },
        );
    }
    let mut state = Loop {
        store,
        router,
        metrics,
        sent_at: HashMap::new(),
        summariser: Summariser::default(),
        membership,
        admin,
        inflight: HashSet::new(),
        held: HashMap::new(),
        depth_dirty: Vec::new(),
        health: store_health,
        store_failing: None,
        store_retry,
        stranded: false,
        unrecorded: Vec::new(),
        parting: None,
        limiter: Limiter::new(limits.rate),
        caps: limits.caps,
    };
    // Resume what was not delivered before the last stop, in outbox order.
    let networks: Vec<NetworkId> = hub.outboxes.keys().cloned().collect();
    for network in networks {
        let pending = state.store.pending(&network)?;
        if !pending.is_empty() {
            tracing::info!(%network, count = pending.len(), "Resuming undelivered messages.");
        }
        state.dispatch(pending, &hub);
    }
    state.update_depths(&hub);
    // Only adapters hold senders now: the loop ends when all are gone.
    hub.inbound_tx = None;
    let mut batch: Vec<Inbound> = Vec::with_capacity(BATCH);
    let mut done: Vec<Delivered> = Vec::new();
    let mut depth_tick = tokio::time::interval(DEPTH_EVERY);
    depth_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry_tick = tokio::time::interval(RETRY_EVERY);
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = depth_tick.tick(), if !state.depth_dirty.is_empty() => state.count_depths(),
            _ = retry_tick.tick(), if state.waits() => state.retry(&hub)?,
            n = hub.inbound_rx.recv_many(&mut batch, BATCH) => {
                if n == 0 { break; }
                state.inbound(&mut batch, &hub);
            }
            n = hub.delivered_rx.recv_many(&mut done, BATCH) => {
                if n == 0 { continue; }
                state.delivered(&mut done, &hub);
            }
            Some(cmd) = hub.commands_rx.recv() => {
                state.command(cmd, &hub);
            }
        }
    }
    state.store.flush()?;
    Ok(())
}

/// Calls `on_value` with each value `rx` takes (the current one first) until `stop` is
/// cancelled, or `on_closed` once the sender is gone.
fn follow<T: Send + Sync + 'static>(
    mut rx: watch::Receiver<T>,
    stop: &CancellationToken,
    mut on_value: impl FnMut(&T) + Send + 'static,
    on_closed: impl FnOnce() + Send + 'static,
) {
    let stop = stop.clone();
    tokio::spawn(async move {
        loop {
            on_value(&rx.borrow_and_update());
            tokio::select! {
                _ = stop.cancelled() => break,
                changed = rx.changed() => if changed.is_err() {
                    on_closed();
                    break;
                },
            }
        }
    });
}

fn network_state(s: &NetworkStatus) -> NetworkState {
    match s {
        NetworkStatus::Connecting => NetworkState::Down("connecting".into()),
        NetworkStatus::Connected => NetworkState::Connected,
        NetworkStatus::Degraded(r) => NetworkState::Degraded(r.clone()),
        NetworkStatus::Down(r) => NetworkState::Down(r.clone()),
    }
}

/// The route loop's state.
struct Loop {
    store: Arc<dyn Store>,
    router: Router,
    metrics: Arc<Metrics>,
    sent_at: HashMap<(NetworkId, u64), Instant>,
    summariser: Summariser,
    membership: Membership,
    admin: Admin,
    /// (event, room) pairs handed to an adapter and not yet answered.
    inflight: HashSet<(EventId, RoomRef)>,
    /// Edits, redactions and reactions waiting for their original's answer in a room.
    held: HashMap<(EventId, RoomRef), Vec<Delivery>>,
    /// Networks whose outbox changed since their depth was last counted.
    depth_dirty: Vec<NetworkId>,
    /// Where the store's state is shown.
    health: Arc<Health>,
    /// Since when the store refuses writes, while it does.
    store_failing: Option<Instant>,
    /// How long it may, before the loop gives up.
    store_retry: Duration,
    /// A flush failed: outbox rows may be recorded that were never handed out.
    stranded: bool,
    /// Answers the store did not take; recorded once it takes writes again.
    unrecorded: Vec<Delivered>,
    /// Rooms being left, once their announcements are answered.
    parting: Option<Parting>,
    /// Per-sender rate limits.
    limiter: Limiter,
    /// What one inbound event may fan out to.
    caps: FanoutCaps,
}

/// A room-list change held back until the announcements in the rooms it leaves are answered,
/// so that every network says them before the adapters leave (IRC would PART first, Matrix
/// refuse a delivery to a room no longer listed).
struct Parting {
    /// Announcements not answered yet.
    waiting: HashSet<(EventId, RoomRef)>,
    /// When the change goes out anyway.
    until: Instant,
}

/// The store's resolver plus what the loop knows is on its way.
struct FlightResolver<'a> {
    store: &'a dyn Store,
    inflight: &'a HashSet<(EventId, RoomRef)>,
}

impl RefResolver for FlightResolver<'_> {
    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Option<EventId> {
        Resolver(self.store).event_for(room, remote)
    }
    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Vec<MessageId> {
        Resolver(self.store).remote_ids(event, room)
    }
    fn is_own_puppet(&self, user: &junction_core::UserRef) -> bool {
        Resolver(self.store).is_own_puppet(user)
    }
    fn in_flight(&self, event: &EventId, room: &RoomRef) -> bool {
        self.inflight.contains(&(event.clone(), room.clone()))
    }
}

/// Logs (once: the item is answered as handled, so it does not come back) and counts an
/// inbound event that can never be stored.
fn refused_as_poison(metrics: &Metrics, event: &junction_core::Event, e: &StoreError) {
    metrics.refused(&event.origin.network, "unencodable");
    tracing::warn!(
        error = %e,
        event = %event.id,
        origin = %event.origin,
        remote_id = %event.remote_id,
        "An event that cannot be stored was refused and answered as handled."
    );
}

impl Loop {
    /// Records one batch of inbound events, flushes once, acknowledges, then dispatches.
    fn inbound(&mut self, batch: &mut Vec<Inbound>, hub: &Hub) {
        let mut out: Vec<Delivery> = Vec::new();
        let mut acks = Vec::new();
        for Inbound {
            mut event,
            ack,
            capped_reactions,
        } in batch.drain(..)
        {
            if capped_reactions > 0 {
                self.metrics
                    .capped(&event.origin.network, "reaction", capped_reactions);
            }
            event.bound_bodies();
            match self.admin.check_ban(self.store.as_ref(), &event.sender) {
                crate::admin::BanCheck::Clear => {}
                crate::admin::BanCheck::Banned => {
                    tracing::info!(event = %event.id, sender = %event.sender.user, "A banned user's event is not relayed.");
                    if let Some(a) = ack {
                        let _ = a.send(Ok(()));
                    }
                    continue;
                }
                crate::admin::BanCheck::Unknown => {
                    // Bans fail closed: an event whose sender can not be checked is refused,
                    // and its origin told so (Synapse sends the transaction again).
                    self.metrics.error(&event.origin.network, "ban_check");
                    tracing::warn!(event = %event.id, sender = %event.sender.user, "The ban list could not be read: the event is refused.");
                    if let Some(a) = ack {
                        let _ = a.send(Err("the ban list could not be read".into()));
                    }
                    continue;
                }
            }
            let Some(event) = self.admit(event) else {
                if let Some(a) = ack {
                    let _ = a.send(Ok(()));
                }
                continue;
            };
            if let Err(why) = junction_store::authorise(self.store.as_ref(), &event) {
                // Someone else's message, and no moderator of the origin room: the gateway
                // lends nobody the power to take it back or correct it elsewhere.
                self.metrics.error(&event.origin.network, "unauthorised");
                tracing::warn!(event = %event.id, kind = event.kind.name(), sender = %event.sender.user, why = why.name(), "An edit or redaction of someone else's message is not relayed.");
                if let Some(a) = ack {
                    let _ = a.send(Ok(()));
                }
                continue;
            }
            if !self.summariser.pass(self.membership, &event) {
                if let Some(a) = ack {
                    let _ = a.send(Ok(()));
                }
                continue;
            }
            let planned = self.router.plan(
                &event,
                &FlightResolver {
                    store: self.store.as_ref(),
                    inflight: &self.inflight,
                },
            );
            match self.store.record_inbound(&event, planned) {
                Ok(Recorded::New(ds)) => {
                    self.metrics.inbound(&event.origin.network);
                    tracing::debug!(event = %event.id, kind = event.kind.name(), origin = %event.origin, targets = ds.len(), "Event recorded.");
                    out.extend(ds);
                    acks.push((ack, Ok(())));
                }
                Ok(Recorded::Duplicate) => {
                    self.metrics.duplicate();
                    tracing::debug!(event = %event.id, origin = %event.origin, "Replay of a known event skipped.");
                    acks.push((ack, Ok(())));
                }
                Err(e) if e.is_permanent() => {
                    // A poison item: this event can never be stored, so retrying it would only
                    // loop. It is answered as handled (the network moves past it) and counted.
                    refused_as_poison(&self.metrics, &event, &e);
                    acks.push((ack, Ok(())));
                }
                Err(e) => {
                    self.metrics.error(&event.origin.network, "store");
                    tracing::error!(error = %e, event = %event.id, "Could not record an event.");
                    acks.push((ack, Err(e.to_string())));
                }
            }
        }
        let flushed = self.store.flush();
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "Could not flush the store.");
        }
        self.note_store(&flushed);
        for (ack, r) in acks {
            if let Some(a) = ack {
                let r = match (&flushed, r) {
                    (Err(e), _) => Err(e.to_string()),
                    (_, r) => r,
                };
                let _ = a.send(r);
            }
        }
        if flushed.is_ok() {
            let out = self.with_stranded(out, hub);
            self.dispatch(out, hub);
        }
    }

    /// The per-sender rate limit and the fan-out caps: the event as it may cross, or None
    /// when it is dropped (logged once per burst, counted; the caller acknowledges it as
    /// handled, so it is never retried).
    fn admit(&mut self, mut event: Event) -> Option<Event> {
        let network = event.origin.network.clone();
        let kind = ratelimit::kind_of(&event.kind);
        match self
            .limiter
            .check(&event, Instant::now(), junction_core::clock::now_ms())
        {
            Verdict::Pass => {}
            Verdict::PassAfter(n) => {
                tracing::info!(sender = %event.sender.user, kind, dropped = n, "A sender is under the rate limit again.");
            }
            Verdict::Drop { first } => {
                self.metrics.rate_limited(&network, kind);
                if first {
                    tracing::warn!(sender = %event.sender.user, kind, event = %event.id, "A sender is over the rate limit; their events of this kind are dropped until it refills.");
                }
                return None;
            }
        }
        match self.caps.apply(&mut event) {
            Capped::Untouched => {}
            Capped::Trimmed(n) => {
                self.metrics.capped(&network, "attachment", n as u64);
                tracing::info!(sender = %event.sender.user, event = %event.id, dropped = n, "Attachments over the cap, repeated or with too long a URL were dropped.");
            }
            Capped::Refused(why) => {
                self.metrics.capped(&network, "reaction", 1);
                tracing::info!(sender = %event.sender.user, event = %event.id, why, "An event over a fan-out cap was dropped.");
                return None;
            }
        }
        Some(event)
    }

    /// Hands recorded deliveries to their adapters.
    ///
    /// An edit, redaction or reaction whose original is still on its way to the same room
    /// waits for the original's answer; one whose original has arrived there meanwhile gets
    /// the original's ids filled in.
    fn dispatch(&mut self, out: Vec<Delivery>, hub: &Hub) {
        let now = Instant::now();
        let mut touched: Vec<NetworkId> = Vec::new();
        for mut d in out {
            if let Some(original) = self.awaits(&d) {
                let key = (original, d.target.clone());
                if self.inflight.contains(&key) {
                    tracing::debug!(event = %d.event.id, target = %d.target, "Held until the message it refers to is confirmed.");
                    self.held.entry(key).or_default().push(d);
                    continue;
                }
                d.target_ids = Resolver(self.store.as_ref()).remote_ids(&key.0, &d.target);
            }
            match hub.outboxes.get(&d.target.network) {
                Some(tx) => {
                    self.inflight.insert((d.event.id.clone(), d.target.clone()));
                    self.sent_at
                        .insert((d.target.network.clone(), d.outbox_id), now);
                    if !touched.contains(&d.target.network) {
                        touched.push(d.target.network.clone());
                    }
                    let _ = tx.send(d);
                }
                None => {
                    tracing::warn!(network = %d.target.network, "No adapter for a linked network; the message waits in its outbox.")
                }
            }
        }
        for n in touched {
            self.update_depth(&n);
        }
    }

    /// The original an edit/redaction/reaction delivery still needs the target ids of.
    fn awaits(&self, d: &Delivery) -> Option<EventId> {
        if !d.target_ids.is_empty() || matches!(d.event.kind, EventKind::Message(_)) {
            return None;
        }
        let reference = d.event.references().into_iter().next()?;
        Resolver(self.store.as_ref()).event_for(&d.event.origin, reference)
    }

    /// Records adapters' answers, then hands out what waited for them.
    fn delivered(&mut self, done: &mut Vec<Delivered>, hub: &Hub) {
        let mut touched: Vec<NetworkId> = Vec::new();
        let mut released: Vec<Delivery> = Vec::new();
        for d in done.drain(..) {
            let key = (d.event.clone(), d.target.clone());
            self.inflight.remove(&key);
            if let Some(p) = &mut self.parting {
                p.waiting.remove(&key);
            }
            if let Some(waiting) = self.held.remove(&key) {
                released.extend(waiting);
            }
            let network = d.target.network.clone();
            let since = self.sent_at.remove(&(network.clone(), d.outbox_id));
            match &d.outcome {
                Ok(_) => self
                    .metrics
                    .delivered(&network, since.map(|t| t.elapsed()).unwrap_or_default()),
                Err(why) => {
                    self.metrics.failed(&network);
                    tracing::warn!(target = %d.target, event = %d.event, reason = %why, "A delivery was given up.");
                }
            }
            if let Err(e) = self.store.record_delivered(&d) {
                self.metrics.error(&network, "store");
                tracing::error!(error = %e, "Could not record a delivery; it is recorded once the store takes writes again.");
                self.unrecorded.push(d);
            }
            if !touched.contains(&network) {
                touched.push(network);
            }
        }
        let flushed = self.store.flush();
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "Could not flush the store.");
        }
        self.note_store(&flushed);
        for n in touched {
            self.update_depth(&n);
        }
        if flushed.is_ok() {
            released = self.with_stranded(released, hub);
        }
        if !released.is_empty() {
            self.dispatch(released, hub);
        }
        if self.parting.as_ref().is_some_and(|p| p.waiting.is_empty()) {
            self.part(hub);
        }
    }

    /// Answers one admin command: runs it, makes what it recorded durable, hands out its
    /// announcements and enforcements, and tells the adapters when the linked rooms changed.
    fn command(&mut self, cmd: Command, hub: &Hub) {
        let outcome = self.admin.handle(
            &cmd.from,
            &cmd.display_name,
            &cmd.text,
            &mut self.router,
            self.store.as_ref(),
        );
        if outcome.rate_limited {
            if let Some(network) = cmd.from.first().map(|u| &u.network) {
                self.metrics.error(network, "command_rate_limited");
            }
        }
        let announced: Vec<(EventId, RoomRef)> = outcome
            .deliveries
            .iter()
            .map(|d| (d.event.id.clone(), d.target.clone()))
            .collect();
        let flushed = self.store.flush();
        self.note_store(&flushed);
        let reply = match flushed {
            Ok(()) => {
                let out = self.with_stranded(outcome.deliveries, hub);
                self.dispatch(out, hub);
                outcome.reply
            }
            Err(e) => {
                tracing::error!(error = %e, "Could not flush the store after a command.");
                format!(
                    "{}\n(warning: the store could not be flushed: {e})",
                    outcome.reply
                )
            }
        };
        if outcome.links_changed {
            self.rooms_changed(announced, hub);
        }
        let _ = cmd.reply.send(reply);
    }

    /// Tells the adapters the linked rooms changed. Rooms added are listed at once; rooms
    /// left stay listed until the announcements handed out for them are answered (or
    /// [`PART_WAIT`] has passed), so each network says the announcement before it leaves.
    fn rooms_changed(&mut self, announced: Vec<(EventId, RoomRef)>, hub: &Hub) {
        let waiting: Vec<(EventId, RoomRef)> = announced
            .into_iter()
            .filter(|k| self.inflight.contains(k))
            .collect();
        if waiting.is_empty() && self.parting.is_none() {
            for (network, tx) in &hub.rooms {
                tx.send_replace(self.router.rooms_on(network));
            }
            return;
        }
        for (network, tx) in &hub.rooms {
            let mut rooms = self.router.rooms_on(network);
            let listed = tx.borrow().clone();
            rooms.extend(listed.iter().cloned());
            rooms.sort();
            rooms.dedup();
            if rooms != listed {
                tx.send_replace(rooms);
            }
        }
        let p = self.parting.get_or_insert_with(|| Parting {
            waiting: HashSet::new(),
            until: Instant::now(),
        });
        p.waiting.extend(waiting);
        p.until = Instant::now() + PART_WAIT;
        if p.waiting.is_empty() {
            self.part(hub);
        }
    }

    /// Lists exactly the linked rooms again: the adapters leave the rooms no longer linked.
    fn part(&mut self, hub: &Hub) {
        if let Some(p) = self.parting.take() {
            if !p.waiting.is_empty() {
                tracing::warn!(
                    unanswered = p.waiting.len(),
                    "Leaving unlinked rooms although some announcements were not answered in time."
                );
            }
        }
        for (network, tx) in &hub.rooms {
            tx.send_replace(self.router.rooms_on(network));
        }
    }

    /// Whether the loop has something to try again on its retry tick.
    fn waits(&self) -> bool {
        self.store_failing.is_some() || self.parting.is_some()
    }

    /// The retry tick: leaves rooms whose announcements took too long, and tries a failing
    /// store again (a write and a flush). Errors when the store has failed for longer than
    /// `store_retry`.
    fn retry(&mut self, hub: &Hub) -> anyhow::Result<()> {
        if self
            .parting
            .as_ref()
            .is_some_and(|p| Instant::now() >= p.until)
        {
            self.part(hub);
        }
        let Some(since) = self.store_failing else {
            return Ok(());
        };
        let now_ms = junction_core::clock::now_ms();
        let tried = self
            .store
            .kv_put(PROBE_TABLE, "last", &now_ms.to_be_bytes())
            .and_then(|()| self.store.flush());
        self.note_store(&tried);
        match tried {
            Ok(()) => {
                let out = self.with_stranded(Vec::new(), hub);
                self.dispatch(out, hub);
                Ok(())
            }
            Err(e) if since.elapsed() >= self.store_retry => Err(anyhow::anyhow!(
                "the store has refused writes for {} s ({e}); exiting so that a restart reopens it",
                since.elapsed().as_secs()
            )),
            Err(_) => Ok(()),
        }
    }

    /// Notes the outcome of a flush: a failure shows on `/health` and marks outbox rows as
    /// possibly stranded; a success clears that.
    fn note_store(&mut self, r: &junction_store::Result<()>) {
        match r {
            Err(e) => {
                self.stranded = true;
                if self.store_failing.is_none() {
                    self.store_failing = Some(Instant::now());
                }
                self.health.set_store(Some(e.to_string()));
            }
            Ok(()) => {
                if self.store_failing.take().is_some() {
                    self.health.set_store(None);
                }
            }
        }
    }

    /// After a successful flush: records the answers the store refused before, and puts in
    /// front of `out` the outbox rows recorded but never handed out because a flush failed
    /// (their origin's retry is a duplicate, so nothing else would hand them out before a
    /// restart). Rows in flight, held, or in `out` are left alone.
    fn with_stranded(&mut self, out: Vec<Delivery>, hub: &Hub) -> Vec<Delivery> {
        if !self.unrecorded.is_empty() {
            for d in std::mem::take(&mut self.unrecorded) {
                if let Err(e) = self.store.record_delivered(&d) {
                    tracing::error!(error = %e, "Could not record a delivery.");
                    self.unrecorded.push(d);
                }
            }
            let flushed = self.store.flush();
            self.note_store(&flushed);
            if flushed.is_err() || !self.unrecorded.is_empty() {
                return out;
            }
        }
        if !self.stranded {
            return out;
        }
        let mut skip: HashSet<(NetworkId, u64)> = self.sent_at.keys().cloned().collect();
        skip.extend(
            self.held
                .values()
                .flatten()
                .chain(out.iter())
                .map(|d| (d.target.network.clone(), d.outbox_id)),
        );
        let mut found: Vec<Delivery> = Vec::new();
        for network in hub.outboxes.keys() {
            match self.store.pending(network) {
                Ok(rows) => found.extend(
                    rows.into_iter()
                        .filter(|d| !skip.contains(&(d.target.network.clone(), d.outbox_id))),
                ),
                Err(e) => {
                    tracing::error!(error = %e, %network, "Could not read the outbox.");
                    return out;
                }
            }
        }
        self.stranded = false;
        if !found.is_empty() {
            tracing::info!(
                count = found.len(),
                "Handing out messages whose store flush had failed."
            );
        }
        found.extend(out);
        found
    }

    /// Marks a network's outbox depth for recounting on the next tick. Counting scans the
    /// whole outbox, so doing it after every batch made a backlog cost O(depth) per batch.
    fn update_depth(&mut self, network: &NetworkId) {
        if !self.depth_dirty.contains(network) {
            self.depth_dirty.push(network.clone());
        }
    }

    /// Recounts the outboxes that changed since the last count.
    fn count_depths(&mut self) {
        self.metrics.set_store_set_aside(self.store.set_aside());
        for network in std::mem::take(&mut self.depth_dirty) {
            if let Ok(depth) = self.store.outbox_depth(&network) {
                self.metrics.set_outbox_depth(&network, depth);
            }
        }
    }

    fn update_depths(&mut self, hub: &Hub) {
        for n in hub.outboxes.keys() {
            self.update_depth(n);
        }
        self.count_depths();
    }
}

/// Keeps membership noise down in `Summarised` mode: netsplit-style bursts of quits are
/// dropped after the first few per network, and joins/leaves pass only for people seen
/// speaking (so lurkers joining and leaving do not flood other networks).
#[derive(Default)]
struct Summariser {
    spoke: HashMap<junction_core::UserRef, u64>,
    /// People whose join was passed (their puppets joined elsewhere), so that their leave
    /// is passed too even if they never spoke: otherwise their puppets would stay.
    joined: HashMap<junction_core::UserRef, u64>,
    quits: HashMap<NetworkId, (u64, u32)>,
}

impl Summariser {
    /// How long someone counts as "recently active", in milliseconds.
    const ACTIVE_MS: u64 = 24 * 3600 * 1000;
    /// Quits per network in one burst window before the rest are dropped.
    const QUIT_BURST: u32 = 3;
    /// The burst window, in milliseconds.
    const QUIT_WINDOW_MS: u64 = 5_000;

    fn pass(&mut self, mode: Membership, ev: &junction_core::Event) -> bool {
        if !ev.kind.is_membership() {
            if matches!(ev.kind, EventKind::Message(_)) {
                if self.spoke.len() > 100_000 {
                    let cutoff = ev.ts_ms.saturating_sub(Self::ACTIVE_MS);
                    self.spoke.retain(|_, t| *t >= cutoff);
                }
                self.spoke.insert(ev.sender.user.clone(), ev.ts_ms);
            }
            return true;
        }
        match mode {
            Membership::Off => false,
            Membership::All => true,
            Membership::Summarised => {
                if let EventKind::Leave { quit: true, .. } = ev.kind {
                    let e = self
                        .quits
                        .entry(ev.origin.network.clone())
                        .or_insert((ev.ts_ms, 0));
                    if ev.ts_ms.saturating_sub(e.0) > Self::QUIT_WINDOW_MS {
                        *e = (ev.ts_ms, 0);
                    }
                    e.1 += 1;
                    if e.1 > Self::QUIT_BURST {
                        return false;
                    }
                }
                match ev.kind {
                    EventKind::Join => {
                        if self.joined.len() > 100_000 {
                            let cutoff = ev.ts_ms.saturating_sub(Self::ACTIVE_MS);
                            self.joined.retain(|_, t| *t >= cutoff);
                        }
                        self.joined.insert(ev.sender.user.clone(), ev.ts_ms);
                        true
                    }
                    EventKind::Leave { .. } if self.joined.remove(&ev.sender.user).is_some() => {
                        true
                    }
                    _ => self
                        .spoke
                        .get(&ev.sender.user)
                        .is_some_and(|t| ev.ts_ms.saturating_sub(*t) < Self::ACTIVE_MS),
                }
            }
        }
    }
}

/// Runs one adapter until it returns; a failing network is logged and leaves the others
/// running (one bad network never takes the gateway down).
pub async fn run_adapter<A: junction_core::Adapter>(adapter: A, cx: AdapterContext) {
    let network = cx.network.clone();
    match adapter.run(cx).await {
        Ok(()) => tracing::info!(%network, "Adapter stopped."),
        Err(e) => {
            tracing::error!(%network, error = %e, "Adapter failed; the other networks keep running.")
        }
    }
}

/// The links to start with: the config's, plus runtime links kept in the store. A stored
/// link replaces a config bridge of the same name (admins changed it); a stored link with no
/// rooms is a closed bridge and is left out. A room a stored link has taken is dropped from
/// the config's bridges (an admin moved it), so the two sets always fit together.
pub fn initial_links(
    config_links: &[junction_core::Link],
    store: &dyn Store,
) -> anyhow::Result<Vec<junction_core::Link>> {
    let stored = store.links()?;
    let taken: std::collections::HashSet<&junction_core::RoomRef> =
        stored.iter().flat_map(|l| &l.rooms).collect();
    let mut links: Vec<junction_core::Link> = Vec::new();
    for l in config_links {
        if stored.iter().any(|s| s.bridge == l.bridge) {
            continue;
        }
        let mut l = l.clone();
        l.rooms.retain(|r| {
            let keep = !taken.contains(r);
            if !keep {
                tracing::warn!(bridge = %l.bridge, room = %r, "A room of this config bridge was linked elsewhere at runtime; the runtime link wins.");
            }
            keep
        });
        links.push(l);
    }
    links.extend(stored.into_iter().filter(|l| !l.rooms.is_empty()));
    Ok(links)
}

#[cfg(test)]
mod summariser_tests {
    use super::*;
    use junction_core::{Event, MessageId, RoomRef, Sender, UserRef};

    fn ev(who: &str, n: u64, kind: EventKind) -> Event {
        Event::new(
            RoomRef::new("irc:local", "#lobby"),
            MessageId::new(format!("{who}-{n}")),
            Sender::new(UserRef::new("irc:local", who), who),
            1_000 + n,
            kind,
        )
    }

    #[test]
    fn the_leave_of_someone_whose_join_crossed_crosses_too() {
        let mut s = Summariser::default();
        let leave = || EventKind::Leave {
            reason: None,
            quit: false,
        };
        let mode = Membership::Summarised;
        // Never joined (as far as the gateway saw) nor spoke: the leave stays here.
        assert!(!s.pass(mode, &ev("ghost", 0, leave())));
        // Joined without speaking: its puppets joined elsewhere, so they leave again.
        assert!(s.pass(mode, &ev("lurker", 1, EventKind::Join)));
        assert!(s.pass(mode, &ev("lurker", 2, leave())));
        // Once only: a second leave is not news.
        assert!(!s.pass(mode, &ev("lurker", 3, leave())));
    }
}
