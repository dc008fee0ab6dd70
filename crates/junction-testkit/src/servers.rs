//! The real chat servers on 127.0.0.1: Synapse (Matrix), Prosody (XMPP), InspIRCd and
//! ngIRCd (IRC), for the end-to-end tests, the demo and CI; and PostgreSQL, for the store's
//! PostgreSQL backend.
//!
//! Everything lives under one directory ([`DEFAULT_DIR`], or `JUNCTION_SERVERS_DIR`, which
//! must be absolute): configs, data, logs (`log/`), pid files (`run/`) and the slot locks
//! (`slots/`). [`servers`] installs what is missing, starts what is not already running
//! and waits until each server answers; servers left running by an earlier test process
//! or by `junction-testkit start` are reused as long as their config is unchanged. Only
//! processes recorded in the pid files, and whose command line still names this
//! directory's config, are ever stopped.
//!
//! Several gateways can run side by side against the same servers: each test takes a
//! [`Slot`] with [`slot`], which gives it its own appservice registration and its own XMPP
//! component. Slot 0 ([`demo_slot`]) is the one `bridges.toml` uses.
//!
//! A test that must stop or crash a server starts one of its own instead, with
//! [`PrivateServer`] (a Prosody or a Synapse on free ports, in its own directory).

mod config;
mod harness;
pub mod install;
pub mod postgres;
pub mod private;
pub mod probe;
mod process;
mod slots;

pub use harness::{Harness, ServiceStatus};
pub use private::PrivateServer;
pub use slots::{demo_slot, slot, Slot, SlotGuard};

use anyhow::Context as _;
use hmac::{Hmac, Mac as _};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The harness directory when `JUNCTION_SERVERS_DIR` is not set.
pub const DEFAULT_DIR: &str = "/tmp/junction-servers";
/// The Matrix server name.
pub const SERVER_NAME: &str = "matrix.test";
/// Synapse's client-server port.
pub const MATRIX_PORT: u16 = 8008;
/// The XMPP domain users live on.
pub const XMPP_DOMAIN: &str = "xmpp.test";
/// The XMPP multi-user chat service.
pub const MUC_DOMAIN: &str = "conference.xmpp.test";
/// Prosody's client port.
pub const XMPP_C2S_PORT: u16 = 5222;
/// Prosody's XEP-0114 component port.
pub const XMPP_COMPONENT_PORT: u16 = 5347;
/// InspIRCd's client port (IRCv3, long nicks).
pub const INSPIRCD_PORT: u16 = 6667;
/// ngIRCd's client port (minimal IRCv3, 9-character nicks).
pub const NGIRCD_PORT: u16 = 6668;
/// PostgreSQL's port (not the usual 5432, so a system cluster never gets in the way).
pub const POSTGRES_PORT: u16 = 5439;
/// Test slots (1..=SLOTS); slot 0 is the demo's.
pub const SLOTS: usize = 8;

/// Users every start makes sure exist on Matrix and XMPP, with their passwords.
pub const SEED_USERS: &[(&str, &str)] = &[("alice", "alicepw"), ("bob", "bobpw")];

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// The Matrix homeserver.
#[derive(Clone, Debug)]
pub struct MatrixServer {
    /// Client-server API base URL, `http://127.0.0.1:8008`.
    pub url: String,
    /// The server name, `matrix.test`.
    pub server_name: String,
    /// Synapse's `registration_shared_secret`, for the admin registration API.
    pub shared_secret: String,
}

/// The XMPP server.
#[derive(Clone, Debug)]
pub struct XmppServer {
    /// Client-to-server address (plaintext, SASL PLAIN allowed).
    pub c2s: SocketAddr,
    /// XEP-0114 component address.
    pub component: SocketAddr,
    /// The users' domain, `xmpp.test`.
    pub domain: String,
    /// The MUC service, `conference.xmpp.test`.
    pub muc: String,
}

/// The running servers, as [`servers`] hands them to tests.
#[derive(Clone, Debug)]
pub struct Servers {
    /// The harness directory (configs, data, logs, pid files).
    pub dir: PathBuf,
    /// Synapse.
    pub matrix: MatrixServer,
    /// Prosody.
    pub xmpp: XmppServer,
    /// InspIRCd: IRCv3 capabilities, NICKLEN 30.
    pub inspircd: SocketAddr,
    /// ngIRCd: `multi-prefix` only, NICKLEN 9.
    pub ngircd: SocketAddr,
}

impl Servers {
    fn new(dir: &Path) -> Self {
        Servers {
            dir: dir.to_path_buf(),
            matrix: MatrixServer {
                url: format!("http://127.0.0.1:{MATRIX_PORT}"),
                server_name: SERVER_NAME.to_owned(),
                shared_secret: config::REGISTRATION_SHARED_SECRET.to_owned(),
            },
            xmpp: XmppServer {
                c2s: loopback(XMPP_C2S_PORT),
                component: loopback(XMPP_COMPONENT_PORT),
                domain: XMPP_DOMAIN.to_owned(),
                muc: MUC_DOMAIN.to_owned(),
            },
            inspircd: loopback(INSPIRCD_PORT),
            ngircd: loopback(NGIRCD_PORT),
        }
    }

    /// Registers a Matrix user through Synapse's shared-secret admin API (the HMAC-SHA1
    /// nonce flow). A user that already exists is fine: the call is idempotent, and the
    /// existing password is left as it was.
    pub async fn register_matrix_user(
        &self,
        user: &str,
        password: &str,
        admin: bool,
    ) -> anyhow::Result<()> {
        register_matrix_user(&self.matrix, user, password, admin).await
    }

    /// Registers an XMPP account `user@xmpp.test` with `prosodyctl`; an existing account
    /// gets `password` set again, so the call is idempotent.
    pub async fn register_xmpp_user(&self, user: &str, password: &str) -> anyhow::Result<()> {
        register_xmpp_user(&Layout::new(&self.dir), user, password).await
    }

    /// Where a server's console output goes: `log/<name>.log` with `name` one of
    /// `synapse`, `prosody`, `inspircd`, `ngircd`.
    pub fn log_path(&self, name: &str) -> PathBuf {
        Layout::new(&self.dir).log.join(format!("{name}.log"))
    }
}

/// The directory layout under the harness root.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    root: PathBuf,
    run: PathBuf,
    log: PathBuf,
    synapse: PathBuf,
    prosody: PathBuf,
    inspircd: PathBuf,
    ngircd: PathBuf,
    postgres: PathBuf,
    slots: PathBuf,
}

impl Layout {
    pub(crate) fn new(root: &Path) -> Self {
        Layout {
            root: root.to_path_buf(),
            run: root.join("run"),
            log: root.join("log"),
            synapse: root.join("synapse"),
            prosody: root.join("prosody"),
            inspircd: root.join("inspircd"),
            ngircd: root.join("ngircd"),
            postgres: root.join("postgresql"),
            slots: root.join("slots"),
        }
    }

    fn registration(&self, slot: usize) -> PathBuf {
        self.synapse
            .join("appservices")
            .join(format!("slot{slot}.yaml"))
    }

    fn signing_key(&self) -> PathBuf {
        self.synapse.join("signing.key")
    }

    fn prosody_config(&self) -> PathBuf {
        self.prosody.join("prosody.cfg.lua")
    }

    fn pid_file(&self, svc: Service) -> PathBuf {
        self.run.join(format!("{}.pid", svc.name()))
    }

    fn log_file(&self, svc: Service) -> PathBuf {
        self.log.join(format!("{}.log", svc.name()))
    }

    fn config_file(&self, svc: Service) -> PathBuf {
        match svc {
            Service::Synapse => self.synapse.join("homeserver.yaml"),
            Service::Prosody => self.prosody_config(),
            Service::Inspircd => self.inspircd.join("inspircd.conf"),
            Service::Ngircd => self.ngircd.join("ngircd.conf"),
            Service::Postgres => self.postgres.join("postgresql.conf"),
        }
    }

    /// PostgreSQL's cluster (owned by `postgres`, mode 0700).
    fn postgres_data(&self) -> PathBuf {
        self.postgres.join("data")
    }

    /// Creates every directory. Everything is world-readable: ngIRCd runs as `nobody`.
    fn create(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        for d in [
            self.root.clone(),
            self.run.clone(),
            self.log.clone(),
            self.synapse.clone(),
            self.synapse.join("appservices"),
            self.synapse.join("media"),
            self.prosody.clone(),
            self.prosody.join("data"),
            self.prosody.join("certs"),
            self.inspircd.clone(),
            self.ngircd.clone(),
            self.ngircd.join("conf.d"),
            self.postgres.clone(),
            self.slots.clone(),
        ] {
            fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("setting permissions of {}", d.display()))?;
        }
        Ok(())
    }
}

/// The harness directory: `JUNCTION_SERVERS_DIR` (absolute) or [`DEFAULT_DIR`].
pub fn servers_dir() -> anyhow::Result<PathBuf> {
    match std::env::var_os("JUNCTION_SERVERS_DIR") {
        Some(d) if !d.is_empty() => {
            let p = PathBuf::from(d);
            anyhow::ensure!(
                p.is_absolute(),
                "JUNCTION_SERVERS_DIR must be an absolute path, got {}",
                p.display()
            );
            Ok(p)
        }
        _ => Ok(PathBuf::from(DEFAULT_DIR)),
    }
}

/// One of the servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// Synapse, the Matrix homeserver.
    Synapse,
    /// Prosody, the XMPP server.
    Prosody,
    /// InspIRCd, the IRCv3 server.
    Inspircd,
    /// ngIRCd, the plain old IRC server.
    Ngircd,
    /// PostgreSQL, for the store's PostgreSQL backend.
    Postgres,
}

impl Service {
    /// Every service, in start order.
    pub const ALL: [Service; 5] = [
        Service::Synapse,
        Service::Prosody,
        Service::Inspircd,
        Service::Ngircd,
        Service::Postgres,
    ];

    /// Its short name, as in pid and log file names.
    pub fn name(self) -> &'static str {
        match self {
            Service::Synapse => "synapse",
            Service::Prosody => "prosody",
            Service::Inspircd => "inspircd",
            Service::Ngircd => "ngircd",
            Service::Postgres => "postgresql",
        }
    }

    /// The TCP ports it listens on (127.0.0.1).
    pub fn ports(self) -> &'static [u16] {
        match self {
            Service::Synapse => &[MATRIX_PORT],
            Service::Prosody => &[XMPP_C2S_PORT, XMPP_COMPONENT_PORT],
            Service::Inspircd => &[INSPIRCD_PORT],
            Service::Ngircd => &[NGIRCD_PORT],
            Service::Postgres => &[POSTGRES_PORT],
        }
    }

    /// The program and arguments that run it in the foreground.
    fn command(self, l: &Layout) -> (PathBuf, Vec<String>) {
        let cfg = l.config_file(self).display().to_string();
        match self {
            Service::Synapse => (
                install::synapse_python(),
                vec![
                    "-m".into(),
                    "synapse.app.homeserver".into(),
                    "-c".into(),
                    cfg,
                ],
            ),
            Service::Prosody => ("prosody".into(), vec!["-F".into(), "--config".into(), cfg]),
            Service::Inspircd => (
                "inspircd".into(),
                vec![
                    "--runasroot".into(),
                    "--nofork".into(),
                    format!("--config={cfg}"),
                ],
            ),
            Service::Ngircd => (
                "ngircd".into(),
                vec!["--nodaemon".into(), "--config".into(), cfg],
            ),
            // PostgreSQL refuses to run as root: `setpriv` execs it in place as `postgres`.
            Service::Postgres => (
                "setpriv".into(),
                postgres::as_postgres(postgres::bin("postgres"))
                    .into_iter()
                    .chain([
                        "-D".into(),
                        l.postgres_data().display().to_string(),
                        "-c".into(),
                        format!("config_file={cfg}"),
                    ])
                    .collect(),
            ),
        }
    }

    /// What its `/proc/PID/cmdline` must contain for the pid to be ours.
    fn needles(self, l: &Layout) -> [String; 2] {
        let marker = match self {
            Service::Synapse => "synapse.app.homeserver",
            Service::Prosody => "prosody",
            Service::Inspircd => "inspircd",
            Service::Ngircd => "ngircd",
            Service::Postgres => "postgres",
        };
        [marker.to_owned(), l.config_file(self).display().to_string()]
    }
}

async fn register_matrix_user(
    m: &MatrixServer,
    user: &str,
    password: &str,
    admin: bool,
) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{}/_synapse/admin/v1/register", m.url);
    let nonce: serde_json::Value = http
        .get(&url)
        .send()
        .await
        .context("asking Synapse for a registration nonce")?
        .error_for_status()?
        .json()
        .await?;
    let nonce = nonce
        .get("nonce")
        .and_then(|n| n.as_str())
        .context("registration nonce missing")?
        .to_owned();
    let mut mac =
        Hmac::<sha1::Sha1>::new_from_slice(m.shared_secret.as_bytes()).context("HMAC key")?;
    mac.update(nonce.as_bytes());
    mac.update(b"\0");
    mac.update(user.as_bytes());
    mac.update(b"\0");
    mac.update(password.as_bytes());
    mac.update(b"\0");
    mac.update(if admin {
        &b"admin"[..]
    } else {
        &b"notadmin"[..]
    });
    let mac = hex::encode(mac.finalize().into_bytes());
    let body = serde_json::json!({
        "nonce": nonce,
        "username": user,
        "password": password,
        "admin": admin,
        "mac": mac,
    });
    let resp = http
        .post(&url)
        .json(&body)
        .send()
        .await
        .context("registering a Matrix user")?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let answer: serde_json::Value = resp.json().await.unwrap_or_default();
    if answer.get("errcode").and_then(|e| e.as_str()) == Some("M_USER_IN_USE") {
        return Ok(());
    }
    anyhow::bail!("registering @{user}:{}: {status} {answer}", m.server_name)
}

async fn register_xmpp_user(l: &Layout, user: &str, password: &str) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("prosodyctl")
        .arg("--config")
        .arg(l.prosody_config())
        .args(["register", user, XMPP_DOMAIN, password])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .context("running prosodyctl register")?;
    anyhow::ensure!(
        out.status.success(),
        "prosodyctl register {user}@{XMPP_DOMAIN} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

static SERVERS: tokio::sync::OnceCell<Servers> = tokio::sync::OnceCell::const_new();

/// Installs if needed, starts what is not running (reusing servers that a previous test
/// process or `junction-testkit start` left running with the same config) and waits
/// until each is ready. Runs once per process; later calls return the same handles.
pub async fn servers() -> anyhow::Result<&'static Servers> {
    SERVERS
        .get_or_try_init(|| async {
            let h = Harness::from_env()?;
            h.install().await?;
            h.start().await
        })
        .await
}
