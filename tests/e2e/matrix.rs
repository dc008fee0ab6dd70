//! The Matrix adapter against a real Synapse: rooms created by alias, ghosts speaking,
//! Matrix users' messages reaching the gateway, and transactions that survive a failed
//! store (Synapse resends them, the gateway sees the event once).

use junction_core::format::Span;
use junction_core::{
    Delivery, Event, EventKind, Message, MessageId, NetworkId, RichText, RoomId, RoomRef, Secret,
    Sender, UserRef,
};
use junction_matrix::config::MatrixConfig;
use junction_matrix::connection::{Client, Method};
use junction_matrix::MatrixAdapter;
use junction_testkit::servers::{servers, slot, Servers, Slot};
use junction_testkit::{eventually, is_message, solo, unique, Solo};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(90);

/// A running adapter, the gateway's ends of its channels (through `Deref`) and the test's
/// stand-in for the gateway.
struct Running {
    solo: Solo,
    /// Every event the adapter sent, with whether its ack was Ok.
    seen: Arc<Mutex<Vec<(Event, bool)>>>,
    /// The test's stand-in for the gateway, answering what the adapter sends.
    gateway: tokio::task::JoinHandle<()>,
}

impl std::ops::Deref for Running {
    type Target = Solo;
    fn deref(&self) -> &Solo {
        &self.solo
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Solo {
        &mut self.solo
    }
}

impl Running {
    fn seen_with_body(&self, body: &str) -> Vec<(Event, bool)> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(e, _)| is_message(e, body))
            .cloned()
            .collect()
    }

    /// The first event the adapter sent that is a message with exactly `body`, waited for.
    async fn wait_body(&self, what: &str, body: &str) -> anyhow::Result<(Event, bool)> {
        eventually(DEADLINE, what, || async {
            self.seen_with_body(body).into_iter().next()
        })
        .await
    }

    /// The rich text of the first message with exactly `body` as plain text, waited for.
    async fn wait_spans(&self, what: &str, body: &str) -> anyhow::Result<Vec<Span>> {
        let (event, _) = self.wait_body(what, body).await?;
        let EventKind::Message(m) = event.kind else {
            anyhow::bail!("not a message: {:?}", event.kind)
        };
        Ok(m.body.spans)
    }

    async fn stop(self) {
        let _ = self.solo.stop().await;
        let _ = self.gateway.await;
    }
}

fn config(servers: &Servers, slot: &Slot) -> MatrixConfig {
    MatrixConfig {
        homeserver: servers.matrix.url.clone(),
        server_name: servers.matrix.server_name.clone(),
        listen: slot.listen,
        as_token: Secret::new(slot.as_token.clone()),
        hs_token: Secret::new(slot.hs_token.clone()),
        bot: slot.bot.clone(),
        id: slot.as_id.clone(),
        user_prefix: slot.user_prefix.clone(),
        origin_marks: true,
    }
}

/// A new alias in the slot's namespace (Synapse lets an appservice create only those).
fn alias(servers: &Servers, slot: &Slot, name: &str) -> String {
    format!(
        "#{}{}:{}",
        slot.user_prefix,
        unique(name),
        servers.matrix.server_name
    )
}

/// The Matrix id of the slot's ghost with the localpart `local` after its prefix.
fn ghost(servers: &Servers, slot: &Slot, local: &str) -> String {
    format!(
        "@{}{local}:{}",
        slot.user_prefix, servers.matrix.server_name
    )
}

/// How the test's stand-in for the gateway answers the adapter's events.
#[derive(Clone, Default)]
enum Policy {
    /// Every event is stored.
    #[default]
    Store,
    /// The first message with this body is not stored; everything else is.
    FailOnce(String),
    /// At the first message with this body the gateway dies: nothing from then on is
    /// stored, and the adapter is shut down.
    DieAt(String),
}

/// Starts the adapter for `rooms` on a fresh store, its events answered as `policy` says.
fn start(servers: &Servers, slot: &Slot, rooms: Vec<RoomId>, policy: Policy) -> Running {
    start_with_admins(servers, slot, rooms, policy, Vec::new())
}

/// [`start`] with `admins`, the Matrix users whose invites the bot accepts.
fn start_with_admins(
    servers: &Servers,
    slot: &Slot,
    rooms: Vec<RoomId>,
    policy: Policy,
    admins: Vec<String>,
) -> Running {
    junction_testkit::test_log("junction_matrix=info");
    // The test's file server is on 127.0.0.1, which the gateway refuses by default.
    let adapter = MatrixAdapter::new(config(servers, slot))
        .allow_private_media_urls()
        .with_admins(admins);
    let mut solo = solo(adapter, NetworkId::new("matrix"), rooms);
    let mut inbound = solo.take_inbound();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_gateway = seen.clone();
    let stop = solo.shutdown.clone();
    let gateway = tokio::spawn(async move {
        let mut failed = false;
        let mut dead = false;
        while let Some(inbound) = inbound.recv().await {
            let body = match &inbound.event.kind {
                EventKind::Message(m) => Some(m.body.to_plain()),
                _ => None,
            };
            let fail = match &policy {
                Policy::Store => false,
                Policy::FailOnce(b) => !failed && body.as_ref() == Some(b),
                Policy::DieAt(b) => {
                    if body.as_ref() == Some(b) && !dead {
                        dead = true;
                        stop.cancel();
                    }
                    dead
                }
            };
            failed |= fail;
            let answer = if fail {
                Err("simulated store failure".to_owned())
            } else {
                Ok(())
            };
            seen_by_gateway
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((inbound.event, !fail));
            if let Some(ack) = inbound.ack {
                let _ = ack.send(answer);
            }
        }
    });
    Running {
        solo,
        seen,
        gateway,
    }
}

/// A Matrix user acting from the outside.
struct User {
    id: String,
    client: Client,
}

impl User {
    async fn new(servers: &Servers) -> anyhow::Result<User> {
        let name = unique("mxu");
        let password = format!("{name}-pw");
        servers
            .register_matrix_user(&name, &password, false)
            .await?;
        let anon = Client::new(
            &servers.matrix.url,
            Secret::new(""),
            CancellationToken::new(),
        );
        let login = anon
            .request(
                Method::POST,
                "/_matrix/client/v3/login",
                &[],
                Some(json!({
                    "type": "m.login.password",
                    "identifier": {"type": "m.id.user", "user": name},
                    "password": password,
                })),
            )
            .await?;
        let token = login["access_token"]
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("login without access_token: {login}"))?;
        Ok(User {
            id: format!("@{name}:{}", servers.matrix.server_name),
            client: Client::new(
                &servers.matrix.url,
                Secret::new(token),
                CancellationToken::new(),
            ),
        })
    }

    async fn say(&self, room_id: &str, body: &str) -> anyhow::Result<String> {
        self.send(
            room_id,
            "m.room.message",
            json!({"msgtype": "m.text", "body": body}),
        )
        .await
    }

    /// Sends an event of `kind` with `content` to the room; its event id.
    async fn send(&self, room_id: &str, kind: &str, content: Value) -> anyhow::Result<String> {
        Ok(self
            .client
            .send(room_id, kind, &unique("t"), &content, None, None)
            .await?)
    }

    /// Sends `body` formatted as `html`; its event id.
    async fn say_html(&self, room_id: &str, body: &str, html: &str) -> anyhow::Result<String> {
        self.send(
            room_id,
            "m.room.message",
            json!({
                "msgtype": "m.text",
                "body": body,
                "format": "org.matrix.custom.html",
                "formatted_body": html,
            }),
        )
        .await
    }

    /// The latest events of a room, newest first.
    async fn recent(&self, room_id: &str) -> anyhow::Result<Vec<Value>> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages",
            junction_matrix::ids::path_segment(room_id)
        );
        let v = self
            .client
            .request(
                Method::GET,
                &path,
                &[("dir", "b".into()), ("limit", "50".into())],
                None,
            )
            .await?;
        Ok(v["chunk"].as_array().cloned().unwrap_or_default())
    }
}

fn irc_message(text: &str) -> Event {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    Event::new(
        RoomRef::new("irc:local", "#lobby"),
        MessageId::new(unique("msgid")),
        Sender::new(UserRef::new("irc:local", "Bob"), "Bob"),
        now,
        EventKind::Message(Message {
            body: RichText::plain(text),
            ..Message::default()
        }),
    )
}

/// Starts the adapter linked to `alias` (answering as `policy` says) and joins a new user,
/// alice, to the room it makes for the alias; the adapter, alice and the room's id.
async fn start_in(
    servers: &Servers,
    slot: &Slot,
    alias: &str,
    policy: Policy,
) -> anyhow::Result<(Running, User, String)> {
    let gw = start(servers, slot, vec![RoomId::new(alias)], policy);
    let alice = User::new(servers).await?;
    let room_id = join_by_alias(&alice, alias).await?;
    Ok((gw, alice, room_id))
}

/// Waits until the alias exists (the adapter created the room) and joins it as `user`.
/// Synapse makes the alias before the room's join rules, so a join right after the alias
/// appears may be refused ("not invited") for a moment: it is tried until it passes.
async fn join_by_alias(user: &User, alias: &str) -> anyhow::Result<String> {
    eventually(
        DEADLINE,
        "joining the room created for the alias",
        || async {
            let room_id = user.client.resolve_alias(alias).await.ok().flatten()?;
            user.client.join(&room_id, None).await.ok()
        },
    )
    .await
}

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

/// Answers one delivery through the running adapter.
async fn deliver(gw: &mut Running, d: Delivery) -> anyhow::Result<Vec<MessageId>> {
    let outbox = d.outbox_id;
    gw.deliveries.send(d).await?;
    let answer = gw.next_delivered(DEADLINE).await?;
    assert_eq!(answer.outbox_id, outbox);
    answer
        .outcome
        .map_err(|e| anyhow::anyhow!("delivery {outbox} failed: {e}"))
}

fn delivery(outbox_id: u64, alias: &str, event: Event) -> Delivery {
    Delivery {
        outbox_id,
        bridge: "lobby".into(),
        target: RoomRef::new("matrix", alias),
        event,
        reply_to: Vec::new(),
        target_ids: Vec::new(),
    }
}

fn irc_event(kind: EventKind) -> Event {
    let mut e = irc_message("");
    e.kind = kind;
    e
}

/// A room event as alice sees it.
async fn event_of(user: &User, room_id: &str, event_id: &str) -> anyhow::Result<Value> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        junction_matrix::ids::path_segment(room_id),
        junction_matrix::ids::path_segment(event_id)
    );
    Ok(user.client.request(Method::GET, &path, &[], None).await?)
}

/// A plain HTTP/1.0 GET on loopback: status and body.
async fn http_get(url: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("not http: {url}"))?;
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut stream = tokio::net::TcpStream::connect(host).await?;
    stream
        .write_all(format!("GET /{path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad status line: {head}"))?;
    Ok((status, raw[split + 4..].to_vec()))
}

/// Serves `body` once per request at `http://127.0.0.1:<port>/cat.png`.
async fn serve_file(body: &'static [u8]) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/cat.png",
        axum::routing::get(move || async move { ([("content-type", "image/png")], body) }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(format!("http://{addr}/cat.png"))
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

/// A member's state in a room as `user` sees it.
async fn membership(user: &User, room_id: &str, member: &str) -> Option<Value> {
    user.client
        .state(room_id, "m.room.member", member)
        .await
        .ok()
        .flatten()
}

fn bytes_of(b: &'static [u8]) -> axum::body::Bytes {
    axum::body::Bytes::from_static(b)
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
