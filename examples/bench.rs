//! Junction's benchmark: the whole gateway on the real local servers, plus the store alone.
//!
//! ```sh
//! ./target/debug/junction-testkit start          # or let the bench start what is missing
//! cargo run --release --example bench -- [--quick] [--only store,latency,matrix,throughput,puppets]
//!                                        [--puppets N] [--irc-mode puppet|relay]
//! cargo run --release --example bench -- --compare [--quick]   # beside biboumi, heisenbridge
//! ```
//!
//! The gateway runs in this process exactly as `junction::serve` wires it (same adapters, same
//! route loop, a sled store in a temporary directory), under a testkit `slot()` so it never
//! collides with the tests. Between each adapter and the route loop sits a tap that timestamps
//! what crosses it, so one message is seen four times on one clock:
//!
//! ```text
//! client sends ─(server, adapter reads)─▶ Inbound ─(route: record, flush, plan)─▶ Delivery
//!     ─(adapter renders, target server confirms)─▶ Delivered
//! ```
//!
//! Gateway-added latency is Inbound → Delivered. It includes the target server's confirmation
//! (the IRC adapter answers after a PING round trip, the XMPP adapter when the MUC reflects
//! the message, the Matrix adapter when Synapse answers the PUT), so the table splits it into
//! the route part and the adapter part. On Matrix paths Synapse's share is the source part
//! (client send → application-service push) and the adapter part of deliveries to Matrix.
//!
//! Prints Markdown tables; BENCHMARKS.md holds a run. Nothing is asserted.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use anyhow::Context as _;
use junction::gateway::{self, Hub, Parts};
use junction::metrics::{Health, Metrics};
use junction_core::{
    AdapterContext, Delivered, Delivery, Event, EventId, EventKind, Inbound, Message, MessageId,
    NetworkId, RichText, RoomRef, Router, Sender, UserRef,
};
use junction_irc::IrcAdapter;
use junction_matrix::MatrixAdapter;
use junction_store::{SledStore, Store};
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::{servers, slot, Servers, SlotGuard};
use junction_testkit::unique;
use junction_xmpp::XmppAdapter;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[path = "bench/anchors.rs"]
mod anchors;
#[path = "bench/compare.rs"]
mod compare;

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Clone, Debug)]
struct Args {
    quick: bool,
    compare: bool,
    only: Option<Vec<String>>,
    puppets: Option<usize>,
    irc_mode: String,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut a = Args {
            quick: false,
            compare: false,
            only: None,
            puppets: None,
            irc_mode: "puppet".into(),
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => a.quick = true,
                "--compare" => a.compare = true,
                "--only" => {
                    let v = it.next().context("--only needs a list")?;
                    a.only = Some(v.split(',').map(str::to_owned).collect());
                }
                "--puppets" => {
                    a.puppets = Some(it.next().context("--puppets needs N")?.parse()?);
                }
                "--irc-mode" => a.irc_mode = it.next().context("--irc-mode needs a mode")?,
                "-h" | "--help" => {
                    println!(
                        "bench [--quick] [--only store,latency,matrix,throughput,puppets] \
                         [--puppets N] [--irc-mode puppet|relay]\n       \
                         bench --compare [--quick]   (beside biboumi and heisenbridge)"
                    );
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other:?}"),
            }
        }
        Ok(a)
    }

    fn wants(&self, part: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    }
}

// ---------------------------------------------------------------------------------------------
// Taps: timestamps of every message as it crosses the adapter/route seam

/// When one target saw the message.
#[derive(Clone, Copy, Debug, Default)]
struct Leg {
    dispatched: Option<Instant>,
    delivered: Option<Instant>,
    failed: bool,
}

/// One tagged message.
#[derive(Clone, Debug)]
struct Sample {
    sent: Instant,
    inbound: Option<Instant>,
    legs: HashMap<NetworkId, Leg>,
}

#[derive(Default)]
struct TapState {
    by_tag: HashMap<String, usize>,
    by_event: HashMap<EventId, usize>,
    samples: Vec<Sample>,
}

/// Shared by every tap task and the load drivers.
#[derive(Clone, Default)]
struct Taps(Arc<Mutex<TapState>>);

/// The tag inside a bench message body (`jb<phase>x<seq>`).
fn tag_of(text: &str) -> Option<&str> {
    text.split_whitespace().find(|w| w.starts_with("jb"))
}

impl Taps {
    fn lock(&self) -> std::sync::MutexGuard<'_, TapState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a message about to be sent; returns its index.
    fn register(&self, tag: String, sent: Instant) -> usize {
        let mut s = self.lock();
        let i = s.samples.len();
        s.samples.push(Sample {
            sent,
            inbound: None,
            legs: HashMap::new(),
        });
        s.by_tag.insert(tag, i);
        i
    }

    fn on_inbound(&self, ev: &Event, at: Instant) {
        let EventKind::Message(m) = &ev.kind else {
            return;
        };
        let text = m.body.to_plain();
        let Some(tag) = tag_of(&text) else { return };
        let mut s = self.lock();
        if let Some(&i) = s.by_tag.get(tag) {
            s.by_event.insert(ev.id.clone(), i);
            let smp = &mut s.samples[i];
            smp.inbound.get_or_insert(at);
        }
    }

    fn on_delivery(&self, d: &Delivery, at: Instant) {
        let mut s = self.lock();
        if let Some(&i) = s.by_event.get(&d.event.id) {
            let leg = s.samples[i]
                .legs
                .entry(d.target.network.clone())
                .or_default();
            leg.dispatched.get_or_insert(at);
        }
    }

    fn on_delivered(&self, d: &Delivered, at: Instant) {
        let mut s = self.lock();
        if let Some(&i) = s.by_event.get(&d.event) {
            let leg = s.samples[i]
                .legs
                .entry(d.target.network.clone())
                .or_default();
            leg.delivered.get_or_insert(at);
            leg.failed |= d.outcome.is_err();
        }
    }

    fn samples(&self, range: std::ops::Range<usize>) -> Vec<Sample> {
        self.lock().samples[range].to_vec()
    }

    fn len(&self) -> usize {
        self.lock().samples.len()
    }

    /// How many of `range` have an answer (delivered or failed) from `target`.
    fn answered(&self, range: std::ops::Range<usize>, target: &NetworkId) -> usize {
        self.lock().samples[range]
            .iter()
            .filter(|s| s.legs.get(target).is_some_and(|l| l.delivered.is_some()))
            .count()
    }
}

/// Puts taps between an adapter's context and the route loop.
fn tap(mut cx: AdapterContext, taps: &Taps) -> (AdapterContext, mpsc::Sender<Inbound>) {
    let real_in = cx.inbound.clone();
    let (tin, mut rin) = mpsc::channel::<Inbound>(1024);
    cx.inbound = tin.clone();
    let t = taps.clone();
    tokio::spawn(async move {
        while let Some(i) = rin.recv().await {
            t.on_inbound(&i.event, Instant::now());
            if real_in.send(i).await.is_err() {
                break;
            }
        }
    });
    let (tdel, rdel) = mpsc::channel::<Delivery>(64);
    let mut real_del = std::mem::replace(&mut cx.deliveries, rdel);
    let t = taps.clone();
    tokio::spawn(async move {
        while let Some(d) = real_del.recv().await {
            t.on_delivery(&d, Instant::now());
            if tdel.send(d).await.is_err() {
                break;
            }
        }
    });
    let real_done = cx.delivered.clone();
    let (tdone, mut rdone) = mpsc::unbounded_channel::<Delivered>();
    cx.delivered = tdone;
    let t = taps.clone();
    tokio::spawn(async move {
        while let Some(d) = rdone.recv().await {
            t.on_delivered(&d, Instant::now());
            if real_done.send(d).is_err() {
                break;
            }
        }
    });
    (cx, tin)
}

// ---------------------------------------------------------------------------------------------
// Statistics

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// "p50 / p99" in milliseconds.
fn p50_99(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "–".into();
    }
    v.sort_unstable();
    format!("{} / {}", ms(pct(&v, 0.5)), ms(pct(&v, 0.99)))
}

fn rss_kb() -> u64 {
    rss_kb_of("self")
}

/// A process's resident set size in kB (`pid` a number or `self`), from /proc.
fn rss_kb_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process used so far, from /proc (clock ticks of 10 ms).
fn cpu_secs(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The processes whose CPU is accounted: this one (gateway and test clients) and the servers.
fn processes(servers: &Servers) -> Vec<(&'static str, String)> {
    let mut v = vec![("gateway+clients", "self".to_owned())];
    for name in ["prosody", "inspircd", "synapse"] {
        let pid = std::fs::read_to_string(servers.dir.join("run").join(format!("{name}.pid")))
            .map(|p| p.trim().to_owned())
            .unwrap_or_default();
        if !pid.is_empty() {
            v.push((name, pid));
        }
    }
    v
}

/// CPU used by each process over a closure's run, as a share of one core.
struct CpuMeter {
    procs: Vec<(&'static str, String)>,
    start: Vec<f64>,
    at: Instant,
}

impl CpuMeter {
    fn start(servers: &Servers) -> CpuMeter {
        let procs = processes(servers);
        let start = procs.iter().map(|(_, p)| cpu_secs(p)).collect();
        CpuMeter {
            procs,
            start,
            at: Instant::now(),
        }
    }

    fn report(&self) -> String {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        self.procs
            .iter()
            .zip(&self.start)
            .map(|((n, p), s)| format!("{n} {:.0}%", (cpu_secs(p) - s) / wall * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

// ---------------------------------------------------------------------------------------------
// The bench lobby: two bridges, one gateway

struct Bench {
    servers: &'static Servers,
    slot: SlotGuard,
    taps: Taps,
    /// Inject events as if the XMPP adapter had read them.
    xmpp_in: mpsc::Sender<Inbound>,
    shutdown: CancellationToken,
    gateway: tokio::task::JoinHandle<anyhow::Result<()>>,
    _adapters: tokio::task::JoinSet<()>,
    _data: tempfile::TempDir,
    // Fast bridge: MUC + IRC channel only.
    fast_muc: String,
    fast_chan: String,
    // Matrix bridge: Matrix room + MUC + IRC channel.
    mx_room: String,
    mx_muc: String,
    mx_chan: String,
    irc: IrcUser,
    xmpp: XmppUser,
    matrix: MatrixUser,
    phase: u32,
}

/// The benchmark's gateway: no membership relaying, no per-sender limit (one user per network
/// sends as fast as the gateway takes it), IRC flood control out of the way, and two bridges.
#[allow(clippy::too_many_arguments)]
fn config_text(
    servers: &Servers,
    slot: &SlotGuard,
    irc_mode: &str,
    fast_muc: &str,
    fast_chan: &str,
    mx_room: &str,
    mx_muc: &str,
    mx_chan: &str,
) -> String {
    use junction_testkit::gateway;
    let irc = gateway::irc_section(servers.inspircd, slot)
        .replace("mode = \"puppet\"", &format!("mode = \"{irc_mode}\""))
        .replace("max_puppets = 50", "max_puppets = 20000")
        .replace("lines_per_second = 20.0", "lines_per_second = 1000000.0")
        .replace("burst = 50", "burst = 1000000");
    format!(
        "\n[gateway]\ndata_dir = \"data\"\nmembership = \"off\"\nrate_per_minute = 0\n{}{}{irc}{}{}",
        gateway::matrix_section(servers, slot),
        gateway::xmpp_section(servers, slot),
        gateway::bridge("fast", None, Some(fast_muc), Some(&format!("local/{fast_chan}"))),
        gateway::bridge(
            "mx",
            Some(mx_room),
            Some(mx_muc),
            Some(&format!("local/{mx_chan}"))
        ),
    )
}

impl Bench {
    async fn start(args: &Args) -> anyhow::Result<Bench> {
        let servers = servers().await?;
        let slot = slot().await?;
        let name = unique("jb");
        let matrix = MatrixUser::login(servers, "alice", "alicepw").await?;
        let mx_room = matrix
            .create_room(Some(&format!("{name}m")), true)
            .await
            .context("creating the Matrix room")?;
        let fast_muc = format!("{name}f@{}", servers.xmpp.muc);
        let mx_muc = format!("{name}m@{}", servers.xmpp.muc);
        let fast_chan = format!("#{name}f");
        let mx_chan = format!("#{name}m");
        let xmpp = XmppUser::register(servers, &short(&unique("jbx")), "pw-bench").await?;
        let xnick = unique("bx");
        xmpp.join_muc(&fast_muc, &xnick).await?;
        xmpp.join_muc(&mx_muc, &xnick).await?;
        let irc = IrcUser::connect(servers.inspircd, &short(&unique("bi"))).await?;
        irc.join(&fast_chan).await?;
        irc.join(&mx_chan).await?;

        let data = tempfile::tempdir()?;
        let text = config_text(
            servers,
            &slot,
            &args.irc_mode,
            &fast_muc,
            &fast_chan,
            &mx_room,
            &mx_muc,
            &mx_chan,
        );
        let config = junction::config::parse(&text, "bench.toml", data.path(), &|_| None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;

        // What `junction::serve` does, with taps between adapters and the route loop.
        std::fs::create_dir_all(&config.gateway.data_dir)?;
        let store: Arc<dyn Store> =
            Arc::new(SledStore::open(config.gateway.data_dir.join("store"))?);
        let links = gateway::initial_links(&config.bridges, store.as_ref())?;
        let router = Router::new(links)?;
        let nets = [
            NetworkId::new("matrix"),
            NetworkId::new("xmpp"),
            NetworkId::new("irc:local"),
        ];
        let metrics = Arc::new(Metrics::new(nets.clone()));
        let health = Arc::new(Health::new(nets.clone()));
        let shutdown = CancellationToken::new();
        let taps = Taps::default();
        let mut hub = Hub::new(store.clone());
        let mut adapters = tokio::task::JoinSet::new();
        let m = config
            .section::<junction_matrix::config::MatrixSection>()
            .context("matrix section")?
            .config
            .clone();
        let (cx, _) = tap(
            hub.attach(nets[0].clone(), &router, &shutdown).context,
            &taps,
        );
        adapters.spawn(gateway::run_adapter(MatrixAdapter::new(m), cx));
        let x = config
            .section::<junction_xmpp::config::XmppSection>()
            .context("xmpp section")?
            .config
            .clone();
        let (cx, xmpp_in) = tap(
            hub.attach(nets[1].clone(), &router, &shutdown).context,
            &taps,
        );
        adapters.spawn(gateway::run_adapter(XmppAdapter::new(x), cx));
        let i = config
            .section::<junction_irc::IrcConfig>()
            .context("irc section")?
            .clone();
        let (cx, _) = tap(
            hub.attach(nets[2].clone(), &router, &shutdown).context,
            &taps,
        );
        adapters.spawn(gateway::run_adapter(IrcAdapter::new(i), cx));
        let parts = Parts {
            store,
            router,
            membership: config.gateway.membership,
            lurker_window: None,
            metrics,
            health: health.clone(),
            admin: junction::admin::Admin::new(&config),
            store_retry: config.gateway.store_retry,
            limits: config.gateway.limits,
            retention: config.gateway.retention.clone(),
            private_messages: config.gateway.private_messages,
        };
        let gateway = tokio::spawn(gateway::route(parts, hub, shutdown.clone()));

        let bench = Bench {
            servers,
            slot,
            taps,
            xmpp_in,
            shutdown,
            gateway,
            _adapters: adapters,
            _data: data,
            fast_muc,
            fast_chan,
            mx_room,
            mx_muc,
            mx_chan,
            irc,
            xmpp,
            matrix,
            phase: 0,
        };
        bench.wait_ready(&health).await?;
        Ok(bench)
    }

    /// Until every adapter says it is connected and the IRC bot is in both channels.
    async fn wait_ready(&self, health: &Health) -> anyhow::Result<()> {
        junction_testkit::eventually(Duration::from_secs(90), "every adapter connected", || {
            let ok = health.is_healthy();
            async move { ok.then_some(()) }
        })
        .await?;
        let bot = junction_testkit::gateway::bot_nick(&self.slot);
        for chan in [&self.fast_chan, &self.mx_chan] {
            self.irc
                .wait_for(Duration::from_secs(60), |m| {
                    matches!(&m.command, irc_proto::Command::JOIN(c, _, _) if c.eq_ignore_ascii_case(chan))
                        && junction_testkit::clients::irc::source_nick(m)
                            .is_some_and(|n| n.eq_ignore_ascii_case(&bot))
                })
                .await
                .with_context(|| format!("the gateway's bot in {chan}"))?;
        }
        // The listener is in both MUCs once a message from each side crosses (the warm-up).
        Ok(())
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.gateway).await;
        Ok(())
    }

    /// Sends `n` tagged messages from `from` at `rate` per second (∞: as fast as possible),
    /// then waits (bounded) until `target` answered each. Returns the sample range and the
    /// send duration.
    async fn run(
        &mut self,
        from: Side,
        bridge: Bridge,
        target: &NetworkId,
        n: usize,
        rate: f64,
        wait: Duration,
    ) -> anyhow::Result<(std::ops::Range<usize>, Duration)> {
        self.phase += 1;
        let phase = self.phase;
        let first = self.taps.len();
        let start = Instant::now();
        for i in 0..n {
            if rate.is_finite() {
                let at = start + Duration::from_secs_f64(i as f64 / rate);
                tokio::time::sleep_until(at.into()).await;
            }
            let tag = format!("jb{phase}x{i}");
            let text = format!("bench {tag} the quick brown fox jumps over the lazy dog");
            let now = Instant::now();
            self.taps.register(tag, now);
            match from {
                Side::Irc => {
                    let chan = match bridge {
                        Bridge::Fast => &self.fast_chan,
                        Bridge::Mx => &self.mx_chan,
                    };
                    self.irc.privmsg(chan, &text)?;
                }
                Side::Xmpp => {
                    let muc = match bridge {
                        Bridge::Fast => &self.fast_muc,
                        Bridge::Mx => &self.mx_muc,
                    };
                    self.xmpp.send_groupchat(muc, &text)?;
                }
                Side::Matrix => {
                    self.matrix.send_text(&self.mx_room, &text).await?;
                }
            }
        }
        let sending = start.elapsed();
        let range = first..first + n;
        let taps = self.taps.clone();
        let t = target.clone();
        let r = range.clone();
        let _ = junction_testkit::eventually(wait, "every delivery answered", || {
            let done = taps.answered(r.clone(), &t) == n;
            async move { done.then_some(()) }
        })
        .await;
        Ok((range, sending))
    }
}

#[derive(Clone, Copy, Debug)]
enum Side {
    Irc,
    Xmpp,
    Matrix,
}

#[derive(Clone, Copy, Debug)]
enum Bridge {
    Fast,
    Mx,
}

fn short(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(9)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Phases

struct LatencyRow {
    path: String,
    rate: String,
    sent: usize,
    send_rate: f64,
    source: String,
    route: String,
    adapter: String,
    gateway: String,
    end_to_end: String,
    lost: usize,
}

fn latency_row(
    path: &str,
    rate: f64,
    samples: &[Sample],
    target: &NetworkId,
    sending: Duration,
) -> LatencyRow {
    let mut source = Vec::new();
    let mut route = Vec::new();
    let mut adapter = Vec::new();
    let mut gw = Vec::new();
    let mut e2e = Vec::new();
    let mut lost = 0;
    for s in samples {
        let leg = s.legs.get(target).copied().unwrap_or_default();
        match (s.inbound, leg.dispatched, leg.delivered) {
            (Some(i), Some(d), Some(o)) if !leg.failed => {
                source.push(i.saturating_duration_since(s.sent));
                route.push(d.saturating_duration_since(i));
                adapter.push(o.saturating_duration_since(d));
                gw.push(o.saturating_duration_since(i));
                e2e.push(o.saturating_duration_since(s.sent));
            }
            _ => lost += 1,
        }
    }
    LatencyRow {
        path: path.into(),
        rate: if rate.is_finite() {
            format!("{rate:.0}")
        } else {
            "max".into()
        },
        sent: samples.len(),
        send_rate: samples.len() as f64 / sending.as_secs_f64().max(1e-9),
        source: p50_99(source),
        route: p50_99(route),
        adapter: p50_99(adapter),
        gateway: p50_99(gw),
        end_to_end: p50_99(e2e),
        lost,
    }
}

fn print_latency(rows: &[LatencyRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| path | offered msg/s | sent | sent msg/s | source → Inbound | route (Inbound → Delivery) | adapter (Delivery → Delivered) | **gateway-added (Inbound → Delivered)** | client send → Delivered | lost |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.0} | {} | {} | {} | **{}** | {} | {} |",
            r.path,
            r.rate,
            r.sent,
            r.send_rate,
            r.source,
            r.route,
            r.adapter,
            r.gateway,
            r.end_to_end,
            r.lost
        );
    }
    s
}

struct ThroughputRow {
    path: String,
    n: usize,
    inbound_rate: f64,
    delivered_rate: f64,
    max_in_flight: usize,
    lost: usize,
    cpu: String,
}

fn throughput_row(path: &str, samples: &[Sample], target: &NetworkId) -> ThroughputRow {
    let mut marks: Vec<(Instant, i64)> = Vec::new();
    let mut first_in: Option<Instant> = None;
    let mut last_in: Option<Instant> = None;
    let mut last_out: Option<Instant> = None;
    let mut delivered = 0usize;
    for s in samples {
        if let Some(i) = s.inbound {
            first_in = Some(first_in.map_or(i, |f| f.min(i)));
            last_in = Some(last_in.map_or(i, |l| l.max(i)));
            marks.push((i, 1));
        }
        if let Some(o) = s.legs.get(target).and_then(|l| l.delivered) {
            last_out = Some(last_out.map_or(o, |l| l.max(o)));
            marks.push((o, -1));
            delivered += 1;
        }
    }
    marks.sort_by_key(|m| m.0);
    let (mut cur, mut max) = (0i64, 0i64);
    for (_, d) in marks {
        cur += d;
        max = max.max(cur);
    }
    let rate = |n: usize, a: Option<Instant>, b: Option<Instant>| match (a, b) {
        (Some(a), Some(b)) if b > a => n as f64 / (b - a).as_secs_f64(),
        _ => 0.0,
    };
    ThroughputRow {
        path: path.into(),
        n: samples.len(),
        inbound_rate: rate(
            samples.iter().filter(|s| s.inbound.is_some()).count(),
            first_in,
            last_in,
        ),
        delivered_rate: rate(delivered, first_in, last_out),
        max_in_flight: max.max(0) as usize,
        lost: samples.len() - delivered,
        cpu: String::new(),
    }
}

fn print_throughput(rows: &[ThroughputRow]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| path | messages (sent at once) | Inbound msg/s | **Delivered msg/s** | most in flight | not answered | CPU (share of one core) |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | **{:.0}** | {} | {} | {} |",
            r.path, r.n, r.inbound_rate, r.delivered_rate, r.max_in_flight, r.lost, r.cpu
        );
    }
    s
}

async fn latency_phase(b: &mut Bench, args: &Args, out: &mut String) -> anyhow::Result<()> {
    let irc = NetworkId::new("irc:local");
    let xmpp = NetworkId::new("xmpp");
    // Warm-up: the first message from a person makes a puppet; the listener joins rooms.
    for (side, target) in [(Side::Irc, &xmpp), (Side::Xmpp, &irc)] {
        let (r, _) = b
            .run(side, Bridge::Fast, target, 3, 5.0, Duration::from_secs(60))
            .await?;
        let ok = b.taps.answered(r, target);
        anyhow::ensure!(ok == 3, "warm-up {side:?} → {target}: {ok}/3 answered");
    }
    let rates: &[(f64, usize)] = if args.quick {
        &[(10.0, 20), (100.0, 100), (1000.0, 500)]
    } else {
        &[(10.0, 100), (100.0, 1000), (1000.0, 5000)]
    };
    let mut rows = Vec::new();
    for &(rate, n) in rates {
        for (side, target, path) in [
            (Side::Irc, &xmpp, "IRC → XMPP"),
            (Side::Xmpp, &irc, "XMPP → IRC"),
        ] {
            let (r, sending) = b
                .run(side, Bridge::Fast, target, n, rate, Duration::from_secs(60))
                .await?;
            let row = latency_row(path, rate, &b.taps.samples(r), target, sending);
            eprintln!("  {path} at {rate} msg/s: gateway-added {}", row.gateway);
            rows.push(row);
        }
    }
    out.push_str("### Latency, IRC ↔ XMPP (milliseconds, p50 / p99)\n\n");
    out.push_str(&print_latency(&rows));
    out.push('\n');
    Ok(())
}

async fn matrix_phase(b: &mut Bench, args: &Args, out: &mut String) -> anyhow::Result<()> {
    let irc = NetworkId::new("irc:local");
    let xmpp = NetworkId::new("xmpp");
    let matrix = NetworkId::new("matrix");
    for (side, target) in [
        (Side::Matrix, &irc),
        (Side::Irc, &matrix),
        (Side::Xmpp, &matrix),
    ] {
        let (r, _) = b
            .run(side, Bridge::Mx, target, 3, 5.0, Duration::from_secs(60))
            .await?;
        let ok = b.taps.answered(r, target);
        anyhow::ensure!(ok == 3, "warm-up {side:?} → {target}: {ok}/3 answered");
    }
    let plan: &[(f64, usize)] = if args.quick {
        &[(10.0, 10)]
    } else {
        &[(10.0, 100), (100.0, 500)]
    };
    let mut rows = Vec::new();
    for &(rate, n) in plan {
        // One message from Matrix reaches IRC and XMPP: both legs are read off one run.
        let (r, sending) = b
            .run(
                Side::Matrix,
                Bridge::Mx,
                &irc,
                n,
                rate,
                Duration::from_secs(120),
            )
            .await?;
        let samples = b.taps.samples(r);
        rows.push(latency_row("Matrix → IRC", rate, &samples, &irc, sending));
        rows.push(latency_row("Matrix → XMPP", rate, &samples, &xmpp, sending));
        for (side, path) in [(Side::Irc, "IRC → Matrix"), (Side::Xmpp, "XMPP → Matrix")] {
            let (r, sending) = b
                .run(side, Bridge::Mx, &matrix, n, rate, Duration::from_secs(120))
                .await?;
            rows.push(latency_row(
                path,
                rate,
                &b.taps.samples(r),
                &matrix,
                sending,
            ));
        }
    }
    out.push_str("### Latency, Matrix paths (milliseconds, p50 / p99)\n\n");
    out.push_str(
        "Synapse's share: *source → Inbound* on paths from Matrix (client PUT → Synapse's \
         transaction push), *adapter* on paths to Matrix (the ghost's PUT answered by Synapse). \
         A Matrix client sends one message at a time (each PUT awaited), so \"sent msg/s\" \
         shows what Synapse accepts from one user.\n\n",
    );
    out.push_str(&print_latency(&rows));
    out.push('\n');
    Ok(())
}

async fn throughput_phase(b: &mut Bench, args: &Args, out: &mut String) -> anyhow::Result<()> {
    let irc = NetworkId::new("irc:local");
    let xmpp = NetworkId::new("xmpp");
    let n = if args.quick { 1000 } else { 10000 };
    let mut rows = Vec::new();
    for (side, target, path) in [
        (Side::Irc, &xmpp, "IRC → XMPP"),
        (Side::Xmpp, &irc, "XMPP → IRC"),
    ] {
        let cpu = CpuMeter::start(b.servers);
        let (r, _) = b
            .run(
                side,
                Bridge::Fast,
                target,
                n,
                f64::INFINITY,
                Duration::from_secs(if args.quick { 30 } else { 180 }),
            )
            .await?;
        let mut row = throughput_row(path, &b.taps.samples(r), target);
        row.cpu = cpu.report();
        eprintln!(
            "  {path}: {:.0} msg/s delivered, {} in flight at most",
            row.delivered_rate, row.max_in_flight
        );
        rows.push(row);
    }
    out.push_str("### Throughput ceiling, IRC ↔ XMPP\n\n");
    out.push_str(&print_throughput(&rows));
    out.push('\n');
    Ok(())
}

/// Many people from XMPP speaking once each in the fast bridge's IRC channel: one puppet
/// connection each. Events are injected where the XMPP adapter hands them over, so the XMPP
/// side needs no thousands of accounts; everything from the route loop on is real.
async fn puppet_phase(b: &mut Bench, args: &Args, out: &mut String) -> anyhow::Result<()> {
    let irc = NetworkId::new("irc:local");
    let counts: Vec<usize> = match args.puppets {
        Some(n) => vec![n],
        None if args.quick => vec![10],
        None => vec![200],
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| puppets asked for | joined the channel | answered | first answered after | then one every (p50) | time to all answered | RSS before | RSS after | kB per puppet |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut offset = 0usize;
    for n in counts {
        let before = rss_kb();
        b.phase += 1;
        let phase = b.phase;
        let first = b.taps.len();
        let origin = RoomRef::new("xmpp", b.fast_muc.as_str());
        let start = Instant::now();
        for i in 0..n {
            let tag = format!("jb{phase}x{i}");
            let who = format!("p{}", offset + i);
            b.taps.register(tag.clone(), Instant::now());
            let ev = Event::new(
                origin.clone(),
                MessageId::new(format!("jbp-{phase}-{i}")),
                Sender::new(
                    UserRef::new("xmpp", format!("{}/{who}", b.fast_muc)),
                    who.clone(),
                ),
                0,
                EventKind::Message(Message {
                    body: RichText::plain(format!("bench {tag} hello from {who}")),
                    ..Message::default()
                }),
            );
            b.xmpp_in
                .send(Inbound::new(ev))
                .await
                .map_err(|_| anyhow::anyhow!("the route loop is gone"))?;
        }
        offset += n;
        let range = first..first + n;
        let taps = b.taps.clone();
        let r = range.clone();
        let t = irc.clone();
        let wait = Duration::from_secs(60 + n as u64 / 10);
        let _ = junction_testkit::eventually(wait, "every puppet's message answered", || {
            let done = taps.answered(r.clone(), &t) == n;
            async move { done.then_some(()) }
        })
        .await;
        let took = start.elapsed();
        let answered = b.taps.answered(range.clone(), &irc);
        let mut times: Vec<Instant> = b
            .taps
            .samples(range)
            .iter()
            .filter_map(|s| s.legs.get(&irc).and_then(|l| l.delivered))
            .collect();
        times.sort_unstable();
        let first_answer = times.first().map(|t| t.saturating_duration_since(start));
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        let gap = {
            let mut g = gaps;
            g.sort_unstable();
            pct(&g, 0.5)
        };
        // Puppets that joined, seen by the IRC user in the channel.
        let chan = b.fast_chan.clone();
        let bot = junction_testkit::gateway::bot_nick(&b.slot);
        let joined = b
            .irc
            .backlog()
            .iter()
            .filter(|m| {
                matches!(&m.command, irc_proto::Command::JOIN(c, _, _) if c.eq_ignore_ascii_case(&chan))
                    && junction_testkit::clients::irc::source_nick(m)
                        .is_some_and(|n| n.starts_with('p') && !n.eq_ignore_ascii_case(&bot))
            })
            .count();
        let after = rss_kb();
        let per = if joined > 0 {
            format!(
                "{:.1}",
                (after.saturating_sub(before)) as f64 / joined as f64
            )
        } else {
            "–".into()
        };
        eprintln!("  {n} puppets: {joined} joined, {answered} answered in {took:?}, RSS {before} → {after} kB");
        let _ = writeln!(
            s,
            "| {n} | {joined} | {answered} | {} ms | {} ms | {:.1} s | {:.1} MB | {:.1} MB | {per} |",
            first_answer.map(ms).unwrap_or_else(|| "–".into()),
            ms(gap),
            took.as_secs_f64(),
            before as f64 / 1024.0,
            after as f64 / 1024.0
        );
    }
    out.push_str("### IRC puppets in one channel\n\n");
    out.push_str(&s);
    out.push('\n');
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Store

fn store_phase(args: &Args, out: &mut String) -> anyhow::Result<()> {
    use junction_core::router::Planned;
    use junction_core::BridgeName;
    let rows: usize = if args.quick { 20_000 } else { 1_000_000 };
    let puppets: usize = if args.quick { 1_000 } else { 10_000 };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store");
    let origin = RoomRef::new("matrix", "#lobby:matrix.test");
    let target = RoomRef::new("irc:local", "#lobby");
    let sender = Sender::new(UserRef::new("matrix", "@alice:matrix.test"), "alice");
    let planned = Planned {
        bridge: BridgeName::new("lobby"),
        target: target.clone(),
        reply_to: vec![],
        target_ids: vec![],
    };
    let event = |i: usize| {
        Event::new(
            origin.clone(),
            MessageId::new(format!("$ev{i}:matrix.test")),
            sender.clone(),
            1_700_000_000_000 + i as u64,
            EventKind::Message(Message {
                body: RichText::plain(format!("message number {i} in the lobby")),
                ..Message::default()
            }),
        )
    };
    let mut s = String::new();
    let _ = writeln!(s, "| operation | rows in store | rate / time |");
    let _ = writeln!(s, "|---|---:|---:|");
    {
        let store = SledStore::open(&path)?;
        // Inbound (map + outbox row, one transaction) and delivered (map both ways, outbox
        // row removed, one transaction), flushed every 256 as the route loop does.
        let mut t_in = Duration::ZERO;
        let mut t_out = Duration::ZERO;
        let mut t_flush = Duration::ZERO;
        let batch = 256;
        let mut i = 0;
        while i < rows {
            let end = (i + batch).min(rows);
            let evs: Vec<Event> = (i..end).map(event).collect();
            let t = Instant::now();
            let mut outs = Vec::with_capacity(evs.len());
            for e in &evs {
                if let junction_store::Recorded::New(ds) =
                    store.record_inbound(e, vec![planned.clone()])?
                {
                    outs.extend(ds);
                }
            }
            t_in += t.elapsed();
            let t = Instant::now();
            store.flush()?;
            t_flush += t.elapsed();
            let t = Instant::now();
            for d in &outs {
                store.record_delivered(&Delivered {
                    outbox_id: d.outbox_id,
                    target: d.target.clone(),
                    event: d.event.id.clone(),
                    outcome: Ok(vec![MessageId::new(format!("irc-{}", d.outbox_id))]),
                })?;
            }
            t_out += t.elapsed();
            let t = Instant::now();
            store.flush()?;
            t_flush += t.elapsed();
            i = end;
        }
        let rate = |d: Duration| rows as f64 / d.as_secs_f64();
        let _ = writeln!(
            s,
            "| record_inbound (map + outbox row, one txn) | 0 → {rows} | {:.0}/s |",
            rate(t_in)
        );
        let _ = writeln!(
            s,
            "| record_delivered (map both ways, outbox row removed) | 0 → {rows} | {:.0}/s |",
            rate(t_out)
        );
        let _ = writeln!(
            s,
            "| whole message (inbound + delivered + 2 flushes per 256) | 0 → {rows} | {:.0}/s |",
            rate(t_in + t_out + t_flush)
        );
        let _ = writeln!(
            s,
            "| flush (fsync), per batch of 256 | | {:.2} ms |",
            t_flush.as_secs_f64() * 1000.0 / (2.0 * rows.div_ceil(batch) as f64)
        );
        // Random lookups both ways.
        let lookups = if args.quick { 20_000 } else { 200_000usize };
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % rows as u64) as usize
        };
        let keys: Vec<(MessageId, EventId)> = (0..lookups)
            .map(|_| {
                let e = event(next());
                (e.remote_id.clone(), e.id)
            })
            .collect();
        let t = Instant::now();
        let mut found = 0usize;
        for (rid, _) in &keys {
            found += usize::from(store.event_for(&origin, rid)?.is_some());
        }
        let d = t.elapsed();
        anyhow::ensure!(found == lookups, "lookups found {found}/{lookups}");
        let _ = writeln!(
            s,
            "| event_for (remote id → event), random | {rows} | {:.0}/s |",
            lookups as f64 / d.as_secs_f64()
        );
        let t = Instant::now();
        let mut ids = 0usize;
        for (_, ev) in &keys {
            ids += store.remote_ids(ev, &target)?.len();
        }
        let d = t.elapsed();
        anyhow::ensure!(ids == lookups, "remote_ids found {ids}/{lookups}");
        let _ = writeln!(
            s,
            "| remote_ids (event → target ids), random | {rows} | {:.0}/s |",
            lookups as f64 / d.as_secs_f64()
        );
        let t = Instant::now();
        for p in 0..puppets {
            store.set_puppet(
                &NetworkId::new("irc:local"),
                &UserRef::new("matrix", format!("@user{p}:matrix.test")),
                &format!("user{p}[m]"),
            )?;
        }
        store.flush()?;
        let _ = writeln!(
            s,
            "| set_puppet | {puppets} puppets | {:.0}/s |",
            puppets as f64 / t.elapsed().as_secs_f64()
        );
    }
    let size: u64 = dir_size(&path);
    // Restart: open, read the links, the outboxes and a puppet, as the gateway does at start.
    let t = Instant::now();
    let store = SledStore::open(&path)?;
    let links = gateway::initial_links(&[], &store)?;
    let _router = Router::new(links)?;
    for n in ["matrix", "xmpp", "irc:local"] {
        store.pending(&NetworkId::new(n))?;
    }
    let p = store.puppet(
        &NetworkId::new("irc:local"),
        &UserRef::new("matrix", "@user7:matrix.test"),
    )?;
    let ready = t.elapsed();
    anyhow::ensure!(p.is_some(), "puppet lost across the restart");
    let _ = writeln!(
        s,
        "| **restart to ready** (open, links, outboxes, first puppet) | {rows} map rows, {puppets} puppets | **{:.0} ms** |",
        ready.as_secs_f64() * 1000.0
    );
    let _ = writeln!(
        s,
        "| size on disk | {rows} messages | {:.0} MB |",
        size as f64 / 1e6
    );
    eprintln!(
        "  store: restart to ready {ready:?}, {:.0} MB",
        size as f64 / 1e6
    );
    out.push_str("### Store (sled, on disk)\n\n");
    out.push_str(&s);
    out.push('\n');
    Ok(())
}

fn dir_size(p: &std::path::Path) -> u64 {
    let mut total = 0;
    if let Ok(rd) = std::fs::read_dir(p) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => total += dir_size(&e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

// ---------------------------------------------------------------------------------------------

fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    if args.compare {
        println!("{}", compare::main(args.quick)?);
        return Ok(());
    }
    let started = Instant::now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Junction bench ({} mode, IRC {} mode)\n",
        if args.quick { "quick" } else { "full" },
        args.irc_mode
    );
    if args.wants("store") {
        eprintln!("store…");
        store_phase(&args, &mut out)?;
    }
    let network = ["latency", "matrix", "throughput", "puppets"]
        .iter()
        .any(|p| args.wants(p));
    if network {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?;
        rt.block_on(async {
            eprintln!("starting the gateway on the local servers…");
            let mut b = Bench::start(&args).await?;
            let _ = b.servers;
            let result = async {
                if args.wants("latency") {
                    eprintln!("latency…");
                    latency_phase(&mut b, &args, &mut out).await?;
                }
                if args.wants("matrix") {
                    eprintln!("matrix…");
                    matrix_phase(&mut b, &args, &mut out).await?;
                }
                if args.wants("throughput") {
                    eprintln!("throughput…");
                    throughput_phase(&mut b, &args, &mut out).await?;
                }
                if args.wants("puppets") {
                    eprintln!("puppets…");
                    puppet_phase(&mut b, &args, &mut out).await?;
                }
                anyhow::Ok(())
            }
            .await;
            b.stop().await?;
            result
        })?;
    }
    let _ = writeln!(out, "Took {:.0} s.", started.elapsed().as_secs_f64());
    println!("{out}");
    Ok(())
}
