//! Junction's core: the normalised event model, the adapter seam, the router and format
//! conversion.
//!
//! Invariant: this crate does no network or disk I/O and knows no particular network. It is
//! the vocabulary every other crate speaks: adapters turn wire traffic into [`Event`]s, the
//! [`Router`] decides which rooms an event goes to and resolves its references, and the
//! [`format`] module converts rich text between each network's markup.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod adapter;
pub mod authority;
pub mod clock;
pub mod doctor;
pub mod event;
pub mod format;
pub mod ids;
pub mod limits;
pub mod private;
pub mod puppet_cap;
pub mod queue;
pub mod router;
pub mod store;

pub use adapter::{
    Adapter, AdapterContext, AdapterError, Command, Delivered, Delivery, Inbound, NetworkStatus,
};
pub use event::{Attachment, Event, EventKind, Message, MessageKind, Sender};
pub use format::RichText;
pub use ids::{
    BridgeName, EventId, MessageId, NetworkId, RoomId, RoomRef, Secret, UserId, UserRef,
};
pub use puppet_cap::{Admit, PuppetCap, PuppetLimits};
pub use router::{Link, RefResolver, Router};
pub use store::{AdapterStore, Pastes, StoreError, StoreResult};
