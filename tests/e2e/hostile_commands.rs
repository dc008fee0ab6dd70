//! Hostile use of the gateway's command channels and media proxy, by ordinary users of the
//! real servers: a Matrix user who is no admin invites the bot, an IRC user floods it with
//! `help`, strangers' commands and the audit trail, an uploaded `text/html` fetched through
//! the media proxy. Each time the gateway stays up and the lobby keeps relaying.

use crate::lobby::{short_nick, Lobby};
use anyhow::Context as _;
use irc_proto::Command;
use junction_store::Store as _;
use junction_testkit::clients::irc::source_nick;
use junction_testkit::clients::{IrcUser, MatrixUser};
use junction_testkit::servers::servers;
use junction_testkit::unique;
use std::time::Duration;

/// How long any one thing may take to cross the gateway.
const WAIT: Duration = Duration::from_secs(60);

/// How long the tests look for something that must not happen.
const QUIET: Duration = Duration::from_secs(5);

/// `user` (no admin) invites the lobby's Matrix bot into a new room: the bot declines with a
/// reason, is not in the room, and answers nothing written there.
pub async fn invite_is_declined(lobby: &Lobby, user: &MatrixUser) -> anyhow::Result<()> {
    let bot = format!(
        "@{}:{}",
        lobby.slot.bot,
        servers().await?.matrix.server_name
    );
    let room = user.create_room(None, false).await?;
    user.invite(&room, &bot).await?;
    let left = user
        .wait_for(&room, WAIT, |e| {
            e["type"] == "m.room.member"
                && e["state_key"].as_str() == Some(bot.as_str())
                && e["content"]["membership"] == "leave"
        })
        .await
        .context("the bot declining the invite")?;
    assert_eq!(
        left["content"]["reason"].as_str(),
        Some(junction_matrix::server::DECLINE_REASON),
        "{left}"
    );
    assert!(!user.members(&room).await?.contains_key(&bot));
    user.send_text(&room, "help").await?;
    tokio::time::sleep(QUIET).await;
    let answered = user
        .events(&room)
        .await?
        .into_iter()
        .any(|e| e["sender"].as_str() == Some(bot.as_str()) && e["type"] == "m.room.message");
    assert!(!answered, "the bot answered in a room it declined");
    Ok(())
}

/// NOTICE lines the IRC bot sent `user` so far.
fn bot_notices(lobby: &Lobby, user: &IrcUser) -> Vec<String> {
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    user.backlog()
        .iter()
        .filter(|m| source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(&bot)))
        .filter_map(|m| match &m.command {
            Command::NOTICE(_, t) => Some(t.clone()),
            _ => None,
        })
        .collect()
}

/// Sends `text` to the IRC bot as `user` and waits for an answer line containing `expect`.
async fn irc_command(
    lobby: &Lobby,
    user: &IrcUser,
    text: &str,
    expect: &str,
) -> anyhow::Result<()> {
    let before = bot_notices(lobby, user).len();
    user.privmsg(&junction_testkit::gateway::bot_nick(&lobby.slot), text)?;
    junction_testkit::eventually(WAIT, &format!("the IRC bot's answer to {text:?}"), || {
        let found = bot_notices(lobby, user)
            .iter()
            .skip(before)
            .any(|l| l.contains(expect));
        async move { found.then_some(()) }
    })
    .await
}

/// The lobby line `text` from IRC reaches Matrix and one from Matrix reaches IRC.
async fn lobby_still_relays(lobby: &Lobby, what: &str) -> anyhow::Result<()> {
    let from_irc = unique(&format!("{what} from irc"));
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    lobby.matrix_sees(&from_irc).await.context("irc → matrix")?;
    let from_matrix = unique(&format!("{what} from matrix"));
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    lobby.irc_sees(&from_matrix).await.context("matrix → irc")?;
    Ok(())
}

/// A Matrix user who is no admin invites the bot into a room of theirs: the bot declines
/// with a reason and answers nothing there; the lobby keeps relaying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_from_strangers_are_declined() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    invite_is_declined(&lobby, &lobby.matrix).await?;
    lobby_still_relays(&lobby, "after the invite").await
}

/// An IRC user floods the bot with 200 `help` lines: the bot stays connected, the next
/// lobby lines cross IRC → Matrix and Matrix → IRC, the flooder got at most a bounded number
/// of answer lines (the per-sender command limit), and an admin is still answered. Only the
/// admin's command is in the audit trail; the stranger's refused command is not. The
/// gateway restarted afterwards relays again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_help_neither_stalls_the_bot_nor_reaches_the_audit_trail() -> anyhow::Result<()>
{
    let s = servers().await?;
    let admin = IrcUser::connect(s.inspircd, &short_nick(&unique("hadm"))).await?;
    let admins = format!("admins = [\"local/{}!*@*\"]\n", admin.nick());
    let mut lobby = Lobby::start_with(move |config| {
        *config = config.replacen("[gateway]\n", &format!("[gateway]\n{admins}"), 1);
    })
    .await?;
    let flooder = &lobby.irc;
    // A stranger's command is refused (and will not be audited).
    irc_command(&lobby, flooder, "close lobby", "Refused").await?;

    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    let before = bot_notices(&lobby, flooder).len();
    for _ in 0..200 {
        flooder.privmsg(&bot, "help")?;
    }
    lobby_still_relays(&lobby, "after the flood").await?;
    irc_command(&lobby, &admin, "status", "Bridges: 1").await?;
    // The bot never left: no QUIT of its own in the channel.
    let quit = lobby.irc.backlog().iter().any(|m| {
        matches!(m.command, Command::QUIT(_))
            && source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(&bot))
    });
    assert!(!quit, "the bot quit during the flood");
    // At most the command burst (plus what refilled meanwhile) was answered.
    let help_lines = junction::admin::HELP.lines().count();
    let answered = bot_notices(&lobby, flooder).len() - before;
    let bound = (junction::command_limit::COMMAND_BURST as usize + 5) * help_lines;
    assert!(
        answered <= bound,
        "{answered} answer lines to a flood of help (bound {bound})"
    );

    lobby.stop_gateway().await?;
    let store = junction_store::SledStore::open(lobby.store_dir())?;
    let log = store.audit_log()?;
    drop(store);
    let flooder_nick = lobby.irc.nick().to_lowercase();
    assert!(
        log.iter().any(|e| e.action == "status"
            && e.actor
                .to_lowercase()
                .contains(&admin.nick().to_lowercase())),
        "the admin's command is audited: {log:?}"
    );
    assert!(
        !log.iter()
            .any(|e| e.actor.to_lowercase().contains(&flooder_nick)),
        "a stranger's command is audited: {log:?}"
    );
    lobby.start_gateway().await?;
    lobby_still_relays(&lobby, "after the restart").await
}

/// The media proxy's link to the upload `mxc` (the path `/media/server/id`) as it reaches
/// IRC, fetched; `what` names the upload in errors.
async fn fetched_from_irc(
    lobby: &Lobby,
    mxc: &str,
    what: &str,
) -> anyhow::Result<reqwest::Response> {
    let path = format!("/media/{}", mxc.trim_start_matches("mxc://"));
    let (_, line) = lobby
        .irc_sees(&path)
        .await
        .with_context(|| format!("the {what}'s link on IRC"))?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("no link in {line:?}"))?;
    Ok(reqwest::get(url).await?)
}

/// A Matrix user uploads `text/html` with a script and sends it as a file: the link the
/// other networks get serves it as an attachment, with `nosniff` and `CSP: sandbox`, so it
/// never runs on the media origin. A PNG is still shown inline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_media_proxy_serves_html_as_a_sandboxed_attachment() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let html = b"<html><script>alert(document.domain)</script></html>".to_vec();
    let name = format!("{}.html", unique("page"));
    let mxc = lobby
        .matrix
        .upload(html.clone(), "text/html", &name)
        .await?;
    lobby.matrix.send_file(&lobby.room, &mxc, &name).await?;
    let r = fetched_from_irc(&lobby, &mxc, "file").await?;
    assert!(r.status().is_success(), "{}", r.status());
    let header = |n: &str| {
        r.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    assert_eq!(header("content-disposition"), "attachment");
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert_eq!(header("content-security-policy"), "sandbox");
    assert_eq!(r.bytes().await?.as_ref(), html.as_slice());

    let png = b"\x89PNG\r\n\x1a\nnot really a png".to_vec();
    let name = format!("{}.png", unique("pic"));
    let mxc = lobby.matrix.upload(png, "image/png", &name).await?;
    lobby.matrix.send_image(&lobby.room, &mxc, &name).await?;
    let r = fetched_from_irc(&lobby, &mxc, "image").await?;
    let disposition = r
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert_eq!(disposition, "inline");
    lobby_still_relays(&lobby, "after the uploads").await
}
