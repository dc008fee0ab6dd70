//! The Client-Server API as the application service: every call carries the as_token as a
//! Bearer header, and masquerades as a ghost with `?user_id=` when one is given.
//!
//! Transient failures (connection errors, 5xx, 429) are retried here a few times with backoff
//! (429 waits `retry_after_ms`); what is still failing after that is returned, and
//! [`ClientError::is_transient`] tells the caller whether trying later may help.

use crate::ids::path_segment;
use junction_core::Secret;
pub use reqwest::Method;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Largest media body the gateway fetches or uploads, in bytes.
pub const MAX_MEDIA_BYTES: usize = 50 * 1024 * 1024;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The homeserver answered with an error status.
    #[error("{status} {errcode}: {message}")]
    Http {
        /// HTTP status.
        status: u16,
        /// Matrix `errcode` (empty when absent).
        errcode: String,
        /// Matrix `error` text.
        message: String,
        /// `retry_after_ms` of a 429.
        retry_after_ms: Option<u64>,
    },
    /// The request did not complete (connection refused, reset, timeout).
    #[error("transport: {0}")]
    Transport(String),
    /// The answer was not what the API promises.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The gateway is shutting down.
    #[error("shutting down")]
    Cancelled,
}

impl ClientError {
    /// The Matrix errcode, if the homeserver gave one.
    pub fn errcode(&self) -> Option<&str> {
        match self {
            ClientError::Http { errcode, .. } => Some(errcode),
            _ => None,
        }
    }

    /// The HTTP status, if there was an answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// True when trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Http { status, .. } => *status >= 500 || *status == 429,
            ClientError::Transport(_) | ClientError::Cancelled => true,
            ClientError::Decode(_) => false,
        }
    }
}

/// Result of client calls.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A Client-Server API client acting as the application service.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Secret,
    attempts: u32,
    shutdown: CancellationToken,
}

/// A request body.
enum Body {
    None,
    Json(Value),
    Bytes {
        data: bytes::Bytes,
        content_type: String,
    },
}

impl Client {
    /// A client for the homeserver at `base` (e.g. `http://127.0.0.1:8008`).
    pub fn new(base: &str, token: Secret, shutdown: CancellationToken) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .connect_timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
            attempts: 5,
            shutdown,
        }
    }

    /// Sets how many attempts a call makes before giving up on a transient failure.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> Result<Value> {
        let (_, bytes) = self.raw(method, path, query, body).await?;
        if bytes.is_empty() {
            return Ok(Value::Object(Default::default()));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(e.to_string()))
    }

    /// One call with retries; returns the status and the raw body of a success.
    async fn raw(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Body,
    ) -> Result<(StatusCode, bytes::Bytes)> {
        let url = format!("{}{}", self.base, path);
        let mut pause = Duration::from_millis(200);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut req = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(self.token.expose())
                .query(query);
            req = match &body {
                Body::None => req,
                Body::Json(v) => req.json(v),
                Body::Bytes { data, content_type } => req
                    .header(reqwest::header::CONTENT_TYPE, content_type.as_str())
                    .body(data.clone()),
            };
            let err = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(bytes) if status.is_success() => return Ok((status, bytes)),
                        Ok(bytes) => http_error(status, &bytes),
                        Err(e) => ClientError::Transport(e.to_string()),
                    }
                }
                Err(e) => ClientError::Transport(e.to_string()),
            };
            if !err.is_transient() || attempt >= self.attempts {
                return Err(err);
            }
            let wait = match &err {
                ClientError::Http {
                    retry_after_ms: Some(ms),
                    ..
                } => Duration::from_millis(*ms),
                _ => pause,
            };
            tracing::debug!(path, attempt, error = %err, "Homeserver call failed, retrying.");
            tokio::select! {
                () = self.shutdown.cancelled() => return Err(ClientError::Cancelled),
                () = tokio::time::sleep(wait) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(10));
        }
    }

    /// Any Client-Server call: `path` starts with `/_matrix/`, `body` is sent as JSON.
    /// Used for endpoints this client has no method for (and by tests acting as a user).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> Result<Value> {
        let body = match body {
            Some(v) => Body::Json(v),
            None => Body::None,
        };
        self.call(method, path, query, body).await
    }

    fn as_user(user: Option<&str>) -> Vec<(&'static str, String)> {
        user.map(|u| vec![("user_id", u.to_owned())])
            .unwrap_or_default()
    }

    /// Pings the homeserver, which then pings us back and retries queued transactions.
    pub async fn ping(&self, as_id: &str, txn: &str) -> Result<u64> {
        let path = format!("/_matrix/client/v1/appservice/{}/ping", path_segment(as_id));
        let v = self
            .call(
                Method::POST,
                &path,
                &[],
                Body::Json(json!({ "transaction_id": txn })),
            )
            .await?;
        Ok(v.get("duration_ms").and_then(Value::as_u64).unwrap_or(0))
    }

    /// Registers a user in our namespace; an existing user is success.
    pub async fn register(&self, localpart: &str) -> Result<()> {
        let body = json!({
            "type": "m.login.application_service",
            "username": localpart,
            "inhibit_login": true,
        });
        match self
            .call(
                Method::POST,
                "/_matrix/client/v3/register",
                &[],
                Body::Json(body),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.errcode() == Some("M_USER_IN_USE") => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sets a user's global display name.
    pub async fn set_displayname(&self, user: &str, name: &str) -> Result<()> {
        let path = format!(
            "/_matrix/client/v3/profile/{}/displayname",
            path_segment(user)
        );
        self.call(
            Method::PUT,
            &path,
            &Self::as_user(Some(user)),
            Body::Json(json!({ "displayname": name })),
        )
        .await
        .map(drop)
    }

    /// A user's global display name, if set.
    pub async fn displayname(&self, user: &str) -> Result<Option<String>> {
        let path = format!(
            "/_matrix/client/v3/profile/{}/displayname",
            path_segment(user)
        );
        match self.call(Method::GET, &path, &[], Body::None).await {
            Ok(v) => Ok(v
                .get("displayname")
                .and_then(Value::as_str)
                .map(str::to_owned)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Joins a room (by id or alias) as `user` (the bot when `None`); returns the room id.
    pub async fn join(&self, room: &str, user: Option<&str>) -> Result<String> {
        let path = format!("/_matrix/client/v3/join/{}", path_segment(room));
        let v = self
            .call(
                Method::POST,
                &path,
                &Self::as_user(user),
                Body::Json(json!({})),
            )
            .await?;
        v.get("room_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Decode("join answer without room_id".into()))
    }

    /// Invites `target` into a room, as the bot.
    pub async fn invite(&self, room_id: &str, target: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/invite", path_segment(room_id));
        self.call(
            Method::POST,
            &path,
            &[],
            Body::Json(json!({ "user_id": target })),
        )
        .await
        .map(drop)
    }

    /// Kicks (`ban` false) or bans `target` from a room, as the bot.
    pub async fn remove_member(
        &self,
        room_id: &str,
        target: &str,
        reason: Option<&str>,
        ban: bool,
    ) -> Result<()> {
        let verb = if ban { "ban" } else { "kick" };
        let path = format!("/_matrix/client/v3/rooms/{}/{verb}", path_segment(room_id));
        let mut body = json!({ "user_id": target });
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        self.call(Method::POST, &path, &[], Body::Json(body))
            .await
            .map(drop)
    }

    /// Leaves a room as `user`.
    pub async fn leave(&self, room_id: &str, user: Option<&str>) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/leave", path_segment(room_id));
        self.call(
            Method::POST,
            &path,
            &Self::as_user(user),
            Body::Json(json!({})),
        )
        .await
        .map(drop)
    }

    /// The bot leaves a room (or rejects an invite), giving `reason`.
    pub async fn leave_with_reason(&self, room_id: &str, reason: &str) -> Result<()> {
        let path = format!("/_matrix/client/v3/rooms/{}/leave", path_segment(room_id));
        self.call(
            Method::POST,
            &path,
            &[],
            Body::Json(json!({ "reason": reason })),
        )
        .await
        .map(drop)
    }

    /// The room id an alias points to, `None` when the alias is free.
    pub async fn resolve_alias(&self, alias: &str) -> Result<Option<String>> {
        let path = format!("/_matrix/client/v3/directory/room/{}", path_segment(alias));
        match self.call(Method::GET, &path, &[], Body::None).await {
            Ok(v) => Ok(v.get("room_id").and_then(Value::as_str).map(str::to_owned)),
            Err(e) if e.errcode() == Some("M_NOT_FOUND") || e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates a public room with the alias localpart `alias_name`; the bot is its creator
    /// and so its admin. Returns the room id.
    pub async fn create_public_room(&self, alias_name: &str, name: &str) -> Result<String> {
        let body = json!({
            "preset": "public_chat",
            "visibility": "public",
            "room_alias_name": alias_name,
            "name": name,
        });
        let v = self
            .call(
                Method::POST,
                "/_matrix/client/v3/createRoom",
                &[],
                Body::Json(body),
            )
            .await?;
        v.get("room_id")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Decode("createRoom answer without room_id".into()))
    }

    /// The users joined to a room, as the bot sees it.
    pub async fn joined_members(&self, room_id: &str) -> Result<Vec<String>> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/joined_members",
            path_segment(room_id)
        );
        let v = self.call(Method::GET, &path, &[], Body::None).await?;
        Ok(v.get("joined")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    /// One page of a room's timeline as the bot sees it (`GET .../messages`): `limit` events
    /// from the pagination token `from` (the newest when `None`) in direction `dir` (`f`
    /// forwards, `b` backwards). The answer's `chunk` holds the events, `start` and `end`
    /// the tokens around them.
    pub async fn messages(
        &self,
        room_id: &str,
        from: Option<&str>,
        dir: &str,
        limit: u32,
    ) -> Result<Value> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/messages",
            path_segment(room_id)
        );
        let mut query = vec![("dir", dir.to_owned()), ("limit", limit.to_string())];
        if let Some(from) = from {
            query.push(("from", from.to_owned()));
        }
        self.call(Method::GET, &path, &query, Body::None).await
    }

    /// A state event's content, `None` when the room has no such state.
    pub async fn state(&self, room_id: &str, kind: &str, key: &str) -> Result<Option<Value>> {
        self.state_as(room_id, kind, key, &[]).await
    }

    /// The whole current state event `kind`/`key` of a room (with its `sender`, which the
    /// content alone leaves out), or None when the room has none.
    pub async fn state_event(&self, room_id: &str, kind: &str, key: &str) -> Result<Option<Value>> {
        let query = [("format", "event".to_owned())];
        self.state_as(room_id, kind, key, &query).await
    }

    /// `GET .../state/{kind}/{key}` with `query`; a 404 is None.
    async fn state_as(
        &self,
        room_id: &str,
        kind: &str,
        key: &str,
        query: &[(&str, String)],
    ) -> Result<Option<Value>> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{}/{}",
            path_segment(room_id),
            path_segment(kind),
            path_segment(key)
        );
        match self.call(Method::GET, &path, query, Body::None).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Sends a room event as `user` with the idempotency key `txn`, its timestamp set to
    /// `ts_ms`; returns the event id.
    pub async fn send(
        &self,
        room_id: &str,
        kind: &str,
        txn: &str,
        content: &Value,
        user: Option<&str>,
        ts_ms: Option<u64>,
    ) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/send/{}/{}",
            path_segment(room_id),
            path_segment(kind),
            path_segment(txn)
        );
        let mut query = Self::as_user(user);
        if let Some(ts) = ts_ms {
            query.push(("ts", ts.to_string()));
        }
        let v = self
            .call(Method::PUT, &path, &query, Body::Json(content.clone()))
            .await?;
        event_id(&v)
    }

    /// Sets a state event as `user`; returns the event id.
    pub async fn send_state(
        &self,
        room_id: &str,
        kind: &str,
        key: &str,
        content: &Value,
        user: Option<&str>,
    ) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/state/{}/{}",
            path_segment(room_id),
            path_segment(kind),
            path_segment(key)
        );
        let v = self
            .call(
                Method::PUT,
                &path,
                &Self::as_user(user),
                Body::Json(content.clone()),
            )
            .await?;
        event_id(&v)
    }

    /// Redacts an event as `user`; returns the redaction's event id.
    pub async fn redact(
        &self,
        room_id: &str,
        event: &str,
        txn: &str,
        reason: Option<&str>,
        user: Option<&str>,
    ) -> Result<String> {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/redact/{}/{}",
            path_segment(room_id),
            path_segment(event),
            path_segment(txn)
        );
        let body = match reason {
            Some(r) => json!({ "reason": r }),
            None => json!({}),
        };
        let v = self
            .call(Method::PUT, &path, &Self::as_user(user), Body::Json(body))
            .await?;
        event_id(&v)
    }

    /// Uploads media; returns its `mxc://` URI.
    pub async fn upload(
        &self,
        data: bytes::Bytes,
        content_type: &str,
        filename: &str,
    ) -> Result<String> {
        let v = self
            .call(
                Method::POST,
                "/_matrix/media/v3/upload",
                &[("filename", filename.to_owned())],
                Body::Bytes {
                    data,
                    content_type: content_type.to_owned(),
                },
            )
            .await?;
        v.get("content_uri")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ClientError::Decode("upload answer without content_uri".into()))
    }

    /// Starts a download from the media repository (authenticated media) and returns its
    /// `Content-Type`, its announced length and the response whose body is still to be read,
    /// so the caller can stream it with its own cap.
    pub async fn download_stream(
        &self,
        server: &str,
        media_id: &str,
    ) -> Result<(String, Option<u64>, reqwest::Response)> {
        let url = format!(
            "{}/_matrix/client/v1/media/download/{}/{}",
            self.base,
            path_segment(server),
            path_segment(media_id)
        );
        let resp = self
            .http
            .get(&url)
            .bearer_auth(self.token.expose())
            .send()
            .await
            .map_err(|e| ClientError::Transport(e.to_string()))?;
        let status = resp.status();
        if !status.is_success() {
            // Error answers are small JSON; a bigger one is cut, it is only read for errcode.
            let mut resp = resp;
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() > 64 * 1024 {
                    break;
                }
            }
            return Err(http_error(status, &body));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let length = resp.content_length();
        Ok((content_type, length, resp))
    }
}

fn event_id(v: &Value) -> Result<String> {
    v.get("event_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| ClientError::Decode("answer without event_id".into()))
}

fn http_error(status: StatusCode, body: &[u8]) -> ClientError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    ClientError::Http {
        status: status.as_u16(),
        errcode: text("errcode"),
        message: text("error"),
        retry_after_ms: v.get("retry_after_ms").and_then(Value::as_u64),
    }
}
