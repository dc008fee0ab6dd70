//! Archive backfill (XEP-0313): on every (re)join the listener reads each room's archive
//! from the room's stored cursor, so what was said while the adapter was away crosses once;
//! the cursor moves only once the events before it are durable.

use std::collections::HashSet;
use std::sync::Arc;

use junction_core::{AdapterStore, RoomId, RoomRef};
use minidom::Element;
use tokio::sync::{mpsc, oneshot};

use crate::adapter::State;
use crate::connection::{send, Conn};
use crate::inbound::{error_condition, mam_fin};
use crate::outbound::{self, MamFrom};

/// How long the archive query after a (re)join may take before queued
/// deliveries go out anyway.
pub(crate) const BACKFILL_WITHIN: std::time::Duration = std::time::Duration::from_secs(20);
/// Messages per MAM page.
const MAM_PAGE: u32 = 100;
/// An archive query in flight.
#[derive(Clone, Debug)]
pub(crate) struct MamQuery {
    pub room: RoomId,
    /// Only learning where the archive ends (first join): nothing is emitted.
    pub baseline: bool,
    /// The newest stanza-id seen in this query.
    pub last: Option<String>,
}

/// A cursor position to store once the event it follows is durable.
pub(crate) type CursorUpdate = (
    RoomRef,
    String,
    Option<oneshot::Receiver<Result<(), String>>>,
);

impl State {
    /// Stores a cursor position once `ack` (if any) says the event is durable.
    pub fn advance_cursor(
        &self,
        room: &RoomId,
        s: &str,
        ack: Option<oneshot::Receiver<Result<(), String>>>,
    ) {
        if let Some(tx) = &self.cursor_tx {
            let _ = tx.send((
                RoomRef::new(self.network.as_str(), room.as_str()),
                s.to_string(),
                ack,
            ));
        }
    }
}

/// Writes cursor positions in order, each only after its event is durable; a
/// room whose event could not be recorded keeps its cursor where it was for
/// the rest of the run, so the next rejoin reads the archive from there.
pub(crate) fn spawn_cursor_writer(
    store: Arc<dyn AdapterStore>,
) -> mpsc::UnboundedSender<CursorUpdate> {
    let (tx, mut rx) = mpsc::unbounded_channel::<CursorUpdate>();
    tokio::spawn(async move {
        let mut stuck: HashSet<RoomRef> = HashSet::new();
        while let Some((room, s, ack)) = rx.recv().await {
            if stuck.contains(&room) {
                continue;
            }
            if let Some(ack) = ack {
                match ack.await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(room = %room, error = %e, "xmpp: an event was not recorded; the archive cursor stays put");
                        stuck.insert(room);
                        continue;
                    }
                    Err(_) => {
                        stuck.insert(room);
                        continue;
                    }
                }
            }
            if let Err(e) = store.set_cursor(&room, &s) {
                tracing::warn!(room = %room, error = %e, "xmpp: could not store the archive cursor");
            }
        }
    });
    tx
}

/// Queries a room's archive from its cursor: everything after it, or on the
/// very first join only where the archive ends (nothing before the gateway
/// joined is bridged).
pub(crate) async fn start_backfill(st: &mut State, conn: &mut Conn, room: &RoomId) -> bool {
    let rref = RoomRef::new(st.network.as_str(), room.as_str());
    let (from, baseline) = match st.store.cursor(&rref) {
        Ok(Some(c)) if c.is_empty() => (MamFrom::Start, false),
        Ok(Some(c)) => (MamFrom::After(c), false),
        Ok(None) => (MamFrom::Last, true),
        Err(e) => {
            tracing::warn!(room = %room.as_str(), error = %e, "xmpp: cursor unreadable; no backfill");
            return true;
        }
    };
    send_mam(st, conn, room, &from, baseline).await
}

async fn send_mam(
    st: &mut State,
    conn: &mut Conn,
    room: &RoomId,
    from: &MamFrom,
    baseline: bool,
) -> bool {
    let id = st.new_id();
    let max = if baseline { 1 } else { MAM_PAGE };
    let el = outbound::mam_query(&st.listener(), room.as_str(), &id, &id, from, max);
    st.mam.insert(
        id,
        MamQuery {
            room: room.clone(),
            baseline,
            last: None,
        },
    );
    st.backfilling.insert(room.as_str().to_string());
    send(conn, el).await
}

/// The end of one archive page: next page, or the room's backfill is done.
pub(crate) async fn on_mam_end(st: &mut State, conn: &mut Conn, q: MamQuery, el: &Element) -> bool {
    let room = q.room.as_str().to_string();
    if el.attr("type") == Some("error") {
        let cond = error_condition(el).unwrap_or_else(|| "error".into());
        if !q.baseline && cond == "item-not-found" {
            tracing::warn!(room, "xmpp: the archive no longer has our cursor; messages in the gap are not backfilled");
            return send_mam(st, conn, &q.room, &MamFrom::Last, true).await;
        }
        tracing::warn!(room, condition = %cond, "xmpp: the room's archive cannot be read; messages sent while the gateway was away are not backfilled");
        st.backfilling.remove(&room);
        return true;
    }
    let (complete, last) = mam_fin(el).unwrap_or((true, None));
    let last = last.or(q.last);
    if q.baseline {
        st.advance_cursor(&q.room, last.as_deref().unwrap_or(""), None);
        st.backfilling.remove(&room);
        return true;
    }
    match last {
        Some(l) if !complete => send_mam(st, conn, &q.room, &MamFrom::After(l), false).await,
        _ => {
            st.backfilling.remove(&room);
            true
        }
    }
}
