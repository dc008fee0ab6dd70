//! Matrix user ids for ghosts: the spec's localpart escaping and the ghost naming rule.
//!
//! **Escaping** follows the spec appendix "Mapping from other character sets", bijective
//! variant: the text is taken as UTF-8; `a-z 0-9 . - /` stay as they are; `A`-`Z` become
//! `_` + the lower-case letter; `_` becomes `__`; every other byte (including `=`) becomes
//! `=xx` (lower-case hex). The result always matches the spec grammar `[a-z0-9._=\-/]+`.
//!
//! **Ghost ids** are `@<prefix><net>_<escaped name>:<server_name>`, where `<net>` is the
//! network id with `:` written as `_` and any byte outside `a-z 0-9 -` written as `=xx`, and
//! `<name>` is the remote user's stable id. Examples with the default prefix `_junction_`:
//!
//! | network     | remote user        | ghost                                          |
//! |-------------|--------------------|------------------------------------------------|
//! | `irc:local` | `bob`              | `@_junction_irc_local_bob:matrix.test`         |
//! | `irc:local` | `Bob[m]`           | `@_junction_irc_local__bob=5bm=5d:matrix.test` |
//! | `xmpp`      | `alice@xmpp.test`  | `@_junction_xmpp_alice=40xmpp.test:matrix.test`|
//!
//! The rule is injective: `<net>` contains exactly one `_` per `:` of the network id (network
//! ids are `matrix`, `xmpp` or `irc:<name>`), so the network part ends at a known `_`, and the
//! escaped name is decoded unambiguously. When a user id would exceed the spec's 255 bytes, the
//! escaped name is cut and a digest of the whole name appended (`-<16 hex>`); such ids are
//! still unique but only the store's puppet table maps them back.

use junction_core::NetworkId;
use sha2::{Digest, Sha256};

/// Longest user id the spec allows, in bytes.
const MAX_USER_ID: usize = 255;

/// Escapes text into a localpart fragment (see the module docs).
pub fn escape_localpart(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'/' => out.push(b as char),
            b'A'..=b'Z' => {
                out.push('_');
                out.push(b.to_ascii_lowercase() as char);
            }
            b'_' => out.push_str("__"),
            _ => push_hex(&mut out, b),
        }
    }
    out
}

/// Reverses [`escape_localpart`]; `None` when the text is not a valid escaping.
pub fn unescape_localpart(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'_' => {
                let next = *bytes.get(i + 1)?;
                match next {
                    b'_' => out.push(b'_'),
                    b'a'..=b'z' => out.push(next.to_ascii_uppercase()),
                    _ => return None,
                }
                i += 2;
            }
            b'=' => {
                let hex = s.get(i + 1..i + 3)?;
                let b = u8::from_str_radix(hex, 16).ok()?;
                if hex.bytes().any(|c| c.is_ascii_uppercase()) {
                    return None;
                }
                out.push(b);
                i += 3;
            }
            b @ (b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'/') => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    String::from_utf8(out).ok()
}

fn push_hex(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('=');
    out.push(HEX[usize::from(b >> 4)] as char);
    out.push(HEX[usize::from(b & 0xf)] as char);
}

/// The network part of a ghost localpart: `:` → `_`, `a-z 0-9 -` kept, the rest `=xx`.
fn network_part(network: &NetworkId) -> String {
    let mut out = String::new();
    for b in network.as_str().bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' => out.push(b as char),
            b':' => out.push('_'),
            _ => push_hex(&mut out, b),
        }
    }
    out
}

/// Decodes a network part that contains no `_` (one segment of it).
fn decode_segment(s: &str) -> Option<String> {
    if s.contains('_') {
        return None;
    }
    unescape_localpart(s)
}

/// The localpart of the ghost that stands for `name` of `network` (see the module docs).
pub fn ghost_localpart(prefix: &str, network: &NetworkId, name: &str, server_name: &str) -> String {
    let head = format!("{prefix}{}_", network_part(network));
    let escaped = escape_localpart(name);
    // "@" + localpart + ":" + server
    let budget = MAX_USER_ID.saturating_sub(2 + server_name.len() + head.len());
    if escaped.len() <= budget {
        return format!("{head}{escaped}");
    }
    let digest = hex::encode(&Sha256::digest(name.as_bytes())[..8]);
    let keep = budget.saturating_sub(digest.len() + 1);
    // Cut on a token boundary so the kept part stays well-formed.
    let mut cut = 0;
    let bytes = escaped.as_bytes();
    while cut < bytes.len() {
        let len = match bytes[cut] {
            b'_' => 2,
            b'=' => 3,
            _ => 1,
        };
        if cut + len > keep {
            break;
        }
        cut += len;
    }
    format!("{head}{}-{digest}", &escaped[..cut])
}

/// The full ghost user id for `name` of `network`.
pub fn ghost_user_id(prefix: &str, network: &NetworkId, name: &str, server_name: &str) -> String {
    format!(
        "@{}:{server_name}",
        ghost_localpart(prefix, network, name, server_name)
    )
}

/// Splits a Matrix user id into localpart and server name.
pub fn split_user_id(user_id: &str) -> Option<(&str, &str)> {
    user_id.strip_prefix('@')?.split_once(':')
}

/// True when `user_id` is in our namespace (a ghost) on our server.
pub fn is_ghost(prefix: &str, server_name: &str, user_id: &str) -> bool {
    match split_user_id(user_id) {
        Some((local, server)) => server == server_name && local.starts_with(prefix),
        None => false,
    }
}

/// Reverses [`ghost_user_id`] for ids that were not shortened: the network and the remote
/// name. Networks with a sub-name (`irc:<name>`) take one more `_`-separated segment.
pub fn parse_ghost(prefix: &str, server_name: &str, user_id: &str) -> Option<(NetworkId, String)> {
    let (local, server) = split_user_id(user_id)?;
    if server != server_name {
        return None;
    }
    let rest = local.strip_prefix(prefix)?;
    let (kind, rest) = rest.split_once('_')?;
    let kind = decode_segment(kind)?;
    let (network, rest) = if kind == "irc" {
        let (sub, rest) = rest.split_once('_')?;
        (format!("irc:{}", decode_segment(sub)?), rest)
    } else {
        (kind, rest)
    };
    Some((NetworkId::new(network), unescape_localpart(rest)?))
}

/// Escapes one path segment for a Matrix URL (room ids, aliases, user ids, event ids).
pub fn path_segment(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
    const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_grammar(s: &str) -> bool {
        !s.is_empty()
            && s.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/'))
    }

    const SAMPLES: &[&str] = &[
        "bob",
        "Bob",
        "Bob[m]",
        "alice@xmpp.test",
        "a_b",
        "_a",
        "x=y",
        "nick!user@host.example",
        "héllo wörld",
        "日本語",
        "a/b.c-d",
        "ZZ__zz",
        "[]|\\`^{}",
    ];

    #[test]
    fn escaping_round_trips_and_matches_the_grammar() {
        for s in SAMPLES {
            let e = escape_localpart(s);
            assert!(in_grammar(&e), "{s:?} -> {e:?}");
            assert_eq!(
                unescape_localpart(&e).as_deref(),
                Some(*s),
                "{s:?} -> {e:?}"
            );
        }
    }

    #[test]
    fn escaping_follows_the_spec_examples() {
        assert_eq!(escape_localpart("Alice"), "_alice");
        assert_eq!(escape_localpart("a_b"), "a__b");
        assert_eq!(escape_localpart("#"), "=23");
        assert_eq!(escape_localpart("á"), "=c3=a1");
        assert_eq!(escape_localpart("="), "=3d");
    }

    #[test]
    fn escaping_is_injective_on_samples() {
        let mut seen = std::collections::HashSet::new();
        for s in SAMPLES {
            assert!(seen.insert(escape_localpart(s)), "collision for {s:?}");
        }
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for bad in ["_", "_1", "=", "=4", "=zz", "=4A", "A", "a b", "a#"] {
            assert_eq!(unescape_localpart(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ghost_ids_are_readable_and_round_trip() {
        let irc = NetworkId::new("irc:local");
        let xmpp = NetworkId::new("xmpp");
        assert_eq!(
            ghost_user_id("_junction_", &irc, "bob", "matrix.test"),
            "@_junction_irc_local_bob:matrix.test"
        );
        assert_eq!(
            ghost_user_id("_junction_", &xmpp, "alice@xmpp.test", "matrix.test"),
            "@_junction_xmpp_alice=40xmpp.test:matrix.test"
        );
        let odd = NetworkId::new("irc:My_Net");
        for net in [&irc, &xmpp, &odd] {
            for s in SAMPLES {
                let id = ghost_user_id("_junction_", net, s, "matrix.test");
                let (local, _) = split_user_id(&id).expect("split");
                assert!(in_grammar(local), "{id}");
                assert!(is_ghost("_junction_", "matrix.test", &id));
                assert_eq!(
                    parse_ghost("_junction_", "matrix.test", &id),
                    Some((net.clone(), (*s).to_owned())),
                    "{id}"
                );
            }
        }
    }

    #[test]
    fn network_and_name_can_not_be_confused() {
        // A network with a `_` in its name and a name starting with `_` stay distinct.
        let a = ghost_user_id("p_", &NetworkId::new("irc:a_"), "b", "s");
        let b = ghost_user_id("p_", &NetworkId::new("irc:a"), "_b", "s");
        let c = ghost_user_id("p_", &NetworkId::new("irc:aB"), "c", "s");
        let d = ghost_user_id("p_", &NetworkId::new("irc:a"), "bC", "s");
        assert_ne!(a, b);
        assert_ne!(c, d);
    }

    #[test]
    fn long_names_are_shortened_within_the_limit() {
        let name = "é".repeat(200);
        let id = ghost_user_id("_junction_", &NetworkId::new("xmpp"), &name, "matrix.test");
        assert!(id.len() <= MAX_USER_ID, "{}", id.len());
        let (local, _) = split_user_id(&id).expect("split");
        assert!(in_grammar(local));
        let other = ghost_user_id(
            "_junction_",
            &NetworkId::new("xmpp"),
            &format!("{name}x"),
            "matrix.test",
        );
        assert_ne!(id, other);
    }

    #[test]
    fn foreign_ids_are_not_ghosts() {
        assert!(!is_ghost("_junction_", "matrix.test", "@alice:matrix.test"));
        assert!(!is_ghost(
            "_junction_",
            "matrix.test",
            "@_junction_x_y:other.test"
        ));
        assert_eq!(
            parse_ghost("_junction_", "matrix.test", "@alice:matrix.test"),
            None
        );
    }
}
