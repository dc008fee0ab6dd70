//! How far the channels count as read: up to the first line not yet stored.
//!
//! IRC has no acknowledgement: a line the gateway did not store is gone unless the server
//! replays it (InspIRCd `+H` on join, IRCv3 `CHATHISTORY`). The replay asks for what was said
//! since the bot last read the channels, so that time must never pass a line the store has
//! not taken. Each line passed on waits for the gateway's acknowledgement (as a Matrix
//! transaction does); the read time is the time of the oldest line still waiting, or of the
//! first line the store refused (kept until the process ends, so the next start replays it).
//!
//! The read time is kept in the adapter's table [`SEEN`] (one row, [`SEEN_KEY`]: ms since the
//! epoch, 8 bytes big-endian), for the next start's replay and its report of the gap.

use junction_core::AdapterStore;
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

/// The adapter's table of when the bot last read the channels.
pub(crate) const SEEN: &str = "seen";
/// Its one row.
pub(crate) const SEEN_KEY: &str = "bot";
/// Where earlier versions kept it: one table for every IRC network, keyed by network id.
const LEGACY_SEEN: &str = "irc.seen";

/// Moves this network's row of the table earlier versions kept into [`SEEN`] (run at start;
/// a no-op once done). A failure is logged: the next start tries again, and meanwhile the
/// bot counts as never having read the channels.
pub(crate) fn adopt_legacy(store: &dyn AdapterStore) {
    let network = store.network().as_str().to_owned();
    let rekey = |k: &str| (k == network).then(|| SEEN_KEY.to_owned());
    if let Err(e) = store.adopt(LEGACY_SEEN, SEEN, &rekey) {
        tracing::warn!(error = %e, "Could not move when the channels were last read to its new table.");
    }
}

/// When the bot last read the channels (ms since the epoch), if ever.
pub(crate) fn last_read(store: &dyn AdapterStore) -> Option<u64> {
    store
        .get(SEEN, SEEN_KEY)
        .ok()
        .flatten()
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
}

impl ReadMark {
    /// Remembers how far the bot has read the channels (for the gap report and the replay):
    /// `now_ms`, or the time of the first line passed on and not (yet) stored.
    pub(crate) fn save(&self, store: &dyn AdapterStore, now_ms: u64) {
        let until = self.read_until(now_ms);
        if let Err(e) = store.put(SEEN, SEEN_KEY, &until.to_be_bytes()) {
            tracing::debug!(error = %e, "Could not note when the channels were last read.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::NetworkId;
    use junction_store::{MemStore, Store};

    /// The read time earlier versions kept in `irc.seen` (keyed by network id) moves into
    /// each network's own `seen` table at start, once; other networks' rows stay for them.
    #[test]
    fn the_read_time_is_carried_over_from_the_old_table() {
        let raw = Arc::new(MemStore::new());
        raw.kv_put(LEGACY_SEEN, "irc:a", &7u64.to_be_bytes())
            .expect("put");
        raw.kv_put(LEGACY_SEEN, "irc:b", &9u64.to_be_bytes())
            .expect("put");
        let a = junction_store::scoped(raw.clone(), NetworkId::new("irc:a"));
        assert_eq!(last_read(a.as_ref()), None, "not read before adoption");
        adopt_legacy(a.as_ref());
        assert_eq!(last_read(a.as_ref()), Some(7));
        assert_eq!(
            raw.kv_get("irc:a/seen", SEEN_KEY).expect("get"),
            Some(7u64.to_be_bytes().to_vec())
        );
        assert_eq!(
            raw.kv_scan(LEGACY_SEEN).expect("scan"),
            vec![("irc:b".to_owned(), 9u64.to_be_bytes().to_vec())]
        );
        // Again: nothing left to move, and what is there stays.
        adopt_legacy(a.as_ref());
        assert_eq!(last_read(a.as_ref()), Some(7));
        let b = junction_store::scoped(raw.clone(), NetworkId::new("irc:b"));
        adopt_legacy(b.as_ref());
        assert_eq!(last_read(b.as_ref()), Some(9));
        assert!(raw.kv_scan(LEGACY_SEEN).expect("scan").is_empty());
    }

    #[tokio::test]
    async fn the_saved_read_time_is_the_first_line_not_stored() {
        let store = junction_store::scoped(Arc::new(MemStore::new()), NetworkId::new("irc:a"));
        let mark = ReadMark::default();
        mark.save(store.as_ref(), 1_000);
        assert_eq!(last_read(store.as_ref()), Some(1_000));
        let (_tx, rx) = oneshot::channel();
        mark.pass(400, rx);
        mark.save(store.as_ref(), 2_000);
        assert_eq!(last_read(store.as_ref()), Some(400));
    }

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
