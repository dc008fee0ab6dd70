//! The membership policy: which membership events (joins, leaves, nick changes) cross networks, per
//! `[gateway] membership`.
//!
//! In the default `summarised` mode someone who only joins is not puppeted on the other
//! networks: their join is held. It is dropped once they speak (their first message makes
//! their puppets join everywhere, just before it), and dropped with their leave if they go
//! without a word. With `[gateway] lurker_window_seconds` set, a join still held after that
//! long is let through (the lurker gets puppets then). A netsplit-style burst of quits is cut
//! after the first few per network. In `all` mode everything crosses at once; in `off` none.

use crate::config::Membership;
use junction_core::{Event, EventId, EventKind, NetworkId, UserRef};
use std::collections::{HashMap, HashSet};

/// Joins held at most at once; past it the oldest is forgotten (that lurker is puppeted
/// only when they speak). Bounds memory under a join flood.
const MAX_HELD: usize = 10_000;

/// People remembered as speakers or as joined, at most; past it those not active within
/// [`Summariser::ACTIVE_MS`] are forgotten.
const MAX_REMEMBERED: usize = 100_000;

/// The membership filter of the route loop.
#[derive(Debug, Default)]
pub(super) struct Summariser {
    /// When each person last spoke (origin timestamps).
    spoke: HashMap<UserRef, u64>,
    /// People whose join was passed (their puppets joined elsewhere), so that their leave
    /// is passed too even if they never spoke: otherwise their puppets would stay.
    joined: HashMap<UserRef, u64>,
    /// Joins held back, by person: the join event and when it was held (gateway clock).
    held: HashMap<UserRef, (Event, u64)>,
    /// Held joins let through by [`Summariser::due`], passed when they come round.
    released: HashSet<EventId>,
    /// Quit bursts per network: window start and count.
    quits: HashMap<NetworkId, (u64, u32)>,
    /// `[gateway] lurker_window_seconds`, in milliseconds.
    window_ms: Option<u64>,
}

impl Summariser {
    /// How long someone counts as "recently active", in milliseconds.
    const ACTIVE_MS: u64 = 24 * 3600 * 1000;
    /// Quits per network in one burst window before the rest are dropped.
    const QUIT_BURST: u32 = 3;
    /// The burst window, in milliseconds.
    const QUIT_WINDOW_MS: u64 = 5_000;

    /// A filter that lets held joins through after `window_ms` (never when `None`).
    pub(super) fn new(window_ms: Option<u64>) -> Self {
        Self {
            window_ms,
            ..Self::default()
        }
    }

    /// Whether `ev` crosses, in `mode`, `now_ms` being the gateway's clock. Every event goes
    /// through here (messages are noted as speech and always pass).
    pub(super) fn pass(&mut self, mode: Membership, ev: &Event, now_ms: u64) -> bool {
        if !ev.kind.is_membership() {
            if matches!(ev.kind, EventKind::Message(_)) {
                self.note_speech(ev);
                // Their message makes their puppets join: the held join is not needed.
                self.held.remove(&ev.sender.user);
            }
            return true;
        }
        match mode {
            Membership::Off => false,
            Membership::All => true,
            Membership::Summarised => self.summarised(ev, now_ms),
        }
    }

    /// Notes that `ev`'s sender spoke at its time (a later time is kept over an earlier
    /// one, so a replayed old message does not make them look quieter). Also called for
    /// replays the loop skips, so a restart's history replay still tells who spoke lately.
    pub(super) fn note_speech(&mut self, ev: &Event) {
        if !matches!(ev.kind, EventKind::Message(_)) {
            return;
        }
        if self.spoke.len() > MAX_REMEMBERED {
            let cutoff = ev.ts_ms.saturating_sub(Self::ACTIVE_MS);
            self.spoke.retain(|_, t| *t >= cutoff);
        }
        let t = self.spoke.entry(ev.sender.user.clone()).or_insert(0);
        *t = (*t).max(ev.ts_ms);
    }

    /// Whether `event` is a held join [`Summariser::due`] let through: it was counted by
    /// the rate limit when it first came.
    pub(super) fn is_released(&self, event: &EventId) -> bool {
        self.released.contains(event)
    }

    fn summarised(&mut self, ev: &Event, now_ms: u64) -> bool {
        if let EventKind::Leave { quit: true, .. } = ev.kind {
            let e = self
                .quits
                .entry(ev.origin.network.clone())
                .or_insert((ev.ts_ms, 0));
            if ev.ts_ms.saturating_sub(e.0) > Self::QUIT_WINDOW_MS {
                *e = (ev.ts_ms, 0);
            }
            e.1 += 1;
            if e.1 > Self::QUIT_BURST {
                self.held.remove(&ev.sender.user);
                return false;
            }
        }
        let user = &ev.sender.user;
        match &ev.kind {
            EventKind::Join if self.released.remove(&ev.id) || self.spoke_recently(ev) => {
                self.remember_join(ev);
                true
            }
            EventKind::Join => {
                if self.held.len() >= MAX_HELD {
                    if let Some(oldest) = self
                        .held
                        .iter()
                        .min_by_key(|(_, (_, at))| *at)
                        .map(|(u, _)| u.clone())
                    {
                        self.held.remove(&oldest);
                    }
                }
                self.held.insert(user.clone(), (ev.clone(), now_ms));
                false
            }
            EventKind::Leave { .. } if self.held.remove(user).is_some() => false,
            EventKind::Leave { .. } if self.joined.remove(user).is_some() => true,
            EventKind::NickChange { new_name } => {
                if let Some((join, _)) = self.held.get_mut(user) {
                    // Still only lurking: when the join goes, it goes under the new name.
                    join.sender.display_name = new_name.clone();
                    return false;
                }
                self.spoke_recently(ev)
            }
            _ => self.spoke_recently(ev),
        }
    }

    fn spoke_recently(&self, ev: &Event) -> bool {
        self.spoke
            .get(&ev.sender.user)
            .is_some_and(|t| ev.ts_ms.saturating_sub(*t) < Self::ACTIVE_MS)
    }

    fn remember_join(&mut self, ev: &Event) {
        if self.joined.len() > MAX_REMEMBERED {
            let cutoff = ev.ts_ms.saturating_sub(Self::ACTIVE_MS);
            self.joined.retain(|_, t| *t >= cutoff);
        }
        self.joined.insert(ev.sender.user.clone(), ev.ts_ms);
    }

    /// Whether joins are held that a window may let through (the loop then calls
    /// [`Summariser::due`] now and then).
    pub(super) fn waiting(&self) -> bool {
        self.window_ms.is_some() && !self.held.is_empty()
    }

    /// The held joins whose window has passed at `now_ms`, taken out of the hold: the loop
    /// routes them, and [`Summariser::pass`] then lets them through.
    pub(super) fn due(&mut self, now_ms: u64) -> Vec<Event> {
        let Some(window) = self.window_ms else {
            return Vec::new();
        };
        let users: Vec<UserRef> = self
            .held
            .iter()
            .filter(|(_, (_, at))| now_ms.saturating_sub(*at) >= window)
            .map(|(u, _)| u.clone())
            .collect();
        let mut out = Vec::with_capacity(users.len());
        for u in users {
            if let Some((ev, _)) = self.held.remove(&u) {
                self.released.insert(ev.id.clone());
                out.push(ev);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::{MessageId, RoomRef, Sender, UserRef};

    fn ev(who: &str, n: u64, kind: EventKind) -> Event {
        Event::new(
            RoomRef::new("irc:local", "#lobby"),
            MessageId::new(format!("{who}-{n}")),
            Sender::new(UserRef::new("irc:local", who), who),
            1_000 + n,
            kind,
        )
    }

    fn leave() -> EventKind {
        EventKind::Leave {
            reason: None,
            quit: false,
        }
    }

    fn say(who: &str, n: u64) -> Event {
        ev(
            who,
            n,
            EventKind::Message(junction_core::Message {
                kind: junction_core::MessageKind::Text,
                body: junction_core::RichText::plain("hello"),
                reply_to: None,
                attachments: Vec::new(),
            }),
        )
    }

    const MODE: Membership = Membership::Summarised;

    #[test]
    fn someone_who_only_joins_and_leaves_is_never_puppeted() {
        let mut s = Summariser::new(None);
        assert!(!s.pass(MODE, &ev("ghost", 0, leave()), 0));
        assert!(!s.pass(MODE, &ev("lurker", 1, EventKind::Join), 0));
        assert!(!s.pass(MODE, &ev("lurker", 2, leave()), 0));
        assert!(s.due(u64::MAX).is_empty());
    }

    #[test]
    fn a_held_join_goes_with_the_first_message_and_the_leave_then_crosses() {
        let mut s = Summariser::new(None);
        assert!(!s.pass(MODE, &ev("bob", 1, EventKind::Join), 0));
        assert!(s.pass(MODE, &say("bob", 2), 0));
        assert!(s.due(u64::MAX).is_empty(), "the message made the puppets");
        assert!(s.pass(MODE, &ev("bob", 3, leave()), 0));
        // Someone who spoke recently joins again: straight through.
        assert!(s.pass(MODE, &ev("bob", 4, EventKind::Join), 0));
    }

    #[test]
    fn a_replayed_message_notes_the_speaker_and_never_makes_them_older() {
        let mut s = Summariser::new(None);
        // After a restart the history replay (skipped as duplicates) still says who spoke:
        // their leave then crosses.
        s.note_speech(&say("carol", 5));
        assert!(s.pass(MODE, &ev("carol", 6, leave()), 0));
        // A replay of an older message keeps the latest time.
        s.note_speech(&say("dave", 1 + Summariser::ACTIVE_MS));
        s.note_speech(&say("dave", 0));
        assert!(s.spoke_recently(&ev("dave", 2 + Summariser::ACTIVE_MS, leave())));
        // Membership events are not speech.
        s.note_speech(&ev("erin", 7, EventKind::Join));
        assert!(!s.pass(MODE, &ev("erin", 8, leave()), 0));
    }

    #[test]
    fn the_window_lets_a_lurker_through_under_their_latest_name() {
        let mut s = Summariser::new(Some(60_000));
        assert!(!s.pass(MODE, &ev("eve", 1, EventKind::Join), 1_000));
        let rename = EventKind::NickChange {
            new_name: "eve2".into(),
        };
        assert!(!s.pass(MODE, &ev("eve", 2, rename), 2_000));
        assert!(s.waiting());
        assert!(s.due(30_000).is_empty());
        let due = s.due(61_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].sender.display_name, "eve2");
        assert!(!s.waiting());
        // Routed again, it passes, and so does the leave that follows (once).
        assert!(s.pass(MODE, &due[0], 61_000));
        assert!(s.pass(MODE, &ev("eve", 3, leave()), 62_000));
        assert!(!s.pass(MODE, &ev("eve", 4, leave()), 62_000));
    }

    #[test]
    fn the_hold_is_bounded() {
        let mut s = Summariser::new(Some(1));
        for i in 0..(MAX_HELD as u64 + 10) {
            s.pass(MODE, &ev(&format!("j{i}"), i, EventKind::Join), i);
        }
        assert_eq!(s.held.len(), MAX_HELD);
        // The oldest were forgotten.
        assert!(!s.held.contains_key(&UserRef::new("irc:local", "j0")));
    }

    #[test]
    fn all_and_off_do_not_hold() {
        let mut s = Summariser::new(None);
        assert!(s.pass(Membership::All, &ev("a", 1, EventKind::Join), 0));
        assert!(!s.pass(Membership::Off, &ev("b", 1, EventKind::Join), 0));
        assert!(!s.waiting());
    }
}
