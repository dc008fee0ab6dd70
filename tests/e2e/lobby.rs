//! The lobby end to end: the whole gateway (`junction::serve`) linking one Matrix room, one
//! MUC and one IRC channel on the real servers, with an ordinary user of each network
//! connected through the testkit clients. Every test builds its own lobby (unique room
//! names, its own testkit slot and store), so tests never see each other's traffic.
//!
//! The README's capability table names the tests here; `tests/capabilities.rs` checks each
//! name exists, so the table can not drift from what is tested.

use anyhow::Context as _;
use junction_testkit::clients::irc::{is_join_of, joiner, source_nick};
use junction_testkit::clients::xmpp::{body, from_nick, is_leaving, muc_status, stanza_id};
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::{postgres, servers, slot, Servers, SlotGuard};
use junction_testkit::{free_port, unique};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long any one thing may take to cross the gateway in these tests.
const WAIT: Duration = Duration::from_secs(60);

/// One running lobby: the gateway and one ordinary user on each network.
pub struct Lobby {
    /// The Matrix room id.
    pub room: String,
    /// The MUC bare JID.
    pub muc: String,
    /// The IRC channel.
    pub channel: String,
    /// alice on Matrix, joined to the room.
    pub matrix: MatrixUser,
    /// alice on XMPP, an occupant of the MUC.
    pub xmpp: XmppUser,
    /// Her nick in the MUC.
    pub xmpp_nick: String,
    /// An IRC user in the channel.
    pub irc: IrcUser,
    /// The IRC server the lobby uses.
    #[allow(dead_code)]
    pub irc_addr: SocketAddr,
    /// The testkit slot (appservice, component) this gateway runs as.
    pub slot: SlotGuard,
    /// The servers this lobby is on (the shared ones, or a Prosody of the test's own).
    #[allow(dead_code)]
    pub servers: Servers,
    gateway: Gateway,
}

/// A gateway run in-process by `junction::serve` on a config text and a store of its own
/// (or, with [`Gateway::logged`], as the `junction run` binary writing its log to a file);
/// stopped when dropped.
pub struct Gateway {
    /// What the config text is called in its errors.
    name: &'static str,
    config: String,
    data: tempfile::TempDir,
    running: Option<Running>,
    /// Runs the binary with its log (at its default level) in this file.
    log: Option<std::path::PathBuf>,
    /// The PostgreSQL schema its store is in (`JUNCTION_TEST_STORE=postgres`), dropped with it.
    pg_schema: Option<String>,
}

/// A started gateway.
enum Running {
    Task(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    Process(tokio::process::Child),
}

impl Gateway {
    /// A gateway (not started yet) on the config text `config`, called `name` in errors.
    pub fn new(name: &'static str, config: String) -> anyhow::Result<Gateway> {
        // `JUNCTION_TEST_LOG=junction=debug` shows the gateway's log in failing tests.
        if let Ok(filter) = std::env::var("JUNCTION_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        // `JUNCTION_TEST_STORE=postgres` keeps the store in a schema of its own on the
        // testkit's PostgreSQL instead of sled.
        let pg_schema = postgres::e2e_store_is_postgres().then(|| unique("e2e").to_lowercase());
        let config = match &pg_schema {
            Some(schema) => postgres::with_store(&config, schema),
            None => config,
        };
        Ok(Gateway {
            name,
            config,
            data: tempfile::tempdir()?,
            running: None,
            log: None,
            pg_schema,
        })
    }

    /// Makes the gateway run as `junction run -c <file>`, a child process, its log (stderr,
    /// at the level a deployment gets by default) appended to a file of its own.
    pub fn logged(mut self) -> Self {
        self.log = Some(self.data.path().join("gateway.log"));
        self
    }

    /// Starts (or starts again) the gateway on its store.
    pub fn start(&mut self) -> anyhow::Result<()> {
        let config = junction::config::parse(&self.config, self.name, self.data.path(), &|_| None)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if let Some(log) = &self.log {
            let file = self.data.path().join(self.name);
            std::fs::write(&file, &self.config)?;
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?;
            let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_junction"))
                .arg("run")
                .arg("-c")
                .arg(&file)
                .env_remove("JUNCTION_LOG")
                .env_remove("RUST_LOG")
                .stdin(std::process::Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .kill_on_drop(true)
                .spawn()
                .context("starting the junction binary")?;
            self.running = Some(Running::Process(child));
            return Ok(());
        }
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(junction::serve(config, shutdown.clone()));
        self.running = Some(Running::Task(shutdown, task));
        Ok(())
    }

    /// What the gateway logged so far (a [`Gateway::logged`] one; else nothing).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok())
            .unwrap_or_default()
    }

    /// Fails if the gateway stopped on its own (it must ride out a server restart).
    pub fn assert_running(&mut self) -> anyhow::Result<()> {
        let up = match &mut self.running {
            Some(Running::Task(_, task)) => !task.is_finished(),
            Some(Running::Process(child)) => child.try_wait()?.is_none(),
            None => false,
        };
        anyhow::ensure!(up, "the gateway stopped");
        Ok(())
    }

    /// Stops the gateway cleanly (as on SIGTERM) and waits for it; a child process is
    /// killed.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        match self.running.take() {
            Some(Running::Task(shutdown, task)) => {
                shutdown.cancel();
                task.await??;
            }
            Some(Running::Process(mut child)) => {
                child.start_kill()?;
                child.wait().await?;
            }
            None => {}
        }
        Ok(())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(Running::Task(shutdown, _)) = &self.running {
            shutdown.cancel();
        }
        if let Some(schema) = &self.pg_schema {
            postgres::drop_schema(schema);
        }
    }
}

impl Lobby {
    /// A lobby on InspIRCd.
    pub async fn start() -> anyhow::Result<Lobby> {
        Self::start_with(|_| {}).await
    }

    /// A lobby on InspIRCd whose gateway serves `/metrics` on a free loopback port, with
    /// `extra` lines in its `[gateway]` table; the lobby and the base URL of `/metrics`.
    pub async fn start_with_metrics(extra: &str) -> anyhow::Result<(Lobby, String)> {
        let port = free_port()?;
        let lobby = Self::start_with(|c| {
            in_gateway(c, &format!("metrics = \"127.0.0.1:{port}\"\n{extra}"));
        })
        .await?;
        Ok((lobby, format!("http://127.0.0.1:{port}")))
    }

    /// A lobby on InspIRCd whose config text `tweak` may change before it is parsed.
    pub async fn start_with(tweak: impl FnOnce(&mut String)) -> anyhow::Result<Lobby> {
        let servers = servers().await?;
        Self::start_on(servers.inspircd, tweak).await
    }

    /// A lobby on InspIRCd whose gateway runs as the `junction run` binary, its log at the
    /// default level kept for [`Lobby::gateway_log`]; `tweak` may change its config text.
    #[allow(dead_code)]
    pub async fn start_logged(tweak: impl FnOnce(&mut String)) -> anyhow::Result<Lobby> {
        let servers = servers().await?;
        Self::start_inner(servers, servers.inspircd, tweak, true).await
    }

    /// What a [`Lobby::start_logged`] gateway logged so far.
    #[allow(dead_code)]
    pub fn gateway_log(&self) -> String {
        self.gateway.log_text()
    }

    /// A lobby on the IRC server at `irc_addr`.
    pub async fn start_on(
        irc_addr: SocketAddr,
        tweak: impl FnOnce(&mut String),
    ) -> anyhow::Result<Lobby> {
        let servers = servers().await?;
        Self::start_on_servers(servers, irc_addr, tweak).await
    }

    /// A lobby on `servers` (e.g. with a `PrivateServer` Prosody) and the IRC server at
    /// `irc_addr`.
    pub async fn start_on_servers(
        servers: &Servers,
        irc_addr: SocketAddr,
        tweak: impl FnOnce(&mut String),
    ) -> anyhow::Result<Lobby> {
        Self::start_inner(servers, irc_addr, tweak, false).await
    }

    /// A lobby on `servers` and the IRC server at `irc_addr`, its gateway in-process or, when
    /// `logged`, the binary with its log kept.
    async fn start_inner(
        servers: &Servers,
        irc_addr: SocketAddr,
        tweak: impl FnOnce(&mut String),
        logged: bool,
    ) -> anyhow::Result<Lobby> {
        let slot = slot().await?;
        let name = unique("lobby");
        let matrix = MatrixUser::login(servers, "alice", "alicepw").await?;
        let room = matrix
            .create_room(Some(&name), true)
            .await
            .context("creating the Matrix room")?;
        // As a room admin would: the gateway's bot may set the topic and moderate.
        matrix
            .set_power_level(
                &room,
                &format!("@{}:{}", slot.bot, servers.matrix.server_name),
                100,
            )
            .await
            .context("giving the bot power")?;
        let muc = format!("{name}@{}", servers.xmpp.muc);
        let channel = format!("#{name}");
        let mut config = lobby_config(servers, &slot, &room, &muc, &channel, irc_addr);
        tweak(&mut config);
        let mut gateway = Gateway::new("lobby.toml", config)?;
        if logged {
            gateway = gateway.logged();
        }
        let xmpp = XmppUser::register(servers, &short_nick(&unique("xu")), "pw-lobby").await?;
        let xmpp_nick = unique("ax");
        let irc_nick = short_nick(&unique("ir"));
        let irc = IrcUser::connect(irc_addr, &irc_nick).await?;
        let mut lobby = Lobby {
            room,
            muc,
            channel,
            matrix,
            xmpp,
            xmpp_nick,
            irc,
            irc_addr,
            slot,
            servers: servers.clone(),
            gateway,
        };
        // The IRC user and the XMPP user are in before the gateway, so their rooms exist
        // and the gateway's arrivals are seen.
        lobby.irc.join(&lobby.channel).await?;
        lobby.xmpp.join_muc(&lobby.muc, &lobby.xmpp_nick).await?;
        // The room's owner lets the gateway's listener change the subject and moderate.
        let listener = format!("junction@{}", lobby.slot.component);
        lobby
            .xmpp
            .set_affiliation(&lobby.muc, &listener, "admin")
            .await
            .context("making the gateway a room admin")?;
        lobby.start_gateway().await?;
        Ok(lobby)
    }

    /// Starts (or restarts) the gateway on this lobby's store and waits until it has joined
    /// the room on every network.
    pub async fn start_gateway(&mut self) -> anyhow::Result<()> {
        let (irc_mark, xmpp_mark) = (self.irc.backlog().len(), self.xmpp.backlog().len());
        self.gateway.start()?;
        self.wait_joined(irc_mark, xmpp_mark).await
    }

    /// The gateway's config text (as `lobby.toml`).
    #[allow(dead_code)]
    pub fn config_text(&self) -> &str {
        &self.gateway.config
    }

    /// Runs `junction <command> -c bridges.toml` on a copy of this lobby's config, as an
    /// operator would beside the running gateway, and returns what it printed.
    #[allow(dead_code)]
    pub async fn run_cli(&self, command: &str) -> anyhow::Result<std::process::Output> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("bridges.toml");
        std::fs::write(&file, self.config_text())?;
        Ok(tokio::process::Command::new(env!("CARGO_BIN_EXE_junction"))
            .arg(command)
            .arg("-c")
            .arg(&file)
            .output()
            .await?)
    }

    /// Changes the gateway's config text for its next start.
    #[allow(dead_code)]
    pub fn tweak_config(&mut self, tweak: impl FnOnce(&mut String)) {
        tweak(&mut self.gateway.config);
    }

    /// Where the gateway keeps its store (open it only while the gateway is stopped).
    pub fn store_dir(&self) -> std::path::PathBuf {
        self.gateway.data.path().join("data").join("store")
    }

    /// Stops the gateway cleanly (as on SIGTERM) and waits for it.
    pub async fn stop_gateway(&mut self) -> anyhow::Result<()> {
        self.gateway.stop().await
    }

    /// Waits until the gateway's bot is in the IRC channel, its listener in the MUC and its
    /// bot in the Matrix room.
    async fn wait_joined(&self, irc_mark: usize, xmpp_mark: usize) -> anyhow::Result<()> {
        let bot = format!("@{}:{}", self.slot.bot, "matrix.test");
        self.matrix
            .wait_member(&self.room, &bot, WAIT)
            .await
            .context("the gateway's bot in the Matrix room")?;
        let component = self.slot.component.clone();
        let muc_prefix = format!("{}/", self.muc);
        junction_testkit::eventually(WAIT, "the gateway's listener in the MUC", || {
            let found = self.xmpp.backlog().into_iter().skip(xmpp_mark).any(|el| {
                el.name() == "presence"
                    && el.attr("type").is_none()
                    && el.attr("from").is_some_and(|f| f.starts_with(&muc_prefix))
                    && el.children().any(|c| {
                        c.name() == "x"
                            && c.children().any(|i| {
                                i.name() == "item"
                                    && i.attr("jid").is_some_and(|j| j.contains(&component))
                            })
                    })
            });
            async move { found.then_some(()) }
        })
        .await?;
        let irc_bot = junction_testkit::gateway::bot_nick(&self.slot);
        junction_testkit::eventually(WAIT, "the gateway's bot in the IRC channel", || {
            let found = self
                .irc
                .backlog()
                .into_iter()
                .skip(irc_mark)
                .any(|m| is_join_of(&m, &self.channel, &irc_bot));
            async move { found.then_some(()) }
        })
        .await
        .context("the gateway's bot in the IRC channel")?;
        Ok(())
    }

    /// Waits for a Matrix event in the room sent by someone other than alice whose body
    /// contains `text`.
    pub async fn matrix_sees(&self, text: &str) -> anyhow::Result<Value> {
        let me = self.matrix.user_id().to_owned();
        self.matrix
            .wait_for(&self.room, WAIT, |e| {
                e["sender"].as_str() != Some(me.as_str())
                    && e["type"] == "m.room.message"
                    && e["content"]["body"]
                        .as_str()
                        .is_some_and(|b| b.contains(text))
            })
            .await
    }

    /// Waits for a groupchat message in the MUC from someone other than our XMPP user whose
    /// body contains `text`.
    pub async fn xmpp_sees(&self, text: &str) -> anyhow::Result<minidom::Element> {
        self.xmpp
            .wait_for(WAIT, |el| {
                el.name() == "message"
                    && el.attr("type") == Some("groupchat")
                    && el
                        .attr("from")
                        .is_some_and(|f| f.starts_with(&format!("{}/", self.muc)))
                    && from_nick(el) != Some(self.xmpp_nick.as_str())
                    && body(el).is_some_and(|b| b.contains(text))
            })
            .await
    }

    /// Waits for a PRIVMSG in the channel containing `text`; returns (nick, text).
    pub async fn irc_sees(&self, text: &str) -> anyhow::Result<(String, String)> {
        let channel = self.channel.clone();
        junction_testkit::eventually(WAIT, &format!("{text:?} on IRC"), || {
            let found = self
                .irc
                .privmsgs_in(&channel)
                .into_iter()
                .find(|(_, t)| t.contains(text));
            async move { found }
        })
        .await
    }
}

/// A network of the lobby, where its user says something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Matrix,
    Xmpp,
    Irc,
}

impl Side {
    fn letter(self) -> char {
        match self {
            Side::Matrix => 'M',
            Side::Xmpp => 'X',
            Side::Irc => 'I',
        }
    }
}

impl Lobby {
    /// The lobby's user on `from` says a fresh line (`what` and a unique suffix), and it is
    /// seen on both other networks; the errors name `what` and the direction.
    pub async fn line_crosses(&self, from: Side, what: &str) -> anyhow::Result<()> {
        let text = unique(what);
        match from {
            Side::Matrix => {
                self.matrix.send_text(&self.room, &text).await?;
            }
            Side::Xmpp => {
                self.xmpp.send_groupchat(&self.muc, &text)?;
            }
            Side::Irc => self.irc.privmsg(&self.channel, &text)?,
        }
        let to = |side: Side| format!("{what}: {}→{}", from.letter(), side.letter());
        if from != Side::Matrix {
            self.matrix_sees(&text)
                .await
                .with_context(|| to(Side::Matrix))?;
        }
        if from != Side::Xmpp {
            self.xmpp_sees(&text)
                .await
                .with_context(|| to(Side::Xmpp))?;
        }
        if from != Side::Irc {
            self.irc_sees(&text).await.with_context(|| to(Side::Irc))?;
        }
        Ok(())
    }

    /// Alice sends `text` on Matrix with a pill of `user` (named `someone`) in front.
    pub async fn matrix_pill(&self, user: &str, text: &str) -> anyhow::Result<String> {
        self.matrix
            .send_html(
                &self.room,
                &format!("someone: {text}"),
                &format!("<a href=\"https://matrix.to/#/{user}\">someone</a>: {text}"),
            )
            .await
    }

    /// Waits until the MUC retracts `copy` (a message seen in it): the retraction names its
    /// stanza-id or its id.
    pub async fn xmpp_retracted(
        &self,
        copy: &minidom::Element,
    ) -> anyhow::Result<minidom::Element> {
        let sid = stanza_id(copy).context("stanza-id")?;
        self.xmpp
            .wait_for(WAIT, |el| {
                el.name() == "message"
                    && el.children().any(|c| {
                        c.name() == "retract"
                            && (c.attr("id") == Some(sid.as_str())
                                || c.attr("id") == copy.attr("id"))
                    })
            })
            .await
    }

    /// How many lines in the IRC channel contain `text`.
    pub fn irc_lines_with(&self, text: &str) -> usize {
        self.irc
            .privmsgs_in(&self.channel)
            .iter()
            .filter(|(_, t)| t.contains(text))
            .count()
    }

    /// The XMPP user says `text` in the MUC; the room's reflection of it (with the room's
    /// stanza-id).
    pub async fn xmpp_says(&self, text: &str) -> anyhow::Result<minidom::Element> {
        self.xmpp.send_groupchat(&self.muc, text)?;
        self.xmpp
            .wait_for(WAIT, |el| {
                from_nick(el) == Some(self.xmpp_nick.as_str())
                    && body(el).is_some_and(|b| b.contains(text))
            })
            .await
    }

    /// The IRC user says something new; once it crossed, their Matrix ghost's user id and
    /// their MUC occupant's full JID.
    pub async fn irc_user_speaks(&self) -> anyhow::Result<(String, String)> {
        let hello = unique("irc user speaks");
        self.irc.privmsg(&self.channel, &hello)?;
        let e = self.matrix_sees(&hello).await?;
        let ghost = e["sender"].as_str().context("sender")?.to_owned();
        let x = self.xmpp_sees(&hello).await?;
        let occupant = x.attr("from").context("from")?.to_owned();
        Ok((ghost, occupant))
    }

    /// Waits for a membership event of `member` in the Matrix room whose content `f` accepts.
    pub async fn matrix_membership(
        &self,
        member: &str,
        f: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        self.matrix
            .wait_for(&self.room, WAIT, |r| {
                r["type"] == "m.room.member"
                    && r["state_key"].as_str() == Some(member)
                    && f(&r["content"])
            })
            .await
    }

    /// Waits until `member` left the Matrix room.
    pub async fn matrix_left(&self, member: &str) -> anyhow::Result<Value> {
        self.matrix_membership(member, |c| c["membership"] == "leave")
            .await
    }

    /// Waits until `member`'s display name in the Matrix room contains `name`.
    pub async fn matrix_renamed(&self, member: &str, name: &str) -> anyhow::Result<Value> {
        self.matrix_membership(member, |c| {
            c["displayname"].as_str().is_some_and(|d| d.contains(name))
        })
        .await
    }

    /// Waits until the Matrix room's topic is `topic`.
    pub async fn matrix_topic(&self, topic: &str) -> anyhow::Result<Value> {
        self.matrix
            .wait_for(&self.room, WAIT, |r| {
                r["type"] == "m.room.topic" && r["content"]["topic"].as_str() == Some(topic)
            })
            .await
    }

    /// Waits for an event in the Matrix room whose body contains every one of `words`.
    pub async fn matrix_line(&self, words: &[&str]) -> anyhow::Result<Value> {
        self.matrix
            .wait_for(&self.room, WAIT, |r| {
                words.iter().all(|w| matrix_body(r).contains(w))
            })
            .await
    }

    /// Waits until `occupant` (a full JID in the MUC) left it.
    pub async fn xmpp_left(&self, occupant: &str) -> anyhow::Result<minidom::Element> {
        self.xmpp
            .wait_for(WAIT, |el| is_leaving(el, occupant))
            .await
    }

    /// Waits until `occupant` (a full JID in the MUC) changed nick (left with status 303).
    pub async fn xmpp_renamed(&self, occupant: &str) -> anyhow::Result<minidom::Element> {
        self.xmpp
            .wait_for(WAIT, |el| is_leaving(el, occupant) && muc_status(el, "303"))
            .await
    }

    /// Waits until the MUC's subject is `topic`.
    pub async fn xmpp_subject(&self, topic: &str) -> anyhow::Result<minidom::Element> {
        self.xmpp
            .wait_for(WAIT, |el| {
                el.children()
                    .any(|c| c.name() == "subject" && c.text() == topic)
            })
            .await
    }

    /// Waits for a message whose body contains every one of `words` on XMPP.
    pub async fn xmpp_line(&self, words: &[&str]) -> anyhow::Result<minidom::Element> {
        self.xmpp
            .wait_for(WAIT, |el| {
                body(el).is_some_and(|b| words.iter().all(|w| b.contains(w)))
            })
            .await
    }

    /// Waits for a PRIVMSG or NOTICE in the channel containing every one of `words`.
    pub async fn irc_line(&self, words: &[&str]) -> anyhow::Result<irc_proto::Message> {
        self.irc
            .wait_for(WAIT, |m| match &m.command {
                irc_proto::Command::PRIVMSG(c, t) | irc_proto::Command::NOTICE(c, t) => {
                    c.eq_ignore_ascii_case(&self.channel) && words.iter().all(|w| t.contains(w))
                }
                _ => false,
            })
            .await
    }

    /// Waits until the channel's topic, or a line in it, carries `topic`.
    pub async fn irc_topic(&self, topic: &str) -> anyhow::Result<irc_proto::Message> {
        self.irc
            .wait_for(WAIT, |m| match &m.command {
                irc_proto::Command::TOPIC(c, Some(t))
                | irc_proto::Command::PRIVMSG(c, t)
                | irc_proto::Command::NOTICE(c, t) => {
                    c.eq_ignore_ascii_case(&self.channel) && t.contains(topic)
                }
                _ => false,
            })
            .await
    }
}

/// Whether the Matrix event `e` pills `user` in its formatted body.
fn has_pill(e: &Value, user: &str) -> bool {
    e["content"]["formatted_body"]
        .as_str()
        .is_some_and(|html| html.contains(&format!("https://matrix.to/#/{user}")))
}

/// Adds `lines` to the `[gateway]` table of a lobby's config text.
pub fn in_gateway(config: &mut String, lines: &str) {
    *config = config.replace(
        "membership = \"all\"",
        &format!("membership = \"all\"\n{lines}"),
    );
}

/// A nick short enough for every test server.
pub fn short_nick(s: &str) -> String {
    let alnum: String = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if alnum.len() <= 9 {
        return alnum;
    }
    // The first letters (the test's prefix), then a digest of the whole name: cutting the
    // name short instead made two names of one process the same nick once its counter
    // passed 99 (`adm123410` for the 10th and the 100th), and the second connection then
    // waited for ever behind 433 "nick in use".
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in alnum.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut nick: String = alnum.chars().take(3).collect();
    for _ in 0..6 {
        let d = (h % 36) as u32;
        h /= 36;
        nick.push(char::from_digit(d, 36).unwrap_or('0'));
    }
    nick
}

/// The gateway config for one lobby.
fn lobby_config(
    servers: &Servers,
    slot: &SlotGuard,
    room: &str,
    muc: &str,
    channel: &str,
    irc: SocketAddr,
) -> String {
    use junction_testkit::gateway;
    format!(
        "\n[gateway]\ndata_dir = \"data\"\nmembership = \"all\"\n{}{}{}{}",
        gateway::matrix_section(servers, slot),
        gateway::xmpp_section(servers, slot),
        gateway::irc_section(irc, slot),
        gateway::bridge(
            "lobby",
            Some(room),
            Some(muc),
            Some(&format!("local/{channel}"))
        ),
    )
}

fn matrix_body(e: &Value) -> String {
    e["content"]["body"].as_str().unwrap_or_default().to_owned()
}

// ----------------------------------------------------------------------------------------
// Plain text, all six directions.

/// Plain text from each network reaches the other two, each line once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_six_directions() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let from_matrix = unique("hello from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    lobby
        .xmpp_sees(&from_matrix)
        .await
        .context("matrix → xmpp")?;
    lobby.irc_sees(&from_matrix).await.context("matrix → irc")?;

    let from_xmpp = unique("hello from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    lobby
        .matrix_sees(&from_xmpp)
        .await
        .context("xmpp → matrix")?;
    lobby.irc_sees(&from_xmpp).await.context("xmpp → irc")?;

    let from_irc = unique("hello from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    let m = lobby.matrix_sees(&from_irc).await.context("irc → matrix")?;
    assert_eq!(matrix_body(&m), from_irc);
    let x = lobby.xmpp_sees(&from_irc).await.context("irc → xmpp")?;
    assert_eq!(body(&x).as_deref(), Some(from_irc.as_str()));
    // The sender shows up as themself: the ghost and the occupant carry the IRC nick.
    assert!(
        from_nick(&x).is_some_and(|n| n.contains(lobby.irc.nick())),
        "occupant nick {:?} should carry the IRC nick {}",
        from_nick(&x),
        lobby.irc.nick()
    );
    let _ = stanza_id(&x);
    Ok(())
}

/// The XMPP element's child with `name` in namespace `ns`, if any.
fn child<'a>(el: &'a minidom::Element, name: &str, ns: &str) -> Option<&'a minidom::Element> {
    el.children().find(|c| c.name() == name && c.ns() == ns)
}

/// IRC text of a CTCP ACTION, if it is one.
fn action(text: &str) -> Option<&str> {
    text.strip_prefix("\u{1}ACTION ")
        .map(|t| t.strip_suffix('\u{1}').unwrap_or(t))
}

// ----------------------------------------------------------------------------------------
// Emotes.

/// `/me` from each network arrives as the native emote on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emotes_six_directions() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let m = unique("waves from matrix");
    lobby.matrix.send_emote(&lobby.room, &m).await?;
    let x = lobby.xmpp_sees(&m).await.context("matrix → xmpp")?;
    assert!(body(&x).is_some_and(|b| b.starts_with("/me ")), "{x:?}");
    let (_, t) = lobby.irc_sees(&m).await.context("matrix → irc")?;
    assert!(action(&t).is_some(), "IRC should get an ACTION: {t:?}");

    let x_text = unique("waves from xmpp");
    lobby
        .xmpp
        .send_groupchat(&lobby.muc, &format!("/me {x_text}"))?;
    let e = lobby.matrix_sees(&x_text).await.context("xmpp → matrix")?;
    assert_eq!(e["content"]["msgtype"], "m.emote");
    let (_, t) = lobby.irc_sees(&x_text).await.context("xmpp → irc")?;
    assert!(action(&t).is_some(), "IRC should get an ACTION: {t:?}");

    let i = unique("waves from irc");
    lobby.irc.action(&lobby.channel, &i)?;
    let e = lobby.matrix_sees(&i).await.context("irc → matrix")?;
    assert_eq!(e["content"]["msgtype"], "m.emote");
    let x = lobby.xmpp_sees(&i).await.context("irc → xmpp")?;
    assert!(body(&x).is_some_and(|b| b.starts_with("/me ")), "{x:?}");
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Formatting and sanitising.

/// Bold and code cross as each network's own markup; markup of one network is never
/// active on another (`<script>` from Matrix, literal `<b>` typed on IRC or XMPP).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formatting_six_directions_and_sanitised() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Matrix HTML → XEP-0393 and IRC codes; the script is gone everywhere.
    let tag = unique("fmtm");
    lobby
        .matrix
        .send_html(
            &lobby.room,
            &format!("{tag} strong words"),
            &format!("{tag} <b>strong</b> words<script>alert(1)</script>"),
        )
        .await?;
    let x = lobby.xmpp_sees(&tag).await.context("matrix → xmpp")?;
    let xb = body(&x).unwrap_or_default();
    assert!(xb.contains("*strong*"), "XEP-0393 bold expected: {xb:?}");
    assert!(!xb.contains("script") && !xb.contains("alert"), "{xb:?}");
    let (_, t) = lobby.irc_sees(&tag).await.context("matrix → irc")?;
    assert!(t.contains("\u{2}strong\u{2}"), "IRC bold expected: {t:?}");
    assert!(!t.contains("alert"), "{t:?}");

    // XEP-0393 → Matrix HTML and IRC codes.
    let tag = unique("fmtx");
    lobby
        .xmpp
        .send_groupchat(&lobby.muc, &format!("{tag} *loud* and `code`"))?;
    let e = lobby.matrix_sees(&tag).await.context("xmpp → matrix")?;
    let html = e["content"]["formatted_body"].as_str().unwrap_or_default();
    assert!(
        html.contains("<strong>loud</strong>") || html.contains("<b>loud</b>"),
        "Matrix bold expected: {e}"
    );
    assert!(
        html.contains("<code>code</code>"),
        "Matrix code expected: {e}"
    );
    let (_, t) = lobby.irc_sees(&tag).await.context("xmpp → irc")?;
    assert!(t.contains("\u{2}loud\u{2}"), "IRC bold expected: {t:?}");

    // IRC codes → Matrix HTML and XEP-0393; literal markup typed on IRC stays text.
    let tag = unique("fmti");
    lobby.irc.privmsg(
        &lobby.channel,
        &format!("{tag} \u{2}bold\u{2} and <b>not bold</b> <img src=x onerror=alert(1)>"),
    )?;
    let e = lobby.matrix_sees(&tag).await.context("irc → matrix")?;
    let html = e["content"]["formatted_body"].as_str().unwrap_or_default();
    assert!(
        html.contains("<strong>bold</strong>") || html.contains("<b>bold</b>"),
        "Matrix bold expected: {e}"
    );
    assert!(!html.contains("<img") && !html.contains("<b>not"), "{html}");
    assert!(
        matrix_body(&e).contains("<b>not bold</b>"),
        "typed markup stays visible text: {e}"
    );
    let x = lobby.xmpp_sees(&tag).await.context("irc → xmpp")?;
    assert!(
        body(&x).is_some_and(|b| b.contains("*bold*")),
        "XEP-0393 bold expected: {x:?}"
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Edits.

/// A correction on one network replaces the message natively elsewhere; IRC gets the new
/// text marked as a correction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_cross_natively() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Matrix edit → XMPP correction of the puppet's message, IRC line.
    let orig = unique("typo frm matrix");
    let ev = lobby.matrix.send_text(&lobby.room, &orig).await?;
    let first = lobby.xmpp_sees(&orig).await?;
    lobby.irc_sees(&orig).await?;
    let fixed = unique("fixed from matrix");
    lobby
        .matrix
        .send_edit(&lobby.room, &ev, &fixed)
        .await
        .context("sending the edit")?;
    let x = lobby
        .xmpp_sees(&fixed)
        .await
        .context("matrix edit → xmpp")?;
    let replace = child(&x, "replace", "urn:xmpp:message-correct:0")
        .context("the XMPP message should be a XEP-0308 correction")?;
    assert_eq!(replace.attr("id"), first.attr("id"));
    lobby.irc_sees(&fixed).await.context("matrix edit → irc")?;

    // XMPP correction → Matrix m.replace of the ghost's event.
    let orig = unique("typo frm xmpp");
    let id = lobby.xmpp.send_groupchat(&lobby.muc, &orig)?;
    let m_orig = lobby.matrix_sees(&orig).await?;
    let fixed = unique("fixed from xmpp");
    lobby.xmpp.send_correction(&lobby.muc, &id, &fixed)?;
    let e = lobby
        .matrix_sees(&fixed)
        .await
        .context("xmpp edit → matrix")?;
    assert_eq!(e["content"]["m.relates_to"]["rel_type"], "m.replace", "{e}");
    assert_eq!(e["content"]["m.relates_to"]["event_id"], m_orig["event_id"]);
    let (_, t) = lobby.irc_sees(&fixed).await.context("xmpp edit → irc")?;
    assert!(t.contains(&fixed));
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Replies.

/// A reply is native where the network has replies and a short quote on IRC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // An IRC line, answered on Matrix: XMPP sees a XEP-0461 reply to the IRC puppet's message.
    let question = unique("question from irc");
    lobby.irc.privmsg(&lobby.channel, &question)?;
    let m_q = lobby.matrix_sees(&question).await?;
    let x_q = lobby.xmpp_sees(&question).await?;
    let answer = unique("answer from matrix");
    let q_id = m_q["event_id"].as_str().context("event id")?.to_owned();
    lobby.matrix.send_reply(&lobby.room, &q_id, &answer).await?;
    let x = lobby
        .xmpp_sees(&answer)
        .await
        .context("matrix reply → xmpp")?;
    let reply = child(&x, "reply", "urn:xmpp:reply:0")
        .context("the XMPP message should be a XEP-0461 reply")?;
    assert_eq!(reply.attr("id").map(str::to_owned), stanza_id(&x_q));
    let (_, t) = lobby
        .irc_sees(&answer)
        .await
        .context("matrix reply → irc")?;
    assert!(t.len() > answer.len(), "IRC gets a quote fallback: {t:?}");

    // An XMPP reply to a Matrix message → Matrix in_reply_to.
    let hello = unique("hello from matrix");
    let m_id = lobby.matrix.send_text(&lobby.room, &hello).await?;
    let x_hello = lobby.xmpp_sees(&hello).await?;
    let sid = stanza_id(&x_hello).context("stanza-id")?;
    let from = x_hello.attr("from").context("from")?.to_owned();
    let reply_text = unique("reply from xmpp");
    lobby
        .xmpp
        .send_reply(&lobby.muc, &sid, &from, &reply_text)?;
    let e = lobby
        .matrix_sees(&reply_text)
        .await
        .context("xmpp reply → matrix")?;
    assert_eq!(
        e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"].as_str(),
        Some(m_id.as_str()),
        "{e}"
    );
    assert!(
        !matrix_body(&e).starts_with("> "),
        "the XMPP fallback quote is stripped: {e}"
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Redactions.

/// A redaction on Matrix retracts the XMPP copy; a retraction on XMPP redacts the Matrix
/// copy. IRC has nothing to take back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redactions_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let text = unique("regret from matrix");
    let ev = lobby.matrix.send_text(&lobby.room, &text).await?;
    let x = lobby.xmpp_sees(&text).await?;
    lobby.matrix.redact(&lobby.room, &ev, "oops").await?;
    lobby
        .xmpp_retracted(&x)
        .await
        .context("matrix redaction → xmpp retraction")?;

    let text = unique("regret from xmpp");
    let mine = lobby.xmpp_says(&text).await?;
    let e = lobby.matrix_sees(&text).await?;
    let my_sid = stanza_id(&mine).context("our stanza-id")?;
    lobby.xmpp.send_retraction(&lobby.muc, &my_sid)?;
    let target = e["event_id"].as_str().context("event id")?.to_owned();
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| {
            r["type"] == "m.room.redaction"
                && (r["redacts"].as_str() == Some(target.as_str())
                    || r["content"]["redacts"].as_str() == Some(target.as_str()))
        })
        .await
        .context("xmpp retraction → matrix redaction")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Reactions.

/// Reactions are native on Matrix and XMPP, a short line on IRC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let text = unique("react to me");
    lobby.irc.privmsg(&lobby.channel, &text)?;
    let e = lobby.matrix_sees(&text).await?;
    let x = lobby.xmpp_sees(&text).await?;
    let sid = stanza_id(&x).context("stanza-id")?;
    let ev = e["event_id"].as_str().context("event id")?.to_owned();
    lobby.matrix.react(&lobby.room, &ev, "👍").await?;
    lobby
        .xmpp
        .wait_for(WAIT, |el| {
            child(el, "reactions", "urn:xmpp:reactions:0").is_some_and(|r| {
                r.attr("id") == Some(sid.as_str()) && r.children().any(|c| c.text() == "👍")
            })
        })
        .await
        .context("matrix reaction → xmpp")?;
    lobby
        .irc_sees("👍")
        .await
        .context("matrix reaction → irc")?;

    lobby.xmpp.send_reaction(&lobby.muc, &sid, &["🎉"])?;
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| {
            r["type"] == "m.reaction"
                && r["content"]["m.relates_to"]["event_id"].as_str() == Some(ev.as_str())
                && r["content"]["m.relates_to"]["key"] == "🎉"
        })
        .await
        .context("xmpp reaction → matrix")?;
    lobby.irc_sees("🎉").await.context("xmpp reaction → irc")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Attachments.

/// A Matrix image reaches XMPP as OOB and IRC as a link through the gateway's media proxy,
/// and the link serves the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attachments_cross_as_links() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let bytes = b"\x89PNG\r\n\x1a\nnot really a png".to_vec();
    let name = format!("{}.png", unique("pic"));
    let mxc = lobby
        .matrix
        .upload(bytes.clone(), "image/png", &name)
        .await?;
    lobby.matrix.send_image(&lobby.room, &mxc, &name).await?;
    let x = lobby
        .xmpp
        .wait_for(WAIT, |el| {
            child(el, "x", "jabber:x:oob").is_some() && body(el).is_some_and(|b| b.contains("http"))
        })
        .await
        .context("matrix image → xmpp oob")?;
    let url = child(&x, "x", "jabber:x:oob")
        .and_then(|o| o.children().find(|c| c.name() == "url"))
        .map(|u| u.text())
        .context("oob url")?;
    let got = reqwest::get(&url).await?.bytes().await?;
    assert_eq!(got.as_ref(), bytes.as_slice(), "the proxy serves the file");
    let (_, t) = lobby.irc_sees("http").await.context("matrix image → irc")?;
    assert!(t.contains("http://"), "{t:?}");
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Topic and membership.

/// A topic set on IRC becomes the Matrix topic and the MUC subject; an IRC user leaving
/// makes their ghost and occupant leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_and_membership_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let (ghost, occupant) = lobby.irc_user_speaks().await?;

    let topic = unique("the topic");
    lobby.irc.set_topic(&lobby.channel, &topic)?;
    lobby
        .matrix_topic(&topic)
        .await
        .context("irc topic → matrix")?;
    // The room's admin made the gateway a MUC admin, so the subject is set natively.
    lobby
        .xmpp_subject(&topic)
        .await
        .context("irc topic → xmpp subject")?;

    lobby.irc.part(&lobby.channel, "bye")?;
    lobby
        .matrix_left(&ghost)
        .await
        .context("irc part → matrix ghost leaves")?;
    lobby
        .xmpp_left(&occupant)
        .await
        .context("irc part → xmpp occupant leaves")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Durability of the message map.

/// Edits and redactions of messages sent before a gateway restart still find their copies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_after_restart() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let orig = unique("before restart");
    let ev = lobby.matrix.send_text(&lobby.room, &orig).await?;
    let first = lobby.xmpp_sees(&orig).await?;
    lobby.irc_sees(&orig).await?;
    lobby.stop_gateway().await?;
    lobby.start_gateway().await?;
    let fixed = unique("after restart");
    lobby.matrix.send_edit(&lobby.room, &ev, &fixed).await?;
    let x = lobby
        .xmpp_sees(&fixed)
        .await
        .context("edit after restart → xmpp")?;
    let replace = child(&x, "replace", "urn:xmpp:message-correct:0")
        .context("still a correction after the restart")?;
    assert_eq!(replace.attr("id"), first.attr("id"));
    lobby.irc_sees(&fixed).await?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Old-style IRC.

/// On ngIRCd (no IRCv3, 9-character nicks) text crosses both ways and a Matrix user's
/// puppet nick is trimmed to fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_text_on_ngircd() -> anyhow::Result<()> {
    let servers = servers().await?;
    let lobby = Lobby::start_on(servers.ngircd, |_| {}).await?;
    let from_matrix = unique("hi ngircd from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    let (nick, _) = lobby
        .irc_sees(&from_matrix)
        .await
        .context("matrix → ngircd")?;
    assert!(nick.chars().count() <= 9, "nick {nick} fits NICKLEN 9");
    let from_xmpp = unique("hi ngircd from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    lobby.irc_sees(&from_xmpp).await.context("xmpp → ngircd")?;
    let from_irc = unique("hi from ngircd");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    lobby
        .matrix_sees(&from_irc)
        .await
        .context("ngircd → matrix")?;
    lobby.xmpp_sees(&from_irc).await.context("ngircd → xmpp")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Topic and membership from Matrix and XMPP; kicks reflected.

/// A Matrix topic reaches IRC and XMPP; an XMPP user leaving leaves everywhere; a Matrix
/// moderator kicking an IRC user's ghost is reported on IRC (not enforced there: Matrix room
/// moderators are not IRC channel operators).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_topic_xmpp_leave_and_kick_reflected() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let topic = unique("matrix topic");
    lobby.matrix.set_topic(&lobby.room, &topic).await?;
    lobby
        .irc_topic(&topic)
        .await
        .context("matrix topic → irc")?;
    lobby
        .xmpp_subject(&topic)
        .await
        .context("matrix topic → xmpp")?;

    // An IRC user speaks (so a ghost exists), then a Matrix moderator kicks the ghost.
    let hello = unique("about to be kicked");
    lobby.irc.privmsg(&lobby.channel, &hello)?;
    let e = lobby.matrix_sees(&hello).await?;
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    lobby.matrix.kick(&lobby.room, &ghost, "behave").await?;
    lobby
        .irc_line(&["kicked", "behave"])
        .await
        .context("matrix kick → a line on irc")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Mentions.

/// `nick:` on IRC naming a Matrix user's puppet becomes a pill for that Matrix user; a
/// Matrix pill of an IRC user's ghost reaches IRC as the IRC nick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Alice speaks first, so her puppet exists on IRC and we learn its nick.
    let hello = unique("alice says hi");
    lobby.matrix.send_text(&lobby.room, &hello).await?;
    let (alice_nick, _) = lobby.irc_sees(&hello).await?;
    let ping = unique("ping");
    lobby
        .irc
        .privmsg(&lobby.channel, &format!("{alice_nick}: {ping}"))?;
    let e = lobby
        .matrix_sees(&ping)
        .await
        .context("irc mention → matrix")?;
    let alice = lobby.matrix.user_id().to_owned();
    assert!(has_pill(&e, &alice), "a pill for {alice}: {e}");

    // The IRC user's ghost, pilled on Matrix, is the IRC nick on IRC.
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    let pong = unique("pong");
    let nick = lobby.irc.nick().to_owned();
    lobby.matrix_pill(&ghost, &pong).await?;
    let (_, t) = lobby.irc_sees(&pong).await.context("matrix pill → irc")?;
    assert!(t.contains(&nick), "the pill becomes {nick}: {t:?}");
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Nick changes.

/// An XMPP user changing nick renames their Matrix ghost and their IRC puppet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nick_changes_cross() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let hello = unique("before the rename");
    lobby.xmpp.send_groupchat(&lobby.muc, &hello)?;
    let e = lobby.matrix_sees(&hello).await?;
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    let (old_nick, _) = lobby.irc_sees(&hello).await?;
    let new = short_nick(&unique("rn"));
    lobby
        .xmpp
        .send_raw(&format!("<presence to='{}/{new}'/>", lobby.muc))?;
    lobby
        .matrix_renamed(&ghost, &new)
        .await
        .context("xmpp nick change → matrix displayname")?;
    lobby
        .irc
        .wait_for(WAIT, |m| {
            matches!(&m.command, irc_proto::Command::NICK(n) if n.contains(&new[..new.len().min(6)]))
                && source_nick(m) == Some(old_nick.as_str())
        })
        .await
        .context("xmpp nick change → irc NICK")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Attachments from XMPP.

/// An XMPP user's OOB attachment reaches Matrix and IRC as its link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_attachments_cross_as_links() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let url = format!("https://files.example.org/{}.png", unique("up"));
    lobby.xmpp.send_groupchat_with(
        &lobby.muc,
        &url,
        &format!("<x xmlns='jabber:x:oob'><url>{url}</url></x>"),
    )?;
    lobby.matrix_sees(&url).await.context("xmpp oob → matrix")?;
    lobby.irc_sees(&url).await.context("xmpp oob → irc")?;
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Metrics and health of a running gateway.

/// `/health` says every network is connected and `/metrics` counts what crossed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_of_a_running_lobby() -> anyhow::Result<()> {
    let (lobby, base) = Lobby::start_with_metrics("").await?;
    let health = junction_testkit::eventually(WAIT, "every network connected", || {
        let url = format!("{base}/health");
        async move {
            let r = reqwest::get(&url).await.ok()?;
            (r.status() == 200).then_some(())?;
            r.json::<Value>().await.ok()
        }
    })
    .await?;
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(
        health["networks"].as_array().map(Vec::len),
        Some(3),
        "{health}"
    );

    let text = unique("counted");
    lobby.irc.privmsg(&lobby.channel, &text)?;
    lobby.matrix_sees(&text).await?;
    lobby.xmpp_sees(&text).await?;
    let metrics = junction_testkit::eventually(WAIT, "the line counted", || {
        let url = format!("{base}/metrics");
        async move {
            let body = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let counted = body.lines().any(|l| {
                l.starts_with("junction_messages_in_total{network=\"irc:local\"}")
                    && !l.ends_with(" 0")
            }) && body.lines().any(|l| {
                l.starts_with("junction_messages_out_total{network=\"xmpp\"}") && !l.ends_with(" 0")
            }) && body.lines().any(|l| {
                // The IRC user's ghost on Matrix counts as a puppet.
                l.starts_with("junction_puppets_connected{network=\"matrix\"}")
                    && !l.ends_with(" 0")
            });
            counted.then_some(body)
        }
    })
    .await?;
    assert!(
        metrics.contains("junction_delivery_latency_seconds_bucket"),
        "latency histogram exported"
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// A ban once, for all networks.

/// A global admin on Matrix bans an XMPP user by bare JID: the gateway refuses that user's
/// messages on every network from then on (found through the occupant's real JID), and
/// everyone else keeps talking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_ban_of_an_xmpp_user_stops_their_messages_everywhere() -> anyhow::Result<()> {
    let lobby = Lobby::start_with(|c| in_gateway(c, "admins = [\"@alice:matrix.test\"]")).await?;
    let before = unique("before the ban");
    lobby.xmpp.send_groupchat(&lobby.muc, &before)?;
    lobby.irc_sees(&before).await?;

    // A direct chat with the bot is the command line.
    let bot = format!("@{}:matrix.test", lobby.slot.bot);
    let dm = lobby.matrix.create_room(None, false).await?;
    lobby.matrix.invite(&dm, &bot).await?;
    let members_dm = dm.clone();
    let m = &lobby.matrix;
    junction_testkit::eventually(WAIT, "the bot in the direct chat", || {
        let (bot, dm) = (bot.clone(), members_dm.clone());
        async move { m.members(&dm).await.ok().filter(|x| x.contains_key(&bot)) }
    })
    .await?;
    let jid = lobby.xmpp.bare_jid().to_owned();
    lobby
        .matrix
        .send_text(&dm, &format!("ban {jid} spamming"))
        .await?;
    let reply = lobby
        .matrix
        .wait_for(&dm, WAIT, |e| {
            e["sender"].as_str() == Some(bot.as_str())
                && matrix_body(e).to_lowercase().contains("banned")
        })
        .await
        .context("the bot answers the ban")?;
    assert!(matrix_body(&reply).contains(&jid), "{reply}");

    let after = unique("after the ban");
    lobby.xmpp.send_groupchat(&lobby.muc, &after)?;
    // Everyone else still crosses; the banned user's line does not.
    let canary = unique("irc still talks");
    lobby.irc.privmsg(&lobby.channel, &canary)?;
    lobby.matrix_sees(&canary).await?;
    lobby.xmpp_sees(&canary).await?;
    let marker = unique("matrix after");
    lobby.matrix.send_text(&lobby.room, &marker).await?;
    lobby.irc_sees(&marker).await?;
    assert!(
        !lobby
            .irc
            .privmsgs_in(&lobby.channel)
            .iter()
            .any(|(_, t)| t.contains(&after)),
        "the banned user's line reached IRC"
    );
    Ok(())
}

// ----------------------------------------------------------------------------------------
// The remaining directions of membership, nick changes, topics, kicks and mentions.

/// Someone joining on Matrix appears on IRC and XMPP, and leaving leaves there; the same for
/// someone joining on XMPP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_and_parts_from_matrix_and_xmpp() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let servers = servers().await?;
    // Matrix: a new user joins, says something, leaves.
    let name = short_nick(&unique("mj"));
    let carol = MatrixUser::register(servers, &name, "pw-lobby").await?;
    carol.join(&lobby.room).await?;
    // Her occupant enters the MUC on the join itself.
    let muc_prefix = format!("{}/", lobby.muc);
    lobby
        .xmpp
        .wait_for(WAIT, |el| {
            el.name() == "presence"
                && el.attr("type").is_none()
                && el
                    .attr("from")
                    .is_some_and(|f| f.starts_with(&muc_prefix) && f.contains(&name))
        })
        .await
        .context("matrix join → xmpp occupant")?;
    let hi = unique("carol is here");
    carol.send_text(&lobby.room, &hi).await?;
    let (carol_nick, _) = lobby.irc_sees(&hi).await?;
    let x = lobby.xmpp_sees(&hi).await?;
    let carol_occupant = x.attr("from").context("from")?.to_owned();
    carol.leave(&lobby.room).await?;
    lobby
        .irc
        .wait_for(WAIT, |m| {
            source_nick(m) == Some(carol_nick.as_str())
                && matches!(
                    &m.command,
                    irc_proto::Command::PART(..) | irc_proto::Command::QUIT(..)
                )
        })
        .await
        .context("matrix leave → irc part")?;
    lobby
        .xmpp_left(&carol_occupant)
        .await
        .context("matrix leave → xmpp unavailable")?;

    // XMPP: a second user joins the MUC: a ghost joins on Matrix, a puppet on IRC.
    let dave_name = short_nick(&unique("xd"));
    let dave = XmppUser::register(servers, &dave_name, "pw-lobby").await?;
    let dave_nick = unique("dave");
    dave.join_muc(&lobby.muc, &dave_nick).await?;
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT, |r| {
            r["type"] == "m.room.member"
                && r["content"]["membership"] == "join"
                && r["content"]["displayname"]
                    .as_str()
                    .is_some_and(|d| d.contains(&dave_nick))
        })
        .await
        .context("xmpp join → matrix ghost joins")?;
    // IRC puppets connect when the person first speaks (a connection per lurker would cost
    // the IRC network for nothing); then their puppet joins before the line.
    let words = unique("dave speaks");
    dave.send_groupchat(&lobby.muc, &words)?;
    let (puppet, _) = lobby.irc_sees(&words).await.context("xmpp → irc")?;
    let backlog = lobby.irc.backlog();
    let joined = backlog
        .iter()
        .position(|m| joiner(m, &lobby.channel) == Some(puppet.as_str()));
    let spoke = backlog.iter().position(
        |m| matches!(&m.command, irc_proto::Command::PRIVMSG(_, t) if t.contains(&words)),
    );
    assert!(
        joined.is_some() && joined < spoke,
        "the puppet {puppet} joins before it speaks"
    );
    Ok(())
}

/// An IRC nick change renames the Matrix ghost and the XMPP occupant; a Matrix display
/// name change renames the IRC puppet and the XMPP occupant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nick_changes_from_irc_and_matrix() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let servers = servers().await?;
    let (ghost, occupant) = lobby.irc_user_speaks().await?;
    let new = short_nick(&unique("nn"));
    lobby.irc.send_raw(&format!("NICK {new}"))?;
    lobby
        .matrix_renamed(&ghost, &new)
        .await
        .context("irc nick → matrix displayname")?;
    lobby
        .xmpp_renamed(&occupant)
        .await
        .context("irc nick → xmpp nick change")?;

    // Matrix: a fresh user speaks, then changes display name.
    let name = short_nick(&unique("mr"));
    let erin = MatrixUser::register(servers, &name, "pw-lobby").await?;
    erin.join(&lobby.room).await?;
    let hi = unique("erin before rename");
    erin.send_text(&lobby.room, &hi).await?;
    let (old_nick, _) = lobby.irc_sees(&hi).await?;
    let x = lobby.xmpp_sees(&hi).await?;
    let occupant = x.attr("from").context("from")?.to_owned();
    let display = short_nick(&unique("Er"));
    erin.set_displayname(&display).await?;
    lobby
        .irc
        .wait_for(WAIT, |m| {
            source_nick(m) == Some(old_nick.as_str())
                && matches!(&m.command, irc_proto::Command::NICK(n) if n.starts_with(&display[..4]))
        })
        .await
        .context("matrix displayname → irc NICK")?;
    lobby
        .xmpp_renamed(&occupant)
        .await
        .context("matrix displayname → xmpp nick change")?;
    Ok(())
}

/// A subject set on XMPP becomes the Matrix topic and reaches IRC; an XMPP owner kicking
/// an IRC user's occupant and an IRC operator kicking a Matrix user's puppet are reported on
/// the other networks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xmpp_topic_and_kicks_reflected_from_xmpp_and_irc() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let topic = unique("xmpp subject");
    lobby.xmpp.set_subject(&lobby.muc, &topic)?;
    lobby
        .matrix_topic(&topic)
        .await
        .context("xmpp subject → matrix topic")?;
    lobby
        .irc_topic(&topic)
        .await
        .context("xmpp subject → irc")?;

    // The XMPP owner kicks the IRC user's occupant.
    let hi = unique("irc user speaks");
    lobby.irc.privmsg(&lobby.channel, &hi)?;
    let x = lobby.xmpp_sees(&hi).await?;
    let occupant_nick = from_nick(&x).context("nick")?.to_owned();
    lobby.xmpp.kick(&lobby.muc, &occupant_nick).await?;
    lobby
        .matrix_line(&["kicked", &occupant_nick])
        .await
        .context("xmpp kick → a line on matrix")?;

    // The IRC user (channel operator: they made the channel) kicks Matrix alice's puppet.
    let hello = unique("alice speaks");
    lobby.matrix.send_text(&lobby.room, &hello).await?;
    let (alice_nick, _) = lobby.irc_sees(&hello).await?;
    lobby.irc.kick(&lobby.channel, &alice_nick, "out you go")?;
    lobby
        .xmpp_line(&["kicked", "out you go"])
        .await
        .context("irc kick → a line on xmpp")?;
    Ok(())
}

/// Mentions from XMPP become pills on Matrix and the IRC nick on IRC; a Matrix pill of an
/// XMPP user's ghost reaches XMPP as their nick.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_from_xmpp_and_to_xmpp() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    let hello = unique("alice says hello");
    lobby.matrix.send_text(&lobby.room, &hello).await?;
    let x = lobby.xmpp_sees(&hello).await?;
    let (alice_irc, _) = lobby.irc_sees(&hello).await?;
    let alice_occupant = from_nick(&x).context("nick")?.to_owned();
    let ping = unique("ping from xmpp");
    lobby
        .xmpp
        .send_groupchat(&lobby.muc, &format!("{alice_occupant}: {ping}"))?;
    let e = lobby
        .matrix_sees(&ping)
        .await
        .context("xmpp mention → matrix")?;
    let alice = lobby.matrix.user_id().to_owned();
    assert!(has_pill(&e, &alice), "a pill for {alice}: {e}");
    let (_, t) = lobby.irc_sees(&ping).await.context("xmpp mention → irc")?;
    assert!(t.contains(&alice_irc), "the IRC nick {alice_irc}: {t:?}");

    // Alice pills the XMPP user's ghost.
    let ghost = e["sender"].as_str().context("sender")?.to_owned();
    let pong = unique("pong to xmpp");
    lobby.matrix_pill(&ghost, &pong).await?;
    let x = lobby.xmpp_sees(&pong).await.context("matrix pill → xmpp")?;
    assert!(
        body(&x).is_some_and(|b| b.contains(&lobby.xmpp_nick)),
        "the pill becomes {}: {x:?}",
        lobby.xmpp_nick
    );

    // On IRC, `nick:` naming the XMPP user's puppet reaches XMPP as their nick.
    let (xmpp_puppet, _) = lobby.irc_sees(&ping).await?;
    let hey = unique("hey from irc");
    lobby
        .irc
        .privmsg(&lobby.channel, &format!("{xmpp_puppet}: {hey}"))?;
    let x = lobby.xmpp_sees(&hey).await.context("irc mention → xmpp")?;
    assert!(
        body(&x).is_some_and(|b| b.starts_with(&lobby.xmpp_nick)),
        "the IRC address becomes {}: {x:?}",
        lobby.xmpp_nick
    );
    Ok(())
}

/// Kicks by room moderators in the remaining directions are reported as a line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicks_reflected_in_the_remaining_directions() -> anyhow::Result<()> {
    let lobby = Lobby::start().await?;
    // Everyone speaks once, so every puppet and ghost exists.
    let m = unique("m speaks");
    lobby.matrix.send_text(&lobby.room, &m).await?;
    let (alice_irc, _) = lobby.irc_sees(&m).await?;
    let x_alice = lobby.xmpp_sees(&m).await?;
    let alice_occupant = from_nick(&x_alice).context("nick")?.to_owned();
    let x = unique("x speaks");
    lobby.xmpp.send_groupchat(&lobby.muc, &x)?;
    let e = lobby.matrix_sees(&x).await?;
    let xmpp_ghost = e["sender"].as_str().context("sender")?.to_owned();
    let (xmpp_irc, _) = lobby.irc_sees(&x).await?;

    // Matrix kicks the XMPP user's ghost → a line on XMPP.
    lobby
        .matrix
        .kick(&lobby.room, &xmpp_ghost, "m kicks x")
        .await?;
    lobby
        .xmpp_line(&["kicked", "m kicks x"])
        .await
        .context("matrix kick → a line on xmpp")?;

    // XMPP's owner kicks Matrix alice's occupant → a line on IRC.
    lobby.xmpp.kick(&lobby.muc, &alice_occupant).await?;
    lobby
        .irc_line(&["kicked", &alice_occupant])
        .await
        .context("xmpp kick → a line on irc")?;

    // IRC's operator kicks the XMPP user's puppet → a line on Matrix.
    lobby.irc.kick(&lobby.channel, &xmpp_irc, "i kicks x")?;
    lobby
        .matrix_line(&["kicked", "i kicks x"])
        .await
        .context("irc kick → a line on matrix")?;
    let _ = alice_irc;
    Ok(())
}
