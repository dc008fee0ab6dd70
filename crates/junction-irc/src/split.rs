//! Splitting outgoing text into IRC lines that fit after the server adds its prefix.
//!
//! A line relayed by the server is `:nick!user@host PRIVMSG #chan :text\r\n` and must fit in
//! 512 bytes (or the server's LINELEN). We cannot see our own host as others see it, so the
//! budget uses a conservative estimate. Splits never cut a UTF-8 sequence and prefer the last
//! space of a part; a part that has no space is cut at the last char boundary that fits.

/// Longest host we assume the server shows for us (RFC 1035 names are at most 63 per label;
/// cloaks and IPv6 addresses stay well below this).
pub const HOST_ESTIMATE: usize = 64;
/// Longest username (ident) we assume, with a possible `~`.
pub const USER_ESTIMATE: usize = 11;

/// Bytes left for the text of a `PRIVMSG <target> :` (or NOTICE) line sent by `nick`, for a
/// server whose whole line, CRLF included, may hold `linelen` bytes (512 when unannounced).
pub fn budget(linelen: usize, nick: &str, target: &str) -> usize {
    // ":" nick "!" user "@" host " PRIVMSG " target " :" ... "\r\n"
    let overhead = 1
        + nick.len()
        + 1
        + USER_ESTIMATE
        + 1
        + HOST_ESTIMATE
        + " PRIVMSG ".len()
        + target.len()
        + 2
        + 2;
    linelen.saturating_sub(overhead).max(16)
}

/// Splits one line of text (no CR/LF) into parts of at most `max` bytes. Joining the parts
/// gives back the input exactly; a split at a space keeps the space at the end of the earlier
/// part, so nothing is lost. `max` below 4 is raised to 4 so a part can hold any char.
pub fn split_line(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(4);
    let mut parts = Vec::new();
    let mut rest = text;
    while rest.len() > max {
        let mut cut = max;
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        // Prefer a word boundary: cut just after the last space that fits, unless that would
        // make a part less than half full (a very long word is better cut than a tiny line).
        if let Some(space) = rest[..cut].rfind(' ') {
            if space + 1 >= max / 2 {
                cut = space + 1;
            }
        }
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest);
    }
    parts
}

/// Splits a message body into the lines to send: each source line (CR, LF and NUL never reach
/// the wire) is split to `max` bytes; empty source lines are skipped. Every line is kept:
/// [`cut`] decides what goes out when there are too many.
pub fn split_body(body: &str, max: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for source in body.split(['\n', '\r']) {
        let clean: String = source.chars().filter(|c| *c != '\0').collect();
        if clean.trim().is_empty() {
            continue;
        }
        lines.extend(split_line(&clean, max).into_iter().map(str::to_owned));
    }
    lines
}

/// At most `max_lines` lines (at least 1): when there are more, the first `max_lines - 1`
/// and a last line, `note(n)`, that says where the `n` lines left out can be read.
pub fn cut(
    mut lines: Vec<String>,
    max_lines: usize,
    note: impl FnOnce(usize) -> String,
) -> Vec<String> {
    let max_lines = max_lines.max(1);
    if lines.len() > max_lines {
        let keep = max_lines - 1;
        let more = lines.len() - keep;
        lines.truncate(keep);
        lines.push(note(more));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_line("hello", 100), vec!["hello"]);
        assert_eq!(split_line("", 100), vec![""]);
    }

    #[test]
    fn prefers_word_boundaries() {
        let parts = split_line("aaaa bbbb cccc", 10);
        assert_eq!(parts, vec!["aaaa bbbb ", "cccc"]);
    }

    #[test]
    fn never_cuts_a_utf8_sequence() {
        let text = "é".repeat(10);
        for part in split_line(&text, 5) {
            assert!(part.len() <= 5);
            assert!(part.chars().all(|c| c == 'é'));
        }
    }

    #[test]
    fn budget_leaves_room_for_the_prefix() {
        let b = budget(512, "alice[m]", "#lobby");
        let line = format!(
            ":alice[m]!{}@{} PRIVMSG #lobby :{}\r\n",
            "u".repeat(USER_ESTIMATE),
            "h".repeat(HOST_ESTIMATE),
            "x".repeat(b)
        );
        assert_eq!(line.len(), 512);
    }

    #[test]
    fn body_lines_and_overflow_note() {
        assert_eq!(split_body("a\n\nb\r\nc", 100), vec!["a", "b", "c"]);
        assert_eq!(split_body("a\0b", 100), vec!["ab"]);
        let many: Vec<String> = (0..10).map(|i| i.to_string()).collect();
        let note = |n: usize| format!("({n} more lines: http://x/paste/1)");
        assert_eq!(
            cut(many.clone(), 3, note),
            vec!["0", "1", "(8 more lines: http://x/paste/1)"]
        );
        assert_eq!(cut(many.clone(), 10, note), many);
        assert_eq!(
            cut(many.clone(), 1, note),
            vec!["(10 more lines: http://x/paste/1)"]
        );
        assert_eq!(cut(many, 0, note).len(), 1);
    }

    proptest! {
        #[test]
        fn parts_join_to_input_and_fit(text in "\\PC{0,400}", max in 4usize..120) {
            let parts = split_line(&text, max);
            prop_assert_eq!(parts.concat(), text.clone());
            for part in &parts {
                prop_assert!(part.len() <= max);
            }
        }

        #[test]
        fn body_lines_are_the_source_lines_split(body in "(\\PC|[\r\n\x00]){0,400}", max in 4usize..120) {
            let lines = split_body(&body, max);
            let expected: Vec<String> = body
                .split(['\n', '\r'])
                .map(|l| l.replace('\0', ""))
                .filter(|l| !l.trim().is_empty())
                .collect();
            // Each source line is its parts joined: nothing is lost.
            let mut at = 0;
            for source in &expected {
                let mut joined = String::new();
                while joined.len() < source.len() {
                    let Some(part) = lines.get(at) else { break };
                    prop_assert!(part.len() <= max);
                    joined.push_str(part);
                    at += 1;
                }
                prop_assert_eq!(&joined, source);
            }
            prop_assert_eq!(at, lines.len());
        }

        #[test]
        fn cut_keeps_the_first_lines_and_counts_the_rest(n in 0usize..40, max_lines in 1usize..12) {
            let lines: Vec<String> = (0..n).map(|i| format!("line {i}")).collect();
            let out = cut(lines.clone(), max_lines, |more| format!("({more} more)"));
            prop_assert!(out.len() <= max_lines);
            if n <= max_lines {
                prop_assert_eq!(out, lines);
            } else {
                let keep = max_lines - 1;
                prop_assert_eq!(&out[..keep], &lines[..keep]);
                prop_assert_eq!(out[keep].clone(), format!("({} more)", n - keep));
            }
        }

        #[test]
        fn word_boundary_used_when_available(words in proptest::collection::vec("[a-z]{1,8}", 1..60), max in 20usize..80) {
            let text = words.join(" ");
            let parts = split_line(&text, max);
            prop_assert_eq!(parts.concat(), text.clone());
            // Every part but the last ends at a word boundary when words are short.
            for part in &parts[..parts.len() - 1] {
                prop_assert!(part.ends_with(' '), "part {:?} not at a word boundary", part);
            }
        }
    }
}
