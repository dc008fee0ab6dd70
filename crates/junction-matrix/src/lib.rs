//! Junction's Matrix adapter: an application service.
//!
//! - `adapter`: [`MatrixAdapter`], the state its parts share, the linked rooms and the run
//!   loop that hands each delivery to its room's queue.
//! - [`server`]: the homeserver pushes transactions to us (axum on `matrix.listen`); each is
//!   answered 200 only once its events are durable.
//! - [`inbound`]: client events → [`junction_core::Event`]s, dropping our own ghosts and bot.
//! - [`outbound`]: [`junction_core::Delivery`] → Client-Server calls as the sender's ghost,
//!   with transaction ids derived from the delivery, so retries never duplicate.
//! - [`puppets`] and [`ids`]: ghosts (`@<prefix><network>_<name>:<server>`, escaped per the
//!   spec), registered once and remembered in the store.
//! - `lifecycle`: the cap of ghosts in rooms, and idle ghosts leaving.
//! - [`power`]: who is a moderator of a room (power levels, room creators).
//! - [`media`]: a signed-URL proxy that serves Matrix media to the other networks;
//!   [`media_encrypted`]: the same for encrypted rooms' files, decrypted.
//! - [`connection`]: the homeserver connection: the Client-Server API as the appservice.
//! - `queues`: deliveries per room, each room's in order, several rooms at once
//!   ([`MAX_ROOMS_AT_ONCE`], [`MAX_QUEUED_PER_ROOM`]); with `parallel_senders`, a room's
//!   messages of different people said together at once ([`MAX_PARALLEL_SENDERS`]).
//!
//! The adapter keeps its state only through the store handle of its
//! [`AdapterContext`](junction_core::AdapterContext): its tables (`ghosts`, `command_rooms`,
//! `media`, `reactions_in`...) are stored as `matrix/<table>`.
//!
//! Rooms are named as in the link (`#lobby:matrix.test` or a room id); the adapter resolves
//! each (creating a public room for a free alias on our server, which the registration must
//! list as an alias namespace), joins it with the bot, and refuses encrypted rooms unless
//! `[matrix] encryption` gives the bot a device of its own ([`crypto`]).
//!
//! The bot accepts invites to rooms that are not linked (direct chats): text people write
//! there is an admin command for the gateway, answered by the bot as a notice. What the
//! gateway itself says is the bot's notice; its kicks and bans are carried out by the bot.
//! The adapter reports its state (connected, degraded, down) for `/health`.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod adapter;
mod catchup;
pub mod config;
pub mod connection;
pub mod crypto;
pub mod doctor;
pub mod ids;
pub mod inbound;
mod lifecycle;
pub mod media;
pub mod media_encrypted;
pub mod network;
pub mod outbound;
pub mod power;
pub mod private;
pub mod puppets;
mod queues;
pub mod registration;
pub mod server;

pub use adapter::{
    MatrixAdapter, COMMAND_ROOMS_TABLE, MAX_ATTACHMENT_FETCHES, MAX_PARALLEL_SENDERS,
    MAX_QUEUED_PER_ROOM, MAX_ROOMS_AT_ONCE,
};
