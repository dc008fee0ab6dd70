//! One [`Delivery`] rendered into a room: which occupant says it (the sender's puppet, or
//! the listener for the gateway's own words and for people the cap of occupants refused),
//! and which stanza it becomes (message, correction, retraction or moderation, reactions,
//! subject, nick change, leave, kick or ban).

use junction_core::clock::now_ms;
use junction_core::{AdapterContext, Delivery, EventKind, MessageId};

use crate::adapter::{State, LISTENER_NICK};
use crate::connection::{send, Conn};
use crate::ids::puppet_jid;
use crate::inbound::OUR_ID_PREFIX;
use crate::messages::{S2P, U2S};
use crate::outbound::{self, AdminItem, ModerationForm};
use crate::pending::{answer_now, send_notice, send_pending, Wait};
use crate::puppets::{admit_occupant, origin_tag};
use crate::rooms::{find_occupant, Rights};

/// Renders one delivery. Messages are answered when the room reflects them
/// (or rejects them); membership changes at once. False when the connection
/// is lost: the delivery is then kept and goes out after the reconnect.
pub(crate) async fn deliver(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    d: Delivery,
) -> bool {
    if junction_core::private::is_private(&d.target.room) {
        return crate::private::deliver(st, conn, cx, d).await;
    }
    let room = d.target.room.as_str().to_string();
    let gateway = d.event.sender.user.network.is_gateway();
    let sender = d.event.sender.clone();
    let (puppet, from) = if gateway {
        (st.listener_bare(), st.listener())
    } else {
        let p = puppet_jid(&sender.user, &st.config.component);
        let f = format!("{p}/junction");
        (p, f)
    };
    let key = (room.clone(), puppet.clone());
    match &d.event.kind {
        EventKind::Kick { .. } | EventKind::Ban { .. } => {
            return kick_or_ban(st, conn, cx, d).await;
        }
        EventKind::Leave { reason, .. } => {
            if !gateway {
                st.cap.remove(&key);
            }
            let Some(nick) = (!gateway).then(|| st.joined.remove(&key)).flatten() else {
                answer_now(cx, &d, Ok(Vec::new()));
                return true;
            };
            if !send(
                conn,
                outbound::leave(&from, &room, &nick, reason.as_deref()),
            )
            .await
            {
                st.redo.push(d);
                return false;
            }
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        EventKind::Join | EventKind::NickChange { .. } if gateway => {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        _ => {}
    }
    if !gateway && st.joined.contains_key(&key) {
        let speaks = !matches!(d.event.kind, EventKind::Join | EventKind::NickChange { .. });
        st.cap.touch(&key, now_ms(), speaks);
    }
    if !gateway && !st.joined.contains_key(&key) {
        // A rename of someone whose puppet is not in the room shows nothing: it must not
        // make an occupant (a join-and-rename loop would make one per name).
        if matches!(d.event.kind, EventKind::NickChange { .. }) {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        match admit_occupant(st, conn, &key, &d).await {
            Some(true) => {}
            Some(false) => return refused_occupant(st, conn, cx, d).await,
            None => {
                st.redo.push(d);
                return false;
            }
        }
        let wanted = match &d.event.kind {
            EventKind::NickChange { new_name } => new_name.clone(),
            _ if sender.display_name.is_empty() => sender.user.user.as_str().to_string(),
            _ => sender.display_name.clone(),
        };
        let nick =
            outbound::puppet_nick(&wanted, origin_tag(st, &puppet), 0, st.config.origin_marks);
        let id = st.new_id();
        if !send(conn, outbound::join(&from, &room, &nick, &id)).await {
            st.redo.push(d);
            return false;
        }
        if let Err(e) = st.store.set_puppet(&sender.user, &puppet) {
            tracing::warn!(error = %e, "xmpp: could not store a puppet");
        }
        st.wanted.insert(key.clone(), (wanted, 0));
        st.joined.insert(key.clone(), nick);
        if matches!(d.event.kind, EventKind::Join | EventKind::NickChange { .. }) {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
    }
    // The id derives from the outbox row: a delivery handed out again after a
    // gateway restart carries the same origin-id, so one the room already has
    // is recognised instead of sent twice.
    let id = delivery_message_id(&d);
    if let Some(s) = st.kv(U2S, &id) {
        tracing::debug!(room, "xmpp: the room already has this message");
        answer_now(cx, &d, Ok(vec![MessageId::new(s)]));
        return true;
    }
    let target = d.target_ids.first().map(|t| t.as_str().to_string());
    let mut sender_key = key.clone();
    let (el, wait) = match &d.event.kind {
        EventKind::Message(m) => {
            let text = outbound::with_links(
                outbound::styled(&mention_nicks(st, &room, &m.body)),
                &m.attachments,
            );
            let emote = m.kind == junction_core::MessageKind::Emote;
            let el = match (d.reply_to.first(), m.attachments.first()) {
                (Some(r), _) => {
                    let s = st.stanza_id_for(r.as_str());
                    outbound::reply(&from, &room, &id, &s, None, None, &text)
                }
                (None, Some(a)) if m.body.is_empty() && m.attachments.len() == 1 => {
                    outbound::attachment(&from, &room, &id, &a.url)
                }
                _ => outbound::message(&from, &room, &id, &text, emote),
            };
            (el, Wait::Reflection)
        }
        EventKind::Edit { body, .. } => {
            let Some(t) = target else {
                answer_now(cx, &d, Err("edit target unknown here".into()));
                return true;
            };
            let u = st.message_id_for(&t);
            (
                outbound::correction(&from, &room, &id, &u, &outbound::styled(body)),
                Wait::Reflection,
            )
        }
        EventKind::Redact { reason, .. } => {
            let Some(t) = target else {
                answer_now(cx, &d, Err("redact target unknown here".into()));
                return true;
            };
            let s = st.stanza_id_for(&t);
            let owner = st.kv(S2P, &s);
            let listener_bare = st.listener_bare();
            match owner {
                // Our own occupant's message: it retracts it (XEP-0424).
                Some(o) if o == puppet => (
                    outbound::retraction(&from, &room, &id, &s),
                    Wait::Reflection,
                ),
                Some(o) if o == listener_bare => {
                    sender_key = (room.clone(), o);
                    (
                        outbound::retraction(&st.listener(), &room, &id, &s),
                        Wait::Reflection,
                    )
                }
                // Someone else's, removed by a moderator of the origin room: XEP-0425
                // moderation, naming the moderator, if the listener may. Nobody else's
                // removal of another person's message is made: the gateway lends no power.
                _ => {
                    if !d.event.by_moderator {
                        answer_now(
                            cx,
                            &d,
                            Err("the sender may not remove another person's message".into()),
                        );
                        return true;
                    }
                    if !st.rights.get(&room).is_some_and(Rights::moderator) {
                        answer_now(
                            cx,
                            &d,
                            Err(format!(
                                "the gateway is not a moderator in {room}: cannot remove another person's message"
                            )),
                        );
                        return true;
                    }
                    // In the form the room offers; one that has not said asks in the
                    // current form, one that offers neither is not asked.
                    let form = match st.moderation.get(&room) {
                        Some(Some(form)) => *form,
                        None => ModerationForm::Retract,
                        Some(None) => {
                            answer_now(
                                cx,
                                &d,
                                Err(format!(
                                    "{room} offers no message moderation (XEP-0425): cannot remove another person's message"
                                )),
                            );
                            return true;
                        }
                    };
                    sender_key = (room.clone(), listener_bare);
                    let why = junction_core::authority::moderation_reason(
                        &d.event.sender,
                        reason.as_deref(),
                    );
                    (
                        outbound::moderate(form, &st.listener(), &room, &id, &s, Some(&why)),
                        Wait::Iq,
                    )
                }
            }
        }
        EventKind::React { key: k, .. } | EventKind::Unreact { key: k, .. } => {
            let Some(t) = target else {
                answer_now(cx, &d, Err("reaction target unknown here".into()));
                return true;
            };
            let s = st.stanza_id_for(&t);
            let keys = our_reactions(st, &room, &puppet, &s, &d.event.kind, k);
            (
                outbound::reactions(&from, &room, &id, &s, &keys),
                Wait::Reflection,
            )
        }
        EventKind::Topic { text } => {
            let nick = st
                .joined
                .get(&key)
                .cloned()
                .unwrap_or_else(|| LISTENER_NICK.to_string());
            (
                outbound::subject(&from, &room, &id, text),
                Wait::Subject { nick },
            )
        }
        EventKind::Join => {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        EventKind::NickChange { new_name } => {
            let id = st.new_id();
            let nick =
                outbound::puppet_nick(new_name, origin_tag(st, &puppet), 0, st.config.origin_marks);
            if !send(conn, outbound::join(&from, &room, &nick, &id)).await {
                st.redo.push(d);
                return false;
            }
            st.joined.insert(key.clone(), nick);
            st.wanted.insert(key, (new_name.clone(), 0));
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        EventKind::Leave { .. } | EventKind::Kick { .. } | EventKind::Ban { .. } => {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
    };
    send_pending(st, conn, d, id, el, wait, sender_key).await
}

/// The whole set of keys `puppet` has on `target` in `room` (a room or a conversation) once
/// the reaction `kind` of `key` is applied (XEP-0444 sends the set, not the change).
pub(crate) fn our_reactions(
    st: &mut State,
    room: &str,
    puppet: &str,
    target: &str,
    kind: &EventKind,
    key: &str,
) -> Vec<String> {
    let set = st.our_reactions.get_or_insert_mut(
        (room.to_owned(), puppet.to_owned(), target.to_owned()),
        Vec::new,
    );
    if matches!(kind, EventKind::React { .. }) {
        if !set.iter().any(|k| k == key)
            && set.len() < junction_core::limits::MAX_REACTIONS_PER_ITEM
        {
            set.push(key.to_owned());
        }
    } else {
        set.retain(|k| k != key);
    }
    set.clone()
}

/// Renders a delivery whose sender got no occupant: a message is said by the listener as
/// `<name> text`, a topic change as a line; a join is nothing to show; anything else is
/// given up.
async fn refused_occupant(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    d: Delivery,
) -> bool {
    let name = d.event.sender.display_name.clone();
    let line = match &d.event.kind {
        EventKind::Message(m) => {
            let text = outbound::with_links(outbound::styled(&m.body), &m.attachments);
            if m.kind == junction_core::MessageKind::Emote {
                format!("* {name} {text}")
            } else {
                format!("<{name}> {text}")
            }
        }
        EventKind::Topic { text } => format!("{name} set the topic: {text}"),
        EventKind::Join => {
            answer_now(cx, &d, Ok(Vec::new()));
            return true;
        }
        _ => {
            answer_now(
                cx,
                &d,
                Err("the sender has no occupant here: the cap of occupants is reached".into()),
            );
            return true;
        }
    };
    send_notice(st, conn, d, &line).await
}

/// Our message id (`U`, sent as id and origin-id) for a delivery: stable for
/// its outbox row, target and event, so a redelivery reuses it.
fn delivery_message_id(d: &Delivery) -> String {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(d.outbox_id.to_be_bytes());
    h.update(d.target.to_string().as_bytes());
    h.update([0]);
    h.update(d.event.id.to_string().as_bytes());
    let digest = h.finalize();
    format!("{OUR_ID_PREFIX}{}", hex::encode(&digest[..12]))
}

/// A kick or ban. From ordinary users it is reflected as a notice line; from
/// the gateway it is enforced: on a user of this network through the MUC
/// admin protocol (where the listener has the rights), and on a user of
/// another network by that user's puppet leaving.
async fn kick_or_ban(st: &mut State, conn: &mut Conn, cx: &AdapterContext, d: Delivery) -> bool {
    let (t, reason, ban) = match &d.event.kind {
        EventKind::Kick { target, reason } => (target.clone(), reason.clone(), false),
        EventKind::Ban { target, reason } => (target.clone(), reason.clone(), true),
        _ => return true,
    };
    let room = d.target.room.as_str().to_string();
    if !d.event.sender.user.network.is_gateway() {
        let verb = if ban { "banned" } else { "kicked" };
        let why = reason.map(|r| format!(" ({r})")).unwrap_or_default();
        let text = format!(
            "{} {verb} {}{why}",
            d.event.sender.display_name, t.display_name
        );
        return send_notice(st, conn, d, &text).await;
    }
    if t.user.network != st.network {
        let key = (room.clone(), puppet_jid(&t.user, &st.config.component));
        st.cap.remove(&key);
        if let Some(nick) = st.joined.remove(&key) {
            let from = format!("{}/junction", key.1);
            if !send(
                conn,
                outbound::leave(&from, &room, &nick, reason.as_deref()),
            )
            .await
            {
                answer_now(cx, &d, Ok(Vec::new()));
                return false;
            }
        }
        answer_now(cx, &d, Ok(Vec::new()));
        return true;
    }
    let rights = st.rights.get(&room).cloned().unwrap_or_default();
    let (nick, jid) = find_occupant(st, &room, t.user.user.as_str());
    let item = if ban {
        if !rights.admin() {
            answer_now(
                cx,
                &d,
                Err(format!(
                    "the gateway is not an admin or owner of {room}; it cannot ban there"
                )),
            );
            return true;
        }
        let Some(jid) = jid else {
            answer_now(
                cx,
                &d,
                Err(format!(
                    "the real JID of {} is unknown in {room}",
                    t.display_name
                )),
            );
            return true;
        };
        AdminItem::Ban { jid }
    } else {
        if !rights.moderator() {
            answer_now(
                cx,
                &d,
                Err(format!(
                    "the gateway is not a moderator in {room}; it cannot kick there"
                )),
            );
            return true;
        }
        let Some(nick) = nick else {
            answer_now(cx, &d, Err(format!("{} is not in {room}", t.display_name)));
            return true;
        };
        AdminItem::Kick { nick }
    };
    let id = st.new_id();
    let el = outbound::admin(&st.listener(), &room, &id, &item, reason.as_deref());
    let sender = (room, st.listener_bare());
    send_pending(st, conn, d, id, el, Wait::Iq, sender).await
}

/// Mentions written as the name people see in `room`: an XMPP user's current nick, or the
/// nick of the puppet that stands for a person of another network; others keep their name.
fn mention_nicks(
    st: &State,
    room: &str,
    body: &junction_core::RichText,
) -> junction_core::RichText {
    let mut body = body.clone();
    junction_core::format::mention::map_mentions(&mut body, |user, name| {
        let Some(u) = user.as_ref() else { return };
        let nick = if u.network == st.network {
            find_occupant(st, room, u.user.as_str()).0
        } else {
            let key = (room.to_string(), puppet_jid(u, &st.config.component));
            st.joined.get(&key).cloned()
        };
        if let Some(n) = nick {
            *name = n;
        }
    });
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::{BridgeName, Event, RoomRef, Sender, UserRef};

    fn delivery(outbox_id: u64, room: &str) -> Delivery {
        let sender = Sender {
            user: UserRef::new("matrix", "@a:m.test"),
            display_name: "a".into(),
            address: None,
        };
        Delivery {
            outbox_id,
            bridge: BridgeName::new("lobby"),
            target: RoomRef::new("xmpp", room),
            event: Event::new(
                RoomRef::new("matrix", "#l:m.test"),
                MessageId::new("$e"),
                sender,
                0,
                EventKind::Join,
            ),
            reply_to: Vec::new(),
            target_ids: Vec::new(),
        }
    }

    #[test]
    fn a_redelivery_reuses_the_message_id() {
        let a = delivery_message_id(&delivery(7, "l@c.test"));
        assert_eq!(a, delivery_message_id(&delivery(7, "l@c.test")));
        assert!(a.starts_with(OUR_ID_PREFIX));
        assert_ne!(a, delivery_message_id(&delivery(8, "l@c.test")));
        assert_ne!(a, delivery_message_id(&delivery(7, "m@c.test")));
    }
}
