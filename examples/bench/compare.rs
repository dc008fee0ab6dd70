//! `--compare`: Junction beside what people would pick instead, in one run against the same
//! local servers: biboumi 9 (Debian) for XMPP ↔ IRC and heisenbridge 1.15 (PyPI) for
//! Matrix → IRC.
//!
//! Every gateway runs as a process of its own, so its CPU time (utime + stime from
//! `/proc/<pid>/stat`) and RSS are its own: Junction as the `junction` binary on a config of
//! one testkit slot, the anchors on a second slot (biboumi on the slot's XMPP component,
//! heisenbridge on the slot's appservice registration, which Synapse already loads). Neither
//! shared server is reconfigured or restarted.
//!
//! Latency is measured at the clients on one clock: from the moment a test client sends a
//! tagged line to the moment the client on the other network reads it. Runs are interleaved
//! (Junction, anchor, Junction, anchor, …) so a change in the machine's load hits both.

use super::anchors::{
    biboumi_room, biboumi_unthrottle, heisenbridge_portal, install_anchors, junction_binary,
    start_biboumi, start_heisenbridge, start_junction, Proc,
};
use super::pct;
use anyhow::Context as _;
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::{servers, slot, Servers, SlotGuard};
use junction_testkit::unique;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Windows a `--flat` run is cut into.
const FLAT_WINDOWS: usize = 10;

/// `--flat`: `n` XMPP→IRC lines at `rate` through Junction alone, in [`FLAT_WINDOWS`]
/// windows, each with the gateway process's CPU per message, its RSS and the latency:
/// whether a message late in a long run costs what an early one did.
async fn flat(
    c: &Clients,
    p: &XPath,
    proc: &Proc,
    n: usize,
    rate: f64,
    started: Instant,
) -> anyhow::Result<String> {
    let per = (n / FLAT_WINDOWS).max(1);
    let mut rows = String::new();
    let mut lost = 0;
    for w in 0..FLAT_WINDOWS {
        let cpu0 = proc.cpu();
        let v = measure(
            c,
            Dir::XmppToIrc,
            &p.room,
            &p.chan,
            &format!("fl{w}"),
            per,
            rate,
        )
        .await?;
        let cpu = (proc.cpu() - cpu0) / per as f64 * 1000.0;
        lost += per - v.len();
        eprintln!("  window {}: {cpu:.3} ms CPU per message", w + 1);
        let _ = writeln!(
            rows,
            "| {}–{} | {cpu:.3} ms | {:.1} MB | {:.2} / {:.2} ms | {} |",
            w * per + 1,
            (w + 1) * per,
            proc.rss_kb() as f64 / 1024.0,
            durations_ms(&v, 0.5),
            durations_ms(&v, 0.99),
            per - v.len()
        );
    }
    Ok(format!(
        "## Junction over a long run: {n} XMPP→IRC lines at {rate} msg/s\n\n\
         Command: `cargo run --release --example bench -- --compare --flat {n} --flat-rate {rate}`; \
         took {:.0} s; {lost} lost.\n\n\
         | messages | CPU per message (the gateway process) | RSS after | latency p50 / p99 | lost |\n\
         |---|---:|---:|---:|---:|\n{rows}",
        started.elapsed().as_secs_f64()
    ))
}

/// How long one batch of tagged lines may take to arrive after the last one was sent.
const SETTLE: Duration = Duration::from_secs(30);

/// How much each part sends.
struct Plan {
    runs: usize,
    latency_n: usize,
    cpu_n: usize,
    users: usize,
    matrix_n: usize,
    /// `--flat`: lines and rate of the long run through Junction alone (nothing else runs).
    flat: Option<(usize, f64)>,
}

impl Plan {
    fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                runs: 2,
                latency_n: 40,
                cpu_n: 100,
                users: 20,
                matrix_n: 10,
                flat: None,
            }
        } else {
            Plan {
                runs: 5,
                latency_n: 200,
                cpu_n: 1000,
                users: 200,
                matrix_n: 60,
                flat: None,
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The clients and the measured paths

/// The test clients, shared by every gateway: one IRC user in every channel, one XMPP user,
/// one Matrix user (heisenbridge's owner too).
struct Clients {
    irc: IrcUser,
    xmpp: XmppUser,
    matrix: MatrixUser,
}

/// An XMPP ↔ IRC path: the room JID the XMPP user talks to, and the IRC channel.
struct XPath {
    room: String,
    chan: String,
}

/// Which way the lines go.
#[derive(Clone, Copy)]
enum Dir {
    XmppToIrc,
    IrcToXmpp,
    MatrixToIrc,
}

fn line(tag: &str) -> String {
    format!("cmp {tag} the quick brown fox jumps over the lazy dog")
}

/// Sends `n` tagged lines at `rate` per second and returns the latency of each that arrived
/// (sent → read by the receiving client) within [`SETTLE`].
async fn measure(
    c: &Clients,
    dir: Dir,
    room: &str,
    chan: &str,
    tag: &str,
    n: usize,
    rate: f64,
) -> anyhow::Result<Vec<Duration>> {
    let mut irc_at = c.irc.len();
    let mut xmpp_at = c.xmpp.len();
    let mut sent: HashMap<String, Instant> = HashMap::new();
    let start = Instant::now();
    for i in 0..n {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let t = format!("{tag}x{i}");
        sent.insert(t.clone(), Instant::now());
        match dir {
            Dir::XmppToIrc => drop(c.xmpp.send_groupchat(room, &line(&t))?),
            Dir::IrcToXmpp => c.irc.privmsg(chan, &line(&t))?,
            Dir::MatrixToIrc => drop(c.matrix.send_text(room, &line(&t)).await?),
        }
    }
    let end = Instant::now() + SETTLE;
    let mut got: HashMap<String, Duration> = HashMap::new();
    while got.len() < n && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut seen = |at: Instant, text: &str| {
            for w in text.split_whitespace() {
                if let Some(s) = sent.get(w) {
                    got.entry(w.to_owned())
                        .or_insert_with(|| at.saturating_duration_since(*s));
                }
            }
        };
        match dir {
            Dir::XmppToIrc | Dir::MatrixToIrc => {
                let new = c.irc.received_since(irc_at);
                irc_at += new.len();
                for (at, m) in new {
                    if let irc_proto::Command::PRIVMSG(t, text) = &m.command {
                        if t.eq_ignore_ascii_case(chan) {
                            seen(at, text);
                        }
                    }
                }
            }
            Dir::IrcToXmpp => {
                let new = c.xmpp.received_since(xmpp_at);
                xmpp_at += new.len();
                for (at, e) in new {
                    if e.name() == "message" {
                        if let Some(b) = junction_testkit::clients::xmpp::body(&e) {
                            seen(at, &b);
                        }
                    }
                }
            }
        }
    }
    Ok(got.into_values().collect())
}

/// One line each way until it arrives (bounded): puppets and connections exist afterwards.
async fn warm_up(c: &Clients, dir: Dir, room: &str, chan: &str, tag: &str) -> anyhow::Result<()> {
    for attempt in 0..6 {
        let got = measure(c, dir, room, chan, &format!("{tag}w{attempt}"), 1, 1.0).await?;
        if !got.is_empty() {
            return Ok(());
        }
    }
    anyhow::bail!("nothing crossed {room} ↔ {chan} during the warm-up")
}

// ---------------------------------------------------------------------------------------------
// The figures

/// One figure per gateway per run.
#[derive(Default)]
struct Figure {
    junction: Vec<f64>,
    anchor: Vec<f64>,
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn durations_ms(v: &[Duration], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_unstable();
    if v.is_empty() {
        return f64::NAN;
    }
    pct(&v, p).as_secs_f64() * 1000.0
}

impl Figure {
    fn push(&mut self, junction: bool, x: f64) {
        if junction {
            self.junction.push(x);
        } else {
            self.anchor.push(x);
        }
    }

    /// Median of Junction, median of the anchor, and the range of the per-run ratios.
    fn cells(&self, unit: &str) -> (String, String, String) {
        let ratios: Vec<f64> = self
            .junction
            .iter()
            .zip(&self.anchor)
            .map(|(j, a)| j / a)
            .filter(|r| r.is_finite())
            .collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), r| {
                (l.min(*r), h.max(*r))
            });
        let ratio = if ratios.is_empty() {
            "—".to_owned()
        } else if ratios.len() == 1 || (hi - lo) < 0.005 {
            format!("{lo:.2}")
        } else {
            format!(
                "{:.2} ({lo:.2}–{hi:.2})",
                median(&self.junction) / median(&self.anchor)
            )
        };
        (
            format!("{} {unit}", num(median(&self.junction))),
            format!("{} {unit}", num(median(&self.anchor))),
            ratio,
        )
    }
}

fn num(x: f64) -> String {
    if !x.is_finite() {
        "—".to_owned()
    } else if x.abs() >= 100.0 {
        format!("{x:.0}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

/// A named figure set: latency p50/p99 of one path, CPU, RSS.
#[derive(Default)]
struct Figures {
    x2i_p50: Figure,
    x2i_p99: Figure,
    i2x_p50: Figure,
    i2x_p99: Figure,
    cpu: Figure,
    lost: [usize; 2],
    rss: Figure,
    mx_p50: Figure,
    mx_cpu: Figure,
}

// ---------------------------------------------------------------------------------------------
// The run

/// Runs the comparison and returns its Markdown.
pub fn main(
    quick: bool,
    cpu_lines: Option<usize>,
    flat: Option<(usize, f64)>,
) -> anyhow::Result<String> {
    install_anchors()?;
    let _ = junction_binary()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut plan = Plan::new(quick);
    if let Some(n) = cpu_lines {
        plan.cpu_n = n.max(1);
    }
    plan.flat = flat;
    rt.block_on(compare(plan))
}

async fn compare(plan: Plan) -> anyhow::Result<String> {
    let started = Instant::now();
    let s = servers().await?;
    let j_slot = slot().await?;
    let a_slot = slot().await?;
    let dir = tempfile::tempdir()?;
    let name = unique("cmp");
    let (j_chan, j_mx_chan, b_chan, h_chan) = (
        format!("#{name}j"),
        format!("#{name}jm"),
        format!("#{name}b"),
        format!("#{name}h"),
    );
    let owner = unique("cmpo");
    let c = Clients {
        irc: IrcUser::connect(s.inspircd, &super::short(&unique("ci"))).await?,
        xmpp: XmppUser::register(s, &super::short(&unique("cx")), "pw-compare").await?,
        matrix: MatrixUser::register(s, &owner, "pw-compare-owner").await?,
    };
    for ch in [&j_chan, &j_mx_chan, &b_chan, &h_chan] {
        c.irc.join(ch).await?;
    }
    let j = XPath {
        room: format!("{name}j@{}", s.xmpp.muc),
        chan: j_chan.clone(),
    };
    let b = XPath {
        room: biboumi_room(&a_slot, s.inspircd, &b_chan),
        chan: b_chan.clone(),
    };
    let mx_room = c
        .matrix
        .create_room(Some(&format!("{name}m")), true)
        .await?;

    let xnick = super::short(&unique("cx"));
    if plan.flat.is_some() {
        // Prosody's own archive store (internal storage) slows down past 10,000 messages
        // in one room: in a long run its CPU stayed at 100 % from there while the gateway
        // idled and lines came in tens of seconds late. The long run's room does not
        // archive, so what is measured is the gateway. The test user makes the room, and so
        // owns it, before the gateway joins.
        c.xmpp.join_muc(&j.room, &xnick).await?;
        c.xmpp
            .configure_room(&j.room, "muc#roomconfig_enablearchiving", "0")
            .await?;
    }
    eprintln!("starting junction and biboumi…");
    let junction = start_junction(
        s,
        &j_slot,
        dir.path(),
        &j.room,
        &j.chan,
        &mx_room,
        &j_mx_chan,
    )
    .await?;
    let bot = junction_testkit::gateway::bot_nick(&j_slot);
    c.irc
        .wait_for(Duration::from_secs(90), |m| {
            junction_testkit::clients::irc::is_join_of(m, &j_chan, &bot)
        })
        .await
        .context("junction's bot joining its channel")?;
    let biboumi = start_biboumi(s, &a_slot, dir.path()).await?;
    if plan.flat.is_none() {
        c.xmpp.join_muc(&j.room, &xnick).await?;
    }
    biboumi_unthrottle(&c.xmpp, &a_slot, s.inspircd).await?;
    c.xmpp
        .join_muc(&b.room, &xnick)
        .await
        .context("joining biboumi's room")?;
    for (p, t) in [(&j, "wj"), (&b, "wb")] {
        warm_up(&c, Dir::XmppToIrc, &p.room, &p.chan, t).await?;
        warm_up(&c, Dir::IrcToXmpp, &p.room, &p.chan, t).await?;
    }

    if let Some((n, rate)) = plan.flat {
        return flat(&c, &j, &junction, n, rate, started).await;
    }
    let mut f = Figures::default();
    for run in 0..plan.runs {
        for (is_j, p, proc) in [(true, &j, &junction), (false, &b, &biboumi)] {
            let who = if is_j { "junction" } else { "biboumi" };
            eprintln!("run {}/{}: {who}…", run + 1, plan.runs);
            let tag = format!("r{run}{}", if is_j { 'j' } else { 'b' });
            let n = plan.latency_n;
            for (dir, part) in [(Dir::XmppToIrc, "xi"), (Dir::IrcToXmpp, "ix")] {
                let tag = format!("{tag}{part}");
                let v = measure(&c, dir, &p.room, &p.chan, &tag, n, 20.0).await?;
                f.lost[usize::from(!is_j)] += n - v.len();
                let (p50, p99) = match dir {
                    Dir::XmppToIrc => (&mut f.x2i_p50, &mut f.x2i_p99),
                    _ => (&mut f.i2x_p50, &mut f.i2x_p99),
                };
                p50.push(is_j, durations_ms(&v, 0.5));
                p99.push(is_j, durations_ms(&v, 0.99));
            }
            let cpu0 = proc.cpu();
            let v = measure(
                &c,
                Dir::XmppToIrc,
                &p.room,
                &p.chan,
                &format!("{tag}c"),
                plan.cpu_n,
                50.0,
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            let per = (proc.cpu() - cpu0) / plan.cpu_n as f64 * 1000.0;
            f.lost[usize::from(!is_j)] += plan.cpu_n - v.len();
            f.cpu.push(is_j, per);
        }
    }

    eprintln!("bridged users: {} XMPP users…", plan.users);
    let users = register_users(s, plan.users).await?;
    for (is_j, p, proc) in [(true, &j, &junction), (false, &b, &biboumi)] {
        let kb = rss_per_user(&c, &users, p, proc, is_j).await?;
        f.rss.push(is_j, kb);
    }
    drop(users);
    biboumi.stop().await;

    eprintln!("matrix: starting heisenbridge…");
    let mut out = String::new();
    let mx = matrix_part(
        &c,
        s,
        &a_slot,
        dir.path(),
        &junction,
        &mx_room,
        &j_mx_chan,
        &h_chan,
        &plan,
        &mut f,
    )
    .await;
    junction.stop().await;
    drop(j_slot);
    if let Err(e) = &mx {
        let log = std::fs::read_to_string(dir.path().join("heisenbridge.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("matrix part failed: {e:#}\nheisenbridge's log, last lines:");
        for l in tail.iter().rev() {
            eprintln!("  {l}");
        }
    }
    print_table(&mut out, &plan, &f, mx.err());
    let _ = writeln!(out, "Took {:.0} s.", started.elapsed().as_secs_f64());
    Ok(out)
}

/// `n` registered XMPP users (prosodyctl, a few at a time).
async fn register_users(s: &'static Servers, n: usize) -> anyhow::Result<Vec<Arc<XmppUser>>> {
    let base = super::short(&unique("cu"));
    let mut users = Vec::new();
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let mut set = tokio::task::JoinSet::new();
        for i in chunk {
            let name = format!("{base}u{i}");
            set.spawn(async move { XmppUser::register(s, &name, "pw-compare-user").await });
        }
        while let Some(r) = set.join_next().await {
            users.push(Arc::new(r??));
        }
    }
    Ok(users)
}

/// RSS growth of `proc` per user when every one of `users` joins `p`'s room and says one line
/// (so each has an IRC connection through the gateway), in kB.
async fn rss_per_user(
    c: &Clients,
    users: &[Arc<XmppUser>],
    p: &XPath,
    proc: &Proc,
    is_j: bool,
) -> anyhow::Result<f64> {
    let before = proc.rss_kb();
    let mut set = tokio::task::JoinSet::new();
    for (i, u) in users.iter().enumerate() {
        let (u, room) = (u.clone(), p.room.clone());
        let nick = format!("cu{}{i}", if is_j { 'j' } else { 'b' });
        set.spawn(async move { u.join_muc(&room, &nick).await.map(drop) });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let mut at = c.irc.len();
    let tag = unique("u");
    for (i, u) in users.iter().enumerate() {
        u.send_groupchat(&p.room, &line(&format!("{tag}x{i}")))?;
    }
    let mut seen = std::collections::HashSet::new();
    let end = Instant::now() + Duration::from_secs(120);
    while seen.len() < users.len() && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let new = c.irc.received_since(at);
        at += new.len();
        for (_, m) in new {
            if let irc_proto::Command::PRIVMSG(t, text) = &m.command {
                if t.eq_ignore_ascii_case(&p.chan) && text.contains(&tag) {
                    seen.insert(text.clone());
                }
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = proc.rss_kb();
    eprintln!(
        "{}: {} of {} users' lines arrived; RSS {before} → {after} kB",
        if is_j { "junction" } else { "biboumi" },
        seen.len(),
        users.len()
    );
    Ok(after.saturating_sub(before) as f64 / users.len().max(1) as f64)
}

/// Matrix → IRC: Junction (again, for the Matrix bridge only) against heisenbridge, interleaved.
#[allow(clippy::too_many_arguments)]
async fn matrix_part(
    c: &Clients,
    s: &Servers,
    a_slot: &SlotGuard,
    dir: &Path,
    junction: &Proc,
    mx_room: &str,
    j_mx_chan: &str,
    h_chan: &str,
    plan: &Plan,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let hb = start_heisenbridge(s, a_slot, dir, c.matrix.user_id()).await?;
    let opened = heisenbridge_portal(&c.matrix, s.inspircd, h_chan).await?;
    let portal = opened.portal.clone();
    warm_up(c, Dir::MatrixToIrc, mx_room, j_mx_chan, "wjm").await?;
    warm_up(c, Dir::MatrixToIrc, &portal, h_chan, "whm").await?;
    for run in 0..plan.runs {
        for (is_j, room, chan, proc) in [
            (true, mx_room, j_mx_chan, junction),
            (false, portal.as_str(), h_chan, &hb),
        ] {
            eprintln!(
                "matrix run {}/{}: {}…",
                run + 1,
                plan.runs,
                if is_j { "junction" } else { "heisenbridge" }
            );
            let tag = format!("m{run}{}", if is_j { 'j' } else { 'h' });
            let cpu0 = proc.cpu();
            let v = measure(c, Dir::MatrixToIrc, room, chan, &tag, plan.matrix_n, 1.0).await?;
            let per = (proc.cpu() - cpu0) / plan.matrix_n as f64 * 1000.0;
            f.lost[usize::from(!is_j)] += plan.matrix_n - v.len();
            f.mx_p50.push(is_j, durations_ms(&v, 0.5));
            f.mx_cpu.push(is_j, per);
        }
    }
    opened.remove(&c.matrix).await;
    hb.stop().await;
    Ok(())
}

fn print_table(out: &mut String, plan: &Plan, f: &Figures, matrix_error: Option<anyhow::Error>) {
    let _ = writeln!(
        out,
        "## Junction beside biboumi and heisenbridge ({} runs each, interleaved)\n",
        plan.runs
    );
    let _ = writeln!(
        out,
        "| figure | Junction | anchor | Junction / anchor (median; per-run range) | note |\n|---|---:|---:|---:|---|"
    );
    let mut row = |what: String, fig: &Figure, unit: &str, anchor: &str, note: &str| {
        let (j, a, r) = fig.cells(unit);
        let _ = writeln!(out, "| {what} | {j} | {anchor} {a} | {r} | {note} |");
    };
    let n = plan.latency_n;
    let real_muc = "Junction's path crosses a real MUC on conference.xmpp.test; biboumi is the MUC itself, one hop less";
    row(
        format!("XMPP→IRC latency p50, {n} msgs at 20 msg/s"),
        &f.x2i_p50,
        "ms",
        "biboumi",
        real_muc,
    );
    row(
        "XMPP→IRC latency p99".to_owned(),
        &f.x2i_p99,
        "ms",
        "biboumi",
        "",
    );
    row(
        format!("IRC→XMPP latency p50, {n} msgs at 20 msg/s"),
        &f.i2x_p50,
        "ms",
        "biboumi",
        real_muc,
    );
    row(
        "IRC→XMPP latency p99".to_owned(),
        &f.i2x_p99,
        "ms",
        "biboumi",
        "",
    );
    row(
        format!("CPU per XMPP→IRC message, {} msgs at 50 msg/s", plan.cpu_n),
        &f.cpu,
        "ms",
        "biboumi",
        "the gateway process alone (utime+stime); Prosody's MUC work on Junction's path is not counted. Behind because Junction's path has more steps: it reads the MUC's copy of the line, its IRC bot reads the server's copy of the puppet's line, a PING proves it arrived, and each message is made durable before it crosses (one flush per message at this rate, 0.25–0.3 ms of CPU here, BENCHMARKS.md); biboumi is the MUC and reads the line once",
    );
    let (j, a, r) = f.rss.cells("kB");
    let _ = writeln!(
        out,
        "| RSS per bridged IRC user, {} in one channel | {j} | biboumi {a} | {r} | one IRC connection per XMPP user in both; one run each, not interleaved |",
        plan.users,
    );
    match matrix_error {
        None => {
            let m = plan.matrix_n;
            let hb = "heisenbridge is bouncer-style: the owner's own IRC connection, no puppets; it paces lines to IRC, hence 1 msg/s";
            let mut row = |what: String, fig: &Figure, note: &str| {
                let (j, a, r) = fig.cells("ms");
                let _ = writeln!(out, "| {what} | {j} | heisenbridge {a} | {r} | {note} |");
            };
            row(
                format!("Matrix→IRC latency p50, {m} msgs at 1 msg/s"),
                &f.mx_p50,
                hb,
            );
            row(
                "CPU per Matrix→IRC message".to_owned(),
                &f.mx_cpu,
                "the gateway process alone; Synapse not counted",
            );
        }
        Some(e) => {
            let _ = writeln!(
                out,
                "| Matrix→IRC vs heisenbridge | — | — | — | not measured: {e:#} |"
            );
        }
    }
    let _ = writeln!(
        out,
        "\nLines not arrived within {} s: Junction {}, anchors {}.\n",
        SETTLE.as_secs(),
        f.lost[0],
        f.lost[1]
    );
}
