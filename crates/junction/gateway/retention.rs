//! Retention: what the store forgets, and when.
//!
//! - The message map (both directions, every part), the senders, Matrix transaction keys and
//!   the adapters' dated rows (IRC quotes, XMPP stanza ids, Matrix reactions and event media)
//!   older than `[gateway] retention_days` are removed; an edit, reply or reaction naming
//!   such a message then finds nothing, and crosses as the router sends any message whose
//!   reference is unknown (a reply as a plain message).
//! - What private conversations leave (their events' message map, and the adapters' rows
//!   written with `AdapterStore::put_private`: IRC quotes, Matrix reactions) older than
//!   `[gateway] private_retention_days` (7) is removed sooner, by the same passes.
//! - The audit trail older than `[gateway] audit_days` is removed.
//! - Both by [`spawn_pruner`]: once at start and then every hour (more often when a span
//!   is shorter than two hours), off the route loop (`spawn_blocking`), in batches of
//!   [`BATCH`].
//! - Undelivered outbox rows older than `outbox_max_age_hours` (by their event's origin
//!   time), or beyond the newest `outbox_max_depth` of a network, are dropped at start and
//!   whenever a network comes back, with one notice in each room that lost some and
//!   `junction_outbox_dropped_total{network}` counted (`Loop::bound_outbox`), rather than
//!   replaying days of backlog ahead of live traffic. Rows the adapter already took are
//!   spared (they are on their way); rows waiting in the gateway's forwarder are taken back.

use super::{Hub, Loop};
use crate::admin::gateway_sender;
use junction_core::clock::now_ms;
use junction_core::router::Planned;
use junction_core::{
    BridgeName, Delivery, Event, EventKind, Message, MessageId, MessageKind, NetworkId, RichText,
    RoomRef,
};
use junction_store::{Recorded, Store};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Default `[gateway] retention_days`: 90 days.
pub const MESSAGES_DEFAULT: Option<Duration> = Some(Duration::from_secs(90 * 86_400));
/// Default `[gateway] private_retention_days`: 7 days.
pub const PRIVATE_DEFAULT: Option<Duration> = Some(Duration::from_secs(7 * 86_400));
/// Default `[gateway] audit_days`: 365 days.
pub const AUDIT_DEFAULT: Option<Duration> = Some(Duration::from_secs(365 * 86_400));
/// Default `[gateway] outbox_max_age_hours`: 24 hours.
pub const OUTBOX_AGE_DEFAULT: Option<Duration> = Some(Duration::from_secs(24 * 3600));
/// Default `[gateway] outbox_max_depth`.
pub const OUTBOX_DEPTH_DEFAULT: usize = 10_000;
/// Most rows one store call removes; a pass makes as many calls as it needs.
pub const BATCH: usize = 1000;
/// How often the pruner runs (more often for a span shorter than twice this).
pub const EVERY: Duration = Duration::from_secs(3600);

/// How long things are kept (`None`: for ever).
#[derive(Clone, Debug, PartialEq)]
pub struct Retention {
    /// The message map and what hangs off it.
    pub messages: Option<Duration>,
    /// What private conversations leave: their message map and adapter rows (removed after
    /// this or `messages`, whichever is shorter).
    pub private: Option<Duration>,
    /// The audit trail.
    pub audit: Option<Duration>,
    /// Undelivered outbox rows, by their event's origin time.
    pub outbox_max_age: Option<Duration>,
    /// Most undelivered outbox rows per network.
    pub outbox_max_depth: Option<usize>,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            messages: MESSAGES_DEFAULT,
            private: PRIVATE_DEFAULT,
            audit: AUDIT_DEFAULT,
            outbox_max_age: OUTBOX_AGE_DEFAULT,
            outbox_max_depth: Some(OUTBOX_DEPTH_DEFAULT),
        }
    }
}

impl Retention {
    /// Whether the outbox has a bound at all.
    fn bounds_outbox(&self) -> bool {
        self.outbox_max_age.is_some() || self.outbox_max_depth.is_some()
    }

    /// How often the pruner runs: [`EVERY`], or half the shortest span, at least a second.
    fn period(&self) -> Duration {
        [self.messages, self.private, self.audit]
            .into_iter()
            .flatten()
            .map(|d| d / 2)
            .fold(EVERY, Duration::min)
            .max(Duration::from_secs(1))
    }
}

/// What one pruning pass removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Message-map events and transaction keys.
    pub messages: usize,
    /// Adapters' dated rows.
    pub rows: usize,
    /// Private conversations' events and rows.
    pub private: usize,
    /// Audit entries.
    pub audit: usize,
}

fn cut(now_ms: u64, span: Duration) -> u64 {
    now_ms.saturating_sub(u64::try_from(span.as_millis()).unwrap_or(u64::MAX))
}

/// Calls `step` until it removes fewer than [`BATCH`] or `stop` says so; the total removed.
fn drain(
    stop: &dyn Fn() -> bool,
    mut step: impl FnMut() -> junction_store::Result<usize>,
) -> junction_store::Result<usize> {
    let mut total = 0;
    loop {
        let n = step()?;
        total += n;
        if n < BATCH || stop() {
            return Ok(total);
        }
    }
}

/// One pass: removes what `retention` lets go at `now_ms`, in batches, until done or `stop`.
pub fn prune_pass(
    store: &dyn Store,
    retention: &Retention,
    now_ms: u64,
    stop: &dyn Fn() -> bool,
) -> junction_store::Result<Pruned> {
    let mut pruned = Pruned::default();
    if let Some(span) = retention.messages {
        let before = cut(now_ms, span);
        pruned.messages = drain(stop, || store.prune_before(before, BATCH))?;
        pruned.rows = drain(stop, || store.prune_kv_before(before, BATCH))?;
    }
    if let Some(span) = retention.private {
        let before = cut(now_ms, span);
        pruned.private = drain(stop, || store.prune_private_before(before, BATCH))?;
    }
    if let Some(span) = retention.audit {
        let before = cut(now_ms, span);
        pruned.audit = drain(stop, || store.prune_audit_before(before, BATCH))?;
    }
    if pruned != Pruned::default() {
        store.flush()?;
    }
    Ok(pruned)
}

/// Starts the pruner: a pass now, then every [`Retention::period`], each off the async
/// threads, until `shutdown`. Nothing is started when nothing is pruned.
pub fn spawn_pruner(store: Arc<dyn Store>, retention: Retention, shutdown: CancellationToken) {
    if retention.messages.is_none() && retention.private.is_none() && retention.audit.is_none() {
        return;
    }
    let tick = tokio::time::interval(retention.period());
    let stop = shutdown.clone();
    let pass = move || {
        prune_pass(store.as_ref(), &retention, now_ms(), &|| {
            stop.is_cancelled()
        })
    };
    super::spawn_ticking(tick, shutdown, pass, |pass| match pass {
        Ok(Ok(p)) if p == Pruned::default() => {}
        Ok(Ok(p)) => tracing::info!(
            messages = p.messages,
            rows = p.rows,
            private = p.private,
            audit = p.audit,
            "Old message-map rows and audit entries removed."
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "Could not remove old rows; trying again later.")
        }
        Err(e) => tracing::warn!(error = %e, "The pruning pass stopped."),
    });
}

/// The notice said in a room that lost `n` undelivered messages for `network`.
pub fn dropped_notice(n: usize, network: &NetworkId) -> String {
    let what = if n == 1 { "message" } else { "messages" };
    format!("{n} {what} from while {network} was unreachable were not relayed.")
}

impl Loop {
    /// Applies the outbox bounds to `network` (at start, and when it comes back): drops the
    /// rows past them that its adapter has not taken yet, counts them, and records one
    /// notice in each room that lost some. Returns what to hand out now: the notices, and
    /// what waited for a dropped original (nothing if the flush failed: then they are
    /// stranded rows, handed out after the next good flush).
    pub(super) fn bound_outbox(&mut self, network: &NetworkId, hub: &Hub) -> Vec<Delivery> {
        if !self.retention.bounds_outbox() {
            return Vec::new();
        }
        let older_than = self
            .retention
            .outbox_max_age
            .map_or(0, |age| cut(now_ms(), age));
        let keep = self.retention.outbox_max_depth.unwrap_or(usize::MAX);
        let forward = hub.outboxes.get(network);
        // The forwarder's queue is held while the store drops, so nothing dropped slips
        // through to the adapter meanwhile.
        let mut queue = forward.map(|f| f.lock());
        let queued: HashSet<u64> = queue
            .as_ref()
            .map(|q| q.iter().map(|d| d.outbox_id).collect())
            .unwrap_or_default();
        let sent = &self.sent_at;
        let taken = |id: u64| sent.contains_key(&(network.clone(), id)) && !queued.contains(&id);
        let dropped = match self.store.drop_outbox(network, older_than, keep, &taken) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, %network, "Could not apply the outbox bounds.");
                return Vec::new();
            }
        };
        if dropped.is_empty() {
            return Vec::new();
        }
        let ids: HashSet<u64> = dropped.iter().map(|d| d.outbox_id).collect();
        if let Some(q) = queue.as_mut() {
            q.retain(|d| !ids.contains(&d.outbox_id));
        }
        drop(queue);
        let mut released = Vec::new();
        for d in &dropped {
            self.sent_at.remove(&(network.clone(), d.outbox_id));
            let key = (d.event.clone(), d.target.clone());
            self.inflight.remove(&key);
            // What waited for a dropped original goes now, without its ids.
            if let Some(waiting) = self.held.remove(&key) {
                released.extend(waiting);
            }
        }
        for waiting in self.held.values_mut() {
            waiting.retain(|d| !(d.target.network == *network && ids.contains(&d.outbox_id)));
        }
        released.retain(|d| !(d.target.network == *network && ids.contains(&d.outbox_id)));
        self.metrics.outbox_dropped(network, dropped.len());
        tracing::warn!(%network, dropped = dropped.len(), "Undelivered messages past the outbox bounds were dropped.");
        let mut rooms: BTreeMap<(BridgeName, RoomRef), (usize, u64)> = BTreeMap::new();
        for d in &dropped {
            let e = rooms
                .entry((d.bridge.clone(), d.target.clone()))
                .or_insert((0, d.outbox_id));
            e.0 += 1;
        }
        let mut out = Vec::new();
        for ((bridge, room), (n, first)) in rooms {
            let event = Event::new(
                RoomRef::new(NetworkId::gateway(), bridge.as_str()),
                MessageId::new(format!("outbox-dropped:{network}:{first}")),
                gateway_sender(),
                now_ms(),
                EventKind::Message(Message {
                    kind: MessageKind::Notice,
                    body: RichText::plain(dropped_notice(n, network)),
                    reply_to: None,
                    attachments: Vec::new(),
                }),
            );
            let planned = vec![Planned {
                bridge,
                target: room,
                reply_to: Vec::new(),
                target_ids: Vec::new(),
            }];
            match self.store.record_inbound(&event, planned) {
                Ok(Recorded::New(ds)) => out.extend(ds),
                Ok(Recorded::Duplicate) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "Could not record the notice of dropped messages.")
                }
            }
        }
        let flushed = self.store.flush();
        self.note_store(&flushed);
        released.extend(out);
        self.update_depth(network);
        if flushed.is_ok() {
            released
        } else {
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::{Delivered, Link, Router, Sender, UserRef};
    use junction_store::{MemStore, Resolver};

    fn said(room: &RoomRef, remote: &str, reply_to: Option<&str>) -> Event {
        Event::new(
            room.clone(),
            MessageId::new(remote),
            Sender::new(UserRef::new(room.network.clone(), "@alice:m"), "alice"),
            1,
            EventKind::Message(Message {
                kind: MessageKind::Text,
                body: RichText::plain("hi"),
                reply_to: reply_to.map(MessageId::new),
                attachments: Vec::new(),
            }),
        )
    }

    /// A Matrix room and a MUC linked as `lobby`, and the router over that link.
    fn lobby() -> (RoomRef, RoomRef, Router) {
        let (m, x) = (
            RoomRef::new("matrix", "!lobby:m"),
            RoomRef::new("xmpp", "lobby@c"),
        );
        let router = Router::new(vec![Link {
            bridge: BridgeName::new("lobby"),
            rooms: vec![m.clone(), x.clone()],
        }])
        .expect("router");
        (m, x, router)
    }

    /// A reply to a message whose map rows were pruned goes out as a plain message (no
    /// quote, no reference); an edit of it goes nowhere (nothing to apply it to).
    #[test]
    fn a_reply_to_a_pruned_message_crosses_as_plain_text() {
        let (m, x, router) = lobby();
        let store = MemStore::new();
        let old = said(&m, "$old", None);
        let Ok(Recorded::New(rows)) =
            store.record_inbound(&old, router.plan(&old, &Resolver(&store)))
        else {
            panic!("recorded")
        };
        store
            .record_delivered(&Delivered {
                outbox_id: rows[0].outbox_id,
                target: x.clone(),
                event: old.id.clone(),
                outcome: Ok(vec![MessageId::new("x-old")]),
            })
            .expect("delivered");
        let reply = said(&m, "$reply", Some("$old"));
        let edit = Event::new(
            m.clone(),
            MessageId::new("$edit"),
            old.sender.clone(),
            2,
            EventKind::Edit {
                target: MessageId::new("$old"),
                body: RichText::plain("fixed"),
            },
        );
        let p = router.plan(&reply, &Resolver(&store));
        assert_eq!(
            p[0].reply_to,
            vec![MessageId::new("x-old")],
            "known: quoted"
        );
        assert_eq!(router.plan(&edit, &Resolver(&store)).len(), 1);

        let retention = Retention {
            messages: Some(Duration::from_millis(1)),
            ..Retention::default()
        };
        let later = now_ms() + 10_000;
        let pruned = prune_pass(&store, &retention, later, &|| false).expect("pruned");
        assert_eq!(pruned.messages, 1);
        let p = router.plan(&reply, &Resolver(&store));
        assert_eq!(p.len(), 1, "the reply still crosses");
        assert!(p[0].reply_to.is_empty(), "as a plain message");
        assert!(router.plan(&edit, &Resolver(&store)).is_empty());
    }

    /// A private conversation's message is forgotten after `private`, a room's after
    /// `messages`: an edit of the private one then goes nowhere, the room's still crosses.
    #[test]
    fn private_messages_are_forgotten_sooner_than_rooms() {
        use junction_core::private::Conversation;
        let (m, _, router) = lobby();
        let store = MemStore::new();
        let dm = Conversation::new(
            NetworkId::new("matrix"),
            "@alice:m".into(),
            UserRef::new("xmpp", "bob@x"),
        )
        .room();
        let private = said(&dm, "$private", None);
        let public = said(&m, "$public", None);
        for e in [&private, &public] {
            let Ok(Recorded::New(rows)) =
                store.record_inbound(e, router.plan(e, &Resolver(&store)))
            else {
                panic!("recorded")
            };
            assert_eq!(rows.len(), 1, "{}", e.origin);
            store
                .record_delivered(&Delivered {
                    outbox_id: rows[0].outbox_id,
                    target: rows[0].target.clone(),
                    event: e.id.clone(),
                    outcome: Ok(vec![MessageId::new(format!("x-{}", e.remote_id))]),
                })
                .expect("delivered");
        }
        let edit = |of: &Event| {
            Event::new(
                of.origin.clone(),
                MessageId::new(format!("edit-{}", of.remote_id)),
                of.sender.clone(),
                2,
                EventKind::Edit {
                    target: of.remote_id.clone(),
                    body: RichText::plain("fixed"),
                },
            )
        };
        assert_eq!(router.plan(&edit(&private), &Resolver(&store)).len(), 1);
        let retention = Retention {
            private: Some(Duration::from_millis(1)),
            ..Retention::default()
        };
        let later = now_ms() + 10_000;
        let pruned = prune_pass(&store, &retention, later, &|| false).expect("pruned");
        assert_eq!((pruned.messages, pruned.private), (0, 1));
        assert!(router.plan(&edit(&private), &Resolver(&store)).is_empty());
        assert_eq!(router.plan(&edit(&public), &Resolver(&store)).len(), 1);
    }

    #[test]
    fn the_pruner_runs_hourly_or_twice_per_short_span() {
        assert_eq!(Retention::default().period(), EVERY);
        let short = Retention {
            messages: Some(Duration::from_secs(10)),
            ..Retention::default()
        };
        assert_eq!(short.period(), Duration::from_secs(5));
        let tiny = Retention {
            audit: Some(Duration::from_millis(10)),
            ..Retention::default()
        };
        assert_eq!(tiny.period(), Duration::from_secs(1));
    }

    #[test]
    fn the_notice_counts() {
        let n = NetworkId::new("irc:local");
        assert_eq!(
            dropped_notice(3, &n),
            "3 messages from while irc:local was unreachable were not relayed."
        );
        assert!(dropped_notice(1, &n).starts_with("1 message from"));
    }
}
