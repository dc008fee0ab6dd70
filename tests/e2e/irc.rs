//! The IRC adapter against real InspIRCd (IRCv3, NICKLEN 30) and ngIRCd (no IRCv3, NICKLEN 9):
//! in relay mode a remote user's message appears under the right nick, a long message arrives
//! complete and in order, and an IRC user's message reaches the gateway; in puppet mode each
//! remote user speaks from their own connection (`name[m]`/`name[x]`, NICKLEN-trimmed, `_` on
//! collision), emotes are ACTIONs, edits are marked, a private message to the bot is a
//! command answered by NOTICE, IRC formatting arrives as rich text and the puppets' own lines
//! never come back.

use anyhow::Context as _;
use junction_core::format::RichText;
use junction_core::{
    Delivered, Delivery, Event, EventKind, MessageId, MessageKind, NetworkId, RoomId, RoomRef,
};
use junction_irc::{IrcAdapter, IrcConfig, IrcMode};
use junction_testkit::clients::IrcUser;
use junction_testkit::servers::servers;
use junction_testkit::{eventually, person, said, solo, unique, Inbox, Solo};
use std::net::SocketAddr;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);

/// A running adapter as network `irc:e2e`: the gateway's ends of its channels, its bot's
/// nick and the events it passed on.
struct Running {
    nick: String,
    solo: Solo,
    seen: Inbox,
}

impl Running {
    /// The answers to the next `n` deliveries.
    async fn answered(&mut self, n: usize) -> anyhow::Result<Vec<Delivered>> {
        let mut answers = Vec::new();
        for _ in 0..n {
            answers.push(self.solo.next_delivered(WAIT).await?);
        }
        Ok(answers)
    }

    /// Hands the adapter `d`, as the gateway does.
    async fn say(&self, d: Delivery) -> anyhow::Result<()> {
        Ok(self.solo.deliveries.send(d).await?)
    }

    /// Stops the adapter, which must return `Ok` in time.
    async fn stop(self) -> anyhow::Result<()> {
        tokio::time::timeout(WAIT, self.solo.stop())
            .await
            .context("adapter stops")??;
        Ok(())
    }
}

fn start(addr: SocketAddr, channel: &str) -> Running {
    start_in(addr, channel, IrcMode::Relay)
}

fn start_in(addr: SocketAddr, channel: &str, mode: IrcMode) -> Running {
    start_with(addr, channel, mode, None)
}

fn start_with(
    addr: SocketAddr,
    channel: &str,
    mode: IrcMode,
    channel_history: Option<&str>,
) -> Running {
    let u = unique("jb");
    // The end of a unique name is what differs between tests.
    let nick = format!("jb{}", &u[u.len().saturating_sub(7)..]);
    let mut cfg = IrcConfig::new("e2e", addr.to_string(), nick.clone());
    cfg.mode = mode;
    cfg.max_puppets = 50;
    cfg.burst = 20;
    cfg.max_lines = 20;
    cfg.lines_per_second = 5.0;
    cfg.channel_history = channel_history.map(str::to_owned);
    let mut solo = solo(
        IrcAdapter::new(cfg),
        NetworkId::new("irc:e2e"),
        vec![RoomId::new(channel)],
    );
    let seen = solo.inbox();
    Running { nick, solo, seen }
}

/// Outbox row `outbox_id` for `channel`: `text` said by `display` on Matrix.
fn delivery(outbox_id: u64, channel: &str, display: &str, text: &str) -> Delivery {
    from(
        outbox_id,
        channel,
        "matrix",
        display,
        said(MessageKind::Text, text),
    )
}

async fn lobby_both_ways(addr: SocketAddr, display: &str, shown: &str) -> anyhow::Result<()> {
    let channel = format!("#{}", unique("irc"));
    let mut user_nick = unique("u");
    user_nick.truncate(9);
    let user = IrcUser::connect(addr, &user_nick).await?;
    user.join(&channel).await?;
    let mut gw = start(addr, &channel);

    // A remote user's message shows under the sanitised, NICKLEN-trimmed name.
    gw.say(delivery(1, &channel, display, "hello irc")).await?;
    let want = format!("<{shown}> hello irc");
    let ch = channel.clone();
    eventually(WAIT, "the relayed line", || {
        let got = user.privmsgs_in(&ch).iter().any(|(_, text)| *text == want);
        async move { got.then_some(()) }
    })
    .await?;

    // 2,000 bytes arrive complete and in order (compared without spaces: a server may trim
    // the space a split leaves at the end of a line).
    let long: String = (0..400)
        .map(|i| format!("w{:03} ", i % 1000))
        .collect::<String>();
    let long = &long[..2000];
    gw.say(delivery(2, &channel, display, long)).await?;
    let prefix = format!("<{shown}> ");
    let want_long: String = long.chars().filter(|c| *c != ' ').collect();
    let ch = channel.clone();
    let joined = eventually(WAIT, "the long message", || {
        let texts: String = user
            .privmsgs_in(&ch)
            .iter()
            .filter_map(|(_, t)| t.strip_prefix(&prefix))
            .filter(|t| *t != "hello irc")
            .flat_map(|t| t.chars().filter(|c| *c != ' ').collect::<Vec<_>>())
            .collect();
        let done = texts.len() >= want_long.len();
        async move { done.then_some(texts) }
    })
    .await
    .with_context(|| format!("received: {:?}", user.privmsgs_in(&channel)))?;
    assert_eq!(joined, want_long);
    gw.answered(2).await.context("both deliveries answered")?;

    // An IRC user's message reaches the gateway as an event of the linked room.
    user.privmsg(&channel, "from irc")?;
    let ev = gw
        .seen
        .wait_message(WAIT, "from irc")
        .await
        .context("the inbound event")?;
    assert_eq!(ev.origin.room.0, channel);
    assert_eq!(ev.sender.display_name, user_nick);

    gw.stop().await?;
    Ok(())
}

/// With `channel_history`, the bot turns on InspIRCd's +H in a channel where it is operator
/// (here: it created the channel), so what it said there is replayed to whoever joins later.
#[tokio::test(flavor = "multi_thread")]
async fn inspircd_channel_history_is_turned_on_and_replayed() -> anyhow::Result<()> {
    let s = servers().await?;
    let channel = format!("#{}", unique("hist"));
    let mut gw = start_with(s.inspircd, &channel, IrcMode::Relay, Some("50:1h"));
    // Asked from outside the channel until the mode shows.
    let mut nick = unique("h");
    nick.truncate(9);
    let user = IrcUser::connect(s.inspircd, &nick).await?;
    let u = &user;
    let ch = channel.clone();
    eventually(WAIT, "+H on the channel", || {
        let asked = u.send_raw(&format!("MODE {ch}"));
        let has_h = u
            .backlog()
            .iter()
            .filter_map(|m| irc_numeric_args(m, "324"))
            .any(|a| a.get(2).is_some_and(|f| f.contains('H')));
        async move { (asked.is_ok() && has_h).then_some(()) }
    })
    .await?;
    gw.say(delivery(1, &channel, "alice", "said before you came"))
        .await?;
    gw.answered(1).await.context("the delivery answered")?;

    user.join(&channel).await?;
    let ch = channel.clone();
    eventually(WAIT, "the line replayed on join", || {
        let got = user
            .privmsgs_in(&ch)
            .iter()
            .any(|(_, t)| t == "<alice[m]> said before you came");
        async move { got.then_some(()) }
    })
    .await
    .with_context(|| format!("received: {:?}", user.privmsgs_in(&channel)))?;

    gw.stop().await?;
    Ok(())
}

/// Where the bot joins a channel it may not set modes in, `channel_history` waits: once an
/// operator makes the bot an operator too, it turns on +H.
#[tokio::test(flavor = "multi_thread")]
async fn inspircd_channel_history_is_turned_on_once_the_bot_is_made_operator() -> anyhow::Result<()>
{
    let s = servers().await?;
    let channel = format!("#{}", unique("hop"));
    let mut nick = unique("o");
    nick.truncate(9);
    let op = IrcUser::connect(s.inspircd, &nick).await?;
    op.join(&channel).await?;
    let gw = start_with(s.inspircd, &channel, IrcMode::Relay, Some("50:1h"));
    let bot = gw.nick.clone();
    op.wait_for(WAIT, |m| {
        matches!(&m.command, irc_proto::Command::JOIN(..))
            && junction_testkit::clients::irc::source_nick(m)
                .is_some_and(|n| n.eq_ignore_ascii_case(&bot))
    })
    .await
    .context("the bot joins")?;
    // Its own attempt (MODE query, then +H refused) is over well within this.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let has_h = |u: &IrcUser| {
        u.backlog()
            .iter()
            .filter_map(|m| irc_numeric_args(m, "324"))
            .any(|a| a.get(2).is_some_and(|f| f.contains('H')))
    };
    op.send_raw(&format!("MODE {channel}"))?;
    op.wait_for(WAIT, |m| irc_numeric_args(m, "324").is_some())
        .await?;
    assert!(!has_h(&op), "no history before the bot is an operator");
    op.mode(&channel, "+o", &[&gw.nick])?;
    let ch = channel.clone();
    eventually(WAIT, "+H on the channel", || {
        let asked = op.send_raw(&format!("MODE {ch}"));
        let done = has_h(&op);
        async move { (asked.is_ok() && done).then_some(()) }
    })
    .await?;
    gw.stop().await?;
    Ok(())
}

/// The arguments of numeric `code`, when `m` is that numeric.
fn irc_numeric_args(m: &irc_proto::Message, code: &str) -> Option<Vec<String>> {
    if !junction_testkit::clients::irc::is_numeric(m, code) {
        return None;
    }
    match &m.command {
        irc_proto::Command::Response(_, args) => Some(args.clone()),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn inspircd_relays_long_messages_and_reads_the_channel() -> anyhow::Result<()> {
    let s = servers().await?;
    lobby_both_ways(s.inspircd, "alexandria", "alexandria[m]").await
}

#[tokio::test(flavor = "multi_thread")]
async fn ngircd_trims_nicks_to_nicklen_9() -> anyhow::Result<()> {
    let s = servers().await?;
    lobby_both_ways(s.ngircd, "alexandria", "alexan[m]").await
}

/// A short name unique to this test (the end of a unique name is what differs), so nicks
/// of parallel tests never collide on the shared servers.
/// `prefix` and the last `len` characters of a unique name (a nick that fits NICKLEN).
pub(super) fn short(prefix: &str, len: usize) -> String {
    let u = unique("x");
    format!("{prefix}{}", &u[u.len().saturating_sub(len)..])
}

/// Outbox row `outbox_id` for `channel`: `kind` by `display` on `network`.
fn from(outbox_id: u64, channel: &str, network: &str, display: &str, kind: EventKind) -> Delivery {
    junction_testkit::delivery(
        outbox_id,
        RoomRef::new("irc:e2e", channel),
        &person(network, display),
        kind,
    )
}

/// Waits until `user` saw a PRIVMSG from `nick` in `channel` with exactly `text`.
async fn sees(user: &IrcUser, channel: &str, nick: &str, text: &str) -> anyhow::Result<()> {
    eventually(WAIT, &format!("{nick} saying {text:?}"), || {
        let got = user
            .privmsgs_in(channel)
            .iter()
            .any(|(n, t)| n.eq_ignore_ascii_case(nick) && t == text);
        async move { got.then_some(()) }
    })
    .await
    .with_context(|| format!("received: {:?}", user.privmsgs_in(channel)))
}

/// `nicklen` is the server's: names are chosen so the puppet nick is `name[m]` trimmed to it.
async fn puppets(addr: SocketAddr, nicklen: usize) -> anyhow::Result<()> {
    junction_testkit::test_log("");
    let channel = format!("#{}", unique("pup"));
    let watcher = IrcUser::connect(addr, &short("w", 7))
        .await
        .context("watcher connects")?;
    watcher.join(&channel).await.context("watcher joins")?;
    // Someone on IRC already holds the nick a remote user would get.
    let taken = format!("{}[m]", short("c", 4));
    // (Registered under a plain nick first: the client uses its nick as user name, and
    // ngIRCd refuses brackets there.)
    let holder = IrcUser::connect(addr, &short("h", 7))
        .await
        .context("holder connects")?;
    holder.send_raw(&format!("NICK {taken}"))?;
    let t = taken.clone();
    holder
        .wait_for(
            WAIT,
            |m| matches!(&m.command, irc_proto::Command::NICK(n) if *n == t),
        )
        .await
        .with_context(|| format!("the holder takes {taken}"))?;
    let mut gw = start_in(addr, &channel, IrcMode::Puppet);

    // A Matrix user speaks through their own connection, nick trimmed to NICKLEN.
    let alice = format!("{}andria", short("al", 4));
    let alice_nick = if nicklen >= alice.len() + 3 {
        format!("{alice}[m]")
    } else {
        format!("{}[m]", &alice[..nicklen - 3])
    };
    // Another remote user gets another connection and nick.
    let bob = short("bo", 4);
    // A nick already in use gets `_`.
    let carol = taken.trim_end_matches("[m]").to_owned();
    let edit = EventKind::Edit {
        target: MessageId::new("$e1"),
        body: RichText::plain("hello from a fixed puppet"),
    };
    // (sender's network, sender, what they do, their nick on IRC, the line seen there)
    let steps = [
        (
            "matrix",
            &alice,
            said(MessageKind::Text, "hello from a puppet"),
            alice_nick.clone(),
            "hello from a puppet",
        ),
        (
            "xmpp",
            &bob,
            said(MessageKind::Text, "hi from bob"),
            format!("{bob}[x]"),
            "hi from bob",
        ),
        (
            "matrix",
            &carol,
            said(MessageKind::Text, "i am carol"),
            format!("{taken}_"),
            "i am carol",
        ),
        // An emote is an ACTION; an edit is marked as a correction.
        (
            "matrix",
            &alice,
            said(MessageKind::Emote, "waves"),
            alice_nick.clone(),
            "\u{1}ACTION waves\u{1}",
        ),
        (
            "matrix",
            &alice,
            edit,
            alice_nick,
            "(edit) hello from a fixed puppet",
        ),
    ];
    for (outbox_id, (network, who, kind, nick, line)) in (1..).zip(steps) {
        gw.say(from(outbox_id, &channel, network, who, kind))
            .await?;
        sees(&watcher, &channel, &nick, line).await?;
    }

    let answers = gw
        .answered(5)
        .await
        .context("all five deliveries answered")?;
    assert!(answers.iter().all(|d| d.outcome.is_ok()), "{answers:?}");

    // A private message to the bot is a command; the answer comes back by NOTICE.
    watcher.privmsg(&gw.nick, "status please")?;
    let cmd = tokio::time::timeout(WAIT, gw.solo.commands.recv())
        .await
        .context("a command in time")?
        .context("commands open")?;
    assert_eq!(cmd.text, "status please");
    assert!(
        cmd.from
            .iter()
            .any(|u| u.user.0.starts_with(&format!("{}!", watcher.nick()))),
        "{:?}",
        cmd.from
    );
    let _ = cmd.reply.send("all fine\nsecond line".into());
    let bot = gw.nick.clone();
    watcher
        .wait_for(WAIT, |m| {
            matches!(&m.command, irc_proto::Command::NOTICE(_, t) if t == "second line")
                && junction_testkit::clients::irc::source_nick(m)
                    .is_some_and(|n| n.eq_ignore_ascii_case(&bot))
        })
        .await
        .context("the answer by NOTICE")?;

    // IRC formatting arrives as rich text; what the puppets said never comes back.
    watcher.privmsg(&channel, "\u{2}bold\u{2} move")?;
    let ev = gw
        .seen
        .wait_message(WAIT, "bold move")
        .await
        .context("the formatted line")?;
    match &ev.kind {
        EventKind::Message(m) => assert!(!m.body.is_plain(), "{:?}", m.body),
        other => anyhow::bail!("not a message: {other:?}"),
    }
    let echoed: Vec<Event> = gw
        .seen
        .events()
        .iter()
        .filter(|e| {
            e.sender.display_name.ends_with("[m]") || e.sender.display_name.ends_with("[x]")
        })
        .cloned()
        .collect();
    assert!(echoed.is_empty(), "our puppets came back: {echoed:?}");

    gw.stop().await?;
    drop(holder);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn inspircd_puppets_speak_under_their_own_nicks() -> anyhow::Result<()> {
    let s = servers().await?;
    puppets(s.inspircd, 30).await
}

#[tokio::test(flavor = "multi_thread")]
async fn ngircd_puppets_speak_under_nicklen_trimmed_nicks() -> anyhow::Result<()> {
    let s = servers().await?;
    puppets(s.ngircd, 9).await
}
