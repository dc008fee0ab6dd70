//! Deliveries per room: one ordered queue per target room, each served one delivery at a
//! time, several rooms at once.
//!
//! With one queue for every room, one slow delivery held back every other room: an
//! attachment fetched from a server that answers slowly, or a room whose sends fail for now
//! and are retried with backoff. Here each room has its own queue; the adapter serves at most
//! one delivery of a room at a time (so a room's order is kept exactly: edits, replies and
//! redactions rely on it), and up to `max_busy` rooms at once ([`crate::MAX_ROOMS_AT_ONCE`]).
//! Rooms with something waiting take turns for a free place, so a quiet room waits for at
//! most one delivery of each busy room ahead of it.
//!
//! A room's queue holds at most `cap` deliveries ([`crate::MAX_QUEUED_PER_ROOM`]): one more
//! is handed back (the adapter gives it up), counted and reported once per burst. What must
//! not be lost to a flood (moderation, the gateway's own words) is queued past the cap with
//! [`RoomQueues::push_always`].
//!
//! Written here because it is a few lines over `VecDeque` and `HashMap`: the queue crates
//! found do neither per-key serial service nor per-key bounds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// What [`RoomQueues::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Push<T> {
    /// Queued.
    Queued,
    /// Queued; this many items for the room were refused since the last one queued there
    /// (the burst is over: report it).
    QueuedAfter(u64),
    /// The room's queue is full: the item is handed back. `first` when it is the first
    /// refusal since an item for the room was last queued (report it).
    Full {
        /// The item refused.
        item: T,
        /// The first refusal of this burst.
        first: bool,
    },
}

/// Items waiting per room; a room is served one item at a time, at most `max_busy` rooms
/// at once.
#[derive(Debug)]
pub(crate) struct RoomQueues<T> {
    queues: HashMap<String, VecDeque<T>>,
    /// Rooms with an item being served (taken by [`RoomQueues::next`], not yet
    /// [`RoomQueues::done`]).
    busy: HashSet<String>,
    /// Rooms with something waiting and nothing being served, in the order of their turns.
    ready: VecDeque<String>,
    cap: usize,
    max_busy: usize,
    /// Room → items refused since one was last queued there.
    refused: HashMap<String, u64>,
}

impl<T> RoomQueues<T> {
    /// Empty queues holding at most `cap` items per room, serving at most `max_busy` rooms
    /// at once (at least one).
    pub(crate) fn new(cap: usize, max_busy: usize) -> Self {
        Self {
            queues: HashMap::new(),
            busy: HashSet::new(),
            ready: VecDeque::new(),
            cap,
            max_busy: max_busy.max(1),
            refused: HashMap::new(),
        }
    }

    /// Queues `item` for `room` unless that room has `cap` items waiting already.
    pub(crate) fn push(&mut self, room: &str, item: T) -> Push<T> {
        if self.waiting(room) >= self.cap {
            let n = self.refused.entry(room.to_owned()).or_default();
            *n += 1;
            return Push::Full {
                item,
                first: *n == 1,
            };
        }
        self.push_always(room, item);
        match self.refused.remove(room) {
            Some(n) => Push::QueuedAfter(n),
            None => Push::Queued,
        }
    }

    /// Queues `item` for `room` whatever the room has waiting.
    pub(crate) fn push_always(&mut self, room: &str, item: T) {
        match self.queues.get_mut(room) {
            Some(q) => q.push_back(item),
            None => {
                self.queues.insert(room.to_owned(), VecDeque::from([item]));
                if !self.busy.contains(room) {
                    self.ready.push_back(room.to_owned());
                }
            }
        }
    }

    /// The next item to serve, with its room: the oldest of the room whose turn it is, when
    /// fewer than `max_busy` rooms are being served. The room is busy until
    /// [`RoomQueues::done`].
    pub(crate) fn next(&mut self) -> Option<(String, T)> {
        if self.busy.len() >= self.max_busy {
            return None;
        }
        let room = self.ready.pop_front()?;
        let q = self.queues.get_mut(&room)?;
        let item = q.pop_front()?;
        if q.is_empty() {
            self.queues.remove(&room);
        }
        self.busy.insert(room.clone());
        Some((room, item))
    }

    /// The item of `room` taken by [`RoomQueues::next`] is served: the room's next item (if
    /// any) waits for its turn after the rooms already waiting.
    pub(crate) fn done(&mut self, room: &str) {
        if self.busy.remove(room) && self.queues.contains_key(room) {
            self.ready.push_back(room.to_owned());
        }
    }

    /// Items waiting (not being served) for `room`.
    pub(crate) fn waiting(&self, room: &str) -> usize {
        self.queues.get(room).map_or(0, VecDeque::len)
    }

    /// Rooms being served.
    #[cfg(test)]
    pub(crate) fn busy(&self) -> usize {
        self.busy.len()
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

    /// Drains whatever may be served now.
    fn take<T>(q: &mut RoomQueues<T>) -> Vec<(String, T)> {
        std::iter::from_fn(|| q.next()).collect()
    }

    #[test]
    fn a_room_is_served_one_item_at_a_time_in_order() {
        let mut q = RoomQueues::new(100, 8);
        for i in 0..5 {
            assert_eq!(q.push("!a", i), Push::Queued);
        }
        assert_eq!(take(&mut q), [("!a".to_string(), 0)]);
        // Nothing more of the room while its item is being served.
        assert!(q.next().is_none());
        assert_eq!(q.waiting("!a"), 4);
        for i in 1..5 {
            q.done("!a");
            assert_eq!(take(&mut q), [("!a".to_string(), i)]);
        }
        q.done("!a");
        assert!(q.next().is_none());
        assert_eq!(q.busy(), 0);
    }

    #[test]
    fn a_busy_room_does_not_hold_back_another() {
        let mut q = RoomQueues::new(100, 8);
        q.push("!slow", "s0");
        q.push("!slow", "s1");
        assert_eq!(take(&mut q), [("!slow".to_string(), "s0")]);
        // !slow's first item is still being served: !quiet's items go out meanwhile.
        q.push("!quiet", "q0");
        assert_eq!(take(&mut q), [("!quiet".to_string(), "q0")]);
        q.done("!quiet");
        q.push("!quiet", "q1");
        assert_eq!(take(&mut q), [("!quiet".to_string(), "q1")]);
        q.done("!quiet");
        q.done("!slow");
        assert_eq!(take(&mut q), [("!slow".to_string(), "s1")]);
    }

    #[test]
    fn at_most_max_busy_rooms_are_served_and_the_others_take_turns() {
        let mut q = RoomQueues::new(100, 2);
        for room in ["!a", "!b", "!c", "!d"] {
            q.push(room, format!("{room}0"));
            q.push(room, format!("{room}1"));
        }
        let first: Vec<String> = take(&mut q).into_iter().map(|(_, i)| i).collect();
        assert_eq!(first, ["!a0", "!b0"]);
        assert_eq!(q.busy(), 2);
        // !a is done: its next item waits behind !c and !d, which waited longer.
        q.done("!a");
        assert_eq!(take(&mut q), [("!c".to_string(), "!c0".to_string())]);
        q.done("!b");
        q.done("!c");
        let next: Vec<String> = take(&mut q).into_iter().map(|(_, i)| i).collect();
        assert_eq!(next, ["!d0", "!a1"]);
        // Done for a room that is not busy changes nothing.
        q.done("!zzz");
        assert_eq!(q.busy(), 2);
    }

    #[test]
    fn a_full_room_refuses_and_counts_once_per_burst() {
        let mut q = RoomQueues::new(3, 8);
        for i in 0..3 {
            assert_eq!(q.push("!a", i), Push::Queued);
        }
        assert_eq!(
            q.push("!a", 3),
            Push::Full {
                item: 3,
                first: true
            }
        );
        for i in 4..10 {
            assert_eq!(
                q.push("!a", i),
                Push::Full {
                    item: i,
                    first: false
                }
            );
        }
        // Another room is not affected by a full one.
        assert_eq!(q.push("!b", 100), Push::Queued);
        // Moderation goes past the cap.
        q.push_always("!a", 50);
        assert_eq!(q.waiting("!a"), 4);
        // One item taken to be served makes room for one.
        let served: Vec<i32> = take(&mut q).into_iter().map(|(_, i)| i).collect();
        assert_eq!(served, [0, 100]);
        assert_eq!(
            q.push("!a", 11),
            Push::Full {
                item: 11,
                first: false
            }
        );
        q.done("!a");
        assert_eq!(take(&mut q), [("!a".to_string(), 1)]);
        q.done("!a");
        assert_eq!(take(&mut q), [("!a".to_string(), 2)]);
        // Room again: the refusals of the burst are reported with the next one queued.
        assert_eq!(q.push("!a", 12), Push::QueuedAfter(8));
        assert_eq!(q.push("!a", 13), Push::Queued);
        assert_eq!(
            q.push("!a", 14),
            Push::Full {
                item: 14,
                first: true
            }
        );
        let mut rest = Vec::new();
        loop {
            q.done("!a");
            q.done("!b");
            match q.next() {
                Some((_, i)) => rest.push(i),
                None => break,
            }
        }
        assert_eq!(rest, [50, 12, 13]);
    }

    #[test]
    fn the_state_is_bounded_by_what_waits() {
        let mut q = RoomQueues::new(10_000, 8);
        for i in 0..10_000u32 {
            q.push(&format!("!r{}", i % 97), i);
        }
        let mut served = 0;
        while served < 10_000 {
            let batch = take(&mut q);
            assert!(!batch.is_empty() && batch.len() <= 8);
            for (room, _) in batch {
                served += 1;
                q.done(&room);
            }
        }
        assert!(q.next().is_none());
        assert!(q.queues.is_empty() && q.ready.is_empty() && q.busy.is_empty());
    }

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
}
