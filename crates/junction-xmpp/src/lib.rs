//! Junction's xmpp adapter (in progress): XEP-0114 component, puppets per
//! remote user, XEP-0106 JID escaping.
#![deny(missing_docs)]

pub mod config;
pub mod inbound;
pub mod jid;
pub mod outbound;
mod session;

use std::sync::Arc;

use junction_core::{Adapter, AdapterContext, AdapterError, Capabilities, Markup};
use junction_store::Store;

pub use config::XmppConfig;

/// The XMPP adapter: one XEP-0114 component connection, a listener occupant in
/// every linked room, and one puppet occupant per remote user.
///
/// Delivered ids are the puppet's own message ids (`U`, sent as id and
/// origin-id); the adapter learns the room's stanza-id `S` from the room's
/// reflection and uses it where XEPs want it (retractions, reactions, replies).
pub struct XmppAdapter {
    state: session::State,
}

impl XmppAdapter {
    /// An adapter for `config`, keeping its state in `store`.
    pub fn new(config: XmppConfig, store: Arc<dyn Store>) -> Self {
        Self {
            state: session::State::new(config, store),
        }
    }

    /// A handle that, when notified, drops the current component connection;
    /// the adapter then reconnects and rejoins the listener and its puppets.
    /// For tests and operators who want a fresh connection.
    pub fn reconnect_handle(&self) -> Arc<tokio::sync::Notify> {
        self.state.reconnect.clone()
    }

    /// A counter of component sessions: incremented each time the adapter
    /// has logged in and sent its room joins.
    pub fn sessions(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.state.sessions.clone()
    }
}

impl Adapter for XmppAdapter {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            edits: true,
            redactions: true,
            reactions: true,
            replies: true,
            uploads: false,
            markup: Markup::Xep0393,
            max_message_bytes: None,
        }
    }

    async fn run(self, cx: AdapterContext) -> Result<(), AdapterError> {
        session::run(self.state, cx).await
    }
}
