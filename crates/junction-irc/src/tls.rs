//! TLS to IRC servers: rustls (ring provider) with the webpki roots, plus an optional CA file
//! for servers whose certificate a private or self-signed CA issued.

use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::{client::TlsStream, TlsConnector};

/// A TLS client setup, built once per network and shared by the bot and its puppets.
#[derive(Clone)]
pub struct Tls(TlsConnector);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// Trusts the webpki (Mozilla) roots and, when `ca` is given, every certificate in that
    /// PEM file too.
    pub fn new(ca: Option<&Path>) -> Result<Self, String> {
        let mut roots = RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = ca {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| format!("TLS CA file {}: {e}", ca.display()))?;
            let mut added = 0usize;
            for cert in certs {
                let cert = cert.map_err(|e| format!("TLS CA file {}: {e}", ca.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("TLS CA file {}: {e}", ca.display()))?;
                added += 1;
            }
            if added == 0 {
                return Err(format!(
                    "TLS CA file {}: no PEM certificate in it",
                    ca.display()
                ));
            }
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self(TlsConnector::from(Arc::new(config))))
    }

    /// Runs the TLS handshake over `stream`, checking the certificate against the host part
    /// of `server` (`host:port`, `[v6]:port`).
    pub async fn wrap(
        &self,
        server: &str,
        stream: TcpStream,
    ) -> Result<TlsStream<TcpStream>, String> {
        let host = host_of(server);
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| format!("TLS server name {host:?}: {e}"))?;
        self.0
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS handshake with {server}: {e}"))
    }
}

/// The host part of `host:port` (brackets of an IPv6 literal removed).
fn host_of(server: &str) -> &str {
    let host = match server.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => server,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_is_the_part_before_the_port() {
        assert_eq!(host_of("irc.example.org:6697"), "irc.example.org");
        assert_eq!(host_of("127.0.0.1:6697"), "127.0.0.1");
        assert_eq!(host_of("[::1]:6697"), "::1");
        assert_eq!(host_of("irc.example.org"), "irc.example.org");
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_an_error() {
        assert!(Tls::new(None).is_ok());
        assert!(Tls::new(Some(Path::new("/nonexistent/ca.pem"))).is_err());
        let dir = std::env::temp_dir().join(format!("junction-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").ok();
        assert!(Tls::new(Some(&empty)).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
