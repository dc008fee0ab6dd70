//! A fake IRC server and a running adapter wired to it, for this crate's tests: the server
//! registers a connection like an old server (no CAP), answers PINGs, optionally answers
//! lines from a script, and passes every line it gets to the test.

use crate::{IrcAdapter, IrcConfig, IrcMode};
use junction_core::format::RichText;
use junction_core::{
    Adapter, AdapterContext, AdapterError, BridgeName, Delivered, Delivery, Event, EventKind,
    Inbound, Message, MessageId, MessageKind, NetworkId, NetworkStatus, Pastes, RoomId, RoomRef,
    Sender, UserRef,
};
use junction_store::{MemStore, Store};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The network the harness runs as.
pub(crate) const NETWORK: &str = "irc:fake";

/// A message from alice on Matrix to `#t`, outbox row `outbox_id`, event `$e<outbox_id>`.
pub(crate) fn delivery(outbox_id: u64, text: &str) -> Delivery {
    Delivery {
        outbox_id,
        bridge: BridgeName::new("lobby"),
        target: RoomRef::new(NETWORK, "#t"),
        event: Event::new(
            RoomRef::new("matrix", "#lobby:matrix.test"),
            MessageId::new(format!("$e{outbox_id}")),
            Sender::new(UserRef::new("matrix", "@alice:matrix.test"), "alice"),
            0,
            EventKind::Message(Message {
                kind: MessageKind::Text,
                body: RichText::plain(text),
                reply_to: None,
                attachments: Vec::new(),
            }),
        ),
        reply_to: Vec::new(),
        target_ids: Vec::new(),
    }
}

/// Accepts one connection, registers it like an old server (no CAP), and passes every line it
/// receives to `lines`; closes the connection when `close` fires.
pub(crate) async fn serve_one(
    listener: &TcpListener,
    lines: mpsc::UnboundedSender<String>,
    close: oneshot::Receiver<()>,
) {
    let (sock, _) = listener.accept().await.expect("accept");
    tokio::spawn(async move {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r).lines();
        let mut close = close;
        loop {
            tokio::select! {
                _ = &mut close => return,
                line = r.next_line() => {
                    let Ok(Some(line)) = line else { return };
                    if let Some(token) = line.strip_prefix("PING ") {
                        let _ = w.write_all(format!(":fake PONG fake {token}\r\n").as_bytes()).await;
                    }
                    if line.starts_with("NICK ") {
                        let _ = w
                            .write_all(b":fake 001 junction :hi\r\n:fake 005 junction NICKLEN=9 :ok\r\n:fake 376 junction :end\r\n")
                            .await;
                    }
                    let _ = lines.send(line);
                }
            }
        }
    });
}

/// Like [`serve_one`], but the fake server also answers: `respond` maps each line it gets to
/// lines it sends back.
pub(crate) async fn serve_scripted(
    listener: &TcpListener,
    lines: mpsc::UnboundedSender<String>,
    respond: fn(&str) -> Vec<String>,
) {
    let (sock, _) = listener.accept().await.expect("accept");
    tokio::spawn(async move {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r).lines();
        while let Ok(Some(line)) = r.next_line().await {
            if let Some(token) = line.strip_prefix("PING ") {
                let _ = w
                    .write_all(format!(":fake PONG fake {token}\r\n").as_bytes())
                    .await;
            }
            if let Some(nick) = line.strip_prefix("NICK ") {
                let _ = w
                    .write_all(format!(":fake 001 {nick} :hi\r\n:fake 005 {nick} NICKLEN=9 :ok\r\n:fake 376 {nick} :end\r\n").as_bytes())
                    .await;
            }
            for out in respond(&line) {
                let _ = w.write_all(format!("{out}\r\n").as_bytes()).await;
            }
            let _ = lines.send(line);
        }
    });
}

/// Waits (at most 30 s) until `want` arrives among `rx`'s lines.
pub(crate) async fn expect_line(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    let deadline = Duration::from_secs(30);
    let found = tokio::time::timeout(deadline, async {
        while let Some(l) = rx.recv().await {
            if l == want {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(found, Ok(true), "line {want:?} never arrived");
}

/// The lines received so far.
pub(crate) fn drain(lines: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
    let mut said = Vec::new();
    while let Ok(l) = lines.try_recv() {
        said.push(l);
    }
    said
}

/// How many of the lines received so far are `want`, and all of them.
pub(crate) fn count_said(
    lines: &mut mpsc::UnboundedReceiver<String>,
    want: &str,
) -> (usize, Vec<String>) {
    let said = drain(lines);
    (said.iter().filter(|l| *l == want).count(), said)
}

/// A running adapter and the gateway's ends of its channels.
pub(crate) struct Harness {
    pub(crate) deliveries: mpsc::Sender<Delivery>,
    pub(crate) delivered: mpsc::UnboundedReceiver<Delivered>,
    pub(crate) commands: mpsc::Receiver<junction_core::Command>,
    pub(crate) status: watch::Receiver<NetworkStatus>,
    pub(crate) inbound: mpsc::Receiver<Inbound>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) task: JoinHandle<Result<(), AdapterError>>,
    _rooms: watch::Sender<Vec<RoomId>>,
}

impl Harness {
    /// The next answer to a delivery (at most 30 s away).
    pub(crate) async fn answered(&mut self) -> Delivered {
        tokio::time::timeout(Duration::from_secs(30), self.delivered.recv())
            .await
            .expect("answered")
            .expect("open")
    }
}

/// The adapter in `mode` for the fake server at `addr`, on a store of its own, linked to `#t`.
pub(crate) fn harness(addr: std::net::SocketAddr, mode: IrcMode) -> Harness {
    harness_with(config(addr, mode), Arc::new(MemStore::new()), None)
}

/// The adapter's config for the fake server at `addr`: bot nick `junction`, `mode`.
pub(crate) fn config(addr: std::net::SocketAddr, mode: IrcMode) -> IrcConfig {
    let mut cfg = IrcConfig::new("fake", addr.to_string(), "junction");
    cfg.mode = mode;
    cfg
}

/// The adapter for `cfg` on `store` (as the gateway's store: the adapter gets its part),
/// keeping long texts in `pastes`, linked to `#t`.
pub(crate) fn harness_with(
    cfg: IrcConfig,
    store: Arc<dyn Store>,
    pastes: Option<Arc<dyn Pastes>>,
) -> Harness {
    let adapter = IrcAdapter::new(cfg);
    let (in_tx, in_rx) = mpsc::channel(16);
    let (d_tx, d_rx) = mpsc::channel(16);
    let (ok_tx, ok_rx) = mpsc::unbounded_channel();
    let (rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new("#t")]);
    let (cmd_tx, cmd_rx) = mpsc::channel(4);
    let (status_tx, status_rx) = watch::channel(NetworkStatus::Connecting);
    let shutdown = CancellationToken::new();
    let cx = AdapterContext {
        network: NetworkId::new(NETWORK),
        inbound: in_tx,
        deliveries: d_rx,
        delivered: ok_tx,
        rooms: rooms_rx,
        shutdown: shutdown.clone(),
        commands: cmd_tx,
        status: status_tx,
        puppets: watch::channel(0).0,
        store: junction_store::scoped(store, NetworkId::new(NETWORK)),
        pastes,
    };
    let task = tokio::spawn(adapter.run(cx));
    Harness {
        deliveries: d_tx,
        delivered: ok_rx,
        commands: cmd_rx,
        status: status_rx,
        inbound: in_rx,
        shutdown,
        task,
        _rooms: rooms_tx,
    }
}

/// Pastes kept in memory: `https://chat.example.org/paste/<n>`, the same origin the same `n`.
#[derive(Debug, Default)]
pub(crate) struct MemPastes {
    /// id → (origin, text)
    pub(crate) kept: Mutex<BTreeMap<String, (String, String)>>,
}

impl Pastes for MemPastes {
    fn keep(&self, origin: &str, text: &str) -> Option<String> {
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        let id = match kept.iter().find(|(_, (o, _))| o == origin) {
            Some((id, _)) => id.clone(),
            None => {
                let id = format!("{:04}", kept.len());
                kept.insert(id.clone(), (origin.to_owned(), text.to_owned()));
                id
            }
        };
        Some(format!("https://chat.example.org/paste/{id}"))
    }
}
