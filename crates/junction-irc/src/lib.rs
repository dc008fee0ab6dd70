//! Junction's IRC adapter: a bot connection per network, IRCv3 negotiation, flood control and
//! splitting that fits the server's line limit.
#![deny(missing_docs)]

mod adapter;
pub mod bucket;
pub mod commands;
pub mod config;
pub mod inbound;
pub mod isupport;
pub mod nick;
pub mod outbound;
pub mod session;
pub mod split;
#[cfg(test)]
mod test_store;

pub use adapter::IrcAdapter;
pub use config::{IrcConfig, IrcMode};
