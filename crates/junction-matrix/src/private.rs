//! Private conversations: direct chats between a Matrix user and the ghost of someone on
//! another network ([`junction_core::private::Conversation`]).
//!
//! A user opens one the way Element does: a new room and an invite with `is_direct` to a
//! ghost, which joins. When a person of another network writes first, their ghost creates the
//! room (`is_direct`, trusted private chat) and invites the user. Which Matrix room holds which
//! conversation is kept in the store's tables `matrix/private` (room id → conversation) and
//! `matrix/private_rooms` (conversation → room id); when the user leaves, both rows go, so
//! the next message opens a new room. Private text is never logged.
//!
//! With encryption on (`[matrix] encryption = true`) the bot joins each of these rooms too,
//! invited by the ghost: a member's client shares room keys only with the devices of the
//! room's members, and the ghost has none, so the bot's device is the one that decrypts what
//! the person says and encrypts what the ghost says. Encrypted or not, a conversation's
//! events then take the same path as any other's.

use crate::adapter::Shared;
use crate::connection::Method;
use crate::outbound::DeliverError;
use junction_core::private::{is_private, Conversation};
use junction_core::{Delivery, RoomId, RoomRef, UserId};
use serde_json::{json, Value};
use std::sync::Arc;

/// Room id → the conversation it holds.
pub const PRIVATE_TABLE: &str = "private";
/// Conversation → the room id that holds it.
pub const PRIVATE_ROOMS_TABLE: &str = "private_rooms";

/// Why a ghost declines a direct chat with someone the gateway does not know.
pub const UNREACHABLE_REASON: &str =
    "This person cannot be reached through the gateway (never seen in a linked room).";

fn read(sh: &Shared, table: &str, key: &str) -> Option<String> {
    match sh.store.get(table, key) {
        Ok(v) => v.and_then(|v| String::from_utf8(v).ok()),
        Err(e) => {
            tracing::warn!(error = %e, "Could not read a private conversation's room.");
            None
        }
    }
}

/// The conversation a Matrix room holds, if it is a direct chat with a ghost.
pub(crate) fn conversation_of(sh: &Shared, room_id: &str) -> Option<RoomId> {
    read(sh, PRIVATE_TABLE, room_id).map(RoomId::from)
}

/// The Matrix room that holds a conversation, if one is open.
pub(crate) fn room_of(sh: &Shared, conversation: &RoomId) -> Option<String> {
    if !is_private(conversation) {
        return None;
    }
    read(sh, PRIVATE_ROOMS_TABLE, conversation.as_str())
}

/// The ghost of the person a conversation is with (None for a room that is no conversation).
pub(crate) fn ghost_of(sh: &Shared, room: &RoomId) -> Option<String> {
    if !is_private(room) {
        return None;
    }
    let c = Conversation::parse(&RoomRef::new(sh.network.clone(), room.clone()))?;
    Some(sh.ghosts.user_id(&junction_core::Sender::new(c.peer, "")))
}

/// Records that `room_id` holds `conversation` (a newer room replaces an older one).
fn remember(sh: &Shared, room_id: &str, conversation: &RoomId) {
    if let Some(old) = room_of(sh, conversation) {
        let _ = sh.store.remove(PRIVATE_TABLE, &old);
    }
    let put = sh
        .store
        .put(PRIVATE_TABLE, room_id, conversation.as_str().as_bytes())
        .and_then(|()| {
            sh.store.put(
                PRIVATE_ROOMS_TABLE,
                conversation.as_str(),
                room_id.as_bytes(),
            )
        })
        .and_then(|()| sh.store.flush());
    if let Err(e) = put {
        tracing::warn!(error = %e, %room_id, "Could not record a private conversation's room.");
    }
}

/// Forgets the room of a conversation (its person left it); the ghost leaves too.
pub(crate) fn left(sh: &Arc<Shared>, room_id: &str) {
    let Some(conversation) = conversation_of(sh, room_id) else {
        return;
    };
    if room_of(sh, &conversation).as_deref() == Some(room_id) {
        let _ = sh.store.remove(PRIVATE_ROOMS_TABLE, conversation.as_str());
    }
    let _ = sh.store.remove(PRIVATE_TABLE, room_id);
    tracing::debug!(%room_id, "A direct chat with a ghost was left; the next message opens a new one.");
    let ghost = Conversation::parse(&RoomRef::new(sh.network.clone(), conversation))
        .map(|c| sh.ghosts.user_id(&junction_core::Sender::new(c.peer, "")));
    crate::puppets::lock(&sh.bot_in_private).remove(room_id);
    let sh = sh.clone();
    let room_id = room_id.to_owned();
    tokio::spawn(async move {
        if let Some(ghost) = ghost {
            let _ = crate::outbound::ghost_leaves(&sh, &ghost, &room_id).await;
        }
        if sh.encryption {
            if let Err(e) = sh.client.leave(&room_id, None).await {
                tracing::debug!(%room_id, error = %e, "The bot could not leave a direct chat.");
            }
        }
    });
}

/// A person invited `ghost` into a direct chat: the ghost joins, and the room holds their
/// conversation with the person behind it, when the gateway knows that person; otherwise the
/// ghost declines, saying why.
pub(crate) fn invited(sh: &Arc<Shared>, room_id: String, ghost: String, by: String) {
    let owner = match sh.store.puppet_owner(&ghost) {
        Ok(o) => o,
        Err(e) => {
            tracing::warn!(error = %e, "Could not read a ghost's owner.");
            None
        }
    };
    let Some(owner) = owner.filter(|o| o.network != sh.network) else {
        tracing::info!(%room_id, %ghost, "A direct chat with a ghost nobody stands behind was declined.");
        let sh = sh.clone();
        tokio::spawn(async move {
            let path = format!(
                "/_matrix/client/v3/rooms/{}/leave",
                crate::ids::path_segment(&room_id)
            );
            if let Err(e) = sh
                .client
                .request(
                    Method::POST,
                    &path,
                    &[("user_id", ghost)],
                    Some(json!({ "reason": UNREACHABLE_REASON })),
                )
                .await
            {
                tracing::warn!(%room_id, error = %e, "Could not decline a direct chat.");
            }
        });
        return;
    };
    let conversation = Conversation::new(sh.network.clone(), UserId::from(by), owner)
        .room()
        .room;
    // Before the join: the room's next events may come before the join call returns.
    remember(sh, &room_id, &conversation);
    let sh = sh.clone();
    tokio::spawn(async move {
        match sh.client.join(&room_id, Some(&ghost)).await {
            Ok(_) => {
                sh.ghosts.note_joined(&ghost, &room_id);
                tracing::info!(%room_id, %ghost, "A ghost joined a direct chat.");
                if let Err(e) = bring_bot(&sh, &room_id, &ghost).await {
                    tracing::warn!(%room_id, error = ?e, "The bot could not join a direct chat; it tries again before the next message there.");
                }
            }
            Err(e) => {
                tracing::warn!(%room_id, %ghost, error = %e, "A ghost could not join a direct chat.")
            }
        }
    });
}

/// Makes sure the conversation `d` goes to has a room: the sender's ghost creates one as a
/// direct chat and invites the Matrix user, when none is open.
pub(crate) async fn open(sh: &Arc<Shared>, d: &Delivery) -> Result<(), DeliverError> {
    if let Some(room_id) = room_of(sh, &d.target.room) {
        return match ghost_of(sh, &d.target.room) {
            Some(ghost) => bring_bot(sh, &room_id, &ghost).await,
            None => Ok(()),
        };
    }
    let Some(c) = Conversation::parse(&d.target) else {
        return Err(DeliverError::Permanent("not a conversation".into()));
    };
    if c.peer != d.event.sender.user
        || !matches!(d.event.kind, junction_core::EventKind::Message(_))
    {
        // Only the person behind the ghost opens the room, with a message.
        return Err(DeliverError::Permanent(
            "no direct chat open for this conversation".into(),
        ));
    }
    let _one = sh.room_locks.lock(d.target.room.as_str()).await;
    if let Some(room_id) = room_of(sh, &d.target.room) {
        let ghost = sh.ghosts.user_id(&d.event.sender);
        return bring_bot(sh, &room_id, &ghost).await;
    }
    let ghost = sh.ghosts.ensure(&d.event.sender).await?;
    let body = json!({
        "preset": "trusted_private_chat",
        "is_direct": true,
        "invite": [c.local.as_str()],
    });
    let v: Value = sh
        .client
        .request(
            Method::POST,
            "/_matrix/client/v3/createRoom",
            &[("user_id", ghost.clone())],
            Some(body),
        )
        .await?;
    let Some(room_id) = v.get("room_id").and_then(Value::as_str) else {
        return Err(DeliverError::Transient(
            "createRoom answer without room_id".into(),
        ));
    };
    sh.ghosts.note_joined(&ghost, room_id);
    remember(sh, room_id, &d.target.room);
    tracing::info!(%room_id, %ghost, "A ghost opened a direct chat.");
    bring_bot(sh, room_id, &ghost).await
}

/// With encryption on, makes sure the bot is in the direct chat `room_id` with `ghost`
/// (invited by the ghost when it is not), so that its device takes part; without, nothing.
/// Once known to be in, the bot is not asked again.
pub(crate) async fn bring_bot(sh: &Shared, room_id: &str, ghost: &str) -> Result<(), DeliverError> {
    if !sh.encryption || crate::puppets::lock(&sh.bot_in_private).contains(room_id) {
        return Ok(());
    }
    // Already a member or invited: the join is enough (and changes nothing for a member).
    if sh.client.join(room_id, None).await.is_err() {
        let path = format!(
            "/_matrix/client/v3/rooms/{}/invite",
            crate::ids::path_segment(room_id)
        );
        sh.client
            .request(
                Method::POST,
                &path,
                &[("user_id", ghost.to_owned())],
                Some(json!({ "user_id": sh.bot_id })),
            )
            .await?;
        sh.client.join(room_id, None).await?;
        tracing::info!(%room_id, "The bot joined a direct chat with a ghost, for its device.");
    }
    crate::puppets::lock(&sh.bot_in_private).insert(room_id.to_owned());
    Ok(())
}
