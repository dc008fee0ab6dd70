//! The lobby end to end: the whole gateway (`junction::serve`) linking one Matrix room, one
//! MUC and one IRC channel on the real servers, with an ordinary user of each network
//! connected through the testkit clients. Every test builds its own lobby (unique room
//! names, its own testkit slot and store), so tests never see each other's traffic.
//!
//! The README's capability table names the tests here; `tests/capabilities.rs` checks each
//! name exists, so the table can not drift from what is tested.

use anyhow::Context as _;
use junction_testkit::clients::irc::source_nick;
use junction_testkit::clients::xmpp::{body, from_nick, stanza_id};
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::{servers, slot, Servers, SlotGuard};
use junction_testkit::unique;
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
    pub irc_addr: SocketAddr,
    /// The testkit slot (appservice, component) this gateway runs as.
    pub slot: SlotGuard,
    config: String,
    data: tempfile::TempDir,
    gateway: Option<(
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    )>,
}

impl Lobby {
    /// A lobby on InspIRCd.
    pub async fn start() -> anyhow::Result<Lobby> {
        Self::start_with(|_| {}).await
    }

    /// A lobby on InspIRCd whose config text `tweak` may change before it is parsed.
    pub async fn start_with(tweak: impl FnOnce(&mut String)) -> anyhow::Result<Lobby> {
        let servers = servers().await?;
        let slot = slot().await?;
        let name = unique("lobby");
        let matrix = MatrixUser::login(servers, "alice", "alicepw").await?;
        let room = matrix
            .create_room(Some(&name), true)
            .await
            .context("creating the Matrix room")?;
        let muc = format!("{name}@{}", servers.xmpp.muc);
        let channel = format!("#{name}");
        let irc_addr = servers.inspircd;
        let data = tempfile::tempdir()?;
        let mut config = lobby_config(servers, &slot, &name, &room, &muc, &channel, irc_addr);
        tweak(&mut config);
        let xmpp = XmppUser::connect(servers, "alice", "alicepw").await?;
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
            config,
            data,
            gateway: None,
        };
        // The IRC user and the XMPP user are in before the gateway, so their rooms exist
        // and the gateway's arrivals are seen.
        lobby.irc.join(&lobby.channel).await?;
        lobby.xmpp.join_muc(&lobby.muc, &lobby.xmpp_nick).await?;
        lobby.start_gateway().await?;
        Ok(lobby)
    }

    /// Starts (or restarts) the gateway on this lobby's store and waits until it has joined
    /// the room on every network.
    pub async fn start_gateway(&mut self) -> anyhow::Result<()> {
        let config =
            junction::config::parse(&self.config, "lobby.toml", self.data.path(), &|_| None)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(junction::serve(config, shutdown.clone()));
        self.gateway = Some((shutdown, task));
        self.wait_joined().await
    }

    /// Stops the gateway cleanly (as on SIGTERM) and waits for it.
    pub async fn stop_gateway(&mut self) -> anyhow::Result<()> {
        if let Some((shutdown, task)) = self.gateway.take() {
            shutdown.cancel();
            task.await??;
        }
        Ok(())
    }

    /// Waits until the gateway's bot is in the IRC channel, its listener in the MUC and its
    /// bot in the Matrix room.
    async fn wait_joined(&self) -> anyhow::Result<()> {
        let bot = format!("@{}:{}", self.slot.bot, "matrix.test");
        let room = self.room.clone();
        let matrix = &self.matrix;
        junction_testkit::eventually(WAIT, "the gateway's bot in the Matrix room", || {
            let bot = bot.clone();
            let room = room.clone();
            async move {
                matrix
                    .members(&room)
                    .await
                    .ok()
                    .filter(|m| m.contains_key(&bot))
            }
        })
        .await?;
        let component = self.slot.component.clone();
        let since = self.xmpp.backlog().len();
        let _ = since;
        self.xmpp
            .wait_for(WAIT, |el| {
                el.name() == "presence"
                    && el.attr("type").is_none()
                    && el
                        .attr("from")
                        .is_some_and(|f| f.starts_with(&format!("{}/", self.muc)))
                    && el.children().any(|c| {
                        c.name() == "x"
                            && c.children().any(|i| {
                                i.name() == "item"
                                    && i.attr("jid").is_some_and(|j| j.contains(&component))
                            })
                    })
            })
            .await
            .context("the gateway's listener in the MUC")?;
        let irc_bot = irc_bot_nick(&self.slot);
        self.irc
            .wait_for(WAIT, |m| {
                matches!(&m.command, irc_proto::Command::JOIN(c, _, _) if c.eq_ignore_ascii_case(&self.channel))
                    && source_nick(m).is_some_and(|n| n.eq_ignore_ascii_case(&irc_bot))
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

impl Drop for Lobby {
    fn drop(&mut self) {
        if let Some((shutdown, _)) = &self.gateway {
            shutdown.cancel();
        }
    }
}

/// The bot nick a slot's gateway uses on IRC (9 characters at most, for ngIRCd).
pub fn irc_bot_nick(slot: &SlotGuard) -> String {
    format!("jt{}gw", slot.index)
}

/// A nick short enough for every test server.
pub fn short_nick(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(9)
        .collect()
}

/// The gateway config for one lobby.
fn lobby_config(
    servers: &Servers,
    slot: &SlotGuard,
    name: &str,
    room: &str,
    muc: &str,
    channel: &str,
    irc: SocketAddr,
) -> String {
    let _ = name;
    format!(
        r#"
[gateway]
data_dir = "data"
membership = "all"

[matrix]
homeserver = "{hs}"
server_name = "{server_name}"
listen = "{listen}"
as_token = "{as_token}"
hs_token = "{hs_token}"
bot = "{bot}"
id = "{as_id}"
user_prefix = "{prefix}"

[xmpp]
component = "{component}"
server = "{xmpp}"
secret = "{secret}"

[irc.local]
server = "{irc}"
nick = "{irc_bot}"
mode = "puppet"
lines_per_second = 20.0
burst = 50

[[bridge]]
name = "lobby"
matrix = "{room}"
xmpp = "{muc}"
irc = "local/{channel}"
"#,
        hs = servers.matrix.url,
        server_name = servers.matrix.server_name,
        listen = slot.listen,
        as_token = slot.as_token,
        hs_token = slot.hs_token,
        bot = slot.bot,
        as_id = slot.as_id,
        prefix = slot.user_prefix,
        component = slot.component,
        xmpp = servers.xmpp.component,
        secret = slot.component_secret,
        irc_bot = irc_bot_nick(slot),
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
