//! Rich text: one small tree that every network's markup converts to and from.
//!
//! Converters (each module documents its own mapping and what it drops):
//! - Matrix `formatted_body` HTML (sanitised on the way in, escaped on the way out),
//! - IRC formatting control codes,
//! - XMPP message styling (XEP-0393).
//!
//! The tree is deliberately small: anything a network can express that is not here degrades
//! to its plain text, so no network can inject markup into another.

pub mod html;
pub mod irc;
pub mod mention;
pub mod styling;

use crate::ids::UserRef;
use serde::{Deserialize, Serialize};

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
        plain_into(&self.spans, &mut out);
        out
    }
}

fn plain_into(spans: &[Span], out: &mut String) {
    for s in spans {
        match s {
            Span::Text(t) | Span::Code(t) => out.push_str(t),
            Span::Pre { text, .. } => out.push_str(text),
            Span::Bold(c) | Span::Italic(c) | Span::Underline(c) | Span::Strike(c) => {
                plain_into(c, out)
            }
            Span::Link { url, children } => {
                let before = out.len();
                plain_into(children, out);
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
                plain_into(c, &mut inner);
                for (i, line) in inner.lines().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;

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
