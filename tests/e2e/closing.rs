//! Closing and unlinking through the whole gateway: the announcement is said in every room
//! of the bridge on every network (the room leaving included) before the gateway leaves, and
//! nothing is relayed afterwards.

use crate::admin::{irc_command, matrix_announcement, Admins};
use crate::lobby::Lobby;
use anyhow::Context as _;
use irc_proto::Command;
use junction_testkit::clients::irc::source_nick;
use junction_testkit::unique;
use std::time::Duration;

/// How long any one thing may take in these tests.
const WAIT: Duration = Duration::from_secs(60);

/// How long a line that must not cross is given to (wrongly) arrive.
const QUIET: Duration = Duration::from_secs(5);

/// Waits for the gateway's line containing `text` in the lobby's channel (the bot says
/// announcements as notices) and for the bot's PART of the channel; returns their places in
/// the IRC user's backlog (announcement, part).
async fn irc_announced_then_parted(lobby: &Lobby, text: &str) -> anyhow::Result<(usize, usize)> {
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    let channel = lobby.channel.clone();
    junction_testkit::eventually(WAIT, &format!("{text:?} and the bot's PART on IRC"), || {
        let backlog = lobby.irc.backlog();
        let by_bot =
            |m: &irc_proto::Message| source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(&bot));
        let said = backlog.iter().position(|m| {
            by_bot(m)
                && matches!(&m.command,
                    Command::PRIVMSG(c, t) | Command::NOTICE(c, t)
                        if c.eq_ignore_ascii_case(&channel) && t.contains(text))
        });
        let parted = backlog.iter().position(|m| {
            by_bot(m)
                && matches!(&m.command, Command::PART(c, _) if c.eq_ignore_ascii_case(&channel))
        });
        async move { said.zip(parted) }
    })
    .await
}

/// True when any Matrix event in the lobby's room has a body containing `text`.
async fn matrix_has(lobby: &Lobby, text: &str) -> anyhow::Result<bool> {
    let events = lobby.matrix.events(&lobby.room).await?;
    Ok(events.iter().any(|e| {
        e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains(text))
    }))
}

/// True when any groupchat message in the MUC seen by the XMPP user contains `text`, from
/// someone else.
fn xmpp_has(lobby: &Lobby, text: &str) -> bool {
    lobby.xmpp.backlog().iter().any(|el| {
        el.name() == "message"
            && el.attr("type") == Some("groupchat")
            && !el
                .attr("from")
                .is_some_and(|f| f.ends_with(&format!("/{}", lobby.xmpp_nick)))
            && junction_testkit::clients::xmpp::body(el).is_some_and(|b| b.contains(text))
    })
}

/// `close` from IRC: the announcement reaches the Matrix room, the MUC and the channel (where
/// the bot says it before it parts), and afterwards no line crosses in any direction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_announced_on_every_network_then_nothing_crosses() -> anyhow::Result<()> {
    let admins = Admins::new().await?;
    let lobby = admins.lobby().await?;
    // The relay works before.
    let before = unique("before the close");
    lobby.irc.privmsg(&lobby.channel, &before)?;
    lobby.matrix_sees(&before).await?;
    lobby.xmpp_sees(&before).await?;

    irc_command(&lobby, &admins.irc, "close lobby", "Closed").await?;
    let text = "closed this bridge (lobby)";
    matrix_announcement(&lobby, text).await?;
    lobby
        .xmpp_sees(text)
        .await
        .context("the announcement in the MUC")?;
    let (said, parted) = irc_announced_then_parted(&lobby, text).await?;
    assert!(
        said < parted,
        "the bot parted before it said the announcement"
    );

    let from_matrix = unique("after close from matrix");
    let from_xmpp = unique("after close from xmpp");
    let from_irc = unique("after close from irc");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    tokio::time::sleep(QUIET).await;
    assert!(
        !lobby.irc_has(&from_matrix) && !lobby.irc_has(&from_xmpp),
        "relayed to IRC after the close"
    );
    assert!(
        !xmpp_has(&lobby, &from_matrix) && !xmpp_has(&lobby, &from_irc),
        "relayed to XMPP after the close"
    );
    let me = lobby.matrix.user_id().to_owned();
    let events = lobby.matrix.events(&lobby.room).await?;
    assert!(
        !events
            .iter()
            .any(|e| e["sender"].as_str() != Some(me.as_str())
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(&from_xmpp) || b.contains(&from_irc))),
        "relayed to Matrix after the close"
    );
    Ok(())
}

/// `unlink` of the Matrix room, from IRC: the announcement reaches the Matrix room being
/// unlinked as well as the MUC and the channel; afterwards the Matrix room's lines cross
/// nowhere and nothing reaches it, while IRC and XMPP still talk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlink_is_announced_in_the_room_leaving_too() -> anyhow::Result<()> {
    let admins = Admins::new().await?;
    let lobby = admins.lobby().await?;
    let before = unique("before the unlink");
    lobby.xmpp.send_groupchat(&lobby.muc, &before)?;
    lobby.matrix_sees(&before).await?;

    irc_command(
        &lobby,
        &admins.irc,
        &format!("unlink lobby {}", lobby.room),
        "Unlinked",
    )
    .await?;
    let text = "from this bridge (lobby)";
    matrix_announcement(&lobby, text)
        .await
        .context("the announcement in the Matrix room being unlinked")?;
    lobby.xmpp_sees(text).await?;
    let channel = lobby.channel.clone();
    junction_testkit::eventually(WAIT, "the announcement on IRC", || {
        let said = lobby.irc.backlog().iter().any(|m| {
            matches!(&m.command,
                Command::PRIVMSG(c, t) | Command::NOTICE(c, t)
                    if c.eq_ignore_ascii_case(&channel) && t.contains(text))
        });
        async move { said.then_some(()) }
    })
    .await?;

    let from_matrix = unique("after unlink from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    // IRC and XMPP are still linked: a marker crosses, after the Matrix line had its chance.
    tokio::time::sleep(QUIET).await;
    let marker = unique("still linked");
    lobby.irc.privmsg(&lobby.channel, &marker)?;
    lobby.xmpp_sees(&marker).await?;
    assert!(
        !lobby.irc_has(&from_matrix),
        "the unlinked room's line reached IRC"
    );
    assert!(
        !xmpp_has(&lobby, &from_matrix),
        "the unlinked room's line reached XMPP"
    );
    assert!(
        !matrix_has(&lobby, &marker).await?,
        "a line reached the unlinked Matrix room"
    );
    Ok(())
}
