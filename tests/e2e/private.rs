//! Private conversations across networks, end to end through the whole gateway: an IRC user
//! writes to a Matrix user's puppet nick and gets a direct chat from their ghost; a Matrix
//! user opens a direct chat with a ghost the way Element does (`is_direct`); the same room is
//! used again, a new one is made once the user left, and private text never shows in the
//! lobby.

use crate::lobby::Lobby;
use anyhow::Context as _;
use irc_proto::Command;
use junction_testkit::clients::irc::source_nick;
use junction_testkit::clients::MatrixUser;
use junction_testkit::unique;
use serde_json::{json, Value};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// The invites `user` has pending, from what its sync showed since it logged in: each room
/// whose last membership event of the user is an invite, with who invited and whether the
/// invite is to a direct chat. (Asking Synapse for an initial sync instead would read every
/// room the seeded user is in, each call: seconds of the homeserver's one thread late in a
/// run.)
async fn invites(user: &MatrixUser) -> anyhow::Result<Vec<(String, String, bool)>> {
    let mut out = Vec::new();
    for room in user.room_ids() {
        let events = user.events(&room).await?;
        let last = events.iter().rev().find(|e| {
            e["type"] == "m.room.member" && e["state_key"].as_str() == Some(user.user_id())
        });
        if let Some(e) = last.filter(|e| e["content"]["membership"] == "invite") {
            out.push((
                room.clone(),
                e["sender"].as_str().unwrap_or_default().to_owned(),
                e["content"]["is_direct"] == true,
            ));
        }
    }
    Ok(out)
}

/// Waits for an invite from `by` to a room not in `known`; returns its room id.
async fn invited_by(lobby: &Lobby, by: &str, known: &[String]) -> anyhow::Result<String> {
    junction_testkit::eventually(WAIT, &format!("a direct chat from {by}"), || async {
        let found = invites(&lobby.matrix).await.ok()?;
        found
            .into_iter()
            .find(|(room, from, direct)| from == by && *direct && !known.contains(room))
            .map(|(room, _, _)| room)
    })
    .await
}

/// Waits for a PRIVMSG to the IRC user (not in a channel) containing `text`, from a nick
/// `nick_ok` accepts; returns that nick.
pub(crate) async fn irc_query_where(
    lobby: &Lobby,
    text: &str,
    nick_ok: impl Fn(&str) -> bool,
) -> anyhow::Result<String> {
    let me = lobby.irc.nick().to_owned();
    let m = lobby
        .irc
        .wait_for(WAIT, |m| {
            matches!(&m.command, Command::PRIVMSG(t, body) if t.eq_ignore_ascii_case(&me) && body.contains(text))
                && source_nick(m).is_some_and(&nick_ok)
        })
        .await?;
    Ok(source_nick(&m).unwrap_or_default().to_owned())
}

/// Waits for a PRIVMSG to the IRC user (not in a channel) from `from` containing `text`.
async fn irc_query(lobby: &Lobby, from: &str, text: &str) -> anyhow::Result<()> {
    irc_query_where(lobby, text, |n| n.eq_ignore_ascii_case(from)).await?;
    Ok(())
}

/// Like [`irc_query`], from the puppet `puppet` under whatever nick it has now: after a
/// restart, someone may have taken the puppet's nick in the gap (the tests share one Matrix
/// user, so other tests' puppets of her do), and it comes back with another suffix. Only
/// this lobby's gateway writes to this IRC user, so the nick's stem is enough. Returns the
/// nick it came from.
async fn irc_query_from_puppet(lobby: &Lobby, puppet: &str, text: &str) -> anyhow::Result<String> {
    let stem = puppet.trim_end_matches('_').to_ascii_lowercase();
    irc_query_where(lobby, text, |n| n.to_ascii_lowercase().starts_with(&stem)).await
}

/// The IRC user's lines containing `text`, for failure messages.
fn lines_with(lobby: &Lobby, text: &str) -> Vec<String> {
    lobby
        .irc
        .backlog()
        .iter()
        .map(|m| m.to_string())
        .filter(|l| l.contains(text))
        .collect()
}

/// Waits for a message in `room` from `sender` containing `text`.
async fn matrix_from(lobby: &Lobby, room: &str, sender: &str, text: &str) -> anyhow::Result<Value> {
    lobby
        .matrix
        .wait_for(room, WAIT, |e| {
            e["type"] == "m.room.message"
                && e["sender"].as_str() == Some(sender)
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(text))
        })
        .await
}

/// Both people say something in the lobby, so each has a puppet on the other's network:
/// returns (the IRC user's ghost on Matrix, the Matrix user's puppet nick on IRC).
async fn meet(lobby: &Lobby) -> anyhow::Result<(String, String)> {
    let from_irc = unique("hello from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    let ghost = lobby.matrix_sees(&from_irc).await?["sender"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let from_matrix = unique("hello from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    let (puppet, _) = lobby.irc_sees(&from_matrix).await?;
    Ok((ghost, puppet))
}

/// IRC writes `text` to `puppet` for the first time: the Matrix user is invited by `ghost` to
/// a new direct chat, joins it and sees the line there. Returns the chat and that event.
async fn irc_opens_a_chat(
    lobby: &Lobby,
    ghost: &str,
    puppet: &str,
    text: &str,
) -> anyhow::Result<(String, Value)> {
    lobby.irc.privmsg(puppet, text)?;
    let dm = invited_by(lobby, ghost, &[]).await?;
    lobby.matrix.join(&dm).await?;
    let seen = matrix_from(lobby, &dm, ghost, text).await?;
    Ok((dm, seen))
}

/// A new direct chat of the lobby's Matrix user with `ghost` (as Element makes one), once
/// the ghost is in it; its room id.
async fn direct_chat(lobby: &Lobby, ghost: &str) -> anyhow::Result<String> {
    let url = format!("{}/_matrix/client/v3/createRoom", lobby.servers.matrix.url);
    let created: Value = reqwest::Client::new()
        .post(url)
        .bearer_auth(lobby.matrix.access_token())
        .json(&json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [ghost]}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let dm = created["room_id"].as_str().unwrap_or_default().to_owned();
    lobby
        .matrix
        .wait_member(&dm, ghost, WAIT)
        .await
        .context("the ghost in the direct chat")?;
    Ok(dm)
}

/// Waits for a chat to the lobby's XMPP user whose sender `from` accepts and whose body
/// contains `text`.
pub(crate) async fn xmpp_chat(
    lobby: &Lobby,
    from: impl Fn(&str) -> bool,
    text: &str,
) -> anyhow::Result<minidom::Element> {
    lobby
        .xmpp
        .wait_for(WAIT, |el| {
            el.name() == "message"
                && el.attr("type") == Some("chat")
                && el.attr("from").is_some_and(&from)
                && junction_testkit::clients::xmpp::body(el).is_some_and(|b| b.contains(text))
        })
        .await
}

/// The XMPP user answers `text` in a chat to whoever sent her the chat `got`.
pub(crate) fn xmpp_answers(
    lobby: &Lobby,
    got: &minidom::Element,
    text: &str,
) -> anyhow::Result<()> {
    let from = got.attr("from").unwrap_or_default();
    lobby.xmpp.send_raw(&format!(
        "<message type='chat' to='{from}' id='{}'><body>{text}</body></message>",
        lobby.xmpp.next_id()
    ))
}

/// The XMPP user chats `question` to the IRC user's puppet JID and the IRC user answers
/// `answer` to the nick it came from, which reaches her as a chat from that JID.
async fn xmpp_chats_with_irc(lobby: &Lobby, question: &str, answer: &str) -> anyhow::Result<()> {
    let puppet = junction_xmpp::ids::puppet_jid(
        &junction_core::UserRef::new("irc:local", lobby.irc.nick()),
        &lobby.slot.component,
    );
    lobby.xmpp.send_raw(&format!(
        "<message type='chat' to='{puppet}' id='{}'><body>{question}</body></message>",
        lobby.xmpp.next_id()
    ))?;
    let me = lobby.irc.nick().to_owned();
    let got = lobby
        .irc
        .wait_for(WAIT, |m| {
            matches!(&m.command, Command::PRIVMSG(t, b) if t.eq_ignore_ascii_case(&me) && b.contains(question))
        })
        .await?;
    let her = source_nick(&got).unwrap_or_default().to_owned();
    lobby.irc.privmsg(&her, answer)?;
    xmpp_chat(lobby, |f| f.to_lowercase().starts_with(&puppet), answer).await?;
    Ok(())
}

/// Fails if any of `texts` was said in the MUC.
fn never_in_the_muc(lobby: &Lobby, texts: &[&str]) -> anyhow::Result<()> {
    let in_muc = lobby.xmpp.backlog().iter().any(|el| {
        el.attr("type") == Some("groupchat")
            && junction_testkit::clients::xmpp::body(el)
                .is_some_and(|b| texts.iter().any(|t| b.contains(t)))
    });
    anyhow::ensure!(!in_muc, "private text leaked into the MUC");
    Ok(())
}

/// Nothing private shows in the lobby on Matrix or IRC.
async fn lobby_never_saw(lobby: &Lobby, texts: &[&str]) -> anyhow::Result<()> {
    let room = lobby.matrix.events(&lobby.room).await?;
    let channel = lobby.irc.privmsgs_in(&lobby.channel);
    for t in texts {
        anyhow::ensure!(
            !room
                .iter()
                .any(|e| e["content"]["body"].as_str().is_some_and(|b| b.contains(t))),
            "{t:?} leaked into the Matrix room"
        );
        anyhow::ensure!(
            !channel.iter().any(|(_, b)| b.contains(t)),
            "{t:?} leaked into the IRC channel"
        );
    }
    Ok(())
}

/// `/msg alice[m] …` on IRC opens a direct chat from the IRC user's ghost (`is_direct`),
/// answers go back as a PRIVMSG from her puppet nick, later messages reuse the room, and
/// once she left it the next message opens a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_irc_to_matrix_and_back() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let (ghost, puppet) = meet(&lobby).await?;

    let first = unique("psst from irc");
    let (dm, _) = irc_opens_a_chat(&lobby, &ghost, &puppet, &first).await?;

    let answer = unique("psst from matrix");
    lobby.matrix.send_text(&dm, &answer).await?;
    irc_query(&lobby, &puppet, &answer).await?;

    // The same room again, no second invite.
    let again = unique("again from irc");
    lobby.irc.privmsg(&puppet, &again)?;
    matrix_from(&lobby, &dm, &ghost, &again).await?;
    anyhow::ensure!(
        !invites(&lobby.matrix)
            .await?
            .iter()
            .any(|(_, by, _)| by == &ghost),
        "a second direct chat was opened"
    );

    // She leaves: the next message opens a new direct chat.
    lobby.matrix.leave(&dm).await?;
    let after = unique("after leaving");
    tokio::time::sleep(Duration::from_secs(1)).await;
    lobby.irc.privmsg(&puppet, &after)?;
    let dm2 = invited_by(&lobby, &ghost, std::slice::from_ref(&dm)).await?;
    lobby.matrix.join(&dm2).await?;
    matrix_from(&lobby, &dm2, &ghost, &after).await?;

    lobby_never_saw(&lobby, &[&first, &answer, &again, &after]).await
}

/// Element's flow: a new room with an `is_direct` invite to a ghost; the ghost joins, what
/// she writes reaches the IRC user privately, and the answer comes back into that room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_matrix_direct_chat_with_a_ghost() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let (ghost, puppet) = meet(&lobby).await?;

    let dm = direct_chat(&lobby, &ghost).await?;

    let hello = unique("private hello");
    lobby.matrix.send_text(&dm, &hello).await?;
    irc_query(&lobby, &puppet, &hello).await?;

    let answer = unique("private answer");
    lobby.irc.privmsg(&puppet, &answer)?;
    matrix_from(&lobby, &dm, &ghost, &answer).await?;

    lobby_never_saw(&lobby, &[&hello, &answer]).await
}

/// A private message written while the gateway is down arrives once after it starts again,
/// and the direct chat opened before the restart is still the conversation's room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_message_across_a_restart_arrives_once() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let (ghost, puppet) = meet(&lobby).await?;
    let first = unique("before the restart");
    let (dm, _) = irc_opens_a_chat(&lobby, &ghost, &puppet, &first).await?;

    lobby.stop_gateway().await?;
    let while_down = unique("while the gateway is down");
    lobby.matrix.send_text(&dm, &while_down).await?;
    lobby.start_gateway().await?;
    let puppet = irc_query_from_puppet(&lobby, &puppet, &while_down).await?;

    let after = unique("after the restart");
    lobby.irc.privmsg(&puppet, &after)?;
    matrix_from(&lobby, &dm, &ghost, &after).await?;
    // Long enough for a doubled delivery to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let me = lobby.irc.nick().to_owned();
    let times = lobby
        .irc
        .backlog()
        .iter()
        .filter(|m| matches!(&m.command, Command::PRIVMSG(t, b) if t.eq_ignore_ascii_case(&me) && b.contains(&while_down)))
        .count();
    anyhow::ensure!(times == 1, "the message came {times} times");
    lobby_never_saw(&lobby, &[&first, &while_down, &after]).await
}

/// Waits for a line to `user` from `from` (PRIVMSG or NOTICE, not in a channel) containing
/// `text`.
async fn irc_told(
    user: &junction_testkit::clients::IrcUser,
    from: &str,
    text: &str,
) -> anyhow::Result<()> {
    let me = user.nick().to_owned();
    user.wait_for(WAIT, |m| {
        matches!(&m.command, Command::PRIVMSG(t, b) | Command::NOTICE(t, b) if t.eq_ignore_ascii_case(&me) && b.contains(text))
            && source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(from))
    })
    .await?;
    Ok(())
}

/// Waits for `ghost`'s notice in the direct chat `dm` that its person takes no private
/// messages (the answer to a message refused on their behalf).
async fn ghost_refuses(lobby: &Lobby, dm: &str, ghost: &str) -> anyhow::Result<()> {
    lobby
        .matrix
        .wait_for(dm, WAIT, |e| {
            e["sender"].as_str() == Some(ghost)
                && e["content"]["msgtype"] == "m.notice"
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("does not take private messages"))
        })
        .await?;
    Ok(())
}

/// By default only people who share a linked room reach each other: a stranger writing to a
/// puppet is told so and nothing reaches Matrix. A person who says `dm off` to the gateway
/// is not written to (the writer gets a notice in the direct chat), and `dm on` undoes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_reachability_and_opt_out() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let (ghost, puppet) = meet(&lobby).await?;
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);

    // A stranger, in no linked channel.
    let stranger = junction_testkit::clients::IrcUser::connect(
        lobby.irc_addr,
        &crate::lobby::short_nick(&unique("st")),
    )
    .await?;
    let from_stranger = unique("stranger writes");
    stranger.privmsg(&puppet, &from_stranger)?;
    irc_told(&stranger, &bot, "share a linked room").await?;

    // A direct chat between the two members.
    let first = unique("members talk");
    let (dm, _) = irc_opens_a_chat(&lobby, &ghost, &puppet, &first).await?;

    // The IRC user opts out: her message is refused with a notice from the ghost.
    lobby.irc.privmsg(&bot, "dm off")?;
    irc_told(&lobby.irc, &bot, "are off for you").await?;
    let refused = unique("refused text");
    lobby.matrix.send_text(&dm, &refused).await?;
    ghost_refuses(&lobby, &dm, &ghost).await?;

    // And back on.
    lobby.irc.privmsg(&bot, "dm on")?;
    irc_told(&lobby.irc, &bot, "You take private messages").await?;
    let welcome = unique("welcome back");
    lobby.matrix.send_text(&dm, &welcome).await?;
    irc_query(&lobby, &puppet, &welcome).await?;

    let me = lobby.irc.nick().to_owned();
    anyhow::ensure!(
        !lobby.irc.backlog().iter().any(|m| matches!(&m.command, Command::PRIVMSG(t, b) if t.eq_ignore_ascii_case(&me) && b.contains(&refused))),
        "a refused message was delivered"
    );
    anyhow::ensure!(
        !invites(&lobby.matrix)
            .await?
            .iter()
            .any(|(_, by, _)| by.contains(stranger.nick())),
        "the stranger opened a direct chat"
    );
    lobby_never_saw(&lobby, &[&from_stranger, &first, &refused, &welcome]).await
}

/// What Matrix does to messages of a direct chat reaches IRC as in a channel, in the query:
/// a reply quotes what it answers, an edit is an `(edit)` line, a reaction an action line
/// naming what it reacts to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_replies_edits_and_reactions_from_matrix() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let (ghost, puppet) = meet(&lobby).await?;
    let question = unique("a private question");
    let (dm, asked) = irc_opens_a_chat(&lobby, &ghost, &puppet, &question).await?;
    let asked = asked["event_id"].as_str().unwrap_or_default().to_owned();

    let reply = unique("the private answer");
    lobby.matrix.send_reply(&dm, &asked, &reply).await?;
    irc_query(&lobby, &puppet, &reply).await?;
    let me = lobby.irc.nick().to_owned();
    let quoted = lobby.irc.backlog().iter().any(|m| {
        matches!(&m.command, Command::PRIVMSG(t, b) if t.eq_ignore_ascii_case(&me) && b.contains(&reply) && b.contains("a private question"))
    });
    anyhow::ensure!(quoted, "the reply does not quote the question");

    let typo = unique("a typo");
    let said = lobby.matrix.send_text(&dm, &typo).await?;
    irc_query(&lobby, &puppet, &typo).await?;
    let fixed = unique("fixed text");
    lobby.matrix.send_edit(&dm, &said, &fixed).await?;
    irc_query(&lobby, &puppet, &format!("(edit) {fixed}")).await?;

    lobby.matrix.react(&dm, &asked, "👍").await?;
    irc_query(&lobby, &puppet, "reacted 👍 to \"a private question").await?;
    lobby_never_saw(&lobby, &[&question, &reply, &typo, &fixed]).await
}

/// The IRC and XMPP users each say something in the lobby, so each has a puppet on the
/// other's network: returns the XMPP user's line and her puppet nick on IRC.
async fn irc_and_xmpp_meet(lobby: &Lobby) -> anyhow::Result<(String, String)> {
    let from_irc = unique("hello from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    lobby.xmpp_sees(&from_irc).await?;
    let from_xmpp = unique("hello from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    let (nick, _) = lobby.irc_sees(&from_xmpp).await?;
    Ok((from_xmpp, nick))
}

/// An XMPP user's chat to an IRC person's puppet JID reaches them as a PRIVMSG; the answer to
/// the nick it came from goes back to her as a chat from that puppet JID, and neither shows
/// in the MUC or the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_xmpp_chat_with_irc_and_back() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    irc_and_xmpp_meet(&lobby).await?;

    let question = unique("a chat to a puppet");
    let answer = unique("an answer by query");
    xmpp_chats_with_irc(&lobby, &question, &answer).await?;

    never_in_the_muc(&lobby, &[&question, &answer])?;
    lobby_never_saw(&lobby, &[&question, &answer]).await
}

/// A MUC private message to an IRC person's puppet occupant reaches them from the XMPP
/// person's puppet nick; the answer comes back as a private message in the MUC, from that
/// occupant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_muc_message_with_irc_and_back() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let from_irc = unique("hello from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    let seen = lobby.xmpp_sees(&from_irc).await?;
    let occupant = junction_testkit::clients::xmpp::from_nick(&seen)
        .unwrap_or_default()
        .to_owned();
    let from_xmpp = unique("hello from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    let (her, _) = lobby.irc_sees(&from_xmpp).await?;

    let question = unique("a muc private message");
    lobby.xmpp.send_raw(&format!(
        "<message type='chat' to='{}/{occupant}' id='{}'><body>{question}</body>\
         <x xmlns='http://jabber.org/protocol/muc#user'/></message>",
        lobby.muc,
        lobby.xmpp.next_id()
    ))?;
    // From the puppet she has in the channel: the same person.
    irc_query(&lobby, &her, &question).await?;

    let answer = unique("an answer in private");
    lobby.irc.privmsg(&her, &answer)?;
    let from = format!("{}/{occupant}", lobby.muc);
    xmpp_chat(&lobby, |f| f == from, &answer).await?;
    never_in_the_muc(&lobby, &[&question, &answer])?;
    lobby_never_saw(&lobby, &[&question, &answer]).await
}

/// Matrix sees the XMPP user's lobby line `from_xmpp`, and the Matrix user says one XMPP
/// sees, so each has a puppet on the other's network: returns the XMPP user's ghost.
async fn matrix_and_xmpp_meet(lobby: &Lobby, from_xmpp: &str) -> anyhow::Result<String> {
    let ghost = lobby.matrix_sees(from_xmpp).await?["sender"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let from_matrix = unique("hello from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    lobby.xmpp_sees(&from_matrix).await?;
    Ok(ghost)
}

/// The lobby's XMPP and Matrix users meet in the lobby; the Matrix user opens a direct chat
/// with the XMPP user's ghost and writes `hello`, which reaches XMPP as a chat from her
/// puppet JID. Returns the ghost, the direct chat, the hello's Matrix event id and the chat
/// XMPP got.
async fn matrix_writes_to_xmpp(
    lobby: &Lobby,
    hello: &str,
) -> anyhow::Result<(String, String, String, minidom::Element)> {
    let from_xmpp = unique("hello from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    let ghost = matrix_and_xmpp_meet(lobby, &from_xmpp).await?;
    let dm = direct_chat(lobby, &ghost).await?;
    let hello_ev = lobby.matrix.send_text(&dm, hello).await?;
    let puppet = junction_xmpp::ids::puppet_jid(
        &junction_core::UserRef::new("matrix", lobby.matrix.user_id()),
        &lobby.slot.component,
    );
    let got = xmpp_chat(lobby, |f| f.to_lowercase().starts_with(&puppet), hello).await?;
    Ok((ghost, dm, hello_ev, got))
}

/// A Matrix user's direct chat with an XMPP person's ghost reaches them as a chat from her
/// puppet JID at their real JID, and their chat back lands in the same direct chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_matrix_direct_chat_with_xmpp_and_back() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let hello = unique("private to xmpp");
    let (ghost, dm, _, got) = matrix_writes_to_xmpp(&lobby, &hello).await?;

    let answer = unique("xmpp answers");
    xmpp_answers(&lobby, &got, &answer)?;
    matrix_from(&lobby, &dm, &ghost, &answer).await?;
    lobby_never_saw(&lobby, &[&hello, &answer]).await
}

/// A Matrix reply in a direct chat quotes the IRC message it answers while the
/// conversation's rows are kept. The gateway is then restarted with
/// `private_retention_days` at about two seconds (and rooms' retention at its 90 days): once
/// the pruner's pass at start has removed the conversation's rows the same reply crosses
/// as plain text, while a reply to a lobby line said as long ago still quotes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rows_are_forgotten_sooner_than_rooms() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let (ghost, puppet) = meet(&lobby).await?;
    let in_lobby = unique("a lobby question");
    lobby.irc.privmsg(&lobby.channel, &in_lobby)?;
    let lobby_q = lobby.matrix_sees(&in_lobby).await?["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let question = unique("a private question");
    let (dm, asked) = irc_opens_a_chat(&lobby, &ghost, &puppet, &question).await?;
    let asked = asked["event_id"].as_str().unwrap_or_default().to_owned();

    let quoting = |lobby: &Lobby, text: &str, quoted: &str| {
        lobby.irc.backlog().iter().any(|m| {
            matches!(&m.command, Command::PRIVMSG(_, b) if b.contains(text) && b.contains(quoted))
        })
    };
    let early = unique("early private answer");
    lobby.matrix.send_reply(&dm, &asked, &early).await?;
    irc_query(&lobby, &puppet, &early).await?;
    anyhow::ensure!(
        quoting(&lobby, &early, &question),
        "kept: the reply quotes: {:?}",
        lines_with(&lobby, &early)
    );

    lobby.stop_gateway().await?;
    lobby.tweak_config(|c| crate::lobby::in_gateway(c, "private_retention_days = 0.00002"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    lobby.start_gateway().await?;
    // The pass at start runs beside the start: replies until one crosses plain, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let late = loop {
        let late = unique("late private answer");
        lobby.matrix.send_reply(&dm, &asked, &late).await?;
        // After the restart the puppet may come back under another suffix (see there).
        irc_query_from_puppet(&lobby, &puppet, &late).await?;
        if !quoting(&lobby, &late, &question) {
            break late;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "forgotten: plain on IRC, still quoted a minute after a restart past the retention"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    let lobby_answer = unique("late lobby answer");
    lobby
        .matrix
        .send_reply(&lobby.room, &lobby_q, &lobby_answer)
        .await?;
    let (_, t) = lobby.irc_sees(&lobby_answer).await?;
    anyhow::ensure!(t.contains('←'), "the room's line is still quoted: {t:?}");
    lobby_never_saw(&lobby, &[&question, &early, &late]).await
}

/// A private exchange in every direction the gateway carries (IRC → Matrix and back, XMPP →
/// IRC and back, a stranger refused) leaves no private text in the gateway's log at its
/// default level (the `junction run` binary, info), in `/metrics`, or in any room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_text_never_reaches_logs_metrics_or_rooms() -> anyhow::Result<()> {
    let port = junction_testkit::free_port()?;
    let lobby = Lobby::start_logged(|c| {
        crate::lobby::in_gateway(c, &format!("metrics = \"127.0.0.1:{port}\""));
    })
    .await?;
    let (ghost, puppet) = meet(&lobby).await?;
    let from_xmpp = unique("hello from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    lobby.irc_sees(&from_xmpp).await?;

    let mut secrets = Vec::new();
    let psst = unique("secret irc to matrix");
    let (dm, _) = irc_opens_a_chat(&lobby, &ghost, &puppet, &psst).await?;
    let back = unique("secret matrix to irc");
    lobby.matrix.send_text(&dm, &back).await?;
    irc_query(&lobby, &puppet, &back).await?;

    let chat = unique("secret xmpp to irc");
    let answer = unique("secret irc to xmpp");
    xmpp_chats_with_irc(&lobby, &chat, &answer).await?;

    let stranger = junction_testkit::clients::IrcUser::connect(
        lobby.irc_addr,
        &crate::lobby::short_nick(&unique("st")),
    )
    .await?;
    let refused = unique("secret from a stranger");
    stranger.privmsg(&puppet, &refused)?;
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    irc_told(&stranger, &bot, "share a linked room").await?;
    secrets.extend([psst, back, chat, answer, refused]);

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await?
        .text()
        .await?;
    let log = lobby.gateway_log();
    anyhow::ensure!(
        log.contains("INFO"),
        "the gateway's log was not captured: {log:?}"
    );
    for s in &secrets {
        anyhow::ensure!(!log.contains(s.as_str()), "{s:?} is in the gateway's log");
        anyhow::ensure!(!metrics.contains(s.as_str()), "{s:?} is in /metrics");
    }
    let texts: Vec<&str> = secrets.iter().map(String::as_str).collect();
    never_in_the_muc(&lobby, &texts)?;
    lobby_never_saw(&lobby, &texts).await
}

/// Waits for the gateway's Matrix bot to say something containing `text` in `room`.
async fn matrix_bot_says(lobby: &Lobby, room: &str, text: &str) -> anyhow::Result<()> {
    let bot = matrix_bot(lobby);
    matrix_from(lobby, room, &bot, text).await?;
    Ok(())
}

/// The gateway's Matrix bot.
fn matrix_bot(lobby: &Lobby) -> String {
    format!("@{}:{}", lobby.slot.bot, lobby.servers.matrix.server_name)
}

/// A Matrix user who is no admin opens a direct chat with the gateway's bot (`is_direct`, as
/// Element's "Message" does) and says `dm off`: an IRC user's `/msg` to her puppet nick gets
/// a NOTICE from the IRC bot saying she takes no private messages, and nothing reaches her;
/// `dm on` undoes it, and the next `/msg` opens a direct chat as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_opt_out_from_matrix() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let (ghost, puppet) = meet(&lobby).await?;
    let irc_bot = junction_testkit::gateway::bot_nick(&lobby.slot);

    let commands = direct_chat(&lobby, &matrix_bot(&lobby)).await?;
    lobby.matrix.send_text(&commands, "dm off").await?;
    matrix_bot_says(&lobby, &commands, "are off for you").await?;

    let refused = unique("while she takes none");
    lobby.irc.privmsg(&puppet, &refused)?;
    irc_told(&lobby.irc, &irc_bot, "does not take private messages").await?;
    let me = lobby.irc.nick().to_owned();
    let noticed = lobby.irc.backlog().iter().any(|m| {
        matches!(&m.command, Command::NOTICE(t, b) if t.eq_ignore_ascii_case(&me) && b.contains("does not take private messages"))
    });
    anyhow::ensure!(noticed, "the refusal is no NOTICE");

    lobby.matrix.send_text(&commands, "dm on").await?;
    matrix_bot_says(&lobby, &commands, "You take private messages").await?;
    let welcome = unique("now she takes them");
    let (dm, _) = irc_opens_a_chat(&lobby, &ghost, &puppet, &welcome).await?;
    let seen = lobby.matrix.events(&dm).await?;
    anyhow::ensure!(
        !seen.iter().any(|e| e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains(&refused))),
        "a refused message reached her"
    );
    lobby_never_saw(&lobby, &[&refused, &welcome]).await
}

/// Someone on XMPP who shares no linked room with anyone writes to a Matrix person's puppet
/// JID: the gateway answers with a chat from its own JID saying why, and nothing reaches
/// Matrix (no direct chat is opened).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_xmpp_stranger_is_told_why() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let from_matrix = unique("hello from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    lobby.xmpp_sees(&from_matrix).await?;

    let stranger = junction_testkit::clients::XmppUser::register(
        &lobby.servers,
        &crate::lobby::short_nick(&unique("xs")),
        "pw-stranger",
    )
    .await?;
    let puppet = junction_xmpp::ids::puppet_jid(
        &junction_core::UserRef::new("matrix", lobby.matrix.user_id()),
        &lobby.slot.component,
    );
    let text = unique("a stranger writes");
    stranger.send_raw(&format!(
        "<message type='chat' to='{puppet}' id='{}'><body>{text}</body></message>",
        stranger.next_id()
    ))?;
    let gateway = format!("junction@{}", lobby.slot.component);
    stranger
        .wait_for(WAIT, |el| {
            el.name() == "message"
                && el.attr("type") == Some("chat")
                && el
                    .attr("from")
                    .is_some_and(|f| f.to_lowercase().starts_with(&gateway))
                && junction_testkit::clients::xmpp::body(el)
                    .is_some_and(|b| b.contains("share a linked room"))
        })
        .await?;
    let local = stranger
        .bare_jid()
        .split('@')
        .next()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(
        !invites(&lobby.matrix)
            .await?
            .iter()
            .any(|(_, by, _)| by.contains(&local)),
        "the stranger opened a direct chat"
    );
    never_in_the_muc(&lobby, &[&text])?;
    lobby_never_saw(&lobby, &[&text]).await
}

const NS_CORRECT: &str = "urn:xmpp:message-correct:0";
const NS_REACTIONS: &str = "urn:xmpp:reactions:0";
const NS_REPLY: &str = "urn:xmpp:reply:0";
const NS_RETRACT: &str = "urn:xmpp:message-retract:1";

/// Waits for a chat to the lobby's XMPP user carrying a child `(name, namespace)` whose `id`
/// is `id`, and whose text (the body, or the children's text) contains `text`.
async fn xmpp_refers(
    lobby: &Lobby,
    (name, ns): (&str, &str),
    id: &str,
    text: &str,
) -> anyhow::Result<minidom::Element> {
    lobby
        .xmpp
        .wait_for(WAIT, |el| {
            el.attr("type") == Some("chat")
                && el.children().any(|c| {
                    c.is(name, ns)
                        && c.attr("id") == Some(id)
                        && (junction_testkit::clients::xmpp::body(el)
                            .is_some_and(|b| b.contains(text))
                            || c.children().any(|k| k.text().contains(text)))
                })
        })
        .await
}

/// In a direct chat between Matrix and XMPP, what each side does to the messages crosses as
/// in rooms: an XMPP correction (XEP-0308) is a Matrix edit, a reaction (XEP-0444) a Matrix
/// reaction, a reply (XEP-0461) a Matrix reply, a retraction (XEP-0424) a redaction; and a
/// Matrix edit, reaction, reply and redaction reach XMPP as a correction, reactions, a reply
/// and a retraction of the chat message they refer to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_xmpp_edits_replies_reactions_and_retractions_with_matrix() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Matrix writes first; XMPP learns the chat's id and where it comes from.
    let hello = unique("private hello");
    let (ghost, dm, hello_ev, got) = matrix_writes_to_xmpp(&lobby, &hello).await?;
    let her = got.attr("from").unwrap_or_default().to_owned();
    let hello_id = got.attr("id").unwrap_or_default().to_owned();
    let say = |id: &str, inner: &str| {
        lobby.xmpp.send_raw(&format!(
            "<message type='chat' to='{her}' id='{id}'>{inner}</message>"
        ))
    };

    // XMPP → Matrix: a message, its correction, a reaction, a reply, a retraction.
    let answer_id = unique("xa");
    let answer = unique("xmpp answers");
    say(&answer_id, &format!("<body>{answer}</body>"))?;
    let answer_ev = matrix_from(&lobby, &dm, &ghost, &answer).await?["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let fixed = unique("xmpp fixed");
    say(
        &unique("xc"),
        &format!(
            "<body>{fixed}</body><replace id='{answer_id}' xmlns='urn:xmpp:message-correct:0'/>"
        ),
    )?;
    lobby
        .matrix
        .wait_for(&dm, WAIT, |e| {
            e["sender"].as_str() == Some(ghost.as_str())
                && e["content"]["m.relates_to"]["rel_type"] == "m.replace"
                && e["content"]["m.relates_to"]["event_id"].as_str() == Some(answer_ev.as_str())
                && e["content"]["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(&fixed))
        })
        .await
        .context("xmpp correction → matrix edit")?;
    say(
        &unique("xr"),
        &format!(
            "<reactions id='{hello_id}' xmlns='urn:xmpp:reactions:0'><reaction>🎉</reaction></reactions>"
        ),
    )?;
    lobby
        .matrix
        .wait_for(&dm, WAIT, |e| {
            e["type"] == "m.reaction"
                && e["sender"].as_str() == Some(ghost.as_str())
                && e["content"]["m.relates_to"]["event_id"].as_str() == Some(hello_ev.as_str())
                && e["content"]["m.relates_to"]["key"] == "🎉"
        })
        .await
        .context("xmpp reaction → matrix")?;
    let reply_id = unique("xp");
    let reply = unique("xmpp replies");
    say(
        &reply_id,
        &format!(
            "<body>{reply}</body><reply id='{hello_id}' to='{her}' xmlns='urn:xmpp:reply:0'/>"
        ),
    )?;
    let replied = matrix_from(&lobby, &dm, &ghost, &reply).await?;
    anyhow::ensure!(
        replied["content"]["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()
            == Some(hello_ev.as_str()),
        "xmpp reply → matrix: not a reply to the hello: {replied}"
    );
    let reply_ev = replied["event_id"].as_str().unwrap_or_default().to_owned();
    say(
        &unique("xt"),
        &format!("<retract id='{answer_id}' xmlns='urn:xmpp:message-retract:1'/>"),
    )?;
    lobby
        .matrix
        .wait_for(&dm, WAIT, |r| {
            r["type"] == "m.room.redaction"
                && (r["redacts"].as_str() == Some(answer_ev.as_str())
                    || r["content"]["redacts"].as_str() == Some(answer_ev.as_str()))
        })
        .await
        .context("xmpp retraction → matrix redaction")?;

    // Matrix → XMPP: an edit, a reaction, a reply and a redaction.
    let better = unique("matrix fixed");
    lobby.matrix.send_edit(&dm, &hello_ev, &better).await?;
    xmpp_refers(&lobby, ("replace", NS_CORRECT), &hello_id, &better)
        .await
        .context("matrix edit → xmpp correction")?;
    lobby.matrix.react(&dm, &reply_ev, "👍").await?;
    xmpp_refers(&lobby, ("reactions", NS_REACTIONS), &reply_id, "👍")
        .await
        .context("matrix reaction → xmpp")?;
    let back = unique("matrix replies");
    lobby.matrix.send_reply(&dm, &reply_ev, &back).await?;
    xmpp_refers(&lobby, ("reply", NS_REPLY), &reply_id, &back)
        .await
        .context("matrix reply → xmpp")?;
    lobby.matrix.redact(&dm, &hello_ev, "oops").await?;
    xmpp_refers(&lobby, ("retract", NS_RETRACT), &hello_id, "")
        .await
        .context("matrix redaction → xmpp retraction")?;

    never_in_the_muc(&lobby, &[&hello, &answer, &fixed, &reply, &better, &back])?;
    lobby_never_saw(&lobby, &[&hello, &answer, &fixed, &reply, &better, &back]).await
}

/// The directions where IRC and XMPP write first: `/msg bob[x]` on IRC reaches the XMPP
/// person as a chat from the IRC person's puppet JID (her answer comes back as a PRIVMSG from
/// her puppet nick), and an XMPP chat to a Matrix person's puppet JID opens a direct chat
/// from the XMPP person's ghost (`is_direct`), whose answer comes back as a chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_irc_and_xmpp_each_write_first() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let (from_xmpp, xmpp_nick) = irc_and_xmpp_meet(&lobby).await?;
    let xmpp_ghost = matrix_and_xmpp_meet(&lobby, &from_xmpp).await?;
    let jid = |network: &str, user: &str| {
        junction_xmpp::ids::puppet_jid(
            &junction_core::UserRef::new(network, user),
            &lobby.slot.component,
        )
    };

    // IRC → XMPP first.
    let irc_puppet = jid("irc:local", lobby.irc.nick());
    let psst = unique("irc writes first");
    lobby.irc.privmsg(&xmpp_nick, &psst)?;
    let got = xmpp_chat(&lobby, |f| f.to_lowercase().starts_with(&irc_puppet), &psst).await?;
    let back = unique("xmpp answers irc");
    lobby.xmpp.send_raw(&format!(
        "<message type='chat' to='{}' id='{}'><body>{back}</body></message>",
        got.attr("from").unwrap_or_default(),
        lobby.xmpp.next_id()
    ))?;
    irc_query(&lobby, &xmpp_nick, &back).await?;

    // XMPP → Matrix first.
    let matrix_puppet = jid("matrix", lobby.matrix.user_id());
    let hello = unique("xmpp writes first");
    lobby.xmpp.send_raw(&format!(
        "<message type='chat' to='{matrix_puppet}' id='{}'><body>{hello}</body></message>",
        lobby.xmpp.next_id()
    ))?;
    let dm = invited_by(&lobby, &xmpp_ghost, &[]).await?;
    lobby.matrix.join(&dm).await?;
    matrix_from(&lobby, &dm, &xmpp_ghost, &hello).await?;
    let answer = unique("matrix answers xmpp");
    lobby.matrix.send_text(&dm, &answer).await?;
    xmpp_chat(
        &lobby,
        |f| f.to_lowercase().starts_with(&matrix_puppet),
        &answer,
    )
    .await?;

    let texts = [psst.as_str(), &back, &hello, &answer];
    never_in_the_muc(&lobby, &texts)?;
    lobby_never_saw(&lobby, &texts).await
}

/// A person an admin banned neither sends nor receives private messages: the banned IRC
/// user's `/msg` to a Matrix person's puppet reaches nothing, and what the Matrix person writes
/// in their direct chat is refused with a notice from the ghost instead of reaching them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_banned_people_neither_send_nor_receive() -> anyhow::Result<()> {
    let server_name = junction_testkit::servers::servers()
        .await?
        .matrix
        .server_name
        .clone();
    let lobby = Lobby::start_with(|c| {
        crate::lobby::in_gateway(c, &format!("admins = [\"@alice:{server_name}\"]"));
    })
    .await?;
    let (ghost, puppet) = meet(&lobby).await?;
    let first = unique("before the ban");
    let (dm, _) = irc_opens_a_chat(&lobby, &ghost, &puppet, &first).await?;

    let commands = direct_chat(&lobby, &matrix_bot(&lobby)).await?;
    lobby
        .matrix
        .send_text(&commands, &format!("ban local/{}", lobby.irc.nick()))
        .await?;
    matrix_bot_says(&lobby, &commands, "Banned").await?;

    let from_banned = unique("the banned writes");
    lobby.irc.privmsg(&puppet, &from_banned)?;
    let to_banned = unique("written to the banned");
    lobby.matrix.send_text(&dm, &to_banned).await?;
    ghost_refuses(&lobby, &dm, &ghost).await?;
    // Long enough for a message let through to show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = lobby.matrix.events(&dm).await?;
    anyhow::ensure!(
        !seen.iter().any(|e| e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains(&from_banned))),
        "the banned person's message reached Matrix"
    );
    let me = lobby.irc.nick().to_owned();
    anyhow::ensure!(
        !lobby.irc.backlog().iter().any(|m| matches!(&m.command, Command::PRIVMSG(t, b) if t.eq_ignore_ascii_case(&me) && b.contains(&to_banned))),
        "a message reached the banned person"
    );
    lobby_never_saw(&lobby, &[&first, &from_banned, &to_banned]).await
}

/// The per-sender rate limit holds for private messages: an IRC user who floods a Matrix
/// person's puppet gets at most the burst (and what refilled meanwhile) across, the rest is
/// counted in `junction_rate_limited_total`, and the Matrix person's answers still cross.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_messages_are_rate_limited_per_sender() -> anyhow::Result<()> {
    const BURST: usize = 5;
    const PER_MINUTE: usize = 2;
    const FLOOD: usize = 30;
    let (lobby, base) = Lobby::start_with_metrics(&format!(
        "rate_burst = {BURST}\nrate_per_minute = {PER_MINUTE}"
    ))
    .await?;
    let start = std::time::Instant::now();
    let allowance = || BURST + PER_MINUTE * (start.elapsed().as_secs() as usize / 60 + 1);
    let (ghost, puppet) = meet(&lobby).await?;

    let tag = unique("pfl");
    for i in 0..FLOOD {
        lobby.irc.privmsg(&puppet, &format!("{tag} {i}"))?;
    }
    let least = FLOOD.saturating_sub(allowance()) as u64;
    crate::hostile_fanout::counter_reaches(
        &base,
        "junction_rate_limited_total",
        "irc:local",
        "message",
        least,
    )
    .await?;
    let dm = invited_by(&lobby, &ghost, &[]).await?;
    lobby.matrix.join(&dm).await?;
    matrix_from(&lobby, &dm, &ghost, &tag).await?;

    let answer = unique("matrix still answers");
    lobby.matrix.send_text(&dm, &answer).await?;
    irc_query(&lobby, &puppet, &answer).await?;
    let needle = format!("{tag} ");
    let crossed = lobby
        .matrix
        .events(&dm)
        .await?
        .iter()
        .filter(|e| {
            e["sender"].as_str() == Some(ghost.as_str())
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(&needle))
        })
        .count();
    anyhow::ensure!(
        crossed <= allowance(),
        "{crossed} flood lines crossed (at most {})",
        allowance()
    );
    lobby_never_saw(&lobby, &[&needle]).await
}

/// Where the room does not show the gateway someone's real JID (the gateway no moderator of
/// a semi-anonymous MUC), a Matrix user's direct chat with their ghost reaches them as a MUC
/// private message from her puppet occupant, and their private message back to that
/// occupant lands in the same direct chat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_matrix_reaches_xmpp_by_a_muc_private_message() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let listener = format!("junction@{}", lobby.slot.component);
    lobby
        .xmpp
        .set_affiliation(&lobby.muc, &listener, "member")
        .await?;
    let bob = junction_testkit::clients::XmppUser::register(
        &lobby.servers,
        &crate::lobby::short_nick(&unique("xb")),
        "pw-bob",
    )
    .await?;
    bob.join_muc(&lobby.muc, &unique("bob")).await?;
    let from_bob = unique("hello from bob");
    bob.send_groupchat(&lobby.muc, &from_bob)?;
    let ghost = lobby.matrix_sees(&from_bob).await?["sender"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let from_matrix = unique("hello from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    let seen = bob
        .wait_for(WAIT, |el| {
            el.attr("type") == Some("groupchat")
                && junction_testkit::clients::xmpp::body(el)
                    .is_some_and(|b| b.contains(&from_matrix))
        })
        .await?;
    let occupant = seen.attr("from").unwrap_or_default().to_owned();

    let dm = direct_chat(&lobby, &ghost).await?;
    let hello = unique("private by the muc");
    lobby.matrix.send_text(&dm, &hello).await?;
    bob.wait_for(WAIT, |el| {
        el.attr("type") == Some("chat")
            && el.attr("from") == Some(occupant.as_str())
            && junction_testkit::clients::xmpp::body(el).is_some_and(|b| b.contains(&hello))
    })
    .await
    .context("matrix → a muc private message")?;
    let answer = unique("bob answers in private");
    bob.send_raw(&format!(
        "<message type='chat' to='{occupant}' id='{}'><body>{answer}</body>\
         <x xmlns='http://jabber.org/protocol/muc#user'/></message>",
        bob.next_id()
    ))?;
    matrix_from(&lobby, &dm, &ghost, &answer).await?;
    never_in_the_muc(&lobby, &[&hello, &answer])?;
    lobby_never_saw(&lobby, &[&hello, &answer]).await
}
