//! A fake IRC server and a running adapter wired to it, for this crate's tests: the server
//! registers a connection like an old server (no CAP), answers PINGs, optionally answers
//! lines from a script, and passes every line it gets to the test.

use crate::{IrcAdapter, IrcConfig, IrcMode};
use junction_core::{Delivered, Delivery, MessageKind, NetworkId, Pastes, RoomId, RoomRef};
use junction_store::{MemStore, Store};
use junction_testkit::{person, said, solo_with, Solo};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// The network the harness runs as.
pub(crate) const NETWORK: &str = "irc:fake";

/// How long a test waits for a line or an answer.
const WAIT: Duration = Duration::from_secs(30);

/// A message from alice on Matrix to `#t`, outbox row `outbox_id`, event `$e<outbox_id>`.
pub(crate) fn delivery(outbox_id: u64, text: &str) -> Delivery {
    junction_testkit::delivery(
        outbox_id,
        RoomRef::new(NETWORK, "#t"),
        &person("matrix", "alice"),
        said(MessageKind::Text, text),
    )
}

/// Accepts one connection, registers it like an old server (no CAP), and passes every line it
/// receives to `lines`; closes the connection when `close` fires.
pub(crate) async fn serve_one(
    listener: &TcpListener,
    lines: mpsc::UnboundedSender<String>,
    close: oneshot::Receiver<()>,
) {
    serve(listener, lines, |_| Vec::new(), Some(close)).await;
}

/// Like [`serve_one`], but the fake server also answers: `respond` maps each line it gets to
/// lines it sends back.
pub(crate) async fn serve_scripted(
    listener: &TcpListener,
    lines: mpsc::UnboundedSender<String>,
    respond: impl Fn(&str) -> Vec<String> + Send + 'static,
) {
    serve(listener, lines, respond, None).await;
}

/// [`serve_scripted`] for the bot's connection: waits until it joined `#t`, and gives the
/// lines it sent from then on.
pub(crate) async fn joined(
    listener: &TcpListener,
    respond: impl Fn(&str) -> Vec<String> + Send + 'static,
) -> mpsc::UnboundedReceiver<String> {
    let (tx, mut lines) = mpsc::unbounded_channel();
    serve_scripted(listener, tx, respond).await;
    expect_line(&mut lines, "JOIN #t").await;
    lines
}

/// Accepts one connection and serves it until it ends or `close` fires: registers it (no
/// CAP), answers PINGs and what `respond` answers, and passes every line to `lines`.
async fn serve(
    listener: &TcpListener,
    lines: mpsc::UnboundedSender<String>,
    respond: impl Fn(&str) -> Vec<String> + Send + 'static,
    close: Option<oneshot::Receiver<()>>,
) {
    let (sock, _) = listener.accept().await.expect("accept");
    tokio::spawn(async move {
        let (r, mut w) = sock.into_split();
        let mut r = BufReader::new(r).lines();
        let closed = async move {
            match close {
                Some(close) => {
                    let _ = close.await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::pin!(closed);
        loop {
            let line = tokio::select! {
                () = &mut closed => return,
                line = r.next_line() => line,
            };
            let Ok(Some(line)) = line else { return };
            let mut out = Vec::new();
            if let Some(token) = line.strip_prefix("PING ") {
                out.push(format!(":fake PONG fake {token}"));
            }
            if let Some(nick) = line.strip_prefix("NICK ") {
                out.extend([
                    format!(":fake 001 {nick} :hi"),
                    format!(":fake 005 {nick} NICKLEN=9 :ok"),
                    format!(":fake 376 {nick} :end"),
                ]);
            }
            out.extend(respond(&line));
            for o in out {
                let _ = w.write_all(format!("{o}\r\n").as_bytes()).await;
            }
            let _ = lines.send(line);
        }
    });
}

/// Waits (at most 30 s) until `want` arrives among `rx`'s lines.
pub(crate) async fn expect_line(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
    let found = tokio::time::timeout(WAIT, async {
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

/// The next answer to a delivery (at most 30 s away).
pub(crate) async fn answered(h: &mut Solo) -> Delivered {
    h.next_delivered(WAIT).await.expect("answered")
}

/// The adapter in `mode` for the fake server at `addr`, on a store of its own, linked to `#t`.
pub(crate) fn harness(addr: std::net::SocketAddr, mode: IrcMode) -> Solo {
    harness_with(config(addr, mode), Arc::new(MemStore::new()), None)
}

/// A listener for the fake server on a free port, and the adapter in `mode` for it.
pub(crate) async fn started(mode: IrcMode) -> (TcpListener, Solo) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let h = harness(listener.local_addr().expect("addr"), mode);
    (listener, h)
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
) -> Solo {
    solo_with(
        IrcAdapter::new(cfg),
        store,
        pastes,
        NetworkId::new(NETWORK),
        vec![RoomId::new("#t")],
    )
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
