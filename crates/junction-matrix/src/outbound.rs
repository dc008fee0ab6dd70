//! [`Delivery`] → Client-Server calls, made as the sender's ghost (as the bot for what the
//! gateway itself says or enforces).
//!
//! Every call that creates an event uses a transaction id derived from the delivery
//! (`j<outbox id>.<event id>.<part>`), so the same delivery retried — even after a restart —
//! never makes a second event. A message becomes a text part (if it has a body) plus one part
//! per attachment; the ids of all parts are answered in order.

use crate::adapter::Shared;
use crate::connection::{ClientError, MAX_MEDIA_BYTES};
use junction_core::format::html;
use junction_core::format::mention::map_mentions;
use junction_core::format::Span;
use junction_core::{
    Attachment, Delivery, EventKind, Message, MessageId, MessageKind, RichText, UserRef,
};
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;

/// The adapter's store table of reactions we sent: `<room id> <target> <ghost> <key>` →
/// reaction id (`matrix/reactions_out` in the store).
pub const REACTIONS_OUT_TABLE: &str = "reactions_out";

/// How long fetching one attachment from another network's URL may take in all (name
/// lookup, connection, headers and body): a server trickling its answer holds its room's
/// queue and a fetch slot no longer than this; the attachment then crosses as its link.
pub const ATTACHMENT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a delivery could not be rendered.
#[derive(Debug)]
pub enum DeliverError {
    /// Try again later (homeserver down, rate limited, shutting down).
    Transient(String),
    /// It will never work; answered as given up.
    Permanent(String),
}

impl From<ClientError> for DeliverError {
    fn from(e: ClientError) -> Self {
        if e.is_transient() {
            DeliverError::Transient(e.to_string())
        } else {
            DeliverError::Permanent(e.to_string())
        }
    }
}

/// The transaction id of one part of a delivery.
pub fn txn_id(d: &Delivery, part: usize) -> String {
    format!("j{}.{}.{part}", d.outbox_id, d.event.id)
}

fn msgtype(kind: MessageKind) -> &'static str {
    match kind {
        MessageKind::Text => "m.text",
        MessageKind::Emote => "m.emote",
        MessageKind::Notice => "m.notice",
    }
}

/// Renders one delivery; returns the Matrix event ids made, in part order. Holds the target
/// room's lock ([`Shared::room_locks`]) once the room is known: `alone`, or shared with the
/// messages the room's queue started beside it (see `queues`).
pub(crate) async fn deliver(
    sh: &Arc<Shared>,
    d: &Delivery,
    alone: bool,
) -> Result<Vec<MessageId>, DeliverError> {
    if junction_core::private::is_private(&d.target.room) {
        crate::private::open(sh, d).await?;
    } else if sh.room_id(&d.target.room).is_none() && !sh.is_refused(&d.target.room) {
        crate::adapter::ensure_rooms(sh).await;
    }
    let Some(room_id) = sh.room_id(&d.target.room) else {
        let why = format!("room {} is not linked (see the log)", d.target.room);
        return Err(if sh.is_refused(&d.target.room) {
            DeliverError::Permanent(why)
        } else {
            DeliverError::Transient(why)
        });
    };
    let _room = if alone {
        sh.room_locks.lock(&room_id).await
    } else {
        sh.room_locks.share(&room_id).await
    };
    let sender = &d.event.sender;
    if sender.user.network == sh.network {
        return Err(DeliverError::Permanent(
            "a Matrix user's event is not delivered back to Matrix".into(),
        ));
    }
    let ts = Some(d.event.ts_ms).filter(|t| *t > 0);
    if sender.user.network.is_gateway() {
        if let Some(done) = from_gateway(sh, d, &room_id, ts).await {
            return done;
        }
    }
    // Who acts: the sender's ghost, or the bot (`None`) for the gateway itself.
    let ghost = if sender.user.network.is_gateway() {
        None
    } else {
        let id = sh.ghosts.user_id(sender);
        // A leave or a rename of someone who has no ghost changes nothing: it must not
        // register a homeserver account (a join-and-rename loop would make one per name).
        if matches!(
            d.event.kind,
            EventKind::Leave { .. } | EventKind::NickChange { .. }
        ) && !sh.ghosts.is_registered(&id)
        {
            return Ok(Vec::new());
        }
        // A direct chat is the ghost's own: the cap of ghosts in rooms never moves it out.
        let capped = !junction_core::private::is_private(&d.target.room);
        if let Some(speaks) = crate::lifecycle::joins(&d.event.kind).filter(|_| capped) {
            if !crate::lifecycle::enter(sh, &id, &room_id, speaks, alone).await {
                return crate::lifecycle::refused(sh, d, &room_id, ts).await;
            }
        }
        Some(sh.ghosts.ensure(sender).await?)
    };
    let actor = ghost.as_deref();
    let me = actor.unwrap_or(&sh.bot_id);
    match &d.event.kind {
        EventKind::Message(m) => {
            join(sh, actor, &room_id).await?;
            send_message(sh, d, &room_id, actor, m, ts).await
        }
        EventKind::Edit { body, .. } => {
            let Some(target) = d.target_ids.first() else {
                return Err(DeliverError::Permanent(
                    "edit of a message unknown here".into(),
                ));
            };
            join(sh, actor, &room_id).await?;
            let mut new = text_content("m.text", body, sh);
            let mut content = text_content("m.text", &star(body), sh);
            content.insert(
                "m.relates_to".into(),
                json!({"rel_type": "m.replace", "event_id": target.as_str()}),
            );
            new.remove("m.mentions");
            content.insert("m.new_content".into(), Value::Object(new));
            let id = crate::crypto::send_event(
                sh,
                &room_id,
                "m.room.message",
                &txn_id(d, 0),
                &Value::Object(content),
                actor,
                ts,
            )
            .await?;
            Ok(vec![MessageId::new(id)])
        }
        EventKind::Redact { reason, .. } => {
            if d.target_ids.is_empty() {
                return Err(DeliverError::Permanent(
                    "redaction of a message unknown here".into(),
                ));
            }
            let mut out = Vec::new();
            for (i, target) in d.target_ids.iter().enumerate() {
                let txn = txn_id(d, i);
                let r = reason.as_deref();
                let id = match sh
                    .client
                    .redact(&room_id, target.as_str(), &txn, r, actor)
                    .await
                {
                    Ok(id) => id,
                    // Someone else's message, removed by a moderator of the origin room: the
                    // bot moderates it, naming who did. Anyone else's attempt is not made:
                    // the gateway lends nobody its power.
                    Err(e) if e.status() == Some(403) && actor.is_some() => {
                        if !d.event.by_moderator {
                            return Err(DeliverError::Permanent(
                                "the sender may not remove this message here".into(),
                            ));
                        }
                        let why = junction_core::authority::moderation_reason(sender, r);
                        sh.client
                            .redact(&room_id, target.as_str(), &txn, Some(&why), None)
                            .await?
                    }
                    Err(e) => return Err(e.into()),
                };
                sh.media.redacted(target.as_str());
                out.push(MessageId::new(id));
            }
            Ok(out)
        }
        EventKind::React { key, .. } => {
            let Some(target) = d.target_ids.first() else {
                return Err(DeliverError::Permanent(
                    "reaction to a message unknown here".into(),
                ));
            };
            join(sh, actor, &room_id).await?;
            let content = json!({"m.relates_to": {
                "rel_type": "m.annotation", "event_id": target.as_str(), "key": key
            }});
            let id = match sh
                .client
                .send(&room_id, "m.reaction", &txn_id(d, 0), &content, actor, ts)
                .await
            {
                Ok(id) => id,
                // The same person already reacted with this key (another network's echo).
                Err(e) if e.errcode() == Some("M_DUPLICATE_ANNOTATION") => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let k = reaction_key(&room_id, target.as_str(), me, key);
            if let Err(e) =
                sh.store
                    .put_dated_for(&d.target, REACTIONS_OUT_TABLE, &k, id.as_bytes())
            {
                tracing::warn!(error = %e, "Could not record a sent reaction.");
            }
            Ok(vec![MessageId::new(id)])
        }
        EventKind::Unreact { key, .. } => {
            let mut out = Vec::new();
            for target in &d.target_ids {
                let k = reaction_key(&room_id, target.as_str(), me, key);
                let Ok(Some(reaction)) = sh.store.get(REACTIONS_OUT_TABLE, &k) else {
                    continue;
                };
                let reaction = String::from_utf8_lossy(&reaction).into_owned();
                let id = sh
                    .client
                    .redact(&room_id, &reaction, &txn_id(d, out.len()), None, actor)
                    .await?;
                if let Err(e) = sh.store.remove(REACTIONS_OUT_TABLE, &k) {
                    tracing::warn!(error = %e, "Could not forget a withdrawn reaction.");
                }
                out.push(MessageId::new(id));
            }
            if out.is_empty() {
                return Err(DeliverError::Permanent(
                    "no reaction of ours to withdraw".into(),
                ));
            }
            Ok(out)
        }
        EventKind::Join => {
            join(sh, actor, &room_id).await?;
            Ok(Vec::new())
        }
        EventKind::Leave { .. } => {
            if let Some(ghost) = actor {
                ghost_leaves(sh, ghost, &room_id).await?;
            }
            Ok(Vec::new())
        }
        EventKind::NickChange { new_name } => {
            if let Some(ghost) = actor {
                let shown = sh.ghosts.shown_name(&sender.user.network, new_name);
                sh.ghosts.set_name(ghost, &shown).await?;
            }
            Ok(Vec::new())
        }
        EventKind::Topic { text } => {
            join(sh, actor, &room_id).await?;
            let content = json!({ "topic": text });
            let set = match sh
                .client
                .send_state(&room_id, "m.room.topic", "", &content, actor)
                .await
            {
                Ok(id) => Ok(id),
                // The ghost lacks the power level: the bot sets it for a moderator of the
                // origin room only; anyone else's topic becomes a line saying so.
                Err(e) if e.status() == Some(403) && actor.is_some() && d.event.by_moderator => {
                    sh.client
                        .send_state(&room_id, "m.room.topic", "", &content, None)
                        .await
                }
                Err(e) => Err(e),
            };
            match set {
                Ok(id) => Ok(vec![MessageId::new(id)]),
                // Nobody of ours may set it: say it instead.
                Err(e) if e.status() == Some(403) => {
                    let text = format!("{} set the topic: {text}", sender.display_name);
                    bot_notice(sh, d, &room_id, &text, ts).await
                }
                Err(e) => Err(e.into()),
            }
        }
        EventKind::Kick { target, reason } | EventKind::Ban { target, reason } => {
            let verb = if matches!(d.event.kind, EventKind::Kick { .. }) {
                "kicked"
            } else {
                "banned"
            };
            let mut text = format!("{} {verb} {}", sender.display_name, target.display_name);
            if let Some(r) = reason {
                text.push_str(&format!(" ({r})"));
            }
            bot_notice(sh, d, &room_id, &text, ts).await
        }
    }
}

/// Joins the ghost to the room (the bot is there already).
async fn join(sh: &Shared, actor: Option<&str>, room_id: &str) -> Result<(), DeliverError> {
    if let Some(ghost) = actor {
        sh.ghosts.ensure_joined(ghost, room_id).await?;
    }
    Ok(())
}

/// The ghost leaves the room; not being there is no error.
pub(crate) async fn ghost_leaves(
    sh: &Shared,
    ghost: &str,
    room_id: &str,
) -> Result<(), DeliverError> {
    match sh.client.leave(room_id, Some(ghost)).await {
        Ok(()) => {}
        Err(e) if e.status() == Some(403) || e.status() == Some(404) => {}
        Err(e) => return Err(e.into()),
    }
    sh.ghosts.forget_joined(ghost, room_id);
    sh.lifecycle.left(ghost, room_id);
    Ok(())
}

/// A notice line said by the bot.
pub(crate) async fn bot_notice(
    sh: &Shared,
    d: &Delivery,
    room_id: &str,
    text: &str,
    ts: Option<u64>,
) -> Result<Vec<MessageId>, DeliverError> {
    let content = json!({"msgtype": "m.notice", "body": text});
    let id = crate::crypto::send_event(
        sh,
        room_id,
        "m.room.message",
        &txn_id(d, 0),
        &content,
        None,
        ts,
    )
    .await?;
    Ok(vec![MessageId::new(id)])
}

/// What the gateway itself says or does, rendered by the bot. Returns `None` for the kinds
/// the bot renders like anyone else's (edits, redactions, reactions, topic).
///
/// Messages become the bot's notices; membership changes of the gateway are nothing to show;
/// a kick or ban is an admin's enforcement: a Matrix user is kicked or banned by the bot
/// (answered as failed when the bot lacks the power), the ghost of a person from elsewhere
/// leaves the room.
async fn from_gateway(
    sh: &Shared,
    d: &Delivery,
    room_id: &str,
    ts: Option<u64>,
) -> Option<Result<Vec<MessageId>, DeliverError>> {
    match &d.event.kind {
        EventKind::Message(m) => {
            let notice = Message {
                kind: MessageKind::Notice,
                ..m.clone()
            };
            // In a direct chat the bot is not there: the ghost says the gateway's words.
            let actor = crate::private::ghost_of(sh, &d.target.room);
            Some(send_message(sh, d, room_id, actor.as_deref(), &notice, ts).await)
        }
        EventKind::Join | EventKind::Leave { .. } | EventKind::NickChange { .. } => {
            Some(Ok(Vec::new()))
        }
        EventKind::Kick { target, reason } | EventKind::Ban { target, reason } => {
            let ban = matches!(d.event.kind, EventKind::Ban { .. });
            Some(enforce(sh, room_id, target, reason.as_deref(), ban).await)
        }
        _ => None,
    }
}

/// Carries out an admin's kick or ban in one room.
async fn enforce(
    sh: &Shared,
    room_id: &str,
    target: &junction_core::Sender,
    reason: Option<&str>,
    ban: bool,
) -> Result<Vec<MessageId>, DeliverError> {
    if target.user.network != sh.network {
        // Someone from another network: their ghost leaves (a kicked one may come back
        // with their next message; a banned one's messages are refused by the gateway).
        let ghost = sh.ghosts.user_id(target);
        ghost_leaves(sh, &ghost, room_id).await?;
        return Ok(Vec::new());
    }
    let user = target.user.user.as_str();
    match sh.client.remove_member(room_id, user, reason, ban).await {
        Ok(()) => Ok(Vec::new()),
        Err(e) if e.status() == Some(403) => Err(DeliverError::Permanent(format!(
            "the bot may not {} {user} here: {e}",
            if ban { "ban" } else { "kick" }
        ))),
        Err(e) => Err(e.into()),
    }
}

fn reaction_key(room_id: &str, target: &str, ghost: &str, key: &str) -> String {
    format!("{room_id} {target} {ghost} {key}")
}

fn star(body: &RichText) -> RichText {
    let mut spans = vec![Span::Text("* ".into())];
    spans.extend(body.spans.iter().cloned());
    RichText { spans }
}

/// Sends a message: the text part, then one part per attachment.
pub(crate) async fn send_message(
    sh: &Shared,
    d: &Delivery,
    room_id: &str,
    ghost: Option<&str>,
    m: &Message,
    ts: Option<u64>,
) -> Result<Vec<MessageId>, DeliverError> {
    let to = Parts {
        sh,
        d,
        room_id,
        ghost,
        ts,
    };
    let mut ids = Vec::new();
    // The first part sent answers the message replied to.
    let reply = d.reply_to.first();
    let mut part = 0;
    if !m.body.is_empty() {
        let content = text_content(msgtype(m.kind), &m.body, sh);
        ids.push(to.send(part, content, reply).await?);
    }
    for att in &m.attachments {
        part += 1;
        let content = attachment_content(sh, room_id, att).await?;
        let reply = reply.filter(|_| ids.is_empty());
        ids.push(to.send(part, content, reply).await?);
    }
    if ids.is_empty() {
        return Err(DeliverError::Permanent("empty message".into()));
    }
    Ok(ids)
}

/// Where the parts of one delivered message go, and as whom.
struct Parts<'a> {
    sh: &'a Shared,
    d: &'a Delivery,
    room_id: &'a str,
    ghost: Option<&'a str>,
    ts: Option<u64>,
}

impl Parts<'_> {
    /// Sends part `part` (its own transaction id) with `content`, a reply to `reply` if any.
    async fn send(
        &self,
        part: usize,
        mut content: Map<String, Value>,
        reply: Option<&MessageId>,
    ) -> Result<MessageId, DeliverError> {
        if let Some(r) = reply {
            content.insert(
                "m.relates_to".into(),
                json!({"m.in_reply_to": {"event_id": r.as_str()}}),
            );
        }
        let id = crate::crypto::send_event(
            self.sh,
            self.room_id,
            "m.room.message",
            &txn_id(self.d, part),
            &Value::Object(content),
            self.ghost,
            self.ts,
        )
        .await?;
        Ok(MessageId::new(id))
    }
}

/// The content for an attachment: uploaded to the media repository when it can be fetched
/// (encrypted, as an `EncryptedFile`, into an encrypted room), otherwise a text message with
/// the link.
async fn attachment_content(
    sh: &Shared,
    room_id: &str,
    att: &Attachment,
) -> Result<Map<String, Value>, DeliverError> {
    let encrypted = match sh.crypto() {
        Some(crypto) => crypto
            .encryption_of(room_id)
            .await
            .map_err(|e| DeliverError::Transient(e.to_string()))?
            .is_some(),
        None => false,
    };
    // The `file` of an encrypted upload, once its URI is known.
    let mut file_of = None;
    let mime = att
        .mime
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let mxc = if att.url.starts_with("mxc://") {
        Some(att.url.clone())
    } else {
        // Held through the upload: the fetched body stays in memory until then.
        let _slot = sh.fetches.acquire().await.ok();
        let fetched = tokio::time::timeout(ATTACHMENT_FETCH_TIMEOUT, fetch(sh, &att.url))
            .await
            .unwrap_or_else(|_| {
                Err(format!(
                    "no complete answer within {} s",
                    ATTACHMENT_FETCH_TIMEOUT.as_secs()
                ))
            });
        match fetched {
            Ok((fetched_mime, bytes)) => {
                let mime = att.mime.clone().unwrap_or(fetched_mime);
                let upload = if encrypted {
                    let mut cipher = bytes.to_vec();
                    file_of = Some(crate::media_encrypted::encrypt_in_place(&mut cipher));
                    let octets = "application/octet-stream";
                    sh.client.upload(cipher.into(), octets, "attachment").await
                } else {
                    sh.client.upload(bytes, &mime, &att.name).await
                };
                match upload {
                    Ok(mxc) => Some(mxc),
                    Err(e) if e.is_transient() => return Err(e.into()),
                    Err(e) => {
                        tracing::warn!(error = %e, "Upload refused; sending the link instead.");
                        None
                    }
                }
            }
            Err(e) => {
                tracing::info!(error = %e, "Could not fetch an attachment; sending the link instead.");
                None
            }
        }
    };
    let mut c = Map::new();
    match mxc {
        Some(mxc) => {
            let kind = match mime.split('/').next() {
                Some("image") => "m.image",
                Some("video") => "m.video",
                Some("audio") => "m.audio",
                _ => "m.file",
            };
            c.insert("msgtype".into(), json!(kind));
            c.insert("body".into(), json!(att.name));
            c.insert("filename".into(), json!(att.name));
            match file_of {
                Some(file_of) => c.insert("file".into(), file_of(&mxc)),
                None => c.insert("url".into(), json!(mxc)),
            };
            let mut info = Map::new();
            info.insert("mimetype".into(), json!(mime));
            if let Some(size) = att.size {
                info.insert("size".into(), json!(size));
            }
            c.insert("info".into(), Value::Object(info));
        }
        None => {
            c.insert("msgtype".into(), json!("m.text"));
            c.insert("body".into(), json!(format!("{}: {}", att.name, att.url)));
            let link = RichText {
                spans: vec![Span::Link {
                    url: att.url.clone(),
                    children: vec![Span::Text(att.name.clone())],
                }],
            };
            c.insert("format".into(), json!("org.matrix.custom.html"));
            c.insert(
                "formatted_body".into(),
                json!(html::render(&link, &pills())),
            );
        }
    }
    Ok(c)
}

/// Fetches an attachment over http(s), bounded in size (and, by the caller, in time:
/// [`ATTACHMENT_FETCH_TIMEOUT`]).
///
/// The URL comes from a user of another network, so it is treated as hostile: only public
/// addresses are fetched (the name is resolved once and the connection pinned to what was
/// checked, so DNS rebinding can not swap in a private address), redirects are not followed,
/// and the body is read only up to [`MAX_MEDIA_BYTES`]. Anything refused crosses as its link.
async fn fetch(sh: &Shared, url: &str) -> Result<(String, bytes::Bytes), String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("not an http(s) URL".into());
    }
    let host = parsed.host_str().ok_or("no host")?.to_owned();
    let port = parsed.port_or_known_default().ok_or("no port")?;
    let lookup_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host((lookup_host.as_str(), port))
        .await
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} has no address"));
    }
    if !sh.private_media {
        if let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
            return Err(format!(
                "refused: {host} resolves to {} (not a public address)",
                a.ip()
            ));
        }
    }
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .resolve_to_addrs(&lookup_host, &addrs)
        .build()
        .map_err(|e| e.to_string())?;
    let mut resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    if resp.content_length().unwrap_or(0) > MAX_MEDIA_BYTES as u64 {
        return Err("too large".into());
    }
    let mime = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_MEDIA_BYTES {
            return Err("too large".into());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((mime, body.freeze()))
}

/// True for addresses on the public internet: not loopback, private, link-local, shared
/// (CGNAT), unique-local, multicast, unspecified, broadcast, documentation or reserved.
pub(crate) fn is_public(ip: std::net::IpAddr) -> bool {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8)
                || (s[0] == 0x64 && s[1] == 0xff9b))
        }
    }
}

/// A text message content: plain body, HTML when there is formatting, and `m.mentions`.
fn text_content(msgtype: &str, body: &RichText, sh: &Shared) -> Map<String, Value> {
    content_with(msgtype, body, &|u| sh.pill_target(u))
}

/// The Matrix user a mention of `user` should pill, if any.
type MentionOf<'a> = dyn Fn(&UserRef) -> Option<String> + 'a;

/// [`text_content`] with the Matrix user of a mentioned person given by `who`. The HTML
/// comes from the core renderer, which escapes every text and attribute, so no network can
/// inject markup; mentions of people with a Matrix user (themselves or their ghost) become
/// pills and are listed in `m.mentions`, the others stay plain names.
fn content_with(msgtype: &str, body: &RichText, who: &MentionOf<'_>) -> Map<String, Value> {
    let mut body = body.clone();
    let mut mentions = Vec::new();
    map_mentions(&mut body, |user, _name| {
        *user = user.as_ref().and_then(who).map(|mxid| {
            mentions.push(mxid.clone());
            UserRef::new(PILL_NETWORK, mxid)
        });
    });
    let mut c = Map::new();
    c.insert("msgtype".into(), json!(msgtype));
    c.insert("body".into(), json!(body.to_plain()));
    if html::needs_html(&body) {
        c.insert("format".into(), json!("org.matrix.custom.html"));
        c.insert(
            "formatted_body".into(),
            json!(html::render(&body, &pills())),
        );
    }
    mentions.sort();
    mentions.dedup();
    c.insert("m.mentions".into(), json!({ "user_ids": mentions }));
    c
}

/// The network of the users mentions name once [`content_with`] mapped them to Matrix users:
/// the core HTML renderer makes pills of them.
const PILL_NETWORK: &str = "matrix";

/// [`PILL_NETWORK`] as an id.
fn pills() -> junction_core::NetworkId {
    junction_core::NetworkId::new(PILL_NETWORK)
}

#[cfg(test)]
mod tests {
    use super::*;

    use junction_core::{Event, EventKind, MessageId, RoomRef, Sender, UserRef};

    #[test]
    fn transaction_ids_are_stable_per_delivery_and_part() {
        let event = Event::new(
            RoomRef::new("irc:local", "#lobby"),
            MessageId::new("m1"),
            Sender::new(UserRef::new("irc:local", "bob"), "bob"),
            1,
            EventKind::Join,
        );
        let d = Delivery {
            outbox_id: 42,
            bridge: "lobby".into(),
            target: RoomRef::new("matrix", "#lobby:matrix.test"),
            event,
            reply_to: Vec::new(),
            target_ids: Vec::new(),
        };
        assert_eq!(txn_id(&d, 0), txn_id(&d.clone(), 0));
        assert_ne!(txn_id(&d, 0), txn_id(&d, 1));
        let mut other = d.clone();
        other.outbox_id = 43;
        assert_ne!(txn_id(&d, 0), txn_id(&other, 0));
        assert!(txn_id(&d, 0).starts_with("j42."));
    }

    #[test]
    fn rich_text_renders_as_matrix_html_with_mentions() {
        let body = RichText {
            spans: vec![
                Span::Mention {
                    user: Some(UserRef::new("matrix", "@alice:matrix.test")),
                    name: "alice".into(),
                },
                Span::Text(": <look> ".into()),
                Span::Bold(vec![Span::Text("here".into())]),
                Span::Link {
                    url: "https://example.org/?a=1&b=2".into(),
                    children: vec![Span::Text("docs".into())],
                },
            ],
        };
        let c = content_with("m.text", &body, &|u: &UserRef| Some(u.user.to_string()));
        assert_eq!(
            c["body"],
            "alice: <look> heredocs (https://example.org/?a=1&b=2)"
        );
        assert_eq!(c["format"], "org.matrix.custom.html");
        assert_eq!(
            c["formatted_body"],
            "<a href=\"https://matrix.to/#/@alice:matrix.test\">alice</a>: &lt;look&gt; \
             <strong>here</strong><a href=\"https://example.org/?a=1&amp;b=2\">docs</a>"
        );
        assert_eq!(c["m.mentions"]["user_ids"], json!(["@alice:matrix.test"]));
        let plain = content_with("m.emote", &RichText::plain("waves"), &|_: &UserRef| None);
        assert_eq!(plain["msgtype"], "m.emote");
        // A mention nobody on Matrix stands for stays a plain name.
        let unknown = RichText {
            spans: vec![
                Span::Mention {
                    user: Some(UserRef::new("irc:local", "zed")),
                    name: "zed".into(),
                },
                Span::Text(": <hi>".into()),
            ],
        };
        let c = content_with("m.text", &unknown, &|_: &UserRef| None);
        assert_eq!(c["body"], "zed: <hi>");
        assert_eq!(c["m.mentions"]["user_ids"], json!([]));
        assert!(plain.get("formatted_body").is_none());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod public_address_tests {
    use super::is_public;

    #[test]
    fn only_public_addresses_may_be_fetched() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }
}
