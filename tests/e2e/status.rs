//! `junction status` against a gateway running on the test servers.

use crate::lobby::Lobby;

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
