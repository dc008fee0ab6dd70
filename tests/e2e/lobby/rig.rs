//! The lobby rig: the gateway (in process or the `junction run` binary) on its own store and
//! testkit slot, one ordinary user per network, and the waits the tests share.

use anyhow::Context as _;
use junction_testkit::clients::irc::shows_in_channel;
use junction_testkit::clients::xmpp::{body, from_nick, is_leaving, muc_status, stanza_id};
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::{postgres, servers, slot, Servers, SlotGuard};
use junction_testkit::{free_port, unique};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long any one thing may take to cross the gateway in these tests.
pub(crate) const WAIT: Duration = Duration::from_secs(60);

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
        self.wait_matrix_bot_in(&self.room).await?;
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
        self.wait_irc_bot_in(&self.channel, irc_mark).await
    }

    /// Waits until the gateway's bots are in another linked pair too: its Matrix bot in
    /// `room` (only then does the homeserver pass on what is said there) and its IRC bot in
    /// `channel`, which the lobby's IRC user has joined.
    #[allow(dead_code)]
    pub async fn wait_bots_in(&self, room: &str, channel: &str) -> anyhow::Result<()> {
        self.wait_matrix_bot_in(room).await?;
        self.wait_irc_bot_in(channel, 0).await
    }

    /// Waits until the gateway's bot is a member of the Matrix room `room`.
    async fn wait_matrix_bot_in(&self, room: &str) -> anyhow::Result<()> {
        let bot = format!("@{}:{}", self.slot.bot, "matrix.test");
        self.matrix
            .wait_member(room, &bot, WAIT)
            .await
            .with_context(|| format!("the gateway's bot in the Matrix room {room}"))
    }

    /// Waits until the lobby's IRC user, from its `mark`th line on, has seen the gateway's
    /// bot in `channel`: its JOIN, or a NAMES reply listing it.
    async fn wait_irc_bot_in(&self, channel: &str, mark: usize) -> anyhow::Result<()> {
        let irc_bot = junction_testkit::gateway::bot_nick(&self.slot);
        junction_testkit::eventually(WAIT, "the gateway's bot in the IRC channel", || {
            let found = self
                .irc
                .backlog()
                .into_iter()
                .skip(mark)
                .any(|m| shows_in_channel(&m, channel, &irc_bot));
            async move { found.then_some(()) }
        })
        .await
        .with_context(|| format!("the gateway's bot in the IRC channel {channel}"))
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

    /// Each of `people` says `lines` lines, `"{label} {p} {i}"`, in turn and as fast as it can;
    /// half a second later our IRC user says a line of its own. Once Matrix shows that line:
    /// the room's message bodies in the order they were read, and that line.
    #[allow(dead_code)]
    pub async fn burst_to_matrix(
        &self,
        people: &[IrcUser],
        label: &str,
        lines: usize,
    ) -> anyhow::Result<(Vec<String>, String)> {
        for i in 0..lines {
            for (p, user) in people.iter().enumerate() {
                user.privmsg(&self.channel, &format!("{label} {p} {i}"))?;
            }
        }
        tokio::time::sleep(Duration::from_millis(600)).await;
        let after = unique("after the burst");
        self.irc.privmsg(&self.channel, &after)?;
        self.matrix_sees(&after).await.context("the line after")?;
        Ok((self.matrix_bodies().await?, after))
    }

    /// The bodies of the room's messages, in the order the Matrix user's `/sync` read them.
    #[allow(dead_code)]
    pub async fn matrix_bodies(&self) -> anyhow::Result<Vec<String>> {
        Ok(self
            .matrix
            .events(&self.room)
            .await?
            .iter()
            .filter(|e| e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect())
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

    /// Waits until the MUC carries a XEP-0444 reaction `key` to the message whose stanza-id
    /// is `sid`.
    pub async fn xmpp_sees_reaction(
        &self,
        sid: &str,
        key: &str,
    ) -> anyhow::Result<minidom::Element> {
        self.xmpp
            .wait_for(WAIT, |el| {
                super::child(el, "reactions", "urn:xmpp:reactions:0").is_some_and(|r| {
                    r.attr("id") == Some(sid) && r.children().any(|c| c.text() == key)
                })
            })
            .await
    }

    /// True when the IRC user saw `text` in the channel.
    pub fn irc_has(&self, text: &str) -> bool {
        self.irc_lines_with(text) > 0
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
pub(crate) fn has_pill(e: &Value, user: &str) -> bool {
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

/// What the Matrix adapter logs (at debug) when a message goes to Matrix beside others of
/// its room (`[matrix] parallel_senders`).
#[allow(dead_code)]
pub const SENT_TOGETHER: &str = "A message goes to Matrix beside others of its room.";

/// The `[gateway] log` line that keeps [`SENT_TOGETHER`] in a logged gateway's log.
#[allow(dead_code)]
pub const LOG_SENT_TOGETHER: &str = "log = \"info,junction_matrix::adapter=debug\"";

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

/// The plain body of the Matrix event `e`.
pub(crate) fn matrix_body(e: &Value) -> String {
    e["content"]["body"].as_str().unwrap_or_default().to_owned()
}
