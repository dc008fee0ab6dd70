//! The media proxy: Matrix media (`mxc://server/id`) needs an access token since authenticated
//! media, so the other networks get a signed, expiring gateway URL instead:
//! `<base>/media/{server}/{id}?exp=<unix s>&sig=<hex HMAC-SHA256(key, "{server}/{id}\n{exp}")>`.
//!
//! The HMAC key is made once and kept in the adapter's `media` table (`matrix/media` in the
//! store), so links survive a restart. The proxy fetches from
//! `/_matrix/client/v1/media/download/...` with the as_token and refuses media whose event
//! was redacted (the `media_redacted` table).

use crate::connection::Client;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use junction_core::{AdapterStore, StoreError};
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The adapter's tables (`matrix/<table>` in the store): the signing key, the media of
/// redacted events, each event's media.
const MEDIA_TABLE: &str = "media";
const REDACTED_TABLE: &str = "media_redacted";
const EVENT_MEDIA_TABLE: &str = "event_media";
const KEY: &str = "hmac_key";

/// How long a signed link stays valid.
pub const LINK_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Signs and checks proxy links, and remembers which media were redacted.
pub struct MediaProxy {
    key: Vec<u8>,
    base: String,
    store: Arc<dyn AdapterStore>,
}

impl std::fmt::Debug for MediaProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaProxy")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// `server` and `id` of an `mxc://server/id` URI.
pub fn parse_mxc(mxc: &str) -> Option<(&str, &str)> {
    let (server, id) = mxc.strip_prefix("mxc://")?.split_once('/')?;
    let ok = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    };
    (ok(server) && ok(id)).then_some((server, id))
}

fn now_s() -> u64 {
    junction_core::clock::now_ms() / 1000
}

impl MediaProxy {
    /// Loads (or makes and stores) the signing key from the adapter's part of the store;
    /// links start with `base` (e.g. `http://127.0.0.1:9009`).
    pub fn load(store: Arc<dyn AdapterStore>, base: &str) -> Result<Self, StoreError> {
        let key = match store.get(MEDIA_TABLE, KEY)? {
            Some(k) if k.len() >= 32 => k,
            _ => {
                let k: [u8; 32] = rand::random();
                store.put(MEDIA_TABLE, KEY, &k)?;
                k.to_vec()
            }
        };
        Ok(Self {
            key,
            base: base.trim_end_matches('/').to_owned(),
            store,
        })
    }

    fn mac(&self, server: &str, id: &str, exp: u64) -> Option<Hmac<Sha256>> {
        self.mac_of(&format!("{server}/{id}\n{exp}"))
    }

    /// The HMAC of `message` under the proxy's key.
    pub(crate) fn mac_of(&self, message: &str) -> Option<Hmac<Sha256>> {
        // HMAC accepts keys of any length, so this is always `Some`.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(message.as_bytes());
        Some(mac)
    }

    /// The base links start with.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// The adapter's part of the store.
    pub(crate) fn store(&self) -> &dyn AdapterStore {
        &*self.store
    }

    /// A signed link to an `mxc://` URI, valid for [`LINK_LIFETIME`]; `None` when it is not one.
    pub fn link(&self, mxc: &str) -> Option<String> {
        self.link_until(mxc, now_s() + LINK_LIFETIME.as_secs())
    }

    fn link_until(&self, mxc: &str, exp: u64) -> Option<String> {
        let (server, id) = parse_mxc(mxc)?;
        let sig = hex::encode(self.mac(server, id, exp)?.finalize().into_bytes());
        Some(format!(
            "{}/media/{server}/{id}?exp={exp}&sig={sig}",
            self.base
        ))
    }

    /// True when the signature is right (checked in constant time) and the link not expired.
    pub fn verify(&self, server: &str, id: &str, exp: u64, sig: &str) -> bool {
        if exp < now_s() {
            return false;
        }
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        self.mac(server, id, exp)
            .is_some_and(|m| m.verify_slice(&sig).is_ok())
    }

    /// Remembers the media an event carries, so its redaction can withdraw them.
    pub fn remember(&self, event_id: &str, mxcs: &[String]) {
        if mxcs.is_empty() {
            return;
        }
        if let Err(e) =
            self.store
                .put_dated(EVENT_MEDIA_TABLE, event_id, mxcs.join("\n").as_bytes())
        {
            tracing::warn!(error = %e, "Could not record an event's media.");
        }
    }

    /// Withdraws the media of a redacted event.
    pub fn redacted(&self, event_id: &str) {
        let Ok(Some(list)) = self.store.get(EVENT_MEDIA_TABLE, event_id) else {
            return;
        };
        for mxc in String::from_utf8_lossy(&list).lines() {
            if let Some((server, id)) = parse_mxc(mxc) {
                if let Err(e) = self
                    .store
                    .put(REDACTED_TABLE, &format!("{server}/{id}"), b"1")
                {
                    tracing::warn!(error = %e, "Could not record a redacted medium.");
                }
            }
        }
    }

    /// True when the medium's event was redacted.
    pub fn is_redacted(&self, server: &str, id: &str) -> bool {
        matches!(
            self.store.get(REDACTED_TABLE, &format!("{server}/{id}")),
            Ok(Some(_))
        )
    }
}

/// Query of a proxy link.
#[derive(serde::Deserialize)]
pub struct LinkQuery {
    pub(crate) exp: u64,
    pub(crate) sig: String,
}

/// Most proxy downloads streaming at once; one more is answered 503 with `Retry-After`.
pub const MAX_PROXY_DOWNLOADS: usize = 16;

/// Largest medium the proxy passes on, in bytes (the gateway's media cap, 50 MiB): a longer
/// one is refused when the homeserver announces its length, or cut off at the cap.
pub const MAX_PROXY_BYTES: u64 = crate::connection::MAX_MEDIA_BYTES as u64;

/// Seconds a client is told to wait when every download slot is taken.
pub const RETRY_AFTER_SECS: u64 = 5;

/// The only types served `inline` (shown by a browser); everything else is an attachment.
/// SVG is not among them: it can carry script.
pub const INLINE_TYPES: &[&str] = &["image/png", "image/jpeg", "image/gif", "image/webp"];

/// What the proxy handler needs.
#[derive(Clone)]
pub struct MediaState {
    /// Signing and redaction state.
    pub proxy: Arc<MediaProxy>,
    /// Fetches from the homeserver.
    pub client: Client,
    /// Download slots ([`MAX_PROXY_DOWNLOADS`]); a download holds one until its body ends.
    pub slots: Arc<Semaphore>,
    /// Slots of encrypted files, held whole in memory to be checked and decrypted
    /// ([`crate::media_encrypted::MAX_ENCRYPTED_DOWNLOADS`]), each besides a download slot.
    pub encrypted_slots: Arc<Semaphore>,
    /// The size cap ([`MAX_PROXY_BYTES`]).
    pub max_bytes: u64,
    /// Encrypted files refused because their ciphertext did not match its hash (for
    /// `/metrics`).
    pub hash_mismatches: Arc<std::sync::atomic::AtomicU64>,
}

impl MediaState {
    /// The proxy with the default bounds.
    pub fn new(proxy: Arc<MediaProxy>, client: Client) -> Self {
        Self {
            proxy,
            client,
            slots: Arc::new(Semaphore::new(MAX_PROXY_DOWNLOADS)),
            encrypted_slots: Arc::new(Semaphore::new(
                crate::media_encrypted::MAX_ENCRYPTED_DOWNLOADS,
            )),
            max_bytes: MAX_PROXY_BYTES,
            hash_mismatches: Arc::default(),
        }
    }

    /// A download slot of `slots`, or None when every one is taken (answer [`busy`]).
    pub(crate) fn slot(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        slots.clone().try_acquire_owned().ok()
    }
}

/// The answer when every download slot is taken: `503`, to come back after
/// [`RETRY_AFTER_SECS`].
pub(crate) fn busy() -> Response {
    tracing::info!("Every media proxy slot is taken; asked the client to come back.");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())],
        "busy, try again shortly",
    )
        .into_response()
}

/// A medium's answer: `body` served as `uploaded` (see [`served_type`]) with the headers that
/// keep a browser from running it on this origin.
pub(crate) fn medium_response(body: Body, uploaded: &str, len: Option<u64>) -> Response {
    let (content_type, disposition) = served_type(uploaded);
    let mut r = Response::new(body);
    let h = r.headers_mut();
    let mut put = |name, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            h.insert(name, v);
        }
    };
    put(header::CONTENT_TYPE, &content_type);
    put(header::CONTENT_DISPOSITION, disposition);
    put(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    put(header::CONTENT_SECURITY_POLICY, "sandbox");
    if let Some(len) = len {
        put(header::CONTENT_LENGTH, &len.to_string());
    }
    r
}

/// The `Content-Type` and `Content-Disposition` a medium is served with: the four safe image
/// types inline, anything else as an attachment under its own (well-formed) type or
/// `application/octet-stream`. Parameters (`charset=`...) are dropped.
pub fn served_type(uploaded: &str) -> (String, &'static str) {
    let essence = uploaded
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if INLINE_TYPES.contains(&essence.as_str()) {
        return (essence, "inline");
    }
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let well_formed = essence
        .split_once('/')
        .is_some_and(|(t, sub)| token(t) && token(sub));
    if well_formed {
        (essence, "attachment")
    } else {
        ("application/octet-stream".to_owned(), "attachment")
    }
}

/// The body of a proxied medium: the homeserver's response read chunk by chunk, ended with
/// an error (the connection is cut) past `max` bytes. Holds its download slot until done.
fn capped_body(resp: reqwest::Response, max: u64, slot: OwnedSemaphorePermit) -> Body {
    struct Read {
        resp: reqwest::Response,
        sent: u64,
        max: u64,
        done: bool,
        _slot: OwnedSemaphorePermit,
    }
    let state = Read {
        resp,
        sent: 0,
        max,
        done: false,
        _slot: slot,
    };
    let stream = futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        match st.resp.chunk().await {
            Ok(Some(chunk)) => {
                st.sent += chunk.len() as u64;
                if st.sent > st.max {
                    st.done = true;
                    tracing::warn!(
                        max = st.max,
                        "A proxied medium passed the size cap; cut off."
                    );
                    let e = std::io::Error::other("medium over the size cap");
                    return Some((Err(e), st));
                }
                Some((Ok(chunk), st))
            }
            Ok(None) => None,
            Err(e) => {
                st.done = true;
                tracing::info!(error = %e, "A proxied medium stopped arriving.");
                Some((Err(std::io::Error::other(e.to_string())), st))
            }
        }
    });
    Body::from_stream(stream)
}

/// `GET /media/{server}/{id}?exp=..&sig=..`
///
/// Streams the medium from the homeserver (never whole in memory) up to the size cap, at
/// most [`MAX_PROXY_DOWNLOADS`] at once, with headers that keep a browser from running
/// anything it contains on this origin: `Content-Disposition: attachment` (inline only for
/// [`INLINE_TYPES`]), `X-Content-Type-Options: nosniff`, `Content-Security-Policy: sandbox`.
pub async fn serve(
    State(st): State<MediaState>,
    Path((server, id)): Path<(String, String)>,
    Query(q): Query<LinkQuery>,
) -> Response {
    if !st.proxy.verify(&server, &id, q.exp, &q.sig) {
        return (StatusCode::FORBIDDEN, "bad or expired link").into_response();
    }
    if st.proxy.is_redacted(&server, &id) {
        return (StatusCode::GONE, "removed").into_response();
    }
    let Some(slot) = st.slot(&st.slots) else {
        return busy();
    };
    match st.client.download_stream(&server, &id).await {
        Ok((_, Some(len), _)) if len > st.max_bytes => {
            tracing::info!(%server, %id, len, "Refused to proxy a medium over the size cap.");
            (StatusCode::PAYLOAD_TOO_LARGE, "too large").into_response()
        }
        Ok((content_type, len, resp)) => {
            medium_response(capped_body(resp, st.max_bytes, slot), &content_type, len)
        }
        Err(e) => fetch_failed(&e, &server, &id),
    }
}

/// The answer when the homeserver did not give a medium: `404` for one it does not have,
/// `502` otherwise (logged).
pub(crate) fn fetch_failed(e: &crate::connection::ClientError, server: &str, id: &str) -> Response {
    if e.status() == Some(404) {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    }
    tracing::warn!(error = %e, %server, %id, "Could not fetch media for the proxy.");
    (StatusCode::BAD_GATEWAY, "homeserver unavailable").into_response()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    use axum::routing::get;
    use junction_core::Secret;
    use tower::ServiceExt;

    /// A fake homeserver's media repository: `/html` is a small `text/html` file, `/big`
    /// streams 1 MiB without announcing its length, `/slow` sends a byte and then hangs.
    async fn fake_homeserver() -> String {
        let html = || async {
            (
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                "<script>alert(1)</script>",
            )
        };
        let big = || async {
            let chunks =
                (0..16).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'x'; 65536])));
            (
                [(header::CONTENT_TYPE, "image/png")],
                Body::from_stream(futures::stream::iter(chunks)),
            )
        };
        let slow = || async {
            let first = futures::stream::once(async {
                Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"x"))
            });
            let never = futures::stream::pending();
            Body::from_stream(futures::StreamExt::chain(first, never))
        };
        let app = axum::Router::new()
            .route("/_matrix/client/v1/media/download/hs/html", get(html))
            .route("/_matrix/client/v1/media/download/hs/big", get(big))
            .route("/_matrix/client/v1/media/download/hs/slow", get(slow));
        homeserver_serving(app).await
    }

    /// `app` served on a loopback port (a homeserver's media repository); its base URL.
    pub(crate) async fn homeserver_serving(app: axum::Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        format!("http://{addr}")
    }

    /// The proxy's state for a homeserver at `base`, links starting `http://gw`.
    pub(crate) fn state_for(base: &str) -> MediaState {
        let store = junction_store::scoped(
            Arc::new(junction_store::MemStore::new()),
            junction_core::NetworkId::new("matrix"),
        );
        let proxy = Arc::new(MediaProxy::load(store, "http://gw").expect("key"));
        let client = Client::new(
            base,
            Secret::new("as"),
            tokio_util::sync::CancellationToken::new(),
        );
        MediaState::new(proxy, client)
    }

    async fn proxied(slots: usize, max_bytes: u64) -> (axum::Router, Arc<MediaProxy>) {
        let mut st = state_for(&fake_homeserver().await);
        let proxy = st.proxy.clone();
        st.slots = Arc::new(Semaphore::new(slots));
        st.max_bytes = max_bytes;
        let app = axum::Router::new()
            .route("/media/{server}/{id}", get(serve))
            .with_state(st);
        (app, proxy)
    }

    fn request(proxy: &MediaProxy, id: &str) -> axum::http::Request<Body> {
        let link = proxy.link(&format!("mxc://hs/{id}")).expect("link");
        let path = link.strip_prefix("http://gw").expect("base");
        axum::http::Request::get(path)
            .body(Body::empty())
            .expect("request")
    }

    #[test]
    fn only_safe_images_are_inline() {
        assert_eq!(served_type("image/PNG"), ("image/png".into(), "inline"));
        assert_eq!(served_type("image/webp"), ("image/webp".into(), "inline"));
        assert_eq!(
            served_type("image/svg+xml"),
            ("image/svg+xml".into(), "attachment")
        );
        assert_eq!(
            served_type("text/html; charset=utf-8"),
            ("text/html".into(), "attachment")
        );
        assert_eq!(
            served_type("text/html\r\nX: y"),
            ("application/octet-stream".into(), "attachment")
        );
        assert_eq!(
            served_type(""),
            ("application/octet-stream".into(), "attachment")
        );
    }

    #[tokio::test]
    async fn html_is_an_attachment_in_a_sandbox() {
        let (app, proxy) = proxied(4, MAX_PROXY_BYTES).await;
        let r = app.oneshot(request(&proxy, "html")).await.expect("answer");
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html");
        assert_eq!(h[header::CONTENT_DISPOSITION], "attachment");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "sandbox");
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(&body[..], b"<script>alert(1)</script>");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_is_cut_off() {
        let (app, proxy) = proxied(4, 100_000).await;
        let r = app
            .clone()
            .oneshot(request(&proxy, "big"))
            .await
            .expect("answer");
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[header::CONTENT_DISPOSITION], "inline");
        // The body errors out once past the cap: at most the cap plus one chunk was read.
        let mut body = r.into_body().into_data_stream();
        let mut got = 0usize;
        let mut failed = false;
        while let Some(chunk) = futures::StreamExt::next(&mut body).await {
            match chunk {
                Ok(c) => got += c.len(),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
        assert!(failed, "the stream must end in an error");
        assert!(got <= 100_000, "{got} bytes passed the cap");
        // Unbounded by the cap, the same medium passes whole.
        let (app, proxy) = proxied(4, MAX_PROXY_BYTES).await;
        let r = app.oneshot(request(&proxy, "big")).await.expect("answer");
        let body = axum::body::to_bytes(r.into_body(), 1 << 21)
            .await
            .expect("body");
        assert_eq!(body.len(), 16 * 65536);
    }

    #[tokio::test]
    async fn over_the_download_limit_is_503_with_retry_after() {
        let (app, proxy) = proxied(1, MAX_PROXY_BYTES).await;
        let held = app
            .clone()
            .oneshot(request(&proxy, "slow"))
            .await
            .expect("answer");
        assert_eq!(held.status(), StatusCode::OK);
        let r = app
            .clone()
            .oneshot(request(&proxy, "html"))
            .await
            .expect("answer");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            r.headers()[header::RETRY_AFTER],
            RETRY_AFTER_SECS.to_string().as_str()
        );
        // The slot comes back when the slow body is dropped.
        drop(held);
        let r = app.oneshot(request(&proxy, "html")).await.expect("answer");
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn mxc_uris_parse() {
        assert_eq!(
            parse_mxc("mxc://matrix.test/AbC"),
            Some(("matrix.test", "AbC"))
        );
        assert_eq!(parse_mxc("mxc://matrix.test/"), None);
        assert_eq!(parse_mxc("https://x/y"), None);
        assert_eq!(parse_mxc("mxc://a/b/../c"), None);
    }
}
