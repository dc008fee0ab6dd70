//! Puppets' lifecycle through the real servers: a flood of joins under new names (many IRC
//! connections, and one connection changing its nick over and over) makes at most the cap
//! of Matrix ghosts and XMPP puppet occupants, registers no homeserver account per new
//! name, counts the refusals in `/metrics`, and the lobby still relays the next line in
//! every direction. Idle ghosts and occupants leave after the idle timeout.

use crate::lobby::{in_gateway, short_nick, Lobby, LOG_SENT_TOGETHER, SENT_TOGETHER};
use anyhow::Context as _;
use junction_core::NetworkId;
use junction_testkit::clients::IrcUser;
use junction_testkit::servers::servers;
use junction_testkit::{free_port, unique};
use std::collections::HashSet;
use std::time::Duration;

/// How long any one thing may take to cross the gateway here.
const WAIT: Duration = Duration::from_secs(60);
/// The caps of the test's gateway.
const CAP: usize = 3;
/// IRC connections that join.
const JOINERS: usize = 10;
/// Nick changes of the one connection that renames itself.
const RENAMES: usize = 8;

/// The ghosts (other than the bot) among the Matrix room's joined members.
async fn ghosts(lobby: &Lobby) -> anyhow::Result<Vec<String>> {
    let bot = format!("@{}:", lobby.slot.bot);
    let prefix = format!("@{}", lobby.slot.user_prefix);
    Ok(lobby
        .matrix
        .members(&lobby.room)
        .await?
        .into_keys()
        .filter(|u| u.starts_with(&prefix) && !u.starts_with(&bot))
        .collect())
}

/// The gateway's puppet occupants of the MUC as XMPP alice's presences show them now.
fn occupants(lobby: &Lobby) -> HashSet<String> {
    let muc = format!("{}/", lobby.muc);
    let component = lobby.slot.component.clone();
    let mut present = HashSet::new();
    for el in lobby.xmpp.backlog() {
        if el.name() != "presence" {
            continue;
        }
        let Some(from) = el.attr("from").filter(|f| f.starts_with(&muc)) else {
            continue;
        };
        let puppet = el
            .children()
            .filter(|x| x.name() == "x")
            .flat_map(|x| x.children())
            .any(|i| {
                i.name() == "item"
                    && i.attr("jid")
                        .is_some_and(|j| j.contains('%') && j.contains(&component))
            });
        if !puppet {
            continue;
        }
        match el.attr("type") {
            None => {
                present.insert(from.to_owned());
            }
            Some("unavailable") => {
                present.remove(from);
            }
            Some(_) => {}
        }
    }
    present
}

/// True when the homeserver knows a user with this id (a ghost registered by the gateway).
async fn registered(lobby: &Lobby, user: &str) -> anyhow::Result<bool> {
    let servers = servers().await?;
    let url = format!(
        "{}/_matrix/client/v3/profile/{}",
        servers.matrix.url,
        user.replace('@', "%40").replace(':', "%3A")
    );
    let status = reqwest::Client::new()
        .get(&url)
        .bearer_auth(lobby.matrix.access_token())
        .send()
        .await?
        .status();
    Ok(status.is_success())
}

/// Joins under new names on IRC give at most `max_ghosts` ghosts in the Matrix room and
/// `max_occupants` puppet occupants in the MUC; a nick-change loop registers no account per
/// new nick; refusals are counted; then a line from each network crosses to both others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_joins_under_new_names_creates_at_most_the_cap() -> anyhow::Result<()> {
    let port = free_port()?;
    let lobby = Lobby::start_with(|c| {
        in_gateway(c, &format!("metrics = \"127.0.0.1:{port}\""));
        *c = c
            .replace("[matrix]\n", &format!("[matrix]\nmax_ghosts = {CAP}\n"))
            .replace("[xmpp]\n", &format!("[xmpp]\nmax_occupants = {CAP}\n"));
    })
    .await?;
    let servers = servers().await?;
    let tag = &unique("f")[..];
    let tag = &tag[tag.len().saturating_sub(4)..];

    // Many connections join under new names.
    let mut joiners = Vec::new();
    for i in 0..JOINERS {
        let user = IrcUser::connect(lobby.irc_addr, &short_nick(&format!("j{tag}{i}"))).await?;
        user.join(&lobby.channel).await?;
        joiners.push(user);
    }
    // One connection joins and changes its nick again and again.
    let first = short_nick(&format!("r{tag}x"));
    let looper = IrcUser::connect(lobby.irc_addr, &first).await?;
    looper.join(&lobby.channel).await?;
    let mut nicks = vec![first];
    for i in 0..RENAMES {
        let next = short_nick(&format!("r{tag}{i}"));
        looper.send_raw(&format!("NICK {next}"))?;
        nicks.push(next);
    }
    // Deliveries to a network go in order: once a later line has crossed, the joins and
    // renames before it have been handled.
    let marker = unique("after the flood");
    lobby.irc.privmsg(&lobby.channel, &marker)?;
    lobby
        .matrix_sees(&marker)
        .await
        .context("i → m after the flood")?;
    lobby
        .xmpp_sees(&marker)
        .await
        .context("i → x after the flood")?;

    let g = ghosts(&lobby).await?;
    assert!(
        !g.is_empty() && g.len() <= CAP,
        "at most {CAP} ghosts in the room: {g:?}"
    );
    let o = occupants(&lobby);
    assert!(
        !o.is_empty() && o.len() <= CAP,
        "at most {CAP} puppet occupants: {o:?}"
    );
    // A rename of someone without a ghost registers nobody: the nicks the loop took after
    // its first one have no account on the homeserver.
    let network = NetworkId::new("irc:local");
    for nick in &nicks[1..] {
        let ghost = junction_matrix::ids::ghost_user_id(
            &lobby.slot.user_prefix,
            &network,
            nick,
            &servers.matrix.server_name,
        );
        assert!(
            !registered(&lobby, &ghost).await?,
            "no account for the renamed nick {nick} ({ghost})"
        );
    }

    // The refusals are counted.
    let metrics = junction_testkit::eventually(WAIT, "the refusals counted", || {
        let url = format!("http://127.0.0.1:{port}/metrics");
        async move {
            let text = reqwest::get(&url).await.ok()?.text().await.ok()?;
            let counted = |network: &str| {
                text.lines().any(|l| {
                    l.starts_with("junction_errors_total{")
                        && l.contains(&format!("network=\"{network}\""))
                        && l.contains("kind=\"puppet_cap\"")
                        && l.rsplit(' ')
                            .next()
                            .and_then(|n| n.parse::<f64>().ok())
                            .is_some_and(|n| n >= 1.0)
                })
            };
            (counted("matrix") && counted("xmpp")).then_some(text)
        }
    })
    .await?;
    assert!(metrics.contains("puppet_cap"));

    // The lobby still relays the next line in every direction; the people who speak take
    // the places of those who only joined.
    let from_matrix = unique("next from matrix");
    lobby.matrix.send_text(&lobby.room, &from_matrix).await?;
    lobby.xmpp_sees(&from_matrix).await.context("m → x")?;
    lobby.irc_sees(&from_matrix).await.context("m → i")?;
    let from_xmpp = unique("next from xmpp");
    lobby.xmpp.send_groupchat(&lobby.muc, &from_xmpp)?;
    lobby.matrix_sees(&from_xmpp).await.context("x → m")?;
    lobby.irc_sees(&from_xmpp).await.context("x → i")?;
    let from_irc = unique("next from irc");
    lobby.irc.privmsg(&lobby.channel, &from_irc)?;
    lobby.matrix_sees(&from_irc).await.context("i → m")?;
    lobby.xmpp_sees(&from_irc).await.context("i → x")?;

    let g = ghosts(&lobby).await?;
    assert!(g.len() <= CAP, "still at most {CAP} ghosts: {g:?}");
    let o = occupants(&lobby);
    assert!(o.len() <= CAP, "still at most {CAP} occupants: {o:?}");
    drop(joiners);
    Ok(())
}

/// With an idle timeout of two seconds, the IRC user's ghost and occupant leave after they
/// said something, and come back with their next line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_ghosts_and_occupants_leave_and_come_back() -> anyhow::Result<()> {
    let lobby = Lobby::start_with(|c| {
        *c = c
            .replace("[matrix]\n", "[matrix]\nghost_idle_timeout_seconds = 2\n")
            .replace("[xmpp]\n", "[xmpp]\noccupant_idle_timeout_seconds = 2\n");
    })
    .await?;
    let (ghost, occupant) = lobby.irc_user_speaks().await?;
    lobby
        .matrix_left(&ghost)
        .await
        .context("the idle ghost leaves")?;
    lobby
        .xmpp_left(&occupant)
        .await
        .context("the idle occupant leaves")?;
    let back = unique("after idling");
    lobby.irc.privmsg(&lobby.channel, &back)?;
    lobby
        .matrix_sees(&back)
        .await
        .context("i → m after idling")?;
    lobby.xmpp_sees(&back).await.context("i → x after idling")?;
    Ok(())
}

/// Ghosts already in the room when the gateway starts (from before a restart) count against
/// the cap and the idle timeout like any other: two IRC people's ghosts are in the room, the
/// gateway restarts with `max_ghosts = 1` and a two-second idle timeout, and both leave (one
/// at once, past the cap; the other once idle). The lobby relays afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghosts_from_before_a_restart_are_counted_and_leave_when_idle() -> anyhow::Result<()> {
    let mut lobby = Lobby::start().await?;
    let other = IrcUser::connect(lobby.irc_addr, &short_nick(&unique("rg"))).await?;
    other.join(&lobby.channel).await?;
    let mut ghosts_in = Vec::new();
    for who in [&lobby.irc, &other] {
        let line = unique("before the restart");
        who.privmsg(&lobby.channel, &line)?;
        let e = lobby.matrix_sees(&line).await?;
        ghosts_in.push(e["sender"].as_str().context("sender")?.to_owned());
    }
    let before = ghosts(&lobby).await?;
    for g in &ghosts_in {
        assert!(before.contains(g), "{g} is in the room before the restart");
    }

    lobby.stop_gateway().await?;
    lobby.tweak_config(|c| {
        *c = c.replace(
            "[matrix]\n",
            "[matrix]\nmax_ghosts = 1\nghost_idle_timeout_seconds = 2\n",
        );
    });
    lobby.start_gateway().await?;
    for g in &ghosts_in {
        lobby
            .matrix
            .wait_for(&lobby.room, WAIT, |r| {
                r["type"] == "m.room.member"
                    && r["state_key"].as_str() == Some(g.as_str())
                    && r["content"]["membership"] == "leave"
            })
            .await
            .with_context(|| format!("{g}, in the room from before the restart, leaves"))?;
    }
    let back = unique("after the restart");
    lobby.irc.privmsg(&lobby.channel, &back)?;
    lobby
        .matrix_sees(&back)
        .await
        .context("i → m after the restart")?;
    lobby
        .xmpp_sees(&back)
        .await
        .context("i → x after the restart")?;
    drop(other);
    Ok(())
}

/// In the default `summarised` membership mode someone who only joins gets no puppets; their
/// first line brings them (ghost and line on Matrix). With `lurker_window_seconds` set, a
/// lurker still there after the window is puppeted without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lurkers_are_puppeted_once_they_speak_or_after_the_window() -> anyhow::Result<()> {
    const WINDOW: u64 = 30;
    let lobby = Lobby::start_with(|c| {
        *c = c.replace(
            "membership = \"all\"",
            &format!("membership = \"summarised\"\nlurker_window_seconds = {WINDOW}"),
        );
    })
    .await?;
    let servers = servers().await?;
    let network = NetworkId::new("irc:local");
    let ghost_of = |nick: &str| {
        junction_matrix::ids::ghost_user_id(
            &lobby.slot.user_prefix,
            &network,
            nick,
            &servers.matrix.server_name,
        )
    };

    // A joins and says nothing; a later line from elsewhere on IRC crosses: A's join was
    // handled before it (deliveries to a network go in order), and made no ghost.
    let quiet = short_nick(&unique("lq"));
    let joined_at = std::time::Instant::now();
    let a = IrcUser::connect(lobby.irc_addr, &quiet).await?;
    a.join(&lobby.channel).await?;
    let marker = unique("after a quiet join");
    lobby.irc.privmsg(&lobby.channel, &marker)?;
    lobby.matrix_sees(&marker).await.context("i → m marker")?;
    let ghost = ghost_of(&quiet);
    if joined_at.elapsed() < Duration::from_secs(WINDOW - 5) {
        assert!(
            !ghosts(&lobby).await?.contains(&ghost),
            "no ghost for {quiet}, who only joined"
        );
    }

    // Once A speaks, the ghost comes with the line.
    let words = unique("the lurker speaks");
    a.privmsg(&lobby.channel, &words)?;
    let seen = lobby.matrix_sees(&words).await.context("i → m words")?;
    assert_eq!(seen["sender"].as_str(), Some(ghost.as_str()), "{seen}");

    // B joins and never speaks: after the window, a ghost joins for them all the same.
    let lurker = short_nick(&unique("lw"));
    let b = IrcUser::connect(lobby.irc_addr, &lurker).await?;
    b.join(&lobby.channel).await?;
    let ghost = ghost_of(&lurker);
    lobby
        .matrix
        .wait_for(&lobby.room, WAIT + Duration::from_secs(WINDOW), |r| {
            r["type"] == "m.room.member"
                && r["state_key"] == ghost.as_str()
                && r["content"]["membership"] == "join"
        })
        .await
        .context("the lurker's ghost joins after the window")?;
    Ok(())
}

/// With `[matrix] parallel_senders`, ghosts making way under the cap while a room sends
/// lines together leave once those are sent: lurkers fill the cap, then three people say
/// lines at once (each taking a lurker's place); every line reaches the room once, by its
/// ghost or said by the bot, and the room ends with at most the cap of ghosts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cap_holds_while_a_room_sends_lines_together() -> anyhow::Result<()> {
    const LINES: usize = 4;
    let lobby = Lobby::start_logged(|c| {
        *c = c.replace(
            "[matrix]\n",
            &format!("[matrix]\nmax_ghosts = {CAP}\nparallel_senders = 4\n"),
        );
        in_gateway(c, LOG_SENT_TOGETHER);
    })
    .await?;
    let tag = unique("cp");
    let tag = &tag[tag.len().saturating_sub(4)..];
    // Lurkers take the free places: a join takes one while there is one.
    let mut lurkers = Vec::new();
    for i in 0..CAP {
        let user = IrcUser::connect(lobby.irc_addr, &short_nick(&format!("l{tag}{i}"))).await?;
        user.join(&lobby.channel).await?;
        lurkers.push(user);
    }
    junction_testkit::eventually(WAIT, "the cap filled", || async {
        ghosts(&lobby)
            .await
            .ok()
            .filter(|g| g.len() >= CAP)
            .map(|_| ())
    })
    .await?;
    let mut people = Vec::new();
    for p in 0..3 {
        let user = IrcUser::connect(lobby.irc_addr, &short_nick(&format!("s{tag}{p}"))).await?;
        user.join(&lobby.channel).await?;
        people.push(user);
    }
    let (bodies, _) = lobby
        .burst_to_matrix(&people, &format!("capped {tag}"), LINES)
        .await?;
    for p in 0..3 {
        for i in 0..LINES {
            let line = format!("capped {tag} {p} {i}");
            let n = bodies.iter().filter(|b| b.ends_with(&line)).count();
            assert_eq!(n, 1, "{line:?} once in {bodies:?}");
        }
    }
    let settled = junction_testkit::eventually(WAIT, "at most the cap of ghosts", || async {
        ghosts(&lobby).await.ok().filter(|g| g.len() <= CAP)
    })
    .await?;
    assert!(!settled.is_empty());
    let log = lobby.gateway_log();
    assert!(log.contains("The cap of ghosts is reached: the least recently active one leaves."));
    assert!(log.contains(SENT_TOGETHER));
    Ok(())
}
