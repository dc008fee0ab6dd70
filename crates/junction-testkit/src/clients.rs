//! Ordinary-user clients for each network, used by the end-to-end tests to watch the
//! lobby from the outside. Each keeps a backlog of everything it received, and
//! `wait_for` searches it until a deadline.
//!
//! - [`MatrixUser`]: client-server API v3 over reqwest, with a background `/sync`.
//! - [`XmppUser`]: plaintext c2s to the local Prosody, SASL PLAIN.
//! - [`NioUser`]: an encrypting Matrix user on matrix-nio (Python), for encrypted rooms.
//! - [`IrcUser`]: irc-proto messages over TCP, with IRCv3 capability negotiation.

pub mod irc;
pub mod matrix;
pub mod nio;
pub mod xmpp;

pub use irc::IrcUser;
pub use matrix::MatrixUser;
pub use nio::NioUser;
pub use xmpp::XmppUser;
