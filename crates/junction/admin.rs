//! Admin commands typed to the gateway's own identity on any network (a direct chat with the
//! Matrix bot, a chat with the XMPP component, a private message to the IRC bot).
//!
//! The grammar is the same everywhere (verbs are case-insensitive):
//!
//! ```text
//! help                      this list (anyone)
//! bridges                   the links and their rooms
//! status                    links, networks, outboxes, bans
//! link <bridge> <room>      add a room to a bridge (a new name makes a new bridge)
//! unlink <bridge> <room>    take a room out of a bridge
//! close <bridge>            announce, then stop relaying the whole bridge
//! kick <user> [reason]      kick from every room the admin administers
//! ban <user> [reason]       refuse the user's messages and ban them everywhere (global admins)
//! unban <user>              lift a ban (global admins)
//! ```
//!
//! Rooms are written as in `bridges.toml` (`#alias:server` or `!id:server`,
//! `room@muc.domain`, `network/#channel`); users as `@user:server`, `user@domain`, or
//! `network/nick` (also `irc:network/nick`, or a mask `network/nick!user@host` for IRC). Each
//! network reads its own and says how its ids compare, through
//! [`crate::wiring::NETWORKS`]; so do bans that are patterns (IRC masks, nicks that follow a
//! person) or that name someone by another id (an XMPP occupant's real JID).
//!
//! Permissions: a global admin (`[gateway] admins`) may do everything; a bridge admin
//! (`admins` in a `[[bridge]]`) may link, unlink, close and kick on that bridge and see
//! `bridges` and `status`. Everyone may ask for `help`. Every admin's command but `help`,
//! refused or not, goes to the audit trail in the store and to the log (the text cut to 200
//! characters); others' commands are not audited, and are rate-limited per sender
//! ([`crate::command_limit`]).
//!
//! Changes take effect in the [`Router`] passed in and persist in the store: a link changed at
//! runtime is stored whole and replaces a config bridge of the same name at the next start
//! (see [`crate::gateway::initial_links`]); a closed config bridge is stored as a link with no
//! rooms, so it stays closed. Announcements and enforcements are recorded as events from the
//! gateway itself (network [`NetworkId::gateway`]) with one outbox row per target room, and
//! returned as [`Delivery`]s for the caller to flush and hand out.

use crate::command_limit::{logged_text, CommandLimiter, Verdict};
use crate::config::Config;
use crate::wiring::NETWORKS;
use junction_core::clock::now_ms;
use junction_core::router::Planned;
use junction_core::{
    BridgeName, Delivery, Event, EventKind, Link, Message, MessageId, MessageKind, NetworkId,
    RichText, RoomRef, Router, Sender, UserRef,
};
use junction_store::{AuditEntry, Recorded, Store};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::LazyLock;

/// Store namespace of exact bans, keyed by [`ban_key`].
const BANS: &str = "gateway/bans";
/// Store namespace of bans on patterns (IRC masks `nick!user@host` with wildcards), keyed by
/// [`ban_key`].
const BAN_MASKS: &str = "gateway/ban-masks";

/// The help text: the commands, then how each network writes rooms and users.
pub static HELP: LazyLock<String> = LazyLock::new(|| format!("{COMMANDS}\n{}", NETWORKS.help()));

/// The commands, for the help text.
const COMMANDS: &str = "\
Commands (same on every network):
  help                      this list
  bridges                   the links and their rooms
  status                    links, networks, outboxes, bans
  link <bridge> <room>      add a room to a bridge (a new name makes a new bridge)
  unlink <bridge> <room>    take a room out of a bridge
  close <bridge>            announce, then stop relaying the bridge
  kick <user> [reason]      kick from every room you administer
  ban <user> [reason]       ban everywhere and refuse their messages (global admins)
  unban <user>              lift a ban (global admins)";

/// Where `status` gets each network's state from (the route loop's view of the adapters).
pub type StatusSource = Box<dyn Fn() -> Vec<(NetworkId, String)> + Send + Sync>;

/// What came of one command.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The answer for the person who typed it (may be several lines).
    pub reply: String,
    /// Announcements and enforcements, recorded in the store (not yet flushed): flush, then
    /// hand them to their adapters.
    pub deliveries: Vec<Delivery>,
    /// True when the router's links changed (adapters' room lists need updating).
    pub links_changed: bool,
    /// True when the command was ignored: its sender is over the command rate limit
    /// ([`crate::command_limit`]). The reply is empty.
    pub rate_limited: bool,
}

/// A ban as stored.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Ban {
    /// Who is banned (for IRC possibly a mask).
    pub user: UserRef,
    /// Why, if given.
    pub reason: Option<String>,
    /// The admin who banned, as `network/id`.
    pub by: String,
    /// When, milliseconds since the Unix epoch.
    pub ts_ms: u64,
    /// What the gateway learnt of the banned person since, on networks whose bans are
    /// patterns ([`junction_network::Network::ban_learns`]; IRC: the `*!user@host` masks and
    /// account ids they were seen with), so that a new nick does not evade the ban.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also: Vec<String>,
}

/// Most things one ban learns of the person it covers.
const MAX_LEARNT: usize = 16;

/// A ban with the store namespace and key it is kept under.
type StoredBan = (&'static str, String, Ban);

/// The answer of [`Admin::check_ban`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BanCheck {
    /// Not banned.
    Clear,
    /// Banned.
    Banned,
    /// The ban list could not be read: treated as banned (bans fail closed).
    Unknown,
}

/// The admin command handler: who may do what, and what each command does.
pub struct Admin {
    global: Vec<UserRef>,
    per_bridge: BTreeMap<BridgeName, Vec<UserRef>>,
    config_bridges: BTreeSet<BridgeName>,
    /// The configured network instances.
    networks: Vec<NetworkId>,
    statuses: Option<StatusSource>,
    counter: AtomicU64,
    /// The bans of networks whose bans are patterns (IRC nicks, accounts and masks) with
    /// their store namespace and key, read from the store on first use and kept until `ban`
    /// or `unban` changes them (every inbound event of such a network is checked against
    /// them).
    masks: std::sync::Mutex<Option<Vec<StoredBan>>>,
    /// Command rate limits of senders who are not admins.
    limiter: std::sync::Mutex<CommandLimiter>,
}

/// The gateway itself as the sender of announcements and enforcements.
pub fn gateway_sender() -> Sender {
    Sender::new(UserRef::new(NetworkId::gateway(), "junction"), "junction")
}

/// The store key of a ban on `u`.
fn ban_key(u: &UserRef) -> String {
    format!("{} {}", u.network, NETWORKS.fold_user(u))
}

/// True when bans on `network` are patterns, matched in memory.
fn ban_patterns(network: &NetworkId) -> bool {
    NETWORKS.of(network).is_some_and(|n| n.ban_patterns())
}

fn one_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

impl Admin {
    /// Reads the admins (`[gateway] admins`, each bridge's `admins`) and the configured
    /// networks from `config`.
    pub fn new(config: &Config) -> Self {
        let networks = config.networks();
        Self {
            global: config.gateway.admins.clone(),
            per_bridge: config.bridge_admins.clone(),
            config_bridges: config.bridges.iter().map(|l| l.bridge.clone()).collect(),
            networks,
            statuses: None,
            counter: AtomicU64::new(0),
            masks: std::sync::Mutex::new(None),
            limiter: std::sync::Mutex::new(CommandLimiter::default()),
        }
    }

    /// Sets where `status` reads each network's state (e.g. the adapters' status watches);
    /// without one, `status` says the states are unknown.
    pub fn set_status_source(&mut self, source: StatusSource) {
        self.statuses = Some(source);
    }

    fn is_global(&self, from: &[UserRef]) -> bool {
        from.iter()
            .any(|w| self.global.iter().any(|a| NETWORKS.identity_matches(a, w)))
    }

    fn is_bridge_admin(&self, from: &[UserRef], bridge: &BridgeName) -> bool {
        self.is_global(from)
            || self.per_bridge.get(bridge).is_some_and(|admins| {
                from.iter()
                    .any(|w| admins.iter().any(|a| NETWORKS.identity_matches(a, w)))
            })
    }

    fn is_any_admin(&self, from: &[UserRef]) -> bool {
        self.is_global(from)
            || self
                .per_bridge
                .keys()
                .any(|b| self.is_bridge_admin(from, b))
    }

    /// True when the gateway refuses `user`'s messages (a ban made with `ban`, kept in the
    /// store). A store error counts as banned (bans fail closed; see [`Admin::check_ban`]).
    pub fn is_banned(&self, store: &dyn Store, user: &UserRef) -> bool {
        self.check_ban(store, &Sender::new(user.clone(), "")) != BanCheck::Clear
    }

    /// Whether the gateway refuses `sender`'s events: a ban on their id, or on the id their
    /// network knows them by besides ([`junction_network::Network::ban_alias`]: the real JID
    /// the XMPP adapter puts on an occupant as its [`Sender::address`]); on a network whose
    /// bans are patterns, a ban that covers them ([`junction_network::Network::ban_covers`]:
    /// on IRC their account, nick or a mask matching their `nick!user@host`). A pattern ban
    /// that matches learns what the network says of them
    /// ([`junction_network::Network::ban_learns`]: IRC's `*!user@host` and account), so the
    /// ban follows them through nick changes. A store error answers [`BanCheck::Unknown`]
    /// (logged): the caller refuses the event.
    pub fn check_ban(&self, store: &dyn Store, sender: &Sender) -> BanCheck {
        let user = &sender.user;
        let network = NETWORKS.of(&user.network);
        match network {
            Some(n) if n.ban_patterns() => self.check_pattern_bans(n, store, sender),
            _ => {
                match store.kv_get(BANS, &ban_key(user)) {
                    Ok(Some(_)) => return BanCheck::Banned,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not read the ban list: the event is refused.");
                        return BanCheck::Unknown;
                    }
                }
                let Some(alias) = network.and_then(|n| n.ban_alias(sender)) else {
                    return BanCheck::Clear;
                };
                let alias = UserRef::new(user.network.clone(), alias);
                match store.kv_get(BANS, &ban_key(&alias)) {
                    Ok(Some(_)) => BanCheck::Banned,
                    Ok(None) => BanCheck::Clear,
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not read the ban list: the event is refused.");
                        BanCheck::Unknown
                    }
                }
            }
        }
    }

    /// [`Admin::check_ban`] on a network whose bans are patterns: every such ban is tried.
    fn check_pattern_bans(
        &self,
        network: &dyn junction_network::Network,
        store: &dyn Store,
        sender: &Sender,
    ) -> BanCheck {
        let user = &sender.user;
        let mut masks = self.masks.lock().unwrap_or_else(|e| e.into_inner());
        if masks.is_none() {
            let mut all = Vec::new();
            for ns in [BANS, BAN_MASKS] {
                match store.kv_scan(ns) {
                    Ok(rows) => all.extend(rows.into_iter().filter_map(|(k, v)| {
                        let ban = serde_json::from_slice::<Ban>(&v).ok()?;
                        ban_patterns(&ban.user.network).then_some((ns, k, ban))
                    })),
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not read the ban list: the event is refused.");
                        return BanCheck::Unknown;
                    }
                }
            }
            *masks = Some(all);
        }
        let Some(bans) = masks.as_mut() else {
            return BanCheck::Unknown;
        };
        let Some((ns, key, ban)) = bans.iter_mut().find(|(_, _, b)| {
            b.user.network == user.network
                && network.ban_covers(b.user.user.as_str(), &b.also, sender)
        }) else {
            return BanCheck::Clear;
        };
        // Learn who this is, so that a new name does not evade the ban.
        let mut changed = false;
        for l in network.ban_learns(sender) {
            let folded = network.fold_user(&l);
            let known = ban.also.iter().any(|a| network.fold_user(a) == folded);
            if !known && ban.also.len() < MAX_LEARNT {
                tracing::info!(ban = %ban.user, learnt = %l, "A banned user was seen: the ban now covers them under any name.");
                ban.also.push(l);
                changed = true;
            }
        }
        if changed {
            let saved = serde_json::to_vec(&*ban)
                .map_err(|e| e.to_string())
                .and_then(|v| store.kv_put(ns, key, &v).map_err(|e| e.to_string()));
            if let Err(e) = saved {
                tracing::warn!(error = %e, "Could not save what a ban learnt (kept until restart).");
            }
        }
        BanCheck::Banned
    }

    /// Drops the kept pattern bans: the store's list changed.
    fn forget_masks(&self) {
        *self.masks.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Every ban in the store.
    pub fn bans(&self, store: &dyn Store) -> Vec<Ban> {
        [BANS, BAN_MASKS]
            .iter()
            .flat_map(|ns| store.kv_scan(ns).unwrap_or_default())
            .filter_map(|(_, v)| serde_json::from_slice(&v).ok())
            .collect()
    }

    /// Handles one command line from `cmd_from` (every identity the network vouches for).
    /// May change `router` (link/unlink/close) and persist that; records announcements and
    /// enforcements in the store and returns their deliveries (unflushed). A sender who is
    /// not an admin is rate-limited ([`crate::command_limit`]: over the limit the command
    /// is ignored, see [`Outcome::rate_limited`]). Admins' commands but `help` are audited,
    /// refusals included; everyone's are logged, the text cut to
    /// [`crate::command_limit::LOGGED_COMMAND_CHARS`] characters.
    pub fn handle(
        &self,
        cmd_from: &[UserRef],
        display_name: &str,
        text: &str,
        router: &mut Router,
        store: &dyn Store,
    ) -> Outcome {
        let text = text.trim();
        let actor = cmd_from
            .first()
            .map(|u| u.to_string())
            .unwrap_or_else(|| "unknown".to_owned());
        let is_admin = self.is_any_admin(cmd_from);
        if !is_admin {
            let verdict = self
                .limiter
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .check(&actor, std::time::Instant::now());
            if let Verdict::Limited { first } = verdict {
                if first {
                    tracing::warn!(actor = %actor, "Commands from this sender are over the rate limit; ignoring them until it refills.");
                }
                return Outcome {
                    rate_limited: true,
                    ..Outcome::default()
                };
            }
        }
        let mut words = text.split_whitespace();
        let verb = words.next().unwrap_or("").to_lowercase();
        let args: Vec<&str> = words.collect();
        if verb.is_empty() || verb == "help" || verb == "?" {
            return Outcome {
                reply: HELP.clone(),
                ..Outcome::default()
            };
        }
        let mut cx = Cx {
            admin: self,
            from: cmd_from,
            name: if display_name.trim().is_empty() {
                actor.clone()
            } else {
                display_name.trim().to_owned()
            },
            router,
            store,
            out: Outcome::default(),
        };
        let result = match verb.as_str() {
            "bridges" => cx.bridges(),
            "status" => cx.status(),
            "link" => cx.link(&args),
            "unlink" => cx.unlink(&args),
            "close" => cx.close(&args),
            "kick" => cx.kick(&args),
            "ban" => cx.ban(&args),
            "unban" => cx.unban(&args),
            other => Err(format!(
                "Unknown command `{other}`. Type `help` for the list."
            )),
        };
        let mut out = cx.out;
        let (reply, outcome) = match result {
            Ok(reply) => {
                let o = one_line(&reply).to_owned();
                (reply, o)
            }
            Err(why) => (why.clone(), format!("refused: {}", one_line(&why))),
        };
        let logged = logged_text(text);
        if !is_admin {
            // Not an admin: refused (or unknown), worth a debug line, not the audit trail.
            tracing::debug!(actor = %actor, command = %logged, outcome = %outcome, "Command from someone who is not an admin.");
            out.reply = reply;
            return out;
        }
        tracing::info!(actor = %actor, name = %logged_text(display_name), command = %logged, outcome = %outcome, "Admin command.");
        let entry = AuditEntry {
            ts_ms: now_ms(),
            actor,
            action: logged,
            outcome,
        };
        if let Err(e) = store.audit(&entry) {
            tracing::error!(error = %e, "Could not write the audit trail.");
        }
        out.reply = reply;
        out
    }

    /// Parses a room as written in bridges.toml (the network whose syntax it has reads it).
    pub fn parse_room(&self, s: &str) -> Result<RoomRef, String> {
        NETWORKS.room(s, &self.networks)
    }

    /// Parses a user: `@user:server`, `user@domain`, `network/nick` (also `irc:network/nick`,
    /// or a mask `network/nick!user@host`). Returns the user and a name to show.
    pub fn parse_user(&self, s: &str) -> Result<(UserRef, String), String> {
        NETWORKS.user(s, &self.networks)
    }

    fn next_remote_id(&self) -> MessageId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        MessageId::new(format!("admin-{}-{n}", now_ms()))
    }
}

/// One command being handled.
struct Cx<'a> {
    admin: &'a Admin,
    from: &'a [UserRef],
    name: String,
    router: &'a mut Router,
    store: &'a dyn Store,
    out: Outcome,
}

impl Cx<'_> {
    fn need_any_admin(&self) -> Result<(), String> {
        if self.admin.is_any_admin(self.from) {
            Ok(())
        } else {
            Err("Refused: you are not an admin of this gateway.".into())
        }
    }

    fn need_global(&self, what: &str) -> Result<(), String> {
        if self.admin.is_global(self.from) {
            Ok(())
        } else {
            Err(format!(
                "Refused: only gateway admins may {what} (it applies to every bridge)."
            ))
        }
    }

    fn need_bridge(&self, bridge: &BridgeName) -> Result<(), String> {
        if self.admin.is_bridge_admin(self.from, bridge) {
            Ok(())
        } else {
            Err(format!(
                "Refused: you are not an admin of bridge `{bridge}`."
            ))
        }
    }

    /// Records one event from the gateway into `rooms` of `bridge`; collects its deliveries.
    fn record(&mut self, bridge: &BridgeName, rooms: &[RoomRef], kind: EventKind) {
        if rooms.is_empty() {
            return;
        }
        let event = Event::new(
            RoomRef::new(NetworkId::gateway(), bridge.as_str()),
            self.admin.next_remote_id(),
            gateway_sender(),
            now_ms(),
            kind,
        );
        let planned = rooms
            .iter()
            .map(|r| Planned {
                bridge: bridge.clone(),
                target: r.clone(),
                reply_to: Vec::new(),
                target_ids: Vec::new(),
            })
            .collect();
        match self.store.record_inbound(&event, planned) {
            Ok(Recorded::New(ds)) => self.out.deliveries.extend(ds),
            Ok(Recorded::Duplicate) => {
                tracing::warn!(event = %event.id, "An admin announcement was already recorded.")
            }
            Err(e) => tracing::error!(error = %e, "Could not record an admin announcement."),
        }
    }

    /// Announces `text` as a notice from the gateway in `rooms` of `bridge`.
    fn announce(&mut self, bridge: &BridgeName, rooms: &[RoomRef], text: &str) {
        let kind = EventKind::Message(Message {
            kind: MessageKind::Notice,
            body: RichText::plain(text),
            reply_to: None,
            attachments: Vec::new(),
        });
        self.record(bridge, rooms, kind);
    }

    fn usage(&self, usage: &str) -> String {
        format!("Usage: {usage}")
    }

    /// The bridge named `s`, if it is a bridge name and the sender administers it.
    fn my_bridge(&self, s: &str) -> Result<BridgeName, String> {
        let bridge = self.bridge_arg(s)?;
        self.need_bridge(&bridge)?;
        Ok(bridge)
    }

    fn bridge_arg(&self, s: &str) -> Result<BridgeName, String> {
        let good = !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if good {
            Ok(BridgeName::new(s))
        } else {
            Err(format!(
                "`{s}` is not a bridge name (letters, digits, - _ and .)."
            ))
        }
    }

    fn bridges(&mut self) -> Result<String, String> {
        self.need_any_admin()?;
        let mut s = String::new();
        let links: Vec<&Link> = self
            .router
            .links()
            .iter()
            .filter(|l| !l.rooms.is_empty())
            .collect();
        if links.is_empty() {
            s.push_str("No bridges.");
        }
        for l in links {
            let rooms: Vec<String> = l.rooms.iter().map(|r| r.to_string()).collect();
            let _ = writeln!(s, "{}: {}", l.bridge, rooms.join(", "));
        }
        Ok(s.trim_end().to_owned())
    }

    fn status(&mut self) -> Result<String, String> {
        self.need_any_admin()?;
        let mut s = String::new();
        let links = self.router.links().iter().filter(|l| !l.rooms.is_empty());
        let (n, rooms) = links.fold((0, 0), |(n, r), l| (n + 1, r + l.rooms.len()));
        let _ = writeln!(s, "Bridges: {n} ({rooms} rooms).");
        let states: BTreeMap<NetworkId, String> = self
            .admin
            .statuses
            .as_ref()
            .map(|f| f().into_iter().collect())
            .unwrap_or_default();
        for net in &self.admin.networks {
            let state = states
                .get(net)
                .map(String::as_str)
                .unwrap_or("state unknown");
            let depth = self
                .store
                .outbox_depth(net)
                .map(|d| d.to_string())
                .unwrap_or_else(|_| "?".into());
            let _ = writeln!(s, "{net}: {state}, {depth} waiting in the outbox");
        }
        let bans = self.admin.bans(self.store);
        let _ = write!(s, "Bans: {}", bans.len());
        Ok(s)
    }

    /// The room of `bridge` that is `room` (compared as the networks compare names).
    fn find_in(&self, bridge: &BridgeName, room: &RoomRef) -> Option<RoomRef> {
        let want = NETWORKS.same_room(room);
        self.router
            .links()
            .iter()
            .find(|l| &l.bridge == bridge)?
            .rooms
            .iter()
            .find(|r| NETWORKS.same_room(r) == want)
            .cloned()
    }

    /// Persists `bridge` as it now is in `router`: stored whole; an emptied config bridge
    /// stays as a tombstone (no rooms), an emptied runtime bridge is removed.
    fn persist(&self, router: &Router, bridge: &BridgeName) -> Result<(), String> {
        let link = router
            .links()
            .iter()
            .find(|l| &l.bridge == bridge)
            .cloned()
            .unwrap_or_else(|| Link {
                bridge: bridge.clone(),
                rooms: Vec::new(),
            });
        let r = if link.rooms.is_empty() && !self.admin.config_bridges.contains(bridge) {
            self.store.remove_link(bridge)
        } else {
            self.store.put_link(&link)
        };
        r.map_err(|e| {
            tracing::error!(error = %e, "Could not store a link change.");
            format!("Failed: the store could not save the change ({e}); nothing changed.")
        })
    }

    fn link(&mut self, args: &[&str]) -> Result<String, String> {
        let [bridge, room] = args else {
            return Err(self.usage("link <bridge> <room>"));
        };
        let bridge = self.my_bridge(bridge)?;
        let room = self.admin.parse_room(room)?;
        let want = NETWORKS.same_room(&room);
        for l in self.router.links() {
            if let Some(r) = l.rooms.iter().find(|r| NETWORKS.same_room(r) == want) {
                return Err(if l.bridge == bridge {
                    format!("{r} is already linked in bridge `{bridge}`.")
                } else {
                    format!(
                        "{r} is already in bridge `{}`; unlink it there first.",
                        l.bridge
                    )
                });
            }
        }
        let mut next = self.router.clone();
        next.link_room(&bridge, room.clone())
            .map_err(|e| format!("Failed: {e}."))?;
        self.persist(&next, &bridge)?;
        *self.router = next;
        self.out.links_changed = true;
        let rooms = self
            .router
            .link_of(&room)
            .map(|l| l.rooms.clone())
            .unwrap_or_default();
        let text = format!("{} linked {room} into this bridge ({bridge}).", self.name);
        self.announce(&bridge, &rooms, &text);
        Ok(format!(
            "Linked {room} into bridge `{bridge}` ({} rooms now).",
            rooms.len()
        ))
    }

    fn unlink(&mut self, args: &[&str]) -> Result<String, String> {
        let [bridge, room] = args else {
            return Err(self.usage("unlink <bridge> <room>"));
        };
        let bridge = self.my_bridge(bridge)?;
        let parsed = self.admin.parse_room(room)?;
        let Some(room) = self.find_in(&bridge, &parsed) else {
            return Err(format!("{parsed} is not linked in bridge `{bridge}`."));
        };
        let before = self
            .router
            .link_of(&room)
            .map(|l| l.rooms.clone())
            .unwrap_or_default();
        let mut next = self.router.clone();
        next.unlink_room(&bridge, &room)
            .map_err(|e| format!("Failed: {e}."))?;
        self.persist(&next, &bridge)?;
        let text = format!("{} unlinked {room} from this bridge ({bridge}).", self.name);
        // Announced before the change, so the room leaving hears it too.
        self.announce(&bridge, &before, &text);
        *self.router = next;
        self.out.links_changed = true;
        Ok(format!(
            "Unlinked {room} from bridge `{bridge}` ({} rooms left).",
            before.len() - 1
        ))
    }

    fn close(&mut self, args: &[&str]) -> Result<String, String> {
        let [bridge] = args else {
            return Err(self.usage("close <bridge>"));
        };
        let bridge = self.my_bridge(bridge)?;
        let Some(rooms) = self
            .router
            .links()
            .iter()
            .find(|l| l.bridge == bridge && !l.rooms.is_empty())
            .map(|l| l.rooms.clone())
        else {
            return Err(format!("There is no open bridge `{bridge}`."));
        };
        let mut next = self.router.clone();
        next.remove_bridge(&bridge)
            .map_err(|e| format!("Failed: {e}."))?;
        self.persist(&next, &bridge)?;
        let text = format!(
            "{} closed this bridge ({bridge}): messages are no longer relayed between its {} rooms.",
            self.name,
            rooms.len()
        );
        self.announce(&bridge, &rooms, &text);
        *self.router = next;
        self.out.links_changed = true;
        Ok(format!(
            "Closed bridge `{bridge}` ({} rooms no longer relayed).",
            rooms.len()
        ))
    }

    /// Every (bridge, rooms) the sender administers.
    fn scope(&self) -> Vec<(BridgeName, Vec<RoomRef>)> {
        self.open_bridges(|b| self.admin.is_bridge_admin(self.from, b))
    }

    /// Every open bridge that `keep` keeps, with its rooms.
    fn open_bridges(&self, keep: impl Fn(&BridgeName) -> bool) -> Vec<(BridgeName, Vec<RoomRef>)> {
        self.router
            .links()
            .iter()
            .filter(|l| !l.rooms.is_empty() && keep(&l.bridge))
            .map(|l| (l.bridge.clone(), l.rooms.clone()))
            .collect()
    }

    /// Announces `text` in every room of `bridges` and sends each room the `kind` of event
    /// it makes (a kick, a ban); returns how many rooms.
    fn enforce(
        &mut self,
        bridges: &[(BridgeName, Vec<RoomRef>)],
        text: &str,
        kind: impl Fn() -> EventKind,
    ) -> usize {
        for (bridge, rooms) in bridges {
            self.announce(bridge, rooms, text);
            self.record(bridge, rooms, kind());
        }
        bridges.iter().map(|(_, rooms)| rooms.len()).sum()
    }

    /// Parses `<user> [reason words...]`.
    fn target(&self, args: &[&str], usage: &str) -> Result<(Sender, Option<String>), String> {
        let Some((user, rest)) = args.split_first() else {
            return Err(self.usage(usage));
        };
        let (user, shown) = self.admin.parse_user(user)?;
        let reason = (!rest.is_empty()).then(|| rest.join(" "));
        Ok((Sender::new(user, shown), reason))
    }

    fn kick(&mut self, args: &[&str]) -> Result<String, String> {
        self.need_any_admin()?;
        let (target, reason) = self.target(args, "kick <user> [reason]")?;
        let scope = self.scope();
        if scope.is_empty() {
            return Err("There is no open bridge you administer.".into());
        }
        let text = format!(
            "{} kicked {} ({}){}",
            self.name,
            target.display_name,
            target.user,
            because(reason.as_deref())
        );
        let rooms_n = self.enforce(&scope, &text, || EventKind::Kick {
            target: target.clone(),
            reason: reason.clone(),
        });
        Ok(format!(
            "Kicking {} from {rooms_n} rooms in {} bridges (where the gateway has the power; \
             their puppets leave elsewhere).",
            target.user,
            scope.len()
        ))
    }

    fn ban(&mut self, args: &[&str]) -> Result<String, String> {
        self.need_global("ban")?;
        let (target, reason) = self.target(args, "ban <user> [reason]")?;
        let is_mask = NETWORKS
            .of(&target.user.network)
            .is_some_and(|n| n.is_mask(target.user.user.as_str()));
        let ns = if is_mask { BAN_MASKS } else { BANS };
        let ban = Ban {
            user: target.user.clone(),
            reason: reason.clone(),
            by: self.from.first().map(|u| u.to_string()).unwrap_or_default(),
            ts_ms: now_ms(),
            also: Vec::new(),
        };
        let value = serde_json::to_vec(&ban).map_err(|e| format!("Failed: {e}"))?;
        self.store
            .kv_put(ns, &ban_key(&target.user), &value)
            .map_err(|e| format!("Failed: the store could not save the ban ({e})."))?;
        self.admin.forget_masks();
        let text = format!(
            "{} banned {} ({}) from every bridged room{}",
            self.name,
            target.display_name,
            target.user,
            because(reason.as_deref())
        );
        let links = self.open_bridges(|_| true);
        let rooms_n = self.enforce(&links, &text, || EventKind::Ban {
            target: target.clone(),
            reason: reason.clone(),
        });
        Ok(format!(
            "Banned {}: the gateway refuses their messages, and bans them in {rooms_n} rooms of \
             {} bridges (natively where the gateway has the power on {}; their puppets leave \
             the other rooms).",
            target.user,
            links.len(),
            target.user.network
        ))
    }

    fn unban(&mut self, args: &[&str]) -> Result<String, String> {
        self.need_global("unban")?;
        let [user] = args else {
            return Err(self.usage("unban <user>"));
        };
        let (user, shown) = self.admin.parse_user(user)?;
        let key = ban_key(&user);
        let mut found = false;
        for ns in [BANS, BAN_MASKS] {
            match self.store.kv_get(ns, &key) {
                Ok(Some(_)) => {
                    found = true;
                    let removed = self.store.kv_remove(ns, &key);
                    self.admin.forget_masks();
                    removed
                        .map_err(|e| format!("Failed: the store could not lift the ban ({e})."))?;
                }
                Ok(None) => {}
                Err(e) => return Err(format!("Failed: the store could not be read ({e}).")),
            }
        }
        if !found {
            return Err(format!("{user} is not banned."));
        }
        let text = format!("{} lifted the ban on {shown} ({user}).", self.name);
        let links: Vec<(BridgeName, Vec<RoomRef>)> = self
            .router
            .links()
            .iter()
            .filter(|l| !l.rooms.is_empty())
            .map(|l| (l.bridge.clone(), l.rooms.clone()))
            .collect();
        for (bridge, rooms) in &links {
            self.announce(bridge, rooms, &text);
        }
        Ok(format!(
            "Unbanned {user}: the gateway relays their messages again (bans set natively on \
             each network are lifted there by that network's moderators)."
        ))
    }
}

/// `: <reason>` after an announcement, when a reason was given.
fn because(reason: Option<&str>) -> String {
    reason.map(|r| format!(": {r}")).unwrap_or_default()
}

#[cfg(test)]
mod ban_tests;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::gateway::initial_links;
    use junction_store::MemStore;
    use std::path::Path;

    const CONFIG: &str = r##"
[gateway]
admins = ["@root:matrix.test", "root@xmpp.test", "local/rootacct", "local/*!*@admin.host"]

[matrix]
homeserver = "http://127.0.0.1:8008"
server_name = "matrix.test"
listen = "127.0.0.1:9009"
as_token = "a"
hs_token = "h"
bot = "junction"

[xmpp]
component = "bridge.xmpp.test"
server = "127.0.0.1:5347"
secret = "s"

[irc.local]
server = "127.0.0.1:6667"
nick = "junction"

[[bridge]]
name = "lobby"
matrix = "#lobby:matrix.test"
xmpp = "lobby@conference.xmpp.test"
irc = "local/#lobby"

[[bridge]]
name = "dev"
matrix = "#dev:matrix.test"
irc = "local/#dev"
admins = ["@devlead:matrix.test"]
"##;

    fn config() -> Config {
        crate::config::parse(CONFIG, "bridges.toml", Path::new("/tmp"), &|_| None).unwrap()
    }

    pub(super) fn setup() -> (Admin, Router, MemStore, Config) {
        let c = config();
        let store = MemStore::new();
        let router = Router::new(initial_links(&c.bridges, &store).unwrap()).unwrap();
        (Admin::new(&c), router, store, c)
    }

    pub(super) fn root() -> Vec<UserRef> {
        vec![UserRef::new("matrix", "@root:matrix.test")]
    }
    fn devlead() -> Vec<UserRef> {
        vec![UserRef::new("matrix", "@devlead:matrix.test")]
    }
    fn nobody() -> Vec<UserRef> {
        vec![
            UserRef::new("irc:local", "rootacct2"),
            UserRef::new("irc:local", "eve!e@evil.host"),
        ]
    }

    /// Checks that the command's reply begins with `start`.
    pub(super) fn replied(o: &Outcome, start: &str) {
        assert!(o.reply.starts_with(start), "{}", o.reply);
    }

    /// Checks that the command's reply says `part`.
    fn reply_has(o: &Outcome, part: &str) {
        assert!(o.reply.contains(part), "{}", o.reply);
    }

    fn notices(o: &Outcome) -> Vec<(RoomRef, String)> {
        o.deliveries
            .iter()
            .filter_map(|d| match &d.event.kind {
                EventKind::Message(m) if m.kind == MessageKind::Notice => {
                    Some((d.target.clone(), m.body.to_plain()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn help_for_anyone_and_case_insensitive_verbs() {
        let (a, mut r, s, _) = setup();
        let o = a.handle(&nobody(), "eve", "HELP", &mut r, &s);
        assert!(o.reply.contains("link <bridge> <room>"));
        assert!(s.audit_log().unwrap().is_empty(), "help is not audited");
        let o = a.handle(&root(), "root", "Bridges", &mut r, &s);
        reply_has(&o, "lobby: matrix/#lobby:matrix.test");
        assert!(o
            .reply
            .contains("dev: matrix/#dev:matrix.test, irc:local/#dev"));
    }

    #[test]
    fn strangers_are_rate_limited_and_audited_text_is_cut() {
        use crate::command_limit::{COMMAND_BURST, LOGGED_COMMAND_CHARS};
        let (a, mut r, s, _) = setup();
        for _ in 0..COMMAND_BURST {
            let o = a.handle(&nobody(), "eve", "help", &mut r, &s);
            assert!(!o.rate_limited && o.reply.contains("link <bridge> <room>"));
        }
        for _ in 0..200 {
            let o = a.handle(&nobody(), "eve", "help", &mut r, &s);
            assert!(o.rate_limited && o.reply.is_empty());
        }
        let o = a.handle(&nobody(), "eve", "close lobby", &mut r, &s);
        assert!(o.rate_limited && o.deliveries.is_empty() && !o.links_changed);
        // Admins are not limited, and their long commands are audited cut.
        let long = format!("bridges {}", "x".repeat(5000));
        for _ in 0..(2 * COMMAND_BURST) {
            let o = a.handle(&root(), "root", &long, &mut r, &s);
            assert!(!o.rate_limited);
        }
        let log = s.audit_log().unwrap();
        assert_eq!(log.len(), 2 * COMMAND_BURST as usize);
        assert!(log
            .iter()
            .all(|e| e.action.chars().count() == LOGGED_COMMAND_CHARS + 1));
        assert!(log.iter().all(|e| e.actor == "matrix/@root:matrix.test"));
    }

    #[test]
    fn identities_match_accounts_masks_and_jids() {
        let (a, _, _, _) = setup();
        assert!(a.is_global(&[UserRef::new("xmpp", "Root@XMPP.test")]));
        assert!(a.is_global(&[UserRef::new("irc:local", "RootAcct")]));
        assert!(a.is_global(&[UserRef::new("irc:local", "anyone!x@admin.host")]));
        assert!(!a.is_global(&[UserRef::new("irc:local", "anyone!x@other.host")]));
        assert!(
            !a.is_global(&[UserRef::new("irc:other", "rootacct")]),
            "another network"
        );
        assert!(
            !a.is_global(&[UserRef::new("irc:local", "root")]),
            "a nick is not an account"
        );
        assert!(!a.is_global(&devlead()));
        assert!(a.is_bridge_admin(&devlead(), &"dev".into()));
        assert!(!a.is_bridge_admin(&devlead(), &"lobby".into()));
    }

    #[test]
    fn link_and_unlink_change_router_store_and_announce() {
        let (a, mut r, s, _) = setup();
        let o = a.handle(&root(), "root", "link lobby local/#Lobby2", &mut r, &s);
        replied(&o, "Linked irc:local/#Lobby2");
        assert!(o.links_changed);
        let new = RoomRef::new("irc:local", "#Lobby2");
        assert_eq!(r.link_of(&new).unwrap().bridge, BridgeName::from("lobby"));
        let stored = s.links().unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].rooms.len(), 4);
        let n = notices(&o);
        assert_eq!(n.len(), 4, "every room, the new one too");
        assert!(n
            .iter()
            .all(|(_, t)| t.contains("root linked irc:local/#Lobby2")));
        assert!(o.deliveries.iter().all(|d| {
            d.event.sender.user.network.is_gateway()
                && d.event.origin == RoomRef::new(NetworkId::gateway(), "lobby")
        }));

        let o = a.handle(&root(), "root", "link lobby local/#lobby2", &mut r, &s);
        reply_has(&o, "already linked");
        assert!(!o.links_changed);
        let o = a.handle(&root(), "root", "link dev #lobby:matrix.test", &mut r, &s);
        reply_has(&o, "already in bridge `lobby`");

        let o = a.handle(&root(), "root", "unlink lobby local/#LOBBY2", &mut r, &s);
        replied(&o, "Unlinked irc:local/#Lobby2");
        assert_eq!(notices(&o).len(), 4, "the leaving room hears it too");
        assert!(r.link_of(&new).is_none());
        assert_eq!(s.links().unwrap()[0].rooms.len(), 3);
        let o = a.handle(&root(), "root", "unlink lobby local/#nope", &mut r, &s);
        reply_has(&o, "not linked");
        let o = a.handle(&root(), "root", "link lobby", &mut r, &s);
        assert_eq!(o.reply, "Usage: link <bridge> <room>");
        let o = a.handle(&root(), "root", "link lobby lobby", &mut r, &s);
        reply_has(&o, "is not a room");
        let o = a.handle(&root(), "root", "link lobby other/#x", &mut r, &s);
        reply_has(&o, "no IRC network `other`");
        assert_eq!(s.audit_log().unwrap().len(), 8);
    }

    #[test]
    fn a_new_bridge_from_rooms_on_three_networks() {
        let (a, mut r, s, _) = setup();
        for room in [
            "#new:matrix.test",
            "new@conference.xmpp.test",
            "irc:local/#new",
        ] {
            let o = a.handle(&root(), "root", &format!("link fresh {room}"), &mut r, &s);
            replied(&o, "Linked");
        }
        let link = r
            .links()
            .iter()
            .find(|l| l.bridge.as_str() == "fresh")
            .unwrap();
        assert_eq!(
            link.rooms,
            vec![
                RoomRef::new("matrix", "#new:matrix.test"),
                RoomRef::new("xmpp", "new@conference.xmpp.test"),
                RoomRef::new("irc:local", "#new"),
            ]
        );
    }

    #[test]
    fn bridge_admins_only_on_their_bridges_and_non_admins_nowhere() {
        let (a, mut r, s, _) = setup();
        let o = a.handle(&devlead(), "dl", "link dev local/#dev2", &mut r, &s);
        replied(&o, "Linked");
        let o = a.handle(&devlead(), "dl", "link lobby local/#x", &mut r, &s);
        assert_eq!(o.reply, "Refused: you are not an admin of bridge `lobby`.");
        assert!(o.deliveries.is_empty() && !o.links_changed);
        let o = a.handle(&devlead(), "dl", "close lobby", &mut r, &s);
        assert!(o.reply.starts_with("Refused"));
        let o = a.handle(&devlead(), "dl", "ban local/troll", &mut r, &s);
        replied(&o, "Refused: only gateway admins");
        let o = a.handle(&devlead(), "dl", "status", &mut r, &s);
        replied(&o, "Bridges: 2");
        for cmd in [
            "bridges",
            "status",
            "link lobby local/#x",
            "unlink lobby local/#lobby",
            "close lobby",
            "kick local/troll",
            "ban local/troll",
            "unban local/troll",
        ] {
            let o = a.handle(&nobody(), "eve", cmd, &mut r, &s);
            assert!(o.reply.starts_with("Refused"), "{cmd}: {}", o.reply);
            assert!(o.deliveries.is_empty() && !o.links_changed, "{cmd}");
        }
        assert!(a
            .handle(&nobody(), "eve", "frobnicate", &mut r, &s)
            .reply
            .starts_with("Unknown command"));
        let log = s.audit_log().unwrap();
        let refusals: Vec<_> = log
            .iter()
            .filter(|e| e.outcome.starts_with("refused"))
            .collect();
        // The bridge admin's three refusals are audited; the stranger's nine commands are
        // not (only admins' commands go to the audit trail).
        assert_eq!(refusals.len(), 3);
        assert_eq!(
            refusals.last().unwrap().actor,
            "matrix/@devlead:matrix.test"
        );
        assert!(log.iter().all(|e| e.actor != "irc:local/rootacct2"));
        assert!(s
            .links()
            .unwrap()
            .iter()
            .all(|l| l.bridge.as_str() == "dev"));
        assert_eq!(
            r.link_of(&RoomRef::new("irc:local", "#lobby"))
                .unwrap()
                .bridge
                .as_str(),
            "lobby"
        );
    }

    #[test]
    fn kick_of_a_bridge_admin_reaches_only_their_bridge() {
        let (a, mut r, s, _) = setup();
        let o = a.handle(&devlead(), "dl", "kick local/troll flooding", &mut r, &s);
        replied(&o, "Kicking irc:local/troll from 2 rooms");
        let kicks: Vec<&Delivery> = o
            .deliveries
            .iter()
            .filter(|d| matches!(d.event.kind, EventKind::Kick { .. }))
            .collect();
        assert_eq!(kicks.len(), 2);
        assert!(kicks.iter().all(|d| d.bridge.as_str() == "dev"));
        let EventKind::Kick { target, reason } = &kicks[0].event.kind else {
            unreachable!()
        };
        assert_eq!(target.user, UserRef::new("irc:local", "troll"));
        assert_eq!(target.display_name, "troll");
        assert_eq!(reason.as_deref(), Some("flooding"));
        assert!(notices(&o)
            .iter()
            .all(|(_, t)| t == "dl kicked troll (irc:local/troll): flooding"));
    }

    #[test]
    fn ban_persists_refuses_messages_and_reaches_every_room() {
        let (a, mut r, s, _) = setup();
        let troll = UserRef::new("irc:local", "Troll");
        assert!(!a.is_banned(&s, &troll));
        let o = a.handle(
            &root(),
            "root",
            "ban irc:local/troll spam and abuse",
            &mut r,
            &s,
        );
        replied(&o, "Banned irc:local/troll");
        let bans: Vec<&Delivery> = o
            .deliveries
            .iter()
            .filter(|d| matches!(d.event.kind, EventKind::Ban { .. }))
            .collect();
        assert_eq!(bans.len(), 5, "3 lobby rooms + 2 dev rooms");
        assert_eq!(notices(&o).len(), 5);
        let EventKind::Ban { reason, .. } = &bans[0].event.kind else {
            unreachable!()
        };
        assert_eq!(reason.as_deref(), Some("spam and abuse"));
        assert!(bans.iter().all(|d| d.event.sender == gateway_sender()));
        // A new Admin over the same store sees the ban (it is in the store, not in memory).
        let again = Admin::new(&config());
        assert!(
            again.is_banned(&s, &troll),
            "IRC nicks compare case-insensitively"
        );
        assert!(!again.is_banned(&s, &UserRef::new("irc:local", "troll2")));
        assert!(!again.is_banned(&s, &UserRef::new("matrix", "troll")));

        a.handle(&root(), "root", "ban local/*!*@evil.host", &mut r, &s);
        assert!(a.is_banned(&s, &UserRef::new("irc:local", "x!y@EVIL.host")));
        assert!(!a.is_banned(&s, &UserRef::new("irc:local", "x!y@good.host")));
        a.handle(&root(), "root", "ban local/spammer!*@*", &mut r, &s);
        assert!(
            a.is_banned(&s, &UserRef::new("irc:local", "spammer")),
            "mask by nick"
        );
        a.handle(&root(), "root", "ban @evil:matrix.test", &mut r, &s);
        assert!(a.is_banned(&s, &UserRef::new("matrix", "@evil:matrix.test")));
        a.handle(&root(), "root", "ban Evil@XMPP.test", &mut r, &s);
        assert!(a.is_banned(&s, &UserRef::new("xmpp", "evil@xmpp.test")));
        // An occupant whose real JID the XMPP adapter put on the sender is banned with that JID.
        let occupant = |id: &str, real: &str| {
            Sender::new(UserRef::new("xmpp", id), "occupant").with_address(real)
        };
        let evil = occupant("occupant:abc", "Evil@xmpp.test");
        assert_eq!(a.check_ban(&s, &evil), BanCheck::Banned);
        let good = occupant("occupant:other", "good@xmpp.test");
        assert_eq!(a.check_ban(&s, &good), BanCheck::Clear);
        assert!(!a.is_banned(&s, &UserRef::new("xmpp", "occupant:other")));
        let o = a.handle(&root(), "root", "status", &mut r, &s);
        assert!(o.reply.ends_with("Bans: 5"), "{}", o.reply);

        let o = a.handle(&root(), "root", "unban local/TROLL", &mut r, &s);
        replied(&o, "Unbanned irc:local/TROLL");
        assert_eq!(notices(&o).len(), 5);
        assert!(!a.is_banned(&s, &troll));
        let o = a.handle(&root(), "root", "unban local/troll", &mut r, &s);
        assert_eq!(o.reply, "irc:local/troll is not banned.");
        let o = a.handle(&root(), "root", "unban local/*!*@evil.host", &mut r, &s);
        assert!(o.reply.starts_with("Unbanned"));
        assert!(!a.is_banned(&s, &UserRef::new("irc:local", "x!y@evil.host")));
    }

    #[test]
    fn close_announces_first_then_stays_closed_after_restart() {
        let (a, mut r, s, c) = setup();
        let o = a.handle(&root(), "root", "close lobby", &mut r, &s);
        assert!(
            o.reply.starts_with("Closed bridge `lobby` (3 rooms"),
            "{}",
            o.reply
        );
        assert!(o.links_changed);
        let n = notices(&o);
        assert_eq!(n.len(), 3);
        assert!(n[0].1.contains("root closed this bridge (lobby)"));
        assert!(r
            .link_of(&RoomRef::new("matrix", "#lobby:matrix.test"))
            .is_none());
        let o = a.handle(&root(), "root", "close lobby", &mut r, &s);
        assert_eq!(o.reply, "There is no open bridge `lobby`.");

        // A restart: the config still names lobby, the store's tombstone keeps it closed.
        let r2 = Router::new(initial_links(&c.bridges, &s).unwrap()).unwrap();
        assert!(r2
            .link_of(&RoomRef::new("matrix", "#lobby:matrix.test"))
            .is_none());
        assert!(r2
            .link_of(&RoomRef::new("matrix", "#dev:matrix.test"))
            .is_some());

        // A closed config bridge can be linked again, and that survives a restart too.
        let mut r2 = r2;
        let a2 = Admin::new(&c);
        a2.handle(
            &root(),
            "root",
            "link lobby #lobby:matrix.test",
            &mut r2,
            &s,
        );
        a2.handle(&root(), "root", "link lobby local/#lobby", &mut r2, &s);
        let r3 = Router::new(initial_links(&c.bridges, &s).unwrap()).unwrap();
        let l = r3.link_of(&RoomRef::new("irc:local", "#lobby")).unwrap();
        assert_eq!(l.rooms.len(), 2);
    }

    #[test]
    fn a_link_made_survives_a_restart() {
        let (a, mut r, s, c) = setup();
        a.handle(
            &root(),
            "root",
            "link dev dev@conference.xmpp.test",
            &mut r,
            &s,
        );
        a.handle(&root(), "root", "link side #side:matrix.test", &mut r, &s);
        a.handle(&root(), "root", "link side local/#side", &mut r, &s);
        a.handle(
            &root(),
            "root",
            "unlink lobby lobby@conference.xmpp.test",
            &mut r,
            &s,
        );
        let r2 = Router::new(initial_links(&c.bridges, &s).unwrap()).unwrap();
        let room = |n: &str, x: &str| RoomRef::new(n, x);
        let bridge = |rr: &RoomRef| r2.link_of(rr).map(|l| l.bridge.to_string());
        assert_eq!(
            bridge(&room("xmpp", "dev@conference.xmpp.test")).as_deref(),
            Some("dev")
        );
        assert_eq!(bridge(&room("irc:local", "#side")).as_deref(), Some("side"));
        assert_eq!(bridge(&room("xmpp", "lobby@conference.xmpp.test")), None);
        assert_eq!(
            bridge(&room("irc:local", "#lobby")).as_deref(),
            Some("lobby")
        );
        let mut r2 = r2;
        // Unlinking every room of a runtime bridge forgets it.
        a.handle(
            &root(),
            "root",
            "unlink side #side:matrix.test",
            &mut r2,
            &s,
        );
        a.handle(&root(), "root", "unlink side local/#side", &mut r2, &s);
        assert!(s
            .links()
            .unwrap()
            .iter()
            .all(|l| l.bridge.as_str() != "side"));
    }

    #[test]
    fn status_shows_links_networks_and_outboxes() {
        let (mut a, mut r, s, _) = setup();
        a.set_status_source(Box::new(|| {
            vec![
                (NetworkId::new("matrix"), "connected".into()),
                (
                    NetworkId::new("irc:local"),
                    "degraded (reconnecting)".into(),
                ),
            ]
        }));
        let o = a.handle(&root(), "root", "status", &mut r, &s);
        assert_eq!(
            o.reply,
            "Bridges: 2 (5 rooms).\n\
             matrix: connected, 0 waiting in the outbox\n\
             xmpp: state unknown, 0 waiting in the outbox\n\
             irc:local: degraded (reconnecting), 0 waiting in the outbox\n\
             Bans: 0"
        );
    }

    #[test]
    fn user_and_room_syntax() {
        let (a, _, _, _) = setup();
        assert_eq!(
            a.parse_user("local/bob!b@h").unwrap(),
            (UserRef::new("irc:local", "bob!b@h"), "bob".into())
        );
        assert!(a.parse_user("bob").is_err());
        assert!(a.parse_user("local/bob!b").is_err());
        assert!(a.parse_user("@bob").is_err());
        assert!(a
            .parse_room("#lobby")
            .unwrap_err()
            .contains("network/#channel"));
        assert_eq!(
            a.parse_room("!abc:matrix.test").unwrap(),
            RoomRef::new("matrix", "!abc:matrix.test")
        );
        // Mask globbing: `junction_irc::network::tests::masks_glob`.
    }

    #[test]
    fn what_is_not_a_room_or_user_names_every_network() {
        let (a, _, _, _) = setup();
        assert_eq!(
            a.parse_room("lobby").unwrap_err(),
            "`lobby` is not a room: write `#alias:server`, `!id:server`, `room@muc.domain` or \
             `network/#channel`"
        );
        assert_eq!(
            a.parse_room("#lobby").unwrap_err(),
            "`#lobby` is not a room: write an IRC channel as `network/#channel`, a Matrix room \
             as `#alias:server`"
        );
        assert_eq!(
            a.parse_room("#lobby:").unwrap_err(),
            "`#lobby:` is not a room: write a Matrix alias `#name:server` or id `!id:server`"
        );
        assert_eq!(
            a.parse_room("local/#a b").unwrap_err(),
            "`local/#a b` is not a room: not an IRC channel name"
        );
        assert_eq!(
            a.parse_room("lobby@muc/x").unwrap_err(),
            "`lobby@muc/x` is not a room: a bare JID has no `/resource`"
        );
        assert_eq!(
            a.parse_user("bob").unwrap_err(),
            "`bob` is not a user: write `@user:server` (Matrix), `user@domain` (XMPP) or \
             `network/nick` (IRC)."
        );
        assert_eq!(
            a.parse_user("other/bob").unwrap_err(),
            "There is no IRC network `other` in the config."
        );
        assert!(HELP.ends_with(
            "\nRooms: #alias:server, !id:server, room@muc.domain, network/#channel.\n\
             Users: @user:server, user@domain, network/nick (IRC; or network/nick!user@host)."
        ));
    }
}
