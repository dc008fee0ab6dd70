//! TLS to an IRC server: a private InspIRCd with a TLS port (certificate issued by a CA made
//! for the test with the `openssl` command) and a plaintext port. The adapter, trusting that
//! CA through `tls_ca`, connects its bot and a puppet over TLS; an IRC user on the plaintext
//! port reads the puppet's line. Without the CA the handshake is refused.

use anyhow::Context as _;
use junction_core::{MessageKind, NetworkId, RoomId, RoomRef};
use junction_irc::connection::{self, Registration};
use junction_irc::tls::Tls;
use junction_irc::{IrcAdapter, IrcConfig, IrcMode};
use junction_testkit::clients::IrcUser;
use junction_testkit::{delivery, eventually, free_port, person, said, solo, unique};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use super::faults::{run_inspircd, tail};
use super::irc::short;

const WAIT: Duration = Duration::from_secs(60);

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .context("running openssl")?;
    anyhow::ensure!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A test CA (`ca.pem`) and a server certificate it issued for localhost and 127.0.0.1
/// (`cert.pem`, `key.pem`).
fn make_certs(d: &Path) -> anyhow::Result<()> {
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=Junction test CA",
        ],
    )?;
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "cert.csr",
            "-subj",
            "/CN=localhost",
        ],
    )?;
    std::fs::write(
        d.join("cert.ext"),
        "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )?;
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "cert.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "2",
            "-extfile",
            "cert.ext",
        ],
    )
}

/// A private InspIRCd with a TLS port and a plaintext port; killed when dropped.
struct TlsInspircd {
    dir: tempfile::TempDir,
    tls_port: u16,
    plain_port: u16,
    _child: tokio::process::Child,
}

impl TlsInspircd {
    async fn start() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let d = dir.path();
        make_certs(d)?;
        let (tls_port, plain_port) = (free_port()?, free_port()?);
        std::fs::write(d.join("motd.txt"), "TLS test server.\n")?;
        let p = |f: &str| d.join(f).display().to_string();
        let mut conf = String::new();
        conf.push_str(
            "<server name=\"irc.tls.test\" description=\"TLS test server\" network=\"TlsTest\">\n",
        );
        conf.push_str(
            "<admin name=\"Junction tests\" nick=\"junction\" email=\"junction@irc.tls.test\">\n",
        );
        conf.push_str("<module name=\"ssl_gnutls\">\n");
        conf.push_str(&format!(
            "<sslprofile name=\"tls\" provider=\"gnutls\" certfile=\"{}\" keyfile=\"{}\" \
             cafile=\"\" crlfile=\"\" dhfile=\"\" requestclientcert=\"no\" hash=\"sha256\">\n",
            p("cert.pem"),
            p("key.pem")
        ));
        conf.push_str(&format!(
            "<bind address=\"127.0.0.1\" port=\"{tls_port}\" type=\"clients\" sslprofile=\"tls\">\n"
        ));
        conf.push_str(&format!(
            "<bind address=\"127.0.0.1\" port=\"{plain_port}\" type=\"clients\">\n"
        ));
        conf.push_str(
            "<connect name=\"local\" allow=\"127.0.0.1\" threshold=\"1000000\" \
             commandrate=\"100000000\" fakelag=\"off\" localmax=\"1000\" globalmax=\"1000\" \
             resolvehostnames=\"no\" useident=\"no\" limit=\"1000\">\n",
        );
        conf.push_str("<dns server=\"127.0.0.1\" timeout=\"1\">\n");
        conf.push_str(&format!("<pid file=\"{}\">\n", p("inspircd.pid")));
        conf.push_str(&format!("<files motd=\"{}\">\n", p("motd.txt")));
        for m in [
            "cap",
            "ircv3",
            "ircv3_echomessage",
            "ircv3_servertime",
            "botmode",
        ] {
            conf.push_str(&format!("<module name=\"{m}\">\n"));
        }
        std::fs::write(d.join("inspircd.conf"), conf)?;
        let addrs = [tls_port, plain_port].map(|p| SocketAddr::from(([127, 0, 0, 1], p)));
        let child = run_inspircd(d, &addrs).await?;
        Ok(TlsInspircd {
            dir,
            tls_port,
            plain_port,
            _child: child,
        })
    }

    fn tls_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.tls_port))
    }

    fn plain_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.plain_port))
    }

    fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }
}

fn registration(nick: &str) -> Registration {
    Registration {
        nick: nick.to_owned(),
        suffix: String::new(),
        password: None,
        sasl: None,
        caps: true,
        realname: "TLS test".into(),
        nicklen: 0,
    }
}

/// The bot and a puppet connect over TLS to a server whose certificate a private CA issued,
/// trusted through `tls_ca`; the puppet's line reaches a plaintext user of the same server.
/// Without that CA the connection is refused at the handshake.
#[tokio::test]
async fn irc_over_tls_with_a_private_ca() -> anyhow::Result<()> {
    let ircd = TlsInspircd::start().await?;

    // The webpki roots alone do not trust the test CA.
    let refused = connection::connect(
        &ircd.tls_addr().to_string(),
        Some(&Tls::new(None).map_err(anyhow::Error::msg)?),
        registration(&short("n", 7)),
        WAIT,
    )
    .await;
    let err = refused
        .err()
        .context("an untrusted certificate was accepted")?;
    assert!(err.contains("TLS handshake"), "{err}");

    // With the CA, a session registers.
    let s = connection::connect(
        &ircd.tls_addr().to_string(),
        Some(&Tls::new(Some(&ircd.ca())).map_err(anyhow::Error::msg)?),
        registration(&short("t", 7)),
        WAIT,
    )
    .await
    .map_err(anyhow::Error::msg)
    .with_context(|| tail(&ircd.dir.path().join("inspircd.log"), 20))?;
    drop(s);

    let channel = format!("#{}", unique("tls"));
    let watcher = IrcUser::connect(ircd.plain_addr(), &short("w", 7))
        .await
        .context("watcher connects")?;
    watcher.join(&channel).await.context("watcher joins")?;

    let nick = short("jb", 7);
    let mut cfg = IrcConfig::new("tls", ircd.tls_addr().to_string(), nick);
    cfg.mode = IrcMode::Puppet;
    cfg.tls = true;
    cfg.tls_ca = Some(ircd.ca());
    let mut gw = solo(
        IrcAdapter::new(cfg),
        NetworkId::new("irc:tls"),
        vec![RoomId::new(&channel)],
    );
    let _seen = gw.inbox();

    let alice = short("al", 5);
    let hello = "hello over TLS";
    gw.deliveries
        .send(delivery(
            1,
            RoomRef::new("irc:tls", channel.as_str()),
            &person("matrix", &alice),
            said(MessageKind::Text, hello),
        ))
        .await?;
    let want = format!("{alice}[m]");
    let ch = channel.clone();
    eventually(WAIT, "the puppet's line on the plaintext port", || {
        let got = watcher
            .privmsgs_in(&ch)
            .iter()
            .any(|(from, text)| *from == want && *text == hello);
        async move { got.then_some(()) }
    })
    .await
    .with_context(|| format!("seen: {:?}", watcher.privmsgs_in(&channel)))?;
    let answer = gw
        .next_delivered(WAIT)
        .await
        .context("the delivery confirmed")?;
    assert_eq!(answer.outbox_id, 1);

    tokio::time::timeout(WAIT, gw.stop()).await??;
    Ok(())
}
