//! The fault rig: the gateway as a child process on a config file, the numbered-line load
//! every network sends (`talk`, `settle`) and the per-direction figures the tests assert on.

use crate::lobby::short_nick;
use anyhow::Context as _;
use junction_testkit::clients::irc::joiner;
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

/// How long the gateway may take to come up, or everything sent to cross.
pub(crate) const WAIT: Duration = Duration::from_secs(120);
/// The pause between two lines one user sends (pacing, not synchronisation).
pub(crate) const PACE: Duration = Duration::from_millis(120);

// ----------------------------------------------------------------------------------------
// The gateway as a child process.

/// One gateway process on a config file; killed with SIGKILL when dropped.
pub(crate) struct GatewayProcess {
    pub(crate) child: tokio::process::Child,
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
pub(crate) fn spawn_logged(
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
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A lobby whose gateway runs as a child process: rooms on all three networks, one user
/// on each, and the config and log files in a temporary directory.
pub(crate) struct Rig {
    servers: &'static Servers,
    slot: SlotGuard,
    room: String,
    muc: String,
    pub(crate) channel: String,
    irc_addr: SocketAddr,
    matrix: MatrixUser,
    xmpp: XmppUser,
    xmpp_nick: String,
    /// Every IRC connection the test made (a new one after an IRC server restart).
    pub(crate) irc: Vec<IrcUser>,
    pub(crate) irc_nick: String,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) metrics: SocketAddr,
    pub(crate) gateway: Option<GatewayProcess>,
    /// How many times the gateway has come up.
    starts: usize,
}

impl Rig {
    /// Rooms, users and config; the gateway is not started yet.
    pub(crate) async fn new(irc_addr: SocketAddr) -> anyhow::Result<Rig> {
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

    pub(crate) fn config_path(&self) -> PathBuf {
        self.dir.path().join("bridges.toml")
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.path().join("gateway.log")
    }

    pub(crate) fn config(&self) -> String {
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
    pub(crate) async fn start_gateway(&mut self) -> anyhow::Result<()> {
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
    pub(crate) async fn wait_irc_bot_present(&self) -> anyhow::Result<()> {
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
    pub(crate) fn on_postgres(&self, schema: &str) -> anyhow::Result<()> {
        let text = junction_testkit::servers::postgres::with_store(&self.config(), schema);
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    /// Starts a second gateway on the same config, its `/health` at `metrics` (as on another
    /// host): a standby while the rig's gateway is active.
    pub(crate) fn spawn_standby(&self, metrics: SocketAddr) -> anyhow::Result<GatewayProcess> {
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
    pub(crate) async fn adopt(
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

    pub(crate) async fn kill_gateway(&mut self) -> anyhow::Result<()> {
        if let Some(g) = self.gateway.take() {
            g.kill9().await?;
        }
        Ok(())
    }

    /// Every line received on each network: (receiving network, origin, number).
    pub(crate) async fn received(&self, tag: &str) -> anyhow::Result<Vec<(Net, Net, u32)>> {
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
    pub(crate) async fn talk(
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
    pub(crate) async fn settle(
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
    pub(crate) async fn send(&self, from: Net, tag: &str, n: u32) -> anyhow::Result<()> {
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
pub(crate) enum Net {
    Matrix,
    Xmpp,
    Irc,
}

impl Net {
    pub(crate) const ALL: [Net; 3] = [Net::Matrix, Net::Xmpp, Net::Irc];

    pub(crate) fn letter(self) -> char {
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
pub(crate) fn line(tag: &str, from: Net, n: u32) -> String {
    format!("{tag} {}{n:03}", from.letter())
}

/// (origin, number) of a line as `line` wrote it, wherever it sits in `text`.
pub(crate) fn parse_line(tag: &str, text: &str) -> Option<(Net, u32)> {
    let rest = &text[text.find(tag)? + tag.len()..];
    let word = rest.split_whitespace().next()?;
    let mut chars = word.chars();
    let origin = Net::from_letter(chars.next()?)?;
    let digits: String = chars.take_while(char::is_ascii_digit).collect();
    Some((origin, digits.parse().ok()?))
}

/// Notes line `n` from `net` as sent.
pub(crate) fn record(expected: &mut BTreeMap<Net, Vec<u32>>, net: Net, n: u32) {
    expected.entry(net).or_default().push(n);
}

/// What one direction saw.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct Figures {
    pub(crate) sent: usize,
    pub(crate) received: usize,
    pub(crate) lost: usize,
    pub(crate) dup: usize,
}

/// Per direction (origin → target, among `targets`): the figures for the lines in
/// `expected` (per origin), from what `got` holds.
pub(crate) fn tally(
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
pub(crate) fn bad_directions(figures: &BTreeMap<(Net, Net), Figures>) -> Vec<String> {
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

pub(crate) fn print_figures(title: &str, figures: &BTreeMap<(Net, Net), Figures>) {
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
pub(crate) const LAST: u32 = 999;

/// Each of `from` says the lines `numbers` through `send`, `pace` between rounds; all are
/// noted in `expected`.
pub(crate) async fn talk<S>(
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
pub(crate) async fn settle<R, S>(
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
pub(crate) fn assert_in_order(got: &[(Net, Net, u32)], origin: Net, target: Net) {
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
