//! One IRC connection: registration with CAP LS 302 (and SASL PLAIN), ISUPPORT, PING.
//!
//! Written over `irc-proto`'s message parser rather than the `irc` crate's client, which drops
//! text after a newline, has no reconnect and sends SASL in the wrong order.

use crate::ids;
use crate::isupport::ISupport;
use crate::tls::Tls;
use base64::Engine as _;
use irc_proto::{CapSubCommand, Command, Message, Response};
use junction_core::Secret;
use std::collections::BTreeSet;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

/// The reading half of a plaintext or TLS connection.
type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The writing half of a plaintext or TLS connection.
type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// Capabilities we ask for when the server offers them.
pub const WANTED_CAPS: &[&str] = &[
    "message-tags",
    "server-time",
    "echo-message",
    "batch",
    "labeled-response",
    "account-tag",
    "draft/chathistory",
    "sasl",
];

/// What registration needs to know.
#[derive(Clone, Debug)]
pub struct Registration {
    /// Nick to ask for first.
    pub nick: String,
    /// Suffix kept when the nick has to change after a collision.
    pub suffix: String,
    /// Server password.
    pub password: Option<Secret>,
    /// SASL PLAIN account and password.
    pub sasl: Option<(String, Secret)>,
    /// Negotiate IRCv3 capabilities (the bot does; puppets, which only speak, do not).
    pub caps: bool,
    /// The real name (gecos) shown in WHOIS.
    pub realname: String,
    /// NICKLEN when already known from another connection (0: unknown, 9 assumed until the
    /// server's ISUPPORT says otherwise).
    pub nicklen: usize,
}

/// The registration state machine, fed one parsed server message at a time; it answers with
/// the lines to send. Kept free of I/O so it can be tested with literal server lines.
#[derive(Debug)]
pub struct Negotiation {
    reg: Registration,
    /// The nick currently asked for.
    pub nick: String,
    offered: BTreeSet<String>,
    /// Capabilities the server acknowledged.
    pub enabled: BTreeSet<String>,
    /// ISUPPORT as read so far.
    pub isupport: ISupport,
    cap_done: bool,
    /// True once 001 arrived.
    pub welcomed: bool,
    /// Set when registration can not succeed.
    pub failed: Option<String>,
}

impl Negotiation {
    /// Starts registration; returns the state and the first lines to send.
    pub fn start(reg: Registration) -> (Self, Vec<String>) {
        let mut lines = Vec::new();
        if reg.caps {
            lines.push("CAP LS 302".to_owned());
        }
        if let Some(pass) = &reg.password {
            lines.push(format!("PASS :{}", pass.expose()));
        }
        lines.push(format!("NICK {}", reg.nick));
        let realname: String = reg
            .realname
            .chars()
            .filter(|c| !c.is_control())
            .take(100)
            .collect();
        let realname = if realname.trim().is_empty() {
            "Junction".to_owned()
        } else {
            realname
        };
        lines.push(format!("USER {} 0 * :{realname}", user_name(&reg.nick)));
        let nick = reg.nick.clone();
        let cap_done = !reg.caps;
        (
            Self {
                reg,
                nick,
                offered: BTreeSet::new(),
                enabled: BTreeSet::new(),
                isupport: ISupport::default(),
                cap_done,
                welcomed: false,
                failed: None,
            },
            lines,
        )
    }

    /// Handles one server message during registration.
    pub fn on_message(&mut self, msg: &Message) -> Vec<String> {
        let mut out = Vec::new();
        match &msg.command {
            Command::CAP(_, CapSubCommand::LS, a, b) => {
                // `CAP * LS * :caps` continues; `CAP * LS :caps` is the last line.
                let (more, caps) = match (a.as_deref(), b.as_deref()) {
                    (Some("*"), Some(caps)) => (true, caps),
                    (Some(caps), _) => (false, caps),
                    (None, _) => (false, ""),
                };
                for cap in caps.split(' ').filter(|c| !c.is_empty()) {
                    let name = cap.split('=').next().unwrap_or(cap);
                    self.offered.insert(name.to_owned());
                }
                if !more {
                    let wanted: Vec<&str> = WANTED_CAPS
                        .iter()
                        .copied()
                        .filter(|c| self.offered.contains(*c))
                        .filter(|c| *c != "sasl" || self.reg.sasl.is_some())
                        .collect();
                    if wanted.is_empty() {
                        self.end_caps(&mut out);
                    } else {
                        out.push(format!("CAP REQ :{}", wanted.join(" ")));
                    }
                }
            }
            Command::CAP(_, CapSubCommand::ACK, a, b) => {
                let caps = b.as_deref().or(a.as_deref()).unwrap_or("");
                for cap in caps.split(' ').filter(|c| !c.is_empty()) {
                    self.enabled.insert(cap.trim_start_matches('-').to_owned());
                }
                if self.enabled.contains("sasl") && self.reg.sasl.is_some() {
                    out.push("AUTHENTICATE PLAIN".to_owned());
                } else {
                    self.end_caps(&mut out);
                }
            }
            Command::CAP(_, CapSubCommand::NAK, _, _) => self.end_caps(&mut out),
            Command::AUTHENTICATE(arg) if arg == "+" => {
                if let Some((account, pass)) = &self.reg.sasl {
                    let payload = format!("{account}\0{account}\0{}", pass.expose());
                    let encoded = base64::engine::general_purpose::STANDARD.encode(payload);
                    out.push(format!("AUTHENTICATE {encoded}"));
                }
            }
            Command::Response(Response::RPL_SASLSUCCESS, _) => self.end_caps(&mut out),
            Command::Response(
                Response::ERR_SASLFAIL | Response::ERR_SASLTOOLONG | Response::ERR_SASLALREADY,
                _,
            ) => {
                self.failed = Some("SASL authentication failed".into());
                self.end_caps(&mut out);
            }
            Command::Response(Response::RPL_WELCOME, args) => {
                if let Some(n) = args.first() {
                    self.nick = n.clone();
                }
                self.welcomed = true;
            }
            Command::Response(Response::RPL_ISUPPORT, args) => {
                self.isupport.apply(args.iter().skip(1).map(String::as_str));
            }
            Command::Response(Response::ERR_NICKNAMEINUSE | Response::ERR_NICKCOLLISION, _)
                if !self.welcomed =>
            {
                self.nick = ids::next_candidate(
                    &self.nick,
                    &self.reg.suffix,
                    self.isupport.nicklen.max(self.reg.nicklen).max(9),
                );
                out.push(format!("NICK {}", self.nick));
            }
            Command::Response(Response::ERR_ERRONEOUSNICKNAME, _) if !self.welcomed => {
                self.failed = Some(format!("server refused nick {}", self.nick));
            }
            Command::PING(a, _) => out.push(format!("PONG :{a}")),
            Command::ERROR(reason) => self.failed = Some(format!("server error: {reason}")),
            _ => {}
        }
        out
    }

    fn end_caps(&mut self, out: &mut Vec<String>) {
        if !self.cap_done {
            self.cap_done = true;
            out.push("CAP END".to_owned());
        }
    }
}

fn user_name(nick: &str) -> String {
    let u: String = nick
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(10)
        .collect();
    if u.is_empty() {
        "junction".into()
    } else {
        u
    }
}

/// A registered connection.
#[derive(Debug)]
pub struct Session {
    /// Lines from the server.
    pub reader: LineReader,
    /// Lines to the server.
    pub writer: LineWriter,
    /// Our nick as the server knows it.
    pub nick: String,
    /// Enabled capabilities.
    pub caps: BTreeSet<String>,
    /// The server's ISUPPORT.
    pub isupport: ISupport,
}

/// Why a connection that must go on ended.
#[derive(Debug)]
pub enum End {
    /// The gateway is shutting down (the server was told with a QUIT).
    Shutdown,
    /// The connection failed: closed by the server, or an I/O error.
    Lost(String),
}

impl Session {
    /// The next message from the server; or [`End::Shutdown`] once `shutdown` is cancelled
    /// (which wins over a message that is ready too), or [`End::Lost`] when the connection
    /// fails. Cancel-safe, as [`LineReader::message`]; the caller ends with [`Self::closing`].
    pub async fn next_message(&mut self, shutdown: &CancellationToken) -> Result<Message, End> {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => Err(End::Shutdown),
            msg = self.reader.message() => msg.map_err(End::Lost),
        }
    }

    /// Ends the connection's loop with `end`: on a shutdown the server is told with a QUIT
    /// (whether it could be sent changes nothing).
    pub async fn closing(&mut self, end: End) -> End {
        if matches!(end, End::Shutdown) {
            let _ = self.writer.send("QUIT :gateway shutting down").await;
        }
        end
    }
}

/// Bytes one read takes from a connection, into the reading thread's scratch buffer.
const READ_CHUNK: usize = 4096;
/// Longest line kept while waiting for its end (IRCv3 tags up to 8191 bytes + 512).
const MAX_LINE: usize = 16 * 1024;

thread_local! {
    /// Where every connection read on this thread lands first. A connection keeps only the
    /// bytes of a line it has not seen the end of, so an idle one (most puppets, most of the
    /// time) holds no buffer at all: with thousands of puppet connections a read buffer of
    /// their own was the largest part of their memory.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; READ_CHUNK]);
}

/// Reads server lines, decoding invalid UTF-8 lossily. `next` is cancel-safe.
///
/// Hand-written over `AsyncRead` rather than a `BufReader`: a `BufReader` owns its buffer for
/// the connection's whole life, and this one only holds what is not yet a whole line.
pub struct LineReader {
    inner: ReadHalf,
    // Bytes read; those from `start` on are not yet taken as lines. Kept across calls so a
    // cancelled read (in a `select!`) loses no bytes. Freed whenever it empties.
    buf: Vec<u8>,
    // Where the next line begins: lines are taken by moving it, not by shifting the bytes
    // after them, which are moved down once, before the next read.
    start: usize,
    // How much of `buf` is known to hold no line end.
    scanned: usize,
    // In the middle of an overlong line: its bytes are dropped up to its end.
    skipping: bool,
    // Lines this connection's owner never reads, dropped before they are parsed.
    ignore: Option<fn(&str) -> bool>,
}

impl std::fmt::Debug for LineReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineReader")
            .field("buffered", &self.buf.len())
            .field("skipping", &self.skipping)
            .finish()
    }
}

impl LineReader {
    fn new(inner: ReadHalf) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            skipping: false,
            ignore: None,
        }
    }

    /// From now on, lines for which `ignore` is true are dropped unparsed.
    pub fn ignore(&mut self, ignore: fn(&str) -> bool) {
        self.ignore = Some(ignore);
    }

    /// The next parsed message; `Ok(None)` at end of stream. Unparseable lines are logged
    /// and skipped.
    pub async fn next(&mut self) -> std::io::Result<Option<Message>> {
        loop {
            if let Some(pos) = self.buf[self.scanned..].iter().position(|&b| b == b'\n') {
                let end = self.scanned + pos;
                self.scanned = end + 1;
                if std::mem::take(&mut self.skipping) {
                    self.consume_to(end + 1);
                    continue;
                }
                if end + 1 - self.start > MAX_LINE {
                    tracing::warn!(bytes = end + 1 - self.start, "overlong IRC line dropped");
                    self.consume_to(end + 1);
                    continue;
                }
                let parsed = {
                    let line = String::from_utf8_lossy(&self.buf[self.start..end]);
                    let line = line.trim_end_matches(['\r', '\n']);
                    let ignored = self.ignore.is_some_and(|ignore| ignore(line));
                    (!line.is_empty() && !ignored).then(|| line.parse::<Message>())
                };
                self.consume_to(end + 1);
                match parsed {
                    None => {}
                    Some(Ok(m)) => return Ok(Some(m)),
                    Some(Err(e)) => tracing::warn!(error = %e, "unparseable IRC line skipped"),
                }
                continue;
            }
            // No line end in what is left: move it down, then read more.
            self.buf.drain(..self.start);
            self.start = 0;
            if self.skipping {
                self.buf.clear();
            } else if self.buf.len() > MAX_LINE {
                // No IRC line is this long (tags 8 kB + 512): a broken or hostile server;
                // drop it to its end so memory stays bounded.
                tracing::warn!(bytes = self.buf.len(), "overlong IRC line dropped");
                self.buf.clear();
                self.skipping = true;
            }
            self.scanned = self.buf.len();
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads once into the thread's scratch buffer and appends what came to `buf`, in the
    /// same poll, so a cancelled call has read nothing. Returns the number of bytes (0: end
    /// of stream).
    async fn fill(&mut self) -> std::io::Result<usize> {
        let (inner, buf) = (&mut self.inner, &mut self.buf);
        std::future::poll_fn(|cx| {
            SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut rb = tokio::io::ReadBuf::new(&mut scratch[..]);
                match std::pin::Pin::new(&mut *inner).poll_read(cx, &mut rb) {
                    std::task::Poll::Ready(Ok(())) => {
                        buf.extend_from_slice(rb.filled());
                        std::task::Poll::Ready(Ok(rb.filled().len()))
                    }
                    std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
                    std::task::Poll::Pending => std::task::Poll::Pending,
                }
            })
        })
        .await
    }

    /// Takes the bytes of `buf` before `end` as read; frees it once nothing is left.
    fn consume_to(&mut self, end: usize) {
        if end >= self.buf.len() {
            self.buf = Vec::new();
            self.start = 0;
            self.scanned = 0;
        } else {
            self.start = end;
        }
    }

    /// [`LineReader::next`] for a connection that must go on: the next message, or why the
    /// connection is lost (closed by the server, or an I/O error). Cancel-safe, as `next`.
    pub async fn message(&mut self) -> Result<Message, String> {
        match self.next().await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err("server closed the connection".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Writes lines, making sure none carries CR, LF or NUL.
pub struct LineWriter(WriteHalf);

impl std::fmt::Debug for LineWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LineWriter")
    }
}

impl LineWriter {
    /// Sends one line (CRLF added). CR/LF/NUL inside are replaced by spaces.
    pub async fn send(&mut self, line: &str) -> std::io::Result<()> {
        let mut clean: String = line
            .chars()
            .map(|c| {
                if matches!(c, '\r' | '\n' | '\0') {
                    ' '
                } else {
                    c
                }
            })
            .collect();
        clean.push_str("\r\n");
        self.0.write_all(clean.as_bytes()).await?;
        // A TLS stream holds written bytes until flushed; a plain one sends them at once.
        self.0.flush().await
    }
}

/// Connects to `server` (`host:port`), with TLS when `tls` is given, and registers; fails
/// after `timeout`.
pub async fn connect(
    server: &str,
    tls: Option<&Tls>,
    reg: Registration,
    timeout: Duration,
) -> Result<Session, String> {
    tokio::time::timeout(timeout, connect_inner(server, tls, reg))
        .await
        .map_err(|_| "registration timed out".to_owned())?
}

async fn connect_inner(
    server: &str,
    tls: Option<&Tls>,
    reg: Registration,
) -> Result<Session, String> {
    let stream = TcpStream::connect(server)
        .await
        .map_err(|e| format!("connect {server}: {e}"))?;
    // Lines are small and each delivery ends with a PING whose answer proves it arrived:
    // with Nagle's algorithm that PING waits for the server's delayed ACK (~40 ms a message).
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "Could not turn off Nagle's algorithm.");
    }
    let (r, w): (ReadHalf, WriteHalf) = match tls {
        Some(tls) => {
            let (r, w) = tokio::io::split(tls.wrap(server, stream).await?);
            (Box::new(r), Box::new(w))
        }
        None => {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        }
    };
    let mut reader = LineReader::new(r);
    let mut writer = LineWriter(w);
    let (mut neg, first) = Negotiation::start(reg);
    for line in first {
        writer.send(&line).await.map_err(|e| e.to_string())?;
    }
    // Read until the MOTD ends (so ISUPPORT is complete) or the server says there is none.
    loop {
        let Some(msg) = reader.next().await.map_err(|e| e.to_string())? else {
            return Err("server closed the connection during registration".into());
        };
        tracing::trace!(nick = %neg.nick, msg = %msg.to_string().trim_end(), "registration");
        for line in neg.on_message(&msg) {
            writer.send(&line).await.map_err(|e| e.to_string())?;
        }
        if let Some(why) = neg.failed.take() {
            return Err(why);
        }
        if neg.welcomed
            && matches!(
                msg.command,
                Command::Response(Response::RPL_ENDOFMOTD | Response::ERR_NOMOTD, _)
            )
        {
            break;
        }
    }
    Ok(Session {
        reader,
        writer,
        nick: neg.nick,
        caps: neg.enabled,
        isupport: neg.isupport,
    })
}

/// Delay before reconnect attempt `attempt` (0-based): exponential from 1 s to 5 min, with
/// ±25 % jitter so many connections do not come back at once.
pub fn backoff(attempt: u32) -> Duration {
    junction_core::clock::backoff(attempt, Duration::from_secs(1), Duration::from_secs(300))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines split across reads arrive whole; an endless line is dropped to its end and the
    /// next line still arrives; memory stays bounded.
    #[tokio::test]
    #[allow(clippy::unwrap_used)]
    async fn lines_are_read_whole_and_overlong_ones_dropped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"PING :fir").await.unwrap();
            s.flush().await.unwrap();
            tokio::task::yield_now().await;
            s.write_all(b"st\r\n").await.unwrap();
            let junk = vec![b'x'; 100_000];
            s.write_all(b"PRIVMSG #c :").await.unwrap();
            s.write_all(&junk).await.unwrap();
            s.write_all(b"\r\nPING :second\r\n").await.unwrap();
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let (r, _w) = stream.into_split();
        let mut reader = LineReader::new(Box::new(r));
        let first = reader.next().await.unwrap().unwrap();
        assert_eq!(
            first.command,
            irc_proto::Command::PING("first".into(), None)
        );
        let second = reader.next().await.unwrap().unwrap();
        assert_eq!(
            second.command,
            irc_proto::Command::PING("second".into(), None)
        );
        // Nothing is held between lines.
        assert_eq!(reader.buf.capacity(), 0);
        server.await.unwrap();
    }

    fn reg(sasl: bool) -> Registration {
        Registration {
            nick: "junction".into(),
            suffix: String::new(),
            password: None,
            sasl: sasl.then(|| ("bot".to_owned(), Secret::new("pw"))),
            caps: true,
            realname: String::new(),
            nicklen: 0,
        }
    }

    fn feed(n: &mut Negotiation, line: &str) -> Vec<String> {
        let msg: Message = line.parse().expect("test line parses");
        n.on_message(&msg)
    }

    #[test]
    fn cap_302_multiline_then_req_and_end() {
        let (mut n, first) = Negotiation::start(reg(false));
        assert_eq!(first[0], "CAP LS 302");
        assert!(feed(&mut n, ":irc.test CAP * LS * :message-tags server-time").is_empty());
        let out = feed(
            &mut n,
            ":irc.test CAP * LS :echo-message sasl=PLAIN cap-notify",
        );
        assert_eq!(out, vec!["CAP REQ :message-tags server-time echo-message"]);
        let out = feed(
            &mut n,
            ":irc.test CAP * ACK :message-tags server-time echo-message",
        );
        assert_eq!(out, vec!["CAP END"]);
        assert!(n.enabled.contains("echo-message"));
        feed(&mut n, ":irc.test 001 junction :Welcome");
        assert!(n.welcomed);
    }

    #[test]
    fn sasl_plain_comes_before_cap_end() {
        let (mut n, _) = Negotiation::start(reg(true));
        let out = feed(&mut n, ":irc.test CAP * LS :sasl=PLAIN");
        assert_eq!(out, vec!["CAP REQ :sasl"]);
        assert_eq!(
            feed(&mut n, ":irc.test CAP * ACK :sasl"),
            vec!["AUTHENTICATE PLAIN"]
        );
        let out = feed(&mut n, "AUTHENTICATE +");
        assert_eq!(out, vec!["AUTHENTICATE Ym90AGJvdABwdw=="]);
        assert_eq!(
            feed(&mut n, ":irc.test 903 junction :SASL ok"),
            vec!["CAP END"]
        );
    }

    #[test]
    fn old_server_without_cap_and_nick_collision() {
        let (mut n, _) = Negotiation::start(reg(false));
        feed(
            &mut n,
            ":irc.test 005 * NICKLEN=9 CHANTYPES=# :are supported",
        );
        let out = feed(&mut n, ":irc.test 433 * junction :Nickname in use");
        assert_eq!(out, vec!["NICK junction_"]);
        feed(&mut n, ":irc.test 001 junction_ :Welcome");
        feed(&mut n, ":irc.test 005 junction_ NICKLEN=9 :are supported");
        assert_eq!(n.nick, "junction_");
        assert_eq!(n.isupport.nicklen, 9);
        assert_eq!(feed(&mut n, "PING :abc"), vec!["PONG :abc"]);
    }

    #[test]
    fn backoff_grows_and_is_bounded() {
        assert!(backoff(0) <= Duration::from_millis(1250));
        assert!(backoff(3) >= Duration::from_millis(6000));
        assert!(backoff(40) <= Duration::from_secs(375));
    }
}
