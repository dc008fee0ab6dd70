//! The rooms as the listener sees them: its joins and standing (role, affiliation, refused
//! joins, `/health`), the occupants with their rights and real JIDs, the moderation form
//! each room offers, self-pings, presence (joins, leaves, nick changes, kicks, bans) and
//! subject changes becoming events.

use std::time::Instant;

use junction_core::clock::now_ms;
use junction_core::{
    AdapterContext, EventKind, Inbound, MessageId, NetworkStatus, RoomId, RoomRef, Sender, UserRef,
};
use minidom::Element;

use crate::adapter::{State, LISTENER_NICK};
use crate::connection::{send, Conn};
use crate::ids::is_ours;
use crate::inbound::{error_condition, room_stanza_id};
use crate::messages::Via;
use crate::outbound;
use crate::pending::Wait;

/// An occupant as the listener sees it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Occupant {
    /// The real bare JID, where the room shows it.
    pub jid: Option<String>,
    /// XEP-0421 occupant id.
    pub occupant_id: Option<String>,
    /// Role and affiliation, as its last presence showed them: a moderator's retraction of
    /// someone else's message may cross, anyone else's may not.
    pub rights: Rights,
}

/// An occupant's standing in a room (the listener's too).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Rights {
    affiliation: String,
    role: String,
}

impl Rights {
    /// The rights a MUC presence's `<item/>` gives (none and participant without one).
    fn of(item: Option<&Element>) -> Self {
        Rights {
            affiliation: item
                .and_then(|i| i.attr("affiliation"))
                .unwrap_or("none")
                .to_string(),
            role: item
                .and_then(|i| i.attr("role"))
                .unwrap_or("participant")
                .to_string(),
        }
    }
    /// Role moderator, or affiliation admin or owner.
    pub fn moderator(&self) -> bool {
        self.role == "moderator" || matches!(self.affiliation.as_str(), "owner" | "admin")
    }
    /// Affiliation admin or owner.
    pub fn admin(&self) -> bool {
        matches!(self.affiliation.as_str(), "owner" | "admin")
    }
}

impl State {
    /// True when the occupant `room/nick` is a moderator there (role moderator, or
    /// affiliation admin or owner), as its last presence showed.
    pub fn is_moderator(&self, occupant: &str) -> bool {
        self.occupants
            .get(occupant)
            .is_some_and(|o| o.rights.moderator())
    }

    /// Puts on `sender`, one of this network's occupants as events name them, the real bare
    /// JID the room showed for them, if it did: gateway bans by bare JID match it.
    pub fn address(&self, sender: &mut Sender) {
        if sender.address.is_some() || sender.user.network != self.network {
            return;
        }
        let user = sender.user.user.as_str();
        sender.address = self
            .real_jids
            .peek(user)
            .cloned()
            .or_else(|| self.occupants.get(user).and_then(|o| o.jid.clone()));
    }
}

/// Sets the status: Connected once the listener is in every linked room,
/// Degraded while some room refused it; unchanged while joins are under way.
pub(crate) fn update_status(st: &State, cx: &AdapterContext) {
    if st.failed.is_empty() {
        let all_in = cx.rooms.borrow().iter().all(|r| {
            st.listening
                .iter()
                .any(|l| l.eq_ignore_ascii_case(r.as_str()))
        });
        if all_in {
            cx.status.send_replace(NetworkStatus::Connected);
        }
    } else {
        let mut rooms: Vec<String> = st
            .failed
            .iter()
            .map(|(r, why)| format!("{r}: {why}"))
            .collect();
        rooms.sort();
        cx.status.send_replace(NetworkStatus::Degraded(format!(
            "rooms not joined: {}",
            rooms.join(", ")
        )));
    }
}

/// The listener joins every linked room and (after a reconnect) every puppet
/// its rooms again; each room's archive is then read from its cursor, and
/// deliveries wait until that is done.
pub(crate) async fn join_all(
    st: &mut State,
    conn: &mut Conn,
    cx: &AdapterContext,
    fresh: bool,
) -> bool {
    let rooms = cx.rooms.borrow().clone();
    let listener = st.listener();
    for room in &rooms {
        let id = st.new_id();
        if !send(
            conn,
            outbound::join(&listener, room.as_str(), LISTENER_NICK, &id),
        )
        .await
        {
            return false;
        }
        let known = st.listening.contains(room.as_str())
            || st.backfilling.contains(room.as_str())
            || st.mam.values().any(|q| q.room == *room);
        if (fresh || !known) && !crate::backfill::start_backfill(st, conn, room).await {
            return false;
        }
        // Which form of message moderation the room offers: asked once per join or link.
        if !st.moderation.contains_key(room.as_str())
            && !st.disco.values().any(|r| r == room.as_str())
        {
            let id = st.new_id();
            st.disco.insert(id.clone(), room.as_str().to_string());
            if !send(conn, outbound::disco_info(&listener, room.as_str(), &id)).await {
                return false;
            }
        }
    }
    if fresh {
        let puppets = joined_puppets(st);
        for ((room, puppet), nick) in puppets {
            let id = st.new_id();
            if !send(
                conn,
                outbound::join(&format!("{puppet}/junction"), &room, &nick, &id),
            )
            .await
            {
                return false;
            }
        }
        st.resuming = Some(Instant::now());
    }
    true
}

/// Every puppet in a room, as ((room, puppet bare JID), nick): a copy, so the state may
/// change while they are gone through.
fn joined_puppets(st: &State) -> Vec<((String, String), String)> {
    st.joined
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// XEP-0410: the listener and every puppet ping their own occupant JID.
pub(crate) async fn self_ping_all(st: &mut State, conn: &mut Conn) -> bool {
    let listener = st.listener();
    let rooms: Vec<String> = st.listening.iter().cloned().collect();
    for room in rooms {
        let id = st.new_id();
        st.pings.insert(id.clone(), (room.clone(), None));
        let to = format!("{room}/{LISTENER_NICK}");
        if !send(conn, outbound::ping(&listener, &to, &id)).await {
            return false;
        }
    }
    let puppets = joined_puppets(st);
    for ((room, puppet), nick) in puppets {
        let id = st.new_id();
        st.pings
            .insert(id.clone(), (room.clone(), Some(puppet.clone())));
        let el = outbound::ping(
            &format!("{puppet}/junction"),
            &format!("{room}/{nick}"),
            &id,
        );
        if !send(conn, el).await {
            return false;
        }
    }
    true
}

/// Finds an occupant of `room` from a user id as this adapter writes them
/// (`occupant:<id>`, `room/nick`) or a bare JID: its nick and real JID.
pub(crate) fn find_occupant(
    st: &State,
    room: &str,
    user: &str,
) -> (Option<String>, Option<String>) {
    let in_room = |k: &str| {
        k.split_once('/')
            .is_some_and(|(r, _)| r.eq_ignore_ascii_case(room))
    };
    let nick_of = |k: &str| k.split_once('/').map(|(_, n)| n.to_string());
    if let Some(oid) = user.strip_prefix("occupant:") {
        return st
            .occupants
            .iter()
            .find(|(k, o)| in_room(k) && o.occupant_id.as_deref() == Some(oid))
            .map_or((None, None), |(k, o)| (nick_of(k), o.jid.clone()));
    }
    if let Some((r, nick)) = user.split_once('/') {
        if r.eq_ignore_ascii_case(room) {
            let jid = st.occupants.get(user).and_then(|o| o.jid.clone());
            return (Some(nick.to_string()), jid);
        }
    }
    let bare = user.to_lowercase();
    let nick = st
        .occupants
        .iter()
        .find(|(k, o)| in_room(k) && o.jid.as_deref() == Some(bare.as_str()))
        .and_then(|(k, _)| nick_of(k));
    (nick, user.contains('@').then_some(bare))
}

/// True for the listener's own presence (110) in a room it just created (201).
pub(crate) fn is_new_locked_room(el: &Element) -> bool {
    el.attr("type").is_none() && has_status(el, "110") && has_status(el, "201")
}

pub(crate) fn has_status(el: &Element, code: &str) -> bool {
    el.children()
        .filter(|x| x.name() == "x")
        .flat_map(|x| x.children())
        .any(|c| c.name() == "status" && c.attr("code") == Some(code))
}

/// The `<item>` of a MUC presence.
pub(crate) fn muc_item(el: &Element) -> Option<&Element> {
    el.children()
        .filter(|x| x.name() == "x")
        .flat_map(|x| x.children())
        .find(|c| c.name() == "item")
}

/// The linked room a bare room JID is, as written in the link.
pub(crate) fn linked_room(cx: &AdapterContext, room_jid: &str) -> Option<RoomId> {
    cx.rooms
        .borrow()
        .iter()
        .find(|r| r.as_str().eq_ignore_ascii_case(room_jid))
        .cloned()
}

/// Who an occupant is, as events name them: occupant-id where the room gives
/// one, else the occupant JID.
pub(crate) fn occupant_sender(st: &State, el: &Element, from: &str, nick: &str) -> Sender {
    let user = el
        .get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .and_then(|c| c.attr("id"))
        .map(|id| format!("occupant:{id}"))
        .or_else(|| {
            st.occupants
                .get(from)
                .and_then(|o| o.occupant_id.as_ref())
                .map(|id| format!("occupant:{id}"))
        })
        .unwrap_or_else(|| from.to_string());
    Sender {
        user: UserRef::new(st.network.as_str(), user),
        display_name: nick.to_string(),
        address: None,
    }
}

/// A subject message: the one the room sends on join is remembered, a later
/// change by a person becomes a Topic event, and one our puppet set confirms
/// its delivery.
pub(crate) async fn on_subject(
    st: &mut State,
    cx: &AdapterContext,
    el: &Element,
    room: &RoomId,
    room_jid: &str,
    nick: &str,
    via: Via,
) {
    let text = el
        .children()
        .find(|c| c.name() == "subject")
        .map(Element::text)
        .unwrap_or_default();
    let ours = !nick.is_empty() && st.is_our_nick(room_jid, nick);
    if ours {
        let key = st
            .pending
            .iter()
            .find(|(_, p)| {
                p.room.eq_ignore_ascii_case(room_jid)
                    && p.wait
                        == (Wait::Subject {
                            nick: nick.to_string(),
                        })
            })
            .map(|(k, _)| k.clone());
        if let Some(k) = key {
            crate::pending::answer(st, cx, &k, Ok(Vec::new()));
        }
    }
    if via != Via::Live {
        return;
    }
    let prev = st.subjects.insert(room_jid.to_string(), text.clone());
    if ours
        || nick.is_empty()
        || prev.is_none()
        || prev.as_deref() == Some(text.as_str())
        || !st.listening.contains(room_jid)
    {
        return;
    }
    let from = format!("{room_jid}/{nick}");
    let mut sender = occupant_sender(st, el, &from, nick);
    st.address(&mut sender);
    let id = room_stanza_id(el, room_jid).unwrap_or_else(|| st.new_id());
    let e = junction_core::Event::new(
        RoomRef::new(cx.network.as_str(), room.as_str()),
        MessageId::new(id),
        sender,
        now_ms(),
        EventKind::Topic { text },
    )
    .moderated(st.is_moderator(&from));
    let _ = cx.inbound.send(Inbound::new(e)).await;
}

/// Room presence as the listener sees it → join, leave, nick change, kick,
/// ban; and the listener's own standing (joined, rights, refused).
pub(crate) async fn on_room_presence(st: &mut State, cx: &AdapterContext, el: &Element) {
    let Some(from) = el.attr("from") else { return };
    let Some((room_jid, nick)) = from.split_once('/') else {
        return;
    };
    let Some(room) = linked_room(cx, room_jid) else {
        return;
    };
    let ty = el.attr("type");
    if ty == Some("error") {
        let cond = error_condition(el).unwrap_or_else(|| "error".into());
        tracing::warn!(room = room_jid, condition = %cond, "xmpp: the listener could not join a room");
        st.failed.insert(room_jid.to_string(), cond);
        update_status(st, cx);
        return;
    }
    let item = muc_item(el);
    if has_status(el, "110") {
        if ty == Some("unavailable") {
            tracing::warn!(
                room = room_jid,
                "xmpp: the listener was removed from a room"
            );
            st.listening.remove(room_jid);
            st.failed
                .insert(room_jid.to_string(), "removed from the room".into());
        } else {
            if st.listening.insert(room_jid.to_string()) {
                tracing::info!(room = room_jid, "xmpp: the listener joined a room");
            }
            st.rights.insert(room_jid.to_string(), Rights::of(item));
            st.failed.remove(room_jid);
        }
        update_status(st, cx);
        return;
    }
    let real = item
        .and_then(|i| i.attr("jid"))
        .map(|j| j.split('/').next().unwrap_or(j).to_lowercase());
    let occupant_id = el
        .get_child("occupant-id", "urn:xmpp:occupant-id:0")
        .and_then(|c| c.attr("id"))
        .map(str::to_string);
    let ours = st.is_our_nick(room_jid, nick)
        || real
            .as_deref()
            .is_some_and(|j| is_ours(j, &st.config.component));
    let rights = Rights::of(item);
    let was_present = if ty == Some("unavailable") {
        st.occupants.remove(from).is_some()
    } else {
        st.occupants
            .insert(
                from.to_string(),
                Occupant {
                    jid: real.clone(),
                    occupant_id: occupant_id.clone(),
                    rights: rights.clone(),
                },
            )
            .is_some()
    };
    let mut sender = occupant_sender(st, el, from, nick);
    if let (Some(j), false) = (&real, ours) {
        // Who the occupant really is, for gateway bans by bare JID (events name occupants
        // by occupant-id or room/nick). Known where the room shows real JIDs to the listener;
        // noted for occupants already there when the listener joins, too.
        st.real_jids
            .put(sender.user.user.as_str().to_string(), j.clone());
    }
    st.address(&mut sender);
    // One of our puppets removed by a moderator is still news for the other networks
    // (the person it stands for was kicked); its other presence is our own echo.
    let removed = ty == Some("unavailable") && (has_status(el, "307") || has_status(el, "301"));
    if (ours && !removed) || !st.listening.contains(room_jid) {
        return;
    }
    let reason = item
        .and_then(|i| i.children().find(|c| c.name() == "reason"))
        .map(Element::text)
        .filter(|r| !r.is_empty());
    let kind = if ty == Some("unavailable") {
        if has_status(el, "303") {
            let Some(new) = item.and_then(|i| i.attr("nick")) else {
                return;
            };
            st.occupants.insert(
                format!("{room_jid}/{new}"),
                Occupant {
                    jid: real,
                    occupant_id,
                    rights,
                },
            );
            EventKind::NickChange {
                new_name: new.to_string(),
            }
        } else if has_status(el, "307") || has_status(el, "301") {
            let actor = item
                .and_then(|i| i.children().find(|c| c.name() == "actor"))
                .and_then(|a| a.attr("nick"))
                .unwrap_or(room_jid)
                .to_string();
            if st.is_our_nick(room_jid, &actor) {
                // The gateway's own enforcement: already known where it came from.
                return;
            }
            let mut kicker = Sender {
                user: UserRef::new(cx.network.as_str(), format!("{room_jid}/{actor}")),
                display_name: actor,
                address: None,
            };
            st.address(&mut kicker);
            let kind = if has_status(el, "301") {
                EventKind::Ban {
                    target: sender,
                    reason,
                }
            } else {
                EventKind::Kick {
                    target: sender,
                    reason,
                }
            };
            let id = MessageId::new(st.new_id());
            let room = RoomRef::new(cx.network.as_str(), room.as_str());
            let e = junction_core::Event::new(room, id, kicker, now_ms(), kind);
            let _ = cx.inbound.send(Inbound::new(e)).await;
            return;
        } else {
            EventKind::Leave {
                reason: el
                    .children()
                    .find(|c| c.name() == "status")
                    .map(Element::text)
                    .filter(|r| !r.is_empty()),
                quit: false,
            }
        }
    } else if was_present {
        return;
    } else {
        EventKind::Join
    };
    let id = MessageId::new(st.new_id());
    let room = RoomRef::new(cx.network.as_str(), room.as_str());
    let e = junction_core::Event::new(room, id, sender, now_ms(), kind);
    let _ = cx.inbound.send(Inbound::new(e)).await;
}

/// The linked rooms' JIDs, as the command and direct-message checks take them.
pub(crate) fn linked_rooms(cx: &AdapterContext) -> Vec<String> {
    cx.rooms
        .borrow()
        .iter()
        .map(|r| r.as_str().to_string())
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::messages::tests::state;
    use crate::messages::{on_room_message, Via};
    use junction_core::{Event, Inbound};
    use tokio::sync::{mpsc, watch};
    use tokio_util::sync::CancellationToken;

    #[test]
    fn rights_decide_kick_and_ban() {
        let r = |a: &str, ro: &str| Rights {
            affiliation: a.into(),
            role: ro.into(),
        };
        assert!(r("owner", "moderator").admin());
        assert!(r("none", "moderator").moderator());
        assert!(!r("none", "moderator").admin());
        assert!(!r("member", "participant").moderator());
    }

    fn presence(nick: &str, item: &str, extra: &str) -> Element {
        format!(
            "<presence xmlns='jabber:component:accept' from='room@muc.test/{nick}' \
             to='junction@c.test/junction'><x xmlns='http://jabber.org/protocol/muc#user'>\
             {item}</x>{extra}</presence>"
        )
        .parse()
        .unwrap()
    }

    fn groupchat(nick: &str, sid: &str, extra: &str) -> Element {
        format!(
            "<message xmlns='jabber:component:accept' type='groupchat' \
             from='room@muc.test/{nick}' to='junction@c.test/junction' id='{sid}-u'>\
             <body>hello</body><stanza-id xmlns='urn:xmpp:sid:0' id='{sid}' by='room@muc.test'/>\
             {extra}</message>"
        )
        .parse()
        .unwrap()
    }

    fn next(rx: &mut mpsc::Receiver<Inbound>) -> Event {
        rx.try_recv().unwrap().event
    }

    #[tokio::test]
    async fn an_occupants_real_jid_rides_on_their_events() {
        let mut st = state();
        let (in_tx, mut in_rx) = mpsc::channel(16);
        let (_d_tx, d_rx) = mpsc::channel(1);
        let (done_tx, _done_rx) = mpsc::unbounded_channel();
        let (_rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new("room@muc.test")]);
        let cx = AdapterContext::standalone(
            st.store.clone(),
            in_tx,
            d_rx,
            done_tx,
            rooms_rx,
            CancellationToken::new(),
        );
        let me = "<item affiliation='owner' role='moderator'/><status code='110'/>";
        on_room_presence(&mut st, &cx, &presence("junction", me, "")).await;
        let id = "<occupant-id xmlns='urn:xmpp:occupant-id:0' id='b0b'/>";
        let bob = "<item affiliation='none' role='participant' jid='Bob@X.test/phone'/>";
        on_room_presence(&mut st, &cx, &presence("bob", bob, id)).await;
        let join = next(&mut in_rx);
        assert!(matches!(join.kind, EventKind::Join));
        assert_eq!(join.sender.user.user.as_str(), "occupant:b0b");
        assert_eq!(join.sender.address.as_deref(), Some("bob@x.test"));

        on_room_message(&mut st, &cx, &groupchat("bob", "S1", id), Via::Live).await;
        let said = next(&mut in_rx);
        assert!(matches!(said.kind, EventKind::Message(_)));
        assert_eq!(said.sender.address.as_deref(), Some("bob@x.test"));

        // The room shows no real JID for carol: her events carry none.
        let carol = "<item affiliation='none' role='participant'/>";
        on_room_presence(&mut st, &cx, &presence("carol", carol, "")).await;
        assert_eq!(next(&mut in_rx).sender.address, None);
        on_room_message(&mut st, &cx, &groupchat("carol", "S2", ""), Via::Live).await;
        assert_eq!(next(&mut in_rx).sender.address, None);

        // Gone from the room, bob is still known for what the archive holds of him.
        let gone = format!(
            "<presence xmlns='jabber:component:accept' type='unavailable' \
             from='room@muc.test/bob' to='junction@c.test/junction'>\
             <x xmlns='http://jabber.org/protocol/muc#user'>{bob}</x>{id}</presence>"
        );
        on_room_presence(&mut st, &cx, &gone.parse().unwrap()).await;
        let left = next(&mut in_rx);
        assert!(matches!(left.kind, EventKind::Leave { .. }));
        assert_eq!(left.sender.address.as_deref(), Some("bob@x.test"));
        on_room_message(&mut st, &cx, &groupchat("bob", "S3", id), Via::Archive).await;
        assert_eq!(
            next(&mut in_rx).sender.address.as_deref(),
            Some("bob@x.test")
        );
    }
}
