//! Matrix `formatted_body` HTML to and from [`RichText`].

use super::RichText;

/// Parses Matrix `formatted_body` HTML.
pub fn parse(html: &str) -> RichText {
    RichText::plain(html)
}

/// Renders rich text as escaped HTML.
pub fn render(text: &RichText) -> String {
    text.to_plain()
}

/// True when the text needs a `formatted_body`.
pub fn needs_html(text: &RichText) -> bool {
    !text.is_plain()
}
