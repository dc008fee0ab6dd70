//! Deliveries per room and locks per name.
//!
//! Each target room has its own ordered queue ([`junction_core::queue::KeyedQueues`]): a
//! room is served one delivery at a time, so its order is kept exactly, and up to
//! [`crate::MAX_ROOMS_AT_ONCE`] rooms at once, so one slow delivery (an attachment fetched
//! from a server that answers slowly, a room whose sends fail for now and are retried with
//! backoff) holds back only its own room. A room's queue holds at most
//! [`crate::MAX_QUEUED_PER_ROOM`] of what people said; moderation and the gateway's own
//! words are queued past it.

pub(crate) use junction_core::queue::{KeyedQueues as RoomQueues, Push};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
