//! The `junction` gateway as a library: config loading, wiring of the adapters around the
//! router, metrics. The binary in `main.rs` is a thin CLI over this.
#![deny(missing_docs)]

pub mod admin;
pub mod cli;
pub mod command_limit;
pub mod config;
pub mod doctor;
pub mod gateway;
pub mod memory;
pub mod metrics;
pub mod pastes;
pub mod ratelimit;
pub mod status;
pub mod web;
pub mod wiring;

pub use config::{load, Config, ConfigErrors};

use anyhow::Context;
use junction_core::Router;
use junction_store::{PgStore, SledStore, Store};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// Runs the gateway with `config` until SIGINT or SIGTERM, then shuts it down cleanly.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let on_signal = shutdown.clone();
    let signals = tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!(signal = "SIGINT", "Shutting down."),
            _ = terminate.recv() => tracing::info!(signal = "SIGTERM", "Shutting down."),
            _ = on_signal.cancelled() => {}
        }
        on_signal.cancel();
    });
    let networks: Vec<String> = config.networks().iter().map(|n| n.to_string()).collect();
    tracing::info!(
        bridges = config.bridges.len(),
        networks = %networks.join(", "),
        "Gateway starting."
    );
    let result = serve(config, shutdown.clone()).await;
    shutdown.cancel();
    let _ = signals.await;
    tracing::info!("Gateway stopped.");
    result
}

/// Opens the store `config` names: sled in `<data_dir>/store` (made if missing; a gateway
/// still stopping may hold it a moment, so this waits, bounded, unless `shutdown` ends the
/// wait), or PostgreSQL (migrated at open). The PostgreSQL URL is never logged.
pub async fn open_store(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_stores(config, shutdown).await?.0)
}

/// [`open_store`], and the PostgreSQL store itself when it is one (for its active lock).
async fn open_stores(
    config: &Config,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Arc<dyn Store>, Option<Arc<PgStore>>)> {
    match &config.gateway.store {
        config::StoreLocation::Postgres(url) => {
            let url = url.clone();
            let store = tokio::task::spawn_blocking(move || PgStore::open(url.expose()))
                .await
                .context("the store opener stopped")?
                .context("cannot open the PostgreSQL store")?;
            tracing::info!(schema = store.schema(), "Store opened on PostgreSQL.");
            let store = Arc::new(store);
            Ok((store.clone(), Some(store)))
        }
        config::StoreLocation::Sled => {
            let data_dir = config.gateway.data_dir.clone();
            std::fs::create_dir_all(&data_dir).with_context(|| {
                format!("cannot create the data directory {}", data_dir.display())
            })?;
            let store_path = data_dir.join("store");
            let (path, stop) = (store_path.clone(), shutdown.clone());
            let store = tokio::task::spawn_blocking(move || {
                SledStore::open_within(&path, std::time::Duration::from_secs(15), &|| {
                    stop.is_cancelled()
                })
            })
            .await
            .context("the store opener stopped")?
            .with_context(|| format!("cannot open the store at {}", store_path.display()))?;
            Ok((Arc::new(store), None))
        }
    }
}

/// Runs the gateway for `config` until `shutdown` is cancelled: opens the store
/// ([`open_store`]; removing pastes older than 30 days), starts one adapter per configured network,
/// the metrics server and the public pages ([`web`]) if configured, and the route loop; on
/// shutdown waits (bounded) for the adapters to part and flushes the store.
///
/// A network that fails (bad credentials, server gone for good) is logged and reported on
/// `/health`; the others keep running.
pub async fn serve(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (store, pg) = open_stores(&config, &shutdown).await?;
    let networks = config.networks();
    let metrics = Arc::new(metrics::Metrics::new(networks.clone()));
    let health = Arc::new(metrics::Health::new(networks));
    if let Some(addr) = config.gateway.metrics {
        let (m, h, stop) = (metrics.clone(), health.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, h, stop).await {
                tracing::error!(error = %e, "The metrics server stopped.");
            }
        });
    }
    // On PostgreSQL one gateway is active at a time; the others wait as standbys.
    let lost = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(pg) = &pg {
        if !wait_active(pg, &health, &shutdown, &lost).await? {
            return Ok(());
        }
    }
    let pastes = pastes::PasteStore::open(store.clone());
    pastes.prune_now();
    let links = gateway::initial_links(&config.bridges, store.as_ref())?;
    let router = Router::new(links).context("the links do not fit together")?;

    let mut hub = gateway::Hub::new(store.clone());
    if let Some(url) = config.gateway.public_url.as_deref() {
        hub = hub.with_pastes(Arc::new(pastes.clone().linked(web::paste_base(url))));
    }
    let mut adapters = tokio::task::JoinSet::new();
    // One adapter per configured network instance, each built by its network.
    for configured in &config.sections {
        let network = configured.section.network.clone();
        let cx = hub.attach(network.clone(), &router, &shutdown).context;
        let follow = |kind: &'static str, count: Arc<AtomicU64>| {
            metrics.follow(&network, kind, count);
        };
        let admins = config.admins_on(&network);
        let build = junction_network::Build {
            admins: &admins,
            pastes: config.gateway.public_url.is_some(),
            follow: &follow,
            data_dir: &config.gateway.data_dir,
        };
        match configured.kind.adapter(&configured.section, &build) {
            Ok(adapter) => {
                adapters.spawn(gateway::run_adapter(adapter, cx));
            }
            Err(e) => {
                tracing::error!(%network, error = %e, "Could not build the adapter; the other networks keep running.");
            }
        }
    }
    if let Some(addr) = config.gateway.web {
        let (pastes, stop) = (pastes.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = web::serve(addr, pastes, stop).await {
                tracing::error!(error = %e, "The web server stopped.");
            }
        });
    }
    for link in router.links() {
        let rooms: Vec<String> = link.rooms.iter().map(|r| r.to_string()).collect();
        tracing::info!(bridge = %link.bridge, rooms = %rooms.join(", "), "Bridge linked.");
    }
    let parts = gateway::Parts {
        store: store.clone(),
        router,
        membership: config.gateway.membership,
        lurker_window: config.gateway.lurker_window,
        metrics,
        health,
        admin: admin::Admin::new(&config),
        store_retry: config.gateway.store_retry,
        limits: config.gateway.limits,
        retention: config.gateway.retention.clone(),
        private_messages: config.gateway.private_messages,
    };
    let result = gateway::route(parts, hub, shutdown.clone()).await;
    shutdown.cancel();
    // Adapters part their rooms on shutdown; do not wait forever for a dead server.
    let parting = async { while adapters.join_next().await.is_some() {} };
    if tokio::time::timeout(std::time::Duration::from_secs(10), parting)
        .await
        .is_err()
    {
        tracing::warn!("Some adapters did not stop within 10 s.");
        adapters.abort_all();
    }
    let flushed = store.flush();
    checkpoint(&config, store, flushed.is_ok()).await;
    if lost.load(std::sync::atomic::Ordering::Relaxed) {
        anyhow::bail!(
            "stopped: the active lock on PostgreSQL was lost, another gateway may be active"
        );
    }
    stop_result(result, flushed)
}

/// Once a sled store is flushed and no longer used (its last handle is `store`), opens it
/// once more so that sled writes its snapshot ([`SledStore::checkpoint`]): the next start
/// then reads only what is written after this stop. Skipped when anything else still holds
/// the store, and bounded; a failure is only logged (the next start reads the log instead).
async fn checkpoint(config: &Config, store: Arc<dyn Store>, flushed: bool) {
    let config::StoreLocation::Sled = &config.gateway.store else {
        return;
    };
    if !flushed || Arc::strong_count(&store) != 1 {
        tracing::debug!("The store is still in use; no checkpoint at this stop.");
        return;
    }
    drop(store);
    let path = config.gateway.data_dir.join("store");
    let started = std::time::Instant::now();
    let done = tokio::task::spawn_blocking(move || {
        SledStore::checkpoint(&path, std::time::Duration::from_secs(3))
    })
    .await;
    match done {
        Ok(Ok(())) => tracing::info!(
            took_ms = started.elapsed().as_millis() as u64,
            "Store checkpointed: the next start reads only what is written after this stop."
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "The store could not be checkpointed at this stop; the next start reads its log.")
        }
        Err(e) => tracing::warn!(error = %e, "The store checkpoint stopped."),
    }
}

/// Waits, as a standby (`/health` says `standby`), until this gateway holds the active lock of
/// its PostgreSQL store (true), or `shutdown` (false). The lock is held by the store's own
/// connection, so a gateway that dies lets go only once its last write is done. Once held, a
/// task watches it: if that connection is lost, `lost` is set and `shutdown` cancelled, since
/// another gateway may take over.
async fn wait_active(
    pg: &Arc<PgStore>,
    health: &metrics::Health,
    shutdown: &CancellationToken,
    lost: &Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<bool> {
    let ask = |pg: Arc<PgStore>| async move {
        tokio::task::spawn_blocking(move || pg.try_become_active())
            .await
            .context("the lock request stopped")?
            .context("cannot ask PostgreSQL for the active lock")
    };
    let mut said = false;
    while !ask(pg.clone()).await? {
        if !said {
            health.set_standby(true);
            tracing::info!("Another gateway is active on this store; waiting as a standby.");
            said = true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
        }
    }
    if said {
        tracing::info!("The active gateway is gone; taking over.");
    }
    health.set_standby(false);
    let (watched, lost, stop) = (pg.clone(), lost.clone(), shutdown.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
            if watched.lost_active() {
                tracing::error!("The connection holding the active lock was lost; stopping.");
                lost.store(true, std::sync::atomic::Ordering::Relaxed);
                stop.cancel();
                return;
            }
        }
    });
    Ok(true)
}

/// What the gateway ends with: the route loop's error first (it says why the gateway stops,
/// e.g. a store that kept refusing writes), then the last flush's; a flush error after a
/// route error is only logged, so it does not hide the reason.
fn stop_result(
    routed: anyhow::Result<()>,
    flushed: junction_store::Result<()>,
) -> anyhow::Result<()> {
    match (routed, flushed) {
        (Err(e), Err(f)) => {
            tracing::error!(error = %f, "Could not flush the store while stopping.");
            Err(e)
        }
        (Ok(()), Err(f)) => Err(f.into()),
        (routed, Ok(())) => routed,
    }
}

#[cfg(test)]
mod tests {
    use super::stop_result;
    use junction_store::StoreError;

    #[test]
    fn the_route_error_is_kept_over_the_last_flush_error() {
        let routed = Err(anyhow::anyhow!(
            "the store has refused writes for 60 s; exiting"
        ));
        let flushed = Err(StoreError::Backend("no space left".into()));
        let e = stop_result(routed, flushed).expect_err("an error");
        assert!(e.to_string().contains("refused writes"), "{e}");
    }

    #[test]
    fn a_flush_error_alone_is_the_result() {
        let e = stop_result(Ok(()), Err(StoreError::Backend("no space left".into())))
            .expect_err("an error");
        assert!(e.to_string().contains("no space left"), "{e}");
        assert!(stop_result(Ok(()), Ok(())).is_ok());
    }
}
