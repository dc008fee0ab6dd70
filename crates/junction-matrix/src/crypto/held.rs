//! Encrypted events whose keys have not arrived: held in the store, tried again when keys
//! arrive (and every [`RETRY_EVERY`]), and after the configured wait told to their sender
//! as not bridged. Never silent: a message crosses or its sender knows.

use super::send_event;
use crate::adapter::Shared;
use serde_json::{json, Value};
use std::borrow::Cow;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The adapter's store table of encrypted events held until their keys arrive: event id →
/// `{"event": …, "since": ms}` (`matrix/encrypted_held` in the store).
pub const HELD_TABLE: &str = "encrypted_held";

/// How often held events are tried again without news of keys.
const RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Tries held events again whenever keys arrive, and every [`RETRY_EVERY`], until shutdown.
pub(crate) async fn retry_loop(sh: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        retry_held(&sh).await;
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sh.keys_arrived.notified() => {}
            () = tokio::time::sleep(RETRY_EVERY) => {}
        }
    }
}

/// An event of a transaction as the rest of the adapter takes it: an `m.room.encrypted` one
/// of a linked room, a private conversation or a command room decrypted (None when held for
/// its keys or undecryptable: its sender is told), any other as it is.
pub(crate) async fn open<'a>(sh: &Arc<Shared>, ev: &'a Value) -> Option<Cow<'a, Value>> {
    let kind = ev.get("type").and_then(Value::as_str);
    let room_id = ev.get("room_id").and_then(Value::as_str);
    if let (Some("m.room.encryption"), Some(room_id), Some(crypto)) = (kind, room_id, sh.crypto()) {
        // Any room the bot hears of, command rooms included: what it says there from now
        // on is encrypted.
        if ev.get("state_key").and_then(Value::as_str) == Some("") {
            let content = ev.get("content").cloned().unwrap_or_else(|| json!({}));
            crypto.room_encrypted(room_id, content);
        }
    }
    if kind != Some("m.room.encrypted") {
        return Some(Cow::Borrowed(ev));
    }
    let room_id = room_id?;
    let ours = sh.linked(room_id).is_some()
        || crate::puppets::lock(&sh.command_rooms).contains_key(room_id);
    let (Some(crypto), true) = (sh.crypto(), ours) else {
        return Some(Cow::Borrowed(ev));
    };
    match crypto.decrypt(ev).await {
        Ok(Some(plain)) => Some(Cow::Owned(plain)),
        Ok(None) => {
            hold(sh, ev);
            None
        }
        Err(e) => {
            tracing::warn!(%room_id, error = %e, "An encrypted event could not be decrypted.");
            not_bridged(sh, ev, "it could not be decrypted").await;
            None
        }
    }
}

/// Keeps an encrypted event whose keys have not arrived, to try again.
fn hold(sh: &Shared, ev: &Value) {
    let Some(id) = ev.get("event_id").and_then(Value::as_str) else {
        return;
    };
    if matches!(sh.store.get(HELD_TABLE, id), Ok(Some(_))) {
        return;
    }
    tracing::info!(event_id = id, "An encrypted event waits for its keys.");
    let row = json!({"event": ev, "since": junction_core::clock::now_ms()});
    if let Err(e) = sh
        .store
        .put_dated(HELD_TABLE, id, row.to_string().as_bytes())
    {
        tracing::warn!(error = %e, "Could not keep an encrypted event for later.");
    }
}

/// Tries the held events again: each decrypted one is relayed, each that waited longer than
/// `[matrix] undecryptable_after` is told to its sender as not bridged.
pub(crate) async fn retry_held(sh: &Arc<Shared>) {
    let Some(crypto) = sh.crypto().cloned() else {
        return;
    };
    let rows = match sh.store.scan(HELD_TABLE) {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "Could not read the held encrypted events.");
            return;
        }
    };
    let now = junction_core::clock::now_ms();
    let wait = u64::try_from(sh.undecryptable_after.as_millis()).unwrap_or(u64::MAX);
    for (id, row) in rows {
        let Ok(row) = serde_json::from_slice::<Value>(&row) else {
            let _ = sh.store.remove(HELD_TABLE, &id);
            continue;
        };
        let ev = &row["event"];
        let since = row["since"].as_u64().unwrap_or(now);
        let done = match crypto.decrypt(ev).await {
            Ok(Some(plain)) => {
                tracing::info!(event_id = %id, "A held encrypted event was decrypted.");
                let _one = sh.txn_lock.lock().await;
                crate::server::take_events(sh, "held", std::slice::from_ref(&plain))
                    .await
                    .is_ok()
            }
            Ok(None) if now.saturating_sub(since) < wait => false,
            Ok(None) => {
                not_bridged(sh, ev, "its keys never reached the gateway").await;
                true
            }
            Err(e) => {
                tracing::warn!(event_id = %id, error = %e, "A held encrypted event could not be decrypted.");
                not_bridged(sh, ev, "it could not be decrypted").await;
                true
            }
        };
        if done {
            if let Err(e) = sh.store.remove(HELD_TABLE, &id) {
                tracing::warn!(error = %e, "Could not forget a held encrypted event.");
            }
        }
    }
}

/// Tells the sender of an encrypted event, in its room, that it did not cross (and counts
/// it). Never silent: the zero-loss promise is that a message crosses or its sender knows.
async fn not_bridged(sh: &Shared, ev: &Value, why: &str) {
    sh.undecryptable
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let field = |name: &str| {
        ev.get(name)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    let (room_id, event_id, sender) = (field("room_id"), field("event_id"), field("sender"));
    tracing::warn!(%room_id, %event_id, %sender, "An encrypted event was not bridged: {why}.");
    let text =
        format!("{sender}: your message {event_id} was not bridged to the other networks: {why}.");
    let content = json!({
        "msgtype": "m.notice",
        "body": text,
        "m.mentions": {"user_ids": [sender]},
        "m.relates_to": {"m.in_reply_to": {"event_id": event_id}},
    });
    let txn = format!("undecryptable.{event_id}");
    if let Err(e) = send_event(sh, &room_id, "m.room.message", &txn, &content, None, None).await {
        tracing::warn!(%room_id, error = ?e, "Could not tell a sender their message was not bridged.");
    }
}
