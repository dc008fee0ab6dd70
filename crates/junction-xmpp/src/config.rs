//! The `[xmpp]` section of bridges.toml, as the adapter receives it (already validated).

use junction_core::Secret;

/// XMPP component (XEP-0114) settings.
#[derive(Clone, Debug)]
pub struct XmppConfig {
    /// The component's domain, e.g. `bridge.xmpp.test`.
    pub component: String,
    /// The server's component port, `host:port`, e.g. `127.0.0.1:5347`.
    pub server: String,
    /// The component secret.
    pub secret: Secret,
}
