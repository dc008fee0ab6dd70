//! Encrypted Matrix rooms (`[matrix] encryption = true`): the gateway's own device decrypts
//! what Matrix members say and encrypts what comes from IRC and XMPP, checked against an
//! encrypting client that shares no code with the gateway (matrix-nio on libolm).

use crate::lobby::{child, Lobby, WAIT};
use anyhow::Context as _;
use junction_testkit::clients::xmpp::{body, stanza_id};
use junction_testkit::clients::NioUser;
use junction_testkit::unique;

/// Turns the gateway's device on in a lobby's config.
fn encryption_on(config: &mut String) {
    *config = config.replacen("[matrix]\n", "[matrix]\nencryption = true\n", 1);
}

/// A lobby whose Matrix room is encrypted, with a nio member in it.
async fn encrypted_lobby() -> anyhow::Result<(Lobby, NioUser)> {
    encrypted_lobby_with(|_| {}).await
}

/// [`encrypted_lobby`], its config changed by `tweak` too.
async fn encrypted_lobby_with(tweak: impl FnOnce(&mut String)) -> anyhow::Result<(Lobby, NioUser)> {
    let lobby = Lobby::start_with(|c| {
        encryption_on(c);
        tweak(c);
    })
    .await?;
    lobby
        .matrix
        .enable_encryption(&lobby.room)
        .await
        .context("turning encryption on")?;
    let nio = NioUser::join(&lobby.servers, &unique("nio"), "nio-pw", &lobby.room)
        .await
        .context("the nio member")?;
    Ok((lobby, nio))
}

/// The file keeping the gateway's device id, and the id.
fn device_of(lobby: &Lobby) -> anyhow::Result<(std::path::PathBuf, String)> {
    let file = lobby
        .store_dir()
        .with_file_name("matrix-crypto")
        .join("device_id");
    let device = std::fs::read_to_string(&file).context("the device id file")?;
    Ok((file, device))
}

/// Waits until the nio member reads `text`, and checks it came encrypted.
async fn reads_encrypted(nio: &NioUser, text: &str) -> anyhow::Result<serde_json::Value> {
    let m = nio.sees(text, WAIT).await?;
    anyhow::ensure!(m["encrypted"] == true, "not encrypted: {m}");
    Ok(m)
}

/// An IRC line reaches the nio member encrypted, then the member's line reaches IRC.
async fn irc_then_matrix(lobby: &Lobby, nio: &mut NioUser) -> anyhow::Result<()> {
    let from_irc = unique("from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    reads_encrypted(nio, &from_irc)
        .await
        .context("irc → matrix")?;
    let from_matrix = unique("from nio");
    nio.send(&from_matrix).await?;
    lobby.irc_sees(&from_matrix).await.context("matrix → irc")?;
    Ok(())
}

/// An encrypted message from Matrix reaches IRC and XMPP in clear; IRC and XMPP lines reach
/// the Matrix member encrypted and readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_directions_through_an_encrypted_room() -> anyhow::Result<()> {
    let (lobby, mut nio) = encrypted_lobby().await?;
    let from_matrix = unique("secret from matrix");
    nio.send(&from_matrix).await?;
    lobby
        .irc_sees(&from_matrix)
        .await
        .context("matrix (encrypted) → irc")?;
    let x = lobby
        .xmpp_sees(&from_matrix)
        .await
        .context("matrix (encrypted) → xmpp")?;
    assert_eq!(body(&x).as_deref(), Some(from_matrix.as_str()));

    let from_irc = unique("from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    reads_encrypted(&nio, &from_irc)
        .await
        .context("irc → matrix (encrypted)")?;

    let from_xmpp = unique("from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    let m = reads_encrypted(&nio, &from_xmpp)
        .await
        .context("xmpp → matrix (encrypted)")?;
    // What the room shows to a client without keys is ciphertext only.
    let ev = lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |e| e["event_id"] == m["event_id"])
        .await?;
    assert_eq!(ev["type"], "m.room.encrypted", "{ev}");
    Ok(())
}

/// An edit of an encrypted message crosses as a correction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_edits_cross() -> anyhow::Result<()> {
    let (lobby, mut nio) = encrypted_lobby().await?;
    let orig = unique("typo frm nio");
    let id = nio.send(&orig).await?;
    lobby.irc_sees(&orig).await.context("the original on IRC")?;
    lobby
        .xmpp_sees(&orig)
        .await
        .context("the original on XMPP")?;
    let fixed = unique("fixed from nio");
    nio.edit(&id, &fixed).await?;
    lobby.irc_sees(&fixed).await.context("the edit on IRC")?;
    let x = lobby.xmpp_sees(&fixed).await.context("the edit on XMPP")?;
    assert!(
        x.children()
            .any(|c| c.name() == "replace" && c.ns() == "urn:xmpp:message-correct:0"),
        "the XMPP message should be a correction: {x:?}"
    );
    Ok(())
}

/// Replies, reactions and redactions from an encrypted room cross as in a plain one: a
/// XEP-0461 reply and a quote on IRC, a XEP-0444 reaction and a short line on IRC, a
/// retraction on XMPP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_replies_reactions_and_redactions_cross() -> anyhow::Result<()> {
    let (lobby, mut nio) = encrypted_lobby().await?;
    let question = unique("question from irc");
    lobby.irc.privmsg(&lobby.channel, &question)?;
    let seen = nio.sees(&question, WAIT).await.context("irc → nio")?;
    let q_id = seen["event_id"].as_str().unwrap_or_default().to_owned();
    let x_q = lobby.xmpp_sees(&question).await?;
    let sid = stanza_id(&x_q).context("stanza-id")?;

    let answer = unique("encrypted answer");
    nio.reply(&q_id, &answer).await?;
    let x = lobby.xmpp_sees(&answer).await.context("reply → xmpp")?;
    let reply = child(&x, "reply", "urn:xmpp:reply:0").context("a XEP-0461 reply")?;
    assert_eq!(reply.attr("id"), Some(sid.as_str()));
    let (_, t) = lobby.irc_sees(&answer).await.context("reply → irc")?;
    assert!(t.contains('←'), "quoted on IRC: {t:?}");

    nio.react(&q_id, "👍").await?;
    lobby
        .xmpp_sees_reaction(&sid, "👍")
        .await
        .context("reaction → xmpp")?;
    lobby.irc_sees("👍").await.context("reaction → irc")?;

    let regret = unique("encrypted regret");
    let ev = nio.send(&regret).await?;
    let x = lobby.xmpp_sees(&regret).await?;
    nio.redact(&ev).await?;
    lobby
        .xmpp_retracted(&x)
        .await
        .context("redaction → xmpp retraction")?;
    Ok(())
}

/// The gateway's device and its keys survive a restart: both directions still work after
/// it, with the same device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_survive_a_gateway_restart() -> anyhow::Result<()> {
    let (mut lobby, mut nio) = encrypted_lobby().await?;
    let before = unique("before restart");
    lobby.irc.privmsg(&lobby.channel, &before)?;
    nio.sees(&before, WAIT)
        .await
        .context("irc → matrix before")?;

    let (device_file, device) = device_of(&lobby)?;
    lobby.stop_gateway().await?;
    lobby.start_gateway().await?;
    assert_eq!(
        std::fs::read_to_string(&device_file)?,
        device,
        "same device"
    );

    irc_then_matrix(&lobby, &mut nio)
        .await
        .context("after the restart")
}

/// A member who joins later reads what is said after they joined: the gateway shares the
/// room key with their device too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_joins_later_reads_new_lines() -> anyhow::Result<()> {
    let (lobby, first) = encrypted_lobby().await?;
    let early = unique("early line");
    lobby.irc.privmsg(&lobby.channel, &early)?;
    first.sees(&early, WAIT).await.context("the first member")?;

    let later = NioUser::join(&lobby.servers, &unique("late"), "late-pw", &lobby.room)
        .await
        .context("the later member")?;
    let line = unique("line for both");
    lobby.irc.privmsg(&lobby.channel, &line)?;
    let m = later
        .sees(&line, WAIT)
        .await
        .context("the later member reads the new line")?;
    assert_eq!(m["encrypted"], true, "{m}");
    first.sees(&line, WAIT).await.context("the first member")?;
    Ok(())
}

/// A device the homeserver lost (deleted while the gateway was away) is noticed at start
/// and set up again, with new keys that members' clients then use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_device_is_set_up_again() -> anyhow::Result<()> {
    let (mut lobby, mut nio) = encrypted_lobby().await?;
    let (device_file, device) = device_of(&lobby)?;
    lobby.stop_gateway().await?;
    // The appservice deletes its bot's device, as an admin cleaning up would.
    let bot = format!("@{}:{}", lobby.slot.bot, lobby.servers.matrix.server_name);
    let resp = reqwest::Client::new()
        .delete(format!(
            "{}/_matrix/client/v3/devices/{device}",
            lobby.servers.matrix.url
        ))
        .query(&[("user_id", bot.as_str())])
        .bearer_auth(&lobby.slot.as_token)
        .json(&serde_json::json!({}))
        .send()
        .await?;
    anyhow::ensure!(resp.status().is_success(), "deleting the device: {resp:?}");
    lobby.start_gateway().await?;
    junction_testkit::eventually(WAIT, "a new device", || {
        let again = std::fs::read_to_string(&device_file).unwrap_or_default();
        let new = !again.is_empty() && again != device;
        async move { new.then_some(()) }
    })
    .await?;

    irc_then_matrix(&lobby, &mut nio)
        .await
        .context("through the new device")
}

/// The gateway's Matrix bot.
fn bot_of(lobby: &Lobby) -> String {
    format!("@{}:{}", lobby.slot.bot, lobby.servers.matrix.server_name)
}

/// Waits until the nio member reads `text` in `room` from `sender`, encrypted.
async fn reads_encrypted_in(
    nio: &NioUser,
    room: &str,
    sender: &str,
    text: &str,
) -> anyhow::Result<()> {
    let m = nio.sees_in(room, text, WAIT).await?;
    anyhow::ensure!(m["encrypted"] == true, "not encrypted: {m}");
    anyhow::ensure!(m["sender"] == sender, "not from {sender}: {m}");
    Ok(())
}

/// The nio member opens an encrypted direct chat with `ghost` (the bot joining it too, for
/// its device) and writes a line there; returns the chat and the line.
async fn writes_privately(
    lobby: &Lobby,
    nio: &mut NioUser,
    ghost: &str,
) -> anyhow::Result<(String, String)> {
    let dm = nio
        .direct_chat(ghost, &[&bot_of(lobby)])
        .await
        .context("the encrypted direct chat")?;
    let hello = unique("private secret");
    nio.send_to(&dm, &hello).await?;
    Ok((dm, hello))
}

/// A Matrix member opens an encrypted direct chat with an IRC person's ghost, as Element
/// does (encryption on from the start): the bot joins it too, for its device; what she
/// writes there reaches the IRC person privately, and the answer comes back encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_direct_chat_with_an_irc_person() -> anyhow::Result<()> {
    let (lobby, mut nio) = encrypted_lobby().await?;
    // They meet in the lobby, so each may write to the other.
    let from_irc = unique("hello from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    let seen = nio.sees(&from_irc, WAIT).await.context("irc → lobby")?;
    let ghost = seen["sender"].as_str().unwrap_or_default().to_owned();
    let from_nio = unique("hello from nio");
    nio.send(&from_nio).await?;
    let (puppet, _) = lobby.irc_sees(&from_nio).await.context("lobby → irc")?;

    let (dm, hello) = writes_privately(&lobby, &mut nio, &ghost).await?;
    let from = crate::private::irc_query_where(&lobby, &hello, |_| true)
        .await
        .context("matrix (encrypted) → irc, privately")?;
    anyhow::ensure!(
        from.eq_ignore_ascii_case(&puppet),
        "from {from}, not {puppet}"
    );

    let answer = unique("private answer");
    lobby.irc.privmsg(&puppet, &answer)?;
    reads_encrypted_in(&nio, &dm, &ghost, &answer)
        .await
        .context("irc → matrix (encrypted), privately")?;
    // Neither line went into the lobby.
    let lobby_events = lobby.matrix.events(&lobby.room).await?;
    anyhow::ensure!(
        !lobby_events
            .iter()
            .any(|e| e.to_string().contains(&hello) || e.to_string().contains(&answer)),
        "private text in the lobby"
    );
    Ok(())
}

/// The same with an XMPP person: the encrypted direct chat with their ghost reaches them as
/// a chat, and their chat back arrives encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_direct_chat_with_an_xmpp_person() -> anyhow::Result<()> {
    let (lobby, mut nio) = encrypted_lobby().await?;
    let from_xmpp = unique("hello from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    let seen = nio.sees(&from_xmpp, WAIT).await.context("xmpp → lobby")?;
    let ghost = seen["sender"].as_str().unwrap_or_default().to_owned();
    let from_nio = unique("hello from nio");
    nio.send(&from_nio).await?;
    lobby.xmpp_sees(&from_nio).await.context("lobby → xmpp")?;

    let (dm, hello) = writes_privately(&lobby, &mut nio, &ghost).await?;
    let got = crate::private::xmpp_chat(&lobby, |_| true, &hello)
        .await
        .context("matrix (encrypted) → xmpp, as a chat")?;

    let answer = unique("xmpp answers");
    crate::private::xmpp_answers(&lobby, &got, &answer)?;
    reads_encrypted_in(&nio, &dm, &ghost, &answer)
        .await
        .context("xmpp → matrix (encrypted), privately")
}

/// A command in an encrypted direct chat with the bot is decrypted, and its answer comes
/// encrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_in_an_encrypted_chat_with_the_bot() -> anyhow::Result<()> {
    let (lobby, mut nio) = encrypted_lobby().await?;
    let bot = bot_of(&lobby);
    let commands = nio
        .direct_chat(&bot, &[])
        .await
        .context("the direct chat with the bot")?;
    nio.send_to(&commands, "dm off").await?;
    reads_encrypted_in(&nio, &commands, &bot, "are off for you")
        .await
        .context("the bot's answer")
}

/// An encrypted message nobody can decrypt (its session never shared with the gateway's
/// device) is not dropped silently: after `undecryptable_after` its sender is told in the
/// room, as an encrypted notice replying to it, and it is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecryptable_message_is_told_to_its_sender() -> anyhow::Result<()> {
    let port = junction_testkit::free_port()?;
    let lobby = Lobby::start_with(|c| {
        encryption_on(c);
        *c = c.replacen("[matrix]\n", "[matrix]\nundecryptable_after = \"5s\"\n", 1);
        crate::lobby::in_gateway(c, &format!("metrics = \"127.0.0.1:{port}\""));
    })
    .await?;
    lobby
        .matrix
        .enable_encryption(&lobby.room)
        .await
        .context("turning encryption on")?;
    let mut nio = NioUser::join(&lobby.servers, &unique("nio"), "nio-pw", &lobby.room)
        .await
        .context("the nio member")?;

    let lost = unique("nobody can read this");
    let id = nio.send_undecryptable(&lobby.room, &lost).await?;
    let m = reads_encrypted(&nio, "was not bridged")
        .await
        .context("the notice")?;
    let text = m["body"].as_str().unwrap_or_default();
    anyhow::ensure!(text.contains(&id), "the notice names another message: {m}");
    anyhow::ensure!(text.contains(nio.user_id()), "the notice names nobody: {m}");
    crate::hostile_fanout::counter_reaches(
        &format!("http://127.0.0.1:{port}"),
        "junction_errors_total",
        "matrix",
        "undecryptable",
        1,
    )
    .await?;
    // A message decrypted as usual still crosses.
    let fine = unique("readable again");
    nio.send(&fine).await?;
    lobby.irc_sees(&fine).await.context("the next line")?;
    Ok(())
}

/// A file a Matrix member sends encrypted crosses to XMPP and IRC as a link that serves its
/// decrypted bytes, with neither its key nor its `mxc://` URI in the link; a file from XMPP
/// arrives in the encrypted room as an encrypted file that the member's client decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_attachments_cross_decrypted() -> anyhow::Result<()> {
    const FROM_XMPP: &[u8] = b"a file from xmpp, for the encrypted room";
    let (lobby, mut nio) = encrypted_lobby_with(|c| {
        // The XMPP side's file is served on loopback.
        *c = c.replacen(
            "[matrix]\n",
            "[matrix]\nprivate_attachment_urls = true\n",
            1,
        );
    })
    .await?;
    let bytes = unique("what only the room may read").into_bytes();
    let name = format!("{}.txt", unique("notes"));
    nio.send_file(&name, &bytes).await?;
    let x = lobby
        .xmpp
        .wait_for(WAIT, |el| {
            child(el, "x", "jabber:x:oob").is_some()
                && body(el).is_some_and(|b| b.contains("/media/encrypted/"))
        })
        .await
        .context("matrix (encrypted file) → xmpp oob")?;
    let url = child(&x, "x", "jabber:x:oob")
        .and_then(|o| o.children().find(|c| c.name() == "url"))
        .map(|u| u.text())
        .context("oob url")?;
    assert!(
        url.ends_with(&format!("/{name}")) || url.contains(&format!("/{name}?")),
        "{url}"
    );
    let got = reqwest::get(&url).await?;
    assert_eq!(got.status(), 200, "{url}");
    assert_eq!(
        got.bytes().await?.as_ref(),
        bytes.as_slice(),
        "decrypted bytes"
    );
    let (_, line) = lobby
        .irc_sees("/media/encrypted/")
        .await
        .context("matrix (encrypted file) → irc")?;
    assert!(!line.contains("mxc") && line.contains(&name), "{line:?}");

    let served = crate::matrix::rig::serve_file(FROM_XMPP).await?;
    lobby.xmpp.send_groupchat_with(
        &lobby.muc,
        &served,
        &format!("<x xmlns='jabber:x:oob'><url>{served}</url></x>"),
    )?;
    let got = nio
        .receives_file("cat.png", WAIT)
        .await
        .context("xmpp file → matrix (encrypted)")?;
    assert_eq!(got, FROM_XMPP);
    Ok(())
}
