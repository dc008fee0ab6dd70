//! Smoke tests: each real server is up and answers a fresh client, and a test slot's
//! identity (its XMPP component secret) is accepted. If these fail, every other
//! end-to-end test would fail for the same reason; these say which server it is.

#![allow(clippy::unwrap_used)]

use junction_testkit::servers::{probe, servers, slot};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// A minimal HTTP/1.1 exchange (`Connection: close`, body read to EOF): the test crate
/// has no HTTP client, and one request line is all a smoke test needs.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let work = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    };
    let raw = tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .expect("HTTP answer within 30 s");
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn synapse_addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_answers_health_and_versions() {
    let s = servers().await.unwrap();
    let addr = synapse_addr(&s.matrix.url);
    let (code, body) = http(addr, "GET", "/health", "").await;
    assert_eq!(code, 200);
    assert!(body.contains("OK"), "{body}");
    let (code, body) = http(addr, "GET", "/_matrix/client/versions", "").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"versions\""), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_matrix_user_logs_in() {
    let s = servers().await.unwrap();
    // Registering again is a no-op: the call is idempotent.
    s.register_matrix_user("alice", "alicepw", false)
        .await
        .unwrap();
    let login = r#"{"type":"m.login.password","identifier":{"type":"m.id.user","user":"alice"},"password":"alicepw"}"#;
    let (code, body) = http(
        synapse_addr(&s.matrix.url),
        "POST",
        "/_matrix/client/v3/login",
        login,
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert!(
        body.contains("\"user_id\":\"@alice:matrix.test\""),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prosody_c2s_sends_a_stream_header() {
    let s = servers().await.unwrap();
    let header = probe::xmpp_stream_header(s.xmpp.c2s, &s.xmpp.domain)
        .await
        .unwrap();
    assert!(header.contains("from='xmpp.test'") || header.contains("from=\"xmpp.test\""));
    assert!(header.contains(" id="), "{header}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_component_handshake_succeeds_and_a_wrong_secret_does_not() {
    let s = servers().await.unwrap();
    let slot = slot().await.unwrap();
    probe::component_handshake(s.xmpp.component, &slot.component, &slot.component_secret)
        .await
        .unwrap();
    let wrong =
        probe::component_handshake(s.xmpp.component, &slot.component, "not-the-secret").await;
    assert!(wrong.is_err());
}

/// Fresh nicks for InspIRCd and ngIRCd, nine characters at most: ngIRCd keeps the old nick
/// length.
fn nicks() -> (String, String) {
    let tag = junction_testkit::unique("")
        .chars()
        .rev()
        .take(7)
        .collect::<String>();
    (format!("i{tag}"), format!("n{tag}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ircds_welcome_a_fresh_client() {
    let s = servers().await.unwrap();
    // InspIRCd registers on its once-a-second pass, so both connect in parallel.
    let (nick_i, nick_n) = nicks();
    let (insp, ngircd) = tokio::join!(
        probe::irc_welcome(s.inspircd, &nick_i),
        probe::irc_welcome(s.ngircd, &nick_n),
    );
    let (insp, ngircd) = (insp.unwrap(), ngircd.unwrap());
    assert!(insp.contains(" 001 "), "{insp}");
    assert!(ngircd.contains(" 001 "), "{ngircd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspircd_allows_long_nicks_and_ngircd_keeps_nine() {
    let s = servers().await.unwrap();
    let (nick_i, nick_n) = nicks();
    let (insp, ngircd) = tokio::join!(
        probe::irc_isupport(s.inspircd, &nick_i),
        probe::irc_isupport(s.ngircd, &nick_n),
    );
    let (insp, ngircd) = (insp.unwrap(), ngircd.unwrap());
    assert!(insp.iter().any(|t| t == "NICKLEN=30"), "{insp:?}");
    assert!(ngircd.iter().any(|t| t == "NICKLEN=9"), "{ngircd:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_servers_dir_refuses_ports_it_does_not_own() {
    servers().await.unwrap();
    let other = tempfile::tempdir().unwrap();
    let h = junction_testkit::servers::Harness::at(other.path()).unwrap();
    let err = h.start().await.unwrap_err();
    assert!(format!("{err:#}").contains("already in use"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeded_xmpp_user_joins_a_muc_that_keeps_an_archive() {
    let s = servers().await.unwrap();
    let room = format!("{}@{}", junction_testkit::unique("smoke"), s.xmpp.muc);
    let features = probe::xmpp_muc_features(s.xmpp.c2s, &s.xmpp.domain, "alice", "alicepw", &room)
        .await
        .unwrap();
    // MAM on the MUC is what backfill after a gateway restart reads.
    assert!(
        features.iter().any(|f| f == "urn:xmpp:mam:2"),
        "{features:?}"
    );
    assert!(features
        .iter()
        .any(|f| f == "http://jabber.org/protocol/muc"));
}
