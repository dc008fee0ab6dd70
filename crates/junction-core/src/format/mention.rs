//! Mentions across networks.
//!
//! IRC and XMPP address people by writing `nick: ` at the start of a line; Matrix uses pills
//! (links to `https://matrix.to/#/@user:server`, parsed by [`super::html`] into
//! [`Span::Mention`]). These helpers let an adapter, which knows who is behind a nick or a
//! puppet id, turn one form into the other.

use super::{RichText, Span};
use crate::ids::UserRef;

/// Turns a leading `nick:` or `nick,` address into a [`Span::Mention`] when `resolve` knows
/// the nick. The separator is dropped; the rest of the text is unchanged.
pub fn leading_address(text: RichText, resolve: impl Fn(&str) -> Option<UserRef>) -> RichText {
    let mut spans = text.spans;
    let Some(Span::Text(first)) = spans.first() else {
        return RichText { spans };
    };
    let Some(sep) = first.find([':', ',']) else {
        return RichText { spans };
    };
    let nick = &first[..sep];
    let after = &first[sep + 1..];
    if nick.is_empty()
        || nick.chars().any(char::is_whitespace)
        || !(after.is_empty() || after.starts_with(' '))
    {
        return RichText { spans };
    }
    let Some(user) = resolve(nick) else {
        return RichText { spans };
    };
    let mention = Span::Mention {
        user: Some(user),
        name: nick.to_string(),
    };
    let rest = after.to_string();
    spans.remove(0);
    if !rest.is_empty() {
        spans.insert(0, Span::Text(rest));
    }
    spans.insert(0, mention);
    RichText { spans }
}

/// Lets `map` rewrite every mention in place: its user (e.g. an IRC user to the Matrix ghost
/// that shows them, or a ghost back to the IRC user) and its shown name (e.g. the nick).
pub fn map_mentions(text: &mut RichText, mut map: impl FnMut(&mut Option<UserRef>, &mut String)) {
    // An explicit stack rather than recursion, so no tree's depth reaches the call stack.
    let mut stack: Vec<std::slice::IterMut<'_, Span>> = vec![text.spans.iter_mut()];
    while let Some(top) = stack.last_mut() {
        let Some(s) = top.next() else {
            stack.pop();
            continue;
        };
        match s {
            Span::Mention { user, name } => map(user, name),
            Span::Bold(c)
            | Span::Italic(c)
            | Span::Underline(c)
            | Span::Strike(c)
            | Span::Quote(c)
            | Span::Link { children: c, .. } => stack.push(c.iter_mut()),
            Span::Text(_) | Span::Code(_) | Span::Pre { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::NetworkId;

    /// The network whose users pills name in these tests.
    fn pills() -> NetworkId {
        NetworkId::new("matrix")
    }

    fn bob() -> UserRef {
        UserRef::new("irc:libera", "bob")
    }

    fn resolve(n: &str) -> Option<UserRef> {
        (n == "bob").then(bob)
    }

    #[test]
    fn irc_address_becomes_a_pill() {
        let r = leading_address(RichText::plain("bob: hello"), resolve);
        assert_eq!(
            r.spans,
            vec![
                Span::Mention {
                    user: Some(bob()),
                    name: "bob".into()
                },
                Span::Text(" hello".into())
            ]
        );
        let mut mapped = r.clone();
        map_mentions(&mut mapped, |u, _| {
            if u.as_ref() == Some(&bob()) {
                *u = Some(UserRef::new("matrix", "@irc_bob:matrix.test"));
            }
        });
        assert_eq!(
            super::super::html::render(&mapped, &pills()),
            "<a href=\"https://matrix.to/#/@irc_bob:matrix.test\">bob</a> hello"
        );
    }

    #[test]
    fn not_an_address() {
        for s in ["carol: hi", "bob:hi", "see bob: x", ": x", ""] {
            assert_eq!(
                leading_address(RichText::plain(s), resolve),
                RichText::plain(s)
            );
        }
    }

    #[test]
    fn pill_to_a_ghost_becomes_the_nick_on_irc() {
        let r = super::super::html::parse(
            "<a href=\"https://matrix.to/#/@irc_bob:matrix.test\">bob (IRC)</a>: hi",
            &pills(),
        );
        let mut r = r;
        map_mentions(&mut r, |u, name| {
            if u.as_ref() == Some(&UserRef::new("matrix", "@irc_bob:matrix.test")) {
                *u = Some(bob());
                *name = "bob".into();
            }
        });
        assert_eq!(super::super::irc::render(&r), "bob: hi");
    }
}
