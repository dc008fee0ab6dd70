//! Who can be reached by private message (`[gateway] private_messages`), and the answer to
//! someone who wrote to a person they cannot reach.
//!
//! A private conversation ([`junction_core::private::Conversation`]) crosses only when the
//! policy allows it: `off` refuses all, `members` (the default) lets through people who were
//! both seen in a linked room (the gateway keeps who it saw in the store's `gateway/members`),
//! `all` anyone with a puppet to write to. A banned person can not be written to (their own
//! events are dropped earlier, with everyone else's of theirs), nor can anyone who said
//! `dm off` to the gateway (kept in `gateway/dm_off`). The writer gets a notice from the
//! gateway in the conversation saying why. Private text is never logged.

use crate::admin::{Admin, BanCheck};
use crate::config::PrivateMessages;
use junction_core::private::Conversation;
use junction_core::router::{Planned, Router};
use junction_core::{
    Delivery, Event, EventKind, Message, MessageId, MessageKind, NetworkId, RichText, RoomRef,
    Sender, UserRef,
};
use junction_store::{Recorded, Store};
use std::collections::HashSet;

/// People seen in a linked room.
const MEMBERS: &str = "gateway/members";
/// People who take no private messages.
const OPTED_OUT: &str = "gateway/dm_off";

/// The reachability policy and what it knows of who was seen where.
pub(super) struct Reach {
    policy: PrivateMessages,
    /// Members known to be stored already (so a message costs no write).
    known: HashSet<UserRef>,
}

fn key(u: &UserRef) -> String {
    format!("{}\n{}", u.network, u.user)
}

impl Reach {
    pub(super) fn new(policy: PrivateMessages) -> Self {
        Self {
            policy,
            known: HashSet::new(),
        }
    }

    /// Notes the sender of an event of a linked room as a member.
    pub(super) fn note(&mut self, store: &dyn Store, router: &Router, event: &Event) {
        let user = &event.sender.user;
        if user.network.is_gateway() || router.link_of(&event.origin).is_none() {
            return;
        }
        // The address the network vouches for (an XMPP occupant's real JID) is who writes
        // privately from there.
        let address = event
            .sender
            .address
            .as_ref()
            .map(|a| UserRef::new(user.network.clone(), a.to_lowercase()));
        for u in std::iter::once(user.clone()).chain(address) {
            if self.known.contains(&u) {
                continue;
            }
            match store.kv_put(MEMBERS, &key(&u), b"1") {
                Ok(()) => {
                    self.known.insert(u);
                }
                Err(e) => tracing::warn!(error = %e, "Could not note a member of a linked room."),
            }
        }
    }

    fn member(&mut self, store: &dyn Store, user: &UserRef) -> bool {
        if self.known.contains(user) {
            return true;
        }
        let seen = matches!(store.kv_get(MEMBERS, &key(user)), Ok(Some(_)));
        if seen {
            self.known.insert(user.clone());
        }
        seen
    }

    /// Why `event` of a private conversation may not cross (the words for its writer), or
    /// None when it may, or is no private message.
    pub(super) fn refusal(
        &mut self,
        store: &dyn Store,
        admin: &Admin,
        event: &Event,
    ) -> Option<String> {
        let c = Conversation::parse(&event.origin)?;
        let peer = &c.peer;
        if self.policy == PrivateMessages::Off {
            return Some("Private messages across networks are off on this gateway.".into());
        }
        let banned = !matches!(
            admin.check_ban(store, &Sender::new(peer.clone(), "")),
            BanCheck::Clear
        );
        if banned || opted_out(store, peer) {
            return Some(format!(
                "{} does not take private messages through the gateway.",
                peer.user
            ));
        }
        if self.policy == PrivateMessages::Members {
            if !self.member(store, &event.sender.user) {
                return Some(
                    "You can write privately only to people you share a linked room with.".into(),
                );
            }
            if !self.member(store, peer) {
                return Some(format!(
                    "{} shares no linked room with you: the message was not sent.",
                    peer.user
                ));
            }
        }
        None
    }
}

/// True when `user` said `dm off`.
fn opted_out(store: &dyn Store, user: &UserRef) -> bool {
    matches!(store.kv_get(OPTED_OUT, &key(user)), Ok(Some(_)))
}

/// The ids a person who typed a command is known by in events (`Network::sender_id` of each
/// identity their network vouches for them by).
fn identities(from: &[UserRef]) -> Vec<UserRef> {
    from.iter()
        .map(|u| {
            let id = crate::wiring::NETWORKS
                .of(&u.network)
                .map_or_else(|| u.user.to_string(), |n| n.sender_id(u.user.as_str()));
            UserRef::new(u.network.clone(), id)
        })
        .collect()
}

/// Runs `dm off` / `dm on` (None for any other command): whether the sender takes private
/// messages through the gateway.
pub(super) fn opt(store: &dyn Store, from: &[UserRef], text: &str) -> Option<String> {
    let words: Vec<String> = text
        .split_whitespace()
        .map(str::to_ascii_lowercase)
        .collect();
    let off = match words.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["dm", "off"] => true,
        ["dm", "on"] => false,
        _ => return None,
    };
    for u in identities(from) {
        let done = if off {
            store.kv_put(OPTED_OUT, &key(&u), b"1")
        } else {
            store.kv_remove(OPTED_OUT, &key(&u))
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "Could not record a private-message choice.");
            return Some("The gateway could not record that; try again later.".into());
        }
    }
    Some(
        if off {
            "Private messages through the gateway are off for you (`dm on` to take them again)."
        } else {
            "You take private messages through the gateway again."
        }
        .into(),
    )
}

/// Records the gateway's notice `why` to the writer of `event`, in its conversation; its
/// deliveries. Made from the event's id, so a replay of the same event answers nothing twice.
pub(super) fn answer(store: &dyn Store, event: &Event, why: &str) -> Vec<Delivery> {
    let notice = Event::new(
        RoomRef::new(NetworkId::gateway(), junction_core::private::BRIDGE),
        MessageId::new(format!("refused:{}", event.id)),
        crate::admin::gateway_sender(),
        junction_core::clock::now_ms(),
        EventKind::Message(Message {
            kind: MessageKind::Notice,
            body: RichText::plain(why),
            reply_to: None,
            attachments: Vec::new(),
        }),
    );
    let planned = vec![Planned {
        bridge: junction_core::private::bridge(),
        target: event.origin.clone(),
        reply_to: Vec::new(),
        target_ids: Vec::new(),
    }];
    match store.record_inbound(&notice, planned) {
        Ok(Recorded::New(ds)) => ds,
        Ok(Recorded::Duplicate) => Vec::new(),
        Err(e) => {
            tracing::warn!(error = %e, "Could not record the answer to a private message.");
            Vec::new()
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn irc_identities_are_named_as_in_events() {
        let from = vec![
            UserRef::new("irc:local", "acct"),
            UserRef::new("irc:local", "bob!u@h"),
            UserRef::new("matrix", "@a:m"),
        ];
        assert_eq!(
            identities(&from),
            vec![
                UserRef::new("irc:local", "$a:acct"),
                UserRef::new("irc:local", "bob"),
                UserRef::new("matrix", "@a:m"),
            ]
        );
    }

    #[test]
    fn dm_off_and_on() {
        let store = junction_store::MemStore::new();
        let bob = UserRef::new("irc:local", "bob");
        let from = vec![UserRef::new("irc:local", "bob!u@h")];
        assert!(opt(&store, &from, "link x y").is_none());
        assert!(opt(&store, &from, " DM  off ").is_some());
        assert!(opted_out(&store, &bob));
        assert!(opt(&store, &from, "dm on").is_some());
        assert!(!opted_out(&store, &bob));
    }

    fn event(origin: RoomRef, from: UserRef) -> Event {
        Event::new(
            origin,
            MessageId::new(format!("m{}", from.user)),
            Sender::new(from, "someone"),
            1,
            EventKind::Message(Message {
                kind: MessageKind::Text,
                body: RichText::plain("hi"),
                reply_to: None,
                attachments: Vec::new(),
            }),
        )
    }

    #[test]
    fn members_reach_each_other_and_bans_and_policy_refuse() {
        let config = crate::config::parse(
            "[gateway]\nadmins = [\"@root:matrix.test\"]\n[irc.local]\nserver = \"127.0.0.1:6667\"\nnick = \"junction\"\n[[bridge]]\nname = \"lobby\"\nirc = [\"local/#lobby\", \"local/#other\"]\n",
            "bridges.toml",
            std::path::Path::new("/tmp"),
            &|_| None,
        )
        .unwrap();
        let admin = Admin::new(&config);
        let router = Router::new(
            crate::gateway::initial_links(&config.bridges, &junction_store::MemStore::new())
                .unwrap(),
        )
        .unwrap();
        let store = junction_store::MemStore::new();
        let bob = UserRef::new("irc:local", "bob");
        let alice = UserRef::new("matrix", "@alice:matrix.test");
        let dm = Conversation::new(bob.network.clone(), bob.user.clone(), alice.clone()).room();
        let in_channel =
            |channel: &str, who: &UserRef| event(RoomRef::new("irc:local", channel), who.clone());
        let mut reach = Reach::new(PrivateMessages::Members);
        let said = event(dm.clone(), bob.clone());
        let why = reach.refusal(&store, &admin, &said).unwrap();
        assert!(why.contains("share a linked room"), "{why}");
        reach.note(&store, &router, &in_channel("#lobby", &bob));
        let why = reach.refusal(&store, &admin, &said).unwrap();
        assert!(why.contains("shares no linked room"), "{why}");
        // Seen in a linked room (remembered in the store, for the next start too).
        reach.note(&store, &router, &in_channel("#other", &alice));
        assert_eq!(
            Reach::new(PrivateMessages::Members).refusal(&store, &admin, &said),
            None
        );
        // Not for what is no conversation.
        let room = in_channel("#lobby", &bob);
        assert_eq!(reach.refusal(&store, &admin, &room), None);
        // The gateway's answer goes into the conversation, once.
        let ds = answer(&store, &said, "why");
        assert_eq!(ds.len(), 1);
        assert_eq!(ds[0].target, dm);
        assert!(answer(&store, &said, "why").is_empty());
        // A banned person cannot be written to.
        let mut r = router.clone();
        let root = vec![UserRef::new("matrix", "@root:matrix.test")];
        let o = admin.handle(&root, "root", "ban @alice:matrix.test", &mut r, &store);
        assert!(o.reply.starts_with("Banned"), "{}", o.reply);
        let why = reach.refusal(&store, &admin, &said).unwrap();
        assert!(why.contains("does not take private messages"), "{why}");
        // Off.
        let why = Reach::new(PrivateMessages::Off)
            .refusal(&store, &admin, &said)
            .unwrap();
        assert!(why.contains("off"), "{why}");
    }
}
