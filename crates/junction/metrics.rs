//! Prometheus metrics and the health endpoint.
//!
//! [`Metrics`] holds the gateway's counters, gauges and the delivery latency histogram and
//! renders them in the Prometheus text exposition format (version 0.0.4). [`Health`] holds the
//! state of each network as the adapters and the gateway report it. [`serve`] exposes both over
//! HTTP: `GET /metrics` and `GET /health` (200 when every network is connected, 503 otherwise).
//!
//! Metric names (every per-network series carries a `network` label: `matrix`, `xmpp`,
//! `irc:<name>`):
//!
//! | name | type | meaning |
//! | --- | --- | --- |
//! | `junction_messages_in_total` | counter | events recorded from the network |
//! | `junction_messages_out_total` | counter | deliveries the network's adapter confirmed |
//! | `junction_delivery_failures_total` | counter | deliveries the adapter gave up on |
//! | `junction_delivery_latency_seconds` | histogram | from recording the event to `Delivered` |
//! | `junction_outbox_depth` | gauge | outbox rows waiting for the network |
//! | `junction_puppets_connected` | gauge | puppets currently connected on the network |
//! | `junction_reconnects_total` | counter | reconnections to the network's server |
//! | `junction_outbox_dropped_total` | counter | undelivered outbox rows dropped past `[gateway] outbox_max_age_hours` or `outbox_max_depth` |
//! | `junction_errors_total` | counter | errors, with a `kind` label as well |
//! | `junction_duplicates_skipped_total` | counter | inbound events already recorded (no label) |
//! | `junction_refused_total` | counter | inbound items refused and answered as handled, with a `reason` label as well (`unencodable`: the event can never be stored) |
//! | `junction_store_records_set_aside_total` | counter | stored records that could not be read back and were set aside (no label) |
//! | `junction_rate_limited_total` | counter | inbound events dropped by the per-sender rate limit, with `kind` (`message`, `reaction`, `join`, `nick`) |
//! | `junction_capped_total` | counter | inbound events refused or trimmed by a fan-out cap, with `kind` (`attachment`, `reaction`) |

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use junction_core::NetworkId;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const RATE_LIMITED: &str = "junction_rate_limited_total";
const CAPPED: &str = "junction_capped_total";

/// The content type of the Prometheus text exposition format served on `/metrics`.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds (seconds) of the delivery latency histogram's buckets, from 100 µs to 30 s;
/// `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// The gateway's metrics. Share it as an `Arc<Metrics>`; every method takes `&self`.
///
/// Why plain atomics rather than the `prometheus-client` crate: that crate encodes the
/// OpenMetrics text format (counter families typed without their `_total` suffix, a closing
/// `# EOF`), which a scraper reading the 0.0.4 text format that `/metrics` promises would take
/// as untyped series, and its label families look every series up behind a lock. The handful of
/// metric shapes here fit in a few atomics per network, and the 0.0.4 format is a short line
/// grammar, so both are written here.
///
/// Hot path: the networks named in [`Metrics::new`] get their series up front in a map that is
/// never written again, so counting for them is a map lookup and an atomic add, with no lock.
/// A network not named there still counts: its series is created on first use in a second map
/// behind a lock. Error counts (`error`) take a small per-network lock, as errors are rare and
/// their kinds open-ended.
#[derive(Debug, Default)]
pub struct Metrics {
    fixed: BTreeMap<NetworkId, Series>,
    late: RwLock<BTreeMap<NetworkId, Arc<Series>>>,
    duplicates: AtomicU64,
    store_set_aside: AtomicU64,
    /// (metric, network, kind) → count, for the rare counters of hostile input.
    dropped: Mutex<BTreeMap<(&'static str, NetworkId, &'static str), u64>>,
    /// Error counters an adapter keeps itself: (network, kind, count, the count already
    /// added to the errors), read at each render.
    followed: Mutex<Vec<Followed>>,
}

/// A counter kept by an adapter and shown among a network's errors.
#[derive(Debug)]
struct Followed {
    network: NetworkId,
    kind: &'static str,
    count: Arc<AtomicU64>,
    shown: u64,
}

/// Every series of one network.
#[derive(Debug, Default)]
struct Series {
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    failures: AtomicU64,
    latency: Histogram,
    outbox_depth: AtomicU64,
    puppets: AtomicU64,
    reconnects: AtomicU64,
    outbox_dropped: AtomicU64,
    errors: Mutex<BTreeMap<&'static str, u64>>,
    refused: Mutex<BTreeMap<&'static str, u64>>,
}

/// A histogram over [`LATENCY_BUCKETS`]: one non-cumulative count per bucket (the last one is
/// `+Inf`) and the sum in nanoseconds; rendering accumulates.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let slot = LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(value.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Metrics with series for each of `networks` from the start (all zero), so that scrapes
    /// show every configured network before anything happens on it.
    pub fn new(networks: impl IntoIterator<Item = NetworkId>) -> Self {
        Self {
            fixed: networks
                .into_iter()
                .map(|n| (n, Series::default()))
                .collect(),
            ..Self::default()
        }
    }

    /// Runs `f` on the series of `network`, creating it if the network was not named in
    /// [`Metrics::new`].
    fn with<R>(&self, network: &NetworkId, f: impl FnOnce(&Series) -> R) -> R {
        if let Some(series) = self.fixed.get(network) {
            return f(series);
        }
        let found = self
            .late
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(network)
            .cloned();
        let series = match found {
            Some(series) => series,
            None => self
                .late
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(network.clone())
                .or_default()
                .clone(),
        };
        f(&series)
    }

    /// One event from `network` was recorded.
    pub fn inbound(&self, network: &NetworkId) {
        self.with(network, |s| s.messages_in.fetch_add(1, Ordering::Relaxed));
    }

    /// One delivery to `network` was confirmed, `latency` after its event was recorded.
    pub fn delivered(&self, network: &NetworkId, latency: Duration) {
        self.with(network, |s| {
            s.messages_out.fetch_add(1, Ordering::Relaxed);
            s.latency.observe(latency);
        });
    }

    /// One delivery to `network` was given up by its adapter.
    pub fn failed(&self, network: &NetworkId) {
        self.with(network, |s| s.failures.fetch_add(1, Ordering::Relaxed));
    }

    /// `depth` outbox rows are waiting for `network`.
    pub fn set_outbox_depth(&self, network: &NetworkId, depth: usize) {
        let depth = u64::try_from(depth).unwrap_or(u64::MAX);
        self.with(network, |s| s.outbox_depth.store(depth, Ordering::Relaxed));
    }

    /// `count` puppets are connected on `network`.
    pub fn set_puppets(&self, network: &NetworkId, count: usize) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.with(network, |s| s.puppets.store(count, Ordering::Relaxed));
    }

    /// The adapter of `network` reconnected to its server.
    pub fn reconnect(&self, network: &NetworkId) {
        self.with(network, |s| s.reconnects.fetch_add(1, Ordering::Relaxed));
    }

    /// `n` undelivered outbox rows for `network` were dropped past the outbox bounds.
    pub fn outbox_dropped(&self, network: &NetworkId, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.with(network, |s| {
            s.outbox_dropped.fetch_add(n, Ordering::Relaxed)
        });
    }

    /// An error of `kind` (a short snake_case word such as `store`, `malformed_input`,
    /// `send`) happened on `network`.
    pub fn error(&self, network: &NetworkId, kind: &'static str) {
        self.with(network, |s| {
            *s.errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(kind)
                .or_default() += 1;
        });
    }

    /// A counter for an adapter to bump itself, shown among the errors of `kind` on
    /// `network` (`junction_errors_total{network,kind}`, added to what [`Metrics::error`]
    /// counts there), read each time the metrics are rendered.
    pub fn counter(&self, network: &NetworkId, kind: &'static str) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        self.follow(network, kind, count.clone());
        count
    }

    /// Shows `counter`, which an adapter bumps itself, among the errors of `kind` on
    /// `network` (see [`Metrics::counter`]).
    pub fn follow(&self, network: &NetworkId, kind: &'static str, counter: Arc<AtomicU64>) {
        self.followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Followed {
                network: network.clone(),
                kind,
                count: counter,
                shown: 0,
            });
    }

    /// An inbound item from `network` was refused for `reason` and answered as handled.
    pub fn refused(&self, network: &NetworkId, reason: &'static str) {
        self.with(network, |s| {
            *s.refused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(reason)
                .or_default() += 1;
        });
    }

    /// How many stored records the store has set aside as unreadable since it was opened.
    pub fn set_store_set_aside(&self, count: u64) {
        self.store_set_aside.store(count, Ordering::Relaxed);
    }

    /// An inbound event was skipped because it had been recorded before.
    pub fn duplicate(&self) {
        self.duplicates.fetch_add(1, Ordering::Relaxed);
    }

    /// An inbound event of `kind` from `network` was dropped by the per-sender rate limit.
    pub fn rate_limited(&self, network: &NetworkId, kind: &'static str) {
        self.count_dropped(RATE_LIMITED, network, kind, 1);
    }

    /// `n` parts (`kind`: `attachment`, `reaction`) of an inbound event from `network` were
    /// cut by a fan-out cap.
    pub fn capped(&self, network: &NetworkId, kind: &'static str, n: u64) {
        self.count_dropped(CAPPED, network, kind, n);
    }

    fn count_dropped(&self, metric: &'static str, network: &NetworkId, kind: &'static str, n: u64) {
        *self
            .dropped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry((metric, network.clone(), kind))
            .or_default() += n;
    }

    /// Every series in the Prometheus text exposition format, version 0.0.4: per metric a
    /// `# HELP` and a `# TYPE` line, then its samples, networks in sorted order.
    pub fn render(&self) -> String {
        for f in self
            .followed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
        {
            let n = f.count.load(Ordering::Relaxed);
            let new = n.saturating_sub(f.shown);
            if new > 0 {
                f.shown = n;
                self.with(&f.network, |s| {
                    *s.errors
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .entry(f.kind)
                        .or_default() += new;
                });
            }
        }
        let late = self
            .late
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut all: BTreeMap<&NetworkId, &Series> =
            late.iter().map(|(n, s)| (n, s.as_ref())).collect();
        all.extend(self.fixed.iter());

        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, get: fn(&Series) -> u64| {
            header(out, name, help, "counter");
            for (network, series) in &all {
                sample(out, name, &[("network", network.as_str())], get(series));
            }
        };
        counter(
            &mut out,
            "junction_messages_in_total",
            "Events recorded from each network.",
            |s| s.messages_in.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "junction_messages_out_total",
            "Deliveries each network's adapter confirmed.",
            |s| s.messages_out.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "junction_delivery_failures_total",
            "Deliveries each network's adapter gave up on.",
            |s| s.failures.load(Ordering::Relaxed),
        );

        let name = "junction_delivery_latency_seconds";
        header(
            &mut out,
            name,
            "Time from recording an event to its delivery being confirmed, per target network.",
            "histogram",
        );
        for (network, series) in &all {
            histogram(&mut out, name, network.as_str(), &series.latency);
        }

        let gauge = |out: &mut String, name: &str, help: &str, get: fn(&Series) -> u64| {
            header(out, name, help, "gauge");
            for (network, series) in &all {
                sample(out, name, &[("network", network.as_str())], get(series));
            }
        };
        gauge(
            &mut out,
            "junction_outbox_depth",
            "Outbox rows waiting for each network.",
            |s| s.outbox_depth.load(Ordering::Relaxed),
        );
        gauge(
            &mut out,
            "junction_puppets_connected",
            "Puppets currently connected on each network.",
            |s| s.puppets.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "junction_reconnects_total",
            "Reconnections to each network's server.",
            |s| s.reconnects.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "junction_outbox_dropped_total",
            "Undelivered outbox rows for each network dropped past the outbox bounds.",
            |s| s.outbox_dropped.load(Ordering::Relaxed),
        );

        // A counter per network and one more label, kept in a map per series.
        type Labelled = fn(&Series) -> &Mutex<BTreeMap<&'static str, u64>>;
        let labelled = |out: &mut String, name: &str, help: &str, label: &str, get: Labelled| {
            header(out, name, help, "counter");
            for (network, series) in &all {
                let counts = get(series)
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone();
                for (value, count) in counts {
                    sample(
                        out,
                        name,
                        &[("network", network.as_str()), (label, value)],
                        count,
                    );
                }
            }
        };
        labelled(
            &mut out,
            "junction_errors_total",
            "Errors per network and kind.",
            "kind",
            |s| &s.errors,
        );

        let name = "junction_duplicates_skipped_total";
        header(
            &mut out,
            name,
            "Inbound events skipped because they had been recorded before.",
            "counter",
        );
        sample(&mut out, name, &[], self.duplicates.load(Ordering::Relaxed));

        labelled(
            &mut out,
            "junction_refused_total",
            "Inbound items refused and answered as handled, per network and reason.",
            "reason",
            |s| &s.refused,
        );

        let name = "junction_store_records_set_aside_total";
        header(
            &mut out,
            name,
            "Stored records that could not be read back and were set aside.",
            "counter",
        );
        sample(
            &mut out,
            name,
            &[],
            self.store_set_aside.load(Ordering::Relaxed),
        );
        let dropped = self
            .dropped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        for (name, help) in [
            (
                RATE_LIMITED,
                "Inbound events dropped by the per-sender rate limit.",
            ),
            (CAPPED, "Parts of inbound events cut by a fan-out cap."),
        ] {
            header(&mut out, name, help, "counter");
            for ((_, network, kind), count) in dropped.iter().filter(|((m, _, _), _)| *m == name) {
                sample(
                    &mut out,
                    name,
                    &[("network", network.as_str()), ("kind", kind)],
                    *count,
                );
            }
        }
        out
    }
}

/// Writes the `# HELP` and `# TYPE` lines of one metric.
fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Writes the cumulative `_bucket` lines, `_sum` and `_count` of one network's histogram.
fn histogram(out: &mut String, name: &str, network: &str, h: &Histogram) {
    let bucket = format!("{name}_bucket");
    let mut cumulative = 0u64;
    for (i, slot) in h.buckets.iter().enumerate() {
        cumulative += slot.load(Ordering::Relaxed);
        let le = match LATENCY_BUCKETS.get(i) {
            Some(le) => le.to_string(),
            None => "+Inf".to_owned(),
        };
        sample(
            out,
            &bucket,
            &[("network", network), ("le", le.as_str())],
            cumulative,
        );
    }
    // Seconds as a float: the sum is kept in whole nanoseconds so it can be an atomic.
    let sum = h.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
    sample(out, &format!("{name}_sum"), &[("network", network)], sum);
    // The count is the `+Inf` bucket, so the two always agree within one scrape.
    sample(
        out,
        &format!("{name}_count"),
        &[("network", network)],
        cumulative,
    );
}

/// Escapes a label value for the text format: backslash, double quote and line feed.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes a `# HELP` text: backslash and line feed.
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// What is known of one network's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetworkState {
    /// Connected and relaying.
    Connected,
    /// Connected but not fully working (e.g. some rooms not joined, puppets failing), and why.
    Degraded(String),
    /// Not connected, and why (e.g. the last connection error, or not connected yet).
    Down(String),
}

impl NetworkState {
    /// `connected`, `degraded` or `down`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Degraded(_) => "degraded",
            Self::Down(_) => "down",
        }
    }

    /// Why the network is not connected, if it is not.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Connected => None,
            Self::Degraded(reason) | Self::Down(reason) => Some(reason),
        }
    }
}

/// The reason of a network that has not connected yet ([`Health::new`]); not an error.
pub const NOT_CONNECTED_YET: &str = "not connected yet";
/// The reason of a network whose adapter is connecting; not an error.
pub const CONNECTING: &str = "connecting";

/// The last problem a network had: why it was down or degraded, and when (ms since the
/// Unix epoch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastError {
    /// The reason its state gave.
    pub reason: String,
    /// When it was reported.
    pub at_ms: u64,
}

/// The health of every network, set by the adapters and the gateway and served on `/health`.
/// Share it as an `Arc<Health>`; state changes are rare, so a lock is fine here.
#[derive(Debug, Default)]
pub struct Health {
    states: Mutex<BTreeMap<NetworkId, NetworkState>>,
    /// Why the store refuses writes, while it does.
    store: Mutex<Option<String>>,
    /// The rooms linked on each network, as the links name them.
    rooms: Mutex<BTreeMap<NetworkId, Vec<String>>>,
    /// Each network's last problem, kept after it is solved.
    last_errors: Mutex<BTreeMap<NetworkId, LastError>>,
    /// Waiting while another gateway is active on the same store.
    standby: std::sync::atomic::AtomicBool,
}

impl Health {
    /// Health for `networks`, each [`NetworkState::Down`] ("not connected yet") until set.
    pub fn new(networks: impl IntoIterator<Item = NetworkId>) -> Self {
        let states = networks
            .into_iter()
            .map(|n| (n, NetworkState::Down(NOT_CONNECTED_YET.to_owned())))
            .collect();
        Self {
            states: Mutex::new(states),
            ..Self::default()
        }
    }

    /// Sets the rooms linked on `network` (shown on `/health`).
    pub fn set_rooms(&self, network: &NetworkId, rooms: Vec<String>) {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(network.clone(), rooms);
    }

    /// The last problem of `network`, if it had one since the start.
    pub fn last_error(&self, network: &NetworkId) -> Option<LastError> {
        self.last_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(network)
            .cloned()
    }

    /// Sets the store's state: `Some(reason)` while it refuses writes, None once it takes
    /// them again. Logs the change if it is one.
    pub fn set_store(&self, failing: Option<String>) {
        let mut store = self.store.lock().unwrap_or_else(PoisonError::into_inner);
        if store.is_some() != failing.is_some() {
            match &failing {
                Some(reason) => tracing::error!(reason = %reason, "The store refuses writes."),
                None => tracing::info!("The store takes writes again."),
            }
        }
        *store = failing;
    }

    /// Marks the gateway as a standby (waiting while another one is active on the same
    /// PostgreSQL store) or, with `false`, as the active one.
    pub fn set_standby(&self, standby: bool) {
        self.standby
            .store(standby, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the gateway is a standby.
    pub fn is_standby(&self) -> bool {
        self.standby.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the store refuses writes, if it does.
    pub fn store_failure(&self) -> Option<String> {
        self.store
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn states(&self) -> std::sync::MutexGuard<'_, BTreeMap<NetworkId, NetworkState>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the state of `network` (adding the network if it was not known), and logs the
    /// change if it is one. A reason other than [`CONNECTING`] and [`NOT_CONNECTED_YET`]
    /// becomes the network's last error.
    pub fn set(&self, network: &NetworkId, state: NetworkState) {
        let previous = self.states().insert(network.clone(), state.clone());
        if let Some(reason) = state
            .reason()
            .filter(|r| ![CONNECTING, NOT_CONNECTED_YET].contains(r))
        {
            self.last_errors
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    network.clone(),
                    LastError {
                        reason: reason.to_owned(),
                        at_ms: junction_core::clock::now_ms(),
                    },
                );
        }
        if previous.as_ref() != Some(&state) {
            tracing::info!(
                network = %network,
                state = state.name(),
                reason = state.reason().unwrap_or(""),
                "Network state changed."
            );
        }
    }

    /// The state of `network`, if it is known.
    pub fn get(&self, network: &NetworkId) -> Option<NetworkState> {
        self.states().get(network).cloned()
    }

    /// Whether every network is connected (true when there are none) and the store takes
    /// writes.
    pub fn is_healthy(&self) -> bool {
        !self.is_standby()
            && self.store_failure().is_none()
            && self
                .states()
                .values()
                .all(|s| matches!(s, NetworkState::Connected))
    }

    /// The HTTP status of `/health`: 200 when every network is connected and the store takes
    /// writes, 503 otherwise.
    pub fn status(&self) -> StatusCode {
        if self.is_healthy() {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        }
    }

    /// The `/health` body: the overall status (`ok` when every network is connected, `down`
    /// when any is down, `degraded` otherwise) and each network, sorted, with its state and
    /// (unless connected) the reason, e.g.
    /// `{"status":"down","networks":[{"network":"irc:local","state":"down","reason":"connection refused"}]}`.
    /// While the store refuses writes the status is `down` and a `store` entry says why:
    /// `"store":{"state":"failing","reason":"..."}`. Each network also lists its linked
    /// `rooms` and, once it had a problem, its `last_error` (`reason`, `at_ms`: ms since the
    /// Unix epoch), kept after it is solved. A standby (another gateway is active on the
    /// same store) says `"status":"standby"`.
    pub fn render_json(&self) -> String {
        let states = self.states().clone();
        let rooms = self
            .rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let last_errors = self
            .last_errors
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let store = self.store_failure();
        let status = if self.is_standby() {
            "standby"
        } else if store.is_some() || states.values().any(|s| matches!(s, NetworkState::Down(_))) {
            "down"
        } else if states
            .values()
            .any(|s| matches!(s, NetworkState::Degraded(_)))
        {
            "degraded"
        } else {
            "ok"
        };
        let networks: Vec<serde_json::Value> = states
            .iter()
            .map(|(network, state)| {
                let mut entry = serde_json::json!({
                    "network": network.as_str(),
                    "state": state.name(),
                });
                if let Some(reason) = state.reason() {
                    entry["reason"] = reason.into();
                }
                entry["rooms"] = rooms.get(network).cloned().unwrap_or_default().into();
                if let Some(e) = last_errors.get(network) {
                    entry["last_error"] =
                        serde_json::json!({ "reason": e.reason, "at_ms": e.at_ms });
                }
                entry
            })
            .collect();
        let mut body = serde_json::json!({ "status": status, "networks": networks });
        if let Some(reason) = store {
            body["store"] = serde_json::json!({ "state": "failing", "reason": reason });
        }
        body.to_string()
    }
}

/// What the HTTP handlers share.
#[derive(Clone)]
struct Shared {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves `GET /metrics` and `GET /health` on `addr` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for metrics on {addr}"))?;
    serve_listener(listener, metrics, health, shutdown).await
}

/// Like [`serve`], on a listener already bound (tests bind port 0 and read the port back).
pub async fn serve_listener(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local = listener.local_addr().ok();
    let app = axum::Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/health", get(health_handler))
        .with_state(Shared { metrics, health });
    tracing::info!(addr = ?local, "Serving /metrics and /health.");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("metrics server failed")
}

async fn metrics_handler(State(shared): State<Shared>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        shared.metrics.render(),
    )
}

async fn health_handler(State(shared): State<Shared>) -> impl IntoResponse {
    // Status and body from one view would need one lock; two reads may straddle a change,
    // which only means the body is one update newer than the status.
    let body = shared.health.render_json();
    (
        shared.health.status(),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// One parsed sample line: name, labels, value.
    #[derive(Debug, Clone, PartialEq)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// A strict parser of the 0.0.4 text format as written by `render`: every line is a
    /// `# HELP`, a `# TYPE` or a sample of the metric last typed; label values unescaped.
    fn parse(text: &str) -> (HashMap<String, (String, String)>, Vec<Sample>) {
        let mut meta: HashMap<String, (String, String)> = HashMap::new();
        let mut helps: HashMap<String, String> = HashMap::new();
        let mut samples = Vec::new();
        let mut current: Option<(String, String)> = None;
        assert!(text.ends_with('\n'), "output ends with a line feed");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has a text");
                assert!(!help.is_empty());
                assert!(helps.insert(name.to_owned(), help.to_owned()).is_none());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert!(
                    ["counter", "gauge", "histogram"].contains(&kind),
                    "kind {kind}"
                );
                let help = helps.get(name).expect("HELP comes before TYPE").clone();
                assert!(
                    meta.insert(name.to_owned(), (kind.to_owned(), help))
                        .is_none(),
                    "{name} typed twice"
                );
                current = Some((name.to_owned(), kind.to_owned()));
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment {line:?}");
            let (family, kind) = current.clone().expect("sample after a TYPE");
            let s = parse_sample(line);
            let allowed = if kind == "histogram" {
                [
                    format!("{family}_bucket"),
                    format!("{family}_sum"),
                    format!("{family}_count"),
                ]
                .contains(&s.name)
            } else {
                s.name == family
            };
            assert!(allowed, "{} under {family}", s.name);
            if kind == "counter" {
                assert!(family.ends_with("_total"), "{family}");
            }
            samples.push(s);
        }
        (meta, samples)
    }

    fn parse_sample(line: &str) -> Sample {
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let name = &line[..name_end];
        assert!(name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'));
        let mut labels = BTreeMap::new();
        let mut chars = line[name_end..].chars().peekable();
        if chars.peek() == Some(&'{') {
            chars.next();
            loop {
                let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
                assert!(
                    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                    "bad label key {key:?} in {line:?}"
                );
                assert_eq!(chars.next(), Some('"'), "quote opens the value in {line:?}");
                let mut value = String::new();
                loop {
                    match chars.next().expect("closing quote") {
                        '\\' => match chars.next().expect("escaped char") {
                            '\\' => value.push('\\'),
                            '"' => value.push('"'),
                            'n' => value.push('\n'),
                            other => panic!("bad escape \\{other}"),
                        },
                        '"' => break,
                        '\n' => panic!("raw line feed in a label"),
                        c => value.push(c),
                    }
                }
                assert!(labels.insert(key, value).is_none(), "label twice");
                match chars.next() {
                    Some(',') => continue,
                    Some('}') => break,
                    other => panic!("unexpected {other:?} in {line:?}"),
                }
            }
        }
        let rest: String = chars.collect();
        let value = rest.strip_prefix(' ').expect("space before the value");
        let value = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value {v:?}")),
        };
        Sample {
            name: name.to_owned(),
            labels,
            value,
        }
    }

    fn find<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> &'a Sample {
        samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {name} {labels:?}"))
    }

    fn n(s: &str) -> NetworkId {
        NetworkId::new(s)
    }

    #[test]
    fn every_configured_network_shows_zero_series_from_the_start() {
        let m = Metrics::new([n("matrix"), n("xmpp"), n("irc:local")]);
        let (meta, samples) = parse(&m.render());
        for name in [
            "junction_messages_in_total",
            "junction_messages_out_total",
            "junction_delivery_failures_total",
            "junction_delivery_latency_seconds",
            "junction_outbox_depth",
            "junction_puppets_connected",
            "junction_reconnects_total",
            "junction_errors_total",
            "junction_duplicates_skipped_total",
        ] {
            assert!(meta.contains_key(name), "{name} has HELP and TYPE");
        }
        assert_eq!(meta["junction_delivery_latency_seconds"].0, "histogram");
        assert_eq!(meta["junction_outbox_depth"].0, "gauge");
        assert_eq!(meta["junction_messages_in_total"].0, "counter");
        for net in ["matrix", "xmpp", "irc:local"] {
            for name in [
                "junction_messages_in_total",
                "junction_messages_out_total",
                "junction_outbox_depth",
                "junction_puppets_connected",
            ] {
                assert_eq!(find(&samples, name, &[("network", net)]).value, 0.0);
            }
        }
        assert_eq!(
            find(&samples, "junction_duplicates_skipped_total", &[]).value,
            0.0
        );
        assert!(!samples.iter().any(|s| s.name == "junction_errors_total"));
    }

    #[test]
    fn a_followed_counter_shows_as_errors_of_its_kind() {
        let m = Metrics::new([n("xmpp")]);
        let cut = Arc::new(AtomicU64::new(0));
        m.follow(&n("xmpp"), "stanza_too_deep", cut.clone());
        assert!(!m.render().contains("stanza_too_deep"), "nothing cut yet");
        cut.fetch_add(3, Ordering::Relaxed);
        m.error(&n("xmpp"), "send");
        let text = m.render();
        assert!(
            text.contains("junction_errors_total{network=\"xmpp\",kind=\"stanza_too_deep\"} 3"),
            "{text}"
        );
        assert!(text.contains("kind=\"send\"} 1"), "{text}");
        // Rendering again adds nothing; a counter shares its kind with `error` by adding.
        let refused = m.counter(&n("xmpp"), "unauthorised");
        m.error(&n("xmpp"), "unauthorised");
        refused.fetch_add(2, Ordering::Relaxed);
        let text = m.render();
        assert!(text.contains("kind=\"stanza_too_deep\"} 3"), "{text}");
        assert!(text.contains("kind=\"unauthorised\"} 3"), "{text}");
        refused.fetch_add(1, Ordering::Relaxed);
        assert!(m.render().contains("kind=\"unauthorised\"} 4"));
    }

    #[test]
    fn counters_increase_and_gauges_follow() {
        let m = Metrics::new([n("matrix"), n("irc:local")]);
        let irc = n("irc:local");
        for _ in 0..3 {
            m.inbound(&irc);
        }
        m.inbound(&n("matrix"));
        m.delivered(&n("matrix"), Duration::from_millis(3));
        m.failed(&irc);
        m.failed(&irc);
        m.reconnect(&irc);
        m.set_outbox_depth(&irc, 42);
        m.set_puppets(&irc, 7);
        m.error(&irc, "send");
        m.error(&irc, "send");
        m.error(&irc, "malformed_input");
        m.duplicate();
        let (_, first) = parse(&m.render());
        let v = |s: &[Sample], name: &str, labels: &[(&str, &str)]| find(s, name, labels).value;
        assert_eq!(
            v(
                &first,
                "junction_messages_in_total",
                &[("network", "irc:local")]
            ),
            3.0
        );
        assert_eq!(
            v(
                &first,
                "junction_messages_in_total",
                &[("network", "matrix")]
            ),
            1.0
        );
        assert_eq!(
            v(
                &first,
                "junction_messages_out_total",
                &[("network", "matrix")]
            ),
            1.0
        );
        assert_eq!(
            v(
                &first,
                "junction_delivery_failures_total",
                &[("network", "irc:local")]
            ),
            2.0
        );
        assert_eq!(
            v(
                &first,
                "junction_reconnects_total",
                &[("network", "irc:local")]
            ),
            1.0
        );
        assert_eq!(
            v(&first, "junction_outbox_depth", &[("network", "irc:local")]),
            42.0
        );
        assert_eq!(
            v(
                &first,
                "junction_puppets_connected",
                &[("network", "irc:local")]
            ),
            7.0
        );
        assert_eq!(
            v(
                &first,
                "junction_errors_total",
                &[("network", "irc:local"), ("kind", "send")]
            ),
            2.0
        );
        assert_eq!(
            v(
                &first,
                "junction_errors_total",
                &[("network", "irc:local"), ("kind", "malformed_input")]
            ),
            1.0
        );
        assert_eq!(v(&first, "junction_duplicates_skipped_total", &[]), 1.0);

        m.inbound(&irc);
        m.set_outbox_depth(&irc, 0);
        m.duplicate();
        let (_, second) = parse(&m.render());
        assert_eq!(
            v(
                &second,
                "junction_messages_in_total",
                &[("network", "irc:local")]
            ),
            4.0
        );
        assert_eq!(
            v(
                &second,
                "junction_outbox_depth",
                &[("network", "irc:local")]
            ),
            0.0
        );
        assert_eq!(v(&second, "junction_duplicates_skipped_total", &[]), 2.0);
        // No counter went down between the two scrapes.
        for s in &first {
            if s.name.ends_with("_total") || s.name.ends_with("_count") {
                let later = find(
                    &second,
                    &s.name,
                    &s.labels
                        .iter()
                        .map(|(k, v)| (k.as_str(), v.as_str()))
                        .collect::<Vec<_>>(),
                );
                assert!(later.value >= s.value, "{} went down", s.name);
            }
        }
    }

    #[test]
    fn refused_items_and_records_set_aside_are_counted() {
        let m = Metrics::new([n("matrix"), n("xmpp")]);
        let (meta, samples) = parse(&m.render());
        assert_eq!(meta["junction_refused_total"].0, "counter");
        assert!(!samples.iter().any(|s| s.name == "junction_refused_total"));
        assert_eq!(
            find(&samples, "junction_store_records_set_aside_total", &[]).value,
            0.0
        );
        m.refused(&n("xmpp"), "unencodable");
        m.refused(&n("xmpp"), "unencodable");
        m.set_store_set_aside(3);
        let (_, samples) = parse(&m.render());
        assert_eq!(
            find(
                &samples,
                "junction_refused_total",
                &[("network", "xmpp"), ("reason", "unencodable")]
            )
            .value,
            2.0
        );
        assert_eq!(
            find(&samples, "junction_store_records_set_aside_total", &[]).value,
            3.0
        );
    }

    #[test]
    fn a_network_not_configured_still_counts() {
        let m = Metrics::new([n("matrix")]);
        let late = n("irc:other");
        m.inbound(&late);
        m.inbound(&late);
        m.delivered(&late, Duration::from_micros(50));
        let (_, samples) = parse(&m.render());
        assert_eq!(
            find(
                &samples,
                "junction_messages_in_total",
                &[("network", "irc:other")]
            )
            .value,
            2.0
        );
        assert_eq!(
            find(
                &samples,
                "junction_delivery_latency_seconds_count",
                &[("network", "irc:other")]
            )
            .value,
            1.0
        );
        // Networks come out sorted, whichever map holds them.
        let order: Vec<&str> = samples
            .iter()
            .filter(|s| s.name == "junction_messages_in_total")
            .map(|s| s.labels["network"].as_str())
            .collect();
        assert_eq!(order, ["irc:other", "matrix"]);
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::default();
        let odd = n("irc:a\"b\\c\nd");
        m.inbound(&odd);
        m.error(&odd, "quote\"kind");
        let text = m.render();
        assert!(
            text.contains(r#"junction_messages_in_total{network="irc:a\"b\\c\nd"} 1"#),
            "{text}"
        );
        let (_, samples) = parse(&text);
        assert_eq!(
            find(
                &samples,
                "junction_errors_total",
                &[("network", "irc:a\"b\\c\nd"), ("kind", "quote\"kind")]
            )
            .value,
            1.0
        );
        assert_eq!(escape_help("a\\b\nc"), "a\\\\b\\nc");
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_count_and_sum() {
        let m = Metrics::new([n("xmpp")]);
        let x = n("xmpp");
        let observed = [
            Duration::from_micros(50),  // first bucket
            Duration::from_micros(100), // exactly on the first bound: still the first
            Duration::from_millis(3),   // 0.005
            Duration::from_secs(2),     // 2.5
            Duration::from_secs(60),    // +Inf only
        ];
        for d in observed {
            m.delivered(&x, d);
        }
        let (_, samples) = parse(&m.render());
        let buckets: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.name == "junction_delivery_latency_seconds_bucket")
            .collect();
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
        let bounds: Vec<f64> = buckets
            .iter()
            .map(|s| match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().expect("le is a number"),
            })
            .collect();
        assert_eq!(bounds[0], 0.0001);
        assert_eq!(bounds[LATENCY_BUCKETS.len() - 1], 30.0);
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "{bounds:?}");
        assert!(buckets.windows(2).all(|w| w[0].value <= w[1].value));
        let at = |le: f64| buckets[bounds.iter().position(|&b| b == le).expect("bound")].value;
        assert_eq!(at(0.0001), 2.0);
        assert_eq!(at(0.0025), 2.0);
        assert_eq!(at(0.005), 3.0);
        assert_eq!(at(1.0), 3.0);
        assert_eq!(at(2.5), 4.0);
        assert_eq!(at(30.0), 4.0);
        assert_eq!(at(f64::INFINITY), 5.0);
        let count = find(
            &samples,
            "junction_delivery_latency_seconds_count",
            &[("network", "xmpp")],
        );
        assert_eq!(count.value, 5.0);
        let sum = find(
            &samples,
            "junction_delivery_latency_seconds_sum",
            &[("network", "xmpp")],
        );
        let expected: f64 = observed.iter().map(Duration::as_secs_f64).sum();
        assert!(
            (sum.value - expected).abs() < 1e-6,
            "{} vs {expected}",
            sum.value
        );
    }

    #[test]
    fn a_standby_says_so_and_is_not_healthy() {
        let h = Health::new([n("matrix")]);
        h.set(&n("matrix"), NetworkState::Connected);
        h.set_standby(true);
        assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        assert_eq!(body["status"], "standby");
        h.set_standby(false);
        assert_eq!(h.status(), StatusCode::OK);
    }

    #[test]
    fn health_is_ok_only_when_every_network_is_connected() {
        let h = Health::new([n("matrix"), n("irc:local")]);
        assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        assert_eq!(body["status"], "down");
        assert_eq!(body["networks"][0]["network"], "irc:local");
        assert_eq!(body["networks"][0]["state"], "down");
        assert_eq!(body["networks"][0]["reason"], "not connected yet");

        h.set(&n("matrix"), NetworkState::Connected);
        h.set(
            &n("irc:local"),
            NetworkState::Degraded("2 puppets failing".into()),
        );
        assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        assert_eq!(body["status"], "degraded");
        assert_eq!(body["networks"][0]["state"], "degraded");
        assert_eq!(body["networks"][0]["reason"], "2 puppets failing");
        assert_eq!(body["networks"][1]["network"], "matrix");
        assert_eq!(body["networks"][1]["state"], "connected");
        assert!(body["networks"][1].get("reason").is_none());

        h.set(&n("irc:local"), NetworkState::Connected);
        assert!(h.is_healthy());
        assert_eq!(h.status(), StatusCode::OK);
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        assert_eq!(body["status"], "ok");
        assert_eq!(h.get(&n("irc:local")), Some(NetworkState::Connected));

        // A reason with quotes and newlines stays valid JSON.
        h.set(
            &n("xmpp"),
            NetworkState::Down("said \"no\"\nthen closed".into()),
        );
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        assert_eq!(body["networks"][2]["reason"], "said \"no\"\nthen closed");
        assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn health_lists_rooms_and_keeps_the_last_error() {
        let h = Health::new([n("matrix")]);
        h.set(&n("matrix"), NetworkState::Down(CONNECTING.into()));
        assert_eq!(h.last_error(&n("matrix")), None, "connecting is no error");
        h.set_rooms(&n("matrix"), vec!["#lobby:example.org".into()]);
        h.set(
            &n("matrix"),
            NetworkState::Down("connection refused".into()),
        );
        h.set(&n("matrix"), NetworkState::Connected);
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        let entry = &body["networks"][0];
        assert_eq!(entry["rooms"], serde_json::json!(["#lobby:example.org"]));
        assert_eq!(entry["last_error"]["reason"], "connection refused");
        assert!(entry["last_error"]["at_ms"].as_u64().unwrap_or(0) > 0);
        assert_eq!(entry["state"], "connected");
    }

    #[test]
    fn a_failing_store_makes_health_503_with_a_store_entry() {
        let h = Health::new([n("matrix")]);
        h.set(&n("matrix"), NetworkState::Connected);
        assert_eq!(h.status(), StatusCode::OK);
        h.set_store(Some("No space left on device".into()));
        assert_eq!(h.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        assert_eq!(body["status"], "down");
        assert_eq!(body["store"]["state"], "failing");
        assert_eq!(body["store"]["reason"], "No space left on device");
        h.set_store(None);
        assert_eq!(h.status(), StatusCode::OK);
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        assert!(body.get("store").is_none());
    }

    #[test]
    fn no_networks_is_healthy() {
        let h = Health::default();
        assert_eq!(h.status(), StatusCode::OK);
        let body: serde_json::Value = serde_json::from_str(&h.render_json()).expect("json");
        assert_eq!(body, serde_json::json!({ "status": "ok", "networks": [] }));
    }
}
