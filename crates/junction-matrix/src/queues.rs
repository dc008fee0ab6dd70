//! Deliveries per room and locks per name.
//!
//! Each target room has its own ordered queue ([`junction_core::queue::KeyedQueues`]): a
//! room is served one delivery at a time, so its order is kept exactly, and up to
//! [`crate::MAX_ROOMS_AT_ONCE`] rooms at once, so one slow delivery (an attachment fetched
//! from a server that answers slowly, a room whose sends fail for now and are retried with
//! backoff) holds back only its own room. A room's queue holds at most
//! [`crate::MAX_QUEUED_PER_ROOM`] of what people said; moderation and the gateway's own
//! words are queued past it.
//!
//! With `[matrix] parallel_senders` above 1, a room serves up to that many messages at once
//! ([`Flights::admits`]): each from a different person, none a reply or with attachments,
//! and all said within [`PARALLEL_WITHIN_MS`] of each other (by the times the events carry:
//! the IRC server's `server-time`, the gateway's clock for XMPP). Homeservers order concurrent sends into a room as
//! they persist them, so only such lines can swap places there; one person's lines, lines
//! said further apart, and everything else (edits, redactions, reactions, joins, moderation)
//! keep their order exactly.

use crate::MAX_QUEUED_PER_ROOM;
pub(crate) use junction_core::queue::{KeyedQueues as RoomQueues, Push};
use junction_core::{Delivered, Delivery, EventKind};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Queues a delivery in its room's queue. What people said is refused past the room's bound
/// ([`MAX_QUEUED_PER_ROOM`]) and given up, logged once per burst; the gateway's own words and
/// moderation (kicks, bans, a moderator's removals, topics) are always queued.
pub(crate) fn enqueue(
    queues: &mut RoomQueues<Delivery>,
    d: Delivery,
    delivered: &mpsc::UnboundedSender<Delivered>,
) {
    let room = d.target.room.as_str().to_owned();
    let moderation = match d.event.kind {
        EventKind::Kick { .. } | EventKind::Ban { .. } | EventKind::Topic { .. } => true,
        EventKind::Redact { .. } => d.event.by_moderator,
        _ => false,
    };
    let bounded = !d.event.sender.user.network.is_gateway() && !moderation;
    if !bounded {
        queues.push_always(&room, d);
        return;
    }
    match queues.push(&room, d) {
        Push::Queued => {}
        Push::QueuedAfter(refused) => {
            tracing::info!(%room, refused, "The delivery queue of a Matrix room has room again.");
        }
        Push::Full { item, first } => {
            if first {
                tracing::warn!(%room, queued = MAX_QUEUED_PER_ROOM, "The delivery queue of a Matrix room is full: what people say there is given up until it drains.");
            }
            let answer = item.answer(Err(format!(
                "the Matrix delivery queue of {room} is full ({MAX_QUEUED_PER_ROOM} waiting)"
            )));
            if delivered.send(answer).is_err() {
                tracing::debug!("The gateway stopped taking delivery answers.");
            }
        }
    }
}

/// How far apart (by the time they were said) two messages served at once in one room may
/// be, with `[matrix] parallel_senders` above 1: lines said further apart keep their order.
pub(crate) const PARALLEL_WITHIN_MS: u64 = 250;

/// What a room is serving now, for [`Flights::admits`]: per delivery under way, whether it
/// may run beside others, its sender and when it was said.
#[derive(Default)]
pub(crate) struct Flights {
    under_way: HashMap<tokio::task::Id, (String, Option<Flight>)>,
}

/// A delivery under way beside others: who said it, and when.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Flight {
    sender: junction_core::UserRef,
    ts_ms: u64,
}

impl Flight {
    /// The delivery as one that may be served beside others (`parallel` of them at most);
    /// None when it must be served alone: anything but a message, the gateway's own words,
    /// a reply (its quote needs the original's id), a message with attachments (several
    /// events, which must stay together), a private chat, or no time known.
    pub(crate) fn of(d: &Delivery, parallel: usize) -> Option<Self> {
        let EventKind::Message(m) = &d.event.kind else {
            return None;
        };
        let alone = parallel < 2
            || m.reply_to.is_some()
            || !m.attachments.is_empty()
            || d.event.ts_ms == 0
            || d.event.sender.user.network.is_gateway()
            || junction_core::private::is_private(&d.target.room);
        (!alone).then(|| Self {
            sender: d.event.sender.user.clone(),
            ts_ms: d.event.ts_ms,
        })
    }
}

impl Flights {
    /// Notes a delivery of `room` started as task `id`.
    pub(crate) fn started(&mut self, id: tokio::task::Id, room: String, flight: Option<Flight>) {
        self.under_way.insert(id, (room, flight));
    }

    /// The room of the finished task `id`, no longer under way.
    pub(crate) fn finished(&mut self, id: tokio::task::Id) -> Option<String> {
        self.under_way.remove(&id).map(|(room, _)| room)
    }

    /// Rooms with deliveries under way that all may have company.
    pub(crate) fn open_rooms(&self) -> Vec<String> {
        let mut rooms: Vec<String> = self
            .under_way
            .values()
            .map(|(room, _)| room.clone())
            .collect();
        rooms.sort_unstable();
        rooms.dedup();
        rooms.retain(|r| {
            self.under_way
                .values()
                .all(|(room, f)| room != r || f.is_some())
        });
        rooms
    }

    /// Whether `room` may serve `next` beside what it serves now: at most `parallel` at once,
    /// all messages that may have company, each from a different person, all said within
    /// [`PARALLEL_WITHIN_MS`] of each other.
    pub(crate) fn admits(&self, room: &str, next: &Flight, parallel: usize) -> bool {
        let mut n = 0;
        for (r, f) in self.under_way.values() {
            if r != room {
                continue;
            }
            let Some(f) = f else { return false };
            if f.sender == next.sender || f.ts_ms.abs_diff(next.ts_ms) > PARALLEL_WITHIN_MS {
                return false;
            }
            n += 1;
        }
        n < parallel
    }
}

/// Async locks by name (a Matrix room id, a ghost's user id), made on first use and dropped
/// once nobody holds or waits for them, so they are as many as the names in use. A lock is
/// held alone ([`KeyLocks::lock`]) or shared by the messages a room serves at once
/// ([`KeyLocks::share`]).
#[derive(Default)]
pub(crate) struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::RwLock<()>>>>,
}

/// A held [`KeyLocks`] lock: alone or shared.
pub(crate) enum Held {
    /// Held alone.
    Alone(#[allow(dead_code)] tokio::sync::OwnedRwLockWriteGuard<()>),
    /// Shared with the messages served beside.
    Shared(#[allow(dead_code)] tokio::sync::OwnedRwLockReadGuard<()>),
}

impl KeyLocks {
    fn entry(&self, key: &str) -> Arc<tokio::sync::RwLock<()>> {
        let mut locks = crate::puppets::lock(&self.locks);
        // Only the map holds a lock nobody uses any more.
        locks.retain(|_, m| Arc::strong_count(m) > 1);
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Waits for the lock of `key`, alone; it is held until the guard is dropped.
    pub(crate) async fn lock(&self, key: &str) -> Held {
        Held::Alone(self.entry(key).write_owned().await)
    }

    /// Waits for the lock of `key`, shared with other sharers (not with a holder alone).
    pub(crate) async fn share(&self, key: &str) -> Held {
        Held::Shared(self.entry(key).read_owned().await)
    }

    /// Names with a lock held or awaited.
    #[cfg(test)]
    fn len(&self) -> usize {
        let mut locks = crate::puppets::lock(&self.locks);
        locks.retain(|_, m| Arc::strong_count(m) > 1);
        locks.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_ROOMS_AT_ONCE;
    use junction_core::{
        Event, Message, MessageId, MessageKind, NetworkId, RichText, RoomRef, Sender,
    };

    #[tokio::test]
    async fn key_locks_exclude_per_key_and_are_dropped_when_unused() {
        let locks = Arc::new(KeyLocks::default());
        let a = locks.lock("!a").await;
        // Another key is free.
        let b = locks.lock("!b").await;
        assert_eq!(locks.len(), 2);
        drop(b);
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _a = locks.lock("!a").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.expect("the waiter gets the lock");
        assert_eq!(locks.len(), 0);
    }

    fn delivery(outbox_id: u64, room: &str, sender: Sender, kind: EventKind) -> Delivery {
        let event = Event::new(
            RoomRef::new("irc:local", "#lobby"),
            MessageId::new(format!("m{outbox_id}")),
            sender,
            1,
            kind,
        );
        Delivery {
            outbox_id,
            bridge: "lobby".into(),
            target: RoomRef::new("matrix", room),
            event,
            reply_to: Vec::new(),
            target_ids: Vec::new(),
        }
    }

    fn said(text: &str) -> EventKind {
        EventKind::Message(Message {
            kind: MessageKind::Text,
            body: RichText::plain(text),
            reply_to: None,
            attachments: Vec::new(),
        })
    }

    fn at(mut d: Delivery, ts_ms: u64) -> Delivery {
        d.event.ts_ms = ts_ms;
        d
    }

    #[tokio::test]
    async fn only_messages_of_different_people_said_together_share_a_room() {
        let person = |n: &str| Sender::new(junction_core::UserRef::new("irc:local", n), n);
        let (a, b, c) = (person("a"), person("b"), person("c"));
        let msg = |id, who: &Sender, ts| at(delivery(id, "!r", who.clone(), said("hi")), ts);
        // Alone: one at a time, anything but a message, no time known, the gateway.
        assert!(Flight::of(&msg(1, &a, 1_000), 1).is_none());
        let kick = EventKind::Kick {
            target: b.clone(),
            reason: None,
        };
        assert!(Flight::of(&at(delivery(2, "!r", a.clone(), kick), 1_000), 4).is_none());
        assert!(Flight::of(&msg(3, &a, 0), 4).is_none());
        let gateway = Sender::new(junction_core::UserRef::new(NetworkId::gateway(), "g"), "g");
        assert!(Flight::of(&msg(4, &gateway, 1_000), 4).is_none());
        // A reply, and a message with attachments (several events), go alone too.
        let mut reply = msg(11, &a, 1_000);
        let mut with_file = msg(12, &a, 1_000);
        if let (EventKind::Message(r), EventKind::Message(f)) =
            (&mut reply.event.kind, &mut with_file.event.kind)
        {
            r.reply_to = Some(MessageId::new("earlier"));
            f.attachments.push(junction_core::Attachment {
                url: "https://files.example/a.png".into(),
                name: "a.png".into(),
                mime: None,
                size: None,
            });
        }
        assert!(Flight::of(&reply, 4).is_none());
        assert!(Flight::of(&with_file, 4).is_none());

        // Four tasks give four ids.
        let ids: Vec<tokio::task::Id> = (0..4).map(|_| tokio::spawn(async {}).id()).collect();
        let mut flights = Flights::default();
        let first = Flight::of(&msg(5, &a, 1_000), 4).expect("a message may have company");
        flights.started(ids[0], "!r".into(), Some(first));
        assert_eq!(flights.open_rooms(), ["!r"]);
        let fb = Flight::of(&msg(6, &b, 1_100), 4).expect("b's");
        assert!(
            flights.admits("!r", &fb, 4),
            "another person, said together"
        );
        assert!(!flights.admits("!r", &fb, 1), "one at a time");
        let again = Flight::of(&msg(7, &a, 1_050), 4).expect("a's next");
        assert!(!flights.admits("!r", &again, 4), "the same person waits");
        let late = Flight::of(&msg(8, &c, 1_000 + PARALLEL_WITHIN_MS + 1), 4).expect("c's");
        assert!(!flights.admits("!r", &late, 4), "said later: waits");
        flights.started(ids[1], "!r".into(), Some(fb));
        // At most `parallel` at once.
        let fc = Flight::of(&msg(9, &c, 1_050), 4).expect("c's");
        assert!(flights.admits("!r", &fc, 3));
        assert!(!flights.admits("!r", &fc, 2), "two under way already");
        // Something that must go alone closes the room to company.
        flights.started(ids[2], "!s".into(), None);
        assert_eq!(flights.open_rooms(), ["!r"]);
        let fs = Flight::of(&at(delivery(10, "!s", c.clone(), said("hi")), 1_000), 4)
            .expect("c's in !s");
        assert!(
            !flights.admits("!s", &fs, 4),
            "nothing beside what goes alone"
        );
        assert_eq!(flights.finished(ids[0]).as_deref(), Some("!r"));
        assert_eq!(flights.finished(ids[2]).as_deref(), Some("!s"));
        assert!(flights.finished(ids[3]).is_none());
    }

    #[test]
    fn a_full_room_gives_up_what_people_say_but_not_moderation() {
        let bob = Sender::new(junction_core::UserRef::new("irc:local", "bob"), "bob");
        let gateway = Sender::new(junction_core::UserRef::new(NetworkId::gateway(), "g"), "g");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut queues = RoomQueues::new(2, MAX_ROOMS_AT_ONCE);
        for id in 0..4 {
            enqueue(
                &mut queues,
                delivery(id, "!a", bob.clone(), said("hi")),
                &tx,
            );
        }
        // Another room has its own bound.
        enqueue(&mut queues, delivery(9, "!b", bob.clone(), said("hi")), &tx);
        let kick = EventKind::Kick {
            target: bob.clone(),
            reason: None,
        };
        enqueue(&mut queues, delivery(10, "!a", bob.clone(), kick), &tx);
        enqueue(
            &mut queues,
            delivery(11, "!a", gateway, said("notice")),
            &tx,
        );
        // The two over the bound are answered once each, as given up.
        let refused: Vec<u64> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|a| {
                assert!(a.outcome.is_err_and(|why| why.contains("full")));
                a.outbox_id
            })
            .collect();
        assert_eq!(refused, [2, 3]);
        assert_eq!(queues.waiting("!a"), 4);
        assert_eq!(queues.waiting("!b"), 1);
    }
}
