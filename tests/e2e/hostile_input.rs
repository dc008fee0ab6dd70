//! Hostile input through the real servers, each sent by an ordinary user's client: a body of
//! 50,000 `>` from XMPP (XEP-0393 quotes), a `formatted_body` nesting `<b>` 8,000 deep from
//! Matrix, long `*a *a *a …` delimiter runs from every network, and forty messages of 60 kB
//! from Matrix at once (megabyte transactions). After each the gateway stays up, the next ordinary line crosses in all six directions, and a restart on the same
//! data dir (which hands out what the store holds) stays up and relays too.

use crate::lobby::{Lobby, Side};
use anyhow::Context as _;
use junction_testkit::unique;

/// One fresh line from each network, each seen on the other two: M→X, M→I, X→M, X→I, I→M,
/// I→X.
pub(crate) async fn every_direction_relays(lobby: &Lobby, what: &str) -> anyhow::Result<()> {
    for from in [Side::Matrix, Side::Xmpp, Side::Irc] {
        lobby.line_crosses(from, what).await?;
    }
    Ok(())
}

/// Every direction relays now, and again after the gateway is restarted on the same store.
pub(crate) async fn relays_now_and_after_a_restart(
    lobby: &mut Lobby,
    what: &str,
) -> anyhow::Result<()> {
    every_direction_relays(lobby, what).await?;
    lobby.stop_gateway().await.context("stopping the gateway")?;
    lobby
        .start_gateway()
        .await
        .with_context(|| format!("{what}: the gateway restarted on the same store"))?;
    every_direction_relays(lobby, &format!("{what}, after a restart")).await
}

/// A body of 50,000 `>` from an XMPP client (it used to overflow the XEP-0393 reader's stack
/// and leave a record that could not be read back, so every restart failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_quotes_from_xmpp_keep_the_gateway_up() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let tag = unique("dq");
    let quotes = format!("{tag}\n{}", ">".repeat(50_000));
    lobby.xmpp.send_groupchat(&lobby.muc, &quotes)?;
    lobby
        .irc_sees(&tag)
        .await
        .context("the quoted body's first line → irc")?;
    relays_now_and_after_a_restart(&mut lobby, "after 50,000 '>' from XMPP").await
}

/// A `formatted_body` nesting `<b>` 8,000 deep (56 kB) from a Matrix client: its text
/// crosses, flattened below the depth bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_html_from_matrix_keeps_the_gateway_up() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let tag = unique("dh");
    let html = format!("{}{tag}{}", "<b>".repeat(8_000), "</b>".repeat(8_000));
    lobby.matrix.send_html(&lobby.room, &tag, &html).await?;
    let x = lobby.xmpp_sees(&tag).await.context("nested html → xmpp")?;
    let body = junction_testkit::clients::xmpp::body(&x).unwrap_or_default();
    assert!(body.len() < 1_000, "bold markers stay bounded: {body:?}");
    lobby.irc_sees(&tag).await.context("nested html → irc")?;
    relays_now_and_after_a_restart(&mut lobby, "after <b> nested 8,000 deep from Matrix").await
}

/// Long `*a *a *a …` runs (quadratic in the old XEP-0393 reader) from all three networks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delimiter_runs_keep_the_gateway_up() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let tag = unique("dr");
    lobby
        .xmpp
        .send_groupchat(&lobby.muc, &format!("{tag}x {}", "*a ".repeat(20_000)))?;
    lobby
        .matrix
        .send_text(&lobby.room, &format!("{tag}m {}", "*a ".repeat(15_000)))
        .await?;
    // An IRC line holds at most 512 bytes.
    lobby
        .irc
        .privmsg(&lobby.channel, &format!("{tag}i {}", "*a ".repeat(120)))?;
    lobby
        .matrix_sees(&format!("{tag}x"))
        .await
        .context("the XMPP run → matrix")?;
    lobby
        .xmpp_sees(&format!("{tag}m"))
        .await
        .context("the Matrix run → xmpp")?;
    lobby
        .xmpp_sees(&format!("{tag}i"))
        .await
        .context("the IRC run → xmpp")?;
    relays_now_and_after_a_restart(&mut lobby, "after '*a *a …' runs").await
}

/// Forty messages of 60 kB each (near the homeserver's 64 KiB event limit) sent from Matrix
/// at once: the homeserver batches what queues up behind a transaction in flight, so one
/// transaction can carry megabytes (up to 100 events of 64 KiB, plus ephemeral data). Every
/// message crosses to XMPP whole, and the next ordinary line too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_large_matrix_events_crosses_whole() -> anyhow::Result<()> {
    const COUNT: usize = 40;
    let lobby = Lobby::start().await?;
    let tag = unique("big");
    let filler = "x".repeat(60_000);
    let texts: Vec<String> = (0..COUNT).map(|i| format!("{tag} {i}. {filler}")).collect();
    let sends = texts.iter().map(|t| lobby.matrix.send_text(&lobby.room, t));
    for sent in futures::future::join_all(sends).await {
        sent.context("sending a large message")?;
    }
    for i in 0..COUNT {
        let el = lobby
            .xmpp_sees(&format!("{tag} {i}. "))
            .await
            .with_context(|| format!("large message {i} → xmpp"))?;
        let len = junction_testkit::clients::xmpp::body(&el).map_or(0, |b| b.len());
        assert!(
            len >= 60_000,
            "large message {i} arrived whole ({len} bytes)"
        );
    }
    every_direction_relays(&lobby, "after a burst of large Matrix events").await
}
