//! Deliveries per room and locks per name.
//!
//! Each target room has its own ordered queue ([`junction_core::queue::KeyedQueues`]): a
//! room is served one delivery at a time, so its order is kept exactly, and up to
//! [`crate::MAX_ROOMS_AT_ONCE`] rooms at once, so one slow delivery (an attachment fetched
//! from a server that answers slowly, a room whose sends fail for now and are retried with
//! backoff) holds back only its own room. A room's queue holds at most
//! [`crate::MAX_QUEUED_PER_ROOM`] of what people said; moderation and the gateway's own
//! words are queued past it.

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

/// Async locks by name (a Matrix room id, a ghost's user id), made on first use and dropped
/// once nobody holds or waits for them, so they are as many as the names in use.
#[derive(Default)]
pub(crate) struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl KeyLocks {
    /// Waits for the lock of `key`; it is held until the guard is dropped.
    pub(crate) async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let m = {
            let mut locks = crate::puppets::lock(&self.locks);
            // Only the map holds a lock nobody uses any more.
            locks.retain(|_, m| Arc::strong_count(m) > 1);
            locks.entry(key.to_owned()).or_default().clone()
        };
        m.lock_owned().await
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
