//! The Matrix adapter rig: the adapter on its own (`solo`) against Synapse, its config on a
//! testkit slot, Matrix users, and the deliveries and HTTP helpers the tests share.

use junction_core::format::Span;
use junction_core::{
    Delivery, Event, EventKind, Message, MessageId, NetworkId, RichText, RoomId, RoomRef, Secret,
    Sender, UserRef,
};
use junction_matrix::config::MatrixConfig;
use junction_matrix::connection::{Client, Method};
use junction_matrix::MatrixAdapter;
use junction_testkit::servers::{Servers, Slot};
use junction_testkit::{eventually, is_message, solo, unique, Solo};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub(crate) const DEADLINE: Duration = Duration::from_secs(90);

/// A running adapter, the gateway's ends of its channels (through `Deref`) and the test's
/// stand-in for the gateway.
pub(crate) struct Running {
    pub(crate) solo: Solo,
    /// Every event the adapter sent, with whether its ack was Ok.
    pub(crate) seen: Arc<Mutex<Vec<(Event, bool)>>>,
    /// The test's stand-in for the gateway, answering what the adapter sends.
    pub(crate) gateway: tokio::task::JoinHandle<()>,
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
    pub(crate) fn seen_with_body(&self, body: &str) -> Vec<(Event, bool)> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(e, _)| is_message(e, body))
            .cloned()
            .collect()
    }

    /// The first event the adapter sent that is a message with exactly `body`, waited for.
    pub(crate) async fn wait_body(&self, what: &str, body: &str) -> anyhow::Result<(Event, bool)> {
        eventually(DEADLINE, what, || async {
            self.seen_with_body(body).into_iter().next()
        })
        .await
    }

    /// The rich text of the first message with exactly `body` as plain text, waited for.
    pub(crate) async fn wait_spans(&self, what: &str, body: &str) -> anyhow::Result<Vec<Span>> {
        let (event, _) = self.wait_body(what, body).await?;
        let EventKind::Message(m) = event.kind else {
            anyhow::bail!("not a message: {:?}", event.kind)
        };
        Ok(m.body.spans)
    }

    pub(crate) async fn stop(self) {
        let _ = self.solo.stop().await;
        let _ = self.gateway.await;
    }
}

pub(crate) fn config(servers: &Servers, slot: &Slot) -> MatrixConfig {
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
pub(crate) fn alias(servers: &Servers, slot: &Slot, name: &str) -> String {
    format!(
        "#{}{}:{}",
        slot.user_prefix,
        unique(name),
        servers.matrix.server_name
    )
}

/// The Matrix id of the slot's ghost with the localpart `local` after its prefix.
pub(crate) fn ghost(servers: &Servers, slot: &Slot, local: &str) -> String {
    format!(
        "@{}{local}:{}",
        slot.user_prefix, servers.matrix.server_name
    )
}

/// How the test's stand-in for the gateway answers the adapter's events.
#[derive(Clone, Default)]
pub(crate) enum Policy {
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
pub(crate) fn start(servers: &Servers, slot: &Slot, rooms: Vec<RoomId>, policy: Policy) -> Running {
    start_with_admins(servers, slot, rooms, policy, Vec::new())
}

/// [`start`] with `admins`, the Matrix users whose invites the bot accepts.
pub(crate) fn start_with_admins(
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
pub(crate) struct User {
    pub(crate) id: String,
    pub(crate) client: Client,
}

impl User {
    pub(crate) async fn new(servers: &Servers) -> anyhow::Result<User> {
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

    pub(crate) async fn say(&self, room_id: &str, body: &str) -> anyhow::Result<String> {
        self.send(
            room_id,
            "m.room.message",
            json!({"msgtype": "m.text", "body": body}),
        )
        .await
    }

    /// Sends an event of `kind` with `content` to the room; its event id.
    pub(crate) async fn send(
        &self,
        room_id: &str,
        kind: &str,
        content: Value,
    ) -> anyhow::Result<String> {
        Ok(self
            .client
            .send(room_id, kind, &unique("t"), &content, None, None)
            .await?)
    }

    /// Sends `body` formatted as `html`; its event id.
    pub(crate) async fn say_html(
        &self,
        room_id: &str,
        body: &str,
        html: &str,
    ) -> anyhow::Result<String> {
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
    pub(crate) async fn recent(&self, room_id: &str) -> anyhow::Result<Vec<Value>> {
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

pub(crate) fn irc_message(text: &str) -> Event {
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
pub(crate) async fn start_in(
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
pub(crate) async fn join_by_alias(user: &User, alias: &str) -> anyhow::Result<String> {
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

/// Answers one delivery through the running adapter.
pub(crate) async fn deliver(gw: &mut Running, d: Delivery) -> anyhow::Result<Vec<MessageId>> {
    let outbox = d.outbox_id;
    gw.deliveries.send(d).await?;
    let answer = gw.next_delivered(DEADLINE).await?;
    assert_eq!(answer.outbox_id, outbox);
    answer
        .outcome
        .map_err(|e| anyhow::anyhow!("delivery {outbox} failed: {e}"))
}

pub(crate) fn delivery(outbox_id: u64, alias: &str, event: Event) -> Delivery {
    Delivery {
        outbox_id,
        bridge: "lobby".into(),
        target: RoomRef::new("matrix", alias),
        event,
        reply_to: Vec::new(),
        target_ids: Vec::new(),
    }
}

pub(crate) fn irc_event(kind: EventKind) -> Event {
    let mut e = irc_message("");
    e.kind = kind;
    e
}

/// A room event as alice sees it.
pub(crate) async fn event_of(user: &User, room_id: &str, event_id: &str) -> anyhow::Result<Value> {
    let path = format!(
        "/_matrix/client/v3/rooms/{}/event/{}",
        junction_matrix::ids::path_segment(room_id),
        junction_matrix::ids::path_segment(event_id)
    );
    Ok(user.client.request(Method::GET, &path, &[], None).await?)
}

/// A plain HTTP/1.0 GET on loopback: status and body.
pub(crate) async fn http_get(url: &str) -> anyhow::Result<(u16, Vec<u8>)> {
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
pub(crate) async fn serve_file(body: &'static [u8]) -> anyhow::Result<String> {
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

/// A member's state in a room as `user` sees it.
pub(crate) async fn membership(user: &User, room_id: &str, member: &str) -> Option<Value> {
    user.client
        .state(room_id, "m.room.member", member)
        .await
        .ok()
        .flatten()
}

pub(crate) fn bytes_of(b: &'static [u8]) -> axum::body::Bytes {
    axum::body::Bytes::from_static(b)
}
