//! The lobby end to end: the whole gateway (`junction::serve`) linking one Matrix room, one
//! MUC and one IRC channel on the real servers, with an ordinary user of each network
//! connected through the testkit clients. Every test builds its own lobby (unique room
//! names, its own testkit slot and store), so tests never see each other's traffic.
//!
//! The README's capability table names the tests here; `tests/capabilities.rs` checks each
//! name exists, so the table can not drift from what is tested.

mod rig;

pub use rig::*;

use anyhow::Context as _;
use junction_testkit::clients::irc::{joiner, source_nick};
use junction_testkit::clients::xmpp::{body, from_nick, stanza_id};
use junction_testkit::clients::{MatrixUser, XmppUser};
use junction_testkit::servers::servers;
use junction_testkit::unique;
use serde_json::Value;

// ----------------------------------------------------------------------------------------
// Plain text, all six directions.

/// Plain text from each network reaches the other two, each line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_six_directions() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let from_matrix = unique("hello from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    lobby
        .xmpp_sees(&from_matrix)
        .await
        .context("matrix → xmpp")?;
    lobby.irc_sees(&from_matrix).await.context("matrix → irc")?;

    let from_xmpp = unique("hello from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    lobby
        .matrix_sees(&from_xmpp)
        .await
        .context("xmpp → matrix")?;
    lobby.irc_sees(&from_xmpp).await.context("xmpp → irc")?;

    let from_irc = unique("hello from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    let m = lobby.matrix_sees(&from_irc).await.context("irc → matrix")?;
    assert_eq!(matrix_body(&m), from_irc);
    let x = lobby.xmpp_sees(&from_irc).await.context("irc → xmpp")?;
    assert_eq!(body(&x).as_deref(), Some(from_irc.as_str()));
    // The sender shows up as themself: the ghost and the occupant carry the IRC nick.
    assert!(
        from_nick(&x).is_some_and(|n| n.contains(lobby.irc.nick())),
        "occupant nick {:?} should carry the IRC nick {}",
        from_nick(&x),
        lobby.irc.nick()
    );
    let _ = stanza_id(&x);
    Ok(())
}

/// The XMPP element's child with `name` in namespace `ns`, if any.
pub(crate) fn child<'a>(
    el: &'a minidom::Element,
    name: &str,
    ns: &str,
) -> Option<&'a minidom::Element> {
    el.children().find(|c| c.name() == name && c.ns() == ns)
}

/// IRC text of a CTCP ACTION, if it is one.
fn action(text: &str) -> Option<&str> {
    text.strip_prefix("\u{1}ACTION ")
        .map(|t| t.strip_suffix('\u{1}').unwrap_or(t))
}

// ----------------------------------------------------------------------------------------
// Emotes.

/// `/me` from each network arrives as the native emote on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emotes_six_directions() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let m = unique("waves from matrix");
    lobby.matrix.send_emote(&lobby.room, &m).await?;
    let x = lobby.xmpp_sees(&m).await.context("matrix → xmpp")?;
    assert!(body(&x).is_some_and(|b| b.starts_with("/me ")), "{x:?}");
    let (_, t) = lobby.irc_sees(&m).await.context("matrix → irc")?;
    assert!(action(&t).is_some(), "IRC should get an ACTION: {t:?}");

    let x_text = unique("waves from xmpp");
    lobby
        .xmpp
        .send_groupchat(&lobby.muc, &format!("/me {x_text}"))?;
    let e = lobby.matrix_sees(&x_text).await.context("xmpp → matrix")?;
    assert_eq!(e["content"]["msgtype"], "m.emote");
    let (_, t) = lobby.irc_sees(&x_text).await.context("xmpp → irc")?;
    assert!(action(&t).is_some(), "IRC should get an ACTION: {t:?}");

    let i = unique("waves from irc");
    lobby.irc.action(&lobby.channel, &i)?;
    let e = lobby.matrix_sees(&i).await.context("irc → matrix")?;
    assert_eq!(e["content"]["msgtype"], "m.emote");
    let x = lobby.xmpp_sees(&i).await.context("irc → xmpp")?;
    assert!(body(&x).is_some_and(|b| b.starts_with("/me ")), "{x:?}");
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Formatting and sanitising.

/// Bold and code cross as each network's own markup; markup of one network is never
/// active on another (`<script>` from Matrix, literal `<b>` typed on IRC or XMPP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatting_six_directions_and_sanitised() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Matrix HTML → XEP-0393 and IRC codes; the script is gone everywhere.
    let tag = unique("fmtm");
    lobby
        .matrix
        .send_html(
            &lobby.room,
            &format!("{tag} strong words"),
            &format!("{tag} <b>strong</b> words<script>alert(1)</script>"),
        )
        .await?;
    let x = lobby.xmpp_sees(&tag).await.context("matrix → xmpp")?;
    let xb = body(&x).unwrap_or_default();
    assert!(xb.contains("*strong*"), "XEP-0393 bold expected: {xb:?}");
    assert!(!xb.contains("script") && !xb.contains("alert"), "{xb:?}");
    let (_, t) = lobby.irc_sees(&tag).await.context("matrix → irc")?;
    assert!(t.contains("\u{2}strong\u{2}"), "IRC bold expected: {t:?}");
    assert!(!t.contains("alert"), "{t:?}");

    // XEP-0393 → Matrix HTML and IRC codes.
    let tag = unique("fmtx");
    lobby
        .xmpp
        .send_groupchat(&lobby.muc, &format!("{tag} *loud* and `code`"))?;
    let e = lobby.matrix_sees(&tag).await.context("xmpp → matrix")?;
    let html = e["content"]["formatted_body"].as_str().unwrap_or_default();
    assert!(
        html.contains("<strong>loud</strong>") || html.contains("<b>loud</b>"),
        "Matrix bold expected: {e}"
    );
    assert!(
        html.contains("<code>code</code>"),
        "Matrix code expected: {e}"
    );
    let (_, t) = lobby.irc_sees(&tag).await.context("xmpp → irc")?;
    assert!(t.contains("\u{2}loud\u{2}"), "IRC bold expected: {t:?}");

    // IRC codes → Matrix HTML and XEP-0393; literal markup typed on IRC stays text.
    let tag = unique("fmti");
    lobby.irc.privmsg(
        &lobby.channel,
        &format!("{tag} \u{2}bold\u{2} and <b>not bold</b> <img src=x onerror=alert(1)>"),
    )?;
    let e = lobby.matrix_sees(&tag).await.context("irc → matrix")?;
    let html = e["content"]["formatted_body"].as_str().unwrap_or_default();
    assert!(
        html.contains("<strong>bold</strong>") || html.contains("<b>bold</b>"),
        "Matrix bold expected: {e}"
    );
    assert!(!html.contains("<img") && !html.contains("<b>not"), "{html}");
    assert!(
        matrix_body(&e).contains("<b>not bold</b>"),
        "typed markup stays visible text: {e}"
    );
    let x = lobby.xmpp_sees(&tag).await.context("irc → xmpp")?;
    assert!(
        body(&x).is_some_and(|b| b.contains("*bold*")),
        "XEP-0393 bold expected: {x:?}"
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Edits.

/// A correction on one network replaces the message natively elsewhere; IRC gets the new
/// text marked as a correction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_cross_natively() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Matrix edit → XMPP correction of the puppet's message, IRC line.
    let orig = unique("typo frm matrix");
    let ev = lobby.matrix.send_text(&lobby.room, &orig).await?;
    let first = lobby.xmpp_sees(&orig).await?;
    lobby.irc_sees(&orig).await?;
    let fixed = unique("fixed from matrix");
    lobby
        .matrix
        .send_edit(&lobby.room, &ev, &fixed)
        .await
        .context("sending the edit")?;
    let x = lobby
        .xmpp_sees(&fixed)
        .await
        .context("matrix edit → xmpp")?;
    let replace = child(&x, "replace", "urn:xmpp:message-correct:0")
        .context("the XMPP message should be a XEP-0308 correction")?;
    assert_eq!(replace.attr("id"), first.attr("id"));
    lobby.irc_sees(&fixed).await.context("matrix edit → irc")?;

    // XMPP correction → Matrix m.replace of the ghost's event.
    let orig = unique("typo frm xmpp");
    let id = lobby.xmpp.send_groupchat(&lobby.muc, &orig)?;
    let m_orig = lobby.matrix_sees(&orig).await?;
    let fixed = unique("fixed from xmpp");
    lobby.xmpp.send_correction(&lobby.muc, &id, &fixed)?;
    let e = lobby
        .matrix_sees(&fixed)
        .await
        .context("xmpp edit → matrix")?;
    assert_eq!(e["content"]["m.relates_to"]["rel_type"], "m.replace", "{e}");
    assert_eq!(e["content"]["m.relates_to"]["event_id"], m_orig["event_id"]);
    let (_, t) = lobby.irc_sees(&fixed).await.context("xmpp edit → irc")?;
    assert!(t.contains(&fixed));
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Replies.

/// A reply is native where the network has replies and a short quote on IRC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // An IRC line, answered on Matrix: XMPP sees a XEP-0461 reply to the IRC puppet's message.
    let question = unique("question from irc");
    lobby.irc.privmsg(&lobby.channel, &question)?;
    let m_q = lobby.matrix_sees(&question).await?;
    let x_q = lobby.xmpp_sees(&question).await?;
    let answer = unique("answer from matrix");
    let q_id = m_q["event_id"].as_str().context("event id")?.to_owned();
    lobby.matrix.send_reply(&lobby.room, &q_id, &answer).await?;
    let x = lobby
        .xmpp_sees(&answer)
        .await
        .context("matrix reply → xmpp")?;
    let reply = child(&x, "reply", "urn:xmpp:reply:0")
        .context("the XMPP message should be a XEP-0461 reply")?;
    assert_eq!(reply.attr("id").map(str::to_owned), stanza_id(&x_q));
    let (_, t) = lobby
        .irc_sees(&answer)
        .await
        .context("matrix reply → irc")?;
    assert!(t.len() > answer.len(), "IRC gets a quote fallback: {t:?}");

    // An XMPP reply to a Matrix message → Matrix in_reply_to.
    let hello = unique("hello from matrix");
    let m_id = lobby.matrix.send_text(&lobby.room, &hello).await?;
    let x_hello = lobby.xmpp_sees(&hello).await?;
    let sid = stanza_id(&x_hello).context("stanza-id")?;
    let from = x_hello.attr("from").context("from")?.to_owned();
    let reply_text = unique("reply from xmpp");
    lobby
        .xmpp
        .send_reply(&lobby.muc, &sid, &from, &reply_text)?;
    let e = lobby
        .matrix_sees(&reply_text)
        .await
        .context("xmpp reply → matrix")?;
    assert_eq!(
        e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"].as_str(),
        Some(m_id.as_str()),
        "{e}"
    );
    assert!(
        !matrix_body(&e).starts_with("> "),
        "the XMPP fallback quote is stripped: {e}"
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Redactions.

/// A redaction on Matrix retracts the XMPP copy; a retraction on XMPP redacts the Matrix
/// copy. IRC has nothing to take back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redactions_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let text = unique("regret from matrix");
    let ev = lobby.matrix.send_text(&lobby.room, &text).await?;
    let x = lobby.xmpp_sees(&text).await?;
    lobby.matrix.redact(&lobby.room, &ev, "oops").await?;
    lobby
        .xmpp_retracted(&x)
        .await
        .context("matrix redaction → xmpp retraction")?;

    let text = unique("regret from xmpp");
    let mine = lobby.xmpp_says(&text).await?;
    let e = lobby.matrix_sees(&text).await?;
    let my_sid = stanza_id(&mine).context("our stanza-id")?;
    lobby.xmpp.send_retraction(&lobby.muc, &my_sid)?;
    let target = e["event_id"].as_str().context("event id")?.to_owned();
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| {
            r["type"] == "m.room.redaction"
                && (r["redacts"].as_str() == Some(target.as_str())
                    || r["content"]["redacts"].as_str() == Some(target.as_str()))
        })
        .await
        .context("xmpp retraction → matrix redaction")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Reactions.

/// Reactions are native on Matrix and XMPP, a short line on IRC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let text = unique("react to me");
    lobby.irc.privmsg(&lobby.channel, &text)?;
    let e = lobby.matrix_sees(&text).await?;
    let x = lobby.xmpp_sees(&text).await?;
    let sid = stanza_id(&x).context("stanza-id")?;
    let ev = e["event_id"].as_str().context("event id")?.to_owned();
    lobby.matrix.react(&lobby.room, &ev, "👍").await?;
    lobby
        .xmpp_sees_reaction(&sid, "👍")
        .await
        .context("matrix reaction → xmpp")?;
    lobby
        .irc_sees("👍")
        .await
        .context("matrix reaction → irc")?;

    lobby.xmpp.send_reaction(&lobby.muc, &sid, &["🎉"])?;
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| {
            r["type"] == "m.reaction"
                && r["content"]["m.relates_to"]["event_id"].as_str() == Some(ev.as_str())
                && r["content"]["m.relates_to"]["key"] == "🎉"
        })
        .await
        .context("xmpp reaction → matrix")?;
    lobby.irc_sees("🎉").await.context("xmpp reaction → irc")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Attachments.

/// A Matrix image reaches XMPP as OOB and IRC as a link through the gateway's media proxy,
/// and the link serves the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_cross_as_links() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let bytes = b"\x89PNG\r\n\x1a\nnot really a png".to_vec();
    let name = format!("{}.png", unique("pic"));
    let mxc = lobby
        .matrix
        .upload(bytes.clone(), "image/png", &name)
        .await?;
    lobby.matrix.send_image(&lobby.room, &mxc, &name).await?;
    let x = lobby
        .xmpp
        .wait_for(WAIT, |el| {
            child(el, "x", "jabber:x:oob").is_some() && body(el).is_some_and(|b| b.contains("http"))
        })
        .await
        .context("matrix image → xmpp oob")?;
    let url = child(&x, "x", "jabber:x:oob")
        .and_then(|o| o.children().find(|c| c.name() == "url"))
        .map(|u| u.text())
        .context("oob url")?;
    let got = reqwest::get(&url).await?.bytes().await?;
    assert_eq!(got.as_ref(), bytes.as_slice(), "the proxy serves the file");
    let (_, t) = lobby.irc_sees("http").await.context("matrix image → irc")?;
    assert!(t.contains("http://"), "{t:?}");
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Topic and membership.

/// A topic set on IRC becomes the Matrix topic and the MUC subject; an IRC user leaving
/// makes their ghost and occupant leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_membership_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let (ghost, occupant) = lobby.irc_user_speaks().await?;

    let topic = unique("the topic");
    lobby.irc.set_topic(&lobby.channel, &topic)?;
    lobby
        .matrix_topic(&topic)
        .await
        .context("irc topic → matrix")?;
    // The room's admin made the gateway a MUC admin, so the subject is set natively.
    lobby
        .xmpp_subject(&topic)
        .await
        .context("irc topic → xmpp subject")?;

    lobby.irc.part(&lobby.channel, "bye")?;
    lobby
        .matrix_left(&ghost)
        .await
        .context("irc part → matrix ghost leaves")?;
    lobby
        .xmpp_left(&occupant)
        .await
        .context("irc part → xmpp occupant leaves")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Durability of the message map.

/// Edits and redactions of messages sent before a gateway restart still find their copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_after_restart() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let orig = unique("before restart");
    let ev = lobby.matrix.send_text(&lobby.room, &orig).await?;
    let first = lobby.xmpp_sees(&orig).await?;
    lobby.irc_sees(&orig).await?;
    lobby.stop_gateway().await?;
    lobby.start_gateway().await?;
    let fixed = unique("after restart");
    lobby.matrix.send_edit(&lobby.room, &ev, &fixed).await?;
    let x = lobby
        .xmpp_sees(&fixed)
        .await
        .context("edit after restart → xmpp")?;
    let replace = child(&x, "replace", "urn:xmpp:message-correct:0")
        .context("still a correction after the restart")?;
    assert_eq!(replace.attr("id"), first.attr("id"));
    lobby.irc_sees(&fixed).await?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Old-style IRC.

/// On ngIRCd (no IRCv3, 9-character nicks) text crosses both ways and a Matrix user's
/// puppet nick is trimmed to fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_on_ngircd() -> anyhow::Result<()> {
    let servers = servers().await?;
    let lobby = Lobby::start_on(servers.ngircd, |_| {}).await?;
    let from_matrix = unique("hi ngircd from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    let (nick, _) = lobby
        .irc_sees(&from_matrix)
        .await
        .context("matrix → ngircd")?;
    assert!(nick.chars().count() <= 9, "nick {nick} fits NICKLEN 9");
    let from_xmpp = unique("hi ngircd from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    lobby.irc_sees(&from_xmpp).await.context("xmpp → ngircd")?;
    let from_irc = unique("hi from ngircd");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    lobby
        .matrix_sees(&from_irc)
        .await
        .context("ngircd → matrix")?;
    lobby.xmpp_sees(&from_irc).await.context("ngircd → xmpp")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Topic and membership from Matrix and XMPP; kicks reflected.

/// A Matrix topic reaches IRC and XMPP; an XMPP user leaving leaves everywhere; a Matrix
/// moderator kicking an IRC user's ghost is reported on IRC (not enforced there: Matrix room
/// moderators are not IRC channel operators).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_topic_xmpp_leave_and_kick_reflected() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let topic = unique("matrix topic");
    lobby.matrix.set_topic(&lobby.room, &topic).await?;
    lobby
        .irc_topic(&topic)
        .await
        .context("matrix topic → irc")?;
    lobby
        .xmpp_subject(&topic)
        .await
        .context("matrix topic → xmpp")?;

    // An IRC user speaks (so a ghost exists), then a Matrix moderator kicks the ghost.
    let hello = unique("about to be kicked");
    lobby.irc.privmsg(&lobby.channel, &hello)?;
    let e = lobby.matrix_sees(&hello).await?;
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    lobby.matrix.kick(&lobby.room, &ghost, "behave").await?;
    lobby
        .irc_line(&["kicked", "behave"])
        .await
        .context("matrix kick → a line on irc")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Mentions.

/// `nick:` on IRC naming a Matrix user's puppet becomes a pill for that Matrix user; a
/// Matrix pill of an IRC user's ghost reaches IRC as the IRC nick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Alice speaks first, so her puppet exists on IRC and we learn its nick.
    let hello = unique("alice says hi");
    lobby.matrix.send_text(&lobby.room, &hello).await?;
    let (alice_nick, _) = lobby.irc_sees(&hello).await?;
    let ping = unique("ping");
    lobby
        .irc
        .privmsg(&lobby.channel, &format!("{alice_nick}: {ping}"))?;
    let e = lobby
        .matrix_sees(&ping)
        .await
        .context("irc mention → matrix")?;
    let alice = lobby.matrix.user_id().to_owned();
    assert!(has_pill(&e, &alice), "a pill for {alice}: {e}");

    // The IRC user's ghost, pilled on Matrix, is the IRC nick on IRC.
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    let pong = unique("pong");
    let nick = lobby.irc.nick().to_owned();
    lobby.matrix_pill(&ghost, &pong).await?;
    let (_, t) = lobby.irc_sees(&pong).await.context("matrix pill → irc")?;
    assert!(t.contains(&nick), "the pill becomes {nick}: {t:?}");
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Nick changes.

/// An XMPP user changing nick renames their Matrix ghost and their IRC puppet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nick_changes_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let hello = unique("before the rename");
    lobby.xmpp.send_groupchat(&lobby.muc, &hello)?;
    let e = lobby.matrix_sees(&hello).await?;
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    let (old_nick, _) = lobby.irc_sees(&hello).await?;
    let new = short_nick(&unique("rn"));
    lobby
        .xmpp
        .send_raw(&format!("<presence to='{}/{new}'/>", lobby.muc))?;
    lobby
        .matrix_renamed(&ghost, &new)
        .await
        .context("xmpp nick change → matrix displayname")?;
    lobby
        .irc
        .wait_for(WAIT, |m| {
            matches!(&m.command, irc_proto::Command::NICK(n) if n.contains(&new[..new.len().min(6)]))
                && source_nick(m) == Some(old_nick.as_str())
        })
        .await
        .context("xmpp nick change → irc NICK")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Attachments from XMPP.

/// An XMPP user's OOB attachment reaches Matrix and IRC as its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_attachments_cross_as_links() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let url = format!("https://files.example.org/{}.png", unique("up"));
    lobby.xmpp.send_groupchat_with(
        &lobby.muc,
        &url,
        &format!("<x xmlns='jabber:x:oob'><url>{url}</url></x>"),
    )?;
    lobby.matrix_sees(&url).await.context("xmpp oob → matrix")?;
    lobby.irc_sees(&url).await.context("xmpp oob → irc")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Metrics and health of a running gateway.

/// `/health` says every network is connected and `/metrics` counts what crossed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_of_a_running_lobby() -> anyhow::Result<()> {
    let (lobby, base) = Lobby::start_with_metrics("").await?;
    let health = junction_testkit::eventually(WAIT, "every network connected", || {
        let url = format!("{base}/health");
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await?;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        health["networks"].as_array().map(Vec::len),
        Some(3),
        "{health}"
    );

    let text = unique("counted");
    lobby.irc.privmsg(&lobby.channel, &text)?;
    lobby.matrix_sees(&text).await?;
    lobby.xmpp_sees(&text).await?;
    let metrics = junction_testkit::eventually(WAIT, "the line counted", || {
        let url = format!("{base}/metrics");
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let counted = body.lines().any(|l| {
                l.starts_with("junction_messages_in_total{network=\"irc:local\"}")
                    && !l.ends_with(" 0")
            }) && body.lines().any(|l| {
                l.starts_with("junction_messages_out_total{network=\"xmpp\"}") && !l.ends_with(" 0")
            }) && body.lines().any(|l| {
                // The IRC user's ghost on Matrix counts as a puppet.
                l.starts_with("junction_puppets_connected{network=\"matrix\"}")
                    && !l.ends_with(" 0")
            });
            counted.then_some(body)
        }
    })
    .await?;
    assert!(
        metrics.contains("junction_delivery_latency_seconds_bucket"),
        "latency histogram exported"
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// A ban once, for all networks.

/// A global admin on Matrix bans an XMPP user by bare JID: the gateway refuses that user's
/// messages on every network from then on (found through the occupant's real JID), and
/// everyone else keeps talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ban_of_an_xmpp_user_stops_their_messages_everywhere() -> anyhow::Result<()> {
    let lobby = Lobby::start_with(|c| in_gateway(c, "admins = [\"@alice:matrix.test\"]")).await?;
    let before = unique("before the ban");
    lobby.xmpp.send_groupchat(&lobby.muc, &before)?;
    lobby.irc_sees(&before).await?;

    // A direct chat with the bot is the command line.
    let bot = format!("@{}:matrix.test", lobby.slot.bot);
    let dm = lobby.matrix.create_room(None, false).await?;
    lobby.matrix.invite(&dm, &bot).await?;
    let members_dm = dm.clone();
    let m = &lobby.matrix;
    junction_testkit::eventually(WAIT, "the bot in the direct chat", || {
        let (bot, dm) = (bot.clone(), members_dm.clone());
        async move { m.members(&dm).await.ok().filter(|x| x.contains_key(&bot)) }
    })
    .await?;
    let jid = lobby.xmpp.bare_jid().to_owned();
    lobby
        .matrix
        .send_text(&dm, &format!("ban {jid} spamming"))
        .await?;
    let reply = lobby
        .matrix
        .wait_for(&dm, WAIT, |e| {
            e["sender"].as_str() == Some(bot.as_str())
                && matrix_body(e).to_lowercase().contains("banned")
        })
        .await
        .context("the bot answers the ban")?;
    assert!(matrix_body(&reply).contains(&jid), "{reply}");

    let after = unique("after the ban");
    lobby.xmpp.send_groupchat(&lobby.muc, &after)?;
    // Everyone else still crosses; the banned user's line does not.
    let canary = unique("irc still talks");
    lobby.irc.privmsg(&lobby.channel, &canary)?;
    lobby.matrix_sees(&canary).await?;
    lobby.xmpp_sees(&canary).await?;
    let marker = unique("matrix after");
    lobby.matrix.send_text(&lobby.room, &marker).await?;
    lobby.irc_sees(&marker).await?;
    assert!(!lobby.irc_has(&after), "the banned user's line reached IRC");
    Ok(())
}

// ----------------------------------------------------------------------------------------
// The remaining directions of membership, nick changes, topics, kicks and mentions.

/// Someone joining on Matrix appears on IRC and XMPP, and leaving leaves there; the same for
/// someone joining on XMPP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_parts_from_matrix_and_xmpp() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let servers = servers().await?;
    // Matrix: a new user joins, says something, leaves.
    let name = short_nick(&unique("mj"));
    let carol = MatrixUser::register(servers, &name, "pw-lobby").await?;
    carol.join(&lobby.room).await?;
    // Her occupant enters the MUC on the join itself.
    let muc_prefix = format!("{}/", lobby.muc);
    lobby
        .xmpp
        .wait_for(WAIT, |el| {
            el.name() == "presence"
                && el.attr("type").is_none()
                && el
                    .attr("from")
                    .is_some_and(|f| f.starts_with(&muc_prefix) && f.contains(&name))
        })
        .await
        .context("matrix join → xmpp occupant")?;
    let hi = unique("carol is here");
    carol.send_text(&lobby.room, &hi).await?;
    let (carol_nick, _) = lobby.irc_sees(&hi).await?;
    let x = lobby.xmpp_sees(&hi).await?;
    let carol_occupant = x.attr("from").context("from")?.to_owned();
    carol.leave(&lobby.room).await?;
    lobby
        .irc
        .wait_for(WAIT, |m| {
            source_nick(m) == Some(carol_nick.as_str())
                && matches!(
                    &m.command,
                    irc_proto::Command::PART(..) | irc_proto::Command::QUIT(..)
                )
        })
        .await
        .context("matrix leave → irc part")?;
    lobby
        .xmpp_left(&carol_occupant)
        .await
        .context("matrix leave → xmpp unavailable")?;

    // XMPP: a second user joins the MUC: a ghost joins on Matrix, a puppet on IRC.
    let dave_name = short_nick(&unique("xd"));
    let dave = XmppUser::register(servers, &dave_name, "pw-lobby").await?;
    let dave_nick = unique("dave");
    dave.join_muc(&lobby.muc, &dave_nick).await?;
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| {
            r["type"] == "m.room.member"
                && r["content"]["membership"] == "join"
                && r["content"]["displayname"]
                    .as_str()
                    .is_some_and(|d| d.contains(&dave_nick))
        })
        .await
        .context("xmpp join → matrix ghost joins")?;
    // IRC puppets connect when the person first speaks (a connection per lurker would cost
    // the IRC network for nothing); then their puppet joins before the line.
    let words = unique("dave speaks");
    dave.send_groupchat(&lobby.muc, &words)?;
    let (puppet, _) = lobby.irc_sees(&words).await.context("xmpp → irc")?;
    let backlog = lobby.irc.backlog();
    let joined = backlog
        .iter()
        .position(|m| joiner(m, &lobby.channel) == Some(puppet.as_str()));
    let spoke = backlog.iter().position(
        |m| matches!(&m.command, irc_proto::Command::PRIVMSG(_, t) if t.contains(&words)),
    );
    assert!(
        joined.is_some() && joined < spoke,
        "the puppet {puppet} joins before it speaks"
    );
    Ok(())
}

/// An IRC nick change renames the Matrix ghost and the XMPP occupant; a Matrix display
/// name change renames the IRC puppet and the XMPP occupant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nick_changes_from_irc_and_matrix() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let servers = servers().await?;
    let (ghost, occupant) = lobby.irc_user_speaks().await?;
    let new = short_nick(&unique("nn"));
    lobby.irc.send_raw(&format!("NICK {new}"))?;
    lobby
        .matrix_renamed(&ghost, &new)
        .await
        .context("irc nick → matrix displayname")?;
    lobby
        .xmpp_renamed(&occupant)
        .await
        .context("irc nick → xmpp nick change")?;

    // Matrix: a fresh user speaks, then changes display name.
    let name = short_nick(&unique("mr"));
    let erin = MatrixUser::register(servers, &name, "pw-lobby").await?;
    erin.join(&lobby.room).await?;
    let hi = unique("erin before rename");
    erin.send_text(&lobby.room, &hi).await?;
    let (old_nick, _) = lobby.irc_sees(&hi).await?;
    let x = lobby.xmpp_sees(&hi).await?;
    let occupant = x.attr("from").context("from")?.to_owned();
    let display = short_nick(&unique("Er"));
    erin.set_displayname(&display).await?;
    lobby
        .irc
        .wait_for(WAIT, |m| {
            source_nick(m) == Some(old_nick.as_str())
                && matches!(&m.command, irc_proto::Command::NICK(n) if n.starts_with(&display[..4]))
        })
        .await
        .context("matrix displayname → irc NICK")?;
    lobby
        .xmpp_renamed(&occupant)
        .await
        .context("matrix displayname → xmpp nick change")?;
    Ok(())
}

/// A subject set on XMPP becomes the Matrix topic and reaches IRC; an XMPP owner kicking
/// an IRC user's occupant and an IRC operator kicking a Matrix user's puppet are reported on
/// the other networks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_topic_and_kicks_reflected_from_xmpp_and_irc() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let topic = unique("xmpp subject");
    lobby.xmpp.set_subject(&lobby.muc, &topic)?;
    lobby
        .matrix_topic(&topic)
        .await
        .context("xmpp subject → matrix topic")?;
    lobby
        .irc_topic(&topic)
        .await
        .context("xmpp subject → irc")?;

    // The XMPP owner kicks the IRC user's occupant.
    let hi = unique("irc user speaks");
    lobby.irc.privmsg(&lobby.channel, &hi)?;
    let x = lobby.xmpp_sees(&hi).await?;
    let occupant_nick = from_nick(&x).context("nick")?.to_owned();
    lobby.xmpp.kick(&lobby.muc, &occupant_nick).await?;
    lobby
        .matrix_line(&["kicked", &occupant_nick])
        .await
        .context("xmpp kick → a line on matrix")?;

    // The IRC user (channel operator: they made the channel) kicks Matrix alice's puppet.
    let hello = unique("alice speaks");
    lobby.matrix.send_text(&lobby.room, &hello).await?;
    let (alice_nick, _) = lobby.irc_sees(&hello).await?;
    lobby.irc.kick(&lobby.channel, &alice_nick, "out you go")?;
    lobby
        .xmpp_line(&["kicked", "out you go"])
        .await
        .context("irc kick → a line on xmpp")?;
    Ok(())
}

/// Mentions from XMPP become pills on Matrix and the IRC nick on IRC; a Matrix pill of an
/// XMPP user's ghost reaches XMPP as their nick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_from_xmpp_and_to_xmpp() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let hello = unique("alice says hello");
    lobby.matrix.send_text(&lobby.room, &hello).await?;
    let x = lobby.xmpp_sees(&hello).await?;
    let (alice_irc, _) = lobby.irc_sees(&hello).await?;
    let alice_occupant = from_nick(&x).context("nick")?.to_owned();
    let ping = unique("ping from xmpp");
    lobby
        .xmpp
        .send_groupchat(&lobby.muc, &format!("{alice_occupant}: {ping}"))?;
    let e = lobby
        .matrix_sees(&ping)
        .await
        .context("xmpp mention → matrix")?;
    let alice = lobby.matrix.user_id().to_owned();
    assert!(has_pill(&e, &alice), "a pill for {alice}: {e}");
    let (_, t) = lobby.irc_sees(&ping).await.context("xmpp mention → irc")?;
    assert!(t.contains(&alice_irc), "the IRC nick {alice_irc}: {t:?}");

    // Alice pills the XMPP user's ghost.
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    let pong = unique("pong to xmpp");
    lobby.matrix_pill(&ghost, &pong).await?;
    let x = lobby.xmpp_sees(&pong).await.context("matrix pill → xmpp")?;
    assert!(
        body(&x).is_some_and(|b| b.contains(&lobby.xmpp_nick)),
        "the pill becomes {}: {x:?}",
        lobby.xmpp_nick
    );

    // On IRC, `nick:` naming the XMPP user's puppet reaches XMPP as their nick.
    let (xmpp_puppet, _) = lobby.irc_sees(&ping).await?;
    let hey = unique("hey from irc");
    lobby
        .irc
        .privmsg(&lobby.channel, &format!("{xmpp_puppet}: {hey}"))?;
    let x = lobby.xmpp_sees(&hey).await.context("irc mention → xmpp")?;
    assert!(
        body(&x).is_some_and(|b| b.starts_with(&lobby.xmpp_nick)),
        "the IRC address becomes {}: {x:?}",
        lobby.xmpp_nick
    );
    Ok(())
}

/// Kicks by room moderators in the remaining directions are reported as a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_reflected_in_the_remaining_directions() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Everyone speaks once, so every puppet and ghost exists.
    let m = unique("m speaks");
    lobby.matrix.send_text(&lobby.room, &m).await?;
    let (alice_irc, _) = lobby.irc_sees(&m).await?;
    let x_alice = lobby.xmpp_sees(&m).await?;
    let alice_occupant = from_nick(&x_alice).context("nick")?.to_owned();
    let x = unique("x speaks");
    lobby.xmpp.send_groupchat(&lobby.muc, &x)?;
    let e = lobby.matrix_sees(&x).await?;
    let xmpp_ghost = e["sender"].as_str().context("sender")?.to_owned();
    let (xmpp_irc, _) = lobby.irc_sees(&x).await?;

    // Matrix kicks the XMPP user's ghost → a line on XMPP.
    lobby
        .matrix
        .kick(&lobby.room, &xmpp_ghost, "m kicks x")
        .await?;
    lobby
        .xmpp_line(&["kicked", "m kicks x"])
        .await
        .context("matrix kick → a line on xmpp")?;

    // XMPP's owner kicks Matrix alice's occupant → a line on IRC.
    lobby.xmpp.kick(&lobby.muc, &alice_occupant).await?;
    lobby
        .irc_line(&["kicked", &alice_occupant])
        .await
        .context("xmpp kick → a line on irc")?;

    // IRC's operator kicks the XMPP user's puppet → a line on Matrix.
    lobby.irc.kick(&lobby.channel, &xmpp_irc, "i kicks x")?;
    lobby
        .matrix_line(&["kicked", "i kicks x"])
        .await
        .context("irc kick → a line on matrix")?;
    let _ = alice_irc;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// A busy room: several people's messages sent to Matrix at once.

/// With `[matrix] parallel_senders = 4`, a burst from three IRC users (interleaved, as fast
/// as they can type it) goes to the Matrix room several lines at once and reaches it whole:
/// every line once, each person's lines in the order they were said, and a line said half a
/// second later after all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_senders_keep_each_persons_order() -> anyhow::Result<()> {
    const LINES: usize = 15;
    let lobby = Lobby::start_logged(|c| {
        *c = c.replace("[matrix]\n", "[matrix]\nparallel_senders = 4\n");
        in_gateway(c, LOG_SENT_TOGETHER);
    })
    .await?;
    let tag = unique("par");
    let tag = &tag[tag.len().saturating_sub(5)..];
    let mut people = Vec::new();
    for p in 0..3 {
        let user = junction_testkit::clients::IrcUser::connect(
            lobby.irc_addr,
            &short_nick(&format!("p{tag}{p}")),
        )
        .await?;
        user.join(&lobby.channel).await?;
        // Each person's ghost exists before the burst.
        let hello = unique(&format!("hello {p}"));
        user.privmsg(&lobby.channel, &hello)?;
        lobby
            .matrix_sees(&hello)
            .await
            .context("the ghost's first line")?;
        people.push(user);
    }
    let (bodies, after) = lobby
        .burst_to_matrix(&people, &format!("burst {tag}"), LINES)
        .await?;
    let prefix = format!("burst {tag} ");
    let burst: Vec<(usize, usize)> = bodies
        .iter()
        .filter_map(|b| {
            let (p, i) = b.strip_prefix(&prefix)?.split_once(' ')?;
            Some((p.parse().ok()?, i.parse().ok()?))
        })
        .collect();
    assert_eq!(burst.len(), 3 * LINES, "every line once: {burst:?}");
    for p in 0..3 {
        let said: Vec<usize> = burst
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(said, (0..LINES).collect::<Vec<_>>(), "person {p}'s order");
    }
    let last_burst = bodies
        .iter()
        .rposition(|b| b.starts_with(&prefix))
        .context("the burst")?;
    let after_at = bodies
        .iter()
        .position(|b| b.contains(&after))
        .context("the line after")?;
    assert!(after_at > last_burst, "the line said later comes later");
    assert!(
        lobby.gateway_log().contains(SENT_TOGETHER),
        "some lines were sent together"
    );
    Ok(())
}
