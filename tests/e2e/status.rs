//! `junction status` against a gateway running on the test servers.

use crate::lobby::{short_nick, Lobby};
use junction_testkit::clients::{IrcUser, XmppUser};
use junction_testkit::gateway::bridge;
use junction_testkit::servers::servers;
use junction_testkit::unique;
use std::time::Duration;

/// How long the gateway may take to report a room it cannot join.
const WAIT: Duration = Duration::from_secs(90);

/// The binary asks the running lobby's `/health` and `/metrics` and prints a row per network
/// and the linked rooms; every network connected gives exit status 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_every_network_and_room_of_a_running_gateway() -> anyhow::Result<()> {
    let (lobby, base) = Lobby::start_with_metrics("").await?;
    junction_testkit::eventually(std::time::Duration::from_secs(60), "healthy", || {
        let url = format!("{base}/health");
        async move { (reqwest::get(&url).await.ok()?.status() == 200).then_some(()) }
    })
    .await?;
    let out = lobby.run_cli("status").await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    for network in ["matrix", "xmpp", "irc:local"] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(network) && l.contains("connected")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains(&lobby.muc) && stdout.contains(&lobby.channel),
        "{stdout}"
    );
    Ok(())
}

/// The lobby's networks.
const NETWORKS: [&str; 3] = ["matrix", "xmpp", "irc:local"];

/// The first line saying `network` is connected, or degraded and why.
fn settled<'a>(log: &'a str, network: &str) -> Option<&'a str> {
    let tag = format!("network={network} ");
    log.lines().find(|l| {
        l.contains("Network state changed.")
            && l.contains(&tag)
            && (l.contains("state=\"connected\"") || l.contains("state=\"degraded\""))
    })
}

/// The log lines that carry all of `words`.
fn lines_with<'a>(log: &'a str, words: &[&str]) -> Vec<&'a str> {
    log.lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .collect()
}

/// At start the `junction run` binary, at its default level, logs a line per network as it
/// connects (connected, or degraded and why), and one per linked room: joined, or why not. A second bridge links rooms the
/// gateway cannot enter on each network (a free Matrix alias outside the registration's
/// namespaces, a members-only MUC, an invite-only channel); each gets its line with the
/// reason. The log is plain text (no colour codes) when it is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_log_says_each_network_and_room_joined_or_why_not() -> anyhow::Result<()> {
    let servers = servers().await?;
    let locked = format!("#{}", unique("lk"));
    let owner = IrcUser::connect(servers.inspircd, &short_nick(&unique("lo"))).await?;
    owner.join(&locked).await?;
    owner.mode(&locked, "+i", &[])?;
    owner
        .wait_for(WAIT, |m| {
            let line = m.to_string();
            line.contains("MODE") && line.contains("+i")
        })
        .await?;
    let members = format!("{}@{}", unique("mo"), servers.xmpp.muc);
    let keeper = XmppUser::register(servers, &short_nick(&unique("xk")), "pw-log").await?;
    keeper.join_muc(&members, &unique("k")).await?;
    keeper
        .configure_room(&members, "muc#roomconfig_membersonly", "1")
        .await?;
    let outside = format!("#{}:{}", unique("out"), servers.matrix.server_name);
    let broken = bridge(
        "closed",
        Some(&outside),
        Some(&members),
        Some(&format!("local/{locked}")),
    );
    let lobby = Lobby::start_logged(|c| c.push_str(&broken)).await?;

    // Every reason arrives in its time; the lobby's rooms are joined already.
    let log = junction_testkit::eventually(WAIT, "a line for each room not joined", || {
        let log = lobby.gateway_log();
        let done = [
            vec!["Matrix room can not be linked", outside.as_str()],
            vec!["could not join", members.as_str()],
            vec!["IRC bot could not join", locked.as_str()],
        ]
        .iter()
        .all(|words| !lines_with(&log, words).is_empty())
            && NETWORKS.iter().all(|n| settled(&log, n).is_some());
        async move { done.then_some(log) }
    })
    .await?;
    assert!(!log.contains('\x1b'), "colour codes in the log:\n{log}");
    let one = |words: &[&str]| {
        let found = lines_with(&log, words);
        assert_eq!(found.len(), 1, "one line with {words:?} in:\n{log}");
    };
    // The networks: each past "connecting", the ones with a closed room saying which.
    one(&["Gateway starting.", "matrix, xmpp, irc:local"]);
    one(&["xmpp: component connected"]);
    one(&["IRC connected", "network=irc:local"]);
    for network in NETWORKS {
        assert!(settled(&log, network).is_some(), "{network} in:\n{log}");
    }
    let degraded = |network: &str, why: &str| {
        lines_with(&log, &["Network state changed.", network, "degraded", why]).len() == 1
    };
    assert!(degraded("network=xmpp", &members), "{log}");
    assert!(degraded("network=irc:local", &locked), "{log}");
    // The lobby's rooms, joined.
    one(&["Matrix room linked.", lobby.room.as_str()]);
    one(&["xmpp: the listener joined a room", lobby.muc.as_str()]);
    one(&["IRC bot joined.", &format!("channel={}", lobby.channel)]);
    // The closed ones, and why.
    let matrix = lines_with(&log, &["Matrix room can not be linked", &outside]);
    assert!(matrix[0].contains("namespace"), "{log}");
    let xmpp = lines_with(&log, &["could not join", &members]);
    assert!(xmpp[0].contains("registration-required"), "{log}");
    let irc = lines_with(&log, &["IRC bot could not join", &locked]);
    assert!(irc[0].contains("INVITEONLY"), "{log}");
    drop(owner);
    drop(keeper);
    Ok(())
}
