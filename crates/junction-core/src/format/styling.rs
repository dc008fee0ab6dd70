//! XMPP message styling (XEP-0393) to and from [`RichText`].
//!
//! Spans: `*bold*`, `_italic_`, `~strike~`, `` `code` ``; blocks: ```` ``` ```` pre blocks
//! (with an optional language after the opening fence) and `> ` quotes. As the spec says, an
//! opening directive sits at the start of the line, after whitespace or after another opening
//! directive, and is not followed by whitespace; a closing one is not preceded by whitespace;
//! no span crosses a line; a span holds at least one character.

use super::{capped, plain_into, quote_lines, within_depth, work, RichText, Span, MAX_QUOTE_DEPTH};

/// Parses a message body written with XEP-0393 styling. Quotes nest up to
/// [`MAX_QUOTE_DEPTH`] levels (deeper `>` markers stay text); the body is cut at
/// [`super::MAX_INPUT_BYTES`]; the cost is linear in the body.
pub fn parse(body: &str) -> RichText {
    RichText {
        spans: blocks(capped(body, "xep-0393"), 0),
    }
}

/// The blocks of `body`, itself quoted `depth` levels deep. Recurses once per quote level,
/// at most [`MAX_QUOTE_DEPTH`] times.
fn blocks(body: &str, depth: usize) -> Vec<Span> {
    let lines: Vec<&str> = body.split('\n').collect();
    work::tick(lines.len());
    let mut spans: Vec<Span> = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        work::tick(1);
        if let Some(lang) = line.strip_prefix("```") {
            let mut text = Vec::new();
            i += 1;
            while i < lines.len() && lines[i] != "```" {
                work::tick(1);
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
        if line.starts_with('>') && depth < MAX_QUOTE_DEPTH {
            let mut quoted = Vec::new();
            while i < lines.len() && lines[i].starts_with('>') {
                work::tick(1);
                let l = &lines[i][1..];
                quoted.push(l.strip_prefix(' ').unwrap_or(l));
                i += 1;
            }
            newline_if_needed(&mut spans);
            spans.push(Span::Quote(blocks(&quoted.join("\n"), depth + 1)));
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
    spans
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

/// Spans of one line, in time linear in its length: for each directive the next position
/// that could close it is found once for the whole line (one backward pass), not searched for
/// again at every opening. A span never holds its own directive (the first closing one ends
/// it), so spans nest at most three deep (code holds no spans) and the recursion is bounded.
fn inline(line: &str) -> Vec<Span> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    // next_close[d][k]: the first j >= k where directive d can close (chars[j] is d and
    // chars[j - 1] is not whitespace), or chars.len().
    let n = chars.len();
    let mut next_close = vec![[n; 4]; n + 1];
    for k in (0..n).rev() {
        work::tick(1);
        let mut row = next_close[k + 1];
        if let Some(d) = DIRECTIVES.iter().position(|&c| c == chars[k].1) {
            if k > 0 && !chars[k - 1].1.is_whitespace() {
                row[d] = k;
            }
        }
        next_close[k] = row;
    }
    let mut out = Vec::new();
    spans_in(line, &chars, &next_close, 0, n, &mut out);
    out
}

/// The spans of `chars[lo..hi]` (byte range of `line`), pushed onto `out`.
fn spans_in(
    line: &str,
    chars: &[(usize, char)],
    next_close: &[[usize; 4]],
    lo: usize,
    hi: usize,
    out: &mut Vec<Span>,
) {
    let byte = |k: usize| chars.get(k).map_or(line.len(), |&(p, _)| p);
    let mut text_start = byte(lo);
    let mut k = lo;
    while k < hi {
        work::tick(1);
        let (pos, c) = chars[k];
        let d = DIRECTIVES.iter().position(|&x| x == c);
        let opens = d.is_some()
            && (k == lo
                || chars[k - 1].1.is_whitespace()
                || (DIRECTIVES.contains(&chars[k - 1].1) && chars[k - 1].1 != c))
            && k + 1 < hi
            && !chars[k + 1].1.is_whitespace();
        if let (true, Some(d)) = (opens, d) {
            let j = next_close.get(k + 2).map_or(chars.len(), |row| row[d]);
            if j < hi {
                push(out, Span::Text(line[text_start..pos].to_string()));
                let inner_start = k + 1;
                let span = match c {
                    '`' => Span::Code(line[byte(inner_start)..chars[j].0].to_string()),
                    _ => {
                        let mut inner = Vec::new();
                        spans_in(line, chars, next_close, inner_start, j, &mut inner);
                        match c {
                            '*' => Span::Bold(inner),
                            '_' => Span::Italic(inner),
                            _ => Span::Strike(inner),
                        }
                    }
                };
                out.push(span);
                text_start = chars[j].0 + c.len_utf8();
                k = j + 1;
                continue;
            }
        }
        k += 1;
    }
    push(out, Span::Text(line[text_start..byte(hi)].to_string()));
}

/// Renders rich text as a XEP-0393 body. Underline has no directive and becomes its text;
/// links become `text (url)` and mentions the plain name.
pub fn render(text: &RichText) -> String {
    let mut out = String::new();
    render_spans(&text.spans, &mut out, 0);
    out
}

/// Writes `spans`, `depth` levels down; below [`super::MAX_DEPTH`] only their flat text.
fn render_spans(spans: &[Span], out: &mut String, depth: usize) {
    let spans = match within_depth(spans, depth) {
        Ok(spans) => spans,
        Err(flat) => return out.push_str(&flat),
    };
    for s in spans {
        match s {
            Span::Text(t) => out.push_str(t),
            Span::Bold(c) => wrapped('*', c, out, depth),
            Span::Italic(c) => wrapped('_', c, out, depth),
            Span::Strike(c) => wrapped('~', c, out, depth),
            Span::Underline(c) => render_spans(c, out, depth + 1),
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
            Span::Link { .. } | Span::Mention { .. } => {
                plain_into(std::slice::from_ref(s), out, depth)
            }
            Span::Quote(c) => {
                if !out.is_empty() && !out.ends_with('\n') {
                    out.push('\n');
                }
                let mut inner = String::new();
                render_spans(c, &mut inner, depth + 1);
                quote_lines(inner.split('\n'), out);
            }
        }
    }
}

fn wrapped(d: char, children: &[Span], out: &mut String, depth: usize) {
    out.push(d);
    render_spans(children, out, depth + 1);
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
