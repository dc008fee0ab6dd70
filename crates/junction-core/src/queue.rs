//! Items waiting per key (a channel, a room), served in turn, each key's queue bounded.
//!
//! One queue for everything lets one busy or flooded room hold every other room back behind
//! its whole backlog. Here each key has its own ordered queue; a key is served one item at
//! a time (so its order is kept exactly: edits, replies and redactions rely on it), up to
//! `max_busy` keys at once, and keys with something waiting take turns (round robin), so an
//! item for a quiet key waits for at most one item of each busy key ahead of it. The IRC
//! bot serves one channel at a time ([`KeyedQueues::pop`]); the Matrix adapter several rooms
//! at once ([`KeyedQueues::start_next`] and [`KeyedQueues::done`]). A caller may serve more
//! of a busy key's items beside the first ([`KeyedQueues::start_more`]) when it knows their
//! order does not matter (the Matrix adapter's `parallel_senders`).
//!
//! A key's queue holds at most `cap` items: one more is handed back (the caller gives it
//! up), and the refusals of a burst are reported once. What must not be lost to a flood
//! (moderation, the gateway's own words) is queued past the cap with
//! [`KeyedQueues::push_always`].
//!
//! Written here because it is a few lines over `VecDeque` and `HashMap`: the queue crates
//! found (priority or multi-producer queues) do neither per-key serial service nor per-key
//! bounds.

use std::collections::{HashMap, VecDeque};

/// What [`KeyedQueues::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Push<T> {
    /// Queued.
    Queued,
    /// Queued; this many items for the key were refused since the last one queued there
    /// (the burst is over: report it).
    QueuedAfter(u64),
    /// The key's queue is full: the item is handed back. `first` when it is the first
    /// refusal since an item for the key was last queued (report it).
    Full {
        /// The item refused.
        item: T,
        /// The first refusal of this burst.
        first: bool,
    },
}

/// Items waiting per key; a key is served one item at a time, at most `max_busy` keys
/// at once.
#[derive(Debug)]
pub struct KeyedQueues<T> {
    queues: HashMap<String, VecDeque<T>>,
    /// Keys with items being served (taken by [`KeyedQueues::start_next`] or
    /// [`KeyedQueues::start_more`], not yet [`KeyedQueues::done`]), and how many.
    busy: HashMap<String, usize>,
    /// Keys with something waiting and nothing being served, in the order of their turns.
    ready: VecDeque<String>,
    cap: usize,
    max_busy: usize,
    /// Key → items refused since one was last queued there.
    refused: HashMap<String, u64>,
    /// Items waiting in all keys.
    len: usize,
}

impl<T> KeyedQueues<T> {
    /// Empty queues holding at most `cap` items per key, serving at most `max_busy` keys
    /// at once (at least one).
    pub fn new(cap: usize, max_busy: usize) -> Self {
        Self {
            queues: HashMap::new(),
            busy: HashMap::new(),
            ready: VecDeque::new(),
            cap,
            max_busy: max_busy.max(1),
            refused: HashMap::new(),
            len: 0,
        }
    }

    /// Queues `item` for `key` unless that key has `cap` items waiting already.
    pub fn push(&mut self, key: &str, item: T) -> Push<T> {
        if self.waiting(key) >= self.cap {
            let n = self.refused.entry(key.to_owned()).or_default();
            *n += 1;
            return Push::Full {
                item,
                first: *n == 1,
            };
        }
        self.push_always(key, item);
        match self.refused.remove(key) {
            Some(n) => Push::QueuedAfter(n),
            None => Push::Queued,
        }
    }

    /// Queues `item` for `key` whatever the key has waiting.
    pub fn push_always(&mut self, key: &str, item: T) {
        match self.queues.get_mut(key) {
            Some(q) => q.push_back(item),
            None => {
                self.queues.insert(key.to_owned(), VecDeque::from([item]));
                if !self.busy.contains_key(key) {
                    self.ready.push_back(key.to_owned());
                }
            }
        }
        self.len += 1;
    }

    /// The next item to serve, with its key: the oldest of the key whose turn it is, when
    /// fewer than `max_busy` keys are being served. The key is busy until
    /// [`KeyedQueues::done`].
    pub fn start_next(&mut self) -> Option<(String, T)> {
        if self.busy.len() >= self.max_busy {
            return None;
        }
        let key = self.ready.pop_front()?;
        let q = self.queues.get_mut(&key)?;
        let item = q.pop_front()?;
        if q.is_empty() {
            self.queues.remove(&key);
        }
        self.len -= 1;
        self.busy.insert(key.clone(), 1);
        Some((key, item))
    }

    /// The next item of `key`, served beside the ones of it already being served, when
    /// `key` is busy and `admit` accepts its oldest item; None otherwise. Each item taken
    /// needs its own [`KeyedQueues::done`].
    pub fn start_more(&mut self, key: &str, admit: impl FnOnce(&T) -> bool) -> Option<T> {
        let serving = self.busy.get_mut(key)?;
        let q = self.queues.get_mut(key)?;
        if !admit(q.front()?) {
            return None;
        }
        let item = q.pop_front()?;
        if q.is_empty() {
            self.queues.remove(key);
        }
        *serving += 1;
        self.len -= 1;
        Some(item)
    }

    /// The next item of the key whose turn it is, served at once (for a caller serving one
    /// key at a time): that key's next turn comes after every other key's.
    pub fn pop(&mut self) -> Option<T> {
        let (key, item) = self.start_next()?;
        self.done(&key);
        Some(item)
    }

    /// An item of `key` taken by [`KeyedQueues::start_next`] or [`KeyedQueues::start_more`]
    /// is served. Once none of the key's is, its next item (if any) waits for its turn after
    /// the keys already waiting.
    pub fn done(&mut self, key: &str) {
        let Some(serving) = self.busy.get_mut(key) else {
            return;
        };
        *serving -= 1;
        if *serving == 0 {
            self.busy.remove(key);
            if self.queues.contains_key(key) {
                self.ready.push_back(key.to_owned());
            }
        }
    }

    /// Items waiting (not being served) for `key`.
    pub fn waiting(&self, key: &str) -> usize {
        self.queues.get(key).map_or(0, VecDeque::len)
    }

    /// Keys being served.
    pub fn busy(&self) -> usize {
        self.busy.len()
    }

    /// Items waiting in all keys.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Drains whatever may be served now.
    fn take<T>(q: &mut KeyedQueues<T>) -> Vec<(String, T)> {
        std::iter::from_fn(|| q.start_next()).collect()
    }

    #[test]
    fn a_room_is_served_one_item_at_a_time_in_order() {
        let mut q = KeyedQueues::new(100, 8);
        for i in 0..5 {
            assert_eq!(q.push("!a", i), Push::Queued);
        }
        assert_eq!(take(&mut q), [("!a".to_string(), 0)]);
        // Nothing more of the room while its item is being served.
        assert!(q.start_next().is_none());
        assert_eq!(q.waiting("!a"), 4);
        for i in 1..5 {
            q.done("!a");
            assert_eq!(take(&mut q), [("!a".to_string(), i)]);
        }
        q.done("!a");
        assert!(q.start_next().is_none());
        assert_eq!(q.busy(), 0);
    }

    #[test]
    fn more_of_a_busy_key_only_when_admitted_and_the_key_waits_for_all_of_them() {
        let mut q = KeyedQueues::new(100, 8);
        for i in 0..4 {
            q.push("!a", i);
        }
        // Not busy yet: nothing is served beside.
        assert!(q.start_more("!a", |_| true).is_none());
        assert_eq!(take(&mut q), [("!a".to_string(), 0)]);
        assert_eq!(q.start_more("!a", |&i| i == 1), Some(1));
        // Refused: it stays first in line.
        assert!(q.start_more("!a", |&i| i == 1).is_none());
        assert_eq!(q.waiting("!a"), 2);
        // One of two done: the key is still busy.
        q.done("!a");
        assert!(q.start_next().is_none());
        q.done("!a");
        assert_eq!(take(&mut q), [("!a".to_string(), 2)]);
        assert_eq!(q.start_more("!a", |_| true), Some(3));
        assert_eq!(q.len(), 0);
        q.done("!a");
        q.done("!a");
        assert_eq!(q.busy(), 0);
        assert!(q.queues.is_empty() && q.ready.is_empty() && q.busy.is_empty());
    }

    #[test]
    fn a_busy_room_does_not_hold_back_another() {
        let mut q = KeyedQueues::new(100, 8);
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
        let mut q = KeyedQueues::new(100, 2);
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

    /// In `q` (room for 3 a key): items 0 to 9 for `full` (0 to 2 queued, the rest refused,
    /// the first refusal of the burst marked), item 100 for `other` (queued all the same), and
    /// item 50 for `full` past the cap (as moderation goes).
    fn fill_past_the_cap(q: &mut KeyedQueues<i32>, full: &str, other: &str) {
        for i in 0..3 {
            assert_eq!(q.push(full, i), Push::Queued);
        }
        assert_eq!(
            q.push(full, 3),
            Push::Full {
                item: 3,
                first: true
            }
        );
        for i in 4..10 {
            assert_eq!(
                q.push(full, i),
                Push::Full {
                    item: i,
                    first: false
                }
            );
        }
        // Another key is not affected by a full one.
        assert_eq!(q.push(other, 100), Push::Queued);
        // Moderation goes past the cap.
        q.push_always(full, 50);
        assert_eq!(q.waiting(full), 4);
    }

    #[test]
    fn a_full_room_refuses_and_counts_once_per_burst() {
        let mut q = KeyedQueues::new(3, 8);
        fill_past_the_cap(&mut q, "!a", "!b");
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
            match q.start_next() {
                Some((_, i)) => rest.push(i),
                None => break,
            }
        }
        assert_eq!(rest, [50, 12, 13]);
    }

    #[test]
    fn the_state_is_bounded_by_what_waits() {
        let mut q = KeyedQueues::new(10_000, 8);
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
        assert!(q.start_next().is_none());
        assert!(q.queues.is_empty() && q.ready.is_empty() && q.busy.is_empty());
    }

    #[test]
    fn channels_take_turns_and_keep_their_order() {
        let mut q = KeyedQueues::new(1000, 1);
        for i in 0..100 {
            assert_eq!(q.push("#flood", format!("f{i}")), Push::Queued);
        }
        q.push("#quiet", "q0".to_string());
        q.push("#quiet", "q1".to_string());
        q.push_always("#other", "o0".to_string());
        assert_eq!(q.len(), 103);
        let first: Vec<String> = (0..7).filter_map(|_| q.pop()).collect();
        assert_eq!(first, ["f0", "q0", "o0", "f1", "q1", "f2", "f3"]);
        let rest: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest.len(), 96);
        assert!(rest.windows(2).all(|w| {
            let n = |s: &str| s[1..].parse::<u32>().unwrap_or(0);
            n(&w[0]) < n(&w[1])
        }));
        assert!(q.is_empty() && q.pop().is_none());
    }

    #[test]
    fn a_full_channel_refuses_and_counts_once_per_burst() {
        let mut q = KeyedQueues::new(3, 1);
        fill_past_the_cap(&mut q, "#a", "#b");
        assert_eq!(q.pop(), Some(0));
        assert_eq!(q.pop(), Some(100));
        assert_eq!(q.pop(), Some(1));
        assert_eq!(q.pop(), Some(2));
        // Room again: the refusals of the burst are reported with the next one queued.
        assert_eq!(q.push("#a", 11), Push::QueuedAfter(7));
        assert_eq!(q.push("#a", 12), Push::Queued);
        assert_eq!(
            q.push("#a", 13),
            Push::Full {
                item: 13,
                first: true
            }
        );
        assert_eq!(q.len(), 3);
    }

    #[test]
    fn the_work_is_bounded_by_the_items() {
        // Every push and pop touches one channel's queue and the turn list once: popping n
        // items from k channels takes n pops, whatever the mix.
        let mut q = KeyedQueues::new(10_000, 1);
        for i in 0..10_000u32 {
            q.push(&format!("#c{}", i % 97), i);
        }
        let mut pops = 0;
        while q.pop().is_some() {
            pops += 1;
        }
        assert_eq!(pops, 10_000);
        assert!(q.ready.is_empty() && q.queues.is_empty() && q.busy.is_empty());
    }
}
