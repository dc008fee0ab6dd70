//! The adapter: one bot connection per network that joins the linked channels, reads their
//! traffic (the only connection that does), takes admin commands, and sends deliveries; in
//! `puppet` mode, one more connection per remote user who speaks (see [`crate::puppets`]).
//!
//! This file is the adapter's state and its run loop: connect the bot
//! ([`crate::connection`]), serve its connection until it drops, reconnect with backoff.
//! What the loop does with what it reads lives by concern: server lines in
//! [`crate::inbound`], history replays and CHATHISTORY in [`crate::history`], deliveries in
//! `deliver.rs` (where each goes, the bot's queue, answers) and [`crate::outbound`] (rendering),
//! puppets' reports in [`crate::puppets`], commands in [`crate::commands`].

use crate::bucket::Bucket;
use crate::config::IrcConfig;
use crate::connection::{self, End, Registration, Session};
use crate::deliver::{BotKind, Pending};
use crate::fair::FairQueue;
use crate::history::{self, HistoryModes, Replay};
use crate::inbound::Roster;
use crate::puppets::{Handle, Report};
use crate::stored::{self, ReadMark};
use crate::tls::Tls;
use crate::{commands, deliver};
use irc_proto::Command;
use junction_core::clock::now_ms;
use junction_core::{Adapter, AdapterContext, AdapterError, Delivery, NetworkStatus, UserRef};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How often the read time is written while connected.
const SEEN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// The PING sent after the JOINs: its answer comes after every JOIN's replies, history
/// replays included.
const JOINED_TOKEN: &str = "junction-joined";

/// The IRC adapter of one network.
pub struct IrcAdapter {
    pub(crate) config: IrcConfig,
    /// With `tls`: the setup every connection shares, or why it could not be built (then
    /// nothing connects, rather than falling back to plaintext).
    tls: Option<Result<Tls, String>>,
    /// How far the channels count as read (every line up to it stored).
    pub(crate) read: ReadMark,
}

impl std::fmt::Debug for IrcAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrcAdapter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The adapter's state across bot reconnects.
pub(crate) struct State {
    /// The bot's JOINs are answered (history replays read): deliveries may go.
    pub(crate) ready: bool,
    /// No connection of this process has read the channels yet: the deliveries waiting now
    /// include the outbox resumed at start, some of which the previous process may have
    /// said (later, a waiting delivery was never handed to any connection).
    pub(crate) resumed: bool,
    pub(crate) pending: Option<Pending>,
    /// What the bot is to say, per channel, served in turn (see [`crate::fair`]).
    pub(crate) bot_queue: FairQueue<(Delivery, BotKind, bool)>,
    /// Deliveries not yet routed, in outbox order.
    pub(crate) held: VecDeque<Delivery>,
    /// folded channel → the connection (None: the bot) with unwritten deliveries there, and
    /// how many.
    pub(crate) unwritten: HashMap<String, (Option<UserRef>, usize)>,
    pub(crate) puppets: HashMap<UserRef, Handle>,
    pub(crate) cooldown: HashMap<UserRef, Instant>,
    /// folded nick → the user behind one of our connected puppets.
    pub(crate) live: BTreeMap<String, UserRef>,
    pub(crate) next_gen: u64,
    pub(crate) reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    pub(crate) reply_tx: mpsc::UnboundedSender<commands::Reply>,
    replies: mpsc::UnboundedReceiver<commands::Reply>,
}

impl State {
    fn new() -> Self {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        Self {
            ready: false,
            resumed: true,
            pending: None,
            bot_queue: crate::fair::bot_queue(),
            held: VecDeque::new(),
            unwritten: HashMap::new(),
            puppets: HashMap::new(),
            cooldown: HashMap::new(),
            live: BTreeMap::new(),
            next_gen: 0,
            reports_tx,
            reports,
            reply_tx,
            replies,
        }
    }
}

impl IrcAdapter {
    /// An adapter for `config`. What it keeps (puppet nicks, quotes, when it last read the
    /// channels) goes to the store handle of the context it runs in.
    pub fn new(config: IrcConfig) -> Self {
        let tls = config.tls.then(|| Tls::new(config.tls_ca.as_deref()));
        Self {
            config,
            tls,
            read: ReadMark::default(),
        }
    }

    /// The TLS setup to connect with (None: plaintext), or why TLS can not be set up.
    pub(crate) fn tls(&self) -> Result<Option<&Tls>, String> {
        match &self.tls {
            None => Ok(None),
            Some(Ok(t)) => Ok(Some(t)),
            Some(Err(e)) => Err(e.clone()),
        }
    }

    fn registration(&self) -> Registration {
        Registration {
            nick: self.config.nick.clone(),
            suffix: String::new(),
            password: self.config.password.clone(),
            sasl: self.config.sasl.clone(),
            caps: true,
            realname: "Junction gateway".into(),
            nicklen: 0,
        }
    }

    /// Serves one bot connection until it drops or the gateway stops.
    async fn serve(&self, mut s: Session, cx: &mut AdapterContext, st: &mut State) -> End {
        let mut bucket = Bucket::new(self.config.burst, self.config.lines_per_second);
        let mut reply_queue = commands::ReplyQueue::new(commands::MAX_REPLY_LINES);
        let mut roster = Roster::default();
        let rooms = cx.rooms.borrow_and_update().clone();
        for room in &rooms {
            roster
                .rooms
                .insert(s.isupport.fold(&room.0), room.0.clone());
            if let Err(e) = s.writer.send(&format!("JOIN {}", room.0)).await {
                return End::Lost(e.to_string());
            }
        }
        tracing::info!(network = %cx.network, nick = %s.nick, rooms = rooms.len(), "IRC connected");
        let since = self.report_history_gap(cx, &s, &rooms);
        // Where the server keeps history behind IRCv3 CHATHISTORY, ask for what was said
        // since the bot last read the channels (the answer is a `chathistory` batch, read
        // like a replay on join).
        for line in history::chathistory_requests(&s, &rooms, since) {
            if let Err(e) = s.writer.send(&line).await {
                return End::Lost(e.to_string());
            }
        }
        // Nothing is sent until the JOINs are answered, so a replayed history is read first.
        st.ready = false;
        if let Err(e) = s.writer.send(&format!("PING :{JOINED_TOKEN}")).await {
            return End::Lost(e.to_string());
        }
        let mut replay = Replay::default();
        let mut modes = HistoryModes::default();
        let mut marked: Option<std::time::Instant> = None;
        cx.status.send_replace(NetworkStatus::Connected);
        // The bot's delivery in progress when the last connection dropped: the replay may
        // show it said, if any of its lines went out.
        let pending_sent = st.pending.as_ref().is_some_and(|p| p.sent > 0);
        if let Some(p) = st.pending.take() {
            // Rendered again: the nick or the line length may differ on this connection.
            let again = self.bot_pending(cx, &s, &roster, (p.delivery, p.kind, p.gated));
            st.pending = Some(again);
        }
        loop {
            if st.ready && st.pending.is_none() {
                if let Some(next) = st.bot_queue.pop() {
                    st.pending = Some(self.bot_pending(cx, &s, &roster, next));
                }
            }
            if let Some(p) = st.pending.as_mut().filter(|_| st.ready) {
                while p.sent < p.lines.len() {
                    bucket.wait().await;
                    if let Err(e) = s.writer.send(&p.lines[p.sent]).await {
                        return End::Lost(e.to_string());
                    }
                    p.sent += 1;
                }
                if !p.ping_sent {
                    if let Err(e) = s.writer.send(&format!("PING :{}", p.token())).await {
                        return End::Lost(e.to_string());
                    }
                    p.ping_sent = true;
                    if p.gated {
                        p.gated = false;
                        let room = p.delivery.target.room.0.clone();
                        deliver::written(st, &s.isupport, &room, &None);
                        self.pump(cx, st, &s.isupport);
                    }
                }
            }
            tokio::select! {
                biased;
                msg = s.next_message(&cx.shutdown) => {
                    let msg = match msg {
                        Ok(m) => m,
                        Err(end) => return s.closing(end).await,
                    };
                    if let Command::PONG(a, b) = &msg.command {
                        let token = b.as_deref().unwrap_or(a);
                        if token == JOINED_TOKEN && !st.ready {
                            self.joined(cx, &s, st, &mut replay, pending_sent);
                            for room in roster.rooms.values() {
                                if let Some(line) = self.ask_modes(&s, &mut modes, room) {
                                    if let Err(e) = s.writer.send(&line).await {
                                        return End::Lost(e.to_string());
                                    }
                                }
                            }
                            continue;
                        }
                        if st.pending.as_ref().is_some_and(|p| p.ping_sent && p.token() == token) {
                            if let Some(mut p) = st.pending.take() {
                                if p.denied.is_some() && !p.fallback.is_empty() {
                                    // Not allowed: say it instead.
                                    p.lines = std::mem::take(&mut p.fallback);
                                    p.said = 0;
                                    p.sent = 0;
                                    p.ping_sent = false;
                                    p.denied = None;
                                    st.pending = Some(p);
                                    continue;
                                }
                                self.finish(cx, p);
                            }
                        }
                        continue;
                    }
                    if let Some(p) = st.pending.as_mut().filter(|p| p.ping_sent) {
                        if let Some(why) = deliver::refusal(&msg) {
                            if matches!(p.kind, BotKind::Enforce | BotKind::Topic) {
                                p.denied.get_or_insert(why);
                            }
                        }
                    }
                    if let Some(line) = self.on_history_mode(cx, &s, &mut modes, &msg) {
                        if let Err(e) = s.writer.send(&line).await {
                            return End::Lost(e.to_string());
                        }
                    }
                    if let Err(e) = self.on_message(&mut s, cx, st, &mut roster, (&mut replay, since), msg).await {
                        return End::Lost(e);
                    }
                    // Only once the replay is read: its lines are passed on by then.
                    if st.ready && marked.is_none_or(|t| t.elapsed() >= SEEN_EVERY) {
                        self.read.save(cx.store.as_ref(), now_ms());
                        marked = Some(std::time::Instant::now());
                    }
                }
                report = st.reports.recv() => {
                    if let Some(crate::puppets::Report::Private { user, msg }) = report {
                        crate::private::received(cx, user, *msg).await;
                    } else if let Some(r) = report {
                        self.on_report(cx, st, &s.isupport, r);
                        let live = st.live.len();
                        cx.puppets.send_if_modified(|n| std::mem::replace(n, live) != live);
                        self.pump(cx, st, &s.isupport);
                    }
                }
                reply = st.replies.recv() => {
                    let Some((to, text)) = reply else { continue };
                    let budget = crate::split::budget(s.isupport.linelen, &s.nick, &to);
                    reply_queue.push(commands::reply_lines(&to, &text, budget));
                }
                // An answer line goes only when the bucket holds a token to spare, so a
                // delivery's next line never waits behind answers, and nothing here waits:
                // the server's PINGs and the channels keep being read.
                _ = tokio::time::sleep(bucket.ready_in(tokio::time::Instant::now(), commands::REPLY_TOKENS)), if !reply_queue.is_empty() => {
                    // As many lines as the bucket spares now (an answer goes out together).
                    while let Some(line) = reply_queue.pop() {
                        bucket.take(tokio::time::Instant::now());
                        if let Err(e) = s.writer.send(&line).await {
                            return End::Lost(e.to_string());
                        }
                        if !bucket.ready_in(tokio::time::Instant::now(), commands::REPLY_TOKENS).is_zero() {
                            break;
                        }
                    }
                }
                changed = cx.rooms.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let now: Vec<String> = cx.rooms.borrow_and_update().iter().map(|r| r.0.clone()).collect();
                    let folded: BTreeSet<String> = now.iter().map(|r| s.isupport.fold(r)).collect();
                    let gone: Vec<String> = roster.rooms.keys().filter(|k| !folded.contains(*k)).cloned().collect();
                    for k in gone {
                        if let Some(room) = roster.rooms.remove(&k) {
                            roster.members.remove(&k);
                            if let Err(e) = s.writer.send(&format!("PART {room}")).await {
                                return End::Lost(e.to_string());
                            }
                        }
                    }
                    for room in now {
                        let k = s.isupport.fold(&room);
                        if let std::collections::btree_map::Entry::Vacant(v) = roster.rooms.entry(k) {
                            v.insert(room.clone());
                            replay.linked_now(&s.isupport.fold(&room));
                            if let Err(e) = s.writer.send(&format!("JOIN {room}")).await {
                                return End::Lost(e.to_string());
                            }
                            if let Some(line) = self.ask_modes(&s, &mut modes, &room) {
                                if let Err(e) = s.writer.send(&line).await {
                                    return End::Lost(e.to_string());
                                }
                            }
                        }
                    }
                }
                d = cx.deliveries.recv() => {
                    let Some(d) = d else {
                        // The gateway is gone; nothing more will come.
                        return End::Shutdown;
                    };
                    st.held.push_back(d);
                    // All that waits is taken at once, so the channels' turns see it: taken
                    // one at a time between the bot's paced lines, a busy channel's backlog
                    // would reach the queue (and go out) whole before another's one line.
                    while let Ok(d) = cx.deliveries.try_recv() {
                        st.held.push_back(d);
                    }
                    self.pump(cx, st, &s.isupport);
                }
            }
        }
    }
}

impl Adapter for IrcAdapter {
    async fn run(self, mut cx: AdapterContext) -> Result<(), AdapterError> {
        stored::adopt_legacy(cx.store.as_ref());
        let mut st = State::new();
        let mut attempt: u32 = 0;
        loop {
            let connected = tokio::select! {
                _ = cx.shutdown.cancelled() => return Ok(()),
                r = async {
                    let tls = self.tls()?;
                    connection::connect(&self.config.server, tls, self.registration(), Duration::from_secs(60)).await
                } => r,
            };
            let why = match connected {
                Ok(s) => {
                    attempt = 0;
                    match self.serve(s, &mut cx, &mut st).await {
                        End::Shutdown => return Ok(()),
                        End::Lost(why) => why,
                    }
                }
                Err(why) => why,
            };
            let delay = connection::backoff(attempt);
            attempt = attempt.saturating_add(1);
            cx.status.send_replace(if attempt > 3 {
                NetworkStatus::Down(why.clone())
            } else {
                NetworkStatus::Degraded(format!("reconnecting: {why}"))
            });
            tracing::warn!(network = %cx.network, reason = %why, retry_in_ms = delay.as_millis() as u64, "IRC connection lost");
            tokio::select! {
                _ = cx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::fake_server::{answered, delivery, expect_line, serve_one, started};
    use crate::IrcMode;
    use junction_core::MessageId;
    use std::time::Duration;
    use tokio::sync::{mpsc, oneshot};

    #[tokio::test]
    async fn reconnects_and_sends_what_was_queued_while_down() {
        let (listener, mut h) = started(IrcMode::Relay).await;

        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let (close1, close1_rx) = oneshot::channel();
        serve_one(&listener, lines_tx.clone(), close1_rx).await;
        expect_line(&mut lines, "JOIN #t").await;
        h.deliveries.send(delivery(1, "one")).await.expect("send");
        expect_line(&mut lines, "PRIVMSG #t :<alice[m]> one").await;
        let ok = answered(&mut h).await;
        assert_eq!(ok.outbox_id, 1);
        assert_eq!(ok.outcome, Ok(vec![MessageId::new("1.0")]));

        // The server drops us; a delivery made meanwhile waits and goes out after reconnect.
        let _ = close1.send(());
        h.deliveries.send(delivery(2, "two")).await.expect("send");
        let (_close2, close2_rx) = oneshot::channel();
        serve_one(&listener, lines_tx.clone(), close2_rx).await;
        expect_line(&mut lines, "JOIN #t").await;
        expect_line(&mut lines, "PRIVMSG #t :<alice[m]> two").await;
        let ok = answered(&mut h).await;
        assert_eq!(ok.outbox_id, 2);

        h.shutdown.cancel();
        let res = tokio::time::timeout(Duration::from_secs(30), h.task)
            .await
            .expect("stops");
        assert!(matches!(res, Ok(Ok(()))));
    }
}
