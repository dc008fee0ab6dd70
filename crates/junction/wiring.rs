//! The networks this gateway speaks: the one place in the gateway that names them.
//!
//! Everything else asks [`NETWORKS`]: the config loader reads each network's section through
//! it (`config/`), admin commands read rooms and users and match bans through it
//! (`admin.rs`), `junction registration` prints what a network needs registered
//! (`cli.rs`), and [`crate::serve`] builds each configured instance's adapter. A new network
//! is its crate implementing [`junction_network::Network`], plus one line here.

use junction_network::Networks;

/// Every network, in the order the gateway lists them (sections, `status`, `/metrics`,
/// `/health`); when two networks are both sure a typed room or user is theirs, the first wins.
pub static NETWORKS: Networks = Networks::new(&[
    &junction_matrix::network::Matrix,
    &junction_xmpp::network::Xmpp,
    &junction_irc::network::Irc,
]);
