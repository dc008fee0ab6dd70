//! [`Delivery`] → IRC lines: the rendering itself ([`render`], pure), and what it looks up
//! for one connection ([`render_for`]: nicks and quotes from the store, the paste link).
//! Where a delivery goes and when it is answered is `deliver.rs`.

use crate::{ids, lookup, split};
use junction_core::format::{self, mention, RichText};
use junction_core::{AdapterStore, Delivery, EventKind, MessageKind, Pastes, UserRef};

/// Stores the whole plain text of a message and returns the URL where it can be read.
pub type PasteFn<'a> = dyn Fn(&str) -> Option<String> + 'a;

/// How one delivery is rendered.
pub struct Render<'a> {
    /// The wire channel.
    pub channel: &'a str,
    /// The nick that sends the lines (puppet or bot), for the length budget.
    pub sender_nick: &'a str,
    /// `Some("alice[m]")` in relay mode: lines become `<alice[m]> text`.
    pub relay_as: Option<&'a str>,
    /// The server's line length (512 unless LINELEN says more).
    pub linelen: usize,
    /// At most this many lines per message.
    pub max_lines: usize,
    /// Stores the whole plain text of a message longer than `max_lines` and returns the URL
    /// where it can be read (the gateway's [`Pastes`]); None when no paste page is configured
    /// (or the text could not be stored): the message is then cut with a note.
    pub paste: Option<&'a PasteFn<'a>>,
    /// The message a reply or reaction refers to, as IRC saw it: who said it and its text.
    pub quoted: Option<Quoted>,
    /// The IRC nick that shows a mentioned person (their puppet's nick, or their own nick
    /// when they are on this network); None keeps the name the mention carries.
    pub nick_of: &'a dyn Fn(&UserRef) -> Option<String>,
}

/// A message referred to by a reply or a reaction, as shown on IRC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quoted {
    /// The nick that said it.
    pub nick: String,
    /// Its text (plain, without IRC codes).
    pub text: String,
}

impl Quoted {
    /// Encodes for the adapter's key/value table.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}\t{}", self.nick, self.text).into_bytes()
    }

    /// Decodes what [`Quoted::encode`] wrote; None for anything else.
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let s = String::from_utf8_lossy(raw);
        let (nick, text) = s.split_once('\t')?;
        Some(Self {
            nick: nick.to_owned(),
            text: text.to_owned(),
        })
    }
}

/// The first words of `text`, on one line, at most 40 characters (an ellipsis marks a cut).
pub fn snippet(text: &str) -> String {
    let text = text.replace(['\r', '\n'], " ");
    let text = text.trim();
    let mut out: String = text.chars().take(40).collect();
    if text.chars().count() > 40 {
        out.push('…');
    }
    out
}

/// Renders rich text for IRC: mentions become the nick that shows the person there, the rest
/// becomes IRC formatting codes.
pub fn irc_text(body: &RichText, nick_of: &dyn Fn(&UserRef) -> Option<String>) -> String {
    let mut body = body.clone();
    mention::map_mentions(&mut body, |user, name| {
        if let Some(nick) = user.as_ref().and_then(nick_of) {
            *name = nick;
        }
    });
    format::irc::render(&body)
}

const STYLE_CODES: [char; 5] = ['\x02', '\x1d', '\x1f', '\x1e', '\x11'];

/// IRC ends every style at the end of a line: a style still open where a long line was cut
/// is opened again at the start of the next part.
fn carry_styles(lines: Vec<String>) -> Vec<String> {
    let mut open: Vec<char> = Vec::new();
    lines
        .into_iter()
        .map(|line| {
            let mut out: String = open.iter().collect();
            out.push_str(&line);
            for c in line.chars() {
                if c == '\x0f' {
                    open.clear();
                } else if STYLE_CODES.contains(&c) {
                    if let Some(i) = open.iter().position(|o| *o == c) {
                        open.remove(i);
                    } else {
                        open.push(c);
                    }
                }
            }
            out
        })
        .collect()
}

/// The text people read on IRC, without formatting codes or other control characters (line
/// breaks kept, CRLF and CR made LF): what a paste page shows.
pub fn plain_text(irc: &str) -> String {
    let text = irc.replace("\r\n", "\n").replace('\r', "\n");
    text.split('\n')
        .map(|line| {
            line.split('\t')
                .map(crate::inbound::strip_codes)
                .collect::<Vec<_>>()
                .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How people call the network a message came from.
fn network_name(network: &junction_core::NetworkId) -> String {
    match network.as_str() {
        "matrix" => "Matrix".to_owned(),
        "xmpp" => "XMPP".to_owned(),
        other => match other.strip_prefix("irc:") {
            Some(name) => format!("IRC ({name})"),
            None => other.to_owned(),
        },
    }
}

/// The full IRC lines (command included, no CRLF) for one delivery. Empty when nothing is
/// shown on IRC (redactions, unreactions).
pub fn render(d: &Delivery, r: &Render<'_>) -> Vec<String> {
    let who = d.event.sender.display_name.as_str();
    let prefix = match r.relay_as {
        Some(n) => format!("<{n}> "),
        None => String::new(),
    };
    // Room for the ACTION wrapper and the relay prefix in every line, and for styles
    // carried over from the part before.
    let budget = split::budget(r.linelen, r.sender_nick, r.channel)
        .saturating_sub(prefix.len() + 9 + STYLE_CODES.len())
        .max(16);
    let (command, action, text) = match &d.event.kind {
        EventKind::Message(m) => {
            let mut text = irc_text(&m.body, r.nick_of);
            for a in &m.attachments {
                if !text.is_empty() {
                    text.push('\n');
                }
                text.push_str(&a.url);
            }
            if m.reply_to.is_some() {
                // IRC has no replies: address the person answered and quote their first words.
                if let Some(q) = &r.quoted {
                    text = format!("{}: \"{}\" ← {text}", q.nick, snippet(&q.text));
                }
            }
            match m.kind {
                MessageKind::Text => ("PRIVMSG", false, text),
                MessageKind::Emote => ("PRIVMSG", true, text),
                MessageKind::Notice => ("NOTICE", false, text),
            }
        }
        EventKind::Edit { body, .. } => (
            "PRIVMSG",
            false,
            format!("(edit) {}", irc_text(body, r.nick_of)),
        ),
        EventKind::Redact { .. } | EventKind::Unreact { .. } => return Vec::new(),
        EventKind::React { key, .. } => (
            "PRIVMSG",
            true,
            match &r.quoted {
                Some(q) => format!("reacted {key} to \"{}\"", snippet(&q.text)),
                None => format!("reacted {key}"),
            },
        ),
        EventKind::Join => ("NOTICE", false, format!("{who} joined")),
        EventKind::Leave { reason, .. } => (
            "NOTICE",
            false,
            match reason {
                Some(r) => format!("{who} left ({})", snippet(r)),
                None => format!("{who} left"),
            },
        ),
        EventKind::NickChange { new_name } => {
            ("NOTICE", false, format!("{who} is now known as {new_name}"))
        }
        EventKind::Topic { text } => ("NOTICE", false, format!("{who} set the topic: {text}")),
        EventKind::Kick { target, reason } => (
            "NOTICE",
            false,
            format!(
                "{who} kicked {}{}",
                target.display_name,
                reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ),
        EventKind::Ban { target, reason } => (
            "NOTICE",
            false,
            format!(
                "{who} banned {}{}",
                target.display_name,
                reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
        ),
    };
    let lines = carry_styles(split::split_body(&text, budget));
    let lines = if lines.len() > r.max_lines.max(1) {
        let url = r.paste.and_then(|paste| paste(&plain_text(&text)));
        split::cut(lines, r.max_lines, |more| match url {
            Some(url) => format!("({more} more lines: {url})"),
            None => format!(
                "({more} more lines not shown here; the whole message is on {})",
                network_name(&d.event.origin.network)
            ),
        })
    } else {
        lines
    };
    lines
        .into_iter()
        .map(|line| {
            let body = format!("{prefix}{line}");
            if action && r.relay_as.is_none() {
                format!("{command} {} :\x01ACTION {body}\x01", r.channel)
            } else if action {
                format!(
                    "{command} {} :* {} {line}",
                    r.channel,
                    r.relay_as.unwrap_or(who)
                )
            } else {
                format!("{command} {} :{body}", r.channel)
            }
        })
        .collect()
}

/// Who says a delivery and in what room: what [`render_for`] needs of the connection.
#[derive(Clone, Copy, Debug)]
pub struct Voice<'a> {
    /// The nick that sends the lines (puppet or bot).
    pub nick: &'a str,
    /// `Some("alice[m]")` when the bot relays the line as `<alice[m]> text`.
    pub relay_as: Option<&'a str>,
    /// The server's line length.
    pub linelen: usize,
    /// At most this many lines per message.
    pub max_lines: usize,
}

/// Renders `d` as `voice` says it: mentions become the nicks kept in `store`, a reply or a
/// reaction quotes what it refers to, and a message longer than `max_lines` links its whole
/// text kept in `pastes` (named by [`ids::paste_origin`]).
pub fn render_for(
    store: &dyn AdapterStore,
    pastes: Option<&dyn Pastes>,
    d: &Delivery,
    voice: Voice<'_>,
) -> Vec<String> {
    let nick_of = |u: &UserRef| lookup::nick_of(store, u);
    let paste = pastes.map(|p| move |text: &str| p.keep(&ids::paste_origin(d), text));
    render(
        d,
        &Render {
            channel: &crate::private::wire_target(&d.target.room),
            sender_nick: voice.nick,
            relay_as: voice.relay_as,
            linelen: voice.linelen,
            max_lines: voice.max_lines,
            paste: paste.as_ref().map(|p| p as &PasteFn<'_>),
            quoted: lookup::quoted(store, d),
            nick_of: &nick_of,
        },
    )
}

/// The lines that carry out a gateway `Kick`/`Ban` of a user of this network (`target` as the
/// gateway names them: `nick!user@host`, or a bare nick/account), or None when `d` is not
/// such an enforcement. `host_of` knows the host of a nick the bot has seen. A ban sets
/// `*!*@host` (or `nick!*@*` when the host is unknown) and then kicks.
pub fn enforcement(
    d: &Delivery,
    network: &junction_core::NetworkId,
    host_of: &dyn Fn(&str) -> Option<String>,
) -> Option<Vec<String>> {
    if !d.event.sender.user.network.is_gateway() {
        return None;
    }
    let (target, reason, ban) = match &d.event.kind {
        EventKind::Kick { target, reason } => (target, reason, false),
        EventKind::Ban { target, reason } => (target, reason, true),
        _ => return None,
    };
    if &target.user.network != network {
        return None;
    }
    let who = target.user.user.0.as_str();
    // An account id (or a nick kept apart from one) names no nick: the display name is it.
    let nick = if who.starts_with('$') {
        ""
    } else {
        who.split('!').next().unwrap_or(who)
    };
    let nick = if nick.is_empty() {
        target.display_name.as_str()
    } else {
        nick
    };
    let host = who
        .split_once('@')
        .map(|(_, h)| h.to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| host_of(nick));
    let channel = d.target.room.0.as_str();
    let reason = reason
        .as_deref()
        .map(|r| r.replace(['\r', '\n'], " "))
        .unwrap_or_default();
    let mut lines = Vec::new();
    if ban {
        match host {
            Some(h) => lines.push(format!("MODE {channel} +b *!*@{h}")),
            None => lines.push(format!("MODE {channel} +b {nick}!*@*")),
        }
    }
    lines.push(format!("KICK {channel} {nick} :{reason}"));
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;
    use junction_core::format::Span;
    use junction_core::{BridgeName, Event, Message, MessageId, RoomRef, Sender};

    fn delivery(kind: EventKind) -> Delivery {
        Delivery {
            outbox_id: 7,
            bridge: BridgeName::new("lobby"),
            target: RoomRef::new("irc:local", "#lobby"),
            event: Event::new(
                RoomRef::new("matrix", "#lobby:matrix.test"),
                MessageId::new("$e"),
                Sender::new(UserRef::new("matrix", "@alice:matrix.test"), "alice"),
                0,
                kind,
            ),
            reply_to: Vec::new(),
            target_ids: Vec::new(),
        }
    }

    fn msg(kind: MessageKind, text: &str) -> EventKind {
        EventKind::Message(Message {
            kind,
            body: RichText::plain(text),
            reply_to: None,
            attachments: Vec::new(),
        })
    }

    fn no_nick(_: &UserRef) -> Option<String> {
        None
    }

    fn r(relay: Option<&str>) -> Render<'_> {
        Render {
            channel: "#lobby",
            sender_nick: "alice[m]",
            relay_as: relay,
            linelen: 512,
            max_lines: 5,
            paste: None,
            quoted: None,
            nick_of: &no_nick,
        }
    }

    #[test]
    fn text_emote_notice() {
        assert_eq!(
            render(&delivery(msg(MessageKind::Text, "hi")), &r(None)),
            vec!["PRIVMSG #lobby :hi"]
        );
        assert_eq!(
            render(&delivery(msg(MessageKind::Emote, "waves")), &r(None)),
            vec!["PRIVMSG #lobby :\x01ACTION waves\x01"]
        );
        assert_eq!(
            render(&delivery(msg(MessageKind::Notice, "n")), &r(None)),
            vec!["NOTICE #lobby :n"]
        );
        assert_eq!(
            render(
                &delivery(msg(MessageKind::Text, "hi")),
                &r(Some("alice[m]"))
            ),
            vec!["PRIVMSG #lobby :<alice[m]> hi"]
        );
    }

    #[test]
    fn long_and_multiline_bodies_fit() {
        let text = "word ".repeat(400);
        let lines = render(
            &delivery(msg(MessageKind::Text, &text)),
            &r(Some("alice[m]")),
        );
        assert!(lines.len() > 3);
        for l in &lines {
            assert!(l.len() + ":alice[m]!u@h\r\n".len() + split::HOST_ESTIMATE <= 512);
        }
        let lines = render(
            &delivery(msg(MessageKind::Text, "a\nb\nc\nd\ne\nf\ng")),
            &r(None),
        );
        assert_eq!(lines.len(), 5);
        assert_eq!(
            lines[4],
            "PRIVMSG #lobby :(3 more lines not shown here; the whole message is on Matrix)"
        );
        // Exactly max_lines lines go out whole.
        let lines = render(&delivery(msg(MessageKind::Text, "a\nb\nc\nd\ne")), &r(None));
        assert_eq!(lines.last().map(String::as_str), Some("PRIVMSG #lobby :e"));
    }

    #[test]
    fn a_long_message_links_to_its_whole_text() {
        let stored = std::cell::RefCell::new(Vec::<String>::new());
        let paste = |text: &str| {
            stored.borrow_mut().push(text.to_owned());
            Some("https://chat.example.org/paste/0123".to_owned())
        };
        let body = RichText {
            spans: vec![
                Span::Bold(vec![Span::Text("one".into())]),
                Span::Text("\ntwo\nthree\nfour\nfive\nsix\nseven".into()),
            ],
        };
        let m = EventKind::Message(Message {
            kind: MessageKind::Text,
            body,
            reply_to: None,
            attachments: Vec::new(),
        });
        let mut rr = r(Some("alice[m]"));
        rr.paste = Some(&paste);
        let lines = render(&delivery(m.clone()), &rr);
        assert_eq!(
            lines,
            vec![
                "PRIVMSG #lobby :<alice[m]> \x02one\x02",
                "PRIVMSG #lobby :<alice[m]> two",
                "PRIVMSG #lobby :<alice[m]> three",
                "PRIVMSG #lobby :<alice[m]> four",
                "PRIVMSG #lobby :<alice[m]> (3 more lines: https://chat.example.org/paste/0123)",
            ]
        );
        // The whole text as people read it, without the IRC codes.
        assert_eq!(
            stored.borrow().as_slice(),
            ["one\ntwo\nthree\nfour\nfive\nsix\nseven"]
        );
        // A short message stores nothing.
        render(&delivery(msg(MessageKind::Text, "a\nb")), &rr);
        assert_eq!(stored.borrow().len(), 1);
        // When the text could not be stored, the message is cut with a note.
        let failing = |_: &str| None;
        rr.paste = Some(&failing);
        let lines = render(&delivery(m), &rr);
        assert_eq!(
            lines[4],
            "PRIVMSG #lobby :<alice[m]> (3 more lines not shown here; the whole message is on Matrix)"
        );
    }

    #[test]
    fn plain_text_drops_codes_and_controls() {
        assert_eq!(
            plain_text("\x02bold\x02 \x0304red\x03\r\nnext\rthird\x01\x00\tend"),
            "bold red\nnext\nthird\tend"
        );
    }

    #[test]
    fn edits_reactions_redactions() {
        let edit = EventKind::Edit {
            target: MessageId::new("$x"),
            body: RichText::plain("fixed"),
        };
        assert_eq!(
            render(&delivery(edit), &r(None)),
            vec!["PRIVMSG #lobby :(edit) fixed"]
        );
        let redact = EventKind::Redact {
            target: MessageId::new("$x"),
            reason: None,
        };
        assert!(render(&delivery(redact), &r(None)).is_empty());
    }

    #[test]
    fn formatting_mentions_and_replies() {
        let body = RichText {
            spans: vec![
                Span::Mention {
                    user: Some(UserRef::new("xmpp", "bob@xmpp.test")),
                    name: "Bob".into(),
                },
                Span::Text(": look ".into()),
                Span::Bold(vec![Span::Text("here".into())]),
            ],
        };
        let nick_of = |u: &UserRef| (u.user.0 == "bob@xmpp.test").then(|| "bob[x]".to_owned());
        let mut rr = r(None);
        rr.nick_of = &nick_of;
        let m = EventKind::Message(Message {
            kind: MessageKind::Text,
            body,
            reply_to: Some(MessageId::new("$orig")),
            attachments: Vec::new(),
        });
        assert_eq!(
            render(&delivery(m.clone()), &rr),
            vec!["PRIVMSG #lobby :bob[x]: look \x02here\x02"]
        );
        rr.quoted = Some(Quoted {
            nick: "carol".into(),
            text: "the first words of a rather long message that goes on".into(),
        });
        assert_eq!(
            render(&delivery(m), &rr),
            vec!["PRIVMSG #lobby :carol: \"the first words of a rather long message…\" ← bob[x]: look \x02here\x02"]
        );
        let react = EventKind::React {
            target: MessageId::new("$orig"),
            key: "👍".into(),
        };
        assert_eq!(
            render(&delivery(react), &rr)[0],
            "PRIVMSG #lobby :\x01ACTION reacted 👍 to \"the first words of a rather long message…\"\x01"
        );
    }

    #[test]
    fn styles_open_at_a_cut_are_reopened() {
        assert_eq!(
            carry_styles(vec!["a \x02bold".into(), "still\x02 plain".into()]),
            vec!["a \x02bold", "\x02still\x02 plain"]
        );
    }

    /// Through the adapter: a message over `max_lines` goes out as its first lines and a
    /// link, and the gateway's pastes hold its whole text under the delivery's origin.
    #[tokio::test]
    async fn a_long_message_goes_out_cut_with_a_link_to_its_whole_text() {
        use crate::fake_server::{self, answered, expect_line, harness_with, serve_one, MemPastes};
        use crate::IrcMode;
        use std::sync::Arc;
        use std::time::Duration;
        use tokio::sync::{mpsc, oneshot};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut cfg = fake_server::config(listener.local_addr().expect("addr"), IrcMode::Relay);
        cfg.max_lines = 3;
        let pastes = Arc::new(MemPastes::default());
        let mut h = harness_with(
            cfg,
            Arc::new(junction_store::MemStore::new()),
            Some(pastes.clone()),
        );
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let (_close, close_rx) = oneshot::channel();
        serve_one(&listener, lines_tx, close_rx).await;
        expect_line(&mut lines, "JOIN #t").await;
        let text = (1..=8)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        h.deliveries
            .send(fake_server::delivery(1, &text))
            .await
            .expect("send");
        expect_line(&mut lines, "PRIVMSG #t :<alice[m]> line 1").await;
        expect_line(&mut lines, "PRIVMSG #t :<alice[m]> line 2").await;
        let note = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(l) = lines.recv().await {
                if l.starts_with("PRIVMSG #t :") {
                    return Some(l);
                }
            }
            None
        })
        .await
        .expect("in time")
        .expect("a third line");
        let prefix = "PRIVMSG #t :<alice[m]> (6 more lines: https://chat.example.org/paste/";
        let id = note
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(')'))
            .unwrap_or_else(|| panic!("not the note: {note:?}"));
        let (origin, paste) = pastes
            .kept
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .expect("the paste");
        assert_eq!(paste, text);
        let d = fake_server::delivery(1, &text);
        assert_eq!(origin, format!("{}\n{}", d.event.id, d.target));
        let ok = answered(&mut h).await;
        assert_eq!(ok.outbox_id, 1);
        h.shutdown.cancel();
    }
}
