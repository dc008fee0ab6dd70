//! The Matrix adapter against a real Synapse: rooms created by alias, ghosts speaking,
//! Matrix users' messages reaching the gateway, and transactions that survive a failed
//! store (Synapse resends them, the gateway sees the event once).

use junction_core::{
    Adapter, AdapterContext, Delivered, Delivery, Event, EventKind, Inbound, Message, MessageId,
    NetworkId, RichText, RoomId, RoomRef, Secret, Sender, UserRef,
};
use junction_matrix::client::{Client, Method};
use junction_matrix::config::MatrixConfig;
use junction_matrix::MatrixAdapter;
use junction_testkit::servers::{servers, slot, Servers, Slot};
use junction_testkit::{eventually, unique};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

const DEADLINE: Duration = Duration::from_secs(90);

/// A running adapter and the gateway's ends of its channels.
struct Running {
    deliveries: mpsc::Sender<Delivery>,
    delivered: mpsc::UnboundedReceiver<Delivered>,
    /// Every event the adapter sent, with whether its ack was Ok.
    seen: Arc<Mutex<Vec<(Event, bool)>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn seen_with_body(&self, body: &str) -> Vec<(Event, bool)> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(e, _)| matches!(&e.kind, EventKind::Message(m) if m.body.to_plain() == body))
            .cloned()
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
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
    }
}

/// Starts the adapter for `rooms`. `fail_once` names a message body whose first arrival is
/// answered as "not stored".
fn start(servers: &Servers, slot: &Slot, rooms: Vec<RoomId>, fail_once: Option<String>) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "junction_matrix=info".into()),
        )
        .with_test_writer()
        .try_init();
    let store = Arc::new(store::KvStore::default());
    let adapter = MatrixAdapter::new(config(servers, slot), store);
    let (inbound_tx, mut inbound_rx) = mpsc::channel::<Inbound>(64);
    let (deliveries_tx, deliveries_rx) = mpsc::channel(64);
    let (delivered_tx, delivered_rx) = mpsc::unbounded_channel();
    let (_rooms_tx, rooms_rx) = watch::channel(rooms);
    let shutdown = CancellationToken::new();
    let cx = AdapterContext {
        network: NetworkId::new("matrix"),
        inbound: inbound_tx,
        deliveries: deliveries_rx,
        delivered: delivered_tx,
        rooms: rooms_rx,
        shutdown: shutdown.clone(),
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen_by_gateway = seen.clone();
    let task = tokio::spawn(async move {
        let _keep_rooms = _rooms_tx;
        let run = tokio::spawn(adapter.run(cx));
        let mut failed = false;
        while let Some(inbound) = inbound_rx.recv().await {
            let fail = !failed
                && matches!(&inbound.event.kind, EventKind::Message(m)
                    if Some(m.body.to_plain()) == fail_once);
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
        let _ = run.await;
    });
    Running {
        deliveries: deliveries_tx,
        delivered: delivered_rx,
        seen,
        shutdown,
        task,
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
        Ok(self
            .client
            .send(
                room_id,
                "m.room.message",
                &unique("t"),
                &json!({"msgtype": "m.text", "body": body}),
                None,
                None,
            )
            .await?)
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

/// Waits until the alias exists (the adapter created the room) and joins it as `user`.
async fn join_by_alias(user: &User, alias: &str) -> anyhow::Result<String> {
    let room_id = eventually(DEADLINE, "the room created for the alias", || async {
        user.client.resolve_alias(alias).await.ok().flatten()
    })
    .await?;
    user.client.join(&room_id, None).await?;
    Ok(room_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghost_speaks_and_matrix_user_reaches_the_gateway() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    // In the slot's alias namespace: Synapse lets an appservice create only those.
    let alias = format!(
        "#{}{}:{}",
        slot.user_prefix,
        unique("lobby"),
        servers.matrix.server_name
    );
    let mut gw = start(servers, &slot, vec![RoomId::new(alias.clone())], None);

    // The alias was free: the adapter made a public room for it.
    let alice = User::new(servers).await?;
    let room_id = join_by_alias(&alice, &alias).await?;

    // A message from IRC: Bob's ghost says it in the room.
    let text = unique("hello from irc ");
    let event = irc_message(&text);
    let delivery = Delivery {
        outbox_id: 1,
        bridge: "lobby".into(),
        target: RoomRef::new("matrix", alias.as_str()),
        event: event.clone(),
        reply_to: Vec::new(),
        target_ids: Vec::new(),
    };
    gw.deliveries.send(delivery.clone()).await?;
    let answer = tokio::time::timeout(DEADLINE, gw.delivered.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("adapter stopped"))?;
    assert_eq!(answer.outbox_id, 1);
    assert_eq!(answer.event, event.id);
    let ids = answer
        .outcome
        .map_err(|e| anyhow::anyhow!("delivery failed: {e}"))?;
    assert_eq!(ids.len(), 1);

    let ghost = format!(
        "@{}irc_local__bob:{}",
        slot.user_prefix, servers.matrix.server_name
    );
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
    assert_eq!(member["displayname"].as_str(), Some("Bob"));

    // The same delivery again (a retry after a restart) makes no second message.
    gw.deliveries.send(delivery).await?;
    let again = tokio::time::timeout(DEADLINE, gw.delivered.recv())
        .await?
        .ok_or_else(|| anyhow::anyhow!("adapter stopped"))?;
    assert_eq!(again.outcome, Ok(ids.clone()));

    // Alice speaks: the gateway gets it from the room as written in the link.
    let said = unique("hello from matrix ");
    let event_id = alice.say(&room_id, &said).await?;
    let got = eventually(DEADLINE, "alice's message at the gateway", || async {
        gw.seen_with_body(&said).into_iter().next()
    })
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
    let alias = format!(
        "#{}{}:{}",
        slot.user_prefix,
        unique("durable"),
        servers.matrix.server_name
    );
    let first = unique("first ");
    let gw = start(
        servers,
        &slot,
        vec![RoomId::new(alias.clone())],
        Some(first.clone()),
    );
    let alice = User::new(servers).await?;
    let room_id = join_by_alias(&alice, &alias).await?;

    alice.say(&room_id, &first).await?;
    eventually(DEADLINE, "the failed first attempt", || async {
        gw.seen_with_body(&first).first().map(|_| ())
    })
    .await?;
    // Synapse retries with backoff; a ping makes it retry at once.
    let as_client = Client::new(
        &servers.matrix.url,
        Secret::new(slot.as_token.clone()),
        CancellationToken::new(),
    );
    let _ = as_client.ping(&slot.as_id, &unique("p")).await;
    let second = unique("second ");
    alice.say(&room_id, &second).await?;
    eventually(DEADLINE, "the later message", || async {
        gw.seen_with_body(&second).first().map(|_| ())
    })
    .await?;
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

/// A store with just the tables the adapter uses (the gateway's tables are not exercised
/// here: the test plays the gateway).
mod store {
    use junction_core::router::{Link, Planned};
    use junction_core::{
        BridgeName, Delivered, Delivery, Event, EventId, MessageId, NetworkId, RoomRef, UserRef,
    };
    use junction_store::{AuditEntry, Recorded, Result, Store};
    use std::collections::{BTreeMap, HashSet};
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct KvStore {
        kv: Mutex<BTreeMap<(String, String), Vec<u8>>>,
        txns: Mutex<HashSet<String>>,
    }

    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|e| e.into_inner())
    }

    impl Store for KvStore {
        fn record_inbound(&self, _: &Event, _: Vec<Planned>) -> Result<Recorded> {
            Ok(Recorded::New(Vec::new()))
        }
        fn record_delivered(&self, _: &Delivered) -> Result<()> {
            Ok(())
        }
        fn event_for(&self, _: &RoomRef, _: &MessageId) -> Result<Option<EventId>> {
            Ok(None)
        }
        fn remote_ids(&self, _: &EventId, _: &RoomRef) -> Result<Vec<MessageId>> {
            Ok(Vec::new())
        }
        fn pending(&self, _: &NetworkId) -> Result<Vec<Delivery>> {
            Ok(Vec::new())
        }
        fn outbox_depth(&self, _: &NetworkId) -> Result<usize> {
            Ok(0)
        }
        fn txn_done(&self, key: &str) -> Result<bool> {
            Ok(lock(&self.txns).contains(key))
        }
        fn mark_txn(&self, key: &str) -> Result<()> {
            lock(&self.txns).insert(key.to_owned());
            Ok(())
        }
        fn puppet(&self, _: &NetworkId, _: &UserRef) -> Result<Option<String>> {
            Ok(None)
        }
        fn set_puppet(&self, _: &NetworkId, _: &UserRef, _: &str) -> Result<()> {
            Ok(())
        }
        fn puppet_owner(&self, _: &NetworkId, _: &str) -> Result<Option<UserRef>> {
            Ok(None)
        }
        fn links(&self) -> Result<Vec<Link>> {
            Ok(Vec::new())
        }
        fn put_link(&self, _: &Link) -> Result<()> {
            Ok(())
        }
        fn remove_link(&self, _: &BridgeName) -> Result<()> {
            Ok(())
        }
        fn cursor(&self, _: &RoomRef) -> Result<Option<String>> {
            Ok(None)
        }
        fn set_cursor(&self, _: &RoomRef, _: &str) -> Result<()> {
            Ok(())
        }
        fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
            Ok(lock(&self.kv)
                .get(&(ns.to_owned(), key.to_owned()))
                .cloned())
        }
        fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<()> {
            lock(&self.kv).insert((ns.to_owned(), key.to_owned()), value.to_vec());
            Ok(())
        }
        fn kv_remove(&self, ns: &str, key: &str) -> Result<()> {
            lock(&self.kv).remove(&(ns.to_owned(), key.to_owned()));
            Ok(())
        }
        fn kv_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
            Ok(lock(&self.kv)
                .iter()
                .filter(|((n, _), _)| n == ns)
                .map(|((_, k), v)| (k.clone(), v.clone()))
                .collect())
        }
        fn audit(&self, _: &AuditEntry) -> Result<()> {
            Ok(())
        }
        fn audit_log(&self) -> Result<Vec<AuditEntry>> {
            Ok(Vec::new())
        }
        fn flush(&self) -> Result<()> {
            Ok(())
        }
    }
}
