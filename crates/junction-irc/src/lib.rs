//! Junction's irc adapter (in progress).
#![deny(missing_docs)]

pub mod config;
