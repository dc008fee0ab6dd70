//! `junction doctor`: connects to every configured server and checks what the gateway
//! needs there, one finding per check (ok, warning or error), each problem with its fix.
//!
//! It may run beside a running gateway and leaves it alone: every connection is its own and
//! short-lived. On IRC it registers under a nick of its own (the bot's nick is only looked
//! up); on XMPP it does not log in as the component while a gateway holds the config's
//! store (a server may be set to replace the older connection), and a gateway elsewhere
//! keeps its connection as the server refuses the doctor's (reported); on Matrix it only
//! reads, and answers the homeserver's ping itself for a moment when nothing listens on
//! `[matrix] listen`. No secret is printed.

mod irc;
mod matrix;
mod xmpp;

use crate::config::Config;
pub use junction_core::doctor::{Finding, Level, Report, EXIT_ERRORS};
use junction_core::doctor::{Findings, TIMEOUT};

/// The rooms of `network` (`matrix`, `xmpp`, `irc:local`) named by the config's bridges, each
/// once, in bridge order.
pub(crate) fn linked_rooms(config: &Config, network: &str) -> Vec<String> {
    let mut rooms: Vec<String> = Vec::new();
    for room in config.bridges.iter().flat_map(|l| &l.rooms) {
        if room.network.as_str() == network && !rooms.iter().any(|r| r == room.room.as_str()) {
            rooms.push(room.room.as_str().to_owned());
        }
    }
    rooms
}

/// True when a gateway runs from the config's `data_dir` on this host: it holds the store's
/// lock.
async fn gateway_holds_store(config: &Config) -> bool {
    if !config.gateway.data_dir.join("store").exists() {
        return false;
    }
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        matches!(crate::cli::stored_links(&config), Err(note) if note.contains("running gateway"))
    })
    .await
    .unwrap_or(false)
}

/// Runs every check of every configured network.
pub async fn doctor(config: &Config) -> Report {
    let mut report = Report::default();
    if let Some(m) = &config.matrix {
        matrix::check(
            m,
            &linked_rooms(config, "matrix"),
            &mut report.network("matrix"),
        )
        .await;
    }
    if let Some(x) = &config.xmpp {
        let held = gateway_holds_store(config).await;
        let mut out = report.network("xmpp");
        if held {
            // A second component login is refused by default, but a server set to replace
            // the old connection (Prosody's component_conflict_resolve = "kick_old") would
            // drop the gateway's: do not try.
            out.warn(
                "component",
                "not checked: a gateway runs from this config's data_dir (it holds the store), \
                 and a second component login could displace its connection",
                "run `junction doctor` while the gateway is stopped to check the component and \
                 its rooms",
            );
        } else {
            xmpp::check(x, &linked_rooms(config, "xmpp"), &mut out).await;
        }
    }
    for i in &config.irc {
        let network = format!("irc:{}", i.name);
        let rooms = linked_rooms(config, &network);
        irc::check(i, &rooms, &mut report.network(network)).await;
    }
    report
}

/// `junction doctor`: runs the checks on `runtime`, prints one line per check, returns the
/// exit status.
pub fn main(runtime: &tokio::runtime::Runtime, config: &Config, file: &std::path::Path) -> u8 {
    println!(
        "{}: config OK; checking the servers (short-lived connections of the doctor's own; \
         a running gateway is left alone)",
        file.display()
    );
    let report = runtime.block_on(doctor(config));
    print!("{}", report.render());
    report.exit_code()
}
