//! Junction's irc adapter (in progress).
