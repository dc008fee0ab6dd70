//! One `[irc.<name>]` section of bridges.toml, as the adapter receives it (already validated).

use junction_core::Secret;
use std::path::PathBuf;
use std::time::Duration;

/// How remote users appear on IRC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum IrcMode {
    /// One connection per remote user that speaks.
    #[default]
    Puppet,
    /// Everything through the bot as `<alice[m]> text`.
    Relay,
}

/// Settings of one IRC network.
#[derive(Clone, Debug)]
pub struct IrcConfig {
    /// The network's name in bridges.toml (`local` for `[irc.local]`); its network id is
    /// `irc:<name>`.
    pub name: String,
    /// `host:port`.
    pub server: String,
    /// Connect with TLS (rustls, the webpki roots trusted, the certificate checked against
    /// the host part of `server`).
    pub tls: bool,
    /// A PEM file of CA certificates trusted besides the webpki roots (a private or
    /// self-signed CA); used only with `tls`.
    pub tls_ca: Option<PathBuf>,
    /// The bot's nick.
    pub nick: String,
    /// Puppet or relay.
    pub mode: IrcMode,
    /// Server password, if any.
    pub password: Option<Secret>,
    /// SASL PLAIN account and password for the bot, if any.
    pub sasl: Option<(String, Secret)>,
    /// Most puppet connections at once on this network (default
    /// [`IrcConfig::DEFAULT_MAX_PUPPETS`]).
    pub max_puppets: usize,
    /// A puppet that said nothing for this long is disconnected.
    pub puppet_idle_timeout: Duration,
    /// Token bucket: lines per second once the burst is used.
    pub lines_per_second: f64,
    /// Token bucket: lines that may go at once.
    pub burst: u32,
    /// A message longer than this many lines is sent as its first `max_lines - 1` lines plus
    /// a note: a link to its whole text when the gateway keeps pastes (`[gateway]
    /// public_url`), else the rest is not sent and the note says so.
    pub max_lines: usize,
    /// Channel history to turn on in each linked channel that has none, as InspIRCd's
    /// channel mode `+H` takes it: `<lines>:<period>` (`100:1d`). Needs the server's
    /// `chanhistory` module and the bot to be a channel operator; the channel then replays
    /// its last lines on join, which is how the bot reads what was said while it was away.
    pub channel_history: Option<String>,
}

impl IrcConfig {
    /// Puppet connections by default: with the bot, three connections from the gateway's
    /// address. Public IRC networks commonly allow three to five connections per IP without
    /// a session-limit exemption and ban the address beyond (Rizon, for one, at the fifth);
    /// three stays within the strictest of them. A network that grants the gateway an
    /// exemption, or one's own server, takes a higher `max_puppets`; the people beyond it are
    /// relayed by the bot.
    pub const DEFAULT_MAX_PUPPETS: usize = 2;

    /// Defaults for everything but name, server and nick.
    pub fn new(
        name: impl Into<String>,
        server: impl Into<String>,
        nick: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            server: server.into(),
            tls: false,
            tls_ca: None,
            nick: nick.into(),
            mode: IrcMode::Puppet,
            password: None,
            sasl: None,
            max_puppets: Self::DEFAULT_MAX_PUPPETS,
            puppet_idle_timeout: Duration::from_secs(24 * 3600),
            lines_per_second: 2.0,
            burst: 10,
            max_lines: 5,
            channel_history: None,
        }
    }
}
