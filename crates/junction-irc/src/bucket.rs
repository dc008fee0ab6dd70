//! Flood control: a token bucket per connection. A line never gets dropped; it waits.

use std::time::Duration;
use tokio::time::Instant;

/// Token bucket: `burst` lines at once, then `rate` lines per second.
#[derive(Debug)]
pub struct Bucket {
    tokens: f64,
    burst: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(burst: u32, rate: f64) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            tokens: burst,
            burst,
            rate: if rate > 0.0 { rate } else { 1.0 },
            last: Instant::now(),
        }
    }

    /// How long to wait before one more line may go (zero when a token is there); takes the
    /// token.
    pub fn take(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// How long from `now` until the bucket holds `need` tokens (capped at the burst); zero
    /// when it already does. Takes nothing.
    pub fn ready_in(&self, now: Instant, need: f64) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let need = need.min(self.burst);
        if tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - tokens) / self.rate)
        }
    }

    /// Waits until a line may go.
    pub async fn wait(&mut self) {
        let d = self.take(Instant::now());
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(3, 2.0);
        for _ in 0..3 {
            assert_eq!(b.take(t0), Duration::ZERO);
        }
        assert_eq!(b.take(t0), Duration::from_millis(500));
        assert_eq!(b.take(t0), Duration::from_millis(1000));
        assert_eq!(b.ready_in(t0, 1.0), Duration::from_millis(1500));
        // After two seconds the debt is paid and one token is back.
        assert_eq!(
            b.take(t0 + Duration::from_secs(2)),
            Duration::from_millis(0)
        );
    }
}
