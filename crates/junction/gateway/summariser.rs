//! The `summarised` membership policy.

use crate::config::Membership;
use junction_core::{EventKind, NetworkId};
use std::collections::HashMap;

/// Keeps membership noise down in `Summarised` mode: netsplit-style bursts of quits are
/// dropped after the first few per network, and joins/leaves pass only for people seen
/// speaking (so lurkers joining and leaving do not flood other networks).
#[derive(Default)]
pub(super) struct Summariser {
    spoke: HashMap<junction_core::UserRef, u64>,
    /// People whose join was passed (their puppets joined elsewhere), so that their leave
    /// is passed too even if they never spoke: otherwise their puppets would stay.
    joined: HashMap<junction_core::UserRef, u64>,
    quits: HashMap<NetworkId, (u64, u32)>,
}

impl Summariser {
    /// How long someone counts as "recently active", in milliseconds.
    const ACTIVE_MS: u64 = 24 * 3600 * 1000;
    /// Quits per network in one burst window before the rest are dropped.
    const QUIT_BURST: u32 = 3;
    /// The burst window, in milliseconds.
    const QUIT_WINDOW_MS: u64 = 5_000;

    pub(super) fn pass(&mut self, mode: Membership, ev: &junction_core::Event) -> bool {
        if !ev.kind.is_membership() {
            if matches!(ev.kind, EventKind::Message(_)) {
                if self.spoke.len() > 100_000 {
                    let cutoff = ev.ts_ms.saturating_sub(Self::ACTIVE_MS);
                    self.spoke.retain(|_, t| *t >= cutoff);
                }
                self.spoke.insert(ev.sender.user.clone(), ev.ts_ms);
            }
            return true;
        }
        match mode {
            Membership::Off => false,
            Membership::All => true,
            Membership::Summarised => {
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
                        return false;
                    }
                }
                match ev.kind {
                    EventKind::Join => {
                        if self.joined.len() > 100_000 {
                            let cutoff = ev.ts_ms.saturating_sub(Self::ACTIVE_MS);
                            self.joined.retain(|_, t| *t >= cutoff);
                        }
                        self.joined.insert(ev.sender.user.clone(), ev.ts_ms);
                        true
                    }
                    EventKind::Leave { .. } if self.joined.remove(&ev.sender.user).is_some() => {
                        true
                    }
                    _ => self
                        .spoke
                        .get(&ev.sender.user)
                        .is_some_and(|t| ev.ts_ms.saturating_sub(*t) < Self::ACTIVE_MS),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::{Event, MessageId, RoomRef, Sender, UserRef};

    fn ev(who: &str, n: u64, kind: EventKind) -> Event {
        Event::new(
            RoomRef::new("irc:local", "#lobby"),
            MessageId::new(format!("{who}-{n}")),
            Sender::new(UserRef::new("irc:local", who), who),
            1_000 + n,
            kind,
        )
    }

    #[test]
    fn the_leave_of_someone_whose_join_crossed_crosses_too() {
        let mut s = Summariser::default();
        let leave = || EventKind::Leave {
            reason: None,
            quit: false,
        };
        let mode = Membership::Summarised;
        // Never joined (as far as the gateway saw) nor spoke: the leave stays here.
        assert!(!s.pass(mode, &ev("ghost", 0, leave())));
        // Joined without speaking: its puppets joined elsewhere, so they leave again.
        assert!(s.pass(mode, &ev("lurker", 1, EventKind::Join)));
        assert!(s.pass(mode, &ev("lurker", 2, leave())));
        // Once only: a second leave is not news.
        assert!(!s.pass(mode, &ev("lurker", 3, leave())));
    }
}
