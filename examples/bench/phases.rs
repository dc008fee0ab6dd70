//! The gateway phases (latency, Matrix, throughput, puppets) and the tables they print.

use super::*;
use crate::lobby::{Bench, Bridge, Side};
use crate::stats::{ms, p50_99, pct, rss_kb, table, CpuMeter};
use crate::taps::Sample;

pub(crate) struct LatencyRow {
    pub(crate) path: String,
    pub(crate) rate: String,
    pub(crate) sent: usize,
    pub(crate) send_rate: f64,
    pub(crate) source: String,
    pub(crate) route: String,
    pub(crate) adapter: String,
    pub(crate) gateway: String,
    pub(crate) end_to_end: String,
    pub(crate) lost: usize,
}

pub(crate) fn latency_row(
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

pub(crate) fn print_latency(rows: &[LatencyRow]) -> String {
    table(
        "| path | offered msg/s | sent | sent msg/s | source → Inbound | route (Inbound → Delivery) | adapter (Delivery → Delivered) | **gateway-added (Inbound → Delivered)** | client send → Delivered | lost |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        rows.iter().map(|r| {
            format!(
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
            )
        }),
    )
}

pub(crate) struct ThroughputRow {
    pub(crate) path: String,
    pub(crate) n: usize,
    pub(crate) inbound_rate: f64,
    pub(crate) delivered_rate: f64,
    pub(crate) max_in_flight: usize,
    pub(crate) lost: usize,
    pub(crate) cpu: String,
}

pub(crate) fn throughput_row(path: &str, samples: &[Sample], target: &NetworkId) -> ThroughputRow {
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

pub(crate) fn print_throughput(rows: &[ThroughputRow]) -> String {
    table(
        "| path | messages (sent at once) | Inbound msg/s | **Delivered msg/s** | most in flight | not answered | CPU (share of one core) |",
        "|---|---:|---:|---:|---:|---:|---|",
        rows.iter().map(|r| {
            format!(
                "| {} | {} | {:.0} | **{:.0}** | {} | {} | {} |",
                r.path, r.n, r.inbound_rate, r.delivered_rate, r.max_in_flight, r.lost, r.cpu
            )
        }),
    )
}

/// Three messages on each of `paths` through `bridge`, all answered: the first message
/// from a person makes a puppet, and the listener joins rooms.
async fn warm_up(
    b: &mut Bench,
    bridge: Bridge,
    paths: &[(Side, &NetworkId)],
) -> anyhow::Result<()> {
    for &(side, target) in paths {
        let (r, _) = b
            .run(side, bridge, target, 3, 5.0, Duration::from_secs(60))
            .await?;
        let ok = b.taps.answered(r, target);
        anyhow::ensure!(ok == 3, "warm-up {side:?} → {target}: {ok}/3 answered");
    }
    Ok(())
}

pub(crate) async fn latency_phase(
    b: &mut Bench,
    args: &Args,
    out: &mut String,
) -> anyhow::Result<()> {
    let irc = NetworkId::new("irc:local");
    let xmpp = NetworkId::new("xmpp");
    warm_up(b, Bridge::Fast, &[(Side::Irc, &xmpp), (Side::Xmpp, &irc)]).await?;
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

pub(crate) async fn matrix_phase(
    b: &mut Bench,
    args: &Args,
    out: &mut String,
) -> anyhow::Result<()> {
    let irc = NetworkId::new("irc:local");
    let xmpp = NetworkId::new("xmpp");
    let matrix = NetworkId::new("matrix");
    let paths = [
        (Side::Matrix, &irc),
        (Side::Irc, &matrix),
        (Side::Xmpp, &matrix),
    ];
    warm_up(b, Bridge::Mx, &paths).await?;
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

pub(crate) async fn throughput_phase(
    b: &mut Bench,
    args: &Args,
    out: &mut String,
) -> anyhow::Result<()> {
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
pub(crate) async fn puppet_phase(
    b: &mut Bench,
    args: &Args,
    out: &mut String,
) -> anyhow::Result<()> {
    let irc = NetworkId::new("irc:local");
    let counts: Vec<usize> = match args.puppets {
        Some(n) => vec![n],
        None if args.quick => vec![10],
        None => vec![200],
    };
    let mut s = table(
        "| puppets asked for | joined the channel | answered | first answered after | then one every (p50) | time to all answered | RSS before | RSS after | kB per puppet | after the trim: RSS, kB per puppet |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        [],
    );
    let mut offset = 0usize;
    let chan = b.fast_chan.clone();
    let me = b.irc.nick().to_owned();
    for n in counts {
        // The IRC test user leaves the channel while the puppets come, so this process does
        // not also keep every puppet's JOIN and line: the RSS below is the gateway's (its
        // store and the bench's taps included), not the test client's backlog.
        let from = b.irc.len();
        b.irc.part(&chan, "the puppets bench")?;
        b.irc
            .wait_since(from, Duration::from_secs(15), |m| {
                matches!(&m.command, irc_proto::Command::PART(c, _) if c.eq_ignore_ascii_case(&chan))
                    && junction_testkit::clients::irc::source_nick(m)
                        .is_some_and(|n| n.eq_ignore_ascii_case(&me))
            })
            .await?;
        let before = rss_kb();
        b.phase += 1;
        let phase = b.phase;
        let first = b.taps.len();
        let origin = RoomRef::new("xmpp", b.fast_muc.as_str());
        let start = Instant::now();
        let rate = args.puppet_rate.filter(|r| *r > 0.0);
        let mut pace = rate.map(|r| {
            let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / r));
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            t
        });
        for i in 0..n {
            if let Some(t) = pace.as_mut() {
                t.tick().await;
            }
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
        let paced = rate.map(|r| format!(", {r}/s")).unwrap_or_default();
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
        let after = rss_kb();
        // What the gateway's trimmer (every minute, `junction::memory`) hands back, called
        // now rather than waited for.
        junction::memory::release_freed();
        let trimmed = rss_kb();
        // Puppets in the channel, as the server lists them to one in it.
        b.irc.rejoin(&chan).await?;
        let bot = junction_testkit::gateway::bot_nick(&b.slot);
        let joined = b
            .irc
            .names(&chan)
            .await?
            .iter()
            .filter(|n| n.starts_with('p') && !n.eq_ignore_ascii_case(&bot))
            .count();
        let per = |rss: u64| match joined {
            0 => "–".to_owned(),
            j => format!("{:.1}", (rss.saturating_sub(before)) as f64 / j as f64),
        };
        eprintln!("  {n} puppets: {joined} joined, {answered} answered in {took:?}, RSS {before} → {after} kB, {trimmed} kB after the trim");
        let _ = writeln!(
            s,
            "| {n}{paced} | {joined} | {answered} | {} ms | {} ms | {:.1} s | {:.1} MB | {:.1} MB | {} | {:.1} MB, {} |",
            first_answer.map(ms).unwrap_or_else(|| "–".into()),
            ms(gap),
            took.as_secs_f64(),
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            per(after),
            trimmed as f64 / 1024.0,
            per(trimmed)
        );
    }
    out.push_str("### IRC puppets in one channel\n\n");
    out.push_str(&s);
    out.push('\n');
    Ok(())
}
