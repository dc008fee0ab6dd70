//! The media proxy: Matrix media (`mxc://server/id`) needs an access token since authenticated
//! media, so the other networks get a signed, expiring gateway URL instead:
//! `<base>/media/{server}/{id}?exp=<unix s>&sig=<hex HMAC-SHA256(key, "{server}/{id}\n{exp}")>`.
//!
//! The HMAC key is made once and kept in the store (`matrix/media`), so links survive a
//! restart. The proxy fetches from `/_matrix/client/v1/media/download/...` with the as_token
//! and refuses media whose event was redacted (the `matrix/media_redacted` table).

use crate::client::Client;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use junction_store::{Store, StoreError};
use sha2::Sha256;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MEDIA_TABLE: &str = "matrix/media";
const REDACTED_TABLE: &str = "matrix/media_redacted";
const EVENT_MEDIA_TABLE: &str = "matrix/event_media";
const KEY: &str = "hmac_key";

/// How long a signed link stays valid.
pub const LINK_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// Signs and checks proxy links, and remembers which media were redacted.
pub struct MediaProxy {
    key: Vec<u8>,
    base: String,
    store: Arc<dyn Store>,
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
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl MediaProxy {
    /// Loads (or makes and stores) the signing key; links start with `base`
    /// (e.g. `http://127.0.0.1:9009`).
    pub fn load(store: Arc<dyn Store>, base: &str) -> Result<Self, StoreError> {
        let key = match store.kv_get(MEDIA_TABLE, KEY)? {
            Some(k) if k.len() >= 32 => k,
            _ => {
                let k: [u8; 32] = rand::random();
                store.kv_put(MEDIA_TABLE, KEY, &k)?;
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
        // HMAC accepts keys of any length, so this is always `Some`.
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).ok()?;
        mac.update(format!("{server}/{id}\n{exp}").as_bytes());
        Some(mac)
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
        if let Err(e) = self
            .store
            .kv_put(EVENT_MEDIA_TABLE, event_id, mxcs.join("\n").as_bytes())
        {
            tracing::warn!(error = %e, "Could not record an event's media.");
        }
    }

    /// Withdraws the media of a redacted event.
    pub fn redacted(&self, event_id: &str) {
        let Ok(Some(list)) = self.store.kv_get(EVENT_MEDIA_TABLE, event_id) else {
            return;
        };
        for mxc in String::from_utf8_lossy(&list).lines() {
            if let Some((server, id)) = parse_mxc(mxc) {
                if let Err(e) = self
                    .store
                    .kv_put(REDACTED_TABLE, &format!("{server}/{id}"), b"1")
                {
                    tracing::warn!(error = %e, "Could not record a redacted medium.");
                }
            }
        }
    }

    /// True when the medium's event was redacted.
    pub fn is_redacted(&self, server: &str, id: &str) -> bool {
        matches!(
            self.store.kv_get(REDACTED_TABLE, &format!("{server}/{id}")),
            Ok(Some(_))
        )
    }
}

/// Query of a proxy link.
#[derive(serde::Deserialize)]
pub struct LinkQuery {
    exp: u64,
    sig: String,
}

/// What the proxy handler needs.
#[derive(Clone)]
pub struct MediaState {
    /// Signing and redaction state.
    pub proxy: Arc<MediaProxy>,
    /// Fetches from the homeserver.
    pub client: Client,
}

/// `GET /media/{server}/{id}?exp=..&sig=..`
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
    match st.client.download(&server, &id).await {
        Ok((content_type, bytes)) => {
            ([(header::CONTENT_TYPE, content_type)], bytes).into_response()
        }
        Err(e) if e.status() == Some(404) => (StatusCode::NOT_FOUND, "not found").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, %server, %id, "Could not fetch media for the proxy.");
            (StatusCode::BAD_GATEWAY, "homeserver unavailable").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
