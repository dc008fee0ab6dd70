//! Retention through the real servers: a reply to a message the store has forgotten
//! crosses as a plain message, and a network that was unreachable gets only the newest of
//! what waited for it, with one notice and the counter in `/metrics`.

use super::lobby::{in_gateway, Lobby};
use anyhow::Context as _;
use junction_testkit::{eventually, free_port, unique};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A reply on Matrix to an IRC line carries its quote on IRC and is a XEP-0461 reply on
/// XMPP while the line is remembered. The gateway is then restarted with `retention_days`
/// at about two seconds (fractions are allowed): the pruner's pass at start removes the
/// line, and the same reply crosses as plain text. Replies are sent until one crosses plain
/// (a bounded wait), since the pass runs beside the start rather than before it. (The
/// periodic passes are the same code on a timer; the store's and the pruner's unit tests
/// cover them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_to_a_pruned_message_crosses_as_plain_text() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let question = unique("question from irc");
    lobby.irc.privmsg(&lobby.channel, &question)?;
    let m_q = lobby.matrix_sees(&question).await?;
    let q_id = m_q["event_id"].as_str().context("event id")?.to_owned();

    let early = unique("early answer");
    lobby.matrix.send_reply(&lobby.room, &q_id, &early).await?;
    let (_, t) = lobby.irc_sees(&early).await?;
    assert!(t.contains('←'), "remembered: quoted on IRC: {t:?}");

    lobby.stop_gateway().await?;
    lobby.tweak_config(|c| in_gateway(c, "retention_days = 0.00002"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    lobby.start_gateway().await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    let late = loop {
        let late = unique("late answer");
        lobby.matrix.send_reply(&lobby.room, &q_id, &late).await?;
        let (_, t) = lobby.irc_sees(&late).await?;
        assert!(t.contains(&late), "{t:?}");
        if !t.contains('←') {
            break late;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "still quoted on IRC a minute after a restart past the retention: {t:?}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    let x = lobby.xmpp_sees(&late).await?;
    assert!(
        !x.children().any(|c| c.name() == "reply"),
        "forgotten: a plain message on XMPP: {}",
        String::from(&x)
    );
    Ok(())
}

/// The IRC network is unreachable while Matrix says nine lines; the gateway is stopped and
/// started again with IRC back. With `outbox_max_depth = 3`, IRC gets the three newest, one
/// notice saying how many were not relayed, and `/metrics` counts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_network_gets_only_the_newest_with_one_notice() -> anyhow::Result<()> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut lobby = Lobby::start_with(|c| {
        in_gateway(
            c,
            &format!("outbox_max_depth = 3\nrate_per_minute = 0\nmetrics = \"{metrics}\""),
        )
    })
    .await?;
    let tag = unique("backlog");

    // IRC unreachable: the same network at an address where nothing listens.
    lobby.stop_gateway().await?;
    let real = lobby.irc_addr.to_string();
    let dead = format!("127.0.0.1:{}", free_port()?);
    lobby.tweak_config(|c| *c = c.replace(&real, &dead));
    // It never sees IRC join: only Matrix and XMPP are waited for, below.
    let _ = tokio::time::timeout(Duration::from_secs(3), lobby.start_gateway()).await;
    let probe = unique("probe");
    lobby.matrix.send_text(&lobby.room, &probe).await?;
    lobby
        .xmpp_sees(&probe)
        .await
        .context("matrix → xmpp, IRC down")?;
    for n in 0..9 {
        lobby
            .matrix
            .send_text(&lobby.room, &format!("{tag} {n}"))
            .await?;
    }
    lobby.xmpp_sees(&format!("{tag} 8")).await?;
    lobby.stop_gateway().await?;

    // IRC back: at start, all but the newest three for IRC are dropped.
    lobby.tweak_config(|c| *c = c.replace(&dead, &real));
    lobby.start_gateway().await?;
    let notice = eventually(WAIT, "the notice on IRC", || {
        let found = lobby
            .irc
            .backlog()
            .into_iter()
            .find_map(|m| match &m.command {
                irc_proto::Command::NOTICE(t, text) | irc_proto::Command::PRIVMSG(t, text)
                    if t.eq_ignore_ascii_case(&lobby.channel)
                        && text.contains("was unreachable were not relayed") =>
                {
                    Some(text.clone())
                }
                _ => None,
            });
        async move { found }
    })
    .await?;
    let dropped: u64 = notice
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("a count in {notice:?}"))?;
    assert!(
        notice.contains("from while irc:local was unreachable"),
        "{notice:?}"
    );
    // The probe and the nine lines at least, less the three kept.
    assert!(dropped >= 7, "{notice:?}");
    for n in 6..9 {
        lobby.irc_sees(&format!("{tag} {n}")).await?;
    }
    let said: Vec<String> = lobby
        .irc
        .privmsgs_in(&lobby.channel)
        .into_iter()
        .map(|(_, t)| t)
        .collect();
    for n in 0..6 {
        let line = format!("{tag} {n}");
        assert!(
            !said.iter().any(|t| t.ends_with(&line)),
            "{line:?} was dropped, yet said"
        );
    }
    let notices = lobby
        .irc
        .backlog()
        .iter()
        .filter(|m| {
            matches!(&m.command,
                irc_proto::Command::NOTICE(_, t) | irc_proto::Command::PRIVMSG(_, t)
                    if t.contains("was unreachable were not relayed"))
        })
        .count();
    assert_eq!(notices, 1, "one notice");
    let body = reqwest::get(format!("http://{metrics}/metrics"))
        .await?
        .text()
        .await?;
    let counted = body
        .lines()
        .find(|l| l.starts_with("junction_outbox_dropped_total{network=\"irc:local\"}"))
        .with_context(|| format!("the counter in:\n{body}"))?;
    assert!(
        counted.ends_with(&format!(" {dropped}")),
        "{counted} (notice: {notice:?})"
    );
    Ok(())
}
