//! Junction's xmpp adapter (in progress).
