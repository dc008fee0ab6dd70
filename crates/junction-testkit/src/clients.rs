//! Ordinary-user clients for each network, used by the end-to-end tests to watch the
//! lobby from the outside. Each keeps a backlog of everything it received, and
//! `wait_for` searches it until a deadline.

pub mod irc;

pub use irc::IrcUser;
pub mod matrix;
pub use matrix::MatrixUser;
pub mod xmpp;
pub use xmpp::XmppUser;
