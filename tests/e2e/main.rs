//! End-to-end tests through the real servers (Synapse, Prosody, InspIRCd, ngIRCd).
//!
//! One test binary, `mod` lines only. Every test calls `junction_testkit::servers::servers()`
//! (which starts the servers once per machine state) and, when it runs a gateway, takes a
//! `slot()` for its own appservice registration and XMPP component. Names are unique per
//! test (`junction_testkit::unique`), so there is no teardown.

/// The servers answer and accept the slots' identities.
mod smoke;

/// The Matrix adapter against Synapse: rooms by alias, ghosts, durable transactions.
mod matrix;

/// The XMPP adapter against Prosody: puppets, the listener, one event per room message.
mod xmpp;

/// The IRC adapter against InspIRCd and ngIRCd: nicks, long messages, inbound traffic.
mod irc;

/// TLS to IRC: a private InspIRCd with a TLS port, its certificate from a CA of the test.
mod irc_tls;

/// The whole gateway on all three servers: the lobby, every direction, every feature.
mod lobby;

/// Encrypted Matrix rooms: the gateway's device decrypts and encrypts, against matrix-nio.
mod encrypted;

/// Private conversations across networks: direct chats, queries, reuse, privacy.
mod private;

/// Long messages on IRC: the first lines and a link to the whole text on the gateway's page.
mod paste;

/// Admin commands from every network: link, unlink, ban, status, refusals.
mod admin;

/// XEP-0050 ad-hoc commands: XMPP clients list and run the admin commands.
mod adhoc;

/// Faults: the gateway killed mid-flight and an IRC server restarted under load, with the
/// figures per direction; bad input that must never stop the next line.
mod faults;

/// Network servers restarted under load: a private Prosody and a private Synapse killed
/// and started again while IRC talks, with the figures per direction.
mod restarts;

/// Rooms the gateway creates on a server that locks new rooms.
mod xmpp_rooms;

/// Authority: deletions, edits and topics cross only for their author or a moderator; the
/// gateway lends nobody its power.
mod authority;
/// `close` and `unlink` announce in every affected room on every network before the gateway
/// leaves.
mod closing;
/// Hostile use of the command channels and the media proxy by ordinary users: invites from
/// strangers, a flood of commands, uploads that would run script.
mod hostile_commands;
/// Amplification and floods by ordinary users: hundreds of reactions in one stanza, dozens of
/// links in one message, a flood of lines; capped, rate-limited, counted, and others still
/// cross, before and after a restart.
mod hostile_fanout;
/// Hostile input from ordinary users' clients (deep quotes, deeply nested HTML, delimiter
/// runs): the gateway stays up and relays in every direction, before and after a restart.
mod hostile_input;
/// Deeply nested XMPP stanzas from an ordinary user's client: the component stream's depth
/// bound keeps the gateway up, relaying in every direction, before and after a restart.
mod hostile_stanzas;
/// Identity: origin marks on puppets, a native nick never taken, an IRC nick never an
/// account's identity, mask and nick bans that hold at the gateway without operator power.
mod identity;
/// Puppets' lifecycle: a flood of joins under new names makes at most the cap of Matrix
/// ghosts and XMPP occupants, registers no account per new nick, and the lobby still relays;
/// idle ghosts and occupants leave.
mod lifecycle;
/// A store that fails for real: the data directory on a small tmpfs the test fills; `/health`
/// answers 503, the gateway exits non-zero by itself, and once space is back nothing is lost.
mod store_faults;

/// `junction doctor`: each check against the real servers with its fault set up, one
/// all-good run, and the binary's exit status.
mod doctor;

/// Retention: a reply to a forgotten message crosses as plain text; an unreachable network
/// gets only the newest of its backlog, with one notice and a counter.
mod retention;

/// `junction status` against a running gateway.
mod status;

/// A hot standby on PostgreSQL: a second `junction run` waits, says `standby` on `/health`,
/// and takes over when the active one is killed.
mod standby;
