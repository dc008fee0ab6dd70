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
//!
//! Here too: the bot's side of it (the gap report at connect, the CHATHISTORY requests,
//! checking waiting deliveries against the replay once the JOINs are answered) and the
//! `channel_history` option (turning InspIRCd's `+H` on where the bot is an operator).

use crate::adapter::{IrcAdapter, State};
use crate::connection::Session;
use crate::deliver::{self, BotKind};
use crate::{ids, inbound, stored};
use irc_proto::{BatchSubCommand, Command, Message, Response};
use junction_core::clock::now_ms;
use junction_core::{AdapterContext, Delivery, EventKind, RoomId};
use std::collections::{HashMap, HashSet, VecDeque};

/// Replayed lines this much older than the bot's last reading are still relayed (those
/// already relayed are known events by their msgid, and skipped by the gateway).
pub(crate) const BACKFILL_MARGIN_MS: u64 = 60_000;
/// Most lines asked for per channel with CHATHISTORY.
const CHATHISTORY_LIMIT: usize = 500;

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

/// The bot's `channel_history` work on one connection (folded channels).
#[derive(Default)]
pub(crate) struct HistoryModes {
    /// `MODE #channel` sent, its 324 not yet read.
    asked: HashSet<String>,
    /// `+H` sent, not yet confirmed.
    setting: HashSet<String>,
}

impl IrcAdapter {
    /// Says in the log what may not be seen: lines said in the channels since the bot last
    /// read them reach the other networks only where a channel replays its history on join
    /// (InspIRCd `+H`); elsewhere they are gone. The gateway never pretends otherwise.
    /// Returns when the bot last read the channels (ms since the epoch), if ever.
    pub(crate) fn report_history_gap(
        &self,
        cx: &AdapterContext,
        s: &Session,
        rooms: &[RoomId],
    ) -> Option<u64> {
        let history = offers_chathistory(s);
        let last = stored::last_read(cx.store.as_ref());
        let channels: Vec<&str> = rooms.iter().map(|r| r.0.as_str()).collect();
        match last {
            Some(ms) => {
                let gap_s = now_ms().saturating_sub(ms) / 1000;
                if history {
                    tracing::info!(network = %cx.network, channels = %channels.join(" "), gap_seconds = gap_s, "The server offers CHATHISTORY: lines said while the gateway was away (up to this long) are fetched and relayed.");
                } else {
                    tracing::warn!(network = %cx.network, channels = %channels.join(" "), gap_seconds = gap_s, "Lines said while the gateway was away (up to this long) are relayed only from channels that replay their history on join (InspIRCd channel mode +H); the others' are lost.");
                }
            }
            None => {
                tracing::info!(network = %cx.network, history, "First connection to this network: nothing said before now is relayed.");
            }
        }
        last
    }

    /// With `channel_history`: the `MODE #channel` query that starts turning history on in
    /// `room`, unless one is already awaiting its answer.
    pub(crate) fn ask_modes(
        &self,
        s: &Session,
        modes: &mut HistoryModes,
        room: &str,
    ) -> Option<String> {
        self.config.channel_history.as_ref()?;
        modes
            .asked
            .insert(s.isupport.fold(room))
            .then(|| format!("MODE {room}"))
    }

    /// With `channel_history`: reads the answers to the bot's `MODE #channel` queries and
    /// to its `+H`, and returns the `MODE #channel +H <spec>` to send for a channel without
    /// history.
    pub(crate) fn on_history_mode(
        &self,
        cx: &AdapterContext,
        s: &Session,
        modes: &mut HistoryModes,
        msg: &irc_proto::Message,
    ) -> Option<String> {
        let spec = self.config.channel_history.as_deref()?;
        let Command::Response(r, args) = &msg.command else {
            let Command::ChannelMODE(chan, changes) = &msg.command else {
                return None;
            };
            let me = s.isupport.fold(&s.nick);
            let folded = s.isupport.fold(chan);
            let by_bot = msg
                .source_nickname()
                .is_some_and(|n| s.isupport.fold(n) == me);
            if by_bot && modes.setting.remove(&folded) {
                tracing::info!(network = %cx.network, channel = %chan, history = spec, "Channel history turned on (+H): the channel replays its last lines to whoever joins.");
            }
            // Made an operator: now the bot may turn history on, if the channel has none.
            let opped = changes.iter().any(|m| {
                matches!(m, irc_proto::Mode::Plus(irc_proto::ChannelMode::Oper, Some(n)) if s.isupport.fold(n) == me)
            });
            if opped && !by_bot {
                return self.ask_modes(s, modes, chan);
            }
            return None;
        };
        match r {
            Response::RPL_CHANNELMODEIS => {
                let chan = args.get(1)?;
                let folded = s.isupport.fold(chan);
                if !modes.asked.remove(&folded) {
                    return None;
                }
                let flags = args.get(2).map(String::as_str).unwrap_or("");
                if flags.contains('H') {
                    tracing::debug!(network = %cx.network, channel = %chan, "The channel keeps history already.");
                    return None;
                }
                modes.setting.insert(folded);
                Some(format!("MODE {chan} +H {spec}"))
            }
            Response::ERR_CHANOPRIVSNEEDED => {
                let chan = args.get(1)?;
                if modes.setting.remove(&s.isupport.fold(chan)) {
                    tracing::warn!(network = %cx.network, channel = %chan, history = spec, "The bot is no channel operator here, so it could not turn on the channel's history (+H): lines said while the gateway is away are lost. An operator can: /MODE {chan} +H {spec}");
                }
                None
            }
            Response::ERR_UNKNOWNMODE if !modes.setting.is_empty() => {
                modes.setting.clear();
                tracing::warn!(network = %cx.network, "This IRC server has no channel history mode (+H, InspIRCd's chanhistory module): lines said while the gateway is away are lost.");
                None
            }
            _ => None,
        }
    }

    /// The bot's JOINs are answered: deliveries that the replayed history shows already said
    /// are answered as delivered, and the rest may go. Waiting deliveries are checked on the
    /// first connection only (see `State::resumed`); the bot's own unconfirmed delivery
    /// whenever some of its lines went out before the connection dropped.
    pub(crate) fn joined(
        &self,
        cx: &mut AdapterContext,
        s: &Session,
        st: &mut State,
        replay: &mut Replay,
        pending_sent: bool,
    ) {
        let resumed = std::mem::replace(&mut st.resumed, false);
        if resumed && !replay.is_empty() {
            // Everything the gateway handed over by now, resumed deliveries included.
            while let Ok(d) = cx.deliveries.try_recv() {
                st.held.push_back(d);
            }
            let mut kept = VecDeque::with_capacity(st.held.len());
            for d in std::mem::take(&mut st.held) {
                match self.replayed(cx, s, replay, &d) {
                    Some((said, shown)) => {
                        tracing::info!(network = %cx.network, outbox = d.outbox_id, event = %d.event.id, "Already in the channel's history: answered as delivered, not said again.");
                        self.answer_said(cx, &d, said, &shown, None);
                    }
                    None => kept.push_back(d),
                }
            }
            st.held = kept;
        }
        if pending_sent && !replay.is_empty() {
            let bot = s.isupport.fold(&s.nick);
            let proven = st.pending.as_ref().is_some_and(|p| {
                matches!(p.kind, BotKind::Relay | BotKind::Own) && {
                    let texts = said_texts(&p.lines);
                    let chan = s.isupport.fold(&p.delivery.target.room.0);
                    replay.take(&chan, &bot, &texts, p.delivery.event.ts_ms)
                }
            });
            if proven {
                if let Some(p) = st.pending.take() {
                    if p.gated {
                        deliver::written(st, &s.isupport, &p.delivery.target.room.0, &None);
                    }
                    tracing::info!(network = %cx.network, outbox = p.delivery.outbox_id, "Already in the channel's history: answered as delivered, not said again.");
                    self.finish(cx, p);
                }
            }
        }
        replay.clear_own();
        st.ready = true;
        self.pump(cx, st, &s.isupport);
    }

    /// Whether the replayed history holds delivery `d`, as said by its sender's puppet or
    /// relayed by the bot: how many lines it said and under which nick.
    fn replayed(
        &self,
        cx: &AdapterContext,
        s: &Session,
        replay: &mut Replay,
        d: &Delivery,
    ) -> Option<(usize, String)> {
        if !matches!(
            d.event.kind,
            EventKind::Message(_) | EventKind::Edit { .. } | EventKind::React { .. }
        ) || d.event.sender.user.network.is_gateway()
        {
            return None;
        }
        let chan = s.isupport.fold(&d.target.room.0);
        if let Ok(Some(nick)) = cx.store.puppet(&d.event.sender.user) {
            let lines = self.render_as(cx, s, d, &nick, None);
            let texts = said_texts(&lines);
            if replay.take(&chan, &s.isupport.fold(&nick), &texts, d.event.ts_ms) {
                return Some((lines.len(), nick));
            }
        }
        let shown = ids::puppet_nick(cx.store.as_ref(), &d.event.sender, s.isupport.nicklen);
        let lines = self.render(cx, s, d, Some(&shown));
        let texts = said_texts(&lines);
        let bot = s.isupport.fold(&s.nick);
        replay
            .take(&chan, &bot, &texts, d.event.ts_ms)
            .then_some((lines.len(), shown))
    }
}

/// Whether the server offers IRCv3 chathistory on this connection.
pub(crate) fn offers_chathistory(s: &Session) -> bool {
    s.caps
        .iter()
        .any(|c| c == "chathistory" || c == "draft/chathistory")
}

/// `CHATHISTORY AFTER` requests for what was said in `rooms` since the bot last read them
/// (less the backfill margin), when the server offers IRCv3 chathistory; none on a first
/// connection (nothing said before it is relayed).
pub(crate) fn chathistory_requests(
    s: &Session,
    rooms: &[RoomId],
    since: Option<u64>,
) -> Vec<String> {
    let (true, Some(since)) = (offers_chathistory(s) && s.caps.contains("batch"), since) else {
        return Vec::new();
    };
    let limit = match s.isupport.chathistory {
        Some(n) if n > 0 => n.min(CHATHISTORY_LIMIT),
        _ => CHATHISTORY_LIMIT,
    };
    let from = inbound::format_server_time(since.saturating_sub(BACKFILL_MARGIN_MS));
    rooms
        .iter()
        .map(|r| format!("CHATHISTORY AFTER {} timestamp={from} {limit}", r.0))
        .collect()
}

/// The texts of the PRIVMSG/NOTICE lines among `lines`.
pub(crate) fn said_texts(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| said_text(l))
        .map(str::to_owned)
        .collect()
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

    /// The adapter against the fake server: replays and CHATHISTORY.
    mod replays {
        use super::super::*;
        use crate::fake_server::{
            answered, config, count_said, delivery, drain, expect_line, harness_with,
            serve_scripted, started, NETWORK,
        };
        use crate::IrcMode;
        use junction_core::{MessageId, NetworkId, UserRef};
        use junction_store::{MemStore, Store};
        use std::sync::Arc;
        use std::time::Duration;
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        use tokio::net::TcpListener;
        use tokio::sync::mpsc;

        /// `#t`'s history as the server replays it on join: `lines` (tags, then the message) in
        /// one `chathistory` batch.
        fn history_of_t(lines: &[&str]) -> Vec<String> {
            let mut out = vec![":fake BATCH +h1 chathistory #t".to_owned()];
            out.extend(lines.iter().map(|l| format!("@batch=h1;{l}")));
            out.push(":fake BATCH -h1".to_owned());
            out
        }

        /// Answers the bot's JOIN of `#t` with `lines` replayed as its history.
        fn replaying(lines: &'static [&'static str]) -> impl Fn(&str) -> Vec<String> + Send {
            move |line| {
                if line == "JOIN #t" {
                    history_of_t(lines)
                } else {
                    Vec::new()
                }
            }
        }

        /// Waits for the answer to the delivery of `one` as outbox row 1 made before the
        /// bot connected, which the replayed history shows already said: answered with the
        /// id of its first line, not said again.
        async fn first_answered_from_history(h: &mut junction_testkit::Solo) {
            let ok = answered(h).await;
            assert_eq!(ok.outbox_id, 1);
            assert_eq!(ok.outcome, Ok(vec![MessageId::new("1.0")]));
        }

        /// After an unclean stop, a delivery the channel's replayed history already shows is
        /// answered as delivered and not said again; a later equal line is said; someone
        /// else's replayed line is not relayed on the first connection to a network.
        #[tokio::test]
        async fn a_delivery_found_in_the_replayed_history_is_not_said_again() {
            let (listener, mut h) = started(IrcMode::Relay).await;
            h.deliveries.send(delivery(1, "one")).await.expect("queued");
            let (lines_tx, mut lines) = mpsc::unbounded_channel();
            let history = replaying(&[
                "time=2026-01-01T00:00:00.000Z;msgid=m1 :bob!b@h PRIVMSG #t :earlier",
                "time=2026-01-01T00:00:01.000Z;msgid=m2 :junction!j@h PRIVMSG #t :<alice[m]> one",
            ]);
            serve_scripted(&listener, lines_tx, history).await;
            first_answered_from_history(&mut h).await;
            h.deliveries.send(delivery(2, "one")).await.expect("queued");
            let ok = answered(&mut h).await;
            assert_eq!(ok.outbox_id, 2);
            let (ones, said) = count_said(&mut lines, "PRIVMSG #t :<alice[m]> one");
            assert_eq!(ones, 1, "{said:?}");
            assert!(
                h.inbound.try_recv().is_err(),
                "nothing relayed on a first connection"
            );
            h.shutdown.cancel();
        }

        /// A server offering IRCv3 chathistory is asked for what was said since the bot last read
        /// the channel (less the margin), and the lines it returns are relayed.
        #[tokio::test]
        async fn chathistory_is_asked_for_what_was_missed_and_relayed() {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let store: Arc<dyn Store> = Arc::new(MemStore::new());
            let last_read: u64 = 1_790_000_000_000;
            store
                .kv_put(
                    &format!("{NETWORK}/{}", stored::SEEN),
                    stored::SEEN_KEY,
                    &last_read.to_be_bytes(),
                )
                .expect("stored");
            let addr = listener.local_addr().expect("addr");
            let h = harness_with(config(addr, IrcMode::Relay), store, None);
            let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
            let (sock, _) = listener.accept().await.expect("accept");
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r).lines();
                while let Ok(Some(line)) = r.next_line().await {
                    let out: Vec<String> = if line == "CAP LS 302" {
                        vec![
                            ":fake CAP * LS :batch server-time message-tags draft/chathistory"
                                .into(),
                        ]
                    } else if let Some(caps) = line.strip_prefix("CAP REQ :") {
                        vec![format!(":fake CAP * ACK :{caps}")]
                    } else if line == "CAP END" {
                        vec![
                            ":fake 001 junction :hi".into(),
                            ":fake 005 junction CHATHISTORY=100 :are supported".into(),
                            ":fake 376 junction :end".into(),
                        ]
                    } else if let Some(token) = line.strip_prefix("PING ") {
                        vec![format!(":fake PONG fake {token}")]
                    } else if line.starts_with("CHATHISTORY AFTER #t ") {
                        vec![
                            ":fake BATCH +c1 chathistory #t".into(),
                            "@batch=c1;time=2026-09-22T10:00:00.000Z;msgid=x1 :bob!b@h PRIVMSG #t :missed".into(),
                            ":fake BATCH -c1".into(),
                        ]
                    } else {
                        Vec::new()
                    };
                    for o in out {
                        let _ = w.write_all(format!("{o}\r\n").as_bytes()).await;
                    }
                    let _ = lines_tx.send(line);
                }
            });
            let want = format!(
                "CHATHISTORY AFTER #t timestamp={} 100",
                inbound::format_server_time(last_read - BACKFILL_MARGIN_MS)
            );
            expect_line(&mut lines, &want).await;
            let mut inbound_rx = h.inbound;
            let ev = tokio::time::timeout(Duration::from_secs(30), inbound_rx.recv())
                .await
                .expect("relayed in time")
                .expect("an event");
            assert_eq!(ev.event.remote_id, MessageId::new("x1"));
            assert!(
                matches!(&ev.event.kind, EventKind::Message(m) if m.body.to_plain() == "missed")
            );
            h.shutdown.cancel();
        }

        /// After a reconnect (not a restart), a waiting delivery was never said by anyone, so an
        /// equal replayed line (the same person said the same words before) does not stop it.
        #[tokio::test]
        async fn after_a_reconnect_an_equal_replayed_line_does_not_stop_a_new_delivery() {
            use std::sync::atomic::{AtomicUsize, Ordering};
            static JOINS: AtomicUsize = AtomicUsize::new(0);
            let (listener, mut h) = started(IrcMode::Relay).await;
            let respond = |line: &str| -> Vec<String> {
                if line == "JOIN #t" && JOINS.fetch_add(1, Ordering::SeqCst) > 0 {
                    return history_of_t(&[
                        "time=2026-01-01T00:00:01.000Z;msgid=m1 :junction!j@h PRIVMSG #t :<alice[m]> one",
                    ]);
                }
                if line == "PING :junction-1" {
                    // Answered (the PONG went first), then the server drops the bot.
                    return vec!["ERROR :Closing link".to_owned()];
                }
                Vec::new()
            };
            let (lines_tx, mut lines) = mpsc::unbounded_channel();
            serve_scripted(&listener, lines_tx.clone(), respond).await;
            expect_line(&mut lines, "JOIN #t").await;
            h.deliveries.send(delivery(1, "one")).await.expect("queued");
            let ok = answered(&mut h).await;
            assert_eq!(ok.outbox_id, 1);
            // The bot has read the ERROR and is registering again, waiting for the server.
            tokio::time::sleep(Duration::from_millis(300)).await;
            h.deliveries.send(delivery(2, "one")).await.expect("queued");
            serve_scripted(&listener, lines_tx, respond).await;
            let ok = answered(&mut h).await;
            assert_eq!(ok.outbox_id, 2);
            let (ones, said) = count_said(&mut lines, "PRIVMSG #t :<alice[m]> one");
            assert_eq!(ones, 2, "{said:?}");
            h.shutdown.cancel();
        }

        /// The same for a line said by the sender's puppet before the restart: its nick is
        /// known from the store (as the server wrote it, brackets and all, though rfc1459 folds
        /// them), so no puppet connects to say it again.
        #[tokio::test]
        async fn a_puppet_line_found_in_the_replayed_history_is_not_said_again() {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let store: Arc<dyn Store> = Arc::new(MemStore::new());
            store
                .set_puppet(
                    &NetworkId::new("irc:fake"),
                    &UserRef::new("matrix", "@alice:matrix.test"),
                    "Alice[m]",
                )
                .expect("stored");
            let addr = listener.local_addr().expect("addr");
            let mut h = harness_with(config(addr, IrcMode::Puppet), store, None);
            h.deliveries.send(delivery(1, "one")).await.expect("queued");
            let (lines_tx, mut lines) = mpsc::unbounded_channel();
            let history = replaying(&[
                "time=2026-01-01T00:00:01.000Z;msgid=m2 :Alice[m]!a@h PRIVMSG #t :one",
            ]);
            serve_scripted(&listener, lines_tx, history).await;
            first_answered_from_history(&mut h).await;
            let said = drain(&mut lines);
            assert!(!said.iter().any(|l| l.contains(":one")), "{said:?}");
            assert!(h.inbound.try_recv().is_err(), "our own line is not relayed");
            h.shutdown.cancel();
        }
    }
}
