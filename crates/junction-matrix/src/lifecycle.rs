//! Ghosts' lifecycle: at most `[matrix] max_ghosts` ghosts in rooms, who makes way when the
//! cap is reached, and idle ghosts leaving after `[matrix] ghost_idle_timeout_seconds`.
//!
//! The policy is [`junction_core::PuppetCap`]'s: a join takes a free slot only; someone who
//! speaks takes the place of the least recently active ghost that never spoke (or of a talker
//! silent for five minutes), which leaves the room first; when nobody may make way, their
//! message is said by the bot as `<name> text`. Each refusal is counted for `/metrics`
//! (`junction_errors_total{kind="puppet_cap"}`).

use crate::adapter::Shared;
use crate::ids;
use crate::outbound::{self, DeliverError};
use crate::puppets::lock;
use junction_core::clock::now_ms;
use junction_core::format::Span;
use junction_core::{
    Admit, Delivery, EventKind, Message, MessageId, MessageKind, PuppetCap, PuppetLimits,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The cap and its refusal counter.
pub(crate) struct Lifecycle {
    cap: Mutex<PuppetCap<(String, String)>>,
    refused: Arc<AtomicU64>,
}

impl Lifecycle {
    pub(crate) fn new(limits: PuppetLimits, refused: Arc<AtomicU64>) -> Self {
        Self {
            cap: Mutex::new(PuppetCap::new(limits)),
            refused,
        }
    }

    /// The bounds in force.
    pub(crate) fn limits(&self) -> PuppetLimits {
        lock(&self.cap).limits()
    }

    /// How often idle ghosts are looked for.
    pub(crate) fn sweep_every(&self) -> Duration {
        let idle = Duration::from_millis(self.limits().idle_timeout_ms);
        (idle / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
    }

    /// The ghost left the room (or was removed).
    pub(crate) fn left(&self, ghost: &str, room_id: &str) {
        lock(&self.cap).remove(&(ghost.to_owned(), room_id.to_owned()));
    }

    fn note_refusal(&self, ghost: &str) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let (warn, max_ghosts) = {
            let mut cap = lock(&self.cap);
            (cap.warn_now(now_ms()), cap.limits().max)
        };
        if warn {
            tracing::warn!(%ghost, max_ghosts, "The cap of Matrix ghosts in rooms is reached: a newcomer gets no ghost (their messages are said by the bot). Further refusals are counted in /metrics only.");
        } else {
            tracing::debug!(%ghost, "No ghost: the cap is reached.");
        }
    }
}

/// Whether rendering `kind` puts the sender's ghost in the room, and as a speaker: `None`
/// for kinds that never join it.
pub(crate) fn joins(kind: &EventKind) -> Option<bool> {
    match kind {
        EventKind::Join => Some(false),
        EventKind::Message(_)
        | EventKind::Edit { .. }
        | EventKind::React { .. }
        | EventKind::Topic { .. } => Some(true),
        _ => None,
    }
}

/// Before `ghost` is put in `room_id` (by the delivery holding the room's lock, `alone` or
/// shared with other messages): true when it may be (a ghost making way leaves); false when
/// the cap refuses it (counted).
pub(crate) async fn enter(
    sh: &Arc<Shared>,
    ghost: &str,
    room_id: &str,
    speaks: bool,
    alone: bool,
) -> bool {
    let key = (ghost.to_owned(), room_id.to_owned());
    let decision = lock(&sh.lifecycle.cap).admit(&key, now_ms(), speaks);
    match decision {
        Admit::Present | Admit::Free => true,
        Admit::Evict((old, room)) => {
            tracing::info!(ghost = %old, room = %room, newcomer = %ghost, "The cap of ghosts is reached: the least recently active one leaves.");
            if room == room_id && alone {
                // This room's lock is ours alone already. Shared, the ghost making way may be
                // saying something beside us: it leaves once nobody is (below).
                if let Err(e) = outbound::ghost_leaves(sh, &old, &room).await {
                    tracing::warn!(ghost = %old, error = ?e, "The ghost making way could not leave.");
                }
            } else {
                // Another room's delivery may be under way: the ghost leaves once it is done.
                // Not awaited here, so two rooms making way in each other never wait for
                // each other.
                leave_later(sh, old, room);
            }
            true
        }
        Admit::Refused => {
            sh.lifecycle.note_refusal(ghost);
            false
        }
    }
}

/// Renders a delivery whose sender got no ghost: a message is said by the bot as
/// `<name> text`, a topic as the bot's line, a join is nothing to show; anything else
/// (edits, reactions) is given up.
pub(crate) async fn refused(
    sh: &Shared,
    d: &Delivery,
    room_id: &str,
    ts: Option<u64>,
) -> Result<Vec<MessageId>, DeliverError> {
    let name = &d.event.sender.display_name;
    match &d.event.kind {
        EventKind::Message(m) => {
            let prefix = if m.kind == MessageKind::Emote {
                format!("* {name} ")
            } else {
                format!("<{name}> ")
            };
            let mut body = m.body.clone();
            body.spans.insert(0, Span::Text(prefix));
            let relayed = Message {
                kind: MessageKind::Text,
                body,
                ..m.clone()
            };
            outbound::send_message(sh, d, room_id, None, &relayed, ts).await
        }
        EventKind::Topic { text } => {
            let line = format!("{name} set the topic: {text}");
            outbound::bot_notice(sh, d, room_id, &line, ts).await
        }
        EventKind::Join => Ok(Vec::new()),
        _ => Err(DeliverError::Permanent(
            "the sender has no ghost here: the cap of ghosts in rooms is reached".into(),
        )),
    }
}

/// Takes on the ghosts already in `room_id` when it is linked (joined before a restart, or
/// before the room was linked): each counts against the cap as active now, so it leaves once
/// idle like any other, and those past the cap leave at once. Without this, ghosts from
/// before a restart were never counted and never left.
pub(crate) async fn adopt(sh: &Shared, room_id: &str) {
    let members = match sh.client.joined_members(room_id).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(room = %room_id, error = %e, "Could not list the room's members: ghosts already there are not counted until they speak.");
            return;
        }
    };
    let now = now_ms();
    let mut adopted = 0usize;
    let mut over = Vec::new();
    for ghost in members
        .into_iter()
        .filter(|u| ids::is_ghost(&sh.config.user_prefix, &sh.config.server_name, u))
    {
        let key = (ghost.clone(), room_id.to_owned());
        // A join (`speaks` false) only takes a free slot: it never makes anyone leave.
        match lock(&sh.lifecycle.cap).admit(&key, now, false) {
            Admit::Refused => over.push(ghost),
            Admit::Present | Admit::Free | Admit::Evict(_) => {
                sh.ghosts.note_joined(&ghost, room_id);
                adopted += 1;
            }
        }
    }
    if adopted > 0 || !over.is_empty() {
        tracing::info!(room = %room_id, adopted, over_the_cap = over.len(), "Ghosts already in the room are counted; those past the cap leave.");
    }
    for ghost in over {
        if let Err(e) = outbound::ghost_leaves(sh, &ghost, room_id).await {
            tracing::warn!(%ghost, error = ?e, "A ghost past the cap could not leave.");
        }
    }
}

/// Ghosts idle for the idle timeout leave their rooms, each once the delivery under way in
/// its room (if any) is done; the caller does not wait for it.
pub(crate) fn leave_idle(sh: &Arc<Shared>) {
    let idle = lock(&sh.lifecycle.cap).take_idle(now_ms());
    for (ghost, room) in idle {
        tracing::info!(%ghost, %room, "An idle ghost leaves.");
        leave_later(sh, ghost, room);
    }
}

/// `ghost` leaves `room_id` once it holds the room's lock alone, so after the deliveries under
/// way there (one, or with `parallel_senders` the messages sent together), unless the cap has
/// taken it back meanwhile (it spoke again).
fn leave_later(sh: &Arc<Shared>, ghost: String, room_id: String) {
    let sh = sh.clone();
    tokio::spawn(async move {
        let _room = sh.room_locks.lock(&room_id).await;
        let key = (ghost, room_id);
        if lock(&sh.lifecycle.cap).contains(&key) {
            return;
        }
        let (ghost, room_id) = key;
        if let Err(e) = outbound::ghost_leaves(&sh, &ghost, &room_id).await {
            tracing::warn!(%ghost, error = ?e, "A ghost could not leave a room.");
        }
    });
}
