//! Small protocol probes: enough of each wire protocol to see a server answer.
//!
//! These are written by hand on purpose: a probe must show what the server itself sends,
//! with no client library in between, and needs only a few lines of each protocol. The
//! gateway's real clients live in the adapter crates.

use anyhow::Context as _;
use sha1::{Digest as _, Sha1};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// How long a probe waits for the server's answer.
const PROBE_DEADLINE: Duration = Duration::from_secs(15);

/// The XEP-0114 handshake value: lower-case hex SHA-1 of stream id followed by secret.
pub fn handshake_digest(stream_id: &str, secret: &str) -> String {
    let mut h = Sha1::new();
    h.update(stream_id.as_bytes());
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Reads from `stream` into `buf` until `done(buf)` holds, the peer closes, or the
/// deadline passes.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut String,
    what: &str,
    done: impl Fn(&str) -> bool,
) -> anyhow::Result<()> {
    let work = async {
        let mut chunk = [0u8; 4096];
        while !done(buf) {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                anyhow::bail!("connection closed before {what}; got {buf:?}");
            }
            buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
        }
        Ok(())
    };
    tokio::time::timeout(PROBE_DEADLINE, work)
        .await
        .with_context(|| format!("no {what} within {PROBE_DEADLINE:?}; got {buf:?}"))?
}

/// The value of attribute `name` in the first tag of `xml` that carries it.
fn attr<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    for quote in ['\'', '"'] {
        let key = format!(" {name}={quote}");
        if let Some(at) = xml.find(&key) {
            let rest = &xml[at + key.len()..];
            return rest.find(quote).map(|end| &rest[..end]);
        }
    }
    None
}

/// Whether `buf` holds a complete `<stream:stream ...>` opening tag.
fn has_stream_header(buf: &str) -> bool {
    buf.find("<stream:stream")
        .is_some_and(|at| buf[at..].contains('>'))
}

/// Opens a client (c2s) stream to `domain` and returns the server's stream header.
pub async fn xmpp_stream_header(addr: SocketAddr, domain: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let open = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    );
    s.write_all(open.as_bytes()).await?;
    let mut buf = String::new();
    read_until(&mut s, &mut buf, "a stream header", has_stream_header).await?;
    let at = buf.find("<stream:stream").unwrap_or(0);
    let end = buf[at..].find('>').map_or(buf.len(), |e| at + e + 1);
    let _ = s.write_all(b"</stream:stream>").await;
    Ok(buf[at..end].to_owned())
}

/// Connects to Prosody's component port as `domain` and completes the XEP-0114 handshake
/// with `secret`, then closes the stream. Fails on a stream error (bad secret, domain not
/// configured, or the component already connected elsewhere).
pub async fn component_handshake(
    addr: SocketAddr,
    domain: &str,
    secret: &str,
) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let open = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}'>"
    );
    s.write_all(open.as_bytes()).await?;
    let mut buf = String::new();
    read_until(&mut s, &mut buf, "a stream header", has_stream_header).await?;
    let header_at = buf.find("<stream:stream").unwrap_or(0);
    let id = attr(&buf[header_at..], "id")
        .with_context(|| format!("stream header without id: {buf:?}"))?
        .to_owned();
    let reply = format!("<handshake>{}</handshake>", handshake_digest(&id, secret));
    s.write_all(reply.as_bytes()).await?;
    let mut answer = String::new();
    read_until(&mut s, &mut answer, "a handshake answer", |b| {
        b.contains("<handshake/>") || b.contains("</handshake>") || b.contains("stream:error")
    })
    .await?;
    let _ = s.write_all(b"</stream:stream>").await;
    anyhow::ensure!(
        !answer.contains("stream:error"),
        "component handshake for {domain} refused: {answer}"
    );
    Ok(())
}

/// A raw XML stream with a receive buffer: enough to walk a c2s login step by step.
struct RawXml {
    s: TcpStream,
    buf: String,
}

impl RawXml {
    async fn send(&mut self, xml: &str) -> anyhow::Result<()> {
        Ok(self.s.write_all(xml.as_bytes()).await?)
    }

    /// Reads until the buffer holds `end`, then returns everything up to and including
    /// it and keeps the rest.
    async fn until(&mut self, end: &str, what: &str) -> anyhow::Result<String> {
        read_until(&mut self.s, &mut self.buf, what, |b| b.contains(end)).await?;
        let at = self.buf.find(end).map_or(self.buf.len(), |i| i + end.len());
        let rest = self.buf.split_off(at);
        Ok(std::mem::replace(&mut self.buf, rest))
    }
}

/// Logs in to the c2s port as `user@domain` (SASL PLAIN on the plaintext stream), joins
/// the MUC room `room` (a bare room JID) and returns the room's disco#info feature vars.
pub async fn xmpp_muc_features(
    addr: SocketAddr,
    domain: &str,
    user: &str,
    password: &str,
    room: &str,
) -> anyhow::Result<Vec<String>> {
    use base64::Engine as _;
    let s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let mut x = RawXml {
        s,
        buf: String::new(),
    };
    let open = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
         xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
    );
    x.send(&open).await?;
    x.until("</stream:features>", "stream features").await?;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    x.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{plain}</auth>"
    ))
    .await?;
    read_until(&mut x.s, &mut x.buf, "a SASL answer", |b| {
        b.contains("<success") || b.contains("<failure")
    })
    .await?;
    anyhow::ensure!(
        x.buf.contains("<success"),
        "SASL PLAIN for {user} failed: {}",
        x.buf
    );
    x.buf.clear();
    x.send(&open).await?;
    x.until("</stream:features>", "stream features after auth")
        .await?;
    x.send(
        "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>probe</resource></bind></iq>",
    )
    .await?;
    x.until("</iq>", "the bind result").await?;
    x.send(&format!(
        "<presence to='{room}/{user}'><x xmlns='http://jabber.org/protocol/muc'>\
         <history maxstanzas='0'/></x></presence>"
    ))
    .await?;
    // The self-presence carries status 110 and comes after the other occupants'.
    x.until("code='110'", "the room's self-presence").await?;
    x.send(&format!(
        "<iq type='get' id='disco1' to='{room}'>\
         <query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ))
    .await?;
    let mut answer = x.until("id='disco1'", "the disco#info answer").await?;
    answer.push_str(&x.until("</iq>", "the disco#info answer").await?);
    let _ = x.send("</stream:stream>").await;
    let mut features = Vec::new();
    let mut rest = answer.as_str();
    while let Some(at) = rest.find("<feature ") {
        rest = &rest[at..];
        if let Some(v) = attr(rest, "var") {
            features.push(v.to_owned());
        }
        rest = &rest[1..];
    }
    Ok(features)
}

/// Registers a fresh client on an IRC server with `nick` and returns the `001` line.
/// Answers `PING` on the way; InspIRCd only completes registration on its once-a-second
/// pass, so this can take about a second there.
pub async fn irc_welcome(addr: SocketAddr, nick: &str) -> anyhow::Result<String> {
    let lines = irc_register(addr, nick, "001").await?;
    lines
        .into_iter()
        .find(|l| irc_command(l) == Some("001"))
        .context("no 001 line")
}

/// Registers a fresh client and returns its `ISUPPORT` (`005`) tokens, e.g. `NICKLEN=9`,
/// read up to the end of the MOTD.
pub async fn irc_isupport(addr: SocketAddr, nick: &str) -> anyhow::Result<Vec<String>> {
    let lines = irc_register(addr, nick, "376").await?;
    let mut tokens = Vec::new();
    for line in lines.iter().filter(|l| irc_command(l) == Some("005")) {
        // `:server 005 nick TOKEN TOKEN ... :are supported by this server`
        let params = line.split(" :").next().unwrap_or_default();
        tokens.extend(params.split(' ').skip(3).map(str::to_owned));
    }
    Ok(tokens)
}

/// The command (or numeric) of a server line with a prefix.
fn irc_command(line: &str) -> Option<&str> {
    line.split(' ').nth(1)
}

/// Registers with `nick` and collects lines until one whose command is `stop` (an
/// `ERR_NOMOTD` also ends a wait for the MOTD's end), answering `PING`s, then quits.
async fn irc_register(addr: SocketAddr, nick: &str, stop: &str) -> anyhow::Result<Vec<String>> {
    let mut s = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    s.write_all(format!("NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n").as_bytes())
        .await?;
    let work = async {
        let mut lines = Vec::new();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await?;
            anyhow::ensure!(n != 0, "connection closed before {stop}; got {lines:?}");
            buf.extend_from_slice(&chunk[..n]);
            while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
                let raw: Vec<u8> = buf.drain(..=nl).collect();
                let line = String::from_utf8_lossy(&raw).trim_end().to_owned();
                if let Some(token) = line.strip_prefix("PING ") {
                    s.write_all(format!("PONG {token}\r\n").as_bytes()).await?;
                    continue;
                }
                let cmd = irc_command(&line).map(str::to_owned);
                lines.push(line);
                if cmd.as_deref() == Some(stop) || (stop == "376" && cmd.as_deref() == Some("422"))
                {
                    let _ = s.write_all(b"QUIT :probe\r\n").await;
                    return Ok(lines);
                }
            }
        }
    };
    tokio::time::timeout(PROBE_DEADLINE, work)
        .await
        .with_context(|| format!("no {stop} from {addr} within {PROBE_DEADLINE:?}"))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_lower_hex_sha1_of_id_then_secret() {
        // sha1("abc") is the FIPS 180 test vector.
        assert_eq!(
            handshake_digest("a", "bc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn attr_reads_either_quote() {
        let h = "<stream:stream xmlns='jabber:component:accept' id='i7x' from=\"c\">";
        assert_eq!(attr(h, "id"), Some("i7x"));
        assert_eq!(attr(h, "from"), Some("c"));
        assert_eq!(attr(h, "to"), None);
        assert!(has_stream_header(h));
        assert!(!has_stream_header("<?xml?><stream:stream id='x'"));
    }
}
