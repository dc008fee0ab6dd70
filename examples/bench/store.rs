//! The store phase: the store alone (sled in a temporary directory, or the testkit's
//! PostgreSQL in a fresh schema), without the gateway or the servers.

use super::*;
use crate::stats::table;

pub(crate) fn store_phase(args: &Args, out: &mut String) -> anyhow::Result<()> {
    use junction_core::router::Planned;
    use junction_core::BridgeName;
    let rows: usize = args
        .store_rows
        .unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    let puppets: usize = if args.quick { 1_000 } else { 10_000 };
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("store");
    let pg = match args.store.as_str() {
        "sled" => None,
        "postgres" => Some(junction_testkit::servers::postgres::schema_url(
            &junction_testkit::unique("bench").to_lowercase(),
        )),
        other => anyhow::bail!("--store {other:?}: sled or postgres"),
    };
    let open = || -> anyhow::Result<Box<dyn Store>> {
        Ok(match &pg {
            Some(url) => Box::new(junction_store::PgStore::open(url)?),
            None => Box::new(SledStore::open(&path)?),
        })
    };
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
    let mut s = table(
        "| operation | rows in store | rate / time |",
        "|---|---:|---:|",
        [],
    );
    {
        let store = open()?;
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
    if pg.is_some() {
        let ready = restart(&open, "restart to ready")?;
        let _ = writeln!(
            s,
            "| **restart to ready** (open, links, outboxes, first puppet) | {rows} map rows, {puppets} puppets | **{:.0} ms** |",
            ready.as_secs_f64() * 1000.0
        );
        eprintln!("  store: restart to ready {ready:?}");
        out.push_str("### Store (PostgreSQL, the testkit's cluster)\n\n");
        out.push_str(&s);
        out.push('\n');
        return Ok(());
    }
    let size: u64 = dir_size(&path);
    // A gateway's stop opens the store once more (sled writes its snapshot only at an open);
    // that open reads the log written since the last one, as a start after a crash would.
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    SledStore::checkpoint(&path, Duration::from_secs(5))?;
    let checkpoint = t.elapsed();
    let _ = writeln!(
        s,
        "| checkpoint at the stop (one open; a start after a crash reads the same log) | {rows} map rows, {puppets} puppets | {:.0} ms |",
        checkpoint.as_secs_f64() * 1000.0
    );
    let ready = restart(&open, "restart to ready")?;
    let _ = writeln!(
        s,
        "| **restart to ready** after that stop (open, links, outboxes, first puppet) | {rows} map rows, {puppets} puppets | **{:.0} ms** |",
        ready.as_secs_f64() * 1000.0
    );
    let per = |b: u64| b as f64 / rows as f64;
    let _ = writeln!(
        s,
        "| size on disk, as written | {rows} messages | {:.0} MB ({:.0} B/message) |",
        size as f64 / 1e6,
        per(size)
    );
    // Compaction (`junction store compact`, the gateway stopped): the live rows copied into a
    // fresh database.
    let t = Instant::now();
    let c = SledStore::compact(&path)?;
    let took = t.elapsed();
    let _ = writeln!(
        s,
        "| compact (live rows into a fresh database) | {rows} messages | {:.1} s |",
        took.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "| **size on disk, compacted** | {rows} messages | **{:.0} MB ({:.0} B/message)** |",
        c.after as f64 / 1e6,
        per(c.after)
    );
    let compacted = restart(&open, "restart after compaction")?;
    // What the rows themselves hold, beside what sled takes for them.
    let mut held = table(
        "| tree | rows | key bytes / message | value bytes / message |",
        "|---|---:|---:|---:|",
        [],
    );
    let mut live = 0;
    for t in SledStore::open(&path)?.tree_sizes()? {
        live += t.key_bytes + t.value_bytes;
        let _ = writeln!(
            held,
            "| {} | {} | {:.1} | {:.1} |",
            t.name,
            t.rows,
            per(t.key_bytes),
            per(t.value_bytes)
        );
    }
    let _ = writeln!(
        held,
        "| all | | {:.0} B / message, keys and values | |",
        per(live)
    );
    let _ = writeln!(
        s,
        "| **restart to ready, compacted** | {rows} map rows, {puppets} puppets | **{:.0} ms** |",
        compacted.as_secs_f64() * 1000.0
    );
    eprintln!(
        "  store: checkpoint {checkpoint:?}, restart to ready {ready:?} ({compacted:?} compacted), {:.0} MB ({:.0} MB compacted)",
        size as f64 / 1e6,
        c.after as f64 / 1e6
    );
    out.push_str("### Store (sled, on disk)\n\n");
    out.push_str(&s);
    out.push_str("\nWhat the store's rows hold, compacted:\n\n");
    out.push_str(&held);
    out.push('\n');
    Ok(())
}

/// Opens the store with `open` and reads the links, the outboxes and a puppet, as the gateway
/// does at start; how long that took.
fn restart(
    open: &dyn Fn() -> anyhow::Result<Box<dyn Store>>,
    what: &str,
) -> anyhow::Result<Duration> {
    // sled's flusher thread lets go of the database's lock a moment after its last handle:
    // that wait is not part of a restart.
    std::thread::sleep(Duration::from_secs(1));
    let t = Instant::now();
    let store = open()?;
    let links = gateway::initial_links(&[], store.as_ref())?;
    let _router = Router::new(links)?;
    for n in ["matrix", "xmpp", "irc:local"] {
        store.pending(&NetworkId::new(n))?;
    }
    let p = store.puppet(
        &NetworkId::new("irc:local"),
        &UserRef::new("matrix", "@user7:matrix.test"),
    )?;
    let ready = t.elapsed();
    anyhow::ensure!(p.is_some(), "puppet lost across the {what}");
    Ok(ready)
}

pub(crate) use junction_store::dir_size;
