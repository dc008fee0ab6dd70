//! Admin commands through the whole gateway on the real servers: an admin on each network
//! types commands privately to the gateway (a direct chat with the Matrix bot, a chat with
//! the XMPP component, a private message to the IRC bot) and gets answers there; someone who
//! is not an admin is refused; links made and taken back take effect at once; a ban reaches
//! all three servers.

use crate::lobby::{short_nick, Lobby};
use anyhow::Context as _;
use irc_proto::Command;
use junction_testkit::clients::irc::{is_join_of, source_nick};
use junction_testkit::clients::xmpp::body;
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::servers;
use junction_testkit::unique;
use serde_json::Value;
use std::time::Duration;

/// How long any one thing may take in these tests.
const WAIT: Duration = Duration::from_secs(60);

/// One gateway admin on each network, each a fresh user (the IRC one is named by a
/// `nick!*@*` mask: the testkit IRC users have no services account).
pub(crate) struct Admins {
    pub(crate) matrix: MatrixUser,
    pub(crate) xmpp: XmppUser,
    pub(crate) irc: IrcUser,
}

impl Admins {
    pub(crate) async fn new() -> anyhow::Result<Admins> {
        let s = servers().await?;
        Ok(Admins {
            matrix: MatrixUser::register(
                s,
                &short_nick(&unique("madm")).to_lowercase(),
                "pw-admin",
            )
            .await?,
            xmpp: XmppUser::register(s, &short_nick(&unique("xadm")).to_lowercase(), "pw-admin")
                .await?,
            irc: IrcUser::connect(s.inspircd, &short_nick(&unique("adm"))).await?,
        })
    }

    /// A lobby whose gateway admins are these users.
    pub(crate) async fn lobby(&self) -> anyhow::Result<Lobby> {
        let admins = format!(
            "admins = [\"{}\", \"{}\", \"local/{}!*@*\"]\n",
            self.matrix.user_id(),
            self.xmpp.bare_jid(),
            self.irc.nick()
        );
        Lobby::start_with(move |config| {
            *config = config.replacen("[gateway]\n", &format!("[gateway]\n{admins}"), 1);
        })
        .await
    }
}

/// Sends `text` to the IRC bot as `user` and waits for the bot's NOTICE answer containing
/// `expect`; returns every answer line seen so far after the command.
pub(crate) async fn irc_command(
    lobby: &Lobby,
    user: &IrcUser,
    text: &str,
    expect: &str,
) -> anyhow::Result<String> {
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    let before = user.backlog().len();
    user.privmsg(&bot, text)?;
    junction_testkit::eventually(WAIT, &format!("the IRC bot's answer to {text:?}"), || {
        let lines: Vec<String> = user
            .backlog()
            .iter()
            .skip(before)
            .filter(|m| source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(&bot)))
            .filter_map(|m| match &m.command {
                Command::NOTICE(_, t) => Some(t.clone()),
                _ => None,
            })
            .collect();
        let all = lines.join("\n");
        async move { all.contains(expect).then_some(all) }
    })
    .await
}

/// A direct chat between `user` and the Matrix bot; returns the room id once the bot is in.
async fn matrix_dm(lobby: &Lobby, user: &MatrixUser) -> anyhow::Result<String> {
    let s = servers().await?;
    let bot = format!("@{}:{}", lobby.slot.bot, s.matrix.server_name);
    let room = user.create_room(None, false).await?;
    user.invite(&room, &bot).await?;
    junction_testkit::eventually(WAIT, "the Matrix bot in the direct chat", || {
        let (room, bot) = (room.clone(), bot.clone());
        async move {
            user.members(&room)
                .await
                .ok()
                .filter(|m| m.contains_key(&bot))
        }
    })
    .await?;
    Ok(room)
}

/// Sends `text` in the direct chat `room` and waits for the bot's answer containing `expect`.
async fn matrix_command(
    lobby: &Lobby,
    user: &MatrixUser,
    room: &str,
    text: &str,
    expect: &str,
) -> anyhow::Result<Value> {
    let s = servers().await?;
    let bot = format!("@{}:{}", lobby.slot.bot, s.matrix.server_name);
    user.send_text(room, text).await?;
    user.wait_for(room, WAIT, |e| {
        e["sender"].as_str() == Some(bot.as_str())
            && e["type"] == "m.room.message"
            && e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(expect))
    })
    .await
    .with_context(|| format!("the Matrix bot's answer to {text:?}"))
}

/// A chat message to the gateway's component.
fn xmpp_command_stanza(component: &str, id: &str, text: &str) -> String {
    let escaped = text
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    format!("<message type='chat' to='{component}' id='{id}'><body>{escaped}</body></message>")
}

/// Sends `text` as `user` in a chat with the gateway's component and waits for its answer
/// containing `expect`.
async fn xmpp_command(
    lobby: &Lobby,
    user: &XmppUser,
    text: &str,
    expect: &str,
) -> anyhow::Result<String> {
    let component = lobby.slot.component.clone();
    let before = user.backlog().len();
    let id = user.next_id();
    user.send_raw(&xmpp_command_stanza(&component, &id, text))?;
    let answers = || -> Vec<String> {
        user.backlog()
            .into_iter()
            .skip(before)
            .filter(|el| el.name() == "message" && el.attr("type") != Some("groupchat"))
            .map(|el| {
                format!(
                    "{} {:?}: {}",
                    el.attr("from").unwrap_or_default(),
                    el.attr("type"),
                    body(&el).unwrap_or_default()
                )
            })
            .collect()
    };
    junction_testkit::eventually(WAIT, &format!("the component's answer to {text:?}"), || {
        let found = answers()
            .into_iter()
            .find(|a| a.contains(component.as_str()) && a.contains(expect));
        async move { found }
    })
    .await
    .with_context(|| format!("answers seen: {:?}", answers()))
}

/// A notice from the gateway in the lobby's Matrix room containing `text`.
pub(crate) async fn matrix_announcement(lobby: &Lobby, text: &str) -> anyhow::Result<Value> {
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |e| {
            e["type"] == "m.room.message"
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(text))
        })
        .await
        .with_context(|| format!("the announcement {text:?} in the Matrix room"))
}

/// From IRC: `status` answers, a stranger is refused, `link` puts a new channel into the
/// lobby at once (the bot joins it, its lines reach Matrix, the lobby hears about it) and
/// `unlink` takes it out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_admin_links_and_unlinks_and_a_stranger_is_refused() -> anyhow::Result<()> {
    let admins = Admins::new().await?;
    let lobby = admins.lobby().await?;
    let admin = &admins.irc;

    let refused = irc_command(&lobby, &lobby.irc, "link lobby local/#nope", "Refused").await?;
    assert!(refused.contains("not an admin"), "{refused}");
    let status = irc_command(&lobby, admin, "STATUS", "Bridges: 1").await?;
    assert!(status.contains("irc:local"), "{status}");

    let chan = format!("#{}", unique("side"));
    admin.join(&chan).await?;
    let linked = irc_command(&lobby, admin, &format!("link lobby local/{chan}"), "Linked").await?;
    assert!(linked.contains(&chan), "{linked}");
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    admin
        .wait_for(WAIT, |m| is_join_of(m, &chan, &bot))
        .await
        .context("the bot joins the newly linked channel")?;
    matrix_announcement(&lobby, &format!("linked irc:local/{chan}")).await?;
    let hello = unique("hello from the new channel");
    admin.privmsg(&chan, &hello)?;
    lobby
        .matrix_sees(&hello)
        .await
        .context("new channel → matrix")?;

    irc_command(
        &lobby,
        admin,
        &format!("unlink lobby local/{chan}"),
        "Unlinked",
    )
    .await?;
    matrix_announcement(&lobby, &format!("unlinked irc:local/{chan}")).await?;
    // A line in the unlinked channel goes nowhere; a later line in the lobby still crosses.
    let gone = unique("not relayed any more");
    admin.privmsg(&chan, &gone)?;
    let marker = unique("still relayed");
    lobby.irc.privmsg(&lobby.channel, &marker)?;
    lobby.matrix_sees(&marker).await?;
    let events = lobby.matrix.events(&lobby.room).await?;
    assert!(
        !events.iter().any(|e| e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains(&gone))),
        "a line from the unlinked channel reached Matrix"
    );
    Ok(())
}

/// From IRC: a ban of an IRC user is carried out natively on IRC (the bot is a channel
/// operator), the user's puppets leave the Matrix room and the MUC, the ban is announced,
/// and the gateway relays nothing more from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ban_reaches_all_three_servers() -> anyhow::Result<()> {
    let admins = Admins::new().await?;
    let lobby = admins.lobby().await?;
    let admin = &admins.irc;
    let troll = lobby.irc.nick().to_owned();
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);

    // The troll speaks first, so they have a ghost on Matrix and an occupant in the MUC.
    let (ghost, occupant) = lobby.irc_user_speaks().await?;
    // The first in the channel is its operator, and makes the bot one.
    lobby.irc.mode(&lobby.channel, "+o", &[&bot])?;
    lobby
        .irc
        .wait_for(WAIT, |m| {
            matches!(&m.command, Command::ChannelMODE(c, _) if c.eq_ignore_ascii_case(&lobby.channel))
                && format!("{m}").contains(&bot)
        })
        .await
        .context("the bot becomes operator")?;

    let answer = irc_command(
        &lobby,
        admin,
        &format!("ban local/{troll} spamming"),
        "Banned",
    )
    .await?;
    assert!(answer.contains(&troll), "{answer}");

    // IRC: the bot bans (and may kick) the troll in the channel.
    lobby
        .irc
        .wait_for(WAIT, |m| {
            source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(&bot))
                && match &m.command {
                    Command::ChannelMODE(c, _) => {
                        c.eq_ignore_ascii_case(&lobby.channel) && format!("{m}").contains("+b")
                    }
                    Command::KICK(c, who, _) => {
                        c.eq_ignore_ascii_case(&lobby.channel) && who.eq_ignore_ascii_case(&troll)
                    }
                    _ => false,
                }
        })
        .await
        .context("the bot bans the troll on IRC")?;
    // Matrix: the troll's ghost leaves the room.
    lobby
        .matrix_membership(&ghost, |c| {
            matches!(c["membership"].as_str(), Some("leave" | "ban"))
        })
        .await
        .context("the troll's Matrix ghost leaves")?;
    // XMPP: the troll's occupant leaves the MUC.
    lobby
        .xmpp_left(&occupant)
        .await
        .context("the troll's MUC occupant leaves")?;
    matrix_announcement(&lobby, &format!("banned {troll}")).await?;

    // Nothing more from the troll crosses (if IRC still lets them speak at all).
    let after = unique("troll again");
    let _ = lobby.irc.privmsg(&lobby.channel, &after);
    // (On the test servers everyone shares the troll's host, so the XMPP user says it.)
    let marker = unique("after the ban");
    lobby.xmpp.send_groupchat(&lobby.muc, &marker)?;
    lobby.matrix_sees(&marker).await?;
    let events = lobby.matrix.events(&lobby.room).await?;
    assert!(
        !events.iter().any(|e| e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains(&after))),
        "a banned user's line reached Matrix"
    );
    Ok(())
}

/// From Matrix and XMPP: the admins get answers in a direct chat with the bot and a chat
/// with the component; a Matrix user who is not an admin is refused; a Matrix admin links
/// and unlinks a channel; an XMPP admin bans and unbans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_and_xmpp_admins_are_answered_and_strangers_refused() -> anyhow::Result<()> {
    let s = servers().await?;
    let admins = Admins::new().await?;
    let lobby = admins.lobby().await?;

    let dm = matrix_dm(&lobby, &admins.matrix).await?;
    matrix_command(&lobby, &admins.matrix, &dm, "status", "Bridges: 1").await?;
    let chan = format!("#{}", unique("mx"));
    admins.irc.join(&chan).await?;
    matrix_command(
        &lobby,
        &admins.matrix,
        &dm,
        &format!("link lobby local/{chan}"),
        "Linked",
    )
    .await?;
    matrix_announcement(&lobby, &format!("linked irc:local/{chan}")).await?;
    matrix_command(
        &lobby,
        &admins.matrix,
        &dm,
        &format!("unlink lobby local/{chan}"),
        "Unlinked",
    )
    .await?;
    // alice, in the lobby, is no admin: the bot declines her invite, so she has no command
    // line at all.
    crate::hostile_commands::invite_is_declined(&lobby, &lobby.matrix).await?;

    xmpp_command(&lobby, &admins.xmpp, "status", "Bridges: 1").await?;
    let fake = format!("@{}:{}", unique("troll"), s.matrix.server_name);
    xmpp_command(
        &lobby,
        &admins.xmpp,
        &format!("ban {fake} testing"),
        "Banned",
    )
    .await?;
    matrix_announcement(&lobby, &format!("banned {fake}")).await?;
    xmpp_command(&lobby, &admins.xmpp, &format!("unban {fake}"), "Unbanned").await?;
    // The lobby's XMPP user is no admin either.
    xmpp_command(&lobby, &lobby.xmpp, "ban local/someone", "Refused").await?;
    // The lobby is still open after the refused commands.
    let still = unique("still open");
    lobby.irc.privmsg(&lobby.channel, &still)?;
    lobby.matrix_sees(&still).await?;
    Ok(())
}
