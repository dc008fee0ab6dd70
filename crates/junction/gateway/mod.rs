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
//!
//! Group commit: the loop is the store's one writer, and its flush is the commit point. While
//! a flush runs the loop waits, and the adapters' next events and answers queue in the
//! channels; the next turn records all of it (answers first, then the inbound batch) and makes
//! it durable with one flush. Answers (`Delivered`) need no flush of their own: they ride on
//! the next inbound batch's flush, or, when no inbound batch comes, on a flush at most
//! [`MARKS_WITHIN`] after the first unflushed one. So a steady stream costs one fsync per
//! message at low rates (not two) and one per batch at high rates.
//!
//! What that window means: a crash (SIGKILL, a panic, a power loss: sled keeps unflushed
//! writes in its own buffers) after a delivery was confirmed and before the next flush leaves its outbox row in
//! place, so the line is handed out again after the restart, once, and its ids in the target
//! room are not in the message map. Matrix and XMPP targets recognise the resend by their
//! own ids (the Matrix transaction id and the XMPP message id derive from the outbox row); an IRC
//! channel keeping history (`+H`) shows the line in its replay, which the IRC adapter reads
//! before sending and answers as delivered; only an IRC channel without history can see the
//! line twice. The same was already true of the instant between a confirmation and its flush;
//! the window is now at most [`MARKS_WITHIN`] instead of one fsync.
//!
//! This file holds [`route`] and the loop's state; each of its jobs has a file:
//! - `hub`: [`Hub`], the router side of every adapter's channels.
//! - `inbound`: one batch of inbound events (bans, rate limits and caps, authority,
//!   membership policy, `Router::plan`, `record_inbound`, one flush, acks).
//! - `dispatch`: deliveries to the adapters, edits and the like held until their original is
//!   answered; answers recorded; outbox depths for `/metrics`.
//! - `commands`: admin commands, and rooms left only once their announcements are answered.
//! - `stranded`: a failing store: `/health`, the retry tick, outbox rows a failed flush left
//!   unsent.
//! - `summariser`: the `summarised` membership policy.
//! - `retention`: the pruner of old message-map rows and audit entries (off the loop), and
//!   the outbox bounds applied at start and when a network comes back.

mod commands;
mod dispatch;
mod hub;
mod inbound;
mod private;
pub mod retention;
mod stranded;
mod summariser;

pub use hub::{Attached, Hub};
pub use retention::Retention;

use crate::admin::Admin;
use crate::config::Membership;
use crate::metrics::{Health, Metrics, NetworkState};
use crate::ratelimit::Limiter;
use commands::Parting;
use junction_core::limits::FanoutCaps;
use junction_core::router::Router;
use junction_core::{
    AdapterContext, Delivered, Delivery, EventId, Inbound, NetworkId, NetworkStatus, RoomRef,
};
use junction_store::Store;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use summariser::Summariser;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Most inbound events recorded in one batch before one flush.
const BATCH: usize = 256;

/// The longest a recorded answer (`Delivered`) waits for a flush: it normally rides on the
/// next inbound batch's flush; when none comes this soon, the loop flushes for it. Equal to
/// sled's own background flush interval, so it adds no fsync that sled would not make anyway.
pub const MARKS_WITHIN: Duration = Duration::from_millis(500);

/// How often the outbox depth gauges are recounted while outboxes change.
const DEPTH_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// How often a failing store is tried again, and a waiting room-list change checked.
const RETRY_EVERY: Duration = Duration::from_secs(1);

/// What the route loop needs besides the adapters' channels.
pub struct Parts {
    /// The durable store.
    pub store: Arc<dyn Store>,
    /// Which rooms are linked.
    pub router: Router,
    /// How membership events cross networks.
    pub membership: Membership,
    /// In `summarised` mode, how long a lurker's join is held before it crosses anyway
    /// (`None`: only once they speak).
    pub lurker_window: Option<Duration>,
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
    /// How long the message map, the audit trail and undelivered outbox rows are kept.
    pub retention: Retention,
    /// Who can be reached by private message.
    pub private_messages: crate::config::PrivateMessages,
}

/// The router loop. Runs until `shutdown` is cancelled, then flushes the store. Returns an
/// error when the store has refused writes for longer than [`Parts::store_retry`].
pub async fn route(parts: Parts, mut hub: Hub, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Parts {
        store,
        router,
        membership,
        lurker_window,
        metrics,
        health,
        mut admin,
        store_retry,
        limits,
        retention,
        private_messages,
    } = parts;
    retention::spawn_pruner(store.clone(), retention.clone(), shutdown.clone());
    crate::memory::spawn_trimmer(shutdown.clone());
    // Networks that come back after being away: their outbox bounds are applied then.
    let (back_tx, mut back_rx) = tokio::sync::mpsc::unbounded_channel::<NetworkId>();
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
    // The rooms linked on each network, as links change, feed /health.
    for (network, tx) in &hub.rooms {
        let (health, network) = (health.clone(), network.clone());
        follow(
            tx.subscribe(),
            &shutdown,
            move |rooms| {
                health.set_rooms(&network, rooms.iter().map(|r| r.to_string()).collect());
            },
            || {},
        );
    }
    // Each adapter's connection state feeds /health.
    for (network, rx) in std::mem::take(&mut hub.statuses) {
        let (health, metrics) = (health.clone(), metrics.clone());
        let (closed_health, closed_network) = (health.clone(), network.clone());
        let back = back_tx.clone();
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
                    let _ = back.send(network.clone());
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
        summariser: Summariser::new(lurker_window.map(|w| w.as_millis() as u64)),
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
        marks_since: None,
        parting: None,
        limiter: Limiter::new(limits.rate),
        caps: limits.caps,
        reach: private::Reach::new(private_messages),
        retention,
    };
    // Resume what was not delivered before the last stop, in outbox order, within the
    // outbox bounds.
    let networks: Vec<NetworkId> = hub.outboxes.keys().cloned().collect();
    for network in networks {
        // What it records is in the outbox, read next.
        state.bound_outbox(&network, &hub);
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
    let mut lurker_tick = tokio::time::interval(RETRY_EVERY);
    lurker_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let marks_due = state
            .marks_since
            .map(|since| tokio::time::Instant::from_std(since + MARKS_WITHIN));
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = depth_tick.tick(), if !state.depth_dirty.is_empty() => state.count_depths(),
            _ = sleep_until(marks_due), if marks_due.is_some() => state.flush_marks(&hub),
            _ = retry_tick.tick(), if state.waits() => state.retry(&hub)?,
            _ = lurker_tick.tick(), if state.summariser.waiting() => state.release_lurkers(&hub),
            n = hub.inbound_rx.recv_many(&mut batch, BATCH) => {
                if n == 0 { break; }
                // The answers that came meanwhile share this batch's flush.
                while done.len() < BATCH {
                    match hub.delivered_rx.try_recv() {
                        Ok(d) => done.push(d),
                        Err(_) => break,
                    }
                }
                if !done.is_empty() {
                    state.delivered(&mut done, &hub);
                }
                state.inbound(&mut batch, &hub);
            }
            n = hub.delivered_rx.recv_many(&mut done, BATCH) => {
                if n == 0 { continue; }
                state.delivered(&mut done, &hub);
            }
            Some(cmd) = hub.commands_rx.recv() => {
                state.command(cmd, &hub);
            }
            Some(network) = back_rx.recv() => {
                let out = state.bound_outbox(&network, &hub);
                state.dispatch(out, &hub);
            }
        }
    }
    state.store.flush()?;
    Ok(())
}

/// Sleeps until `at`, or forever when there is nothing to wait for.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs `job` on a blocking thread (off the async threads) at each tick of `tick`, one run
/// at a time, until `stop`; `done` gets what each run returned (`Err` when it panicked).
pub(crate) fn spawn_ticking<R: Send + 'static>(
    mut tick: tokio::time::Interval,
    stop: CancellationToken,
    job: impl Fn() -> R + Clone + Send + 'static,
    done: impl Fn(Result<R, tokio::task::JoinError>) + Send + 'static,
) {
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let ran = tokio::task::spawn_blocking(job.clone()).await;
            done(ran);
        }
    });
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
        NetworkStatus::Connecting => NetworkState::Down(crate::metrics::CONNECTING.into()),
        NetworkStatus::Connected => NetworkState::Connected,
        NetworkStatus::Degraded(r) => NetworkState::Degraded(r.clone()),
        NetworkStatus::Down(r) => NetworkState::Down(r.clone()),
    }
}

/// The route loop's state.
struct Loop {
    /// Who can be reached by private message.
    reach: private::Reach,
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
    /// Since when answers are recorded that no flush has covered yet (see [`MARKS_WITHIN`]).
    marks_since: Option<Instant>,
    /// Rooms being left, once their announcements are answered.
    parting: Option<Parting>,
    /// Per-sender rate limits.
    limiter: Limiter,
    /// What one inbound event may fan out to.
    caps: FanoutCaps,
    /// How long things are kept; the outbox bounds.
    retention: Retention,
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
