//! What a network crate gives the gateway, so that the gateway itself knows no network.
//!
//! Each network crate (`junction-matrix`, `junction-xmpp`, `junction-irc`) implements
//! [`Network`] once, in its `network.rs`, and the gateway lists the implementations in one
//! place (`crates/junction/wiring.rs`) as a [`Networks`] registry. Through it the gateway
//!
//! - reads and checks the network's section of `bridges.toml` ([`Network::read`], [`Raw`],
//!   with the shared checks of [`check`]) into [`Section`]s, one per instance (`matrix`,
//!   `irc:local`...);
//! - reads the network's rooms and users as people write them in `[[bridge]]`, `admins` and
//!   admin commands, and compares them as the network does ([`Networks::room`],
//!   [`Networks::user`], [`Network::fold_room`]...);
//! - matches the gateway's bans and admin identities against the network's senders
//!   ([`Network::identity_matches`], [`Network::ban_covers`]...);
//! - starts the network's adapter ([`Network::adapter`]), prints what the network needs
//!   registered on its server ([`Network::registration`]) and runs `junction doctor`'s checks
//!   of it ([`Network::doctor`]).
//!
//! Every method but `key`, `read`, `syntax`, the readers of rooms and users and
//! `adapter` has a default that suits a network whose ids compare exactly.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod check;
mod registry;
mod single;

pub use check::{Checker, Diag, Str};
pub use registry::Networks;
pub use single::Single;

use junction_core::doctor::Findings;
use junction_core::{
    Adapter, AdapterContext, AdapterError, Link, NetworkId, RoomRef, Sender, UserRef,
};
use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// One kind of network, as the gateway sees it. See the crate's documentation.
pub trait Network: Send + Sync + 'static {
    /// The key of its section in `bridges.toml` (`matrix` for `[matrix]`, `irc` for
    /// `[irc.<name>]`), which is also the key of its rooms in a `[[bridge]]`.
    fn key(&self) -> &'static str;

    /// Reads its section from the whole file, as TOML: unknown keys and wrongly typed values
    /// are errors (with their place in the file), every value keeps its place for
    /// [`Raw::validate`]. `Ok(None)` when the file has no such section. Keys of other
    /// sections are ignored. After an error the gateway blanks the offending key and calls
    /// this again, so that every error is found.
    fn read(&self, file: &str) -> Result<Option<Box<dyn Raw>>, toml::de::Error>;

    /// True when `network` is one of its instances (`irc:local` for `irc`); by default, the
    /// one instance named by the key ([`Single`]).
    fn owns(&self, network: &NetworkId) -> bool {
        Single(self.key()).owns(network)
    }

    /// How people write its rooms and users, for help texts and error messages.
    fn syntax(&self) -> &'static Syntax;

    /// One room of a `[[bridge]]`, written under this network's key. `declared` holds every
    /// network instance the file declares (valid or not). `Err` is the whole message, e.g.
    /// ``"`#alias` is not a Matrix room: ..."``.
    fn config_room(&self, room: &str, declared: &[NetworkId]) -> Result<RoomRef, String>;

    /// An admin identity of `[gateway] admins` or a bridge's `admins`, if written like one of
    /// this network's: only identities that cannot be taken by someone else (no bare IRC
    /// nick). A [`Refusal::Syntax`] makes the gateway's message listing every form.
    fn config_admin(&self, text: &str, declared: &[NetworkId]) -> Claim<UserRef>;

    /// A room as typed in an admin command (`link lobby local/#dev`), if written like one of
    /// this network's; `configured` holds the gateway's network instances.
    fn room(&self, text: &str, configured: &[NetworkId]) -> Claim<RoomRef>;

    /// When `text`, claimed by another network and refused there, looks like one of this
    /// network's rooms written without what tells it apart: the advice, worded to follow
    /// "write " (IRC: ``"an IRC channel as `network/#channel`"`` for `#lobby`).
    fn room_hint(&self, text: &str) -> Option<&'static str> {
        let _ = text;
        None
    }

    /// A user as typed in an admin command (`ban local/troll`), if written like one of this
    /// network's: the user, and the name to show for them.
    fn user(&self, text: &str, configured: &[NetworkId]) -> Claim<(UserRef, String)>;

    /// The form in which two spellings of one room compare equal (IRC case mapping, JIDs
    /// case-insensitively); as written by default.
    fn fold_room(&self, room: &str) -> String {
        room.to_owned()
    }

    /// The form in which two spellings of one user id compare equal; as written by default.
    fn fold_user(&self, user: &str) -> String {
        user.to_owned()
    }

    /// True when the configured admin identity `admin` is the sender identity `who` (both
    /// of this network): the same folded id by default; on IRC also a `nick!user@host` mask
    /// matching the sender's.
    fn identity_matches(&self, admin: &str, who: &str) -> bool {
        self.fold_user(admin) == self.fold_user(who)
    }

    /// True when a user id is a pattern rather than one person (an IRC `nick!user@host`
    /// mask); bans on such ids are kept apart from exact ones.
    fn is_mask(&self, user: &str) -> bool {
        let _ = user;
        false
    }

    /// True when bans on this network are matched rather than looked up: every ban of the
    /// network is then kept in memory and tried with [`Network::ban_covers`], and what
    /// [`Network::ban_learns`] says of a banned sender is added to their ban. False (the
    /// default): a ban is found by the sender's folded id, or by [`Network::ban_alias`].
    fn ban_patterns(&self) -> bool {
        false
    }

    /// True when the ban on `ban` (with what it learnt since, `also`) covers `sender`, a
    /// sender of this network. Called only when [`Network::ban_patterns`].
    fn ban_covers(&self, ban: &str, also: &[String], sender: &Sender) -> bool {
        let _ = also;
        self.fold_user(ban) == self.fold_user(sender.user.user.as_str())
    }

    /// What a ban that covers `sender` should learn of them, so that they cannot evade it by
    /// a new name (IRC: their `*!user@host` and account). Called only when
    /// [`Network::ban_patterns`].
    fn ban_learns(&self, sender: &Sender) -> Vec<String> {
        let _ = sender;
        Vec::new()
    }

    /// The id a ban may name `sender` by besides the one their events carry (XMPP: the real
    /// JID the adapter puts on an occupant as their address, where the room shows it).
    fn ban_alias(&self, sender: &Sender) -> Option<String> {
        let _ = sender;
        None
    }

    /// The id a person's events carry, for an identity the network vouches for them by in a
    /// command ([`junction_core::Command::from`]): the same by default; on IRC the nick of a
    /// `nick!user@host` mask, and the account id of a services account.
    fn sender_id(&self, vouched: &str) -> String {
        vouched.to_owned()
    }

    /// The longest `[gateway] public_url` (which the links to long texts begin with) the
    /// network carries well, and why, as it ends the sentence `at most <n> …` (IRC: such a
    /// link goes on a line next to text); none by default.
    fn public_url_limit(&self) -> Option<(usize, &'static str)> {
        None
    }

    /// Builds the adapter of one of its configured instances (`section` came from this
    /// network's [`Raw::validate`]). `Err` says why it cannot run.
    fn adapter(&self, section: &Section, build: &Build<'_>) -> Result<BoxAdapter, String>;

    /// True when the network has something to register on its server, which
    /// `junction registration` prints ([`Network::registration`]).
    fn registers(&self) -> bool {
        false
    }

    /// What `junction registration` prints for one of its configured instances (Matrix: the
    /// appservice registration YAML), given the config's links.
    fn registration(&self, section: &Section, links: &[Link]) -> Option<String> {
        let _ = (section, links);
        None
    }

    /// Runs `junction doctor`'s checks of one of its configured instances against its
    /// servers, adding one finding per check to `out` (none by default).
    fn doctor<'a>(
        &'a self,
        section: &'a Section,
        checkup: Checkup<'a>,
        out: Out<'a, '_>,
    ) -> Checks<'a> {
        let _ = (section, checkup, out);
        Box::pin(async {})
    }
}

/// Where [`Network::doctor`] adds its findings.
pub type Out<'a, 'r> = &'a mut Findings<'r>;

/// The checks [`Network::doctor`] runs.
pub type Checks<'a> = Pin<Box<dyn Future<Output = ()> + 'a>>;

/// What `junction doctor` tells a network's checks besides its settings.
#[derive(Clone, Copy, Debug)]
pub struct Checkup<'a> {
    /// The instance's rooms that the config's bridges link, each once.
    pub rooms: &'a [String],
    /// Every network instance the config sets up (`matrix`, `xmpp`, `irc:local`...), in the
    /// config's order: whose people the gateway shows on this one.
    pub networks: &'a [NetworkId],
    /// True when a gateway runs from the config's `data_dir` on this host (it holds the
    /// store): checks that would disturb its connections are left out.
    pub gateway_running: bool,
}

/// Reads the top-level table `key` from the whole file, as TOML (what [`Network::read`]
/// starts from): `Ok(None)` when the file has none; the other tables are skipped unread.
/// Errors in the table keep their place in the file.
pub fn read_section<T: serde::de::DeserializeOwned>(
    file: &str,
    key: &str,
) -> Result<Option<T>, toml::de::Error> {
    use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor};
    use std::marker::PhantomData;

    struct Pick<'k, T>(&'k str, PhantomData<T>);
    impl<'de, T: serde::Deserialize<'de>> DeserializeSeed<'de> for Pick<'_, T> {
        type Value = Option<T>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<T>, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de, T: serde::Deserialize<'de>> Visitor<'de> for Pick<'_, T> {
        type Value = Option<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a TOML document")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
            let mut found = None;
            while let Some(k) = map.next_key::<String>()? {
                if k == self.0 {
                    found = Some(map.next_value()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
    }
    Pick(key, PhantomData).deserialize(toml::Deserializer::new(file))
}

/// A network's section as read from the file, before it is checked.
pub trait Raw {
    /// The network instances the section declares, whether or not they are valid (`irc:local`
    /// for `[irc.local]`): rooms and admins are checked against these.
    fn declared(&self) -> Vec<NetworkId>;

    /// Checks every value, reporting each problem to `check`. The configured instances, in
    /// the order the gateway lists them; `None` when something was wrong.
    fn validate(&self, check: &mut Checker<'_>) -> Option<Vec<Section>>;
}

/// How a network answers for a room or user someone wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim<T> {
    /// Not written like this network's.
    No,
    /// Written as only this network writes them (`network/#channel`, `@user:server`): this
    /// answer stands. When two networks are sure, the first in the registry wins.
    Sure(Result<T, Refusal>),
    /// Written like this network's, unless a network is sure of it (an XMPP address is
    /// anything with an `@`).
    Maybe(Result<T, Refusal>),
}

/// Why a network refuses a room or user it claims.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not written right: why, worded to follow "`text` is not a room: " (or "a user: ").
    Syntax(String),
    /// The whole answer (``"There is no IRC network `x` in the config."``).
    Said(String),
}

/// How people write a network's rooms and users (without backquotes).
#[derive(Debug)]
pub struct Syntax {
    /// The network's name for people: `Matrix`.
    pub name: &'static str,
    /// Its rooms: `#alias:server`, `!id:server`.
    pub rooms: &'static [&'static str],
    /// Its users in commands: `@user:server`.
    pub user: &'static str,
    /// Other forms of users in commands, for help (IRC: `network/nick!user@host`).
    pub more_users: &'static [&'static str],
    /// Its admin identities in `bridges.toml`: `network/account`, `network/nick!user@host`.
    pub admins: &'static [&'static str],
}

/// A network's checked settings, any type the network chose (its `*Config`).
pub trait SectionConfig: Any + fmt::Debug + Send + Sync {
    /// Itself, to be downcast to the concrete type.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any + fmt::Debug + Send + Sync> SectionConfig for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// One configured network instance: its id and its checked settings.
#[derive(Clone, Debug)]
pub struct Section {
    /// The instance: `matrix`, `xmpp`, `irc:local`...
    pub network: NetworkId,
    config: Arc<dyn SectionConfig>,
}

impl Section {
    /// The instance `network` with its settings.
    pub fn new(network: NetworkId, config: impl SectionConfig) -> Self {
        Self {
            network,
            config: Arc::new(config),
        }
    }

    /// The settings, when they are a `T`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        // Through the trait object: `Arc<dyn SectionConfig>` is itself a `SectionConfig`.
        let config: &dyn SectionConfig = self.config.as_ref();
        config.as_any().downcast_ref()
    }
}

/// What the gateway hands a network to build one adapter with (the rest comes with the
/// adapter's [`AdapterContext`] when it runs).
pub struct Build<'a> {
    /// The admins (the gateway's and every bridge's) that are users of this instance.
    pub admins: &'a [UserRef],
    /// True when the gateway keeps the whole text of a message too long for a network and
    /// links it ([`AdapterContext::pastes`]); false when it serves no public pages.
    pub pastes: bool,
    /// Shows a counter the adapter bumps in `/metrics`, as errors of the given kind on this
    /// instance.
    pub follow: &'a dyn Fn(&'static str, Arc<AtomicU64>),
    /// The gateway's `data_dir`, where an adapter may keep files of its own (Matrix: its
    /// crypto store).
    pub data_dir: &'a std::path::Path,
}

impl Build<'_> {
    /// A new counter shown in `/metrics` as errors of `kind` on this instance.
    pub fn counter(&self, kind: &'static str) -> Arc<AtomicU64> {
        let count = Arc::new(AtomicU64::new(0));
        (self.follow)(kind, count.clone());
        count
    }
}

/// The future an adapter runs as.
type Running = Pin<Box<dyn Future<Output = Result<(), AdapterError>> + Send>>;

/// [`Adapter::run`] behind a box, so that adapters of every network have one type.
trait RunBoxed: Send {
    fn run_boxed(self: Box<Self>, cx: AdapterContext) -> Running;
}

impl<A: Adapter> RunBoxed for A {
    fn run_boxed(self: Box<Self>, cx: AdapterContext) -> Running {
        Box::pin((*self).run(cx))
    }
}

/// Any network's adapter.
pub struct BoxAdapter(Box<dyn RunBoxed>);

impl BoxAdapter {
    /// Boxes `adapter`.
    pub fn new(adapter: impl Adapter) -> Self {
        Self(Box::new(adapter))
    }
}

impl Adapter for BoxAdapter {
    fn run(self, cx: AdapterContext) -> impl Future<Output = Result<(), AdapterError>> + Send {
        self.0.run_boxed(cx)
    }
}

impl fmt::Debug for BoxAdapter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BoxAdapter")
    }
}

impl fmt::Debug for dyn Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Network({})", self.key())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Settings(u8);

    #[test]
    fn a_section_is_read_from_the_whole_file_with_its_place() {
        #[derive(Debug, serde::Deserialize, PartialEq)]
        struct Solo {
            n: u8,
        }
        let file = "[other]\nx = [1, \"two\"]\n\n[solo]\nn = 3\n";
        let solo: Option<toml::Spanned<Solo>> = read_section(file, "solo").unwrap();
        let solo = solo.unwrap();
        assert_eq!(solo.get_ref(), &Solo { n: 3 });
        assert_eq!(&file[solo.span()], "[solo]\nn = 3");
        assert_eq!(read_section::<Solo>(file, "none").unwrap(), None);
        let e = read_section::<Solo>("[solo]\nn = \"x\"\n", "solo").unwrap_err();
        assert_eq!(e.span(), Some(11..14), "{e}");
    }

    #[test]
    fn sections_give_back_their_settings() {
        let s = Section::new(NetworkId::new("x"), Settings(7));
        assert_eq!(s.get::<Settings>(), Some(&Settings(7)));
        assert_eq!(s.get::<String>(), None);
        assert!(format!("{s:?}").contains("Settings(7)"));
    }

    struct Quiet;

    impl Adapter for Quiet {
        async fn run(self, cx: AdapterContext) -> Result<(), AdapterError> {
            cx.shutdown.cancelled().await;
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_boxed_adapter_runs_its_adapter() {
        let store = junction_store::scoped(
            Arc::new(junction_store::MemStore::new()),
            NetworkId::new("x"),
        );
        let (inbound, _) = tokio::sync::mpsc::channel(1);
        let (_, deliveries) = tokio::sync::mpsc::channel(1);
        let (delivered, _) = tokio::sync::mpsc::unbounded_channel();
        let (_, rooms) = tokio::sync::watch::channel(Vec::new());
        let stop = tokio_util::sync::CancellationToken::new();
        let cx =
            AdapterContext::standalone(store, inbound, deliveries, delivered, rooms, stop.clone());
        stop.cancel();
        assert!(BoxAdapter::new(Quiet).run(cx).await.is_ok());
    }
}
