//! Admin commands: a PRIVMSG to the bot's nick from someone on the network becomes a
//! [`junction_core::Command`]; the answer goes back as one NOTICE per line, through a
//! bounded [`ReplyQueue`] the bot's connection drains at its flood-control pace only when a
//! line may go at once, so answering commands never holds up PINGs or relaying.

use irc_proto::{Message, Prefix};
use junction_core::{NetworkId, UserRef};
use std::collections::VecDeque;

/// Most answer lines waiting for the bot's connection; lines of answers beyond it are
/// dropped (counted and logged once per burst).
pub const MAX_REPLY_LINES: usize = 100;

/// Answer lines waiting to be sent, bounded.
#[derive(Debug)]
pub struct ReplyQueue {
    lines: VecDeque<String>,
    cap: usize,
    /// Lines dropped since the queue was last empty.
    dropped: u64,
    /// Lines dropped since the connection started.
    dropped_total: u64,
}

impl ReplyQueue {
    /// An empty queue holding at most `cap` lines.
    pub fn new(cap: usize) -> Self {
        Self {
            lines: VecDeque::new(),
            cap,
            dropped: 0,
            dropped_total: 0,
        }
    }

    /// Queues `lines`, dropping those that do not fit; returns how many were dropped. The
    /// first drop of a burst is logged.
    pub fn push(&mut self, lines: Vec<String>) -> usize {
        let mut dropped = 0;
        for line in lines {
            if self.lines.len() < self.cap {
                self.lines.push_back(line);
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            if self.dropped == 0 {
                tracing::warn!(
                    cap = self.cap,
                    "Too many command answers waiting for IRC; dropping lines until they drain."
                );
            }
            self.dropped += dropped as u64;
            self.dropped_total += dropped as u64;
        }
        dropped
    }

    /// The next line to send. When the queue runs empty after drops, their count is logged.
    pub fn pop(&mut self) -> Option<String> {
        let line = self.lines.pop_front();
        if self.lines.is_empty() && self.dropped > 0 {
            tracing::info!(
                dropped = self.dropped,
                total = self.dropped_total,
                "Command answer lines were dropped over the queue bound."
            );
            self.dropped = 0;
        }
        line
    }

    /// True when no line waits.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Lines waiting.
    pub fn len(&self) -> usize {
        self.lines.len()
    }

    /// Lines dropped since the connection started.
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }
}

/// Every identity the server vouches for the sender of `msg`, most specific first: the
/// services account (IRCv3 `account` tag) when the server sent one, then always the
/// `nick!user@host` mask. Empty when the message has no user prefix.
pub fn identities(network: &NetworkId, msg: &Message) -> Vec<UserRef> {
    let Some(Prefix::Nickname(nick, user, host)) = &msg.prefix else {
        return Vec::new();
    };
    let mut from = Vec::new();
    let account = msg
        .tags
        .as_ref()
        .and_then(|tags| tags.iter().find(|t| t.0 == "account"))
        .and_then(|t| t.1.as_deref())
        .filter(|a| !a.is_empty() && *a != "*");
    if let Some(account) = account {
        from.push(UserRef::new(network.clone(), account));
    }
    from.push(UserRef::new(
        network.clone(),
        format!("{nick}!{user}@{host}"),
    ));
    from
}

/// The text of a private message that is a command: not a CTCP request, not empty.
pub fn command_text(text: &str) -> Option<&str> {
    let t = text.trim();
    (!t.is_empty() && !t.starts_with('\x01')).then_some(t)
}

/// The NOTICE lines that carry `reply` to `nick`: one per non-empty line, each cut to fit.
pub fn reply_lines(nick: &str, reply: &str, budget: usize) -> Vec<String> {
    reply
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .flat_map(|l| crate::split::split_line(l, budget))
        .map(|part| format!("NOTICE {nick} :{part}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_first_then_mask() {
        let net = NetworkId::new("irc:local");
        let m: Message = "@account=alice;time=2024-01-01T00:00:00.000Z :al!~a@host.test PRIVMSG junction :status"
            .parse()
            .expect("parses");
        assert_eq!(
            identities(&net, &m),
            vec![
                UserRef::new("irc:local", "alice"),
                UserRef::new("irc:local", "al!~a@host.test"),
            ]
        );
        let m: Message = ":al!~a@host.test PRIVMSG junction :status"
            .parse()
            .expect("parses");
        assert_eq!(
            identities(&net, &m),
            vec![UserRef::new("irc:local", "al!~a@host.test")]
        );
        let m: Message = ":server.test NOTICE junction :hi".parse().expect("parses");
        assert!(identities(&net, &m).is_empty());
    }

    #[test]
    fn the_reply_queue_is_bounded_and_counts_drops() {
        let mut q = ReplyQueue::new(5);
        assert_eq!(q.push(reply_lines("eve", "a\nb\nc", 400)), 0);
        assert_eq!(q.push(reply_lines("eve", "d\ne\nf\ng", 400)), 2);
        assert_eq!(q.len(), 5);
        for _ in 0..200 {
            q.push(reply_lines("eve", "h\ni", 400));
        }
        assert_eq!(q.len(), 5);
        assert_eq!(q.dropped_total(), 2 + 400);
        let out: Vec<String> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(out.first().map(String::as_str), Some("NOTICE eve :a"));
        assert_eq!(out.len(), 5);
        assert!(q.is_empty());
        assert_eq!(q.push(reply_lines("eve", "j", 400)), 0);
    }

    #[test]
    fn replies_one_notice_per_line() {
        assert_eq!(
            reply_lines("al", "ok\n\nlinked lobby\n", 400),
            vec!["NOTICE al :ok", "NOTICE al :linked lobby"]
        );
        assert_eq!(command_text("\x01VERSION\x01"), None);
        assert_eq!(command_text("  help "), Some("help"));
    }
}
