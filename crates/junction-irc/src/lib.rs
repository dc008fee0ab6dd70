//! Junction's IRC adapter.
//!
//! - One **bot** connection per network ([`connection`]: CAP LS 302 with SASL PLAIN before
//!   `CAP END`, ISUPPORT, PING) joins the linked channels and is the only connection that
//!   reads them: it keeps the one shared roster per channel, turns channel traffic into
//!   events ([`inbound`]: IRC codes become rich text, a leading `nick:` becomes a mention),
//!   drops what the bot and our puppets said, and takes admin commands ([`commands`]: a
//!   PRIVMSG to the bot's nick, answered by NOTICE).
//! - In `puppet` mode, one more connection per remote user who speaks ([`puppets`]): created
//!   lazily and in parallel up to `max_puppets`, nick `name[m]`/`name[x]` ([`ids`]) stored
//!   so it survives restarts, joining a channel before speaking, quitting when idle. A puppet
//!   holds no roster and ignores what the server sends it besides PING, errors and replies to
//!   its own commands. Whatever a puppet can not say is relayed by the bot as
//!   `<alice[m]> text`, as everything is in `relay` mode.
//! - Every connection has its own token bucket ([`bucket`]) and answers a delivery only once
//!   a PING sent after its lines came back; lines are split to fit the server's line length
//!   after the prefix it adds ([`split`]); a message longer than `max_lines` goes out as its
//!   first lines and a link to its whole text, kept by the gateway's pastes
//!   (`AdapterContext::pastes`), or cut with a note when the gateway keeps none; rendering
//!   ([`outbound`]) uses the core formatters (mentions become the nick that shows the person,
//!   replies quote the first words of what they answer ([`lookup`]), edits are marked
//!   `(edit)`, reactions are an ACTION line).
//! - The gateway's own messages are the bot's words; its kicks and bans of IRC users are
//!   carried out by the bot (and fail when it is no channel operator). Connection state is
//!   reported on `cx.status`.
//! - With `tls`, every connection (bot and puppets) runs over rustls ([`tls`]).
//! - Where a channel replays its history on join (InspIRCd `+H`, [`history`]), the bot
//!   relays what was said while the gateway was away, and deliveries that reached the
//!   channel before an unclean stop are answered from the replay instead of said twice.
//! - Everything kept goes through the adapter's store handle (`AdapterContext::store`):
//!   puppet nicks, quotes (table `quotes`), and when the bot last read the channels (`seen`).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod adapter;
pub mod bucket;
pub mod commands;
pub mod config;
pub mod connection;
mod deliver;
pub mod doctor;
pub mod fair;
#[cfg(test)]
mod fake_server;
pub mod history;
pub mod ids;
pub mod inbound;
pub mod isupport;
pub mod lookup;
mod mailbox;
pub mod network;
pub mod ops;
pub mod outbound;
pub mod private;
pub mod puppets;
pub mod split;
mod stored;
pub mod tls;

pub use adapter::IrcAdapter;
pub use config::{IrcConfig, IrcMode};
