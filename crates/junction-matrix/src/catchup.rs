//! Read-back of the linked rooms' timelines: what the homeserver saved for the gateway but
//! never pushed.
//!
//! A homeserver keeps the events of an appservice that does not answer and sends them once
//! it is back. Synapse (1.163) has a gap in that: an event saved as a transaction after its
//! recoverer found nothing left to send, and before it marked the appservice up again, stays
//! unsent until the next recovery, which may never come. So the gateway does not rely on the
//! push alone. Each linked room has a cursor (a pagination token of its timeline, in the
//! store); a read-back pages forward from it as the bot and hands what it finds to the same
//! path as a pushed transaction, where the store's message map skips every event already
//! taken. The cursor moves past a page only once the page's events are durable, and a
//! room's first cursor is where its timeline stands when it is first read: nothing said
//! before the gateway first saw a room is replayed.
//!
//! When: a few times after the adapter starts and after every transaction it refused (both
//! are when the homeserver recovers), then every [`EVERY`] as a net for anything else.

use crate::adapter::Shared;
use crate::server::{take_events, NotTaken};
use junction_core::{RoomId, RoomRef};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Read-backs after a start or a refused transaction, counted from it: the homeserver's
/// recovery follows within seconds of the ping, or of its first retry.
pub(crate) const AFTER: [Duration; 3] = [
    Duration::from_secs(2),
    Duration::from_secs(15),
    Duration::from_secs(60),
];

/// The interval of read-backs when nothing else calls for one.
pub(crate) const EVERY: Duration = Duration::from_secs(600);

/// Events per page read.
const PAGE: u32 = 100;

/// Pages per room and read-back: a room that said more since the last one (while the gateway
/// was down for long, say) is read on from there at the next read-back, so one busy room
/// never holds the others back for long.
const MAX_PAGES: usize = 10;

/// Reads back every linked room at the times above until `shutdown`.
pub(crate) async fn run(sh: Arc<Shared>, shutdown: CancellationToken) {
    let mut due = schedule(Instant::now());
    loop {
        let next = due
            .first()
            .copied()
            .unwrap_or_else(|| Instant::now() + EVERY);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sh.catch_up.notified() => {
                due = schedule(Instant::now());
            }
            () = tokio::time::sleep_until(next) => {
                if !due.is_empty() {
                    due.remove(0);
                }
                read_back(&sh).await;
            }
        }
    }
}

/// The read-backs due after `now`.
fn schedule(now: Instant) -> Vec<Instant> {
    AFTER.iter().map(|d| now + *d).collect()
}

/// One read-back of every linked room; a room that fails is read again next time.
pub(crate) async fn read_back(sh: &Arc<Shared>) {
    for (link, room_id) in sh.linked_rooms() {
        match read_room(sh, &link, &room_id).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::debug!(room = %link, %room_id, events = n, "Read back a Matrix room's timeline.")
            }
            Err(why) => {
                tracing::debug!(room = %link, %room_id, why, "Could not read back a Matrix room's timeline.")
            }
        }
    }
}

/// Reads `room_id`'s timeline on from its cursor; returns how many events were read.
pub(crate) async fn read_room(
    sh: &Arc<Shared>,
    link: &RoomId,
    room_id: &str,
) -> Result<usize, String> {
    let at = RoomRef::new(sh.network.clone(), link.clone());
    let Some(mut from) = sh.store.cursor(&at).map_err(|e| e.to_string())? else {
        // First sight: the timeline from here on.
        let page = sh
            .client
            .messages(room_id, None, "b", 1)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(start) = page.get("start").and_then(Value::as_str) {
            sh.store.set_cursor(&at, start).map_err(|e| e.to_string())?;
        }
        return Ok(0);
    };
    let mut read = 0;
    for _ in 0..MAX_PAGES {
        let page = sh
            .client
            .messages(room_id, Some(&from), "f", PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let events: Vec<Value> = page
            .get("chunk")
            .and_then(Value::as_array)
            .map(|c| {
                c.iter()
                    .filter(|ev| ev.is_object())
                    .map(|ev| with_room(ev, room_id))
                    .collect()
            })
            .unwrap_or_default();
        if !events.is_empty() {
            // After any transaction being taken, as a replay would be.
            let _one = sh.txn_lock.lock().await;
            take_events(sh, "read-back", &events)
                .await
                .map_err(|e| match e {
                    NotTaken::Gateway => "the gateway is not taking events".to_owned(),
                    NotTaken::Store => "an event was not stored".to_owned(),
                })?;
        }
        read += events.len();
        let Some(end) = page.get("end").and_then(Value::as_str) else {
            break;
        };
        if end == from {
            break;
        }
        sh.store.set_cursor(&at, end).map_err(|e| e.to_string())?;
        from = end.to_owned();
        if events.len() < PAGE as usize {
            break;
        }
    }
    Ok(read)
}

/// `ev` with its `room_id`, which a timeline page may leave out (a transaction never does).
fn with_room(ev: &Value, room_id: &str) -> Value {
    let mut ev = ev.clone();
    if let Some(o) = ev.as_object_mut() {
        o.entry("room_id")
            .or_insert_with(|| Value::String(room_id.to_owned()));
    }
    ev
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tests::shared_on;
    use axum::extract::{Query, State};
    use axum::routing::get;
    use axum::Json;
    use serde_json::json;
    use std::collections::HashMap;
    use std::sync::Mutex;

    /// A homeserver's timeline of `!room`, position `n` being the token `t<n>`.
    type Timeline = Arc<Mutex<Vec<Value>>>;

    async fn messages(
        State(timeline): State<Timeline>,
        Query(q): Query<HashMap<String, String>>,
    ) -> Json<Value> {
        let events = timeline.lock().expect("timeline").clone();
        let at = |t: &str| t.trim_start_matches('t').parse::<usize>().unwrap_or(0);
        let limit = q.get("limit").and_then(|l| l.parse().ok()).unwrap_or(10);
        if q.get("dir").map(String::as_str) == Some("b") {
            return Json(json!({"chunk": [], "start": format!("t{}", events.len())}));
        }
        let from = q.get("from").map_or(0, |f| at(f)).min(events.len());
        let to = (from + limit).min(events.len());
        Json(
            json!({"chunk": events[from..to], "start": format!("t{from}"), "end": format!("t{to}")}),
        )
    }

    fn said(id: &str) -> Value {
        json!({"type": "m.room.message", "sender": "@alice:matrix.test", "event_id": id,
               "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": id}})
    }

    /// A homeserver serving `timeline` on loopback; its base URL.
    async fn homeserver(timeline: Timeline) -> String {
        let app = axum::Router::new()
            .route("/_matrix/client/v3/rooms/{room}/messages", get(messages))
            .with_state(timeline);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    /// `read_room` of `!room` in a task of its own, so the test can answer its events.
    fn spawn_read(
        sh: &Arc<Shared>,
        link: &RoomId,
    ) -> tokio::task::JoinHandle<Result<usize, String>> {
        let (sh, link) = (sh.clone(), link.clone());
        tokio::spawn(async move { read_room(&sh, &link, "!room").await })
    }

    #[tokio::test]
    async fn what_was_never_pushed_is_read_back_once_and_the_cursor_follows_what_is_durable() {
        let timeline: Timeline = Arc::new(Mutex::new(vec![said("$old1"), said("$old2")]));
        let (sh, store, mut rx, _) = shared_on(&homeserver(timeline.clone()).await);
        let link = RoomId::new("#lobby:matrix.test");
        let at = RoomRef::new(sh.network.clone(), link.clone());

        // First sight: the cursor is set where the timeline stands; nothing older is relayed.
        assert_eq!(read_room(&sh, &link, "!room").await, Ok(0));
        assert_eq!(store.cursor(&at).expect("cursor").as_deref(), Some("t2"));
        assert!(rx.try_recv().is_err());

        // Two lines the homeserver never pushed: both taken, in order, then the cursor moves.
        timeline
            .lock()
            .expect("timeline")
            .extend([said("$a"), said("$b")]);
        let read = spawn_read(&sh, &link);
        for want in ["$a", "$b"] {
            let inbound = rx.recv().await.expect("inbound");
            assert_eq!(inbound.event.remote_id.as_str(), want);
            assert_eq!(inbound.event.origin.room, link);
            inbound.ack.expect("ack wanted").send(Ok(())).expect("ack");
        }
        assert_eq!(read.await.expect("join"), Ok(2));
        assert_eq!(store.cursor(&at).expect("cursor").as_deref(), Some("t4"));

        // A line not made durable: the cursor stays, and the next read-back offers it again.
        timeline.lock().expect("timeline").push(said("$c"));
        let read = spawn_read(&sh, &link);
        let inbound = rx.recv().await.expect("inbound");
        let refused: Result<(), String> = Err("disk full".into());
        inbound.ack.expect("ack wanted").send(refused).expect("ack");
        assert!(read.await.expect("join").is_err());
        assert_eq!(store.cursor(&at).expect("cursor").as_deref(), Some("t4"));
        let read = spawn_read(&sh, &link);
        let inbound = rx.recv().await.expect("inbound again");
        assert_eq!(inbound.event.remote_id.as_str(), "$c");
        inbound.ack.expect("ack wanted").send(Ok(())).expect("ack");
        assert_eq!(read.await.expect("join"), Ok(1));

        // Nothing new: nothing sent, the cursor where it was.
        assert_eq!(read_room(&sh, &link, "!room").await, Ok(0));
        assert_eq!(store.cursor(&at).expect("cursor").as_deref(), Some("t5"));
        assert!(rx.try_recv().is_err());
    }
}
