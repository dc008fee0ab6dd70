//! Junction's XMPP adapter: a XEP-0114 component with a listener occupant per
//! linked MUC and one puppet occupant per remote user (XEP-0106 escaped JIDs),
//! acknowledged delivery, archive backfill, keepalive pings and admin commands
//! by chat to the component or as XEP-0050 ad-hoc commands.
#![deny(missing_docs)]

pub mod adhoc;
pub mod config;
pub mod depth;
pub mod inbound;
pub mod jid;
pub mod outbound;
pub mod probe;
mod session;

use std::sync::Arc;

use junction_core::{Adapter, AdapterContext, AdapterError, Capabilities, Markup, PuppetLimits};
use junction_store::Store;

pub use config::XmppConfig;

/// The XMPP adapter: one XEP-0114 component connection, a listener occupant in
/// every linked room, and one puppet occupant per remote user.
///
/// A delivery is answered once the room reflects the message back, with the
/// room's stanza-id `S` (what XMPP clients name in replies, reactions and
/// retractions); the puppet's own id `U` (id and origin-id, derived from the
/// outbox row) is kept beside it for XEP-0308 corrections. On every (re)join
/// the room's archive (XEP-0313) is read from a stored cursor, so what was
/// said while the adapter was away is bridged once.
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

    /// Sets the puppet occupants' lifecycle bounds (`[xmpp] max_occupants`,
    /// `occupant_idle_timeout_seconds`; see [`PuppetLimits`] for the defaults).
    pub fn with_occupant_limits(mut self, limits: PuppetLimits) -> Self {
        self.state.cap = junction_core::PuppetCap::new(limits);
        self
    }

    /// Counts, in `refusals`, every time the cap of occupants refused someone an occupant
    /// (for `/metrics`).
    pub fn with_cap_refusals(mut self, refusals: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.state.cap_refused = refusals;
        self
    }

    /// Counts, in `refused`, every action refused because its sender may not take it: a
    /// moderation announcement (XEP-0425) sent by an occupant rather than the room (for
    /// `/metrics`).
    pub fn with_refusals(mut self, refused: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.state.refused = refused;
        self
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

    /// A counter of incoming stanzas that lost elements nested deeper than
    /// [`depth::MAX_STANZA_DEPTH`] (each is also logged once).
    pub fn cut_deep_stanzas(&self) -> Arc<std::sync::atomic::AtomicU64> {
        self.state.cut_deep.clone()
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
