//! One `[irc.<name>]` section of bridges.toml (network id `irc:<name>`): as written
//! ([`RawIrc`], read by [`read`]), checked ([`validate`]), and as the adapter receives it
//! ([`IrcConfig`]).
//!
//! Keys: `server` (`host:port`), `nick` (required); `tls` (false; `true`: rustls, the
//! certificate checked against the host of `server` with the webpki roots), `tls_ca` (a PEM
//! file of CA certificates trusted besides them, for a private or self-signed CA; relative to
//! the file's directory; needs `tls`), `mode` (`"puppet"` (default) or `"relay"`),
//! `password`, `sasl_account` with `sasl_password`, `max_puppets`,
//! `puppet_idle_timeout_seconds`, `lines_per_second`, `burst`, `max_lines` (defaults from
//! [`IrcConfig::new`]), `channel_history` (`<lines>:<period>`, e.g. `"100:1d"`: the bot turns
//! on InspIRCd's channel mode `+H` in linked channels that have none, where it is a channel
//! operator).

use junction_core::Secret;
use junction_network::{Checker, Str};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use toml::Spanned;

/// How remote users appear on IRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IrcMode {
    /// One connection per remote user that speaks.
    #[default]
    Puppet,
    /// Everything through the bot as `<alice[m]> text`.
    Relay,
}

/// Settings of one IRC network.
#[derive(Clone, Debug)]
pub struct IrcConfig {
    /// The network's name in bridges.toml (`local` for `[irc.local]`); its network id is
    /// `irc:<name>`.
    pub name: String,
    /// `host:port`.
    pub server: String,
    /// Connect with TLS (rustls, the webpki roots trusted, the certificate checked against
    /// the host part of `server`).
    pub tls: bool,
    /// A PEM file of CA certificates trusted besides the webpki roots (a private or
    /// self-signed CA); used only with `tls`.
    pub tls_ca: Option<PathBuf>,
    /// The bot's nick.
    pub nick: String,
    /// Puppet or relay.
    pub mode: IrcMode,
    /// Server password, if any.
    pub password: Option<Secret>,
    /// SASL PLAIN account and password for the bot, if any.
    pub sasl: Option<(String, Secret)>,
    /// Most puppet connections at once on this network (default
    /// [`IrcConfig::DEFAULT_MAX_PUPPETS`]).
    pub max_puppets: usize,
    /// A puppet that said nothing for this long is disconnected.
    pub puppet_idle_timeout: Duration,
    /// Token bucket: lines per second once the burst is used.
    pub lines_per_second: f64,
    /// Token bucket: lines that may go at once.
    pub burst: u32,
    /// A message longer than this many lines is sent as its first `max_lines - 1` lines plus
    /// a note: a link to its whole text when the gateway keeps pastes (`[gateway]
    /// public_url`), else the rest is not sent and the note says so.
    pub max_lines: usize,
    /// Channel history to turn on in each linked channel that has none, as InspIRCd's
    /// channel mode `+H` takes it: `<lines>:<period>` (`100:1d`). Needs the server's
    /// `chanhistory` module and the bot to be a channel operator; the channel then replays
    /// its last lines on join, which is how the bot reads what was said while it was away.
    pub channel_history: Option<String>,
}

impl IrcConfig {
    /// Puppet connections by default: with the bot, three connections from the gateway's
    /// address. Public IRC networks commonly allow three to five connections per IP without
    /// a session-limit exemption and ban the address beyond (Rizon, for one, at the fifth);
    /// three stays within the strictest of them. A network that grants the gateway an
    /// exemption, or one's own server, takes a higher `max_puppets`; the people beyond it are
    /// relayed by the bot.
    pub const DEFAULT_MAX_PUPPETS: usize = 2;

    /// Defaults for everything but name, server and nick.
    pub fn new(
        name: impl Into<String>,
        server: impl Into<String>,
        nick: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            server: server.into(),
            tls: false,
            tls_ca: None,
            nick: nick.into(),
            mode: IrcMode::Puppet,
            password: None,
            sasl: None,
            max_puppets: Self::DEFAULT_MAX_PUPPETS,
            puppet_idle_timeout: Duration::from_secs(24 * 3600),
            lines_per_second: 2.0,
            burst: 10,
            max_lines: 5,
            channel_history: None,
        }
    }
}

/// One `[irc.<name>]` as written: every key optional here, so that a missing one is reported
/// among the other problems by [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIrc {
    /// `host:port`.
    pub server: Option<Str>,
    /// Connect with TLS.
    pub tls: Option<Spanned<bool>>,
    /// PEM file of CA certificates trusted besides the webpki roots.
    pub tls_ca: Option<Str>,
    /// The bot's nick.
    pub nick: Option<Str>,
    /// `puppet` or `relay`.
    pub mode: Option<Str>,
    /// Server password.
    pub password: Option<Str>,
    /// SASL account of the bot.
    pub sasl_account: Option<Str>,
    /// SASL password of the bot.
    pub sasl_password: Option<Str>,
    /// Most puppet connections at once.
    pub max_puppets: Option<Spanned<i64>>,
    /// Idle time after which a puppet disconnects.
    pub puppet_idle_timeout_seconds: Option<Spanned<i64>>,
    /// Flood control: sustained rate.
    pub lines_per_second: Option<Spanned<f64>>,
    /// Flood control: burst size.
    pub burst: Option<Spanned<i64>>,
    /// Longest message relayed in full, in lines.
    pub max_lines: Option<Spanned<i64>>,
    /// `<lines>:<period>` of history (+H) to turn on in linked channels that have none.
    pub channel_history: Option<Str>,
}

/// Every `[irc.<name>]` as written, by name.
pub type RawIrcs = BTreeMap<Str, Spanned<RawIrc>>;

/// Reads every `[irc.<name>]` from the whole file.
pub fn read(file: &str) -> Result<RawIrcs, toml::de::Error> {
    Ok(junction_network::read_section(file, "irc")?.unwrap_or_default())
}

/// Checks one `[irc.<name>]`, reporting every problem to `c`. A `tls_ca` file is read now
/// (relative to the config file's directory), so one without a usable certificate is found
/// before start.
pub fn validate(name: &Str, v: &Spanned<RawIrc>, c: &mut Checker<'_>) -> Option<IrcConfig> {
    let t = v.span();
    let r = v.get_ref();
    let n = name.get_ref();
    let p = format!("irc.{n}");
    let k = |key: &str| format!("{p}.{key}");
    let name_ok = !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        c.error(
            name.span(),
            &p,
            format!("`{n}` is not a network name (letters, digits, - and _)"),
        );
    }
    let server = c
        .required(&r.server, t.clone(), &p, "server")
        .and_then(|v| c.host_port(v, &k("server")));
    let nick = c.required(&r.nick, t.clone(), &p, "nick").and_then(|v| {
        let s = c.nonempty(v, &k("nick"))?;
        if nick_ok(&s) {
            Some(s)
        } else {
            c.error(
                v.span(),
                &k("nick"),
                format!(
                    "`{s}` is not a valid IRC nick (a letter or one of []\\`_^{{|}} \
                         first, then also digits and -, at most 30 characters)"
                ),
            );
            None
        }
    });
    let mode = match &r.mode {
        None => Some(IrcMode::Puppet),
        Some(v) => match c.expand(v, &k("mode"))?.as_str() {
            "puppet" => Some(IrcMode::Puppet),
            "relay" => Some(IrcMode::Relay),
            other => {
                c.error(
                    v.span(),
                    &k("mode"),
                    format!("expected `puppet` or `relay`, got `{other}`"),
                );
                None
            }
        },
    };
    let password = match &r.password {
        None => Some(None),
        Some(v) => c.secret(v, &k("password")).map(Some),
    };
    let sasl = match (&r.sasl_account, &r.sasl_password) {
        (None, None) => Some(None),
        (Some(a), Some(pw)) => {
            let a = c.nonempty(a, &k("sasl_account"));
            let pw = c.secret(pw, &k("sasl_password"));
            a.zip(pw).map(Some)
        }
        (Some(a), None) => {
            c.error(
                a.span(),
                &k("sasl_account"),
                "`sasl_account` needs `sasl_password` too",
            );
            None
        }
        (None, Some(pw)) => {
            c.error(
                pw.span(),
                &k("sasl_password"),
                "`sasl_password` needs `sasl_account` too",
            );
            None
        }
    };
    let d = IrcConfig::new(n.as_str(), "", "");
    let max_puppets = c.count(&r.max_puppets, &k("max_puppets"), 0, d.max_puppets as i64);
    let idle = c.count(
        &r.puppet_idle_timeout_seconds,
        &k("puppet_idle_timeout_seconds"),
        1,
        d.puppet_idle_timeout.as_secs() as i64,
    );
    let lines_per_second = match &r.lines_per_second {
        None => Some(d.lines_per_second),
        Some(v) => {
            let x = *v.get_ref();
            if x.is_finite() && x > 0.0 {
                Some(x)
            } else {
                c.error(
                    v.span(),
                    &k("lines_per_second"),
                    format!("must be a positive number, got {x}"),
                );
                None
            }
        }
    };
    let burst = c.count_as::<u32>(&r.burst, &k("burst"), 1, i64::from(d.burst));
    let max_lines = c.count(&r.max_lines, &k("max_lines"), 1, d.max_lines as i64);
    let channel_history = match &r.channel_history {
        None => Some(None),
        Some(v) => c.nonempty(v, &k("channel_history")).and_then(|h| {
            if history_spec_ok(&h) {
                Some(Some(h))
            } else {
                c.error(
                    v.span(),
                    &k("channel_history"),
                    format!(
                        "`{h}` is not `<lines>:<period>` (lines 1 to 10000, a period such as `3600`, `1h` or `1d`)"
                    ),
                );
                None
            }
        }),
    };
    let tls = r.tls.as_ref().is_some_and(|t| *t.get_ref());
    let tls_ca = match &r.tls_ca {
        None => Some(None),
        Some(v) if !tls => {
            c.error(v.span(), &k("tls_ca"), "`tls_ca` needs `tls = true`");
            None
        }
        Some(v) => c.nonempty(v, &k("tls_ca")).and_then(|f| {
            let path = c.base().join(&f);
            if !path.is_file() {
                c.error(
                    v.span(),
                    &k("tls_ca"),
                    format!("`{f}` is not a file (a relative path is from this file's directory)"),
                );
                return None;
            }
            // Read now, so a file without a usable certificate is found before start.
            match crate::tls::Tls::new(Some(&path)) {
                Ok(_) => Some(Some(path)),
                Err(e) => {
                    c.error(v.span(), &k("tls_ca"), e);
                    None
                }
            }
        }),
    };
    if !name_ok {
        return None;
    }
    let mut config = IrcConfig::new(n.as_str(), server?, nick?);
    config.mode = mode?;
    config.tls = tls;
    config.tls_ca = tls_ca?;
    config.password = password?;
    config.sasl = sasl?;
    config.max_puppets = usize::try_from(max_puppets?).ok()?;
    config.puppet_idle_timeout = Duration::from_secs(u64::try_from(idle?).ok()?);
    config.lines_per_second = lines_per_second?;
    config.burst = burst?;
    config.max_lines = usize::try_from(max_lines?).ok()?;
    config.channel_history = channel_history?;
    Some(config)
}

/// RFC 2812 nick syntax (with the usual 30-character limit instead of 9).
pub fn nick_ok(s: &str) -> bool {
    let special = |c: char| matches!(c, '[' | ']' | '\\' | '`' | '_' | '^' | '{' | '|' | '}');
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || special(c));
    first_ok
        && s.chars().count() <= 30
        && chars.all(|c| c.is_ascii_alphanumeric() || special(c) || c == '-')
}

/// A channel name as servers accept it.
pub fn channel_ok(s: &str) -> bool {
    s.starts_with(['#', '&'])
        && s.len() > 1
        && s.len() <= 200
        && !s
            .chars()
            .any(|c| c == ' ' || c == ',' || c == ':' || c.is_control())
}

/// Whether `h` is a channel history setting as InspIRCd's `+H` takes it: `<lines>:<period>`,
/// the period in seconds or as digits with units (`1d12h`, `30m`).
fn history_spec_ok(h: &str) -> bool {
    let Some((lines, period)) = h.split_once(':') else {
        return false;
    };
    let lines_ok = lines
        .parse::<u32>()
        .is_ok_and(|n| (1..=10_000).contains(&n));
    let period_ok = !period.is_empty()
        && period.chars().next().is_some_and(|c| c.is_ascii_digit())
        && period
            .chars()
            .all(|c| c.is_ascii_digit() || "ywdhms".contains(c));
    lines_ok && period_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_syntax() {
        assert!(channel_ok("#lobby"));
        assert!(channel_ok("&local"));
        assert!(!channel_ok("lobby"));
        assert!(!channel_ok("#a b"));
        assert!(!channel_ok("#"));
    }

    #[test]
    fn nick_syntax() {
        assert!(nick_ok("junction"));
        assert!(nick_ok("[bot]_-1"));
        assert!(!nick_ok("1bot"));
        assert!(!nick_ok("bot!"));
        assert!(!nick_ok(""));
        assert!(!nick_ok(&"a".repeat(31)));
    }

    #[test]
    fn history_syntax() {
        assert!(history_spec_ok("100:1d"));
        assert!(history_spec_ok("5:3600"));
        assert!(!history_spec_ok("100"));
        assert!(!history_spec_ok("0:1d"));
        assert!(!history_spec_ok("50:one day"));
    }
}
