//! The homeserver → appservice API (`/_matrix/app/v1/...`, and the legacy unprefixed paths),
//! plus the media proxy route.
//!
//! Every appservice route needs `Authorization: Bearer <hs_token>`, compared in constant time:
//! no credentials → 401 `M_UNAUTHORIZED`, wrong ones → 403 `M_FORBIDDEN`.
//!
//! **Durability.** A transaction is answered 200 only after the gateway acknowledged every
//! event it carried as durable, and its id is then marked done in the store; a replayed id
//! that is already marked answers 200 at once. Any failure answers 500, so the homeserver
//! sends the same transaction again.
//!
//! **Size.** A transaction body may be up to [`MAX_TRANSACTION_BYTES`], above anything a
//! homeserver can send, and is read only once the token is checked. A smaller bound (axum's
//! default is 2 MiB) would answer a large but lawful transaction 413, which the homeserver
//! retries for ever, holding every later event back behind it.

use crate::adapter::Shared;
use crate::inbound::{self, Effect, InboundCx};
use crate::media::{self, MediaState};
use crate::puppets::lock;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Json;
use junction_core::Inbound;
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The largest transaction body read: a homeserver sends at most 100 room events (64 KiB
/// each at most), 100 ephemeral events and 100 to-device messages per transaction, under
/// 20 MiB in all.
pub const MAX_TRANSACTION_BYTES: usize = 32 * 1024 * 1024;

/// The adapter's store table of reactions seen on Matrix: reaction event id → `target\nkey`
/// (`matrix/reactions_in` in the store).
pub const REACTIONS_IN_TABLE: &str = "reactions_in";

fn error(status: StatusCode, errcode: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "errcode": errcode, "error": message })),
    )
        .into_response()
}

/// A 500 `M_UNKNOWN`: the homeserver sends the transaction again later.
fn retry_later(message: &str) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN", message)
}

fn ok() -> Response {
    (StatusCode::OK, Json(json!({}))).into_response()
}

/// True when `given` equals `expected`, compared in constant time (for equal lengths).
pub fn token_matches(given: &str, expected: &str) -> bool {
    bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// Checks the homeserver's Bearer token.
fn authorize(sh: &Shared, headers: &HeaderMap) -> Result<(), Box<Response>> {
    let Some(value) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            "M_UNAUTHORIZED",
            "Missing access token.",
        )));
    };
    let given = value.strip_prefix("Bearer ").unwrap_or("");
    if token_matches(given, sh.config.hs_token.expose()) {
        Ok(())
    } else {
        tracing::warn!("Refused a homeserver request with a wrong token.");
        Err(Box::new(error(
            StatusCode::FORBIDDEN,
            "M_FORBIDDEN",
            "Bad token.",
        )))
    }
}

/// The appservice API and the media proxy.
pub(crate) fn router(sh: Arc<Shared>) -> axum::Router {
    let mut media_state = MediaState::new(sh.media.clone(), sh.client.clone());
    media_state.hash_mismatches = sh.media_hash_mismatches.clone();
    let media = axum::Router::new()
        .route("/media/{server}/{id}", get(media::serve))
        .route(
            "/media/encrypted/{token}/{name}",
            get(crate::media_encrypted::serve_encrypted),
        )
        .with_state(media_state);
    axum::Router::new()
        .route("/_matrix/app/v1/transactions/{txn}", put(transaction))
        .route("/transactions/{txn}", put(transaction))
        .route("/_matrix/app/v1/users/{user}", get(query_user))
        .route("/users/{user}", get(query_user))
        .route("/_matrix/app/v1/rooms/{alias}", get(query_room))
        .route("/rooms/{alias}", get(query_room))
        .route("/_matrix/app/v1/ping", post(ping))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "M_UNRECOGNIZED", "Unknown endpoint.") })
        .with_state(sh)
        .merge(media)
}

async fn ping(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&sh, &headers) {
        return *r;
    }
    ok()
}

async fn query_user(
    State(sh): State<Arc<Shared>>,
    Path(user): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&sh, &headers) {
        return *r;
    }
    // Ghosts are made by the gateway when a remote person first needs one, never on demand.
    if sh.ghosts.is_registered(&user) {
        ok()
    } else {
        error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "No such user.")
    }
}

async fn query_room(
    State(sh): State<Arc<Shared>>,
    Path(_alias): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = authorize(&sh, &headers) {
        return *r;
    }
    // Rooms are created when an admin links them, not when someone looks an alias up.
    error(StatusCode::NOT_FOUND, "M_NOT_FOUND", "No such room.")
}

async fn transaction(
    State(sh): State<Arc<Shared>>,
    Path(txn): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let answer = take_transaction(&sh, &txn, &headers, body).await;
    if answer.status().is_server_error() {
        // The homeserver now counts us down and recovers later; what it saves in between
        // may never be pushed (see `catchup`), so the linked rooms are read back.
        sh.catch_up.notify_one();
    }
    answer
}

async fn take_transaction(
    sh: &Arc<Shared>,
    txn: &str,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if let Err(r) = authorize(sh, headers) {
        return *r;
    }
    let body = match axum::body::to_bytes(body, MAX_TRANSACTION_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%txn, error = %e, limit = MAX_TRANSACTION_BYTES, "Could not read a transaction body.");
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                "Transaction body unreadable or too large.",
            );
        }
    };
    // Not before the linked rooms are known (see `Shared::ready`).
    if sh.ready.subscribe().wait_for(|ready| *ready).await.is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "M_UNKNOWN", "Starting.");
    }
    // One transaction at a time: the homeserver sends them in order anyway, and this keeps a
    // replay from racing its original.
    let _one = sh.txn_lock.lock().await;
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "M_NOT_JSON", "Body is not JSON.");
    };
    let events = body
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let key = txn_key(&sh.config.id, txn, &events, &body);
    match sh.store.txn_done(&key) {
        Ok(true) => {
            tracing::debug!(%txn, "Replayed transaction answered again.");
            return ok();
        }
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "Could not check a transaction id.");
            return retry_later("Store unavailable.");
        }
    }
    // A linked room the homeserver was not ready to resolve at startup: resolve it now, or
    // let the homeserver retry, rather than take its events for an unlinked room's.
    if !sh.unresolved().is_empty() {
        crate::adapter::ensure_rooms(sh).await;
        if !sh.unresolved().is_empty() {
            tracing::warn!(%txn, "Linked rooms are not resolved yet; the transaction will be retried.");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "M_UNKNOWN",
                "Rooms not resolved yet.",
            );
        }
    }
    if sh.encryption {
        if let Err(r) = feed_crypto(sh, txn, &key, &body).await {
            return *r;
        }
    }
    match take_events(sh, txn, &events).await {
        Ok(()) => {}
        Err(NotTaken::Gateway) => return retry_later("Gateway unavailable."),
        Err(NotTaken::Store) => return retry_later("Not stored."),
    }
    if let Err(e) = sh.store.mark_txn(&key) {
        // Its events are durable and deduplicated by the message map, so a replay is harmless.
        tracing::warn!(error = %e, %txn, "Could not mark a transaction done.");
    }
    tracing::debug!(%txn, events = events.len(), "Transaction answered.");
    ok()
}

/// Hands the bot device's share of a transaction (to-device messages, device lists, key
/// counts) to the crypto machine, once even when the transaction comes again; an error is
/// the answer the transaction gets.
async fn feed_crypto(sh: &Shared, txn: &str, key: &str, body: &Value) -> Result<(), Box<Response>> {
    let Some(crypto) = sh.crypto().cloned() else {
        tracing::info!(%txn, "The gateway's device is not set up yet; the transaction will be retried.");
        return Err(Box::new(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "M_UNKNOWN",
            "Encryption not set up yet.",
        )));
    };
    let fed = format!("{key}:crypto");
    match sh.store.txn_done(&fed) {
        Ok(true) => return Ok(()),
        Ok(false) => {}
        Err(e) => {
            tracing::error!(error = %e, "Could not check a transaction id.");
            return Err(Box::new(retry_later("Store unavailable.")));
        }
    }
    match crypto.receive(body).await {
        Ok(true) => sh.keys_arrived.notify_one(),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(%txn, error = %e, "The crypto machine could not take a transaction's device data; the transaction will be retried.");
            return Err(Box::new(retry_later("Crypto store unavailable.")));
        }
    }
    if let Err(e) = sh.store.mark_txn(&fed) {
        tracing::warn!(error = %e, %txn, "Could not mark a transaction's device data taken.");
    }
    if let Err(e) = crypto.send_outgoing().await {
        tracing::warn!(error = %e, "Could not send the crypto machine's requests; they go with the next transaction.");
    }
    Ok(())
}

/// Why events were not all taken: the homeserver (or the read-back) must offer them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotTaken {
    /// The gateway is not taking events (it is stopping).
    Gateway,
    /// An event was not made durable.
    Store,
}

/// Converts `events` (as pushed in a transaction, or read back from a room's timeline) and
/// hands them to the gateway, returning once every relayed one is durable. `label` names
/// the batch in the logs. Events already taken are skipped by the store's message map.
pub(crate) async fn take_events(
    sh: &Arc<Shared>,
    txn: &str,
    events: &[Value],
) -> Result<(), NotTaken> {
    let mut acks = Vec::new();
    for ev in events {
        // An encrypted event of a linked room is taken decrypted, or held for its keys.
        let Some(ev) = crate::crypto::open(sh, ev).await else {
            continue;
        };
        let ev = &*ev;
        prefetch_name(sh, ev).await;
        let converted = convert(sh, ev);
        let origin = converted.event.as_ref().map(|e| e.origin.clone());
        apply_effects(sh, origin.as_ref(), converted.effects);
        let Some(mut event) = converted.event else {
            let field = |name: &str| ev.get(name).and_then(Value::as_str).unwrap_or("");
            let (event_type, event_id, sender) =
                (field("type"), field("event_id"), field("sender"));
            tracing::debug!(%txn, event_type, event_id, sender, "Event from Matrix not relayed.");
            continue;
        };
        event.by_moderator = acts_as_moderator(sh, ev, &event.kind).await;
        tracing::debug!(%txn, kind = event.kind.name(), room = %event.origin, remote_id = %event.remote_id, "Event from Matrix.");
        let (inbound, ack) = Inbound::with_ack(event);
        if sh.inbound.send(inbound).await.is_err() {
            tracing::warn!(%txn, "The gateway is not taking events; the transaction will be retried.");
            return Err(NotTaken::Gateway);
        }
        acks.push(ack);
    }
    for ack in acks {
        match ack.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(%txn, error = %e, "An event was not stored; the transaction will be retried.");
                return Err(NotTaken::Store);
            }
            Err(_) => {
                tracing::warn!(%txn, "An event was dropped unstored; the transaction will be retried.");
                return Err(NotTaken::Store);
            }
        }
    }
    Ok(())
}

/// The key a transaction is remembered by: its id *and* what it carries. Synapse numbers
/// transactions from a counter it keeps in its database, and with SQLite that counter starts
/// again at 1 after a restart once every transaction was answered, so the id alone would make
/// new transactions look like replays and drop them. A real replay carries the same events,
/// and the same device data (to-device messages, device lists, key counts: a transaction may
/// carry only those).
fn txn_key(as_id: &str, txn: &str, events: &[Value], body: &Value) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for ev in events {
        match ev.get("event_id").and_then(Value::as_str) {
            Some(id) => h.update(id.as_bytes()),
            None => h.update(ev.to_string().as_bytes()),
        }
        h.update(b"\n");
    }
    for field in crate::crypto::DEVICE_FIELDS {
        if let Some(v) = body.get(field) {
            h.update(field.as_bytes());
            h.update(v.to_string().as_bytes());
            h.update(b"\n");
        }
    }
    let digest = hex::encode(&h.finalize()[..12]);
    format!("{as_id}:{txn}:{digest}")
}

/// Looks up the sender's display name when the event will need it and it is not cached.
async fn prefetch_name(sh: &Shared, ev: &Value) {
    let (Some(room_id), Some(sender)) = (
        ev.get("room_id").and_then(Value::as_str),
        ev.get("sender").and_then(Value::as_str),
    ) else {
        return;
    };
    if sh.linked(room_id).is_none()
        || sender == sh.bot_id
        || crate::ids::is_ghost(&sh.config.user_prefix, &sh.config.server_name, sender)
        || lock(&sh.names).contains(&(room_id.to_owned(), sender.to_owned()))
    {
        return;
    }
    let name = match sh.client.state(room_id, "m.room.member", sender).await {
        Ok(Some(member)) => member
            .get("displayname")
            .and_then(Value::as_str)
            .map(str::to_owned),
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(error = %e, "Could not look up a display name.");
            return;
        }
    };
    if let Some(name) = name {
        lock(&sh.names).put((room_id.to_owned(), sender.to_owned()), name);
    }
}

/// True when the sender of a redaction or topic change is a moderator of its room, read
/// from the room's current power levels (one request, made only for these kinds). A failed
/// read is no moderator: the redaction then crosses only if the sender wrote the original.
async fn acts_as_moderator(sh: &Shared, ev: &Value, kind: &junction_core::EventKind) -> bool {
    use junction_core::EventKind;
    if !matches!(kind, EventKind::Redact { .. } | EventKind::Topic { .. }) {
        return false;
    }
    let (Some(room_id), Some(sender)) = (
        ev.get("room_id").and_then(Value::as_str),
        ev.get("sender").and_then(Value::as_str),
    ) else {
        return false;
    };
    match sh.client.state(room_id, "m.room.power_levels", "").await {
        Ok(levels) if crate::power::is_moderator(levels.as_ref(), sender, kind) => return true,
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, room = room_id, "Could not read the room's power levels; the sender counts as no moderator.");
            return false;
        }
    }
    // Creators of rooms of version 12 and later outrank every level without being listed.
    match sh.client.state_event(room_id, "m.room.create", "").await {
        Ok(Some(create)) => crate::power::is_privileged_creator(&create, sender),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(error = %e, room = room_id, "Could not read the room's creation; the sender counts as no moderator.");
            false
        }
    }
}

fn convert(sh: &Shared, ev: &Value) -> inbound::Converted {
    let room = |id: &str| sh.linked(id);
    let name = |room: &str, user: &str| {
        lock(&sh.names)
            .get(&(room.to_owned(), user.to_owned()))
            .cloned()
    };
    let media_link = |mxc: &str| sh.media.link(mxc);
    let encrypted_media_link =
        |file: &Value, name: &str, mime: Option<&str>| sh.media.encrypted_link(file, name, mime);
    let reaction = |id: &str| {
        let v = sh.store.get(REACTIONS_IN_TABLE, id).ok()??;
        let v = String::from_utf8(v).ok()?;
        let (target, key) = v.split_once('\n')?;
        Some((target.to_owned(), key.to_owned()))
    };
    let cx = InboundCx {
        network: &sh.network,
        prefix: &sh.config.user_prefix,
        server_name: &sh.config.server_name,
        bot: &sh.bot_id,
        room: &room,
        name: &name,
        media_link: &media_link,
        encrypted_media_link: &encrypted_media_link,
        reaction: &reaction,
    };
    inbound::convert(ev, &cx)
}

/// Applies what an event leaves to remember; `origin`, the room of the event it made, dates
/// its rows (a private conversation's go sooner).
fn apply_effects(sh: &Arc<Shared>, origin: Option<&junction_core::RoomRef>, effects: Vec<Effect>) {
    for effect in effects {
        match effect {
            Effect::Reaction {
                event_id,
                target,
                key,
            } => {
                let value = format!("{target}\n{key}");
                let put = match origin {
                    Some(room) => sh.store.put_dated_for(
                        room,
                        REACTIONS_IN_TABLE,
                        &event_id,
                        value.as_bytes(),
                    ),
                    None => sh
                        .store
                        .put_dated(REACTIONS_IN_TABLE, &event_id, value.as_bytes()),
                };
                if let Err(e) = put {
                    tracing::warn!(error = %e, "Could not record a reaction.");
                }
            }
            Effect::Media { event_id, mxcs } => sh.media.remember(&event_id, &mxcs),
            Effect::Redacted { event_id } => sh.media.redacted(&event_id),
            Effect::Encrypted { room_id, content } if sh.encryption => {
                tracing::info!(%room_id, "A linked Matrix room turned on encryption; the gateway's device takes part.");
                if let Some(c) = sh.crypto() {
                    c.room_encrypted(&room_id, content);
                }
                // A direct chat with a ghost: the bot joins it, for its device to get keys.
                let ghost = sh
                    .linked(&room_id)
                    .and_then(|room| crate::private::ghost_of(sh, &room));
                if let Some(ghost) = ghost {
                    let sh = sh.clone();
                    tokio::spawn(async move {
                        if let Err(e) = crate::private::bring_bot(&sh, &room_id, &ghost).await {
                            tracing::warn!(%room_id, error = ?e, "The bot could not join a direct chat that turned on encryption.");
                        }
                    });
                }
            }
            Effect::Encrypted { room_id, .. } => {
                tracing::error!(
                    %room_id,
                    "A linked Matrix room turned on encryption; it is unlinked, because the gateway would read it invisibly."
                );
                sh.refuse_room(&room_id);
            }
            Effect::Name {
                room_id,
                user_id,
                name,
            } => {
                lock(&sh.names).put((room_id, user_id), name);
            }
            Effect::GhostLeft { room_id, user_id } => sh.ghosts.forget_joined(&user_id, &room_id),
            Effect::GhostInvited { room_id, ghost, by } => {
                crate::private::invited(sh, room_id, ghost, by);
            }
            Effect::PrivateLeft { room_id } => crate::private::left(sh, &room_id),
            Effect::BotInvited {
                room_id,
                by,
                direct,
            } => {
                let admin = sh.admins.contains(&by);
                if !admin && !direct {
                    tracing::info!(%room_id, %by, "Declined an invite to a room that is no direct chat from someone who is not an admin.");
                    tokio::spawn(decline_invite(sh.clone(), room_id));
                    continue;
                }
                // Anyone may open a direct chat with the bot, for the commands everyone
                // has (`help`, `dm off`, `dm on`); one such room per person who is no
                // admin: a newer one replaces the older, which the bot leaves.
                let replaced: Vec<String> = if admin {
                    Vec::new()
                } else {
                    lock(&sh.command_rooms)
                        .iter()
                        .filter(|(r, opener)| **opener == by && **r != room_id)
                        .map(|(r, _)| r.clone())
                        .collect()
                };
                tracing::info!(%room_id, %by, admin, "The bot was invited into a room that is not linked; joining it to take commands.");
                // A command room from now on: the homeserver sends the room's next events
                // after the invite, possibly before our join call returns.
                lock(&sh.command_rooms).insert(room_id.clone(), by.clone());
                for old in replaced {
                    tokio::spawn(leave_command_room(sh.clone(), old));
                }
                tokio::spawn(accept_invite(sh.clone(), room_id, by));
            }
            Effect::Command {
                room_id,
                event_id,
                sender,
                text,
            } => {
                let answered = match lock(&sh.command_rooms).get(&room_id) {
                    Some(opener) => {
                        sh.admins.contains(opener)
                            || sh.admins.contains(&sender)
                            || *opener == sender
                    }
                    None => false,
                };
                if !answered {
                    tracing::debug!(%room_id, "Ignored text in a room that is not linked, from neither an admin nor who opened it as a command room.");
                    continue;
                }
                // A transaction may come again (a later event failed to store): a command
                // runs once.
                let key = format!("{}:command:{event_id}", sh.config.id);
                match sh.store.txn_done(&key) {
                    Ok(false) => {}
                    Ok(true) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not check a command's id; running it.");
                    }
                }
                if let Err(e) = sh.store.mark_txn(&key) {
                    tracing::warn!(error = %e, "Could not record a command's id.");
                }
                tokio::spawn(run_command(sh.clone(), room_id, event_id, sender, text));
            }
        }
    }
}

/// The bot joins a room it was invited to (a direct chat) and takes commands there.
async fn accept_invite(sh: Arc<Shared>, room_id: String, by: String) {
    if let Err(e) = sh.client.join(&room_id, None).await {
        tracing::warn!(%room_id, %by, error = %e, "The bot could not accept an invite.");
        lock(&sh.command_rooms).remove(&room_id);
        return;
    }
    if let Err(e) = sh
        .store
        .put(crate::COMMAND_ROOMS_TABLE, &room_id, by.as_bytes())
    {
        tracing::warn!(error = %e, "Could not record a command room.");
    }
}

/// The bot leaves a command room a newer one of the same person replaced.
async fn leave_command_room(sh: Arc<Shared>, room_id: String) {
    lock(&sh.command_rooms).remove(&room_id);
    if let Err(e) = sh.store.remove(crate::COMMAND_ROOMS_TABLE, &room_id) {
        tracing::warn!(%room_id, error = %e, "Could not forget a command room.");
    }
    if let Err(e) = sh.client.leave_with_reason(&room_id, REPLACED_REASON).await {
        tracing::warn!(%room_id, error = %e, "Could not leave a replaced command room.");
    }
}

/// Why the bot leaves a person's older direct chat when they open a newer one.
pub const REPLACED_REASON: &str = "A newer direct chat with the gateway replaces this one.";

/// Why the bot declines an invite to a room that is no direct chat from someone who is not
/// an admin (shown to the inviter).
pub const DECLINE_REASON: &str =
    "This gateway takes commands only from its admins, or in a direct chat.";

/// Rejects an invite (leaves with [`DECLINE_REASON`]).
async fn decline_invite(sh: Arc<Shared>, room_id: String) {
    if let Err(e) = sh.client.leave_with_reason(&room_id, DECLINE_REASON).await {
        tracing::warn!(%room_id, error = %e, "Could not decline an invite.");
    }
}

/// Hands a command to the gateway and posts its answer as the bot's notice in the room.
async fn run_command(
    sh: Arc<Shared>,
    room_id: String,
    event_id: String,
    sender: String,
    text: String,
) {
    let display_name = match sh.client.state(&room_id, "m.room.member", &sender).await {
        Ok(Some(m)) => m
            .get("displayname")
            .and_then(Value::as_str)
            .map(str::to_owned),
        _ => None,
    }
    .unwrap_or_else(|| {
        crate::ids::split_user_id(&sender)
            .map(|(l, _)| l.to_owned())
            .unwrap_or_else(|| sender.clone())
    });
    tracing::info!(%room_id, %sender, "Command from Matrix.");
    let from = vec![junction_core::UserRef::new(
        sh.network.clone(),
        sender.as_str(),
    )];
    // Without an answer, the sender is told why.
    let answer = junction_core::adapter::ask(&sh.commands, from, display_name, text)
        .await
        .unwrap_or_else(|why| why);
    if answer.trim().is_empty() {
        return;
    }
    let content = json!({"msgtype": "m.notice", "body": answer});
    let txn = format!("cmd.{event_id}");
    // Encrypted when the command room is.
    if let Err(e) =
        crate::crypto::send_event(&sh, &room_id, "m.room.message", &txn, &content, None, None).await
    {
        tracing::warn!(%room_id, error = ?e, "Could not answer a command.");
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The store key of transaction `txn` carrying `body`'s events.
    fn key(txn: &str, body: &Value) -> String {
        let events = body["events"].as_array().cloned().unwrap_or_default();
        txn_key("junction", txn, &events, body)
    }
    use crate::config::MatrixConfig;
    use crate::connection::Client;
    use axum::body::Body;
    use axum::http::Request;
    use junction_core::{AdapterStore, EventKind, NetworkId, RoomId, Secret};
    use junction_store::MemStore;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    const HS_TOKEN: &str = "hs-secret";

    /// The answer of `app` to `req`.
    async fn answer(app: &axum::Router, req: Request<Body>) -> axum::response::Response {
        app.clone().oneshot(req).await.expect("call")
    }

    fn shared() -> (Arc<Shared>, Arc<dyn AdapterStore>, mpsc::Receiver<Inbound>) {
        let (sh, store, rx, _) = shared_with_commands();
        (sh, store, rx)
    }

    fn shared_with_commands() -> (
        Arc<Shared>,
        Arc<dyn AdapterStore>,
        mpsc::Receiver<Inbound>,
        mpsc::Receiver<junction_core::Command>,
    ) {
        // Nothing listens on the discard port: lookups fail at once.
        shared_on("http://127.0.0.1:9")
    }

    /// An adapter's shared state with the homeserver at `homeserver`, the room
    /// `#lobby:matrix.test` linked as `!room`, and alice's name known there.
    pub(crate) fn shared_on(
        homeserver: &str,
    ) -> (
        Arc<Shared>,
        Arc<dyn AdapterStore>,
        mpsc::Receiver<Inbound>,
        mpsc::Receiver<junction_core::Command>,
    ) {
        let config = MatrixConfig {
            homeserver: homeserver.into(),
            server_name: "matrix.test".into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            as_token: Secret::new("as-secret"),
            hs_token: Secret::new(HS_TOKEN),
            bot: "junction".into(),
            id: "junction".into(),
            user_prefix: "_junction_".into(),
            origin_marks: true,
        };
        let store = junction_store::scoped(Arc::new(MemStore::new()), NetworkId::new("matrix"));
        let client = Client::new(
            &config.homeserver,
            config.as_token.clone(),
            CancellationToken::new(),
        )
        .with_attempts(1);
        let (tx, rx) = mpsc::channel(16);
        let (commands, commands_rx) = mpsc::channel(4);
        let sh = Shared::new(
            config,
            NetworkId::new("matrix"),
            store.clone(),
            client,
            "http://gw",
            tx,
            commands,
        )
        .expect("shared");
        let mut sh = sh;
        sh.admins.insert("@alice:matrix.test".into());
        sh.add_room(RoomId::new("#lobby:matrix.test"), "!room".into());
        sh.ready.send_replace(true);
        lock(&sh.names).put(
            ("!room".into(), "@alice:matrix.test".into()),
            "Alice".into(),
        );
        (Arc::new(sh), store, rx, commands_rx)
    }

    #[tokio::test]
    async fn text_in_a_room_the_bot_was_invited_to_is_a_command_run_once() {
        let (sh, _, mut rx, mut commands) = shared_with_commands();
        let app = router(sh.clone());
        let say = |id: &str, room: &str| {
            json!({"type": "m.room.message", "room_id": room, "sender": "@alice:matrix.test",
                   "event_id": id, "origin_server_ts": 1,
                   "content": {"msgtype": "m.text", "body": "status"}})
        };
        // Text in a room the bot was never invited to is nobody's business.
        let r = answer(
            &app,
            txn_request(
                "c0",
                Some(HS_TOKEN),
                &json!({"events": [say("$s0", "!stranger")]}),
            ),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        // The invite and the first line in one transaction: the line is a command already,
        // although the bot's join (to an unreachable homeserver here) has not succeeded.
        let body = json!({"events": [
            {"type": "m.room.member", "room_id": "!dm", "sender": "@alice:matrix.test",
             "state_key": "@junction:matrix.test", "event_id": "$i", "origin_server_ts": 1,
             "content": {"membership": "invite"}},
            say("$c1", "!dm"),
        ]});
        let r = answer(&app, txn_request("c1", Some(HS_TOKEN), &body)).await;
        assert_eq!(r.status(), StatusCode::OK);
        let command = tokio::time::timeout(std::time::Duration::from_secs(10), commands.recv())
            .await
            .expect("in time")
            .expect("a command");
        assert_eq!(command.text, "status");
        assert_eq!(
            command.from,
            vec![junction_core::UserRef::new("matrix", "@alice:matrix.test")]
        );
        assert_eq!(command.display_name, "alice");
        let _ = command.reply.send("ok".into());
        // The same line again (the transaction replayed under another id): not run twice.
        let r = answer(
            &app,
            txn_request(
                "c2",
                Some(HS_TOKEN),
                &json!({"events": [say("$c1", "!dm")]}),
            ),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), commands.recv())
                .await
                .is_err()
        );
        // Nothing of it is a lobby event.
        assert!(rx.try_recv().is_err());
    }

    #[tokio::test]
    async fn invites_from_strangers_are_declined_and_their_rooms_unanswered() {
        let (sh, _, mut rx, mut commands) = shared_with_commands();
        let app = router(sh.clone());
        let say = |id: &str, room: &str, who: &str| {
            json!({"type": "m.room.message", "room_id": room, "sender": who,
                   "event_id": id, "origin_server_ts": 1,
                   "content": {"msgtype": "m.text", "body": "help"}})
        };
        let invite = |room: &str, who: &str, direct: bool| {
            json!({"type": "m.room.member", "room_id": room, "sender": who,
                   "state_key": "@junction:matrix.test", "event_id": format!("$i{room}"),
                   "origin_server_ts": 1,
                   "content": {"membership": "invite", "is_direct": direct}})
        };
        // Bob is no admin: his invite to a room that is no direct chat makes no command room.
        let body = json!({"events": [
            invite("!bobs", "@bob:matrix.test", false),
            say("$b1", "!bobs", "@bob:matrix.test"),
        ]});
        let r = answer(&app, txn_request("d1", Some(HS_TOKEN), &body)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!lock(&sh.command_rooms).contains_key("!bobs"));
        // A command room bob opened: he and admins are answered there, carol is not.
        lock(&sh.command_rooms).insert("!old".into(), "@bob:matrix.test".into());
        let body = json!({"events": [
            say("$c2", "!old", "@carol:matrix.test"),
            say("$b2", "!old", "@bob:matrix.test"),
            say("$a2", "!old", "@alice:matrix.test"),
        ]});
        let r = answer(&app, txn_request("d2", Some(HS_TOKEN), &body)).await;
        assert_eq!(r.status(), StatusCode::OK);
        for who in ["@bob:matrix.test", "@alice:matrix.test"] {
            let command = tokio::time::timeout(std::time::Duration::from_secs(10), commands.recv())
                .await
                .expect("in time")
                .expect("a command");
            assert_eq!(
                command.from,
                vec![junction_core::UserRef::new("matrix", who)]
            );
            let _ = command.reply.send(String::new());
        }
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), commands.recv())
                .await
                .is_err(),
            "carol was answered"
        );
        // A direct chat from bob: a command room, which replaces his older one.
        let body = json!({"events": [invite("!bobdm", "@bob:matrix.test", true)]});
        let r = answer(&app, txn_request("d3", Some(HS_TOKEN), &body)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            lock(&sh.command_rooms).get("!bobdm").map(String::as_str),
            Some("@bob:matrix.test")
        );
        wait_until(|| !lock(&sh.command_rooms).contains_key("!old")).await;
        assert!(rx.try_recv().is_err());
    }

    /// Waits (a bounded number of short turns) for `done`.
    async fn wait_until(done: impl Fn() -> bool) {
        for _ in 0..100 {
            if done() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(done(), "not done in time");
    }

    fn txn_request(txn: &str, token: Option<&str>, body: &Value) -> Request<Body> {
        let mut b = Request::builder()
            .method("PUT")
            .uri(format!("/_matrix/app/v1/transactions/{txn}"))
            .header("content-type", "application/json");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(Body::from(body.to_string())).expect("request")
    }

    fn one_message(event_id: &str) -> Value {
        json!({"events": [{
            "type": "m.room.message", "room_id": "!room", "sender": "@alice:matrix.test",
            "event_id": event_id, "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "hi"}
        }]})
    }

    async fn errcode(resp: Response) -> (StatusCode, String) {
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        let v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        (
            status,
            v.get("errcode")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        )
    }

    #[test]
    fn tokens_compare_by_content() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", "abc"));
    }

    #[tokio::test]
    async fn wrong_or_missing_token_is_refused() {
        let (sh, store, mut rx) = shared();
        let app = router(sh);
        let r = answer(&app, txn_request("1", Some("nope"), &one_message("$a"))).await;
        assert_eq!(
            errcode(r).await,
            (StatusCode::FORBIDDEN, "M_FORBIDDEN".into())
        );
        let r = answer(&app, txn_request("1", None, &one_message("$a"))).await;
        assert_eq!(
            errcode(r).await,
            (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED".into())
        );
        for (method, uri) in [
            ("GET", "/_matrix/app/v1/users/@x:matrix.test"),
            ("POST", "/_matrix/app/v1/ping"),
        ] {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("req");
            let r = answer(&app, req).await;
            assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "{uri}");
        }
        assert!(rx.try_recv().is_err());
        assert!(!store.txn_done(&key("1", &json!({}))).expect("store"));
    }

    #[tokio::test]
    async fn ping_and_queries_answer() {
        let (sh, _, _rx) = shared();
        let app = router(sh);
        let req = |m: &str, uri: &str| {
            Request::builder()
                .method(m)
                .uri(uri)
                .header("authorization", format!("Bearer {HS_TOKEN}"))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .expect("req")
        };
        let r = answer(&app, req("POST", "/_matrix/app/v1/ping")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = answer(
            &app,
            req("GET", "/_matrix/app/v1/users/@_junction_x:matrix.test"),
        )
        .await;
        assert_eq!(
            errcode(r).await,
            (StatusCode::NOT_FOUND, "M_NOT_FOUND".into())
        );
        let r = answer(&app, req("GET", "/_matrix/app/v1/rooms/%23x:matrix.test")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
        let r = answer(&app, req("GET", "/_matrix/app/v1/nothing")).await;
        assert_eq!(
            errcode(r).await,
            (StatusCode::NOT_FOUND, "M_UNRECOGNIZED".into())
        );
    }

    /// A transaction as large as a homeserver may send (100 events near the 64 KiB event
    /// limit, about 6 MiB) is read and answered 200, each event passed on; a body past
    /// [`MAX_TRANSACTION_BYTES`] is refused, and a stranger's large body is not read at all.
    #[tokio::test]
    async fn a_transaction_of_a_hundred_large_events_is_taken() {
        let (sh, _, mut rx) = shared();
        let app = router(sh);
        let filler = "x".repeat(60_000);
        let events: Vec<Value> = (0..100)
            .map(|i| {
                json!({"type": "m.room.message", "room_id": "!room", "sender": "@alice:matrix.test",
                       "event_id": format!("$big{i}"), "origin_server_ts": 1,
                       "content": {"msgtype": "m.text", "body": format!("{i} {filler}")}})
            })
            .collect();
        let body = json!({ "events": events });
        assert!(body.to_string().len() > 6_000_000);
        let acks = tokio::spawn(async move {
            let mut n = 0;
            while let Some(inbound) = rx.recv().await {
                if let Some(ack) = inbound.ack {
                    let _ = ack.send(Ok(()));
                }
                n += 1;
                if n == 100 {
                    break;
                }
            }
            n
        });
        let r = answer(&app, txn_request("big", Some(HS_TOKEN), &body)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(acks.await.expect("join"), 100);

        let huge = json!({"events": [], "pad": "y".repeat(MAX_TRANSACTION_BYTES)});
        let r = answer(&app, txn_request("huge", Some(HS_TOKEN), &huge)).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let r = answer(&app, txn_request("stranger", Some("wrong"), &huge)).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }

    #[tokio::test]
    async fn answers_200_only_after_the_ack_and_replays_are_noops() {
        let (sh, store, mut rx) = shared();
        let app = router(sh);
        let call = tokio::spawn(app.clone().oneshot(txn_request(
            "7",
            Some(HS_TOKEN),
            &one_message("$a"),
        )));
        let inbound = rx.recv().await.expect("inbound");
        assert_eq!(inbound.event.origin.room, RoomId::new("#lobby:matrix.test"));
        assert_eq!(inbound.event.sender.display_name, "Alice");
        assert!(matches!(inbound.event.kind, EventKind::Message(_)));
        // Not answered, and not marked, while the event is not durable.
        assert!(!call.is_finished());
        assert!(!store
            .txn_done(&key("7", &one_message("$a")))
            .expect("store"));
        inbound.ack.expect("ack wanted").send(Ok(())).expect("ack");
        let r = call.await.expect("join").expect("call");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(store
            .txn_done(&key("7", &one_message("$a")))
            .expect("store"));

        // The same transaction again: 200 at once, nothing sent to the gateway.
        let r = answer(&app, txn_request("7", Some(HS_TOKEN), &one_message("$a"))).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(rx.try_recv().is_err());

        // The same id with other events: the homeserver's counter started again (Synapse on
        // SQLite after a restart). A new transaction, not a replay.
        let call = tokio::spawn(app.clone().oneshot(txn_request(
            "7",
            Some(HS_TOKEN),
            &one_message("$c"),
        )));
        let inbound = rx.recv().await.expect("a new transaction with a reused id");
        assert_eq!(inbound.event.remote_id.as_str(), "$c");
        inbound.ack.expect("ack wanted").send(Ok(())).expect("ack");
        assert_eq!(
            call.await.expect("join").expect("call").status(),
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_failed_ack_answers_500_and_the_retry_is_delivered() {
        let (sh, store, mut rx) = shared();
        let app = router(sh);
        let call = tokio::spawn(app.clone().oneshot(txn_request(
            "8",
            Some(HS_TOKEN),
            &one_message("$b"),
        )));
        let inbound = rx.recv().await.expect("inbound");
        inbound
            .ack
            .expect("ack wanted")
            .send(Err("disk full".into()))
            .expect("ack");
        let r = call.await.expect("join").expect("call");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!store
            .txn_done(&key("8", &one_message("$b")))
            .expect("store"));

        // A dropped ack (gateway gone) is a failure too.
        let call = tokio::spawn(app.clone().oneshot(txn_request(
            "8",
            Some(HS_TOKEN),
            &one_message("$b"),
        )));
        drop(rx.recv().await.expect("inbound"));
        let r = call.await.expect("join").expect("call");
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);

        let call = tokio::spawn(app.clone().oneshot(txn_request(
            "8",
            Some(HS_TOKEN),
            &one_message("$b"),
        )));
        let inbound = rx.recv().await.expect("inbound again");
        assert_eq!(inbound.event.remote_id.as_str(), "$b");
        inbound.ack.expect("ack wanted").send(Ok(())).expect("ack");
        assert_eq!(
            call.await.expect("join").expect("call").status(),
            StatusCode::OK
        );
        assert!(store
            .txn_done(&key("8", &one_message("$b")))
            .expect("store"));
    }

    #[tokio::test]
    async fn events_of_unlinked_rooms_and_our_ghosts_are_acknowledged_without_the_gateway() {
        let (sh, store, mut rx) = shared();
        let app = router(sh);
        let body = json!({"events": [
            {"type": "m.room.message", "room_id": "!other", "sender": "@alice:matrix.test",
             "event_id": "$x", "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "hi"}},
            {"type": "m.room.message", "room_id": "!room", "sender": "@_junction_irc_local_bob:matrix.test",
             "event_id": "$y", "origin_server_ts": 1, "content": {"msgtype": "m.text", "body": "echo"}}
        ]});
        let r = answer(&app, txn_request("9", Some(HS_TOKEN), &body)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(rx.try_recv().is_err());
        assert!(store.txn_done(&key("9", &body)).expect("store"));
    }

    #[tokio::test]
    async fn malformed_bodies_are_refused() {
        let (sh, _, _rx) = shared();
        let req = Request::builder()
            .method("PUT")
            .uri("/_matrix/app/v1/transactions/10")
            .header("authorization", format!("Bearer {HS_TOKEN}"))
            .body(Body::from("not json"))
            .expect("req");
        let r = answer(&router(sh), req).await;
        assert_eq!(
            errcode(r).await,
            (StatusCode::BAD_REQUEST, "M_NOT_JSON".into())
        );
    }

    #[tokio::test]
    async fn media_links_verify_and_stop_after_redaction() {
        let (sh, _, _rx) = shared();
        let link = sh.media.link("mxc://matrix.test/abc").expect("link");
        let q = link.split_once('?').expect("query").1;
        let exp: u64 = q
            .split('&')
            .next()
            .and_then(|p| p.strip_prefix("exp="))
            .and_then(|e| e.parse().ok())
            .expect("exp");
        let sig = q.split("sig=").nth(1).expect("sig");
        assert!(sh.media.verify("matrix.test", "abc", exp, sig));
        assert!(!sh.media.verify("matrix.test", "abd", exp, sig));
        assert!(!sh.media.verify("matrix.test", "abc", exp + 1, sig));
        assert!(!sh.media.verify("matrix.test", "abc", 1, sig));
        let app = router(sh.clone());
        let bad = Request::builder()
            .uri(format!("/media/matrix.test/abc?exp={exp}&sig=00"))
            .body(Body::empty())
            .expect("req");
        assert_eq!(answer(&app, bad).await.status(), StatusCode::FORBIDDEN);
        sh.media.remember("$img", &["mxc://matrix.test/abc".into()]);
        sh.media.redacted("$img");
        assert!(sh.media.is_redacted("matrix.test", "abc"));
        let good = Request::builder()
            .uri(format!("/media/matrix.test/abc?exp={exp}&sig={sig}"))
            .body(Body::empty())
            .expect("req");
        assert_eq!(answer(&app, good).await.status(), StatusCode::GONE);
    }

    /// A transaction may carry only device data (to-device messages, key counts): its key
    /// covers that data, so that the same id with other data is no replay, and the same
    /// transaction sent again is one.
    #[test]
    fn device_data_is_part_of_the_transaction_key() {
        let a = json!({"events": [], "de.sorunome.msc2409.to_device": [{"type": "m.room.encrypted", "content": {"n": 1}}]});
        let b = json!({"events": [], "de.sorunome.msc2409.to_device": [{"type": "m.room.encrypted", "content": {"n": 2}}]});
        let none = json!({"events": []});
        assert_eq!(key("7", &a), key("7", &a.clone()));
        assert_ne!(key("7", &a), key("7", &b));
        assert_ne!(key("7", &a), key("7", &none));
        // Without device data the key is what earlier versions wrote.
        assert_eq!(key("7", &none), txn_key("junction", "7", &[], &Value::Null));
    }
}
