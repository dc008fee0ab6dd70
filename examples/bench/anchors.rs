//! The gateways `--compare` runs as processes of their own: Junction (the `junction` binary on
//! a testkit slot's config), biboumi (on a second slot's XMPP component) and heisenbridge (on
//! that slot's appservice registration), with their idempotent installs.

use super::{cpu_secs, rss_kb_of};
use anyhow::Context as _;
use junction_core::format::html::escaped as escape;
use junction_testkit::clients::{MatrixUser, XmppUser};
use junction_testkit::servers::{Servers, Slot, SlotGuard};
use junction_testkit::unique;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// The heisenbridge release compared against, installed from PyPI into its own venv.
const HEISENBRIDGE_VERSION: &str = "1.15.4";
/// Where heisenbridge's venv lives (like the testkit's Synapse venv under /opt).
const HEISENBRIDGE_VENV: &str = "/opt/heisenbridge-venv";

/// How long heisenbridge may take to open a room.
const MINUTE: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------------
// Setup: the anchors installed idempotently

fn succeeded(cmd: &mut std::process::Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run_checked(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    anyhow::ensure!(status.success(), "{cmd:?} failed: {status}");
    Ok(())
}

/// biboumi from Debian, heisenbridge from PyPI into its venv; nothing is done for what is
/// already there.
pub(crate) fn install_anchors() -> anyhow::Result<()> {
    if !succeeded(std::process::Command::new("biboumi").arg("--help")) {
        eprintln!("installing biboumi (apt-get)…");
        let apt = |args: &[&str]| {
            let mut c = std::process::Command::new("apt-get");
            c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
            c
        };
        if run_checked(&mut apt(&["install", "-y", "biboumi"])).is_err() {
            run_checked(&mut apt(&["update"]))?;
            run_checked(&mut apt(&["install", "-y", "biboumi"]))?;
        }
    }
    let python = Path::new(HEISENBRIDGE_VENV).join("bin/python");
    let wanted = format!(
        "import importlib.metadata as m; assert m.version('heisenbridge') == '{HEISENBRIDGE_VERSION}'"
    );
    if !succeeded(std::process::Command::new(&python).args(["-c", &wanted])) {
        eprintln!("installing heisenbridge {HEISENBRIDGE_VERSION} into {HEISENBRIDGE_VENV}…");
        if !python.exists() {
            run_checked(std::process::Command::new("python3").args([
                "-m",
                "venv",
                HEISENBRIDGE_VENV,
            ]))?;
        }
        run_checked(std::process::Command::new(&python).args([
            "-m",
            "pip",
            "install",
            "-q",
            &format!("heisenbridge=={HEISENBRIDGE_VERSION}"),
        ]))?;
    }
    Ok(())
}

/// The `junction` binary beside this example (`target/release/junction`), built first.
pub(crate) fn junction_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("where the example runs from")?;
    let bin = dir.join("junction");
    // Built every time (cargo does nothing when it is current): `cargo run --example bench`
    // builds the example, not the binary, and a binary left from an older tree would be
    // measured in its place.
    eprintln!("building the junction binary (if it is not current)…");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let release = dir.file_name().is_some_and(|n| n == "release");
    let mut c = std::process::Command::new(cargo);
    c.args(["build", "--bin", "junction"]);
    if release {
        c.arg("--release");
    }
    run_checked(&mut c)?;
    Ok(bin)
}

// ---------------------------------------------------------------------------------------------
// Processes

/// One gateway process, killed when dropped.
pub(crate) struct Proc {
    child: tokio::process::Child,
    pid: String,
}

impl Proc {
    fn spawn(mut cmd: tokio::process::Command, log: &Path) -> anyhow::Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {cmd:?}"))?;
        let pid = child.id().context("no pid")?.to_string();
        Ok(Proc { child, pid })
    }

    pub(crate) fn cpu(&self) -> f64 {
        cpu_secs(&self.pid)
    }

    pub(crate) fn rss_kb(&self) -> u64 {
        rss_kb_of(&self.pid)
    }

    pub(crate) async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// Until `log` has a line containing `needle` (bounded).
async fn wait_log(log: &Path, needle: &str, deadline: Duration) -> anyhow::Result<()> {
    junction_testkit::eventually(deadline, needle, || {
        let found = std::fs::read_to_string(log).is_ok_and(|s| s.contains(needle));
        async move { found.then_some(()) }
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// The gateways

/// Junction as its own process on slot `slot`: one bridge MUC ↔ channel, one Matrix room ↔
/// channel; IRC flood control out of the way (as in the main bench).
pub(crate) async fn start_junction(
    s: &Servers,
    slot: &SlotGuard,
    dir: &Path,
    x_room: &str,
    x_chan: &str,
    mx_room: &str,
    mx_chan: &str,
) -> anyhow::Result<Proc> {
    use junction_testkit::gateway;
    let irc = gateway::irc_section(s.inspircd, slot)
        .replace("max_puppets = 50", "max_puppets = 20000")
        .replace("lines_per_second = 20.0", "lines_per_second = 1000000.0")
        .replace("burst = 50", "burst = 1000000");
    let text = format!(
        "[gateway]\ndata_dir = \"data\"\nmembership = \"off\"\nrate_per_minute = 0\n{}{}{irc}{}{}",
        gateway::matrix_section(s, slot),
        gateway::xmpp_section(s, slot),
        gateway::bridge("x", None, Some(x_room), Some(&format!("local/{x_chan}"))),
        gateway::bridge("m", Some(mx_room), None, Some(&format!("local/{mx_chan}"))),
    );
    let cfg = dir.join("junction.toml");
    std::fs::write(&cfg, text)?;
    let mut cmd = tokio::process::Command::new(junction_binary()?);
    cmd.arg("run").arg("-c").arg(&cfg).current_dir(dir);
    Proc::spawn(cmd, &dir.join("junction.log"))
}

/// biboumi on the anchor slot's XMPP component; waits until Prosody accepted it.
pub(crate) async fn start_biboumi(s: &Servers, slot: &Slot, dir: &Path) -> anyhow::Result<Proc> {
    let cfg = dir.join("biboumi.cfg");
    let log = dir.join("biboumi.log");
    std::fs::write(
        &cfg,
        format!(
            "hostname={}\npassword={}\nxmpp_server_ip={}\nport={}\nadmin=admin@{}\n\
             db_name={}\nlog_file={}\nidentd_port=0\nrealname_customization=true\n\
             realname_from_jid=false\n",
            slot.component,
            slot.component_secret,
            s.xmpp.component.ip(),
            s.xmpp.component.port(),
            s.xmpp.domain,
            dir.join("biboumi.sqlite").display(),
            log.display(),
        ),
    )?;
    let mut cmd = tokio::process::Command::new("biboumi");
    cmd.arg(&cfg);
    let p = Proc::spawn(cmd, &dir.join("biboumi.out"))?;
    wait_log(
        &log,
        "Authenticated with the XMPP server",
        Duration::from_secs(60),
    )
    .await?;
    Ok(p)
}

/// Turns off biboumi's flood throttling (10 lines, then one a second) for `x` on the IRC
/// server `irc`, through the ad-hoc "configure" command on the server's JID, as Junction's
/// flood control is turned off in its config. Must come before `x` joins a channel there.
pub(crate) async fn biboumi_unthrottle(
    x: &XmppUser,
    slot: &Slot,
    irc: std::net::SocketAddr,
) -> anyhow::Result<()> {
    const NS: &str = "http://jabber.org/protocol/commands";
    let to = format!("{}@{}", irc.ip(), slot.component);
    let id = x.next_id();
    x.send_raw(&format!(
        "<iq type='set' id='{id}' to='{to}'><command xmlns='{NS}' node='configure' \
         action='execute'/></iq>"
    ))?;
    let r = x
        .wait_for(Duration::from_secs(15), |e| {
            e.attr("id") == Some(id.as_str())
        })
        .await?;
    let command = r
        .get_child("command", NS)
        .with_context(|| format!("biboumi's configure form: {}", String::from(&r)))?;
    let session = command
        .attr("sessionid")
        .context("no sessionid")?
        .to_owned();
    // The form goes back whole, every field as it was but the throttle limit.
    let form = command.get_child("x", "jabber:x:data").context("no form")?;
    let mut fields = String::new();
    for f in form.children().filter(|f| f.name() == "field") {
        let Some(var) = f.attr("var") else { continue };
        let _ = write!(fields, "<field var='{}'>", escape(var));
        if var == "throttle_limit" {
            fields.push_str("<value>-1</value>");
        } else {
            for v in f.children().filter(|v| v.name() == "value") {
                let _ = write!(fields, "<value>{}</value>", escape(&v.text()));
            }
        }
        fields.push_str("</field>");
    }
    let id = x.next_id();
    x.send_raw(&format!(
        "<iq type='set' id='{id}' to='{to}'><command xmlns='{NS}' node='configure' \
         sessionid='{}' action='complete'><x xmlns='jabber:x:data' type='submit'>\
         {fields}</x></command></iq>",
        escape(&session)
    ))?;
    let r = x
        .wait_for(Duration::from_secs(15), |e| {
            e.attr("id") == Some(id.as_str())
        })
        .await?;
    anyhow::ensure!(
        r.attr("type") == Some("result"),
        "biboumi refused the configuration: {}",
        String::from(&r)
    );
    Ok(())
}

/// The biboumi room for an IRC channel on the test IRC server.
pub(crate) fn biboumi_room(slot: &Slot, irc: std::net::SocketAddr, chan: &str) -> String {
    format!("{chan}%{}@{}", irc.ip(), slot.component)
}

/// heisenbridge on the anchor slot's appservice (its registration written from the slot, as
/// Synapse has it), owned by the Matrix test user.
pub(crate) async fn start_heisenbridge(
    s: &Servers,
    slot: &Slot,
    dir: &Path,
    owner: &str,
) -> anyhow::Result<Proc> {
    let reg = dir.join("heisenbridge.yaml");
    let prefix = slot.user_prefix.replace('.', "\\.");
    std::fs::write(
        &reg,
        format!(
            "id: '{}'\nurl: 'http://{}'\nas_token: '{}'\nhs_token: '{}'\nsender_localpart: '{}'\n\
             rate_limited: false\nnamespaces:\n  users:\n    - exclusive: true\n      \
             regex: '@{prefix}.*:{}'\n  aliases: []\n  rooms: []\n",
            slot.as_id,
            slot.listen,
            slot.as_token,
            slot.hs_token,
            slot.bot,
            s.matrix.server_name.replace('.', "\\."),
        ),
    )?;
    let mut cmd = tokio::process::Command::new(Path::new(HEISENBRIDGE_VENV).join("bin/python"));
    cmd.args(["-m", "heisenbridge", "-c"])
        .arg(&reg)
        .args(["--listen-address", &slot.listen.ip().to_string()])
        .args(["--listen-port", &slot.listen.port().to_string()])
        .args(["--owner", owner])
        .arg(&s.matrix.url);
    let p = Proc::spawn(cmd, &dir.join("heisenbridge.log"))?;
    junction_testkit::eventually(Duration::from_secs(60), "heisenbridge listening", || {
        let up = std::net::TcpStream::connect(slot.listen).is_ok();
        async move { up.then_some(()) }
    })
    .await?;
    // Synapse backs off from an appservice that was down; a ping makes it retry at once.
    let _ = reqwest::Client::new()
        .post(format!(
            "{}/_matrix/client/v1/appservice/{}/ping",
            s.matrix.url, slot.as_id
        ))
        .bearer_auth(&slot.as_token)
        .json(&serde_json::json!({}))
        .send()
        .await;
    Ok(p)
}

/// The room the bridge bot invites `m` to next (one not in `known`); joined.
async fn next_invite(
    m: &MatrixUser,
    known: &[String],
    what: &str,
    deadline: Duration,
) -> anyhow::Result<String> {
    let room = junction_testkit::eventually(deadline, what, || {
        let r = m.room_ids().into_iter().find(|r| !known.contains(r));
        async move { r }
    })
    .await?;
    m.join(&room).await?;
    Ok(room)
}

/// Drives heisenbridge's control room as its owner: a network for the test IRC server,
/// connected, with `chan` joined.
pub(crate) async fn heisenbridge_portal(
    m: &MatrixUser,
    irc: std::net::SocketAddr,
    chan: &str,
) -> anyhow::Result<Portal> {
    let mut known = m.room_ids();
    let control = next_invite(m, &known, "heisenbridge's control room", MINUTE).await?;
    known.push(control.clone());
    let net = unique("cmpnet");
    for cmd in [
        format!("ADDNETWORK {net}"),
        format!("ADDSERVER {net} {} {}", irc.ip(), irc.port()),
        format!("OPEN {net}"),
    ] {
        m.send_text(&control, &cmd).await?;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let network = next_invite(m, &known, "heisenbridge's network room", MINUTE).await?;
    known.push(network.clone());
    m.send_text(&network, "CONNECT").await?;
    m.wait_for(&network, Duration::from_secs(60), |e| {
        e["content"]["body"]
            .as_str()
            .is_some_and(|b| b.contains("Your host") || b.contains("Welcome"))
    })
    .await
    .context("heisenbridge connecting to IRC")?;
    // A JOIN sent while the connection still registers is lost: try again (bounded).
    for _ in 0..4 {
        m.send_text(&network, &format!("JOIN {chan}")).await?;
        let deadline = Duration::from_secs(20);
        if let Ok(portal) = next_invite(m, &known, "heisenbridge's portal room", deadline).await {
            return Ok(Portal {
                control,
                network,
                portal,
                net,
            });
        }
    }
    anyhow::bail!("heisenbridge never opened a portal room for {chan}")
}

/// The rooms heisenbridge opened for one network, and the network's name.
pub(crate) struct Portal {
    control: String,
    network: String,
    pub(crate) portal: String,
    net: String,
}

impl Portal {
    /// Disconnects and removes the network (best effort), so the next run on this slot
    /// does not reconnect it.
    pub(crate) async fn remove(&self, m: &MatrixUser) {
        let _ = m.send_text(&self.network, "DISCONNECT").await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let _ = m
            .send_text(&self.control, &format!("DELNETWORK {}", self.net))
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
