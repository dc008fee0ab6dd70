//! IRC formatting control codes to and from [`RichText`].
//!
//! Bold `\x02`, italic `\x1D`, underline `\x1F`, strike `\x1E` and monospace `\x11` map to
//! spans; colours (`\x03` with their digits, `\x04` with hex) and reverse `\x16` are dropped;
//! `\x0F` resets; any other C0 control is removed. Rendering never emits `\r` or `\0`.

use super::{capped, plain_into, quote_lines, within_depth, work, RichText, Span};

const BOLD: char = '\x02';
const ITALIC: char = '\x1D';
const UNDERLINE: char = '\x1F';
const STRIKE: char = '\x1E';
const MONO: char = '\x11';
const COLOUR: char = '\x03';
const HEX_COLOUR: char = '\x04';
const REVERSE: char = '\x16';
const RESET: char = '\x0F';

#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    italic: bool,
    underline: bool,
    strike: bool,
    mono: bool,
}

/// Parses one IRC message line.
pub fn parse(line: &str) -> RichText {
    let mut runs: Vec<(Style, String)> = Vec::new();
    let mut style = Style::default();
    let mut chars = capped(line, "irc-codes").chars().peekable();
    while let Some(c) = chars.next() {
        work::tick(1);
        match c {
            BOLD => style.bold = !style.bold,
            ITALIC => style.italic = !style.italic,
            UNDERLINE => style.underline = !style.underline,
            STRIKE => style.strike = !style.strike,
            MONO => style.mono = !style.mono,
            RESET => style = Style::default(),
            REVERSE => {}
            COLOUR => {
                let fg = skip_digits(&mut chars, 2);
                if fg > 0 && chars.peek() == Some(&',') {
                    let mut look = chars.clone();
                    look.next();
                    if look.peek().is_some_and(|d| d.is_ascii_digit()) {
                        chars.next();
                        skip_digits(&mut chars, 2);
                    }
                }
            }
            HEX_COLOUR => {
                skip_hex(&mut chars);
                if chars.peek() == Some(&',') {
                    let mut look = chars.clone();
                    look.next();
                    if look.peek().is_some_and(|d| d.is_ascii_hexdigit()) {
                        chars.next();
                        skip_hex(&mut chars);
                    }
                }
            }
            '\n' => push(&mut runs, style, '\n'),
            c if c.is_control() && (c as u32) < 0x20 => {}
            '\x7f' => {}
            c => push(&mut runs, style, c),
        }
    }
    RichText {
        spans: runs.into_iter().map(|(s, t)| wrap(s, t)).collect(),
    }
}

fn skip_digits(chars: &mut std::iter::Peekable<std::str::Chars<'_>>, max: usize) -> usize {
    let mut n = 0;
    while n < max && chars.peek().is_some_and(|d| d.is_ascii_digit()) {
        chars.next();
        n += 1;
    }
    n
}

fn skip_hex(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    let mut look = chars.clone();
    let n = (0..6)
        .take_while(|_| look.next().is_some_and(|d| d.is_ascii_hexdigit()))
        .count();
    if n == 6 {
        for _ in 0..6 {
            chars.next();
        }
    }
}

fn push(runs: &mut Vec<(Style, String)>, style: Style, c: char) {
    match runs.last_mut() {
        Some((s, t)) if *s == style => t.push(c),
        _ => runs.push((style, c.to_string())),
    }
}

fn wrap(s: Style, text: String) -> Span {
    let mut span = if s.mono {
        Span::Code(text)
    } else {
        Span::Text(text)
    };
    if s.strike {
        span = Span::Strike(vec![span]);
    }
    if s.underline {
        span = Span::Underline(vec![span]);
    }
    if s.italic {
        span = Span::Italic(vec![span]);
    }
    if s.bold {
        span = Span::Bold(vec![span]);
    }
    span
}

/// Renders rich text as one IRC message (may hold `\n`, for the adapter to split on).
pub fn render(text: &RichText) -> String {
    let mut out = String::new();
    render_spans(&text.spans, &mut out, 0);
    out
}

fn clean(s: &str, out: &mut String) {
    for c in s.chars() {
        if c == '\n' || !((c as u32) < 0x20 || c == '\x7f') {
            out.push(c);
        }
    }
}

fn toggled(code: char, children: &[Span], out: &mut String, depth: usize) {
    out.push(code);
    render_spans(children, out, depth + 1);
    out.push(code);
}

/// Writes `spans`, `depth` levels down; below [`super::MAX_DEPTH`] only their flat text, cleaned.
fn render_spans(spans: &[Span], out: &mut String, depth: usize) {
    let spans = match within_depth(spans, depth) {
        Ok(spans) => spans,
        Err(flat) => return clean(&flat, out),
    };
    for s in spans {
        match s {
            Span::Text(t) => clean(t, out),
            Span::Bold(c) => toggled(BOLD, c, out, depth),
            Span::Italic(c) => toggled(ITALIC, c, out, depth),
            Span::Underline(c) => toggled(UNDERLINE, c, out, depth),
            Span::Strike(c) => toggled(STRIKE, c, out, depth),
            Span::Code(t) => {
                out.push(MONO);
                clean(t, out);
                out.push(MONO);
            }
            Span::Pre { text, .. } => clean(text, out),
            Span::Link { url, children } => {
                let mut inner = String::new();
                render_spans(children, &mut inner, depth + 1);
                let mut plain = String::new();
                plain_into(children, &mut plain, depth + 1);
                if plain.is_empty() || plain == *url {
                    clean(url, out);
                } else {
                    out.push_str(&inner);
                    out.push_str(" (");
                    clean(url, out);
                    out.push(')');
                }
            }
            Span::Mention { name, .. } => clean(name, out),
            Span::Quote(c) => {
                let mut inner = String::new();
                render_spans(c, &mut inner, depth + 1);
                quote_lines(inner.split('\n'), out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Span {
        Span::Text(s.into())
    }

    #[test]
    fn codes_become_spans() {
        let r = parse("a \x02bold\x02 \x1Dit\x1D \x11code\x11 \x1Es\x0F end");
        assert_eq!(
            r.spans,
            vec![
                t("a "),
                Span::Bold(vec![t("bold")]),
                t(" "),
                Span::Italic(vec![t("it")]),
                t(" "),
                Span::Code("code".into()),
                t(" "),
                Span::Strike(vec![t("s")]),
                t(" end"),
            ]
        );
    }

    #[test]
    fn colours_are_stripped_with_their_digits() {
        assert_eq!(parse("\x0304,12red\x03 x").to_plain(), "red x");
        assert_eq!(parse("\x0312345").to_plain(), "345");
        assert_eq!(parse("\x04FF00AAhex\x04").to_plain(), "hex");
        assert_eq!(parse("\x16rev\x16\x01\x07").to_plain(), "rev");
        assert_eq!(parse("\x03,5").to_plain(), ",5");
    }

    #[test]
    fn render_examples() {
        let r = RichText {
            spans: vec![
                Span::Bold(vec![t("b")]),
                t(" "),
                Span::Link {
                    url: "https://e.org".into(),
                    children: vec![t("docs")],
                },
                t(" "),
                Span::Link {
                    url: "https://e.org".into(),
                    children: vec![t("https://e.org")],
                },
                t(" "),
                Span::Mention {
                    user: None,
                    name: "bob".into(),
                },
            ],
        };
        assert_eq!(
            render(&r),
            "\x02b\x02 docs (https://e.org) https://e.org bob"
        );
        assert_eq!(render(&RichText::plain("a\r\nb\0c")), "a\nbc");
    }

    #[test]
    fn round_trip() {
        let r = RichText {
            spans: vec![
                t("x "),
                Span::Bold(vec![Span::Italic(vec![t("y")])]),
                Span::Code("z".into()),
                Span::Underline(vec![Span::Strike(vec![t("w")])]),
            ],
        };
        assert_eq!(parse(&render(&r)), r);
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse(&s);
        }

        #[test]
        fn render_has_no_cr_or_nul(s in any::<String>(), u in any::<String>()) {
            let r = RichText { spans: vec![
                Span::Text(s.clone()),
                Span::Bold(vec![Span::Text(u.clone())]),
                Span::Code(s.clone()),
                Span::Link { url: u.clone(), children: vec![Span::Text(s.clone())] },
                Span::Mention { user: None, name: u.clone() },
                Span::Quote(vec![Span::Text(s)]),
            ]};
            let out = render(&r);
            prop_assert!(!out.contains('\r') && !out.contains('\0'));
        }
    }
}
