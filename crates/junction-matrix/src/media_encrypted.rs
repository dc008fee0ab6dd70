//! Encrypted attachments through the media proxy.
//!
//! In an encrypted room a file is uploaded encrypted (AES-256-CTR) and its message carries
//! what decrypts it: `file: {url, key: {k, …}, iv, hashes: {sha256}}`, the spec's
//! `EncryptedFile`. The other networks get a link that carries neither the key nor the
//! `mxc://` URI:
//! `<base>/media/encrypted/{token}/{name}?exp=<unix s>&sig=<hex HMAC-SHA256(key, "encrypted {token}\n{exp}")>`.
//! `token` is an HMAC of the file's URI, key, counter block, hash and type under the proxy's
//! key (unguessable without it, the same for the same file), and the `file` is kept in the
//! store under it (`matrix/media_encrypted`, dated: forgotten with the message map after
//! `retention_days`). `name` is the file name reduced to `[A-Za-z0-9._-]`, for the clients
//! that guess a type from it; the proxy does not read it.
//!
//! Serving such a link downloads the ciphertext whole (bounded by the media cap, at most
//! [`MAX_ENCRYPTED_DOWNLOADS`] at once, each besides a download slot), checks its SHA-256
//! against the message's before anything is sent, decrypts it and answers with the plain
//! bytes under the same headers as any medium. A ciphertext that does not match is refused
//! with `502`, logged and counted.

use crate::media::{self, parse_mxc, LinkQuery, MediaProxy, MediaState, LINK_LIFETIME};
use aes::cipher::{KeyIvInit, StreamCipher};
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hmac::Mac;
use ruma::events::room::{EncryptedFile, EncryptedFileHashAlgorithm, EncryptedFileInfo};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// The adapter's table (`matrix/media_encrypted` in the store) of encrypted files' key
/// material: link token → `{"file": <EncryptedFile>, "mime": <type or null>}`.
pub const ENCRYPTED_TABLE: &str = "media_encrypted";

/// Most encrypted files downloaded at once: each is held whole in memory (up to the media
/// cap) to be checked before it is decrypted and sent. One more is answered `503`.
pub const MAX_ENCRYPTED_DOWNLOADS: usize = 4;

/// How many bytes of the HMAC name a file (128 bits).
const TOKEN_BYTES: usize = 16;

/// What decrypts one file, read from a message's `file`.
struct Keyed {
    mxc: String,
    key: [u8; 32],
    iv: [u8; 16],
    sha256: [u8; 32],
}

/// The key material of an `EncryptedFile` (version 2, with a SHA-256 hash and an `mxc://`
/// URI the proxy can fetch); None for anything else.
fn keyed(file: &Value) -> Option<Keyed> {
    let file: EncryptedFile = serde_json::from_value(file.clone()).ok()?;
    let EncryptedFileInfo::V2(v2) = &file.info else {
        return None;
    };
    let hash = file.hashes.get(&EncryptedFileHashAlgorithm::Sha256)?;
    let k = Keyed {
        mxc: file.url.to_string(),
        key: *v2.k.as_inner(),
        iv: *v2.iv.as_inner(),
        sha256: hash.as_bytes().try_into().ok()?,
    };
    parse_mxc(&k.mxc)?;
    Some(k)
}

/// Decrypts (or encrypts: the same keystream) `bytes` in place with AES-256-CTR.
fn apply_keystream(key: &[u8; 32], iv: &[u8; 16], bytes: &mut [u8]) {
    let mut cipher = ctr::Ctr128BE::<aes::Aes256>::new(key.into(), iv.into());
    cipher.apply_keystream(bytes);
}

/// A file name as the last segment of a link: `[A-Za-z0-9._-]` kept, anything else `_`,
/// no leading dot, at most 80 characters; `file` when nothing is left.
fn url_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(80)
        .collect();
    let cleaned = cleaned.trim_start_matches('.');
    if cleaned.is_empty() {
        "file".to_owned()
    } else {
        cleaned.to_owned()
    }
}

impl MediaProxy {
    /// A signed link to the decrypted bytes of an encrypted file (a message's `file`, named
    /// `name`, of type `mime`), valid for [`LINK_LIFETIME`]; its key material is kept in the
    /// store under the link's token. None when `file` is no usable `EncryptedFile` or could
    /// not be kept.
    pub fn encrypted_link(&self, file: &Value, name: &str, mime: Option<&str>) -> Option<String> {
        let exp = junction_core::clock::now_ms() / 1000 + LINK_LIFETIME.as_secs();
        let Some(k) = keyed(file) else {
            tracing::info!("An encrypted file without usable key material.");
            return None;
        };
        // The URI has no newline (it parsed as `mxc://`), the key material a fixed length.
        let mut mac = self.mac_of("encrypted file\n")?;
        mac.update(k.mxc.as_bytes());
        mac.update(b"\n");
        mac.update(&k.key);
        mac.update(&k.iv);
        mac.update(&k.sha256);
        mac.update(mime.unwrap_or("").as_bytes());
        let token = hex::encode(&mac.finalize().into_bytes()[..TOKEN_BYTES]);
        let row = json!({"file": file, "mime": mime});
        if let Err(e) = self
            .store()
            .put_dated(ENCRYPTED_TABLE, &token, row.to_string().as_bytes())
        {
            tracing::warn!(error = %e, "Could not keep an encrypted file's key.");
            return None;
        }
        let sig = hex::encode(self.encrypted_mac(&token, exp)?.finalize().into_bytes());
        Some(format!(
            "{}/media/encrypted/{token}/{}?exp={exp}&sig={sig}",
            self.base(),
            url_name(name)
        ))
    }

    fn encrypted_mac(&self, token: &str, exp: u64) -> Option<hmac::Hmac<Sha256>> {
        self.mac_of(&format!("encrypted {token}\n{exp}"))
    }

    /// True when the signature of an encrypted file's link is right (checked in constant
    /// time) and the link not expired.
    pub fn verify_encrypted(&self, token: &str, exp: u64, sig: &str) -> bool {
        if exp < junction_core::clock::now_ms() / 1000 {
            return false;
        }
        let Ok(sig) = hex::decode(sig) else {
            return false;
        };
        self.encrypted_mac(token, exp)
            .is_some_and(|m| m.verify_slice(&sig).is_ok())
    }

    /// The key material and type kept under `token`.
    fn kept(&self, token: &str) -> Option<(Keyed, Option<String>)> {
        let row = self.store().get(ENCRYPTED_TABLE, token).ok()??;
        let row: Value = serde_json::from_slice(&row).ok()?;
        let mime = row["mime"].as_str().map(str::to_owned);
        Some((keyed(&row["file"])?, mime))
    }
}

/// The whole ciphertext of a medium, or the answer to give instead (too large, missing,
/// the homeserver failing).
async fn download_whole(st: &MediaState, server: &str, id: &str) -> Result<Vec<u8>, Response> {
    let too_large = || {
        tracing::info!(%server, %id, "Refused to proxy an encrypted file over the size cap.");
        (StatusCode::PAYLOAD_TOO_LARGE, "too large").into_response()
    };
    let (len, mut resp) = match st.client.download_stream(server, id).await {
        Ok((_, Some(len), _)) if len > st.max_bytes => return Err(too_large()),
        Ok((_, len, resp)) => (len, resp),
        Err(e) => return Err(media::fetch_failed(&e, server, id)),
    };
    let mut body = Vec::with_capacity(len.unwrap_or(0).min(st.max_bytes) as usize);
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                if (body.len() + chunk.len()) as u64 > st.max_bytes {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => {
                tracing::info!(error = %e, %server, %id, "An encrypted file stopped arriving.");
                return Err((StatusCode::BAD_GATEWAY, "homeserver unavailable").into_response());
            }
        }
    }
}

/// `GET /media/encrypted/{token}/{name}?exp=..&sig=..`: the decrypted bytes of an encrypted
/// file, once its ciphertext matched its hash (see the module's text).
pub async fn serve_encrypted(
    State(st): State<MediaState>,
    Path((token, _name)): Path<(String, String)>,
    Query(q): Query<LinkQuery>,
) -> Response {
    if !st.proxy.verify_encrypted(&token, q.exp, &q.sig) {
        return (StatusCode::FORBIDDEN, "bad or expired link").into_response();
    }
    let Some((k, mime)) = st.proxy.kept(&token) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let Some((server, id)) = parse_mxc(&k.mxc) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    if st.proxy.is_redacted(server, id) {
        return (StatusCode::GONE, "removed").into_response();
    }
    let (Some(_slot), Some(_decrypting)) = (st.slot(&st.slots), st.slot(&st.encrypted_slots))
    else {
        return media::busy();
    };
    let mut bytes = match download_whole(&st, server, id).await {
        Ok(bytes) => bytes,
        Err(answer) => return answer,
    };
    if Sha256::digest(&bytes).as_slice() != k.sha256 {
        st.hash_mismatches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::warn!(%server, %id, "An encrypted file does not match its hash; refused.");
        return (StatusCode::BAD_GATEWAY, "the file does not match its hash").into_response();
    }
    apply_keystream(&k.key, &k.iv, &mut bytes);
    let len = bytes.len() as u64;
    media::medium_response(Body::from(bytes), mime.as_deref().unwrap_or(""), Some(len))
}

/// Encrypts `bytes` in place as an attachment for an encrypted room (a fresh key and
/// counter block); returns the `file` of its message once uploaded at `mxc`.
pub fn encrypt_in_place(bytes: &mut [u8]) -> impl FnOnce(&str) -> Value {
    let key: [u8; 32] = rand::random();
    let mut iv = [0u8; 16];
    // The spec's counter block: 64 random bits, then a 64-bit counter from zero.
    iv[..8].copy_from_slice(&rand::random::<[u8; 8]>());
    apply_keystream(&key, &iv, bytes);
    let sha256 = Sha256::digest(&*bytes);
    move |mxc: &str| {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        json!({
            "v": "v2",
            "url": mxc,
            "key": {
                "kty": "oct",
                "alg": "A256CTR",
                "ext": true,
                "k": url.encode(key),
                "key_ops": ["encrypt", "decrypt"],
            },
            "iv": b64.encode(iv),
            "hashes": {"sha256": b64.encode(sha256)},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::tests::homeserver_serving;
    use axum::http::header;
    use axum::routing::get;
    use matrix_sdk_crypto::{AttachmentDecryptor, AttachmentEncryptor, MediaEncryptionInfo};
    use std::io::{Cursor, Read};
    use tower::ServiceExt;

    const PLAIN: &[u8] = b"a secret file, for members only";

    /// `PLAIN` encrypted by matrix-sdk-crypto, and the `file` of its message at `mxc`.
    fn encrypted_by_the_sdk(mxc: &str) -> (Vec<u8>, Value) {
        let mut plain = Cursor::new(PLAIN.to_vec());
        let mut encryptor = AttachmentEncryptor::new(&mut plain);
        let mut cipher = Vec::new();
        encryptor.read_to_end(&mut cipher).expect("encrypt");
        let mut file = serde_json::to_value(encryptor.finish()).expect("info");
        file["url"] = json!(mxc);
        (cipher, file)
    }

    /// A fake homeserver serving `cipher` as `good`, and `cipher` with a flipped bit as
    /// `bad`; the proxy's routes in front of it.
    async fn proxied(cipher: Vec<u8>, max_bytes: u64) -> (axum::Router, MediaState) {
        let mut bad = cipher.clone();
        bad[0] ^= 1;
        let app = axum::Router::new()
            .route(
                "/_matrix/client/v1/media/download/hs/good",
                get(move || async move { cipher }),
            )
            .route(
                "/_matrix/client/v1/media/download/hs/bad",
                get(move || async move { bad }),
            );
        let mut st = crate::media::tests::state_for(&homeserver_serving(app).await);
        st.max_bytes = max_bytes;
        let router = axum::Router::new()
            .route("/media/encrypted/{token}/{name}", get(serve_encrypted))
            .with_state(st.clone());
        (router, st)
    }

    async fn get_link(app: &axum::Router, link: &str) -> Response {
        let path = link.strip_prefix("http://gw").expect("base");
        let req = axum::http::Request::get(path)
            .body(Body::empty())
            .expect("request");
        app.clone().oneshot(req).await.expect("answer")
    }

    #[test]
    fn what_the_gateway_encrypts_the_sdk_decrypts() {
        let mut bytes = PLAIN.to_vec();
        let file = encrypt_in_place(&mut bytes)("mxc://hs/x");
        assert_ne!(bytes, PLAIN);
        let k = keyed(&file).expect("a usable EncryptedFile");
        assert_eq!(k.mxc, "mxc://hs/x");
        let info: MediaEncryptionInfo = serde_json::from_value(file).expect("info");
        let mut cipher = Cursor::new(bytes);
        let mut decryptor = AttachmentDecryptor::new(&mut cipher, info).expect("decryptor");
        let mut plain = Vec::new();
        decryptor.read_to_end(&mut plain).expect("hash and decrypt");
        assert_eq!(plain, PLAIN);
    }

    #[test]
    fn files_without_usable_keys_are_refused() {
        let (_, file) = encrypted_by_the_sdk("mxc://hs/x");
        assert!(keyed(&file).is_some());
        for broken in [
            json!({"url": "mxc://hs/x"}),
            {
                let mut f = file.clone();
                f["v"] = json!("v1");
                f
            },
            {
                let mut f = file.clone();
                f["hashes"] = json!({});
                f
            },
            {
                let mut f = file.clone();
                f["url"] = json!("https://elsewhere/x");
                f
            },
        ] {
            assert!(keyed(&broken).is_none(), "{broken}");
        }
    }

    #[test]
    fn names_in_links_are_tame() {
        assert_eq!(url_name("cat.png"), "cat.png");
        assert_eq!(url_name("../../etc/passwd"), "_.._etc_passwd");
        assert_eq!(url_name("a b?c#d&e.txt"), "a_b_c_d_e.txt");
        assert_eq!(url_name(".hidden"), "hidden");
        assert_eq!(url_name(""), "file");
        assert_eq!(url_name(&"x".repeat(200)).len(), 80);
    }

    #[tokio::test]
    async fn the_link_serves_the_decrypted_file_and_hides_the_key() {
        let (cipher, file) = encrypted_by_the_sdk("mxc://hs/good");
        let (app, st) = proxied(cipher, crate::media::MAX_PROXY_BYTES).await;
        let link = st
            .proxy
            .encrypted_link(&file, "notes.txt", Some("text/html"))
            .expect("link");
        let k = file["key"]["k"].as_str().expect("k");
        assert!(!link.contains(k) && !link.contains("good"), "{link}");
        assert!(link.contains("/notes.txt?"), "{link}");
        // The same file always has the same link token.
        let again = st
            .proxy
            .encrypted_link(&file, "notes.txt", Some("text/html"))
            .expect("link");
        assert_eq!(link.split('?').next(), again.split('?').next());

        let r = get_link(&app, &link).await;
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], "text/html");
        assert_eq!(h[header::CONTENT_DISPOSITION], "attachment");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "sandbox");
        let body = axum::body::to_bytes(r.into_body(), 1 << 20)
            .await
            .expect("body");
        assert_eq!(&body[..], PLAIN);

        // A forged signature, or a redacted file, is refused.
        let forged = link.replace("sig=", "sig=00");
        assert_eq!(
            get_link(&app, &forged).await.status(),
            StatusCode::FORBIDDEN
        );
        st.proxy.remember("$ev", &["mxc://hs/good".to_owned()]);
        st.proxy.redacted("$ev");
        assert_eq!(get_link(&app, &link).await.status(), StatusCode::GONE);
    }

    #[tokio::test]
    async fn a_ciphertext_that_does_not_match_its_hash_is_refused_and_counted() {
        let (cipher, mut file) = encrypted_by_the_sdk("mxc://hs/bad");
        let (app, st) = proxied(cipher, crate::media::MAX_PROXY_BYTES).await;
        let link = st.proxy.encrypted_link(&file, "x", None).expect("link");
        let r = get_link(&app, &link).await;
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let count = st
            .hash_mismatches
            .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(count, 1);
        // Over the size cap, nothing is downloaded whole.
        let (cipher, _) = encrypted_by_the_sdk("mxc://hs/good");
        let (app, st) = proxied(cipher, 8).await;
        file["url"] = json!("mxc://hs/good");
        let link = st.proxy.encrypted_link(&file, "x", None).expect("link");
        let r = get_link(&app, &link).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
}
