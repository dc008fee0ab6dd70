//! The adapter: one bot connection per network that joins the linked channels, reads their
//! traffic (the only connection that does), takes admin commands, and sends deliveries; in
//! `puppet` mode, one more connection per remote user who speaks (see [`crate::puppets`]).
//!
//! Deliveries are routed in outbox order: to a puppet (messages, and the Join/Leave/nick
//! changes of a user who has one), or to the bot (relay mode, the gateway's own notices and
//! enforcement, summaries of kicks, topics, and whatever a puppet could not say). Puppets are
//! created lazily and connect in parallel, up to `max_puppets`; beyond that, or while a
//! user's puppet can not connect, their messages are relayed by the bot as `<alice[m]> text`.
//! Lines of one channel keep their order across connections: a delivery waits until every
//! earlier delivery of its channel that went to another connection is written.

use crate::bucket::Bucket;
use crate::config::{IrcConfig, IrcMode};
use crate::connection::{self, Registration, Session};
use crate::fair::{FairQueue, Push, MAX_QUEUED_PER_CHANNEL};
use crate::history::{self, Replay};
use crate::isupport::ISupport;
use crate::puppets::{self, Action, Job, Report};
use crate::tls::Tls;
use crate::{commands, ids, inbound, lookup, outbound, paste};
use irc_proto::{Command, Response};
use junction_core::{
    Adapter, AdapterContext, AdapterError, Capabilities, Delivered, Delivery, EventKind, Inbound,
    Markup, MessageId, NetworkStatus, UserRef,
};
use junction_store::Store;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// How far down the waiting deliveries puppets are connected ahead of their turn.
const PREPARE_AHEAD: usize = 512;
/// Store kv table: when the bot last read each network's channels (ms since the epoch).
const SEEN_TABLE: &str = "irc.seen";
/// How often that time is written while connected.
const SEEN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// Replayed lines this much older than the bot's last reading are still relayed (those
/// already relayed are known events by their msgid, and skipped by the gateway).
const BACKFILL_MARGIN_MS: u64 = 60_000;
/// The PING sent after the JOINs: its answer comes after every JOIN's replies, history
/// replays included.
const JOINED_TOKEN: &str = "junction-joined";

/// The IRC adapter of one network.
pub struct IrcAdapter {
    config: IrcConfig,
    store: Arc<dyn Store>,
    /// With `tls`: the setup every connection shares, or why it could not be built (then
    /// nothing connects, rather than falling back to plaintext).
    tls: Option<Result<Tls, String>>,
    /// How far the channels count as read (every line up to it stored).
    read: crate::stored::ReadMark,
}

impl std::fmt::Debug for IrcAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrcAdapter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

/// How the bot renders a delivery.
#[derive(Debug, Clone)]
enum BotKind {
    /// As `<alice[m]> text` (relay mode, or a puppet that could not speak).
    Relay,
    /// In its own words (the gateway's notices, membership and kick summaries).
    Own,
    /// A gateway kick/ban of a user of this network.
    Enforce,
    /// Set the topic; a notice when the bot may not.
    Topic,
}

/// Where a delivery goes.
enum Plan {
    Bot(BotKind),
    Puppet(UserRef, Action),
    Answer(Result<Vec<MessageId>, String>),
}

/// A delivery being sent by the bot. It is answered only once the server answered a PING sent
/// after its last line: TCP keeps order, so the server then has every line (a write into a
/// connection the server already closed succeeds locally, so a sent line alone proves
/// nothing). If the connection drops before that, the whole delivery is sent again after
/// reconnect: a line may then appear twice, but none is lost.
struct Pending {
    delivery: Delivery,
    kind: BotKind,
    /// Counted in the channel gate until written.
    gated: bool,
    /// Rendered once connected (the nick and line length are needed).
    lines: Vec<String>,
    /// Lines of the message itself (their ids answer the delivery).
    said: usize,
    /// The nick shown as the sender, for quotes.
    shown: String,
    sent: usize,
    ping_sent: bool,
    /// Sent instead when the server refuses `lines` (a topic the bot may not set).
    fallback: Vec<String>,
    /// A refusal from the server before the PING's answer (enforcement fails).
    denied: Option<String>,
}

impl Pending {
    fn token(&self) -> String {
        format!("junction-{}", self.delivery.outbox_id)
    }
}

/// Channel membership as the bot sees it: one shared roster per channel (folded names). The
/// puppets keep none.
#[derive(Default)]
struct Roster {
    /// folded channel → room as written in the link
    rooms: BTreeMap<String, String>,
    /// folded channel → folded nicks
    members: BTreeMap<String, BTreeSet<String>>,
    /// folded nick → host, as last seen in a message prefix (for bans)
    hosts: BTreeMap<String, String>,
    /// channel operators, for telling a moderator's topic from anyone else's
    ops: crate::ops::Ops,
}

impl Roster {
    /// Forgets the host of `nick` (folded) once it shares no channel with the bot any more:
    /// its QUIT will not be seen, and the map would otherwise keep everyone who ever left.
    fn forget_host_if_gone(&mut self, nick: &str) {
        if !self.members.values().any(|m| m.contains(nick)) {
            self.hosts.remove(nick);
        }
    }
}

/// The bot's `channel_history` work on one connection (folded channels).
#[derive(Default)]
struct HistoryModes {
    /// `MODE #channel` sent, its 324 not yet read.
    asked: HashSet<String>,
    /// `+H` sent, not yet confirmed.
    setting: HashSet<String>,
}

/// Tokens the bucket must hold before an answer line to a command goes: one for the line and
/// one left for the next delivery line.
const REPLY_TOKENS: f64 = 2.0;

/// A command's answer on its way back to the person who typed it.
type Reply = (String, String);

/// A running (or connecting) puppet.
struct Handle {
    gen: u64,
    jobs: mpsc::UnboundedSender<Box<Job>>,
    nick: Option<String>,
}

/// How long a user whose puppet could not connect is relayed by the bot before trying again.
const PUPPET_COOLDOWN: Duration = Duration::from_secs(300);

/// The adapter's state across bot reconnects.
struct State {
    /// The bot's JOINs are answered (history replays read): deliveries may go.
    ready: bool,
    /// No connection of this process has read the channels yet: the deliveries waiting now
    /// include the outbox resumed at start, some of which the previous process may have
    /// said (later, a waiting delivery was never handed to any connection).
    resumed: bool,
    pending: Option<Pending>,
    /// What the bot is to say, per channel, served in turn (see [`crate::fair`]).
    bot_queue: FairQueue<(Delivery, BotKind, bool)>,
    /// Deliveries not yet routed, in outbox order.
    held: VecDeque<Delivery>,
    /// folded channel → the connection (None: the bot) with unwritten deliveries there, and
    /// how many.
    unwritten: HashMap<String, (Option<UserRef>, usize)>,
    puppets: HashMap<UserRef, Handle>,
    cooldown: HashMap<UserRef, Instant>,
    /// folded nick → the user behind one of our connected puppets.
    live: BTreeMap<String, UserRef>,
    next_gen: u64,
    reports_tx: mpsc::UnboundedSender<Report>,
    reports: mpsc::UnboundedReceiver<Report>,
    reply_tx: mpsc::UnboundedSender<Reply>,
    replies: mpsc::UnboundedReceiver<Reply>,
}

impl IrcAdapter {
    /// An adapter for `config`, keeping its puppet nicks in `store`.
    pub fn new(config: IrcConfig, store: Arc<dyn Store>) -> Self {
        let tls = config.tls.then(|| Tls::new(config.tls_ca.as_deref()));
        Self {
            config,
            store,
            tls,
            read: crate::stored::ReadMark::default(),
        }
    }

    /// The TLS setup to connect with (None: plaintext), or why TLS can not be set up.
    fn tls(&self) -> Result<Option<&Tls>, String> {
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

    /// The nick a remote user is shown with; remembered in the store so it stays the same.
    fn nick_for(
        &self,
        cx: &AdapterContext,
        sender: &junction_core::Sender,
        nicklen: usize,
    ) -> String {
        let user = &sender.user;
        match self.store.puppet(&cx.network, user) {
            Ok(Some(n)) => return n,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "puppet nick lookup failed"),
        }
        let name = sender
            .display_name
            .split(['@', ':'])
            .find(|s| !s.is_empty())
            .unwrap_or("user");
        let suffix = ids::suffix_for(user.network.0.as_str());
        let mut candidate = ids::sanitise(name, suffix, nicklen);
        // Another remote user may hold this nick already: add `_` until it is free.
        for _ in 0..16 {
            match self.store.puppet_owner(&cx.network, &candidate) {
                Ok(Some(owner)) if &owner != user => {
                    candidate = ids::next_candidate(&candidate, suffix, nicklen);
                }
                _ => break,
            }
        }
        if let Err(e) = self.store.set_puppet(&cx.network, user, &candidate) {
            tracing::warn!(error = %e, "puppet nick not stored");
        }
        candidate
    }

    /// Decides where a delivery goes.
    fn plan(&self, cx: &AdapterContext, st: &State, d: &Delivery) -> Plan {
        let sender = &d.event.sender.user;
        let has_puppet = |u: &UserRef| st.puppets.contains_key(u);
        if sender.network.is_gateway() {
            return match &d.event.kind {
                EventKind::Kick { target, reason } | EventKind::Ban { target, reason } => {
                    if target.user.network == cx.network {
                        Plan::Bot(BotKind::Enforce)
                    } else if has_puppet(&target.user) {
                        Plan::Puppet(target.user.clone(), Action::Part(reason.clone()))
                    } else {
                        Plan::Answer(Ok(Vec::new()))
                    }
                }
                _ => Plan::Bot(BotKind::Own),
            };
        }
        let puppet_mode = self.config.mode == IrcMode::Puppet;
        let live = puppet_mode && has_puppet(sender);
        match &d.event.kind {
            EventKind::Redact { .. } | EventKind::Unreact { .. } => Plan::Answer(Ok(Vec::new())),
            EventKind::Message(_) | EventKind::Edit { .. } | EventKind::React { .. } => {
                let may_create = puppet_mode
                    && st.puppets.len() < self.config.max_puppets
                    && st.cooldown.get(sender).is_none_or(|t| *t <= Instant::now());
                if live || may_create {
                    Plan::Puppet(sender.clone(), Action::Speak)
                } else {
                    if puppet_mode {
                        tracing::debug!(network = %cx.network, user = %sender, puppets = st.puppets.len(), "IRC puppet not available; relayed by the bot");
                    }
                    Plan::Bot(BotKind::Relay)
                }
            }
            EventKind::Join if live => Plan::Puppet(sender.clone(), Action::Join),
            EventKind::Leave { reason, quit } if live => Plan::Puppet(
                sender.clone(),
                if *quit {
                    Action::Quit(reason.clone())
                } else {
                    Action::Part(reason.clone())
                },
            ),
            EventKind::NickChange { new_name } if live => {
                Plan::Puppet(sender.clone(), Action::Nick(new_name.clone()))
            }
            // The bot sets the topic with its own operator status only for a moderator of
            // the origin room; anyone else's topic becomes a line saying who set what.
            EventKind::Topic { .. } if d.event.by_moderator => Plan::Bot(BotKind::Topic),
            _ => Plan::Bot(BotKind::Own),
        }
    }

    /// Starts the puppet of `sender` unless it runs.
    fn ensure_puppet(
        &self,
        cx: &AdapterContext,
        st: &mut State,
        sender: &junction_core::Sender,
        isupport: &ISupport,
    ) {
        if st.puppets.contains_key(&sender.user) {
            return;
        }
        let tls = match self.tls() {
            Ok(t) => t.cloned(),
            Err(e) => {
                tracing::warn!(error = %e, "No puppet without its TLS setup.");
                return;
            }
        };
        let nick = self.nick_for(cx, sender, isupport.nicklen);
        st.next_gen += 1;
        let spec = puppets::Spec {
            user: sender.user.clone(),
            gen: st.next_gen,
            nick,
            suffix: ids::suffix_for(sender.user.network.0.as_str()),
            realname: format!(
                "{} ({} {})",
                sender.display_name, sender.user.network, sender.user.user
            ),
            server: self.config.server.clone(),
            tls,
            password: self.config.password.clone(),
            idle: self.config.puppet_idle_timeout,
            burst: self.config.burst,
            rate: self.config.lines_per_second,
            max_lines: self.config.max_lines,
            paste_url: self.config.paste_url.clone(),
            nicklen: isupport.nicklen,
        };
        let shared = puppets::Shared {
            network: cx.network.clone(),
            store: self.store.clone(),
            delivered: cx.delivered.clone(),
            reports: st.reports_tx.clone(),
            shutdown: cx.shutdown.clone(),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(puppets::run(spec, shared, rx));
        st.puppets.insert(
            sender.user.clone(),
            Handle {
                gen: st.next_gen,
                jobs: tx,
                nick: None,
            },
        );
    }

    /// Routes held deliveries as far as channel order allows.
    fn pump(&self, cx: &AdapterContext, st: &mut State, isupport: &ISupport) {
        if !st.ready {
            return;
        }
        let mut blocked: HashSet<String> = HashSet::new();
        let mut i = 0;
        while i < st.held.len() {
            let chan = isupport.fold(&st.held[i].target.room.0);
            if blocked.contains(&chan) {
                // Lines in this channel keep their order, but the puppets of the people
                // waiting connect meanwhile, all at once (registration takes about a second
                // on some servers; one at a time would make a burst of new speakers crawl).
                if i < PREPARE_AHEAD {
                    if let Plan::Puppet(u, Action::Speak) = self.plan(cx, st, &st.held[i]) {
                        if u == st.held[i].event.sender.user {
                            let sender = st.held[i].event.sender.clone();
                            self.ensure_puppet(cx, st, &sender, isupport);
                        }
                    }
                }
                i += 1;
                continue;
            }
            let plan = self.plan(cx, st, &st.held[i]);
            let key = match &plan {
                Plan::Bot(_) => Some(None),
                Plan::Puppet(u, _) => Some(Some(u.clone())),
                Plan::Answer(_) => None,
            };
            let free = match (&key, st.unwritten.get(&chan)) {
                (None, _) | (_, None) => true,
                (Some(k), Some((owner, _))) => k == owner,
            };
            if !free {
                // Let its puppet connect meanwhile, in parallel with the others.
                if let Plan::Puppet(u, Action::Speak) = &plan {
                    if u == &st.held[i].event.sender.user {
                        let sender = st.held[i].event.sender.clone();
                        self.ensure_puppet(cx, st, &sender, isupport);
                    }
                }
                blocked.insert(chan);
                i += 1;
                continue;
            }
            let Some(d) = st.held.remove(i) else { break };
            if let Some(k) = key {
                let e = st.unwritten.entry(chan).or_insert((k, 0));
                e.1 += 1;
            }
            match plan {
                Plan::Answer(outcome) => answer(cx, &d, outcome),
                Plan::Bot(kind) => queue_bot(cx, st, isupport, (d, kind, true)),
                Plan::Puppet(user, action) => {
                    if action == Action::Speak {
                        let sender = d.event.sender.clone();
                        self.ensure_puppet(cx, st, &sender, isupport);
                    }
                    let job = Job {
                        delivery: d,
                        action,
                    };
                    let refused = match st.puppets.get(&user) {
                        // Boxed: each puppet's queue allocates slots for 32 jobs at once.
                        Some(h) => h.jobs.send(Box::new(job)).err().map(|e| *e.0),
                        None => Some(job),
                    };
                    // The puppet is gone: the job is done another way.
                    if let Some(job) = refused {
                        let room = job.delivery.target.room.0.clone();
                        written(st, isupport, &room, &Some(user.clone()));
                        st.puppets.remove(&user);
                        self.orphan(cx, st, isupport, job);
                    }
                }
            }
        }
    }

    /// A puppet job nobody will do: messages go through the bot, the rest is done.
    fn orphan(&self, cx: &AdapterContext, st: &mut State, isupport: &ISupport, job: Job) {
        tracing::debug!(network = %cx.network, outbox = job.delivery.outbox_id, action = ?job.action, "IRC puppet job handed to the bot");
        if job.action == Action::Speak {
            queue_bot(cx, st, isupport, (job.delivery, BotKind::Relay, false));
        } else {
            answer(cx, &job.delivery, Ok(Vec::new()));
        }
    }

    fn on_report(&self, cx: &AdapterContext, st: &mut State, isupport: &ISupport, r: Report) {
        match r {
            Report::Up { user, gen, nick } | Report::Nick { user, gen, nick } => {
                let Some(h) = st.puppets.get_mut(&user).filter(|h| h.gen == gen) else {
                    return;
                };
                if let Some(old) = h.nick.replace(nick.clone()) {
                    st.live.remove(&isupport.fold(&old));
                }
                st.live.insert(isupport.fold(&nick), user.clone());
                if let Err(e) = self.store.set_puppet(&cx.network, &user, &nick) {
                    tracing::warn!(error = %e, "puppet nick not stored");
                }
            }
            Report::Written { user, channel } => {
                written(st, isupport, &channel, &Some(user));
            }
            Report::Reroute { delivery } => {
                queue_bot(cx, st, isupport, (*delivery, BotKind::Relay, false));
            }
            Report::Exit {
                user,
                gen,
                leftovers,
                failed,
            } => {
                if st.puppets.get(&user).is_some_and(|h| h.gen == gen) {
                    if let Some(h) = st.puppets.remove(&user) {
                        if let Some(n) = h.nick {
                            st.live.remove(&isupport.fold(&n));
                        }
                    }
                }
                if failed.is_some() {
                    st.cooldown
                        .insert(user.clone(), Instant::now() + PUPPET_COOLDOWN);
                }
                for (job, reported) in leftovers {
                    if !reported {
                        written(
                            st,
                            isupport,
                            &job.delivery.target.room.0,
                            &Some(user.clone()),
                        );
                    }
                    self.orphan(cx, st, isupport, job);
                }
            }
        }
        st.cooldown.retain(|_, t| *t > Instant::now());
    }

    /// Renders a delivery for the bot.
    fn bot_pending(
        &self,
        cx: &AdapterContext,
        s: &Session,
        roster: &Roster,
        (d, kind, gated): (Delivery, BotKind, bool),
    ) -> Pending {
        let mut fallback = Vec::new();
        let mut shown = s.nick.clone();
        let lines = match &kind {
            BotKind::Enforce => {
                let hosts = &roster.hosts;
                let isupport = &s.isupport;
                outbound::enforcement(&d, &cx.network, &|n| hosts.get(&isupport.fold(n)).cloned())
                    .unwrap_or_default()
            }
            BotKind::Topic => {
                fallback = self.render(cx, s, &d, None);
                match &d.event.kind {
                    EventKind::Topic { text } => {
                        let text = outbound::snippet(text);
                        vec![format!(
                            "TOPIC {} :{}",
                            d.target.room.0,
                            text.trim_end_matches('…')
                        )]
                    }
                    _ => Vec::new(),
                }
            }
            BotKind::Own => self.render(cx, s, &d, None),
            BotKind::Relay => {
                shown = self.nick_for(cx, &d.event.sender, s.isupport.nicklen);
                self.render(cx, s, &d, Some(&shown))
            }
        };
        let said = match kind {
            BotKind::Relay | BotKind::Own => lines.len(),
            _ => 0,
        };
        Pending {
            delivery: d,
            kind,
            gated,
            lines,
            said,
            shown,
            sent: 0,
            ping_sent: false,
            fallback,
            denied: None,
        }
    }

    fn render(
        &self,
        cx: &AdapterContext,
        s: &Session,
        d: &Delivery,
        relay_as: Option<&str>,
    ) -> Vec<String> {
        self.render_as(cx, s, d, &s.nick, relay_as)
    }

    /// Renders a delivery as the connection with nick `sender_nick` says it (the bot, or a
    /// puppet: the line budget depends on the nick).
    fn render_as(
        &self,
        cx: &AdapterContext,
        s: &Session,
        d: &Delivery,
        sender_nick: &str,
        relay_as: Option<&str>,
    ) -> Vec<String> {
        let store = self.store.as_ref();
        let network = &cx.network;
        let nick_of = |u: &UserRef| lookup::nick_of(store, network, u);
        let paste = self
            .config
            .paste_url
            .as_deref()
            .map(|base| paste::maker(store, base, d));
        outbound::render(
            d,
            &outbound::Render {
                channel: &d.target.room.0,
                sender_nick,
                relay_as,
                linelen: s.isupport.linelen,
                max_lines: self.config.max_lines,
                paste: paste.as_ref().map(|p| p as &outbound::PasteFn<'_>),
                quoted: lookup::quoted(store, network, d),
                nick_of: &nick_of,
            },
        )
    }

    /// Says in the log what may not be seen: lines said in the channels since the bot last
    /// read them reach the other networks only where a channel replays its history on join
    /// (InspIRCd `+H`); elsewhere they are gone. The gateway never pretends otherwise.
    /// Returns when the bot last read the channels (ms since the epoch), if ever.
    fn report_history_gap(
        &self,
        cx: &AdapterContext,
        s: &Session,
        rooms: &[junction_core::RoomId],
    ) -> Option<u64> {
        let history = offers_chathistory(s);
        let last = self
            .store
            .kv_get(SEEN_TABLE, cx.network.as_str())
            .ok()
            .flatten()
            .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
            .map(u64::from_be_bytes);
        let channels: Vec<&str> = rooms.iter().map(|r| r.0.as_str()).collect();
        match last {
            Some(ms) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(ms);
                let gap_s = now.saturating_sub(ms) / 1000;
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

    /// Remembers how far the bot has read the channels (for the gap report and the replay):
    /// now, or the time of the first line passed on and not (yet) stored.
    fn mark_seen(&self, network: &junction_core::NetworkId) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let now = self.read.read_until(now);
        if let Err(e) = self
            .store
            .kv_put(SEEN_TABLE, network.as_str(), &now.to_be_bytes())
        {
            tracing::debug!(error = %e, "Could not note when the channels were last read.");
        }
    }

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
        for line in chathistory_requests(&s, &rooms, since) {
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
                        written(st, &s.isupport, &room, &None);
                        self.pump(cx, st, &s.isupport);
                    }
                }
            }
            tokio::select! {
                biased;
                _ = cx.shutdown.cancelled() => {
                    let _ = s.writer.send("QUIT :gateway shutting down").await;
                    return End::Shutdown;
                }
                msg = s.reader.next() => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return End::Lost("server closed the connection".into()),
                        Err(e) => return End::Lost(e.to_string()),
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
                        if let Some(why) = refusal(&msg) {
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
                        self.mark_seen(&cx.network);
                        marked = Some(std::time::Instant::now());
                    }
                }
                report = st.reports.recv() => {
                    if let Some(r) = report {
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
                _ = tokio::time::sleep(bucket.ready_in(tokio::time::Instant::now(), REPLY_TOKENS)), if !reply_queue.is_empty() => {
                    // As many lines as the bucket spares now (an answer goes out together).
                    while let Some(line) = reply_queue.pop() {
                        bucket.take(tokio::time::Instant::now());
                        if let Err(e) = s.writer.send(&line).await {
                            return End::Lost(e.to_string());
                        }
                        if !bucket.ready_in(tokio::time::Instant::now(), REPLY_TOKENS).is_zero() {
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
                    self.pump(cx, st, &s.isupport);
                }
            }
        }
    }

    /// Answers a bot delivery whose lines are proven sent.
    fn finish(&self, cx: &AdapterContext, p: Pending) {
        self.answer_said(cx, &p.delivery, p.said, &p.shown, p.denied);
    }

    /// Answers a delivery whose `said` lines are on IRC under `shown` (or refused: `denied`),
    /// and remembers its words for quotes.
    fn answer_said(
        &self,
        cx: &AdapterContext,
        d: &Delivery,
        said: usize,
        shown: &str,
        denied: Option<String>,
    ) {
        let outcome = match denied {
            Some(why) => Err(why),
            None => Ok((0..said)
                .map(|i| MessageId::new(format!("{}.{i}", d.outbox_id)))
                .collect::<Vec<_>>()),
        };
        if let (Ok(ids), Some(text)) = (&outcome, lookup::quotable(d)) {
            if let Some(first) = ids.first() {
                lookup::remember(self.store.as_ref(), &cx.network, first, shown, &text);
            }
        }
        answer(cx, d, outcome);
    }

    /// With `channel_history`: the `MODE #channel` query that starts turning history on in
    /// `room`, unless one is already awaiting its answer.
    fn ask_modes(&self, s: &Session, modes: &mut HistoryModes, room: &str) -> Option<String> {
        self.config.channel_history.as_ref()?;
        modes
            .asked
            .insert(s.isupport.fold(room))
            .then(|| format!("MODE {room}"))
    }

    /// With `channel_history`: reads the answers to the bot's `MODE #channel` queries and
    /// to its `+H`, and returns the `MODE #channel +H <spec>` to send for a channel without
    /// history.
    fn on_history_mode(
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

    /// Whether `nick` (as the server wrote it) is the bot or one of our puppets, connected
    /// or not. The store keeps puppet nicks as the server gave them, so it is asked with the
    /// nick unfolded (under rfc1459, `alice[m]` folds to `alice{m}`).
    fn is_ours(&self, cx: &AdapterContext, s: &Session, st: &State, nick: &str) -> bool {
        let folded = s.isupport.fold(nick);
        folded == s.isupport.fold(&s.nick)
            || st.live.contains_key(&folded)
            || self
                .store
                .puppet_owner(&cx.network, nick)
                .ok()
                .flatten()
                .is_some()
    }

    /// The bot's JOINs are answered: deliveries that the replayed history shows already said
    /// are answered as delivered, and the rest may go. Waiting deliveries are checked on the
    /// first connection only (see `State::resumed`); the bot's own unconfirmed delivery
    /// whenever some of its lines went out before the connection dropped.
    fn joined(
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
                        written(st, &s.isupport, &p.delivery.target.room.0, &None);
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
        if let Ok(Some(nick)) = self.store.puppet(&cx.network, &d.event.sender.user) {
            let lines = self.render_as(cx, s, d, &nick, None);
            let texts = said_texts(&lines);
            if replay.take(&chan, &s.isupport.fold(&nick), &texts, d.event.ts_ms) {
                return Some((lines.len(), nick));
            }
        }
        let shown = self.nick_for(cx, &d.event.sender, s.isupport.nicklen);
        let lines = self.render(cx, s, d, Some(&shown));
        let texts = said_texts(&lines);
        let bot = s.isupport.fold(&s.nick);
        replay
            .take(&chan, &bot, &texts, d.event.ts_ms)
            .then_some((lines.len(), shown))
    }

    async fn on_message(
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
            let time = inbound::tag(&msg, "time")
                .and_then(inbound::parse_server_time)
                .unwrap_or(0);
            if self.is_ours(cx, s, st, nick) {
                replay.push_own(&chan, &s.isupport.fold(nick), text, time);
                return Ok(());
            }
            // Someone else's: relayed when said after the bot last read the channel (less a
            // margin) and named by a msgid, so a line relayed before is known and skipped.
            let fresh = replay.relays(&chan)
                && since.is_some_and(|t| time.saturating_add(BACKFILL_MARGIN_MS) >= t);
            if !fresh || inbound::tag(&msg, "msgid").is_none() {
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
                    self.command(cx, &msg, text, &st.reply_tx);
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
            inbound::map(
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
                &|n| self.is_ours(cx, s, st, n),
                &|n| {
                    let folded = isupport.fold(n);
                    if let Some(u) = live.get(&folded) {
                        return Some(u.clone());
                    }
                    if let Ok(Some(u)) = self.store.puppet_owner(network, n) {
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
                    self.store.as_ref(),
                    &cx.network,
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

    /// A private message to the bot: a command for the gateway. The answer is awaited in its
    /// own task (the connection never waits) and comes back on `reply_tx`.
    fn command(
        &self,
        cx: &AdapterContext,
        msg: &irc_proto::Message,
        text: &str,
        reply_tx: &mpsc::UnboundedSender<Reply>,
    ) {
        let Some(nick) = msg.source_nickname() else {
            return;
        };
        let Some(text) = commands::command_text(text) else {
            return;
        };
        let from = commands::identities(&cx.network, msg);
        if from.is_empty() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = junction_core::Command {
            from,
            display_name: nick.to_owned(),
            text: text.to_owned(),
            reply: tx,
        };
        let commands = cx.commands.clone();
        let reply_tx = reply_tx.clone();
        let nick = nick.to_owned();
        tokio::spawn(async move {
            let answer = async {
                commands.send(command).await.ok()?;
                rx.await.ok()
            };
            let text = match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
                Ok(Some(text)) => text,
                Ok(None) => "The gateway does not take commands here.".to_owned(),
                Err(_) => "No answer from the gateway in time.".to_owned(),
            };
            // An empty answer: the command was ignored (its sender is over the rate limit).
            if !text.trim().is_empty() {
                let _ = reply_tx.send((nick, text));
            }
        });
    }
}

/// Most lines asked for per channel with CHATHISTORY.
const CHATHISTORY_LIMIT: usize = 500;

/// Whether the server offers IRCv3 chathistory on this connection.
fn offers_chathistory(s: &Session) -> bool {
    s.caps
        .iter()
        .any(|c| c == "chathistory" || c == "draft/chathistory")
}

/// `CHATHISTORY AFTER` requests for what was said in `rooms` since the bot last read them
/// (less the backfill margin), when the server offers IRCv3 chathistory; none on a first
/// connection (nothing said before it is relayed).
fn chathistory_requests(
    s: &Session,
    rooms: &[junction_core::RoomId],
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
fn said_texts(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| history::said_text(l))
        .map(str::to_owned)
        .collect()
}

/// One delivery of `channel` routed to `owner` is written: the gate opens when none is left.
fn written(st: &mut State, isupport: &ISupport, channel: &str, owner: &Option<UserRef>) {
    let chan = isupport.fold(channel);
    if let Some((o, n)) = st.unwritten.get_mut(&chan) {
        if o == owner {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.unwritten.remove(&chan);
            }
        }
    }
}

/// Queues a delivery for the bot. What people said is refused past the channel's bound
/// ([`MAX_QUEUED_PER_CHANNEL`]) and given up (the gateway counts it as failed), logged once
/// per burst; the gateway's own words, enforcement and topics are always queued.
fn queue_bot(
    cx: &AdapterContext,
    st: &mut State,
    isupport: &ISupport,
    item: (Delivery, BotKind, bool),
) {
    let channel = isupport.fold(&item.0.target.room.0);
    let bounded = !item.0.event.sender.user.network.is_gateway()
        && matches!(item.1, BotKind::Relay | BotKind::Own);
    if !bounded {
        st.bot_queue.push_always(&channel, item);
        return;
    }
    match st.bot_queue.push(&channel, item) {
        Push::Queued => {}
        Push::QueuedAfter(refused) => {
            tracing::info!(network = %cx.network, channel = %channel, refused, "The bot's queue for an IRC channel has room again.");
        }
        Push::Full {
            item: (d, _, gated),
            first,
        } => {
            if first {
                tracing::warn!(network = %cx.network, channel = %channel, queued = MAX_QUEUED_PER_CHANNEL, "The bot's queue for an IRC channel is full: lines for it are given up until it drains.");
            }
            if gated {
                written(st, isupport, &d.target.room.0, &None);
            }
            answer(
                cx,
                &d,
                Err(format!(
                    "the IRC bot's queue for {channel} is full ({MAX_QUEUED_PER_CHANNEL} waiting)"
                )),
            );
        }
    }
}

fn answer(cx: &AdapterContext, d: &Delivery, outcome: Result<Vec<MessageId>, String>) {
    let _ = cx.delivered.send(Delivered {
        outbox_id: d.outbox_id,
        target: d.target.clone(),
        event: d.event.id.clone(),
        outcome,
    });
}

/// How long a command may take before its sender is told there was no answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The server refusing a KICK/MODE/TOPIC the bot sent: not an operator, no such nick...
fn refusal(msg: &irc_proto::Message) -> Option<String> {
    let Command::Response(r, args) = &msg.command else {
        return None;
    };
    let why = args.last().cloned().unwrap_or_default();
    match r {
        Response::ERR_CHANOPRIVSNEEDED => {
            Some(format!("the IRC bot is not a channel operator ({why})"))
        }
        Response::ERR_NOSUCHNICK | Response::ERR_USERNOTINCHANNEL | Response::ERR_NOTONCHANNEL => {
            Some(format!("not possible on IRC: {why}"))
        }
        _ => None,
    }
}

impl Adapter for IrcAdapter {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            edits: false,
            redactions: false,
            reactions: false,
            replies: false,
            uploads: false,
            markup: Markup::IrcCodes,
            max_message_bytes: Some(400),
        }
    }

    async fn run(self, mut cx: AdapterContext) -> Result<(), AdapterError> {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        let (reply_tx, replies) = mpsc::unbounded_channel();
        let mut st = State {
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
        };
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
    use crate::test_store::TestStore;
    use junction_core::format::RichText;
    use junction_core::{
        BridgeName, Event, EventKind, Message, MessageKind, NetworkId, RoomId, RoomRef, Sender,
        UserRef,
    };
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, watch};
    use tokio_util::sync::CancellationToken;

    fn delivery(outbox_id: u64, text: &str) -> Delivery {
        Delivery {
            outbox_id,
            bridge: BridgeName::new("lobby"),
            target: RoomRef::new("irc:fake", "#t"),
            event: Event::new(
                RoomRef::new("matrix", "#lobby:matrix.test"),
                MessageId::new(format!("$e{outbox_id}")),
                Sender::new(UserRef::new("matrix", "@alice:matrix.test"), "alice"),
                0,
                EventKind::Message(Message {
                    kind: MessageKind::Text,
                    body: RichText::plain(text),
                    reply_to: None,
                    attachments: Vec::new(),
                }),
            ),
            reply_to: Vec::new(),
            target_ids: Vec::new(),
        }
    }

    /// Accepts one connection, registers it like an old server (no CAP), and passes every
    /// line it receives to `lines`; closes the connection when `close` fires.
    async fn serve_one(
        listener: &TcpListener,
        lines: mpsc::UnboundedSender<String>,
        close: tokio::sync::oneshot::Receiver<()>,
    ) {
        let (sock, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r).lines();
            let mut close = close;
            loop {
                tokio::select! {
                    _ = &mut close => return,
                    line = r.next_line() => {
                        let Ok(Some(line)) = line else { return };
                        if let Some(token) = line.strip_prefix("PING ") {
                            let _ = w.write_all(format!(":fake PONG fake {token}\r\n").as_bytes()).await;
                        }
                        if line.starts_with("NICK ") {
                            let _ = w
                                .write_all(b":fake 001 junction :hi\r\n:fake 005 junction NICKLEN=9 :ok\r\n:fake 376 junction :end\r\n")
                                .await;
                        }
                        let _ = lines.send(line);
                    }
                }
            }
        });
    }

    async fn expect_line(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
        let deadline = Duration::from_secs(30);
        let found = tokio::time::timeout(deadline, async {
            while let Some(l) = rx.recv().await {
                if l == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "line {want:?} never arrived");
    }

    #[tokio::test]
    async fn reconnects_and_sends_what_was_queued_while_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut cfg = IrcConfig::new("fake", addr.to_string(), "junction");
        cfg.mode = IrcMode::Relay;
        let adapter = IrcAdapter::new(cfg, Arc::new(TestStore::default()));
        let (in_tx, _in_rx) = mpsc::channel(16);
        let (d_tx, d_rx) = mpsc::channel(16);
        let (ok_tx, mut ok_rx) = mpsc::unbounded_channel();
        let (_rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new("#t")]);
        let shutdown = CancellationToken::new();
        let cx = AdapterContext::standalone(
            junction_store::scoped(
                Arc::new(junction_store::MemStore::new()),
                NetworkId::new("irc:fake"),
            ),
            in_tx,
            d_rx,
            ok_tx,
            rooms_rx,
            shutdown.clone(),
        );
        let task = tokio::spawn(adapter.run(cx));

        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let (close1, close1_rx) = tokio::sync::oneshot::channel();
        serve_one(&listener, lines_tx.clone(), close1_rx).await;
        expect_line(&mut lines, "JOIN #t").await;
        d_tx.send(delivery(1, "one")).await.expect("send");
        expect_line(&mut lines, "PRIVMSG #t :<alice[m]> one").await;
        let ok = tokio::time::timeout(Duration::from_secs(30), ok_rx.recv())
            .await
            .expect("answered")
            .expect("open");
        assert_eq!(ok.outbox_id, 1);
        assert_eq!(ok.outcome, Ok(vec![MessageId::new("1.0")]));

        // The server drops us; a delivery made meanwhile waits and goes out after reconnect.
        let _ = close1.send(());
        d_tx.send(delivery(2, "two")).await.expect("send");
        let (_close2, close2_rx) = tokio::sync::oneshot::channel();
        serve_one(&listener, lines_tx.clone(), close2_rx).await;
        expect_line(&mut lines, "JOIN #t").await;
        expect_line(&mut lines, "PRIVMSG #t :<alice[m]> two").await;
        let ok = tokio::time::timeout(Duration::from_secs(30), ok_rx.recv())
            .await
            .expect("answered")
            .expect("open");
        assert_eq!(ok.outbox_id, 2);

        shutdown.cancel();
        let res = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops");
        assert!(matches!(res, Ok(Ok(()))));
    }

    /// Like `serve_one`, but the fake server also answers: `respond` maps each line it gets to
    /// lines it sends back.
    async fn serve_scripted(
        listener: &TcpListener,
        lines: mpsc::UnboundedSender<String>,
        respond: fn(&str) -> Vec<String>,
    ) {
        let (sock, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if let Some(token) = line.strip_prefix("PING ") {
                    let _ = w
                        .write_all(format!(":fake PONG fake {token}\r\n").as_bytes())
                        .await;
                }
                if let Some(nick) = line.strip_prefix("NICK ") {
                    let _ = w
                        .write_all(format!(":fake 001 {nick} :hi\r\n:fake 005 {nick} NICKLEN=9 :ok\r\n:fake 376 {nick} :end\r\n").as_bytes())
                        .await;
                }
                for out in respond(&line) {
                    let _ = w.write_all(format!("{out}\r\n").as_bytes()).await;
                }
                let _ = lines.send(line);
            }
        });
    }

    struct Harness {
        deliveries: mpsc::Sender<Delivery>,
        delivered: mpsc::UnboundedReceiver<Delivered>,
        commands: mpsc::Receiver<junction_core::Command>,
        status: watch::Receiver<NetworkStatus>,
        shutdown: CancellationToken,
        _rooms: watch::Sender<Vec<RoomId>>,
        _inbound: mpsc::Receiver<Inbound>,
    }

    fn harness(addr: std::net::SocketAddr, mode: IrcMode) -> Harness {
        harness_with(addr, mode, Arc::new(TestStore::default()))
    }

    fn harness_with(addr: std::net::SocketAddr, mode: IrcMode, store: Arc<dyn Store>) -> Harness {
        let mut cfg = IrcConfig::new("fake", addr.to_string(), "junction");
        cfg.mode = mode;
        let adapter = IrcAdapter::new(cfg, store);
        let (in_tx, in_rx) = mpsc::channel(16);
        let (d_tx, d_rx) = mpsc::channel(16);
        let (ok_tx, ok_rx) = mpsc::unbounded_channel();
        let (rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new("#t")]);
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let (status_tx, status_rx) = watch::channel(NetworkStatus::Connecting);
        let shutdown = CancellationToken::new();
        let cx = AdapterContext {
            network: NetworkId::new("irc:fake"),
            inbound: in_tx,
            deliveries: d_rx,
            delivered: ok_tx,
            rooms: rooms_rx,
            shutdown: shutdown.clone(),
            commands: cmd_tx,
            status: status_tx,
            puppets: tokio::sync::watch::channel(0).0,
            store: junction_store::scoped(
                Arc::new(junction_store::MemStore::new()),
                NetworkId::new("irc:fake"),
            ),
            pastes: None,
        };
        tokio::spawn(adapter.run(cx));
        Harness {
            deliveries: d_tx,
            delivered: ok_rx,
            commands: cmd_rx,
            status: status_rx,
            shutdown,
            _rooms: rooms_tx,
            _inbound: in_rx,
        }
    }

    #[tokio::test]
    async fn a_long_message_goes_out_cut_with_a_link_to_its_whole_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut cfg = IrcConfig::new(
            "fake",
            listener.local_addr().expect("addr").to_string(),
            "junction",
        );
        cfg.mode = IrcMode::Relay;
        cfg.max_lines = 3;
        cfg.paste_url = Some("https://chat.example.org/paste".into());
        let store = Arc::new(TestStore::default());
        let adapter = IrcAdapter::new(cfg, store.clone());
        let (in_tx, _in_rx) = mpsc::channel(16);
        let (d_tx, d_rx) = mpsc::channel(16);
        let (ok_tx, mut ok_rx) = mpsc::unbounded_channel();
        let (_rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new("#t")]);
        let shutdown = CancellationToken::new();
        let cx = AdapterContext::standalone(
            junction_store::scoped(
                Arc::new(junction_store::MemStore::new()),
                NetworkId::new("irc:fake"),
            ),
            in_tx,
            d_rx,
            ok_tx,
            rooms_rx,
            shutdown.clone(),
        );
        tokio::spawn(adapter.run(cx));
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let (_close, close_rx) = tokio::sync::oneshot::channel();
        serve_one(&listener, lines_tx, close_rx).await;
        expect_line(&mut lines, "JOIN #t").await;
        let text = (1..=8)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        d_tx.send(delivery(1, &text)).await.expect("send");
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
        let paste = crate::paste::get(store.as_ref(), id, junction_core::clock::now_ms())
            .expect("store")
            .expect("the paste");
        assert_eq!(paste.text, text);
        let ok = tokio::time::timeout(Duration::from_secs(30), ok_rx.recv())
            .await
            .expect("answered")
            .expect("open");
        assert_eq!(ok.outbox_id, 1);
        shutdown.cancel();
    }

    /// The next answer to a delivery.
    async fn answered(h: &mut Harness) -> Delivered {
        tokio::time::timeout(Duration::from_secs(30), h.delivered.recv())
            .await
            .expect("answered")
            .expect("open")
    }

    /// The lines received so far.
    fn drain(lines: &mut mpsc::UnboundedReceiver<String>) -> Vec<String> {
        let mut said = Vec::new();
        while let Ok(l) = lines.try_recv() {
            said.push(l);
        }
        said
    }

    /// How many of the lines received so far are `want`, and all of them.
    fn count_said(lines: &mut mpsc::UnboundedReceiver<String>, want: &str) -> (usize, Vec<String>) {
        let said = drain(lines);
        (said.iter().filter(|l| *l == want).count(), said)
    }

    /// `#t`'s history as the server replays it on join: `lines` (tags, then the message) in
    /// one `chathistory` batch.
    fn history_of_t(lines: &[&str]) -> Vec<String> {
        let mut out = vec![":fake BATCH +h1 chathistory #t".to_owned()];
        out.extend(lines.iter().map(|l| format!("@batch=h1;{l}")));
        out.push(":fake BATCH -h1".to_owned());
        out
    }

    /// After an unclean stop, a delivery the channel's replayed history already shows is
    /// answered as delivered and not said again; a later equal line is said; someone
    /// else's replayed line is not relayed on the first connection to a network.
    #[tokio::test]
    async fn a_delivery_found_in_the_replayed_history_is_not_said_again() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut h = harness(listener.local_addr().expect("addr"), IrcMode::Relay);
        h.deliveries.send(delivery(1, "one")).await.expect("queued");
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, lines_tx, |line| {
            if line == "JOIN #t" {
                history_of_t(&[
                    "time=2026-01-01T00:00:00.000Z;msgid=m1 :bob!b@h PRIVMSG #t :earlier",
                    "time=2026-01-01T00:00:01.000Z;msgid=m2 :junction!j@h PRIVMSG #t :<alice[m]> one",
                ])
            } else {
                Vec::new()
            }
        })
        .await;
        let ok = answered(&mut h).await;
        assert_eq!(ok.outbox_id, 1);
        assert_eq!(ok.outcome, Ok(vec![MessageId::new("1.0")]));
        h.deliveries.send(delivery(2, "one")).await.expect("queued");
        let ok = answered(&mut h).await;
        assert_eq!(ok.outbox_id, 2);
        let (ones, said) = count_said(&mut lines, "PRIVMSG #t :<alice[m]> one");
        assert_eq!(ones, 1, "{said:?}");
        assert!(
            h._inbound.try_recv().is_err(),
            "nothing relayed on a first connection"
        );
        h.shutdown.cancel();
    }

    /// A server offering IRCv3 chathistory is asked for what was said since the bot last read
    /// the channel (less the margin), and the lines it returns are relayed.
    #[tokio::test]
    async fn chathistory_is_asked_for_what_was_missed_and_relayed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let store: Arc<dyn Store> = Arc::new(TestStore::default());
        let last_read: u64 = 1_790_000_000_000;
        store
            .kv_put(SEEN_TABLE, "irc:fake", &last_read.to_be_bytes())
            .expect("stored");
        let h = harness_with(listener.local_addr().expect("addr"), IrcMode::Relay, store);
        let (lines_tx, mut lines) = mpsc::unbounded_channel::<String>();
        let (sock, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(line)) = r.next_line().await {
                let out: Vec<String> = if line == "CAP LS 302" {
                    vec![":fake CAP * LS :batch server-time message-tags draft/chathistory".into()]
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
        let mut inbound_rx = h._inbound;
        let ev = tokio::time::timeout(Duration::from_secs(30), inbound_rx.recv())
            .await
            .expect("relayed in time")
            .expect("an event");
        assert_eq!(ev.event.remote_id, MessageId::new("x1"));
        assert!(matches!(&ev.event.kind, EventKind::Message(m) if m.body.to_plain() == "missed"));
        h.shutdown.cancel();
    }

    /// After a reconnect (not a restart), a waiting delivery was never said by anyone, so an
    /// equal replayed line (the same person said the same words before) does not stop it.
    #[tokio::test]
    async fn after_a_reconnect_an_equal_replayed_line_does_not_stop_a_new_delivery() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static JOINS: AtomicUsize = AtomicUsize::new(0);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut h = harness(listener.local_addr().expect("addr"), IrcMode::Relay);
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
        let store: Arc<dyn Store> = Arc::new(TestStore::default());
        store
            .set_puppet(
                &NetworkId::new("irc:fake"),
                &UserRef::new("matrix", "@alice:matrix.test"),
                "Alice[m]",
            )
            .expect("stored");
        let mut h = harness_with(listener.local_addr().expect("addr"), IrcMode::Puppet, store);
        h.deliveries.send(delivery(1, "one")).await.expect("queued");
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, lines_tx, |line| {
            if line == "JOIN #t" {
                history_of_t(&[
                    "time=2026-01-01T00:00:01.000Z;msgid=m2 :Alice[m]!a@h PRIVMSG #t :one",
                ])
            } else {
                Vec::new()
            }
        })
        .await;
        let ok = answered(&mut h).await;
        assert_eq!(ok.outbox_id, 1);
        assert_eq!(ok.outcome, Ok(vec![MessageId::new("1.0")]));
        let said = drain(&mut lines);
        assert!(!said.iter().any(|l| l.contains(":one")), "{said:?}");
        assert!(
            h._inbound.try_recv().is_err(),
            "our own line is not relayed"
        );
        h.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_private_message_to_the_bot_is_a_command_answered_by_notice() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut h = harness(listener.local_addr().expect("addr"), IrcMode::Relay);
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

    #[tokio::test]
    async fn gateway_kicks_are_carried_out_and_fail_without_op() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut h = harness(listener.local_addr().expect("addr"), IrcMode::Puppet);
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, lines_tx, |line| {
            if line.starts_with("KICK #t troll") {
                vec![":fake 482 junction #t :You're not a channel operator".to_owned()]
            } else {
                Vec::new()
            }
        })
        .await;
        expect_line(&mut lines, "JOIN #t").await;
        let mut d = delivery(5, "");
        d.event.sender = Sender::new(UserRef::new(NetworkId::gateway(), "gateway"), "gateway");
        d.event.kind = EventKind::Ban {
            target: Sender::new(UserRef::new("irc:fake", "troll!~t@bad.test"), "troll"),
            reason: Some("spam".into()),
        };
        h.deliveries.send(d).await.expect("send");
        expect_line(&mut lines, "MODE #t +b *!*@bad.test").await;
        expect_line(&mut lines, "KICK #t troll :spam").await;
        let ok = tokio::time::timeout(Duration::from_secs(30), h.delivered.recv())
            .await
            .expect("answered")
            .expect("open");
        assert!(
            matches!(&ok.outcome, Err(why) if why.contains("operator")),
            "{ok:?}"
        );
        // A notice from the gateway is said by the bot itself, without a relay prefix.
        let mut d = delivery(6, "maintenance at noon");
        d.event.sender = Sender::new(UserRef::new(NetworkId::gateway(), "gateway"), "gateway");
        h.deliveries.send(d).await.expect("send");
        expect_line(&mut lines, "PRIVMSG #t :maintenance at noon").await;
        h.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_remote_user_speaks_through_their_own_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut h = harness(listener.local_addr().expect("addr"), IrcMode::Puppet);
        let (bot_tx, mut bot_lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, bot_tx, |_| Vec::new()).await;
        expect_line(&mut bot_lines, "JOIN #t").await;
        h.deliveries.send(delivery(1, "hi")).await.expect("send");
        let (p_tx, mut p_lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, p_tx, |_| Vec::new()).await;
        expect_line(&mut p_lines, "NICK alice[m]").await;
        expect_line(&mut p_lines, "JOIN #t").await;
        expect_line(&mut p_lines, "PRIVMSG #t :hi").await;
        let ok = tokio::time::timeout(Duration::from_secs(30), h.delivered.recv())
            .await
            .expect("answered")
            .expect("open");
        assert_eq!(ok.outcome, Ok(vec![MessageId::new("1.0")]));
        // The same user's next message and their leaving go through the same connection.
        h.deliveries.send(delivery(2, "again")).await.expect("send");
        expect_line(&mut p_lines, "PRIVMSG #t :again").await;
        let mut leave = delivery(3, "");
        leave.event.kind = EventKind::Leave {
            reason: Some("bye".into()),
            quit: false,
        };
        h.deliveries.send(leave).await.expect("send");
        expect_line(&mut p_lines, "PART #t :bye").await;
        for want in [2, 3] {
            let ok = tokio::time::timeout(Duration::from_secs(30), h.delivered.recv())
                .await
                .expect("answered")
                .expect("open");
            assert_eq!(ok.outbox_id, want);
        }
        h.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_puppet_that_can_not_connect_is_relayed_by_the_bot() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut h = harness(listener.local_addr().expect("addr"), IrcMode::Puppet);
        let (bot_tx, mut bot_lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, bot_tx, |_| Vec::new()).await;
        expect_line(&mut bot_lines, "JOIN #t").await;
        h.deliveries.send(delivery(1, "hi")).await.expect("send");
        // The puppet's connection is accepted and closed at once.
        let (sock, _) = listener.accept().await.expect("accept");
        drop(sock);
        expect_line(&mut bot_lines, "PRIVMSG #t :<alice[m]> hi").await;
        let ok = tokio::time::timeout(Duration::from_secs(30), h.delivered.recv())
            .await
            .expect("answered")
            .expect("open");
        assert_eq!(ok.outbox_id, 1);
        h.shutdown.cancel();
    }
}
