//! `--only ceiling`: towards Matrix, what Synapse itself accepts into one room from parallel
//! clients (the ceiling), then what Junction carries from IRC into one Matrix room at fixed
//! shares of it, with the Matrix outbox depth sampled once a second.
//!
//! The ceiling is measured with ordinary Matrix users, each its own HTTP client with one PUT
//! in flight (awaited before its next, as a client sends), in a fresh room without the
//! gateway, so Synapse alone is measured; one member (the bench's Matrix user) reads it by
//! `/sync` there as in the bridged room. One client alone is measured too: that is what a
//! sender with one PUT at a time gets, which is how the Matrix adapter serves a room.
//!
//! Junction's part: several IRC users (one ghost each in Matrix) speak in the Matrix bridge's
//! IRC channel at a fixed total rate, round-robin; the bench's Matrix user reads the room by
//! `/sync` and each message is timed when it is read. The outbox depth is the gateway's own
//! count, `Store::outbox_depth("matrix")` on the store the route loop writes (the same handle,
//! in this process; the gateway's `junction_outbox_depth` gauge shows the same count).

use super::*;
use crate::lobby::Bench;
use crate::stats::{p50_99, table, CpuMeter};
use junction_testkit::clients::matrix::enc;
use serde_json::{json, Value};

/// Parallel Matrix clients for the ceiling.
const CLIENTS: usize = 8;

/// IRC users speaking in the bridged channel, so as many ghosts send into the Matrix room: as
/// many as the ceiling's parallel clients.
const IRC_SENDERS: usize = CLIENTS;

/// Offered rates, as shares of the measured ceiling.
const SHARES: &[f64] = &[0.25, 0.5, 0.8];

/// The command that prints this section.
fn command(args: &Args) -> String {
    format!(
        "cargo run --release --example bench -- --only ceiling{}{}",
        if args.quick { " --quick" } else { "" },
        if args.parallel_senders > 1 {
            format!(" --parallel-senders {}", args.parallel_senders)
        } else {
            String::new()
        }
    )
}

/// An HTTP client of its own (its own connections), with a bound on every request.
fn http() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?)
}

/// One `m.room.message` PUT; an error unless Synapse accepted it.
async fn put(http: &reqwest::Client, url: &str, token: &str, body: &Value) -> anyhow::Result<()> {
    let resp = http.put(url).bearer_auth(token).json(body).send().await?;
    let status = resp.status();
    if !status.is_success() {
        let text = resp.text().await.unwrap_or_default();
        anyhow::bail!("{status}: {}", text.chars().take(200).collect::<String>());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reading a room as a member's client does

/// A message read from the room's timeline: when it was read, and its body.
#[derive(Clone, Debug)]
struct Read {
    at: Instant,
    body: String,
}

/// A `/sync` loop of one member, keeping every `m.room.message` of one room with the time
/// it was read, until stopped (or an hour passed).
struct Reader {
    read: Arc<Mutex<Vec<Read>>>,
    limited: Arc<Mutex<usize>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    /// Starts reading `room` as the user of `token`, from now on.
    async fn start(base: &str, token: &str, room: &str) -> anyhow::Result<Reader> {
        let http = http()?;
        let sync = format!("{base}/_matrix/client/v3/sync");
        // The position only: no rooms in the first answer.
        let none =
            enc(r#"{"room":{"rooms":[]},"presence":{"types":[]},"account_data":{"types":[]}}"#);
        let first: Value = http
            .get(format!("{sync}?timeout=0&filter={none}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let mut since = first["next_batch"]
            .as_str()
            .context("no next_batch")?
            .to_owned();
        let filter = enc(&json!({
            "room": {"rooms": [room], "timeline": {"limit": 1000},
                     "state": {"types": []}, "ephemeral": {"types": []},
                     "account_data": {"types": []}},
            "presence": {"types": []},
            "account_data": {"types": []},
        })
        .to_string());
        let read: Arc<Mutex<Vec<Read>>> = Arc::default();
        let limited: Arc<Mutex<usize>> = Arc::default();
        let stop = CancellationToken::new();
        let (r, l, s) = (read.clone(), limited.clone(), stop.clone());
        let (token, room) = (token.to_owned(), room.to_owned());
        let task = tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(3600);
            while Instant::now() < end {
                let url = format!("{sync}?timeout=5000&filter={filter}&since={}", enc(&since));
                let answer = tokio::select! {
                    () = s.cancelled() => break,
                    a = http.get(&url).bearer_auth(&token).send() => a,
                };
                let v: Value = match answer {
                    Ok(resp) if resp.status().is_success() => match resp.json().await {
                        Ok(v) => v,
                        Err(_) => Value::Null,
                    },
                    _ => Value::Null,
                };
                let at = Instant::now();
                let Some(next) = v["next_batch"].as_str() else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                };
                since = next.to_owned();
                let timeline = &v["rooms"]["join"][&room]["timeline"];
                if timeline["limited"] == true {
                    *l.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                }
                let mut out = r.lock().unwrap_or_else(|e| e.into_inner());
                for ev in timeline["events"].as_array().into_iter().flatten() {
                    if ev["type"] == "m.room.message" {
                        if let Some(body) = ev["content"]["body"].as_str() {
                            out.push(Read {
                                at,
                                body: body.to_owned(),
                            });
                        }
                    }
                }
            }
        });
        Ok(Reader {
            read,
            limited,
            stop,
            task,
        })
    }

    /// Every message read so far.
    fn read(&self) -> Vec<Read> {
        self.read.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How many `/sync` answers came back `limited` (events skipped: a gap in what was read).
    fn limited(&self) -> usize {
        *self.limited.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The ceiling

/// What a number of parallel clients got Synapse to accept into one room.
struct Flood {
    clients: usize,
    took: Duration,
    accepted: usize,
    errors: usize,
    latencies: Vec<Duration>,
    read_back: usize,
    cpu: String,
}

impl Flood {
    fn rate(&self) -> f64 {
        self.accepted as f64 / self.took.as_secs_f64().max(1e-9)
    }
}

/// Each client sends, one PUT in flight, until `span` passed; then the read-back is awaited
/// (bounded).
async fn flood(
    base: &str,
    room: &str,
    tokens: &[String],
    span: Duration,
    label: &str,
    reader: &Reader,
    servers: &Servers,
) -> anyhow::Result<Flood> {
    let cpu = CpuMeter::start(servers);
    let start = Instant::now();
    let end = start + span;
    let mut set = tokio::task::JoinSet::new();
    for (c, token) in tokens.iter().enumerate() {
        let http = http()?;
        let url = format!(
            "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/",
            enc(room)
        );
        let token = token.clone();
        let label = label.to_owned();
        set.spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut seq = 0usize;
            while Instant::now() < end {
                let id = format!("{label}c{c}n{seq}");
                seq += 1;
                let body = json!({
                    "msgtype": "m.text",
                    "body": format!("ceiling {id} the quick brown fox jumps over the lazy dog"),
                });
                let t0 = Instant::now();
                match put(&http, &format!("{url}{id}"), &token, &body).await {
                    Ok(()) => latencies.push(t0.elapsed()),
                    Err(e) => {
                        errors += 1;
                        if errors == 1 {
                            eprintln!("    client {c}: a PUT refused: {e}");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            (latencies, errors, Instant::now())
        });
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut last = start;
    while let Some(done) = set.join_next().await {
        let (l, e, at) = done?;
        latencies.extend(l);
        errors += e;
        last = last.max(at);
    }
    let cpu = cpu.report();
    let accepted = latencies.len();
    let prefix = format!("ceiling {label}c");
    let count = |r: &Reader| {
        r.read()
            .iter()
            .filter(|m| m.body.starts_with(&prefix))
            .count()
    };
    let _ = junction_testkit::eventually(Duration::from_secs(30), "the ceiling read back", || {
        let n = count(reader);
        async move { (n >= accepted).then_some(()) }
    })
    .await;
    Ok(Flood {
        clients: tokens.len(),
        took: last - start,
        accepted,
        errors,
        latencies,
        read_back: count(reader),
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// Junction from IRC into one room

/// One offered rate from IRC into the Matrix room, as measured.
struct Step {
    share: f64,
    offered: f64,
    sent: usize,
    send_rate: f64,
    arrived: usize,
    arrival_rate: f64,
    e2e: Vec<Duration>,
    queue_and_put: Vec<Duration>,
    service: Vec<Duration>,
    cpu: String,
    failed: usize,
    duplicates: usize,
    out_of_order: usize,
    out_of_order_per_sender: usize,
    /// The furthest apart (ms, by when they were sent) two lines that arrived swapped were.
    furthest_swap_ms: f64,
    depths: Vec<usize>,
    limited: usize,
}

/// How many arrived after one that was sent later (0: the order is kept), and the most
/// sequence numbers between such a late one and the latest-sent one read before it.
fn out_of_order(seq: impl Iterator<Item = usize>) -> (usize, usize) {
    let mut highest: Option<usize> = None;
    let (mut late, mut furthest) = (0, 0);
    for i in seq {
        match highest {
            Some(h) if i < h => {
                late += 1;
                furthest = furthest.max(h - i);
            }
            _ => highest = Some(i),
        }
    }
    (late, furthest)
}

/// The sequence numbers of phase `phase`'s messages in the order they were read (each
/// once), and how many were read twice.
fn arrivals(read: &[Read], phase: u32) -> (Vec<(usize, Instant)>, usize) {
    let prefix = format!("jb{phase}x");
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let mut duplicates = 0;
    for m in read {
        let Some(i) = crate::taps::tag_of(&m.body)
            .and_then(|t| t.strip_prefix(&prefix))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if seen.insert(i) {
            out.push((i, m.at));
        } else {
            duplicates += 1;
        }
    }
    (out, duplicates)
}

/// Sends `rate` msg/s for `span` from the senders in turn, samples the Matrix outbox once a
/// second meanwhile, then waits (bounded by `drain`) until each message was read in Matrix
/// or answered as failed.
#[allow(clippy::too_many_arguments)]
async fn step(
    b: &mut Bench,
    senders: &[IrcUser],
    reader: &Reader,
    share: f64,
    rate: f64,
    span: Duration,
    drain: Duration,
) -> anyhow::Result<Step> {
    let matrix = NetworkId::new("matrix");
    b.phase += 1;
    let phase = b.phase;
    let n = ((rate * span.as_secs_f64()).round() as usize).max(1);
    let first = b.taps.len();
    let cpu = CpuMeter::start(b.servers);
    let stop = CancellationToken::new();
    let sampler = {
        let store = b.store.clone();
        let stop = stop.clone();
        let net = matrix.clone();
        tokio::spawn(async move {
            let mut depths = Vec::new();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // At most an hour of samples, whatever happens to the stop.
            for _ in 0..3600 {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => depths.push(store.outbox_depth(&net).unwrap_or(usize::MAX)),
                }
            }
            depths
        })
    };
    let start = Instant::now();
    let mut sent_at = Vec::with_capacity(n);
    for i in 0..n {
        tokio::time::sleep_until((start + Duration::from_secs_f64(i as f64 / rate)).into()).await;
        let tag = format!("jb{phase}x{i}");
        let text = format!("bench {tag} the quick brown fox jumps over the lazy dog");
        let now = Instant::now();
        b.taps.register(tag, now);
        senders[i % senders.len()].privmsg(&b.mx_chan, &text)?;
        sent_at.push(now);
    }
    let sending = start.elapsed();
    let range = first..first + n;
    let failed_of = |b: &Bench| {
        b.taps
            .samples(range.clone())
            .iter()
            .filter(|s| s.legs.get(&matrix).is_some_and(|l| l.failed))
            .count()
    };
    let _ = junction_testkit::eventually(drain, "every message read in Matrix", || {
        let done = arrivals(&reader.read(), phase).0.len() + failed_of(b) >= n;
        async move { done.then_some(()) }
    })
    .await;
    // One more sample once all is in: the outbox back at its resting depth, or not.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    stop.cancel();
    let depths = sampler.await.unwrap_or_default();
    let cpu = cpu.report();

    let (seq, duplicates) = arrivals(&reader.read(), phase);
    let e2e: Vec<Duration> = seq
        .iter()
        .map(|&(i, at)| at.saturating_duration_since(sent_at[i]))
        .collect();
    let arrival_rate = match (seq.first(), seq.iter().map(|s| s.1).max()) {
        (Some(&(_, a)), Some(z)) if seq.len() > 1 && z > a => {
            (seq.len() - 1) as f64 / (z - a).as_secs_f64()
        }
        _ => 0.0,
    };
    let per_sender = (0..senders.len())
        .map(|s| out_of_order(seq.iter().map(|x| x.0).filter(|i| i % senders.len() == s)).0)
        .sum();
    let queue_and_put = b
        .taps
        .samples(range.clone())
        .iter()
        .filter_map(|s| {
            let l = s.legs.get(&matrix)?;
            Some(l.delivered?.saturating_duration_since(l.dispatched?))
        })
        .collect();
    // The adapter's time per delivery where one waited for the one before it: from one
    // answer to the next (the room's deliveries go one at a time).
    let mut legs: Vec<(Instant, Instant)> = b
        .taps
        .samples(range.clone())
        .iter()
        .filter_map(|s| {
            let l = s.legs.get(&matrix)?;
            Some((l.dispatched?, l.delivered?))
        })
        .collect();
    legs.sort_by_key(|l| l.1);
    let service = legs
        .windows(2)
        .filter(|w| w[1].0 <= w[0].1)
        .map(|w| w[1].1 - w[0].1)
        .collect();
    let (late, furthest) = out_of_order(seq.iter().map(|x| x.0));
    Ok(Step {
        share,
        offered: rate,
        sent: n,
        send_rate: n as f64 / sending.as_secs_f64().max(1e-9),
        arrived: seq.len(),
        arrival_rate,
        e2e,
        queue_and_put,
        service,
        cpu,
        failed: failed_of(b),
        duplicates,
        out_of_order: late,
        out_of_order_per_sender: per_sender,
        furthest_swap_ms: furthest as f64 * 1000.0 / rate.max(1e-9),
        depths,
        limited: reader.limited(),
    })
}

// ---------------------------------------------------------------------------------------------

/// The phase: the ceiling, then Junction at shares of it; prints a Markdown section.
pub(crate) async fn ceiling_phase(
    b: &mut Bench,
    args: &Args,
    out: &mut String,
) -> anyhow::Result<()> {
    let span = Duration::from_secs(if args.quick { 5 } else { 20 });
    let base = b.servers.matrix.url.trim_end_matches('/').to_owned();
    let reader_token = b.matrix.access_token().to_owned();

    // The ceiling: a fresh room, Synapse alone.
    eprintln!("  the ceiling: {CLIENTS} Matrix users in a fresh room…");
    let room = b
        .matrix
        .create_room(None, true)
        .await
        .context("the ceiling's room")?;
    let mut tokens = Vec::new();
    for _ in 0..CLIENTS {
        let user = MatrixUser::register(b.servers, &unique("jbc"), "pw-bench").await?;
        user.join(&room).await?;
        tokens.push(user.access_token().to_owned());
        // Dropping the user ends its /sync loop; its token stays good.
    }
    let reader = Reader::start(&base, &reader_token, &room).await?;
    let label = short(&unique("cl"));
    let mut floods = Vec::new();
    for k in [1, CLIENTS] {
        let f = flood(
            &base,
            &room,
            &tokens[..k],
            span,
            &format!("{label}k{k}"),
            &reader,
            b.servers,
        )
        .await?;
        eprintln!(
            "    {k} client(s): {} accepted in {:.1} s, {:.0} events/s, PUT {}",
            f.accepted,
            f.took.as_secs_f64(),
            f.rate(),
            p50_99(f.latencies.clone())
        );
        floods.push(f);
    }
    let limited_ceiling = reader.limited();
    reader.stop().await;
    let ceiling = floods.last().map(Flood::rate).unwrap_or(0.0);
    let single = floods.first().map(Flood::rate).unwrap_or(0.0);

    // Junction: IRC users in the Matrix bridge's channel, each a ghost in the room.
    eprintln!("  Junction from IRC into the Matrix room…");
    let mut senders = Vec::new();
    for s in 0..IRC_SENDERS {
        let irc = IrcUser::connect(b.servers.inspircd, &short(&unique(&format!("c{s}x")))).await?;
        irc.join(&b.mx_chan).await?;
        senders.push(irc);
    }
    let reader = Reader::start(&base, &reader_token, &b.mx_room).await?;
    // Warm-up: one message from each sender makes its ghost and has it join.
    let warm = step(
        b,
        &senders,
        &reader,
        0.0,
        5.0,
        Duration::from_secs_f64(IRC_SENDERS as f64 / 5.0),
        Duration::from_secs(60),
    )
    .await?;
    anyhow::ensure!(
        warm.arrived == warm.sent,
        "warm-up: {}/{} read in Matrix",
        warm.arrived,
        warm.sent
    );
    let mut steps = Vec::new();
    for &share in SHARES {
        let rate = (ceiling * share).max(1.0);
        let drain = Duration::from_secs(if args.quick { 45 } else { 120 });
        let s = step(b, &senders, &reader, share, rate, span, drain).await?;
        eprintln!(
            "    {:.0} % ({rate:.0} msg/s offered): {}/{} read, {:.1} msg/s arriving, depth {:?}",
            share * 100.0,
            s.arrived,
            s.sent,
            s.arrival_rate,
            s.depths
        );
        steps.push(s);
        // The next rate starts with an empty outbox (bounded wait).
        let store = b.store.clone();
        let _ = junction_testkit::eventually(Duration::from_secs(60), "the outbox empty", || {
            let empty = store
                .outbox_depth(&NetworkId::new("matrix"))
                .is_ok_and(|d| d == 0);
            async move { empty.then_some(()) }
        })
        .await;
    }
    reader.stop().await;

    // The section.
    let _ = writeln!(
        out,
        "### Towards Matrix: Synapse's one-room ceiling, and Junction from IRC into one room\n"
    );
    let _ = writeln!(
        out,
        "Command: `{}`. Every figure below is from this command.\n",
        command(args)
    );
    let _ = writeln!(
        out,
        "**Synapse's ceiling**: ordinary Matrix users, each its own HTTP client with one \
         `PUT /rooms/…/send/m.room.message` in flight (awaited before its next), into one \
         fresh room without the gateway for {} s; one member reads the room by `/sync`.\n",
        span.as_secs()
    );
    out.push_str(&table(
        "| parallel clients | accepted | in | **accepted events/s** | PUT latency p50 / p99 (ms) | refused | read back by /sync | CPU (share of one core) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        floods.iter().map(|f| {
            format!(
                "| {} | {} | {:.1} s | **{:.1}** | {} | {} | {} | {} |",
                f.clients,
                f.accepted,
                f.took.as_secs_f64(),
                f.rate(),
                p50_99(f.latencies.clone()),
                f.errors,
                f.read_back,
                f.cpu
            )
        }),
    ));
    let _ = writeln!(
        out,
        "\nCeiling: **{ceiling:.1} events/s** ({CLIENTS} clients); one client, one PUT at a \
         time: {single:.1} events/s. {}\n",
        if limited_ceiling > 0 {
            format!("The reader's /sync came back limited {limited_ceiling} times.")
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "**Junction from IRC into one Matrix room**: {IRC_SENDERS} IRC users in the Matrix \
         bridge's channel (one ghost each in the room), sending in turn at a fixed total rate \
         for {} s; a Matrix member reads the room by `/sync` and times each message when read. \
         *Arriving msg/s* = messages read / (first read → last read). *Queue + PUT* = the tap's \
         Delivery → Delivered: waiting in the room's queue, then the ghost's PUT. Out of order: \
         messages read after one sent later than them (0: order kept), over all senders and \
         within each sender; *furthest apart swapped*: how far apart, by when they were sent, the \
         two furthest apart lines that arrived swapped were. *Per delivery when backlogged*: from one answer to the next where \
         the next was waiting already, i.e. the adapter's time per delivery.\n",
        span.as_secs()
    );
    out.push_str(&table(
        "| offered (share of ceiling) | sent | sent msg/s | read in Matrix | **arriving msg/s** | % of ceiling | IRC send → read in Matrix p50 / p99 (ms) | queue + PUT p50 / p99 (ms) | per delivery when backlogged, p50 / p99 (ms) | lost | failed | out of order (all / per sender) | furthest apart swapped (ms sent apart) | outbox depth, max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        steps.iter().map(|s| {
            format!(
                "| {:.0} msg/s ({:.0} %) | {} | {:.1} | {} | **{:.1}** | {:.0} % | {} | {} | {} | {} | {} | {} / {} | {:.0} | {} |",
                s.offered,
                s.share * 100.0,
                s.sent,
                s.send_rate,
                s.arrived,
                s.arrival_rate,
                s.arrival_rate / ceiling.max(1e-9) * 100.0,
                p50_99(s.e2e.clone()),
                p50_99(s.queue_and_put.clone()),
                p50_99(s.service.clone()),
                s.sent - s.arrived,
                s.failed,
                s.out_of_order,
                s.out_of_order_per_sender,
                s.furthest_swap_ms,
                s.depths.iter().max().copied().unwrap_or(0),
            )
        }),
    ));
    let _ = writeln!(
        out,
        "\nMatrix outbox depth, once a second from the first message sent until all were read \
         (the gateway's own count: `Store::outbox_depth(\"matrix\")` on the route loop's sled \
         store, read in this process; what the `junction_outbox_depth` gauge shows):\n"
    );
    for s in &steps {
        let series: Vec<String> = s.depths.iter().map(usize::to_string).collect();
        let _ = writeln!(
            out,
            "- {:.0} msg/s ({:.0} %): {}",
            s.offered,
            s.share * 100.0,
            series.join(" ")
        );
    }
    let _ = writeln!(
        out,
        "\nCPU over each rate (share of one core, sending and draining):\n"
    );
    for s in &steps {
        let _ = writeln!(out, "- {:.0} msg/s: {}", s.offered, s.cpu);
    }
    let dup: usize = steps.iter().map(|s| s.duplicates).sum();
    let limited = steps.last().map_or(0, |s| s.limited);
    let _ = writeln!(
        out,
        "\nRead twice: {dup}. `/sync` answers marked limited (events may have been skipped; \
         the read counts above show whether any were): {limited}.\n"
    );
    if let Some(s) = steps.iter().find(|s| s.share >= 0.8) {
        let at_end = s.depths.get(span.as_secs() as usize).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "At 80 % of the ceiling ({:.1} msg/s offered): {:.1} msg/s arriving, {:.0} % of the \
             ceiling; outbox depth {at_end} when sending stopped, {} out of order.\n",
            s.offered,
            s.arrival_rate,
            s.arrival_rate / ceiling.max(1e-9) * 100.0,
            s.out_of_order
        );
    }
    Ok(())
}
