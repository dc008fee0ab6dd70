//! How far the channels count as read: up to the first line not yet stored.
//!
//! IRC has no acknowledgement: a line the gateway did not store is gone unless the server
//! replays it (InspIRCd `+H` on join, IRCv3 `CHATHISTORY`). The replay asks for what was said
//! since the bot last read the channels, so that time must never pass a line the store has
//! not taken. Each line passed on waits for the gateway's acknowledgement (as a Matrix
//! transaction does); the read time is the time of the oldest line still waiting, or of the
//! first line the store refused (kept until the process ends, so the next start replays it).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::oneshot;

/// Shared between the connection (which passes lines on and notes the read time) and the
/// small tasks that wait for each line's acknowledgement.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReadMark {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    /// Lines passed on and not yet answered: sequence → when the line was said (ms).
    waiting: BTreeMap<u64, u64>,
    /// When the earliest line the store refused was said (ms).
    refused: Option<u64>,
}

impl ReadMark {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Notes a line said at `said_ms`, passed on with `ack`; the line stops holding the read
    /// time back once stored, and holds it for good if the store refuses it (or the gateway
    /// drops it unanswered).
    pub(crate) fn pass(&self, said_ms: u64, ack: oneshot::Receiver<Result<(), String>>) {
        let seq = {
            let mut i = self.lock();
            let seq = i.next;
            i.next += 1;
            i.waiting.insert(seq, said_ms);
            seq
        };
        let mark = self.clone();
        tokio::spawn(async move {
            let stored = matches!(ack.await, Ok(Ok(())));
            mark.answered(seq, stored);
        });
    }

    fn answered(&self, seq: u64, stored: bool) {
        let mut i = self.lock();
        if let Some(said) = i.waiting.remove(&seq) {
            if !stored {
                tracing::warn!(
                    said_ms = said,
                    "An IRC line was not stored; the channels count as read only up to it, so the next start replays it where the server keeps history."
                );
                i.refused = Some(i.refused.map_or(said, |r| r.min(said)));
            }
        }
    }

    /// The time up to which every line is stored: `now_ms`, or earlier while a line waits or
    /// was refused.
    pub(crate) fn read_until(&self, now_ms: u64) -> u64 {
        let i = self.lock();
        i.waiting
            .values()
            .copied()
            .chain(i.refused)
            .fold(now_ms, u64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_read_time_stops_at_the_first_line_not_stored() {
        let mark = ReadMark::default();
        assert_eq!(mark.read_until(1_000), 1_000);
        let (tx1, rx1) = oneshot::channel();
        let (tx2, rx2) = oneshot::channel();
        mark.pass(100, rx1);
        mark.pass(200, rx2);
        assert_eq!(mark.read_until(1_000), 100);
        let _ = tx1.send(Ok(()));
        tokio::task::yield_now().await;
        for _ in 0..100 {
            if mark.read_until(1_000) != 100 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(mark.read_until(1_000), 200);
        let _ = tx2.send(Err("disk full".into()));
        for _ in 0..100 {
            if mark.lock().waiting.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        // Refused: held for good, even once newer lines are stored.
        assert_eq!(mark.read_until(5_000), 200);
        let (tx3, rx3) = oneshot::channel();
        mark.pass(300, rx3);
        drop(tx3);
        for _ in 0..100 {
            if mark.lock().waiting.is_empty() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(mark.read_until(5_000), 200);
    }
}
