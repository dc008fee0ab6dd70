//! Junction's xmpp adapter (in progress): XEP-0114 component, puppets per
//! remote user, XEP-0106 JID escaping.
#![deny(missing_docs)]

pub mod config;
pub mod inbound;
pub mod jid;
pub mod outbound;
