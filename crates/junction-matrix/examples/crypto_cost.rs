//! What end-to-bridge encryption costs per message: one Megolm encryption (as the gateway
//! does for each line from IRC or XMPP) and one decryption (each Matrix member's message),
//! on `matrix-sdk-crypto`'s `OlmMachine` with its in-memory store, timed over many messages.
//! Encryption includes the machine's check that the room key is shared (and a new session
//! every 100 messages, the default rotation); sending keys to devices and the Client-Server
//! calls are not in these figures.
//!
//! `cargo run --release -p junction-matrix --example crypto_cost [messages]`

use matrix_sdk_crypto::types::events::room::encrypted::EncryptedEvent;
use matrix_sdk_crypto::{DecryptionSettings, EncryptionSettings, OlmMachine, TrustRequirement};
use ruma::serde::Raw;
use ruma::{device_id, room_id, user_id};
use serde_json::json;
use std::time::Instant;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let bot = user_id!("@junction:matrix.test");
    let room = room_id!("!lobby:matrix.test");
    let machine = OlmMachine::new(bot, device_id!("JUNCTIONBENCH")).await;
    let mut encrypted = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        // As the gateway does before each message: the session is shared (here with nobody
        // else; the machine keeps its own inbound copy, so it can decrypt what it
        // encrypted), and a new one made when the room's rotation asks (100 messages).
        machine
            .share_room_key(room, std::iter::once(bot), EncryptionSettings::default())
            .await?;
        let content = Raw::from_json(serde_json::value::to_raw_value(&json!({
            "msgtype": "m.text",
            "body": format!("line {i} from IRC, about as long as a chat line usually is"),
        }))?);
        let out = machine
            .encrypt_room_event_raw(room, "m.room.message", &content)
            .await?;
        encrypted.push(out.content);
    }
    let encrypt = start.elapsed();
    let settings = DecryptionSettings {
        sender_device_trust_requirement: TrustRequirement::Untrusted,
    };
    let start = Instant::now();
    for (i, content) in encrypted.iter().enumerate() {
        let event: Raw<EncryptedEvent> = serde_json::from_value(json!({
            "type": "m.room.encrypted", "event_id": format!("$e{i}"), "sender": bot,
            "origin_server_ts": 1, "room_id": room, "content": content,
        }))?;
        machine.decrypt_room_event(&event, room, &settings).await?;
    }
    let decrypt = start.elapsed();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("messages: {n}");
    println!("encrypt: {:.1} µs per message", per(encrypt));
    println!("decrypt: {:.1} µs per message", per(decrypt));
    Ok(())
}
