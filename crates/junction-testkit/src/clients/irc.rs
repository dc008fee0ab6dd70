//! An ordinary IRC user: registers, joins, talks and records every line it receives.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use irc_proto::{Command, Message, Prefix};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Capabilities asked for when the server offers them.
const WANTED_CAPS: &[&str] = &[
    "message-tags",
    "server-time",
    "echo-message",
    "batch",
    "msgid",
];

#[derive(Default)]
struct Shared {
    backlog: Vec<Message>,
    /// When each backlog entry was read, index for index.
    received: Vec<Instant>,
    isupport: HashMap<String, String>,
    caps: Vec<String>,
}

/// An IRC client connected to one server; reading runs in a background task that
/// answers PING and records every message. Dropping the user ends the connection.
pub struct IrcUser {
    nick: String,
    shared: Arc<Mutex<Shared>>,
    out: mpsc::UnboundedSender<String>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for IrcUser {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl IrcUser {
    /// Connects to `addr`, negotiates IRCv3 capabilities, registers as `nick` and waits
    /// for the welcome (001).
    pub async fn connect(addr: SocketAddr, nick: &str) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        // A measuring client: each line goes out when it is sent (no Nagle's algorithm).
        stream.set_nodelay(true)?;
        let (rd, mut wr) = stream.into_split();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        let out2 = out.clone();
        let shared2 = shared.clone();
        let reader = tokio::spawn(async move {
            let writer = tokio::spawn(async move {
                while let Some(line) = out_rx.recv().await {
                    if wr
                        .write_all(format!("{line}\r\n").as_bytes())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            });
            let mut rd = BufReader::new(rd);
            let mut raw = Vec::new();
            loop {
                raw.clear();
                match rd.read_until(b'\n', &mut raw).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                // Servers may relay bytes that are not UTF-8; read them lossily.
                let line = String::from_utf8_lossy(&raw);
                let line = line.trim_end_matches(['\r', '\n']);
                let msg = match line.parse::<Message>() {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(%line, error = %e, "unparsable IRC line skipped");
                        continue;
                    }
                };
                if let Command::PING(a, b) = &msg.command {
                    let reply = match b {
                        Some(b) => format!("PONG {a} {b}"),
                        None => format!("PONG :{a}"),
                    };
                    let _ = out2.send(reply);
                }
                if let Command::Response(irc_proto::Response::RPL_ISUPPORT, args) = &msg.command {
                    let mut s = shared2.lock().unwrap_or_else(|e| e.into_inner());
                    for a in args.iter().skip(1) {
                        if a.contains(' ') {
                            continue;
                        }
                        let (k, v) = a.split_once('=').unwrap_or((a, ""));
                        s.isupport.insert(k.to_owned(), v.to_owned());
                    }
                }
                let mut s = shared2.lock().unwrap_or_else(|e| e.into_inner());
                s.backlog.push(msg);
                s.received.push(Instant::now());
            }
            writer.abort();
        });
        let user = IrcUser {
            nick: nick.to_owned(),
            shared,
            out,
            reader,
        };
        user.send_raw("CAP LS 302")?;
        // The last line of a multi-line LS (`CAP * LS * :caps`) has no `*` before its list.
        user.wait_for(Duration::from_secs(15), |m| {
            matches!(&m.command, Command::CAP(_, irc_proto::CapSubCommand::LS, a, b)
                if !(a.as_deref() == Some("*") && b.is_some()))
                || is_numeric(m, "421")
        })
        .await?;
        let offered: Vec<String> = user
            .backlog()
            .iter()
            .filter_map(|m| match &m.command {
                Command::CAP(_, irc_proto::CapSubCommand::LS, a, b) => {
                    Some(b.clone().or_else(|| a.clone()).unwrap_or_default())
                }
                _ => None,
            })
            .flat_map(|s| {
                s.split(' ')
                    .map(|c| c.split('=').next().unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
            })
            .collect();
        let want: Vec<&str> = WANTED_CAPS
            .iter()
            .copied()
            .filter(|c| offered.iter().any(|o| o == c))
            .collect();
        if !want.is_empty() {
            user.send_raw(&format!("CAP REQ :{}", want.join(" ")))?;
            user.wait_for(Duration::from_secs(15), |m| {
                matches!(
                    &m.command,
                    Command::CAP(
                        _,
                        irc_proto::CapSubCommand::ACK | irc_proto::CapSubCommand::NAK,
                        _,
                        _
                    )
                )
            })
            .await?;
            user.shared.lock().unwrap_or_else(|e| e.into_inner()).caps =
                want.iter().map(|s| (*s).to_owned()).collect();
        }
        user.send_raw(&format!("NICK {nick}"))?;
        user.send_raw(&format!("USER {nick} 0 * :{nick}"))?;
        user.send_raw("CAP END")?;
        user.wait_for(Duration::from_secs(30), |m| is_numeric(m, "001"))
            .await?;
        Ok(user)
    }

    /// The nick this user registered with.
    pub fn nick(&self) -> &str {
        &self.nick
    }

    /// The capabilities the server acknowledged.
    pub fn caps(&self) -> Vec<String> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .caps
            .clone()
    }

    /// An ISUPPORT (005) token's value (`""` for a token without one).
    pub fn isupport(&self, key: &str) -> Option<String> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .isupport
            .get(key)
            .cloned()
    }

    /// Sends one raw line (without CRLF).
    pub fn send_raw(&self, line: &str) -> anyhow::Result<()> {
        self.out
            .send(line.to_owned())
            .map_err(|_| anyhow::anyhow!("IRC connection closed"))
    }

    /// Joins `channel` and waits for our own JOIN and the end of NAMES (366).
    pub async fn join(&self, channel: &str) -> anyhow::Result<()> {
        self.join_from(0, channel).await
    }

    /// Joins `channel` again after leaving it: as [`Self::join`], but only what arrives
    /// after this JOIN counts.
    pub async fn rejoin(&self, channel: &str) -> anyhow::Result<()> {
        self.join_from(self.len(), channel).await
    }

    /// Joins `channel` and waits for our own JOIN and the end of NAMES, received at or
    /// after backlog index `from`.
    async fn join_from(&self, from: usize, channel: &str) -> anyhow::Result<()> {
        self.send_raw(&format!("JOIN {channel}"))?;
        let me = self.nick.clone();
        self.wait_since(from, Duration::from_secs(15), |m| {
            is_join_of(m, channel, &me)
        })
        .await?;
        self.wait_since(from, Duration::from_secs(15), |m| is_names_end(m, channel))
            .await?;
        Ok(())
    }

    /// The nicks in `channel` now, asked of the server with NAMES (their `@`, `+`… taken
    /// off): who is there, without having kept every JOIN and PART.
    pub async fn names(&self, channel: &str) -> anyhow::Result<Vec<String>> {
        let from = self.len();
        self.send_raw(&format!("NAMES {channel}"))?;
        self.wait_since(from, Duration::from_secs(30), |m| is_names_end(m, channel))
            .await?;
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        Ok(s.backlog
            .get(from..)
            .unwrap_or_default()
            .iter()
            .filter_map(|m| match &m.command {
                Command::Response(_, a)
                    if is_numeric(m, "353")
                        && a.get(2).is_some_and(|c| c.eq_ignore_ascii_case(channel)) =>
                {
                    a.last()
                }
                _ => None,
            })
            .flat_map(|names| names.split_whitespace())
            .map(|n| bare_nick(n).to_owned())
            .collect())
    }

    /// How many messages have been received so far (an index for [`Self::received_since`]).
    pub fn len(&self) -> usize {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .backlog
            .len()
    }

    /// Whether nothing has been received yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until a message received at backlog index `from` or later ([`Self::len`] before
    /// sending what it answers) matches `pred`.
    pub async fn wait_since(
        &self,
        from: usize,
        deadline: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> anyhow::Result<Message> {
        crate::eventually(deadline, "an IRC message", || {
            let found = self
                .shared
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .backlog
                .get(from..)
                .unwrap_or_default()
                .iter()
                .find(|m| pred(m))
                .cloned();
            async move { found }
        })
        .await
    }

    /// Sends a PRIVMSG.
    pub fn privmsg(&self, target: &str, text: &str) -> anyhow::Result<()> {
        self.send_raw(&format!("PRIVMSG {target} :{text}"))
    }

    /// Sends a NOTICE.
    pub fn notice(&self, target: &str, text: &str) -> anyhow::Result<()> {
        self.send_raw(&format!("NOTICE {target} :{text}"))
    }

    /// Sends a CTCP ACTION (`/me`).
    pub fn action(&self, target: &str, text: &str) -> anyhow::Result<()> {
        self.send_raw(&format!("PRIVMSG {target} :\u{1}ACTION {text}\u{1}"))
    }

    /// Leaves a channel.
    pub fn part(&self, channel: &str, reason: &str) -> anyhow::Result<()> {
        self.send_raw(&format!("PART {channel} :{reason}"))
    }

    /// Sets a channel topic.
    pub fn set_topic(&self, channel: &str, topic: &str) -> anyhow::Result<()> {
        self.send_raw(&format!("TOPIC {channel} :{topic}"))
    }

    /// Kicks `nick` from `channel`.
    pub fn kick(&self, channel: &str, nick: &str, reason: &str) -> anyhow::Result<()> {
        self.send_raw(&format!("KICK {channel} {nick} :{reason}"))
    }

    /// Sets modes, e.g. `mode("#c", "+o", &["bob"])`.
    pub fn mode(&self, target: &str, modes: &str, args: &[&str]) -> anyhow::Result<()> {
        let mut line = format!("MODE {target} {modes}");
        for a in args {
            line.push(' ');
            line.push_str(a);
        }
        self.send_raw(&line)
    }

    /// Quits (the server closes the connection).
    pub fn quit(&self, reason: &str) -> anyhow::Result<()> {
        self.send_raw(&format!("QUIT :{reason}"))
    }

    /// Everything received so far.
    pub fn backlog(&self) -> Vec<Message> {
        self.shared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .backlog
            .clone()
    }

    /// The messages received from backlog index `from` on, each with when it was read
    /// (for latency measurements); `from` past the end gives nothing.
    pub fn received_since(&self, from: usize) -> Vec<(Instant, Message)> {
        let s = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        s.received
            .iter()
            .zip(&s.backlog)
            .skip(from)
            .map(|(t, m)| (*t, m.clone()))
            .collect()
    }

    /// Waits until a received message matches `pred` (the backlog is searched too).
    pub async fn wait_for(
        &self,
        deadline: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> anyhow::Result<Message> {
        self.wait_since(0, deadline, pred).await
    }

    /// `(nick, text)` of every PRIVMSG received in `channel`, in order.
    pub fn privmsgs_in(&self, channel: &str) -> Vec<(String, String)> {
        self.backlog()
            .iter()
            .filter_map(|m| match &m.command {
                Command::PRIVMSG(t, text) if t.eq_ignore_ascii_case(channel) => {
                    Some((source_nick(m)?.to_owned(), text.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

/// The nick of a message's source, if it came from a user.
pub fn source_nick(m: &Message) -> Option<&str> {
    match &m.prefix {
        Some(Prefix::Nickname(n, _, _)) => Some(n),
        _ => None,
    }
}

/// The nick of whoever joins `channel` (in any case) with `m`, when `m` is such a JOIN.
pub fn joiner<'a>(m: &'a Message, channel: &str) -> Option<&'a str> {
    match &m.command {
        Command::JOIN(c, _, _) if c.eq_ignore_ascii_case(channel) => source_nick(m),
        _ => None,
    }
}

/// Whether `m` is `nick` joining `channel` (both in any case).
pub fn is_join_of(m: &Message, channel: &str, nick: &str) -> bool {
    joiner(m, channel).is_some_and(|n| n.eq_ignore_ascii_case(nick))
}

/// Whether `m` says `nick` is in `channel` (both in any case): its JOIN, or a NAMES reply
/// (353) for the channel that lists it, as one who joins after `nick` is told.
pub fn shows_in_channel(m: &Message, channel: &str, nick: &str) -> bool {
    if is_join_of(m, channel, nick) {
        return true;
    }
    match &m.command {
        Command::Response(_, a) if is_numeric(m, "353") => {
            a.get(2).is_some_and(|c| c.eq_ignore_ascii_case(channel))
                && a.last().is_some_and(|names| {
                    names
                        .split_whitespace()
                        .any(|n| bare_nick(n).eq_ignore_ascii_case(nick))
                })
        }
        _ => false,
    }
}

/// A nick from a NAMES reply without its channel-status prefixes (`~&@%+`).
fn bare_nick(n: &str) -> &str {
    n.trim_start_matches(|c: char| "~&@%+".contains(c))
}

/// Whether `m` ends the NAMES reply (366) for `channel`.
pub fn is_names_end(m: &Message, channel: &str) -> bool {
    is_numeric(m, "366")
        && matches!(&m.command, Command::Response(_, a) if a.get(1).is_some_and(|c| c.eq_ignore_ascii_case(channel)))
}

/// Whether `m` is the numeric reply `code` (e.g. `"001"`).
pub fn is_numeric(m: &Message, code: &str) -> bool {
    match &m.command {
        Command::Response(r, _) => format!("{:03}", *r as u16) == code,
        Command::Raw(c, _) => c == code,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn talk(addr: SocketAddr) -> anyhow::Result<()> {
        let chan = format!("#{}", crate::unique("c"));
        // ngIRCd allows 9 characters.
        let short = |p: &str| crate::unique(p).chars().take(9).collect::<String>();
        let a = IrcUser::connect(addr, &short("a")).await?;
        let b = IrcUser::connect(addr, &short("b")).await?;
        a.join(&chan).await?;
        b.join(&chan).await?;
        a.privmsg(&chan, "hello there")?;
        b.wait_for(
            Duration::from_secs(15),
            |m| matches!(&m.command, Command::PRIVMSG(_, t) if t == "hello there"),
        )
        .await?;
        assert!(b
            .privmsgs_in(&chan)
            .contains(&(a.nick().to_owned(), "hello there".to_owned())));
        // Every line read has its time, in reading order, from any index on.
        let all = b.received_since(0);
        assert_eq!(all.len(), b.backlog().len());
        assert!(all.windows(2).all(|w| w[0].0 <= w[1].0));
        assert_eq!(b.received_since(all.len() - 1).len(), 1);
        assert!(b.received_since(usize::MAX).is_empty());
        a.action(&chan, "waves")?;
        b.wait_for(
            Duration::from_secs(15),
            |m| matches!(&m.command, Command::PRIVMSG(_, t) if t.contains("ACTION waves")),
        )
        .await?;
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_users_talk_on_inspircd() -> anyhow::Result<()> {
        let s = crate::servers::servers().await?;
        talk(s.inspircd).await?;
        // InspIRCd offers IRCv3 capabilities; the client takes them.
        let u = IrcUser::connect(s.inspircd, &crate::unique("c")).await?;
        assert!(
            u.caps().iter().any(|c| c == "message-tags"),
            "{:?}",
            u.caps()
        );
        assert!(u.isupport("NICKLEN").is_some());
        Ok(())
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn two_users_talk_on_ngircd() -> anyhow::Result<()> {
        let s = crate::servers::servers().await?;
        talk(s.ngircd).await
    }
}
