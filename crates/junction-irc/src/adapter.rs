//! The adapter: one bot connection per network that joins the linked channels, reads their
//! traffic, and sends every delivery in outbox order.

use crate::bucket::Bucket;
use crate::config::{IrcConfig, IrcMode};
use crate::isupport::ISupport;
use crate::session::{self, Registration, Session};
use crate::{commands, inbound, nick, outbound};
use irc_proto::{Command, Response};
use junction_core::{
    Adapter, AdapterContext, AdapterError, Capabilities, Delivered, Delivery, Inbound, Markup,
    MessageId, NetworkStatus,
};
use junction_store::Store;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The IRC adapter of one network.
pub struct IrcAdapter {
    config: IrcConfig,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for IrcAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IrcAdapter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Why a connection ended.
enum End {
    Shutdown,
    Lost(String),
}

/// A delivery being sent. It is answered only once the server answered a PING sent after its
/// last line: TCP keeps order, so the server then has every line (a write into a connection
/// the server already closed succeeds locally, so a sent line alone proves nothing). If the
/// connection drops before that, the whole delivery is sent again after reconnect: a line may
/// then appear twice, but none is lost.
struct Pending {
    delivery: Delivery,
    lines: Vec<String>,
    sent: usize,
    ping_sent: bool,
    /// An admin enforcement (KICK/MODE +b): a refusal from the server before the PING's
    /// answer makes it fail.
    enforce: bool,
    denied: Option<String>,
}

impl Pending {
    fn token(&self) -> String {
        format!("junction-{}", self.delivery.outbox_id)
    }
}

/// Channel membership as the bot sees it: one shared roster per channel (folded names).
#[derive(Default)]
struct Roster {
    /// folded channel → room as written in the link
    rooms: BTreeMap<String, String>,
    /// folded channel → folded nicks
    members: BTreeMap<String, BTreeSet<String>>,
    /// folded nick → host, as last seen in a message prefix (for bans)
    hosts: BTreeMap<String, String>,
}

/// A command's answer on its way back to the person who typed it.
type Reply = (String, String);

impl IrcAdapter {
    /// An adapter for `config`, keeping its puppet nicks in `store`.
    pub fn new(config: IrcConfig, store: Arc<dyn Store>) -> Self {
        Self { config, store }
    }

    fn registration(&self) -> Registration {
        Registration {
            nick: self.config.nick.clone(),
            suffix: String::new(),
            password: self.config.password.clone(),
            sasl: self.config.sasl.clone(),
        }
    }

    /// The nick a remote user is shown with; remembered in the store so it stays the same.
    fn nick_for(&self, cx: &AdapterContext, d: &Delivery, isupport: &ISupport) -> String {
        let user = &d.event.sender.user;
        match self.store.puppet(&cx.network, user) {
            Ok(Some(n)) => return n,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "puppet nick lookup failed"),
        }
        let name = d
            .event
            .sender
            .display_name
            .split(['@', ':'])
            .find(|s| !s.is_empty())
            .unwrap_or("user");
        let mut candidate = nick::sanitise(
            name,
            nick::suffix_for(user.network.0.as_str()),
            isupport.nicklen,
        );
        // Another remote user may hold this nick already: add `_` until it is free.
        for _ in 0..16 {
            match self.store.puppet_owner(&cx.network, &candidate) {
                Ok(Some(owner)) if &owner != user => {
                    candidate = nick::next_candidate(
                        &candidate,
                        nick::suffix_for(user.network.0.as_str()),
                        isupport.nicklen,
                    );
                }
                _ => break,
            }
        }
        if let Err(e) = self.store.set_puppet(&cx.network, user, &candidate) {
            tracing::warn!(error = %e, "puppet nick not stored");
        }
        candidate
    }

    async fn serve(
        &self,
        mut s: Session,
        cx: &mut AdapterContext,
        pending: &mut Option<Pending>,
        replies: &mut mpsc::UnboundedReceiver<Reply>,
        reply_tx: &mpsc::UnboundedSender<Reply>,
    ) -> End {
        let mut bucket = Bucket::new(self.config.burst, self.config.lines_per_second);
        let mut roster = Roster::default();
        let rooms = cx.rooms.borrow_and_update().clone();
        for room in &rooms {
            roster
                .rooms
                .insert(s.isupport.fold(&room.0), room.0.clone());
            if let Err(e) = s.writer.send(&format!("JOIN {}", room.0)).await {
                return End::Lost(e.to_string());
            }
        }
        tracing::info!(network = %cx.network, nick = %s.nick, rooms = rooms.len(), "IRC connected");
        cx.status.send_replace(NetworkStatus::Connected);
        if let Some(p) = pending.as_mut() {
            p.sent = 0;
            p.ping_sent = false;
            p.denied = None;
        }
        loop {
            if let Some(p) = pending.as_mut() {
                while p.sent < p.lines.len() {
                    bucket.wait().await;
                    if let Err(e) = s.writer.send(&p.lines[p.sent]).await {
                        return End::Lost(e.to_string());
                    }
                    p.sent += 1;
                }
                if !p.ping_sent {
                    if let Err(e) = s.writer.send(&format!("PING :{}", p.token())).await {
                        return End::Lost(e.to_string());
                    }
                    p.ping_sent = true;
                }
            }
            tokio::select! {
                biased;
                _ = cx.shutdown.cancelled() => {
                    let _ = s.writer.send("QUIT :gateway shutting down").await;
                    return End::Shutdown;
                }
                msg = s.reader.next() => {
                    let msg = match msg {
                        Ok(Some(m)) => m,
                        Ok(None) => return End::Lost("server closed the connection".into()),
                        Err(e) => return End::Lost(e.to_string()),
                    };
                    if let Command::PONG(a, b) = &msg.command {
                        let token = b.as_deref().unwrap_or(a);
                        if pending.as_ref().is_some_and(|p| p.ping_sent && p.token() == token) {
                            if let Some(p) = pending.take() {
                                let outcome = match p.denied {
                                    Some(why) => Err(why),
                                    None if p.enforce => Ok(Vec::new()),
                                    None => Ok((0..p.lines.len())
                                        .map(|i| MessageId::new(format!("{}.{i}", p.delivery.outbox_id)))
                                        .collect()),
                                };
                                let _ = cx.delivered.send(Delivered {
                                    outbox_id: p.delivery.outbox_id,
                                    target: p.delivery.target.clone(),
                                    event: p.delivery.event.id.clone(),
                                    outcome,
                                });
                            }
                        }
                        continue;
                    }
                    if let Some(p) = pending.as_mut().filter(|p| p.enforce && p.ping_sent) {
                        if let Some(why) = refusal(&msg) {
                            p.denied.get_or_insert(why);
                        }
                    }
                    if let Err(e) = self.on_message(&mut s, cx, &mut roster, msg, reply_tx).await {
                        return End::Lost(e);
                    }
                }
                reply = replies.recv() => {
                    let Some((to, text)) = reply else { continue };
                    let budget = crate::split::budget(s.isupport.linelen, &s.nick, &to);
                    for line in commands::reply_lines(&to, &text, budget) {
                        bucket.wait().await;
                        if let Err(e) = s.writer.send(&line).await {
                            return End::Lost(e.to_string());
                        }
                    }
                }
                changed = cx.rooms.changed() => {
                    if changed.is_err() {
                        continue;
                    }
                    let now: Vec<String> = cx.rooms.borrow_and_update().iter().map(|r| r.0.clone()).collect();
                    let folded: BTreeSet<String> = now.iter().map(|r| s.isupport.fold(r)).collect();
                    let gone: Vec<String> = roster.rooms.keys().filter(|k| !folded.contains(*k)).cloned().collect();
                    for k in gone {
                        if let Some(room) = roster.rooms.remove(&k) {
                            roster.members.remove(&k);
                            if let Err(e) = s.writer.send(&format!("PART {room}")).await {
                                return End::Lost(e.to_string());
                            }
                        }
                    }
                    for room in now {
                        let k = s.isupport.fold(&room);
                        if let std::collections::btree_map::Entry::Vacant(v) = roster.rooms.entry(k) {
                            v.insert(room.clone());
                            if let Err(e) = s.writer.send(&format!("JOIN {room}")).await {
                                return End::Lost(e.to_string());
                            }
                        }
                    }
                }
                d = cx.deliveries.recv(), if pending.is_none() => {
                    let Some(d) = d else {
                        // The gateway is gone; nothing more will come.
                        return End::Shutdown;
                    };
                    let hosts = &roster.hosts;
                    let isupport = &s.isupport;
                    if let Some(lines) = outbound::enforcement(&d, &cx.network, &|n| hosts.get(&isupport.fold(n)).cloned()) {
                        *pending = Some(Pending { delivery: d, lines, sent: 0, ping_sent: false, enforce: true, denied: None });
                        continue;
                    }
                    let from_gateway = d.event.sender.user.network.is_gateway();
                    let relay_nick = if from_gateway { String::new() } else { self.nick_for(cx, &d, &s.isupport) };
                    let relay = match self.config.mode {
                        // The gateway's own notices are the bot's words.
                        _ if from_gateway => None,
                        // Puppet connections are not available yet: puppet mode falls back
                        // to relaying through the bot.
                        IrcMode::Relay | IrcMode::Puppet => Some(relay_nick.as_str()),
                    };
                    let lines = outbound::render(&d, &outbound::Render {
                        channel: &d.target.room.0,
                        sender_nick: &s.nick,
                        relay_as: relay,
                        linelen: s.isupport.linelen,
                        max_lines: self.config.max_lines,
                    });
                    *pending = Some(Pending { delivery: d, lines, sent: 0, ping_sent: false, enforce: false, denied: None });
                }
            }
        }
    }

    async fn on_message(
        &self,
        s: &mut Session,
        cx: &AdapterContext,
        roster: &mut Roster,
        msg: irc_proto::Message,
        reply_tx: &mpsc::UnboundedSender<Reply>,
    ) -> Result<(), String> {
        let nick_of = msg.source_nickname().map(|n| s.isupport.fold(n));
        if let (Some(n), Some(irc_proto::Prefix::Nickname(_, _, host))) = (&nick_of, &msg.prefix) {
            if !host.is_empty() && roster.members.values().any(|m| m.contains(n)) {
                roster.hosts.insert(n.clone(), host.clone());
            }
        }
        match &msg.command {
            Command::PING(a, _) => {
                s.writer
                    .send(&format!("PONG :{a}"))
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(());
            }
            Command::ERROR(reason) => return Err(format!("server error: {reason}")),
            Command::Response(Response::RPL_NAMREPLY, args) => {
                if let (Some(chan), Some(names)) = (args.get(2), args.get(3)) {
                    let k = s.isupport.fold(chan);
                    let set = roster.members.entry(k).or_default();
                    for n in names.split(' ').filter(|n| !n.is_empty()) {
                        let n = n.trim_start_matches(|c| s.isupport.prefix_symbols.contains(c));
                        set.insert(s.isupport.fold(n));
                    }
                }
                return Ok(());
            }
            Command::PRIVMSG(target, text)
                if s.isupport.fold(target) == s.isupport.fold(&s.nick) =>
            {
                self.command(cx, &msg, text, reply_tx);
                return Ok(());
            }
            _ => {}
        }
        let me = s.isupport.fold(&s.nick);
        let events = {
            let isupport = &s.isupport;
            let rooms = &roster.rooms;
            let members = &roster.members;
            inbound::map(
                &cx.network,
                &msg,
                &|chan| rooms.get(&isupport.fold(chan)).cloned(),
                &|n| {
                    let n = isupport.fold(n);
                    members
                        .iter()
                        .filter(|(_, m)| m.contains(&n))
                        .filter_map(|(c, _)| rooms.get(c).cloned())
                        .collect()
                },
                &|n| {
                    isupport.fold(n) == me
                        || self
                            .store
                            .puppet_owner(&cx.network, n)
                            .ok()
                            .flatten()
                            .is_some()
                },
            )
        };
        // Keep the roster current after mapping (QUIT/NICK needed the old membership).
        if let Some(n) = nick_of {
            match &msg.command {
                Command::JOIN(chan, _, _) => {
                    roster
                        .members
                        .entry(s.isupport.fold(chan))
                        .or_default()
                        .insert(n);
                }
                Command::PART(chan, _) => {
                    if let Some(m) = roster.members.get_mut(&s.isupport.fold(chan)) {
                        m.remove(&n);
                    }
                }
                Command::KICK(chan, who, _) => {
                    if let Some(m) = roster.members.get_mut(&s.isupport.fold(chan)) {
                        m.remove(&s.isupport.fold(who));
                    }
                }
                Command::QUIT(_) => {
                    for m in roster.members.values_mut() {
                        m.remove(&n);
                    }
                    roster.hosts.remove(&n);
                }
                Command::NICK(new) => {
                    let new = s.isupport.fold(new);
                    if n == me {
                        s.nick = new.clone();
                    }
                    for m in roster.members.values_mut() {
                        if m.remove(&n) {
                            m.insert(new.clone());
                        }
                    }
                    if let Some(h) = roster.hosts.remove(&n) {
                        roster.hosts.insert(new.clone(), h);
                    }
                }
                _ => {}
            }
        }
        for e in events {
            if cx.inbound.send(Inbound::new(e)).await.is_err() {
                tracing::debug!("gateway gone; inbound event not passed on");
            }
        }
        Ok(())
    }
}

impl IrcAdapter {
    /// A private message to the bot: a command for the gateway, unless it comes from one of
    /// our own puppets. The answer is awaited in its own task (the connection never waits)
    /// and comes back on `reply_tx`.
    fn command(
        &self,
        cx: &AdapterContext,
        msg: &irc_proto::Message,
        text: &str,
        reply_tx: &mpsc::UnboundedSender<Reply>,
    ) {
        let Some(nick) = msg.source_nickname() else {
            return;
        };
        let Some(text) = commands::command_text(text) else {
            return;
        };
        if self
            .store
            .puppet_owner(&cx.network, nick)
            .ok()
            .flatten()
            .is_some()
        {
            return;
        }
        let from = commands::identities(&cx.network, msg);
        if from.is_empty() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let command = junction_core::Command {
            from,
            display_name: nick.to_owned(),
            text: text.to_owned(),
            reply: tx,
        };
        let commands = cx.commands.clone();
        let reply_tx = reply_tx.clone();
        let nick = nick.to_owned();
        tokio::spawn(async move {
            let answer = async {
                commands.send(command).await.ok()?;
                rx.await.ok()
            };
            let text = match tokio::time::timeout(COMMAND_TIMEOUT, answer).await {
                Ok(Some(text)) => text,
                Ok(None) => "The gateway does not take commands here.".to_owned(),
                Err(_) => "No answer from the gateway in time.".to_owned(),
            };
            let _ = reply_tx.send((nick, text));
        });
    }
}

/// How long a command may take before its sender is told there was no answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// The server refusing a KICK/MODE the bot sent: not an operator, no such nick...
fn refusal(msg: &irc_proto::Message) -> Option<String> {
    let Command::Response(r, args) = &msg.command else {
        return None;
    };
    let why = args.last().cloned().unwrap_or_default();
    match r {
        Response::ERR_CHANOPRIVSNEEDED => {
            Some(format!("the IRC bot is not a channel operator ({why})"))
        }
        Response::ERR_NOSUCHNICK | Response::ERR_USERNOTINCHANNEL | Response::ERR_NOTONCHANNEL => {
            Some(format!("not possible on IRC: {why}"))
        }
        _ => None,
    }
}

impl Adapter for IrcAdapter {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            edits: false,
            redactions: false,
            reactions: false,
            replies: false,
            uploads: false,
            markup: Markup::IrcCodes,
            max_message_bytes: Some(400),
        }
    }

    async fn run(self, mut cx: AdapterContext) -> Result<(), AdapterError> {
        let mut pending: Option<Pending> = None;
        let mut attempt: u32 = 0;
        let (reply_tx, mut replies) = mpsc::unbounded_channel();
        loop {
            let connected = tokio::select! {
                _ = cx.shutdown.cancelled() => return Ok(()),
                r = session::connect(&self.config.server, self.registration(), Duration::from_secs(60)) => r,
            };
            let why = match connected {
                Ok(s) => {
                    attempt = 0;
                    match self
                        .serve(s, &mut cx, &mut pending, &mut replies, &reply_tx)
                        .await
                    {
                        End::Shutdown => return Ok(()),
                        End::Lost(why) => why,
                    }
                }
                Err(why) => why,
            };
            let delay = session::backoff(attempt);
            attempt = attempt.saturating_add(1);
            cx.status.send_replace(if attempt > 3 {
                NetworkStatus::Down(why.clone())
            } else {
                NetworkStatus::Degraded(format!("reconnecting: {why}"))
            });
            tracing::warn!(network = %cx.network, reason = %why, retry_in_ms = delay.as_millis() as u64, "IRC connection lost");
            tokio::select! {
                _ = cx.shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_store::TestStore;
    use junction_core::format::RichText;
    use junction_core::{
        BridgeName, Event, EventKind, Message, MessageKind, NetworkId, RoomId, RoomRef, Sender,
        UserRef,
    };
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;
    use tokio::sync::{mpsc, watch};
    use tokio_util::sync::CancellationToken;

    fn delivery(outbox_id: u64, text: &str) -> Delivery {
        Delivery {
            outbox_id,
            bridge: BridgeName::new("lobby"),
            target: RoomRef::new("irc:fake", "#t"),
            event: Event::new(
                RoomRef::new("matrix", "#lobby:matrix.test"),
                MessageId::new(format!("$e{outbox_id}")),
                Sender::new(UserRef::new("matrix", "@alice:matrix.test"), "alice"),
                0,
                EventKind::Message(Message {
                    kind: MessageKind::Text,
                    body: RichText::plain(text),
                    reply_to: None,
                    attachments: Vec::new(),
                }),
            ),
            reply_to: Vec::new(),
            target_ids: Vec::new(),
        }
    }

    /// Accepts one connection, registers it like an old server (no CAP), and passes every
    /// line it receives to `lines`; closes the connection when `close` fires.
    async fn serve_one(
        listener: &TcpListener,
        lines: mpsc::UnboundedSender<String>,
        close: tokio::sync::oneshot::Receiver<()>,
    ) {
        let (sock, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r).lines();
            let mut close = close;
            loop {
                tokio::select! {
                    _ = &mut close => return,
                    line = r.next_line() => {
                        let Ok(Some(line)) = line else { return };
                        if let Some(token) = line.strip_prefix("PING ") {
                            let _ = w.write_all(format!(":fake PONG fake {token}\r\n").as_bytes()).await;
                        }
                        if line.starts_with("NICK ") {
                            let _ = w
                                .write_all(b":fake 001 junction :hi\r\n:fake 005 junction NICKLEN=9 :ok\r\n:fake 376 junction :end\r\n")
                                .await;
                        }
                        let _ = lines.send(line);
                    }
                }
            }
        });
    }

    async fn expect_line(rx: &mut mpsc::UnboundedReceiver<String>, want: &str) {
        let deadline = Duration::from_secs(30);
        let found = tokio::time::timeout(deadline, async {
            while let Some(l) = rx.recv().await {
                if l == want {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "line {want:?} never arrived");
    }

    #[tokio::test]
    async fn reconnects_and_sends_what_was_queued_while_down() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut cfg = IrcConfig::new("fake", addr.to_string(), "junction");
        cfg.mode = IrcMode::Relay;
        let adapter = IrcAdapter::new(cfg, Arc::new(TestStore::default()));
        let (in_tx, _in_rx) = mpsc::channel(16);
        let (d_tx, d_rx) = mpsc::channel(16);
        let (ok_tx, mut ok_rx) = mpsc::unbounded_channel();
        let (_rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new("#t")]);
        let shutdown = CancellationToken::new();
        let cx = AdapterContext::standalone(
            NetworkId::new("irc:fake"),
            in_tx,
            d_rx,
            ok_tx,
            rooms_rx,
            shutdown.clone(),
        );
        let task = tokio::spawn(adapter.run(cx));

        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        let (close1, close1_rx) = tokio::sync::oneshot::channel();
        serve_one(&listener, lines_tx.clone(), close1_rx).await;
        expect_line(&mut lines, "JOIN #t").await;
        d_tx.send(delivery(1, "one")).await.expect("send");
        expect_line(&mut lines, "PRIVMSG #t :<alice[m]> one").await;
        let ok = tokio::time::timeout(Duration::from_secs(30), ok_rx.recv())
            .await
            .expect("answered")
            .expect("open");
        assert_eq!(ok.outbox_id, 1);
        assert_eq!(ok.outcome, Ok(vec![MessageId::new("1.0")]));

        // The server drops us; a delivery made meanwhile waits and goes out after reconnect.
        let _ = close1.send(());
        d_tx.send(delivery(2, "two")).await.expect("send");
        let (_close2, close2_rx) = tokio::sync::oneshot::channel();
        serve_one(&listener, lines_tx.clone(), close2_rx).await;
        expect_line(&mut lines, "JOIN #t").await;
        expect_line(&mut lines, "PRIVMSG #t :<alice[m]> two").await;
        let ok = tokio::time::timeout(Duration::from_secs(30), ok_rx.recv())
            .await
            .expect("answered")
            .expect("open");
        assert_eq!(ok.outbox_id, 2);

        shutdown.cancel();
        let res = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("stops");
        assert!(matches!(res, Ok(Ok(()))));
    }

    /// Like `serve_one`, but the fake server also answers: `respond` maps each line it gets to
    /// lines it sends back.
    async fn serve_scripted(
        listener: &TcpListener,
        lines: mpsc::UnboundedSender<String>,
        respond: fn(&str) -> Vec<String>,
    ) {
        let (sock, _) = listener.accept().await.expect("accept");
        tokio::spawn(async move {
            let (r, mut w) = sock.into_split();
            let mut r = BufReader::new(r).lines();
            while let Ok(Some(line)) = r.next_line().await {
                if let Some(token) = line.strip_prefix("PING ") {
                    let _ = w
                        .write_all(format!(":fake PONG fake {token}\r\n").as_bytes())
                        .await;
                }
                if line.starts_with("NICK ") {
                    let _ = w
                        .write_all(b":fake 001 junction :hi\r\n:fake 005 junction NICKLEN=9 :ok\r\n:fake 376 junction :end\r\n")
                        .await;
                }
                for out in respond(&line) {
                    let _ = w.write_all(format!("{out}\r\n").as_bytes()).await;
                }
                let _ = lines.send(line);
            }
        });
    }

    struct Harness {
        deliveries: mpsc::Sender<Delivery>,
        delivered: mpsc::UnboundedReceiver<Delivered>,
        commands: mpsc::Receiver<junction_core::Command>,
        status: watch::Receiver<NetworkStatus>,
        shutdown: CancellationToken,
        _rooms: watch::Sender<Vec<RoomId>>,
        _inbound: mpsc::Receiver<Inbound>,
    }

    fn harness(addr: std::net::SocketAddr, mode: IrcMode) -> Harness {
        let mut cfg = IrcConfig::new("fake", addr.to_string(), "junction");
        cfg.mode = mode;
        let adapter = IrcAdapter::new(cfg, Arc::new(TestStore::default()));
        let (in_tx, in_rx) = mpsc::channel(16);
        let (d_tx, d_rx) = mpsc::channel(16);
        let (ok_tx, ok_rx) = mpsc::unbounded_channel();
        let (rooms_tx, rooms_rx) = watch::channel(vec![RoomId::new("#t")]);
        let (cmd_tx, cmd_rx) = mpsc::channel(4);
        let (status_tx, status_rx) = watch::channel(NetworkStatus::Connecting);
        let shutdown = CancellationToken::new();
        let cx = AdapterContext {
            network: NetworkId::new("irc:fake"),
            inbound: in_tx,
            deliveries: d_rx,
            delivered: ok_tx,
            rooms: rooms_rx,
            shutdown: shutdown.clone(),
            commands: cmd_tx,
            status: status_tx,
        };
        tokio::spawn(adapter.run(cx));
        Harness {
            deliveries: d_tx,
            delivered: ok_rx,
            commands: cmd_rx,
            status: status_rx,
            shutdown,
            _rooms: rooms_tx,
            _inbound: in_rx,
        }
    }

    #[tokio::test]
    async fn a_private_message_to_the_bot_is_a_command_answered_by_notice() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut h = harness(listener.local_addr().expect("addr"), IrcMode::Relay);
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, lines_tx, |line| {
            if line == "JOIN #t" {
                vec!["@account=root :boss!~b@admin.test PRIVMSG junction :status".to_owned()]
            } else {
                Vec::new()
            }
        })
        .await;
        let cmd = tokio::time::timeout(Duration::from_secs(30), h.commands.recv())
            .await
            .expect("in time")
            .expect("a command");
        assert_eq!(cmd.text, "status");
        assert_eq!(
            cmd.from,
            vec![
                UserRef::new("irc:fake", "root"),
                UserRef::new("irc:fake", "boss!~b@admin.test")
            ]
        );
        assert_eq!(*h.status.borrow(), NetworkStatus::Connected);
        cmd.reply.send("all good\nlinks: 1".into()).expect("reply");
        expect_line(&mut lines, "NOTICE boss :all good").await;
        expect_line(&mut lines, "NOTICE boss :links: 1").await;
        h.shutdown.cancel();
    }

    #[tokio::test]
    async fn gateway_kicks_are_carried_out_and_fail_without_op() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let mut h = harness(listener.local_addr().expect("addr"), IrcMode::Puppet);
        let (lines_tx, mut lines) = mpsc::unbounded_channel();
        serve_scripted(&listener, lines_tx, |line| {
            if line.starts_with("KICK #t troll") {
                vec![":fake 482 junction #t :You're not a channel operator".to_owned()]
            } else {
                Vec::new()
            }
        })
        .await;
        expect_line(&mut lines, "JOIN #t").await;
        let mut d = delivery(5, "");
        d.event.sender = Sender::new(UserRef::new(NetworkId::gateway(), "gateway"), "gateway");
        d.event.kind = EventKind::Ban {
            target: Sender::new(UserRef::new("irc:fake", "troll!~t@bad.test"), "troll"),
            reason: Some("spam".into()),
        };
        h.deliveries.send(d).await.expect("send");
        expect_line(&mut lines, "MODE #t +b *!*@bad.test").await;
        expect_line(&mut lines, "KICK #t troll :spam").await;
        let ok = tokio::time::timeout(Duration::from_secs(30), h.delivered.recv())
            .await
            .expect("answered")
            .expect("open");
        assert!(
            matches!(&ok.outcome, Err(why) if why.contains("operator")),
            "{ok:?}"
        );
        // A notice from the gateway is said by the bot itself, without a relay prefix.
        let mut d = delivery(6, "maintenance at noon");
        d.event.sender = Sender::new(UserRef::new(NetworkId::gateway(), "gateway"), "gateway");
        h.deliveries.send(d).await.expect("send");
        expect_line(&mut lines, "PRIVMSG #t :maintenance at noon").await;
        h.shutdown.cancel();
    }
}
