//! Per-sender rate limits on what enters the gateway.
//!
//! One token bucket per (network, sender, kind of event): `burst` events at once, then
//! `per_minute` a minute. An event over the limit is dropped before it is routed (the caller
//! acknowledges it as handled, so no network retries it), counted, and logged once per burst:
//! the first drop says the sender is being limited, the next event that passes says how many
//! were dropped meanwhile.
//!
//! Backlog is not limited: an event stamped more than [`BACKLOG_AGE`] before now is one a
//! server kept and replays (an XMPP archive, an IRC history replay, a Matrix transaction
//! retried after the gateway was down); it was paced as it was said, and limiting it here
//! would lose what the delivery guarantees promise. Only a homeserver can stamp a Matrix
//! event, and the XMPP adapter stamps live messages itself.
//!
//! Nor are replays of events already taken, nor events in rooms linked to nothing: the route
//! loop settles the first before it asks the limiter and skips the limiter for the second
//! (`Loop::admit`), so only what crosses spends a sender's allowance. What the limit drops
//! is recorded with no targets, so that once it is old enough to pass as backlog a replay
//! of it is a duplicate and does not cross late.
//!
//! The buckets live in an LRU map of [`MAX_SENDERS`] entries: a sender evicted (the least
//! recently seen) starts again with a full bucket, which is all it would have after a pause.

use junction_core::{Event, EventKind, NetworkId, UserRef};
use lru::LruCache;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// Most senders whose buckets are kept.
pub const MAX_SENDERS: NonZeroUsize = match NonZeroUsize::new(10_000) {
    Some(n) => n,
    None => panic!("a nonzero constant"),
};

/// Events older than this (by their own timestamp) are backlog and pass unlimited.
pub const BACKLOG_AGE: Duration = Duration::from_secs(120);

/// Default `[gateway] rate_per_minute`.
pub const DEFAULT_PER_MINUTE: u32 = 60;
/// Default `[gateway] rate_burst`.
pub const DEFAULT_BURST: u32 = 40;

/// The limit per sender and kind of event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Events a minute once the burst is spent; 0 turns the limit off.
    pub per_minute: u32,
    /// Events that may come at once.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            per_minute: DEFAULT_PER_MINUTE,
            burst: DEFAULT_BURST,
        }
    }
}

/// Everything `[gateway]` bounds about inbound events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// The per-sender rate limit.
    pub rate: RateLimit,
    /// The fan-out caps.
    pub caps: junction_core::limits::FanoutCaps,
}

/// What a limit counts: each kind has its own bucket per sender.
pub fn kind_of(kind: &EventKind) -> &'static str {
    match kind {
        EventKind::React { .. } | EventKind::Unreact { .. } => "reaction",
        EventKind::Join | EventKind::Leave { .. } => "join",
        EventKind::NickChange { .. } => "nick",
        _ => "message",
    }
}

struct Bucket {
    tokens: Tokens,
    /// Dropped since the last event that passed.
    dropped: u64,
}

/// The level of one token bucket: at most `burst` tokens, refilled at `per_second`.
#[derive(Debug)]
pub(crate) struct Tokens {
    level: f64,
    last: Instant,
}

impl Tokens {
    /// A full bucket.
    pub(crate) fn full(burst: f64, now: Instant) -> Self {
        Tokens {
            level: burst,
            last: now,
        }
    }

    /// The level at `now`, nothing taken.
    pub(crate) fn level_at(&self, now: Instant, per_second: f64, burst: f64) -> f64 {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        (self.level + elapsed * per_second).min(burst)
    }

    /// Refills up to `now`, then takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant, per_second: f64, burst: f64) -> bool {
        self.level = self.level_at(now, per_second, burst);
        self.last = now;
        if self.level >= 1.0 {
            self.level -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What to do with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Route it.
    Pass,
    /// Drop it; `first` when it is the first drop of this burst (log it).
    Drop {
        /// The first drop since the sender's last event that passed.
        first: bool,
    },
    /// Route it; this many of the sender's events were dropped before it.
    PassAfter(u64),
}

/// The buckets of every sender seen lately.
pub struct Limiter {
    limit: RateLimit,
    buckets: LruCache<(NetworkId, UserRef, &'static str), Bucket>,
}

impl Limiter {
    /// A limiter with no sender seen yet.
    pub fn new(limit: RateLimit) -> Self {
        Self::with_capacity(limit, MAX_SENDERS)
    }

    /// A limiter keeping at most `senders` buckets.
    pub fn with_capacity(limit: RateLimit, senders: NonZeroUsize) -> Self {
        Self {
            limit,
            buckets: LruCache::new(senders),
        }
    }

    /// How many buckets are kept.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True when no bucket is kept.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Whether [`Limiter::check`] would count `ev` at wall clock `now_ms`: the limit is on
    /// and `ev` is live, not backlog.
    pub fn counts(&self, ev: &Event, now_ms: u64) -> bool {
        self.limit.per_minute != 0
            && ev.ts_ms.saturating_add(BACKLOG_AGE.as_millis() as u64) >= now_ms
    }

    /// Takes a token for `ev` at `now` (wall clock `now_ms`, to tell backlog from live).
    pub fn check(&mut self, ev: &Event, now: Instant, now_ms: u64) -> Verdict {
        if !self.counts(ev, now_ms) {
            return Verdict::Pass;
        }
        let burst = f64::from(self.limit.burst.max(1));
        let rate = f64::from(self.limit.per_minute) / 60.0;
        let key = (
            ev.origin.network.clone(),
            ev.sender.user.clone(),
            kind_of(&ev.kind),
        );
        let b = self.buckets.get_or_insert_mut(key, || Bucket {
            tokens: Tokens::full(burst, now),
            dropped: 0,
        });
        if b.tokens.take(now, rate, burst) {
            match std::mem::take(&mut b.dropped) {
                0 => Verdict::Pass,
                n => Verdict::PassAfter(n),
            }
        } else {
            b.dropped += 1;
            Verdict::Drop {
                first: b.dropped == 1,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::{Message, MessageId, RoomRef, Sender};

    fn said(who: &str, ts_ms: u64) -> Event {
        Event::new(
            RoomRef::new("irc:local", "#lobby"),
            MessageId::new(format!("{who}{ts_ms}")),
            Sender::new(UserRef::new("irc:local", who), who),
            ts_ms,
            EventKind::Message(Message::default()),
        )
    }

    #[test]
    fn a_flood_is_cut_to_the_burst_then_the_rate() {
        let mut l = Limiter::new(RateLimit {
            per_minute: 60,
            burst: 5,
        });
        let t0 = Instant::now();
        let now_ms = 1_000_000;
        let verdicts: Vec<Verdict> = (0..300)
            .map(|_| l.check(&said("mallory", now_ms), t0, now_ms))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Pass).count(), 5);
        let firsts = verdicts
            .iter()
            .filter(|v| **v == Verdict::Drop { first: true })
            .count();
        assert_eq!(firsts, 1, "logged once per burst");
        // Someone else is not affected.
        assert_eq!(l.check(&said("alice", now_ms), t0, now_ms), Verdict::Pass);
        // One second later one more token is there, and the drops are reported once.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            l.check(&said("mallory", now_ms), t1, now_ms),
            Verdict::PassAfter(295)
        );
        assert!(matches!(
            l.check(&said("mallory", now_ms), t1, now_ms),
            Verdict::Drop { first: true }
        ));
        // Backlog replayed by a server passes.
        let old = now_ms - BACKLOG_AGE.as_millis() as u64 - 1;
        assert_eq!(l.check(&said("mallory", old), t1, now_ms), Verdict::Pass);
    }

    #[test]
    fn the_sender_map_stays_bounded() {
        let cap = NonZeroUsize::new(100).expect("nonzero");
        let mut l = Limiter::with_capacity(RateLimit::default(), cap);
        let t0 = Instant::now();
        for i in 0..10_000 {
            l.check(&said(&format!("u{i}"), 5_000), t0, 5_000);
            assert!(l.len() <= 100);
        }
        assert_eq!(l.len(), 100);
    }

    #[test]
    fn zero_turns_it_off() {
        let mut l = Limiter::new(RateLimit {
            per_minute: 0,
            burst: 1,
        });
        let t0 = Instant::now();
        for _ in 0..1000 {
            assert_eq!(l.check(&said("a", 5), t0, 5), Verdict::Pass);
        }
        assert!(l.is_empty());
    }
}
