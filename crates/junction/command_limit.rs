//! Per-sender limits on admin commands: anyone on any network can type to the gateway's own
//! identity, so a person who is not an admin gets a small token bucket
//! ([`COMMAND_BURST`] commands at once, then one every [`COMMAND_REFILL`]). Over it, a
//! command is ignored (no answer, nothing run), counted, and logged once per burst.
//!
//! The buckets are kept for at most [`MAX_SENDERS`] senders; when that many are flooding
//! at once, a new sender is limited from their first command until buckets refill (admins
//! are never limited, so they keep their command line).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Commands a sender may send at once.
pub const COMMAND_BURST: u32 = 10;
/// One more command is allowed this long after the last.
pub const COMMAND_REFILL: Duration = Duration::from_secs(2);
/// Most senders whose buckets are kept.
pub const MAX_SENDERS: usize = 4096;

/// Command text kept in the audit trail and the log, in characters; longer text is cut.
pub const LOGGED_COMMAND_CHARS: usize = 200;

/// One sender's bucket.
#[derive(Debug)]
struct Bucket {
    tokens: crate::ratelimit::Tokens,
    /// Commands ignored since the sender was last let through.
    ignored: u64,
}

/// What [`CommandLimiter::check`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Run the command.
    Allowed,
    /// Ignore it; `first` is true for the first one ignored in this burst (log it).
    Limited {
        /// The first command ignored since the sender was last let through.
        first: bool,
    },
}

/// Token buckets per sender.
#[derive(Debug, Default)]
pub struct CommandLimiter {
    buckets: HashMap<String, Bucket>,
}

impl CommandLimiter {
    /// Takes a token of `sender`'s bucket at `now`. When a sender is let through after some
    /// of their commands were ignored, that count is logged.
    pub fn check(&mut self, sender: &str, now: Instant) -> Verdict {
        let rate = 1.0 / COMMAND_REFILL.as_secs_f64();
        let burst = f64::from(COMMAND_BURST);
        if !self.buckets.contains_key(sender) && self.buckets.len() >= MAX_SENDERS {
            // Forget the senders whose buckets are full again (idle ones).
            self.buckets
                .retain(|_, b| b.tokens.level_at(now, rate, burst) < burst);
            if self.buckets.len() >= MAX_SENDERS {
                return Verdict::Limited { first: false };
            }
        }
        let b = self
            .buckets
            .entry(sender.to_owned())
            .or_insert_with(|| Bucket {
                tokens: crate::ratelimit::Tokens::full(burst, now),
                ignored: 0,
            });
        if b.tokens.take(now, rate, burst) {
            if b.ignored > 0 {
                tracing::info!(
                    sender,
                    ignored = b.ignored,
                    "Commands from this sender were ignored over the rate limit."
                );
                b.ignored = 0;
            }
            Verdict::Allowed
        } else {
            b.ignored += 1;
            Verdict::Limited {
                first: b.ignored == 1,
            }
        }
    }

    /// How many senders have a bucket.
    pub fn senders(&self) -> usize {
        self.buckets.len()
    }
}

/// `text` cut to [`LOGGED_COMMAND_CHARS`] characters (with `…` when cut), for the audit
/// trail and the log.
pub fn logged_text(text: &str) -> String {
    match text.char_indices().nth(LOGGED_COMMAND_CHARS) {
        Some((i, _)) => format!("{}…", &text[..i]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_one_per_refill_then_logged_once() {
        let mut l = CommandLimiter::default();
        let t0 = Instant::now();
        for _ in 0..COMMAND_BURST {
            assert_eq!(l.check("irc:local/eve", t0), Verdict::Allowed);
        }
        assert_eq!(
            l.check("irc:local/eve", t0),
            Verdict::Limited { first: true }
        );
        for _ in 0..200 {
            assert_eq!(
                l.check("irc:local/eve", t0),
                Verdict::Limited { first: false }
            );
        }
        // Someone else is not affected.
        assert_eq!(l.check("irc:local/bob", t0), Verdict::Allowed);
        // One refill later, one more.
        let t1 = t0 + COMMAND_REFILL;
        assert_eq!(l.check("irc:local/eve", t1), Verdict::Allowed);
        assert_eq!(
            l.check("irc:local/eve", t1),
            Verdict::Limited { first: true }
        );
    }

    #[test]
    fn the_map_of_senders_is_bounded() {
        let mut l = CommandLimiter::default();
        let t0 = Instant::now();
        for i in 0..MAX_SENDERS {
            for _ in 0..COMMAND_BURST {
                l.check(&format!("s{i}"), t0);
            }
        }
        assert_eq!(l.senders(), MAX_SENDERS);
        // All of them still flooding: a newcomer waits.
        assert!(matches!(l.check("new", t0), Verdict::Limited { .. }));
        assert_eq!(l.senders(), MAX_SENDERS);
        // Once the buckets are full again, the idle senders are forgotten.
        let later = t0 + COMMAND_REFILL * (COMMAND_BURST + 1);
        assert_eq!(l.check("new", later), Verdict::Allowed);
        assert_eq!(l.senders(), 1);
    }

    #[test]
    fn logged_text_is_cut() {
        assert_eq!(logged_text("status"), "status");
        let long = "é".repeat(500);
        let cut = logged_text(&long);
        assert_eq!(cut.chars().count(), LOGGED_COMMAND_CHARS + 1);
        assert!(cut.ends_with('…'));
    }
}
