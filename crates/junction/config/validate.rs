//! The second stage of config loading: from [`RawConfig`] and the networks' raw sections to a
//! [`Config`] the gateway can use, collecting every problem on the way. The networks check
//! their own sections ([`junction_network::Raw::validate`]) and their own rooms and admins
//! ([`junction_network::Network::config_room`], [`junction_network::Networks::admin`]); this
//! file checks `[gateway]`, `[[bridge]]` and what ties them together.

use super::raw::{RawBridge, RawConfig, RawGateway, Rooms, Str};
use super::Diag;
use crate::wiring::NETWORKS;
use junction_core::{BridgeName, Link, NetworkId, RoomRef, UserRef};
use junction_network::{Checker, Network, Raw, Section};
use std::any::Any;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// The validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[gateway]` (defaults when absent).
    pub gateway: GatewayConfig,
    /// Every configured network instance, in the order of [`NETWORKS`] (then by name for the
    /// networks with several, `irc:<name>`).
    pub sections: Vec<Configured>,
    /// Every `[[bridge]]`, in file order: the starting set of links.
    pub bridges: Vec<Link>,
    /// Admins of single bridges (`admins` in a `[[bridge]]`), by bridge.
    pub bridge_admins: BTreeMap<BridgeName, Vec<UserRef>>,
}

/// One configured network instance and the network it is one of.
#[derive(Clone, Debug)]
pub struct Configured {
    /// Its network.
    pub kind: &'static dyn Network,
    /// Its id and settings.
    pub section: Section,
}

impl Config {
    /// The configured network instances, in order: `matrix`, `xmpp`, `irc:<name>`...
    pub fn networks(&self) -> Vec<NetworkId> {
        self.sections
            .iter()
            .map(|s| s.section.network.clone())
            .collect()
    }

    /// The settings of the first instance whose settings are a `T` (e.g. a network's
    /// `*Section`).
    pub fn section<T: Any>(&self) -> Option<&T> {
        self.sections_of().next()
    }

    /// The settings of every instance whose settings are a `T`, in order.
    pub fn sections_of<T: Any>(&self) -> impl Iterator<Item = &T> {
        self.sections.iter().filter_map(|s| s.section.get())
    }

    /// The admins (the gateway's, then every bridge's) who are users of `network`.
    pub fn admins_on(&self, network: &NetworkId) -> Vec<UserRef> {
        self.gateway
            .admins
            .iter()
            .chain(self.bridge_admins.values().flatten())
            .filter(|u| &u.network == network)
            .cloned()
            .collect()
    }
}

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    /// The store's directory (relative paths are resolved against the config file's).
    pub data_dir: PathBuf,
    /// Where the store is: sled under `data_dir` (the default), or PostgreSQL.
    pub store: StoreLocation,
    /// Where to serve `/metrics` and `/health`, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// How joins, leaves and nick changes cross networks.
    pub membership: Membership,
    /// In `summarised` mode, how long someone who only joined waits before their puppets
    /// join the other networks; `None`: only once they speak.
    pub lurker_window: Option<Duration>,
    /// Log filter from the file (`JUNCTION_LOG` / `RUST_LOG` take precedence).
    pub log: Option<String>,
    /// Gateway-wide admins: identities on each network ([`junction_network::Networks::admin`]).
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
    /// Who can be reached by private message across networks.
    pub private_messages: PrivateMessages,
}

/// Where the gateway keeps its state (`[gateway] store`).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum StoreLocation {
    /// sled, in `<data_dir>/store`.
    #[default]
    Sled,
    /// PostgreSQL at this URL (a secret: it holds the password).
    Postgres(junction_core::Secret),
}

/// Who can be reached by private message across networks (`[gateway] private_messages`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PrivateMessages {
    /// Nobody.
    Off,
    /// People who share, or shared, a linked room with the sender (both seen in one).
    #[default]
    Members,
    /// Anyone who has a puppet to write to.
    All,
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

/// The networks' sections as read, each with its network.
pub(crate) type RawSections = Vec<(&'static dyn Network, Box<dyn Raw>)>;

/// Validates `raw` and the networks' `sections` (parsed from `src`). Returns the config when
/// nothing was wrong, and every problem found.
pub(crate) fn validate(
    raw: &RawConfig,
    sections: &RawSections,
    src: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> (Option<Config>, Vec<Diag>) {
    let mut c = Checker::new(src, base, env);
    let declared: Vec<NetworkId> = sections.iter().flat_map(|(_, r)| r.declared()).collect();
    let raw_gateway = raw.gateway.as_ref().map(|g| g.get_ref());
    let mut web = None;
    let gateway = match raw_gateway {
        Some(g) => gateway(&mut c, g, &declared, &mut web),
        None => Some(GatewayConfig {
            data_dir: base.join("data"),
            store: StoreLocation::Sled,
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
            private_messages: PrivateMessages::default(),
        }),
    };
    let configured: Vec<Option<Vec<Configured>>> = sections
        .iter()
        .map(|(kind, r)| {
            let checked = r.validate(&mut c)?;
            Some(
                checked
                    .into_iter()
                    .map(|section| Configured {
                        kind: *kind,
                        section,
                    })
                    .collect(),
            )
        })
        .collect();
    // The gateway's own listeners keep off the networks'.
    for (addr, key) in c.listeners().to_vec() {
        let metrics = raw_gateway.and_then(|g| g.metrics.as_ref());
        if let (Some(g), Some(v)) = (&gateway, metrics) {
            if g.metrics == Some(addr) {
                c.error(
                    v.span(),
                    "gateway.metrics",
                    format!("`{addr}` is also `{key}`; each needs its own address"),
                );
            }
        }
        if let (Some(w), Some(v)) = (web, raw_gateway.and_then(|g| g.web.as_ref())) {
            if w == addr {
                c.error(
                    v.span(),
                    "gateway.web",
                    format!("`{w}` is also `{key}`; each needs its own address"),
                );
            }
        }
    }
    let (bridges, bridge_admins) = bridges(&mut c, &raw.bridge, &declared);
    if !c.diags().is_empty() {
        return (None, c.into_diags());
    }
    let config = (|| {
        Some(Config {
            gateway: gateway?,
            sections: configured
                .into_iter()
                .collect::<Option<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect(),
            bridges,
            bridge_admins,
        })
    })();
    (config, c.into_diags())
}

/// `[gateway] store`: `sled`, or a PostgreSQL URL (kept secret, and never repeated in an
/// error, since it holds the password once `${VAR}` is expanded).
fn store_location(c: &mut Checker<'_>, v: &Str) -> Option<StoreLocation> {
    let url = c.secret(v, "gateway.store")?;
    if url.expose() == "sled" {
        return Some(StoreLocation::Sled);
    }
    match junction_store::check_postgres_url(url.expose()) {
        Ok(()) => Some(StoreLocation::Postgres(url)),
        Err(why) => {
            c.error(
                v.span(),
                "gateway.store",
                format!("expected `sled` or `postgres://user:password@host:port/database`: {why}"),
            );
            None
        }
    }
}

/// `[gateway]`; `web` is set to its listener's address once known (even when something else
/// is wrong), to keep the networks' listeners off it.
fn gateway(
    c: &mut Checker<'_>,
    g: &RawGateway,
    declared: &[NetworkId],
    web_addr: &mut Option<SocketAddr>,
) -> Option<GatewayConfig> {
    let base = c.base();
    let data_dir = match &g.data_dir {
        Some(v) => c.nonempty(v, "gateway.data_dir").map(|d| base.join(d)),
        None => Some(base.join("data")),
    };
    let store = match &g.store {
        None => Some(StoreLocation::Sled),
        Some(v) => store_location(c, v),
    };
    let metrics = match &g.metrics {
        Some(v) => c.socket_addr(v, "gateway.metrics").map(Some),
        None => Some(None),
    };
    let membership = match &g.membership {
        None => Some(Membership::default()),
        Some(v) => match c.expand(v, "gateway.membership")?.as_str() {
            "off" => Some(Membership::Off),
            "summarised" | "summarized" => Some(Membership::Summarised),
            "all" => Some(Membership::All),
            other => {
                c.error(
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
        Some(_) => c
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
            let s = c.nonempty(v, "gateway.log")?;
            match tracing_subscriber::EnvFilter::try_new(&s) {
                Ok(_) => Some(Some(s)),
                Err(e) => {
                    c.error(v.span(), "gateway.log", format!("not a log filter: {e}"));
                    None
                }
            }
        }
    };
    let admins = admins(c, g.admins.as_deref(), "gateway.admins", declared);
    let web = match &g.web {
        Some(v) => c.socket_addr(v, "gateway.web").map(Some),
        None => Some(None),
    };
    *web_addr = web.flatten();
    if let (Some(Some(w)), Some(Some(m)), Some(v)) = (&web, &metrics, &g.web) {
        if w == m {
            c.error(
                v.span(),
                "gateway.web",
                format!("`{w}` is also `gateway.metrics`; each needs its own address"),
            );
        }
    }
    let public_url = public_url(c, g, web.flatten());
    let store_retry = c.count(
        &g.store_retry_seconds,
        "gateway.store_retry_seconds",
        1,
        STORE_RETRY_DEFAULT.as_secs() as i64,
    );
    let limits = limits(c, g);
    let retention = retention(c, g);
    let private_messages = match &g.private_messages {
        None => Some(PrivateMessages::default()),
        Some(v) => match c.expand(v, "gateway.private_messages")?.as_str() {
            "off" => Some(PrivateMessages::Off),
            "members" => Some(PrivateMessages::Members),
            "all" => Some(PrivateMessages::All),
            other => {
                c.error(
                    v.span(),
                    "gateway.private_messages",
                    format!("expected `off`, `members` or `all`, got `{other}`"),
                );
                None
            }
        },
    };
    Some(GatewayConfig {
        private_messages: private_messages?,
        retention: retention?,
        store_retry: Duration::from_secs(u64::try_from(store_retry?).ok()?),
        data_dir: data_dir?,
        store: store?,
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

/// `gateway.retention_days`, `private_retention_days`, `audit_days`, `outbox_max_age_hours`, `outbox_max_depth`.
fn retention(c: &mut Checker<'_>, g: &RawGateway) -> Option<crate::gateway::Retention> {
    use crate::gateway::retention as r;
    const DAY: f64 = 86_400.0;
    let [messages, private, audit, outbox_age] = [
        (
            &g.retention_days,
            "gateway.retention_days",
            DAY,
            r::MESSAGES_DEFAULT,
        ),
        (
            &g.private_retention_days,
            "gateway.private_retention_days",
            DAY,
            r::PRIVATE_DEFAULT,
        ),
        (&g.audit_days, "gateway.audit_days", DAY, r::AUDIT_DEFAULT),
        (
            &g.outbox_max_age_hours,
            "gateway.outbox_max_age_hours",
            3600.0,
            r::OUTBOX_AGE_DEFAULT,
        ),
    ]
    .map(|(v, key, unit, default)| span_of(c, v, key, unit, default));
    let depth = c.count_as::<usize>(
        &g.outbox_max_depth,
        "gateway.outbox_max_depth",
        0,
        r::OUTBOX_DEPTH_DEFAULT as i64,
    );
    Some(crate::gateway::Retention {
        messages: messages?,
        private: private?,
        audit: audit?,
        outbox_max_age: outbox_age?,
        outbox_max_depth: depth.map(|d| (d > 0).then_some(d))?,
    })
}

/// A span given as a number of `unit` seconds (a fraction allowed); 0 means none (keep for
/// ever).
fn span_of(
    c: &mut Checker<'_>,
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
        c.error(
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
            c.error(v.span(), key, "too large".to_owned());
            None
        }
    }
}

/// `gateway.max_attachments`, `gateway.rate_per_minute` and `gateway.rate_burst`.
fn limits(c: &mut Checker<'_>, g: &RawGateway) -> Option<crate::ratelimit::Limits> {
    let d = crate::ratelimit::Limits::default();
    let attachments = c.count_as::<usize>(
        &g.max_attachments,
        "gateway.max_attachments",
        0,
        d.caps.max_attachments as i64,
    );
    let per_minute = c.count_as::<u32>(
        &g.rate_per_minute,
        "gateway.rate_per_minute",
        0,
        i64::from(d.rate.per_minute),
    );
    let burst = c.count_as::<u32>(
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
/// error; so is a URL longer than a network carries well ([`Network::public_url_limit`]).
fn public_url(
    c: &mut Checker<'_>,
    g: &RawGateway,
    web: Option<SocketAddr>,
) -> Option<Option<String>> {
    const KEY: &str = "gateway.public_url";
    let Some(v) = &g.public_url else {
        return match web {
            None => Some(None),
            Some(addr) if addr.ip().is_unspecified() => {
                if let Some(w) = &g.web {
                    c.error(
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
    let url = c.http_url(v, KEY, "https://chat.example.org")?;
    let limit = NETWORKS
        .iter()
        .filter_map(|n| n.public_url_limit())
        .min_by_key(|(most, _)| *most);
    if let Some((most, why)) = limit.filter(|(most, _)| url.len() > *most) {
        c.error(
            v.span(),
            KEY,
            format!("{} bytes long; at most {most} {why}", url.len()),
        );
        return None;
    }
    if web.is_none() && g.web.is_none() {
        c.error(
            v.span(),
            KEY,
            "needs `web`, the listener that serves the pages this URL leads to",
        );
        return None;
    }
    Some(Some(url))
}

/// Admin identities, each read by the network whose syntax it has
/// ([`junction_network::Networks::admin`]).
fn admins(
    c: &mut Checker<'_>,
    list: Option<&[Str]>,
    key: &str,
    declared: &[NetworkId],
) -> Option<Vec<UserRef>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (i, v) in list.unwrap_or_default().iter().enumerate() {
        let k = format!("{key}[{i}]");
        let Some(s) = c.nonempty(v, &k) else {
            ok = false;
            continue;
        };
        match NETWORKS.admin(&s, declared) {
            Ok(u) => out.push(u),
            Err(message) => {
                c.error(v.span(), &k, message);
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Every `[[bridge]]`: unique names, rooms read by their networks, each room in one bridge.
fn bridges(
    c: &mut Checker<'_>,
    list: &[Spanned<RawBridge>],
    declared: &[NetworkId],
) -> (Vec<Link>, BTreeMap<BridgeName, Vec<UserRef>>) {
    let mut links = Vec::new();
    let mut admins_of = BTreeMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    // Every room seen so far: which bridge has it and where.
    let mut seen: HashMap<RoomRef, (String, usize)> = HashMap::new();
    let keys = NETWORKS.keys();
    for (i, b) in list.iter().enumerate() {
        let p = format!("bridge[{i}]");
        let t = b.span();
        let b = b.get_ref();
        let name = c.required(&b.name, t.clone(), &p, "name").and_then(|v| {
            let key = format!("{p}.name");
            let s = c.nonempty(v, &key)?;
            let good = s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !good {
                c.error(
                    v.span(),
                    &key,
                    format!("`{s}` is not a bridge name (letters, digits, - _ and .)"),
                );
                return None;
            }
            if let Some(first) = names.get(&s) {
                let line = super::line_col(c.src(), *first).0;
                c.error(
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
        for network in NETWORKS.iter() {
            let net_key = network.key();
            let Some(value) = b.rooms.get(net_key) else {
                continue;
            };
            let many = matches!(value.get_ref(), Rooms::Many(_));
            for (j, (room, span)) in value.get_ref().each(value.span()).into_iter().enumerate() {
                written += 1;
                let key = if many {
                    format!("{p}.{net_key}[{j}]")
                } else {
                    format!("{p}.{net_key}")
                };
                let expanded = c.expand(&Spanned::new(span.clone(), room), &key);
                let Some(room) = expanded else { continue };
                let r = match network.config_room(&room, declared) {
                    Ok(r) => r,
                    Err(message) => {
                        c.error(span, &key, message);
                        continue;
                    }
                };
                let same = NETWORKS.same_room(&r);
                if let Some((other, at)) = seen.get(&same) {
                    let line = super::line_col(c.src(), *at).0;
                    let msg = if *other == label {
                        format!("`{room}` is listed twice in this bridge (line {line})")
                    } else {
                        format!("`{room}` is already in bridge `{other}` (line {line})")
                    };
                    c.error(span, &key, msg);
                    continue;
                }
                seen.insert(same, (label.clone(), span.start));
                rooms.push(r);
            }
        }
        if written < 2 {
            let listed: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
            c.push(Diag {
                span: t.start..t.start,
                key: p.clone(),
                message: format!(
                    "a bridge links at least two rooms (keys {}); this one has {written}",
                    listed.join(", ")
                ),
                unless_removed: keys.iter().map(|k| format!("{p}.{k}")).collect(),
            });
        }
        let bridge_admins = admins(c, b.admins.as_deref(), &format!("{p}.admins"), declared);
        if let Some(name) = name {
            let bridge = BridgeName::new(name);
            if let Some(a) = bridge_admins.filter(|a| !a.is_empty()) {
                admins_of.insert(bridge.clone(), a);
            }
            links.push(Link { bridge, rooms });
        }
    }
    (links, admins_of)
}
