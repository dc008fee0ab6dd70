//! `junction doctor`: connects to every configured server and checks what the gateway
//! needs there, one finding per check (ok, warning or error), each problem with its fix.
//!
//! It may run beside a running gateway and leaves it alone: every connection is its own and
//! short-lived. On IRC it registers under a nick of its own (the bot's nick is only looked
//! up); on XMPP it does not log in as the component while a gateway holds the config's
//! store (a server may be set to replace the older connection), and a gateway elsewhere
//! keeps its connection as the server refuses the doctor's (reported); on Matrix it changes
//! nothing (it asks to delete only aliases that are free, to learn whether the registration
//! covers them), and answers the homeserver's ping itself for a moment when nothing listens
//! on `[matrix] listen`. No secret is printed.
//!
//! The findings and the report are `junction_core::doctor`'s; each network's checks are its
//! adapter crate's `doctor` module, run through [`junction_network::Network::doctor`]. Here:
//! the run over the config's networks (`check_networks`) and the printing.

use crate::config::Config;
pub use junction_core::doctor::{Finding, Level, Report, EXIT_ERRORS};
use junction_core::NetworkId;
use junction_network::Checkup;

/// The rooms of `network` (`matrix`, `xmpp`, `irc:local`) named by the config's bridges, each
/// once, in bridge order.
pub(crate) fn linked_rooms(config: &Config, network: &NetworkId) -> Vec<String> {
    let mut rooms: Vec<String> = Vec::new();
    for room in config.bridges.iter().flat_map(|l| &l.rooms) {
        if &room.network == network && !rooms.iter().any(|r| r == room.room.as_str()) {
            rooms.push(room.room.as_str().to_owned());
        }
    }
    rooms
}

/// True when a gateway runs from the config's `data_dir` on this host: it holds the store's
/// lock. On PostgreSQL: when a gateway (on any host) holds the store's active lock.
async fn gateway_holds_store(config: &Config) -> bool {
    if let crate::config::StoreLocation::Postgres(url) = &config.gateway.store {
        let Ok(lock) = junction_store::ActiveLock::wait(url.expose()) else {
            return false;
        };
        // Free locks are taken at once; two seconds without it: someone holds it.
        for _ in 0..20 {
            if lock.is_held() {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        return true;
    }
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

/// Runs each configured network's checks, in the config's order of networks, under the
/// network's name in `report`.
async fn check_networks(config: &Config, report: &mut Report) {
    if config.sections.is_empty() {
        return;
    }
    let gateway_running = gateway_holds_store(config).await;
    let networks: Vec<NetworkId> = config
        .sections
        .iter()
        .map(|c| c.section.network.clone())
        .collect();
    for configured in &config.sections {
        let network = &configured.section.network;
        let rooms = linked_rooms(config, network);
        let checkup = Checkup {
            rooms: &rooms,
            networks: &networks,
            gateway_running,
        };
        let mut out = report.network(network.as_str());
        configured
            .kind
            .doctor(&configured.section, checkup, &mut out)
            .await;
    }
}

/// Runs every check of every configured network.
pub async fn doctor(config: &Config) -> Report {
    let mut report = Report::default();
    check_networks(config, &mut report).await;
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
