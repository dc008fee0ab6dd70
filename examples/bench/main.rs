//! Junction's benchmark: the whole gateway on the real local servers, plus the store alone.
//!
//! ```sh
//! ./target/debug/junction-testkit start          # or let the bench start what is missing
//! cargo run --release --example bench -- [--quick] [--only store,latency,matrix,throughput,puppets]
//!                                        [--only ceiling]   # Synapse's one-room ceiling, Junction from IRC at shares of it
//!                                        [--puppets N] [--puppet-rate R] [--irc-mode puppet|relay]
//!                                        [--encrypted]   # the Matrix room encrypted
//!                                        [--nio]   # a matrix-nio member sends from Matrix
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
use junction_testkit::clients::{IrcUser, MatrixUser, NioUser, XmppUser};
use junction_testkit::servers::{servers, slot, Servers, SlotGuard};
use junction_testkit::unique;
use junction_xmpp::XmppAdapter;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod anchors;
mod ceiling;
mod compare;
mod lobby;
mod phases;
mod stats;
mod store;
mod taps;

use lobby::short;
use lobby::Bench;
use phases::{latency_phase, matrix_phase, puppet_phase, throughput_phase};
use stats::{cpu_secs, pct, rss_kb_of};
use store::store_phase;

// ---------------------------------------------------------------------------------------------
// Command line

#[derive(Clone, Debug)]
pub(crate) struct Args {
    pub(crate) quick: bool,
    pub(crate) compare: bool,
    pub(crate) only: Option<Vec<String>>,
    pub(crate) puppets: Option<usize>,
    /// `--puppet-rate R`: the puppets' first lines are sent R a second instead of all at once
    /// (people arriving, rather than a restart with everyone's line waiting).
    pub(crate) puppet_rate: Option<f64>,
    pub(crate) irc_mode: String,
    /// The store phase's backend: `sled` (default) or `postgres` (the testkit's PostgreSQL,
    /// a fresh schema).
    pub(crate) store: String,
    /// The store phase's message count, instead of 20,000 (quick) or 1,000,000.
    pub(crate) store_rows: Option<usize>,
    /// The Matrix room encrypted, the gateway with a device of its own, and a nio member
    /// (matrix-nio on libolm) sending from Matrix, so Matrix paths pay for encryption.
    pub(crate) encrypted: bool,
    /// A nio member sends from Matrix (always with `encrypted`; alone, the plain run to
    /// compare an encrypted one with, the same client sending).
    pub(crate) nio: bool,
    /// `--compare`: lines sent for the CPU row, per run and gateway, instead of 100 (quick)
    /// or 1,000: at 50 msg/s one clock tick (10 ms) is 1 / N ms per message.
    pub(crate) cpu_lines: Option<usize>,
    /// `--compare --flat N`: instead of the table, N XMPP→IRC lines through Junction alone,
    /// CPU per message window by window (is the 100,000th as cheap as the 1,000th?).
    pub(crate) flat: Option<usize>,
    /// `--flat-rate R`: lines per second for `--flat` (default 200).
    pub(crate) flat_rate: f64,
    /// `--parallel-senders N`: the Matrix adapter's `[matrix] parallel_senders` (default 1).
    pub(crate) parallel_senders: usize,
}

impl Args {
    pub(crate) fn parse() -> anyhow::Result<Args> {
        let mut a = Args {
            quick: false,
            compare: false,
            only: None,
            puppets: None,
            puppet_rate: None,
            irc_mode: "puppet".into(),
            store: "sled".into(),
            store_rows: None,
            encrypted: false,
            nio: false,
            cpu_lines: None,
            flat: None,
            flat_rate: 200.0,
            parallel_senders: 1,
        };
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            match arg.as_str() {
                "--quick" => a.quick = true,
                "--compare" => a.compare = true,
                "--encrypted" => {
                    a.encrypted = true;
                    a.nio = true;
                }
                "--nio" => a.nio = true,
                "--only" => {
                    let v = it.next().context("--only needs a list")?;
                    a.only = Some(v.split(',').map(str::to_owned).collect());
                }
                "--puppets" => {
                    a.puppets = Some(it.next().context("--puppets needs N")?.parse()?);
                }
                "--puppet-rate" => {
                    a.puppet_rate = Some(it.next().context("--puppet-rate needs R")?.parse()?);
                }
                "--irc-mode" => a.irc_mode = it.next().context("--irc-mode needs a mode")?,
                "--store" => a.store = it.next().context("--store needs sled or postgres")?,
                "--store-rows" => {
                    a.store_rows = Some(it.next().context("--store-rows needs N")?.parse()?);
                }
                "--cpu-lines" => {
                    a.cpu_lines = Some(it.next().context("--cpu-lines needs N")?.parse()?);
                }
                "--flat" => {
                    a.flat = Some(it.next().context("--flat needs N")?.parse()?);
                }
                "--flat-rate" => {
                    a.flat_rate = it.next().context("--flat-rate needs R")?.parse()?;
                }
                "--parallel-senders" => {
                    a.parallel_senders =
                        it.next().context("--parallel-senders needs N")?.parse()?;
                }
                "-h" | "--help" => {
                    println!(
                        "bench [--quick] [--only store,latency,matrix,throughput,puppets] \
                         [--puppets N] [--puppet-rate R] [--irc-mode puppet|relay] \
                         [--store sled|postgres] [--store-rows N] [--encrypted] [--nio]\n       \
                         bench --only ceiling [--quick] [--parallel-senders N]   (Synapse's one-room ceiling, Junction from IRC at shares of it)\n       \
                         bench --compare [--quick] [--cpu-lines N]   (beside biboumi and heisenbridge)\n       \
                         bench --compare --flat N [--flat-rate R]   (CPU per message over a long run)"
                    );
                    std::process::exit(0);
                }
                other => anyhow::bail!("unknown argument {other:?}"),
            }
        }
        Ok(a)
    }

    /// Whether a part runs: every part but `ceiling` when no `--only` is given.
    pub(crate) fn wants(&self, part: &str) -> bool {
        if part == "ceiling" {
            return self
                .only
                .as_ref()
                .is_some_and(|o| o.iter().any(|p| p == part));
        }
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|p| p == part))
    }
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
        println!(
            "{}",
            compare::main(
                args.quick,
                args.cpu_lines,
                args.flat.map(|n| (n, args.flat_rate))
            )?
        );
        return Ok(());
    }
    let started = Instant::now();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## Junction bench ({} mode, IRC {} mode{}{})\n",
        if args.quick { "quick" } else { "full" },
        args.irc_mode,
        if args.encrypted {
            ", Matrix room encrypted"
        } else {
            ""
        },
        if args.nio {
            ", a nio member sending from Matrix"
        } else {
            ""
        }
    );
    if args.wants("store") {
        eprintln!("store…");
        store_phase(&args, &mut out)?;
    }
    let network = ["latency", "matrix", "throughput", "puppets", "ceiling"]
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
                if args.wants("ceiling") {
                    eprintln!("ceiling…");
                    ceiling::ceiling_phase(&mut b, &args, &mut out).await?;
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
