//! Rooms the gateway creates on a server that locks new rooms (Prosody's default,
//! `muc_room_locking = true`): the gateway accepts the default configuration at once, so
//! people can join the lobby it made.

use anyhow::Context as _;
use junction_testkit::clients::XmppUser;
use junction_testkit::gateway;
use junction_testkit::servers::{servers, slot, PrivateServer};
use junction_testkit::unique;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// The gateway's listener creates the room; an ordinary user can join it right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_the_gateway_creates_is_unlocked_for_people() -> anyhow::Result<()> {
    let shared = servers().await?;
    let slot = slot().await?;
    let mut prosody = PrivateServer::prosody().await?;
    prosody.stop().await?;
    let cfg = prosody.config_path();
    let text = std::fs::read_to_string(&cfg)?;
    anyhow::ensure!(
        text.contains("muc_room_locking = false"),
        "config as expected"
    );
    std::fs::write(
        &cfg,
        text.replace("muc_room_locking = false", "muc_room_locking = true"),
    )?;
    prosody.start().await?;
    let private = prosody.servers(shared);

    let name = unique("made");
    let room = format!("{name}@{}", private.xmpp.muc);
    let data = tempfile::tempdir()?;
    let config = format!(
        "\n[gateway]\ndata_dir = \"data\"\n{}{}{}",
        gateway::xmpp_section(&private, &slot),
        gateway::irc_section(shared.inspircd, &slot),
        gateway::bridge("made", None, Some(&room), Some(&format!("local/#{name}"))),
    );
    let config = junction::config::parse(&config, "made.toml", data.path(), &|_| None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let shutdown = CancellationToken::new();
    let gateway = tokio::spawn(junction::serve(config, shutdown.clone()));

    // Someone joins after the gateway made the room: with the room still locked the server
    // would refuse them (item-not-found) until its owner configured it.
    let user = XmppUser::register(&private, &unique("pp")[..10], "pw-made").await?;
    let joined = junction_testkit::eventually(WAIT, "joining the room the gateway made", || {
        let (user, room) = (&user, room.clone());
        async move {
            // The room exists once the gateway's listener is in it.
            let nick = unique("p");
            tokio::time::timeout(Duration::from_secs(5), user.join_muc(&room, &nick))
                .await
                .ok()?
                .ok()
        }
    })
    .await
    .context("an ordinary user joins the gateway's room")?;
    let occupants_seen = user
        .wait_for(WAIT, |el| {
            el.name() == "presence"
                && el
                    .attr("from")
                    .is_some_and(|f| f.starts_with(&format!("{room}/junction")))
        })
        .await
        .context("the gateway's listener is in the room")?;
    let _ = (joined, occupants_seen);
    shutdown.cancel();
    gateway.await??;
    Ok(())
}
