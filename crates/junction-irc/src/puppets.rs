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

use crate::bucket::Bucket;
use crate::connection::{self, Registration, Session};
use crate::isupport::ISupport;
use crate::outbound::{self, Render};
use crate::{ids, lookup, paste};
use irc_proto::{Command, Response};
use junction_core::{Delivered, Delivery, MessageId, NetworkId, Secret, UserRef};
use junction_store::Store;
use std::collections::{BTreeSet, VecDeque};
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
    /// Where the whole text of a longer message can be read (see [`crate::paste`]).
    pub paste_url: Option<String>,
    /// The server's NICKLEN as the bot learned it.
    pub nicklen: usize,
}

/// The adapter's side: where answers and reports go.
#[derive(Clone)]
pub struct Shared {
    /// The IRC network.
    pub network: NetworkId,
    /// Nicks, quotes.
    pub store: Arc<dyn Store>,
    /// Answers to deliveries.
    pub delivered: mpsc::UnboundedSender<Delivered>,
    /// Reports to the adapter.
    pub reports: mpsc::UnboundedSender<Report>,
    /// Gateway shutdown.
    pub shutdown: CancellationToken,
}

/// A job being worked on: `reported` once its `Written` went out.
struct Work {
    job: Job,
    reported: bool,
    /// Set once the lines and the PING are written.
    token: Option<String>,
    /// Lines of the message itself (their ids answer the delivery).
    said: usize,
    /// The channel refused our lines.
    denied: bool,
}

enum End {
    Shutdown,
    Done,
    Lost(String),
}

/// Most jobs written and awaiting their PING's answer at once.
const IN_FLIGHT: usize = 8;
/// Reconnect attempts after a lost connection before the jobs go to the bot.
const RECONNECTS: u32 = 1;

/// Runs one puppet until it quits, idles out, fails or the gateway shuts down.
pub async fn run(spec: Spec, sh: Shared, mut jobs: mpsc::UnboundedReceiver<Box<Job>>) {
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
        let connected = tokio::select! {
            _ = sh.shutdown.cancelled() => return,
            r = connection::connect(&spec.server, spec.tls.as_ref(), reg, Duration::from_secs(60)) => r,
        };
        let mut s = match connected {
            Ok(s) => s,
            Err(why) => break Some(why),
        };
        nick.clone_from(&s.nick);
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
    let mut leftovers: Vec<(Job, bool)> = work.into_iter().map(|w| (w.job, w.reported)).collect();
    while let Ok(job) = jobs.try_recv() {
        leftovers.push((*job, false));
    }
    let _ = sh.reports.send(Report::Exit {
        user: spec.user.clone(),
        gen: spec.gen,
        leftovers,
        failed,
    });
}

fn fold(i: &ISupport, s: &str) -> String {
    i.fold(s)
}

/// Lines for one job, joining the channel first when needed; `said` counts the message lines.
fn lines_for(
    spec: &Spec,
    sh: &Shared,
    s: &Session,
    joined: &mut BTreeSet<String>,
    job: &Job,
) -> (Vec<String>, usize) {
    let channel = job.delivery.target.room.0.as_str();
    let key = fold(&s.isupport, channel);
    let mut lines = Vec::new();
    let mut said = 0;
    match &job.action {
        Action::Speak => {
            if joined.insert(key) {
                lines.push(format!("JOIN {channel}"));
            }
            let store = sh.store.as_ref();
            let network = &sh.network;
            let nick_of = |u: &UserRef| lookup::nick_of(store, network, u);
            let paste = spec
                .paste_url
                .as_deref()
                .map(|base| paste::maker(store, base, &job.delivery));
            let body = outbound::render(
                &job.delivery,
                &Render {
                    channel,
                    sender_nick: &s.nick,
                    relay_as: None,
                    linelen: s.isupport.linelen,
                    max_lines: spec.max_lines,
                    paste: paste.as_ref().map(|p| p as &outbound::PasteFn<'_>),
                    quoted: lookup::quoted(store, network, &job.delivery),
                    nick_of: &nick_of,
                },
            );
            said = body.len();
            lines.extend(body);
        }
        Action::Join => {
            if joined.insert(key) {
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

async fn serve(
    spec: &Spec,
    sh: &Shared,
    s: &mut Session,
    jobs: &mut mpsc::UnboundedReceiver<Box<Job>>,
    work: &mut VecDeque<Work>,
) -> End {
    let mut bucket = Bucket::new(spec.burst, spec.rate);
    let mut joined: BTreeSet<String> = BTreeSet::new();
    let mut last_job = Instant::now();
    // Tries left for a nick change refused as taken.
    let mut nick_tries = 0u32;
    let mut jobs_open = true;
    loop {
        // Write what may go: jobs in order, at most IN_FLIGHT awaiting their PING's answer.
        let mut i = 0;
        while i < work.len() && i < IN_FLIGHT {
            if work[i].token.is_none() {
                let (lines, said) = lines_for(spec, sh, s, &mut joined, &work[i].job);
                if matches!(work[i].job.action, Action::Nick(_)) {
                    nick_tries = 5;
                }
                for line in &lines {
                    bucket.wait().await;
                    if let Err(e) = s.writer.send(line).await {
                        return End::Lost(e.to_string());
                    }
                }
                if let Action::Quit(_) = work[i].job.action {
                    // The server closes the connection; nothing comes back to prove it.
                    if let Some(w) = work.remove(i) {
                        answer(sh, &w.job.delivery, Ok(Vec::new()));
                    }
                    return End::Done;
                }
                let token = format!("junction-{}", work[i].job.delivery.outbox_id);
                if let Err(e) = s.writer.send(&format!("PING :{token}")).await {
                    return End::Lost(e.to_string());
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
        let idle_at = last_job + spec.idle;
        tokio::select! {
            biased;
            _ = sh.shutdown.cancelled() => {
                let _ = s.writer.send("QUIT :gateway shutting down").await;
                return End::Shutdown;
            }
            msg = s.reader.next() => {
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => return End::Lost("server closed the connection".into()),
                    Err(e) => return End::Lost(e.to_string()),
                };
                match &msg.command {
                    Command::PING(a, _) => {
                        if let Err(e) = s.writer.send(&format!("PONG :{a}")).await {
                            return End::Lost(e.to_string());
                        }
                    }
                    Command::PONG(a, b) => {
                        let token = b.as_deref().unwrap_or(a);
                        if let Some(pos) = work.iter().position(|w| w.token.as_deref() == Some(token)) {
                            // TCP keeps order: every job written before this one is proven too.
                            for w in work.drain(..=pos).collect::<Vec<_>>() {
                                finish(spec, sh, s, w);
                            }
                        }
                    }
                    Command::ERROR(reason) => return End::Lost(format!("server error: {reason}")),
                    Command::NICK(new) if msg.source_nickname().is_some_and(|n| fold(&s.isupport, n) == fold(&s.isupport, &s.nick)) => {
                        s.nick.clone_from(new);
                        let _ = sh.reports.send(Report::Nick { user: spec.user.clone(), gen: spec.gen, nick: new.clone() });
                    }
                    Command::KICK(chan, who, _) if fold(&s.isupport, who) == fold(&s.isupport, &s.nick) => {
                        joined.remove(&fold(&s.isupport, chan));
                    }
                    Command::Response(Response::ERR_NICKNAMEINUSE | Response::ERR_NICKCOLLISION, args) if nick_tries > 0 => {
                        nick_tries -= 1;
                        let taken = args.get(1).cloned().unwrap_or_default();
                        let next = ids::next_candidate(&taken, spec.suffix, s.isupport.nicklen);
                        if let Err(e) = s.writer.send(&format!("NICK {next}")).await {
                            return End::Lost(e.to_string());
                        }
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
                            joined.remove(&key);
                            tracing::debug!(network = %sh.network, nick = %s.nick, channel = %chan, reply = ?msg.command, "IRC puppet refused in a channel");
                            if let Some(w) = work.iter_mut().find(|w| {
                                w.token.is_some() && fold(&s.isupport, &w.job.delivery.target.room.0) == key
                            }) {
                                w.denied = true;
                            }
                        }
                    }
                    // Everything else (channel traffic, names, other people) is the bot's.
                    _ => {}
                }
            }
            job = jobs.recv(), if jobs_open => {
                match job {
                    Some(job) => {
                        last_job = Instant::now();
                        work.push_back(Work { job: *job, reported: false, token: None, said: 0, denied: false });
                    }
                    None => jobs_open = false,
                }
            }
            _ = tokio::time::sleep_until(idle_at), if work.is_empty() => {
                let _ = s.writer.send("QUIT :idle").await;
                return End::Done;
            }
        }
    }
}

fn answer(sh: &Shared, d: &Delivery, outcome: Result<Vec<MessageId>, String>) {
    let _ = sh.delivered.send(Delivered {
        outbox_id: d.outbox_id,
        target: d.target.clone(),
        event: d.event.id.clone(),
        outcome,
    });
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
        lookup::remember(sh.store.as_ref(), &sh.network, first, &s.nick, &text);
    }
    let _ = spec;
    answer(sh, &d, Ok(ids));
}
