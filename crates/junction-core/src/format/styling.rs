//! XMPP message styling (XEP-0393) to and from [`RichText`].

use super::RichText;

/// Parses a message body written with XEP-0393 styling.
pub fn parse(body: &str) -> RichText {
    RichText::plain(body)
}

/// Renders rich text as a XEP-0393 body.
pub fn render(text: &RichText) -> String {
    text.to_plain()
}
