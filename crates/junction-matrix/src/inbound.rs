//! Wire → [`Event`]: the client events of an appservice transaction, normalised.
//!
//! Conversion is pure: everything it needs from outside (which rooms are linked, display
//! names, media links, reactions seen earlier) comes in through [`InboundCx`], and what the
//! caller must remember afterwards comes back as [`Effect`]s. Events from our own ghosts and
//! bot are dropped (loop prevention); unknown or malformed events are logged and skipped.

use crate::ids;
use junction_core::{
    Attachment, Event, EventKind, Message, MessageId, MessageKind, NetworkId, RichText, RoomId,
    RoomRef, Sender, UserRef,
};
use serde_json::Value;

/// Makes a proxy link to the decrypted bytes of an encrypted file, from a message's `file`,
/// the file's name and its type.
pub type EncryptedLink<'a> = dyn Fn(&Value, &str, Option<&str>) -> Option<String> + 'a;

/// What the conversion needs to know.
pub struct InboundCx<'a> {
    /// Our network id (`matrix`).
    pub network: &'a NetworkId,
    /// Ghost localpart prefix.
    pub prefix: &'a str,
    /// Our server name.
    pub server_name: &'a str,
    /// The bot's user id.
    pub bot: &'a str,
    /// The linked room (as written in the link) for a Matrix room id.
    pub room: &'a dyn Fn(&str) -> Option<RoomId>,
    /// A user's display name in a room, when known.
    pub name: &'a dyn Fn(&str, &str) -> Option<String>,
    /// A proxy link for an `mxc://` URI.
    pub media_link: &'a dyn Fn(&str) -> Option<String>,
    /// A proxy link to the decrypted bytes of an encrypted file (a message's `file`, its
    /// name and type).
    pub encrypted_media_link: &'a EncryptedLink<'a>,
    /// The (target, key) of a reaction event seen earlier.
    pub reaction: &'a dyn Fn(&str) -> Option<(String, String)>,
}

/// Something the caller must record after a conversion.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// A reaction arrived: remember it so its redaction becomes an unreact.
    Reaction {
        /// The reaction event.
        event_id: String,
        /// The event reacted to.
        target: String,
        /// The key.
        key: String,
    },
    /// An event carries media: remember them so a redaction withdraws them.
    Media {
        /// The event.
        event_id: String,
        /// Its `mxc://` URIs.
        mxcs: Vec<String>,
    },
    /// An event was redacted.
    Redacted {
        /// The redacted event.
        event_id: String,
    },
    /// A linked room turned encryption on.
    Encrypted {
        /// Its room id.
        room_id: String,
        /// The content of its `m.room.encryption` (algorithm, rotation settings).
        content: Value,
    },
    /// A user's display name in a room is now known.
    Name {
        /// The room id.
        room_id: String,
        /// The user.
        user_id: String,
        /// The name.
        name: String,
    },
    /// Someone invited the bot into a room that is not linked.
    BotInvited {
        /// The room id.
        room_id: String,
        /// Who invited.
        by: String,
        /// The invite is to a direct chat (`is_direct`), as Element's "Message" makes one.
        direct: bool,
    },
    /// A person invited one of our ghosts into a direct chat (`is_direct`): a private
    /// conversation with the person behind the ghost.
    GhostInvited {
        /// The room id.
        room_id: String,
        /// The ghost.
        ghost: String,
        /// Who invited.
        by: String,
    },
    /// The person of a private conversation left its room: the next message from the other
    /// side opens a new one.
    PrivateLeft {
        /// The room id.
        room_id: String,
    },
    /// One of our ghosts is no longer in a room (it left, or someone kicked or banned it):
    /// it must join again before it next speaks there.
    GhostLeft {
        /// The room id.
        room_id: String,
        /// The ghost.
        user_id: String,
    },
    /// A person wrote text in a room that is not linked: a command, if the bot is there
    /// to take commands (a direct chat it was invited to).
    Command {
        /// The room id.
        room_id: String,
        /// The message's event id.
        event_id: String,
        /// Who wrote it.
        sender: String,
        /// The text, reply fallback removed.
        text: String,
    },
}

/// The result of converting one client event.
#[derive(Debug, Default)]
pub struct Converted {
    /// The normalised event, if the client event is one the lobby carries.
    pub event: Option<Event>,
    /// What to remember.
    pub effects: Vec<Effect>,
}

fn s<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

/// Converts one client event of a transaction.
pub fn convert(ev: &Value, cx: &InboundCx<'_>) -> Converted {
    let mut out = Converted::default();
    let (Some(kind), Some(room_id), Some(sender), Some(event_id)) = (
        s(ev, "type"),
        s(ev, "room_id"),
        s(ev, "sender"),
        s(ev, "event_id"),
    ) else {
        tracing::warn!("Skipped a malformed event (no type, room_id, sender or event_id).");
        return out;
    };
    let content = ev.get("content").unwrap_or(&Value::Null);
    let state_key = s(ev, "state_key");
    let ours = |u: &str| u == cx.bot || ids::is_ghost(cx.prefix, cx.server_name, u);

    // Bookkeeping that matters even for rooms we do not link or events we drop.
    if kind == "m.room.member"
        && state_key == Some(cx.bot)
        && s(content, "membership") == Some("invite")
    {
        if (cx.room)(room_id).is_none() {
            out.effects.push(Effect::BotInvited {
                room_id: room_id.to_owned(),
                by: sender.to_owned(),
                direct: content.get("is_direct").and_then(Value::as_bool) == Some(true),
            });
        }
        return out;
    }
    if kind == "m.room.member" && s(content, "membership") == Some("invite") && !ours(sender) {
        if let Some(ghost) = state_key.filter(|t| ids::is_ghost(cx.prefix, cx.server_name, t)) {
            let direct = content.get("is_direct").and_then(Value::as_bool) == Some(true);
            if direct && (cx.room)(room_id).is_none() {
                out.effects.push(Effect::GhostInvited {
                    room_id: room_id.to_owned(),
                    ghost: ghost.to_owned(),
                    by: sender.to_owned(),
                });
            }
            return out;
        }
    }
    let Some(room) = (cx.room)(room_id) else {
        if kind == "m.room.message"
            && state_key.is_none()
            && !ours(sender)
            && s(content, "msgtype") == Some("m.text")
        {
            let body = s(content, "body").unwrap_or("");
            let text = strip_reply_fallback(body).trim().to_owned();
            if !text.is_empty() {
                out.effects.push(Effect::Command {
                    room_id: room_id.to_owned(),
                    event_id: event_id.to_owned(),
                    sender: sender.to_owned(),
                    text,
                });
            }
            return out;
        }
        tracing::debug!(
            room_id,
            kind,
            "Ignored an event of a room that is not linked."
        );
        return out;
    };
    if kind == "m.room.member" {
        if let (Some(target), Some(name)) = (state_key, s(content, "displayname")) {
            if s(content, "membership") == Some("join") {
                out.effects.push(Effect::Name {
                    room_id: room_id.to_owned(),
                    user_id: target.to_owned(),
                    name: name.to_owned(),
                });
            }
        }
    }
    if kind == "m.room.member" {
        if let Some(target) = state_key.filter(|t| ids::is_ghost(cx.prefix, cx.server_name, t)) {
            if matches!(s(content, "membership"), Some("leave" | "ban")) {
                out.effects.push(Effect::GhostLeft {
                    room_id: room_id.to_owned(),
                    user_id: target.to_owned(),
                });
            }
        }
    }
    if kind == "m.room.member"
        && junction_core::private::is_private(&room)
        && matches!(s(content, "membership"), Some("leave" | "ban"))
        && state_key.is_some_and(|t| !ours(t))
    {
        out.effects.push(Effect::PrivateLeft {
            room_id: room_id.to_owned(),
        });
    }
    if kind == "m.room.encryption" && state_key.is_some() {
        out.effects.push(Effect::Encrypted {
            room_id: room_id.to_owned(),
            content: content.clone(),
        });
        return out;
    }
    if kind == "m.room.redaction" {
        if let Some(target) = s(ev, "redacts").or_else(|| s(content, "redacts")) {
            out.effects.push(Effect::Redacted {
                event_id: target.to_owned(),
            });
        }
    }
    if ours(sender) {
        tracing::trace!(sender, "Dropped our own event.");
        return out;
    }

    let origin = RoomRef {
        network: cx.network.clone(),
        room,
    };
    let display = |user: &str| {
        (cx.name)(room_id, user).unwrap_or_else(|| {
            ids::split_user_id(user)
                .map(|(l, _)| l.to_owned())
                .unwrap_or_else(|| user.to_owned())
        })
    };
    let who = |user: &str, name: String| Sender::new(UserRef::new(cx.network.clone(), user), name);
    let ts = ev
        .get("origin_server_ts")
        .and_then(Value::as_u64)
        .unwrap_or(0);

    let kind_out = if state_key.is_some() {
        state_event(
            kind,
            sender,
            state_key.unwrap_or(""),
            content,
            ev,
            cx,
            &display,
            &who,
        )
    } else {
        room_event(kind, event_id, content, ev, cx, &mut out.effects)
    };
    let Some((kind_out, sender_name)) = kind_out else {
        return out;
    };
    let sender_name = sender_name.unwrap_or_else(|| display(sender));
    out.event = Some(Event::new(
        origin,
        MessageId::new(event_id),
        who(sender, sender_name),
        ts,
        kind_out,
    ));
    out
}

type Who<'a> = dyn Fn(&str, String) -> Sender + 'a;

/// State events: membership and topic. Returns the kind and, when the event itself tells,
/// the sender's name.
#[allow(clippy::too_many_arguments)]
fn state_event(
    kind: &str,
    sender: &str,
    state_key: &str,
    content: &Value,
    ev: &Value,
    cx: &InboundCx<'_>,
    display: &dyn Fn(&str) -> String,
    who: &Who<'_>,
) -> Option<(EventKind, Option<String>)> {
    match kind {
        "m.room.topic" => Some((
            EventKind::Topic {
                text: s(content, "topic").unwrap_or("").to_owned(),
            },
            None,
        )),
        "m.room.member" => {
            let prev = ev
                .get("unsigned")
                .and_then(|u| u.get("prev_content"))
                .unwrap_or(&Value::Null);
            let was = s(prev, "membership").unwrap_or("leave");
            let now = s(content, "membership")?;
            let reason = s(content, "reason").map(str::to_owned);
            let target_name = || {
                s(prev, "displayname")
                    .or_else(|| s(content, "displayname"))
                    .map(str::to_owned)
                    .unwrap_or_else(|| display(state_key))
            };
            // The subject of a membership change may be one of ours: a human kicking a ghost
            // is worth telling; our own joins and leaves are not.
            let target_ours =
                state_key == cx.bot || ids::is_ghost(cx.prefix, cx.server_name, state_key);
            let target_sender = || match ids::parse_ghost(cx.prefix, cx.server_name, state_key) {
                Some((net, name)) => Sender::new(UserRef::new(net, name), target_name()),
                None => who(state_key, target_name()),
            };
            match (was, now) {
                ("join", "join") => {
                    let old = s(prev, "displayname");
                    let new = s(content, "displayname");
                    match (old, new) {
                        (old, Some(new)) if old != Some(new) && !target_ours => Some((
                            EventKind::NickChange {
                                new_name: new.to_owned(),
                            },
                            Some(old.map(str::to_owned).unwrap_or_else(|| display(sender))),
                        )),
                        _ => None, // avatar or other profile change
                    }
                }
                (_, "join") if !target_ours => Some((
                    EventKind::Join,
                    Some(
                        s(content, "displayname")
                            .map(str::to_owned)
                            .unwrap_or_else(|| display(sender)),
                    ),
                )),
                (_, "leave") if sender == state_key && !target_ours => Some((
                    EventKind::Leave {
                        reason,
                        quit: false,
                    },
                    Some(target_name()),
                )),
                ("ban", "leave") => None, // unban
                ("join" | "invite" | "knock", "leave") if sender != state_key => Some((
                    EventKind::Kick {
                        target: target_sender(),
                        reason,
                    },
                    None,
                )),
                (_, "ban") => Some((
                    EventKind::Ban {
                        target: target_sender(),
                        reason,
                    },
                    None,
                )),
                _ => None,
            }
        }
        "m.room.power_levels" => power_levels(content, ev, display).map(|text| {
            (
                EventKind::Message(Message {
                    kind: MessageKind::Emote,
                    body: RichText::plain(text),
                    ..Message::default()
                }),
                None,
            )
        }),
        "m.room.name"
        | "m.room.avatar"
        | "m.room.create"
        | "m.room.join_rules"
        | "m.room.history_visibility"
        | "m.room.canonical_alias"
        | "m.room.guest_access" => {
            tracing::debug!(kind, "Room state change not carried to the other networks.");
            None
        }
        _ => {
            tracing::debug!(kind, "Skipped an unknown state event.");
            None
        }
    }
}

/// A power-level change as an action line (`set the power level of bob to 50
/// (moderator)`), for the people whose level changed; `None` for the room's first power
/// levels or changes that concern no person.
fn power_levels(content: &Value, ev: &Value, display: &dyn Fn(&str) -> String) -> Option<String> {
    let prev = ev.get("unsigned").and_then(|u| u.get("prev_content"))?;
    let level = |c: &Value, user: &str| -> i64 {
        c.get("users")
            .and_then(|u| u.get(user))
            .and_then(Value::as_i64)
            .or_else(|| c.get("users_default").and_then(Value::as_i64))
            .unwrap_or(0)
    };
    let users = |c: &Value| -> Vec<String> {
        c.get("users")
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut all = users(content);
    all.extend(users(prev));
    all.sort();
    all.dedup();
    let changes: Vec<String> = all
        .iter()
        .filter_map(|user| {
            let (was, now) = (level(prev, user), level(content, user));
            (was != now).then(|| {
                let role = match now {
                    100.. => " (admin)",
                    50..=99 => " (moderator)",
                    _ => "",
                };
                format!("{} to {now}{role}", display(user))
            })
        })
        .collect();
    if changes.is_empty() {
        return None;
    }
    Some(format!("set the power level of {}", changes.join(", ")))
}

/// Room (non-state) events: messages, edits, reactions, redactions.
fn room_event(
    kind: &str,
    event_id: &str,
    content: &Value,
    ev: &Value,
    cx: &InboundCx<'_>,
    effects: &mut Vec<Effect>,
) -> Option<(EventKind, Option<String>)> {
    let relates = content.get("m.relates_to").unwrap_or(&Value::Null);
    match kind {
        "m.room.message" => {
            if s(relates, "rel_type") == Some("m.replace") {
                let target = s(relates, "event_id")?;
                let new = content.get("m.new_content").unwrap_or(content);
                let body = message_body(new, false, cx);
                return Some((
                    EventKind::Edit {
                        target: MessageId::new(target),
                        body,
                    },
                    None,
                ));
            }
            let reply_to = relates
                .get("m.in_reply_to")
                .and_then(|r| s(r, "event_id"))
                .map(MessageId::new);
            let msgtype = s(content, "msgtype").unwrap_or("m.text");
            let mut body = message_body(content, reply_to.is_some(), cx);
            let mut attachments = Vec::new();
            let kind = match msgtype {
                "m.emote" => MessageKind::Emote,
                "m.notice" => MessageKind::Notice,
                "m.image" | "m.file" | "m.video" | "m.audio" => {
                    let (att, caption) = attachment(content, cx)?;
                    let mxc =
                        s(content, "url").or_else(|| content.get("file").and_then(|f| s(f, "url")));
                    effects.push(Effect::Media {
                        event_id: event_id.to_owned(),
                        mxcs: vec![mxc.unwrap_or("").to_owned()],
                    });
                    attachments.extend(att);
                    body = caption;
                    MessageKind::Text
                }
                _ => MessageKind::Text,
            };
            if body.is_empty() && attachments.is_empty() {
                tracing::debug!("Skipped an empty message.");
                return None;
            }
            Some((
                EventKind::Message(Message {
                    kind,
                    body,
                    reply_to,
                    attachments,
                }),
                None,
            ))
        }
        "m.reaction" => {
            if s(relates, "rel_type") != Some("m.annotation") {
                return None;
            }
            let target = s(relates, "event_id")?;
            let key = s(relates, "key")?;
            effects.push(Effect::Reaction {
                event_id: event_id.to_owned(),
                target: target.to_owned(),
                key: key.to_owned(),
            });
            Some((
                EventKind::React {
                    target: MessageId::new(target),
                    key: key.to_owned(),
                },
                None,
            ))
        }
        "m.room.redaction" => {
            let target = s(ev, "redacts").or_else(|| s(content, "redacts"))?;
            if let Some((reacted, key)) = (cx.reaction)(target) {
                return Some((
                    EventKind::Unreact {
                        target: MessageId::new(reacted),
                        key,
                    },
                    None,
                ));
            }
            Some((
                EventKind::Redact {
                    target: MessageId::new(target),
                    reason: s(content, "reason").map(str::to_owned),
                },
                None,
            ))
        }
        "m.room.encrypted" => {
            tracing::error!("Received an encrypted event in a linked room; it can not be bridged.");
            None
        }
        _ => {
            tracing::debug!(kind, "Skipped an event type the lobby does not carry.");
            None
        }
    }
}

/// The rich text of a message content, with any reply fallback removed.
///
/// An `org.matrix.custom.html` `formatted_body` is read by the core's sanitising HTML
/// reader (which drops the `<mx-reply>` fallback and turns pills into mentions); otherwise,
/// or when the HTML holds no text, the plain `body` is used, its `> ` reply fallback
/// stripped. Pills to our ghosts become mentions of the people they stand for, so the other
/// networks name them natively.
fn message_body(content: &Value, is_reply: bool, cx: &InboundCx<'_>) -> RichText {
    let html = (s(content, "format") == Some("org.matrix.custom.html"))
        .then(|| s(content, "formatted_body"))
        .flatten();
    if let Some(html) = html {
        let mut text = junction_core::format::html::parse(html, cx.network);
        if !text.is_empty() {
            map_pills(&mut text, cx);
            return text;
        }
    }
    let body = s(content, "body").unwrap_or("");
    if is_reply {
        RichText::plain(strip_reply_fallback(body))
    } else {
        RichText::plain(body)
    }
}

/// Pills parsed from HTML name Matrix users: ours become the remote person a ghost stands
/// for; others are Matrix users of this network.
fn map_pills(text: &mut RichText, cx: &InboundCx<'_>) {
    junction_core::format::mention::map_mentions(text, |user, _name| {
        let Some(u) = user.as_ref() else { return };
        let id = u.user.as_str();
        *user = Some(match ids::parse_ghost(cx.prefix, cx.server_name, id) {
            Some((net, remote)) => UserRef::new(net, remote),
            None => UserRef::new(cx.network.clone(), id),
        });
    });
}

/// Removes the reply fallback of a plain body: the leading `> ` quote lines and the empty
/// line after them.
pub fn strip_reply_fallback(body: &str) -> String {
    let mut lines = body.lines().peekable();
    let mut stripped = false;
    while let Some(line) = lines.peek() {
        if line.starts_with("> ") || *line == ">" {
            lines.next();
            stripped = true;
        } else {
            break;
        }
    }
    if stripped && lines.peek().is_some_and(|l| l.is_empty()) {
        lines.next();
    }
    if !stripped {
        return body.to_owned();
    }
    lines.collect::<Vec<_>>().join("\n")
}

/// The attachment of a media message and its caption (the body, when a separate file name
/// is given). A file in clear (`url`) is linked through the media proxy, or skipped when its
/// URI is unusable; an encrypted one (`file`) through the proxy's decrypting links, or, when
/// that can not be made, crosses as a line naming the file and saying it stayed on Matrix
/// (no attachment), so that it does not vanish.
fn attachment(content: &Value, cx: &InboundCx<'_>) -> Option<(Option<Attachment>, RichText)> {
    let body = s(content, "body").unwrap_or("");
    let (name, caption) = match s(content, "filename") {
        Some(f) if f != body => (f.to_owned(), RichText::plain(body)),
        _ => (body.to_owned(), RichText::default()),
    };
    let info = content.get("info").unwrap_or(&Value::Null);
    let mime = s(info, "mimetype");
    let url = match (s(content, "url"), content.get("file")) {
        (Some(mxc), _) => (cx.media_link)(mxc),
        (None, Some(file)) => {
            let Some(url) = (cx.encrypted_media_link)(file, &name, mime) else {
                let name = if name.is_empty() { "a file" } else { &name };
                let mut line = format!("[an encrypted attachment, {name}: open it on Matrix]");
                if !caption.is_empty() {
                    line = format!("{line} {body}");
                }
                return Some((None, RichText::plain(line)));
            };
            Some(url)
        }
        (None, None) => None,
    };
    let Some(url) = url else {
        tracing::warn!("Skipped media with an unusable URL.");
        return None;
    };
    Some((
        Some(Attachment {
            url,
            name,
            mime: mime.map(str::to_owned),
            size: info.get("size").and_then(Value::as_u64),
        }),
        caption,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn with_cx<T>(f: impl FnOnce(&InboundCx<'_>) -> T) -> T {
        let net = NetworkId::new("matrix");
        let room = |id: &str| match id {
            "!room" => Some(RoomId::new("#lobby:matrix.test")),
            "!private" => Some(RoomId::new("dm:@alice:matrix.test\u{1f}irc:local\u{1f}bob")),
            _ => None,
        };
        let name = |_: &str, u: &str| (u == "@alice:matrix.test").then(|| "Alice".to_owned());
        let media = |mxc: &str| parse(mxc).map(|(s, i)| format!("http://gw/media/{s}/{i}?sig=x"));
        let reaction = |id: &str| (id == "$react").then(|| ("$msg".to_owned(), "👍".to_owned()));
        // Only a file with a key is linked, under its name.
        let encrypted = |file: &Value, name: &str, _: Option<&str>| {
            file.get("key")
                .map(|_| format!("http://gw/media/encrypted/token/{name}?sig=x"))
        };
        let cx = InboundCx {
            network: &net,
            prefix: "_junction_",
            server_name: "matrix.test",
            bot: "@junction:matrix.test",
            room: &room,
            name: &name,
            media_link: &media,
            encrypted_media_link: &encrypted,
            reaction: &reaction,
        };
        f(&cx)
    }

    fn parse(mxc: &str) -> Option<(&str, &str)> {
        crate::media::parse_mxc(mxc)
    }

    fn conv(ev: Value) -> Converted {
        with_cx(|cx| convert(&ev, cx))
    }

    fn msg(content: Value) -> Value {
        json!({
            "type": "m.room.message", "room_id": "!room", "sender": "@alice:matrix.test",
            "event_id": "$e1", "origin_server_ts": 1700000000000u64, "content": content
        })
    }

    #[test]
    fn text_message_becomes_a_message_from_the_linked_room() {
        let c = conv(msg(json!({"msgtype": "m.text", "body": "hello"})));
        let e = c.event.expect("event");
        assert_eq!(e.origin, RoomRef::new("matrix", "#lobby:matrix.test"));
        assert_eq!(e.remote_id, MessageId::new("$e1"));
        assert_eq!(e.sender.display_name, "Alice");
        assert_eq!(e.sender.user, UserRef::new("matrix", "@alice:matrix.test"));
        assert_eq!(e.ts_ms, 1700000000000);
        let EventKind::Message(m) = e.kind else {
            panic!("not a message")
        };
        assert_eq!(m.body.to_plain(), "hello");
        assert_eq!(m.kind, MessageKind::Text);
    }

    #[test]
    fn emote_and_notice_keep_their_kind() {
        for (t, k) in [
            ("m.emote", MessageKind::Emote),
            ("m.notice", MessageKind::Notice),
        ] {
            let e = conv(msg(json!({"msgtype": t, "body": "x"})))
                .event
                .expect("event");
            let EventKind::Message(m) = e.kind else {
                panic!()
            };
            assert_eq!(m.kind, k);
        }
    }

    #[test]
    fn reply_fallback_is_stripped() {
        let c = conv(msg(json!({
            "msgtype": "m.text",
            "body": "> <@bob:matrix.test> original\n> second line\n\nmy answer",
            "format": "org.matrix.custom.html",
            "formatted_body": "<mx-reply><blockquote>original</blockquote></mx-reply>my answer",
            "m.relates_to": {"m.in_reply_to": {"event_id": "$orig"}}
        })));
        let EventKind::Message(m) = c.event.expect("event").kind else {
            panic!()
        };
        assert_eq!(m.body.to_plain(), "my answer");
        assert_eq!(m.reply_to, Some(MessageId::new("$orig")));
    }

    #[test]
    fn formatted_bodies_become_rich_text_and_pills_mentions() {
        use junction_core::format::Span;
        let c = conv(msg(json!({
            "msgtype": "m.text",
            "body": "bob: so **bold** <script>",
            "format": "org.matrix.custom.html",
            "formatted_body": "<a href=\"https://matrix.to/#/@_junction_irc_local_bob:matrix.test\">bob</a>: \
                 so <strong>bold</strong> &lt;script&gt;<script>alert(1)</script> \
                 <a href=\"https://matrix.to/#/@carol:matrix.test\">Carol</a>"
        })));
        let EventKind::Message(m) = c.event.expect("event").kind else {
            panic!()
        };
        assert_eq!(
            m.body.spans,
            vec![
                Span::Mention {
                    user: Some(UserRef::new("irc:local", "bob")),
                    name: "bob".into()
                },
                Span::Text(": so ".into()),
                Span::Bold(vec![Span::Text("bold".into())]),
                Span::Text(" <script> ".into()),
                Span::Mention {
                    user: Some(UserRef::new("matrix", "@carol:matrix.test")),
                    name: "Carol".into()
                },
            ]
        );
        // An edit's new content is read the same way.
        let c = conv(msg(json!({
            "msgtype": "m.text", "body": "* fixed",
            "m.new_content": {"msgtype": "m.text", "body": "fixed",
                "format": "org.matrix.custom.html", "formatted_body": "<em>fixed</em>"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"}
        })));
        let EventKind::Edit { body, .. } = c.event.expect("event").kind else {
            panic!()
        };
        assert_eq!(
            body.spans,
            vec![Span::Italic(vec![Span::Text("fixed".into())])]
        );
        // HTML without text falls back to the plain body.
        let c = conv(msg(json!({
            "msgtype": "m.text", "body": "plain",
            "format": "org.matrix.custom.html", "formatted_body": "<script>x</script>"
        })));
        let EventKind::Message(m) = c.event.expect("event").kind else {
            panic!()
        };
        assert_eq!(m.body, RichText::plain("plain"));
    }

    #[test]
    fn a_reply_without_fallback_keeps_its_quote_free_body() {
        assert_eq!(strip_reply_fallback("just text"), "just text");
        assert_eq!(
            strip_reply_fallback("> quoted\n\nanswer\n> not fallback"),
            "answer\n> not fallback"
        );
    }

    #[test]
    fn edit_uses_new_content() {
        let c = conv(msg(json!({
            "msgtype": "m.text", "body": "* fixed",
            "m.new_content": {"msgtype": "m.text", "body": "fixed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"}
        })));
        assert_eq!(
            c.event.expect("event").kind,
            EventKind::Edit {
                target: MessageId::new("$orig"),
                body: RichText::plain("fixed")
            }
        );
    }

    #[test]
    fn own_ghosts_and_bot_are_ignored() {
        for sender in [
            "@_junction_irc_local_bob:matrix.test",
            "@junction:matrix.test",
        ] {
            let mut ev = msg(json!({"msgtype": "m.text", "body": "echo"}));
            ev["sender"] = json!(sender);
            assert!(conv(ev).event.is_none(), "{sender}");
        }
    }

    #[test]
    fn unlinked_rooms_and_malformed_events_are_skipped() {
        let mut ev = msg(json!({"msgtype": "m.text", "body": "x"}));
        ev["room_id"] = json!("!other");
        assert!(conv(ev).event.is_none());
        assert!(conv(json!({"type": "m.room.message"})).event.is_none());
        assert!(conv(json!("not an object")).event.is_none());
        let mut ev = msg(json!({"body": 5}));
        ev["type"] = json!("m.custom.thing");
        assert!(conv(ev).event.is_none());
    }

    #[test]
    fn reactions_and_their_redaction() {
        let c = conv(json!({
            "type": "m.reaction", "room_id": "!room", "sender": "@alice:matrix.test",
            "event_id": "$react", "origin_server_ts": 1,
            "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$msg", "key": "👍"}}
        }));
        assert_eq!(
            c.event.expect("event").kind,
            EventKind::React {
                target: MessageId::new("$msg"),
                key: "👍".into()
            }
        );
        assert!(matches!(&c.effects[..], [Effect::Reaction { .. }]));
        let c = conv(json!({
            "type": "m.room.redaction", "room_id": "!room", "sender": "@alice:matrix.test",
            "event_id": "$r2", "origin_server_ts": 2, "redacts": "$react", "content": {}
        }));
        assert_eq!(
            c.event.expect("event").kind,
            EventKind::Unreact {
                target: MessageId::new("$msg"),
                key: "👍".into()
            }
        );
        let c = conv(json!({
            "type": "m.room.redaction", "room_id": "!room", "sender": "@alice:matrix.test",
            "event_id": "$r3", "origin_server_ts": 2, "content": {"redacts": "$m", "reason": "oops"}
        }));
        assert_eq!(
            c.event.expect("event").kind,
            EventKind::Redact {
                target: MessageId::new("$m"),
                reason: Some("oops".into())
            }
        );
        assert!(c.effects.contains(&Effect::Redacted {
            event_id: "$m".into()
        }));
    }

    #[test]
    fn images_become_attachments_through_the_proxy() {
        let c = conv(msg(json!({
            "msgtype": "m.image", "body": "cat.png", "url": "mxc://matrix.test/abc",
            "info": {"mimetype": "image/png", "size": 42}
        })));
        let EventKind::Message(m) = c.event.expect("event").kind else {
            panic!()
        };
        assert!(m.body.is_empty());
        assert_eq!(
            m.attachments,
            vec![Attachment {
                url: "http://gw/media/matrix.test/abc?sig=x".into(),
                name: "cat.png".into(),
                mime: Some("image/png".into()),
                size: Some(42),
            }]
        );
        assert!(matches!(&c.effects[..], [Effect::Media { .. }]));
    }

    #[test]
    fn encrypted_files_become_attachments_through_decrypting_links() {
        let c = conv(msg(json!({
            "msgtype": "m.file", "body": "notes.txt", "info": {"mimetype": "text/plain"},
            "file": {"url": "mxc://matrix.test/enc", "key": {"k": "…"}, "iv": "", "hashes": {}}
        })));
        let EventKind::Message(m) = c.event.expect("event").kind else {
            panic!()
        };
        assert_eq!(
            m.attachments[0].url,
            "http://gw/media/encrypted/token/notes.txt?sig=x"
        );
        assert_eq!(m.attachments[0].mime.as_deref(), Some("text/plain"));
        // Its redaction withdraws the file, as for a file in clear.
        assert_eq!(
            c.effects,
            vec![Effect::Media {
                event_id: "$e1".into(),
                mxcs: vec!["mxc://matrix.test/enc".into()]
            }]
        );
    }

    #[test]
    fn an_encrypted_file_without_a_link_crosses_as_a_line_saying_so() {
        let c = conv(msg(json!({
            "msgtype": "m.image", "body": "a cat", "filename": "cat.png",
            "file": {"url": "mxc://matrix.test/enc"},
            "m.relates_to": {"m.in_reply_to": {"event_id": "$orig"}}
        })));
        let EventKind::Message(m) = c.event.expect("event").kind else {
            panic!()
        };
        assert!(m.attachments.is_empty());
        assert_eq!(
            m.body.to_plain(),
            "[an encrypted attachment, cat.png: open it on Matrix] a cat"
        );
        assert_eq!(m.reply_to, Some(MessageId::new("$orig")));
    }

    fn member(sender: &str, key: &str, now: Value, prev: Value) -> Value {
        json!({
            "type": "m.room.member", "room_id": "!room", "sender": sender, "state_key": key,
            "event_id": "$m", "origin_server_ts": 5, "content": now,
            "unsigned": {"prev_content": prev}
        })
    }

    #[test]
    fn membership_changes() {
        let a = "@alice:matrix.test";
        let j = conv(member(
            a,
            a,
            json!({"membership": "join", "displayname": "Al"}),
            json!({}),
        ));
        let e = j.event.expect("join");
        assert_eq!(e.kind, EventKind::Join);
        assert_eq!(e.sender.display_name, "Al");
        let n = conv(member(
            a,
            a,
            json!({"membership": "join", "displayname": "Ally"}),
            json!({"membership": "join", "displayname": "Al"}),
        ));
        let e = n.event.expect("nick");
        assert_eq!(
            e.kind,
            EventKind::NickChange {
                new_name: "Ally".into()
            }
        );
        assert_eq!(e.sender.display_name, "Al");
        let l = conv(member(
            a,
            a,
            json!({"membership": "leave"}),
            json!({"membership": "join"}),
        ));
        assert!(matches!(
            l.event.expect("leave").kind,
            EventKind::Leave { quit: false, .. }
        ));
        let k = conv(member(
            a,
            "@_junction_irc_local_bob:matrix.test",
            json!({"membership": "leave", "reason": "spam"}),
            json!({"membership": "join", "displayname": "bob"}),
        ));
        assert_eq!(
            k.effects,
            vec![Effect::GhostLeft {
                room_id: "!room".into(),
                user_id: "@_junction_irc_local_bob:matrix.test".into()
            }]
        );
        let EventKind::Kick { target, reason } = k.event.expect("kick").kind else {
            panic!()
        };
        assert_eq!(target.user, UserRef::new("irc:local", "bob"));
        assert_eq!(reason.as_deref(), Some("spam"));
        // Our own ghost joining is not news.
        let g = "@_junction_irc_local_bob:matrix.test";
        assert!(conv(member(g, g, json!({"membership": "join"}), json!({})))
            .event
            .is_none());
    }

    #[test]
    fn power_level_changes_become_an_action_line() {
        let ev = |prev: Value| {
            json!({
                "type": "m.room.power_levels", "room_id": "!room", "sender": "@alice:matrix.test",
                "state_key": "", "event_id": "$p", "origin_server_ts": 1,
                "content": {"users": {"@alice:matrix.test": 100, "@_junction_irc_local_bob:matrix.test": 50}},
                "unsigned": {"prev_content": prev}
            })
        };
        let e = conv(ev(json!({"users": {"@alice:matrix.test": 100}})))
            .event
            .expect("event");
        assert_eq!(e.sender.display_name, "Alice");
        let EventKind::Message(m) = e.kind else {
            panic!()
        };
        assert_eq!(m.kind, MessageKind::Emote);
        assert_eq!(
            m.body.to_plain(),
            "set the power level of _junction_irc_local_bob to 50 (moderator)"
        );
        // The room's first power levels, or no person's level changed: nothing to say.
        let mut first = ev(json!({}));
        first["unsigned"] = json!({});
        assert!(conv(first).event.is_none());
        let same = ev(
            json!({"users": {"@alice:matrix.test": 100, "@_junction_irc_local_bob:matrix.test": 50}, "ban": 50}),
        );
        assert!(conv(same).event.is_none());
    }

    #[test]
    fn topic_and_encryption() {
        let t = conv(json!({
            "type": "m.room.topic", "room_id": "!room", "sender": "@alice:matrix.test",
            "state_key": "", "event_id": "$t", "origin_server_ts": 1, "content": {"topic": "hi"}
        }));
        assert_eq!(
            t.event.expect("topic").kind,
            EventKind::Topic { text: "hi".into() }
        );
        let e = conv(json!({
            "type": "m.room.encryption", "room_id": "!room", "sender": "@alice:matrix.test",
            "state_key": "", "event_id": "$x", "origin_server_ts": 1,
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}
        }));
        assert!(e.event.is_none());
        assert_eq!(
            e.effects,
            vec![Effect::Encrypted {
                room_id: "!room".into(),
                content: json!({"algorithm": "m.megolm.v1.aes-sha2"}),
            }]
        );
    }

    #[test]
    fn text_in_unlinked_rooms_is_a_possible_command() {
        let mut ev = msg(json!({"msgtype": "m.text", "body": "  status \n"}));
        ev["room_id"] = json!("!dm");
        let c = conv(ev.clone());
        assert!(c.event.is_none());
        assert_eq!(
            c.effects,
            vec![Effect::Command {
                room_id: "!dm".into(),
                event_id: "$e1".into(),
                sender: "@alice:matrix.test".into(),
                text: "status".into()
            }]
        );
        // Not from our own users, and not notices or emotes.
        ev["sender"] = json!("@_junction_irc_local_bob:matrix.test");
        assert!(conv(ev.clone()).effects.is_empty());
        ev["sender"] = json!("@alice:matrix.test");
        ev["content"]["msgtype"] = json!("m.notice");
        assert!(conv(ev).effects.is_empty());
    }

    #[test]
    fn invites_of_the_bot_to_other_rooms_are_reported() {
        let c = conv(json!({
            "type": "m.room.member", "room_id": "!mgmt", "sender": "@alice:matrix.test",
            "state_key": "@junction:matrix.test", "event_id": "$i", "origin_server_ts": 1,
            "content": {"membership": "invite"}
        }));
        assert!(c.event.is_none());
        assert_eq!(
            c.effects,
            vec![Effect::BotInvited {
                room_id: "!mgmt".into(),
                by: "@alice:matrix.test".into(),
                direct: false,
            }]
        );
    }

    #[test]
    fn direct_chat_invites_of_ghosts_and_leaves_of_private_rooms_are_reported() {
        let invite = |direct: bool| {
            conv(json!({
                "type": "m.room.member", "room_id": "!new", "sender": "@alice:matrix.test",
                "state_key": "@_junction_irc_local_bob:matrix.test", "event_id": "$i",
                "origin_server_ts": 1,
                "content": {"membership": "invite", "is_direct": direct}
            }))
        };
        assert_eq!(
            invite(true).effects,
            vec![Effect::GhostInvited {
                room_id: "!new".into(),
                ghost: "@_junction_irc_local_bob:matrix.test".into(),
                by: "@alice:matrix.test".into()
            }]
        );
        // A group room's invite opens no conversation.
        assert!(invite(false).effects.is_empty());
        let leave = |room: &str, who: &str| {
            conv(json!({
                "type": "m.room.member", "room_id": room, "sender": who,
                "state_key": who, "event_id": "$l", "origin_server_ts": 1,
                "content": {"membership": "leave"}
            }))
        };
        assert!(leave("!private", "@alice:matrix.test")
            .effects
            .contains(&Effect::PrivateLeft {
                room_id: "!private".into()
            }));
        assert!(!leave("!room", "@alice:matrix.test")
            .effects
            .iter()
            .any(|e| matches!(e, Effect::PrivateLeft { .. })));
        // Its message is an event of the conversation.
        let mut m = msg(json!({"msgtype": "m.text", "body": "hi"}));
        m["room_id"] = json!("!private");
        let e = conv(m).event.expect("event");
        assert!(junction_core::private::is_private(&e.origin.room));
    }
}
