//! Inserts events (100k, or `JUNCTION_BENCH_N`) into a SledStore in a temporary directory, or
//! into PostgreSQL when `JUNCTION_BENCH_PG` is a store URL (a fresh schema there, e.g.
//! `postgres://junction:…@127.0.0.1:5439/junction?options=-c%20search_path%3Dbench1`), and
//! prints inserts/s and lookups/s. A rough measurement, no assertions.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use junction_core::router::Planned;
use junction_core::{BridgeName, Event, EventKind, MessageId, RoomRef, Sender, UserRef};
use junction_store::{PgStore, SledStore, Store};
use std::time::Instant;

fn main() {
    let n: usize = std::env::var("JUNCTION_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let store: Box<dyn Store> = match std::env::var("JUNCTION_BENCH_PG") {
        Ok(url) if !url.is_empty() => {
            println!("store: PostgreSQL");
            Box::new(PgStore::open(&url).unwrap())
        }
        _ => {
            println!("store: sled");
            Box::new(SledStore::open(dir.path()).unwrap())
        }
    };
    let origin = RoomRef::new("matrix", "#lobby:matrix.test");
    let sender = Sender::new(UserRef::new("matrix", "@alice:matrix.test"), "alice");
    let target = Planned {
        bridge: BridgeName::new("lobby"),
        target: RoomRef::new("irc:local", "#lobby"),
        reply_to: vec![],
        target_ids: vec![],
    };
    let events: Vec<Event> = (0..n)
        .map(|i| {
            Event::new(
                origin.clone(),
                MessageId::new(format!("${i}")),
                sender.clone(),
                0,
                EventKind::Join,
            )
        })
        .collect();
    let start = Instant::now();
    for e in &events {
        store.record_inbound(e, vec![target.clone()]).unwrap();
    }
    store.flush().unwrap();
    let secs = start.elapsed().as_secs_f64();
    println!("inserts: {:.0}/s", n as f64 / secs);
    let start = Instant::now();
    for e in &events {
        store.event_for(&e.origin, &e.remote_id).unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    println!("lookups: {:.0}/s", n as f64 / secs);
}
