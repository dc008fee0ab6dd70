//! Deliveries sent and waiting for the room's confirmation: a message is answered when the
//! room reflects it (or bounces it), an IQ when it is answered. What the room does not
//! confirm in time is sent again, at most [`MAX_ATTEMPTS`] times; after a reconnect what
//! was waiting goes out again in outbox order.

use std::time::{Duration, Instant};

use junction_core::{AdapterContext, Delivery, EventKind, MessageId};
use minidom::Element;

use crate::adapter::{State, LISTENER_NICK};
use crate::backfill::BACKFILL_WITHIN;
use crate::connection::{send, Conn};
use crate::inbound::error_condition;
use crate::outbound;
use crate::puppets::origin_tag;
use crate::rooms::Rights;

/// How long a sent message may wait for the room's reflection (or an IQ for
/// its answer) before it is sent again.
const CONFIRM_WITHIN: Duration = Duration::from_secs(30);
/// Sends of one delivery before it is given up.
const MAX_ATTEMPTS: u32 = 3;

/// What a sent stanza waits for before its delivery is answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Wait {
    /// The room's reflection of the message, by origin-id.
    Reflection,
    /// The IQ answer (result or error).
    Iq,
    /// The room's subject message from this nick.
    Subject { nick: String },
}

/// A delivery sent and not yet confirmed.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub delivery: Delivery,
    pub stanza: Element,
    pub wait: Wait,
    pub room: String,
    /// (room, occupant bare JID) that must be in the room to send it.
    pub sender: (String, String),
    pub sent: Instant,
    pub attempts: u32,
}

/// Periodic work: resume deliveries when the backfill is over (or took too
/// long), and resend what the room has not confirmed in time.
pub(crate) async fn housekeeping(st: &mut State, conn: &mut Conn, cx: &AdapterContext) -> bool {
    if let Some(since) = st.resuming {
        if st.backfilling.is_empty() || since.elapsed() > BACKFILL_WITHIN {
            if !st.backfilling.is_empty() {
                tracing::warn!(rooms = ?st.backfilling, "xmpp: archive backfill is slow; sending queued messages now");
                st.backfilling.clear();
            }
            st.resuming = None;
            if !resume(st, conn, cx).await {
                return false;
            }
        }
        return true;
    }
    if !crate::puppets::leave_idle(st, conn).await {
        return false;
    }
    let late: Vec<String> = st
        .pending
        .iter()
        .filter(|(_, p)| p.sent.elapsed() > CONFIRM_WITHIN)
        .map(|(k, _)| k.clone())
        .collect();
    for key in late {
        let Some(p) = st.pending.get(&key).cloned() else {
            continue;
        };
        if p.attempts >= MAX_ATTEMPTS {
            tracing::warn!(room = %p.room, "xmpp: the room never confirmed a message; giving up");
            answer(
                st,
                cx,
                &key,
                Err("the room did not confirm the message".into()),
            );
            continue;
        }
        tracing::info!(room = %p.room, "xmpp: no confirmation from the room; sending again");
        if !resend(st, conn, &key).await {
            return false;
        }
    }
    true
}

/// After a (re)connect: the messages still unconfirmed go out again, and
/// deliveries that never went out are rendered, in outbox order.
async fn resume(st: &mut State, conn: &mut Conn, cx: &AdapterContext) -> bool {
    let mut order: Vec<(u64, Option<String>, Option<Delivery>)> = st
        .pending
        .iter()
        .map(|(k, p)| (p.delivery.outbox_id, Some(k.clone()), None))
        .collect();
    order.extend(
        std::mem::take(&mut st.redo)
            .into_iter()
            .map(|d| (d.outbox_id, None, Some(d))),
    );
    order.sort_by_key(|(o, _, _)| *o);
    let mut rest = order.into_iter();
    while let Some((_, key, d)) = rest.next() {
        let ok = match (key, d) {
            (Some(k), _) => resend(st, conn, &k).await,
            (None, Some(d)) => crate::deliver::deliver(st, conn, cx, d).await,
            _ => true,
        };
        if !ok {
            // Keep what did not go out for the next connection.
            st.redo.extend(rest.filter_map(|(_, _, d)| d));
            return false;
        }
    }
    true
}

/// Sends a pending stanza again, joining its sender first where needed.
pub(crate) async fn resend(st: &mut State, conn: &mut Conn, key: &str) -> bool {
    let Some(p) = st.pending.get_mut(key) else {
        return true;
    };
    p.attempts += 1;
    p.sent = Instant::now();
    let p = p.clone();
    let (room, who) = p.sender.clone();
    if who != st.listener_bare() && !st.joined.contains_key(&p.sender) {
        if let Some((wanted, attempt)) = st.wanted.get(&p.sender).cloned() {
            let nick = outbound::puppet_nick(
                &wanted,
                origin_tag(st, &who),
                attempt,
                st.config.origin_marks,
            );
            let id = st.new_id();
            if !send(
                conn,
                outbound::join(&format!("{who}/junction"), &room, &nick, &id),
            )
            .await
            {
                return false;
            }
            st.joined.insert(p.sender.clone(), nick);
        }
    }
    send(conn, p.stanza).await
}

/// Answers a pending delivery.
pub(crate) fn answer(
    st: &mut State,
    cx: &AdapterContext,
    key: &str,
    outcome: Result<Vec<MessageId>, String>,
) {
    if let Some(p) = st.pending.remove(key) {
        let _ = cx.delivered.send(p.delivery.answer(outcome));
    }
}

/// Answers a delivery at once.
pub(crate) fn answer_now(
    cx: &AdapterContext,
    d: &Delivery,
    outcome: Result<Vec<MessageId>, String>,
) {
    let _ = cx.delivered.send(d.answer(outcome));
}

/// Sends a stanza whose delivery is answered later; kept for a resend if
/// the connection drops first.
pub(crate) async fn send_pending(
    st: &mut State,
    conn: &mut Conn,
    d: Delivery,
    id: String,
    el: Element,
    wait: Wait,
    sender: (String, String),
) -> bool {
    let room = d.target.room.as_str().to_string();
    st.pending.insert(
        id,
        Pending {
            delivery: d,
            stanza: el.clone(),
            wait,
            room,
            sender,
            sent: Instant::now(),
            attempts: 1,
        },
    );
    send(conn, el).await
}

/// A line from the listener (gateway notices).
pub(crate) async fn send_notice(st: &mut State, conn: &mut Conn, d: Delivery, text: &str) -> bool {
    let room = d.target.room.as_str().to_string();
    let id = st.new_id();
    let el = outbound::message(&st.listener(), &room, &id, text, false);
    let sender = (room, st.listener_bare());
    send_pending(st, conn, d, id, el, Wait::Reflection, sender).await
}

/// An error bounced for something we sent. A message from an occupant that
/// is not in the room (not joined yet, nick conflict, removed) is sent again
/// after a join; a topic the puppet may not set becomes a notice line;
/// anything else gives the delivery up with the reason.
pub(crate) async fn on_message_error(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    el: &Element,
) -> bool {
    let Some(id) = el.attr("id") else { return true };
    let Some(p) = st.pending.get(id).cloned() else {
        tracing::debug!(error = ?error_condition(el), "xmpp: an error for a message not waiting");
        return true;
    };
    let cond = error_condition(el).unwrap_or_else(|| "error".into());
    tracing::info!(room = %p.room, condition = %cond, "xmpp: the room bounced a message");
    if let Wait::Subject { .. } = p.wait {
        if let EventKind::Topic { text } = &p.delivery.event.kind {
            st.pending.remove(id);
            let listener_may = p.sender.1 != st.listener_bare()
                && p.delivery.event.by_moderator
                && st.rights.get(&p.room).is_some_and(Rights::moderator);
            if listener_may {
                // The puppet may not change the subject, the listener may (a moderator), and
                // does so for a moderator of the origin room only.
                let sid = st.new_id();
                let el = outbound::subject(&st.listener(), &p.room, &sid, text);
                let sender = (p.room.clone(), st.listener_bare());
                let wait = Wait::Subject {
                    nick: LISTENER_NICK.to_string(),
                };
                return send_pending(st, conn, p.delivery.clone(), sid, el, wait, sender).await;
            }
            let line = format!(
                "{} changed the topic to: {text}",
                p.delivery.event.sender.display_name
            );
            return send_notice(st, conn, p.delivery.clone(), &line).await;
        }
    }
    if cond == "not-acceptable" && p.attempts < MAX_ATTEMPTS {
        if p.sender.1 == st.listener_bare() {
            let jid = st.new_id();
            if !send(
                conn,
                outbound::join(&st.listener(), &p.room, LISTENER_NICK, &jid),
            )
            .await
            {
                return false;
            }
        }
        return resend(st, conn, id).await;
    }
    answer(
        st,
        cx,
        id,
        Err(format!("{} refused the message: {cond}", p.room)),
    );
    true
}
