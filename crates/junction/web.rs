//! Public pages, on `[gateway] web`: `GET /paste/{id}`, the whole text of a message that was
//! too long for IRC (IRC got its first lines and a link here; see [`crate::pastes`]).
//!
//! A page is the text as `text/plain; charset=utf-8` and nothing else: no HTML is ever made
//! from what people wrote, and `nosniff` plus a sandboxing content security policy keep a
//! browser from reading the text as markup. Unknown, malformed and expired ids answer 404.
//! Pastes live in the store's `web/pastes` table; those older than 30 days are removed when
//! the gateway starts ([`PasteStore::prune_now`]).

use crate::pastes::PasteStore;
use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The path under which pastes are served: `<public_url>/paste/<id>`.
pub const PASTE_PATH: &str = "/paste";

/// The paste URL base for a public URL (`https://chat.example.org` →
/// `https://chat.example.org/paste`).
pub fn paste_base(public_url: &str) -> String {
    format!("{}{PASTE_PATH}", public_url.trim_end_matches('/'))
}

/// Serves the public pages on `addr` until `shutdown` is cancelled.
pub async fn serve(
    addr: SocketAddr,
    pastes: PasteStore,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for public pages on {addr}"))?;
    serve_listener(listener, pastes, shutdown).await
}

/// Like [`serve`], on a listener already bound (tests bind port 0 and read the port back).
pub async fn serve_listener(
    listener: TcpListener,
    pastes: PasteStore,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let local = listener.local_addr().ok();
    tracing::info!(addr = ?local, "Serving public pages ({PASTE_PATH}/<id>).");
    axum::serve(listener, router(pastes))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("web server failed")
}

/// The routes of the public pages.
pub fn router(pastes: PasteStore) -> axum::Router {
    axum::Router::new()
        .route(&format!("{PASTE_PATH}/{{id}}"), get(paste_handler))
        .with_state(pastes)
}

async fn paste_handler(State(pastes): State<PasteStore>, Path(id): Path<String>) -> Response {
    match pastes.get(&id, junction_core::clock::now_ms()) {
        Ok(Some(p)) => text(StatusCode::OK, p.text),
        Ok(None) => text(
            StatusCode::NOT_FOUND,
            "No such paste (pastes are kept 30 days).\n".into(),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "Could not read a paste.");
            text(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The paste could not be read; try again later.\n".into(),
            )
        }
    }
}

/// A plain-text answer that no browser takes for markup.
fn text(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; sandbox",
        ),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::pastes::{self, TABLE};
    use junction_store::{MemStore, Store};
    use std::sync::Arc;

    async fn start(pastes: PasteStore) -> (String, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(serve_listener(listener, pastes, stop.clone()));
        (base, stop)
    }

    #[tokio::test]
    async fn pastes_are_plain_text_and_unknown_ids_are_404() {
        let store = PasteStore::open(Arc::new(MemStore::new()));
        let text = "<script>alert(1)</script>\nline two\n";
        let id = store
            .put("$e\nirc:local/#lobby", text, junction_core::clock::now_ms())
            .unwrap();
        let (base, stop) = start(store.clone()).await;

        let r = reqwest::get(format!("{base}/paste/{id}")).await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/plain; charset=utf-8"
        );
        assert_eq!(r.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(r.text().await.unwrap(), text);

        for missing in [
            format!("{base}/paste/{}", "0".repeat(32)),
            format!("{base}/paste/..%2F..%2Fetc%2Fpasswd"),
            format!("{base}/paste/"),
            format!("{base}/paste/{}", id.to_uppercase()),
        ] {
            let r = reqwest::get(&missing).await.unwrap();
            assert_eq!(r.status(), 404, "{missing}");
        }
        stop.cancel();
    }

    #[tokio::test]
    async fn old_pastes_are_pruned_and_not_served() {
        let raw: Arc<dyn Store> = Arc::new(MemStore::new());
        let store = PasteStore::open(raw.clone());
        let month = pastes::MAX_AGE.as_millis() as u64;
        let old = store
            .put("old", "old", junction_core::clock::now_ms() - month - 1000)
            .unwrap();
        let new = store
            .put("new", "new", junction_core::clock::now_ms())
            .unwrap();
        let (base, stop) = start(store.clone()).await;
        let r = reqwest::get(format!("{base}/paste/{old}")).await.unwrap();
        assert_eq!(r.status(), 404, "expired, even before pruning");
        store.prune_now();
        let table = format!("web/{TABLE}");
        assert!(raw.kv_get(&table, &old).unwrap().is_none());
        assert!(raw.kv_get(&table, &new).unwrap().is_some());
        stop.cancel();
    }

    #[test]
    fn paste_base_appends_the_path() {
        assert_eq!(
            paste_base("https://chat.example.org/junction/"),
            "https://chat.example.org/junction/paste"
        );
    }
}
