//! The second stage of config loading: from [`RawConfig`] to a [`Config`] the adapters can
//! use, collecting every problem on the way.

use super::raw::{RawBridge, RawConfig, RawGateway, RawIrc, RawMatrix, RawXmpp, Str};
use super::Diag;
use junction_core::{BridgeName, Link, NetworkId, PuppetLimits, RoomRef, Secret, UserRef};
use junction_irc::config::{IrcConfig, IrcMode};
use junction_matrix::config::MatrixConfig;
use junction_xmpp::config::XmppConfig;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[gateway]` (defaults when absent).
    pub gateway: GatewayConfig,
    /// `[matrix]`, if configured.
    pub matrix: Option<MatrixConfig>,
    /// `[xmpp]`, if configured.
    pub xmpp: Option<XmppConfig>,
    /// Every `[irc.<name>]`, ordered by name.
    pub irc: Vec<IrcConfig>,
    /// Every `[[bridge]]`, in file order: the starting set of links.
    pub bridges: Vec<Link>,
    /// Admins of single bridges (`admins` in a `[[bridge]]`), by bridge.
    pub bridge_admins: BTreeMap<BridgeName, Vec<UserRef>>,
    /// `[matrix] media_url`: the public base URL under which people on the other networks
    /// reach the Matrix media proxy (default `http://<matrix.listen>`).
    pub matrix_media_url: Option<String>,
    /// `[matrix] private_attachment_urls`: attachments named by other networks' users may be
    /// fetched from loopback and private addresses (default false: server-side request
    /// forgery; for test setups and closed networks only).
    pub matrix_private_attachment_urls: bool,
    /// `[matrix] max_ghosts` and `ghost_idle_timeout_seconds`.
    pub matrix_ghosts: PuppetLimits,
    /// `[xmpp] max_occupants` and `occupant_idle_timeout_seconds`.
    pub xmpp_occupants: PuppetLimits,
}

impl Config {
    /// The configured networks: `matrix`, `xmpp`, then `irc:<name>` for each IRC table.
    pub fn networks(&self) -> Vec<NetworkId> {
        let mut networks = Vec::new();
        if self.matrix.is_some() {
            networks.push(NetworkId::new("matrix"));
        }
        if self.xmpp.is_some() {
            networks.push(NetworkId::new("xmpp"));
        }
        networks.extend(
            self.irc
                .iter()
                .map(|i| NetworkId::new(format!("irc:{}", i.name))),
        );
        networks
    }
}

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    /// The store's directory (relative paths are resolved against the config file's).
    pub data_dir: PathBuf,
    /// Where to serve `/metrics` and `/health`, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// How joins, leaves and nick changes cross networks.
    pub membership: Membership,
    /// In `summarised` mode, how long someone who only joined waits before their puppets
    /// join the other networks; `None`: only once they speak.
    pub lurker_window: Option<Duration>,
    /// Log filter from the file (`JUNCTION_LOG` / `RUST_LOG` take precedence).
    pub log: Option<String>,
    /// Gateway-wide admins: Matrix user ids, XMPP bare JIDs, IRC accounts or hostmasks.
    pub admins: Vec<UserRef>,
    /// Where to serve public pages (the whole text of messages too long for IRC), if anywhere.
    pub web: Option<SocketAddr>,
    /// The base URL people use to reach `web`, without a trailing slash: `public_url` as
    /// written, or `http://<web>`. None exactly when `web` is None.
    pub public_url: Option<String>,
    /// How long the store may keep failing (writes or flushes refused, e.g. a full disk,
    /// which sled then latches until the process restarts) before the gateway exits
    /// non-zero for its supervisor to restart it. `/health` shows the failure meanwhile.
    pub store_retry: Duration,
    /// Per-sender rate limits and fan-out caps on inbound events.
    pub limits: crate::ratelimit::Limits,
    /// How long the message map, the audit trail and undelivered outbox rows are kept.
    pub retention: crate::gateway::Retention,
}

/// The default of `gateway.store_retry_seconds`.
pub const STORE_RETRY_DEFAULT: Duration = Duration::from_secs(60);

/// How membership noise (joins, leaves, nick changes) crosses networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Membership {
    /// Not at all.
    Off,
    /// Only for people who spoke recently, and no netsplit floods.
    #[default]
    Summarised,
    /// Everything.
    All,
}

/// Longest `[gateway] public_url`: paste links go on IRC lines, next to text.
pub const MAX_PUBLIC_URL: usize = 200;

/// Default `[matrix] id`.
pub const DEFAULT_MATRIX_ID: &str = "junction";
/// Default `[matrix] user_prefix`.
pub const DEFAULT_USER_PREFIX: &str = "_junction_";

/// Validates `raw` (parsed from `src`). Returns the config when nothing was wrong, and every
/// problem found.
pub(crate) fn validate(
    raw: &RawConfig,
    src: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<Config>, Vec<Diag>) {
    let mut c = Checker {
        src,
        env,
        diags: Vec::new(),
        listen: None,
        web: None,
    };
    let irc_names: HashMap<String, Range<usize>> = raw
        .irc
        .keys()
        .map(|k| (k.get_ref().clone(), k.span()))
        .collect();
    let gateway = match &raw.gateway {
        Some(g) => c.gateway(g.get_ref(), base, &irc_names),
        None => Some(GatewayConfig {
            data_dir: base.join("data"),
            metrics: None,
            membership: Membership::default(),
            lurker_window: None,
            log: None,
            admins: Vec::new(),
            web: None,
            public_url: None,
            store_retry: STORE_RETRY_DEFAULT,
            limits: crate::ratelimit::Limits::default(),
            retention: crate::gateway::Retention::default(),
        }),
    };
    let matrix = raw.matrix.as_ref().map(|m| c.matrix(m));
    let matrix_media_url = raw
        .matrix
        .as_ref()
        .and_then(|m| m.get_ref().media_url.as_ref())
        .and_then(|v| c.http_url(v, "matrix.media_url", "https://chat.example.org:9009"));
    let matrix_private_attachment_urls = raw
        .matrix
        .as_ref()
        .and_then(|m| m.get_ref().private_attachment_urls.as_ref())
        .is_some_and(|v| *v.get_ref());
    if let (Some(g), Some(listen)) = (&gateway, c.listen) {
        let raw_gateway = raw.gateway.as_ref().map(|g| g.get_ref());
        let metrics_span = raw_gateway
            .and_then(|g| g.metrics.as_ref())
            .map(|v| v.span());
        if let (Some(addr), Some(span)) = (g.metrics, metrics_span) {
            if addr == listen {
                c.error(
                    span,
                    "gateway.metrics",
                    format!("`{addr}` is also `matrix.listen`; each needs its own address"),
                );
            }
        }
    }
    if let (Some(web), Some(listen)) = (c.web, c.listen) {
        let span = raw
            .gateway
            .as_ref()
            .and_then(|g| g.get_ref().web.as_ref())
            .map(|v| v.span());
        if let (true, Some(span)) = (web == listen, span) {
            c.error(
                span,
                "gateway.web",
                format!("`{web}` is also `matrix.listen`; each needs its own address"),
            );
        }
    }
    let xmpp = raw.xmpp.as_ref().map(|x| c.xmpp(x));
    let matrix_ghosts = match raw.matrix.as_ref().map(|m| m.get_ref()) {
        Some(m) => c.puppet_limits(
            &m.max_ghosts,
            "matrix.max_ghosts",
            &m.ghost_idle_timeout_seconds,
            "matrix.ghost_idle_timeout_seconds",
        ),
        None => Some(PuppetLimits::default()),
    };
    let xmpp_occupants = match raw.xmpp.as_ref().map(|x| x.get_ref()) {
        Some(x) => c.puppet_limits(
            &x.max_occupants,
            "xmpp.max_occupants",
            &x.occupant_idle_timeout_seconds,
            "xmpp.occupant_idle_timeout_seconds",
        ),
        None => Some(PuppetLimits::default()),
    };
    let irc: Vec<Option<IrcConfig>> = raw.irc.iter().map(|(k, v)| c.irc(k, v, base)).collect();
    let (bridges, bridge_admins) = c.bridges(&raw.bridge, raw, &irc_names);
    if !c.diags.is_empty() {
        return (None, c.diags);
    }
    let config = (|| {
        Some(Config {
            gateway: gateway?,
            matrix: match matrix {
                Some(m) => Some(m?),
                None => None,
            },
            xmpp: match xmpp {
                Some(x) => Some(x?),
                None => None,
            },
            irc: irc.into_iter().collect::<Option<Vec<_>>>()?,
            bridges,
            bridge_admins,
            matrix_media_url,
            matrix_private_attachment_urls,
            matrix_ghosts: matrix_ghosts?,
            xmpp_occupants: xmpp_occupants?,
        })
    })();
    (config, c.diags)
}

struct Checker<'a> {
    src: &'a str,
    env: &'a dyn Fn(&str) -> Option<String>,
    diags: Vec<Diag>,
    /// `matrix.listen` once known, to keep other listeners off it.
    listen: Option<SocketAddr>,
    /// `gateway.web` once known, likewise.
    web: Option<SocketAddr>,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        self.diags.push(Diag {
            span,
            key: key.to_owned(),
            message: message.into(),
            unless_removed: Vec::new(),
        });
    }

    fn missing(&mut self, table: Range<usize>, table_key: &str, key: &str) {
        let path = format!("{table_key}.{key}");
        self.diags.push(Diag {
            span: table.start..table.start,
            key: path.clone(),
            message: format!("missing required key `{key}`"),
            unless_removed: vec![path],
        });
    }

    /// A required value: reports its absence at the table.
    fn required<'v>(
        &mut self,
        v: &'v Option<Str>,
        table: Range<usize>,
        table_key: &str,
        key: &str,
    ) -> Option<&'v Str> {
        if v.is_none() {
            self.missing(table, table_key, key);
        }
        v.as_ref()
    }

    /// Expands `${VAR}` in a string value. Every unset variable is an error at its `$`.
    fn expand(&mut self, v: &Str, key: &str) -> Option<String> {
        let s = v.get_ref();
        let span = v.span();
        // Where the value's text starts in the file, to point inside it; escapes in the
        // string may shift this, in which case the value's own start is used.
        let written = self.src.get(span.clone()).unwrap_or("");
        let mut out = String::with_capacity(s.len());
        let mut ok = true;
        let mut rest = s.as_str();
        let mut search_from = 0;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                self.error(span.clone(), key, "unterminated `${` (write `${NAME}`)");
                return None;
            };
            let name = &after[..end];
            let pattern = format!("${{{name}}}");
            let at = match written.get(search_from..).and_then(|w| w.find(&pattern)) {
                Some(j) => {
                    search_from += j + pattern.len();
                    let p = span.start + search_from - pattern.len();
                    p..p + pattern.len()
                }
                None => span.clone(),
            };
            let valid_name = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                self.error(
                    at,
                    key,
                    format!("`${{{name}}}` is not a variable name (letters, digits and _)"),
                );
                ok = false;
            } else {
                match (self.env)(name) {
                    Some(value) => out.push_str(&value),
                    None => {
                        self.error(at, key, format!("environment variable `{name}` is not set"));
                        ok = false;
                    }
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        ok.then_some(out)
    }

    /// An expanded, non-empty string.
    fn nonempty(&mut self, v: &Str, key: &str) -> Option<String> {
        let s = self.expand(v, key)?;
        if s.trim().is_empty() {
            self.error(v.span(), key, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// An expanded, non-empty secret without line breaks.
    fn secret(&mut self, v: &Str, key: &str) -> Option<Secret> {
        let s = self.nonempty(v, key)?;
        if s.chars().any(char::is_control) {
            self.error(v.span(), key, "must not contain control characters");
            return None;
        }
        Some(Secret::new(s))
    }

    fn socket_addr(&mut self, v: &Str, key: &str) -> Option<SocketAddr> {
        let s = self.nonempty(v, key)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("`{s}` is not a socket address like `127.0.0.1:9009`"),
                );
                None
            }
        }
    }

    /// `host:port` where host may be a name.
    fn host_port(&mut self, v: &Str, key: &str) -> Option<String> {
        let s = self.nonempty(v, key)?;
        if s.parse::<SocketAddr>().is_ok() {
            return Some(s);
        }
        let good = match s.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            }
            None => false,
        };
        if good {
            Some(s)
        } else {
            self.error(
                v.span(),
                key,
                format!("`{s}` is not an address like `host:port` (port 1-65535)"),
            );
            None
        }
    }

    fn count(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        default: i64,
    ) -> Option<i64> {
        let Some(v) = v else { return Some(default) };
        let n = *v.get_ref();
        if n < min {
            self.error(v.span(), key, format!("must be at least {min}, got {n}"));
            return None;
        }
        Some(n)
    }

    /// A cap of puppets in rooms and their idle timeout (0: never), defaults from
    /// [`PuppetLimits`].
    fn puppet_limits(
        &mut self,
        max: &Option<Spanned<i64>>,
        max_key: &str,
        idle: &Option<Spanned<i64>>,
        idle_key: &str,
    ) -> Option<PuppetLimits> {
        let d = PuppetLimits::default();
        let max = self.count(max, max_key, 0, i64::try_from(d.max).unwrap_or(i64::MAX));
        let idle_default = i64::try_from(d.idle_timeout_ms / 1000).unwrap_or(i64::MAX);
        let idle = self.count(idle, idle_key, 0, idle_default);
        Some(PuppetLimits {
            max: usize::try_from(max?).ok()?,
            idle_timeout_ms: u64::try_from(idle?).ok()?.saturating_mul(1000),
        })
    }

    fn gateway(
        &mut self,
        g: &RawGateway,
        base: &Path,
        irc_names: &HashMap<String, Range<usize>>,
    ) -> Option<GatewayConfig> {
        let data_dir = match &g.data_dir {
            Some(v) => self.nonempty(v, "gateway.data_dir").map(|d| base.join(d)),
            None => Some(base.join("data")),
        };
        let metrics = match &g.metrics {
            Some(v) => self.socket_addr(v, "gateway.metrics").map(Some),
            None => Some(None),
        };
        let membership = match &g.membership {
            None => Some(Membership::default()),
            Some(v) => match self.expand(v, "gateway.membership")?.as_str() {
                "off" => Some(Membership::Off),
                "summarised" | "summarized" => Some(Membership::Summarised),
                "all" => Some(Membership::All),
                other => {
                    self.error(
                        v.span(),
                        "gateway.membership",
                        format!("expected `off`, `summarised` or `all`, got `{other}`"),
                    );
                    None
                }
            },
        };
        let lurker_window = match &g.lurker_window_seconds {
            None => Some(None),
            Some(_) => self
                .count(
                    &g.lurker_window_seconds,
                    "gateway.lurker_window_seconds",
                    0,
                    0,
                )
                .and_then(|n| u64::try_from(n).ok())
                .map(|n| Some(Duration::from_secs(n))),
        };
        let log = match &g.log {
            None => Some(None),
            Some(v) => {
                let s = self.nonempty(v, "gateway.log")?;
                match tracing_subscriber::EnvFilter::try_new(&s) {
                    Ok(_) => Some(Some(s)),
                    Err(e) => {
                        self.error(v.span(), "gateway.log", format!("not a log filter: {e}"));
                        None
                    }
                }
            }
        };
        let admins = self.admins(g.admins.as_deref(), "gateway.admins", irc_names);
        let web = match &g.web {
            Some(v) => self.socket_addr(v, "gateway.web").map(Some),
            None => Some(None),
        };
        self.web = web.flatten();
        if let (Some(Some(w)), Some(Some(m)), Some(v)) = (&web, &metrics, &g.web) {
            if w == m {
                self.error(
                    v.span(),
                    "gateway.web",
                    format!("`{w}` is also `gateway.metrics`; each needs its own address"),
                );
            }
        }
        let public_url = self.public_url(g, web.flatten());
        let store_retry = self.count(
            &g.store_retry_seconds,
            "gateway.store_retry_seconds",
            1,
            STORE_RETRY_DEFAULT.as_secs() as i64,
        );
        let limits = self.limits(g);
        let retention = self.retention(g);
        Some(GatewayConfig {
            retention: retention?,
            store_retry: Duration::from_secs(u64::try_from(store_retry?).ok()?),
            data_dir: data_dir?,
            metrics: metrics?,
            membership: membership?,
            lurker_window: lurker_window?,
            log: log?,
            admins: admins?,
            web: web?,
            public_url: public_url?,
            limits: limits?,
        })
    }

    /// `gateway.retention_days`, `audit_days`, `outbox_max_age_hours`, `outbox_max_depth`.
    fn retention(&mut self, g: &RawGateway) -> Option<crate::gateway::Retention> {
        use crate::gateway::retention as r;
        const DAY: f64 = 86_400.0;
        let messages = self.span_of(
            &g.retention_days,
            "gateway.retention_days",
            DAY,
            r::MESSAGES_DEFAULT,
        );
        let audit = self.span_of(&g.audit_days, "gateway.audit_days", DAY, r::AUDIT_DEFAULT);
        let outbox_age = self.span_of(
            &g.outbox_max_age_hours,
            "gateway.outbox_max_age_hours",
            3600.0,
            r::OUTBOX_AGE_DEFAULT,
        );
        let depth = self.count_as::<usize>(
            &g.outbox_max_depth,
            "gateway.outbox_max_depth",
            0,
            r::OUTBOX_DEPTH_DEFAULT as i64,
        );
        Some(crate::gateway::Retention {
            messages: messages?,
            audit: audit?,
            outbox_max_age: outbox_age?,
            outbox_max_depth: depth.map(|d| (d > 0).then_some(d))?,
        })
    }

    /// A span given as a number of `unit` seconds (a fraction allowed); 0 means none (keep
    /// for ever).
    fn span_of(
        &mut self,
        v: &Option<Spanned<super::raw::Number>>,
        key: &str,
        unit: f64,
        default: Option<Duration>,
    ) -> Option<Option<Duration>> {
        use super::raw::Number;
        let Some(v) = v else { return Some(default) };
        let n = match *v.get_ref() {
            Number::Int(n) => n as f64,
            Number::Float(f) => f,
        };
        if !n.is_finite() || n < 0.0 {
            self.error(
                v.span(),
                key,
                format!("must be 0 (keep for ever) or more, got {n}"),
            );
            return None;
        }
        match Duration::try_from_secs_f64(n * unit) {
            Ok(d) if d.is_zero() => Some(None),
            Ok(d) => Some(Some(d)),
            Err(_) => {
                self.error(v.span(), key, "too large".to_owned());
                None
            }
        }
    }

    /// `gateway.max_attachments`, `gateway.rate_per_minute` and `gateway.rate_burst`.
    fn limits(&mut self, g: &RawGateway) -> Option<crate::ratelimit::Limits> {
        let d = crate::ratelimit::Limits::default();
        let attachments = self.count_as::<usize>(
            &g.max_attachments,
            "gateway.max_attachments",
            0,
            d.caps.max_attachments as i64,
        );
        let per_minute = self.count_as::<u32>(
            &g.rate_per_minute,
            "gateway.rate_per_minute",
            0,
            i64::from(d.rate.per_minute),
        );
        let burst = self.count_as::<u32>(
            &g.rate_burst,
            "gateway.rate_burst",
            1,
            i64::from(d.rate.burst),
        );
        let mut limits = d;
        limits.caps.max_attachments = attachments?;
        limits.rate.per_minute = per_minute?;
        limits.rate.burst = burst?;
        Some(limits)
    }

    /// `gateway.public_url`, or `http://<web>` when only `web` is given. A URL without a
    /// listener to serve it, or a default no one can reach (`web` on 0.0.0.0 or ::), is an
    /// error; so is a URL too long to leave room for the text on an IRC line.
    fn public_url(&mut self, g: &RawGateway, web: Option<SocketAddr>) -> Option<Option<String>> {
        const KEY: &str = "gateway.public_url";
        let Some(v) = &g.public_url else {
            return match web {
                None => Some(None),
                Some(addr) if addr.ip().is_unspecified() => {
                    if let Some(w) = &g.web {
                        self.error(
                            w.span(),
                            "gateway.web",
                            format!(
                                "`{addr}` listens on every address, so `http://{addr}` reaches \
                                 no one: set `public_url` too"
                            ),
                        );
                    }
                    None
                }
                Some(addr) => Some(Some(format!("http://{addr}"))),
            };
        };
        let url = self.http_url(v, KEY, "https://chat.example.org")?;
        if url.len() > MAX_PUBLIC_URL {
            self.error(
                v.span(),
                KEY,
                format!(
                    "{} bytes long; at most {MAX_PUBLIC_URL} leave room for the text on an IRC line",
                    url.len()
                ),
            );
            return None;
        }
        if web.is_none() && g.web.is_none() {
            self.error(
                v.span(),
                KEY,
                "needs `web`, the listener that serves the pages this URL leads to",
            );
            return None;
        }
        Some(Some(url))
    }

    /// Admin identities: `@user:server` (Matrix), `user@domain` (XMPP), `network/account` or
    /// `network/nick!user@host` (IRC). Bare IRC nicks are refused: anyone can take one.
    fn admins(
        &mut self,
        list: Option<&[Str]>,
        key: &str,
        irc_names: &HashMap<String, Range<usize>>,
    ) -> Option<Vec<UserRef>> {
        let mut out = Vec::new();
        let mut ok = true;
        for (i, v) in list.unwrap_or_default().iter().enumerate() {
            let k = format!("{key}[{i}]");
            let Some(s) = self.nonempty(v, &k) else {
                ok = false;
                continue;
            };
            let parsed = if s.starts_with('@') {
                matrix_user(&s).then(|| UserRef::new("matrix", s.as_str()))
            } else if let Some((net, who)) = s.split_once('/') {
                if !irc_names.contains_key(net) {
                    self.error(v.span(), &k, format!("no [irc.{net}] section for `{s}`"));
                    ok = false;
                    continue;
                }
                let mask = who.contains('!') && who.contains('@');
                let account = !who.is_empty() && !who.contains(['!', '@', ' ']);
                (mask || account).then(|| UserRef::new(format!("irc:{net}"), who))
            } else if s.contains('@') {
                bare_jid(&s, true)
                    .ok()
                    .map(|_| UserRef::new("xmpp", s.as_str()))
            } else {
                None
            };
            match parsed {
                Some(u) => out.push(u),
                None => {
                    self.error(
                        v.span(),
                        &k,
                        format!(
                            "`{s}` is not an admin identity: write `@user:server` (Matrix), \
                             `user@domain` (XMPP), or `network/account` or \
                             `network/nick!user@host` (IRC)"
                        ),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn matrix(&mut self, m: &Spanned<RawMatrix>) -> Option<MatrixConfig> {
        let t = m.span();
        let m = m.get_ref();
        let homeserver = self
            .required(&m.homeserver, t.clone(), "matrix", "homeserver")
            .and_then(|v| self.http_url(v, "matrix.homeserver", "http://127.0.0.1:8008"));
        let server_name = self
            .required(&m.server_name, t.clone(), "matrix", "server_name")
            .and_then(|v| {
                let s = self.nonempty(v, "matrix.server_name")?;
                if matrix_server_name(&s) {
                    Some(s)
                } else {
                    self.error(
                        v.span(),
                        "matrix.server_name",
                        format!("`{s}` is not a server name like `matrix.test`"),
                    );
                    None
                }
            });
        let listen = self
            .required(&m.listen, t.clone(), "matrix", "listen")
            .and_then(|v| self.socket_addr(v, "matrix.listen"));
        self.listen = listen;
        let as_token = self
            .required(&m.as_token, t.clone(), "matrix", "as_token")
            .and_then(|v| self.secret(v, "matrix.as_token"));
        let hs_token = self
            .required(&m.hs_token, t.clone(), "matrix", "hs_token")
            .and_then(|v| self.secret(v, "matrix.hs_token"));
        if let (Some(a), Some(h), Some(v)) = (&as_token, &hs_token, &m.hs_token) {
            if a == h {
                self.error(
                    v.span(),
                    "matrix.hs_token",
                    "must differ from `as_token` (each side proves itself with its own token)",
                );
            }
        }
        let bot = self
            .required(&m.bot, t.clone(), "matrix", "bot")
            .and_then(|v| self.localpart(v, "matrix.bot"));
        let id = match &m.id {
            Some(v) => self.nonempty(v, "matrix.id"),
            None => Some(DEFAULT_MATRIX_ID.to_owned()),
        };
        let user_prefix = match &m.user_prefix {
            Some(v) => self.localpart(v, "matrix.user_prefix"),
            None => Some(DEFAULT_USER_PREFIX.to_owned()),
        };
        Some(MatrixConfig {
            homeserver: homeserver?,
            server_name: server_name?,
            listen: listen?,
            as_token: as_token?,
            hs_token: hs_token?,
            bot: bot?,
            id: id?,
            user_prefix: user_prefix?,
            origin_marks: m.origin_marks.as_ref().is_none_or(|v| *v.get_ref()),
        })
    }

    /// An http(s) URL with a host, without a trailing slash.
    fn http_url(&mut self, v: &Str, key: &str, example: &str) -> Option<String> {
        let s = self.nonempty(v, key)?;
        match url::Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                Some(s.trim_end_matches('/').to_owned())
            }
            _ => {
                self.error(
                    v.span(),
                    key,
                    format!("`{s}` is not an http(s) URL like `{example}`"),
                );
                None
            }
        }
    }

    fn localpart(&mut self, v: &Str, key: &str) -> Option<String> {
        let s = self.nonempty(v, key)?;
        if s.chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '.' | '_' | '=' | '-' | '/' | '+'))
        {
            Some(s)
        } else {
            self.error(
                v.span(),
                key,
                format!("`{s}` is not a Matrix localpart (a-z, 0-9 and . _ = - / +)"),
            );
            None
        }
    }

    fn xmpp(&mut self, x: &Spanned<RawXmpp>) -> Option<XmppConfig> {
        let t = x.span();
        let x = x.get_ref();
        let component = self
            .required(&x.component, t.clone(), "xmpp", "component")
            .and_then(|v| {
                let s = self.nonempty(v, "xmpp.component")?;
                match jid::BareJid::new(&s) {
                    Ok(j) if j.node().is_none() => Some(s),
                    _ => {
                        self.error(
                            v.span(),
                            "xmpp.component",
                            format!("`{s}` is not a domain like `bridge.xmpp.test`"),
                        );
                        None
                    }
                }
            });
        let server = self
            .required(&x.server, t.clone(), "xmpp", "server")
            .and_then(|v| self.host_port(v, "xmpp.server"));
        let secret = self
            .required(&x.secret, t.clone(), "xmpp", "secret")
            .and_then(|v| self.secret(v, "xmpp.secret"));
        Some(XmppConfig {
            component: component?,
            server: server?,
            secret: secret?,
            origin_marks: x.origin_marks.as_ref().is_none_or(|v| *v.get_ref()),
        })
    }

    fn irc(&mut self, name: &Str, v: &Spanned<RawIrc>, base: &Path) -> Option<IrcConfig> {
        let t = v.span();
        let r = v.get_ref();
        let n = name.get_ref();
        let p = format!("irc.{n}");
        let k = |key: &str| format!("{p}.{key}");
        let name_ok = !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            self.error(
                name.span(),
                &p,
                format!("`{n}` is not a network name (letters, digits, - and _)"),
            );
        }
        let server = self
            .required(&r.server, t.clone(), &p, "server")
            .and_then(|v| self.host_port(v, &k("server")));
        let nick = self.required(&r.nick, t.clone(), &p, "nick").and_then(|v| {
            let s = self.nonempty(v, &k("nick"))?;
            if irc_nick(&s) {
                Some(s)
            } else {
                self.error(
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
            Some(v) => match self.expand(v, &k("mode"))?.as_str() {
                "puppet" => Some(IrcMode::Puppet),
                "relay" => Some(IrcMode::Relay),
                other => {
                    self.error(
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
            Some(v) => self.secret(v, &k("password")).map(Some),
        };
        let sasl = match (&r.sasl_account, &r.sasl_password) {
            (None, None) => Some(None),
            (Some(a), Some(pw)) => {
                let a = self.nonempty(a, &k("sasl_account"));
                let pw = self.secret(pw, &k("sasl_password"));
                a.zip(pw).map(Some)
            }
            (Some(a), None) => {
                self.error(
                    a.span(),
                    &k("sasl_account"),
                    "`sasl_account` needs `sasl_password` too",
                );
                None
            }
            (None, Some(pw)) => {
                self.error(
                    pw.span(),
                    &k("sasl_password"),
                    "`sasl_password` needs `sasl_account` too",
                );
                None
            }
        };
        let d = IrcConfig::new(n.as_str(), "", "");
        let max_puppets = self.count(&r.max_puppets, &k("max_puppets"), 0, d.max_puppets as i64);
        let idle = self.count(
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
                    self.error(
                        v.span(),
                        &k("lines_per_second"),
                        format!("must be a positive number, got {x}"),
                    );
                    None
                }
            }
        };
        let burst = self.count_as::<u32>(&r.burst, &k("burst"), 1, i64::from(d.burst));
        let max_lines = self.count(&r.max_lines, &k("max_lines"), 1, d.max_lines as i64);
        let channel_history = match &r.channel_history {
            None => Some(None),
            Some(v) => self.nonempty(v, &k("channel_history")).and_then(|h| {
                if history_spec_ok(&h) {
                    Some(Some(h))
                } else {
                    self.error(
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
                self.error(v.span(), &k("tls_ca"), "`tls_ca` needs `tls = true`");
                None
            }
            Some(v) => self.nonempty(v, &k("tls_ca")).and_then(|f| {
                let path = base.join(&f);
                if !path.is_file() {
                    self.error(
                        v.span(),
                        &k("tls_ca"),
                        format!(
                            "`{f}` is not a file (a relative path is from this file's directory)"
                        ),
                    );
                    return None;
                }
                // Read now, so a file without a usable certificate is found before start.
                match junction_irc::tls::Tls::new(Some(&path)) {
                    Ok(_) => Some(Some(path)),
                    Err(e) => {
                        self.error(v.span(), &k("tls_ca"), e);
                        None
                    }
                }
            }),
        };
        if !name_ok {
            return None;
        }
        let mut c = IrcConfig::new(n.as_str(), server?, nick?);
        c.mode = mode?;
        c.tls = tls;
        c.tls_ca = tls_ca?;
        c.password = password?;
        c.sasl = sasl?;
        c.max_puppets = usize::try_from(max_puppets?).ok()?;
        c.puppet_idle_timeout = Duration::from_secs(u64::try_from(idle?).ok()?);
        c.lines_per_second = lines_per_second?;
        c.burst = burst?;
        c.max_lines = usize::try_from(max_lines?).ok()?;
        c.channel_history = channel_history?;
        Some(c)
    }

    /// [`Checker::count`], then [`Checker::fits`] in `T`.
    fn count_as<T: TryFrom<i64>>(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        default: i64,
    ) -> Option<T> {
        let n = self.count(v, key, min, default)?;
        self.fits::<T>(n, v, key)
    }

    fn fits<T: TryFrom<i64>>(&mut self, n: i64, v: &Option<Spanned<i64>>, key: &str) -> Option<T> {
        match T::try_from(n) {
            Ok(x) => Some(x),
            Err(_) => {
                if let Some(v) = v {
                    self.error(v.span(), key, format!("{n} is too large"));
                }
                None
            }
        }
    }

    fn bridges(
        &mut self,
        list: &[Spanned<RawBridge>],
        raw: &RawConfig,
        irc_names: &HashMap<String, Range<usize>>,
    ) -> (Vec<Link>, BTreeMap<BridgeName, Vec<UserRef>>) {
        let mut links = Vec::new();
        let mut admins = BTreeMap::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        // Every room seen so far: which bridge has it and where.
        let mut seen: HashMap<RoomRef, (String, usize)> = HashMap::new();
        for (i, b) in list.iter().enumerate() {
            let p = format!("bridge[{i}]");
            let t = b.span();
            let b = b.get_ref();
            let name = self.required(&b.name, t.clone(), &p, "name").and_then(|v| {
                let key = format!("{p}.name");
                let s = self.nonempty(v, &key)?;
                let good = s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
                if !good {
                    self.error(
                        v.span(),
                        &key,
                        format!("`{s}` is not a bridge name (letters, digits, - _ and .)"),
                    );
                    return None;
                }
                if let Some(first) = names.get(&s) {
                    let line = super::line_col(self.src, *first).0;
                    self.error(
                        v.span(),
                        &key,
                        format!("duplicate bridge name `{s}` (first used on line {line})"),
                    );
                    return None;
                }
                names.insert(s.clone(), v.span().start);
                Some(s)
            });
            let label = name.clone().unwrap_or_else(|| p.clone());
            let mut rooms = Vec::new();
            let mut written = 0;
            for (net_key, value) in [("matrix", &b.matrix), ("xmpp", &b.xmpp), ("irc", &b.irc)] {
                let Some(value) = value else { continue };
                let many = matches!(value.get_ref(), super::raw::Rooms::Many(_));
                for (j, (room, span)) in value.get_ref().each(value.span()).into_iter().enumerate()
                {
                    written += 1;
                    let key = if many {
                        format!("{p}.{net_key}[{j}]")
                    } else {
                        format!("{p}.{net_key}")
                    };
                    let expanded = self.expand(&Spanned::new(span.clone(), room), &key);
                    let Some(room) = expanded else { continue };
                    let Some(r) = self.room(net_key, &room, span.clone(), &key, raw, irc_names)
                    else {
                        continue;
                    };
                    if let Some((other, at)) = seen.get(&same_room(&r)) {
                        let line = super::line_col(self.src, *at).0;
                        let msg = if *other == label {
                            format!("`{room}` is listed twice in this bridge (line {line})")
                        } else {
                            format!("`{room}` is already in bridge `{other}` (line {line})")
                        };
                        self.error(span, &key, msg);
                        continue;
                    }
                    seen.insert(same_room(&r), (label.clone(), span.start));
                    rooms.push(r);
                }
            }
            if written < 2 {
                self.diags.push(Diag {
                    span: t.start..t.start,
                    key: p.clone(),
                    message: format!(
                        "a bridge links at least two rooms (keys `matrix`, `xmpp`, `irc`); \
                         this one has {written}"
                    ),
                    unless_removed: ["matrix", "xmpp", "irc"]
                        .iter()
                        .map(|n| format!("{p}.{n}"))
                        .collect(),
                });
            }
            let bridge_admins = self.admins(b.admins.as_deref(), &format!("{p}.admins"), irc_names);
            if let Some(name) = name {
                let bridge = BridgeName::new(name);
                if let Some(a) = bridge_admins.filter(|a| !a.is_empty()) {
                    admins.insert(bridge.clone(), a);
                }
                links.push(Link { bridge, rooms });
            }
        }
        (links, admins)
    }

    /// One room of a bridge, checked against its network's syntax and section.
    fn room(
        &mut self,
        net_key: &str,
        room: &str,
        span: Range<usize>,
        key: &str,
        raw: &RawConfig,
        irc_names: &HashMap<String, Range<usize>>,
    ) -> Option<RoomRef> {
        match net_key {
            "matrix" => {
                if !matrix_room(room) {
                    self.error(
                        span,
                        key,
                        format!(
                            "`{room}` is not a Matrix room: write an alias `#name:server` or a \
                             room id `!id:server`"
                        ),
                    );
                    return None;
                }
                if raw.matrix.is_none() {
                    self.error(span, key, "there is no [matrix] section for this room");
                    return None;
                }
                Some(RoomRef::new("matrix", room))
            }
            "xmpp" => {
                if let Err(why) = bare_jid(room, true) {
                    self.error(
                        span,
                        key,
                        format!("`{room}` is not a MUC room `room@muc.domain`: {why}"),
                    );
                    return None;
                }
                if raw.xmpp.is_none() {
                    self.error(span, key, "there is no [xmpp] section for this room");
                    return None;
                }
                Some(RoomRef::new("xmpp", room))
            }
            _ => {
                let Some((net, chan)) = room.split_once('/') else {
                    self.error(
                        span,
                        key,
                        format!("`{room}` is not an IRC channel: write `network/#channel`"),
                    );
                    return None;
                };
                if !irc_channel(chan) {
                    self.error(
                        span,
                        key,
                        format!(
                            "`{chan}` is not an IRC channel name (starts with # or &, \
                             no spaces, commas or control characters)"
                        ),
                    );
                    return None;
                }
                if !irc_names.contains_key(net) {
                    self.error(
                        span,
                        key,
                        format!("there is no [irc.{net}] section for network `{net}`"),
                    );
                    return None;
                }
                Some(RoomRef::new(NetworkId::new(format!("irc:{net}")), chan))
            }
        }
    }
}

/// RFC 1459 case folding (what most IRC servers use for nicks and channels).
pub(crate) fn irc_fold(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '[' => '{',
            ']' => '}',
            '\\' => '|',
            '~' => '^',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// The form in which two spellings of one room compare equal: IRC channels by RFC 1459
/// case mapping (the default of most servers), MUC JIDs case-insensitively (nodeprep and
/// nameprep fold case); Matrix ids are case-sensitive.
pub(crate) fn same_room(r: &RoomRef) -> RoomRef {
    let room = if r.network.as_str().starts_with("irc:") {
        irc_fold(r.room.as_str())
    } else if r.network.as_str() == "xmpp" {
        r.room.as_str().to_lowercase()
    } else {
        return r.clone();
    };
    RoomRef::new(r.network.clone(), room)
}

/// `#alias:server` or `!id[:server]`.
pub(crate) fn matrix_room(s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    if let Some(rest) = s.strip_prefix('#') {
        matches!(rest.split_once(':'), Some((local, server)) if !local.is_empty() && matrix_server_name(server))
    } else if let Some(rest) = s.strip_prefix('!') {
        match rest.split_once(':') {
            Some((id, server)) => !id.is_empty() && matrix_server_name(server),
            None => !rest.is_empty(),
        }
    } else {
        false
    }
}

/// A server name: a host name or IP literal with an optional port.
fn matrix_server_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// `@localpart:server`.
pub(crate) fn matrix_user(s: &str) -> bool {
    matches!(s.strip_prefix('@').and_then(|r| r.split_once(':')),
        Some((local, server)) if !local.is_empty()
            && !local.chars().any(|c| c.is_whitespace() || c.is_control())
            && matrix_server_name(server))
}

/// A bare JID, with a local part when `node` is true.
pub(crate) fn bare_jid(s: &str, node: bool) -> Result<(), String> {
    if s.contains('/') {
        return Err("a bare JID has no `/resource`".into());
    }
    match jid::BareJid::new(s) {
        Ok(j) if node && j.node().is_none() => Err("the room's local part is missing".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// RFC 2812 nick syntax (with the usual 30-character limit instead of 9).
fn irc_nick(s: &str) -> bool {
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
pub(crate) fn irc_channel(s: &str) -> bool {
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn room_syntax() {
        assert!(matrix_room("#lobby:matrix.test"));
        assert!(matrix_room("!abc"));
        assert!(matrix_room("!abc:matrix.test"));
        assert!(matrix_room("#a:localhost:8448"));
        assert!(!matrix_room("lobby"));
        assert!(!matrix_room("#lobby"));
        assert!(!matrix_room("#:x"));
        assert!(!matrix_room("! x"));
        assert!(bare_jid("lobby@conference.xmpp.test", true).is_ok());
        assert!(bare_jid("conference.xmpp.test", true).is_err());
        assert!(bare_jid("lobby@conference.xmpp.test/nick", true).is_err());
        assert!(irc_channel("#lobby"));
        assert!(irc_channel("&local"));
        assert!(!irc_channel("lobby"));
        assert!(!irc_channel("#a b"));
        assert!(!irc_channel("#"));
    }

    #[test]
    fn nick_syntax() {
        assert!(irc_nick("junction"));
        assert!(irc_nick("[bot]_-1"));
        assert!(!irc_nick("1bot"));
        assert!(!irc_nick("bot!"));
        assert!(!irc_nick(""));
        assert!(!irc_nick(&"a".repeat(31)));
    }
}
