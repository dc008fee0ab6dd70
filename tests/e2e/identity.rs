//! Identity through the real servers: a remote person never passes for a native one, an IRC
//! nick never becomes someone else's identity, and a ban holds at the gateway without the
//! gateway holding any power on IRC.
//!
//! The test IRC servers run without services, so no IRC user there can hold a services
//! account (InspIRCd sets `account` only when a services server links and says so, and takes
//! no such tag from a client). What a user can try is shown here: a line carrying a made-up
//! `account` tag is still its nick's, never the account's ghost. That an account and a nick of
//! the same name are two identities is shown on the lines as the gateway reads them
//! (`junction-irc` `inbound` tests); the ban side by `admin::ban_tests`.

use crate::admin::{irc_command, Admins};
use crate::lobby::{short_nick, Lobby};
use anyhow::Context as _;
use irc_proto::Command;
use junction_core::NetworkId;
use junction_testkit::clients::irc::source_nick;
use junction_testkit::clients::xmpp::{body, from_nick, is_leaving};
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::servers;
use junction_testkit::unique;
use std::time::Duration;

/// How long any one thing may take in these tests.
const WAIT: Duration = Duration::from_secs(60);

/// The Matrix ghost id the lobby's gateway gives the IRC identity `id` (a nick, or
/// `$a:<account>` for a services account).
fn irc_ghost(lobby: &Lobby, id: &str) -> String {
    junction_matrix::ids::ghost_user_id(
        &lobby.slot.user_prefix,
        &NetworkId::new("irc:local"),
        id,
        "matrix.test",
    )
}

/// The display name Matrix shows for `user` in the lobby's room, once it has one.
async fn matrix_name(lobby: &Lobby, user: &str) -> anyhow::Result<String> {
    junction_testkit::eventually(WAIT, &format!("{user}'s display name"), || async {
        lobby
            .matrix
            .members(&lobby.room)
            .await
            .ok()?
            .get(user)
            .cloned()
            .flatten()
    })
    .await
}

/// An IRC user who names an account in a tag of their own line is still only their nick: the
/// server drops the tag, and the line comes from the nick's ghost, not from the ghost the
/// account would have; that ghost shows the IRC origin mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_irc_nick_never_speaks_as_an_account() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let nick = lobby.irc.nick().to_owned();
    let plain = unique("plain line");
    lobby.irc.privmsg(&lobby.channel, &plain)?;
    let e = lobby.matrix_sees(&plain).await?;
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    assert_eq!(ghost, irc_ghost(&lobby, &nick));

    // The same user claims the account of their own nick, and of someone else.
    let forged = unique("forged account");
    lobby.irc.send_raw(&format!(
        "@account={nick};+account={nick} PRIVMSG {} :{forged}",
        lobby.channel
    ))?;
    let e = lobby.matrix_sees(&forged).await?;
    assert_eq!(e["sender"].as_str(), Some(ghost.as_str()));
    assert_ne!(ghost, irc_ghost(&lobby, &format!("$a:{nick}")));
    let x = lobby.xmpp_sees(&forged).await?;
    assert_eq!(from_nick(&x), Some(format!("{nick}[i]").as_str()));

    let shown = matrix_name(&lobby, &ghost).await?;
    assert_eq!(shown, format!("{nick}[i]"), "the IRC origin mark on Matrix");
    Ok(())
}

/// A lobby with its gateway admins, an IRC troll in the channel and the IRC address the
/// server shows for the troll (`user@host`, as the lobby's IRC user sees it). The bot is not
/// a channel operator: the lobby's IRC user, first in the channel, holds that.
async fn lobby_with_troll() -> anyhow::Result<(Admins, Lobby, IrcUser, String)> {
    let s = servers().await?;
    let admins = Admins::new().await?;
    let lobby = admins.lobby().await?;
    let troll = IrcUser::connect(s.inspircd, &short_nick(&unique("tr"))).await?;
    troll.join(&lobby.channel).await?;
    let hello = unique("troll says hi");
    troll.privmsg(&lobby.channel, &hello)?;
    lobby.matrix_sees(&hello).await?;
    let seen = lobby
        .irc
        .wait_for(
            WAIT,
            |m| matches!(&m.command, Command::PRIVMSG(_, t) if t.contains(&hello)),
        )
        .await?;
    let user_host = match &seen.prefix {
        Some(irc_proto::Prefix::Nickname(_, user, host)) => format!("{user}@{host}"),
        other => anyhow::bail!("no address on the troll's line: {other:?}"),
    };
    Ok((admins, lobby, troll, user_host))
}

/// Says `line` as `troll`, then (once the lobby's IRC user has seen it, so the gateway's bot
/// has it before) a marker as the lobby's IRC user; waits for the marker on Matrix and XMPP
/// and checks `line` reached neither.
async fn refused_at_the_gateway(lobby: &Lobby, troll: &IrcUser, line: &str) -> anyhow::Result<()> {
    troll.privmsg(&lobby.channel, line)?;
    lobby
        .irc
        .wait_for(
            WAIT,
            |m| matches!(&m.command, Command::PRIVMSG(_, t) if t.contains(line)),
        )
        .await
        .context("the channel sees the banned user's line (IRC itself does not stop it)")?;
    let marker = unique("after the troll");
    lobby.irc.privmsg(&lobby.channel, &marker)?;
    lobby.matrix_sees(&marker).await?;
    lobby.xmpp_sees(&marker).await?;
    let events = lobby.matrix.events(&lobby.room).await?;
    assert!(
        !events.iter().any(|e| e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains(line))),
        "a banned user's line reached Matrix"
    );
    assert!(
        !lobby
            .xmpp
            .backlog()
            .iter()
            .any(|el| body(el).is_some_and(|b| b.contains(line))),
        "a banned user's line reached XMPP"
    );
    Ok(())
}

/// The bot never set a ban on IRC: it holds no power there.
fn bot_set_no_ban(lobby: &Lobby) {
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    assert!(
        !lobby.irc.backlog().iter().any(|m| {
            source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(&bot))
                && matches!(&m.command, Command::ChannelMODE(..))
                && format!("{m}").contains("+b")
        }),
        "the bot has no operator rights, so no ban on IRC"
    );
}

/// A `*!user@host` mask ban (no nick in it) stops the IRC user's messages at the gateway,
/// with the bot not a channel operator; someone else on IRC still crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mask_ban_stops_an_irc_user_without_operator_rights() -> anyhow::Result<()> {
    let (admins, lobby, troll, user_host) = lobby_with_troll().await?;
    irc_command(
        &lobby,
        &admins.irc,
        &format!("ban local/*!{user_host} flooding"),
        "Banned",
    )
    .await?;
    refused_at_the_gateway(&lobby, &troll, &unique("troll after the mask ban")).await?;
    bot_set_no_ban(&lobby);
    Ok(())
}

/// A ban on a nick holds after the nick changes: the gateway learns the banned person's
/// `user@host` when it sees them, and the new nick is still covered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nick_ban_holds_after_a_nick_change() -> anyhow::Result<()> {
    let (admins, lobby, troll, _) = lobby_with_troll().await?;
    let old = troll.nick().to_owned();
    irc_command(
        &lobby,
        &admins.irc,
        &format!("ban local/{old} spamming"),
        "Banned",
    )
    .await?;
    refused_at_the_gateway(&lobby, &troll, &unique("troll as before")).await?;

    let new = short_nick(&unique("ev"));
    troll.send_raw(&format!("NICK {new}"))?;
    lobby
        .irc
        .wait_for(WAIT, |m| {
            matches!(&m.command, Command::NICK(n) if n.eq_ignore_ascii_case(&new))
                && source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(&old))
        })
        .await
        .context("the troll's new nick")?;
    refused_at_the_gateway(&lobby, &troll, &unique("troll under a new nick")).await?;
    bot_set_no_ban(&lobby);
    Ok(())
}

/// Registers a Matrix user whose display name is `name` (the localpart) and has them say
/// `line` in the lobby's room.
async fn matrix_user_says(lobby: &Lobby, name: &str, line: &str) -> anyhow::Result<MatrixUser> {
    let s = servers().await?;
    let user = MatrixUser::register(s, name, "pw-identity").await?;
    user.join(&lobby.room).await?;
    user.send_text(&lobby.room, line).await?;
    Ok(user)
}

/// A native XMPP user takes `nick` in the lobby's MUC.
async fn native_occupant(lobby: &Lobby, nick: &str) -> anyhow::Result<XmppUser> {
    let s = servers().await?;
    let user = XmppUser::register(s, &short_nick(&unique("nx")), "pw-identity").await?;
    user.join_muc(&lobby.muc, nick).await?;
    Ok(user)
}

/// True when the MUC said that the occupant `nick` left or was renamed.
fn occupant_left(lobby: &Lobby, nick: &str) -> bool {
    let from = format!("{}/{nick}", lobby.muc);
    lobby.xmpp.backlog().iter().any(|el| is_leaving(el, &from))
}

/// By default a Matrix user's MUC occupant carries the origin mark, so it never takes the
/// bare name a native occupant holds; and when a native occupant already holds the marked
/// name too, the puppet takes the next free one. The Matrix ghost of an XMPP user carries
/// the XMPP mark.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppets_carry_the_origin_mark_and_never_take_a_native_nick() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let name = short_nick(&unique("mk")).to_lowercase();
    let _bare = native_occupant(&lobby, &name).await?;
    let _marked = native_occupant(&lobby, &format!("{name}[m]")).await?;
    let hello = unique("marked hello");
    let _erin = matrix_user_says(&lobby, &name, &hello).await?;
    let x = lobby.xmpp_sees(&hello).await?;
    assert_eq!(from_nick(&x), Some(format!("{name}[m]2").as_str()));
    assert!(
        !occupant_left(&lobby, &name),
        "the bare nick's holder stays"
    );
    assert!(
        !occupant_left(&lobby, &format!("{name}[m]")),
        "the marked nick's holder stays"
    );

    // XMPP → Matrix: the ghost shows the XMPP mark.
    let hi = unique("xmpp hi");
    lobby.xmpp.send_groupchat(&lobby.muc, &hi)?;
    let e = lobby.matrix_sees(&hi).await?;
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    let shown = matrix_name(&lobby, &ghost).await?;
    assert_eq!(shown, format!("{}[x]", lobby.xmpp_nick));
    Ok(())
}

/// With `origin_marks = false` names cross bare, and still a native occupant's nick is never
/// taken: the puppet gets the mark only because the bare nick is held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_marks_off_a_native_nick_is_still_never_taken() -> anyhow::Result<()> {
    let lobby = Lobby::start_with(|c| {
        *c = c
            .replacen("\n[xmpp]\n", "\n[xmpp]\norigin_marks = false\n", 1)
            .replacen("\n[matrix]\n", "\n[matrix]\norigin_marks = false\n", 1);
    })
    .await?;
    // A free name: taken as it is.
    let free = short_nick(&unique("fr")).to_lowercase();
    let hello = unique("bare hello");
    let _frank = matrix_user_says(&lobby, &free, &hello).await?;
    let x = lobby.xmpp_sees(&hello).await?;
    assert_eq!(from_nick(&x), Some(free.as_str()));
    // A name a native occupant holds: the puppet steps aside.
    let held = short_nick(&unique("hd")).to_lowercase();
    let _native = native_occupant(&lobby, &held).await?;
    let again = unique("held hello");
    let _gina = matrix_user_says(&lobby, &held, &again).await?;
    let x = lobby.xmpp_sees(&again).await?;
    assert_eq!(from_nick(&x), Some(format!("{held}[m]").as_str()));
    assert!(!occupant_left(&lobby, &held), "the native holder stays");

    // The Matrix ghost of the IRC user shows the bare nick.
    let hi = unique("irc hi");
    lobby.irc.privmsg(&lobby.channel, &hi)?;
    let e = lobby.matrix_sees(&hi).await?;
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    assert_eq!(matrix_name(&lobby, &ghost).await?, lobby.irc.nick());
    Ok(())
}
