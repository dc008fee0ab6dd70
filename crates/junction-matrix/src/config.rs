//! The `[matrix]` section of bridges.toml: as written ([`RawMatrix`], read by [`read`]),
//! checked ([`validate`]), and as the adapter receives it ([`MatrixConfig`]).
//!
//! Keys: `homeserver`, `server_name`, `listen` (`ip:port`), `as_token`, `hs_token`, `bot` (all
//! required); `id` (default `"junction"`), `user_prefix` (default `"_junction_"`),
//! `media_url` (public base URL of the media proxy, default `http://<listen>`),
//! `private_attachment_urls` (default false: attachments from other networks are fetched
//! only from public addresses; true for test setups and closed networks), `origin_marks`
//! (default true: ghost display names end in their network's mark, `bob[i]`), `max_ghosts`
//! (ghosts in rooms at once, default 200), `ghost_idle_timeout_seconds` (default 86400; 0:
//! never), `encryption` (default false: the gateway's own device takes part in encrypted
//! rooms), `pickle_key` (the key the crypto store is encrypted under, usually `${VAR}`;
//! default: one generated and kept in `data_dir`, mode 0600), `undecryptable_after` (how long
//! an encrypted message waits for its keys before its sender is told it was not bridged, as
//! `"90s"`, `"2m"`, `"1h"`; default `"2m"`), `parallel_senders` (messages of different people
//! one room sends at once, 1 to 8; default 1, every room's order kept exactly).

use junction_core::{PuppetLimits, Secret};
use junction_network::{Checker, Str};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;
use toml::Spanned;

/// Matrix application-service settings.
#[derive(Clone, Debug)]
pub struct MatrixConfig {
    /// Client-server API base URL of the homeserver, e.g. `http://127.0.0.1:8008`.
    pub homeserver: String,
    /// The homeserver's server name, e.g. `matrix.test`.
    pub server_name: String,
    /// Where the gateway listens for the homeserver's pushes.
    pub listen: SocketAddr,
    /// Token the gateway uses towards the homeserver.
    pub as_token: Secret,
    /// Token the homeserver uses towards the gateway.
    pub hs_token: Secret,
    /// Localpart of the bot user (`sender_localpart`).
    pub bot: String,
    /// The appservice id in the registration (`junction` by default).
    pub id: String,
    /// Ghost localpart prefix (`_junction_` by default): ghosts are `@<prefix><network>_<name>`.
    pub user_prefix: String,
    /// Ghost display names carry their network's origin mark (`bob[i]`, `carol[x]`), so that
    /// a remote person cannot pass for a Matrix user (`[matrix] origin_marks`, default on).
    pub origin_marks: bool,
}

/// Default `[matrix] id`.
pub const DEFAULT_ID: &str = "junction";
/// Default `[matrix] user_prefix`.
pub const DEFAULT_USER_PREFIX: &str = "_junction_";

/// The `[matrix]` section with what the gateway, rather than the adapter's own settings, uses
/// to build the adapter.
#[derive(Clone, Debug)]
pub struct MatrixSection {
    /// The adapter's settings.
    pub config: MatrixConfig,
    /// `media_url`: the public base URL under which people on the other networks reach the
    /// media proxy (None: `http://<listen>`).
    pub media_url: Option<String>,
    /// `private_attachment_urls`: attachments named by other networks' users may be fetched
    /// from loopback and private addresses (default false: server-side request forgery; for
    /// test setups and closed networks only).
    pub private_attachment_urls: bool,
    /// `max_ghosts` and `ghost_idle_timeout_seconds`.
    pub ghosts: PuppetLimits,
    /// `encryption`: the gateway has a device of its own and bridges encrypted rooms.
    pub encryption: bool,
    /// `pickle_key`: the crypto store's key (None: generated and kept in `data_dir`).
    pub pickle_key: Option<Secret>,
    /// `undecryptable_after`: how long an encrypted message waits for its keys before its
    /// sender is told it was not bridged.
    pub undecryptable_after: Duration,
    /// `parallel_senders`: messages of different people, said within a quarter of a second
    /// of each other, one room sends at once (1: one at a time, every room's order exact).
    pub parallel_senders: usize,
}

/// Default `[matrix] undecryptable_after`: two minutes.
pub const DEFAULT_UNDECRYPTABLE_AFTER: Duration = Duration::from_secs(120);

/// `[matrix]` as written: every key optional here, so that a missing one is reported among
/// the other problems by [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatrix {
    /// Client-server API base URL.
    pub homeserver: Option<Str>,
    /// The homeserver's server name.
    pub server_name: Option<Str>,
    /// Where the homeserver pushes transactions.
    pub listen: Option<Str>,
    /// Token towards the homeserver.
    pub as_token: Option<Str>,
    /// Token the homeserver presents.
    pub hs_token: Option<Str>,
    /// The bot's localpart.
    pub bot: Option<Str>,
    /// The appservice id.
    pub id: Option<Str>,
    /// Localpart prefix of the ghosts.
    pub user_prefix: Option<Str>,
    /// Public base URL of the media proxy.
    pub media_url: Option<Str>,
    /// Attachments may be fetched from loopback and private addresses.
    pub private_attachment_urls: Option<Spanned<bool>>,
    /// Ghost display names carry their network's origin mark.
    pub origin_marks: Option<Spanned<bool>>,
    /// Most ghosts in rooms at once.
    pub max_ghosts: Option<Spanned<i64>>,
    /// Idle time after which a ghost leaves (0: never).
    pub ghost_idle_timeout_seconds: Option<Spanned<i64>>,
    /// The gateway's device takes part in encrypted rooms.
    pub encryption: Option<Spanned<bool>>,
    /// The crypto store's key.
    pub pickle_key: Option<Str>,
    /// How long an encrypted message waits for its keys (`"2m"`).
    pub undecryptable_after: Option<Str>,
    /// Messages of different people one room sends at once.
    pub parallel_senders: Option<Spanned<i64>>,
}

/// Reads `[matrix]` from the whole file, if there is one.
pub fn read(file: &str) -> Result<Option<Spanned<RawMatrix>>, toml::de::Error> {
    junction_network::read_section(file, "matrix")
}

/// Checks `[matrix]`, reporting every problem to `c`; its `listen` address is noted there.
pub fn validate(m: &Spanned<RawMatrix>, c: &mut Checker<'_>) -> Option<MatrixSection> {
    let t = m.span();
    let m = m.get_ref();
    let homeserver = c
        .required(&m.homeserver, t.clone(), "matrix", "homeserver")
        .and_then(|v| c.http_url(v, "matrix.homeserver", "http://127.0.0.1:8008"));
    let server_name = c
        .required(&m.server_name, t.clone(), "matrix", "server_name")
        .and_then(|v| {
            let s = c.nonempty(v, "matrix.server_name")?;
            if server_name_ok(&s) {
                Some(s)
            } else {
                c.error(
                    v.span(),
                    "matrix.server_name",
                    format!("`{s}` is not a server name like `matrix.test`"),
                );
                None
            }
        });
    let listen = c
        .required(&m.listen, t.clone(), "matrix", "listen")
        .and_then(|v| c.socket_addr(v, "matrix.listen"));
    if let Some(addr) = listen {
        c.listen(addr, "matrix.listen");
    }
    let as_token = c
        .required(&m.as_token, t.clone(), "matrix", "as_token")
        .and_then(|v| c.secret(v, "matrix.as_token"));
    let hs_token = c
        .required(&m.hs_token, t.clone(), "matrix", "hs_token")
        .and_then(|v| c.secret(v, "matrix.hs_token"));
    if let (Some(a), Some(h), Some(v)) = (&as_token, &hs_token, &m.hs_token) {
        if a == h {
            c.error(
                v.span(),
                "matrix.hs_token",
                "must differ from `as_token` (each side proves itself with its own token)",
            );
        }
    }
    let bot = c
        .required(&m.bot, t.clone(), "matrix", "bot")
        .and_then(|v| localpart(c, v, "matrix.bot"));
    let id = match &m.id {
        Some(v) => c.nonempty(v, "matrix.id"),
        None => Some(DEFAULT_ID.to_owned()),
    };
    let user_prefix = match &m.user_prefix {
        Some(v) => localpart(c, v, "matrix.user_prefix"),
        None => Some(DEFAULT_USER_PREFIX.to_owned()),
    };
    let media_url = match &m.media_url {
        Some(v) => c
            .http_url(v, "matrix.media_url", "https://chat.example.org:9009")
            .map(Some),
        None => Some(None),
    };
    let ghosts = c.puppet_limits(
        &m.max_ghosts,
        "matrix.max_ghosts",
        &m.ghost_idle_timeout_seconds,
        "matrix.ghost_idle_timeout_seconds",
    );
    let encryption = m.encryption.as_ref().is_some_and(|v| *v.get_ref());
    let pickle_key = match &m.pickle_key {
        Some(v) if !encryption => {
            c.error(
                v.span(),
                "matrix.pickle_key",
                "is used only with `encryption = true`",
            );
            None
        }
        Some(v) => match c.secret(v, "matrix.pickle_key") {
            Some(k) if k.expose().len() < 16 => {
                c.error(
                    v.span(),
                    "matrix.pickle_key",
                    "is too short: give at least 16 characters (32 random bytes, hex, is best)",
                );
                None
            }
            Some(k) => Some(Some(k)),
            None => None,
        },
        None => Some(None),
    };
    let undecryptable_after = match &m.undecryptable_after {
        Some(v) if !encryption => {
            c.error(
                v.span(),
                "matrix.undecryptable_after",
                "is used only with `encryption = true`",
            );
            None
        }
        Some(v) => c
            .nonempty(v, "matrix.undecryptable_after")
            .and_then(|s| {
                let d = wait(&s);
                if d.is_none() {
                    c.error(
                        v.span(),
                        "matrix.undecryptable_after",
                        format!("`{s}` is not a wait like \"90s\", \"2m\" or \"1h\" (from one second to a day)"),
                    );
                }
                d
            }),
        None => Some(DEFAULT_UNDECRYPTABLE_AFTER),
    };
    let parallel_senders = c
        .count_as::<usize>(&m.parallel_senders, "matrix.parallel_senders", 1, 1)
        .and_then(|n| {
            if n <= crate::MAX_PARALLEL_SENDERS {
                return Some(n);
            }
            if let Some(v) = &m.parallel_senders {
                c.error(
                    v.span(),
                    "matrix.parallel_senders",
                    format!("must be at most {}, got {n}", crate::MAX_PARALLEL_SENDERS),
                );
            }
            None
        });
    Some(MatrixSection {
        config: MatrixConfig {
            homeserver: homeserver?,
            server_name: server_name?,
            listen: listen?,
            as_token: as_token?,
            hs_token: hs_token?,
            bot: bot?,
            id: id?,
            user_prefix: user_prefix?,
            origin_marks: m.origin_marks.as_ref().is_none_or(|v| *v.get_ref()),
        },
        media_url: media_url?,
        private_attachment_urls: m
            .private_attachment_urls
            .as_ref()
            .is_some_and(|v| *v.get_ref()),
        ghosts: ghosts?,
        encryption,
        pickle_key: pickle_key?,
        undecryptable_after: undecryptable_after?,
        parallel_senders: parallel_senders?,
    })
}

/// A wait written as a whole number and a unit (`s`, `m`, `h`, `d`): `"90s"`, `"2m"`; from one
/// second to a day.
fn wait(s: &str) -> Option<Duration> {
    let s = s.trim();
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].trim().parse().ok()?;
    let secs = match unit {
        's' => Some(n),
        'm' => n.checked_mul(60),
        'h' => n.checked_mul(3600),
        'd' => n.checked_mul(86_400),
        _ => None,
    }?;
    (1..=86_400)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

/// A Matrix localpart (`bot`, `user_prefix`).
fn localpart(c: &mut Checker<'_>, v: &Str, key: &str) -> Option<String> {
    let s = c.nonempty(v, key)?;
    if s.chars()
        .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
    {
        Some(s)
    } else {
        c.error(
            v.span(),
            key,
            format!("`{s}` is not a Matrix localpart (a-z, 0-9 and . _ = - / +)"),
        );
        None
    }
}

/// `#alias:server` or `!id[:server]`.
pub fn room_ok(s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if let Some(rest) = s.strip_prefix('#') {
        matches!(rest.split_once(':'), Some((local, server)) if !local.is_empty() && server_name_ok(server))
    } else if let Some(rest) = s.strip_prefix('!') {
        match rest.split_once(':') {
            Some((id, server)) => !id.is_empty() && server_name_ok(server),
            None => !rest.is_empty(),
        }
    } else {
        false
    }
}

/// A server name: a host name or IP literal with an optional port.
pub fn server_name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// `@localpart:server`.
pub fn user_ok(s: &str) -> bool {
    matches!(s.strip_prefix('@').and_then(|r| r.split_once(':')),
        Some((local, server)) if !local.is_empty()
            && !local.chars().any(|c| c.is_whitespace() || c.is_control())
            && server_name_ok(server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_syntax() {
        assert!(room_ok("#lobby:matrix.test"));
        assert!(room_ok("!abc"));
        assert!(room_ok("!abc:matrix.test"));
        assert!(room_ok("#a:localhost:8448"));
        assert!(!room_ok("lobby"));
        assert!(!room_ok("#lobby"));
        assert!(!room_ok("#:x"));
        assert!(!room_ok("! x"));
    }

    #[test]
    fn waits_are_a_number_and_a_unit() {
        assert_eq!(wait("2m"), Some(Duration::from_secs(120)));
        assert_eq!(wait("90s"), Some(Duration::from_secs(90)));
        assert_eq!(wait(" 1h "), Some(Duration::from_secs(3600)));
        assert_eq!(wait("1d"), Some(Duration::from_secs(86_400)));
        for bad in [
            "",
            "2",
            "m",
            "0s",
            "2d",
            "-1m",
            "1.5m",
            "2 minutes",
            "2M",
            "99999999999999999999h",
        ] {
            assert_eq!(wait(bad), None, "{bad}");
        }
    }

    #[test]
    fn user_syntax() {
        assert!(user_ok("@bob:matrix.test"));
        assert!(!user_ok("@bob"));
        assert!(!user_ok("@:matrix.test"));
        assert!(!user_ok("bob:matrix.test"));
    }
}
