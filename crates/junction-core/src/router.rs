//! The router: which rooms are linked, and what one inbound event becomes in every other room
//! of its link. Pure: the message map is reached through [`RefResolver`], so this runs the same
//! against the sled store, the in-memory store, or a test table.

use crate::event::Event;
use crate::ids::{BridgeName, EventId, MessageId, NetworkId, RoomId, RoomRef, UserRef};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// A bridge: two or more rooms, on any networks, that see each other's events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    /// Its name (unique).
    pub bridge: BridgeName,
    /// Its rooms (no room in two links).
    pub rooms: Vec<RoomRef>,
}

/// What the router needs from the message map and the puppet table.
pub trait RefResolver {
    /// The gateway event that produced (or originated as) `remote` in `room`, if known.
    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Option<EventId>;
    /// The ids `event` has in `room` (its parts, in order), empty if it never got there.
    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Vec<MessageId>;
    /// True when `user` is one of the gateway's own puppets or bots on its network.
    fn is_own_puppet(&self, user: &UserRef) -> bool;
    /// True when `event` is on its way to `room` but not yet confirmed there, so its ids in
    /// that room are not known yet. An edit, redaction or reaction of such an event is
    /// planned anyway (with empty ids) and the gateway holds it until the original is
    /// confirmed, so a quick correction is not lost to the race.
    fn in_flight(&self, event: &EventId, room: &RoomRef) -> bool {
        let _ = (event, room);
        false
    }
}

/// One target of an event, before it gets its outbox id.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// The bridge it goes through.
    pub bridge: BridgeName,
    /// The room it goes to.
    pub target: RoomRef,
    /// Reply target in that room, if resolvable.
    pub reply_to: Vec<MessageId>,
    /// Edit/redact/react target in that room, if resolvable.
    pub target_ids: Vec<MessageId>,
}

/// Why a link change was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// The room already belongs to another bridge.
    #[error("{room} is already linked in bridge {bridge}")]
    RoomTaken {
        /// The room.
        room: RoomRef,
        /// The bridge that has it.
        bridge: BridgeName,
    },
    /// There is no such bridge.
    #[error("no bridge named {0}")]
    NoSuchBridge(BridgeName),
    /// The room is not in that bridge.
    #[error("{room} is not linked in bridge {bridge}")]
    NotLinked {
        /// The room.
        room: RoomRef,
        /// The bridge.
        bridge: BridgeName,
    },
}

/// The link table and the fan-out rule.
#[derive(Clone, Debug, Default)]
pub struct Router {
    links: Vec<Link>,
    by_room: HashMap<RoomRef, usize>,
}

impl Router {
    /// Builds the table; refuses a room that appears in two links.
    pub fn new(links: Vec<Link>) -> Result<Self, LinkError> {
        let mut r = Router::default();
        for l in links {
            for room in &l.rooms {
                r.link_room(&l.bridge, room.clone())?;
            }
            if l.rooms.is_empty() {
                r.links.push(l);
            }
        }
        Ok(r)
    }

    fn reindex(&mut self) {
        self.by_room = self
            .links
            .iter()
            .enumerate()
            .flat_map(|(i, l)| l.rooms.iter().map(move |r| (r.clone(), i)))
            .collect();
    }

    /// All links.
    pub fn links(&self) -> &[Link] {
        &self.links
    }

    /// The link a room belongs to.
    pub fn link_of(&self, room: &RoomRef) -> Option<&Link> {
        self.by_room.get(room).map(|&i| &self.links[i])
    }

    /// Whether an event said in `origin` can cross at all: the room is linked, or it is a
    /// private conversation (which [`Router::plan`] links to its mirror).
    pub fn routes_from(&self, origin: &RoomRef) -> bool {
        self.link_of(origin).is_some() || crate::private::Conversation::parse(origin).is_some()
    }

    /// The linked rooms on one network.
    pub fn rooms_on(&self, network: &NetworkId) -> Vec<RoomId> {
        let mut v: Vec<RoomId> = self
            .links
            .iter()
            .flat_map(|l| l.rooms.iter())
            .filter(|r| &r.network == network)
            .map(|r| r.room.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Adds `room` to `bridge`, creating the bridge if it does not exist.
    pub fn link_room(&mut self, bridge: &BridgeName, room: RoomRef) -> Result<(), LinkError> {
        if let Some(&i) = self.by_room.get(&room) {
            if &self.links[i].bridge == bridge {
                return Ok(());
            }
            return Err(LinkError::RoomTaken {
                room,
                bridge: self.links[i].bridge.clone(),
            });
        }
        match self.links.iter_mut().find(|l| &l.bridge == bridge) {
            Some(l) => l.rooms.push(room),
            None => self.links.push(Link {
                bridge: bridge.clone(),
                rooms: vec![room],
            }),
        }
        self.reindex();
        Ok(())
    }

    /// Removes `room` from `bridge`.
    pub fn unlink_room(&mut self, bridge: &BridgeName, room: &RoomRef) -> Result<(), LinkError> {
        let l = self
            .links
            .iter_mut()
            .find(|l| &l.bridge == bridge)
            .ok_or_else(|| LinkError::NoSuchBridge(bridge.clone()))?;
        let before = l.rooms.len();
        l.rooms.retain(|r| r != room);
        if l.rooms.len() == before {
            return Err(LinkError::NotLinked {
                room: room.clone(),
                bridge: bridge.clone(),
            });
        }
        self.reindex();
        Ok(())
    }

    /// Removes a whole bridge; returns its rooms.
    pub fn remove_bridge(&mut self, bridge: &BridgeName) -> Result<Vec<RoomRef>, LinkError> {
        let i = self
            .links
            .iter()
            .position(|l| &l.bridge == bridge)
            .ok_or_else(|| LinkError::NoSuchBridge(bridge.clone()))?;
        let l = self.links.remove(i);
        self.reindex();
        Ok(l.rooms)
    }

    /// What `event` becomes: one [`Planned`] per other room of its link, with references
    /// resolved into each target's ids. Empty when the room is not linked or the sender is
    /// one of our own puppets (loop prevention). Edits, redactions and reactions whose target
    /// is unknown in a room are not sent there (nothing to apply them to) unless the target is
    /// still in flight to that room ([`RefResolver::in_flight`]: planned with empty ids, for
    /// the gateway to fill in once it is confirmed); replies whose target is unknown go out
    /// as plain messages.
    pub fn plan(&self, event: &Event, resolver: &impl RefResolver) -> Vec<Planned> {
        let private;
        let link = match self.link_of(&event.origin) {
            Some(link) => link,
            None => match crate::private::Conversation::parse(&event.origin) {
                // A private conversation is linked to its mirror, and only its own person
                // speaks in it.
                Some(c)
                    if event.sender.user == c.local_user()
                        && crate::private::carries(&event.kind) =>
                {
                    private = Link {
                        bridge: crate::private::bridge(),
                        rooms: vec![event.origin.clone(), c.mirror().room()],
                    };
                    &private
                }
                _ => return Vec::new(),
            },
        };
        if resolver.is_own_puppet(&event.sender.user) {
            return Vec::new();
        }
        let reply_src = match &event.kind {
            crate::EventKind::Message(m) => m.reply_to.as_ref(),
            _ => None,
        };
        let target_src = match &event.kind {
            crate::EventKind::Message(_) => None,
            _ => event.references().into_iter().next(),
        };
        let resolve = |id: &MessageId, target: &RoomRef| -> Vec<MessageId> {
            resolver
                .event_for(&event.origin, id)
                .map(|ev| resolver.remote_ids(&ev, target))
                .unwrap_or_default()
        };
        let in_flight = |id: &MessageId, target: &RoomRef| -> bool {
            resolver
                .event_for(&event.origin, id)
                .is_some_and(|ev| resolver.in_flight(&ev, target))
        };
        link.rooms
            .iter()
            .filter(|r| *r != &event.origin)
            .filter_map(|target| {
                let reply_to = reply_src.map(|id| resolve(id, target)).unwrap_or_default();
                let target_ids = match target_src {
                    Some(id) => {
                        let ids = resolve(id, target);
                        if ids.is_empty() && !in_flight(id, target) {
                            return None;
                        }
                        ids
                    }
                    None => Vec::new(),
                };
                Some(Planned {
                    bridge: link.bridge.clone(),
                    target: target.clone(),
                    reply_to,
                    target_ids,
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::event::{EventKind, Message, MessageKind, Sender};
    use crate::format::RichText;
    use std::collections::{HashMap, HashSet};

    fn m() -> RoomRef {
        RoomRef::new("matrix", "#lobby:matrix.test")
    }
    fn x() -> RoomRef {
        RoomRef::new("xmpp", "lobby@conference.xmpp.test")
    }
    fn i() -> RoomRef {
        RoomRef::new("irc:libera", "#lobby")
    }

    /// A test table standing in for the message map and puppet table.
    #[derive(Default)]
    struct Table {
        events: HashMap<(RoomRef, MessageId), EventId>,
        ids: HashMap<(EventId, RoomRef), Vec<MessageId>>,
        puppets: HashSet<UserRef>,
        flying: HashSet<(EventId, RoomRef)>,
    }

    impl Table {
        /// Records that `remote` in `origin` is event `ev` and appears as `parts` in `room`.
        fn known(&mut self, origin: &RoomRef, remote: &str, room: &RoomRef, parts: &[&str]) {
            let ev = EventId::derive(origin, &MessageId::from(remote));
            self.events
                .insert((origin.clone(), MessageId::from(remote)), ev.clone());
            self.ids.insert(
                (ev, room.clone()),
                parts.iter().map(|p| MessageId::from(*p)).collect(),
            );
        }
    }

    impl RefResolver for Table {
        fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Option<EventId> {
            self.events.get(&(room.clone(), remote.clone())).cloned()
        }
        fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Vec<MessageId> {
            self.ids
                .get(&(event.clone(), room.clone()))
                .cloned()
                .unwrap_or_default()
        }
        fn is_own_puppet(&self, user: &UserRef) -> bool {
            self.puppets.contains(user)
        }
        fn in_flight(&self, event: &EventId, room: &RoomRef) -> bool {
            self.flying.contains(&(event.clone(), room.clone()))
        }
    }

    fn router() -> Router {
        Router::new(vec![Link {
            bridge: BridgeName::from("lobby"),
            rooms: vec![m(), x(), i()],
        }])
        .unwrap()
    }

    fn alice() -> Sender {
        Sender::new(UserRef::new("matrix", "@alice:matrix.test"), "alice")
    }

    fn message(origin: RoomRef, reply_to: Option<&str>) -> Event {
        Event::new(
            origin,
            MessageId::from("$new"),
            alice(),
            1,
            EventKind::Message(Message {
                kind: MessageKind::Text,
                body: RichText::plain("hi"),
                reply_to: reply_to.map(MessageId::from),
                attachments: Vec::new(),
            }),
        )
    }

    fn targets(p: &[Planned]) -> Vec<RoomRef> {
        p.iter().map(|p| p.target.clone()).collect()
    }

    #[test]
    fn fans_out_to_every_other_room() {
        let p = router().plan(&message(m(), None), &Table::default());
        assert_eq!(targets(&p), vec![x(), i()]);
        assert!(p.iter().all(|p| p.bridge == BridgeName::from("lobby")));
        assert!(p
            .iter()
            .all(|p| p.reply_to.is_empty() && p.target_ids.is_empty()));
    }

    #[test]
    fn unlinked_room_goes_nowhere() {
        let other = RoomRef::new("matrix", "#elsewhere:matrix.test");
        assert!(router()
            .plan(&message(other, None), &Table::default())
            .is_empty());
    }

    #[test]
    fn own_puppet_goes_nowhere() {
        let mut t = Table::default();
        t.puppets
            .insert(UserRef::new("matrix", "@alice:matrix.test"));
        assert!(router().plan(&message(m(), None), &t).is_empty());
    }

    #[test]
    fn reply_is_resolved_per_target() {
        let mut t = Table::default();
        t.known(&m(), "$old", &x(), &["x-old"]);
        let p = router().plan(&message(m(), Some("$old")), &t);
        assert_eq!(targets(&p), vec![x(), i()]);
        assert_eq!(p[0].reply_to, vec![MessageId::from("x-old")]);
        assert!(p[1].reply_to.is_empty(), "unknown in IRC: a plain message");
    }

    #[test]
    fn edit_redact_react_only_where_target_is_known() {
        let mut t = Table::default();
        t.known(&m(), "$old", &i(), &["i-1", "i-2"]);
        let kinds = [
            EventKind::Edit {
                target: "$old".into(),
                body: RichText::plain("fixed"),
            },
            EventKind::Redact {
                target: "$old".into(),
                reason: None,
            },
            EventKind::React {
                target: "$old".into(),
                key: "👍".into(),
            },
        ];
        for kind in kinds {
            let ev = Event::new(m(), MessageId::from("$e"), alice(), 2, kind);
            let p = router().plan(&ev, &t);
            assert_eq!(targets(&p), vec![i()]);
            assert_eq!(
                p[0].target_ids,
                vec![MessageId::from("i-1"), MessageId::from("i-2")],
                "parts kept in order"
            );
        }
    }

    #[test]
    fn an_edit_of_a_message_still_in_flight_is_planned_for_the_gateway_to_fill_in() {
        let mut t = Table::default();
        // Known in XMPP, on its way to IRC, never sent to a third room.
        t.known(&m(), "$old", &x(), &["x-1"]);
        let old = EventId::derive(&m(), &MessageId::from("$old"));
        t.flying.insert((old, i()));
        let ev = Event::new(
            m(),
            MessageId::from("$e"),
            alice(),
            2,
            EventKind::Edit {
                target: "$old".into(),
                body: RichText::plain("fixed"),
            },
        );
        let p = router().plan(&ev, &t);
        assert_eq!(targets(&p), vec![x(), i()]);
        assert_eq!(p[0].target_ids, vec![MessageId::from("x-1")]);
        assert!(p[1].target_ids.is_empty(), "filled in once confirmed");
    }

    #[test]
    fn link_changes_and_errors() {
        let mut r = router();
        let other = RoomRef::new("xmpp", "other@conference.xmpp.test");
        assert_eq!(
            r.link_room(&BridgeName::from("second"), m()),
            Err(LinkError::RoomTaken {
                room: m(),
                bridge: BridgeName::from("lobby")
            })
        );
        assert_eq!(r.link_room(&BridgeName::from("lobby"), m()), Ok(()));
        assert_eq!(
            r.unlink_room(&BridgeName::from("nope"), &m()),
            Err(LinkError::NoSuchBridge(BridgeName::from("nope")))
        );
        assert_eq!(
            r.unlink_room(&BridgeName::from("lobby"), &other),
            Err(LinkError::NotLinked {
                room: other.clone(),
                bridge: BridgeName::from("lobby")
            })
        );
        r.link_room(&BridgeName::from("second"), other.clone())
            .unwrap();
        assert_eq!(
            r.rooms_on(&"xmpp".into()),
            vec![
                RoomId::from("lobby@conference.xmpp.test"),
                RoomId::from("other@conference.xmpp.test")
            ]
        );
        r.unlink_room(&BridgeName::from("lobby"), &x()).unwrap();
        assert!(r.link_of(&x()).is_none());
        assert_eq!(
            targets(&r.plan(&message(m(), None), &Table::default())),
            vec![i()]
        );
        assert_eq!(
            r.remove_bridge(&BridgeName::from("lobby")),
            Ok(vec![m(), i()])
        );
        assert_eq!(
            r.remove_bridge(&BridgeName::from("lobby")),
            Err(LinkError::NoSuchBridge(BridgeName::from("lobby")))
        );
        assert!(r.link_of(&m()).is_none());
        assert_eq!(
            r.link_of(&other).map(|l| l.bridge.clone()),
            Some("second".into())
        );
        assert_eq!(
            Router::new(vec![
                Link {
                    bridge: "a".into(),
                    rooms: vec![m()]
                },
                Link {
                    bridge: "b".into(),
                    rooms: vec![m()]
                },
            ])
            .err(),
            Some(LinkError::RoomTaken {
                room: m(),
                bridge: "a".into()
            })
        );
    }

    #[test]
    fn a_private_conversation_reaches_its_mirror_only_from_its_person() {
        let c = crate::private::Conversation::new(
            NetworkId::from("matrix"),
            crate::UserId::from("@alice:matrix.test"),
            UserRef::new("irc:libera", "bob"),
        );
        let p = router().plan(&message(c.room(), None), &Table::default());
        assert_eq!(targets(&p), vec![c.mirror().room()]);
        assert_eq!(p[0].bridge, crate::private::bridge());
        // Someone else in the same conversation room speaks to nobody.
        let mut other = message(c.room(), None);
        other.sender = Sender::new(UserRef::new("matrix", "@eve:matrix.test"), "eve");
        assert!(router().plan(&other, &Table::default()).is_empty());
        // Joins and leaves stay on their side.
        let mut left = message(c.room(), None);
        left.kind = EventKind::Leave {
            reason: None,
            quit: false,
        };
        assert!(router().plan(&left, &Table::default()).is_empty());
    }
}
