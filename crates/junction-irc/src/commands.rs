//! Admin commands: a PRIVMSG to the bot's nick from someone on the network becomes a
//! [`junction_core::Command`]; the answer goes back as one NOTICE per line, through a
//! bounded [`ReplyQueue`] the bot's connection drains at its flood-control pace only when a
//! line may go at once, so answering commands never holds up PINGs or relaying.

use irc_proto::{Message, Prefix};
use junction_core::{AdapterContext, NetworkId, UserRef};
use std::collections::VecDeque;
use tokio::sync::mpsc;

/// Most answer lines waiting for the bot's connection; lines of answers beyond it are
/// dropped (counted and logged once per burst).
pub const MAX_REPLY_LINES: usize = 100;

/// Tokens the bucket must hold before an answer line to a command goes: one for the line and
/// one left for the next delivery line.
pub(crate) const REPLY_TOKENS: f64 = 2.0;

/// A command's answer on its way back to the person who typed it: their nick, the text.
pub(crate) type Reply = (String, String);

/// A private message `text` to the bot: a command for the gateway. The answer is awaited in
/// its own task (the connection never waits) and comes back on `reply_tx`; no answer in
/// time comes back as the words the gateway's core has for it.
pub(crate) fn forward(
    cx: &AdapterContext,
    msg: &Message,
    text: &str,
    reply_tx: &mpsc::UnboundedSender<Reply>,
) {
    let Some(nick) = msg.source_nickname() else {
        return;
    };
    let Some(text) = command_text(text) else {
        return;
    };
    let from = identities(&cx.network, msg);
    if from.is_empty() {
        return;
    }
    let commands = cx.commands.clone();
    let reply_tx = reply_tx.clone();
    let (nick, text) = (nick.to_owned(), text.to_owned());
    tokio::spawn(async move {
        let answer = junction_core::adapter::ask(&commands, from, nick.clone(), text)
            .await
            .unwrap_or_else(|why| why);
        // An empty answer: the command was ignored (its sender is over the rate limit).
        if !answer.trim().is_empty() {
            let _ = reply_tx.send((nick, answer));
        }
    });
}

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

    #[tokio::test]
    async fn a_private_message_to_the_bot_is_a_command_answered_by_notice() {
        use crate::fake_server::{expect_line, serve_scripted, started};
        use crate::IrcMode;
        use junction_core::NetworkStatus;
        use std::time::Duration;

        let (listener, mut h) = started(IrcMode::Relay).await;
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, lines_tx, |line| {
            if line == "JOIN #t" {
                vec!["@account=root :boss!~b@admin.test PRIVMSG junction :status".to_owned()]
            } else {
                Vec::new()
            }
        })
        .await;
        let cmd = tokio::time::timeout(Duration::from_secs(30), h.commands.recv())
            .await
            .expect("in time")
            .expect("a command");
        assert_eq!(cmd.text, "status");
        assert_eq!(
            cmd.from,
            vec![
                UserRef::new("irc:fake", "root"),
                UserRef::new("irc:fake", "boss!~b@admin.test")
            ]
        );
        assert_eq!(*h.status.borrow(), NetworkStatus::Connected);
        cmd.reply.send("all good\nlinks: 1".into()).expect("reply");
        expect_line(&mut lines, "NOTICE boss :all good").await;
        expect_line(&mut lines, "NOTICE boss :links: 1").await;
        h.shutdown.cancel();
    }
}
