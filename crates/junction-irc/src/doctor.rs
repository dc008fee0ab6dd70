//! `junction doctor` on one IRC network: the server answers, TLS holds, the bot's SASL login
//! works (when configured), the bot's nick is free or the gateway's, the bot is a channel
//! operator, and the channels have history to read.
//!
//! The doctor registers under a nick of its own (the bot's with `doc` at the end), so a
//! running gateway keeps its nick; it only looks the bot up (WHOIS, NAMES, MODE).

use crate::connection::{self, Registration, Session};
use crate::tls::Tls;
use crate::IrcConfig;
use irc_proto::{Command, Message, Response};
use junction_core::doctor::{Findings, TIMEOUT};

/// The real name the gateway's bot registers with (junction-irc's adapter).
const BOT_REALNAME: &str = "Junction gateway";
/// Most lines read while waiting for one answer.
const MAX_LINES: usize = 2000;

/// Runs the checks of the IRC network `i` and of each of `channels` (the channels the config's
/// bridges link on it), adding one finding per check to `out`.
pub async fn check(i: &IrcConfig, channels: &[String], out: &mut Findings<'_>) {
    // Reachable, then TLS, each on its own so the finding says which failed.
    let stream =
        match tokio::time::timeout(TIMEOUT, tokio::net::TcpStream::connect(&i.server)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                return out.error(
                    "server",
                    format!("cannot connect to {}: {e}", i.server),
                    format!(
                        "check [irc.{}] server (host:port) and that the IRC server runs",
                        i.name
                    ),
                )
            }
            Err(_) => {
                return out.error(
                    "server",
                    format!("{} did not answer", i.server),
                    format!("check [irc.{}] server and the firewall", i.name),
                )
            }
        };
    out.ok("server", format!("{} answers", i.server));
    let tls = if i.tls {
        let tls = match Tls::new(i.tls_ca.as_deref()) {
            Ok(t) => t,
            Err(e) => {
                return out.error(
                    "tls",
                    format!("cannot read tls_ca: {e}"),
                    format!("fix [irc.{}] tls_ca", i.name),
                )
            }
        };
        match tokio::time::timeout(TIMEOUT, tls.wrap(&i.server, stream)).await {
            Ok(Ok(_)) => out.ok("tls", format!("TLS with {} holds", i.server)),
            Ok(Err(e)) => {
                return out.error(
                    "tls",
                    format!("TLS with {} failed: {e}", i.server),
                    format!(
                        "check that {} is the server's TLS port and its certificate names the host \
                         (a private CA goes in [irc.{}] tls_ca), or set tls = false for a plain port",
                        i.server, i.name
                    ),
                )
            }
            Err(_) => {
                return out.error(
                    "tls",
                    format!("TLS with {} got no answer (a plain-text port?)", i.server),
                    format!("use the server's TLS port, or tls = false in [irc.{}]", i.name),
                )
            }
        }
        Some(tls)
    } else {
        drop(stream);
        None
    };
    let probe_nick = probe_nick(&i.nick);
    let reg = Registration {
        nick: probe_nick.clone(),
        suffix: String::new(),
        password: i.password.clone(),
        // The bot's account: SASL logs in an account, whatever the nick.
        sasl: i.sasl.clone(),
        caps: true,
        realname: "Junction doctor".into(),
        nicklen: 0,
    };
    let mut s = match connection::connect(&i.server, tls.as_ref(), reg, TIMEOUT).await {
        Ok(s) => s,
        Err(e) if e.contains("SASL") => {
            let account = i.sasl.as_ref().map_or("", |(a, _)| a.as_str());
            return out.error(
                "sasl",
                format!("the server refused the SASL login of the account {account}: {e}"),
                format!(
                    "check [irc.{}] sasl_account and sasl_password (the account must be \
                     registered with the network's services)",
                    i.name
                ),
            );
        }
        Err(e) => {
            return out.error(
                "server",
                format!("registering as {probe_nick} failed: {e}"),
                format!(
                "check [irc.{}] password and that the server accepts connections from this host",
                i.name
            ),
            )
        }
    };
    if let Some((account, _)) = &i.sasl {
        if s.caps.contains("sasl") {
            out.ok(
                "sasl",
                format!("the bot logs in to the account {account} with SASL"),
            );
        } else {
            out.warn(
                "sasl",
                format!(
                    "the server does not offer SASL, so the bot connects without logging in to \
                     the account {account}"
                ),
                format!(
                    "remove sasl_account and sasl_password from [irc.{}], or use the server \
                     password (password) if the network logs accounts in that way",
                    i.name
                ),
            );
        }
    }
    nick(i, &mut s, out).await;
    let chathistory = s
        .caps
        .iter()
        .any(|c| c == "draft/chathistory" || c == "chathistory");
    for channel in channels {
        op(i, &mut s, channel, out).await;
        history(i, &mut s, channel, chathistory, out).await;
    }
    let _ = s.writer.send("QUIT :junction doctor").await;
}

/// The doctor's own nick: the bot's first characters and `doc`, within 9 characters.
fn probe_nick(bot: &str) -> String {
    let head: String = bot.chars().take(6).collect();
    format!("{head}doc")
}

/// Reads until `done` says the answer is complete (true) or `MAX_LINES`/`TIMEOUT` pass;
/// answers PINGs meanwhile. `done` sees every message.
async fn read_until(s: &mut Session, mut done: impl FnMut(&Message) -> bool) -> bool {
    let read = async {
        for _ in 0..MAX_LINES {
            let Ok(Some(msg)) = s.reader.next().await else {
                return false;
            };
            if let Command::PING(a, _) = &msg.command {
                let _ = s.writer.send(&format!("PONG :{a}")).await;
            }
            if done(&msg) {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(TIMEOUT, read).await.unwrap_or(false)
}

async fn nick(i: &IrcConfig, s: &mut Session, out: &mut Findings<'_>) {
    if s.writer.send(&format!("WHOIS {}", i.nick)).await.is_err() {
        return out.warn("nick", "the connection was lost", "run the doctor again");
    }
    let mut holder: Option<(String, String)> = None;
    let mut absent = false;
    let complete = read_until(s, |m| match &m.command {
        Command::Response(Response::RPL_WHOISUSER, a) => {
            let mask = format!(
                "{}@{}",
                a.get(2).map_or("", |x| x),
                a.get(3).map_or("", |x| x)
            );
            holder = Some((mask, a.last().cloned().unwrap_or_default()));
            false
        }
        Command::Response(Response::ERR_NOSUCHNICK, _) => {
            absent = true;
            false
        }
        Command::Response(Response::RPL_ENDOFWHOIS, _) => true,
        _ => false,
    })
    .await;
    match holder {
        _ if !complete && !absent => out.warn(
            "nick",
            format!("WHOIS {} got no answer", i.nick),
            "run the doctor again",
        ),
        None => out.ok("nick", format!("{} is free for the bot", i.nick)),
        Some((_, real)) if real == BOT_REALNAME => out.ok(
            "nick",
            format!(
                "{} is online as a Junction gateway's bot (a running gateway)",
                i.nick
            ),
        ),
        Some((mask, real)) => out.warn(
            "nick",
            format!(
                "{} is taken by {mask} ({real:?}): the bot will run under another nick",
                i.nick
            ),
            format!(
                "pick another [irc.{}] nick, or register the nick with the network's services",
                i.name
            ),
        ),
    }
}

async fn op(i: &IrcConfig, s: &mut Session, channel: &str, out: &mut Findings<'_>) {
    if s.writer.send(&format!("NAMES {channel}")).await.is_err() {
        return;
    }
    let isupport = s.isupport.clone();
    let fold = |n: &str| isupport.fold(n);
    let bot = fold(&i.nick);
    let prefixes = s.isupport.prefix_symbols.clone();
    let mut found: Option<String> = None;
    read_until(s, |m| match &m.command {
        Command::Response(Response::RPL_NAMREPLY, a) => {
            for name in a.last().map_or("", |x| x).split(' ') {
                let bare = name.trim_start_matches(|c: char| prefixes.contains(c));
                if !bare.is_empty() && fold(bare) == bot {
                    found = Some(name[..name.len() - bare.len()].to_owned());
                }
            }
            false
        }
        Command::Response(Response::RPL_ENDOFNAMES, _) => true,
        _ => false,
    })
    .await;
    match found {
        None => out.ok(
            "op",
            format!("not checked: the bot {} is not in {channel} now (it joins when the gateway runs)", i.nick),
        ),
        Some(p) if p.contains(['@', '&', '~']) => {
            out.ok("op", format!("the bot {} is a channel operator in {channel}", i.nick))
        }
        Some(_) => out.warn(
            "op",
            format!("the bot {} is not a channel operator in {channel}: it cannot set the topic, kick, or turn on history there", i.nick),
            format!("give {} channel operator (/op, or the network's ChanServ access list)", i.nick),
        ),
    }
}

async fn history(
    i: &IrcConfig,
    s: &mut Session,
    channel: &str,
    chathistory: bool,
    out: &mut Findings<'_>,
) {
    if chathistory {
        return out.ok(
            "history",
            format!("the server offers chathistory, so missed lines in {channel} can be read"),
        );
    }
    if s.writer.send(&format!("MODE {channel}")).await.is_err() {
        return;
    }
    let mut modes: Option<String> = None;
    read_until(s, |m| match &m.command {
        Command::Response(Response::RPL_CHANNELMODEIS, a) => {
            modes = Some(a.get(2).cloned().unwrap_or_default());
            true
        }
        Command::Response(Response::ERR_NOSUCHCHANNEL, _) => true,
        _ => false,
    })
    .await;
    let has_h = modes.as_deref().is_some_and(|m| m.contains('H'));
    if has_h {
        out.ok(
            "history",
            format!("{channel} keeps history (+H), replayed to the bot when it joins"),
        );
    } else if i.channel_history.is_some() {
        out.ok(
            "history",
            format!("{channel} has no +H yet; the gateway sets it (channel_history) when the bot is operator"),
        );
    } else {
        out.warn(
            "history",
            format!("no history for {channel}: no chathistory capability and no +H mode, so what is said there while the gateway is away is lost"),
            format!("set channel_history = \"100:1d\" in [irc.{}] (InspIRCd's chanhistory module, the bot operator) or set +H on the channel", i.name),
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{check, probe_nick};
    use crate::IrcConfig;
    use junction_core::doctor::{Level, Report};
    use junction_core::Secret;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

    /// A server that offers SASL PLAIN and answers the login with `verdict` (903 or 904),
    /// then registers the connection and says no one else is online.
    async fn sasl_server(verdict: &'static str) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The doctor first only connects (is the server there?), then registers.
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream, verdict));
            }
        });
        addr
    }

    /// One connection of [`sasl_server`]: answers each line the doctor sends.
    async fn answer(stream: tokio::net::TcpStream, verdict: &'static str) {
        let (r, mut w) = stream.into_split();
        let mut lines = BufReader::new(r).lines();
        let nick = "me";
        while let Ok(Some(line)) = lines.next_line().await {
            let answer = if line.starts_with("CAP LS") {
                ":fake CAP * LS :sasl".to_owned()
            } else if line.starts_with("CAP REQ") {
                ":fake CAP * ACK :sasl".to_owned()
            } else if line == "AUTHENTICATE PLAIN" {
                "AUTHENTICATE +".to_owned()
            } else if line.starts_with("AUTHENTICATE ") {
                format!(":fake {verdict} {nick} :SASL {verdict}")
            } else if line == "CAP END" {
                format!(":fake 001 {nick} :Welcome\r\n:fake 422 {nick} :No MOTD")
            } else if let Some(who) = line.strip_prefix("WHOIS ") {
                format!(":fake 401 {nick} {who} :No such nick\r\n:fake 318 {nick} {who} :End")
            } else {
                continue;
            };
            if w.write_all(format!("{answer}\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    }

    async fn run(verdict: &'static str) -> Report {
        let addr = sasl_server(verdict).await;
        let mut config = IrcConfig::new("fake", addr.to_string(), "jtbot");
        config.sasl = Some(("jtbot".into(), Secret::new("sasl-secret")));
        let mut report = Report::default();
        check(&config, &[], &mut report.network("irc:fake")).await;
        report
    }

    #[tokio::test]
    async fn a_refused_sasl_login_is_an_error_and_an_accepted_one_passes() {
        let r = run("904").await;
        let text = r.render();
        let sasl: Vec<_> = r.of("irc:fake", "sasl").collect();
        assert!(sasl.len() == 1 && sasl[0].level == Level::Error, "{text}");
        assert!(text.contains("sasl_password"), "{text}");
        assert!(
            !text.contains("sasl-secret"),
            "a secret was printed:\n{text}"
        );
        assert_eq!(r.exit_code(), 2);

        let r = run("903").await;
        let text = r.render();
        let sasl: Vec<_> = r.of("irc:fake", "sasl").collect();
        assert!(sasl.len() == 1 && sasl[0].level == Level::Ok, "{text}");
        assert_eq!(r.exit_code(), 0, "{text}");
    }

    #[test]
    fn the_probe_nick_is_short_and_not_the_bots() {
        assert_eq!(probe_nick("jt1gw"), "jt1gwdoc");
        assert_eq!(probe_nick("junctionbot"), "junctidoc");
    }
}
