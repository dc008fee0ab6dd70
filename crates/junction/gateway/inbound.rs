//! One batch of inbound events: bans, rate limits and fan-out caps, authority over edits
//! and deletions, the membership policy, `Router::plan` and `record_inbound`, then one
//! flush, the acknowledgements, and the dispatch of what was recorded.

use super::{Hub, Loop};
use crate::metrics::Metrics;
use crate::ratelimit::{self, Verdict};
use junction_core::limits::Capped;
use junction_core::router::RefResolver;
use junction_core::{Delivery, Event, EventId, Inbound, MessageId, RoomRef};
use junction_store::{Recorded, Resolver, Store, StoreError};
use std::collections::HashSet;
use std::time::Instant;

/// The store's resolver plus what the loop knows is on its way.
struct FlightResolver<'a> {
    store: &'a dyn Store,
    inflight: &'a HashSet<(EventId, RoomRef)>,
}

impl RefResolver for FlightResolver<'_> {
    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Option<EventId> {
        Resolver(self.store).event_for(room, remote)
    }
    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Vec<MessageId> {
        Resolver(self.store).remote_ids(event, room)
    }
    fn is_own_puppet(&self, user: &junction_core::UserRef) -> bool {
        Resolver(self.store).is_own_puppet(user)
    }
    fn in_flight(&self, event: &EventId, room: &RoomRef) -> bool {
        self.inflight.contains(&(event.clone(), room.clone()))
    }
}

/// Logs (once: the item is answered as handled, so it does not come back) and counts an
/// inbound event that can never be stored.
fn refused_as_poison(metrics: &Metrics, event: &junction_core::Event, e: &StoreError) {
    metrics.refused(&event.origin.network, "unencodable");
    tracing::warn!(
        error = %e,
        event = %event.id,
        origin = %event.origin,
        remote_id = %event.remote_id,
        "An event that cannot be stored was refused and answered as handled."
    );
}

impl Loop {
    /// Routes the lurkers' joins whose window has passed (see `Summariser::due`).
    pub(super) fn release_lurkers(&mut self, hub: &Hub) {
        let due = self.summariser.due(junction_core::clock::now_ms());
        if !due.is_empty() {
            tracing::debug!(count = due.len(), "Lurkers' joins cross after the window.");
            let mut batch = due.into_iter().map(Inbound::new).collect();
            self.inbound(&mut batch, hub);
        }
    }

    /// Records one batch of inbound events, flushes once, acknowledges, then dispatches.
    pub(super) fn inbound(&mut self, batch: &mut Vec<Inbound>, hub: &Hub) {
        let mut out: Vec<Delivery> = Vec::new();
        let mut acks = Vec::new();
        for Inbound {
            mut event,
            ack,
            capped_reactions,
        } in batch.drain(..)
        {
            if capped_reactions > 0 {
                self.metrics
                    .capped(&event.origin.network, "reaction", capped_reactions);
            }
            // A replay of an event already taken (a Matrix read-back of the room's timeline,
            // a transaction sent again, an IRC or MUC history replay) is settled before the
            // rate limit counts it: it must not spend its sender's allowance again and crowd
            // out what they say next. `record_inbound` checks the same map; this read only
            // moves the answer ahead of the limiter, so it is made only where the limiter
            // would count. A replayed message still tells the membership policy who spoke.
            let now_ms = junction_core::clock::now_ms();
            let counted = self.counted(&event, now_ms);
            if counted
                && matches!(
                    self.store.event_for(&event.origin, &event.remote_id),
                    Ok(Some(_))
                )
            {
                self.summariser.note_speech(&event);
                self.metrics.duplicate();
                tracing::debug!(event = %event.id, origin = %event.origin, remote_id = %event.remote_id, "Replay of a known event skipped.");
                acks.push((ack, Ok(())));
                continue;
            }
            event.bound_bodies();
            match self.admin.check_ban(self.store.as_ref(), &event.sender) {
                crate::admin::BanCheck::Clear => {}
                crate::admin::BanCheck::Banned => {
                    tracing::info!(event = %event.id, sender = %event.sender.user, "A banned user's event is not relayed.");
                    if let Some(a) = ack {
                        let _ = a.send(Ok(()));
                    }
                    continue;
                }
                crate::admin::BanCheck::Unknown => {
                    // Bans fail closed: an event whose sender can not be checked is refused,
                    // and its origin told so (Synapse sends the transaction again).
                    self.metrics.error(&event.origin.network, "ban_check");
                    tracing::warn!(event = %event.id, sender = %event.sender.user, "The ban list could not be read: the event is refused.");
                    if let Some(a) = ack {
                        let _ = a.send(Err("the ban list could not be read".into()));
                    }
                    continue;
                }
            }
            let event = match self.admit(event, counted.then_some(now_ms)) {
                Admitted::Crosses(event) => event,
                Admitted::Dropped(event) => {
                    // Recorded as seen and routed nowhere: when it comes again (a read-back
                    // finds it once it is old enough to pass as backlog, a history replay) it
                    // is a duplicate, not a line that crosses late.
                    if let Err(e) = self.store.record_inbound(&event, Vec::new()) {
                        tracing::debug!(error = %e, event = %event.id, "A dropped event could not be noted as seen.");
                    }
                    acks.push((ack, Ok(())));
                    continue;
                }
            };
            self.reach.note(self.store.as_ref(), &self.router, &event);
            if let Some(why) = self.reach.refusal(self.store.as_ref(), &self.admin, &event) {
                // Neither the text nor the people go in the log above debug.
                self.metrics.error(&event.origin.network, "private_refused");
                tracing::debug!(event = %event.id, sender = %event.sender.user, "A private message was not sent: {why}");
                if matches!(event.kind, junction_core::EventKind::Message(_)) {
                    out.extend(super::private::answer(self.store.as_ref(), &event, &why));
                }
                acks.push((ack, Ok(())));
                continue;
            }
            if let Err(why) = junction_store::authorise(self.store.as_ref(), &event) {
                // Someone else's message, and no moderator of the origin room: the gateway
                // lends nobody the power to take it back or correct it elsewhere.
                self.metrics.error(&event.origin.network, "unauthorised");
                tracing::warn!(event = %event.id, kind = event.kind.name(), sender = %event.sender.user, why = why.name(), "An edit or redaction of someone else's message is not relayed.");
                if let Some(a) = ack {
                    let _ = a.send(Ok(()));
                }
                continue;
            }
            if !self
                .summariser
                .pass(self.membership, &event, junction_core::clock::now_ms())
            {
                if let Some(a) = ack {
                    let _ = a.send(Ok(()));
                }
                continue;
            }
            let planned = self.router.plan(
                &event,
                &FlightResolver {
                    store: self.store.as_ref(),
                    inflight: &self.inflight,
                },
            );
            match self.store.record_inbound(&event, planned) {
                Ok(Recorded::New(ds)) => {
                    self.metrics.inbound(&event.origin.network);
                    tracing::debug!(event = %event.id, kind = event.kind.name(), origin = %event.origin, remote_id = %event.remote_id, targets = ds.len(), "Event recorded.");
                    out.extend(ds);
                    acks.push((ack, Ok(())));
                }
                Ok(Recorded::Duplicate) => {
                    self.metrics.duplicate();
                    tracing::debug!(event = %event.id, origin = %event.origin, remote_id = %event.remote_id, "Replay of a known event skipped.");
                    acks.push((ack, Ok(())));
                }
                Err(e) if e.is_permanent() => {
                    // A poison item: this event can never be stored, so retrying it would only
                    // loop. It is answered as handled (the network moves past it) and counted.
                    refused_as_poison(&self.metrics, &event, &e);
                    acks.push((ack, Ok(())));
                }
                Err(e) => {
                    self.metrics.error(&event.origin.network, "store");
                    tracing::error!(error = %e, event = %event.id, "Could not record an event.");
                    acks.push((ack, Err(e.to_string())));
                }
            }
        }
        let flushed = self.store.flush();
        if let Err(e) = &flushed {
            tracing::error!(error = %e, "Could not flush the store.");
        }
        self.note_store(&flushed);
        for (ack, r) in acks {
            if let Some(a) = ack {
                let r = match (&flushed, r) {
                    (Err(e), _) => Err(e.to_string()),
                    (_, r) => r,
                };
                let _ = a.send(r);
            }
        }
        if flushed.is_ok() {
            let out = self.with_stranded(out, hub);
            self.dispatch(out, hub);
        }
    }

    /// Whether the rate limit counts `event`. Only what can cross spends the allowance: an
    /// event in a room linked to nothing (one the gateway's users still sit in after an
    /// unlink, or a homeserver's queued transaction from another room) is recorded and goes
    /// nowhere, and a held join let through later was counted when it came. Backlog and a
    /// limit turned off count nothing either ([`crate::ratelimit::Limiter::counts`]).
    fn counted(&self, event: &Event, now_ms: u64) -> bool {
        self.router.routes_from(&event.origin)
            && !self.summariser.is_released(&event.id)
            && self.limiter.counts(event, now_ms)
    }

    /// The per-sender rate limit (when it counts the event: `counted` is the wall clock it
    /// was judged at) and the fan-out caps: the event as it may cross, or dropped (logged
    /// once per burst, counted; the caller acknowledges it as handled, so it is never
    /// retried).
    fn admit(&mut self, mut event: Event, counted: Option<u64>) -> Admitted {
        let network = event.origin.network.clone();
        let kind = ratelimit::kind_of(&event.kind);
        let verdict = match counted {
            Some(now_ms) => self.limiter.check(&event, Instant::now(), now_ms),
            None => Verdict::Pass,
        };
        match verdict {
            Verdict::Pass => {}
            Verdict::PassAfter(n) => {
                tracing::info!(sender = %event.sender.user, kind, dropped = n, "A sender is under the rate limit again.");
            }
            Verdict::Drop { first } => {
                self.metrics.rate_limited(&network, kind);
                if first {
                    tracing::warn!(sender = %event.sender.user, kind, event = %event.id, "A sender is over the rate limit; their events of this kind are dropped until it refills.");
                }
                return Admitted::Dropped(event);
            }
        }
        match self.caps.apply(&mut event) {
            Capped::Untouched => {}
            Capped::Trimmed(n) => {
                self.metrics.capped(&network, "attachment", n as u64);
                tracing::info!(sender = %event.sender.user, event = %event.id, dropped = n, "Attachments over the cap, repeated or with too long a URL were dropped.");
            }
            Capped::Refused(why) => {
                self.metrics.capped(&network, "reaction", 1);
                tracing::info!(sender = %event.sender.user, event = %event.id, why, "An event over a fan-out cap was dropped.");
                return Admitted::Dropped(event);
            }
        }
        Admitted::Crosses(event)
    }
}

/// What [`Loop::admit`] made of an event.
enum Admitted {
    /// It crosses, trimmed to the fan-out caps.
    Crosses(Event),
    /// The rate limit or a fan-out cap dropped it.
    Dropped(Event),
}
