//! PostgreSQL backend: one table per kind of row, in the schema the connection's
//! `search_path` names first (made if missing), migrated at open under an advisory lock.
//!
//! [`Store`] is synchronous and is called from the gateway's async tasks, so this backend
//! uses the blocking `postgres` client on a thread of its own: that client runs a small
//! runtime of its own, which must not be entered from inside the gateway's runtime. Each
//! call hands a closure to that thread and waits for its answer, as a sled call waits for
//! the disk. A lost connection is made again on the next call.

use crate::dump::Own;
use crate::{
    encode_row, outbox_rows, AuditEntry, Dropped, Recorded, Result, Row, Store, StoreError,
};
use junction_core::clock::now_ms;
use junction_core::router::{Link, Planned};
use junction_core::{
    BridgeName, Delivered, Delivery, Event, EventId, MessageId, NetworkId, RoomRef, UserRef,
};
use postgres::{Client, NoTls, Transaction};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

#[path = "pg_export.rs"]
mod export;

/// The advisory lock taken (for one transaction) while migrating a schema.
const MIGRATION_LOCK: i64 = 0x6a75_6e63_0001;

/// The schema's versions, in order: migration `i` brings a schema at version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE by_remote (
    network text NOT NULL, room text NOT NULL, remote text NOT NULL, event text NOT NULL,
    PRIMARY KEY (network, room, remote));
CREATE INDEX by_remote_event ON by_remote (event);
CREATE TABLE by_event (
    event text NOT NULL, network text NOT NULL, room text NOT NULL, ids text[] NOT NULL,
    PRIMARY KEY (event, network, room));
-- One row per recorded event: when, its sender (messages), whether a private conversation
-- left it. A row whose map rows the private prune removed stays until `prune_before`.
CREATE TABLE events (
    event text PRIMARY KEY, stamp bigint NOT NULL, sender_network text, sender_user text,
    private boolean NOT NULL DEFAULT false);
CREATE INDEX events_stamp ON events (stamp);
CREATE INDEX events_private ON events (stamp) WHERE private;
CREATE SEQUENCE outbox_ids;
CREATE TABLE outbox (
    network text NOT NULL, id bigint NOT NULL, row bytea NOT NULL, PRIMARY KEY (network, id));
CREATE TABLE quarantine (tbl text NOT NULL, k text NOT NULL, v bytea NOT NULL);
CREATE TABLE txns (k text PRIMARY KEY, stamp bigint NOT NULL);
CREATE INDEX txns_stamp ON txns (stamp);
CREATE TABLE puppets (
    network text NOT NULL, user_network text NOT NULL, user_id text NOT NULL,
    identity text NOT NULL, PRIMARY KEY (network, user_network, user_id));
CREATE TABLE owners (
    network text NOT NULL, identity text NOT NULL, user_network text NOT NULL,
    user_id text NOT NULL, PRIMARY KEY (network, identity));
CREATE TABLE links (bridge text PRIMARY KEY, link bytea NOT NULL);
CREATE TABLE cursors (
    network text NOT NULL, room text NOT NULL, cursor text NOT NULL, PRIMARY KEY (network, room));
CREATE TABLE kv (
    ns text NOT NULL, k text NOT NULL, v bytea NOT NULL, stamp bigint,
    private boolean NOT NULL DEFAULT false, PRIMARY KEY (ns, k));
CREATE INDEX kv_stamp ON kv (stamp) WHERE stamp IS NOT NULL;
CREATE TABLE audit (
    id bigserial PRIMARY KEY, ts bigint NOT NULL, actor text NOT NULL, action text NOT NULL,
    outcome text NOT NULL);
"#];

type Job = Box<dyn FnOnce(&mut Conn) + Send>;

/// The connection thread's state: the client, made again when lost.
struct Conn {
    config: postgres::Config,
    client: Option<Client>,
    /// Set once this connection's session holds the store's active lock
    /// ([`PgStore::try_become_active`]); a lost connection then loses the lock, and every
    /// later call fails rather than write beside another gateway.
    active: Arc<std::sync::atomic::AtomicU8>,
}

impl Conn {
    /// Connects, migrates the schema, and sees that later connections find it first.
    fn open(config: postgres::Config) -> Result<(Self, String)> {
        let mut conn = Conn {
            client: Some(connect(&config)?),
            config,
            active: Arc::new(std::sync::atomic::AtomicU8::new(WAITING)),
        };
        let schema = migrate(conn.client()?)?;
        let path = format!("{},public", ident(&schema));
        let escaped = path.replace(' ', "\\ ");
        let options = match conn.config.get_options() {
            Some(o) => format!("{o} -c search_path={escaped}"),
            None => format!("-c search_path={escaped}"),
        };
        conn.config.options(&options);
        conn.client()?
            .batch_execute(&format!("SET search_path TO {path}"))
            .map_err(be)?;
        Ok((conn, schema))
    }

    fn client(&mut self) -> Result<&mut Client> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            if self.active.load(Ordering::Relaxed) != WAITING {
                self.active.store(LOST, Ordering::Relaxed);
                return Err(StoreError::Backend(
                    "the connection holding the active lock was lost".into(),
                ));
            }
            self.client = Some(connect(&self.config)?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| StoreError::Backend("no connection".into()))
    }
}

/// Store kept in a PostgreSQL database.
pub struct PgStore {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// The connection's hold on the active lock (see [`Conn::active`]).
    active: Arc<std::sync::atomic::AtomicU8>,
    set_aside: Arc<AtomicU64>,
    schema: String,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it holds the password.
        f.debug_struct("PgStore")
            .field("schema", &self.schema)
            .finish_non_exhaustive()
    }
}

fn be(e: postgres::Error) -> StoreError {
    use std::error::Error as _;
    match e.source() {
        Some(why) => StoreError::Backend(format!("postgresql: {e}: {why}")),
        None => StoreError::Backend(format!("postgresql: {e}")),
    }
}

fn codec(e: serde_json::Error) -> StoreError {
    StoreError::Codec(e.to_string())
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Reads a `postgres://` URL; the error never repeats it (it holds the password).
fn parse_url(url: &str) -> Result<postgres::Config> {
    url.parse::<postgres::Config>()
        .map_err(|_| StoreError::Backend("not a valid postgres:// URL".into()))
}

/// Whether `url` is a PostgreSQL URL [`PgStore::open`] can use; the error never repeats it.
pub fn check_url(url: &str) -> std::result::Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err("expected a postgres:// URL".into());
    }
    let config = parse_url(url).map_err(|e| e.to_string())?;
    if config.get_hosts().is_empty() {
        return Err("the URL names no host".into());
    }
    if config.get_dbname().is_none() {
        return Err("the URL names no database".into());
    }
    Ok(())
}

fn connect(config: &postgres::Config) -> Result<Client> {
    config.connect(NoTls).map_err(be)
}

/// The first schema of `search_path` (`public` when it names none we can make).
fn first_schema(search_path: &str) -> String {
    search_path
        .split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .find(|s| !s.is_empty() && s != "$user")
        .unwrap_or_else(|| "public".to_owned())
}

/// `name` as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Brings the schema up to date; returns its name.
fn migrate(client: &mut Client) -> Result<String> {
    let path: String = client
        .query_one("SELECT current_setting('search_path')", &[])
        .map_err(be)?
        .get(0);
    let schema = first_schema(&path);
    let mut tx = client.transaction().map_err(be)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .map_err(be)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {s}; \
         CREATE TABLE IF NOT EXISTS {s}.junction_schema (version integer NOT NULL); \
         SET LOCAL search_path TO {s};",
        s = ident(&schema)
    ))
    .map_err(be)?;
    let version: i64 = tx
        .query_one(
            "SELECT coalesce(max(version), 0)::bigint FROM junction_schema",
            &[],
        )
        .map_err(be)?
        .get(0);
    let from = usize::try_from(version).unwrap_or(0);
    for (i, m) in MIGRATIONS.iter().enumerate().skip(from) {
        tx.batch_execute(m).map_err(be)?;
        let v = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute("DELETE FROM junction_schema", &[]).map_err(be)?;
        tx.execute("INSERT INTO junction_schema (version) VALUES ($1)", &[&v])
            .map_err(be)?;
        tracing::info!(schema = %schema, version = v, "Store schema migrated.");
    }
    tx.commit().map_err(be)?;
    Ok(schema)
}

impl PgStore {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, with
    /// `?options=-c%20search_path%3Dname` for a schema of one's own), makes the schema if
    /// missing and runs the migrations it lacks.
    pub fn open(url: &str) -> Result<Self> {
        let mut config = parse_url(url)?;
        if config.get_application_name().is_none() {
            config.application_name("junction");
        }
        // Connected and migrated on the connection thread too, so that opening works from
        // anywhere, an async task included.
        let (tx, rx) = mpsc::channel::<Job>();
        type Opened = (String, Arc<std::sync::atomic::AtomicU8>);
        let (opened, answer) = mpsc::sync_channel::<Result<Opened>>(1);
        std::thread::Builder::new()
            .name("junction-pg".into())
            .spawn(move || {
                let mut conn = match Conn::open(config) {
                    Ok((conn, schema)) => {
                        let _ = opened.send(Ok((schema, conn.active.clone())));
                        conn
                    }
                    Err(e) => {
                        let _ = opened.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = rx.recv() {
                    job(&mut conn);
                }
            })
            .map_err(|e| StoreError::Backend(format!("starting the postgresql thread: {e}")))?;
        let (schema, active) = answer
            .recv()
            .map_err(|_| StoreError::Backend("the postgresql thread has stopped".into()))??;
        Ok(Self {
            jobs: Mutex::new(tx),
            active,
            set_aside: Arc::new(AtomicU64::new(0)),
            schema,
        })
    }

    /// The schema the store's tables are in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Asks once for the store's active lock (one gateway at a time writes to a store; the
    /// others wait as standbys) on the store's own connection, so that a gateway that dies
    /// lets go of it only once its last write is finished; true once held. Losing that
    /// connection afterwards loses the lock: [`PgStore::lost_active`] says so and every later
    /// call fails.
    pub fn try_become_active(&self) -> Result<bool> {
        if self.active.load(Ordering::Relaxed) == HELD {
            return Ok(true);
        }
        let (active, schema) = (self.active.clone(), self.schema.clone());
        self.call(move |c| {
            let held: bool = c
                .query_one(
                    "SELECT pg_try_advisory_lock(hashtextextended('junction-active:' || $1, 0))",
                    &[&schema],
                )
                .map_err(be)?
                .get(0);
            if held {
                active.store(HELD, Ordering::Relaxed);
            }
            Ok(held)
        })
    }

    /// Whether the active lock was held and then lost with its connection.
    pub fn lost_active(&self) -> bool {
        self.active.load(Ordering::Relaxed) == LOST
    }

    /// Runs `f` on the connection thread and waits for its answer.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        Self::answer(self.submit(f)?)
    }

    /// Hands `f` to the connection thread; its answer comes on the receiver (and `f`, with
    /// what it holds, is dropped before that).
    fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R> + Send + 'static,
    ) -> Result<mpsc::Receiver<Result<R>>> {
        let (reply, answer) = mpsc::sync_channel(1);
        let job: Job = Box::new(move |conn: &mut Conn| {
            let r = conn.client().and_then(f);
            let _ = reply.send(r);
        });
        self.jobs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| StoreError::Backend("the postgresql thread has stopped".into()))?;
        Ok(answer)
    }

    /// Waits for the answer of a job handed over by [`PgStore::submit`].
    fn answer<R>(answer: mpsc::Receiver<Result<R>>) -> Result<R> {
        answer
            .recv()
            .map_err(|_| StoreError::Backend("the postgresql thread has stopped".into()))?
    }

    /// Runs `f` in one transaction on the connection thread.
    fn tx<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Transaction<'_>) -> Result<R> + Send + 'static,
    ) -> Result<R> {
        self.call(move |c| {
            let mut tx = c.transaction().map_err(be)?;
            let r = f(&mut tx)?;
            tx.commit().map_err(be)?;
            Ok(r)
        })
    }

    /// Test hook: writes raw bytes as an outbox row.
    #[cfg(test)]
    pub(crate) fn put_raw_outbox(&self, network: &NetworkId, id: u64, raw: &[u8]) {
        let (n, raw) = (network.as_str().to_owned(), raw.to_vec());
        self.call(move |c| {
            c.execute(
                "INSERT INTO outbox (network, id, row) VALUES ($1, $2, $3)",
                &[&n, &i64_of(id), &raw],
            )
            .map_err(be)
        })
        .expect("raw outbox row");
    }

    /// Test hook: how many records were set aside.
    #[cfg(test)]
    pub(crate) fn quarantined(&self) -> usize {
        self.call(|c| {
            let n: i64 = c
                .query_one("SELECT count(*) FROM quarantine", &[])
                .map_err(be)?
                .get(0);
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .expect("quarantine count")
    }
}

/// The right to be the one active gateway on a PostgreSQL store: a session advisory lock,
/// keyed by the store's schema, held on a connection of its own (so it is never lost with the
/// store's connection). A gateway that dies loses its connection, and with it the lock, at
/// once; a standby waiting in [`ActiveLock::wait`] then takes it. Dropping it lets go.
pub struct ActiveLock {
    state: Arc<std::sync::atomic::AtomicU8>,
    stop: Mutex<mpsc::Sender<()>>,
}

/// [`ActiveLock`] states.
const WAITING: u8 = 0;
const HELD: u8 = 1;
const LOST: u8 = 2;

impl std::fmt::Debug for ActiveLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActiveLock")
            .field("held", &self.is_held())
            .finish_non_exhaustive()
    }
}

impl ActiveLock {
    /// Starts asking for the lock of the store at `url` (the URL [`PgStore::open`] took), on
    /// a thread of its own, until it is held or this is dropped. A connection that fails is
    /// made again, every second.
    pub fn wait(url: &str) -> Result<Self> {
        let config = parse_url(url)?;
        let state = Arc::new(std::sync::atomic::AtomicU8::new(WAITING));
        let (stop, stopped) = mpsc::channel::<()>();
        let st = state.clone();
        std::thread::Builder::new()
            .name("junction-pg-lock".into())
            .spawn(move || hold(&config, &st, &stopped))
            .map_err(|e| StoreError::Backend(format!("starting the lock thread: {e}")))?;
        Ok(Self {
            state,
            stop: Mutex::new(stop),
        })
    }

    /// Whether this gateway holds the lock now.
    pub fn is_held(&self) -> bool {
        self.state.load(Ordering::Relaxed) == HELD
    }

    /// Whether the lock was held and then lost (its connection failed): another gateway may
    /// be active now.
    pub fn is_lost(&self) -> bool {
        self.state.load(Ordering::Relaxed) == LOST
    }
}

impl Drop for ActiveLock {
    fn drop(&mut self) {
        let _ = self.stop.lock().unwrap_or_else(|p| p.into_inner()).send(());
    }
}

/// The lock thread: asks every half second until it holds the lock, then checks its
/// connection every second; ends when told to stop (dropping the connection lets go).
fn hold(config: &postgres::Config, state: &std::sync::atomic::AtomicU8, stop: &mpsc::Receiver<()>) {
    use std::time::Duration;
    let wait = |d: Duration| !matches!(stop.recv_timeout(d), Err(mpsc::RecvTimeoutError::Timeout));
    let mut client: Option<Client> = None;
    loop {
        let c = match client.as_mut() {
            Some(c) => c,
            None => match connect(config) {
                Ok(c) => client.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot reach PostgreSQL for the active lock; trying again.");
                    if wait(Duration::from_secs(1)) {
                        return;
                    }
                    continue;
                }
            },
        };
        if state.load(Ordering::Relaxed) == HELD {
            if c.simple_query("SELECT 1").is_err() {
                tracing::error!("The connection holding the active lock failed; the lock is lost.");
                state.store(LOST, Ordering::Relaxed);
                return;
            }
            if wait(Duration::from_secs(1)) {
                return;
            }
            continue;
        }
        match c.query_one(
            "SELECT pg_try_advisory_lock(hashtextextended('junction-active:' || current_schema(), 0))",
            // The same key as `PgStore::try_become_active`'s when the URL's search_path
            // names the store's schema first.
            &[],
        ) {
            Ok(row) if row.get::<_, bool>(0) => {
                state.store(HELD, Ordering::Relaxed);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %be(e), "Asking for the active lock failed; trying again.");
                client = None;
            }
        }
        if wait(Duration::from_millis(500)) {
            return;
        }
    }
}

/// Removes the message-map rows of `events` (both directions, every part).
fn forget_map(tx: &mut Transaction<'_>, events: &[String]) -> Result<()> {
    tx.execute("DELETE FROM by_remote WHERE event = ANY($1)", &[&events])
        .map_err(be)?;
    tx.execute("DELETE FROM by_event WHERE event = ANY($1)", &[&events])
        .map_err(be)?;
    Ok(())
}

fn count(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

impl Store for PgStore {
    fn record_inbound(&self, event: &Event, planned: Vec<Planned>) -> Result<Recorded> {
        let private = crate::is_private_event(event, &planned);
        let event = event.clone();
        self.tx(move |tx| {
            let (n, r, remote) = (
                event.origin.network.as_str(),
                event.origin.room.as_str(),
                event.remote_id.as_str(),
            );
            let new = tx
                .execute(
                    "INSERT INTO by_remote (network, room, remote, event) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                    &[&n, &r, &remote, &event.id.as_str()],
                )
                .map_err(be)?;
            if new == 0 {
                return Ok(Recorded::Duplicate);
            }
            let rows = outbox_rows(&event, planned, || {
                let id: i64 = tx
                    .query_one("SELECT nextval('outbox_ids')", &[])
                    .map_err(be)?
                    .get(0);
                Ok(u64_of(id))
            })?;
            let encoded = rows.iter().map(encode_row).collect::<Result<Vec<_>>>()?;
            let sender = matches!(event.kind, junction_core::EventKind::Message(_))
                .then(|| &event.sender.user);
            tx.execute(
                "INSERT INTO events (event, stamp, sender_network, sender_user, private) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event) DO UPDATE SET \
                 stamp = excluded.stamp, sender_network = excluded.sender_network, \
                 sender_user = excluded.sender_user, private = excluded.private",
                &[
                    &event.id.as_str(),
                    &i64_of(now_ms()),
                    &sender.map(|u| u.network.as_str()),
                    &sender.map(|u| u.user.as_str()),
                    &private,
                ],
            )
            .map_err(be)?;
            tx.execute(
                "INSERT INTO by_event (event, network, room, ids) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (event, network, room) DO UPDATE SET ids = excluded.ids",
                &[&event.id.as_str(), &n, &r, &vec![remote.to_owned()]],
            )
            .map_err(be)?;
            for (row, bytes) in rows.iter().zip(encoded) {
                tx.execute(
                    "INSERT INTO outbox (network, id, row) VALUES ($1, $2, $3)",
                    &[&row.target.network.as_str(), &i64_of(row.outbox_id), &bytes],
                )
                .map_err(be)?;
            }
            Ok(Recorded::New(rows))
        })
    }

    fn record_delivered(&self, d: &Delivered) -> Result<()> {
        let d = d.clone();
        self.tx(move |tx| {
            let (n, r) = (d.target.network.as_str(), d.target.room.as_str());
            if let Ok(ids) = &d.outcome {
                for id in ids {
                    tx.execute(
                        "INSERT INTO by_remote (network, room, remote, event) \
                         VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (network, room, remote) DO UPDATE SET event = excluded.event",
                        &[&n, &r, &id.as_str(), &d.event.as_str()],
                    )
                    .map_err(be)?;
                }
                let ids: Vec<&str> = ids.iter().map(MessageId::as_str).collect();
                tx.execute(
                    "INSERT INTO by_event (event, network, room, ids) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (event, network, room) DO UPDATE SET ids = excluded.ids",
                    &[&d.event.as_str(), &n, &r, &ids],
                )
                .map_err(be)?;
            }
            tx.execute(
                "DELETE FROM outbox WHERE network = $1 AND id = $2",
                &[&n, &i64_of(d.outbox_id)],
            )
            .map_err(be)?;
            Ok(())
        })
    }

    fn event_for(&self, room: &RoomRef, remote: &MessageId) -> Result<Option<EventId>> {
        let (room, remote) = (room.clone(), remote.clone());
        self.call(move |c| {
            Ok(c.query_opt(
                "SELECT event FROM by_remote WHERE network = $1 AND room = $2 AND remote = $3",
                &[
                    &room.network.as_str(),
                    &room.room.as_str(),
                    &remote.as_str(),
                ],
            )
            .map_err(be)?
            .map(|row| EventId(row.get(0))))
        })
    }

    fn remote_ids(&self, event: &EventId, room: &RoomRef) -> Result<Vec<MessageId>> {
        let (event, room) = (event.clone(), room.clone());
        self.call(move |c| {
            let ids: Vec<String> = c
                .query_opt(
                    "SELECT ids FROM by_event WHERE event = $1 AND network = $2 AND room = $3",
                    &[&event.as_str(), &room.network.as_str(), &room.room.as_str()],
                )
                .map_err(be)?
                .map(|row| row.get(0))
                .unwrap_or_default();
            Ok(ids.into_iter().map(MessageId::new).collect())
        })
    }

    fn sender_of(&self, event: &EventId) -> Result<Option<UserRef>> {
        let event = event.clone();
        self.call(move |c| {
            let row = c
                .query_opt(
                    "SELECT sender_network, sender_user FROM events WHERE event = $1",
                    &[&event.as_str()],
                )
                .map_err(be)?;
            Ok(row.and_then(|row| {
                let n: Option<String> = row.get(0);
                let u: Option<String> = row.get(1);
                Some(UserRef::new(n?, u?))
            }))
        })
    }

    fn pending(&self, network: &NetworkId) -> Result<Vec<Delivery>> {
        let network = network.clone();
        let set_aside = self.set_aside.clone();
        self.call(move |c| {
            let rows = c
                .query(
                    "SELECT id, row FROM outbox WHERE network = $1 ORDER BY id",
                    &[&network.as_str()],
                )
                .map_err(be)?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let id: i64 = row.get(0);
                let bytes: Vec<u8> = row.get(1);
                match serde_json::from_slice::<Delivery>(&bytes) {
                    Ok(d) => out.push(d),
                    Err(e) => {
                        let k = format!("{network}/{id}");
                        let mut tx = c.transaction().map_err(be)?;
                        tx.execute(
                            "INSERT INTO quarantine (tbl, k, v) VALUES ('outbox', $1, $2)",
                            &[&k, &bytes],
                        )
                        .map_err(be)?;
                        tx.execute(
                            "DELETE FROM outbox WHERE network = $1 AND id = $2",
                            &[&network.as_str(), &id],
                        )
                        .map_err(be)?;
                        tx.commit().map_err(be)?;
                        set_aside.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(table = "outbox", key = %k, error = %e, "A stored record could not be read back; it was set aside.");
                    }
                }
            }
            Ok(out)
        })
    }

    fn outbox_depth(&self, network: &NetworkId) -> Result<usize> {
        let network = network.clone();
        self.call(move |c| {
            let n: i64 = c
                .query_one(
                    "SELECT count(*) FROM outbox WHERE network = $1",
                    &[&network.as_str()],
                )
                .map_err(be)?
                .get(0);
            Ok(usize::try_from(n).unwrap_or(0))
        })
    }

    fn set_aside(&self) -> u64 {
        self.set_aside.load(Ordering::Relaxed)
    }

    fn drop_outbox(
        &self,
        network: &NetworkId,
        older_than_ms: u64,
        keep_newest: usize,
        spare: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<Dropped>> {
        let dropped = crate::to_drop(self.pending(network)?, older_than_ms, keep_newest, spare);
        let ids: Vec<i64> = dropped.iter().map(|d| i64_of(d.outbox_id)).collect();
        let n = network.as_str().to_owned();
        self.call(move |c| {
            c.execute(
                "DELETE FROM outbox WHERE network = $1 AND id = ANY($2)",
                &[&n, &ids],
            )
            .map_err(be)
        })?;
        Ok(dropped)
    }

    fn prune_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let (before, lim) = (i64_of(before_ms), i64_of(limit as u64));
        self.tx(move |tx| {
            let events: Vec<String> = tx
                .query(
                    "SELECT event FROM events WHERE stamp < $1 ORDER BY stamp LIMIT $2",
                    &[&before, &lim],
                )
                .map_err(be)?
                .iter()
                .map(|r| r.get(0))
                .collect();
            forget_map(tx, &events)?;
            tx.execute("DELETE FROM events WHERE event = ANY($1)", &[&events])
                .map_err(be)?;
            let rest = lim - i64::try_from(events.len()).unwrap_or(lim);
            let txns = tx
                .execute(
                    "DELETE FROM txns WHERE k IN \
                     (SELECT k FROM txns WHERE stamp < $1 ORDER BY stamp LIMIT $2)",
                    &[&before, &rest],
                )
                .map_err(be)?;
            Ok(events.len() + count(txns))
        })
    }

    fn prune_private_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let (before, lim) = (i64_of(before_ms), i64_of(limit as u64));
        self.tx(move |tx| {
            let due = tx
                .query(
                    "(SELECT stamp, 'e' AS kind, event AS a, '' AS b FROM events \
                      WHERE private AND stamp < $1 ORDER BY stamp LIMIT $2) \
                     UNION ALL \
                     (SELECT stamp, 'k', ns, k FROM kv \
                      WHERE private AND stamp < $1 ORDER BY stamp LIMIT $2) \
                     ORDER BY 1 LIMIT $2",
                    &[&before, &lim],
                )
                .map_err(be)?;
            let mut events = Vec::new();
            for row in &due {
                let kind: &str = row.get(1);
                let (a, b): (String, String) = (row.get(2), row.get(3));
                if kind == "e" {
                    events.push(a);
                } else {
                    tx.execute("DELETE FROM kv WHERE ns = $1 AND k = $2", &[&a, &b])
                        .map_err(be)?;
                }
            }
            forget_map(tx, &events)?;
            // The event's row stays, as a time index entry, for `prune_before` to remove.
            tx.execute(
                "UPDATE events SET private = false, sender_network = NULL, sender_user = NULL \
                 WHERE event = ANY($1)",
                &[&events],
            )
            .map_err(be)?;
            Ok(due.len())
        })
    }

    fn prune_audit_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let (before, lim) = (i64_of(before_ms), i64_of(limit as u64));
        self.tx(move |tx| {
            let rows = tx
                .query("SELECT id, ts FROM audit ORDER BY id LIMIT $1", &[&lim])
                .map_err(be)?;
            let ids: Vec<i64> = rows
                .iter()
                .take_while(|r| r.get::<_, i64>(1) < before)
                .map(|r| r.get(0))
                .collect();
            tx.execute("DELETE FROM audit WHERE id = ANY($1)", &[&ids])
                .map_err(be)?;
            Ok(ids.len())
        })
    }

    fn txn_done(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.call(move |c| {
            Ok(c.query_opt("SELECT 1 FROM txns WHERE k = $1", &[&key])
                .map_err(be)?
                .is_some())
        })
    }

    fn mark_txn(&self, key: &str) -> Result<()> {
        let key = key.to_owned();
        self.call(move |c| {
            c.execute(
                "INSERT INTO txns (k, stamp) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&key, &i64_of(now_ms())],
            )
            .map_err(be)?;
            Ok(())
        })
    }

    fn puppet(&self, network: &NetworkId, user: &UserRef) -> Result<Option<String>> {
        let (n, u) = (network.clone(), user.clone());
        self.call(move |c| {
            Ok(c.query_opt(
                "SELECT identity FROM puppets \
                 WHERE network = $1 AND user_network = $2 AND user_id = $3",
                &[&n.as_str(), &u.network.as_str(), &u.user.as_str()],
            )
            .map_err(be)?
            .map(|r| r.get(0)))
        })
    }

    fn set_puppet(&self, network: &NetworkId, user: &UserRef, identity: &str) -> Result<()> {
        let (n, u, identity) = (network.clone(), user.clone(), identity.to_owned());
        self.tx(move |tx| {
            let (n, un, uid) = (n.as_str(), u.network.as_str(), u.user.as_str());
            let old = tx
                .query_opt(
                    "SELECT identity FROM puppets \
                     WHERE network = $1 AND user_network = $2 AND user_id = $3",
                    &[&n, &un, &uid],
                )
                .map_err(be)?;
            if let Some(old) = old {
                let old: String = old.get(0);
                tx.execute(
                    "DELETE FROM owners WHERE network = $1 AND identity = $2",
                    &[&n, &old],
                )
                .map_err(be)?;
            }
            tx.execute(
                "INSERT INTO puppets (network, user_network, user_id, identity) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (network, user_network, user_id) \
                 DO UPDATE SET identity = excluded.identity",
                &[&n, &un, &uid, &identity],
            )
            .map_err(be)?;
            tx.execute(
                "INSERT INTO owners (network, identity, user_network, user_id) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (network, identity) \
                 DO UPDATE SET user_network = excluded.user_network, user_id = excluded.user_id",
                &[&n, &identity, &un, &uid],
            )
            .map_err(be)?;
            Ok(())
        })
    }

    fn puppet_owner(&self, network: &NetworkId, identity: &str) -> Result<Option<UserRef>> {
        let (n, identity) = (network.clone(), identity.to_owned());
        self.call(move |c| {
            Ok(c.query_opt(
                "SELECT user_network, user_id FROM owners WHERE network = $1 AND identity = $2",
                &[&n.as_str(), &identity],
            )
            .map_err(be)?
            .map(|r| UserRef::new(r.get::<_, String>(0), r.get::<_, String>(1))))
        })
    }

    fn links(&self) -> Result<Vec<Link>> {
        self.call(|c| {
            c.query("SELECT link FROM links ORDER BY bridge COLLATE \"C\"", &[])
                .map_err(be)?
                .iter()
                .map(|r| serde_json::from_slice(r.get::<_, &[u8]>(0)).map_err(codec))
                .collect()
        })
    }

    fn put_link(&self, link: &Link) -> Result<()> {
        let bytes = serde_json::to_vec(link).map_err(codec)?;
        let bridge = link.bridge.as_str().to_owned();
        self.call(move |c| {
            c.execute(
                "INSERT INTO links (bridge, link) VALUES ($1, $2) \
                 ON CONFLICT (bridge) DO UPDATE SET link = excluded.link",
                &[&bridge, &bytes],
            )
            .map_err(be)?;
            Ok(())
        })
    }

    fn remove_link(&self, bridge: &BridgeName) -> Result<()> {
        let bridge = bridge.as_str().to_owned();
        self.call(move |c| {
            c.execute("DELETE FROM links WHERE bridge = $1", &[&bridge])
                .map_err(be)?;
            Ok(())
        })
    }

    fn cursor(&self, room: &RoomRef) -> Result<Option<String>> {
        let room = room.clone();
        self.call(move |c| {
            Ok(c.query_opt(
                "SELECT cursor FROM cursors WHERE network = $1 AND room = $2",
                &[&room.network.as_str(), &room.room.as_str()],
            )
            .map_err(be)?
            .map(|r| r.get(0)))
        })
    }

    fn set_cursor(&self, room: &RoomRef, cursor: &str) -> Result<()> {
        let (room, cursor) = (room.clone(), cursor.to_owned());
        self.call(move |c| {
            c.execute(
                "INSERT INTO cursors (network, room, cursor) VALUES ($1, $2, $3) \
                 ON CONFLICT (network, room) DO UPDATE SET cursor = excluded.cursor",
                &[&room.network.as_str(), &room.room.as_str(), &cursor],
            )
            .map_err(be)?;
            Ok(())
        })
    }

    fn kv_get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.call(move |c| {
            Ok(
                c.query_opt("SELECT v FROM kv WHERE ns = $1 AND k = $2", &[&ns, &key])
                    .map_err(be)?
                    .map(|r| r.get(0)),
            )
        })
    }

    fn kv_put(&self, ns: &str, key: &str, value: &[u8]) -> Result<()> {
        put_kv(self, ns, key, value, None, false)
    }

    fn kv_remove(&self, ns: &str, key: &str) -> Result<()> {
        let (ns, key) = (ns.to_owned(), key.to_owned());
        self.call(move |c| {
            c.execute("DELETE FROM kv WHERE ns = $1 AND k = $2", &[&ns, &key])
                .map_err(be)?;
            Ok(())
        })
    }

    fn kv_scan(&self, ns: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let ns = ns.to_owned();
        self.call(move |c| {
            Ok(c.query(
                "SELECT k, v FROM kv WHERE ns = $1 ORDER BY k COLLATE \"C\"",
                &[&ns],
            )
            .map_err(be)?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
        })
    }

    fn kv_put_dated(&self, ns: &str, key: &str, value: &[u8], ts_ms: u64) -> Result<()> {
        put_kv(self, ns, key, value, Some(ts_ms), false)
    }

    fn kv_put_private(&self, ns: &str, key: &str, value: &[u8], ts_ms: u64) -> Result<()> {
        put_kv(self, ns, key, value, Some(ts_ms), true)
    }

    fn prune_kv_before(&self, before_ms: u64, limit: usize) -> Result<usize> {
        let (before, lim) = (i64_of(before_ms), i64_of(limit as u64));
        self.call(move |c| {
            let n = c
                .execute(
                    "DELETE FROM kv WHERE (ns, k) IN (SELECT ns, k FROM kv \
                     WHERE stamp IS NOT NULL AND stamp < $1 ORDER BY stamp LIMIT $2)",
                    &[&before, &lim],
                )
                .map_err(be)?;
            Ok(count(n))
        })
    }

    fn audit(&self, entry: &AuditEntry) -> Result<()> {
        let e = entry.clone();
        self.call(move |c| {
            c.execute(
                "INSERT INTO audit (ts, actor, action, outcome) VALUES ($1, $2, $3, $4)",
                &[&i64_of(e.ts_ms), &e.actor, &e.action, &e.outcome],
            )
            .map_err(be)?;
            Ok(())
        })
    }

    fn audit_log(&self) -> Result<Vec<AuditEntry>> {
        self.call(|c| {
            Ok(c.query(
                "SELECT ts, actor, action, outcome FROM audit ORDER BY id",
                &[],
            )
            .map_err(be)?
            .iter()
            .map(|r| AuditEntry {
                ts_ms: u64_of(r.get(0)),
                actor: r.get(1),
                action: r.get(2),
                outcome: r.get(3),
            })
            .collect())
        })
    }

    fn export(&self, out: &mut dyn FnMut(Row) -> Result<()>) -> Result<()> {
        // Streamed (see `pg_export`): batches come while the connection thread reads.
        let (batches, taken) = mpsc::sync_channel(export::QUEUED);
        // The sender goes with the job: the batches end when the read does.
        let answer = self.submit(move |c| export::export_rows(c, &batches))?;
        let mut stopped = None;
        for batch in taken {
            if let Err(e) = batch.into_iter().try_for_each(&mut *out) {
                // Dropping the receiver (leaving the loop) ends the read.
                stopped = Some(e);
                break;
            }
        }
        let read = Self::answer(answer);
        match stopped {
            Some(e) => Err(e),
            None => read,
        }
    }

    fn import(&self, row: Row) -> Result<()> {
        let Some(own) = crate::dump::import_common(self, row)? else {
            return Ok(());
        };
        self.call(move |c| {
            match own {
                Own::Event(event, ts, sender, private) => {
                    c.execute(
                        "INSERT INTO events (event, stamp, sender_network, sender_user, private) \
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (event) DO UPDATE SET \
                         stamp = excluded.stamp, sender_network = excluded.sender_network, \
                         sender_user = excluded.sender_user, private = excluded.private",
                        &[
                            &event.as_str(),
                            &i64_of(ts),
                            &sender.as_ref().map(|u| u.network.as_str()),
                            &sender.as_ref().map(|u| u.user.as_str()),
                            &private,
                        ],
                    )
                    .map_err(be)?;
                }
                Own::Outbox(mut delivery) => {
                    let id: i64 = c
                        .query_one("SELECT nextval('outbox_ids')", &[])
                        .map_err(be)?
                        .get(0);
                    delivery.outbox_id = u64_of(id);
                    let bytes = encode_row(&delivery)?;
                    c.execute(
                        "INSERT INTO outbox (network, id, row) VALUES ($1, $2, $3)",
                        &[&delivery.target.network.as_str(), &id, &bytes],
                    )
                    .map_err(be)?;
                }
                Own::Txn(key, ts) => {
                    c.execute(
                        "INSERT INTO txns (k, stamp) VALUES ($1, $2) \
                         ON CONFLICT (k) DO UPDATE SET stamp = excluded.stamp",
                        &[&key, &i64_of(ts)],
                    )
                    .map_err(be)?;
                }
            }
            Ok(())
        })
    }

    fn flush(&self) -> Result<()> {
        // Every call commits before it returns: committed is durable.
        Ok(())
    }
}

fn put_kv(
    s: &PgStore,
    ns: &str,
    key: &str,
    value: &[u8],
    ts_ms: Option<u64>,
    private: bool,
) -> Result<()> {
    let (ns, key, value) = (ns.to_owned(), key.to_owned(), value.to_vec());
    let stamp = ts_ms.map(i64_of);
    s.call(move |c| {
        c.execute(
            "INSERT INTO kv (ns, k, v, stamp, private) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (ns, k) DO UPDATE SET v = excluded.v, stamp = excluded.stamp, \
             private = excluded.private",
            &[&ns, &key, &value, &stamp, &private],
        )
        .map_err(be)?;
        Ok(())
    })
}
