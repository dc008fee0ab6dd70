//! Deliveries handed to the adapters (an edit, redaction or reaction held until its
//! original is answered in the same room), the adapters' answers recorded, and the outbox
//! depths counted for `/metrics`.

use super::{Hub, Loop};
use junction_core::router::RefResolver;
use junction_core::{Delivered, Delivery, EventId, EventKind, NetworkId};
use junction_store::Resolver;
use std::time::Instant;

impl Loop {
    /// Hands recorded deliveries to their adapters.
    ///
    /// An edit, redaction or reaction whose original is still on its way to the same room
    /// waits for the original's answer; one whose original has arrived there meanwhile gets
    /// the original's ids filled in.
    pub(super) fn dispatch(&mut self, out: Vec<Delivery>, hub: &Hub) {
        let now = Instant::now();
        let mut touched: Vec<NetworkId> = Vec::new();
        for mut d in out {
            if let Some(original) = self.awaits(&d) {
                let key = (original, d.target.clone());
                if self.inflight.contains(&key) {
                    tracing::debug!(event = %d.event.id, target = %d.target, "Held until the message it refers to is confirmed.");
                    self.held.entry(key).or_default().push(d);
                    continue;
                }
                d.target_ids = Resolver(self.store.as_ref()).remote_ids(&key.0, &d.target);
            }
            match hub.outboxes.get(&d.target.network) {
                Some(tx) => {
                    self.inflight.insert((d.event.id.clone(), d.target.clone()));
                    self.sent_at
                        .insert((d.target.network.clone(), d.outbox_id), now);
                    if !touched.contains(&d.target.network) {
                        touched.push(d.target.network.clone());
                    }
                    tx.send(d);
                }
                None => {
                    tracing::warn!(network = %d.target.network, "No adapter for a linked network; the message waits in its outbox.")
                }
            }
        }
        for n in touched {
            self.update_depth(&n);
        }
    }

    /// The original an edit/redaction/reaction delivery still needs the target ids of.
    fn awaits(&self, d: &Delivery) -> Option<EventId> {
        if !d.target_ids.is_empty() || matches!(d.event.kind, EventKind::Message(_)) {
            return None;
        }
        let reference = d.event.references().into_iter().next()?;
        Resolver(self.store.as_ref()).event_for(&d.event.origin, reference)
    }

    /// Records adapters' answers, then hands out what waited for them. No flush: the answers
    /// ride on the next one (see `MARKS_WITHIN`).
    pub(super) fn delivered(&mut self, done: &mut Vec<Delivered>, hub: &Hub) {
        let mut touched: Vec<NetworkId> = Vec::new();
        let mut released: Vec<Delivery> = Vec::new();
        for d in done.drain(..) {
            let key = (d.event.clone(), d.target.clone());
            self.inflight.remove(&key);
            if let Some(p) = &mut self.parting {
                p.waiting.remove(&key);
            }
            if let Some(waiting) = self.held.remove(&key) {
                released.extend(waiting);
            }
            let network = d.target.network.clone();
            let since = self.sent_at.remove(&(network.clone(), d.outbox_id));
            match &d.outcome {
                Ok(_) => self
                    .metrics
                    .delivered(&network, since.map(|t| t.elapsed()).unwrap_or_default()),
                Err(why) => {
                    self.metrics.failed(&network);
                    tracing::warn!(target = %d.target, event = %d.event, reason = %why, "A delivery was given up.");
                }
            }
            match self.store.record_delivered(&d) {
                // Made durable by the next flush, at the latest `MARKS_WITHIN` from now.
                Ok(()) => {
                    self.marks_since.get_or_insert_with(Instant::now);
                }
                Err(e) => {
                    self.metrics.error(&network, "store");
                    tracing::error!(error = %e, "Could not record a delivery; it is recorded once the store takes writes again.");
                    self.unrecorded.push(d);
                }
            }
            if !touched.contains(&network) {
                touched.push(network);
            }
        }
        for n in touched {
            self.update_depth(&n);
        }
        // What was held is durable already (recorded and flushed before it was first handed
        // out), so it goes now; only the answers wait for a flush.
        if !released.is_empty() {
            self.dispatch(released, hub);
        }
        if self.parting.as_ref().is_some_and(|p| p.waiting.is_empty()) {
            self.part(hub);
        }
    }

    /// Makes the recorded answers durable when no inbound batch's flush came for them within
    /// `MARKS_WITHIN`; after a good flush, hands out what a failed one had stranded.
    pub(super) fn flush_marks(&mut self, hub: &Hub) {
        let flushed = self.store.flush();
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "Could not flush the store.");
        }
        self.note_store(&flushed);
        if flushed.is_ok() {
            let out = self.with_stranded(Vec::new(), hub);
            self.dispatch(out, hub);
        } else {
            // Tried again on the retry tick, which the failing store starts.
            self.marks_since = None;
        }
    }

    /// Marks a network's outbox depth for recounting on the next tick. Counting scans the
    /// whole outbox, so doing it after every batch made a backlog cost O(depth) per batch.
    pub(super) fn update_depth(&mut self, network: &NetworkId) {
        if !self.depth_dirty.contains(network) {
            self.depth_dirty.push(network.clone());
        }
    }

    /// Recounts the outboxes that changed since the last count.
    pub(super) fn count_depths(&mut self) {
        self.metrics.set_store_set_aside(self.store.set_aside());
        for network in std::mem::take(&mut self.depth_dirty) {
            if let Ok(depth) = self.store.outbox_depth(&network) {
                self.metrics.set_outbox_depth(&network, depth);
            }
        }
    }

    pub(super) fn update_depths(&mut self, hub: &Hub) {
        for n in hub.outboxes.keys() {
            self.update_depth(n);
        }
        self.count_depths();
    }
}
