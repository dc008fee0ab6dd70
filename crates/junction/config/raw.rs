//! The first stage of config loading: `bridges.toml` exactly as written.
//!
//! Every table denies unknown keys, every value keeps its span so that the second stage
//! ([`super::validate`]) can point at it, and every key is optional here: whether a key is
//! required is decided there, so that a missing key is one error among all the others rather
//! than the end of parsing.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use toml::Spanned;

/// A string value with its place in the file.
pub type Str = Spanned<String>;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[gateway]`.
    pub gateway: Option<Spanned<RawGateway>>,
    /// `[matrix]`.
    pub matrix: Option<Spanned<RawMatrix>>,
    /// `[xmpp]`.
    pub xmpp: Option<Spanned<RawXmpp>>,
    /// `[irc.<name>]`, keyed by the network's name.
    #[serde(default)]
    pub irc: BTreeMap<Str, Spanned<RawIrc>>,
    /// `[[bridge]]`, in file order.
    #[serde(default)]
    pub bridge: Vec<Spanned<RawBridge>>,
}

/// `[gateway]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Directory of the store.
    pub data_dir: Option<Str>,
    /// Address of the metrics and health endpoint.
    pub metrics: Option<Str>,
    /// `off`, `summarised` or `all`.
    pub membership: Option<Str>,
    /// In `summarised` mode, how long someone may only lurk before they are puppeted.
    pub lurker_window_seconds: Option<Spanned<i64>>,
    /// Log filter, e.g. `info` or `junction_irc=debug,info`.
    pub log: Option<Str>,
    /// Gateway-wide admins.
    pub admins: Option<Vec<Str>>,
    /// Address of the listener for public pages (pastes of long messages).
    pub web: Option<Str>,
    /// Base URL under which people reach that listener.
    pub public_url: Option<Str>,
    /// How long the store may keep failing before the gateway exits for a restart.
    pub store_retry_seconds: Option<Spanned<i64>>,
    /// Most attachments one message carries across.
    pub max_attachments: Option<Spanned<i64>>,
    /// Per-sender rate limit: events a minute once the burst is spent (0: off).
    pub rate_per_minute: Option<Spanned<i64>>,
    /// Per-sender rate limit: events at once.
    pub rate_burst: Option<Spanned<i64>>,
    /// Days the message map (and what hangs off it) is kept (0: for ever).
    pub retention_days: Option<Spanned<Number>>,
    /// Days the admin audit trail is kept (0: for ever).
    pub audit_days: Option<Spanned<Number>>,
    /// Hours an undelivered outbox row is kept (0: for ever).
    pub outbox_max_age_hours: Option<Spanned<Number>>,
    /// Most undelivered outbox rows kept per network (0: no bound).
    pub outbox_max_depth: Option<Spanned<i64>>,
}

/// A TOML number, whole or not (`90`, `0.5`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(untagged)]
pub enum Number {
    /// A whole number.
    Int(i64),
    /// A number with a fraction.
    Float(f64),
}

/// `[matrix]`.
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
}

/// `[xmpp]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXmpp {
    /// The component's domain.
    pub component: Option<Str>,
    /// `host:port` of the server's component listener.
    pub server: Option<Str>,
    /// The component secret.
    pub secret: Option<Str>,
    /// Puppet nicks carry their network's origin mark.
    pub origin_marks: Option<Spanned<bool>>,
    /// Most puppet occupants in rooms at once.
    pub max_occupants: Option<Spanned<i64>>,
    /// Idle time after which a puppet occupant leaves (0: never).
    pub occupant_idle_timeout_seconds: Option<Spanned<i64>>,
}

/// One `[irc.<name>]`.
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

/// One `[[bridge]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBridge {
    /// Its unique name.
    pub name: Option<Str>,
    /// Matrix room(s).
    pub matrix: Option<Spanned<Rooms>>,
    /// XMPP MUC room(s).
    pub xmpp: Option<Spanned<Rooms>>,
    /// IRC channel(s), `network/#channel`.
    pub irc: Option<Spanned<Rooms>>,
    /// Admins of this bridge only.
    pub admins: Option<Vec<Str>>,
}

/// A network key of a bridge: one room, or a list of them.
#[derive(Debug)]
pub enum Rooms {
    /// `irc = "local/#lobby"`: the span is the enclosing `Spanned`'s.
    One(String),
    /// `irc = ["local/#a", "local/#b"]`.
    Many(Vec<Str>),
}

impl Rooms {
    /// Each room with its span; `outer` is the span of the whole value.
    pub fn each(&self, outer: std::ops::Range<usize>) -> Vec<(String, std::ops::Range<usize>)> {
        match self {
            Rooms::One(s) => vec![(s.clone(), outer)],
            Rooms::Many(v) => v.iter().map(|s| (s.get_ref().clone(), s.span())).collect(),
        }
    }
}

// Hand-written because `#[serde(untagged)]` buffers the value, which loses the spans of the
// list's elements.
impl<'de> Deserialize<'de> for Rooms {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Rooms;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a room or a list of rooms")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Rooms, E> {
                Ok(Rooms::One(s.to_owned()))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Rooms, E> {
                Ok(Rooms::One(s))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Rooms, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<Str>()? {
                    v.push(s);
                }
                Ok(Rooms::Many(v))
            }
        }
        d.deserialize_any(V)
    }
}
