//! Wire → [`Event`]: what the bot connection reads in a channel becomes a normalised event
//! ([`map`], pure), and the bot's side of it: the roster it keeps of each channel, its own and
//! its puppets' lines told apart, and each event passed on to the gateway.

use crate::adapter::{IrcAdapter, State};
use crate::connection::Session;
use crate::history::{Replay, BACKFILL_MARGIN_MS};
use crate::{commands, lookup};
use irc_proto::{Command, Message, Response};
use junction_core::clock::now_ms;
use junction_core::format::{self, mention};
use junction_core::{
    AdapterContext, Event, EventKind, Inbound, Message as ChatMessage, MessageId, MessageKind,
    NetworkId, NetworkStatus, RoomRef, Sender, UserRef,
};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Removes IRC formatting codes (bold, colour, italic...), keeping the text.
pub fn strip_codes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x02' | '\x1d' | '\x1f' | '\x1e' | '\x11' | '\x16' | '\x0f' => {}
            '\x03' => {
                // up to two digits, optionally `,` and up to two digits
                for _ in 0..2 {
                    if chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                        chars.next();
                    }
                }
                let mut look = chars.clone();
                if look.next() == Some(',') && look.peek().is_some_and(|d| d.is_ascii_digit()) {
                    chars.next();
                    for _ in 0..2 {
                        if chars.peek().is_some_and(|d| d.is_ascii_digit()) {
                            chars.next();
                        }
                    }
                }
            }
            '\x04' => {
                for _ in 0..6 {
                    if chars.peek().is_some_and(|d| d.is_ascii_hexdigit()) {
                        chars.next();
                    }
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

/// A netsplit quit reason: two server names, e.g. `hub.net leaf.net` or `*.net *.split`.
pub fn is_netsplit(reason: &str) -> bool {
    let parts: Vec<&str> = reason.split(' ').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            p.contains('.') && !p.starts_with('.') && !p.ends_with('.') && !p.contains('/')
        })
}

/// The value of tag `name` on `msg`, when present.
pub fn tag<'a>(msg: &'a Message, name: &str) -> Option<&'a str> {
    msg.tags
        .as_ref()?
        .iter()
        .find(|t| t.0 == name)
        .and_then(|t| t.1.as_deref())
}

/// Parses `YYYY-MM-DDThh:mm:ss.sssZ` (server-time) into Unix milliseconds.
pub fn parse_server_time(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = if b.get(19) == Some(&b'.') {
        num(20..23).unwrap_or(0)
    } else {
        0
    };
    // days from civil (Howard Hinnant's algorithm)
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec;
    u64::try_from(secs * 1000 + ms).ok()
}

/// Formats Unix milliseconds as server-time, `YYYY-MM-DDThh:mm:ss.sssZ` (for CHATHISTORY
/// timestamps).
pub fn format_server_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // civil from days (Howard Hinnant's algorithm)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// Where the ids of services accounts start: `$a:<account>` (the extban syntax many networks
/// use for accounts). No IRC server allows `$` or `:` in a nick, but a nick that starts with
/// `$` is still kept apart (see [`nick_user_id`]), so the two namespaces never meet.
pub const ACCOUNT_PREFIX: &str = "$a:";
/// Where the ids of nicks that would start with `$` start (never seen on a real server).
const ODD_NICK_PREFIX: &str = "$n:";

/// The gateway's id of a services account: `$a:<account>`. An account and an unauthenticated
/// nick of the same name are two people, with two ghosts and two puppets.
pub fn account_user_id(account: &str) -> String {
    format!("{ACCOUNT_PREFIX}{account}")
}

/// The gateway's id of someone known only by their nick: the nick itself (the ids people
/// already have stay theirs), or `$n:<nick>` for a nick starting with `$`, which could
/// otherwise pass for an account id.
pub fn nick_user_id(nick: &str) -> String {
    if nick.starts_with('$') {
        format!("{ODD_NICK_PREFIX}{nick}")
    } else {
        nick.to_owned()
    }
}

/// The services account an id of [`account_user_id`] names.
pub fn account_of_user_id(id: &str) -> Option<&str> {
    id.strip_prefix(ACCOUNT_PREFIX)
}

/// The identity of the sender of `msg` called `nick`: their services account when the server
/// tags the line with one (`account`, not `*`), else their nick.
pub fn sender_user_id(msg: &Message, nick: &str) -> String {
    match tag(msg, "account").filter(|a| !a.is_empty() && *a != "*") {
        Some(account) => account_user_id(account),
        None => nick_user_id(nick),
    }
}

/// Maps one server message seen by the bot into events. `room_of` turns a wire channel name
/// into the linked room (None: not ours); `channels_of_nick` names the linked rooms a nick is
/// in (for QUIT/NICK, which name no channel); `is_ours` says whether a nick is our bot or one
/// of our puppets (their lines are dropped); `who_is` names the person behind a nick written
/// as a leading `nick:` address (a channel member, or the remote user behind a puppet), so
/// it becomes a mention. IRC formatting codes become rich text.
pub fn map(
    network: &NetworkId,
    msg: &Message,
    room_of: &dyn Fn(&str) -> Option<String>,
    channels_of_nick: &dyn Fn(&str) -> Vec<String>,
    is_ours: &dyn Fn(&str) -> bool,
    who_is: &dyn Fn(&str) -> Option<UserRef>,
) -> Vec<Event> {
    let Some(nick) = msg.source_nickname() else {
        return Vec::new();
    };
    if is_ours(nick) {
        return Vec::new();
    }
    let ts = tag(msg, "time")
        .and_then(parse_server_time)
        .unwrap_or_else(now_ms);
    let remote_id = |room: &str| -> MessageId {
        match tag(msg, "msgid") {
            Some(id) => MessageId::new(id),
            None => MessageId::new(format!(
                "ts-{ts}-{}-{room}",
                COUNTER.fetch_add(1, Ordering::Relaxed)
            )),
        }
    };
    let mut sender = Sender::new(
        UserRef::new(network.clone(), sender_user_id(msg, nick)),
        nick,
    );
    if let Some(irc_proto::Prefix::Nickname(n, user, host)) = &msg.prefix {
        if !user.is_empty() && !host.is_empty() {
            sender = sender.with_address(format!("{n}!{user}@{host}"));
        }
    }
    let event = |room: String, kind: EventKind| {
        let id = remote_id(&room);
        Event::new(
            RoomRef::new(network.clone(), room),
            id,
            sender.clone(),
            ts,
            kind,
        )
    };
    let text_event = |target: &str, text: &str, notice: bool| -> Vec<Event> {
        let Some(room) = room_of(target) else {
            return Vec::new();
        };
        let (kind, body) = if let Some(rest) = text.strip_prefix("\x01ACTION ") {
            (MessageKind::Emote, rest.trim_end_matches('\x01'))
        } else if text.starts_with('\x01') {
            return Vec::new(); // other CTCP
        } else if notice {
            (MessageKind::Notice, text)
        } else {
            (MessageKind::Text, text)
        };
        vec![event(
            room,
            EventKind::Message(ChatMessage {
                kind,
                body: mention::leading_address(format::irc::parse(body), who_is),
                reply_to: None,
                attachments: Vec::new(),
            }),
        )]
    };
    match &msg.command {
        Command::PRIVMSG(target, text) => text_event(target, text, false),
        Command::NOTICE(target, text) => text_event(target, text, true),
        Command::JOIN(chan, _, _) => room_of(chan)
            .map(|r| vec![event(r, EventKind::Join)])
            .unwrap_or_default(),
        Command::PART(chan, reason) => room_of(chan)
            .map(|r| {
                vec![event(
                    r,
                    EventKind::Leave {
                        reason: reason.clone(),
                        quit: false,
                    },
                )]
            })
            .unwrap_or_default(),
        Command::QUIT(reason) => {
            let split = reason.as_deref().is_some_and(is_netsplit);
            channels_of_nick(nick)
                .into_iter()
                .map(|r| {
                    event(
                        r,
                        EventKind::Leave {
                            reason: if split {
                                Some("netsplit".into())
                            } else {
                                reason.clone()
                            },
                            quit: true,
                        },
                    )
                })
                .collect()
        }
        Command::NICK(new) => channels_of_nick(nick)
            .into_iter()
            .map(|r| {
                event(
                    r,
                    EventKind::NickChange {
                        new_name: new.clone(),
                    },
                )
            })
            .collect(),
        Command::TOPIC(chan, Some(text)) => room_of(chan)
            .map(|r| {
                vec![event(
                    r,
                    EventKind::Topic {
                        text: strip_codes(text),
                    },
                )]
            })
            .unwrap_or_default(),
        Command::KICK(chan, who, reason) => room_of(chan)
            .map(|r| {
                let target = Sender::new(
                    UserRef::new(network.clone(), nick_user_id(who)),
                    who.as_str(),
                );
                vec![event(
                    r,
                    EventKind::Kick {
                        target,
                        reason: reason.clone(),
                    },
                )]
            })
            .unwrap_or_default(),
        Command::ChannelMODE(chan, modes) => {
            let Some(room) = room_of(chan) else {
                return Vec::new();
            };
            modes
                .iter()
                .filter_map(|m| match m {
                    irc_proto::Mode::Plus(irc_proto::ChannelMode::Ban, Some(mask)) => {
                        let who = mask.split('!').next().unwrap_or(mask);
                        Some(event(
                            room.clone(),
                            EventKind::Ban {
                                target: Sender::new(
                                    UserRef::new(network.clone(), nick_user_id(who)),
                                    who,
                                ),
                                reason: None,
                            },
                        ))
                    }
                    _ => None,
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

/// Channel membership as the bot sees it: one shared roster per channel (folded names). The
/// puppets keep none.
#[derive(Default)]
pub(crate) struct Roster {
    /// folded channel → room as written in the link
    pub(crate) rooms: BTreeMap<String, String>,
    /// folded channel → folded nicks
    pub(crate) members: BTreeMap<String, BTreeSet<String>>,
    /// folded nick → host, as last seen in a message prefix (for bans)
    pub(crate) hosts: BTreeMap<String, String>,
    /// channel operators, for telling a moderator's topic from anyone else's
    pub(crate) ops: crate::ops::Ops,
}

impl Roster {
    /// Forgets the host of `nick` (folded) once it shares no channel with the bot any more:
    /// its QUIT will not be seen, and the map would otherwise keep everyone who ever left.
    pub(crate) fn forget_host_if_gone(&mut self, nick: &str) {
        if !self.members.values().any(|m| m.contains(nick)) {
            self.hosts.remove(nick);
        }
    }
}

/// Whether `nick` (as the server wrote it) is the bot or one of our puppets, connected or
/// not. The store keeps puppet nicks as the server gave them, so it is asked with the nick
/// unfolded (under rfc1459, `alice[m]` folds to `alice{m}`).
fn is_ours(cx: &AdapterContext, s: &Session, st: &State, nick: &str) -> bool {
    let folded = s.isupport.fold(nick);
    folded == s.isupport.fold(&s.nick)
        || st.live.contains_key(&folded)
        || cx.store.puppet_owner(nick).ok().flatten().is_some()
}

impl IrcAdapter {
    /// Reads one server line on the bot's connection: answers PINGs, keeps the roster, takes
    /// commands, and passes what people said and did in the linked channels (a history
    /// replay's lines included, where they are new) on to the gateway.
    pub(crate) async fn on_message(
        &self,
        s: &mut Session,
        cx: &AdapterContext,
        st: &State,
        roster: &mut Roster,
        (replay, since): (&mut Replay, Option<u64>),
        msg: irc_proto::Message,
    ) -> Result<(), String> {
        if replay.on_batch(&msg, &|c| s.isupport.fold(c)) {
            return Ok(());
        }
        if let Some(chan) = replay.channel_of(&msg).map(str::to_owned) {
            // A line of the channel's history, replayed on join.
            let (Command::PRIVMSG(_, text) | Command::NOTICE(_, text)) = &msg.command else {
                return Ok(());
            };
            let Some(nick) = msg.source_nickname() else {
                return Ok(());
            };
            let time = tag(&msg, "time").and_then(parse_server_time).unwrap_or(0);
            if is_ours(cx, s, st, nick) {
                replay.push_own(&chan, &s.isupport.fold(nick), text, time);
                return Ok(());
            }
            // Someone else's: relayed when said after the bot last read the channel (less a
            // margin) and named by a msgid, so a line relayed before is known and skipped.
            let fresh = replay.relays(&chan)
                && since.is_some_and(|t| time.saturating_add(BACKFILL_MARGIN_MS) >= t);
            if !fresh || tag(&msg, "msgid").is_none() {
                return Ok(());
            }
        }
        let nick_of = msg.source_nickname().map(|n| s.isupport.fold(n));
        if let (Some(n), Some(irc_proto::Prefix::Nickname(_, _, host))) = (&nick_of, &msg.prefix) {
            if !host.is_empty() && roster.members.values().any(|m| m.contains(n)) {
                roster.hosts.insert(n.clone(), host.clone());
            }
        }
        match &msg.command {
            Command::PING(a, _) => {
                s.writer
                    .send(&format!("PONG :{a}"))
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            Command::ERROR(reason) => return Err(format!("server error: {reason}")),
            Command::Response(Response::RPL_NAMREPLY, args) => {
                if let (Some(chan), Some(names)) = (args.get(2), args.get(3)) {
                    let k = s.isupport.fold(chan);
                    let set = roster.members.entry(k.clone()).or_default();
                    for n in names.split(' ').filter(|n| !n.is_empty()) {
                        let isupport = &s.isupport;
                        roster
                            .ops
                            .name(&k, n, &isupport.prefix_symbols, &|x| isupport.fold(x));
                        let n = n.trim_start_matches(|c| s.isupport.prefix_symbols.contains(c));
                        set.insert(s.isupport.fold(n));
                    }
                }
                return Ok(());
            }
            Command::Response(
                r @ (Response::ERR_BANNEDFROMCHAN
                | Response::ERR_INVITEONLYCHAN
                | Response::ERR_CHANNELISFULL
                | Response::ERR_BADCHANNELKEY
                | Response::ERR_NOSUCHCHANNEL
                | Response::ERR_TOOMANYCHANNELS),
                args,
            ) => {
                let chan = args.get(1).cloned().unwrap_or_default();
                if roster.rooms.contains_key(&s.isupport.fold(&chan)) {
                    tracing::warn!(network = %cx.network, channel = %chan, code = ?r, "IRC bot could not join");
                    cx.status
                        .send_replace(NetworkStatus::Degraded(format!("could not join {chan}")));
                }
                return Ok(());
            }
            Command::PRIVMSG(target, text)
                if s.isupport.fold(target) == s.isupport.fold(&s.nick) =>
            {
                let from_puppet = nick_of.as_ref().is_some_and(|n| st.live.contains_key(n));
                if !from_puppet {
                    commands::forward(cx, &msg, text, &st.reply_tx);
                }
                return Ok(());
            }
            _ => {}
        }
        let me = s.isupport.fold(&s.nick);
        let events = {
            let isupport = &s.isupport;
            let rooms = &roster.rooms;
            let members = &roster.members;
            let live = &st.live;
            let network = &cx.network;
            map(
                &cx.network,
                &msg,
                &|chan| rooms.get(&isupport.fold(chan)).cloned(),
                &|n| {
                    let n = isupport.fold(n);
                    members
                        .iter()
                        .filter(|(_, m)| m.contains(&n))
                        .filter_map(|(c, _)| rooms.get(c).cloned())
                        .collect()
                },
                &|n| is_ours(cx, s, st, n),
                &|n| {
                    let folded = isupport.fold(n);
                    if let Some(u) = live.get(&folded) {
                        return Some(u.clone());
                    }
                    if let Ok(Some(u)) = cx.store.puppet_owner(n) {
                        return Some(u);
                    }
                    members
                        .values()
                        .any(|m| m.contains(&folded))
                        .then(|| UserRef::new(network.clone(), n))
                },
            )
        };
        // A topic is a moderator's when an operator of the channel set it.
        let events: Vec<_> = match (&msg.command, &nick_of) {
            (Command::TOPIC(chan, _), Some(n)) => {
                let op = roster.ops.is_op(&s.isupport.fold(chan), n);
                events.into_iter().map(|e| e.moderated(op)).collect()
            }
            _ => events,
        };
        if let Command::ChannelMODE(chan, modes) = &msg.command {
            let isupport = &s.isupport;
            roster
                .ops
                .mode(&isupport.fold(chan), modes, &|x| isupport.fold(x));
        }
        // Keep the roster current after mapping (QUIT/NICK needed the old membership).
        if let Some(n) = nick_of {
            match &msg.command {
                Command::JOIN(chan, _, _) => {
                    if n == me && roster.rooms.contains_key(&s.isupport.fold(chan)) {
                        tracing::info!(network = %cx.network, channel = %chan, "IRC bot joined.");
                    }
                    roster
                        .members
                        .entry(s.isupport.fold(chan))
                        .or_default()
                        .insert(n);
                }
                Command::PART(chan, _) => {
                    roster.ops.left(&s.isupport.fold(chan), &n);
                    if let Some(m) = roster.members.get_mut(&s.isupport.fold(chan)) {
                        m.remove(&n);
                    }
                    roster.forget_host_if_gone(&n);
                }
                Command::KICK(chan, who, _) => {
                    let who = s.isupport.fold(who);
                    roster.ops.left(&s.isupport.fold(chan), &who);
                    if let Some(m) = roster.members.get_mut(&s.isupport.fold(chan)) {
                        m.remove(&who);
                    }
                    roster.forget_host_if_gone(&who);
                }
                Command::QUIT(_) => {
                    roster.ops.quit(&n);
                    for m in roster.members.values_mut() {
                        m.remove(&n);
                    }
                    roster.hosts.remove(&n);
                }
                Command::NICK(new) => {
                    let new = s.isupport.fold(new);
                    if n == me {
                        s.nick = new.clone();
                    }
                    roster.ops.renamed(&n, &new);
                    for m in roster.members.values_mut() {
                        if m.remove(&n) {
                            m.insert(new.clone());
                        }
                    }
                    if let Some(h) = roster.hosts.remove(&n) {
                        roster.hosts.insert(new.clone(), h);
                    }
                }
                _ => {}
            }
        }
        for e in events {
            if let EventKind::Message(m) = &e.kind {
                lookup::remember(
                    cx.store.as_ref(),
                    &e.origin,
                    &e.remote_id,
                    &e.sender.display_name,
                    &m.body.to_plain(),
                );
            }
            let said = e.ts_ms;
            let (item, ack) = Inbound::with_ack(e);
            if cx.inbound.send(item).await.is_err() {
                tracing::debug!("gateway gone; inbound event not passed on");
            } else {
                self.read.pass(said, ack);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_forgotten_once_no_channel_is_shared() {
        let mut r = Roster::default();
        for chan in ["#a", "#b"] {
            r.members
                .entry(chan.into())
                .or_default()
                .insert("eve".into());
        }
        r.hosts.insert("eve".into(), "host.example".into());
        r.members.get_mut("#a").map(|m| m.remove("eve"));
        r.forget_host_if_gone("eve");
        assert!(r.hosts.contains_key("eve"), "still in #b");
        r.members.get_mut("#b").map(|m| m.remove("eve"));
        r.forget_host_if_gone("eve");
        assert!(r.hosts.is_empty());
    }

    #[test]
    fn server_time_formats_and_parses_back() {
        for t in [
            "1970-01-01T00:00:00.000Z",
            "2024-02-29T23:59:59.999Z",
            "2026-12-01T02:34:05.120Z",
            "2100-03-01T00:00:00.001Z",
        ] {
            let ms = parse_server_time(t).expect("parses");
            assert_eq!(format_server_time(ms), t);
        }
    }

    fn run(line: &str) -> Vec<Event> {
        let msg: Message = line.parse().expect("test line parses");
        map(
            &NetworkId::new("irc:local"),
            &msg,
            &|c| (c.eq_ignore_ascii_case("#lobby")).then(|| "#lobby".to_owned()),
            &|_| vec!["#lobby".to_owned()],
            &|n| n == "junction" || n.ends_with("[m]"),
            &|n| (n == "carol").then(|| UserRef::new("irc:local", "carol")),
        )
    }

    fn body(e: &Event) -> (MessageKind, String) {
        match &e.kind {
            EventKind::Message(m) => (m.kind, m.body.to_plain()),
            other => panic!("not a message: {other:?}"),
        }
    }

    #[test]
    fn privmsg_with_tags() {
        let evs = run(
            "@msgid=abc;time=2024-01-02T03:04:05.678Z :bob!u@h PRIVMSG #Lobby :hi \x02there\x02",
        );
        assert_eq!(evs.len(), 1);
        let e = &evs[0];
        assert_eq!(e.remote_id, MessageId::new("abc"));
        assert_eq!(e.ts_ms, 1_704_164_645_678);
        assert_eq!(e.origin.room.0, "#lobby");
        assert_eq!(e.sender.user.user.0, "bob");
        assert_eq!(body(e), (MessageKind::Text, "hi there".into()));
        match &e.kind {
            EventKind::Message(m) => assert!(!m.body.is_plain(), "bold kept: {:?}", m.body),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leading_address_becomes_a_mention() {
        let evs = run(":bob!u@h PRIVMSG #lobby :carol: hi");
        match &evs[0].kind {
            EventKind::Message(m) => assert_eq!(
                m.body.spans[0],
                junction_core::format::Span::Mention {
                    user: Some(UserRef::new("irc:local", "carol")),
                    name: "carol".into()
                }
            ),
            other => panic!("{other:?}"),
        }
        let evs = run(":bob!u@h PRIVMSG #lobby :dave: hi");
        assert_eq!(body(&evs[0]).1, "dave: hi");
    }

    #[test]
    fn action_notice_and_own_lines() {
        let evs = run(":bob!u@h PRIVMSG #lobby :\x01ACTION waves\x01");
        assert_eq!(body(&evs[0]), (MessageKind::Emote, "waves".into()));
        let evs = run(":bob!u@h NOTICE #lobby :note");
        assert_eq!(body(&evs[0]), (MessageKind::Notice, "note".into()));
        assert!(run(":alice[m]!u@h PRIVMSG #lobby :mine").is_empty());
        assert!(run(":junction!u@h PRIVMSG #lobby :mine").is_empty());
        assert!(run(":bob!u@h PRIVMSG #other :elsewhere").is_empty());
        assert!(run(":bob!u@h PRIVMSG #lobby :\x01VERSION\x01").is_empty());
    }

    #[test]
    fn membership_and_netsplit() {
        assert!(matches!(
            run(":bob!u@h JOIN #lobby")[0].kind,
            EventKind::Join
        ));
        assert!(matches!(
            run(":bob!u@h PART #lobby :bye")[0].kind,
            EventKind::Leave { quit: false, .. }
        ));
        match &run(":bob!u@h QUIT :*.net *.split")[0].kind {
            EventKind::Leave { reason, quit } => {
                assert!(quit);
                assert_eq!(reason.as_deref(), Some("netsplit"));
            }
            other => panic!("{other:?}"),
        }
        assert!(is_netsplit("hub.example.net leaf.example.net"));
        assert!(!is_netsplit("Quit: see you. bye."));
        assert!(matches!(
            run(":bob!u@h NICK bobby")[0].kind,
            EventKind::NickChange { .. }
        ));
        assert!(matches!(
            run(":bob!u@h TOPIC #lobby :new")[0].kind,
            EventKind::Topic { .. }
        ));
        assert!(matches!(
            run(":op!u@h KICK #lobby bob :out")[0].kind,
            EventKind::Kick { .. }
        ));
        assert!(matches!(
            run(":op!u@h MODE #lobby +b bob!*@*")[0].kind,
            EventKind::Ban { .. }
        ));
    }

    #[test]
    fn accounts_and_nicks_are_distinct_identities() {
        let account = &run("@account=alice :alice!u@h PRIVMSG #lobby :hi")[0];
        let nick = &run(":alice!u@h PRIVMSG #lobby :hi")[0];
        let star = &run("@account=* :alice!u@h PRIVMSG #lobby :hi")[0];
        assert_eq!(account.sender.user.user.0, "$a:alice");
        assert_eq!(nick.sender.user.user.0, "alice");
        assert_eq!(star.sender.user.user.0, "alice", "`*` means logged out");
        assert_ne!(account.sender.user, nick.sender.user);
        // Both show the nick they use.
        assert_eq!(account.sender.display_name, "alice");
        assert_eq!(nick.sender.display_name, "alice");
        // The line's mask travels with the sender, for bans.
        assert_eq!(nick.sender.address.as_deref(), Some("alice!u@h"));
        // A nick made to look like an account id stays a nick.
        assert_eq!(nick_user_id("$a:alice"), "$n:$a:alice");
        assert_ne!(nick_user_id("$a:alice"), account_user_id("alice"));
        assert_eq!(account_of_user_id("$a:alice"), Some("alice"));
        assert_eq!(account_of_user_id("alice"), None);
    }

    #[test]
    fn invalid_input_never_panics() {
        assert!(run(":server.test PRIVMSG #lobby :from a server").len() <= 1);
        assert_eq!(strip_codes("\x0304,12red\x03 \x1ditalic\x0f"), "red italic");
        assert_eq!(parse_server_time("garbage"), None);
    }
}
