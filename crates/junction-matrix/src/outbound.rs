//! [`Delivery`] → Client-Server calls, made as the sender's ghost.
//!
//! Every call that creates an event uses a transaction id derived from the delivery
//! (`j<outbox id>.<event id>.<part>`), so the same delivery retried — even after a restart —
//! never makes a second event. A message becomes a text part (if it has a body) plus one part
//! per attachment; the ids of all parts are answered in order.

use crate::client::{ClientError, MAX_MEDIA_BYTES};
use crate::Shared;
use junction_core::format::Span;
use junction_core::{Attachment, Delivery, EventKind, Message, MessageId, MessageKind, RichText};
use serde_json::{json, Map, Value};

/// The store table of reactions we sent: `<room id> <target> <ghost> <key>` → reaction id.
pub const REACTIONS_OUT_TABLE: &str = "matrix/reactions_out";

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

/// Renders one delivery; returns the Matrix event ids made, in part order.
pub(crate) async fn deliver(sh: &Shared, d: &Delivery) -> Result<Vec<MessageId>, DeliverError> {
    if sh.room_id(&d.target.room).is_none() && !sh.is_refused(&d.target.room) {
        crate::ensure_rooms(sh).await;
    }
    let Some(room_id) = sh.room_id(&d.target.room) else {
        let why = format!("room {} is not linked (see the log)", d.target.room);
        return Err(if sh.is_refused(&d.target.room) {
            DeliverError::Permanent(why)
        } else {
            DeliverError::Transient(why)
        });
    };
    let sender = &d.event.sender;
    if sender.user.network == sh.network {
        return Err(DeliverError::Permanent(
            "a Matrix user's event is not delivered back to Matrix".into(),
        ));
    }
    let ghost = sh.ghosts.ensure(sender).await?;
    let ts = Some(d.event.ts_ms).filter(|t| *t > 0);
    match &d.event.kind {
        EventKind::Message(m) => {
            sh.ghosts.ensure_joined(&ghost, &room_id).await?;
            send_message(sh, d, &room_id, &ghost, m, ts).await
        }
        EventKind::Edit { body, .. } => {
            let Some(target) = d.target_ids.first() else {
                return Err(DeliverError::Permanent(
                    "edit of a message unknown here".into(),
                ));
            };
            sh.ghosts.ensure_joined(&ghost, &room_id).await?;
            let mut new = text_content("m.text", body, sh);
            let mut content = text_content("m.text", &star(body), sh);
            content.insert(
                "m.relates_to".into(),
                json!({"rel_type": "m.replace", "event_id": target.as_str()}),
            );
            new.remove("m.mentions");
            content.insert("m.new_content".into(), Value::Object(new));
            let id = sh
                .client
                .send(
                    &room_id,
                    "m.room.message",
                    &txn_id(d, 0),
                    &Value::Object(content),
                    Some(&ghost),
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
                    .redact(&room_id, target.as_str(), &txn, r, Some(&ghost))
                    .await
                {
                    Ok(id) => id,
                    // Someone else's message: the bot (room admin) redacts it.
                    Err(e) if e.status() == Some(403) => {
                        sh.client
                            .redact(&room_id, target.as_str(), &txn, r, None)
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
            sh.ghosts.ensure_joined(&ghost, &room_id).await?;
            let content = json!({"m.relates_to": {
                "rel_type": "m.annotation", "event_id": target.as_str(), "key": key
            }});
            let id = match sh
                .client
                .send(
                    &room_id,
                    "m.reaction",
                    &txn_id(d, 0),
                    &content,
                    Some(&ghost),
                    ts,
                )
                .await
            {
                Ok(id) => id,
                // The same person already reacted with this key (another network's echo).
                Err(e) if e.errcode() == Some("M_DUPLICATE_ANNOTATION") => return Ok(Vec::new()),
                Err(e) => return Err(e.into()),
            };
            let k = reaction_key(&room_id, target.as_str(), &ghost, key);
            if let Err(e) = sh.store.kv_put(REACTIONS_OUT_TABLE, &k, id.as_bytes()) {
                tracing::warn!(error = %e, "Could not record a sent reaction.");
            }
            Ok(vec![MessageId::new(id)])
        }
        EventKind::Unreact { key, .. } => {
            let mut out = Vec::new();
            for target in &d.target_ids {
                let k = reaction_key(&room_id, target.as_str(), &ghost, key);
                let Ok(Some(reaction)) = sh.store.kv_get(REACTIONS_OUT_TABLE, &k) else {
                    continue;
                };
                let reaction = String::from_utf8_lossy(&reaction).into_owned();
                let id = sh
                    .client
                    .redact(
                        &room_id,
                        &reaction,
                        &txn_id(d, out.len()),
                        None,
                        Some(&ghost),
                    )
                    .await?;
                if let Err(e) = sh.store.kv_remove(REACTIONS_OUT_TABLE, &k) {
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
            sh.ghosts.ensure_joined(&ghost, &room_id).await?;
            Ok(Vec::new())
        }
        EventKind::Leave { .. } => {
            match sh.client.leave(&room_id, Some(&ghost)).await {
                Ok(()) => {}
                // Not in the room: nothing to do.
                Err(e) if e.status() == Some(403) || e.status() == Some(404) => {}
                Err(e) => return Err(e.into()),
            }
            sh.ghosts.forget_joined(&ghost, &room_id);
            Ok(Vec::new())
        }
        EventKind::NickChange { new_name } => {
            sh.ghosts.set_name(&ghost, new_name).await?;
            Ok(Vec::new())
        }
        EventKind::Topic { text } => {
            sh.ghosts.ensure_joined(&ghost, &room_id).await?;
            let content = json!({ "topic": text });
            let id = match sh
                .client
                .send_state(&room_id, "m.room.topic", "", &content, Some(&ghost))
                .await
            {
                Ok(id) => id,
                // The ghost lacks the power level: the bot sets it.
                Err(e) if e.status() == Some(403) => {
                    sh.client
                        .send_state(&room_id, "m.room.topic", "", &content, None)
                        .await?
                }
                Err(e) => return Err(e.into()),
            };
            Ok(vec![MessageId::new(id)])
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
            let content = json!({"msgtype": "m.notice", "body": text});
            let id = sh
                .client
                .send(
                    &room_id,
                    "m.room.message",
                    &txn_id(d, 0),
                    &content,
                    None,
                    ts,
                )
                .await?;
            Ok(vec![MessageId::new(id)])
        }
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
async fn send_message(
    sh: &Shared,
    d: &Delivery,
    room_id: &str,
    ghost: &str,
    m: &Message,
    ts: Option<u64>,
) -> Result<Vec<MessageId>, DeliverError> {
    let mut ids = Vec::new();
    let reply = d.reply_to.first();
    let mut part = 0;
    if !m.body.is_empty() {
        let mut content = text_content(msgtype(m.kind), &m.body, sh);
        if let Some(r) = reply {
            content.insert(
                "m.relates_to".into(),
                json!({"m.in_reply_to": {"event_id": r.as_str()}}),
            );
        }
        let id = sh
            .client
            .send(
                room_id,
                "m.room.message",
                &txn_id(d, part),
                &Value::Object(content),
                Some(ghost),
                ts,
            )
            .await?;
        ids.push(MessageId::new(id));
    }
    for att in &m.attachments {
        part += 1;
        let mut content = attachment_content(sh, att).await?;
        if ids.is_empty() {
            if let Some(r) = reply {
                content.insert(
                    "m.relates_to".into(),
                    json!({"m.in_reply_to": {"event_id": r.as_str()}}),
                );
            }
        }
        let id = sh
            .client
            .send(
                room_id,
                "m.room.message",
                &txn_id(d, part),
                &Value::Object(content),
                Some(ghost),
                ts,
            )
            .await?;
        ids.push(MessageId::new(id));
    }
    if ids.is_empty() {
        return Err(DeliverError::Permanent("empty message".into()));
    }
    Ok(ids)
}

/// The content for an attachment: uploaded to the media repository when it can be fetched,
/// otherwise a text message with the link.
async fn attachment_content(
    sh: &Shared,
    att: &Attachment,
) -> Result<Map<String, Value>, DeliverError> {
    let mime = att
        .mime
        .clone()
        .unwrap_or_else(|| "application/octet-stream".into());
    let mxc = if att.url.starts_with("mxc://") {
        Some(att.url.clone())
    } else {
        match fetch(sh, &att.url).await {
            Ok((fetched_mime, bytes)) => {
                let mime = att.mime.clone().unwrap_or(fetched_mime);
                match sh.client.upload(bytes, &mime, &att.name).await {
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
            c.insert("url".into(), json!(mxc));
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
            c.insert("format".into(), json!("org.matrix.custom.html"));
            c.insert(
                "formatted_body".into(),
                json!(format!(
                    "<a href=\"{}\">{}</a>",
                    escape_html(&att.url),
                    escape_html(&att.name)
                )),
            );
        }
    }
    Ok(c)
}

/// Fetches an attachment over http(s), bounded in size.
async fn fetch(sh: &Shared, url: &str) -> Result<(String, bytes::Bytes), String> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("not an http(s) URL".into());
    }
    let resp = sh.http.get(url).send().await.map_err(|e| e.to_string())?;
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
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if bytes.len() > MAX_MEDIA_BYTES {
        return Err("too large".into());
    }
    Ok((mime, bytes))
}

/// A text message content: plain body, HTML when there is formatting, and `m.mentions`.
fn text_content(msgtype: &str, body: &RichText, sh: &Shared) -> Map<String, Value> {
    content_with(msgtype, body, &|u| sh.matrix_user_of(u))
}

/// [`text_content`] with the Matrix user of a mentioned person given by `who`.
fn content_with(msgtype: &str, body: &RichText, who: &MentionOf<'_>) -> Map<String, Value> {
    let mut c = Map::new();
    c.insert("msgtype".into(), json!(msgtype));
    c.insert("body".into(), json!(body.to_plain()));
    let mut mentions = Vec::new();
    let html = render_html(&body.spans, who, &mut mentions);
    if !body.is_plain() {
        c.insert("format".into(), json!("org.matrix.custom.html"));
        c.insert("formatted_body".into(), json!(html));
    }
    mentions.sort();
    mentions.dedup();
    c.insert("m.mentions".into(), json!({ "user_ids": mentions }));
    c
}

/// Renders rich text as Matrix HTML. Written here because the core formatter does not yet
/// render Matrix HTML; it escapes all text, so no network can inject markup.
type MentionOf<'a> = dyn Fn(&junction_core::UserRef) -> String + 'a;

fn render_html(spans: &[Span], sh: &MentionOf<'_>, mentions: &mut Vec<String>) -> String {
    let mut out = String::new();
    for s in spans {
        match s {
            Span::Text(t) => out.push_str(&escape_html(t).replace('\n', "<br>")),
            Span::Bold(c) => wrap(&mut out, "strong", &render_html(c, sh, mentions)),
            Span::Italic(c) => wrap(&mut out, "em", &render_html(c, sh, mentions)),
            Span::Underline(c) => wrap(&mut out, "u", &render_html(c, sh, mentions)),
            Span::Strike(c) => wrap(&mut out, "del", &render_html(c, sh, mentions)),
            Span::Code(t) => wrap(&mut out, "code", &escape_html(t)),
            Span::Pre { lang, text } => {
                out.push_str("<pre><code");
                if let Some(l) = lang {
                    out.push_str(&format!(" class=\"language-{}\"", escape_html(l)));
                }
                out.push('>');
                out.push_str(&escape_html(text));
                out.push_str("</code></pre>");
            }
            Span::Link { url, children } => {
                out.push_str(&format!("<a href=\"{}\">", escape_html(url)));
                out.push_str(&render_html(children, sh, mentions));
                out.push_str("</a>");
            }
            Span::Mention { user, name } => match user.as_ref().map(sh) {
                Some(mxid) => {
                    out.push_str(&format!(
                        "<a href=\"https://matrix.to/#/{}\">{}</a>",
                        escape_html(&mxid),
                        escape_html(name)
                    ));
                    mentions.push(mxid);
                }
                None => out.push_str(&escape_html(name)),
            },
            Span::Quote(c) => wrap(&mut out, "blockquote", &render_html(c, sh, mentions)),
        }
    }
    out
}

fn wrap(out: &mut String, tag: &str, inner: &str) {
    out.push_str(&format!("<{tag}>{inner}</{tag}>"));
}

/// Escapes text for HTML content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use junction_core::{Event, EventKind, MessageId, RoomRef, Sender, UserRef};

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape_html("<b>&\"'"), "&lt;b&gt;&amp;&quot;&#39;");
    }

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
        let c = content_with("m.text", &body, &|u: &UserRef| u.user.to_string());
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
        let plain = content_with("m.emote", &RichText::plain("waves"), &|_: &UserRef| {
            String::new()
        });
        assert_eq!(plain["msgtype"], "m.emote");
        assert!(plain.get("formatted_body").is_none());
    }
}
