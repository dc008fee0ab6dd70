//! Puppet nicks: `<name>[m]` for Matrix users, `<name>[x]` for XMPP users, made safe for IRC.

/// Characters never allowed in a nick we send.
const FORBIDDEN: &[char] = &[
    ' ', '\r', '\n', '\0', ',', '*', '?', '!', '@', ':', '#', '&', '$',
];

/// The suffix that marks which network a remote user comes from (the network's
/// [`origin_mark`](junction_core::NetworkId::origin_mark), as on every network).
pub fn suffix_for(network: &str) -> &'static str {
    junction_core::NetworkId::new(network).origin_mark()
}

/// Makes `name` a valid nick ending in `suffix`, at most `nicklen` bytes. The name is trimmed
/// (never the suffix, unless NICKLEN leaves no room for it); control characters are dropped, other forbidden or non-ASCII
/// characters become `_`,
/// a leading digit or `-` gets a `_` in front, an empty name becomes `_`.
pub fn sanitise(name: &str, suffix: &str, nicklen: usize) -> String {
    let mut base: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| {
            if FORBIDDEN.contains(&c) || !c.is_ascii() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if base.is_empty() {
        base.push('_');
    }
    if base.starts_with(|c: char| c.is_ascii_digit() || c == '-') {
        base.insert(0, '_');
    }
    let nicklen = nicklen.max(1);
    if suffix.len() < nicklen {
        base.truncate(nicklen - suffix.len());
        base.push_str(suffix);
    } else {
        base.truncate(nicklen);
    }
    base
}

/// The nick to try after `nick` was taken: an `_` appended, or when NICKLEN is reached, the
/// last character before the suffix replaced by `_` (then the one before it, and so on).
pub fn next_candidate(nick: &str, suffix: &str, nicklen: usize) -> String {
    if nick.len() < nicklen {
        return format!("{nick}_");
    }
    let (base, suf) = match nick.strip_suffix(suffix) {
        Some(base) => (base, suffix),
        None => (nick, ""),
    };
    let mut chars: Vec<char> = base.chars().collect();
    if let Some(pos) = chars.iter().rposition(|c| *c != '_') {
        chars[pos] = '_';
    } else if let Some(last) = chars.last_mut() {
        *last = '0';
    }
    let mut out: String = chars.into_iter().collect();
    out.push_str(suf);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_get_their_suffix() {
        assert_eq!(sanitise("alice", "[m]", 30), "alice[m]");
        assert_eq!(sanitise("bob", "[x]", 30), "bob[x]");
    }

    #[test]
    fn trimmed_to_nicklen_keeping_suffix() {
        assert_eq!(sanitise("alexandria", "[m]", 9), "alexan[m]");
        assert_eq!(sanitise("alice", "[m]", 9), "alice[m]");
        assert_eq!(sanitise("alice", "[m]", 2), "al");
    }

    #[test]
    fn forbidden_and_leading_chars() {
        assert_eq!(sanitise("a b\r\n,c", "[m]", 30), "a_b_c[m]");
        assert_eq!(sanitise("1abc", "[m]", 30), "_1abc[m]");
        assert_eq!(sanitise("-x", "[m]", 30), "_-x[m]");
        assert_eq!(sanitise("", "[m]", 30), "_[m]");
        assert_eq!(sanitise("é@x", "[m]", 30), "__x[m]");
        assert_eq!(sanitise("a\0b", "[m]", 30), "ab[m]");
    }

    #[test]
    fn collisions_add_underscores_within_nicklen() {
        assert_eq!(next_candidate("alice[m]", "[m]", 30), "alice[m]_");
        assert_eq!(next_candidate("alexan[m]", "[m]", 9), "alexa_[m]");
        assert_eq!(next_candidate("alexa_[m]", "[m]", 9), "alex__[m]");
    }
}
