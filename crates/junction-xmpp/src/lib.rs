//! Junction's XMPP adapter: a XEP-0114 component with a listener occupant per
//! linked MUC and one puppet occupant per remote user (XEP-0106 escaped JIDs),
//! acknowledged delivery, archive backfill, keepalive pings and admin commands
//! by chat to the component or as XEP-0050 ad-hoc commands.
//!
//! The adapter (`adapter`) and its run loop over the component stream
//! (`connection`, through the depth bound of [`depth`]); rooms as the listener sees
//! them (`rooms`), their messages (`messages`, read by the stateless [`inbound`]) and
//! archives (`backfill`); the occupants it makes join (`puppets`, named by [`ids`]);
//! deliveries rendered (`deliver`, written by [`outbound`]) and confirmed (`pending`);
//! IQs (`iq`) and admin commands (`commands`, [`adhoc`]); `junction doctor`'s [`probe`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod adapter;
pub mod adhoc;
mod backfill;
mod commands;
pub mod config;
mod connection;
mod deliver;
pub mod depth;
pub mod doctor;
pub mod ids;
pub mod inbound;
mod iq;
mod messages;
pub mod network;
pub mod outbound;
mod pending;
mod private;
pub mod probe;
mod puppets;
mod rooms;

pub use adapter::XmppAdapter;
pub use config::XmppConfig;
