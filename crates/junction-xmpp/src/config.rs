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
    /// Puppet nicks carry their network's origin mark (`alice[m]`, `bob[i]`), so that a
    /// remote person cannot pass for a native occupant (`[xmpp] origin_marks`, default on).
    /// Off, a puppet takes the bare name and gets the mark only when the nick is taken.
    pub origin_marks: bool,
}
