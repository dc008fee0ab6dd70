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

mod rig;

pub(crate) use rig::*;

use super::lobby::{short_nick, Lobby, Side};
use anyhow::Context as _;
use junction_testkit::clients::irc::source_nick;
use junction_testkit::clients::xmpp::body;
use junction_testkit::clients::IrcUser;
use junction_testkit::{eventually, free_port, unique};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

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
        !lobby.irc_has(&format!("{tag}k")),
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
        assert!(!lobby.irc_has(&never), "{never} must not be relayed");
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
