//! JID escaping (XEP-0106) and the JIDs of puppets.
//!
//! Every remote user is shown in a room by one component JID,
//! `<escaped user>%<network>@<component>`. The user part is escaped with
//! XEP-0106 so that ids like `@alice:matrix.test` fit in a localpart; the
//! network is the gateway's network id with `:` replaced by `_`
//! (`irc:local` → `irc_local`). Written by hand: the `jid` crate validates
//! JIDs but does not implement XEP-0106.

use junction_core::UserRef;

/// The characters XEP-0106 escapes, with their escape codes (lowercase hex).
const TABLE: [(char, &str); 10] = [
    (' ', "20"),
    ('"', "22"),
    ('&', "26"),
    ('\'', "27"),
    ('/', "2f"),
    (':', "3a"),
    ('<', "3c"),
    ('>', "3e"),
    ('@', "40"),
    ('\\', "5c"),
];

/// The escape code that `s` starts with, if any (`20`, `3a`, ...), and the
/// character it stands for. Codes are matched case-insensitively.
fn code_at(s: &str) -> Option<char> {
    let code = s.get(..2)?;
    TABLE
        .iter()
        .find(|(_, hex)| hex.eq_ignore_ascii_case(code))
        .map(|(c, _)| *c)
}

/// Escapes a user part as XEP-0106 §4.2 says.
///
/// A backslash is escaped only where it is followed by an escape code, so
/// that unescaping gives the original back; other backslashes stay as they
/// are. Leading and trailing spaces cannot be represented and are trimmed.
pub fn escape(node: &str) -> String {
    let node = node.trim_matches(' ');
    let mut out = String::with_capacity(node.len() + 8);
    for (i, c) in node.char_indices() {
        if c == '\\' {
            if code_at(&node[i + 1..]).is_some() {
                out.push_str("\\5c");
            } else {
                out.push('\\');
            }
            continue;
        }
        match TABLE.iter().find(|(t, _)| *t == c) {
            Some((_, hex)) => {
                out.push('\\');
                out.push_str(hex);
            }
            None => out.push(c),
        }
    }
    out
}

/// Reverses [`escape`]: every `\xx` that is one of XEP-0106's codes becomes
/// its character; any other backslash is kept.
pub fn unescape(node: &str) -> String {
    let mut out = String::with_capacity(node.len());
    let mut rest = node;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match code_at(after) {
            Some(c) => {
                out.push(c);
                rest = &after[2..];
            }
            None => {
                out.push('\\');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The network as it appears in a puppet JID: `:` becomes `_`.
pub fn network_tag(network: &str) -> String {
    network.replace(':', "_")
}

/// The bare JID of the puppet that shows `user` in rooms, on `component`.
///
/// The localpart is lowercased, as the server's nodeprep would do anyway.
pub fn puppet_jid(user: &UserRef, component: &str) -> String {
    format!(
        "{}%{}@{}",
        escape(user.user.as_str()).to_lowercase(),
        network_tag(user.network.as_str()),
        component
    )
}

/// A puppet JID taken apart: the unescaped user and the network tag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PuppetParts {
    /// The remote user id, unescaped (lowercased as the JID holds it).
    pub user: String,
    /// The network tag (`matrix`, `irc_local`).
    pub network: String,
}

/// Reads a puppet JID (bare or full) on `component`; `None` for any other JID.
pub fn parse_puppet(jid: &str, component: &str) -> Option<PuppetParts> {
    let bare = jid.split('/').next()?;
    let (local, domain) = bare.split_once('@')?;
    if !domain.eq_ignore_ascii_case(component) {
        return None;
    }
    let (user, network) = local.rsplit_once('%')?;
    if user.is_empty() || network.is_empty() {
        return None;
    }
    Some(PuppetParts {
        user: unescape(user),
        network: network.to_string(),
    })
}

/// True if `jid` (bare or full) is on the component's domain: one of our own
/// puppets or the listener.
pub fn is_ours(jid: &str, component: &str) -> bool {
    let bare = jid.split('/').next().unwrap_or(jid);
    let domain = bare.rsplit_once('@').map_or(bare, |(_, d)| d);
    domain.eq_ignore_ascii_case(component)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The examples of XEP-0106 §5, table 3.
    const EXAMPLES: [(&str, &str); 13] = [
        ("space cadet", "space\\20cadet"),
        ("call me \"ishmael\"", "call\\20me\\20\\22ishmael\\22"),
        ("at&t guy", "at\\26t\\20guy"),
        ("d'artagnan", "d\\27artagnan"),
        ("/.fanboy", "\\2f.fanboy"),
        ("::foo::", "\\3a\\3afoo\\3a\\3a"),
        ("<foo>", "\\3cfoo\\3e"),
        ("user@host", "user\\40host"),
        ("c:\\net", "c\\3a\\net"),
        ("c:\\\\net", "c\\3a\\\\net"),
        ("c:\\cool stuff", "c\\3a\\cool\\20stuff"),
        ("c:\\5commas", "c\\3a\\5c5commas"),
        ("@alice:matrix.test", "\\40alice\\3amatrix.test"),
    ];

    #[test]
    fn escapes_as_the_xep_table() {
        for (raw, escaped) in EXAMPLES {
            assert_eq!(escape(raw), escaped, "escaping {raw:?}");
            assert_eq!(unescape(escaped), raw, "unescaping {escaped:?}");
        }
    }

    #[test]
    fn round_trips() {
        for s in [
            "plain",
            "\\",
            "a\\",
            "\\20",
            "\\5c20",
            "x\\zz",
            "héllo wörld",
            "a/b:c@d<e>f&g'h\"i",
            "\\3A",
        ] {
            assert_eq!(unescape(&escape(s)), s, "{s:?}");
        }
    }

    #[test]
    fn trims_edge_spaces() {
        assert_eq!(escape("  bob "), "bob");
    }

    #[test]
    fn unescape_is_case_insensitive_and_keeps_other_backslashes() {
        assert_eq!(unescape("a\\3Ab"), "a:b");
        assert_eq!(unescape("a\\zzb\\"), "a\\zzb\\");
    }

    #[test]
    fn puppet_jids() {
        let m = UserRef::new("matrix", "@Alice:matrix.test");
        let jid = puppet_jid(&m, "bridge.xmpp.test");
        assert_eq!(jid, "\\40alice\\3amatrix.test%matrix@bridge.xmpp.test");
        assert_eq!(
            parse_puppet(&format!("{jid}/res"), "bridge.xmpp.test"),
            Some(PuppetParts {
                user: "@alice:matrix.test".into(),
                network: "matrix".into(),
            })
        );

        let i = UserRef::new("irc:local", "bob");
        assert_eq!(
            puppet_jid(&i, "bridge.xmpp.test"),
            "bob%irc_local@bridge.xmpp.test"
        );
        assert!(parse_puppet("bob@xmpp.test", "bridge.xmpp.test").is_none());
        assert!(parse_puppet("bob@bridge.xmpp.test", "bridge.xmpp.test").is_none());
        assert!(is_ours("junction@bridge.xmpp.test/x", "bridge.xmpp.test"));
        assert!(is_ours("bridge.xmpp.test", "bridge.xmpp.test"));
        assert!(!is_ours("alice@xmpp.test", "bridge.xmpp.test"));
    }
}
