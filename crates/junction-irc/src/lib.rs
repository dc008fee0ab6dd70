//! Junction's IRC adapter: a bot connection per network, puppets per remote user, IRCv3
//! negotiation, flood control and splitting that fits the server's line limit.
#![deny(missing_docs)]

pub mod config;
pub mod isupport;
pub mod nick;
pub mod split;
