//! The IRC adapter against real InspIRCd (IRCv3, NICKLEN 30) and ngIRCd (no IRCv3, NICKLEN 9):
//! a remote user's message appears under the right nick, a long message arrives complete and
//! in order, and an IRC user's message reaches the gateway.

use anyhow::Context as _;
use junction_core::format::RichText;
use junction_core::{
    Adapter, AdapterContext, BridgeName, Delivered, Delivery, Event, EventKind, Inbound, Message,
    MessageId, MessageKind, NetworkId, RoomId, RoomRef, Sender, UserRef,
};
use junction_irc::{IrcAdapter, IrcConfig, IrcMode};
use junction_testkit::clients::IrcUser;
use junction_testkit::servers::servers;
use junction_testkit::{eventually, unique};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

#[path = "../../crates/junction-irc/src/test_store.rs"]
#[allow(dead_code)]
mod store;

const WAIT: Duration = Duration::from_secs(60);

struct Running {
    deliveries: mpsc::Sender<Delivery>,
    delivered: Arc<Mutex<Vec<Delivered>>>,
    inbound: Arc<Mutex<Vec<Event>>>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), junction_core::AdapterError>>,
}

fn start(addr: SocketAddr, channel: &str) -> Running {
    let mut nick = unique("jb");
    nick.truncate(9);
    let mut cfg = IrcConfig::new("e2e", addr.to_string(), nick);
    cfg.mode = IrcMode::Relay;
    cfg.burst = 20;
    cfg.max_lines = 20;
    cfg.lines_per_second = 5.0;
    let adapter = IrcAdapter::new(cfg, Arc::new(store::TestStore::default()));
    let (in_tx, mut in_rx) = mpsc::channel::<Inbound>(64);
    let (d_tx, d_rx) = mpsc::channel(64);
    let (ok_tx, mut ok_rx) = mpsc::unbounded_channel();
    let (rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new(channel)]);
    let shutdown = CancellationToken::new();
    let cx = AdapterContext::standalone(
        NetworkId::new("irc:e2e"),
        in_tx,
        d_rx,
        ok_tx,
        rooms_rx,
        shutdown.clone(),
    );
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let inbound = Arc::new(Mutex::new(Vec::new()));
    let (d2, i2) = (delivered.clone(), inbound.clone());
    tokio::spawn(async move {
        let _keep = rooms_tx;
        while let Some(d) = ok_rx.recv().await {
            d2.lock().unwrap_or_else(|e| e.into_inner()).push(d);
        }
    });
    tokio::spawn(async move {
        while let Some(i) = in_rx.recv().await {
            i2.lock().unwrap_or_else(|e| e.into_inner()).push(i.event);
        }
    });
    Running {
        deliveries: d_tx,
        delivered,
        inbound,
        shutdown: shutdown.clone(),
        task: tokio::spawn(adapter.run(cx)),
    }
}

fn delivery(outbox_id: u64, channel: &str, display: &str, text: &str) -> Delivery {
    Delivery {
        outbox_id,
        bridge: BridgeName::new("lobby"),
        target: RoomRef::new("irc:e2e", channel),
        event: Event::new(
            RoomRef::new("matrix", "#lobby:matrix.test"),
            MessageId::new(format!("$e{outbox_id}")),
            Sender::new(
                UserRef::new("matrix", format!("@{display}:matrix.test")),
                display,
            ),
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

async fn lobby_both_ways(addr: SocketAddr, display: &str, shown: &str) -> anyhow::Result<()> {
    let channel = format!("#{}", unique("irc"));
    let mut user_nick = unique("u");
    user_nick.truncate(9);
    let user = IrcUser::connect(addr, &user_nick).await?;
    user.join(&channel).await?;
    let gw = start(addr, &channel);

    // A remote user's message shows under the sanitised, NICKLEN-trimmed name.
    gw.deliveries
        .send(delivery(1, &channel, display, "hello irc"))
        .await?;
    let want = format!("<{shown}> hello irc");
    let ch = channel.clone();
    eventually(WAIT, "the relayed line", || {
        let got = user.privmsgs_in(&ch).iter().any(|(_, text)| *text == want);
        async move { got.then_some(()) }
    })
    .await?;

    // 2,000 bytes arrive complete and in order (compared without spaces: a server may trim
    // the space a split leaves at the end of a line).
    let long: String = (0..400)
        .map(|i| format!("w{:03} ", i % 1000))
        .collect::<String>();
    let long = &long[..2000];
    gw.deliveries
        .send(delivery(2, &channel, display, long))
        .await?;
    let prefix = format!("<{shown}> ");
    let want_long: String = long.chars().filter(|c| *c != ' ').collect();
    let ch = channel.clone();
    let joined = eventually(WAIT, "the long message", || {
        let texts: String = user
            .privmsgs_in(&ch)
            .iter()
            .filter_map(|(_, t)| t.strip_prefix(&prefix))
            .filter(|t| *t != "hello irc")
            .flat_map(|t| t.chars().filter(|c| *c != ' ').collect::<Vec<_>>())
            .collect();
        let done = texts.len() >= want_long.len();
        async move { done.then_some(texts) }
    })
    .await
    .with_context(|| format!("received: {:?}", user.privmsgs_in(&channel)))?;
    assert_eq!(joined, want_long);
    let delivered = gw.delivered.clone();
    eventually(WAIT, "both deliveries answered", || {
        let n = delivered.lock().unwrap_or_else(|e| e.into_inner()).len();
        async move { (n == 2).then_some(()) }
    })
    .await?;

    // An IRC user's message reaches the gateway as an event of the linked room.
    user.privmsg(&channel, "from irc")?;
    let inbound = gw.inbound.clone();
    let ev = eventually(WAIT, "the inbound event", || {
        let found = inbound
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|e| matches!(&e.kind, EventKind::Message(m) if m.body.to_plain() == "from irc"))
            .cloned();
        async move { found }
    })
    .await?;
    assert_eq!(ev.origin.room.0, channel);
    assert_eq!(ev.sender.display_name, user_nick);

    gw.shutdown.cancel();
    tokio::time::timeout(WAIT, gw.task)
        .await
        .context("adapter stops")???;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn inspircd_relays_long_messages_and_reads_the_channel() -> anyhow::Result<()> {
    let s = servers().await?;
    lobby_both_ways(s.inspircd, "alexandria", "alexandria[m]").await
}

#[tokio::test(flavor = "multi_thread")]
async fn ngircd_trims_nicks_to_nicklen_9() -> anyhow::Result<()> {
    let s = servers().await?;
    lobby_both_ways(s.ngircd, "alexandria", "alexan[m]").await
}
