//! Room messages as the listener reads them, live or from the archive: each becomes events
//! for the gateway (through the stateless readers of [`crate::inbound`]), is deduplicated by
//! the room's stanza-id, and the reflection of one of ours answers its delivery. The
//! stanza-ids the rooms gave what we sent are kept in the adapter's tables: `u2s` (our
//! message id `U` → the room's stanza-id `S`), `s2u` (`S` → `U`: XEP-0308 corrections name
//! `U`) and `s2p` (`S` → the bare JID of the occupant that sent it: retractions come from
//! the sender).

use std::time::{Duration, Instant};

use junction_core::clock::now_ms;
use junction_core::format::mention;
use junction_core::{AdapterContext, EventKind, Inbound, MessageId, RoomRef, UserRef};
use minidom::Element;
use tokio::sync::mpsc;

use crate::adapter::{State, LISTENER_NICK};
use crate::commands::Reply;
use crate::connection::Conn;
use crate::ids::is_ours;
use crate::inbound::{
    archived, diff_reactions, direct_message, parse_groupchat, room_stanza_id, sender_message_id,
    Parsed, RoomContext, OUR_ID_PREFIX,
};
use crate::pending::Wait;
use crate::rooms::{linked_room, linked_rooms, muc_item};

/// How many room stanza-ids are remembered for deduplication.
const DEDUPE_WINDOW: usize = 4096;
/// Most entries of each map of ids and reaction sets learnt from the rooms (least recently
/// used evicted first; the store stays the durable source of ids).
pub(crate) const MAX_REMEMBERED: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(10_000)
{
    Some(n) => n,
    None => panic!("a nonzero constant"),
};

/// Table: our message id `U` → the room's stanza-id `S`.
pub(crate) const U2S: &str = "u2s";
/// Table: the room's stanza-id `S` of our message → our id `U` (XEP-0308 corrections
/// name `U`).
pub(crate) const S2U: &str = "s2u";
/// Table: the room's stanza-id `S` of our message → the bare JID of the occupant that
/// sent it (retractions come from the sender).
pub(crate) const S2P: &str = "s2p";

impl State {
    /// A value of one of the adapter's tables (a store error is logged and reads as none).
    pub fn kv(&self, table: &str, key: &str) -> Option<String> {
        match self.store.get(table, key) {
            Ok(v) => v.and_then(|v| String::from_utf8(v).ok()),
            Err(e) => {
                tracing::warn!(error = %e, table, "xmpp: store lookup failed");
                None
            }
        }
    }

    /// Writes a value of one of the adapter's id tables, dated, so it goes with the message
    /// map's retention (a store error is logged).
    pub fn kv_put(&self, table: &str, key: &str, value: &str) {
        if let Err(e) = self.store.put_dated(table, key, value.as_bytes()) {
            tracing::warn!(error = %e, table, "xmpp: could not store an id");
        }
    }

    /// The room's stanza-id `S` for one of our ids: `U` → `S` where known
    /// (older deliveries answered `U`), else the id itself (already `S`).
    pub fn stanza_id_for(&self, id: &str) -> String {
        if let Some(s) = self.u_to_s.peek(id) {
            return s.clone();
        }
        self.kv(U2S, id).unwrap_or_else(|| id.to_string())
    }

    /// Our own message id `U` for a delivered id (`S`, or `U` itself).
    pub fn message_id_for(&self, id: &str) -> String {
        self.kv(S2U, id).unwrap_or_else(|| id.to_string())
    }

    /// Records that the room reflected `sender`'s message `U` with stanza-id `S`.
    pub fn learn_stanza_id(&mut self, u: &str, s: &str, sender: &str) {
        self.kv_put(U2S, u, s);
        self.kv_put(S2U, s, u);
        self.kv_put(S2P, s, sender);
        self.u_to_s.put(u.to_string(), s.to_string());
    }

    /// False when the room stanza-id `id` was already handled (recently).
    fn remember(&mut self, id: &str) -> bool {
        if !self.seen.insert(id.to_string()) {
            return false;
        }
        self.seen_order.push_back(id.to_string());
        if self.seen_order.len() > DEDUPE_WINDOW {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }
}

/// How a room message reached us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Via {
    /// Live, the listener's copy.
    Live,
    /// From the archive, missed while away: bridged.
    Archive,
    /// From the archive, only to learn where it ends: not bridged.
    Baseline,
}

/// A message stanza: a room's (live or archived), an error bounced for one of ours, or a
/// person's chat to the gateway.
pub(crate) async fn on_message(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    replies: &mpsc::UnboundedSender<Reply>,
    el: &Element,
) -> bool {
    let Some(from) = el.attr("from") else {
        return true;
    };
    let from_bare = from.split('/').next().unwrap_or(from).to_string();
    if el.has_child("result", "urn:xmpp:mam:2") {
        if let Some(a) = archived(el, &from_bare) {
            let Some(q) = st.mam.get_mut(&a.queryid) else {
                return true;
            };
            q.last = Some(a.stanza_id.clone());
            let via = if q.baseline {
                Via::Baseline
            } else {
                Via::Archive
            };
            on_room_message(st, cx, &a.message, via).await;
        }
        return true;
    }
    match el.attr("type") {
        Some("groupchat") => {
            if el.attr("to") == Some(st.listener().as_str()) {
                on_room_message(st, cx, el, Via::Live).await;
            }
            true
        }
        Some("error") => crate::pending::on_message_error(st, conn, cx, el).await,
        _ => {
            let rooms = linked_rooms(cx);
            if crate::private::received(st, cx, el, &rooms).await {
                return true;
            }
            if let Some(dm) = direct_message(el, &st.config.component, &st.listener_bare(), &rooms)
            {
                crate::commands::command(st, cx, replies, dm);
            }
            true
        }
    }
}

/// One groupchat message of a linked room, live or from its archive.
pub(crate) async fn on_room_message(st: &mut State, cx: &AdapterContext, el: &Element, via: Via) {
    let Some(from) = el.attr("from") else { return };
    let (room_jid, nick) = from.split_once('/').unwrap_or((from, ""));
    let Some(room) = linked_room(cx, room_jid) else {
        return;
    };
    let s = room_stanza_id(el, room_jid);
    let origin = sender_message_id(el);
    let is_subject =
        el.children().any(|c| c.name() == "subject") && !el.children().any(|c| c.name() == "body");
    if is_subject {
        crate::rooms::on_subject(st, cx, el, &room, room_jid, nick, via).await;
        return;
    }
    // From the room itself, only a moderation announcement is news.
    let announced = nick
        .is_empty()
        .then(|| crate::inbound::moderation(el))
        .flatten();
    if nick.is_empty() && announced.is_none() {
        return;
    }
    if let Some(s) = &s {
        if via != Via::Baseline && !st.remember(s) {
            return;
        }
    }
    let real_ours = muc_item(el)
        .and_then(|i| i.attr("jid"))
        .is_some_and(|j| is_ours(j, &st.config.component));
    let ours = st.is_our_nick(room_jid, nick)
        || real_ours
        || origin
            .as_deref()
            .is_some_and(|u| u.starts_with(OUR_ID_PREFIX));
    // The reflection of a message we sent: its delivery is done.
    if let Some(u) = &origin {
        if st
            .pending
            .get(u)
            .is_some_and(|p| p.wait == Wait::Reflection)
        {
            let who = st
                .pending
                .get(u)
                .map(|p| p.sender.1.clone())
                .unwrap_or_default();
            if let Some(s) = &s {
                st.learn_stanza_id(u, s, &who);
            } else {
                tracing::warn!(
                    room = room_jid,
                    "xmpp: the room stamps no stanza-id (no MAM?); using our own id"
                );
            }
            let id = s.clone().unwrap_or_else(|| u.clone());
            crate::pending::answer(st, cx, u, Ok(vec![MessageId::new(id)]));
        }
    }
    let may_advance = via == Via::Archive || !st.backfilling.contains(room_jid);
    if ours {
        // One of ours that nobody waits for (sent before a restart): remember
        // its ids so the redelivery of it is recognised.
        if let (Some(u), Some(s)) = (&origin, &s) {
            if u.starts_with(OUR_ID_PREFIX) && st.kv(U2S, u).is_none() {
                st.kv_put(U2S, u, s);
                st.kv_put(S2U, s, u);
                if let Some(j) = muc_item(el).and_then(|i| i.attr("jid")) {
                    st.kv_put(S2P, s, j.split('/').next().unwrap_or(j));
                }
            }
        }
        if let (Some(s), true) = (&s, via != Via::Baseline && may_advance) {
            st.advance_cursor(&room, s, None);
        }
        return;
    }
    if via == Via::Baseline {
        return;
    }
    if let (Some(u), Some(s)) = (&origin, &s) {
        st.msgid_to_s.put(u.clone(), s.clone());
    }
    let our_nicks: Vec<String> = st
        .joined
        .iter()
        .filter(|((r, _), _)| r.eq_ignore_ascii_case(room_jid))
        .map(|(_, n)| n.clone())
        .chain(std::iter::once(LISTENER_NICK.to_string()))
        .collect();
    let rcx = RoomContext {
        room: RoomRef::new(cx.network.as_str(), room.as_str()),
        room_jid: room_jid.to_string(),
        component: st.config.component.clone(),
        our_nicks,
    };
    let parsed = parse_groupchat(el, &rcx, &|id| st.msgid_to_s.peek(id).cloned());
    let mut last_ack = None;
    match parsed {
        Parsed::Event(mut e) => {
            if is_ours(e.sender.user.user.as_str(), &st.config.component) {
                return;
            }
            // Who acted: the occupant who sent it, or the moderator a room's announcement
            // names (the room vouches for their rights).
            let actor = announced
                .as_ref()
                .and_then(|m| m.by.as_deref())
                .unwrap_or(from);
            let vouched = announced.is_some() && e.by_moderator;
            if let Some(occ) = st.occupants.get(actor).and_then(|o| o.occupant_id.clone()) {
                if !e.sender.user.user.as_str().starts_with("occupant:") {
                    e.sender.user = UserRef::new(cx.network.as_str(), format!("occupant:{occ}"));
                    e = junction_core::Event::new(e.origin, e.remote_id, e.sender, e.ts_ms, e.kind);
                }
            }
            e.by_moderator = vouched || st.is_moderator(from);
            if let EventKind::Message(m) = &mut e.kind {
                let body = std::mem::take(&mut m.body);
                m.body = mention::leading_address(body, |n| resolve_nick(st, room_jid, n));
            }
            st.address(&mut e.sender);
            let (inb, ack) = Inbound::with_ack(e);
            let _ = cx.inbound.send(inb).await;
            last_ack = Some(ack);
        }
        Parsed::Reactions {
            remote_id,
            mut sender,
            target,
            keys,
            dropped,
        } => {
            st.address(&mut sender);
            // Counted once, with the first event the stanza becomes.
            let mut capped = dropped as u64;
            let k = (
                room_jid.to_string(),
                sender.user.user.as_str().to_string(),
                target.as_str().to_string(),
            );
            let prev = st.reactions.get(&k).cloned().unwrap_or_default();
            let (added, removed) = diff_reactions(&prev, &keys);
            st.reactions.put(k, keys);
            for (n, (key, add)) in added
                .into_iter()
                .map(|k| (k, true))
                .chain(removed.into_iter().map(|k| (k, false)))
                .enumerate()
            {
                let kind = if add {
                    EventKind::React {
                        target: target.clone(),
                        key,
                    }
                } else {
                    EventKind::Unreact {
                        target: target.clone(),
                        key,
                    }
                };
                let rid = MessageId::new(format!("{}#{n}", remote_id.as_str()));
                let e = junction_core::Event::new(
                    rcx.room.clone(),
                    rid,
                    sender.clone(),
                    now_ms(),
                    kind,
                );
                let (mut inb, ack) = Inbound::with_ack(e);
                inb.capped_reactions = std::mem::take(&mut capped);
                let _ = cx.inbound.send(inb).await;
                last_ack = Some(ack);
            }
        }
        Parsed::Ignored(why) => tracing::debug!(why, "xmpp: stanza not bridged"),
        Parsed::Refused(why) => {
            st.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if st
                .refusal_warned
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                st.refusal_warned = Some(Instant::now());
                tracing::warn!(
                    room = room_jid,
                    occupant = from,
                    why,
                    "xmpp: an occupant's stanza is refused and not bridged (further refusals within a minute are counted in /metrics and logged at debug level)"
                );
            } else {
                tracing::debug!(
                    room = room_jid,
                    occupant = from,
                    why,
                    "xmpp: an occupant's stanza is refused and not bridged"
                );
            }
        }
    }
    if let (Some(s), true) = (&s, may_advance) {
        st.advance_cursor(&room, s, last_ack);
    }
}

/// Who `nick` in `room` is, for a `nick:` address: one of our puppets' owners
/// or an occupant.
fn resolve_nick(st: &State, room: &str, nick: &str) -> Option<UserRef> {
    if let Some(((_, puppet), _)) = st
        .joined
        .iter()
        .find(|((r, _), n)| r.eq_ignore_ascii_case(room) && n.as_str() == nick)
    {
        return st.store.puppet_owner(puppet).ok().flatten();
    }
    let occ = format!("{room}/{nick}");
    let o = st.occupants.get(&occ)?;
    let user = o
        .occupant_id
        .as_ref()
        .map_or_else(|| occ.clone(), |id| format!("occupant:{id}"));
    Some(UserRef::new(st.network.as_str(), user))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::adapter::XmppAdapter;
    use crate::config::XmppConfig;
    use junction_core::NetworkId;

    /// A configuration for state that never connects.
    pub(crate) fn config() -> XmppConfig {
        XmppConfig {
            component: "c.test".into(),
            server: "127.0.0.1:1".into(),
            secret: junction_core::Secret::new("s"),
            origin_marks: true,
        }
    }

    /// Fresh state over an empty store.
    pub(crate) fn state() -> State {
        let network = NetworkId::new("xmpp");
        let store = junction_store::scoped(
            std::sync::Arc::new(junction_store::MemStore::new()),
            network.clone(),
        );
        State::new(XmppAdapter::new(config()), store, network)
    }

    #[test]
    fn maps_keyed_by_room_input_stay_bounded() {
        let mut st = state();
        let n = MAX_REMEMBERED.get() * 2;
        for i in 0..n {
            st.learn_stanza_id(&format!("jx-{i}"), &format!("S{i}"), "p@c.test");
            st.msgid_to_s.put(format!("u{i}"), format!("S{i}"));
            let k = ("r@m".to_string(), format!("o{i}"), format!("S{i}"));
            st.reactions.put(k.clone(), vec!["👍".into()]);
            st.our_reactions.put(k, vec!["👍".into()]);
            st.real_jids
                .put(format!("occupant:{i}"), format!("p{i}@x.test"));
        }
        for len in [
            st.u_to_s.len(),
            st.msgid_to_s.len(),
            st.reactions.len(),
            st.our_reactions.len(),
            st.real_jids.len(),
        ] {
            assert_eq!(len, MAX_REMEMBERED.get());
        }
        // The newest stay; an evicted id still resolves through the store.
        assert_eq!(
            st.msgid_to_s.peek(&format!("u{}", n - 1)),
            Some(&format!("S{}", n - 1))
        );
        assert!(st.u_to_s.peek("jx-0").is_none());
        assert_eq!(st.stanza_id_for("jx-0"), "S0");
    }
}
