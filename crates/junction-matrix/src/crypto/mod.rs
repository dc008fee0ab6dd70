//! End-to-bridge encryption (`[matrix] encryption = true`): the bot's own device and its
//! Olm/Megolm state ([`matrix_sdk_crypto::OlmMachine`]), kept in a SQLite crypto store in
//! `data_dir`.
//!
//! - The device is made with MSC4190 (`PUT /_matrix/client/v3/devices/{id}` as the
//!   appservice, masquerading as the bot); its id is kept in `data_dir`, so it survives
//!   restarts. A device the homeserver no longer knows is set up again, with new keys
//!   (`device`).
//! - Every request the machine asks for (keys upload, query, claim, to-device, signatures) is
//!   sent as the bot's device (`?user_id=…&device_id=…`) and its answer handed back
//!   (`requests`).
//! - What the homeserver pushes for the device in transactions (to-device messages, device
//!   list changes, one-time key counts) is fed to the machine by [`Crypto::receive`].
//! - Room events: [`Crypto::decrypt`] for `m.room.encrypted` in linked rooms, private
//!   conversations and command rooms, an event whose keys are missing held until they come
//!   or `[matrix] undecryptable_after` passes (`held`); [`Crypto::encrypt`] before a ghost or
//!   the bot speaks in an encrypted room (the room key shared first with every device of
//!   every member).

use crate::adapter::Shared;
use crate::connection::{Client, ClientError};
use crate::outbound::DeliverError;
use junction_core::Secret;
use matrix_sdk_crypto::types::requests::AnyOutgoingRequest;
use matrix_sdk_crypto::{
    CollectStrategy, DecryptionSettings, EncryptionSettings, EncryptionSyncChanges, OlmMachine,
    TrustRequirement,
};
use matrix_sdk_sqlite::SqliteCryptoStore;
use ruma::api::client::sync::sync_events::DeviceLists;
use ruma::events::room::encryption::RoomEncryptionEventContent;
use ruma::events::room::history_visibility::HistoryVisibility;
use ruma::serde::Raw;
use ruma::{OneTimeKeyAlgorithm, OwnedDeviceId, OwnedRoomId, OwnedUserId, UInt};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod device;
mod held;
mod requests;

pub use device::CRYPTO_DIR;
use device::{
    create_device, device_exists, forget_old_devices, generated_key, make_private_dir,
    new_device_id, DEVICE_FILE, PICKLE_KEY_FILE,
};
pub use held::HELD_TABLE;
pub(crate) use held::{open, retry_loop};

/// The fields of a transaction that carry device data (MSC2409, MSC3202).
pub const DEVICE_FIELDS: [&str; 4] = [
    "de.sorunome.msc2409.to_device",
    "org.matrix.msc3202.device_lists",
    "org.matrix.msc3202.device_one_time_keys_count",
    "org.matrix.msc3202.device_unused_fallback_key_types",
];

/// Why encryption could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// Reading or writing `data_dir`.
    #[error("{0}")]
    Io(String),
    /// The crypto store or machine failed.
    #[error("crypto: {0}")]
    Machine(String),
    /// The homeserver refused or failed a call.
    #[error(transparent)]
    Client(#[from] ClientError),
}

impl CryptoError {
    /// True when trying later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            CryptoError::Client(e) => e.is_transient(),
            CryptoError::Io(_) | CryptoError::Machine(_) => false,
        }
    }
}

fn machine_err(e: impl std::fmt::Display) -> CryptoError {
    CryptoError::Machine(e.to_string())
}

/// The bot's device and its crypto state.
pub struct Crypto {
    machine: OlmMachine,
    client: Client,
    bot: OwnedUserId,
    device: OwnedDeviceId,
    /// One round of requests at a time, and one key share at a time: the machine hands out
    /// each request until it is marked sent.
    sending: tokio::sync::Mutex<()>,
    /// Room id → the content of its `m.room.encryption` (None: known unencrypted).
    rooms: Mutex<HashMap<String, Option<Value>>>,
}

/// How rooms' events are decrypted: the gateway reads what every member's device sends,
/// verified or not (it bridges what the room shows).
fn decryption_settings() -> DecryptionSettings {
    DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    }
}

impl Crypto {
    /// Sets up the bot's device (made on the homeserver if missing) and opens its store in
    /// `data_dir/matrix-crypto`, under `pickle_key` or one generated and kept there.
    pub async fn start(
        client: Client,
        bot: &str,
        data_dir: &Path,
        pickle_key: Option<&Secret>,
    ) -> Result<Self, CryptoError> {
        let dir = data_dir.join(CRYPTO_DIR);
        make_private_dir(&dir)?;
        let key = match pickle_key {
            Some(k) => k.expose().to_owned(),
            None => generated_key(&dir.join(PICKLE_KEY_FILE))?,
        };
        let bot_id = OwnedUserId::try_from(bot).map_err(machine_err)?;
        let device_file = dir.join(DEVICE_FILE);
        let kept = match std::fs::read_to_string(&device_file) {
            Ok(id) if !id.trim().is_empty() => Some(id.trim().to_owned()),
            _ => None,
        };
        let fresh = kept.is_none();
        let lost = match &kept {
            Some(device) if !device_exists(&client, bot, device).await? => {
                tracing::warn!(%device, "The homeserver no longer knows the gateway's device; setting up a new one.");
                true
            }
            _ => false,
        };
        let device = match kept {
            Some(device) if !lost => device,
            _ => {
                // A store without its device (lost on the homeserver, or its id file
                // gone) holds keys nobody can use any more: it is set aside, and a new
                // device made.
                if dir.join("store").exists() {
                    let aside = dir.join(format!("store.old-{}", junction_core::clock::now_ms()));
                    std::fs::rename(dir.join("store"), &aside).map_err(|e| {
                        CryptoError::Io(format!("setting the old store aside: {e}"))
                    })?;
                }
                new_device_id()
            }
        };
        if fresh || lost {
            // Only a new device is made: made again, a device loses its keys on the
            // homeserver, and members' clients then stop sharing room keys with it.
            create_device(&client, bot, &device).await?;
            forget_old_devices(&client, bot, &device).await;
        }
        std::fs::write(&device_file, &device)
            .map_err(|e| CryptoError::Io(format!("writing {}: {e}", device_file.display())))?;
        let store = SqliteCryptoStore::open(dir.join("store"), Some(&key))
            .await
            .map_err(machine_err)?;
        let device_id = OwnedDeviceId::from(device.as_str());
        let machine = OlmMachine::with_store(&bot_id, &device_id, store, None)
            .await
            .map_err(machine_err)?;
        tracing::info!(device = %device_id, "The gateway's Matrix device is ready.");
        let crypto = Self {
            machine,
            client,
            bot: bot_id,
            device: device_id,
            sending: tokio::sync::Mutex::new(()),
            rooms: Mutex::new(HashMap::new()),
        };
        crypto.send_outgoing().await?;
        Ok(crypto)
    }

    /// The bot's device id.
    pub fn device_id(&self) -> &str {
        self.device.as_str()
    }

    /// Feeds what a transaction carries for the bot's device to the machine (to-device
    /// messages addressed to it, device list changes, one-time key counts); what the machine
    /// then asks for goes with [`Crypto::send_outgoing`]. Returns true when room keys
    /// arrived.
    pub async fn receive(&self, body: &Value) -> Result<bool, CryptoError> {
        let (to_device, device_lists, counts, fallback) = self.device_data(body);
        if to_device.is_empty()
            && device_lists.is_empty()
            && counts.is_empty()
            && fallback.is_none()
        {
            return Ok(false);
        }
        tracing::debug!(
            to_device = to_device.len(),
            changed = device_lists.changed.len(),
            left = device_lists.left.len(),
            "Device data for the gateway's device."
        );
        let changes = EncryptionSyncChanges {
            to_device_events: to_device,
            changed_devices: &device_lists,
            one_time_keys_counts: &counts,
            unused_fallback_keys: fallback.as_deref(),
            next_batch_token: None,
        };
        let (_, keys) = self
            .machine
            .receive_sync_changes(changes, &decryption_settings())
            .await
            .map_err(machine_err)?;
        Ok(!keys.is_empty())
    }

    /// What a transaction carries for the bot's device.
    #[allow(clippy::type_complexity)]
    fn device_data(
        &self,
        body: &Value,
    ) -> (
        Vec<Raw<ruma::events::AnyToDeviceEvent>>,
        DeviceLists,
        BTreeMap<OneTimeKeyAlgorithm, UInt>,
        Option<Vec<OneTimeKeyAlgorithm>>,
    ) {
        let to_device: Vec<Raw<ruma::events::AnyToDeviceEvent>> = body
            .get("de.sorunome.msc2409.to_device")
            .or_else(|| body.get("to_device"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|e| {
                        e.get("to_user_id").and_then(Value::as_str) == Some(self.bot.as_str())
                            && e.get("to_device_id").and_then(Value::as_str)
                                == Some(self.device.as_str())
                    })
                    .filter_map(|e| serde_json::from_value(e.clone()).ok())
                    .collect()
            })
            .unwrap_or_default();
        let lists = body
            .get("org.matrix.msc3202.device_lists")
            .or_else(|| body.get("device_lists"));
        let users = |key: &str| -> Vec<OwnedUserId> {
            lists
                .and_then(|l| l.get(key))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .filter_map(|u| OwnedUserId::try_from(u).ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut device_lists = DeviceLists::new();
        device_lists.changed = users("changed");
        device_lists.left = users("left");
        let mine = |key: &str| -> Option<Value> {
            body.get(key)?
                .get(self.bot.as_str())?
                .get(self.device.as_str())
                .cloned()
        };
        let counts: BTreeMap<OneTimeKeyAlgorithm, UInt> =
            mine("org.matrix.msc3202.device_one_time_keys_count")
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default();
        let fallback: Option<Vec<OneTimeKeyAlgorithm>> =
            mine("org.matrix.msc3202.device_unused_fallback_key_types")
                .and_then(|v| serde_json::from_value(v).ok());
        (to_device, device_lists, counts, fallback)
    }

    /// Notes a room's `m.room.encryption` content as seen in its timeline.
    pub fn room_encrypted(&self, room_id: &str, content: Value) {
        crate::puppets::lock(&self.rooms).insert(room_id.to_owned(), Some(content));
    }

    /// The room's encryption settings, read once from its state; None when unencrypted.
    pub async fn encryption_of(&self, room_id: &str) -> Result<Option<Value>, CryptoError> {
        if let Some(known) = crate::puppets::lock(&self.rooms).get(room_id) {
            return Ok(known.clone());
        }
        let state = self.client.state(room_id, "m.room.encryption", "").await?;
        crate::puppets::lock(&self.rooms).insert(room_id.to_owned(), state.clone());
        Ok(state)
    }

    /// Decrypts an `m.room.encrypted` event: the event as if sent in clear (its id, sender,
    /// room and time kept, `m.relates_to` taken from the clear part when the plaintext has
    /// none). `Ok(None)` when its key has not arrived (yet): the key is then requested.
    pub async fn decrypt(&self, ev: &Value) -> Result<Option<Value>, CryptoError> {
        let room_id = ev
            .get("room_id")
            .and_then(Value::as_str)
            .and_then(|r| OwnedRoomId::try_from(r).ok())
            .ok_or_else(|| CryptoError::Machine("an encrypted event without a room".into()))?;
        let raw: Raw<matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent> =
            serde_json::from_value(ev.clone()).map_err(machine_err)?;
        match self
            .machine
            .decrypt_room_event(&raw, &room_id, &decryption_settings())
            .await
        {
            Ok(decrypted) => {
                let plain: Value =
                    serde_json::from_str(decrypted.event.json().get()).map_err(machine_err)?;
                let mut out = ev.clone();
                let mut content = plain.get("content").cloned().unwrap_or_else(|| json!({}));
                if content.get("m.relates_to").is_none() {
                    if let Some(rel) = ev.get("content").and_then(|c| c.get("m.relates_to")) {
                        if let Some(obj) = content.as_object_mut() {
                            obj.insert("m.relates_to".into(), rel.clone());
                        }
                    }
                }
                out["type"] = plain.get("type").cloned().unwrap_or(Value::Null);
                out["content"] = content;
                Ok(Some(out))
            }
            Err(matrix_sdk_crypto::MegolmError::MissingRoomKey(_)) => {
                if let Ok((cancel, request)) = self.machine.request_room_key(&raw, &room_id).await {
                    let _one = self.sending.lock().await;
                    if let Some(c) = cancel {
                        self.send_request(c.request_id(), c.request()).await?;
                    }
                    self.send_request(request.request_id(), request.request())
                        .await?;
                }
                Ok(None)
            }
            Err(e) => Err(machine_err(e)),
        }
    }

    /// Encrypts `content` of type `kind` for `room_id`, whose `m.room.encryption` content is
    /// `settings`, after sharing the room key with every device of `members` that lacks it.
    pub async fn encrypt(
        &self,
        room_id: &str,
        settings: &Value,
        members: &[String],
        kind: &str,
        content: &Value,
    ) -> Result<Value, CryptoError> {
        let room = OwnedRoomId::try_from(room_id).map_err(machine_err)?;
        let users: Vec<OwnedUserId> = members
            .iter()
            .filter_map(|m| OwnedUserId::try_from(m.as_str()).ok())
            .collect();
        let _one = self.sending.lock().await;
        track(&self.machine, &users).await.map_err(machine_err)?;
        self.send_outgoing_locked().await?;
        if let Some((id, claim)) = missing_sessions(&self.machine, &users)
            .await
            .map_err(machine_err)?
        {
            self.send_request(&id, &AnyOutgoingRequest::KeysClaim(claim))
                .await?;
        }
        let encryption: RoomEncryptionEventContent =
            serde_json::from_value(settings.clone()).map_err(machine_err)?;
        let settings = EncryptionSettings::new(
            encryption,
            HistoryVisibility::Shared,
            CollectStrategy::AllDevices,
        );
        let shares = share(&self.machine, &room, &users, settings)
            .await
            .map_err(machine_err)?;
        for r in shares {
            self.send_to_device(&r).await?;
        }
        let raw = Raw::from_json(serde_json::value::to_raw_value(content).map_err(machine_err)?);
        let encrypted = self
            .machine
            .encrypt_room_event_raw(&room, kind, &raw)
            .await
            .map_err(machine_err)?;
        serde_json::from_str(encrypted.content.json().get()).map_err(machine_err)
    }
}

/// Sets up the gateway's device, trying again while the homeserver is not there (false when
/// the gateway shuts down first). Transactions wait for it: answered "unavailable" instead,
/// the homeserver would hold every later one back for a minute or more.
pub(crate) async fn set_up(
    sh: &Shared,
    data_dir: &Path,
    pickle_key: Option<&Secret>,
    shutdown: &CancellationToken,
) -> bool {
    let mut pause = Duration::from_secs(1);
    loop {
        match Crypto::start(sh.client.clone(), &sh.bot_id, data_dir, pickle_key).await {
            Ok(c) => {
                let _ = sh.crypto.set(Arc::new(c));
                return true;
            }
            Err(e) => {
                tracing::warn!(error = %e, "Could not set up the gateway's Matrix device; trying again.");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(60));
    }
}

/// Sends a room event as `user` (None: the bot): encrypted when the room is, in clear
/// otherwise. With encryption on, nothing goes in clear to a room whose state could not be
/// read or before the device is set up: that waits (transient).
pub(crate) async fn send_event(
    sh: &Shared,
    room_id: &str,
    kind: &str,
    txn: &str,
    content: &Value,
    user: Option<&str>,
    ts: Option<u64>,
) -> Result<String, DeliverError> {
    if sh.encryption {
        let Some(crypto) = sh.crypto() else {
            return Err(DeliverError::Transient(
                "the gateway's Matrix device is not set up yet".into(),
            ));
        };
        let settings = crypto.encryption_of(room_id).await.map_err(deliver_err)?;
        if let Some(settings) = settings {
            let members = sh.client.joined_members(room_id).await?;
            let encrypted = crypto
                .encrypt(room_id, &settings, &members, kind, content)
                .await
                .map_err(deliver_err)?;
            return Ok(sh
                .client
                .send(room_id, "m.room.encrypted", txn, &encrypted, user, ts)
                .await?);
        }
    }
    Ok(sh
        .client
        .send(room_id, kind, txn, content, user, ts)
        .await?)
}

fn deliver_err(e: CryptoError) -> DeliverError {
    if e.is_transient() {
        DeliverError::Transient(e.to_string())
    } else {
        DeliverError::Permanent(e.to_string())
    }
}

// The machine's calls that take an iterator of `&UserId`, each behind a boxed future that is
// `Send` for its named lifetime: awaited straight from an `async fn`, the compiler can not
// prove their futures `Send` for every lifetime, which the server's handlers need.
type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

fn track<'a>(
    m: &'a OlmMachine,
    users: &'a [OwnedUserId],
) -> Boxed<'a, matrix_sdk_crypto::store::Result<()>> {
    Box::pin(m.update_tracked_users(users.iter().map(|u| u.as_ref())))
}

#[allow(clippy::type_complexity)]
fn missing_sessions<'a>(
    m: &'a OlmMachine,
    users: &'a [OwnedUserId],
) -> Boxed<
    'a,
    matrix_sdk_crypto::store::Result<
        Option<(
            ruma::OwnedTransactionId,
            ruma::api::client::keys::claim_keys::v3::Request,
        )>,
    >,
> {
    Box::pin(m.get_missing_sessions(users.iter().map(|u| u.as_ref())))
}

fn share<'a>(
    m: &'a OlmMachine,
    room: &'a ruma::RoomId,
    users: &'a [OwnedUserId],
    settings: EncryptionSettings,
) -> Boxed<
    'a,
    Result<
        Vec<Arc<matrix_sdk_crypto::types::requests::ToDeviceRequest>>,
        matrix_sdk_crypto::OlmError,
    >,
> {
    Box::pin(m.share_room_key(room, users.iter().map(|u| u.as_ref()), settings))
}
