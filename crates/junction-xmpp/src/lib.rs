//! Junction's xmpp adapter (in progress).
#![deny(missing_docs)]

pub mod config;
