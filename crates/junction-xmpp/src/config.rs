//! The `[xmpp]` section of bridges.toml: as written ([`RawXmpp`], read by [`read`]), checked
//! ([`validate`]), and as the adapter receives it ([`XmppConfig`]).
//!
//! Keys: `component`, `server` (`host:port`), `secret` (all required); `origin_marks`
//! (default true: puppet nicks end in their network's mark, `alice[m]`), `max_occupants`
//! (puppet occupants at once, default 200), `occupant_idle_timeout_seconds` (default 86400;
//! 0: never).

use junction_core::{PuppetLimits, Secret};
use junction_network::{Checker, Str};
use serde::Deserialize;
use tokio_xmpp::jid::BareJid;
use toml::Spanned;

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

/// The `[xmpp]` section with what the gateway, rather than the adapter's own settings, uses
/// to build the adapter.
#[derive(Clone, Debug)]
pub struct XmppSection {
    /// The adapter's settings.
    pub config: XmppConfig,
    /// `max_occupants` and `occupant_idle_timeout_seconds`.
    pub occupants: PuppetLimits,
}

/// `[xmpp]` as written: every key optional here, so that a missing one is reported among the
/// other problems by [`validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXmpp {
    /// The component's domain.
    pub component: Option<Str>,
    /// `host:port` of the server's component listener.
    pub server: Option<Str>,
    /// The component secret.
    pub secret: Option<Str>,
    /// Puppet nicks carry their network's origin mark.
    pub origin_marks: Option<Spanned<bool>>,
    /// Most puppet occupants in rooms at once.
    pub max_occupants: Option<Spanned<i64>>,
    /// Idle time after which a puppet occupant leaves (0: never).
    pub occupant_idle_timeout_seconds: Option<Spanned<i64>>,
}

/// Reads `[xmpp]` from the whole file, if there is one.
pub fn read(file: &str) -> Result<Option<Spanned<RawXmpp>>, toml::de::Error> {
    junction_network::read_section(file, "xmpp")
}

/// Checks `[xmpp]`, reporting every problem to `c`.
pub fn validate(x: &Spanned<RawXmpp>, c: &mut Checker<'_>) -> Option<XmppSection> {
    let t = x.span();
    let x = x.get_ref();
    let component = c
        .required(&x.component, t.clone(), "xmpp", "component")
        .and_then(|v| {
            let s = c.nonempty(v, "xmpp.component")?;
            match BareJid::new(&s) {
                Ok(j) if j.node().is_none() => Some(s),
                _ => {
                    c.error(
                        v.span(),
                        "xmpp.component",
                        format!("`{s}` is not a domain like `bridge.xmpp.test`"),
                    );
                    None
                }
            }
        });
    let server = c
        .required(&x.server, t.clone(), "xmpp", "server")
        .and_then(|v| c.host_port(v, "xmpp.server"));
    let secret = c
        .required(&x.secret, t.clone(), "xmpp", "secret")
        .and_then(|v| c.secret(v, "xmpp.secret"));
    let occupants = c.puppet_limits(
        &x.max_occupants,
        "xmpp.max_occupants",
        &x.occupant_idle_timeout_seconds,
        "xmpp.occupant_idle_timeout_seconds",
    );
    Some(XmppSection {
        config: XmppConfig {
            component: component?,
            server: server?,
            secret: secret?,
            origin_marks: x.origin_marks.as_ref().is_none_or(|v| *v.get_ref()),
        },
        occupants: occupants?,
    })
}

/// A bare JID, with a local part when `node` is true (a MUC room, a person).
pub fn bare_jid(s: &str, node: bool) -> Result<(), String> {
    if s.contains('/') {
        return Err("a bare JID has no `/resource`".into());
    }
    match BareJid::new(s) {
        Ok(j) if node && j.node().is_none() => Err("the room's local part is missing".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_syntax() {
        assert!(bare_jid("lobby@conference.xmpp.test", true).is_ok());
        assert!(bare_jid("conference.xmpp.test", true).is_err());
        assert!(bare_jid("lobby@conference.xmpp.test/nick", true).is_err());
    }
}
