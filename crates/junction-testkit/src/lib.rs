//! Dev-only: installs and starts the real chat servers (Synapse, Prosody, InspIRCd, ngIRCd)
//! on 127.0.0.1 for the end-to-end tests, the demo and CI, and gives tests ordinary-user
//! clients for each network that watch the lobby from the outside.
//!
//! - [`servers`]: install (idempotent), start once per machine state, wait until ready,
//!   stop only what was started.
//! - [`clients`]: a Matrix C-S client, an XMPP c2s client and an IRC client, each able to
//!   send and to wait (deadline-bounded) for what arrives.
//! - [`gateway`]: the gateway's config sections for a test slot.
//! - [`solo`]: one adapter started on its own, on an in-memory store, with the test
//!   holding the gateway's ends of its channels; the deliveries it hands the adapter.
//! - [`eventually`], [`unique`] and [`free_port`]: bounded waits, unique names and free
//!   ports, so tests never sleep as synchronisation and never collide.
#![forbid(unsafe_code)]

pub mod clients;
pub mod gateway;
pub mod servers;
pub mod solo;

pub use solo::{delivery, is_message, person, said, solo, solo_on, solo_with, Inbox, Solo};

use std::future::Future;
use std::time::{Duration, Instant};

/// A name unique to this process and call (`prefix` + pid + counter + random suffix),
/// lower-case ASCII, usable as a room name, nick or localpart.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "{prefix}{}{n}{:x}",
        std::process::id() % 10000,
        nanos % 4096
    )
}

/// Sends the log of the code under test to the test's output, filtered by `RUST_LOG` or,
/// when that is not set, by `default` (e.g. `junction_xmpp=info`). Only the first call in a
/// process takes effect.
pub fn test_log(default: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_test_writer()
        .try_init();
}

/// A free loopback port (bound, then released), for a server a test starts.
pub fn free_port() -> anyhow::Result<u16> {
    use anyhow::Context as _;
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Polls `f` until it yields `Some`, or fails after `deadline` with `what` in the error.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() >= end {
            anyhow::bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn eventually_times_out() {
        let r: anyhow::Result<()> =
            eventually(Duration::from_millis(50), "never", || async { None }).await;
        assert!(r.is_err());
        let v = eventually(Duration::from_secs(1), "now", || async { Some(3) }).await;
        assert_eq!(v.ok(), Some(3));
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique("t"), unique("t"));
    }
}
