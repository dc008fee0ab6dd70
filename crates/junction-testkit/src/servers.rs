//! The real chat servers on 127.0.0.1: Synapse (Matrix), Prosody (XMPP), InspIRCd and
//! ngIRCd (IRC), for the end-to-end tests, the demo and CI.
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
pub mod install;
pub mod private;
pub mod probe;
mod process;

pub use private::PrivateServer;

use anyhow::Context as _;
use fs2::FileExt;
use hmac::{Hmac, Mac as _};
use process::Liveness;
use std::fs::{self, File, OpenOptions};
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

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
/// Test slots (1..=SLOTS); slot 0 is the demo's.
pub const SLOTS: usize = 8;

/// Users every start makes sure exist on Matrix and XMPP, with their passwords.
pub const SEED_USERS: &[(&str, &str)] = &[("alice", "alicepw"), ("bob", "bobpw")];

/// How long to wait for a free test slot before giving up.
const SLOT_DEADLINE: Duration = Duration::from_secs(20 * 60);
/// How long to wait for another process's start or stop to finish.
const LOCK_DEADLINE: Duration = Duration::from_secs(10 * 60);

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
        }
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

/// One of the four servers.
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
}

impl Service {
    /// Every service, in start order.
    pub const ALL: [Service; 4] = [
        Service::Synapse,
        Service::Prosody,
        Service::Inspircd,
        Service::Ngircd,
    ];

    /// Its short name, as in pid and log file names.
    pub fn name(self) -> &'static str {
        match self {
            Service::Synapse => "synapse",
            Service::Prosody => "prosody",
            Service::Inspircd => "inspircd",
            Service::Ngircd => "ngircd",
        }
    }

    /// The TCP ports it listens on (127.0.0.1).
    pub fn ports(self) -> &'static [u16] {
        match self {
            Service::Synapse => &[MATRIX_PORT],
            Service::Prosody => &[XMPP_C2S_PORT, XMPP_COMPONENT_PORT],
            Service::Inspircd => &[INSPIRCD_PORT],
            Service::Ngircd => &[NGIRCD_PORT],
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
        }
    }

    /// What its `/proc/PID/cmdline` must contain for the pid to be ours.
    fn needles(self, l: &Layout) -> [String; 2] {
        let marker = match self {
            Service::Synapse => "synapse.app.homeserver",
            Service::Prosody => "prosody",
            Service::Inspircd => "inspircd",
            Service::Ngircd => "ngircd",
        };
        [marker.to_owned(), l.config_file(self).display().to_string()]
    }
}

/// What `status` reports for one service.
#[derive(Clone, Debug)]
pub struct ServiceStatus {
    /// Which server.
    pub service: Service,
    /// Its pid, when the pid file names a live process of ours.
    pub pid: Option<u32>,
    /// Which of its ports accept connections (ours or not).
    pub open_ports: Vec<u16>,
}

/// Install, start, stop and inspect the servers of one harness directory. Tests use
/// [`servers`]; the `junction-testkit` binary uses this directly.
#[derive(Clone, Debug)]
pub struct Harness {
    layout: Layout,
}

/// Holds the harness-wide lock (`start.lock`) while starting or stopping, so concurrent
/// test processes never start the same server twice.
struct DirLock(File);

impl Drop for DirLock {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.0);
    }
}

impl Harness {
    /// The harness for [`servers_dir`].
    pub fn from_env() -> anyhow::Result<Self> {
        Harness::at(&servers_dir()?)
    }

    /// The harness rooted at `dir` (absolute).
    pub fn at(dir: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            dir.is_absolute(),
            "the servers dir must be absolute, got {}",
            dir.display()
        );
        Ok(Harness {
            layout: Layout::new(dir),
        })
    }

    /// The harness directory.
    pub fn dir(&self) -> &Path {
        &self.layout.root
    }

    /// The handles tests use, without checking that anything runs.
    pub fn servers(&self) -> Servers {
        Servers::new(&self.layout.root)
    }

    /// Installs whatever is missing (apt packages, Synapse's venv). Fast when installed.
    pub async fn install(&self) -> anyhow::Result<()> {
        let steps = install::plan().await;
        install::run(&steps).await
    }

    async fn lock(&self) -> anyhow::Result<DirLock> {
        self.layout.create()?;
        let path = self.layout.root.join("start.lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        crate::eventually(LOCK_DEADLINE, "the servers dir lock", || {
            let locked = file.try_lock_exclusive().is_ok();
            async move { locked.then_some(()) }
        })
        .await?;
        Ok(DirLock(file))
    }

    /// Writes every config file; returns, per service, whether any of its files changed.
    fn write_configs(&self) -> anyhow::Result<Vec<(Service, bool)>> {
        let l = &self.layout;
        let mut synapse = write_if_changed(&l.config_file(Service::Synapse), &config::synapse(l))?;
        for i in 0..=SLOTS {
            synapse |= write_if_changed(&l.registration(i), &config::registration(&Slot::new(i)))?;
        }
        let prosody = write_if_changed(&l.config_file(Service::Prosody), &config::prosody(l))?;
        let mut inspircd =
            write_if_changed(&l.config_file(Service::Inspircd), &config::inspircd(l))?;
        inspircd |= write_if_changed(
            &l.inspircd.join("motd.txt"),
            "Junction test server on 127.0.0.1.\n",
        )?;
        let ngircd = write_if_changed(&l.config_file(Service::Ngircd), &config::ngircd(l))?;
        Ok(vec![
            (Service::Synapse, synapse),
            (Service::Prosody, prosody),
            (Service::Inspircd, inspircd),
            (Service::Ngircd, ngircd),
        ])
    }

    /// The pid of `svc` if its pid file names a live process of ours.
    fn running_pid(&self, svc: Service) -> Option<u32> {
        let pid = process::read_pid(&self.layout.pid_file(svc))?;
        let needles = svc.needles(&self.layout);
        let refs = [needles[0].as_str(), needles[1].as_str()];
        (process::liveness(pid, &refs) == Liveness::Ours).then_some(pid)
    }

    /// Starts every server that is not already running with its current config, waits
    /// until all answer, and seeds the test users. Safe to call from several processes
    /// at once.
    pub async fn start(&self) -> anyhow::Result<Servers> {
        let _lock = self.lock().await?;
        let changed = self.write_configs()?;
        let mut started = Vec::new();
        for (svc, changed) in changed {
            if let Some(pid) = self.running_pid(svc) {
                if !changed {
                    tracing::debug!(service = svc.name(), pid, "Reusing running server.");
                    continue;
                }
                tracing::info!(service = svc.name(), pid, "Config changed; restarting.");
                self.stop_one(svc, pid).await?;
            }
            for port in svc.ports() {
                if process::port_open(loopback(*port)).await {
                    anyhow::bail!(
                        "cannot start {}: 127.0.0.1:{port} is already in use by a process \
                         that {} did not start (stop it, or use the harness dir that did)",
                        svc.name(),
                        self.layout.root.display()
                    );
                }
            }
            if svc == Service::Synapse {
                self.generate_synapse_keys().await?;
            }
            let pid = self.spawn(svc)?;
            tracing::info!(service = svc.name(), pid, "Started server.");
            started.push(svc);
        }
        let (a, b, c, d) = tokio::join!(
            self.wait_ready(Service::Synapse),
            self.wait_ready(Service::Prosody),
            self.wait_ready(Service::Inspircd),
            self.wait_ready(Service::Ngircd),
        );
        a.and(b).and(c).and(d)?;
        let servers = self.servers();
        for (user, pw) in SEED_USERS {
            servers
                .register_matrix_user(user, pw, false)
                .await
                .with_context(|| format!("seeding Matrix user {user}"))?;
            servers
                .register_xmpp_user(user, pw)
                .await
                .with_context(|| format!("seeding XMPP user {user}"))?;
        }
        Ok(servers)
    }

    /// Synapse writes its signing key with `--generate-keys`; done once, before the
    /// first start.
    async fn generate_synapse_keys(&self) -> anyhow::Result<()> {
        if self.layout.signing_key().exists() {
            return Ok(());
        }
        let log = self.open_log(Service::Synapse)?;
        let status = tokio::process::Command::new(install::synapse_python())
            .args(["-m", "synapse.app.homeserver", "-c"])
            .arg(self.layout.config_file(Service::Synapse))
            .arg("--generate-keys")
            .current_dir(&self.layout.synapse)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .await
            .context("running synapse --generate-keys")?;
        anyhow::ensure!(
            status.success(),
            "synapse --generate-keys failed ({status}):\n{}",
            process::log_tail(&self.layout.log_file(Service::Synapse), 30)
        );
        Ok(())
    }

    fn open_log(&self, svc: Service) -> anyhow::Result<File> {
        let path = self.layout.log_file(svc);
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))
    }

    /// Starts `svc` in the foreground of its own session (`setsid`), output to its log,
    /// and records its pid. The process outlives this one; it is not waited for.
    fn spawn(&self, svc: Service) -> anyhow::Result<u32> {
        use std::io::Write as _;
        let mut log = self.open_log(svc)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let _ = writeln!(
            log,
            "==== junction-testkit: starting {} (unix time {now})",
            svc.name()
        );
        let (program, args) = svc.command(&self.layout);
        // `setsid` execs the server in place (our child is never a group leader), so the
        // pid we get is the server's own.
        let child = std::process::Command::new("setsid")
            .arg(&program)
            .args(&args)
            .current_dir(self.layout.root.join(svc.name()))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} ({})", svc.name(), program.display()))?;
        let pid = child.id();
        drop(child);
        let pid_file = self.layout.pid_file(svc);
        fs::write(&pid_file, format!("{pid}\n"))
            .with_context(|| format!("writing {}", pid_file.display()))?;
        Ok(pid)
    }

    /// Waits until `svc` answers: Synapse's `/health` says `OK`, the others accept TCP on
    /// every port. Fails at once, with the log's tail, if the process exits.
    async fn wait_ready(&self, svc: Service) -> anyhow::Result<()> {
        let deadline = match svc {
            Service::Synapse => Duration::from_secs(180),
            _ => Duration::from_secs(60),
        };
        let http = reqwest::Client::new();
        let outcome = crate::eventually(deadline, &format!("{} to be ready", svc.name()), || {
            let http = http.clone();
            async move {
                // The pid we just started, judged by whether it still runs: its command
                // line is the launcher's for a moment while it execs the server.
                let started = process::read_pid(&self.layout.pid_file(svc));
                if !started.is_some_and(process::alive) {
                    return Some(Err(anyhow::anyhow!(
                        "{} exited during startup; its log ends:\n{}",
                        svc.name(),
                        process::log_tail(&self.layout.log_file(svc), 30)
                    )));
                }
                let ready = match svc {
                    Service::Synapse => {
                        let url = format!("http://127.0.0.1:{MATRIX_PORT}/health");
                        match http.get(url).send().await {
                            Ok(r) => r.text().await.is_ok_and(|t| t.trim() == "OK"),
                            Err(_) => false,
                        }
                    }
                    _ => {
                        let mut all = true;
                        for port in svc.ports() {
                            all &= process::port_open(loopback(*port)).await;
                        }
                        all
                    }
                };
                ready.then_some(Ok(()))
            }
        })
        .await;
        match outcome {
            Ok(r) => r,
            Err(e) => Err(e.context(format!(
                "{}'s log ends:\n{}",
                svc.name(),
                process::log_tail(&self.layout.log_file(svc), 30)
            ))),
        }
    }

    async fn stop_one(&self, svc: Service, pid: u32) -> anyhow::Result<()> {
        let needles = svc.needles(&self.layout);
        let refs = [needles[0].as_str(), needles[1].as_str()];
        process::terminate(pid, &refs, Duration::from_secs(15)).await?;
        let _ = fs::remove_file(self.layout.pid_file(svc));
        Ok(())
    }

    /// Stops the servers this directory's pid files name (and nothing else). Returns the
    /// ones that were running.
    pub async fn stop(&self) -> anyhow::Result<Vec<(Service, u32)>> {
        let _lock = self.lock().await?;
        let mut stopped = Vec::new();
        for svc in Service::ALL {
            match self.running_pid(svc) {
                Some(pid) => {
                    self.stop_one(svc, pid).await?;
                    stopped.push((svc, pid));
                }
                None => {
                    let _ = fs::remove_file(self.layout.pid_file(svc));
                }
            }
        }
        Ok(stopped)
    }

    /// What runs now.
    pub async fn status(&self) -> Vec<ServiceStatus> {
        let mut out = Vec::new();
        for svc in Service::ALL {
            let mut open_ports = Vec::new();
            for port in svc.ports() {
                if process::port_open(loopback(*port)).await {
                    open_ports.push(*port);
                }
            }
            out.push(ServiceStatus {
                service: svc,
                pid: self.running_pid(svc),
                open_ports,
            });
        }
        out
    }
}

/// Writes `content` to `path` unless it already holds exactly that; true if it changed.
fn write_if_changed(path: &Path, content: &str) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt as _;
    if fs::read(path).ok().as_deref() == Some(content.as_bytes()) {
        return Ok(false);
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting permissions of {}", path.display()))?;
    Ok(true)
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

/// A gateway identity for one test at a time: its own appservice registration and its
/// own XMPP component, so several gateways can run side by side against one Synapse and
/// one Prosody. Every slot is written into the servers' configs before they start.
///
/// Synapse remembers a slot's appservice across tests and backs off from it while nothing
/// listens: a gateway should ping its appservice on startup, and tests should use unique
/// room and user names, since an earlier test's queued transactions may still arrive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// 0 for the demo, 1..=8 for tests.
    pub index: usize,
    /// The appservice id (`junction`, `junction-t3`).
    pub as_id: String,
    /// The token the gateway sends to Synapse.
    pub as_token: String,
    /// The token Synapse sends to the gateway.
    pub hs_token: String,
    /// Where the gateway must listen for Synapse's pushes (`127.0.0.1:9009`, `:9013`).
    pub listen: SocketAddr,
    /// The exclusive user and alias namespace prefix (`_junction_`, `_jt3_`).
    pub user_prefix: String,
    /// The bot's localpart (`junction`, `jt3bot`).
    pub bot: String,
    /// The XMPP component domain (`bridge.xmpp.test`, `t3.bridge.xmpp.test`).
    pub component: String,
    /// The component's secret.
    pub component_secret: String,
}

impl Slot {
    /// Slot `index`. Tokens and secrets are fixed test values: the servers only listen
    /// on 127.0.0.1 and hold nothing but test data.
    pub(crate) fn new(index: usize) -> Slot {
        let (as_id, user_prefix, bot, component) = if index == 0 {
            (
                "junction".to_owned(),
                "_junction_".to_owned(),
                "junction".to_owned(),
                "bridge.xmpp.test".to_owned(),
            )
        } else {
            (
                format!("junction-t{index}"),
                format!("_jt{index}_"),
                format!("jt{index}bot"),
                format!("t{index}.bridge.xmpp.test"),
            )
        };
        let port = 9010 + u16::try_from(index).unwrap_or(0);
        Slot {
            index,
            as_token: format!("testkit_as_token_{as_id}"),
            hs_token: format!("testkit_hs_token_{as_id}"),
            listen: loopback(if index == 0 { 9009 } else { port }),
            component_secret: format!("testkit_component_secret_{index}"),
            as_id,
            user_prefix,
            bot,
            component,
        }
    }
}

/// The demo's slot 0, the identity `bridges.toml` uses: id `junction`, `127.0.0.1:9009`,
/// prefix `_junction_`, bot `junction`, component `bridge.xmpp.test`.
pub fn demo_slot() -> Slot {
    Slot::new(0)
}

/// A test slot held by this test; the slot is free again when this is dropped.
#[derive(Debug)]
pub struct SlotGuard {
    slot: Slot,
    lock: File,
}

impl Deref for SlotGuard {
    type Target = Slot;
    fn deref(&self) -> &Slot {
        &self.slot
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        let _ = FileExt::unlock(&self.lock);
    }
}

/// Waits for a free test slot (1..=8) and holds it. Slots are `flock`ed files under the
/// servers dir, so they are exclusive within this process and across processes alike,
/// and a crashed holder frees its slot with its file descriptors.
pub async fn slot() -> anyhow::Result<SlotGuard> {
    slot_in(&servers_dir()?).await
}

pub(crate) async fn slot_in(dir: &Path) -> anyhow::Result<SlotGuard> {
    let slots = Layout::new(dir).slots;
    fs::create_dir_all(&slots).with_context(|| format!("creating {}", slots.display()))?;
    crate::eventually(SLOT_DEADLINE, "a free test slot", || {
        let found = try_take_slot(&slots);
        async move { found }
    })
    .await
}

fn try_take_slot(slots: &Path) -> Option<SlotGuard> {
    use std::io::Write as _;
    for index in 1..=SLOTS {
        let path = slots.join(format!("{index}.lock"));
        let Ok(mut file) = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        if file.try_lock_exclusive().is_ok() {
            // The holder's pid, for whoever wonders which test has the slot.
            let _ = file.set_len(0);
            let _ = writeln!(file, "{}", std::process::id());
            return Some(SlotGuard {
                slot: Slot::new(index),
                lock: file,
            });
        }
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_naming_scheme() {
        let s = Slot::new(3);
        assert_eq!(s.as_id, "junction-t3");
        assert_eq!(s.listen, "127.0.0.1:9013".parse().unwrap());
        assert_eq!(s.user_prefix, "_jt3_");
        assert_eq!(s.bot, "jt3bot");
        assert_eq!(s.component, "t3.bridge.xmpp.test");
        let d = demo_slot();
        assert_eq!(
            (
                d.as_id.as_str(),
                d.listen,
                d.user_prefix.as_str(),
                d.bot.as_str()
            ),
            (
                "junction",
                "127.0.0.1:9009".parse().unwrap(),
                "_junction_",
                "junction"
            )
        );
        assert_eq!(d.component, "bridge.xmpp.test");
    }

    #[test]
    fn slot_tokens_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for i in 0..=SLOTS {
            let s = Slot::new(i);
            assert!(seen.insert(s.as_token.clone()));
            assert!(seen.insert(s.hs_token.clone()));
            assert!(seen.insert(s.component_secret.clone()));
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slots_are_exclusive_and_freed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut held = Vec::new();
        for _ in 0..SLOTS {
            held.push(slot_in(dir.path()).await.unwrap());
        }
        let mut indices: Vec<usize> = held.iter().map(|g| g.index).collect();
        indices.sort_unstable();
        assert_eq!(indices, (1..=SLOTS).collect::<Vec<_>>());
        // All taken: the next caller waits until one is dropped.
        assert!(try_take_slot(&dir.path().join("slots")).is_none());
        let waiter = tokio::spawn({
            let root = dir.path().to_path_buf();
            async move { slot_in(&root).await.map(|g| g.index) }
        });
        let freed = held.remove(4);
        let index = freed.index;
        drop(freed);
        let got = waiter.await.unwrap().unwrap();
        assert_eq!(got, index);
    }

    #[test]
    fn relative_dir_is_refused() {
        assert!(Harness::at(Path::new("rel/dir")).is_err());
    }

    #[test]
    fn write_if_changed_reports_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        assert!(write_if_changed(&p, "a").unwrap());
        assert!(!write_if_changed(&p, "a").unwrap());
        assert!(write_if_changed(&p, "b").unwrap());
    }
}
