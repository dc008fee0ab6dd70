//! `junction doctor` against the real servers: each check with its fault set up (a wrong
//! token or secret, a port nothing listens on, a missing room, a taken nick, a bot without
//! power), one all-good run that exits 0, and the binary's exit status.

use crate::lobby::{short_nick, Lobby};
use junction::doctor::{doctor, Level, Report};
use junction_testkit::clients::{IrcUser, MatrixUser, XmppUser};
use junction_testkit::servers::{servers, slot, Servers, SlotGuard};
use junction_testkit::unique;
use std::net::SocketAddr;

/// Parses `text` as a config (its `data_dir` in a fresh directory) and runs the doctor on it.
async fn run(text: &str) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let config = junction::config::parse(text, "doctor.toml", dir.path(), &|_| None)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(doctor(&config).await)
}

/// The one finding of `check` on `network`, which must have `level`.
fn expect(report: &Report, network: &str, check: &str, level: Level) -> anyhow::Result<String> {
    let found: Vec<_> = report.of(network, check).collect();
    let text = report.render();
    anyhow::ensure!(
        !found.is_empty(),
        "no {network} {check} finding in:\n{text}"
    );
    anyhow::ensure!(
        found.iter().all(|f| f.level == level),
        "{network} {check} should be {level:?} in:\n{text}"
    );
    Ok(text)
}

/// A loopback port nothing listens on (bound, then dropped).
fn dead_port() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

fn matrix_section(servers: &Servers, slot: &SlotGuard, homeserver: &str) -> String {
    format!(
        "[matrix]\nhomeserver = \"{homeserver}\"\nserver_name = \"{}\"\nlisten = \"{}\"\n\
         as_token = \"{}\"\nhs_token = \"{}\"\nbot = \"{}\"\nid = \"{}\"\nuser_prefix = \"{}\"\n",
        servers.matrix.server_name,
        slot.listen,
        slot.as_token,
        slot.hs_token,
        slot.bot,
        slot.as_id,
        slot.user_prefix
    )
}

fn xmpp_section(slot: &SlotGuard, server: SocketAddr, secret: &str) -> String {
    format!(
        "[xmpp]\ncomponent = \"{}\"\nserver = \"{server}\"\nsecret = \"{secret}\"\n",
        slot.component
    )
}

fn irc_section(server: SocketAddr, nick: &str, tls: bool) -> String {
    format!("[irc.local]\nserver = \"{server}\"\nnick = \"{nick}\"\ntls = {tls}\n")
}

/// The Matrix checks fail in words: a homeserver nothing answers at, an as_token the
/// homeserver does not know (registration not loaded), an hs_token the registration does not
/// carry (the ping the doctor answers itself is refused); and with the slot's registration,
/// the homeserver reaches the appservice through the doctor's own brief listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_matrix_faults() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    let dead = format!("http://{}", dead_port()?);
    let r = run(&matrix_section(servers, &slot, &dead)).await?;
    expect(&r, "matrix", "homeserver", Level::Error)?;
    assert_eq!(r.exit_code(), 2);

    let good = matrix_section(servers, &slot, &servers.matrix.url);
    let wrong_token = good.replace(&slot.as_token, "not-the-as-token");
    let r = run(&wrong_token).await?;
    let text = expect(&r, "matrix", "as_token", Level::Error)?;
    assert!(text.contains("registration"), "{text}");
    assert!(
        !text.contains("not-the-as-token"),
        "a secret was printed:\n{text}"
    );

    let wrong_hs = good.replace(&slot.hs_token, "not-the-hs-token");
    let r = run(&wrong_hs).await?;
    expect(&r, "matrix", "ping", Level::Error)?;

    let r = run(&good).await?;
    let text = expect(&r, "matrix", "ping", Level::Ok)?;
    assert!(text.contains("the doctor"), "{text}");
    assert_eq!(r.exit_code(), 0, "{text}");
    assert!(!text.contains(&slot.as_token) && !text.contains(&slot.hs_token));
    Ok(())
}

/// The registration's namespaces: ghosts under a `user_prefix` the slot's registration does
/// not cover, and a free linked alias outside its aliases namespace, are errors with their
/// fix; with the slot's prefix, ghosts of every configured network are covered, and a free
/// alias inside its namespace is one the gateway may create (and the probe leaves it free).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_matrix_namespaces() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    let server_name = &servers.matrix.server_name;
    let covered = format!("#jt{}_{}:{server_name}", slot.index, unique("dns"));
    let outside = format!("#{}:{server_name}", unique("dnx"));
    let good = format!(
        "{}\n[[bridge]]\nname = \"a\"\nmatrix = \"{covered}\"\nirc = \"local/#unused{n}\"\n\
         [[bridge]]\nname = \"b\"\nmatrix = \"{outside}\"\nirc = \"local/#unused{n}b\"\n{}",
        matrix_section(servers, &slot, &servers.matrix.url),
        irc_section(servers.inspircd, &short_nick(&unique("dns")), false),
        n = slot.index,
    );
    let r = run(&good).await?;
    let text = r.render();
    let found: Vec<_> = r.of("matrix", "namespace").collect();
    assert!(
        found
            .iter()
            .any(|f| f.level == Level::Ok && f.text.contains("covers the ghosts")),
        "{text}"
    );
    assert!(
        found
            .iter()
            .any(|f| f.level == Level::Ok && f.text.contains(&covered)),
        "{text}"
    );
    let refused = found
        .iter()
        .find(|f| f.level == Level::Error && f.text.contains(&outside))
        .ok_or_else(|| anyhow::anyhow!("no error for {outside}:\n{text}"))?;
    assert!(
        refused
            .fix
            .as_deref()
            .is_some_and(|fix| fix.contains("aliases namespace")),
        "{text}"
    );
    assert_eq!(r.exit_code(), 2, "{text}");
    // The probe deleted nothing: the alias is still free.
    let client = junction_matrix::connection::Client::new(
        &servers.matrix.url,
        junction_core::Secret::new(slot.as_token.clone()),
        tokio_util::sync::CancellationToken::new(),
    );
    assert_eq!(client.resolve_alias(&covered).await?, None);

    // Ghosts under a prefix no namespace of the registration covers.
    let stray = format!("_jtx{}_", slot.index);
    let wrong = good.replace(
        &format!("user_prefix = \"{}\"", slot.user_prefix),
        &format!("user_prefix = \"{stray}\""),
    );
    assert_ne!(wrong, good);
    let r = run(&wrong).await?;
    let text = r.render();
    let ghosts = r
        .of("matrix", "namespace")
        .find(|f| f.level == Level::Error && f.text.contains("does not cover the ghosts"))
        .ok_or_else(|| anyhow::anyhow!("no error for the ghosts:\n{text}"))?;
    assert!(
        ghosts.text.contains(&format!("@{stray}irc_local_")),
        "{text}"
    );
    assert!(
        ghosts
            .fix
            .as_deref()
            .is_some_and(|fix| fix.contains("user_prefix")),
        "{text}"
    );
    assert!(
        !text.contains(&slot.as_token),
        "a secret was printed:\n{text}"
    );
    Ok(())
}

/// A linked room where the bot is a member without power gives a warning naming what it
/// cannot do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_matrix_bot_without_power() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    let alice = MatrixUser::login(servers, "alice", "alicepw").await?;
    let room = alice.create_room(Some(&unique("dr")), true).await?;
    let bot = format!("@{}:{}", slot.bot, servers.matrix.server_name);
    let client = junction_matrix::connection::Client::new(
        &servers.matrix.url,
        junction_core::Secret::new(slot.as_token.clone()),
        tokio_util::sync::CancellationToken::new(),
    );
    client.join(&room, None).await?;
    let text = format!(
        "{}\n[[bridge]]\nname = \"b\"\nmatrix = \"{room}\"\nirc = \"local/#unused\"\n{}",
        matrix_section(servers, &slot, &servers.matrix.url),
        irc_section(servers.inspircd, &short_nick(&unique("db")), false)
    );
    let r = run(&text).await?;
    let out = expect(&r, "matrix", "power", Level::Warning)?;
    assert!(out.contains("cannot redact") && out.contains(&bot), "{out}");

    alice.set_power_level(&room, &bot, 100).await?;
    let r = run(&text).await?;
    expect(&r, "matrix", "power", Level::Ok)?;
    Ok(())
}

/// XMPP: a wrong component secret and a port nothing listens on are errors; a linked MUC
/// that does not exist is an error; one that keeps no archive, and one where the listener
/// has no affiliation, are warnings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_xmpp_faults() -> anyhow::Result<()> {
    let servers = servers().await?;
    let slot = slot().await?;
    let r = run(&xmpp_section(&slot, servers.xmpp.component, "wrong-secret")).await?;
    let text = expect(&r, "xmpp", "component", Level::Error)?;
    assert!(text.contains("secret"), "{text}");
    assert!(
        !text.contains("wrong-secret"),
        "a secret was printed:\n{text}"
    );
    let r = run(&xmpp_section(&slot, dead_port()?, &slot.component_secret)).await?;
    expect(&r, "xmpp", "component", Level::Error)?;

    let missing = format!("{}@{}", unique("gone"), servers.xmpp.muc);
    let plain = format!("{}@{}", unique("plain"), servers.xmpp.muc);
    let quiet = format!("{}@{}", unique("quiet"), servers.xmpp.muc);
    let user = XmppUser::register(servers, &short_nick(&unique("xd")), "pw-doctor").await?;
    user.join_muc(&plain, &unique("o")).await?;
    user.join_muc(&quiet, &unique("o")).await?;
    // Its owner turns the room's archive off (Prosody's mod_muc_mam room option).
    user.configure_room(&quiet, "muc#roomconfig_enablearchiving", "0")
        .await?;
    let text = format!(
        "{}\n[[bridge]]\nname = \"a\"\nxmpp = \"{missing}\"\nirc = \"local/#a{n}\"\n\
         [[bridge]]\nname = \"b\"\nxmpp = \"{plain}\"\nirc = \"local/#b{n}\"\n\
         [[bridge]]\nname = \"q\"\nxmpp = \"{quiet}\"\nirc = \"local/#q{n}\"\n{}",
        xmpp_section(&slot, servers.xmpp.component, &slot.component_secret),
        irc_section(servers.inspircd, &short_nick(&unique("dx")), false),
        n = slot.index,
    );
    let r = run(&text).await?;
    let out = expect(&r, "xmpp", "component", Level::Ok)?;
    let room: Vec<_> = r.of("xmpp", "room").collect();
    assert!(
        room.iter()
            .any(|f| f.level == Level::Error && f.text.contains(&missing)),
        "{out}"
    );
    assert!(
        room.iter()
            .any(|f| f.level == Level::Ok && f.text.contains(&plain)),
        "{out}"
    );
    let archive: Vec<_> = r.of("xmpp", "archive").collect();
    assert!(
        archive
            .iter()
            .any(|f| f.level == Level::Ok && f.text.contains(&plain)),
        "{out}"
    );
    assert!(
        archive
            .iter()
            .any(|f| f.level == Level::Warning && f.text.contains(&quiet)),
        "{out}"
    );
    expect(&r, "xmpp", "affiliation", Level::Warning)?;
    assert_eq!(r.exit_code(), 2);
    Ok(())
}

/// IRC: a port nothing listens on and TLS to a plain port are errors; the bot's nick held
/// by someone else, the bot not an operator, a channel without history, and a SASL account
/// on a server that offers no SASL are warnings. (A refused SASL login needs services the
/// test servers do not run: junction-irc's doctor tests cover it with a scripted server.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_irc_faults() -> anyhow::Result<()> {
    let servers = servers().await?;
    let r = run(&irc_section(dead_port()?, "jtdead", false)).await?;
    expect(&r, "irc:local", "server", Level::Error)?;
    assert_eq!(r.exit_code(), 2);
    let r = run(&irc_section(servers.inspircd, "jttls", true)).await?;
    expect(&r, "irc:local", "tls", Level::Error)?;

    let channel = format!("#{}", unique("dr"));
    let owner = IrcUser::connect(servers.inspircd, &short_nick(&unique("do"))).await?;
    owner.join(&channel).await?;
    let nick = short_nick(&unique("dn"));
    let squatter = IrcUser::connect(servers.inspircd, &nick).await?;
    squatter.join(&channel).await?;
    let text = format!(
        "{}\n[[bridge]]\nname = \"c\"\nirc = [\"local/{channel}\", \"local/{channel}x\"]\n",
        irc_section(servers.inspircd, &nick, false)
    );
    let r = run(&text).await?;
    expect(&r, "irc:local", "server", Level::Ok)?;
    let out = expect(&r, "irc:local", "nick", Level::Warning)?;
    assert!(out.contains("taken"), "{out}");
    let op: Vec<_> = r.of("irc:local", "op").collect();
    assert!(
        op.iter()
            .any(|f| f.level == Level::Warning && f.text.contains(&channel)),
        "{out}"
    );
    let history: Vec<_> = r.of("irc:local", "history").collect();
    assert!(
        history
            .iter()
            .any(|f| f.level == Level::Warning && f.text.contains(&channel)),
        "{out}"
    );
    assert_eq!(r.exit_code(), 1, "{out}");
    // No SASL on the test server: a bot account configured for it is not logged in.
    let with_sasl = text.replace(
        "tls = false\n",
        "tls = false\nsasl_account = \"jtbot\"\nsasl_password = \"sasl-secret\"\n",
    );
    assert_ne!(with_sasl, text);
    let r = run(&with_sasl).await?;
    let out = expect(&r, "irc:local", "sasl", Level::Warning)?;
    assert!(out.contains("does not offer SASL"), "{out}");
    assert!(!out.contains("sasl-secret"), "a secret was printed:\n{out}");
    drop(squatter);
    drop(owner);
    Ok(())
}

/// A whole lobby set up as a community would (bot with power, listener admin, archive on,
/// channel history on), the gateway stopped: every check passes and the doctor exits 0,
/// as a library and as the `junction doctor` binary; with the gateway running beside it,
/// the doctor leaves it alone (and does not log in as its component at all when the gateway
/// is this config's, holding its store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_all_good() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    lobby.irc.mode(&lobby.channel, "+H", &["100:1d"])?;
    lobby
        .irc
        .wait_for(std::time::Duration::from_secs(60), |m| {
            m.to_string().contains("MODE") && m.to_string().contains("+H")
        })
        .await?;
    lobby.stop_gateway().await?;
    let r = run(lobby.config_text()).await?;
    let text = r.render();
    assert_eq!(r.exit_code(), 0, "{text}");
    for secret in [
        &lobby.slot.as_token,
        &lobby.slot.hs_token,
        &lobby.slot.component_secret,
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "a secret was printed:\n{text}"
        );
    }

    let out = lobby.run_cli("doctor").await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("ok      matrix ping"), "{stdout}");

    // Beside a running gateway: the bot keeps its nick and the gateway its component.
    lobby.start_gateway().await?;
    let bot = junction_testkit::gateway::bot_nick(&lobby.slot);
    lobby.irc.mode(&lobby.channel, "+o", &[&bot])?;
    lobby
        .irc
        .wait_for(std::time::Duration::from_secs(60), |m| {
            let line = m.to_string();
            line.contains("MODE") && line.contains("+o") && line.contains(&bot)
        })
        .await?;
    let r = run(lobby.config_text()).await?;
    let text = r.render();
    let nick = r.of("irc:local", "nick").next().map(|f| f.level);
    assert_eq!(nick, Some(Level::Ok), "{text}");
    assert!(
        text.contains(&junction_testkit::gateway::bot_nick(&lobby.slot)),
        "{text}"
    );
    // A gateway elsewhere (its store not this config's): the server refuses the doctor's
    // component login as a conflict and keeps the gateway's.
    expect(&r, "xmpp", "component", Level::Ok)?;
    expect(&r, "irc:local", "op", Level::Ok)?;
    // The gateway of this very config (it holds the store; another process, as in real
    // use, since the store's lock is per process): no component login is tried.
    let store = lobby.store_dir();
    let base = store
        .parent()
        .and_then(|p| p.parent())
        .ok_or_else(|| anyhow::anyhow!("no base dir"))?;
    std::fs::write(base.join("doctor.toml"), lobby.config_text())?;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_junction"))
        .current_dir(base)
        .args(["doctor", "-c", "doctor.toml"])
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("warning xmpp component: not checked"),
        "{stdout}"
    );
    lobby
        .irc
        .privmsg(&lobby.channel, "still bridged after the doctor")?;
    lobby.matrix_sees("still bridged after the doctor").await?;
    Ok(())
}
