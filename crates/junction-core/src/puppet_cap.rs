//! How many puppets an adapter keeps in rooms, and which one makes way.
//!
//! Every remote person a network shows as themself costs that network something: a Matrix
//! ghost is a homeserver account plus a room membership, an XMPP puppet an occupant the MUC
//! keeps. [`PuppetCap`] bounds them per adapter and tracks when each last did something, so
//! the adapter can also let idle ones leave.
//!
//! The policy follows matrix-appservice-irc's `maxClients`: when the cap is reached, the
//! least recently active puppet makes way, and when none may, the newcomer gets no puppet and
//! its message is said by the gateway's own identity instead. Two refinements keep a flood
//! of joins under new names from pushing out the people who talk:
//!
//! - a *join* only takes a free slot; it never makes anyone leave (someone who only joined
//!   gets their puppet once they speak);
//! - a puppet that never spoke goes first; one that spoke makes way only after
//!   [`PuppetCap::EVICT_AFTER_MS`] of silence, so nobody in the middle of a conversation is
//!   removed.
//!
//! No clock here: callers pass the time in milliseconds. The slots are scanned linearly to
//! find the one to remove; caps are a few hundred, and eviction happens only when full.

use std::collections::HashMap;
use std::hash::Hash;

/// The lifecycle bounds of one network's puppets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PuppetLimits {
    /// Most puppets in rooms at once (a puppet in two rooms counts twice).
    pub max: usize,
    /// A puppet that did nothing for this long leaves (milliseconds; 0: never).
    pub idle_timeout_ms: u64,
}

impl PuppetLimits {
    /// The default cap of Matrix ghosts and XMPP occupants in rooms.
    pub const DEFAULT_MAX: usize = 200;
    /// The default idle time before a puppet leaves: a day, as IRC puppets.
    pub const DEFAULT_IDLE_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
}

impl Default for PuppetLimits {
    fn default() -> Self {
        Self {
            max: Self::DEFAULT_MAX,
            idle_timeout_ms: Self::DEFAULT_IDLE_TIMEOUT_MS,
        }
    }
}

/// What [`PuppetCap::admit`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Admit<K> {
    /// The puppet is already in (its activity was noted).
    Present,
    /// A free slot: the puppet may join.
    Free,
    /// The puppet may join once this one has left (its slot is already taken over).
    Evict(K),
    /// No slot: the puppet does not join.
    Refused,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    last_active: u64,
    spoke: bool,
}

/// The puppets of one adapter in rooms, keyed by whatever names one (e.g. room and puppet).
#[derive(Debug)]
pub struct PuppetCap<K> {
    limits: PuppetLimits,
    slots: HashMap<K, Slot>,
    /// When a refusal was last said loudly (see [`PuppetCap::warn_now`]).
    warned_at: Option<u64>,
}

impl<K: Eq + Hash + Clone> PuppetCap<K> {
    /// A puppet that spoke makes way for a newcomer only after this long without activity.
    pub const EVICT_AFTER_MS: u64 = 5 * 60 * 1000;

    /// An empty cap.
    pub fn new(limits: PuppetLimits) -> Self {
        Self {
            limits,
            slots: HashMap::new(),
            warned_at: None,
        }
    }

    /// Refusals are worth a warning at most this often (a flood would fill the log).
    pub const WARN_EVERY_MS: u64 = 60 * 1000;

    /// True when a refusal at `now` should be logged as a warning: the first one, then at
    /// most one per [`Self::WARN_EVERY_MS`] (the others are counted only).
    pub fn warn_now(&mut self, now: u64) -> bool {
        let due = self
            .warned_at
            .is_none_or(|t| now.saturating_sub(t) >= Self::WARN_EVERY_MS);
        if due {
            self.warned_at = Some(now);
        }
        due
    }

    /// The bounds in force.
    pub fn limits(&self) -> PuppetLimits {
        self.limits
    }

    /// How many puppets are in.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when no puppet is in.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// True when the puppet is in.
    pub fn contains(&self, key: &K) -> bool {
        self.slots.contains_key(key)
    }

    /// A puppet wants to be in at `now`, to speak (`speaks`) or only because its person
    /// joined. Notes its activity when it is in already or gets a slot.
    pub fn admit(&mut self, key: &K, now: u64, speaks: bool) -> Admit<K> {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.last_active = slot.last_active.max(now);
            slot.spoke |= speaks;
            return Admit::Present;
        }
        let slot = Slot {
            last_active: now,
            spoke: speaks,
        };
        if self.slots.len() < self.limits.max {
            self.slots.insert(key.clone(), slot);
            return Admit::Free;
        }
        if !speaks {
            return Admit::Refused;
        }
        let Some(victim) = self.victim(now) else {
            return Admit::Refused;
        };
        self.slots.remove(&victim);
        self.slots.insert(key.clone(), slot);
        Admit::Evict(victim)
    }

    /// Notes activity of a puppet that is in (a speaking puppet counts as a talker from now
    /// on); nothing when it is not.
    pub fn touch(&mut self, key: &K, now: u64, speaks: bool) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.last_active = slot.last_active.max(now);
            slot.spoke |= speaks;
        }
    }

    /// The puppet left (or was removed); true when it was in.
    pub fn remove(&mut self, key: &K) -> bool {
        self.slots.remove(key).is_some()
    }

    /// Takes out and returns the puppets idle for at least the idle timeout at `now`.
    pub fn take_idle(&mut self, now: u64) -> Vec<K> {
        let timeout = self.limits.idle_timeout_ms;
        if timeout == 0 {
            return Vec::new();
        }
        let idle: Vec<K> = self
            .slots
            .iter()
            .filter(|(_, s)| now.saturating_sub(s.last_active) >= timeout)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &idle {
            self.slots.remove(k);
        }
        idle
    }

    /// The puppet to make way: the least recently active one that never spoke, else the
    /// least recently active talker silent for [`Self::EVICT_AFTER_MS`].
    fn victim(&self, now: u64) -> Option<K> {
        let lurker = self
            .slots
            .iter()
            .filter(|(_, s)| !s.spoke)
            .min_by_key(|(_, s)| s.last_active);
        let talker = || {
            self.slots
                .iter()
                .filter(|(_, s)| now.saturating_sub(s.last_active) >= Self::EVICT_AFTER_MS)
                .min_by_key(|(_, s)| s.last_active)
        };
        lurker.or_else(talker).map(|(k, _)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_warn_once_a_minute() {
        let mut cap: PuppetCap<u32> = PuppetCap::new(PuppetLimits {
            max: 0,
            idle_timeout_ms: 0,
        });
        assert!(cap.warn_now(1_000));
        assert!(!cap.warn_now(2_000));
        assert!(!cap.warn_now(60_999));
        assert!(cap.warn_now(61_000));
    }

    fn cap(max: usize) -> PuppetCap<u32> {
        PuppetCap::new(PuppetLimits {
            max,
            idle_timeout_ms: 1_000,
        })
    }

    #[test]
    fn joins_fill_free_slots_only_and_never_push_anyone_out() {
        let mut c = cap(3);
        for k in 0..3 {
            assert_eq!(c.admit(&k, 10, false), Admit::Free);
        }
        for k in 3..1_000 {
            assert_eq!(c.admit(&k, 20 + u64::from(k), false), Admit::Refused);
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.admit(&1, 30, false), Admit::Present);
    }

    #[test]
    fn a_speaker_takes_the_place_of_the_oldest_lurker_then_of_an_idle_talker() {
        let mut c = cap(2);
        assert_eq!(c.admit(&1, 10, true), Admit::Free);
        assert_eq!(c.admit(&2, 20, false), Admit::Free);
        // The lurker goes first, even though the talker was active earlier.
        assert_eq!(c.admit(&3, 30, true), Admit::Evict(2));
        // Two talkers, both recently active: the next one is refused.
        assert_eq!(c.admit(&4, 40, true), Admit::Refused);
        assert_eq!(c.len(), 2);
        // Later, the least recently active talker (1) makes way.
        let later = 30 + PuppetCap::<u32>::EVICT_AFTER_MS;
        c.touch(&3, later - 1, true);
        assert_eq!(c.admit(&4, later, true), Admit::Evict(1));
        assert!(c.contains(&3) && c.contains(&4) && !c.contains(&1));
    }

    #[test]
    fn idle_puppets_are_taken_out() {
        let mut c = cap(10);
        c.admit(&1, 0, true);
        c.admit(&2, 0, false);
        c.admit(&3, 500, false);
        c.touch(&1, 900, true);
        assert_eq!(c.take_idle(999), Vec::<u32>::new());
        let mut idle = c.take_idle(1_200);
        idle.sort_unstable();
        assert_eq!(idle, vec![2]);
        assert_eq!(c.len(), 2);
        assert!(c.remove(&1));
        assert!(!c.remove(&1));
        let never = PuppetLimits {
            max: 1,
            idle_timeout_ms: 0,
        };
        let mut c = PuppetCap::new(never);
        c.admit(&1, 0, true);
        assert!(c.take_idle(u64::MAX).is_empty());
    }

    #[test]
    fn a_cap_of_zero_admits_nobody() {
        let mut c = cap(0);
        assert_eq!(c.admit(&1, 0, true), Admit::Refused);
        assert!(c.is_empty());
    }
}
