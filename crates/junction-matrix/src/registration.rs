//! The appservice registration the homeserver loads (Synapse: `app_service_config_files`),
//! printed by `junction registration`.

use crate::config::MatrixConfig;
use junction_core::format::regex_escape;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The registration YAML. It carries the real tokens: this is the one place they are printed.
///
/// Besides the exclusive `@<prefix>.*` users and `#<prefix>.*` aliases, every linked alias
/// on our server (`aliases`, e.g. `#lobby:matrix.test`) gets a non-exclusive namespace of its
/// own: Synapse lets an appservice create only aliases inside its namespaces, and the
/// gateway creates a linked room whose alias is free. Non-exclusive, so people keep the
/// right to make that alias themselves.
pub fn registration_yaml(m: &MatrixConfig, aliases: &[String]) -> String {
    let server = regex_escape(&m.server_name);
    let prefix = regex_escape(&m.user_prefix);
    let ours = format!(":{}", m.server_name);
    let mut shared = String::new();
    let mut seen = std::collections::HashSet::new();
    for alias in aliases {
        // Only aliases on our server can be created; the prefix namespace covers its own.
        let Some(local) = alias.strip_prefix('#').and_then(|a| a.strip_suffix(&ours)) else {
            continue;
        };
        if local.starts_with(&m.user_prefix) || !seen.insert(local) {
            continue;
        }
        let _ = write!(
            shared,
            "    - exclusive: false\n      regex: {}\n",
            yaml_str(&format!("#{}:{server}", regex_escape(local)))
        );
    }
    let mut listen = m.listen;
    if listen.ip().is_unspecified() {
        listen.set_ip(match listen.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    format!(
        "# Matrix appservice registration for Junction. The bot is @{bot}:{server_name}.\n\
         id: {id}\n\
         url: {url}\n\
         as_token: {as_token}\n\
         hs_token: {hs_token}\n\
         sender_localpart: {bot_q}\n\
         rate_limited: false\n\
         receive_ephemeral: true\n\
         namespaces:\n\
         \x20 users:\n\
         \x20   - exclusive: true\n\
         \x20     regex: {users}\n\
         \x20 aliases:\n\
         \x20   - exclusive: true\n\
         \x20     regex: {aliases}\n\
         {shared}\
         \x20 rooms: []\n",
        bot = m.bot,
        server_name = m.server_name,
        id = yaml_str(&m.id),
        url = yaml_str(&format!("http://{listen}")),
        as_token = yaml_str(m.as_token.expose()),
        hs_token = yaml_str(m.hs_token.expose()),
        bot_q = yaml_str(&m.bot),
        users = yaml_str(&format!("@{prefix}.*:{server}")),
        aliases = yaml_str(&format!("#{prefix}.*:{server}")),
    )
}

/// The registration keys a gateway with `[matrix] encryption = true` adds, appended to
/// [`registration_yaml`]: the homeserver pushes the bot device's to-device messages
/// (MSC2409), device list changes and one-time key counts (MSC3202) in transactions, and lets
/// the appservice make the bot's device (MSC4190). Synapse needs
/// `experimental_features: {msc2409_to_device_messages_enabled: true,
/// msc3202_transaction_extensions: true}` in its own config for them.
pub const ENCRYPTION_KEYS: &str = "\
# End-to-bridge encryption ([matrix] encryption = true).
org.matrix.msc3202: true
io.element.msc4190: true
";

/// A YAML single-quoted scalar: no escapes inside except `''` for `'`.
fn yaml_str(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn matrix_config() -> MatrixConfig {
        MatrixConfig {
            homeserver: "http://127.0.0.1:8008".into(),
            server_name: "matrix.test".into(),
            listen: "0.0.0.0:9009".parse().unwrap(),
            as_token: junction_core::Secret::new("as"),
            hs_token: junction_core::Secret::new("hs"),
            bot: "junction".into(),
            id: "junction".into(),
            user_prefix: "_junction_".into(),
            origin_marks: true,
        }
    }

    #[test]
    fn linked_aliases_get_non_exclusive_namespaces() {
        let y = registration_yaml(
            &matrix_config(),
            &[
                "#lobby:matrix.test".into(),
                "#a.b+c:matrix.test".into(),
                "#lobby:matrix.test".into(),
                "#_junction_x:matrix.test".into(),
                "#elsewhere:example.org".into(),
            ],
        );
        assert!(
            y.contains(
                "  aliases:\n    - exclusive: true\n      regex: '#_junction_.*:matrix\\.test'\n\
                 \x20   - exclusive: false\n      regex: '#lobby:matrix\\.test'\n\
                 \x20   - exclusive: false\n      regex: '#a\\.b\\+c:matrix\\.test'\n\
                 \x20 rooms: []\n"
            ),
            "{y}"
        );
        assert_eq!(y.matches("exclusive: false").count(), 2, "{y}");
        assert!(y.contains("url: 'http://127.0.0.1:9009'"), "{y}");
        let none = registration_yaml(&matrix_config(), &[]);
        assert!(!none.contains("exclusive: false"), "{none}");
    }

    #[test]
    fn yaml_quotes() {
        assert_eq!(yaml_str("it's"), "'it''s'");
        assert_eq!(yaml_str("a: b # c"), "'a: b # c'");
    }
}
