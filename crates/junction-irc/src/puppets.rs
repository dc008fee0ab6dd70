//! Puppet connections: in `puppet` mode, one IRC connection per remote user who speaks.
//!
//! A puppet is a task that owns one connection and a queue of jobs (say this message, join,
//! part, quit, change nick) in outbox order. It holds no channel roster: besides PING, errors
//! and the replies to its own commands, everything the server sends it is ignored (only the
//! bot observes channels), so memory does not grow with users × channel members. It joins a
//! channel right before it first speaks there, answers each delivery only once a PING sent
//! after its lines came back (the same proof the bot uses), reconnects once after a lost
//! connection, and quits after the idle timeout. When it can not connect, or the channel
//! refuses it, its jobs go back to the adapter, which relays them through the bot.
//!
//! The adapter's side is here too: starting a puppet (its `Handle`), taking its reports, and
//! handing a job nobody will do to the bot.

use crate::adapter::{IrcAdapter, State};
use crate::bucket::Bucket;
use crate::connection::{self, Registration, Session};
use crate::deliver::{self, BotKind};
use crate::isupport::ISupport;
use crate::mailbox::{mailbox, MailReceiver, MailSender};
use crate::outbound::{self, Voice};
use crate::{ids, lookup};
use irc_proto::{Command, Message, Response};
use junction_core::{
    AdapterContext, AdapterStore, Delivered, Delivery, MessageId, NetworkId, Pastes, Secret,
    Sender, UserRef,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a puppet is asked to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Render the event (message, emote, edit, reaction) as this puppet.
    Speak,
    /// Join the target channel.
    Join,
    /// Leave the target channel.
    Part(Option<String>),
    /// Disconnect.
    Quit(Option<String>),
    /// Take this display name (sanitised, with the network suffix).
    Nick(String),
}

/// One delivery for a puppet.
#[derive(Debug)]
pub struct Job {
    /// The delivery, answered by the puppet unless handed back.
    pub delivery: Delivery,
    /// What to do.
    pub action: Action,
}

/// What a puppet tells the adapter.
#[derive(Debug)]
pub enum Report {
    /// Registered under `nick`.
    Up {
        /// Whose puppet.
        user: UserRef,
        /// Which incarnation.
        gen: u64,
        /// The nick the server gave.
        nick: String,
    },
    /// The nick changed.
    Nick {
        /// Whose puppet.
        user: UserRef,
        /// Which incarnation.
        gen: u64,
        /// The new nick.
        nick: String,
    },
    /// A job's lines are written to the connection (the next job in that channel may go).
    Written {
        /// Whose puppet.
        user: UserRef,
        /// The wire channel.
        channel: String,
    },
    /// The channel refused the puppet's lines: send this through the bot instead.
    Reroute {
        /// The delivery.
        delivery: Box<Delivery>,
    },
    /// Someone sent the puppet a private message.
    Private {
        /// Whose puppet.
        user: UserRef,
        /// The PRIVMSG.
        msg: Box<irc_proto::Message>,
    },
    /// The puppet is gone (idle, quit, or could not connect); `leftovers` were not answered
    /// (with whether their `Written` was reported).
    Exit {
        /// Whose puppet.
        user: UserRef,
        /// Which incarnation.
        gen: u64,
        /// Jobs not answered.
        leftovers: Vec<(Job, bool)>,
        /// Why it could not go on, when it failed.
        failed: Option<String>,
    },
}

/// Everything a puppet needs to know to connect.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The remote user it shows.
    pub user: UserRef,
    /// Incarnation number, so reports of an old puppet of the same user are told apart.
    pub gen: u64,
    /// The nick to ask for.
    pub nick: String,
    /// The network suffix (`[m]`, `[x]`), kept when the nick must change.
    pub suffix: &'static str,
    /// Real name shown in WHOIS.
    pub realname: String,
    /// `host:port`.
    pub server: String,
    /// TLS setup, when the network uses TLS.
    pub tls: Option<crate::tls::Tls>,
    /// Server password.
    pub password: Option<Secret>,
    /// Quit after this long without a job.
    pub idle: Duration,
    /// Token bucket burst.
    pub burst: u32,
    /// Token bucket rate.
    pub rate: f64,
    /// Most lines per message.
    pub max_lines: usize,
    /// The server's NICKLEN as the bot learned it.
    pub nicklen: usize,
}

/// The adapter's side: where answers and reports go.
#[derive(Clone)]
pub struct Shared {
    /// The IRC network.
    pub network: NetworkId,
    /// Nicks, quotes.
    pub store: Arc<dyn AdapterStore>,
    /// Where the whole text of a longer message is kept and linked, if anywhere.
    pub pastes: Option<Arc<dyn Pastes>>,
    /// Answers to deliveries.
    pub delivered: mpsc::UnboundedSender<Delivered>,
    /// Reports to the adapter.
    pub reports: mpsc::UnboundedSender<Report>,
    /// Gateway shutdown.
    pub shutdown: CancellationToken,
}

/// A job being worked on: `reported` once its `Written` went out.
struct Work {
    /// Boxed: a job carries its whole delivery, and the queue of an idle puppet keeps its
    /// room for a few of them.
    job: Box<Job>,
    reported: bool,
    /// Set once the lines and the PING are written.
    token: Option<String>,
    /// Lines of the message itself (their ids answer the delivery).
    said: usize,
    /// The channel refused our lines.
    denied: bool,
}

/// Why a puppet's connection ended.
enum End {
    Shutdown,
    /// It quit: idle, or its work is done.
    Done,
    Lost(String),
}

impl From<connection::End> for End {
    fn from(end: connection::End) -> Self {
        match end {
            connection::End::Shutdown => End::Shutdown,
            connection::End::Lost(why) => End::Lost(why),
        }
    }
}

/// Most jobs written and awaiting their PING's answer at once.
const IN_FLIGHT: usize = 8;
/// Reconnect attempts after a lost connection before the jobs go to the bot.
const RECONNECTS: u32 = 1;

/// Runs one puppet until it quits, idles out, fails or the gateway shuts down.
// A function returning an `async move` block rather than an `async fn`: an `async fn`
// keeps its arguments twice in its future (as given, and moved into its body), and this
// future is kept by every puppet for as long as it runs.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run(
    spec: Spec,
    sh: Shared,
    mut jobs: MailReceiver<Box<Job>>,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let mut work: VecDeque<Work> = VecDeque::new();
        let mut nick = spec.nick.clone();
        let mut attempt = 0u32;
        let failed = loop {
            let reg = Registration {
                nick: nick.clone(),
                suffix: spec.suffix.to_owned(),
                password: spec.password.clone(),
                sasl: None,
                caps: false,
                realname: spec.realname.clone(),
                nicklen: spec.nicklen,
            };
            let mut s = match tokio::select! {
                _ = sh.shutdown.cancelled() => return,
                // Boxed: registration (and a TLS handshake) needs far more state than serving,
                // and only for a moment; inline it would size every puppet's task for good.
                r = Box::pin(connection::connect(&spec.server, spec.tls.as_ref(), reg, Duration::from_secs(60))) => r,
            } {
                Ok(s) => s,
                Err(why) => break Some(why),
            };
            nick.clone_from(&s.nick);
            tracing::debug!(network = %sh.network, nick = %s.nick, wanted = %spec.nick, "IRC puppet connected");
            let _ = sh.reports.send(Report::Up {
                user: spec.user.clone(),
                gen: spec.gen,
                nick: s.nick.clone(),
            });
            // Anything written before a lost connection is written again.
            for w in work.iter_mut() {
                w.token = None;
                w.denied = false;
            }
            match serve(&spec, &sh, &mut s, &mut jobs, &mut work).await {
                End::Shutdown => return,
                End::Done => break None,
                End::Lost(why) => {
                    nick.clone_from(&s.nick);
                    tracing::info!(network = %sh.network, nick = %nick, reason = %why, "IRC puppet connection lost");
                    if attempt >= RECONNECTS {
                        break Some(why);
                    }
                    attempt += 1;
                    tokio::select! {
                        _ = sh.shutdown.cancelled() => return,
                        _ = tokio::time::sleep(connection::backoff(attempt - 1)) => {}
                    }
                }
            }
        };
        if let Some(why) = &failed {
            tracing::warn!(network = %sh.network, nick = %nick, reason = %why, "IRC puppet gave up; its messages go through the bot");
        }
        // Hand back what was not answered, including jobs queued meanwhile.
        jobs.close();
        let mut leftovers: Vec<(Job, bool)> =
            work.into_iter().map(|w| (*w.job, w.reported)).collect();
        while let Some(job) = jobs.try_recv() {
            leftovers.push((*job, false));
        }
        let _ = sh.reports.send(Report::Exit {
            user: spec.user.clone(),
            gen: spec.gen,
            leftovers,
            failed,
        });
    }
}

/// A running (or connecting) puppet, as the adapter holds it.
pub(crate) struct Handle {
    gen: u64,
    jobs: MailSender<Box<Job>>,
    nick: Option<String>,
}

/// How long a user whose puppet could not connect is relayed by the bot before trying again.
const PUPPET_COOLDOWN: Duration = Duration::from_secs(300);

impl IrcAdapter {
    /// Starts the puppet of `sender` unless it runs.
    pub(crate) fn ensure_puppet(
        &self,
        cx: &AdapterContext,
        st: &mut State,
        sender: &Sender,
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
        let nick = ids::puppet_nick(cx.store.as_ref(), sender, isupport.nicklen);
        st.next_gen += 1;
        let spec = Spec {
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
            nicklen: isupport.nicklen,
        };
        let shared = Shared {
            network: cx.network.clone(),
            store: cx.store.clone(),
            pastes: cx.pastes.clone(),
            delivered: cx.delivered.clone(),
            reports: st.reports_tx.clone(),
            shutdown: cx.shutdown.clone(),
        };
        let (tx, rx) = mailbox();
        tokio::spawn(run(spec, shared, rx));
        st.puppets.insert(
            sender.user.clone(),
            Handle {
                gen: st.next_gen,
                jobs: tx,
                nick: None,
            },
        );
    }

    /// A puppet job nobody will do: messages go through the bot, the rest is done.
    pub(crate) fn orphan(
        &self,
        cx: &AdapterContext,
        st: &mut State,
        isupport: &ISupport,
        job: Job,
    ) {
        tracing::debug!(network = %cx.network, outbox = job.delivery.outbox_id, action = ?job.action, "IRC puppet job handed to the bot");
        if job.action == Action::Speak {
            deliver::queue_bot(cx, st, isupport, (job.delivery, BotKind::Relay, false));
        } else {
            deliver::answer(cx, &job.delivery, Ok(Vec::new()));
        }
    }

    /// Takes a puppet's report: its nick (kept in the store), a channel's gate opened, a
    /// refused line for the bot to relay, or its end (what it left undone goes another way).
    pub(crate) fn on_report(
        &self,
        cx: &AdapterContext,
        st: &mut State,
        isupport: &ISupport,
        r: Report,
    ) {
        match r {
            Report::Up { user, gen, nick } | Report::Nick { user, gen, nick } => {
                let Some(h) = st.puppets.get_mut(&user).filter(|h| h.gen == gen) else {
                    return;
                };
                if let Some(old) = h.nick.replace(nick.clone()) {
                    st.live.remove(&isupport.fold(&old));
                }
                st.live.insert(isupport.fold(&nick), user.clone());
                if let Err(e) = cx.store.set_puppet(&user, &nick) {
                    tracing::warn!(error = %e, "puppet nick not stored");
                }
            }
            Report::Written { user, channel } => {
                deliver::written(st, isupport, &channel, &Some(user));
            }
            // Passed on by the run loop (it awaits the gateway), never here.
            Report::Private { .. } => {}
            Report::Reroute { delivery } => {
                deliver::queue_bot(cx, st, isupport, (*delivery, BotKind::Relay, false));
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
                        deliver::written(
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

    /// Hands `job` to the puppet of `user`, starting it when the job is to speak. A puppet
    /// that is gone does the job no more: it is done another way ([`IrcAdapter::orphan`]).
    pub(crate) fn to_puppet(
        &self,
        cx: &AdapterContext,
        st: &mut State,
        isupport: &ISupport,
        user: UserRef,
        job: Job,
    ) {
        if job.action == Action::Speak {
            let sender = job.delivery.event.sender.clone();
            self.ensure_puppet(cx, st, &sender, isupport);
        }
        let refused = match st.puppets.get(&user) {
            // Boxed: a job is large, and the queue keeps room for a few.
            Some(h) => h.jobs.send(Box::new(job)).err().map(|e| *e),
            None => Some(job),
        };
        if let Some(job) = refused {
            let room = job.delivery.target.room.0.clone();
            deliver::written(st, isupport, &room, &Some(user.clone()));
            st.puppets.remove(&user);
            self.orphan(cx, st, isupport, job);
        }
    }
}

fn fold(i: &ISupport, s: &str) -> String {
    i.fold(s)
}

/// Lines for one job, joining the channel first when needed; `said` counts the message lines.
fn lines_for(
    spec: &Spec,
    sh: &Shared,
    s: &Session,
    joined: &mut Joined,
    job: &Job,
) -> (Vec<String>, usize) {
    let channel = job.delivery.target.room.0.as_str();
    let key = fold(&s.isupport, channel);
    let mut lines = Vec::new();
    let mut said = 0;
    // A private conversation is no channel: nothing to join.
    let query = crate::private::is_query(&job.delivery.target.room);
    match &job.action {
        Action::Speak => {
            if !query && joined.insert(key) {
                lines.push(format!("JOIN {channel}"));
            }
            let voice = Voice {
                nick: &s.nick,
                relay_as: None,
                linelen: s.isupport.linelen,
                max_lines: spec.max_lines,
            };
            let body = outbound::render_for(
                sh.store.as_ref(),
                sh.pastes.as_deref(),
                &job.delivery,
                voice,
            );
            said = body.len();
            lines.extend(body);
        }
        Action::Join => {
            if !query && joined.insert(key) {
                lines.push(format!("JOIN {channel}"));
            }
        }
        Action::Part(reason) => {
            if joined.remove(&key) {
                let reason = reason.as_deref().map(outbound::snippet).unwrap_or_default();
                lines.push(format!("PART {channel} :{reason}"));
            }
        }
        Action::Quit(reason) => {
            let reason = reason.as_deref().map(outbound::snippet).unwrap_or_default();
            lines.push(format!("QUIT :{reason}"));
        }
        Action::Nick(name) => {
            let want = ids::sanitise(name, spec.suffix, s.isupport.nicklen);
            if fold(&s.isupport, &want) != fold(&s.isupport, &s.nick) {
                lines.push(format!("NICK {want}"));
            }
        }
    }
    (lines, said)
}

/// What woke a serving puppet.
// A temporary, handled before the next wait: boxing the message would cost an allocation per
// line for nothing.
#[allow(clippy::large_enum_variant)]
enum Step {
    /// A message from the server, or the end of the connection.
    Msg(Result<Message, connection::End>),
    /// A job (None: the adapter dropped the puppet's queue).
    Job(Option<Box<Job>>),
    /// No job for the idle timeout.
    Idle,
}

/// What the serving loop does after a step, once the step is dropped.
enum Next {
    /// Write this line, if any, and wait again.
    Reply(Option<String>),
    /// The connection ended: close it.
    Close(connection::End),
    /// Idle too long: quit.
    Idle,
}

/// The channels (folded) a puppet has joined: a few, so a list. A `BTreeSet` kept a node
/// with room for eleven names (about 300 bytes) for each puppet in one channel.
#[derive(Default)]
struct Joined(Vec<String>);

impl Joined {
    /// Notes `key`; true when it was not noted yet.
    fn insert(&mut self, key: String) -> bool {
        if self.0.contains(&key) {
            return false;
        }
        self.0.push(key);
        true
    }

    /// Forgets `key`; true when it was noted.
    fn remove(&mut self, key: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|k| k != key);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        self.0.len() != before
    }
}

/// A puppet's state while its connection serves.
struct Serving {
    bucket: Bucket,
    joined: Joined,
    last_job: Instant,
    /// Tries left for a nick change refused as taken.
    nick_tries: u32,
    jobs_open: bool,
}

async fn serve(
    spec: &Spec,
    sh: &Shared,
    s: &mut Session,
    jobs: &mut MailReceiver<Box<Job>>,
    work: &mut VecDeque<Work>,
) -> End {
    // Thousands of these futures wait at once, one per puppet, so what waits is kept small:
    // the writing, seldom and short, runs in a boxed future of its own, and what woke the
    // puppet is handled after the wait, not inside it.
    s.reader.ignore(channel_chatter);
    let mut st = Serving {
        bucket: Bucket::new(spec.burst, spec.rate),
        joined: Joined::default(),
        last_job: Instant::now(),
        nick_tries: 0,
        jobs_open: true,
    };
    loop {
        if work.iter().take(IN_FLIGHT).any(|w| w.token.is_none()) {
            if let Some(end) = Box::pin(write_work(spec, sh, s, work, &mut st)).await {
                return end;
            }
        }
        let idle_at = st.last_job + spec.idle;
        // In a block of its own, so the step (a whole parsed message) is not kept in the
        // future across the writes below.
        let next = {
            let step = tokio::select! {
                biased;
                msg = s.next_message(&sh.shutdown) => Step::Msg(msg),
                job = jobs.recv(), if st.jobs_open => Step::Job(job),
                _ = tokio::time::sleep_until(idle_at), if work.is_empty() => Step::Idle,
            };
            match step {
                Step::Msg(Ok(msg)) => match on_message(spec, sh, s, work, &mut st, &msg) {
                    Ok(reply) => Next::Reply(reply),
                    Err(end) => return end,
                },
                Step::Msg(Err(end)) => Next::Close(end),
                Step::Job(Some(job)) => {
                    st.last_job = Instant::now();
                    work.push_back(Work {
                        job,
                        reported: false,
                        token: None,
                        said: 0,
                        denied: false,
                    });
                    Next::Reply(None)
                }
                Step::Job(None) => {
                    st.jobs_open = false;
                    Next::Reply(None)
                }
                Step::Idle => Next::Idle,
            }
        };
        let reply = match next {
            Next::Reply(reply) => reply,
            Next::Close(end) => return Box::pin(s.closing(end)).await.into(),
            Next::Idle => {
                let _ = Box::pin(s.writer.send("QUIT :idle")).await;
                return End::Done;
            }
        };
        if let Some(line) = reply {
            if let Err(e) = Box::pin(s.writer.send(&line)).await {
                return End::Lost(e.to_string());
            }
        }
    }
}

/// Writes what may go: jobs in order, at most [`IN_FLIGHT`] awaiting their PING's answer.
/// Some(end) when the connection ends.
async fn write_work(
    spec: &Spec,
    sh: &Shared,
    s: &mut Session,
    work: &mut VecDeque<Work>,
    st: &mut Serving,
) -> Option<End> {
    let mut i = 0;
    while i < work.len() && i < IN_FLIGHT {
        if work[i].token.is_none() {
            let (lines, said) = lines_for(spec, sh, s, &mut st.joined, &work[i].job);
            tracing::debug!(network = %sh.network, nick = %s.nick, outbox = work[i].job.delivery.outbox_id, action = ?work[i].job.action, lines = lines.len(), "IRC puppet writes a job");
            if matches!(work[i].job.action, Action::Nick(_)) {
                st.nick_tries = 5;
            }
            for line in &lines {
                st.bucket.wait().await;
                if let Err(e) = s.writer.send(line).await {
                    return Some(End::Lost(e.to_string()));
                }
            }
            if let Action::Quit(_) = work[i].job.action {
                // The server closes the connection; nothing comes back to prove it.
                if let Some(w) = work.remove(i) {
                    answer(sh, &w.job.delivery, Ok(Vec::new()));
                }
                return Some(End::Done);
            }
            let token = format!("junction-{}", work[i].job.delivery.outbox_id);
            if let Err(e) = s.writer.send(&format!("PING :{token}")).await {
                return Some(End::Lost(e.to_string()));
            }
            work[i].token = Some(token);
            work[i].said = said;
            if !work[i].reported {
                work[i].reported = true;
                let _ = sh.reports.send(Report::Written {
                    user: spec.user.clone(),
                    channel: work[i].job.delivery.target.room.0.clone(),
                });
            }
        }
        i += 1;
    }
    None
}

/// Whether `line` is what every member of a channel receives and only the bot reads: other
/// people joining, leaving, speaking, changing modes. A puppet drops such lines unparsed: in a
/// channel with thousands of puppets each line reaches every one of them, and parsing it
/// thousands of times was most of the gateway's work while they joined. Anything else
/// (the server's PINGs and numerics, NICK and KICK, words to the puppet itself) is parsed.
fn channel_chatter(line: &str) -> bool {
    let rest = match line.strip_prefix('@') {
        Some(tagged) => match tagged.split_once(' ') {
            Some((_, rest)) => rest,
            None => return false,
        },
        None => line,
    };
    // Only lines from someone: the server's own PING comes without a source.
    let Some(rest) = rest.strip_prefix(':') else {
        return false;
    };
    let mut words = rest.split(' ').filter(|w| !w.is_empty());
    let (_source, command, target) = (words.next(), words.next(), words.next());
    match command.unwrap_or("") {
        "JOIN" | "PART" | "QUIT" | "MODE" | "TOPIC" | "AWAY" | "ACCOUNT" | "CHGHOST"
        | "SETNAME" => true,
        "PRIVMSG" | "NOTICE" | "TAGMSG" => {
            target.is_some_and(|t| t.starts_with(['#', '&', '+', '!']))
        }
        _ => false,
    }
}

/// Handles one message from the server; returns the line to answer with, if any, or why the
/// connection ends.
fn on_message(
    spec: &Spec,
    sh: &Shared,
    s: &mut Session,
    work: &mut VecDeque<Work>,
    st: &mut Serving,
    msg: &Message,
) -> Result<Option<String>, End> {
    match &msg.command {
        Command::PING(a, _) => return Ok(Some(format!("PONG :{a}"))),
        Command::PONG(a, b) => {
            let token = b.as_deref().unwrap_or(a);
            if let Some(pos) = work.iter().position(|w| w.token.as_deref() == Some(token)) {
                // TCP keeps order: every job written before this one is proven too.
                for w in work.drain(..=pos).collect::<Vec<_>>() {
                    finish(spec, sh, s, w);
                }
                if work.is_empty() {
                    // Most puppets wait idle most of the time: no room kept for jobs.
                    *work = VecDeque::new();
                }
            }
        }
        Command::ERROR(reason) => return Err(End::Lost(format!("server error: {reason}"))),
        Command::NICK(new)
            if msg
                .source_nickname()
                .is_some_and(|n| fold(&s.isupport, n) == fold(&s.isupport, &s.nick)) =>
        {
            s.nick.clone_from(new);
            let _ = sh.reports.send(Report::Nick {
                user: spec.user.clone(),
                gen: spec.gen,
                nick: new.clone(),
            });
        }
        Command::KICK(chan, who, _) if fold(&s.isupport, who) == fold(&s.isupport, &s.nick) => {
            st.joined.remove(&fold(&s.isupport, chan));
        }
        Command::Response(Response::ERR_NICKNAMEINUSE | Response::ERR_NICKCOLLISION, args)
            if st.nick_tries > 0 =>
        {
            st.nick_tries -= 1;
            let taken = args.get(1).cloned().unwrap_or_default();
            let next = ids::next_candidate(&taken, spec.suffix, s.isupport.nicklen);
            return Ok(Some(format!("NICK {next}")));
        }
        Command::Response(
            Response::ERR_CANNOTSENDTOCHAN
            | Response::ERR_BANNEDFROMCHAN
            | Response::ERR_INVITEONLYCHAN
            | Response::ERR_CHANNELISFULL
            | Response::ERR_BADCHANNELKEY,
            args,
        ) => {
            if let Some(chan) = args.get(1) {
                let key = fold(&s.isupport, chan);
                st.joined.remove(&key);
                tracing::debug!(network = %sh.network, nick = %s.nick, channel = %chan, reply = ?msg.command, "IRC puppet refused in a channel");
                if let Some(w) = work.iter_mut().find(|w| {
                    w.token.is_some() && fold(&s.isupport, &w.job.delivery.target.room.0) == key
                }) {
                    w.denied = true;
                }
            }
        }
        Command::PRIVMSG(target, _) if fold(&s.isupport, target) == fold(&s.isupport, &s.nick) => {
            let _ = sh.reports.send(Report::Private {
                user: spec.user.clone(),
                msg: Box::new(msg.clone()),
            });
        }
        // Everything else (channel traffic, names, other people) is the bot's.
        _ => {}
    }
    Ok(None)
}

fn answer(sh: &Shared, d: &Delivery, outcome: Result<Vec<MessageId>, String>) {
    let _ = sh.delivered.send(d.answer(outcome));
}

/// A job whose lines are proven to have reached the server.
fn finish(spec: &Spec, sh: &Shared, s: &Session, w: Work) {
    let d = w.job.delivery;
    if w.denied {
        if w.job.action == Action::Speak {
            let _ = sh.reports.send(Report::Reroute {
                delivery: Box::new(d),
            });
        } else {
            answer(sh, &d, Ok(Vec::new()));
        }
        return;
    }
    let ids: Vec<MessageId> = (0..w.said)
        .map(|i| MessageId::new(format!("{}.{i}", d.outbox_id)))
        .collect();
    if let (Some(first), Some(text)) = (ids.first(), lookup::quotable(&d)) {
        lookup::remember(sh.store.as_ref(), &d.target, first, &s.nick, &text);
    }
    let _ = spec;
    answer(sh, &d, Ok(ids));
}

#[cfg(test)]
mod tests {
    use crate::fake_server::{answered, delivery, expect_line, joined, serve_scripted, started};
    use crate::IrcMode;
    use junction_core::{EventKind, MessageId};
    use tokio::sync::mpsc;

    /// Channel traffic is dropped unparsed; what a puppet acts on is not.
    #[test]
    fn a_puppet_skips_channel_chatter_only() {
        use super::channel_chatter;
        for line in [
            ":bob!b@h JOIN #lobby",
            ":bob!b@h JOIN #lobby * :Bob",
            "@time=2026-12-07T00:00:00Z :bob!b@h PRIVMSG #lobby :hello",
            ":bob!b@h NOTICE #lobby :hi",
            ":bob!b@h PART #lobby :bye",
            ":bob!b@h QUIT :gone",
            ":irc.test MODE #lobby +o bob",
        ] {
            assert!(channel_chatter(line), "{line}");
        }
        for line in [
            "PING :irc.test",
            ":irc.test PONG irc.test :junction-7",
            ":bob!b@h PRIVMSG alice[m] :psst",
            ":op!o@h KICK #lobby alice[m] :out",
            ":alice[m]!a@h NICK alice2[m]",
            ":irc.test 404 alice[m] #lobby :Cannot send to channel",
            "ERROR :Closing link",
            "@broken",
            ":bob!b@h",
        ] {
            assert!(!channel_chatter(line), "{line}");
        }
    }

    /// Thousands of puppets run at once: each one's task (its future, before anything it
    /// allocates) stays small.
    #[tokio::test]
    async fn a_puppet_task_is_small() {
        let store = junction_store::Scoped::new(
            std::sync::Arc::new(junction_store::MemStore::new()),
            junction_core::NetworkId::new("irc:t"),
        );
        let (delivered, _d) = mpsc::unbounded_channel();
        let (reports, _r) = mpsc::unbounded_channel();
        let spec = super::Spec {
            user: junction_testkit::person("matrix", "alice").user,
            gen: 1,
            nick: "alice".into(),
            suffix: "[m]",
            realname: String::new(),
            server: "127.0.0.1:1".into(),
            tls: None,
            password: None,
            idle: std::time::Duration::from_secs(60),
            burst: 5,
            rate: 1.0,
            max_lines: 5,
            nicklen: 30,
        };
        let shared = super::Shared {
            network: junction_core::NetworkId::new("irc:t"),
            store: std::sync::Arc::new(store),
            pastes: None,
            delivered,
            reports,
            shutdown: tokio_util::sync::CancellationToken::new(),
        };
        let (_tx, rx) = crate::mailbox::mailbox();
        let task = super::run(spec, shared, rx);
        let size = std::mem::size_of_val(&task);
        // 3.7 kB before registration was boxed and the serving loop made to wait small;
        // 2.0 kB before the arguments were kept once and a step was dropped before writing.
        assert!(size <= 1280, "a puppet task of {size} bytes");
    }

    #[tokio::test]
    async fn a_remote_user_speaks_through_their_own_connection() {
        let (listener, mut h) = started(IrcMode::Puppet).await;
        let _bot_lines = joined(&listener, |_| Vec::new()).await;
        h.deliveries.send(delivery(1, "hi")).await.expect("send");
        let (p_tx, mut p_lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, p_tx, |_| Vec::new()).await;
        expect_line(&mut p_lines, "NICK alice[m]").await;
        expect_line(&mut p_lines, "JOIN #t").await;
        expect_line(&mut p_lines, "PRIVMSG #t :hi").await;
        let ok = answered(&mut h).await;
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
            let ok = answered(&mut h).await;
            assert_eq!(ok.outbox_id, want);
        }
        h.shutdown.cancel();
    }

    #[tokio::test]
    async fn a_puppet_that_can_not_connect_is_relayed_by_the_bot() {
        let (listener, mut h) = started(IrcMode::Puppet).await;
        let mut bot_lines = joined(&listener, |_| Vec::new()).await;
        h.deliveries.send(delivery(1, "hi")).await.expect("send");
        // The puppet's connection is accepted and closed at once.
        let (sock, _) = listener.accept().await.expect("accept");
        drop(sock);
        expect_line(&mut bot_lines, "PRIVMSG #t :<alice[m]> hi").await;
        let ok = answered(&mut h).await;
        assert_eq!(ok.outbox_id, 1);
        h.shutdown.cancel();
    }
}
