//! Rich text: one small tree that every network's markup converts to and from.
//!
//! Converters (each module documents its own mapping and what it drops):
//! - Matrix `formatted_body` HTML (sanitised on the way in, escaped on the way out),
//! - IRC formatting control codes,
//! - XMPP message styling (XEP-0393).
//!
//! The tree is deliberately small: anything a network can express that is not here degrades
//! to its plain text, so no network can inject markup into another.
//!
//! Hostile input is bounded: every reader cuts its input at [`MAX_INPUT_BYTES`], never builds
//! a tree deeper than [`MAX_DEPTH`] (deeper markup is kept as its text), and costs time linear
//! in its input; writers and [`RichText::to_plain`] recurse at most [`MAX_DEPTH`] levels
//! whatever tree they are given (below that, a span is written as its flat text). A stored
//! event therefore always has bounded nesting, well inside `serde_json`'s recursion limit.

pub mod html;
pub mod irc;
pub mod mention;
pub mod styling;

use crate::ids::UserRef;
use serde::{Deserialize, Serialize};

/// The deepest a rich-text tree gets: spans nested deeper are flattened into their text.
/// (A stored event's JSON nests about two levels per span level, so 32 stays well inside
/// `serde_json`'s limit of 128.)
pub const MAX_DEPTH: usize = 32;

/// The most XEP-0393 quote levels read as quotes; deeper `>` markers stay literal text.
pub const MAX_QUOTE_DEPTH: usize = 16;

/// The most bytes of one body a reader looks at; the rest is cut (with a log line).
pub const MAX_INPUT_BYTES: usize = 128 * 1024;

/// `input` cut to at most [`MAX_INPUT_BYTES`] on a character boundary; logs when it cuts.
pub(crate) fn capped<'a>(input: &'a str, reader: &'static str) -> &'a str {
    if input.len() <= MAX_INPUT_BYTES {
        return input;
    }
    let mut end = MAX_INPUT_BYTES;
    while !input.is_char_boundary(end) {
        end -= 1;
    }
    tracing::warn!(
        reader,
        bytes = input.len(),
        kept = end,
        "A message body over the size limit was cut."
    );
    &input[..end]
}

/// `s` escaped for a Python `re` pattern (the dialect Synapse reads appservice namespaces
/// in): the characters special there get a backslash. One small function rather than a regex
/// crate, which nothing else would use.
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.^$*+?()[]{}|-#&~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Work counting for the converters' tests: each reader and writer adds the units of work
/// it does (characters scanned, spans visited) to a per-thread counter, so a test can assert
/// that the work is proportional to the input without timing anything.
#[doc(hidden)]
pub mod work {
    use std::cell::Cell;

    thread_local! {
        static STEPS: Cell<u64> = const { Cell::new(0) };
    }

    /// Adds `n` units of work.
    #[inline]
    pub fn tick(n: usize) {
        STEPS.with(|s| s.set(s.get().saturating_add(n as u64)));
    }

    /// Units of work counted on this thread so far.
    pub fn steps() -> u64 {
        STEPS.with(Cell::get)
    }

    /// Resets this thread's counter.
    pub fn reset() {
        STEPS.with(|s| s.set(0));
    }
}

/// A piece of rich text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Span {
    /// Plain text (may contain `\n`).
    Text(String),
    /// Bold.
    Bold(Vec<Span>),
    /// Italic.
    Italic(Vec<Span>),
    /// Underline.
    Underline(Vec<Span>),
    /// Strike-through.
    Strike(Vec<Span>),
    /// Inline code.
    Code(String),
    /// A code block, with its language when known.
    Pre {
        /// Language tag (`rust`, `sh`...), if given.
        lang: Option<String>,
        /// The code.
        text: String,
    },
    /// A hyperlink.
    Link {
        /// Target URL (only http, https, mailto and matrix.to survive sanitising).
        url: String,
        /// Link text.
        children: Vec<Span>,
    },
    /// A mention of a person.
    Mention {
        /// Who, when the gateway knows (a local user or one of its puppets).
        user: Option<UserRef>,
        /// The name as shown.
        name: String,
    },
    /// A block quote.
    Quote(Vec<Span>),
}

/// A message body as a sequence of spans.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RichText {
    /// The spans, in order.
    pub spans: Vec<Span>,
}

impl RichText {
    /// Rich text holding one plain string.
    pub fn plain(s: impl Into<String>) -> Self {
        let s = s.into();
        if s.is_empty() {
            return Self::default();
        }
        Self {
            spans: vec![Span::Text(s)],
        }
    }

    /// True when the text has no spans or only empty text.
    pub fn is_empty(&self) -> bool {
        self.to_plain().is_empty()
    }

    /// True when the text carries no formatting at all (only plain text spans).
    pub fn is_plain(&self) -> bool {
        self.spans.iter().all(|s| matches!(s, Span::Text(_)))
    }

    /// The text without any formatting: what a person would read.
    pub fn to_plain(&self) -> String {
        let mut out = String::new();
        plain_into(&self.spans, &mut out, 0);
        out
    }

    /// The depth of the tree (0 for no spans, 1 for flat text), counted without recursion.
    pub fn depth(&self) -> usize {
        let mut max = 0;
        let mut stack: Vec<(&[Span], usize)> = vec![(&self.spans, 1)];
        while let Some((spans, d)) = stack.pop() {
            for s in spans {
                work::tick(1);
                max = max.max(d);
                if let Some(c) = s.children() {
                    stack.push((c, d + 1));
                }
            }
        }
        max
    }

    /// The same text with every span nested deeper than [`MAX_DEPTH`] flattened into its
    /// text. The readers never build deeper trees; this guards trees built in other ways.
    pub fn bounded(mut self) -> Self {
        if self.depth() > MAX_DEPTH {
            tracing::warn!(
                max = MAX_DEPTH,
                "Rich text nested too deeply was flattened."
            );
            bound_spans(&mut self.spans, 1);
        }
        self
    }
}

impl Span {
    /// The child spans of a span that has them.
    pub fn children(&self) -> Option<&[Span]> {
        match self {
            Span::Bold(c)
            | Span::Italic(c)
            | Span::Underline(c)
            | Span::Strike(c)
            | Span::Quote(c)
            | Span::Link { children: c, .. } => Some(c),
            Span::Text(_) | Span::Code(_) | Span::Pre { .. } | Span::Mention { .. } => None,
        }
    }

    fn children_mut(&mut self) -> Option<&mut Vec<Span>> {
        match self {
            Span::Bold(c)
            | Span::Italic(c)
            | Span::Underline(c)
            | Span::Strike(c)
            | Span::Quote(c)
            | Span::Link { children: c, .. } => Some(c),
            Span::Text(_) | Span::Code(_) | Span::Pre { .. } | Span::Mention { .. } => None,
        }
    }
}

/// Replaces every span at `depth` == [`MAX_DEPTH`] that has children by its flat text.
/// Recurses at most [`MAX_DEPTH`] levels.
fn bound_spans(spans: &mut [Span], depth: usize) {
    for s in spans {
        if depth >= MAX_DEPTH {
            if s.children().is_some() {
                let mut flat = String::new();
                flat_text(std::slice::from_ref(s), &mut flat);
                dismantle(std::mem::replace(s, Span::Text(flat)));
            }
        } else if let Some(c) = s.children_mut() {
            bound_spans(c, depth + 1);
        }
    }
}

/// Drops a span without recursion: a deep tree's own drop would recurse once per level.
fn dismantle(span: Span) {
    let mut stack = vec![span];
    while let Some(mut s) = stack.pop() {
        if let Some(c) = s.children_mut() {
            stack.append(c);
        }
    }
}

/// The text of `spans` concatenated without any decoration, walked without recursion: what
/// writers fall back to below [`MAX_DEPTH`].
pub(crate) fn flat_text(spans: &[Span], out: &mut String) {
    let mut stack: Vec<std::slice::Iter<'_, Span>> = vec![spans.iter()];
    while let Some(top) = stack.last_mut() {
        let Some(s) = top.next() else {
            stack.pop();
            continue;
        };
        work::tick(1);
        match s {
            Span::Text(t) | Span::Code(t) => out.push_str(t),
            Span::Pre { text, .. } => out.push_str(text),
            Span::Mention { name, .. } => out.push_str(name),
            _ => {
                if let Some(c) = s.children() {
                    stack.push(c.iter());
                }
            }
        }
    }
}

/// The spans a writer `depth` levels down goes through, one by one, each counted as work
/// ([`work::tick`]); below [`MAX_DEPTH`] none, and `Err` holds their flat text instead, for
/// the writer to write as plain text. The one depth bound of every writer.
pub(crate) fn within_depth(
    spans: &[Span],
    depth: usize,
) -> Result<impl Iterator<Item = &Span>, String> {
    if depth >= MAX_DEPTH {
        let mut flat = String::new();
        flat_text(spans, &mut flat);
        return Err(flat);
    }
    Ok(spans.iter().inspect(|_| work::tick(1)))
}

/// The plain text of `spans`, `depth` levels down (see [`RichText::to_plain`]).
pub(crate) fn plain_into(spans: &[Span], out: &mut String, depth: usize) {
    let spans = match within_depth(spans, depth) {
        Ok(spans) => spans,
        Err(flat) => return out.push_str(&flat),
    };
    for s in spans {
        match s {
            Span::Text(t) | Span::Code(t) => out.push_str(t),
            Span::Pre { text, .. } => out.push_str(text),
            Span::Bold(c) | Span::Italic(c) | Span::Underline(c) | Span::Strike(c) => {
                plain_into(c, out, depth + 1)
            }
            Span::Link { url, children } => {
                let before = out.len();
                plain_into(children, out, depth + 1);
                let text = &out[before..];
                if text.is_empty() {
                    out.push_str(url);
                } else if text != url.as_str() && !url.starts_with("mailto:") {
                    out.push_str(" (");
                    out.push_str(url);
                    out.push(')');
                }
            }
            Span::Mention { name, .. } => out.push_str(name),
            Span::Quote(c) => {
                let mut inner = String::new();
                plain_into(c, &mut inner, depth + 1);
                quote_lines(inner.lines(), out);
            }
        }
    }
}

/// Writes `lines` as a plain-text quote: each behind `> `, one per line.
pub(crate) fn quote_lines<'a>(lines: impl Iterator<Item = &'a str>, out: &mut String) {
    for (i, line) in lines.enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str("> ");
        out.push_str(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_escape_escapes_dots_and_brackets() {
        assert_eq!(regex_escape("matrix.test"), "matrix\\.test");
        assert_eq!(regex_escape("[::1]:8448"), "\\[::1\\]:8448");
        assert_eq!(regex_escape("_junction_"), "_junction_");
    }

    #[test]
    fn plain_text_flattens_formatting() {
        let t = RichText {
            spans: vec![
                Span::Text("hi ".into()),
                Span::Bold(vec![Span::Text("there".into())]),
                Span::Text(" see ".into()),
                Span::Link {
                    url: "https://example.org".into(),
                    children: vec![Span::Text("docs".into())],
                },
            ],
        };
        assert_eq!(t.to_plain(), "hi there see docs (https://example.org)");
        assert!(!t.is_plain());
        assert!(RichText::plain("x").is_plain());
        assert!(RichText::plain("").is_empty());
    }
}
