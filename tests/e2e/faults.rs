//! Faults and bad input, end to end.
//!
//! The fault tests run the gateway as a child process (`junction run -c FILE`) so it can be
//! killed with SIGKILL mid-flight and started again on the same store, while ordinary users
//! on all three networks send numbered lines. Each test then counts, per direction, what was
//! sent, received, lost and duplicated, prints the figures (`--nocapture` shows them) and
//! asserts what the design guarantees:
//!
//! - Matrix-origin lines: Synapse keeps a transaction until the gateway answers 200, and the
//!   gateway answers only once the events are durable, so nothing said on Matrix is lost,
//!   even while the gateway is down; replays are recognised by their origin event id.
//! - XMPP-origin lines: on rejoin the gateway reads the room's archive (MAM) from its stored
//!   cursor, deduplicated by stanza-id, so lines said while it was down arrive once.
//! - IRC-origin lines: the test channels keep history (+H on the tests' own InspIRCd), which
//!   the channel replays to the gateway's bot when it rejoins, so lines said while the
//!   gateway was down arrive once too (a line relayed before is known by its msgid).
//! - Every outbox survives: a line recorded before the kill is delivered after the restart,
//!   and a line for IRC that the replayed history shows already said is not said again.
//!
//! The bad-input tests go through the in-process lobby (`super::lobby::Lobby`): each sends
//! something malformed or hostile and then a normal line that must still cross.

use super::lobby::{short_nick, Lobby, Side};
use anyhow::Context as _;
use junction_testkit::clients::irc::{joiner, source_nick};
use junction_testkit::clients::xmpp::{body, from_nick};
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::{servers, slot, Servers, SlotGuard};
use junction_testkit::{eventually, free_port, unique};
use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// How long the gateway may take to come up, or everything sent to cross.
const WAIT: Duration = Duration::from_secs(120);
/// The pause between two lines one user sends (pacing, not synchronisation).
const PACE: Duration = Duration::from_millis(120);

// ----------------------------------------------------------------------------------------
// The gateway as a child process.

/// One gateway process on a config file; killed with SIGKILL when dropped.
pub(super) struct GatewayProcess {
    pub(super) child: tokio::process::Child,
}

impl GatewayProcess {
    /// Starts `junction run -c config`, its log appended to `log`.
    fn spawn(config: &Path, log: &Path) -> anyhow::Result<Self> {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_junction"));
        cmd.arg("run")
            .arg("-c")
            .arg(config)
            .env("JUNCTION_LOG", "info");
        let child = spawn_logged(cmd, log).context("starting the junction binary")?;
        Ok(GatewayProcess { child })
    }

    /// SIGKILL, then reap it.
    async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("the killed gateway did not exit")??;
        println!("gateway killed: {status}");
        Ok(())
    }
}

/// Spawns `cmd` with no input and its output appended to `log`; killed when dropped.
fn spawn_logged(
    mut cmd: tokio::process::Command,
    log: &Path,
) -> anyhow::Result<tokio::process::Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    Ok(cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .kill_on_drop(true)
        .spawn()?)
}

/// The last lines of a log file, for failure messages.
pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A lobby whose gateway runs as a child process: rooms on all three networks, one user
/// on each, and the config and log files in a temporary directory.
pub(super) struct Rig {
    servers: &'static Servers,
    slot: SlotGuard,
    room: String,
    muc: String,
    channel: String,
    irc_addr: SocketAddr,
    matrix: MatrixUser,
    xmpp: XmppUser,
    xmpp_nick: String,
    /// Every IRC connection the test made (a new one after an IRC server restart).
    irc: Vec<IrcUser>,
    irc_nick: String,
    pub(super) dir: tempfile::TempDir,
    pub(super) metrics: SocketAddr,
    pub(super) gateway: Option<GatewayProcess>,
    /// How many times the gateway has come up.
    starts: usize,
}

impl Rig {
    /// Rooms, users and config; the gateway is not started yet.
    pub(super) async fn new(irc_addr: SocketAddr) -> anyhow::Result<Rig> {
        let servers = servers().await?;
        let slot = slot().await?;
        let name = unique("flt");
        let matrix = MatrixUser::login(servers, "alice", "alicepw").await?;
        let room = matrix
            .create_room(Some(&name), true)
            .await
            .context("creating the Matrix room")?;
        let muc = format!("{name}@{}", servers.xmpp.muc);
        let channel = format!("#{name}");
        let xmpp = XmppUser::register(servers, &short_nick(&unique("fx")), "pw-faults").await?;
        let xmpp_nick = unique("fxn");
        let irc_nick = short_nick(&unique("fi"));
        let irc = IrcUser::connect(irc_addr, &irc_nick).await?;
        irc.join(&channel).await?;
        // The channel replays its last 100 lines (of the last hour) to whoever joins, as an
        // operator would set it: the gateway reads what was said while it was away.
        irc.mode(&channel, "+H", &["100:1h"])?;
        xmpp.join_muc(&muc, &xmpp_nick).await?;
        let dir = tempfile::tempdir()?;
        let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()?));
        let rig = Rig {
            servers,
            slot,
            room,
            muc,
            channel,
            irc_addr,
            matrix,
            xmpp,
            xmpp_nick,
            irc: vec![irc],
            irc_nick,
            dir,
            metrics,
            gateway: None,
            starts: 0,
        };
        std::fs::write(rig.config_path(), rig.config())?;
        Ok(rig)
    }

    pub(super) fn config_path(&self) -> PathBuf {
        self.dir.path().join("bridges.toml")
    }

    pub(super) fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    pub(super) fn config(&self) -> String {
        use junction_testkit::gateway;
        let (s, slot) = (self.servers, &self.slot);
        format!(
            "\n[gateway]\ndata_dir = \"{data}\"\nmetrics = \"{metrics}\"\n{}{}{}{}",
            gateway::matrix_section(s, slot),
            gateway::xmpp_section(s, slot),
            gateway::irc_section(self.irc_addr, slot),
            gateway::bridge(
                "faults",
                Some(&self.room),
                Some(&self.muc),
                Some(&format!("local/{}", self.channel))
            ),
            data = self.dir.path().join("data").display(),
            metrics = self.metrics,
        )
    }

    /// The IRC connection in use now.
    fn irc(&self) -> &IrcUser {
        &self.irc[self.irc.len() - 1]
    }

    /// Starts the gateway process and waits until it is up: `/health` answers 200, its
    /// listener has (re)joined the MUC and its bot the IRC channel.
    pub(super) async fn start_gateway(&mut self) -> anyhow::Result<()> {
        self.gateway = Some(GatewayProcess::spawn(
            &self.config_path(),
            &self.log_path(),
        )?);
        self.starts += 1;
        let up = self.wait_up().await;
        if up.is_err() {
            println!("gateway log ends:\n{}", tail(&self.log_path(), 40));
        }
        up
    }

    async fn wait_up(&self) -> anyhow::Result<()> {
        let http = reqwest::Client::new();
        let url = format!("http://{}/health", self.metrics);
        eventually(WAIT, "the gateway's /health to answer 200", || {
            let req = http.get(&url).send();
            async move { req.await.ok().filter(|r| r.status().is_success()) }
        })
        .await?;
        // The listener's available presences in the MUC: one per start.
        let listener = format!("{}/junction", self.muc);
        let starts = self.starts;
        eventually(WAIT, "the gateway's listener in the MUC", || {
            let n = self
                .xmpp
                .backlog()
                .iter()
                .filter(|el| {
                    el.name() == "presence"
                        && el.attr("type").is_none()
                        && el.attr("from") == Some(listener.as_str())
                })
                .count();
            async move { (n >= starts).then_some(()) }
        })
        .await?;
        self.wait_irc_bot(starts).await
    }

    /// Waits until the gateway's bot has joined the IRC channel `times` times in all, as
    /// seen by our IRC connections (a new one after an IRC server restart).
    async fn wait_irc_bot(&self, times: usize) -> anyhow::Result<()> {
        let starts = times;
        let bot = junction_testkit::gateway::bot_nick(&self.slot).to_ascii_lowercase();
        let joins_before: usize = self.irc[..self.irc.len() - 1]
            .iter()
            .map(|c| self.bot_joins(c, &bot))
            .sum();
        eventually(WAIT, "the gateway's bot in the IRC channel", || {
            let n = joins_before + self.bot_joins(self.irc(), &bot);
            async move { (n >= starts).then_some(()) }
        })
        .await?;
        Ok(())
    }

    /// Waits until our newest IRC connection sees the gateway's bot in the channel: its
    /// JOIN, or its nick in the NAMES reply to our own join.
    async fn wait_irc_bot_present(&self) -> anyhow::Result<()> {
        let bot = junction_testkit::gateway::bot_nick(&self.slot).to_ascii_lowercase();
        eventually(WAIT, "the gateway's bot back in the IRC channel", || {
            let joined = self.bot_joins(self.irc(), &bot) > 0;
            let named = self.irc().backlog().iter().any(|m| match &m.command {
                irc_proto::Command::Response(irc_proto::Response::RPL_NAMREPLY, args) => {
                    args.iter().any(|a| a.eq_ignore_ascii_case(&self.channel))
                        && args.last().is_some_and(|names| {
                            names.split_whitespace().any(|n| {
                                n.trim_start_matches(['@', '+', '%', '~', '&'])
                                    .to_ascii_lowercase()
                                    .starts_with(&bot)
                            })
                        })
                }
                _ => false,
            });
            async move { (joined || named).then_some(()) }
        })
        .await
    }

    fn bot_joins(&self, c: &IrcUser, bot: &str) -> usize {
        c.backlog()
            .iter()
            .filter(|m| {
                joiner(m, &self.channel).is_some_and(|n| n.to_ascii_lowercase().starts_with(bot))
            })
            .count()
    }

    /// Puts the gateway's store on the testkit's PostgreSQL, in `schema` (rewrites the config
    /// file).
    pub(super) fn on_postgres(&self, schema: &str) -> anyhow::Result<()> {
        let text = junction_testkit::servers::postgres::with_store(&self.config(), schema);
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Starts a second gateway on the same config, its `/health` at `metrics` (as on another
    /// host): a standby while the rig's gateway is active.
    pub(super) fn spawn_standby(&self, metrics: SocketAddr) -> anyhow::Result<GatewayProcess> {
        let text = std::fs::read_to_string(self.config_path())?.replace(
            &format!("metrics = \"{}\"", self.metrics),
            &format!("metrics = \"{metrics}\""),
        );
        let path = self.dir.path().join("standby.toml");
        std::fs::write(&path, text)?;
        GatewayProcess::spawn(&path, &self.dir.path().join("standby.log"))
    }

    /// Makes `gateway`, a standby (its `/health` at `metrics`), the rig's gateway, and waits
    /// until it has taken over and is up.
    pub(super) async fn adopt(
        &mut self,
        gateway: GatewayProcess,
        metrics: SocketAddr,
    ) -> anyhow::Result<()> {
        self.gateway = Some(gateway);
        self.metrics = metrics;
        self.starts += 1;
        let up = self.wait_up().await;
        if up.is_err() {
            let log = self.dir.path().join("standby.log");
            println!("standby log ends:\n{}", tail(&log, 40));
        }
        up
    }

    pub(super) async fn kill_gateway(&mut self) -> anyhow::Result<()> {
        if let Some(g) = self.gateway.take() {
            g.kill9().await?;
        }
        Ok(())
    }

    /// Every line received on each network: (receiving network, origin, number).
    pub(super) async fn received(&self, tag: &str) -> anyhow::Result<Vec<(Net, Net, u32)>> {
        let mut out = Vec::new();
        let me = self.matrix.user_id().to_owned();
        for e in self.matrix.events(&self.room).await? {
            if e["sender"].as_str() == Some(me.as_str()) || e["type"] != "m.room.message" {
                continue;
            }
            if let Some((o, n)) = parse_line(tag, e["content"]["body"].as_str().unwrap_or("")) {
                out.push((Net::Matrix, o, n));
            }
        }
        let prefix = format!("{}/", self.muc);
        for el in self.xmpp.backlog() {
            if el.name() != "message"
                || el.attr("type") != Some("groupchat")
                || !el.attr("from").is_some_and(|f| f.starts_with(&prefix))
                || from_nick(&el) == Some(self.xmpp_nick.as_str())
            {
                continue;
            }
            if let Some((o, n)) = body(&el).and_then(|b| parse_line(tag, &b)) {
                out.push((Net::Xmpp, o, n));
            }
        }
        for c in &self.irc {
            for (nick, text) in c.privmsgs_in(&self.channel) {
                if nick.eq_ignore_ascii_case(&self.irc_nick) {
                    continue;
                }
                if let Some((o, n)) = parse_line(tag, &text) {
                    out.push((Net::Irc, o, n));
                }
            }
        }
        Ok(out)
    }

    /// [`talk`]: each of `from` says the lines `numbers` of `tag`, at the tests' pace.
    pub(super) async fn talk(
        &self,
        tag: &str,
        expected: &mut BTreeMap<Net, Vec<u32>>,
        from: &[Net],
        numbers: std::ops::Range<u32>,
    ) -> anyhow::Result<()> {
        talk(expected, from, numbers, PACE, |net, n| {
            self.send(net, tag, n)
        })
        .await
    }

    /// [`settle`] on all three networks, for the lines `expected` of `tag`; then prints
    /// `title` and the figures, and asserts that no direction lost or doubled a line
    /// (printing the last `log_lines` of the gateway's log when one did). What arrived.
    pub(super) async fn settle(
        &self,
        tag: &str,
        expected: &BTreeMap<Net, Vec<u32>>,
        title: &str,
        log_lines: usize,
    ) -> anyhow::Result<Vec<(Net, Net, u32)>> {
        let got = settle(
            WAIT,
            &Net::ALL,
            expected,
            || self.received(tag),
            |net, n| self.send(net, tag, n),
        )
        .await?;
        let figures = tally(expected, &Net::ALL, &got);
        print_figures(title, &figures);
        let bad = bad_directions(&figures);
        if !bad.is_empty() {
            println!("gateway log ends:\n{}", tail(&self.log_path(), log_lines));
        }
        assert!(bad.is_empty(), "lost or doubled lines: {bad:?}");
        Ok(got)
    }

    /// Sends line `n` from `from`.
    pub(super) async fn send(&self, from: Net, tag: &str, n: u32) -> anyhow::Result<()> {
        let text = line(tag, from, n);
        match from {
            Net::Matrix => {
                self.matrix.send_text(&self.room, &text).await?;
            }
            Net::Xmpp => {
                self.xmpp.send_groupchat(&self.muc, &text)?;
            }
            Net::Irc => self.irc().privmsg(&self.channel, &text)?,
        }
        Ok(())
    }
}

/// The three networks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Net {
    Matrix,
    Xmpp,
    Irc,
}

impl Net {
    pub(super) const ALL: [Net; 3] = [Net::Matrix, Net::Xmpp, Net::Irc];

    pub(super) fn letter(self) -> char {
        match self {
            Net::Matrix => 'M',
            Net::Xmpp => 'X',
            Net::Irc => 'I',
        }
    }

    fn from_letter(c: char) -> Option<Net> {
        match c {
            'M' => Some(Net::Matrix),
            'X' => Some(Net::Xmpp),
            'I' => Some(Net::Irc),
            _ => None,
        }
    }
}

/// The text of numbered line `n` from `from`: `<tag> M007`.
pub(super) fn line(tag: &str, from: Net, n: u32) -> String {
    format!("{tag} {}{n:03}", from.letter())
}

/// (origin, number) of a line as `line` wrote it, wherever it sits in `text`.
pub(super) fn parse_line(tag: &str, text: &str) -> Option<(Net, u32)> {
    let rest = &text[text.find(tag)? + tag.len()..];
    let word = rest.split_whitespace().next()?;
    let mut chars = word.chars();
    let origin = Net::from_letter(chars.next()?)?;
    let digits: String = chars.take_while(char::is_ascii_digit).collect();
    Some((origin, digits.parse().ok()?))
}

/// Notes line `n` from `net` as sent.
pub(super) fn record(expected: &mut BTreeMap<Net, Vec<u32>>, net: Net, n: u32) {
    expected.entry(net).or_default().push(n);
}

/// What one direction saw.
#[derive(Default, Debug, Clone, Copy)]
pub(super) struct Figures {
    pub(super) sent: usize,
    pub(super) received: usize,
    pub(super) lost: usize,
    pub(super) dup: usize,
}

/// Per direction (origin → target, among `targets`): the figures for the lines in
/// `expected` (per origin), from what `got` holds.
pub(super) fn tally(
    expected: &BTreeMap<Net, Vec<u32>>,
    targets: &[Net],
    got: &[(Net, Net, u32)],
) -> BTreeMap<(Net, Net), Figures> {
    let mut out = BTreeMap::new();
    for (&origin, numbers) in expected {
        for &target in targets {
            if target == origin {
                continue;
            }
            let mut f = Figures {
                sent: numbers.len(),
                ..Figures::default()
            };
            for n in numbers {
                let copies = got
                    .iter()
                    .filter(|(t, o, m)| *t == target && *o == origin && m == n)
                    .count();
                f.received += copies.min(1);
                if copies == 0 {
                    f.lost += 1;
                }
                f.dup += copies.saturating_sub(1);
            }
            out.insert((origin, target), f);
        }
    }
    out
}

/// The directions that lost or doubled something.
pub(super) fn bad_directions(figures: &BTreeMap<(Net, Net), Figures>) -> Vec<String> {
    figures
        .iter()
        .filter(|(_, f)| f.lost > 0 || f.dup > 0)
        .map(|((o, t), f)| {
            format!(
                "{}→{}: lost {} dup {}",
                o.letter(),
                t.letter(),
                f.lost,
                f.dup
            )
        })
        .collect()
}

pub(super) fn print_figures(title: &str, figures: &BTreeMap<(Net, Net), Figures>) {
    println!("{title}");
    println!("  direction  sent  received  lost  dup");
    for ((o, t), f) in figures {
        println!(
            "  {}→{}        {:>4}  {:>8}  {:>4}  {:>3}",
            o.letter(),
            t.letter(),
            f.sent,
            f.received,
            f.lost,
            f.dup
        );
    }
}

/// The sentinel line number each network says last, after everything else has arrived.
pub(super) const LAST: u32 = 999;

/// Each of `from` says the lines `numbers` through `send`, `pace` between rounds; all are
/// noted in `expected`.
pub(super) async fn talk<S>(
    expected: &mut BTreeMap<Net, Vec<u32>>,
    from: &[Net],
    numbers: std::ops::Range<u32>,
    pace: Duration,
    send: impl Fn(Net, u32) -> S,
) -> anyhow::Result<()>
where
    S: Future<Output = anyhow::Result<()>>,
{
    for n in numbers {
        for &net in from {
            send(net, n).await?;
            record(expected, net, n);
        }
        tokio::time::sleep(pace).await;
    }
    Ok(())
}

/// Waits (each wait at most `wait`) until every expected line has reached the other networks
/// of `nets`, as `received` reads them, then has each of `nets` say one last line through
/// `send` and waits for those too, so that anything still queued behind (a late duplicate)
/// has arrived before counting. Returns what was received.
pub(super) async fn settle<R, S>(
    wait: Duration,
    nets: &[Net],
    expected: &BTreeMap<Net, Vec<u32>>,
    received: impl Fn() -> R,
    send: impl Fn(Net, u32) -> S,
) -> anyhow::Result<Vec<(Net, Net, u32)>>
where
    R: Future<Output = anyhow::Result<Vec<(Net, Net, u32)>>>,
    S: Future<Output = anyhow::Result<()>>,
{
    let arrived = |sent: &BTreeMap<Net, Vec<u32>>, got: &[(Net, Net, u32)]| {
        tally(sent, nets, got).values().all(|f| f.lost == 0)
    };
    let since = std::time::Instant::now();
    let waited = eventually(wait, "every line on every other network", || async {
        let got = received().await.ok()?;
        arrived(expected, &got).then_some(())
    })
    .await;
    if let Err(e) = waited {
        // Count anyway: the figures say what went missing.
        println!("not everything arrived: {e:#}");
        return received().await;
    }
    println!(
        "everything arrived {:?} after the last line",
        since.elapsed()
    );
    for &from in nets {
        send(from, LAST).await?;
    }
    let sentinels: BTreeMap<Net, Vec<u32>> = nets.iter().map(|n| (*n, vec![LAST])).collect();
    eventually(wait, "the closing lines", || async {
        let got = received().await.ok()?;
        arrived(&sentinels, &got).then_some(())
    })
    .await?;
    received().await
}

/// The numbers from `origin` that reached `target`, in arrival order, are ascending.
pub(super) fn assert_in_order(got: &[(Net, Net, u32)], origin: Net, target: Net) {
    let seen: Vec<u32> = got
        .iter()
        .filter(|(t, o, _)| *t == target && *o == origin)
        .map(|(_, _, n)| *n)
        .collect();
    let mut sorted = seen.clone();
    sorted.sort_unstable();
    assert_eq!(
        seen,
        sorted,
        "{}→{} out of order",
        origin.letter(),
        target.letter()
    );
}

// ----------------------------------------------------------------------------------------
// kill -9 of the gateway while all three networks send.

/// The gateway is killed with SIGKILL while all three networks send numbered lines, stays
/// down while everyone keeps talking, and is started again on the same store. Every line
/// reaches both other networks exactly once: Synapse resends its transactions, the MUC's
/// archive is read from the gateway's cursor, the IRC channel replays its history (+H) to
/// the bot on join, and that replay also shows which lines for IRC were said just before
/// the kill, so they are not said again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_killed_mid_flight_loses_and_doubles_nothing() -> anyhow::Result<()> {
    // An InspIRCd of its own, whose channel history module this test relies on.
    let ircd = OwnInspircd::start().await?;
    let mut rig = Rig::new(ircd.addr()).await?;
    rig.start_gateway().await?;
    let tag = unique("kill");
    let mut expected: BTreeMap<Net, Vec<u32>> = BTreeMap::new();

    // Up: all three networks talk.
    rig.talk(&tag, &mut expected, &Net::ALL, 0..10).await?;
    // Matrix and XMPP keep talking for a second more, then burst, and the gateway dies
    // right after the burst with lines in flight. (An IRC line the gateway has not yet
    // read when it dies has nobody to resend it, so the last IRC line goes out a second
    // before the kill.)
    for n in 10..18 {
        for net in [Net::Matrix, Net::Xmpp] {
            rig.send(net, &tag, n).await?;
            record(&mut expected, net, n);
        }
        if n < 14 {
            tokio::time::sleep(PACE * 2).await;
        }
    }
    let before = rig.received(&tag).await?;
    rig.kill_gateway().await?;
    print_figures(
        "at the kill (lost = still in flight then):",
        &tally(&expected, &Net::ALL, &before),
    );

    // Down: everyone talks (Synapse queues, the MUC archives, the channel keeps history).
    rig.talk(&tag, &mut expected, &[Net::Matrix, Net::Xmpp], 18..26)
        .await?;
    rig.talk(&tag, &mut expected, &[Net::Irc], 500..505).await?;

    // Up again: everyone talks.
    rig.start_gateway().await?;
    rig.talk(&tag, &mut expected, &[Net::Matrix, Net::Xmpp], 26..30)
        .await?;
    rig.talk(&tag, &mut expected, &[Net::Irc], 10..30).await?;

    rig.settle(
        &tag,
        &expected,
        "gateway kill -9 mid-flight (lines said before, during and after the downtime):",
        60,
    )
    .await?;
    rig.kill_gateway().await?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// An IRC server restarted under load.

/// An InspIRCd of this test's own on a free port, with the shared test server's settings
/// (no flood limits), so restarting it disturbs no other test.
pub(super) struct OwnInspircd {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<tokio::process::Child>,
}

impl OwnInspircd {
    pub(super) async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let d = dir.path();
        std::fs::write(d.join("motd.txt"), "Fault test server.\n")?;
        let mut conf = String::new();
        conf.push_str(
            "<server name=\"irc.faults.test\" description=\"Fault test server\" network=\"FaultTest\">\n",
        );
        conf.push_str("<admin name=\"Junction tests\" nick=\"junction\" email=\"junction@irc.faults.test\">\n");
        conf.push_str(&format!(
            "<bind address=\"127.0.0.1\" port=\"{port}\" type=\"clients\">\n"
        ));
        conf.push_str(
            "<connect name=\"local\" allow=\"127.0.0.1\" hardsendq=\"10M\" softsendq=\"10M\" recvq=\"10M\" \
             threshold=\"1000000\" commandrate=\"100000000\" fakelag=\"off\" localmax=\"100000\" \
             globalmax=\"100000\" maxchans=\"1000\" resolvehostnames=\"no\" useident=\"no\" limit=\"100000\">\n",
        );
        conf.push_str("<dns server=\"127.0.0.1\" timeout=\"1\">\n");
        conf.push_str(&format!(
            "<pid file=\"{}\">\n",
            d.join("inspircd.pid").display()
        ));
        conf.push_str(&format!(
            "<files motd=\"{}\">\n",
            d.join("motd.txt").display()
        ));
        for m in [
            "cap",
            "ircv3",
            "ircv3_batch",
            "ircv3_capnotify",
            "ircv3_ctctags",
            "ircv3_echomessage",
            "ircv3_labeledresponse",
            "ircv3_msgid",
            "ircv3_servertime",
            "namesx",
            "uhnames",
            "botmode",
            "chanhistory",
        ] {
            conf.push_str(&format!("<module name=\"{m}\">\n"));
        }
        conf.push_str("<chanhistory maxlines=\"100\" prefixmsg=\"no\" bots=\"yes\">\n");
        // Every channel keeps its last lines from creation on (+H), whoever creates it: after
        // a restart of this server the gateway may be back in the channel before the test's
        // IRC user, and what it says meanwhile is replayed to the user on join, as it would
        // be to anyone who rejoins later.
        conf.push_str("<options defaultmodes=\"notH 100:1h\">\n");
        std::fs::write(d.join("inspircd.conf"), conf)?;
        let mut me = OwnInspircd {
            dir,
            port,
            child: None,
        };
        me.run().await?;
        Ok(me)
    }

    pub(super) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    async fn run(&mut self) -> anyhow::Result<()> {
        self.child = Some(run_inspircd(self.dir.path(), &[self.addr()]).await?);
        Ok(())
    }

    /// Kills it (everyone is disconnected at once, as in a crash) and reaps it.
    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?;
            tokio::time::timeout(Duration::from_secs(10), c.wait())
                .await
                .context("inspircd did not exit")??;
        }
        Ok(())
    }
}

/// Runs InspIRCd on `dir/inspircd.conf` (its log appended to `dir/inspircd.log`; killed when
/// the child is dropped) and waits until it listens on every one of `addrs`.
pub(super) async fn run_inspircd(
    dir: &Path,
    addrs: &[SocketAddr],
) -> anyhow::Result<tokio::process::Child> {
    let log_path = dir.join("inspircd.log");
    let mut cmd = tokio::process::Command::new("inspircd");
    cmd.arg("--runasroot")
        .arg("--nofork")
        .arg(format!("--config={}", dir.join("inspircd.conf").display()))
        .current_dir(dir);
    let child = spawn_logged(cmd, &log_path).context("starting inspircd")?;
    for &addr in addrs {
        eventually(
            Duration::from_secs(30),
            "our inspircd to listen",
            || async move { TcpStream::connect(addr).await.ok().map(|_| ()) },
        )
        .await
        .with_context(|| tail(&log_path, 20))?;
    }
    Ok(child)
}

/// The IRC server dies while Matrix and XMPP talk and comes back: the gateway reconnects,
/// and every line for IRC that was queued while it was gone arrives once, in order.
/// Matrix ↔ XMPP never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_server_restarted_under_load() -> anyhow::Result<()> {
    let mut ircd = OwnInspircd::start().await?;
    let mut rig = Rig::new(ircd.addr()).await?;
    rig.start_gateway().await?;
    let tag = unique("ircd");
    let mut expected: BTreeMap<Net, Vec<u32>> = BTreeMap::new();

    rig.talk(&tag, &mut expected, &Net::ALL, 0..8).await?;
    // The last IRC line a second before the crash, as above.
    rig.talk(&tag, &mut expected, &[Net::Matrix, Net::Xmpp], 8..16)
        .await?;
    let before = rig.received(&tag).await?;
    ircd.kill().await?;
    print_figures(
        "at the crash (lost = still in flight then):",
        &tally(&expected, &Net::ALL, &before),
    );
    rig.talk(&tag, &mut expected, &[Net::Matrix, Net::Xmpp], 16..26)
        .await?;
    ircd.run().await?;
    // Our IRC user comes back too, and waits for the gateway's bot to rejoin.
    let irc = IrcUser::connect(ircd.addr(), &rig.irc_nick).await?;
    irc.join(&rig.channel).await?;
    rig.irc.push(irc);
    rig.wait_irc_bot_present().await?;
    rig.talk(&tag, &mut expected, &Net::ALL, 26..30).await?;
    rig.talk(&tag, &mut expected, &[Net::Irc], 8..26).await?;
    let got = rig
        .settle(
            &tag,
            &expected,
            "IRC server killed and restarted under load:",
            60,
        )
        .await?;
    // In order: what reached IRC from each origin arrived in the order it was sent.
    for origin in [Net::Matrix, Net::Xmpp] {
        assert_in_order(&got, origin, Net::Irc);
    }
    rig.kill_gateway().await?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Bad input: never a panic, never a stuck room. Each case is followed by a normal line that
// must still cross.

/// A plain IRC connection that can write any bytes (the testkit client only writes text).
struct RawIrc {
    rd: BufReader<tokio::net::tcp::OwnedReadHalf>,
    wr: tokio::net::tcp::OwnedWriteHalf,
}

impl RawIrc {
    /// Registers as `nick`, joins `channel` and waits for the end of its NAMES.
    async fn join(addr: SocketAddr, nick: &str, channel: &str) -> anyhow::Result<RawIrc> {
        let (rd, wr) = TcpStream::connect(addr).await?.into_split();
        let mut me = RawIrc {
            rd: BufReader::new(rd),
            wr,
        };
        me.send(format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n").as_bytes())
            .await?;
        me.read_until(" 001 ").await?;
        me.send(format!("JOIN {channel}\r\n").as_bytes()).await?;
        me.read_until(" 366 ").await?;
        Ok(me)
    }

    async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.wr.write_all(bytes).await?;
        Ok(())
    }

    /// Reads lines (answering PINGs) until one contains `needle`.
    async fn read_until(&mut self, needle: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            let n = tokio::time::timeout_at(deadline, self.rd.read_until(b'\n', &mut raw))
                .await
                .with_context(|| format!("waiting for {needle:?} on IRC"))??;
            anyhow::ensure!(n > 0, "the IRC server closed the connection");
            let line = String::from_utf8_lossy(&raw);
            if let Some(token) = line.strip_prefix("PING ") {
                self.send(format!("PONG {token}").as_bytes()).await?;
            }
            if line.contains(needle) {
                return Ok(());
            }
        }
    }
}

/// Every IRC line our IRC user received is free of CR, LF and NUL, and nobody but our own
/// user ever spoke in or joined `elsewhere` (a channel no bridge links).
fn assert_no_irc_injection(lobby: &Lobby, elsewhere: &str) {
    for m in lobby.irc.backlog() {
        if let irc_proto::Command::PRIVMSG(_, text) = &m.command {
            assert!(
                !text.contains(['\r', '\n', '\0']),
                "an IRC line carries CR, LF or NUL: {text:?}"
            );
        }
        match &m.command {
            irc_proto::Command::PRIVMSG(t, text) if t.eq_ignore_ascii_case(elsewhere) => {
                panic!("something spoke in {elsewhere}: {text:?}")
            }
            irc_proto::Command::JOIN(c, _, _)
                if c.eq_ignore_ascii_case(elsewhere)
                    && source_nick(&m) != Some(lobby.irc.nick()) =>
            {
                panic!("{:?} joined {elsewhere}", source_nick(&m))
            }
            _ => {}
        }
    }
}

/// Lines from IRC that are not valid UTF-8, carry NUL or stray control codes, or are CTCP
/// fragments: each is read lossily or skipped, and the next normal line crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_from_irc_never_stops_the_next_line() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let tag = unique("bi");
    let mut raw = RawIrc::join(lobby.irc_addr, &short_nick(&unique("raw")), &lobby.channel).await?;
    // Latin-1 and stray bytes: not UTF-8.
    let mut line = format!("PRIVMSG {} :{tag}u caf", lobby.channel).into_bytes();
    line.extend_from_slice(b"\xe9 \xff\xfe\xc3 end\r\n");
    raw.send(&line).await?;
    let e = lobby
        .matrix_sees(&format!("{tag}u"))
        .await
        .context("invalid UTF-8 → matrix")?;
    let b = e["content"]["body"].as_str().unwrap_or_default();
    assert!(
        b.contains('\u{fffd}') && b.contains("end"),
        "read lossily: {b:?}"
    );
    lobby
        .xmpp_sees(&format!("{tag}u"))
        .await
        .context("invalid UTF-8 → xmpp")?;
    // NUL, colour codes without digits, an unterminated CTCP, a bare CTCP request, an
    // ANSI escape, a line of nothing but formatting.
    for bad in [
        format!("{tag}n a\0b"),
        format!("{tag}c \x03\x03,\x0399,99x\x0f\x16\x1d"),
        format!("\x01ACTION {tag}a unterminated"),
        "\x01VERSION\x01".to_owned(),
        format!("{tag}e \x1b[31mred\x1b[0m"),
        "\x02\x02\x0f".to_owned(),
    ] {
        let mut l = format!("PRIVMSG {} :", lobby.channel).into_bytes();
        l.extend_from_slice(bad.as_bytes());
        l.extend_from_slice(b"\r\n");
        raw.send(&l).await?;
    }
    lobby.line_crosses(Side::Irc, "after irc bad input").await?;
    Ok(())
}

/// Hostile text from Matrix: CR/LF and NUL that would be IRC commands if written raw,
/// unbalanced and active HTML, a 60 kB message (Synapse's event limit is 64 KiB), an
/// unknown event type and an unknown msgtype (a message without a body Synapse itself
/// refuses; the appservice test sends one). Nothing is injected, and the next normal
/// line crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_from_matrix_never_stops_the_next_line() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let tag = unique("bm");
    let elsewhere = format!("#{}", unique("evil"));
    lobby.irc.join(&elsewhere).await?;
    // CR/LF: each line may arrive as its own IRC line, but never as a command.
    lobby
        .matrix
        .send_text(
            &lobby.room,
            &format!(
                "{tag}c one\r\nPRIVMSG {elsewhere} :pwned\r\nJOIN {elsewhere}\rQUIT :bye\nend"
            ),
        )
        .await?;
    lobby
        .irc_sees(&format!("{tag}c"))
        .await
        .context("CR/LF → irc")?;
    let x = lobby
        .xmpp_sees(&format!("{tag}c"))
        .await
        .context("CR/LF → xmpp")?;
    assert!(
        body(&x).is_some_and(|b| b.contains("pwned")),
        "kept as text on XMPP: {x:?}"
    );
    // Unbalanced and active HTML.
    lobby
        .matrix
        .send_html(
            &lobby.room,
            &format!("{tag}h unbalanced"),
            &format!(
                "<b><i>{tag}h unbalanced</b> <a href=\"javascript:alert(1)\">click</a>\
                 <script>alert(2)</script><img src=x onerror=alert(3)><p><table><tr><td>cell"
            ),
        )
        .await?;
    let x = lobby
        .xmpp_sees(&format!("{tag}h"))
        .await
        .context("html → xmpp")?;
    let xb = body(&x).unwrap_or_default();
    assert!(
        !xb.contains('<') && !xb.contains("alert(2)") && !xb.contains("onerror"),
        "{xb:?}"
    );
    let (_, t) = lobby
        .irc_sees(&format!("{tag}h"))
        .await
        .context("html → irc")?;
    assert!(!t.contains('<') && !t.contains("alert(2)"), "{t:?}");
    // 60 kB.
    let big = format!("{tag}b {}", "0123456789abcdef ".repeat(60_000 / 17));
    lobby.matrix.send_text(&lobby.room, &big).await?;
    // Unknown event type and msgtype, and a message without a body.
    lobby
        .matrix
        .send_event(
            &lobby.room,
            "org.example.unknown",
            serde_json::json!({ "body": format!("{tag}k") }),
        )
        .await?;
    lobby
        .matrix
        .send_event(
            &lobby.room,
            "m.room.message",
            serde_json::json!({ "msgtype": "org.example.weird", "body": format!("{tag}w weird") }),
        )
        .await?;
    lobby
        .line_crosses(Side::Matrix, "after matrix bad input")
        .await?;
    // What became of the big one, for the record.
    let on_irc: usize = lobby.irc_lines_with("0123456789abcdef");
    let on_xmpp = lobby
        .xmpp
        .backlog()
        .iter()
        .filter_map(body)
        .find(|b| b.contains(&format!("{tag}b")))
        .map(|b| b.len());
    println!("60 kB Matrix message: {on_irc} IRC lines, XMPP body {on_xmpp:?} bytes");
    assert!(
        !lobby
            .irc
            .privmsgs_in(&lobby.channel)
            .iter()
            .any(|(_, t)| t.contains(&format!("{tag}k"))),
        "an unknown event type is not relayed"
    );
    assert_no_irc_injection(&lobby, &elsewhere);
    Ok(())
}

/// Odd and hostile stanzas from XMPP: empty and missing bodies, references to ids nobody
/// knows, stanzas addressed to the component and to puppets that do not exist, markup in
/// the body, newlines, and a 100 kB body (more than Synapse takes in one event). Nothing is
/// injected, and the next normal line crosses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_from_xmpp_never_stops_the_next_line() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let tag = unique("bx");
    let muc = &lobby.muc;
    let component = lobby.slot.component.clone();
    let elsewhere = format!("#{}", unique("evil"));
    lobby.irc.join(&elsewhere).await?;
    let x = &lobby.xmpp;
    for stanza in [
        format!("<message type='groupchat' to='{muc}' id='{}'/>", x.next_id()),
        format!("<message type='groupchat' to='{muc}' id='{}'><body/></message>", x.next_id()),
        format!("<message type='groupchat' to='{muc}' id='{}'><body>   </body></message>", x.next_id()),
        format!(
            "<message type='groupchat' to='{muc}' id='{}'><body>{tag}r fix</body>\
             <replace xmlns='urn:xmpp:message-correct:0' id='no-such-id'/></message>",
            x.next_id()
        ),
        format!(
            "<message type='groupchat' to='{muc}' id='{}'><retract xmlns='urn:xmpp:message-retract:1' id='no-such-id'/></message>",
            x.next_id()
        ),
        format!(
            "<message type='groupchat' to='{muc}' id='{}'><reactions xmlns='urn:xmpp:reactions:0' id='no-such-id'><reaction>x</reaction></reactions></message>",
            x.next_id()
        ),
        format!(
            "<message type='groupchat' to='{muc}' id='{}'><body>{tag}q answer</body>\
             <reply xmlns='urn:xmpp:reply:0' to='{muc}/nobody' id='no-such-id'/></message>",
            x.next_id()
        ),
        format!("<message type='groupchat' to='{muc}' id='{}'><unknown xmlns='urn:example:junk'><deep/></unknown></message>", x.next_id()),
        format!("<message to='{component}' id='{}'/>", x.next_id()),
        format!("<message type='chat' to='{component}' id='{}'><body></body></message>", x.next_id()),
        format!("<iq type='get' to='{component}' id='{}'><query xmlns='urn:example:unknown'/></iq>", x.next_id()),
        format!("<iq type='set' to='{component}' id='{}'/>", x.next_id()),
        format!("<iq type='result' to='{component}' id='never-asked'/>"),
        format!("<presence to='{component}' type='subscribe'/>"),
        format!("<message type='chat' to='nobody%matrix@{component}' id='{}'><body>hi</body></message>", x.next_id()),
        format!("<message type='chat' to='%%%@{component}/x' id='{}'><body>hi</body></message>", x.next_id()),
    ] {
        x.send_raw(&stanza)?;
    }
    // Markup and newlines as text.
    x.send_groupchat(
        muc,
        &format!("{tag}s <script>alert(1)</script> <a href=\"javascript:x\">y</a> *b*\nPRIVMSG {elsewhere} :pwned\r\nQUIT :bye"),
    )?;
    let e = lobby
        .matrix_sees(&format!("{tag}s"))
        .await
        .context("markup → matrix")?;
    let html = e["content"]["formatted_body"].as_str().unwrap_or_default();
    assert!(
        !html.contains("<script") && !html.contains("<a href=\"javascript"),
        "{html}"
    );
    lobby
        .irc_sees(&format!("{tag}s"))
        .await
        .context("markup → irc")?;
    // 100 kB.
    let big = format!("{tag}b {}", "0123456789abcdef ".repeat(100_000 / 17));
    x.send_groupchat(muc, &big)?;
    lobby
        .line_crosses(Side::Xmpp, "after xmpp bad input")
        .await?;
    let on_matrix = lobby
        .matrix
        .events(&lobby.room)
        .await?
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .find(|b| b.contains(&format!("{tag}b")))
        .map(|b| b.len());
    let on_irc = lobby.irc_lines_with("0123456789abcdef");
    println!("100 kB XMPP message: Matrix body {on_matrix:?} bytes, {on_irc} IRC lines");
    assert_no_irc_injection(&lobby, &elsewhere);
    Ok(())
}

/// The appservice port refuses what does not come from the homeserver (no token, a wrong
/// one) and bodies that are not JSON, takes transactions full of junk without failing,
/// relays a 100 kB message the homeserver hands over, and keeps relaying afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appservice_refuses_bad_transactions_and_keeps_relaying() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let tag = unique("ba");
    let http = reqwest::Client::new();
    let base = format!("http://{}", lobby.slot.listen);
    let put = |txn: String, token: Option<String>, body: String| {
        let mut req = http
            .put(format!("{base}/_matrix/app/v1/transactions/{txn}"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move { anyhow::Ok(req.send().await?.status().as_u16()) }
    };
    let good = Some(lobby.slot.hs_token.to_string());
    let forged = serde_json::json!({ "events": [{
        "type": "m.room.message", "room_id": lobby.room, "sender": "@mallory:matrix.test",
        "event_id": format!("$forged{tag}"), "origin_server_ts": 1,
        "content": { "msgtype": "m.text", "body": format!("{tag}f forged") },
    }]})
    .to_string();
    let status = put(unique("t"), None, forged.clone()).await?;
    assert_eq!(status, 401, "no token");
    let status = put(unique("t"), Some("wrong".into()), forged.clone()).await?;
    assert_eq!(status, 403, "wrong token");
    let status = put(
        unique("t"),
        Some(format!("{}x", lobby.slot.hs_token)),
        forged.clone(),
    )
    .await?;
    assert_eq!(status, 403, "a token with the right prefix");
    let status = http
        .put(format!(
            "{base}/_matrix/app/v1/transactions/{}?access_token=wrong",
            unique("t")
        ))
        .body(forged.clone())
        .send()
        .await?
        .status()
        .as_u16();
    assert!(
        status == 401 || status == 403,
        "a token in the query is not taken: {status}"
    );
    for body in ["not json", "{\"events\": [", "\u{0}\u{1}\u{2}", ""] {
        let status = put(unique("t"), good.clone(), body.to_owned()).await?;
        assert!((400..500).contains(&status), "{body:?} answered {status}");
    }
    // Well-formed JSON with junk inside: answered, nothing relayed, no panic.
    let room = &lobby.room;
    let junk = serde_json::json!({ "events": [
        1, "x", null, [], {},
        { "type": "m.room.message" },
        { "type": "m.room.message", "room_id": room },
        { "type": "m.room.message", "room_id": room, "sender": "@mallory:matrix.test", "content": "nope" },
        { "type": "m.room.message", "room_id": room, "sender": "@mallory:matrix.test",
          "event_id": format!("$num{tag}"), "content": { "msgtype": "m.text", "body": 5 } },
        { "type": "org.example.unknown", "room_id": room, "sender": "@mallory:matrix.test",
          "event_id": format!("$unk{tag}"), "content": { "body": format!("{tag}k") } },
        { "type": "m.room.message", "room_id": "!nosuchroom:matrix.test", "sender": "@mallory:matrix.test",
          "event_id": format!("$elsewhere{tag}"), "content": { "msgtype": "m.text", "body": format!("{tag}o") } },
        { "type": "m.room.member", "room_id": room, "sender": "@mallory:matrix.test", "state_key": 7,
          "event_id": format!("$mem{tag}"), "content": { "membership": ["join"] } },
        { "type": "m.reaction", "room_id": room, "sender": "@mallory:matrix.test",
          "event_id": format!("$re{tag}"), "content": { "m.relates_to": { "rel_type": "m.annotation", "event_id": "$nope", "key": 3 } } },
        { "type": "m.room.redaction", "room_id": room, "sender": "@mallory:matrix.test",
          "event_id": format!("$red{tag}"), "redacts": "$nope", "content": {} },
    ]})
    .to_string();
    let status = put(unique("t"), good.clone(), junk).await?;
    assert!(
        status == 200 || (400..500).contains(&status),
        "junk answered {status}"
    );
    // A 100 kB message, larger than Synapse itself would send, straight from the
    // homeserver's side of the trust boundary.
    let big = serde_json::json!({ "events": [{
        "type": "m.room.message", "room_id": room, "sender": "@mallory:matrix.test",
        "event_id": format!("$big{tag}"), "origin_server_ts": 1,
        "content": { "msgtype": "m.text", "body": format!("{tag}b {}", "0123456789abcdef ".repeat(100_000 / 17)) },
    }]})
    .to_string();
    let status = put(unique("t"), good.clone(), big).await?;
    assert_eq!(status, 200, "a big message is taken");
    lobby
        .line_crosses(Side::Matrix, "after bad transactions")
        .await?;
    let on_irc = lobby.irc_lines_with("0123456789abcdef");
    println!("100 kB message from the homeserver: {on_irc} IRC lines");
    for never in [format!("{tag}f"), format!("{tag}k"), format!("{tag}o")] {
        assert!(
            !lobby
                .irc
                .privmsgs_in(&lobby.channel)
                .iter()
                .any(|(_, t)| t.contains(&never)),
            "{never} must not be relayed"
        );
    }
    Ok(())
}

/// Control characters from Matrix (NUL, U+0001 as in CTCP, ESC) are not allowed in XML:
/// the XMPP side drops them rather than lose its stream, the IRC side never writes NUL,
/// and the next line reaches both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_matrix_do_not_stop_the_next_line() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    for bad in ["a\0b", "\u{1}ACTION x\u{1}", "a\u{1b}[31mb"] {
        lobby
            .matrix
            .send_text(&lobby.room, &format!("{} {bad}", unique("ctl")))
            .await?;
        lobby
            .line_crosses(Side::Matrix, "after control characters")
            .await
            .with_context(|| format!("the line after {bad:?}"))?;
    }
    assert_no_irc_injection(&lobby, "#nowhere-at-all");
    Ok(())
}

/// An XMPP user's OOB attachment naming a loopback address must not make the gateway fetch
/// it and publish what it got in the Matrix room (server-side request forgery): the link may
/// cross as text, the bytes behind it may not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachment_urls_never_reach_private_addresses() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let secret = unique("internal secret");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let fetched = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let served = fetched.clone();
    let body = secret.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            served.store(true, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 2048];
            let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
            let reply = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(reply.as_bytes()).await;
        }
    });
    let url = format!("http://{addr}/internal.txt");
    let id = lobby.xmpp.next_id();
    lobby.xmpp.send_raw(&format!(
        "<message type='groupchat' to='{}' id='{id}'><body>{url}</body>\
         <x xmlns='jabber:x:oob'><url>{url}</url></x></message>",
        lobby.muc
    ))?;
    let after = unique("after the attachment");
    lobby.xmpp.send_groupchat(&lobby.muc, &after)?;
    lobby.matrix_sees(&after).await?;
    assert!(
        !fetched.load(std::sync::atomic::Ordering::SeqCst),
        "the gateway fetched {url} for a remote user"
    );
    Ok(())
}
