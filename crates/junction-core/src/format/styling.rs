//! XMPP message styling (XEP-0393) to and from [`RichText`].
//!
//! Spans: `*bold*`, `_italic_`, `~strike~`, `` `code` ``; blocks: ```` ``` ```` pre blocks
//! (with an optional language after the opening fence) and `> ` quotes. As the spec says, an
//! opening directive sits at the start of the line, after whitespace or after another opening
//! directive, and is not followed by whitespace; a closing one is not preceded by whitespace;
//! no span crosses a line; a span holds at least one character.

use super::{RichText, Span};

/// Parses a message body written with XEP-0393 styling.
pub fn parse(body: &str) -> RichText {
    let lines: Vec<&str> = body.split('\n').collect();
    let mut spans: Vec<Span> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if let Some(lang) = line.strip_prefix("```") {
            let mut text = Vec::new();
            i += 1;
            while i < lines.len() && lines[i] != "```" {
                text.push(lines[i]);
                i += 1;
            }
            i += 1;
            let lang = lang.trim();
            newline_if_needed(&mut spans);
            spans.push(Span::Pre {
                lang: (!lang.is_empty()).then(|| lang.to_string()),
                text: text.join("\n"),
            });
            if i < lines.len() {
                push(&mut spans, Span::Text("\n".into()));
            }
            continue;
        }
        if line.starts_with('>') {
            let mut quoted = Vec::new();
            while i < lines.len() && lines[i].starts_with('>') {
                let l = &lines[i][1..];
                quoted.push(l.strip_prefix(' ').unwrap_or(l));
                i += 1;
            }
            newline_if_needed(&mut spans);
            spans.push(Span::Quote(parse(&quoted.join("\n")).spans));
            if i < lines.len() {
                push(&mut spans, Span::Text("\n".into()));
            }
            continue;
        }
        for s in inline(line) {
            push(&mut spans, s);
        }
        if i + 1 < lines.len() {
            push(&mut spans, Span::Text("\n".into()));
        }
        i += 1;
    }
    RichText { spans }
}

fn newline_if_needed(spans: &mut Vec<Span>) {
    match spans.last() {
        None => {}
        Some(Span::Text(t)) if t.ends_with('\n') => {}
        Some(_) => push(spans, Span::Text("\n".into())),
    }
}

fn push(spans: &mut Vec<Span>, span: Span) {
    if let (Some(Span::Text(prev)), Span::Text(t)) = (spans.last_mut(), &span) {
        prev.push_str(t);
        return;
    }
    if matches!(&span, Span::Text(t) if t.is_empty()) {
        return;
    }
    spans.push(span);
}

const DIRECTIVES: [char; 4] = ['*', '_', '~', '`'];

/// Spans of one line.
fn inline(line: &str) -> Vec<Span> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut out = Vec::new();
    let mut text_start = 0;
    let mut k = 0;
    while k < chars.len() {
        let (pos, c) = chars[k];
        let opens = DIRECTIVES.contains(&c)
            && (k == 0
                || chars[k - 1].1.is_whitespace()
                || (DIRECTIVES.contains(&chars[k - 1].1) && chars[k - 1].1 != c))
            && chars.get(k + 1).is_some_and(|&(_, n)| !n.is_whitespace());
        if opens {
            let close =
                (k + 2..chars.len()).find(|&j| chars[j].1 == c && !chars[j - 1].1.is_whitespace());
            if let Some(j) = close {
                push(&mut out, Span::Text(line[text_start..pos].to_string()));
                let inner = &line[pos + c.len_utf8()..chars[j].0];
                let span = match c {
                    '*' => Span::Bold(inline(inner)),
                    '_' => Span::Italic(inline(inner)),
                    '~' => Span::Strike(inline(inner)),
                    _ => Span::Code(inner.to_string()),
                };
                out.push(span);
                text_start = chars[j].0 + c.len_utf8();
                k = j + 1;
                continue;
            }
        }
        k += 1;
    }
    push(&mut out, Span::Text(line[text_start..].to_string()));
    out
}

/// Renders rich text as a XEP-0393 body. Underline has no directive and becomes its text;
/// links become `text (url)` and mentions the plain name.
pub fn render(text: &RichText) -> String {
    let mut out = String::new();
    render_spans(&text.spans, &mut out);
    out
}

fn render_spans(spans: &[Span], out: &mut String) {
    for s in spans {
        match s {
            Span::Text(t) => out.push_str(t),
            Span::Bold(c) => wrapped('*', c, out),
            Span::Italic(c) => wrapped('_', c, out),
            Span::Strike(c) => wrapped('~', c, out),
            Span::Underline(c) => render_spans(c, out),
            Span::Code(t) => {
                out.push('`');
                out.push_str(t);
                out.push('`');
            }
            Span::Pre { lang, text } => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                out.push_str("```");
                if let Some(l) = lang {
                    out.push_str(l);
                }
                out.push('\n');
                out.push_str(text);
                out.push_str("\n```");
            }
            Span::Link { .. } | Span::Mention { .. } => out.push_str(
                &RichText {
                    spans: vec![s.clone()],
                }
                .to_plain(),
            ),
            Span::Quote(c) => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                let mut inner = String::new();
                render_spans(c, &mut inner);
                for (i, line) in inner.split('\n').enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    out.push_str("> ");
                    out.push_str(line);
                }
            }
        }
    }
}

fn wrapped(d: char, children: &[Span], out: &mut String) {
    out.push(d);
    render_spans(children, out);
    out.push(d);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t(s: &str) -> Span {
        Span::Text(s.into())
    }

    #[test]
    fn spans() {
        assert_eq!(
            parse("a *b* _i_ ~s~ `c*d*`").spans,
            vec![
                t("a "),
                Span::Bold(vec![t("b")]),
                t(" "),
                Span::Italic(vec![t("i")]),
                t(" "),
                Span::Strike(vec![t("s")]),
                t(" "),
                Span::Code("c*d*".into()),
            ]
        );
        assert_eq!(
            parse("*_bi_*").spans,
            vec![Span::Bold(vec![Span::Italic(vec![t("bi")])])]
        );
    }

    #[test]
    fn directive_rules() {
        assert!(parse("* not bold*").is_plain());
        assert!(parse("*not bold *").is_plain());
        assert!(parse("a*b*").is_plain());
        assert!(parse("**").is_plain());
        assert!(parse("*no\nspan*").is_plain());
        assert!(parse("2 * 3 * 4").is_plain());
    }

    #[test]
    fn blocks() {
        assert_eq!(
            parse("> quoted *b*\n> more\nafter").spans,
            vec![
                Span::Quote(vec![t("quoted "), Span::Bold(vec![t("b")]), t("\nmore")]),
                t("\nafter"),
            ]
        );
        assert_eq!(
            parse("see\n```rust\nfn *x*() {}\n```").spans,
            vec![
                t("see\n"),
                Span::Pre {
                    lang: Some("rust".into()),
                    text: "fn *x*() {}".into()
                },
            ]
        );
    }

    #[test]
    fn round_trip() {
        let r = RichText {
            spans: vec![
                t("x "),
                Span::Bold(vec![t("y "), Span::Italic(vec![t("z")])]),
                t(" "),
                Span::Code("c".into()),
                t("\n"),
                Span::Quote(vec![t("q")]),
                t("\n"),
                Span::Pre {
                    lang: None,
                    text: "p".into(),
                },
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
        fn parse_never_panics_on_directives(s in "[*_~` >\na-z\u{e9}]{0,60}") {
            let _ = parse(&s);
        }
    }
}
