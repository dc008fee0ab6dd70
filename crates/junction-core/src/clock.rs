//! The wall clock and retry pacing, shared by the gateway and every adapter.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (0 if the clock is set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The delay before retry `attempt` (0-based): `first`, doubled at each attempt up to `max`,
/// then moved by up to ±25 % at random, so that many connections cut at once do not all come
/// back at the same instant.
pub fn backoff(attempt: u32, first: Duration, max: Duration) -> Duration {
    let first = u64::try_from(first.as_millis()).unwrap_or(u64::MAX).max(1);
    let max = u64::try_from(max.as_millis()).unwrap_or(u64::MAX);
    let base = first.saturating_mul(1u64 << attempt.min(20)).min(max);
    let jitter = fastrand::u64(0..=base / 2);
    Duration::from_millis(base - base / 4 + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_its_jitter_and_stops_at_the_cap() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(300));
        for _ in 0..100 {
            let d0 = backoff(0, first, max);
            assert!(d0 >= Duration::from_millis(750) && d0 <= Duration::from_millis(1250));
            let d3 = backoff(3, first, max);
            assert!(d3 >= Duration::from_millis(6000) && d3 <= Duration::from_millis(10_000));
            assert!(backoff(40, first, max) <= Duration::from_secs(375));
            assert!(backoff(u32::MAX, first, max) >= Duration::from_secs(225));
        }
    }

    #[test]
    fn now_is_after_the_year_2020() {
        assert!(now_ms() > 1_577_836_800_000);
    }
}
