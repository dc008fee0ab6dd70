//! Who may take back or correct a message: the rule every edit and redaction passes before
//! it crosses to another network.
//!
//! An edit crosses only when its sender wrote the original; a redaction when its sender
//! wrote the original or acted as a moderator of the origin room ([`Event::by_moderator`],
//! set by the origin adapter from what its network shows: MUC role and affiliation, Matrix
//! power levels, IRC channel modes). Topics are not judged here: the origin server already
//! refused a topic its sender may not set, and target adapters use the gateway's own power
//! for one only when [`Event::by_moderator`] is set.

use crate::event::{Event, EventKind};
use crate::ids::UserRef;

/// Why an edit or redaction may not cross.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Someone else wrote the original, and the sender is no moderator of the origin room.
    NotAuthor,
    /// The original is known but not who wrote it (recorded before senders were kept, or the
    /// store could not say), and the sender is no moderator of the origin room.
    AuthorUnknown,
}

impl Refusal {
    /// A short machine name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::NotAuthor => "not_author",
            Refusal::AuthorUnknown => "author_unknown",
        }
    }
}

/// Judges `event` given who wrote the message it refers to.
///
/// `original` is `None` when the target is not in the message map at all (the router then
/// sends it nowhere: there is nothing to apply it to), `Some(None)` when the original is
/// known but its sender is not, `Some(Some(user))` when `user` wrote it. Events other than
/// edits and redactions always pass.
pub fn check(event: &Event, original: Option<Option<&UserRef>>) -> Result<(), Refusal> {
    let redaction = match &event.kind {
        EventKind::Redact { .. } => true,
        EventKind::Edit { .. } => false,
        _ => return Ok(()),
    };
    let Some(author) = original else {
        return Ok(());
    };
    if author == Some(&event.sender.user) {
        return Ok(());
    }
    // A moderator may remove anyone's message; nobody corrects someone else's.
    if redaction && event.by_moderator {
        return Ok(());
    }
    Err(match author {
        Some(_) => Refusal::NotAuthor,
        None => Refusal::AuthorUnknown,
    })
}

/// The reason given with a deletion the gateway makes for a moderator of another network:
/// who removed the message, where they are a moderator, and their own reason.
pub fn moderation_reason(moderator: &crate::Sender, reason: Option<&str>) -> String {
    let who = format!(
        "Removed by {} ({}, moderator on {})",
        moderator.display_name,
        moderator.user.user.as_str(),
        moderator.user.network
    );
    match reason {
        Some(r) if !r.is_empty() => format!("{who}: {r}"),
        _ => who,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Sender;
    use crate::ids::{MessageId, RoomRef};
    use crate::RichText;

    fn ev(who: &str, kind: EventKind, moderator: bool) -> Event {
        Event::new(
            RoomRef::new("xmpp", "lobby@muc"),
            MessageId::new("r1"),
            Sender::new(UserRef::new("xmpp", who), who),
            1,
            kind,
        )
        .moderated(moderator)
    }

    fn redact() -> EventKind {
        EventKind::Redact {
            target: MessageId::new("m1"),
            reason: None,
        }
    }

    fn edit() -> EventKind {
        EventKind::Edit {
            target: MessageId::new("m1"),
            body: RichText::plain("x"),
        }
    }

    #[test]
    fn authors_may_take_back_and_correct_their_own() {
        let alice = UserRef::new("xmpp", "alice");
        assert_eq!(
            check(&ev("alice", redact(), false), Some(Some(&alice))),
            Ok(())
        );
        assert_eq!(
            check(&ev("alice", edit(), false), Some(Some(&alice))),
            Ok(())
        );
    }

    #[test]
    fn others_are_refused_unless_a_moderator_removes() {
        let alice = UserRef::new("matrix", "@alice:hs");
        let troll = |kind, m| ev("troll", kind, m);
        assert_eq!(
            check(&troll(redact(), false), Some(Some(&alice))),
            Err(Refusal::NotAuthor)
        );
        assert_eq!(check(&troll(redact(), true), Some(Some(&alice))), Ok(()));
        // Nobody edits someone else's message, moderator or not.
        assert_eq!(
            check(&troll(edit(), true), Some(Some(&alice))),
            Err(Refusal::NotAuthor)
        );
        // The same name on another network is another person.
        let same_name = UserRef::new("matrix", "troll");
        assert_eq!(
            check(&troll(redact(), false), Some(Some(&same_name))),
            Err(Refusal::NotAuthor)
        );
    }

    #[test]
    fn unknown_authors_fail_closed_and_other_kinds_pass() {
        assert_eq!(
            check(&ev("bob", redact(), false), Some(None)),
            Err(Refusal::AuthorUnknown)
        );
        assert_eq!(check(&ev("bob", redact(), true), Some(None)), Ok(()));
        assert_eq!(check(&ev("bob", redact(), false), None), Ok(()));
        let topic = EventKind::Topic { text: "t".into() };
        assert_eq!(check(&ev("bob", topic, false), Some(None)), Ok(()));
    }
}
