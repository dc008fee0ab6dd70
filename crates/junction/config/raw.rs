//! The first stage of config loading: `bridges.toml` exactly as written.
//!
//! Every table denies unknown keys, every value keeps its span so that the second stage
//! ([`super::validate`]) can point at it, and every key is optional here: whether a key is
//! required is decided there, so that a missing key is one error among all the others rather
//! than the end of parsing.
//!
//! This file holds the gateway's own tables (`[gateway]`, `[[bridge]]`); each network reads
//! its own section ([`junction_network::Network::read`]), and the keys they take are the
//! only other keys allowed at the top and in a `[[bridge]]`.

use crate::wiring::NETWORKS;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::OnceLock;
use toml::Spanned;

pub use junction_network::Str;

/// The gateway's own tables of the file. The networks' sections are read by the networks.
#[derive(Debug, Default)]
pub struct RawConfig {
    /// `[gateway]`.
    pub gateway: Option<Spanned<RawGateway>>,
    /// `[[bridge]]`, in file order.
    pub bridge: Vec<Spanned<RawBridge>>,
}

/// `[gateway]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    /// Directory of the store.
    pub data_dir: Option<Str>,
    /// Where the store is: `sled` (under `data_dir`) or a `postgres://` URL.
    pub store: Option<Str>,
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
    /// Days the message map of private conversations (and what hangs off it) is kept (0: as
    /// long as rooms' messages).
    pub private_retention_days: Option<Spanned<Number>>,
    /// Days the admin audit trail is kept (0: for ever).
    pub audit_days: Option<Spanned<Number>>,
    /// Hours an undelivered outbox row is kept (0: for ever).
    pub outbox_max_age_hours: Option<Spanned<Number>>,
    /// Most undelivered outbox rows kept per network (0: no bound).
    pub outbox_max_depth: Option<Spanned<i64>>,
    /// Who can be reached by private message: `off`, `members` or `all`.
    pub private_messages: Option<Str>,
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

/// One `[[bridge]]`.
#[derive(Debug, Default)]
pub struct RawBridge {
    /// Its unique name.
    pub name: Option<Str>,
    /// Its rooms, by network key (`matrix`, `irc`...).
    pub rooms: BTreeMap<String, Spanned<Rooms>>,
    /// Admins of this bridge only.
    pub admins: Option<Vec<Str>>,
}

/// The keys allowed at the top of the file: `gateway`, each network's, `bridge`.
fn top_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    around_networks(&KEYS, "gateway", "bridge")
}

/// The keys allowed in a `[[bridge]]`: `name`, each network's, `admins`.
fn bridge_keys() -> &'static [&'static str] {
    static KEYS: OnceLock<Vec<&'static str>> = OnceLock::new();
    around_networks(&KEYS, "name", "admins")
}

/// `first`, each network's key, then `last`, made once in `keys`.
fn around_networks(
    keys: &'static OnceLock<Vec<&'static str>>,
    first: &'static str,
    last: &'static str,
) -> &'static [&'static str] {
    keys.get_or_init(|| {
        let mut keys = vec![first];
        keys.extend(NETWORKS.keys());
        keys.push(last);
        keys
    })
}

/// Reads a key of a table that allows only `keys`, as serde's derived code does for
/// `deny_unknown_fields`, so that an unknown key is an error at the key.
struct Key(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Key {
    type Value = &'static str;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for Key {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("field identifier")
    }

    fn visit_str<E: de::Error>(self, s: &str) -> Result<Self::Value, E> {
        self.0
            .iter()
            .find(|k| **k == s)
            .copied()
            .ok_or_else(|| E::unknown_field(s, self.0))
    }
}

/// A table whose keys are known only at run time (the networks' keys among them), read key
/// by key into its default by [`read_table`].
trait Table: Default {
    /// Reads the value of `key` from `map`.
    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        key: &'static str,
        map: &mut A,
    ) -> Result<(), A::Error>;
}

/// Reads the table `name` that allows only `keys`: an unknown key is an error at the key.
fn read_table<'de, T: Table, D: Deserializer<'de>>(
    d: D,
    name: &'static str,
    keys: &'static [&'static str],
) -> Result<T, D::Error> {
    struct V<T>(
        &'static str,
        &'static [&'static str],
        std::marker::PhantomData<T>,
    );
    impl<'de, T: Table> Visitor<'de> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "struct {}", self.0)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let mut raw = T::default();
            while let Some(key) = map.next_key_seed(Key(self.1))? {
                raw.set(key, &mut map)?;
            }
            Ok(raw)
        }
    }
    d.deserialize_struct(name, keys, V(name, keys, std::marker::PhantomData))
}

impl Table for RawConfig {
    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        key: &'static str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        match key {
            "gateway" => self.gateway = Some(map.next_value()?),
            "bridge" => self.bridge = map.next_value()?,
            // A network's section: the network reads it.
            _ => {
                map.next_value::<de::IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RawConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_table(d, "RawConfig", top_keys())
    }
}

impl Table for RawBridge {
    fn set<'de, A: MapAccess<'de>>(
        &mut self,
        key: &'static str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        match key {
            "name" => self.name = Some(map.next_value()?),
            "admins" => self.admins = Some(map.next_value()?),
            network => {
                self.rooms.insert(network.to_owned(), map.next_value()?);
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for RawBridge {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        read_table(d, "RawBridge", bridge_keys())
    }
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
