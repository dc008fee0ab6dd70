//! The Matrix adapter against a real Synapse: rooms created by alias, ghosts speaking,
//! Matrix users' messages reaching the gateway, and transactions that survive a failed
//! store (Synapse resends them, the gateway sees the event once).

pub(crate) mod rig;

use rig::*;

use junction_core::format::Span;
use junction_core::{
    Event, EventKind, Message, MessageId, NetworkId, RichText, RoomId, RoomRef, Secret, Sender,
    UserRef,
};
use junction_matrix::connection::{Client, Method};
use junction_testkit::servers::{servers, slot};
use junction_testkit::{eventually, unique};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghost_speaks_and_matrix_user_reaches_the_gateway() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    // In the slot's alias namespace: Synapse lets an appservice create only those.
    let alias = alias(servers, &slot, "lobby");
    // The alias was free: the adapter made a public room for it.
    let (mut gw, alice, room_id) = start_in(servers, &slot, &alias, Policy::Store).await?;

    // A message from IRC: Bob's ghost says it in the room.
    let text = unique("hello from irc ");
    let event = irc_message(&text);
    let delivery = delivery(1, &alias, event.clone());
    gw.deliveries.send(delivery.clone()).await?;
    let answer = gw.next_delivered(DEADLINE).await?;
    assert_eq!(answer.outbox_id, 1);
    assert_eq!(answer.event, event.id);
    let ids = answer
        .outcome
        .map_err(|e| anyhow::anyhow!("delivery failed: {e}"))?;
    assert_eq!(ids.len(), 1);

    let ghost = ghost(servers, &slot, "irc_local__bob");
    let seen = eventually(DEADLINE, "alice seeing the ghost's message", || async {
        alice
            .recent(&room_id)
            .await
            .ok()?
            .into_iter()
            .find(|e| e["event_id"].as_str() == Some(ids[0].as_str()))
    })
    .await?;
    assert_eq!(seen["sender"].as_str(), Some(ghost.as_str()));
    assert_eq!(seen["content"]["body"].as_str(), Some(text.as_str()));
    assert_eq!(seen["origin_server_ts"].as_u64(), Some(event.ts_ms));
    let member = alice
        .client
        .state(&room_id, "m.room.member", &ghost)
        .await?
        .ok_or_else(|| anyhow::anyhow!("ghost is not a member"))?;
    assert_eq!(member["displayname"].as_str(), Some("Bob[i]"));

    // The same delivery again (a retry after a restart) makes no second message.
    gw.deliveries.send(delivery).await?;
    let again = gw.next_delivered(DEADLINE).await?;
    assert_eq!(again.outcome, Ok(ids.clone()));

    // Alice speaks: the gateway gets it from the room as written in the link.
    let said = unique("hello from matrix ");
    let event_id = alice.say(&room_id, &said).await?;
    let got = gw
        .wait_body("alice's message at the gateway", &said)
        .await?;
    let (event, _) = got;
    assert_eq!(event.origin, RoomRef::new("matrix", alias.as_str()));
    assert_eq!(event.remote_id, MessageId::new(event_id));
    assert_eq!(event.sender.user, UserRef::new("matrix", alice.id.as_str()));
    // The ghost's own message never came back as an inbound event.
    assert!(gw.seen_with_body(&text).is_empty());

    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_failed_to_store_is_resent_and_arrives_once() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    let alias = alias(servers, &slot, "durable");
    let first = unique("first ");
    let (gw, alice, room_id) =
        start_in(servers, &slot, &alias, Policy::FailOnce(first.clone())).await?;

    alice.say(&room_id, &first).await?;
    gw.wait_body("the failed first attempt", &first).await?;
    // Synapse retries with backoff; a ping makes it retry at once.
    let as_client = Client::new(
        &servers.matrix.url,
        Secret::new(slot.as_token.clone()),
        CancellationToken::new(),
    );
    let _ = as_client.ping(&slot.as_id, &unique("p")).await;
    let second = unique("second ");
    alice.say(&room_id, &second).await?;
    gw.wait_body("the later message", &second).await?;
    // Transactions are answered in order, so the first one was resent and stored before
    // the second arrived: one failed attempt, one stored copy, nothing more.
    let copies = gw.seen_with_body(&first);
    assert_eq!(
        copies.iter().map(|(_, ok)| *ok).collect::<Vec<_>>(),
        vec![false, true],
        "first message attempts"
    );
    assert_eq!(copies[0].0.id, copies[1].0.id);
    assert_eq!(gw.seen_with_body(&second).len(), 1);

    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_edits_reactions_redactions_and_media_both_ways() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    let alias = alias(servers, &slot, "rich");
    let (mut gw, alice, room_id) = start_in(servers, &slot, &alias, Policy::Store).await?;
    let alice_said = alice.say(&room_id, "question?").await?;

    // Bob (IRC) answers alice's message.
    let mut answer = irc_message("answer!");
    let answer_ids = {
        let mut d = delivery(1, &alias, answer.clone());
        d.reply_to = vec![MessageId::new(alice_said.clone())];
        if let EventKind::Message(m) = &mut answer.kind {
            m.reply_to = Some(MessageId::new("irc-original"));
        }
        deliver(&mut gw, d).await?
    };
    let ev = event_of(&alice, &room_id, answer_ids[0].as_str()).await?;
    assert_eq!(
        ev["content"]["m.relates_to"]["m.in_reply_to"]["event_id"].as_str(),
        Some(alice_said.as_str())
    );

    // Bob corrects it.
    let mut edit = delivery(
        2,
        &alias,
        irc_event(EventKind::Edit {
            target: answer.remote_id.clone(),
            body: RichText::plain("better answer!"),
        }),
    );
    edit.target_ids = answer_ids.clone();
    let edit_ids = deliver(&mut gw, edit).await?;
    let ev = event_of(&alice, &room_id, edit_ids[0].as_str()).await?;
    assert_eq!(
        ev["content"]["m.new_content"]["body"].as_str(),
        Some("better answer!")
    );
    assert_eq!(
        ev["content"]["m.relates_to"]["rel_type"].as_str(),
        Some("m.replace")
    );
    assert_eq!(
        ev["content"]["m.relates_to"]["event_id"].as_str(),
        Some(answer_ids[0].as_str())
    );

    // Bob reacts to alice, then takes it back.
    let mut react = delivery(
        3,
        &alias,
        irc_event(EventKind::React {
            target: MessageId::new("x"),
            key: "👍".into(),
        }),
    );
    react.target_ids = vec![MessageId::new(alice_said.clone())];
    let reaction = deliver(&mut gw, react).await?;
    let ev = event_of(&alice, &room_id, reaction[0].as_str()).await?;
    assert_eq!(ev["type"].as_str(), Some("m.reaction"));
    assert_eq!(ev["content"]["m.relates_to"]["key"].as_str(), Some("👍"));
    let mut unreact = delivery(
        4,
        &alias,
        irc_event(EventKind::Unreact {
            target: MessageId::new("x"),
            key: "👍".into(),
        }),
    );
    unreact.target_ids = vec![MessageId::new(alice_said.clone())];
    deliver(&mut gw, unreact).await?;
    let ev = event_of(&alice, &room_id, reaction[0].as_str()).await?;
    assert!(
        ev["unsigned"]["redacted_because"].is_object(),
        "reaction not redacted: {ev}"
    );

    // Bob deletes his answer.
    let mut redact = delivery(
        5,
        &alias,
        irc_event(EventKind::Redact {
            target: answer.remote_id.clone(),
            reason: None,
        }),
    );
    redact.target_ids = answer_ids.clone();
    deliver(&mut gw, redact).await?;
    let ev = event_of(&alice, &room_id, answer_ids[0].as_str()).await?;
    assert!(
        ev["unsigned"]["redacted_because"].is_object(),
        "answer not redacted: {ev}"
    );

    // Bob sends a picture with a caption: uploaded, so Matrix clients show it inline.
    const PNG: &[u8] = b"\x89PNG\r\n\x1a\nnot really a picture";
    let url = serve_file(PNG).await?;
    let mut pic = irc_message("look");
    if let EventKind::Message(m) = &mut pic.kind {
        m.attachments = vec![junction_core::Attachment {
            url,
            name: "cat.png".into(),
            mime: Some("image/png".into()),
            size: Some(PNG.len() as u64),
        }];
    }
    let pic_ids = deliver(&mut gw, delivery(6, &alias, pic)).await?;
    assert_eq!(pic_ids.len(), 2, "text part and picture part");
    let ev = event_of(&alice, &room_id, pic_ids[1].as_str()).await?;
    assert_eq!(ev["content"]["msgtype"].as_str(), Some("m.image"));
    assert!(ev["content"]["url"]
        .as_str()
        .is_some_and(|u| u.starts_with("mxc://")));

    // Alice edits, reacts, deletes: each reaches the gateway in its own kind.
    alice
        .send(
            &room_id,
            "m.room.message",
            json!({
                "msgtype": "m.text", "body": "* question!",
                "m.new_content": {"msgtype": "m.text", "body": "question!"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": alice_said},
            }),
        )
        .await?;
    let reaction_id = alice
        .send(&room_id, "m.reaction", json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": answer_ids[0].as_str(), "key": "🎉"}}))
        .await?;
    alice
        .client
        .redact(&room_id, &reaction_id, &unique("t"), None, None)
        .await?;
    let seen_all = gw.seen.clone();
    let find = move |want: &'static str| {
        let seen = seen_all.clone();
        move || {
            let seen = seen.clone();
            async move {
                seen.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .find(|(e, _)| e.kind.name() == want)
                    .map(|(e, _)| e.kind.clone())
            }
        }
    };
    let edit = eventually(DEADLINE, "alice's edit", find("edit")).await?;
    assert_eq!(
        edit,
        EventKind::Edit {
            target: MessageId::new(alice_said.clone()),
            body: RichText::plain("question!")
        }
    );
    let react = eventually(DEADLINE, "alice's reaction", find("react")).await?;
    assert_eq!(
        react,
        EventKind::React {
            target: answer_ids[0].clone(),
            key: "🎉".into()
        }
    );
    let unreact = eventually(DEADLINE, "alice's reaction withdrawn", find("unreact")).await?;
    assert_eq!(
        unreact,
        EventKind::Unreact {
            target: answer_ids[0].clone(),
            key: "🎉".into()
        }
    );

    // Alice shares a file: the other networks get a signed gateway link that works, and
    // stops working once she deletes it.
    let mxc = alice
        .client
        .upload(bytes_of(b"hello file"), "text/plain", "notes.txt")
        .await?;
    let file_event = alice
        .send(&room_id, "m.room.message", json!({"msgtype": "m.file", "body": "notes.txt", "url": mxc, "info": {"mimetype": "text/plain"}}))
        .await?;
    let link = eventually(DEADLINE, "alice's file at the gateway", || {
        let seen = gw.seen.clone();
        let file_event = file_event.clone();
        async move {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(e, _)| e.remote_id.as_str() == file_event)
                .and_then(|(e, _)| match &e.kind {
                    EventKind::Message(m) => m.attachments.first().map(|a| a.url.clone()),
                    _ => None,
                })
        }
    })
    .await?;
    let (status, body) = http_get(&link).await?;
    assert_eq!((status, body.as_slice()), (200, &b"hello file"[..]));
    let (status, _) = http_get(&link.replace("sig=", "sig=00")).await?;
    assert_eq!(status, 403);
    alice
        .client
        .redact(&room_id, &file_event, &unique("t"), None, None)
        .await?;
    eventually(DEADLINE, "the file link withdrawn", || {
        let link = link.clone();
        async move { matches!(http_get(&link).await, Ok((410, _))).then_some(()) }
    })
    .await?;

    // Bob, a channel operator, sets the topic (his ghost lacks the power level, so the bot
    // sets it for him), changes his nick, and leaves.
    deliver(
        &mut gw,
        delivery(
            7,
            &alias,
            irc_event(EventKind::Topic {
                text: "lobby rules".into(),
            })
            .moderated(true),
        ),
    )
    .await?;
    let topic = alice.client.state(&room_id, "m.room.topic", "").await?;
    assert_eq!(
        topic.as_ref().and_then(|t| t["topic"].as_str()),
        Some("lobby rules")
    );
    deliver(
        &mut gw,
        delivery(
            8,
            &alias,
            irc_event(EventKind::NickChange {
                new_name: "Robert".into(),
            }),
        ),
    )
    .await?;
    let ghost = ghost(servers, &slot, "irc_local__bob");
    eventually(DEADLINE, "the ghost's new display name", || async {
        let m = alice
            .client
            .state(&room_id, "m.room.member", &ghost)
            .await
            .ok()??;
        (m["displayname"].as_str() == Some("Robert[i]")).then_some(())
    })
    .await?;
    deliver(
        &mut gw,
        delivery(
            9,
            &alias,
            irc_event(EventKind::Leave {
                reason: None,
                quit: true,
            }),
        ),
    )
    .await?;
    let m = alice
        .client
        .state(&room_id, "m.room.member", &ghost)
        .await?;
    assert_eq!(
        m.as_ref().and_then(|m| m["membership"].as_str()),
        Some("leave")
    );

    // Alice renames herself: the gateway hears a nick change.
    alice
        .client
        .set_displayname(&alice.id, "Alice Liddell")
        .await?;
    let nick = eventually(DEADLINE, "alice's nick change", find("nick")).await?;
    assert_eq!(
        nick,
        EventKind::NickChange {
            new_name: "Alice Liddell".into()
        }
    );

    gw.stop().await;
    Ok(())
}

/// The formatted-message and commands scenario: bold both ways through the core converters,
/// a direct chat with the bot as the command line, ghosts joining, leaving and renaming,
/// and an admin's ban carried out by the bot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatting_commands_membership_and_enforcement() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    // An ordinary alias in the slot's non-exclusive namespace (as `#lobby` is for the demo).
    let alias = format!(
        "#jt{}_{}:{}",
        slot.index,
        unique("fmt"),
        servers.matrix.server_name
    );
    // Alice is an admin: the bot accepts her invite to a direct chat below.
    let alice = User::new(servers).await?;
    let mut gw = start_with_admins(
        servers,
        &slot,
        vec![RoomId::new(alias.clone())],
        Policy::Store,
        vec![alice.id.clone()],
    );
    let room_id = join_by_alias(&alice, &alias).await?;
    gw.connected(DEADLINE).await?;

    // Alice writes bold: it arrives as rich text with bold, not as markup.
    let marker = unique("fmt");
    alice
        .say_html(
            &room_id,
            &format!("{marker} **loud**"),
            &format!("{marker} <strong>loud</strong><script>x</script>"),
        )
        .await?;
    let spans = gw
        .wait_spans("alice's formatted message", &format!("{marker} loud"))
        .await?;
    assert_eq!(
        spans,
        vec![
            Span::Text(format!("{marker} ")),
            Span::Bold(vec![Span::Text("loud".into())])
        ]
    );

    // Bob (IRC) writes bold: Matrix gets a formatted_body from the core renderer.
    let mut bold = irc_message("");
    bold.kind = EventKind::Message(Message {
        body: RichText {
            spans: vec![
                Span::Text("see <b>".into()),
                Span::Bold(vec![Span::Text("this".into())]),
            ],
        },
        ..Message::default()
    });
    let ids = deliver(&mut gw, delivery(1, &alias, bold)).await?;
    let seen = event_of(&alice, &room_id, ids[0].as_str()).await?;
    assert_eq!(seen["content"]["body"], "see <b>this");
    assert_eq!(seen["content"]["format"], "org.matrix.custom.html");
    assert_eq!(
        seen["content"]["formatted_body"],
        "see &lt;b&gt;<strong>this</strong>"
    );

    // Pills: alice's pill to Bob's ghost names Bob of IRC; Bob named by IRC becomes a pill.
    let bob_ghost = ghost(servers, &slot, "irc_local__bob");
    let marker = unique("pill");
    alice
        .say_html(
            &room_id,
            &format!("Bob: {marker}"),
            &format!("<a href=\"https://matrix.to/#/{bob_ghost}\">Bob</a>: {marker}"),
        )
        .await?;
    let spans = gw
        .wait_spans("alice's pill", &format!("Bob: {marker}"))
        .await?;
    assert_eq!(
        spans[0],
        Span::Mention {
            user: Some(UserRef::new("irc:local", "Bob")),
            name: "Bob".into()
        }
    );
    let mut mention = irc_message("");
    mention.kind = EventKind::Message(Message {
        body: RichText {
            spans: vec![
                Span::Mention {
                    user: Some(UserRef::new("irc:local", "Bob")),
                    name: "Bob".into(),
                },
                Span::Text(": hi".into()),
            ],
        },
        ..Message::default()
    });
    let ids = deliver(&mut gw, delivery(7, &alias, mention)).await?;
    let seen = event_of(&alice, &room_id, ids[0].as_str()).await?;
    assert_eq!(
        seen["content"]["formatted_body"],
        format!("<a href=\"https://matrix.to/#/{bob_ghost}\">Bob</a>: hi")
    );
    assert_eq!(
        seen["content"]["m.mentions"]["user_ids"],
        json!([bob_ghost])
    );

    // Carol (IRC) joins: her ghost joins. She renames herself, then leaves.
    let carol = Sender::new(UserRef::new("irc:local", "carol"), "carol");
    let carol_ghost = ghost(servers, &slot, "irc_local_carol");
    let mut join = irc_event(EventKind::Join);
    join.sender = carol.clone();
    assert!(deliver(&mut gw, delivery(2, &alias, join))
        .await?
        .is_empty());
    let m = membership(&alice, &room_id, &carol_ghost)
        .await
        .ok_or_else(|| anyhow::anyhow!("carol's ghost is not a member"))?;
    assert_eq!(m["membership"], "join");
    assert_eq!(m["displayname"], "carol[i]");
    let mut nick = irc_event(EventKind::NickChange {
        new_name: "Caroline".into(),
    });
    nick.sender = carol.clone();
    deliver(&mut gw, delivery(3, &alias, nick)).await?;
    eventually(DEADLINE, "carol's ghost renamed", || async {
        (membership(&alice, &room_id, &carol_ghost).await?["displayname"] == "Caroline[i]")
            .then_some(())
    })
    .await?;
    let mut leave = irc_event(EventKind::Leave {
        reason: Some("bye".into()),
        quit: false,
    });
    leave.sender = Sender::new(carol.user.clone(), "Caroline");
    deliver(&mut gw, delivery(4, &alias, leave)).await?;
    let m = membership(&alice, &room_id, &carol_ghost).await;
    assert_eq!(
        m.as_ref().and_then(|m| m["membership"].as_str()),
        Some("leave")
    );

    // A direct chat with the bot is a command line.
    let bot = format!("@{}:{}", slot.bot, servers.matrix.server_name);
    let dm = alice
        .client
        .request(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            &[],
            Some(json!({"preset": "trusted_private_chat", "is_direct": true, "invite": [bot]})),
        )
        .await?;
    let dm = dm["room_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("createRoom: {dm}"))?
        .to_owned();
    eventually(DEADLINE, "the bot accepting the invite", || async {
        let m = alice
            .client
            .state(&dm, "m.room.member", &bot)
            .await
            .ok()??;
        (m["membership"] == "join").then_some(())
    })
    .await?;
    alice.say(&dm, "status").await?;
    let command = tokio::time::timeout(DEADLINE, gw.commands.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no command"))?;
    assert_eq!(command.text, "status");
    assert_eq!(
        command.from,
        vec![UserRef::new("matrix", alice.id.as_str())]
    );
    let answer = unique("all linked ");
    let _ = command.reply.send(format!("{answer}\nsecond line"));
    let notice = eventually(DEADLINE, "the bot's answer in the direct chat", || async {
        alice.recent(&dm).await.ok()?.into_iter().find(|e| {
            e["sender"].as_str() == Some(bot.as_str())
                && e["content"]["msgtype"] == "m.notice"
                && e["content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.starts_with(&answer))
        })
    })
    .await?;
    assert_eq!(
        notice["content"]["body"].as_str(),
        Some(format!("{answer}\nsecond line").as_str())
    );
    // The command is no message of the lobby.
    assert!(gw.seen_with_body("status").is_empty());

    // The gateway speaks as the bot, in notices, and bans alice when an admin says so.
    let now = irc_message("").ts_ms;
    let gateway = Sender::new(UserRef::new(NetworkId::gateway(), "admin"), "Junction");
    let announce = Event::new(
        RoomRef::new(NetworkId::gateway(), "admin"),
        MessageId::new(unique("g")),
        gateway.clone(),
        now,
        EventKind::Message(Message {
            body: RichText::plain("maintenance at noon"),
            ..Message::default()
        }),
    );
    let ids = deliver(&mut gw, delivery(5, &alias, announce)).await?;
    let seen = event_of(&alice, &room_id, ids[0].as_str()).await?;
    assert_eq!(seen["sender"].as_str(), Some(bot.as_str()));
    assert_eq!(seen["content"]["msgtype"], "m.notice");
    let ban = Event::new(
        RoomRef::new(NetworkId::gateway(), "admin"),
        MessageId::new(unique("g")),
        gateway,
        now,
        EventKind::Ban {
            target: Sender::new(UserRef::new("matrix", alice.id.as_str()), "alice"),
            reason: Some("spam".into()),
        },
    );
    deliver(&mut gw, delivery(6, &alias, ban)).await?;
    let m = alice
        .client
        .state(&room_id, "m.room.member", &alice.id)
        .await;
    // Alice can no longer read the room's state; the bot can.
    let as_bot = Client::new(
        &servers.matrix.url,
        Secret::new(slot.as_token.clone()),
        CancellationToken::new(),
    );
    let m = match m {
        Ok(Some(m)) if m["membership"] == "ban" => m,
        _ => as_bot
            .state(&room_id, "m.room.member", &alice.id)
            .await?
            .ok_or_else(|| anyhow::anyhow!("no membership for alice"))?,
    };
    assert_eq!(m["membership"], "ban");
    assert_eq!(m["reason"], "spam");

    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_unanswered_when_the_gateway_dies_arrives_after_restart() -> anyhow::Result<()>
{
    let servers = servers().await?;
    let slot = slot().await?;
    let alias = alias(servers, &slot, "restart");
    let lost = unique("said while dying ");
    // The first gateway never stores this message: it "dies" before acknowledging.
    let (gw, alice, room_id) =
        start_in(servers, &slot, &alias, Policy::DieAt(lost.clone())).await?;
    alice.say(&room_id, &lost).await?;
    gw.wait_body("the message at the dying gateway", &lost)
        .await?;
    let first_copies = gw.seen_with_body(&lost);
    gw.stop().await;

    // A new gateway on the same appservice: Synapse resends the unanswered transaction.
    let gw = start(
        servers,
        &slot,
        vec![RoomId::new(alias.clone())],
        Policy::Store,
    );
    let (event, stored) = gw.wait_body("the message after the restart", &lost).await?;
    assert!(stored);
    assert_eq!(event.origin, RoomRef::new("matrix", alias.as_str()));
    assert!(first_copies.iter().all(|(_, stored)| !stored));
    assert_eq!(first_copies[0].0.id, event.id);
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_rooms_are_refused() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    let alice = User::new(servers).await?;
    let created = alice
        .client
        .request(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            &[],
            Some(json!({
                "preset": "public_chat",
                "initial_state": [{
                    "type": "m.room.encryption", "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"}
                }]
            })),
        )
        .await?;
    let room_id = created["room_id"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("createRoom: {created}"))?
        .to_owned();
    let mut gw = start(
        servers,
        &slot,
        vec![RoomId::new(room_id.clone())],
        Policy::Store,
    );
    gw.deliveries
        .send(delivery(1, &room_id, irc_message("secret?")))
        .await?;
    let answer = gw.next_delivered(DEADLINE).await?;
    let why = answer.outcome.err().unwrap_or_default();
    assert!(why.contains("not linked"), "{why}");
    gw.stop().await;
    Ok(())
}
