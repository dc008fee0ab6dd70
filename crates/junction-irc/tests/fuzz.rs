//! Bounded property "fuzzing" of what the IRC adapter reads from and writes to the wire:
//! arbitrary server lines through the parser and the inbound mapping, arbitrary bodies
//! through the splitter, arbitrary names through the nick sanitiser. Each property runs a
//! fixed number of cases (a few seconds in all), so it fits in every test run.
#![allow(clippy::unwrap_used)]

use irc_proto::Message;
use junction_core::{NetworkId, UserRef};
use junction_irc::{ids, inbound, split};
use proptest::prelude::*;

/// Lines that look like IRC: an optional tag block and prefix, a command, parameters, and
/// a trailing part of any characters (controls, formatting codes, CTCP markers included).
fn irc_line() -> impl Strategy<Value = String> {
    let tags = prop::option::of("@[a-z/=;.\\-\\\\: ]{0,40} ");
    let prefix = prop::option::of(":[a-zA-Z0-9\\[\\]_\\-]{1,12}(![a-z~]{1,8}@[a-z.]{1,12})? ");
    let command = prop::sample::select(vec![
        "PRIVMSG", "NOTICE", "JOIN", "PART", "QUIT", "NICK", "TOPIC", "KICK", "MODE", "PING",
        "001", "005", "353", "CAP", "BATCH", "TAGMSG", "FOO",
    ]);
    let params = "( [#&!+]?[^ \\r\\n\\x00:]{0,12}){0,4}";
    let trailing =
        prop::option::of(" :\\PC{0,80}|[\\x01\\x02\\x03\\x0f\\x16\\x1d\\x1f0-9, a-z]{0,40}");
    (tags, prefix, command, params, trailing).prop_map(|(t, p, c, params, tr)| {
        format!(
            "{}{}{c}{params}{}",
            t.unwrap_or_default(),
            p.unwrap_or_default(),
            tr.unwrap_or_default()
        )
    })
}

fn map_line(line: &str) {
    let Ok(msg) = line.parse::<Message>() else {
        return;
    };
    let network = NetworkId::new("irc:fuzz");
    let room_of = |c: &str| c.starts_with('#').then(|| format!("fuzz/{c}"));
    let channels_of = |_: &str| vec!["#lobby".to_owned()];
    let is_ours = |n: &str| n.ends_with("[m]");
    let who_is =
        |n: &str| (n == "alice").then(|| UserRef::new(NetworkId::new("matrix"), "@alice:m"));
    let _ = inbound::map(&network, &msg, &room_of, &channels_of, &is_ours, &who_is);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any line that looks like IRC parses or is refused, and maps without a panic.
    #[test]
    fn server_lines_never_panic(line in irc_line()) {
        map_line(&line);
    }

    /// Any text at all, too.
    #[test]
    fn any_text_never_panics(line in "\\PC{0,200}") {
        map_line(&line);
        let _ = inbound::strip_codes(&line);
        let _ = inbound::is_netsplit(&line);
        let _ = inbound::parse_server_time(&line);
    }

    /// A body of any characters becomes lines that fit, never carry CR, LF or NUL (so no
    /// text can become a command), and once cut never exceed the line count (the last line
    /// then is the note saying how many more there were and where they are).
    #[test]
    fn bodies_split_into_safe_lines(body in "(\\PC|[\\r\\n\\x00\\x01]){0,600}", max in 1usize..200, max_lines in 1usize..8) {
        let lines = split::split_body(&body, max);
        for l in &lines {
            prop_assert!(l.len() <= max.max(4), "line too long: {:?}", l);
            prop_assert!(!l.contains(['\r', '\n', '\0']), "unsafe line: {:?}", l);
        }
        let total = lines.len();
        let cut = split::cut(lines, max_lines, |n| format!("({n} more lines: https://x/paste/0)"));
        prop_assert!(cut.len() <= max_lines);
        if total > max_lines {
            prop_assert_eq!(cut.last().cloned(), Some(format!("({} more lines: https://x/paste/0)", total - (max_lines - 1))));
        }
    }

    /// Splitting one line never loses or reorders a byte and never cuts a character.
    #[test]
    fn lines_split_losslessly(text in "\\PC{0,500}", max in 0usize..100) {
        let parts = split::split_line(&text, max);
        prop_assert_eq!(parts.concat(), text.clone());
        for p in &parts {
            prop_assert!(p.len() <= max.max(4));
        }
    }

    /// Any remote name becomes a nick the server takes: no spaces, CR, LF, NUL, no leading
    /// digit or '-', within NICKLEN.
    #[test]
    fn nicks_are_always_valid(name in "(\\PC|[ \\r\\n\\x00,*?!@#:])*", nicklen in 3usize..31) {
        for suffix in ["[m]", "[x]", ""] {
            let n = ids::sanitise(&name, suffix, nicklen);
            prop_assert!(!n.is_empty());
            prop_assert!(n.len() <= nicklen, "{:?} longer than {}", n, nicklen);
            prop_assert!(!n.contains([' ', '\r', '\n', '\0', ',', '*', '?', '!', '@', ':']), "{:?}", n);
            let first = n.chars().next().unwrap();
            prop_assert!(!first.is_ascii_digit() && first != '-' && first != '#', "{:?}", n);
            let next = ids::next_candidate(&n, suffix, nicklen);
            prop_assert!(next.len() <= nicklen && next != n, "{:?} → {:?}", n, next);
        }
    }
}
