//! Admin commands run inline by the loop, and room-list changes: rooms added are listed at
//! once, rooms left only once the announcements said there are answered.

use super::{Hub, Loop};
use junction_core::{Command, EventId, RoomRef};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Longest a room-list change waits for the announcements of `close`/`unlink` to be answered
/// in the rooms being left (a network that is down must not hold the change for ever).
const PART_WAIT: Duration = Duration::from_secs(30);

/// A room-list change held back until the announcements in the rooms it leaves are answered,
/// so that every network says them before the adapters leave (IRC would PART first, Matrix
/// refuse a delivery to a room no longer listed).
pub(super) struct Parting {
    /// Announcements not answered yet.
    pub(super) waiting: HashSet<(EventId, RoomRef)>,
    /// When the change goes out anyway.
    pub(super) until: Instant,
}

impl Loop {
    /// Answers one admin command: runs it, makes what it recorded durable, hands out its
    /// announcements and enforcements, and tells the adapters when the linked rooms changed.
    pub(super) fn command(&mut self, cmd: Command, hub: &Hub) {
        if let Some(reply) = super::private::opt(self.store.as_ref(), &cmd.from, &cmd.text) {
            let flushed = self.store.flush();
            self.note_store(&flushed);
            let _ = cmd.reply.send(reply);
            return;
        }
        let outcome = self.admin.handle(
            &cmd.from,
            &cmd.display_name,
            &cmd.text,
            &mut self.router,
            self.store.as_ref(),
        );
        if outcome.rate_limited {
            if let Some(network) = cmd.from.first().map(|u| &u.network) {
                self.metrics.error(network, "command_rate_limited");
            }
        }
        let announced: Vec<(EventId, RoomRef)> = outcome
            .deliveries
            .iter()
            .map(|d| (d.event.id.clone(), d.target.clone()))
            .collect();
        let flushed = self.store.flush();
        self.note_store(&flushed);
        let reply = match flushed {
            Ok(()) => {
                let out = self.with_stranded(outcome.deliveries, hub);
                self.dispatch(out, hub);
                outcome.reply
            }
            Err(e) => {
                tracing::error!(error = %e, "Could not flush the store after a command.");
                format!(
                    "{}\n(warning: the store could not be flushed: {e})",
                    outcome.reply
                )
            }
        };
        if outcome.links_changed {
            self.rooms_changed(announced, hub);
        }
        let _ = cmd.reply.send(reply);
    }

    /// Tells the adapters the linked rooms changed. Rooms added are listed at once; rooms
    /// left stay listed until the announcements handed out for them are answered (or
    /// [`PART_WAIT`] has passed), so each network says the announcement before it leaves.
    fn rooms_changed(&mut self, announced: Vec<(EventId, RoomRef)>, hub: &Hub) {
        let waiting: Vec<(EventId, RoomRef)> = announced
            .into_iter()
            .filter(|k| self.inflight.contains(k))
            .collect();
        if waiting.is_empty() && self.parting.is_none() {
            for (network, tx) in &hub.rooms {
                tx.send_replace(self.router.rooms_on(network));
            }
            return;
        }
        for (network, tx) in &hub.rooms {
            let mut rooms = self.router.rooms_on(network);
            let listed = tx.borrow().clone();
            rooms.extend(listed.iter().cloned());
            rooms.sort();
            rooms.dedup();
            if rooms != listed {
                tx.send_replace(rooms);
            }
        }
        let p = self.parting.get_or_insert_with(|| Parting {
            waiting: HashSet::new(),
            until: Instant::now(),
        });
        p.waiting.extend(waiting);
        p.until = Instant::now() + PART_WAIT;
        if p.waiting.is_empty() {
            self.part(hub);
        }
    }

    /// Lists exactly the linked rooms again: the adapters leave the rooms no longer linked.
    pub(super) fn part(&mut self, hub: &Hub) {
        if let Some(p) = self.parting.take() {
            if !p.waiting.is_empty() {
                tracing::warn!(
                    unanswered = p.waiting.len(),
                    "Leaving unlinked rooms although some announcements were not answered in time."
                );
            }
        }
        for (network, tx) in &hub.rooms {
            tx.send_replace(self.router.rooms_on(network));
        }
    }
}
