//! The bot's queue of deliveries: one queue per channel, served in turn, each bounded.
//!
//! Everything the bot says, in every linked channel, goes out through its one connection
//! at the flood-control pace. With one queue for all channels a busy or flooded channel held
//! every other channel's lines back behind its whole backlog. Here each channel with
//! something waiting gets one delivery per turn (round robin), so a line for a quiet
//! channel waits for at most one delivery of each other channel, and a channel's queue
//! holds at most `cap` deliveries: one more is refused (the caller gives it up), counted and
//! logged once per burst. Moderation and the gateway's own words may be queued past the cap
//! ([`FairQueue::push_always`]): they are few, and losing them would let a flood hide them.
//!
//! Written here because it is a few lines over `VecDeque` and `HashMap`; the queue crates
//! found (priority or multi-producer queues) do neither per-key round robin nor per-key
//! bounds.

use std::collections::{HashMap, VecDeque};

/// Most deliveries one channel may have waiting for the bot (what people said; moderation
/// and the gateway's own words are not refused).
pub const MAX_QUEUED_PER_CHANNEL: usize = 200;

/// What [`FairQueue::push`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Push<T> {
    /// Queued.
    Queued,
    /// Queued; this many items for the channel were refused since the last one queued (the
    /// burst is over: log it).
    QueuedAfter(u64),
    /// The channel's queue is full: the item is handed back. `first` when it is the first
    /// refusal since an item for the channel was last queued (log it).
    Full {
        /// The item refused.
        item: T,
        /// The first refusal of this burst.
        first: bool,
    },
}

/// Items waiting per channel, served one per channel in turn.
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Channels with something waiting, in the order of their turns.
    turns: VecDeque<String>,
    queues: HashMap<String, VecDeque<T>>,
    cap: usize,
    /// Channel → items refused since one was last queued there.
    refused: HashMap<String, u64>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self::new(MAX_QUEUED_PER_CHANNEL)
    }
}

impl<T> FairQueue<T> {
    /// An empty queue holding at most `cap` items per channel.
    pub fn new(cap: usize) -> Self {
        Self {
            turns: VecDeque::new(),
            queues: HashMap::new(),
            cap,
            refused: HashMap::new(),
            len: 0,
        }
    }

    /// Queues `item` for `channel` unless that channel has `cap` items waiting already.
    pub fn push(&mut self, channel: &str, item: T) -> Push<T> {
        if self.waiting(channel) >= self.cap {
            let n = self.refused.entry(channel.to_owned()).or_default();
            *n += 1;
            return Push::Full {
                item,
                first: *n == 1,
            };
        }
        self.push_always(channel, item);
        match self.refused.remove(channel) {
            Some(n) => Push::QueuedAfter(n),
            None => Push::Queued,
        }
    }

    /// Queues `item` for `channel` whatever the channel has waiting.
    pub fn push_always(&mut self, channel: &str, item: T) {
        match self.queues.get_mut(channel) {
            Some(q) => q.push_back(item),
            None => {
                self.queues
                    .insert(channel.to_owned(), VecDeque::from([item]));
                self.turns.push_back(channel.to_owned());
            }
        }
        self.len += 1;
    }

    /// The next item: the oldest of the channel whose turn it is; that channel's next turn
    /// comes after every other channel's.
    pub fn pop(&mut self) -> Option<T> {
        let channel = self.turns.pop_front()?;
        let q = self.queues.get_mut(&channel)?;
        let item = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&channel);
        } else {
            self.turns.push_back(channel);
        }
        if item.is_some() {
            self.len -= 1;
        }
        item
    }

    /// Items waiting for `channel`.
    pub fn waiting(&self, channel: &str) -> usize {
        self.queues.get(channel).map_or(0, VecDeque::len)
    }

    /// Items waiting in all channels.
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

    #[test]
    fn channels_take_turns_and_keep_their_order() {
        let mut q = FairQueue::new(1000);
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
        let mut q = FairQueue::new(3);
        for i in 0..3 {
            assert_eq!(q.push("#a", i), Push::Queued);
        }
        assert_eq!(
            q.push("#a", 3),
            Push::Full {
                item: 3,
                first: true
            }
        );
        for i in 4..10 {
            assert_eq!(
                q.push("#a", i),
                Push::Full {
                    item: i,
                    first: false
                }
            );
        }
        // Another channel is not affected by a full one.
        assert_eq!(q.push("#b", 100), Push::Queued);
        // Moderation goes past the cap.
        q.push_always("#a", 50);
        assert_eq!(q.waiting("#a"), 4);
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
        let mut q = FairQueue::new(10_000);
        for i in 0..10_000u32 {
            q.push(&format!("#c{}", i % 97), i);
        }
        let mut pops = 0;
        while q.pop().is_some() {
            pops += 1;
        }
        assert_eq!(pops, 10_000);
        assert!(q.turns.is_empty() && q.queues.is_empty());
    }
}
