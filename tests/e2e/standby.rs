//! A hot standby on PostgreSQL: two `junction run` processes on one config (each with its
//! own `/health` address, as on two hosts); the second waits on the store's active lock and
//! says `standby`, and when the active one is killed (SIGKILL) it takes over: lines said on
//! every network cross again.

use crate::faults::{print_figures, record, tally, Net, OwnInspircd, Rig};
use crate::lobby::Lobby;
use anyhow::Context as _;
use junction_testkit::servers::postgres;
use junction_testkit::{eventually, free_port, unique};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// `/health`'s `status` at `port`, if it answers.
async fn health_status(port: u16) -> Option<String> {
    let body: serde_json::Value = reqwest::get(format!("http://127.0.0.1:{port}/health"))
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    Some(body["status"].as_str()?.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_when_the_active_gateway_is_killed() -> anyhow::Result<()> {
    let schema = unique("standby").to_lowercase();
    let (active_port, standby_port) = (free_port()?, free_port()?);
    let mut lobby = Lobby::start_logged(|c| {
        *c = postgres::with_store(c, &schema);
        crate::lobby::in_gateway(c, &format!("metrics = \"127.0.0.1:{active_port}\""));
    })
    .await?;
    eventually(WAIT, "the active gateway's /health", || async {
        health_status(active_port).await.filter(|s| s != "standby")
    })
    .await?;

    // The same config, its /health elsewhere.
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("bridges.toml");
    let config = lobby.config_text().replace(
        &format!("metrics = \"127.0.0.1:{active_port}\""),
        &format!("metrics = \"127.0.0.1:{standby_port}\""),
    );
    std::fs::write(&file, config)?;
    let log = std::fs::File::create(dir.path().join("standby.log"))?;
    let mut standby = tokio::process::Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["run", "-c"])
        .arg(&file)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .context("starting the standby")?;
    eventually(WAIT, "the second gateway to say standby", || async {
        (health_status(standby_port).await.as_deref() == Some("standby")).then_some(())
    })
    .await?;
    // The active one still relays.
    let before = unique("before failover");
    lobby.irc.privmsg(&lobby.channel, &before)?;
    lobby
        .matrix_sees(&before)
        .await
        .context("irc → matrix, active")?;

    lobby.stop_gateway().await?; // SIGKILL
                                 // Taken over once every network is connected again (lines said on IRC before its bot is
                                 // back in the channel are the ones a restart covers with the channel's history).
    let took_over = eventually(WAIT, "the standby to take over", || async {
        (health_status(standby_port).await.as_deref() == Some("ok")).then_some(())
    })
    .await;
    if let Err(e) = took_over {
        let log = std::fs::read_to_string(dir.path().join("standby.log")).unwrap_or_default();
        anyhow::bail!("{e}; the standby's log:\n{log}");
    }
    let from_irc = unique("after failover irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    lobby
        .matrix_sees(&from_irc)
        .await
        .context("irc → matrix, after")?;
    lobby
        .xmpp_sees(&from_irc)
        .await
        .context("irc → xmpp, after")?;
    let from_matrix = unique("after failover matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    lobby
        .irc_sees(&from_matrix)
        .await
        .context("matrix → irc, after")?;
    lobby
        .xmpp_sees(&from_matrix)
        .await
        .context("matrix → xmpp, after")?;
    let from_xmpp = unique("after failover xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    lobby
        .matrix_sees(&from_xmpp)
        .await
        .context("xmpp → matrix, after")?;
    lobby
        .irc_sees(&from_xmpp)
        .await
        .context("xmpp → irc, after")?;

    standby.start_kill()?;
    standby.wait().await?;
    postgres::drop_schema(&schema);
    Ok(())
}

/// The active gateway is killed with SIGKILL while all three networks send numbered lines;
/// the standby, waiting on the same PostgreSQL store, takes over. Every line said before,
/// in the gap and after reaches both other networks exactly once: Synapse resends to the
/// standby's appservice listener, the MUC's archive is read from the cursor in the shared
/// store, and the IRC channel's history (+H) covers what was said in the gap.
///
/// Synapse stores a transaction made while the appservice is `down` for its recoverer to
/// send; one made just after the recoverer found nothing left, and before it marked the
/// appservice `up`, stays unsent until the next recovery (about 1 run of 7 here, a Matrix line
/// said in the gap). The gateway reads each linked room's timeline back after it starts, so
/// that line crosses too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_to_the_standby_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let ircd = OwnInspircd::start().await?;
    let mut rig = Rig::new(ircd.addr()).await?;
    let schema = unique("failover").to_lowercase();
    rig.on_postgres(&schema)?;
    rig.start_gateway().await?;
    let standby_metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let standby = rig.spawn_standby(standby_metrics)?;
    eventually(WAIT, "the second gateway to say standby", || async {
        (health_status(standby_metrics.port()).await.as_deref() == Some("standby")).then_some(())
    })
    .await?;
    let tag = unique("fo");
    let mut expected: BTreeMap<Net, Vec<u32>> = BTreeMap::new();
    rig.talk(&tag, &mut expected, &Net::ALL, 0..10).await?;
    // A burst from Matrix and XMPP, and the active gateway dies with lines in flight.
    for n in 10..16 {
        for net in [Net::Matrix, Net::Xmpp] {
            rig.send(net, &tag, n).await?;
            record(&mut expected, net, n);
        }
    }
    let before = rig.received(&tag).await?;
    rig.kill_gateway().await?;
    print_figures(
        "at the kill (lost = still in flight then):",
        &tally(&expected, &Net::ALL, &before),
    );
    // The gap: everyone talks while the standby takes over.
    rig.talk(&tag, &mut expected, &[Net::Matrix, Net::Xmpp], 16..20)
        .await?;
    rig.talk(&tag, &mut expected, &[Net::Irc], 500..503).await?;
    rig.adopt(standby, standby_metrics).await?;
    rig.talk(&tag, &mut expected, &[Net::Matrix, Net::Xmpp], 20..24)
        .await?;
    rig.talk(&tag, &mut expected, &[Net::Irc], 10..20).await?;
    let settled = rig
        .settle(
            &tag,
            &expected,
            "failover to the standby after kill -9 (lines said before, in the gap and after):",
            60,
        )
        .await;
    if settled.is_err() {
        let log = rig.dir.path().join("standby.log");
        println!("standby log ends:\n{}", crate::faults::tail(&log, 80));
    }
    settled?;
    rig.kill_gateway().await?;
    postgres::drop_schema(&schema);
    Ok(())
}
