//! Fan-out caps: how much one inbound item may become.
//!
//! Anyone in a linked room can send one item that asks for a lot of work: an XMPP stanza
//! with hundreds of XEP-0444 `<reaction>` children, a message with dozens of OOB links (each
//! fetched and uploaded to the homeserver by the Matrix adapter), a reaction "key" of
//! kilobytes, a URL of megabytes. These caps bound what one item becomes; what is cut is
//! logged by the caller.

use crate::event::{Event, EventKind};

/// Most reaction keys one item (one XEP-0444 stanza) carries; the rest are dropped.
pub const MAX_REACTIONS_PER_ITEM: usize = 10;
/// Longest reaction key, in bytes (one emoji sequence is well under it).
pub const MAX_REACTION_KEY_BYTES: usize = 64;
/// Longest attachment URL, in bytes.
pub const MAX_URL_BYTES: usize = 2048;
/// Default most attachments per message (`[gateway] max_attachments`).
pub const DEFAULT_MAX_ATTACHMENTS: usize = 4;

/// The caps the gateway applies to every inbound event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FanoutCaps {
    /// Most attachments per message (duplicates removed first).
    pub max_attachments: usize,
    /// Longest reaction key, in bytes.
    pub max_key_bytes: usize,
    /// Longest attachment URL, in bytes.
    pub max_url_bytes: usize,
}

impl Default for FanoutCaps {
    fn default() -> Self {
        Self {
            max_attachments: DEFAULT_MAX_ATTACHMENTS,
            max_key_bytes: MAX_REACTION_KEY_BYTES,
            max_url_bytes: MAX_URL_BYTES,
        }
    }
}

/// What [`FanoutCaps::apply`] did to an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capped {
    /// Nothing was over a cap.
    Untouched,
    /// This many parts (attachments) were cut; the rest of the event stands.
    Trimmed(usize),
    /// The event is refused as a whole, for this reason.
    Refused(&'static str),
}

impl FanoutCaps {
    /// Applies the caps to one event: attachments are deduplicated by URL, those with an
    /// over-long URL dropped and the rest cut to `max_attachments`; a reaction with an
    /// over-long key is refused.
    pub fn apply(&self, ev: &mut Event) -> Capped {
        match &mut ev.kind {
            EventKind::React { key, .. } | EventKind::Unreact { key, .. } => {
                if key.len() > self.max_key_bytes {
                    Capped::Refused("reaction key too long")
                } else {
                    Capped::Untouched
                }
            }
            EventKind::Message(m) => {
                let before = m.attachments.len();
                let mut seen: Vec<String> = Vec::new();
                m.attachments.retain(|a| {
                    if a.url.len() > self.max_url_bytes
                        || seen.len() >= self.max_attachments
                        || seen.contains(&a.url)
                    {
                        return false;
                    }
                    seen.push(a.url.clone());
                    true
                });
                match before - m.attachments.len() {
                    0 => Capped::Untouched,
                    n => Capped::Trimmed(n),
                }
            }
            _ => Capped::Untouched,
        }
    }
}

/// One item's reaction keys: empty and over-long keys and repeats dropped, order kept, at
/// most [`MAX_REACTIONS_PER_ITEM`]. Returns the keys kept and how many were dropped.
pub fn reaction_keys(keys: impl IntoIterator<Item = String>) -> (Vec<String>, usize) {
    let mut kept: Vec<String> = Vec::new();
    let mut dropped = 0;
    for k in keys {
        if k.is_empty()
            || k.len() > MAX_REACTION_KEY_BYTES
            || kept.len() >= MAX_REACTIONS_PER_ITEM
            || kept.contains(&k)
        {
            dropped += 1;
            continue;
        }
        kept.push(k);
    }
    (kept, dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Attachment, Message, Sender};
    use crate::ids::{MessageId, RoomRef, UserRef};

    fn event(kind: EventKind) -> Event {
        Event::new(
            RoomRef::new("xmpp", "lobby@muc"),
            MessageId::new("m1"),
            Sender::new(UserRef::new("xmpp", "a@b"), "a"),
            0,
            kind,
        )
    }

    fn attachment(url: String) -> Attachment {
        Attachment {
            name: "f".into(),
            url,
            mime: None,
            size: None,
        }
    }

    #[test]
    fn attachments_are_deduplicated_and_capped() {
        let mut urls: Vec<String> = (0..50).map(|i| format!("https://a.test/{i}")).collect();
        urls.insert(1, "https://a.test/0".into());
        urls.insert(0, format!("https://a.test/{}", "x".repeat(MAX_URL_BYTES)));
        let mut ev = event(EventKind::Message(Message {
            attachments: urls.into_iter().map(attachment).collect(),
            ..Message::default()
        }));
        assert_eq!(FanoutCaps::default().apply(&mut ev), Capped::Trimmed(48));
        let EventKind::Message(m) = &ev.kind else {
            panic!("still a message")
        };
        let kept: Vec<&str> = m.attachments.iter().map(|a| a.url.as_str()).collect();
        assert_eq!(
            kept,
            [
                "https://a.test/0",
                "https://a.test/1",
                "https://a.test/2",
                "https://a.test/3"
            ]
        );
    }

    #[test]
    fn long_reaction_keys_are_refused() {
        let react = |key: String| EventKind::React {
            target: MessageId::new("t"),
            key,
        };
        let caps = FanoutCaps::default();
        assert_eq!(
            caps.apply(&mut event(react("👍".into()))),
            Capped::Untouched
        );
        assert!(matches!(
            caps.apply(&mut event(react("👍".repeat(100)))),
            Capped::Refused(_)
        ));
    }

    #[test]
    fn reaction_keys_of_one_item_are_bounded() {
        let keys = (0..300)
            .map(|i| format!("k{}", i % 40))
            .chain(["x".repeat(65), String::new()]);
        let (kept, dropped) = reaction_keys(keys);
        assert_eq!(kept.len(), MAX_REACTIONS_PER_ITEM);
        assert_eq!(kept[0], "k0");
        assert_eq!(dropped, 302 - MAX_REACTIONS_PER_ITEM);
    }
}
