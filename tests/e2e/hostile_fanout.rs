//! Amplification and floods through the real servers, each sent by an ordinary user's
//! client: one XEP-0444 stanza with hundreds of `<reaction>` children, one XMPP message with
//! dozens of OOB links, and a flood of lines from one IRC user and one XMPP user. What one
//! item becomes is cut to the fan-out caps, what one sender says past the rate limit is
//! dropped, both are counted in `/metrics`; the gateway stays up, other people's lines keep
//! crossing, and so they do after a restart on the same store.

use crate::hostile_input::relays_now_and_after_a_restart;
use crate::lobby::{short_nick, Lobby, Side};
use anyhow::Context as _;
use junction_testkit::clients::xmpp::stanza_id;
use junction_testkit::clients::{IrcUser, XmppUser};
use junction_testkit::servers::servers;
use junction_testkit::unique;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long a count may take to show on `/metrics`.
const WAIT: Duration = Duration::from_secs(60);

/// Waits until the counter `name{network="…",kind="…"}` on `/metrics` is at least `min`;
/// returns its value.
pub(crate) async fn counter_reaches(
    base: &str,
    name: &str,
    network: &str,
    kind: &str,
    min: u64,
) -> anyhow::Result<u64> {
    junction_testkit::eventually(
        WAIT,
        &format!("{name}{{{network},{kind}}} >= {min}"),
        || async {
            counter(base, name, network, kind)
                .await
                .ok()
                .filter(|v| *v >= min)
        },
    )
    .await
}

/// The value of the counter `name{network="…",kind="…"}` on `/metrics` (0 when absent).
async fn counter(base: &str, name: &str, network: &str, kind: &str) -> anyhow::Result<u64> {
    sample(
        base,
        name,
        &format!("{{network=\"{network}\",kind=\"{kind}\"}}"),
    )
    .await
}

/// The value of the sample `name` with `labels` (`{…}`, or empty) on `/metrics` (0 when
/// absent).
async fn sample(base: &str, name: &str, labels: &str) -> anyhow::Result<u64> {
    let text = reqwest::get(format!("{base}/metrics"))
        .await?
        .error_for_status()?
        .text()
        .await?;
    let prefix = format!("{name}{labels} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0))
}

/// How many times `needle` occurs in the PRIVMSGs the lobby's IRC user saw in the channel.
fn irc_count(lobby: &Lobby, needle: &str) -> usize {
    lobby
        .irc
        .privmsgs_in(&lobby.channel)
        .iter()
        .map(|(_, t)| t.matches(needle).count())
        .sum()
}

/// The Matrix timeline events, not alice's own, that `pred` picks.
async fn matrix_count(lobby: &Lobby, pred: impl Fn(&Value) -> bool) -> anyhow::Result<usize> {
    let me = lobby.matrix.user_id().to_owned();
    Ok(lobby
        .matrix
        .events(&lobby.room)
        .await?
        .iter()
        .filter(|e| e["sender"].as_str() != Some(me.as_str()) && pred(e))
        .count())
}

/// The body of a Matrix message event.
fn matrix_body(e: &Value) -> &str {
    e["content"]["body"].as_str().unwrap_or_default()
}

/// One XEP-0444 stanza with 351 `<reaction>` children (300 distinct keys, 50 repeats, one
/// key over 64 bytes) on a bridged message: 10 reactions reach Matrix, 10 action lines
/// reach IRC, the other 341 are counted in `junction_capped_total{kind="reaction"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_reactions_in_one_stanza_are_capped() -> anyhow::Result<()> {
    let (mut lobby, base) = Lobby::start_with_metrics("").await?;
    let text = unique("react to this");
    lobby.irc.privmsg(&lobby.channel, &text)?;
    let e = lobby
        .matrix_sees(&text)
        .await
        .context("the original → matrix")?;
    let x = lobby
        .xmpp_sees(&text)
        .await
        .context("the original → xmpp")?;
    let sid = stanza_id(&x).context("the original's stanza-id")?;
    let event_id = e["event_id"].as_str().context("event id")?.to_owned();

    let rk = unique("rk");
    let mut keys: Vec<String> = (0..300).map(|i| format!("{rk}x{i}")).collect();
    keys.extend((0..50).map(|i| format!("{rk}x{i}")));
    keys.push(format!("{rk}{}", "y".repeat(65)));
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    lobby.xmpp.send_reaction(&lobby.muc, &sid, &refs)?;

    // A line said after the stanza arrives after everything it became.
    lobby
        .line_crosses(Side::Xmpp, "after the reactions")
        .await?;

    let on_matrix = matrix_count(&lobby, |r| {
        r["type"] == "m.reaction"
            && r["content"]["m.relates_to"]["event_id"].as_str() == Some(event_id.as_str())
            && r["content"]["m.relates_to"]["key"]
                .as_str()
                .is_some_and(|k| k.starts_with(&rk))
    })
    .await?;
    assert_eq!(on_matrix, 10, "reactions on Matrix");
    let on_irc = irc_count(&lobby, &rk);
    assert_eq!(on_irc, 10, "reaction lines on IRC");
    counter_reaches(&base, "junction_capped_total", "xmpp", "reaction", 341).await?;

    relays_now_and_after_a_restart(&mut lobby, "after 351 reactions in one stanza").await
}

/// One XMPP message with 50 distinct OOB links and 20 repeats (loopback URLs nobody
/// serves): `max_attachments` (4) cross to Matrix and to IRC, the other 66 are counted in
/// `junction_capped_total{kind="attachment"}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_oob_links_in_one_message_are_capped() -> anyhow::Result<()> {
    let (mut lobby, base) = Lobby::start_with_metrics("").await?;
    let tag = unique("oob");
    let link = |i: usize| format!("http://127.0.0.1:9/{tag}-{i}.png");
    let oob: String = (0..50)
        .chain(0..20)
        .map(|i| format!("<x xmlns='jabber:x:oob'><url>{}</url></x>", link(i)))
        .collect();
    lobby
        .xmpp
        .send_groupchat_with(&lobby.muc, &format!("{tag} links"), &oob)?;
    lobby.line_crosses(Side::Xmpp, "after the links").await?;

    let needle = format!("{tag}-");
    let on_matrix = matrix_count(&lobby, |e| {
        e["type"] == "m.room.message" && matrix_body(e).contains(&needle)
    })
    .await?;
    assert_eq!(on_matrix, 4, "attachment parts on Matrix");
    let on_irc = irc_count(&lobby, &needle);
    assert_eq!(on_irc, 4, "links on IRC");
    let capped = counter_reaches(&base, "junction_capped_total", "xmpp", "attachment", 66).await?;
    assert_eq!(capped, 66, "capped attachments counted");

    relays_now_and_after_a_restart(&mut lobby, "after 70 OOB links in one message").await
}

/// Rate limit of the flood test: 5 at once, then 2 a minute.
const BURST: usize = 5;
const PER_MINUTE: usize = 2;

/// How many of one sender's events may have passed `since`: the burst plus what refilled.
fn allowance(since: Instant) -> usize {
    BURST + PER_MINUTE * (since.elapsed().as_secs() as usize / 60 + 1)
}

/// Where a flood came from and who else speaks in the room there.
enum From {
    Irc,
    Xmpp,
}

/// After a flood of [`FLOOD`] lines `tag 0` … from one person on `from`: another person on
/// the same network is relayed to the other two networks meanwhile, the flood is counted in
/// `junction_rate_limited_total`, and at most the burst (plus what refilled since `start`)
/// of it crossed.
async fn cut_while_others_cross(
    lobby: &Lobby,
    base: &str,
    from: From,
    tag: &str,
    start: Instant,
) -> anyhow::Result<()> {
    let (network, what) = match from {
        From::Irc => ("irc:local", "IRC"),
        From::Xmpp => ("xmpp", "XMPP"),
    };
    let say = |text: &str| -> anyhow::Result<()> {
        match from {
            From::Irc => lobby.irc.privmsg(&lobby.channel, text),
            From::Xmpp => lobby.xmpp.send_groupchat(&lobby.muc, text).map(|_| ()),
        }
    };
    // Said while the flood comes in: it crosses to both other networks.
    let other = unique("someone else");
    say(&other)?;
    lobby
        .matrix_sees(&other)
        .await
        .with_context(|| format!("another {what} user's line during the flood → matrix"))?;
    match from {
        From::Irc => lobby.xmpp_sees(&other).await.map(|_| ()),
        From::Xmpp => lobby.irc_sees(&other).await.map(|_| ()),
    }
    .with_context(|| format!("another {what} user's line during the flood → the third network"))?;
    // The whole flood was read: all but the allowance counted as dropped.
    let least = FLOOD.saturating_sub(allowance(start) + PER_MINUTE) as u64;
    let limited = counter_reaches(
        base,
        "junction_rate_limited_total",
        network,
        "message",
        least,
    )
    .await?;
    assert!(limited as usize <= FLOOD, "{what}: {limited} counted");
    // A line recorded after the flood reaches Matrix after whatever of the flood crossed.
    let marker = unique("after the flood");
    say(&marker)?;
    lobby
        .matrix_sees(&marker)
        .await
        .with_context(|| format!("a line after the {what} flood → matrix"))?;
    let needle = format!("{tag} ");
    let allowed = allowance(start);
    let on_matrix = matrix_count(lobby, |e| matrix_body(e).contains(&needle)).await?;
    assert!(
        (1..=allowed).contains(&on_matrix),
        "{what} flood lines on Matrix: {on_matrix} (at most {allowed})"
    );
    let elsewhere = match from {
        From::Irc => lobby
            .xmpp
            .backlog()
            .iter()
            .filter(|el| {
                junction_testkit::clients::xmpp::body(el).is_some_and(|b| b.contains(&needle))
            })
            .count(),
        From::Xmpp => irc_count(lobby, &needle),
    };
    assert!(
        elsewhere <= allowed,
        "{what} flood lines on the third network: {elsewhere} (at most {allowed})"
    );
    Ok(())
}

/// Lines in each flood.
const FLOOD: usize = 60;

/// 60 lines from one IRC user, then 60 from one XMPP user, as fast as their clients send:
/// at most the burst (and what refilled meanwhile) crosses, the rest is counted in
/// `junction_rate_limited_total`; the other people in the room keep being relayed, and so
/// they are after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_person_is_cut_and_others_still_cross() -> anyhow::Result<()> {
    let (mut lobby, base) = Lobby::start_with_metrics(&format!(
        "rate_burst = {BURST}\nrate_per_minute = {PER_MINUTE}"
    ))
    .await?;
    let start = Instant::now();

    let mallory = IrcUser::connect(lobby.irc_addr, &short_nick(&unique("mal"))).await?;
    mallory.join(&lobby.channel).await?;
    let tag = unique("ifl");
    for i in 0..FLOOD {
        mallory.privmsg(&lobby.channel, &format!("{tag} {i}"))?;
    }
    cut_while_others_cross(&lobby, &base, From::Irc, &tag, start).await?;

    let s = servers().await?;
    let eve = XmppUser::register(s, &short_nick(&unique("eve")), "pw-flood").await?;
    eve.join_muc(&lobby.muc, &unique("eve")).await?;
    let tag = unique("xfl");
    for i in 0..FLOOD {
        eve.send_groupchat(&lobby.muc, &format!("{tag} {i}"))?;
    }
    cut_while_others_cross(&lobby, &base, From::Xmpp, &tag, start).await?;

    relays_now_and_after_a_restart(&mut lobby, "after a flood from IRC and XMPP").await
}

/// Lines alice says before and after the read-back finds them again.
const READ_BACK_LINES: usize = 6;

/// The gateway reads each linked Matrix room's timeline back after it starts (at 2, 15 and
/// 60 s, then every ten minutes) for what Synapse never pushed, and so finds again what it
/// already took. With a limit of twelve at once: alice says six lines, the read-back finds
/// them again (counted in `junction_duplicates_skipped_total`), and she says six more. All
/// twelve cross to IRC and XMPP, and none is counted as over her limit: what is found again
/// spends nothing of its sender's allowance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matrix_lines_read_back_again_spend_no_allowance() -> anyhow::Result<()> {
    let (lobby, base) = Lobby::start_with_metrics(&format!(
        "rate_burst = {}\nrate_per_minute = 1",
        2 * READ_BACK_LINES
    ))
    .await?;
    // The first read-back, 2 s after the adapter starts (the lobby is up later than that),
    // only sets where the room's timeline stands; it must be done before alice speaks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let tag = unique("rb");
    let lobby = &lobby;
    let say = |i: usize| {
        let text = format!("{tag} {i}.");
        async move {
            lobby.matrix.send_text(&lobby.room, &text).await?;
            tokio::time::sleep(Duration::from_millis(200)).await;
            anyhow::Ok(text)
        }
    };
    let mut last = String::new();
    for i in 0..READ_BACK_LINES {
        last = say(i).await?;
    }
    lobby.irc_sees(&last).await.context("the first six → IRC")?;
    let duplicates = junction_testkit::eventually(
        Duration::from_secs(90),
        "the read-back finding alice's lines again",
        || async {
            sample(&base, "junction_duplicates_skipped_total", "")
                .await
                .ok()
                .filter(|n| *n >= READ_BACK_LINES as u64)
        },
    )
    .await?;
    println!("found again by the read-back: {duplicates}");
    for i in READ_BACK_LINES..2 * READ_BACK_LINES {
        last = say(i).await?;
    }
    lobby.irc_sees(&last).await.context("the last six → IRC")?;
    lobby
        .xmpp_sees(&last)
        .await
        .context("the last six → XMPP")?;
    let needle = format!("{tag} ");
    assert_eq!(irc_count(lobby, &needle), 2 * READ_BACK_LINES, "on IRC");
    let on_xmpp = lobby
        .xmpp
        .backlog()
        .iter()
        .filter(|el| junction_testkit::clients::xmpp::body(el).is_some_and(|b| b.contains(&needle)))
        .count();
    assert_eq!(on_xmpp, 2 * READ_BACK_LINES, "on XMPP");
    assert_eq!(
        counter(&base, "junction_rate_limited_total", "matrix", "message").await?,
        0,
        "none of alice's lines is over her limit"
    );
    Ok(())
}

/// A second public Matrix room (made by alice) and the IRC channel to link it with, for a
/// second bridge beside the lobby's.
async fn second_room() -> anyhow::Result<(String, String)> {
    let s = servers().await?;
    let owner = junction_testkit::clients::MatrixUser::login(s, "alice", "alicepw").await?;
    let second = unique("second");
    let room = owner
        .create_room(Some(&second), true)
        .await
        .context("creating the second Matrix room")?;
    Ok((room, format!("#{second}")))
}

/// The `[[bridge]]` linking [`second_room`]'s room and channel.
fn second_bridge(room: &str, channel: &str) -> String {
    junction_testkit::gateway::bridge(
        "second",
        Some(room),
        None,
        Some(&format!("local/{channel}")),
    )
}

/// Two linked rooms, IRC relayed by the bot alone (`mode = "relay"`) at one line a second:
/// 30 lines said in one Matrix room, then one in the other. On IRC the other room's line
/// goes out before the busy room's backlog is through (the bot serves the channels in turn),
/// and the whole backlog still arrives, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_room_does_not_hold_back_another_on_irc() -> anyhow::Result<()> {
    let (room2, chan2) = second_room().await?;
    let lobby = Lobby::start_with(|c| {
        *c = c
            .replace("mode = \"puppet\"", "mode = \"relay\"")
            .replace("lines_per_second = 20.0", "lines_per_second = 1.0")
            .replace("burst = 50", "burst = 1");
        c.push_str(&second_bridge(&room2, &chan2));
    })
    .await?;
    lobby.irc.join(&chan2).await?;
    lobby.wait_bots_in(&room2, &chan2).await?;
    let irc_in = |channel: &str, text: &str| {
        lobby
            .irc
            .privmsgs_in(channel)
            .iter()
            .position(|(_, t)| t.contains(text))
    };
    // Every line here goes out at one a second behind the others, and the first one in the
    // second room crosses a room linked a moment ago: under a loaded test run that took
    // longer than the usual minute.
    let wait_irc = |channel: String, text: String| async move {
        junction_testkit::eventually(WAIT * 3, &format!("{text:?} in {channel}"), || {
            let found = irc_in(&channel, &text);
            async move { found }
        })
        .await
    };
    // The second room is linked on both sides.
    let probe = unique("second room linked");
    lobby.matrix.send_text(&room2, &probe).await?;
    wait_irc(chan2.clone(), probe)
        .await
        .context("the second room → irc")?;

    let tag = unique("busy");
    for i in 0..30 {
        lobby
            .matrix
            .send_text(&lobby.room, &format!("{tag} {i}."))
            .await?;
    }
    let quiet = unique("quiet room");
    lobby.matrix.send_text(&room2, &quiet).await?;
    wait_irc(chan2.clone(), quiet.clone())
        .await
        .context("the quiet room's line → irc")?;
    // Both channels' lines come through the bot's one connection, in the order it sent them.
    let order: Vec<String> = lobby
        .irc
        .backlog()
        .iter()
        .filter_map(|m| match &m.command {
            irc_proto::Command::PRIVMSG(_, t) => Some(t.clone()),
            _ => None,
        })
        .collect();
    let quiet_at = order
        .iter()
        .position(|t| t.contains(&quiet))
        .context("the quiet line in the backlog")?;
    let busy_before = order[..quiet_at]
        .iter()
        .filter(|t| t.contains(&tag))
        .count();
    assert!(
        busy_before < 30,
        "the quiet room's line waited for the whole busy backlog ({busy_before} lines)"
    );
    wait_irc(lobby.channel.clone(), format!("{tag} 29."))
        .await
        .context("the end of the busy room's backlog → irc")?;
    let busy: Vec<usize> = lobby
        .irc
        .privmsgs_in(&lobby.channel)
        .iter()
        .filter_map(|(_, t)| {
            let rest = &t[t.find(&tag)? + tag.len()..];
            rest.trim_start().split('.').next()?.parse().ok()
        })
        .collect();
    assert_eq!(
        busy,
        (0..30).collect::<Vec<_>>(),
        "the busy room's lines, in order"
    );
    Ok(())
}

/// A loopback file server that holds its answer until released: it records that the file
/// was asked for, and whether the asker hung up before the answer.
struct SlowServer {
    url: String,
    asked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    answered: std::sync::Arc<std::sync::atomic::AtomicBool>,
    hung_up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    release: std::sync::Arc<tokio::sync::Notify>,
}

impl SlowServer {
    /// Serves `body` as `name` (text/plain) once released, or gives up after 120 s.
    async fn start(name: &str, body: &'static str) -> anyhow::Result<SlowServer> {
        use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
        use std::sync::Arc;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/{name}", listener.local_addr()?);
        let (asked, answered, hung_up) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let release = Arc::new(tokio::sync::Notify::new());
        let (a, ans, gone, go) = (
            asked.clone(),
            answered.clone(),
            hung_up.clone(),
            release.clone(),
        );
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                a.store(true, SeqCst);
                tokio::select! {
                    () = go.notified() => {
                        let reply = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(reply.as_bytes()).await.is_ok() {
                            ans.store(true, SeqCst);
                        }
                    }
                    r = s.read(&mut buf) => {
                        if matches!(r, Ok(0) | Err(_)) {
                            gone.store(true, SeqCst);
                        }
                    }
                    () = tokio::time::sleep(Duration::from_secs(120)) => {}
                }
            }
        });
        Ok(SlowServer {
            url,
            asked,
            answered,
            hung_up,
            release,
        })
    }

    /// True while the file was asked for and neither answered nor given up by the asker.
    fn holding(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.asked.load(SeqCst) && !self.answered.load(SeqCst) && !self.hung_up.load(SeqCst)
    }
}

/// Matrix deliveries go out per room: while an XMPP user's attachment in one room is fetched
/// from a server that holds its answer, a line said in another linked room reaches Matrix;
/// once the server answers, the attachment is uploaded and arrives before the line said after
/// it in its own room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_attachment_does_not_hold_back_another_matrix_room() -> anyhow::Result<()> {
    let (room2, chan2) = second_room().await?;
    let name = format!("{}.txt", unique("slow"));
    let file = SlowServer::start(&name, "held back, then served").await?;
    let lobby = Lobby::start_with(|c| {
        // The file server is on 127.0.0.1, which the gateway refuses by default.
        *c = c.replace("[matrix]\n", "[matrix]\nprivate_attachment_urls = true\n");
        c.push_str(&second_bridge(&room2, &chan2));
    })
    .await?;
    lobby.irc.join(&chan2).await?;
    lobby.wait_bots_in(&room2, &chan2).await?;
    let me = lobby.matrix.user_id().to_owned();
    let in_room2 = |text: String| {
        let me = me.clone();
        let room2 = room2.clone();
        let matrix = &lobby.matrix;
        async move {
            matrix
                .wait_for(&room2, WAIT, |e| {
                    e["sender"].as_str() != Some(me.as_str())
                        && e["content"]["body"]
                            .as_str()
                            .is_some_and(|b| b.contains(&text))
                })
                .await
        }
    };
    // The second room is linked on both sides.
    let probe = unique("second room linked");
    lobby.irc.privmsg(&chan2, &probe)?;
    in_room2(probe).await.context("irc → the second room")?;

    lobby.xmpp.send_groupchat_with(
        &lobby.muc,
        &file.url,
        &format!("<x xmlns='jabber:x:oob'><url>{}</url></x>", file.url),
    )?;
    junction_testkit::eventually(WAIT, "the attachment asked for", || {
        let asked = file.asked.load(std::sync::atomic::Ordering::SeqCst);
        async move { asked.then_some(()) }
    })
    .await?;
    let quiet = unique("the other room");
    lobby.irc.privmsg(&chan2, &quiet)?;
    in_room2(quiet)
        .await
        .context("the other room's line → matrix")?;
    assert!(
        file.holding(),
        "the other room's line waited for the attachment (answered: {}, given up: {})",
        file.answered.load(std::sync::atomic::Ordering::SeqCst),
        file.hung_up.load(std::sync::atomic::Ordering::SeqCst)
    );

    let after = unique("after the attachment");
    lobby.xmpp.send_groupchat(&lobby.muc, &after)?;
    file.release.notify_one();
    lobby
        .matrix_sees(&after)
        .await
        .context("the line after the attachment → matrix")?;
    let events = lobby.matrix.events(&lobby.room).await?;
    let upload = events
        .iter()
        .position(|e| {
            e["content"]["body"] == name.as_str()
                && e["content"]["url"]
                    .as_str()
                    .is_some_and(|u| u.starts_with("mxc://"))
        })
        .context("the attachment, uploaded, in the first room")?;
    let line = events
        .iter()
        .position(|e| {
            e["content"]["body"]
                .as_str()
                .is_some_and(|b| b.contains(&after))
        })
        .context("the line after the attachment")?;
    assert!(
        upload < line,
        "the attachment ({upload}) came after the line said after it ({line})"
    );
    Ok(())
}
