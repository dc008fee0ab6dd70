//! Channel history replayed to the bot when it joins: what InspIRCd's `chanhistory` module
//! (channel mode `+H count:period`) sends in a `chathistory` batch, and what a server with
//! the IRCv3 `chathistory` batch type would send the same way.
//!
//! The adapter uses a replay twice:
//! - lines from other people said while the gateway was away are relayed (their `msgid`
//!   makes a line already relayed a known event the gateway skips);
//! - lines our own puppets or the bot said show which deliveries reached the channel before
//!   the gateway stopped without noting it (a `kill -9` between the server's answer and the
//!   store's write): those are answered as delivered instead of being said twice.
//!
//! A server offering IRCv3 `draft/chathistory` answers the bot's `CHATHISTORY AFTER` with
//! the same kind of batch. Servers without history (ngIRCd, InspIRCd without `+H`) send no
//! such batch, and nothing here changes what the adapter does.

use irc_proto::{BatchSubCommand, Command, Message};
use std::collections::{HashMap, HashSet};

/// One replayed line said by one of our own connections.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    /// Folded nick.
    nick: String,
    /// The text as written on the wire (CTCP ACTION wrapper included).
    text: String,
    /// Server time in Unix milliseconds (chanhistory keeps whole seconds).
    time: u64,
}

/// The history batches of the current connection and the own lines they held.
#[derive(Debug, Default)]
pub struct Replay {
    /// Open batch reference → folded channel.
    open: HashMap<String, String>,
    /// Folded channel → our own lines, oldest first.
    own: HashMap<String, Vec<Line>>,
    /// Folded channels linked while connected: their history is from before they were
    /// linked, so none of it is relayed.
    new: HashSet<String>,
}

/// How much earlier than the event's origin time a replayed line may be and still be that
/// event's delivery: chanhistory keeps whole seconds and the clocks of two servers differ.
pub const CLOCK_SLACK_MS: u64 = 2_000;

impl Replay {
    /// Takes a `BATCH` line. True when it opened or closed a history batch.
    pub fn on_batch(&mut self, msg: &Message, fold: &dyn Fn(&str) -> String) -> bool {
        let Command::BATCH(reference, kind, args) = &msg.command else {
            return false;
        };
        if let Some(r) = reference.strip_prefix('+') {
            let history = matches!(kind, Some(BatchSubCommand::CUSTOM(k)) if k == "CHATHISTORY");
            if let (true, Some(chan)) = (history, args.as_ref().and_then(|a| a.first())) {
                self.open.insert(r.to_owned(), fold(chan));
                return true;
            }
            return false;
        }
        if let Some(r) = reference.strip_prefix('-') {
            return self.open.remove(r).is_some();
        }
        false
    }

    /// The folded channel whose history `msg` belongs to, when it is a replayed line.
    pub fn channel_of(&self, msg: &Message) -> Option<&str> {
        let r = msg
            .tags
            .as_ref()?
            .iter()
            .find(|t| t.0 == "batch")?
            .1
            .as_deref()?;
        self.open.get(r).map(String::as_str)
    }

    /// Notes a replayed line one of our connections said.
    pub fn push_own(&mut self, channel: &str, nick: &str, text: &str, time: u64) {
        self.own.entry(channel.to_owned()).or_default().push(Line {
            nick: nick.to_owned(),
            text: text.to_owned(),
            time,
        });
    }

    /// Notes that `channel` (folded) was linked while connected: its replay is not relayed.
    pub fn linked_now(&mut self, channel: &str) {
        self.new.insert(channel.to_owned());
    }

    /// Whether other people's replayed lines in `channel` (folded) may be relayed.
    pub fn relays(&self, channel: &str) -> bool {
        !self.new.contains(channel)
    }

    /// True when nothing of ours was replayed.
    pub fn is_empty(&self) -> bool {
        self.own.values().all(Vec::is_empty)
    }

    /// Whether every one of `texts` was replayed in `channel` from `nick`, in this order and
    /// no earlier than `not_before` (less [`CLOCK_SLACK_MS`]). The lines matched are taken,
    /// so each replayed line proves one delivery only. Nothing is taken when not all match.
    pub fn take(&mut self, channel: &str, nick: &str, texts: &[String], not_before: u64) -> bool {
        let Some(lines) = self.own.get_mut(channel) else {
            return false;
        };
        if texts.is_empty() {
            return false;
        }
        let earliest = not_before.saturating_sub(CLOCK_SLACK_MS);
        let mut at = Vec::with_capacity(texts.len());
        let mut from = 0;
        for text in texts {
            let found = lines[from..]
                .iter()
                .position(|l| l.nick == nick && &l.text == text && l.time >= earliest);
            match found {
                Some(p) => {
                    at.push(from + p);
                    from += p + 1;
                }
                None => return false,
            }
        }
        for i in at.into_iter().rev() {
            lines.remove(i);
        }
        true
    }

    /// Forgets the own lines (after the deliveries waiting at join were checked).
    pub fn clear_own(&mut self) {
        self.own.clear();
    }
}

/// The text of a rendered `PRIVMSG`/`NOTICE` line (what the channel's members read), or None
/// for other commands.
pub fn said_text(line: &str) -> Option<&str> {
    let rest = line
        .strip_prefix("PRIVMSG ")
        .or_else(|| line.strip_prefix("NOTICE "))?;
    rest.split_once(" :").map(|(_, t)| t)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Message {
        s.parse().unwrap()
    }

    fn lower(s: &str) -> String {
        s.to_ascii_lowercase()
    }

    #[test]
    fn batch_lines_are_told_apart_from_live_ones() {
        let mut r = Replay::default();
        assert!(r.on_batch(&parse(":irc.test BATCH +h1 chathistory #Lobby"), &lower));
        let old = parse("@batch=h1;time=2026-01-01T00:00:00.000Z :bob!b@h PRIVMSG #Lobby :hi");
        assert_eq!(r.channel_of(&old), Some("#lobby"));
        let live = parse("@time=2026-01-01T00:00:00.000Z :bob!b@h PRIVMSG #Lobby :hi");
        assert_eq!(r.channel_of(&live), None);
        let netsplit = parse(":irc.test BATCH +n1 netsplit a.test b.test");
        assert!(!r.on_batch(&netsplit, &lower));
        assert!(r.on_batch(&parse(":irc.test BATCH -h1"), &lower));
        assert_eq!(r.channel_of(&old), None);
        assert!(!r.on_batch(&parse(":irc.test BATCH -zz"), &lower));
        assert!(r.relays("#lobby"));
        r.linked_now("#lobby");
        assert!(!r.relays("#lobby"));
    }

    #[test]
    fn a_delivery_matches_its_own_lines_once_in_order() {
        let mut r = Replay::default();
        r.push_own("#lobby", "alice[m]", "one", 10_000);
        r.push_own("#lobby", "alice[m]", "two", 10_000);
        r.push_own("#lobby", "bob[x]", "three", 11_000);
        let texts = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        // Another nick, or lines out of order, do not match.
        assert!(!r.take("#lobby", "bob[x]", &texts(&["one"]), 0));
        assert!(!r.take("#lobby", "alice[m]", &texts(&["two", "one"]), 0));
        // Said before the event happened (less the slack): an older, equal line.
        assert!(!r.take("#lobby", "bob[x]", &texts(&["three"]), 14_000));
        assert!(r.take("#lobby", "bob[x]", &texts(&["three"]), 12_500));
        assert!(r.take("#lobby", "alice[m]", &texts(&["one", "two"]), 10_500));
        // Taken: the same lines prove nothing more.
        assert!(!r.take("#lobby", "alice[m]", &texts(&["one"]), 0));
        assert!(!r.take("#other", "alice[m]", &texts(&["one"]), 0));
        assert!(!r.take("#lobby", "alice[m]", &[], 0));
        assert!(r.is_empty());
    }

    #[test]
    fn repeated_equal_lines_prove_one_delivery_each() {
        let mut r = Replay::default();
        r.push_own("#c", "a", "ok", 5_000);
        let ok = vec!["ok".to_owned()];
        assert!(r.take("#c", "a", &ok, 5_000));
        assert!(!r.take("#c", "a", &ok, 5_000));
    }

    #[test]
    fn said_text_reads_privmsg_and_notice_only() {
        assert_eq!(said_text("PRIVMSG #c :hello :)"), Some("hello :)"));
        assert_eq!(said_text("NOTICE #c :note"), Some("note"));
        assert_eq!(
            said_text("PRIVMSG #c :\x01ACTION waves\x01"),
            Some("\x01ACTION waves\x01")
        );
        assert_eq!(said_text("JOIN #c"), None);
        assert_eq!(said_text("TOPIC #c :t"), None);
    }
}
