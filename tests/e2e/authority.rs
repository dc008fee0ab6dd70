//! Authority: nobody acts with the gateway's power who does not hold it. Ordinary users
//! without moderator rights try to take back or change what is not theirs, through the real
//! servers, and nothing changes on the other networks; their own deletions still cross.

use crate::lobby::{in_gateway, Lobby};
use anyhow::Context as _;
use junction_testkit::clients::xmpp::{body, from_nick, stanza_id};
use junction_testkit::clients::{MatrixUser, XmppUser};
use junction_testkit::servers::{servers, PrivateServer};
use junction_testkit::{free_port, unique};
use minidom::Element;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// Waits until `/metrics` counts a refused edit or redaction from `network`.
async fn refusal_counted(base: &str, network: &str) -> anyhow::Result<()> {
    let want = format!("junction_errors_total{{network=\"{network}\",kind=\"unauthorised\"}}");
    junction_testkit::eventually(WAIT, "the refusal counted", || {
        let url = format!("{base}/metrics");
        let want = want.clone();
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            text.lines()
                .any(|l| l.starts_with(&want) && !l.ends_with(" 0"))
                .then_some(())
        }
    })
    .await
}

/// True when `r` is a Matrix redaction of `target`.
fn redacts(r: &Value, target: &str) -> bool {
    r["type"] == "m.room.redaction"
        && (r["redacts"].as_str() == Some(target)
            || r["content"]["redacts"].as_str() == Some(target))
}

/// An XMPP occupant with no moderator rights joins the lobby's MUC.
async fn xmpp_participant(lobby: &Lobby) -> anyhow::Result<(XmppUser, String)> {
    let s = servers().await?;
    let user = XmppUser::register(s, &crate::lobby::short_nick(&unique("tr")), "pw-troll").await?;
    let nick = unique("troll");
    user.join_muc(&lobby.muc, &nick).await?;
    Ok((user, nick))
}

/// An XMPP participant retracting a Matrix user's message changes nothing on Matrix (the
/// gateway neither has the ghost try nor redacts with the bot's power), nor on IRC; the
/// refusal is counted. The same participant's retraction of their own message redacts its
/// Matrix copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_retraction_of_someone_elses_message_changes_nothing() -> anyhow::Result<()> {
    let (lobby, base) = Lobby::start_with_metrics("").await?;
    let (troll, troll_nick) = xmpp_participant(&lobby).await?;

    let text = unique("alice keeps this");
    let alice_ev = lobby.matrix.send_text(&lobby.room, &text).await?;
    let copy = troll
        .wait_for(WAIT, |el| body(el).is_some_and(|b| b.contains(&text)))
        .await
        .context("the troll sees alice's message")?;
    let sid = stanza_id(&copy).context("stanza-id of the copy")?;
    troll.send_retraction(&lobby.muc, &sid)?;
    refusal_counted(&base, "xmpp").await?;

    // Their own message: the retraction crosses.
    let own = unique("troll regrets");
    troll.send_groupchat(&lobby.muc, &own)?;
    let mine = troll
        .wait_for(WAIT, |el| {
            from_nick(el) == Some(troll_nick.as_str()) && body(el).is_some_and(|b| b.contains(&own))
        })
        .await?;
    let on_matrix = lobby.matrix_sees(&own).await?;
    lobby.irc_sees(&own).await?;
    let own_id = on_matrix["event_id"]
        .as_str()
        .context("event id")?
        .to_owned();
    troll.send_retraction(&lobby.muc, &stanza_id(&mine).context("own stanza-id")?)?;
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| redacts(r, &own_id))
        .await
        .context("own retraction → matrix redaction")?;

    // The refused retraction came first and was handled first: had it crossed, its
    // redaction would be in the timeline before the one just seen.
    let events = lobby.matrix.events(&lobby.room).await?;
    assert!(
        !events.iter().any(|r| redacts(r, &alice_ev)),
        "alice's message was redacted on behalf of an XMPP participant"
    );
    // Nothing about it on IRC either: alice's line is there once, nothing else names it.
    let said = lobby.irc.privmsgs_in(&lobby.channel);
    assert!(
        said.iter().filter(|(_, t)| t.contains(&text)).count() <= 1,
        "only alice's own line mentions her text on IRC: {said:?}"
    );
    Ok(())
}

/// A Matrix user without power redacting someone else's bridged message changes nothing
/// elsewhere: the homeserver refuses them (and were it to accept, the gateway would not relay
/// it), so the XMPP message is not retracted; their own redaction crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_redaction_without_power_changes_nothing_elsewhere() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let s = servers().await?;
    let bob_name = unique("bob");
    let bob = MatrixUser::register(s, &bob_name, "pw-bob").await?;
    bob.join(&lobby.room).await?;

    let text = unique("xmpp keeps this");
    let original = lobby.xmpp_says(&text).await?;
    let sid = stanza_id(&original).context("stanza-id")?;
    let copy = bob
        .wait_for(&lobby.room, WAIT, |r| {
            r["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(&text))
        })
        .await?;
    let copy_id = copy["event_id"].as_str().context("event id")?.to_owned();
    match bob.redact(&lobby.room, &copy_id, "mine now").await {
        Ok(_) => eprintln!("the homeserver accepted the redaction; the gateway must hold it"),
        Err(e) => eprintln!("the homeserver refused the redaction: {e:#}"),
    }

    let own = unique("bob regrets");
    let own_ev = bob.send_text(&lobby.room, &own).await?;
    let own_copy = lobby.xmpp_sees(&own).await?;
    bob.redact(&lobby.room, &own_ev, "typo").await?;
    lobby
        .xmpp_retracted(&own_copy)
        .await
        .context("bob's own redaction → xmpp retraction")?;
    let retracted = lobby.xmpp.backlog().into_iter().any(|el| {
        el.children().any(|c| {
            (c.name() == "retract" || c.name() == "moderate")
                && (c.attr("id") == Some(sid.as_str()) || c.attr("id") == original.attr("id"))
        })
    });
    assert!(!retracted, "the XMPP message was retracted for bob");
    Ok(())
}

/// A topic set by an XMPP participant the room lets change the subject is not applied with
/// the bot's power on Matrix (nor with the IRC bot's operator status): it arrives as a line
/// saying who set what.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn participant_topic_is_not_set_with_the_gateways_power() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // The room's owner lets occupants change the subject.
    lobby
        .xmpp
        .configure_room(&lobby.muc, "muc#roomconfig_changesubject", "1")
        .await?;
    let (troll, troll_nick) = xmpp_participant(&lobby).await?;
    let topic = unique("troll topic");
    troll.set_subject(&lobby.muc, &topic)?;
    troll
        .wait_for(WAIT, |el| {
            from_nick(el) == Some(troll_nick.as_str())
                && el
                    .children()
                    .any(|c| c.name() == "subject" && c.text() == topic)
        })
        .await
        .context("Prosody let the participant set the subject")?;
    let line = lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| {
            r["type"] == "m.room.message"
                && r["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains(&topic) && b.contains("set the topic"))
        })
        .await
        .context("the topic as a line on Matrix")?;
    assert_eq!(line["content"]["msgtype"], "m.notice", "{line}");
    let events = lobby.matrix.events(&lobby.room).await?;
    assert!(
        !events.iter().any(|r| r["type"] == "m.room.topic"
            && r["content"]["topic"].as_str() == Some(topic.as_str())),
        "the bot set a participant's topic on Matrix"
    );
    lobby
        .irc
        .wait_for(WAIT, |m| match &m.command {
            irc_proto::Command::NOTICE(c, t) | irc_proto::Command::PRIVMSG(c, t) => {
                c.eq_ignore_ascii_case(&lobby.channel) && t.contains(&topic)
            }
            _ => false,
        })
        .await
        .context("the topic as a line on IRC")?;
    assert!(
        !lobby.irc.backlog().iter().any(|m| matches!(
            &m.command,
            irc_proto::Command::TOPIC(c, Some(t)) if c.eq_ignore_ascii_case(&lobby.channel) && t.contains(&topic)
        )),
        "the IRC bot set a participant's topic"
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Moderation (XEP-0425) between Matrix and XMPP.

/// A lobby whose MUC is on a Prosody of the test's own (`PrivateServer`, written by the same
/// config as the shared one: `mod_muc_moderation` from Debian's prosody-modules on the MUC,
/// which offers moderation in the form `urn:xmpp:message-moderate:0`), so what these tests
/// check does not hang on how long the shared server has been running; the gateway serves
/// `/metrics` at the returned base URL. The Prosody lives as long as the value returned.
async fn moderation_lobby() -> anyhow::Result<(PrivateServer, Lobby, String)> {
    let prosody = PrivateServer::prosody().await?;
    let shared = servers().await?;
    let on = prosody.servers(shared);
    let port = free_port()?;
    let lobby = Lobby::start_on_servers(&on, shared.inspircd, |c| {
        in_gateway(c, &format!("metrics = \"127.0.0.1:{port}\""));
    })
    .await?;
    Ok((prosody, lobby, format!("http://127.0.0.1:{port}")))
}

/// The room's announcement (from its bare JID) that the message with stanza-id `sid` was
/// moderated, in either form of XEP-0425; returns its reason.
fn moderation_announced(el: &Element, muc: &str, sid: &str) -> Option<String> {
    if el.name() != "message" || el.attr("from") != Some(muc) {
        return None;
    }
    let reason = |m: &Element| {
        m.children()
            .find(|c| c.name() == "reason")
            .map(Element::text)
            .unwrap_or_default()
    };
    el.children().find_map(|c| match c.name() {
        "apply-to" if c.ns() == "urn:xmpp:fasten:0" && c.attr("id") == Some(sid) => c
            .get_child("moderated", "urn:xmpp:message-moderate:0")
            .filter(|m| m.has_child("retract", "urn:xmpp:message-retract:0"))
            .map(reason),
        "retract" if c.ns() == "urn:xmpp:message-retract:1" && c.attr("id") == Some(sid) => c
            .has_child("moderated", "urn:xmpp:message-moderate:1")
            .then(|| reason(c)),
        _ => None,
    })
}

/// A Matrix moderator (power level above the room's `redact` level) redacting an XMPP
/// user's bridged message moderates it in the MUC: the gateway asks the room in the form
/// the room offers (here `urn:xmpp:message-moderate:0`), and the room announces the
/// retraction, with a reason naming the Matrix moderator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_moderators_redaction_is_moderation_in_the_muc() -> anyhow::Result<()> {
    let (_prosody, lobby, _) = moderation_lobby().await?;
    let text = unique("xmpp says something rude");
    let original = lobby.xmpp_says(&text).await?;
    let sid = stanza_id(&original).context("stanza-id")?;
    let copy = lobby.matrix_sees(&text).await?;
    let copy_id = copy["event_id"].as_str().context("event id")?.to_owned();
    // alice created the Matrix room: power 100, above the redact level.
    lobby.matrix.redact(&lobby.room, &copy_id, "rude").await?;
    let announced = lobby
        .xmpp
        .wait_for(WAIT, |el| {
            moderation_announced(el, &lobby.muc, &sid).is_some()
        })
        .await
        .context("the room announces the moderation")?;
    let reason = moderation_announced(&announced, &lobby.muc, &sid).unwrap_or_default();
    assert!(
        reason.contains(lobby.matrix.user_id()) && reason.contains("rude"),
        "the reason names the Matrix moderator and their reason: {reason:?}"
    );
    Ok(())
}

/// An XMPP moderator moderating (XEP-0425) a Matrix user's bridged message redacts it on
/// Matrix: by the bot, since the moderator's ghost has no power there, with a reason naming
/// the XMPP moderator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_moderation_redacts_on_matrix_by_the_bot_naming_the_moderator() -> anyhow::Result<()> {
    let (_prosody, lobby, _) = moderation_lobby().await?;
    let text = unique("matrix says something rude");
    let ev = lobby.matrix.send_text(&lobby.room, &text).await?;
    let copy = lobby.xmpp_sees(&text).await?;
    let sid = stanza_id(&copy).context("stanza-id of the copy")?;
    // The XMPP user created the MUC: its owner, so a moderator.
    lobby.xmpp.moderate(&lobby.muc, &sid, "off topic").await?;
    let bot = format!("@{}:{}", lobby.slot.bot, lobby.servers.matrix.server_name);
    let redaction = lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| redacts(r, &ev))
        .await
        .context("the moderation → a Matrix redaction")?;
    assert_eq!(
        redaction["sender"].as_str(),
        Some(bot.as_str()),
        "{redaction}"
    );
    let reason = redaction["content"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&lobby.xmpp_nick) && reason.contains("off topic"),
        "the reason names the XMPP moderator and their reason: {reason:?}"
    );
    Ok(())
}

/// A moderation announcement sent by an occupant (only the room may announce one), in
/// either form of XEP-0425, changes nothing on Matrix; the refusal is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderation_forged_by_an_occupant_changes_nothing() -> anyhow::Result<()> {
    let (_prosody, lobby, base) = moderation_lobby().await?;
    let troll = XmppUser::register(
        &lobby.servers,
        &crate::lobby::short_nick(&unique("tr")),
        "pw-troll",
    )
    .await?;
    let troll_nick = unique("troll");
    troll.join_muc(&lobby.muc, &troll_nick).await?;

    let text = unique("alice keeps this");
    let ev = lobby.matrix.send_text(&lobby.room, &text).await?;
    let copy = troll
        .wait_for(WAIT, |el| body(el).is_some_and(|b| b.contains(&text)))
        .await
        .context("the troll sees alice's message")?;
    let sid = stanza_id(&copy).context("stanza-id of the copy")?;
    let by = format!("{}/{}", lobby.muc, lobby.xmpp_nick);
    for forged in [
        format!(
            "<apply-to xmlns='urn:xmpp:fasten:0' id='{sid}'>\
             <moderated xmlns='urn:xmpp:message-moderate:0' by='{by}'>\
             <retract xmlns='urn:xmpp:message-retract:0'/><reason>forged</reason>\
             </moderated></apply-to>"
        ),
        format!(
            "<retract xmlns='urn:xmpp:message-retract:1' id='{sid}'>\
             <moderated xmlns='urn:xmpp:message-moderate:1' by='{by}'/>\
             <reason>forged</reason></retract>"
        ),
    ] {
        let id = troll.next_id();
        troll.send_raw(&format!(
            "<message type='groupchat' to='{}' id='{id}'>{forged}</message>",
            lobby.muc
        ))?;
        troll
            .wait_for(WAIT, |el| {
                from_nick(el) == Some(troll_nick.as_str()) && el.attr("id") == Some(id.as_str())
            })
            .await
            .context("the room passes the forged announcement on")?;
    }
    refusal_counted(&base, "xmpp").await?;
    // What the troll says next crosses: the forgeries before it were handled and refused.
    let after = unique("troll after");
    troll.send_groupchat(&lobby.muc, &after)?;
    lobby.matrix_sees(&after).await?;
    let events = lobby.matrix.events(&lobby.room).await?;
    assert!(
        !events.iter().any(|r| redacts(r, &ev)),
        "alice's message was redacted on a forged moderation"
    );
    Ok(())
}
