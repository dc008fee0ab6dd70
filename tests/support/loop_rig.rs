//! The route loop in process, for the tests of the loop itself: one bridge `lobby` linking
//! an XMPP room and an IRC channel, both networks attached to a hub whose adapters' ends the
//! test holds.

use junction::gateway::{route, Hub, Parts};
use junction::metrics::{Health, Metrics};
use junction_core::router::Link;
use junction_core::{AdapterContext, BridgeName, Event, Inbound, NetworkId, RoomRef, Router};
use junction_store::Store;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The XMPP room of the bridge.
pub const MUC: &str = "lobby@conference.xmpp.test";

/// A running route loop and the adapters' ends of its channels.
pub struct LoopRig {
    /// What the XMPP adapter would get: say things through its `inbound`.
    pub xmpp: AdapterContext,
    /// What the IRC adapter would get: read its `deliveries`, set its `status` (held, read
    /// or not, so the IRC side stays attached).
    #[allow(dead_code)]
    pub irc: AdapterContext,
    #[allow(dead_code)]
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
    /// The config's data directory (nothing is written there: the store is the test's).
    _dir: tempfile::TempDir,
}

/// Starts the route loop on `store` with `gateway` lines in the config's `[gateway]` table.
pub fn start(gateway: &str, store: Arc<dyn Store>) -> anyhow::Result<LoopRig> {
    let text = format!(
        r#"
xmpp = {{ component = "bridge.xmpp.test", server = "127.0.0.1:5347", secret = "s" }}
irc = {{ local = {{ server = "127.0.0.1:6667", nick = "junction" }} }}
bridge = [{{ name = "lobby", xmpp = "{MUC}", irc = "local/#lobby" }}]

[gateway]
data_dir = "data"
{gateway}
"#
    );
    let dir = tempfile::tempdir()?;
    let config = junction::config::parse(&text, "loop.toml", dir.path(), &|_| None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let xmpp = NetworkId::new("xmpp");
    let irc = NetworkId::new("irc:local");
    let router = Router::new(vec![Link {
        bridge: BridgeName::new("lobby"),
        rooms: vec![
            RoomRef::new("xmpp", MUC),
            RoomRef::new("irc:local", "#lobby"),
        ],
    }])?;
    let metrics = Arc::new(Metrics::new([xmpp.clone(), irc.clone()]));
    let shutdown = CancellationToken::new();
    let mut hub = Hub::new(store.clone());
    let xmpp_cx = hub.attach(xmpp.clone(), &router, &shutdown).context;
    let irc_cx = hub.attach(irc.clone(), &router, &shutdown).context;
    let parts = Parts {
        store,
        router,
        membership: config.gateway.membership,
        lurker_window: None,
        metrics: metrics.clone(),
        health: Arc::new(Health::new([xmpp, irc])),
        admin: junction::admin::Admin::new(&config),
        store_retry: config.gateway.store_retry,
        limits: config.gateway.limits,
        retention: config.gateway.retention.clone(),
        private_messages: config.gateway.private_messages,
    };
    let task = tokio::spawn(route(parts, hub, shutdown.clone()));
    Ok(LoopRig {
        xmpp: xmpp_cx,
        irc: irc_cx,
        metrics,
        shutdown,
        task,
        _dir: dir,
    })
}

impl LoopRig {
    /// Hands `event` to the loop as the XMPP adapter would and waits for its answer.
    #[allow(dead_code)]
    pub async fn say(&self, event: Event) -> anyhow::Result<Result<(), String>> {
        let (inb, ack) = Inbound::with_ack(event);
        self.xmpp
            .inbound
            .send(inb)
            .await
            .map_err(|_| anyhow::anyhow!("loop gone"))?;
        tokio::time::timeout(std::time::Duration::from_secs(30), ack)
            .await?
            .map_err(|_| anyhow::anyhow!("ack dropped"))
    }
}
