//! An ordinary Matrix user over the client-server API (v3), with a background /sync
//! loop that records every timeline event per room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use serde_json::{json, Value};

use crate::servers::Servers;

/// A logged-in Matrix user. Dropping it stops the sync loop.
pub struct MatrixUser {
    http: reqwest::Client,
    base: String,
    token: String,
    user_id: String,
    txn: AtomicU64,
    rooms: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    sync: tokio::task::JoinHandle<()>,
}

impl Drop for MatrixUser {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

/// Escapes `s` for a URL path segment or query value: room ids, aliases and event ids hold
/// `!`, `#`, `:` and `$`, all of which need escaping there.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn call(
    http: &reqwest::Client,
    method: Method,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let mut req = http.request(method.clone(), url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        anyhow::bail!("{method} {url}: {status} {v}");
    }
    Ok(v)
}

impl MatrixUser {
    /// Registers `localpart` (idempotent) and logs in.
    pub async fn register(
        servers: &Servers,
        localpart: &str,
        password: &str,
    ) -> anyhow::Result<Self> {
        servers
            .register_matrix_user(localpart, password, false)
            .await?;
        Self::login(servers, localpart, password).await
    }

    /// Logs in with a password and starts the sync loop.
    pub async fn login(servers: &Servers, localpart: &str, password: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let base = servers.matrix.url.trim_end_matches('/').to_owned();
        let v = call(
            &http,
            Method::POST,
            &format!("{base}/_matrix/client/v3/login"),
            None,
            Some(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": localpart},
                "password": password,
            })),
        )
        .await?;
        let token = v["access_token"]
            .as_str()
            .context("no access_token")?
            .to_owned();
        let user_id = v["user_id"].as_str().context("no user_id")?.to_owned();
        // The first sync takes no rooms, only the position, before the login returns: the
        // seeded users are in every room each earlier test made, and the whole history of
        // those (megabytes late in a run) would be read by every login and hold Synapse's one
        // thread for seconds. Everything said after the login is seen in full.
        let first = call(
            &http,
            Method::GET,
            &format!(
                "{base}/_matrix/client/v3/sync?timeout=0&filter={}",
                enc(r#"{"room":{"rooms":[]},"presence":{"types":[]},"account_data":{"types":[]}}"#)
            ),
            Some(&token),
            None,
        )
        .await?;
        let since = first["next_batch"].as_str().map(str::to_owned);
        let rooms: Arc<Mutex<HashMap<String, Vec<Value>>>> = Arc::default();
        let sync = tokio::spawn(sync_loop(
            http.clone(),
            base.clone(),
            token.clone(),
            rooms.clone(),
            since,
        ));
        Ok(MatrixUser {
            http,
            base,
            token,
            user_id,
            txn: AtomicU64::new(0),
            rooms,
            sync,
        })
    }

    /// The full user id, `@alice:matrix.test`.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The access token (for tests that call the API directly).
    pub fn access_token(&self) -> &str {
        &self.token
    }

    async fn api(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        call(
            &self.http,
            method,
            &format!("{}/_matrix/client/v3/{path}", self.base),
            Some(&self.token),
            body,
        )
        .await
    }

    fn next_txn(&self) -> String {
        format!(
            "t{}-{}",
            std::process::id(),
            self.txn.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Creates a room, optionally with an alias `#alias_localpart:server`; returns its id.
    pub async fn create_room(
        &self,
        alias_localpart: Option<&str>,
        public: bool,
    ) -> anyhow::Result<String> {
        let mut body = json!({
            "preset": if public { "public_chat" } else { "private_chat" },
            "visibility": if public { "public" } else { "private" },
        });
        if let Some(a) = alias_localpart {
            body["room_alias_name"] = json!(a);
        }
        let v = self.api(Method::POST, "createRoom", Some(&body)).await?;
        Ok(v["room_id"].as_str().context("no room_id")?.to_owned())
    }

    /// Joins a room by id or alias; returns the room id.
    pub async fn join(&self, room: &str) -> anyhow::Result<String> {
        let v = self
            .api(
                Method::POST,
                &format!("join/{}", enc(room)),
                Some(&json!({})),
            )
            .await?;
        Ok(v["room_id"].as_str().context("no room_id")?.to_owned())
    }

    /// Resolves `#alias:server` to a room id.
    pub async fn resolve_alias(&self, alias: &str) -> anyhow::Result<String> {
        let v = self
            .api(Method::GET, &format!("directory/room/{}", enc(alias)), None)
            .await?;
        Ok(v["room_id"].as_str().context("no room_id")?.to_owned())
    }

    async fn room_id(&self, room: &str) -> anyhow::Result<String> {
        if room.starts_with('#') {
            self.resolve_alias(room).await
        } else {
            Ok(room.to_owned())
        }
    }

    /// Sends any event; returns its event id.
    pub async fn send_event(
        &self,
        room: &str,
        event_type: &str,
        content: Value,
    ) -> anyhow::Result<String> {
        let v = self
            .put_in(room, "send", event_type, &self.next_txn(), &content)
            .await?;
        Ok(v["event_id"].as_str().context("no event_id")?.to_owned())
    }

    /// PUTs `content` to `rooms/<room>/<what>/<a>/<b>` (`send`, `state` or `redact`, each
    /// part escaped); the answer.
    async fn put_in(
        &self,
        room: &str,
        what: &str,
        a: &str,
        b: &str,
        content: &Value,
    ) -> anyhow::Result<Value> {
        let room = self.room_id(room).await?;
        let path = format!("rooms/{}/{what}/{}/{}", enc(&room), enc(a), enc(b));
        self.api(Method::PUT, &path, Some(content)).await
    }

    /// Sends an `m.room.message` with `content`; returns its event id.
    async fn message(&self, room: &str, content: Value) -> anyhow::Result<String> {
        self.send_event(room, "m.room.message", content).await
    }

    async fn state(
        &self,
        room: &str,
        event_type: &str,
        key: &str,
        content: Value,
    ) -> anyhow::Result<String> {
        let v = self
            .put_in(room, "state", event_type, key, &content)
            .await?;
        Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Gives `user` power `level` in `room` (keeping everyone else's), as a room admin does
    /// to let the gateway's bot set topics and moderate.
    pub async fn set_power_level(&self, room: &str, user: &str, level: i64) -> anyhow::Result<()> {
        let room = self.room_id(room).await?;
        let mut pl = self
            .api(
                Method::GET,
                &format!("rooms/{}/state/m.room.power_levels/", enc(&room)),
                None,
            )
            .await?;
        pl["users"][user] = json!(level);
        self.state(&room, "m.room.power_levels", "", pl).await?;
        Ok(())
    }

    /// Turns end-to-end encryption on in `room` (Megolm, the default rotation).
    pub async fn enable_encryption(&self, room: &str) -> anyhow::Result<String> {
        self.state(
            room,
            "m.room.encryption",
            "",
            json!({"algorithm": "m.megolm.v1.aes-sha2"}),
        )
        .await
    }

    /// Sends an `m.text` message.
    pub async fn send_text(&self, room: &str, body: &str) -> anyhow::Result<String> {
        self.message(room, json!({"msgtype": "m.text", "body": body}))
            .await
    }

    /// Sends an `m.text` message with an HTML `formatted_body`.
    pub async fn send_html(&self, room: &str, body: &str, html: &str) -> anyhow::Result<String> {
        self.message(
            room,
            json!({"msgtype": "m.text", "body": body,
                   "format": "org.matrix.custom.html", "formatted_body": html}),
        )
        .await
    }

    /// Sends an `m.emote` (`/me`).
    pub async fn send_emote(&self, room: &str, body: &str) -> anyhow::Result<String> {
        self.message(room, json!({"msgtype": "m.emote", "body": body}))
            .await
    }

    /// Sends an `m.notice`.
    pub async fn send_notice(&self, room: &str, body: &str) -> anyhow::Result<String> {
        self.message(room, json!({"msgtype": "m.notice", "body": body}))
            .await
    }

    /// Sends a reply to `to_event_id` (no fallback quote).
    pub async fn send_reply(
        &self,
        room: &str,
        to_event_id: &str,
        body: &str,
    ) -> anyhow::Result<String> {
        self.message(
            room,
            json!({"msgtype": "m.text", "body": body,
                   "m.relates_to": {"m.in_reply_to": {"event_id": to_event_id}}}),
        )
        .await
    }

    /// Edits `target` to read `new_body`.
    pub async fn send_edit(
        &self,
        room: &str,
        target: &str,
        new_body: &str,
    ) -> anyhow::Result<String> {
        self.message(
            room,
            json!({"msgtype": "m.text", "body": format!("* {new_body}"),
                   "m.new_content": {"msgtype": "m.text", "body": new_body},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": target}}),
        )
        .await
    }

    /// Redacts an event.
    pub async fn redact(&self, room: &str, event_id: &str, reason: &str) -> anyhow::Result<String> {
        let v = self
            .put_in(
                room,
                "redact",
                event_id,
                &self.next_txn(),
                &json!({"reason": reason}),
            )
            .await?;
        Ok(v["event_id"].as_str().context("no event_id")?.to_owned())
    }

    /// Reacts to an event with `key` (an emoji).
    pub async fn react(&self, room: &str, event_id: &str, key: &str) -> anyhow::Result<String> {
        self.send_event(
            room,
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}),
        )
        .await
    }

    /// Sets the room topic.
    pub async fn set_topic(&self, room: &str, topic: &str) -> anyhow::Result<String> {
        self.state(room, "m.room.topic", "", json!({"topic": topic}))
            .await
    }

    /// Sets this user's display name.
    pub async fn set_displayname(&self, name: &str) -> anyhow::Result<()> {
        self.api(
            Method::PUT,
            &format!("profile/{}/displayname", enc(&self.user_id)),
            Some(&json!({"displayname": name})),
        )
        .await?;
        Ok(())
    }

    /// Uploads media; returns its `mxc://` URI.
    pub async fn upload(
        &self,
        bytes: Vec<u8>,
        content_type: &str,
        filename: &str,
    ) -> anyhow::Result<String> {
        let url = format!(
            "{}/_matrix/media/v3/upload?filename={}",
            self.base,
            enc(filename)
        );
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .header("Content-Type", content_type)
            .body(bytes)
            .send()
            .await?;
        let status = resp.status();
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            anyhow::bail!("upload: {status} {v}");
        }
        Ok(v["content_uri"]
            .as_str()
            .context("no content_uri")?
            .to_owned())
    }

    /// Sends an `m.image` pointing at `mxc`.
    pub async fn send_image(&self, room: &str, mxc: &str, name: &str) -> anyhow::Result<String> {
        self.message(
            room,
            json!({"msgtype": "m.image", "body": name, "url": mxc}),
        )
        .await
    }

    /// Sends an `m.file` pointing at `mxc`.
    pub async fn send_file(&self, room: &str, mxc: &str, name: &str) -> anyhow::Result<String> {
        self.message(room, json!({"msgtype": "m.file", "body": name, "url": mxc}))
            .await
    }

    async fn membership(
        &self,
        room: &str,
        action: &str,
        user: &str,
        reason: Option<&str>,
    ) -> anyhow::Result<()> {
        let room = self.room_id(room).await?;
        let mut body = json!({"user_id": user});
        if let Some(r) = reason {
            body["reason"] = json!(r);
        }
        self.api(
            Method::POST,
            &format!("rooms/{}/{action}", enc(&room)),
            Some(&body),
        )
        .await?;
        Ok(())
    }

    /// Kicks `user` from the room.
    pub async fn kick(&self, room: &str, user: &str, reason: &str) -> anyhow::Result<()> {
        self.membership(room, "kick", user, Some(reason)).await
    }

    /// Bans `user` from the room.
    pub async fn ban(&self, room: &str, user: &str, reason: &str) -> anyhow::Result<()> {
        self.membership(room, "ban", user, Some(reason)).await
    }

    /// Lifts a ban.
    pub async fn unban(&self, room: &str, user: &str, reason: &str) -> anyhow::Result<()> {
        self.membership(room, "unban", user, Some(reason)).await
    }

    /// Invites `user`.
    pub async fn invite(&self, room: &str, user: &str) -> anyhow::Result<()> {
        self.membership(room, "invite", user, None).await
    }

    /// Leaves the room.
    pub async fn leave(&self, room: &str) -> anyhow::Result<()> {
        let room = self.room_id(room).await?;
        self.api(
            Method::POST,
            &format!("rooms/{}/leave", enc(&room)),
            Some(&json!({})),
        )
        .await?;
        Ok(())
    }

    /// Waits at most `deadline` until `user` is a member of `room`.
    pub async fn wait_member(
        &self,
        room: &str,
        user: &str,
        deadline: Duration,
    ) -> anyhow::Result<()> {
        crate::eventually(deadline, &format!("{user} in {room}"), || async {
            self.members(room)
                .await
                .ok()
                .filter(|m| m.contains_key(user))
                .map(drop)
        })
        .await
    }

    /// Joined members (user id → display name) from `/joined_members`.
    pub async fn members(&self, room: &str) -> anyhow::Result<HashMap<String, Option<String>>> {
        let room = self.room_id(room).await?;
        let v = self
            .api(
                Method::GET,
                &format!("rooms/{}/joined_members", enc(&room)),
                None,
            )
            .await?;
        let mut out = HashMap::new();
        if let Some(j) = v["joined"].as_object() {
            for (k, m) in j {
                out.insert(k.clone(), m["display_name"].as_str().map(str::to_owned));
            }
        }
        Ok(out)
    }

    /// The ids of every room the sync has shown so far: joined, left, and invited to.
    pub fn room_ids(&self) -> Vec<String> {
        self.rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Every timeline event seen so far in `room` (id or alias), including the events up
    /// to a leave or kick, and the `m.room.member` event of an invite.
    pub async fn events(&self, room: &str) -> anyhow::Result<Vec<Value>> {
        let room = self.room_id(room).await?;
        Ok(self
            .rooms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&room)
            .cloned()
            .unwrap_or_default())
    }

    /// Waits until a timeline event in `room` matches `pred`.
    pub async fn wait_for(
        &self,
        room: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let room = self.room_id(room).await?;
        crate::eventually(deadline, &format!("a Matrix event in {room}"), || {
            let found = self
                .rooms
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&room)
                .and_then(|evs| evs.iter().find(|e| pred(e)).cloned());
            async move { found }
        })
        .await
    }
}

async fn sync_loop(
    http: reqwest::Client,
    base: String,
    token: String,
    rooms: Arc<Mutex<HashMap<String, Vec<Value>>>>,
    mut since: Option<String>,
) {
    loop {
        // A timeline limit well above any burst a test makes: with Synapse's default (10) a
        // busy room's sync comes back "limited" and the events in the gap are never seen.
        let mut url = format!(
            "{base}/_matrix/client/v3/sync?timeout=2000&filter={}",
            enc(r#"{"room":{"timeline":{"limit":1000}}}"#)
        );
        if let Some(s) = &since {
            url.push_str(&format!("&since={}", enc(s)));
        }
        match call(&http, Method::GET, &url, Some(&token), None).await {
            Ok(v) => {
                let mut map = rooms.lock().unwrap_or_else(|e| e.into_inner());
                // Rooms we left or were kicked from still show the events up to the
                // leave (the kick itself among them).
                for section in ["join", "leave"] {
                    let Some(rs) = v["rooms"][section].as_object() else {
                        continue;
                    };
                    for (room_id, r) in rs {
                        let evs = map.entry(room_id.clone()).or_default();
                        if let Some(tl) = r["timeline"]["events"].as_array() {
                            evs.extend(tl.iter().cloned());
                        }
                    }
                }
                // An invite shows as the stripped m.room.member event inviting us.
                if let Some(rs) = v["rooms"]["invite"].as_object() {
                    for (room_id, r) in rs {
                        let evs = map.entry(room_id.clone()).or_default();
                        if let Some(st) = r["invite_state"]["events"].as_array() {
                            evs.extend(st.iter().filter(|e| e["type"] == "m.room.member").cloned());
                        }
                    }
                }
                drop(map);
                since = v["next_batch"].as_str().map(str::to_owned).or(since);
            }
            Err(e) => {
                tracing::debug!(error = %e, "sync failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread")]
    async fn alice_and_bob_talk() -> anyhow::Result<()> {
        let s = crate::servers::servers().await?;
        let alice = MatrixUser::register(s, &crate::unique("alice"), "pw-alice-1").await?;
        let bob = MatrixUser::register(s, &crate::unique("bob"), "pw-bob-1").await?;
        let alias = crate::unique("room");
        let room = alice.create_room(Some(&alias), true).await?;
        assert_eq!(
            bob.join(&format!("#{alias}:{}", s.matrix.server_name))
                .await?,
            room
        );
        let t = Duration::from_secs(20);
        let ev = alice.send_text(&room, "hello bob").await?;
        bob.wait_for(&room, t, |e| {
            e["event_id"] == ev.as_str() && e["content"]["body"] == "hello bob"
        })
        .await?;
        alice.send_edit(&room, &ev, "hello, bob").await?;
        bob.wait_for(&room, t, |e| {
            e["content"]["m.new_content"]["body"] == "hello, bob"
        })
        .await?;
        alice.react(&room, &ev, "👍").await?;
        bob.wait_for(&room, t, |e| e["content"]["m.relates_to"]["key"] == "👍")
            .await?;
        assert!(bob.members(&room).await?.contains_key(alice.user_id()));
        alice.kick(&room, bob.user_id(), "bye").await?;
        bob.wait_for(&room, t, |e| {
            e["type"] == "m.room.member"
                && e["state_key"] == bob.user_id()
                && e["content"]["membership"] == "leave"
        })
        .await?;
        alice.invite(&room, bob.user_id()).await?;
        bob.wait_for(&room, t, |e| e["content"]["membership"] == "invite")
            .await?;
        Ok(())
    }
}
