//! What an earlier version's layout needs: its message map's keys and values (read,
//! extended and pruned, never rewritten), and the walk removing rows it stored without a time.

use super::*;

pub(super) fn room_key(r: &RoomRef, x: &str) -> Vec<u8> {
    key(&[r.network.as_str(), r.room.as_str(), x])
}

pub(super) fn event_key(e: &EventId, r: &RoomRef) -> Vec<u8> {
    key(&[e.as_str(), r.network.as_str(), r.room.as_str()])
}

/// A room's ids as a `by_event` value: [`COMPACT`], then each id followed by NUL; JSON if
/// an id holds a NUL.
pub(super) fn ids_value(ids: &[MessageId]) -> Result<Vec<u8>> {
    if ids.iter().any(|id| id.as_str().contains('\0')) {
        return serde_json::to_vec(ids).map_err(codec);
    }
    let mut v = vec![COMPACT];
    for id in ids {
        v.extend_from_slice(id.as_str().as_bytes());
        v.push(0);
    }
    Ok(v)
}

/// Reads what [`ids_value`] wrote (or an earlier version's JSON).
pub(super) fn ids_from(v: &[u8]) -> Result<Vec<MessageId>> {
    match v.split_first() {
        Some((&COMPACT, rest)) => Ok(rest
            .split(|b| *b == 0)
            .take(rest.iter().filter(|b| **b == 0).count())
            .map(|id| MessageId::new(String::from_utf8_lossy(id)))
            .collect()),
        _ => serde_json::from_slice(v).map_err(codec),
    }
}

/// Reads a `senders` value: [`COMPACT`], the network, NUL, the user, or an earlier
/// version's JSON.
pub(super) fn user_from(v: &[u8]) -> Result<UserRef> {
    match v.split_first() {
        Some((&COMPACT, rest)) => {
            let mut parts = rest.splitn(2, |b| *b == 0);
            let mut next =
                || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let network = next();
            Ok(UserRef::new(network, next()))
        }
        _ => serde_json::from_slice(v).map_err(codec),
    }
}

/// How far one pass of the legacy prune may go: rows removed so far, the most it may
/// remove, and how many more entries it may look at.
pub(super) struct Budget {
    pub(super) n: usize,
    pub(super) limit: usize,
    pub(super) walked: usize,
}

impl SledStore {
    /// Once the time the store was upgraded at is older than `before_ms`: removes the
    /// message-map rows and transaction keys an earlier version stored without a time, at
    /// most `limit` (and a bounded walk), carrying on where the last call stopped.
    pub(super) fn prune_legacy(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let Some(until) = self.meta.get(LEGACY_UNTIL).map_err(be)? else {
            return Ok(0);
        };
        if stamp(&until).is_some_and(|t| t >= before_ms) || limit == 0 {
            return Ok(0);
        }
        let mut budget = Budget {
            n: 0,
            limit,
            walked: limit.saturating_mul(16),
        };
        let from = self.meta.get(LEGACY_EVENTS).map_err(be)?;
        if from.as_deref() != Some(b"done".as_slice()) {
            let done = self.resume_walk(&self.by_event, LEGACY_EVENTS, &mut budget, |k, _| {
                let id = k.split(|b| *b == 0).next().unwrap_or_default();
                if self.stamps.contains_key(id).map_err(be)? {
                    return Ok(false);
                }
                self.forget_event(&EventId(String::from_utf8_lossy(id).into_owned()))?;
                Ok(true)
            })?;
            if !done {
                return Ok(budget.n);
            }
            self.meta
                .insert(LEGACY_EVENTS, b"done".as_slice())
                .map_err(be)?;
        }
        let done = self.resume_walk(&self.txns, LEGACY_TXNS, &mut budget, |k, v| {
            if !v.is_empty() {
                return Ok(false);
            }
            self.txns.remove(k).map_err(be)?;
            Ok(true)
        })?;
        if !done {
            return Ok(budget.n);
        }
        for k in [LEGACY_UNTIL, LEGACY_EVENTS, LEGACY_TXNS] {
            self.meta.remove(k).map_err(be)?;
        }
        tracing::info!(
            "The message map rows stored without a time by an earlier version are gone."
        );
        Ok(budget.n)
    }

    /// Walks `tree` on from the key kept under `mark` in `meta` (from its start when none),
    /// calling `forget(key, value)` on each entry and counting in `budget` those it says
    /// went. When the count reaches the limit or the walk its length, the next key is kept
    /// under `mark` for the next call and false returned; true once the walk reached the end.
    fn resume_walk(
        &self,
        tree: &sled::Tree,
        mark: &[u8],
        budget: &mut Budget,
        mut forget: impl FnMut(&[u8], &[u8]) -> Result<bool>,
    ) -> Result<bool> {
        let start = self
            .meta
            .get(mark)
            .map_err(be)?
            .map(|f| f.to_vec())
            .unwrap_or_default();
        for r in tree.range(start..) {
            let (k, v) = r.map_err(be)?;
            if budget.n >= budget.limit || budget.walked == 0 {
                self.meta.insert(mark, k.to_vec()).map_err(be)?;
                return Ok(false);
            }
            budget.walked -= 1;
            budget.n += usize::from(forget(&k, &v)?);
        }
        Ok(true)
    }
}
