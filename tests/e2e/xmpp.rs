//! The XMPP adapter against a real Prosody: a puppet joins and speaks for a
//! remote sender, and an XMPP user's message reaches the gateway once (read
//! from the listener's copy only, not once per puppet).

use anyhow::Context;
use junction_core::{
    Delivered, Delivery, EventKind, MessageId, MessageKind, NetworkId, RichText, RoomId, RoomRef,
    Secret, Sender, UserRef,
};
use junction_store::{MemStore, Store};
use junction_testkit::clients::xmpp::{body, from_nick, is_groupchat_from, is_leaving, muc_status};
use junction_testkit::clients::XmppUser;
use junction_testkit::servers::{servers, slot, Servers, Slot};
use junction_testkit::{eventually, person, said, solo_on, unique, Inbox, Solo};
use junction_xmpp::{XmppAdapter, XmppConfig};
use std::sync::Arc;
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(60);

/// Outbox row `outbox_id` for `room`: `text` said by `sender`.
fn delivery(outbox_id: u64, room: &str, sender: &Sender, text: &str) -> Delivery {
    junction_testkit::delivery(
        outbox_id,
        RoomRef::new("xmpp", room),
        sender,
        said(MessageKind::Text, text),
    )
}

/// `name` on Matrix, shown as `name`.
fn matrix_user(name: &str) -> Sender {
    person("matrix", name)
}

/// The adapter for `slot`'s component on the shared Prosody.
fn adapter(s: &Servers, slot: &Slot, origin_marks: bool) -> XmppAdapter {
    XmppAdapter::new(XmppConfig {
        component: slot.component.clone(),
        server: s.xmpp.component.to_string(),
        secret: Secret::new(slot.component_secret.clone()),
        origin_marks,
    })
}

/// Starts `adapter` linked to `room`, keeping state in `store` (through the adapter's handle
/// on it); its inbound events are kept, and acknowledged as durable as the gateway would.
fn start_on(adapter: XmppAdapter, room: &str, store: Arc<dyn Store>) -> (Solo, Inbox) {
    junction_testkit::test_log("junction_xmpp=info");
    let mut run = solo_on(
        adapter,
        store,
        NetworkId::new("xmpp"),
        vec![RoomId::new(room)],
    );
    let seen = run.inbox();
    (run, seen)
}

/// [`start_on`] for the adapter of `slot` with origin marks, on a store of its own.
fn start(s: &Servers, slot: &Slot, room: &str) -> (Solo, Inbox) {
    start_on(adapter(s, slot, true), room, Arc::new(MemStore::new()))
}

/// Waits for the answers to the outbox rows `ids`, in that order.
async fn answers(run: &mut Solo, ids: &[u64]) -> anyhow::Result<Vec<Delivered>> {
    let mut out = Vec::new();
    for &want in ids {
        let d = run.next_delivered(DEADLINE).await?;
        assert_eq!(d.outbox_id, want);
        out.push(d);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppet_speaks_and_xmpp_users_message_arrives_once() -> anyhow::Result<()> {
    let s = servers().await?;
    let slot = slot().await?;
    let room = format!("{}@{}", unique("xlobby"), s.xmpp.muc);
    let (mut run, seen) = start(s, &slot, &room);

    // Two puppets speak, so the room holds several of our occupants.
    let alice = matrix_user("alice");
    let carol = matrix_user("carol");
    run.deliveries
        .send(delivery(1, &room, &alice, "hello from matrix"))
        .await?;
    run.deliveries
        .send(delivery(2, &room, &carol, "me too"))
        .await?;
    for d in answers(&mut run, &[1, 2]).await? {
        assert!(d.outcome.is_ok(), "{:?}", d.outcome);
    }

    let user = unique("xu");
    let bob = XmppUser::register(s, &user, "pw").await?;
    bob.join_muc(&room, &user).await?;
    // History may replay the puppet's message; a live resend proves the puppet is present.
    run.deliveries
        .send(delivery(3, &room, &alice, "live line"))
        .await?;
    bob.wait_for(DEADLINE, |el| {
        is_groupchat_from(el, &room)
            && from_nick(el) == Some("alice[m]")
            && body(el).as_deref() == Some("live line")
    })
    .await?;

    seen.wait_joins(DEADLINE, &user, 1).await?;
    bob.send_groupchat(&room, "hi from xmpp")?;
    seen.wait_message(DEADLINE, "hi from xmpp").await?;
    // A later message from the same user marks the end of the first one's copies.
    bob.send_groupchat(&room, "second")?;
    seen.wait_message(DEADLINE, "second").await?;
    assert_eq!(
        seen.messages("hi from xmpp"),
        1,
        "one event, not one per puppet"
    );
    assert_eq!(
        seen.messages("live line"),
        0,
        "our puppets' messages are not bridged back"
    );

    let _ = run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edit_becomes_a_correction_and_redact_a_retraction() -> anyhow::Result<()> {
    let s = servers().await?;
    let slot = slot().await?;
    let room = format!("{}@{}", unique("xedit"), s.xmpp.muc);
    let (mut run, _seen) = start(s, &slot, &room);

    let user = unique("xe");
    let bob = XmppUser::register(s, &user, "pw").await?;
    let alice = matrix_user("alice");
    run.deliveries
        .send(delivery(1, &room, &alice, "typo here"))
        .await?;
    let d = run.next_delivered(DEADLINE).await?;
    let ids = d.outcome.map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(ids.len(), 1);
    bob.join_muc(&room, &user).await?;

    let mut edit = delivery(2, &room, &alice, "");
    edit.event.kind = EventKind::Edit {
        target: MessageId::new("$e1"),
        body: RichText::plain("fixed here"),
    };
    edit.target_ids = ids.clone();
    run.deliveries.send(edit).await?;
    let corr = bob
        .wait_for(DEADLINE, |el| {
            is_groupchat_from(el, &room) && body(el).as_deref() == Some("fixed here")
        })
        .await?;
    let replaced = corr
        .get_child("replace", "urn:xmpp:message-correct:0")
        .and_then(|r| r.attr("id"))
        .map(str::to_owned)
        .unwrap_or_default();
    // A correction names the puppet's own message id, not the room's stanza-id
    // the delivery was answered with.
    assert!(replaced.starts_with("jx-"), "{replaced}");
    assert_ne!(replaced, ids[0].as_str());

    let mut redact = delivery(3, &room, &alice, "");
    redact.event.kind = EventKind::Redact {
        target: MessageId::new("$e1"),
        reason: None,
    };
    redact.target_ids = ids.clone();
    run.deliveries.send(redact).await?;
    let retract = bob
        .wait_for(DEADLINE, |el| {
            is_groupchat_from(el, &room)
                && el
                    .get_child("retract", "urn:xmpp:message-retract:1")
                    .is_some()
        })
        .await?;
    let target = retract
        .get_child("retract", "urn:xmpp:message-retract:1")
        .and_then(|r| r.attr("id"))
        .map(str::to_owned);
    assert!(target.is_some());
    for d in answers(&mut run, &[2, 3]).await? {
        assert!(d.outcome.is_ok(), "{:?}", d.outcome);
    }
    let _ = run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_dropped_connection_the_adapter_rejoins_and_delivers() -> anyhow::Result<()> {
    let s = servers().await?;
    let slot = slot().await?;
    let room = format!("{}@{}", unique("xrec"), s.xmpp.muc);
    let adapter = adapter(s, &slot, true);
    let reconnect = adapter.reconnect_handle();
    let sessions = adapter.sessions();
    let (mut run, seen) = start_on(adapter, &room, Arc::new(MemStore::new()));

    let user = unique("xr");
    let bob = XmppUser::register(s, &user, "pw").await?;
    let alice = matrix_user("alice");
    run.deliveries
        .send(delivery(1, &room, &alice, "before"))
        .await?;
    let d = run.next_delivered(DEADLINE).await?;
    assert!(d.outcome.is_ok(), "{:?}", d.outcome);
    bob.join_muc(&room, &user).await?;

    reconnect.notify_one();
    eventually(DEADLINE, "a second component session", || {
        let n = sessions.load(std::sync::atomic::Ordering::Relaxed);
        async move { (n >= 2).then_some(()) }
    })
    .await?;
    run.deliveries
        .send(delivery(2, &room, &alice, "after reconnect"))
        .await?;
    bob.wait_for(DEADLINE, |el| {
        is_groupchat_from(el, &room)
            && from_nick(el) == Some("alice[m]")
            && body(el).as_deref() == Some("after reconnect")
    })
    .await?;
    // The listener is back too: the XMPP user's message reaches the gateway.
    bob.send_groupchat(&room, "still there?")?;
    seen.wait_message(DEADLINE, "still there?").await?;
    let _ = run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_nick_makes_the_puppet_join_with_a_suffix() -> anyhow::Result<()> {
    let s = servers().await?;
    let slot = slot().await?;
    let room = format!("{}@{}", unique("xnick"), s.xmpp.muc);
    // Marks off: the bare name first, the mark only once it is taken.
    let (mut run, _seen) = start_on(adapter(s, &slot, false), &room, Arc::new(MemStore::new()));

    let user = unique("xn");
    let bob = XmppUser::register(s, &user, "pw").await?;
    bob.join_muc(&room, "dave").await?;
    let dave = matrix_user("dave");
    run.deliveries
        .send(delivery(1, &room, &dave, "first"))
        .await?;
    let joined = format!("{room}/dave[m]");
    bob.wait_for(DEADLINE, |el| {
        el.name() == "presence" && el.attr("from") == Some(joined.as_str())
    })
    .await?;
    run.deliveries
        .send(delivery(2, &room, &dave, "as dave[m]"))
        .await?;
    bob.wait_for(DEADLINE, |el| {
        is_groupchat_from(el, &room)
            && from_nick(el) == Some("dave[m]")
            && body(el).as_deref() == Some("as dave[m]")
    })
    .await?;
    answers(&mut run, &[1, 2]).await?;
    let _ = run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_to_the_component_is_a_command_and_its_reply_comes_back() -> anyhow::Result<()> {
    let s = servers().await?;
    let slot = slot().await?;
    let room = format!("{}@{}", unique("xcmd"), s.xmpp.muc);
    let (mut run, _seen) = start(s, &slot, &room);
    run.connected(DEADLINE).await?;
    let user = unique("xc");
    let bob = XmppUser::register(s, &user, "pw").await?;
    bob.send_raw(&format!(
        "<message type='chat' to='{}' id='c1'><body>status</body></message>",
        slot.component
    ))?;
    let cmd = tokio::time::timeout(DEADLINE, run.commands.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no command"))?;
    assert_eq!(cmd.text, "status");
    assert_eq!(
        cmd.from,
        vec![UserRef::new("xmpp", bob.bare_jid().to_lowercase())]
    );
    let _ = cmd.reply.send("all rooms linked\nsecond line".into());
    let component = slot.component.clone();
    bob.wait_for(DEADLINE, |el| {
        el.name() == "message"
            && el.attr("type") == Some("chat")
            && el.attr("from").is_some_and(|f| f.starts_with(&component))
            && body(el).as_deref() == Some("all rooms linked\nsecond line")
    })
    .await?;
    let _ = run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_is_the_rooms_stanza_id_and_styling_crosses_both_ways() -> anyhow::Result<()> {
    use junction_core::format::Span;
    let s = servers().await?;
    let slot = slot().await?;
    let room = format!("{}@{}", unique("xsid"), s.xmpp.muc);
    let (mut run, seen) = start(s, &slot, &room);
    let user = unique("xs");
    let bob = XmppUser::register(s, &user, "pw").await?;
    bob.join_muc(&room, &user).await?;
    let alice = matrix_user("alice");
    let mut d = delivery(1, &room, &alice, "");
    if let EventKind::Message(m) = &mut d.event.kind {
        m.body = RichText {
            spans: vec![
                Span::Bold(vec![Span::Text("loud".into())]),
                Span::Text(" words".into()),
            ],
        };
    }
    run.deliveries.send(d).await?;
    let done = run.next_delivered(DEADLINE).await?;
    let ids = done.outcome.map_err(|e| anyhow::anyhow!(e))?;
    let el = bob
        .wait_for(DEADLINE, |el| {
            is_groupchat_from(el, &room) && body(el).as_deref() == Some("*loud* words")
        })
        .await?;
    let sid = junction_testkit::clients::xmpp::stanza_id(&el);
    assert_eq!(ids.len(), 1);
    assert_eq!(
        Some(ids[0].as_str().to_owned()),
        sid,
        "Delivered carries the MUC stanza-id"
    );

    bob.send_groupchat(&room, "*bold* move")?;
    let e = seen.wait_message(DEADLINE, "bold move").await?;
    match e.kind {
        EventKind::Message(m) => assert_eq!(
            m.body.spans,
            vec![
                Span::Bold(vec![Span::Text("bold".into())]),
                Span::Text(" move".into())
            ]
        ),
        other => anyhow::bail!("not a message: {other:?}"),
    }
    let _ = run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_while_the_adapter_was_stopped_arrive_once_after_it_starts(
) -> anyhow::Result<()> {
    let s = servers().await?;
    let slot = slot().await?;
    let room = format!("{}@{}", unique("xmam"), s.xmpp.muc);
    let store = Arc::new(MemStore::new());
    let rref = RoomRef::new("xmpp", room.as_str());
    let (run, seen) = start_on(adapter(s, &slot, true), &room, store.clone());
    let user = unique("xm");
    let bob = XmppUser::register(s, &user, "pw").await?;
    bob.join_muc(&room, &user).await?;
    bob.send_groupchat(&room, "before the stop")?;
    seen.wait_message(DEADLINE, "before the stop").await?;
    // The cursor passes the message once it is durable.
    let first = bob
        .wait_for(DEADLINE, |el| {
            is_groupchat_from(el, &room) && body(el).as_deref() == Some("before the stop")
        })
        .await?;
    let sid = junction_testkit::clients::xmpp::stanza_id(&first);
    eventually(DEADLINE, "the cursor at the first message", || {
        let c = junction_store::Store::cursor(store.as_ref(), &rref)
            .ok()
            .flatten();
        let want = sid.clone();
        async move { (c.is_some() && c == want).then_some(()) }
    })
    .await?;
    let _ = run.stop().await;

    bob.send_groupchat(&room, "while away 1")?;
    bob.send_groupchat(&room, "while away 2")?;
    bob.wait_for(DEADLINE, |el| {
        is_groupchat_from(el, &room) && body(el).as_deref() == Some("while away 2")
    })
    .await?;

    let (run, seen) = start_on(adapter(s, &slot, true), &room, store.clone());
    seen.wait_message(DEADLINE, "while away 1").await?;
    seen.wait_message(DEADLINE, "while away 2").await?;
    bob.send_groupchat(&room, "after the start")?;
    seen.wait_message(DEADLINE, "after the start").await?;
    assert_eq!(seen.messages("while away 1"), 1);
    assert_eq!(seen.messages("while away 2"), 1);
    assert_eq!(seen.messages("before the stop"), 0, "not bridged twice");
    let order: Vec<String> = seen
        .events()
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::Message(m) => Some(m.body.to_plain()),
            _ => None,
        })
        .collect();
    assert_eq!(
        order,
        vec!["while away 1", "while away 2", "after the start"]
    );
    let _ = run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_kicks_and_bans_are_enforced_where_the_listener_has_rights() -> anyhow::Result<()> {
    let s = servers().await?;
    let slot = slot().await?;
    // The listener creates this room, so it owns it.
    let room = format!("{}@{}", unique("xmod"), s.xmpp.muc);
    let (mut run, seen) = start(s, &slot, &room);
    run.connected(DEADLINE).await?;
    let user = unique("xk");
    let bob = XmppUser::register(s, &user, "pw").await?;
    bob.join_muc(&room, &user).await?;
    seen.wait_joins(DEADLINE, &user, 1).await?;
    let gateway = Sender::new(
        UserRef::new(NetworkId::gateway().as_str(), "admin"),
        "gateway",
    );
    let bob_ref = Sender::new(UserRef::new("xmpp", bob.bare_jid()), user.clone());

    // A gateway notice comes from the listener.
    run.deliveries
        .send(delivery(1, &room, &gateway, "maintenance at noon"))
        .await?;
    bob.wait_for(DEADLINE, |el| {
        is_groupchat_from(el, &room)
            && from_nick(el) == Some("junction")
            && body(el).as_deref() == Some("maintenance at noon")
    })
    .await
    .context("wait 1")?;
    assert!(run.next_delivered(DEADLINE).await?.outcome.is_ok());

    // An ordinary user's kick elsewhere is reflected as a notice line.
    let alice = matrix_user("alice");
    let mut k = delivery(2, &room, &alice, "");
    k.event.kind = EventKind::Kick {
        target: matrix_user("carol"),
        reason: Some("off topic".into()),
    };
    run.deliveries.send(k).await?;
    bob.wait_for(DEADLINE, |el| {
        is_groupchat_from(el, &room)
            && from_nick(el) == Some("junction")
            && body(el).as_deref() == Some("alice kicked carol (off topic)")
    })
    .await
    .context("wait 2")?;
    assert!(run.next_delivered(DEADLINE).await?.outcome.is_ok());

    // The gateway's kick of an XMPP user is carried out.
    let mut k = delivery(3, &room, &gateway, "");
    k.event.kind = EventKind::Kick {
        target: bob_ref.clone(),
        reason: Some("spam".into()),
    };
    run.deliveries.send(k).await?;
    let me = format!("{room}/{user}");
    bob.wait_for(DEADLINE, |el| is_leaving(el, &me) && muc_status(el, "307"))
        .await
        .context("wait 3")?;
    let d = run.next_delivered(DEADLINE).await?;
    assert_eq!(d.outbox_id, 3);
    assert!(d.outcome.is_ok(), "{:?}", d.outcome);

    // And the ban, once bob is back (the gateway sees his second join).
    bob.join_muc(&room, &user).await?;
    seen.wait_joins(DEADLINE, &user, 2).await?;
    let mut b = delivery(4, &room, &gateway, "");
    b.event.kind = EventKind::Ban {
        target: bob_ref.clone(),
        reason: None,
    };
    run.deliveries.send(b).await?;
    bob.wait_for(DEADLINE, |el| is_leaving(el, &me) && muc_status(el, "301"))
        .await
        .context("wait 4")?;
    let d = run.next_delivered(DEADLINE).await?;
    assert!(d.outcome.is_ok(), "{:?}", d.outcome);
    let _ = run.stop().await;

    // In a room someone else created the listener has no rights: the answer says so.
    let other = format!("{}@{}", unique("xnomod"), s.xmpp.muc);
    let carol = XmppUser::register(s, &unique("xo"), "pw").await?;
    carol.join_muc(&other, "carol").await?;
    // One slot at a time, so parallel tests never wait on each other's.
    drop(slot);
    let slot2 = junction_testkit::servers::slot().await?;
    let (mut run, _seen) = start(s, &slot2, &other);
    run.connected(DEADLINE).await?;
    let mut k = delivery(1, &other, &gateway, "");
    k.event.kind = EventKind::Kick {
        target: Sender::new(UserRef::new("xmpp", carol.bare_jid()), "carol"),
        reason: None,
    };
    run.deliveries.send(k).await?;
    let d = run.next_delivered(DEADLINE).await?;
    let err = d.outcome.err().unwrap_or_default();
    assert!(err.contains("not a moderator"), "{err}");
    let _ = run.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_handed_out_again_after_a_restart_is_not_doubled() -> anyhow::Result<()> {
    let s = servers().await?;
    let slot = slot().await?;
    let room = format!("{}@{}", unique("xdup"), s.xmpp.muc);
    let store = Arc::new(MemStore::new());
    let user = unique("xd");
    let bob = XmppUser::register(s, &user, "pw").await?;
    let (mut run, _seen) = start_on(adapter(s, &slot, true), &room, store.clone());
    run.connected(DEADLINE).await?;
    bob.join_muc(&room, &user).await?;
    let alice = matrix_user("alice");
    let d = delivery(1, &room, &alice, "only once");
    run.deliveries.send(d.clone()).await?;
    let first = run
        .next_delivered(DEADLINE)
        .await?
        .outcome
        .map_err(|e| anyhow::anyhow!(e))?;
    let _ = run.stop().await;

    // The gateway lost the answer and hands the same outbox row out again.
    let (mut run, _seen) = start_on(adapter(s, &slot, true), &room, store.clone());
    run.deliveries.send(d).await?;
    let again = run
        .next_delivered(DEADLINE)
        .await?
        .outcome
        .map_err(|e| anyhow::anyhow!(e))?;
    assert_eq!(first, again, "the same stanza-id");
    run.deliveries
        .send(delivery(2, &room, &alice, "marker"))
        .await?;
    bob.wait_for(DEADLINE, |el| {
        is_groupchat_from(el, &room) && body(el).as_deref() == Some("marker")
    })
    .await?;
    let copies = bob
        .backlog()
        .iter()
        .filter(|el| is_groupchat_from(el, &room) && body(el).as_deref() == Some("only once"))
        .count();
    assert_eq!(copies, 1);
    let _ = run.stop().await;
    Ok(())
}
