//! Matrix `formatted_body` HTML to and from [`RichText`].
//!
//! Pills (links to `https://matrix.to/#/@user:server`) are mentions of users of the network
//! the caller names: the reader makes each pill a [`Span::Mention`] of a user of that network,
//! the writer makes each mention of a user of that network (whose id starts with `@`) a pill
//! and shows other mentions as their names.
//!
//! Parsing is a small hand-written tokenizer over a tag whitelist rather than a full HTML5
//! parser crate: we only need a handful of inline tags, everything else is dropped keeping its
//! text, and a full parser (html5ever and friends) would pull a large dependency tree into a
//! crate that must stay small. The tokenizer never fails: unbalanced or malformed markup
//! degrades to text. `<mx-reply>`, `<script>` and `<style>` are dropped with their content.
//! Rendering escapes every text and attribute, so nothing from another network becomes markup.
//!
//! Bounds: the input is cut at [`super::MAX_INPUT_BYTES`]; elements nested deeper than
//! [`MAX_DEPTH`] are not opened (their text stays, in the innermost open element), so the
//! tree and the tokenizer's stack stay that shallow; the tokenizer never recurses and looks at
//! each input byte a bounded number of times.

use super::{capped, plain_into, within_depth, work, RichText, Span, MAX_DEPTH};
use crate::ids::{NetworkId, UserRef};

const MATRIX_TO: &str = "https://matrix.to/#/";

#[derive(Debug)]
enum Kind {
    Root,
    Bold,
    Italic,
    Underline,
    Strike,
    Code,
    Pre(Option<String>),
    Link(Option<String>),
    Quote,
    Other,
}

struct Frame {
    tag: String,
    kind: Kind,
    children: Vec<Span>,
}

/// Parses Matrix `formatted_body` HTML into rich text; pills become mentions of users of
/// `pills`.
pub fn parse(html: &str, pills: &NetworkId) -> RichText {
    let mut stack = vec![Frame {
        tag: String::new(),
        kind: Kind::Root,
        children: Vec::new(),
    }];
    let mut rest = capped(html, "matrix-html");
    work::tick(rest.len());
    while !rest.is_empty() {
        work::tick(1);
        let Some(lt) = rest.find('<') else {
            push_text(&mut stack, &decode(rest));
            break;
        };
        if lt > 0 {
            push_text(&mut stack, &decode(&rest[..lt]));
        }
        rest = &rest[lt..];
        if let Some(after) = rest.strip_prefix("<!--") {
            rest = after.find("-->").map_or("", |i| &after[i + 3..]);
            continue;
        }
        let Some(gt) = rest.find('>') else {
            // A lone '<' with no end: plain text.
            push_text(&mut stack, &decode(rest));
            break;
        };
        let inside = &rest[1..gt];
        rest = &rest[gt + 1..];
        let (closing, inside) = match inside.strip_prefix('/') {
            Some(i) => (true, i),
            None => (false, inside),
        };
        let name_end = inside
            .find(|c: char| c.is_whitespace() || c == '/')
            .unwrap_or(inside.len());
        let name = inside[..name_end].to_ascii_lowercase();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
            push_text(
                &mut stack,
                &decode(&format!("<{}{}>", if closing { "/" } else { "" }, inside)),
            );
            continue;
        }
        let attrs = &inside[name_end..];
        if closing {
            close(&mut stack, &name, pills);
            continue;
        }
        match name.as_str() {
            "script" | "style" | "mx-reply" => {
                rest = skip_until_end(rest, &name);
            }
            "br" => push_text(&mut stack, "\n"),
            "b" | "strong" => open(&mut stack, name, Kind::Bold),
            "i" | "em" => open(&mut stack, name, Kind::Italic),
            "u" => open(&mut stack, name, Kind::Underline),
            "s" | "del" | "strike" => open(&mut stack, name, Kind::Strike),
            "code" => {
                let lang = attr(attrs, "class").and_then(|c| {
                    c.split_whitespace()
                        .find_map(|w| w.strip_prefix("language-").map(str::to_string))
                });
                if let Some(Frame {
                    kind: Kind::Pre(l), ..
                }) = stack.last_mut()
                {
                    if l.is_none() {
                        *l = lang;
                    }
                    open(&mut stack, name, Kind::Other);
                } else {
                    open(&mut stack, name, Kind::Code);
                }
            }
            "pre" => open(&mut stack, name, Kind::Pre(None)),
            "a" => {
                let href = attr(attrs, "href").filter(|h| allowed_url(h));
                open(&mut stack, name, Kind::Link(href));
            }
            "blockquote" => open(&mut stack, name, Kind::Quote),
            "p" | "div" | "li" | "ul" | "ol" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6" => {
                line_break(&mut stack);
                open(&mut stack, name, Kind::Other)
            }
            _ => {
                // Unknown tags are transparent: their text stays, the tag goes. Void
                // elements (img, hr...) have no end tag, so they are not put on the stack.
            }
        }
    }
    while stack.len() > 1 {
        pop(&mut stack, pills);
    }
    let mut spans = stack.pop().map(|f| f.children).unwrap_or_default();
    trim_trailing_newlines(&mut spans);
    RichText { spans }
}

fn trim_trailing_newlines(spans: &mut Vec<Span>) {
    while let Some(Span::Text(t)) = spans.last_mut() {
        let trimmed = t.trim_end_matches('\n').len();
        t.truncate(trimmed);
        if t.is_empty() {
            spans.pop();
        } else {
            break;
        }
    }
}

/// What follows the end tag `</name ...>` in `rest` (empty when there is none), matched
/// without regard to case and without copying `rest`: each byte is looked at once.
fn skip_until_end<'a>(rest: &'a str, name: &str) -> &'a str {
    let bytes = rest.as_bytes();
    let mut from = 0;
    while let Some(i) = rest[from..].find("</").map(|i| i + from) {
        work::tick(i - from + 1);
        let tag = &bytes[i + 2..];
        if tag.len() >= name.len() && tag[..name.len()].eq_ignore_ascii_case(name.as_bytes()) {
            let after = &rest[i..];
            return after.find('>').map_or("", |g| &after[g + 1..]);
        }
        from = i + 2;
    }
    ""
}

/// Opens an element, unless the tree is already [`MAX_DEPTH`] deep: then the tag is ignored
/// and what it holds goes to the innermost open element (its end tag, if any, closes that
/// element or nothing, which loses no text).
fn open(stack: &mut Vec<Frame>, tag: String, kind: Kind) {
    // The root frame is not a span; the text inside the innermost element is one more level.
    if stack.len() >= MAX_DEPTH {
        return;
    }
    stack.push(Frame {
        tag,
        kind,
        children: Vec::new(),
    });
}

fn close(stack: &mut Vec<Frame>, name: &str, pills: &NetworkId) {
    let same = |t: &str| {
        t == name
            || matches!(
                (t, name),
                ("b", "strong") | ("strong", "b") | ("i", "em") | ("em", "i")
            )
    };
    work::tick(stack.len());
    if let Some(pos) = stack.iter().rposition(|f| same(&f.tag)) {
        if pos == 0 {
            return;
        }
        while stack.len() > pos {
            pop(stack, pills);
        }
    }
}

fn pop(stack: &mut Vec<Frame>, pills: &NetworkId) {
    let Some(f) = stack.pop() else { return };
    let block = matches!(
        f.tag.as_str(),
        "p" | "div" | "li" | "h1" | "h2" | "h3" | "h4" | "h5" | "h6"
    );
    let span = match f.kind {
        Kind::Root => None,
        Kind::Bold => Some(Span::Bold(f.children)),
        Kind::Italic => Some(Span::Italic(f.children)),
        Kind::Underline => Some(Span::Underline(f.children)),
        Kind::Strike => Some(Span::Strike(f.children)),
        Kind::Code => Some(Span::Code(RichText { spans: f.children }.to_plain())),
        Kind::Pre(lang) => {
            let mut text = RichText { spans: f.children }.to_plain();
            if text.ends_with('\n') {
                text.pop();
            }
            Some(Span::Pre { lang, text })
        }
        Kind::Quote => {
            let mut c = f.children;
            trim_trailing_newlines(&mut c);
            Some(Span::Quote(c))
        }
        Kind::Link(Some(url)) => {
            let mut name = String::new();
            plain_into(&f.children, &mut name, 0);
            match url.strip_prefix(MATRIX_TO) {
                Some(id) if id.starts_with('@') => Some(Span::Mention {
                    user: Some(UserRef::new(pills.clone(), percent_decode(id))),
                    name,
                }),
                _ => Some(Span::Link {
                    url,
                    children: f.children,
                }),
            }
        }
        Kind::Link(None) | Kind::Other => {
            for c in f.children {
                push_span(stack, c);
            }
            None
        }
    };
    if let Some(s) = span {
        push_span(stack, s);
    }
    if block {
        push_text(stack, "\n");
    }
}

/// Starts a new line unless the text so far is empty or already ends one.
fn line_break(stack: &mut [Frame]) {
    let needs = match stack.last().and_then(|f| f.children.last()) {
        None => false,
        Some(Span::Text(t)) => !t.ends_with('\n'),
        Some(_) => true,
    };
    if needs {
        push_text(stack, "\n");
    }
}

fn push_text(stack: &mut [Frame], text: &str) {
    if text.is_empty() {
        return;
    }
    push_span(stack, Span::Text(text.to_string()));
}

fn push_span(stack: &mut [Frame], span: Span) {
    let Some(top) = stack.last_mut() else { return };
    if let (Some(Span::Text(prev)), Span::Text(t)) = (top.children.last_mut(), &span) {
        prev.push_str(t);
        return;
    }
    top.children.push(span);
}

/// The value of attribute `name` in a tag's attribute text, entities decoded.
fn attr(attrs: &str, name: &str) -> Option<String> {
    let mut rest = attrs.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
    while !rest.is_empty() {
        let key_end = rest
            .find(|c: char| c == '=' || c.is_whitespace() || c == '/')
            .unwrap_or(rest.len());
        let key = rest[..key_end].to_ascii_lowercase();
        rest = rest[key_end..].trim_start();
        let mut value = None;
        if let Some(after) = rest.strip_prefix('=') {
            let after = after.trim_start();
            let (v, r) = match after.chars().next() {
                Some(q @ ('"' | '\'')) => {
                    let body = &after[1..];
                    match body.find(q) {
                        Some(i) => (&body[..i], &body[i + 1..]),
                        None => (body, ""),
                    }
                }
                _ => {
                    let e = after.find(char::is_whitespace).unwrap_or(after.len());
                    (&after[..e], &after[e..])
                }
            };
            value = Some(decode(v));
            rest = r;
        }
        if key == name {
            return value;
        }
        if key_end == 0 && value.is_none() {
            // Skip a stray character so the loop always advances.
            let mut cs = rest.chars();
            cs.next();
            rest = cs.as_str();
        }
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == '/');
    }
    None
}

fn allowed_url(url: &str) -> bool {
    let lower = url.trim().to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://") || lower.starts_with("mailto:")
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Decodes HTML character references; unknown ones stay as written.
fn decode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        rest = &rest[amp..];
        // Only the next 12 bytes are looked at, so a run of `&` without `;` stays linear.
        work::tick(1);
        let end = rest.as_bytes()[1..]
            .iter()
            .take(12)
            .position(|&b| b == b';')
            .map(|i| i + 1);
        let decoded = end.and_then(|e| {
            let ent = &rest[1..e];
            let c = match ent {
                "amp" => Some('&'),
                "lt" => Some('<'),
                "gt" => Some('>'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                "nbsp" => Some('\u{a0}'),
                _ => {
                    let n = if let Some(h) =
                        ent.strip_prefix("#x").or_else(|| ent.strip_prefix("#X"))
                    {
                        u32::from_str_radix(h, 16).ok()
                    } else {
                        ent.strip_prefix('#').and_then(|d| d.parse::<u32>().ok())
                    };
                    n.and_then(char::from_u32).filter(|&c| c != '\0')
                }
            };
            c.map(|c| (c, e))
        });
        match decoded {
            Some((c, e)) => {
                out.push(c);
                rest = &rest[e + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `s` escaped for HTML or XML text and attribute values.
pub fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape(s, &mut out);
    out
}

/// Writes `s` to `out` escaped for HTML or XML text and attribute values.
pub fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
}

/// Renders rich text as Matrix `formatted_body` HTML, every text and attribute escaped;
/// mentions of users of `pills` become pills.
pub fn render(text: &RichText, pills: &NetworkId) -> String {
    let mut out = String::new();
    render_spans(&text.spans, &mut out, 0, pills);
    out
}

fn wrapped(tag: &str, children: &[Span], out: &mut String, depth: usize, pills: &NetworkId) {
    out.push('<');
    out.push_str(tag);
    out.push('>');
    render_spans(children, out, depth + 1, pills);
    out.push_str("</");
    out.push_str(tag);
    out.push('>');
}

/// Writes `spans`, `depth` levels down; below [`MAX_DEPTH`] only their flat text, escaped.
fn render_spans(spans: &[Span], out: &mut String, depth: usize, pills: &NetworkId) {
    let spans = match within_depth(spans, depth) {
        Ok(spans) => spans,
        Err(flat) => return render_spans(&[Span::Text(flat)], out, 0, pills),
    };
    for s in spans {
        match s {
            Span::Text(t) => {
                for (i, line) in t.split('\n').enumerate() {
                    if i > 0 {
                        out.push_str("<br>");
                    }
                    escape(line, out);
                }
            }
            Span::Bold(c) => wrapped("strong", c, out, depth, pills),
            Span::Italic(c) => wrapped("em", c, out, depth, pills),
            Span::Underline(c) => wrapped("u", c, out, depth, pills),
            Span::Strike(c) => wrapped("del", c, out, depth, pills),
            Span::Code(t) => {
                out.push_str("<code>");
                escape(t, out);
                out.push_str("</code>");
            }
            Span::Pre { lang, text } => {
                out.push_str("<pre><code");
                if let Some(l) = lang {
                    out.push_str(" class=\"language-");
                    escape(l, out);
                    out.push('"');
                }
                out.push('>');
                escape(text, out);
                out.push_str("</code></pre>");
            }
            Span::Link { url, children } => {
                if allowed_url(url) {
                    out.push_str("<a href=\"");
                    escape(url, out);
                    out.push_str("\">");
                    render_spans(children, out, depth + 1, pills);
                    out.push_str("</a>");
                } else {
                    render_spans(children, out, depth + 1, pills);
                }
            }
            Span::Mention { user, name } => match user {
                Some(u) if &u.network == pills && u.user.as_str().starts_with('@') => {
                    out.push_str("<a href=\"");
                    out.push_str(MATRIX_TO);
                    escape(u.user.as_str(), out);
                    out.push_str("\">");
                    escape(name, out);
                    out.push_str("</a>");
                }
                _ => escape(name, out),
            },
            Span::Quote(c) => wrapped("blockquote", c, out, depth, pills),
        }
    }
}

/// True when the text needs a `formatted_body` (anything beyond plain text).
pub fn needs_html(text: &RichText) -> bool {
    !text.is_plain()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The network whose users pills name in these tests.
    fn pills() -> NetworkId {
        NetworkId::new("matrix")
    }
    use proptest::prelude::*;

    fn t(s: &str) -> Span {
        Span::Text(s.into())
    }

    #[test]
    fn inline_tags() {
        let r = parse(
            "a <b>b</b> <em>i</em> <u>u</u> <del>s</del> <code>c&lt;</code>",
            &pills(),
        );
        assert_eq!(
            r.spans,
            vec![
                t("a "),
                Span::Bold(vec![t("b")]),
                t(" "),
                Span::Italic(vec![t("i")]),
                t(" "),
                Span::Underline(vec![t("u")]),
                t(" "),
                Span::Strike(vec![t("s")]),
                t(" "),
                Span::Code("c<".into()),
            ]
        );
    }

    #[test]
    fn script_reply_and_unknown_tags() {
        assert_eq!(
            parse("<script>alert(1)</script>hi", &pills()).to_plain(),
            "hi"
        );
        assert_eq!(
            parse(
                "<mx-reply><blockquote>old</blockquote></mx-reply>new",
                &pills()
            )
            .to_plain(),
            "new"
        );
        assert_eq!(
            parse("<font color=red>x</font><img src=y>", &pills()).to_plain(),
            "x"
        );
        assert_eq!(parse("a<br>b<p>c</p>", &pills()).to_plain(), "a\nb\nc");
        assert_eq!(parse("1 < 2 & 3", &pills()).to_plain(), "1 < 2 & 3");
    }

    #[test]
    fn unbalanced() {
        let r = parse("<b><i>x</b>y", &pills());
        assert_eq!(
            r.spans,
            vec![Span::Bold(vec![Span::Italic(vec![t("x")])]), t("y")]
        );
        assert_eq!(parse("</i>z<b>", &pills()).to_plain(), "z");
    }

    #[test]
    fn links_and_pills() {
        let r = parse(
            "<a href=\"https://matrix.to/#/@bob:matrix.test\">Bob</a> \
             <a href=\"javascript:alert(1)\">x</a> <a href='https://e.org'>e</a>",
            &pills(),
        );
        assert_eq!(
            r.spans,
            vec![
                Span::Mention {
                    user: Some(UserRef::new("matrix", "@bob:matrix.test")),
                    name: "Bob".into()
                },
                t(" x "),
                Span::Link {
                    url: "https://e.org".into(),
                    children: vec![t("e")]
                },
            ]
        );
        assert_eq!(
            render(&r, &pills()),
            "<a href=\"https://matrix.to/#/@bob:matrix.test\">Bob</a> x <a href=\"https://e.org\">e</a>"
        );
    }

    #[test]
    fn pre_with_language() {
        let r = parse(
            "<pre><code class=\"language-rust\">fn x() {}\n</code></pre>",
            &pills(),
        );
        assert_eq!(
            r.spans,
            vec![Span::Pre {
                lang: Some("rust".into()),
                text: "fn x() {}".into()
            }]
        );
        assert_eq!(parse(&render(&r, &pills()), &pills()), r);
    }

    #[test]
    fn round_trip() {
        let r = RichText {
            spans: vec![
                t("x <y> & \"z\"\nnext"),
                Span::Bold(vec![Span::Italic(vec![t("y")])]),
                Span::Quote(vec![t("q")]),
                Span::Strike(vec![Span::Underline(vec![t("w")])]),
                Span::Link {
                    url: "https://e.org/?a=1&b=2".into(),
                    children: vec![t("l")],
                },
            ],
        };
        assert_eq!(parse(&render(&r, &pills()), &pills()), r);
        assert!(needs_html(&r));
        assert!(!needs_html(&RichText::plain("x")));
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in any::<String>()) {
            let _ = parse(&s, &pills());
        }

        #[test]
        fn parse_never_panics_on_tag_soup(s in "[<>/a-z=\"' &#;0-9]{0,60}") {
            let _ = parse(&s, &pills());
        }

        #[test]
        fn render_never_injects(s in any::<String>(), u in any::<String>()) {
            let r = RichText { spans: vec![
                Span::Text(s.clone()),
                Span::Bold(vec![Span::Text(u.clone())]),
                Span::Code(s.clone()),
                Span::Pre { lang: Some(u.clone()), text: s.clone() },
                Span::Link { url: format!("https://{u}"), children: vec![Span::Text(s.clone())] },
                Span::Mention { user: Some(UserRef::new("matrix", format!("@{u}"))), name: s.clone() },
            ]};
            let out = render(&r, &pills());
            prop_assert!(!out.to_ascii_lowercase().contains("<script"));
            // Every quote in the output is one we wrote around an attribute value.
            let quotes = out.matches('"').count();
            prop_assert_eq!(quotes, 6);
        }
    }
}
