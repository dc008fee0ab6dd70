//! [`MatrixAdapter`] and its run loop: the state the server, the deliveries and the startup
//! share ([`Shared`]), the linked rooms (resolved, created or joined; refused when
//! encrypted), and the loop that applies link changes, puts each delivery in its room's
//! queue and renders one per room at a time.

use crate::config::MatrixConfig;
use crate::connection::{self, Client};
use crate::ids;
use crate::lifecycle;
use crate::media::MediaProxy;
use crate::outbound::{self, DeliverError};
use crate::puppets::{lock, Ghosts};
use crate::queues::{enqueue, Flight, Flights, KeyLocks, RoomQueues};
use crate::server;
use junction_core::{
    Adapter, AdapterContext, AdapterError, AdapterStore, Command, Delivered, Delivery, Inbound,
    NetworkId, NetworkStatus, PuppetLimits, RoomId, UserRef,
};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How many display names [`Shared::names`] keeps.
const MAX_NAMES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(10_000) {
    Some(n) => n,
    None => unreachable!(),
};
/// The adapter's store table of rooms where the bot takes commands: room id → who invited
/// it (`matrix/command_rooms` in the store).
pub const COMMAND_ROOMS_TABLE: &str = "command_rooms";

/// Most attachments fetched (and uploaded) from other networks' http(s) URLs at once: each
/// may be up to [`connection::MAX_MEDIA_BYTES`] in memory.
pub const MAX_ATTACHMENT_FETCHES: usize = 4;

/// Most Matrix rooms whose deliveries are rendered at once. Each room's deliveries go out one
/// at a time and in order; a slow room (an attachment from a server that answers slowly,
/// sends retried with backoff) holds one of these places and leaves the others to the other
/// rooms, which take turns for them.
pub const MAX_ROOMS_AT_ONCE: usize = 8;

/// Most deliveries of what people said waiting for one Matrix room (minutes of a busy room
/// whose sends fail for now); one more is given up (counted as a failed delivery, logged once
/// per burst). Moderation and the gateway's own words are never given up.
pub const MAX_QUEUED_PER_ROOM: usize = 1000;

/// How long deliveries still being rendered at shutdown may take to finish (those that do
/// not stay unanswered in the outbox and are sent again on the next start).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The Matrix adapter.
pub struct MatrixAdapter {
    config: MatrixConfig,
    media_base: Option<String>,
    private_media: bool,
    admins: HashSet<String>,
    ghost_limits: PuppetLimits,
    cap_refusals: Option<Arc<std::sync::atomic::AtomicU64>>,
    /// `data_dir` and the pickle key, when the gateway's device takes part in encrypted
    /// rooms.
    encryption: Option<(std::path::PathBuf, Option<junction_core::Secret>)>,
    undecryptable: Option<Arc<std::sync::atomic::AtomicU64>>,
    undecryptable_after: Duration,
    media_hash_mismatches: Option<Arc<std::sync::atomic::AtomicU64>>,
    parallel_senders: usize,
}

/// Most messages one room may serve at once (`[matrix] parallel_senders`).
pub const MAX_PARALLEL_SENDERS: usize = 8;

impl MatrixAdapter {
    /// An adapter for the configured homeserver. It keeps its state in the store handle of
    /// the context it is run with.
    pub fn new(config: MatrixConfig) -> Self {
        Self {
            config,
            media_base: None,
            private_media: false,
            admins: HashSet::new(),
            ghost_limits: PuppetLimits::default(),
            cap_refusals: None,
            encryption: None,
            undecryptable: None,
            undecryptable_after: crate::config::DEFAULT_UNDECRYPTABLE_AFTER,
            media_hash_mismatches: None,
            parallel_senders: 1,
        }
    }

    /// Lets one room send up to `n` messages at once, each from a different person and all
    /// said within a quarter of a second of each other (`[matrix] parallel_senders`; 1, the
    /// default, keeps every room's order exactly; at most [`MAX_PARALLEL_SENDERS`]). A busy
    /// room then carries more: the homeserver works on the sends together. Such lines may
    /// swap places in the room, since the homeserver orders concurrent sends as it stores
    /// them.
    pub fn with_parallel_senders(mut self, n: usize) -> Self {
        self.parallel_senders = n.clamp(1, MAX_PARALLEL_SENDERS);
        self
    }

    /// Gives the bot a device of its own that takes part in encrypted rooms (`[matrix]
    /// encryption = true`), its crypto store in `data_dir` under `pickle_key` (None: a key
    /// generated and kept there).
    pub fn with_encryption(
        mut self,
        data_dir: &std::path::Path,
        pickle_key: Option<junction_core::Secret>,
    ) -> Self {
        self.encryption = Some((data_dir.to_path_buf(), pickle_key));
        self
    }

    /// Counts, in `count`, the encrypted events that could not be bridged (their keys never
    /// arrived, or they could not be decrypted), each told to its sender (for `/metrics`).
    pub fn with_undecryptable(mut self, count: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.undecryptable = Some(count);
        self
    }

    /// Sets how long an encrypted event waits for its keys before its sender is told it was
    /// not bridged (`[matrix] undecryptable_after`, two minutes by default).
    pub fn with_undecryptable_after(mut self, wait: Duration) -> Self {
        self.undecryptable_after = wait;
        self
    }

    /// Counts, in `count`, the encrypted files the media proxy refused because their
    /// ciphertext did not match its hash (for `/metrics`).
    pub fn with_media_hash_mismatches(mut self, count: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.media_hash_mismatches = Some(count);
        self
    }

    /// Sets the ghosts' lifecycle bounds (`[matrix] max_ghosts`,
    /// `ghost_idle_timeout_seconds`; see [`PuppetLimits`] for the defaults).
    pub fn with_ghost_limits(mut self, limits: PuppetLimits) -> Self {
        self.ghost_limits = limits;
        self
    }

    /// Counts, in `refusals`, every time the cap of ghosts refused someone a ghost (for
    /// `/metrics`).
    pub fn with_cap_refusals(mut self, refusals: Arc<std::sync::atomic::AtomicU64>) -> Self {
        self.cap_refusals = Some(refusals);
        self
    }

    /// Lets attachments from loopback and private addresses be fetched and uploaded. Off by
    /// default: a remote user naming such a URL would otherwise make the gateway read an
    /// internal service and publish the answer (server-side request forgery). For tests whose
    /// file server runs on 127.0.0.1.
    pub fn allow_private_media_urls(mut self) -> Self {
        self.private_media = true;
        self
    }

    /// Sets the Matrix users (`@user:server`) who are gateway or bridge admins. The bot
    /// accepts an invite only from one of them (others are declined with a reason), and in a
    /// command room one of them did not open it answers only them.
    pub fn with_admins(mut self, admins: impl IntoIterator<Item = String>) -> Self {
        self.admins = admins.into_iter().collect();
        self
    }

    /// Sets the public base URL of the media proxy (default `http://<listen>`), for when the
    /// other networks reach the gateway under another name.
    pub fn with_media_base(mut self, base: impl Into<String>) -> Self {
        self.media_base = Some(base.into());
        self
    }
}

/// Linked rooms: the name in the link ↔ the Matrix room id.
#[derive(Default)]
struct Rooms {
    /// The rooms the links name on this network.
    wanted: Vec<RoomId>,
    /// Rooms that can never be linked as they are (encrypted, foreign free alias...).
    refused: HashSet<RoomId>,
    by_id: HashMap<String, RoomId>,
    by_link: HashMap<RoomId, String>,
}

/// Why a room could not be linked.
#[derive(Debug)]
struct RoomError {
    /// Trying later may work (homeserver unreachable or failing).
    transient: bool,
    why: String,
}

impl RoomError {
    fn refused(why: impl Into<String>) -> Self {
        Self {
            transient: false,
            why: why.into(),
        }
    }

    fn client(context: &str) -> impl FnOnce(connection::ClientError) -> Self + '_ {
        move |e| Self {
            transient: e.is_transient(),
            why: format!("{context}: {e}"),
        }
    }
}

/// State shared by the server, the delivery loop and the startup.
pub(crate) struct Shared {
    pub(crate) config: MatrixConfig,
    pub(crate) network: NetworkId,
    /// The adapter's part of the store (its tables, its puppets, transaction keys).
    pub(crate) store: Arc<dyn AdapterStore>,
    pub(crate) client: Client,
    pub(crate) ghosts: Ghosts,
    /// The cap of ghosts in rooms and their activity.
    pub(crate) lifecycle: lifecycle::Lifecycle,
    pub(crate) media: Arc<MediaProxy>,
    pub(crate) bot_id: String,
    rooms: Mutex<Rooms>,
    /// (room id, user id) → display name, the most recently used [`MAX_NAMES`] (keyed by
    /// what senders choose, so bounded; a name evicted is read again from the homeserver).
    pub(crate) names: Mutex<lru::LruCache<(String, String), String>>,
    pub(crate) inbound: mpsc::Sender<Inbound>,
    /// Admin commands to the gateway.
    pub(crate) commands: mpsc::Sender<Command>,
    /// Rooms the bot joined on an invite to take commands (direct chats) → who invited it,
    /// kept in the store's [`COMMAND_ROOMS_TABLE`].
    pub(crate) command_rooms: Mutex<HashMap<String, String>>,
    /// Direct chats with ghosts the bot is known to be in (with encryption on, so that its
    /// device gets their room keys).
    pub(crate) bot_in_private: Mutex<HashSet<String>>,
    /// The Matrix users who are gateway or bridge admins: the bot accepts invites only from
    /// them, and in a command room not opened by one it answers only them.
    pub(crate) admins: HashSet<String>,
    /// The last homeserver failure, cleared by the next success (for the status).
    pub(crate) homeserver_error: Mutex<Option<String>>,
    /// Linked room → why its deliveries fail for now (for the status), cleared when one of
    /// them goes through or is given up.
    delivery_errors: Mutex<HashMap<RoomId, String>>,
    pub(crate) txn_lock: tokio::sync::Mutex<()>,
    /// Held while linked rooms are resolved, so the delivery of several rooms and the link
    /// changes never resolve (or create) the same room twice at once.
    opening: tokio::sync::Mutex<()>,
    /// One lock per Matrix room id, held by the delivery being rendered there and by a ghost
    /// leaving the room (idle, or making way under the cap): a ghost never leaves a room in
    /// the middle of saying something there.
    pub(crate) room_locks: KeyLocks,
    /// Attachments may come from non-public addresses (tests only).
    pub(crate) private_media: bool,
    /// Attachment fetches from other networks' URLs at once ([`MAX_ATTACHMENT_FETCHES`]); a
    /// delivery with an attachment waits for a slot.
    pub(crate) fetches: tokio::sync::Semaphore,
    /// True once the linked rooms are resolved: transactions wait for it, since an event of
    /// a room not resolved yet would otherwise be taken for one of an unlinked room and lost.
    pub(crate) ready: tokio::sync::watch::Sender<bool>,
    /// True when the gateway's device takes part in encrypted rooms.
    pub(crate) encryption: bool,
    /// The gateway's device, once set up (with `encryption` only).
    pub(crate) crypto: std::sync::OnceLock<Arc<crate::crypto::Crypto>>,
    /// Wakes the retry of encrypted events held for their keys (keys arrived).
    pub(crate) keys_arrived: tokio::sync::Notify,
    /// Encrypted events that could not be bridged (told to their senders).
    pub(crate) undecryptable: Arc<std::sync::atomic::AtomicU64>,
    /// How long an encrypted event waits for its keys before its sender is told.
    pub(crate) undecryptable_after: Duration,
    /// Encrypted files the media proxy refused: their ciphertext did not match its hash.
    pub(crate) media_hash_mismatches: Arc<std::sync::atomic::AtomicU64>,
    /// Asks for a read-back of the linked rooms soon (see `catchup`).
    pub(crate) catch_up: tokio::sync::Notify,
}

impl Shared {
    pub(crate) fn new(
        config: MatrixConfig,
        network: NetworkId,
        store: Arc<dyn AdapterStore>,
        client: Client,
        media_base: &str,
        inbound: mpsc::Sender<Inbound>,
        commands: mpsc::Sender<Command>,
    ) -> Result<Self, AdapterError> {
        let media = MediaProxy::load(store.clone(), media_base)
            .map_err(|e| AdapterError::Fatal(format!("media proxy key: {e}")))?;
        let ghosts = Ghosts::new(
            client.clone(),
            store.clone(),
            &config.user_prefix,
            &config.server_name,
            config.origin_marks,
        );
        let command_rooms = match store.scan(COMMAND_ROOMS_TABLE) {
            Ok(rows) => rows
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "Could not read the command rooms.");
                HashMap::new()
            }
        };
        Ok(Self {
            bot_id: format!("@{}:{}", config.bot, config.server_name),
            config,
            network,
            store,
            client,
            ghosts,
            lifecycle: lifecycle::Lifecycle::new(PuppetLimits::default(), Arc::default()),
            media: Arc::new(media),
            rooms: Mutex::new(Rooms::default()),
            names: Mutex::new(lru::LruCache::new(MAX_NAMES)),
            inbound,
            commands,
            command_rooms: Mutex::new(command_rooms),
            bot_in_private: Mutex::new(HashSet::new()),
            admins: HashSet::new(),
            private_media: false,
            fetches: tokio::sync::Semaphore::new(MAX_ATTACHMENT_FETCHES),
            homeserver_error: Mutex::new(None),
            delivery_errors: Mutex::new(HashMap::new()),
            txn_lock: tokio::sync::Mutex::new(()),
            opening: tokio::sync::Mutex::new(()),
            room_locks: KeyLocks::default(),
            ready: tokio::sync::watch::Sender::new(false),
            encryption: false,
            crypto: std::sync::OnceLock::new(),
            keys_arrived: tokio::sync::Notify::new(),
            undecryptable: Arc::default(),
            undecryptable_after: crate::config::DEFAULT_UNDECRYPTABLE_AFTER,
            media_hash_mismatches: Arc::default(),
            catch_up: tokio::sync::Notify::new(),
        })
    }

    /// The Matrix room id of a linked room.
    pub(crate) fn room_id(&self, link: &RoomId) -> Option<String> {
        let linked = lock(&self.rooms).by_link.get(link).cloned();
        linked.or_else(|| crate::private::room_of(self, link))
    }

    /// The linked room (as written in the link) behind a Matrix room id.
    pub(crate) fn linked(&self, room_id: &str) -> Option<RoomId> {
        let linked = lock(&self.rooms).by_id.get(room_id).cloned();
        linked.or_else(|| crate::private::conversation_of(self, room_id))
    }

    /// Every linked room resolved so far, with its Matrix room id.
    pub(crate) fn linked_rooms(&self) -> Vec<(RoomId, String)> {
        let rooms = lock(&self.rooms);
        rooms
            .by_link
            .iter()
            .map(|(link, id)| (link.clone(), id.clone()))
            .collect()
    }

    pub(crate) fn add_room(&self, link: RoomId, room_id: String) {
        let mut rooms = lock(&self.rooms);
        rooms.by_id.insert(room_id.clone(), link.clone());
        rooms.by_link.insert(link, room_id);
    }

    /// The gateway's device, when encryption is on and it is set up.
    pub(crate) fn crypto(&self) -> Option<&Arc<crate::crypto::Crypto>> {
        self.crypto.get()
    }

    /// Unlinks a room for good (it turned encryption on).
    pub(crate) fn refuse_room(&self, room_id: &str) {
        let mut rooms = lock(&self.rooms);
        if let Some(link) = rooms.by_id.remove(room_id) {
            rooms.by_link.remove(&link);
            rooms.refused.insert(link);
        }
    }

    /// Linked rooms that are neither resolved nor refused.
    pub(crate) fn unresolved(&self) -> Vec<RoomId> {
        let rooms = lock(&self.rooms);
        rooms
            .wanted
            .iter()
            .filter(|l| !rooms.by_link.contains_key(*l) && !rooms.refused.contains(*l))
            .cloned()
            .collect()
    }

    /// True when the room is linked but can never be used as it is.
    pub(crate) fn is_refused(&self, link: &RoomId) -> bool {
        let rooms = lock(&self.rooms);
        rooms.refused.contains(link) || !rooms.wanted.contains(link)
    }

    /// The Matrix user a mention of `user` pills: a Matrix user themself, or the ghost of a
    /// person from another network once that ghost exists; `None` (a plain name) otherwise.
    pub(crate) fn pill_target(&self, user: &UserRef) -> Option<String> {
        if user.network == self.network {
            return user
                .user
                .as_str()
                .starts_with('@')
                .then(|| user.user.to_string());
        }
        if user.network.is_gateway() {
            return None;
        }
        let ghost = self.matrix_user_of(user);
        self.ghosts.is_registered(&ghost).then_some(ghost)
    }

    /// The Matrix user who stands for `user`: the user itself when on Matrix, else its ghost.
    pub(crate) fn matrix_user_of(&self, user: &UserRef) -> String {
        if user.network == self.network {
            user.user.to_string()
        } else {
            ids::ghost_user_id(
                &self.config.user_prefix,
                &user.network,
                user.user.as_str(),
                &self.config.server_name,
            )
        }
    }
}

impl Adapter for MatrixAdapter {
    async fn run(self, mut cx: AdapterContext) -> Result<(), AdapterError> {
        let config = self.config;
        let client = Client::new(
            &config.homeserver,
            config.as_token.clone(),
            cx.shutdown.clone(),
        );
        let media_base = self
            .media_base
            .unwrap_or_else(|| format!("http://{}", config.listen));
        let listen = config.listen;
        let mut sh = Shared::new(
            config,
            cx.network.clone(),
            cx.store.clone(),
            client,
            &media_base,
            cx.inbound.clone(),
            cx.commands.clone(),
        )?;
        sh.private_media = self.private_media;
        sh.admins = self.admins;
        sh.lifecycle =
            lifecycle::Lifecycle::new(self.ghost_limits, self.cap_refusals.unwrap_or_default());
        sh.encryption = self.encryption.is_some();
        if let Some(count) = self.undecryptable {
            sh.undecryptable = count;
        }
        sh.undecryptable_after = self.undecryptable_after;
        if let Some(count) = self.media_hash_mismatches {
            sh.media_hash_mismatches = count;
        }
        let sh = Arc::new(sh);
        let status = cx.status;

        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| AdapterError::Config(format!("can not listen on {listen}: {e}")))?;
        tracing::info!(%listen, "Matrix appservice listening.");
        let app = server::router(sh.clone());
        // Our own token for the server: the adapter may stop without the gateway stopping.
        let server_stop = cx.shutdown.child_token();
        let stop = server_stop.clone();
        let server = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "The appservice server stopped.");
            }
        });

        // The device before any transaction is taken (they wait for `ready`), and with the
        // listener up: the homeserver's pushes wait for it rather than fail, since what a
        // failed push carried for the device (to-device messages) is not sent again.
        if let Some((data_dir, key)) = &self.encryption {
            if !crate::crypto::set_up(&sh, data_dir, key.as_ref(), &cx.shutdown).await {
                server_stop.cancel();
                return Ok(());
            }
            tokio::spawn(crate::crypto::retry_loop(sh.clone(), cx.shutdown.clone()));
        }
        let rooms = cx.rooms.borrow_and_update().clone();
        sync_rooms(&sh, &rooms).await;
        sh.ready.send_replace(true);
        // Ping once ready: the homeserver then sends what it queued while we were away.
        startup(&sh).await;
        report(&sh, &status);
        let catch_up = tokio::spawn(crate::catchup::run(sh.clone(), cx.shutdown.child_token()));

        let mut rooms_open = true;
        let mut sweep = tokio::time::interval(sh.lifecycle.sweep_every());
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Each linked room's deliveries in their own queue, served by their own task.
        let status = Arc::new(status);
        let mut queues = RoomQueues::new(MAX_QUEUED_PER_ROOM, MAX_ROOMS_AT_ONCE);
        let mut serving = tokio::task::JoinSet::new();
        let mut flights = Flights::default();
        let parallel = self.parallel_senders;
        loop {
            tokio::select! {
                // Link changes before deliveries: a delivery may be for a room just linked.
                biased;
                () = cx.shutdown.cancelled() => break,
                _ = sweep.tick() => {
                    lifecycle::leave_idle(&sh);
                    let ghosts = sh.ghosts.count();
                    cx.puppets.send_if_modified(|n| std::mem::replace(n, ghosts) != ghosts);
                }
                changed = cx.rooms.changed(), if rooms_open => {
                    if changed.is_err() {
                        rooms_open = false;
                        continue;
                    }
                    let rooms = cx.rooms.borrow_and_update().clone();
                    sync_rooms(&sh, &rooms).await;
                    report(&sh, &status);
                }
                Some(served) = serving.join_next_with_id(), if !serving.is_empty() => {
                    let id = match served {
                        Ok((id, ())) => id,
                        Err(e) => {
                            // Unanswered, the delivery stays in the outbox for the next start.
                            tracing::error!(error = %e, "A Matrix delivery task failed.");
                            e.id()
                        }
                    };
                    if let Some(room) = flights.finished(id) {
                        queues.done(&room);
                    }
                    report(&sh, &status);
                    let ghosts = sh.ghosts.count();
                    cx.puppets.send_if_modified(|n| std::mem::replace(n, ghosts) != ghosts);
                }
                d = cx.deliveries.recv() => match d {
                    Some(d) => enqueue(&mut queues, d, &cx.delivered),
                    None => break,
                },
            }
            let spawn = |serving: &mut tokio::task::JoinSet<()>, d: Delivery, alone: bool| {
                serving
                    .spawn(handle_delivery(
                        sh.clone(),
                        d,
                        alone,
                        cx.delivered.clone(),
                        cx.shutdown.clone(),
                        status.clone(),
                    ))
                    .id()
            };
            while let Some((room, d)) = queues.start_next() {
                let flight = Flight::of(&d, parallel);
                let id = spawn(&mut serving, d, flight.is_none());
                flights.started(id, room, flight);
            }
            if parallel > 1 {
                // Rooms sending messages that may have company take more beside them.
                for room in flights.open_rooms() {
                    let mut next = None;
                    while let Some(d) = queues.start_more(&room, |d| {
                        next = Flight::of(d, parallel);
                        next.as_ref()
                            .is_some_and(|f| flights.admits(&room, f, parallel))
                    }) {
                        tracing::debug!(%room, outbox = d.outbox_id, "A message goes to Matrix beside others of its room.");
                        let id = spawn(&mut serving, d, false);
                        flights.started(id, room.clone(), next.take());
                    }
                }
            }
        }
        server_stop.cancel();
        catch_up.abort();
        // Deliveries being rendered may finish their call and answer (backoffs stop at
        // shutdown); those cut off stay unanswered in the outbox and are sent again, with
        // the same transaction ids, on the next start.
        let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
            while serving.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            serving.abort_all();
        }
        // A transaction still waiting for its acks is cut off: unanswered, the homeserver
        // sends it again later, so nothing is lost.
        let mut server = server;
        if tokio::time::timeout(Duration::from_secs(10), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        Ok(())
    }
}

/// Makes sure the bot exists and pings the homeserver (so transactions queued while we were
/// away flow at once). Neither is fatal: the homeserver may start after us.
async fn startup(sh: &Shared) {
    if let Err(e) = sh.client.register(&sh.config.bot).await {
        tracing::debug!(error = %e, "Bot registration answered an error (it usually exists already).");
    }
    let txn = format!("startup-{}", rand::random::<u32>());
    match sh.client.ping(&sh.config.id, &txn).await {
        Ok(ms) => {
            tracing::info!(duration_ms = ms, "The homeserver reaches the appservice.");
            *lock(&sh.homeserver_error) = None;
        }
        Err(e) => {
            tracing::warn!(
                error = %e,
                "Homeserver ping failed; transactions may be delayed until it retries."
            );
            *lock(&sh.homeserver_error) = Some(format!("homeserver ping failed: {e}"));
        }
    }
}

/// The adapter's state for `/health`: connected when the homeserver answers and every
/// linked room is joined; degraded when some rooms are not (or the homeserver fails while
/// rooms are joined); down when the homeserver fails and no room is joined.
fn health(sh: &Shared) -> NetworkStatus {
    let (linked, missing) = {
        let rooms = lock(&sh.rooms);
        let missing: Vec<String> = rooms
            .wanted
            .iter()
            .filter(|l| !rooms.by_link.contains_key(*l))
            .map(|l| l.to_string())
            .collect();
        (rooms.by_link.len(), missing)
    };
    // A failing room's deliveries show as long as they fail, whatever the others do.
    let error = lock(&sh.homeserver_error).clone().or_else(|| {
        lock(&sh.delivery_errors)
            .iter()
            .min_by_key(|(room, _)| *room)
            .map(|(_, why)| why.clone())
    });
    match error {
        Some(e) if linked == 0 => NetworkStatus::Down(e),
        Some(e) => NetworkStatus::Degraded(e),
        None if missing.is_empty() => NetworkStatus::Connected,
        None => NetworkStatus::Degraded(format!("rooms not linked: {}", missing.join(", "))),
    }
}

/// Publishes the state when it changed.
fn report(sh: &Shared, status: &watch::Sender<NetworkStatus>) {
    let now = health(sh);
    status.send_if_modified(|s| {
        if *s == now {
            false
        } else {
            *s = now;
            true
        }
    });
}

/// Takes the linked rooms as they are now: forgets unlinked ones, resolves new ones.
async fn sync_rooms(sh: &Shared, rooms: &[RoomId]) {
    {
        let mut known = lock(&sh.rooms);
        known.wanted = rooms.to_vec();
        known.refused.retain(|l| rooms.contains(l));
        let gone: Vec<RoomId> = known
            .by_link
            .keys()
            .filter(|l| !rooms.contains(l))
            .cloned()
            .collect();
        for link in gone {
            if let Some(id) = known.by_link.remove(&link) {
                known.by_id.remove(&id);
            }
        }
    }
    ensure_rooms(sh).await;
}

/// Resolves, creates or joins every linked room not resolved yet. Rooms that can never work
/// are refused (and reported once); the others are tried again on the next call.
pub(crate) async fn ensure_rooms(sh: &Shared) {
    let _one = sh.opening.lock().await;
    for link in sh.unresolved() {
        match open_room(sh, &link).await {
            Ok(room_id) => {
                tracing::info!(room = %link, %room_id, "Matrix room linked.");
                lifecycle::adopt(sh, &room_id).await;
                sh.add_room(link, room_id);
            }
            Err(e) if e.transient => {
                tracing::warn!(room = %link, "Matrix room not linked yet, will retry: {}", e.why)
            }
            Err(e) => {
                tracing::error!(room = %link, "Matrix room can not be linked: {}", e.why);
                lock(&sh.rooms).refused.insert(link);
            }
        }
    }
}

/// Resolves a linked room to its id (creating a free alias on our server) and joins the bot.
async fn open_room(sh: &Shared, link: &RoomId) -> Result<String, RoomError> {
    let name = link.as_str();
    let room_id = if let Some(alias) = name.strip_prefix('#') {
        let resolved = sh
            .client
            .resolve_alias(name)
            .await
            .map_err(RoomError::client("resolving the alias"))?;
        match resolved {
            Some(id) => id,
            None => {
                let Some((local, server)) = alias.split_once(':') else {
                    return Err(RoomError::refused("not an alias (#name:server)"));
                };
                if server != sh.config.server_name {
                    return Err(RoomError::refused(format!(
                        "the alias does not exist and {server} is not our server"
                    )));
                }
                match sh.client.create_public_room(local, local).await {
                    Ok(id) => {
                        tracing::info!(room = %link, room_id = %id, "Created a public room for a free alias.");
                        id
                    }
                    // Someone took the alias meanwhile: use theirs.
                    Err(e) if e.errcode() == Some("M_ROOM_IN_USE") => sh
                        .client
                        .resolve_alias(name)
                        .await
                        .map_err(RoomError::client("resolving the alias"))?
                        .ok_or(RoomError {
                            transient: true,
                            why: "the alias vanished while creating the room".into(),
                        })?,
                    // Synapse lets an appservice create only aliases in its namespaces.
                    Err(e) if e.errcode() == Some("M_EXCLUSIVE") => {
                        return Err(RoomError::refused(format!(
                            "the alias is free but outside the appservice's alias namespaces; \
                             list it in the registration (a non-exclusive alias namespace) or \
                             create the room by hand ({e})"
                        )))
                    }
                    Err(e) => return Err(RoomError::client("creating the room")(e)),
                }
            }
        }
    } else if name.starts_with('!') {
        name.to_owned()
    } else {
        return Err(RoomError::refused(
            "neither an alias (#...) nor a room id (!...)",
        ));
    };
    let room_id = sh
        .client
        .join(&room_id, None)
        .await
        .map_err(RoomError::client("the bot could not join"))?;
    let encryption = sh
        .client
        .state(&room_id, "m.room.encryption", "")
        .await
        .map_err(RoomError::client("reading the room's encryption state"))?;
    if encryption.is_some() && !sh.encryption {
        return Err(RoomError::refused(
            "the room is encrypted; the gateway would be an invisible reader, so it refuses to link it",
        ));
    }
    Ok(room_id)
}

/// Renders one delivery and answers it exactly once; transient failures are retried with
/// backoff until they pass or the gateway shuts down (then it stays unanswered in the outbox).
/// Runs as its room's one task at a time (`alone`), or beside other messages of the room with
/// `parallel_senders` ([`queues`]).
async fn handle_delivery(
    sh: Arc<Shared>,
    d: Delivery,
    alone: bool,
    delivered: mpsc::UnboundedSender<Delivered>,
    shutdown: CancellationToken,
    status: Arc<watch::Sender<NetworkStatus>>,
) {
    let mut pause = Duration::from_millis(500);
    let outcome = loop {
        let result = outbound::deliver(&sh, &d, alone).await;
        if !matches!(result, Err(DeliverError::Transient(_))) {
            *lock(&sh.homeserver_error) = None;
            lock(&sh.delivery_errors).remove(&d.target.room);
        }
        match result {
            Ok(ids) => break Ok(ids),
            Err(DeliverError::Permanent(why)) => {
                tracing::warn!(outbox = d.outbox_id, room = %d.target, kind = d.event.kind.name(), "Delivery given up: {why}");
                break Err(why);
            }
            Err(DeliverError::Transient(why)) => {
                if shutdown.is_cancelled() {
                    return;
                }
                tracing::warn!(outbox = d.outbox_id, room = %d.target, "Delivery failed for now, retrying: {why}");
                lock(&sh.delivery_errors)
                    .insert(d.target.room.clone(), format!("deliveries failing: {why}"));
                report(&sh, &status);
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    };
    if delivered.send(d.answer(outcome)).is_err() {
        tracing::debug!("The gateway stopped taking delivery answers.");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{Hmac, Mac};
    use junction_core::Secret;
    use junction_store::{MemStore, Store};

    fn config() -> MatrixConfig {
        MatrixConfig {
            // Nothing listens on the discard port.
            homeserver: "http://127.0.0.1:9".into(),
            server_name: "matrix.test".into(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            as_token: Secret::new("as-secret"),
            hs_token: Secret::new("hs-secret"),
            bot: "junction".into(),
            id: "junction".into(),
            user_prefix: "_junction_".into(),
            origin_marks: true,
        }
    }

    /// Earlier versions wrote the adapter's rows straight into the store as `matrix/<table>`,
    /// which is where the handle of network `matrix` keeps its table `<table>`: an upgraded
    /// gateway reads every one of them, and nothing has to move.
    #[test]
    fn rows_written_under_the_old_table_names_are_read_through_the_handle() {
        let store = Arc::new(MemStore::new());
        let put = |table: &str, key: &str, value: &[u8]| {
            store.kv_put(table, key, value).expect("kv");
        };
        let key = [7u8; 32];
        let bob = "@_junction_irc_local_bob:matrix.test";
        put("matrix/media", "hmac_key", &key);
        put("matrix/ghosts", bob, b"bob[i]");
        put("matrix/command_rooms", "!dm", b"@alice:matrix.test");
        put("matrix/reactions_in", "$r", b"$t\nok");
        put("matrix/reactions_out", "!room $t @g ok", b"$mine");
        put("matrix/event_media", "$img", b"mxc://hs/abc");
        put("matrix/media_redacted", "hs/gone", b"1");
        store.mark_txn("junction:41:abc").expect("txn");

        let network = NetworkId::new("matrix");
        let handle = junction_store::scoped(store.clone(), network.clone());
        let client = Client::new(
            "http://127.0.0.1:9",
            Secret::new("as"),
            CancellationToken::new(),
        );
        let (inbound, _inbound) = mpsc::channel(1);
        let (commands, _commands) = mpsc::channel(1);
        let sh = Shared::new(
            config(),
            network,
            handle,
            client,
            "http://gw",
            inbound,
            commands,
        )
        .expect("shared");

        assert!(sh.ghosts.is_registered(bob));
        assert_eq!(
            lock(&sh.command_rooms).get("!dm").map(String::as_str),
            Some("@alice:matrix.test")
        );
        // The signing key was read, not made again: a link signed with it verifies.
        let exp = junction_core::clock::now_ms() / 1000 + 3600;
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
        mac.update(format!("hs/abc\n{exp}").as_bytes());
        let sig = hex::encode(mac.finalize().into_bytes());
        assert!(sh.media.verify("hs", "abc", exp, &sig));
        assert!(sh.media.is_redacted("hs", "gone"));
        sh.media.redacted("$img");
        assert!(sh.media.is_redacted("hs", "abc"));
        assert_eq!(
            sh.store.get(server::REACTIONS_IN_TABLE, "$r").expect("kv"),
            Some(b"$t\nok".to_vec())
        );
        assert_eq!(
            sh.store
                .get(outbound::REACTIONS_OUT_TABLE, "!room $t @g ok")
                .expect("kv"),
            Some(b"$mine".to_vec())
        );
        assert!(sh.store.txn_done("junction:41:abc").expect("txn"));
        // What the handle writes lands under the same names.
        sh.store
            .put(COMMAND_ROOMS_TABLE, "!new", b"@carol:matrix.test")
            .expect("kv");
        assert_eq!(
            store.kv_get("matrix/command_rooms", "!new").expect("kv"),
            Some(b"@carol:matrix.test".to_vec())
        );
    }
}
