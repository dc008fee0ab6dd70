//! The bot's device on the homeserver (made with MSC4190, lost ones noticed) and the files
//! in `data_dir` that keep it: its id and the generated pickle key.

use super::CryptoError;
use crate::connection::{Client, Method};
use crate::ids::path_segment;
use serde_json::json;
use std::path::{Path, PathBuf};

/// The directory in `data_dir` the crypto store and the device id live in.
pub const CRYPTO_DIR: &str = "matrix-crypto";
/// The file in [`CRYPTO_DIR`] holding the generated pickle key (mode 0600), when the config
/// gives none.
pub(super) const PICKLE_KEY_FILE: &str = "pickle.key";
/// The file in [`CRYPTO_DIR`] holding the bot's device id.
pub(super) const DEVICE_FILE: &str = "device_id";
/// How the gateway's device ids start.
const DEVICE_PREFIX: &str = "JUNCTION";
/// The display name of the bot's device.
const DEVICE_NAME: &str = "Junction gateway";

/// [`DEVICE_PREFIX`] and ten random capitals.
pub(super) fn new_device_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let tail: String = (0..10)
        .map(|_| char::from(b'A' + rng.gen_range(0..26u8)))
        .collect();
    format!("{DEVICE_PREFIX}{tail}")
}

/// True when the homeserver knows the bot's device `device`.
pub(super) async fn device_exists(
    client: &Client,
    bot: &str,
    device: &str,
) -> Result<bool, CryptoError> {
    let path = format!("/_matrix/client/v3/devices/{}", path_segment(device));
    match client
        .request(Method::GET, &path, &[("user_id", bot.to_owned())], None)
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.status() == Some(404) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Makes (or keeps) the bot's device `device` (MSC4190).
pub(super) async fn create_device(
    client: &Client,
    bot: &str,
    device: &str,
) -> Result<(), CryptoError> {
    let path = format!("/_matrix/client/v3/devices/{}", path_segment(device));
    client
        .request(
            Method::PUT,
            &path,
            &[("user_id", bot.to_owned())],
            Some(json!({"display_name": DEVICE_NAME})),
        )
        .await?;
    Ok(())
}

/// Deletes the bot's earlier gateway devices (their keys went with a lost or new
/// `data_dir`): members' clients would otherwise keep sharing room keys with them.
pub(super) async fn forget_old_devices(client: &Client, bot: &str, current: &str) {
    let who = [("user_id", bot.to_owned())];
    let devices = match client
        .request(Method::GET, "/_matrix/client/v3/devices", &who, None)
        .await
    {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "Could not list the bot's devices.");
            return;
        }
    };
    let old = devices["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["device_id"].as_str())
        .filter(|id| id.starts_with(DEVICE_PREFIX) && *id != current)
        .map(str::to_owned)
        .collect::<Vec<_>>();
    for id in old {
        let path = format!("/_matrix/client/v3/devices/{}", path_segment(&id));
        match client
            .request(Method::DELETE, &path, &who, Some(json!({})))
            .await
        {
            Ok(_) => tracing::info!(device = %id, "Deleted an earlier device of the gateway."),
            Err(e) => {
                tracing::debug!(device = %id, error = %e, "Could not delete an earlier device.")
            }
        }
    }
}

/// Makes `dir` readable by its owner only.
pub(super) fn make_private_dir(dir: &PathBuf) -> Result<(), CryptoError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| CryptoError::Io(format!("creating {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| CryptoError::Io(format!("protecting {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// The pickle key kept in `file`, made (32 random bytes, hex, mode 0600) when missing.
pub(super) fn generated_key(file: &Path) -> Result<String, CryptoError> {
    if let Ok(k) = std::fs::read_to_string(file) {
        if !k.trim().is_empty() {
            return Ok(k.trim().to_owned());
        }
    }
    let key = hex::encode(rand::random::<[u8; 32]>());
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(file)
        .map_err(|e| CryptoError::Io(format!("creating {}: {e}", file.display())))?;
    std::io::Write::write_all(&mut f, key.as_bytes())
        .map_err(|e| CryptoError::Io(format!("writing {}: {e}", file.display())))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_are_fresh_capitals() {
        let a = new_device_id();
        assert!(a.starts_with("JUNCTION") && a.len() == 18, "{a}");
        assert!(a.chars().all(|c| c.is_ascii_uppercase()));
        assert_ne!(a, new_device_id());
    }

    #[test]
    fn the_generated_pickle_key_is_kept_private() {
        let dir = std::env::temp_dir().join(format!("junction-key-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join(PICKLE_KEY_FILE);
        let k = generated_key(&file).expect("key");
        assert_eq!(k.len(), 64);
        assert_eq!(generated_key(&file).expect("again"), k);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
