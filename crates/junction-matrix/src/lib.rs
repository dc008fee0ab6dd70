//! Junction's matrix adapter (in progress).
#![deny(missing_docs)]

pub mod config;
