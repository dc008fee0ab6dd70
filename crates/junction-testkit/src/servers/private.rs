//! A Prosody or a Synapse of one test's own, for tests that stop, kill or restart a server.
//!
//! The shared servers ([`super::servers`]) serve every test running at once, so no test may
//! stop them. A [`PrivateServer`] is a separate process with the shared server's settings
//! (same domains: `xmpp.test`, `conference.xmpp.test`, `matrix.test`; no rate limits; the
//! MUC with MAM), in its own directory under the system temp dir and on free loopback
//! ports, so a test can crash it and start it again without disturbing anyone.
//!
//! - [`PrivateServer::prosody`] writes a Prosody config with every slot's component, so a
//!   gateway on any [`super::Slot`] can connect to it.
//! - [`PrivateServer::synapse`] writes a Synapse config with the appservice registrations
//!   the test passes (a slot's identity, usually with its own `listen` address).
//! - [`PrivateServer::servers`] gives the handles the test clients take, pointing at this
//!   server and, for the other networks, at the shared ones.
//! - [`PrivateServer::kill`] (SIGKILL, a crash), [`PrivateServer::stop`] (SIGTERM),
//!   [`PrivateServer::start`] (again, on the same data) and [`PrivateServer::restart`]
//!   act only on the pid of the process this value started.
//!
//! Data (accounts, the Synapse database, the MUC archive) lives as long as the value; the
//! process is killed and the directory removed when it is dropped.

use super::harness::generate_synapse_keys;
use super::{
    config, loopback, process, Layout, MatrixServer, Servers, Service, Slot, XmppServer,
    MUC_DOMAIN, SEED_USERS, SERVER_NAME, XMPP_DOMAIN,
};
use crate::free_port;
use anyhow::Context as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// How long a Synapse may take to answer `/health` (a fresh database is migrated first).
const SYNAPSE_READY: Duration = Duration::from_secs(180);
/// How long a Prosody may take to listen on its ports.
const PROSODY_READY: Duration = Duration::from_secs(60);
/// How long SIGTERM may take before SIGKILL follows.
const STOP_GRACE: Duration = Duration::from_secs(15);

/// A server process of one test's own: see the [module docs](self).
#[derive(Debug)]
pub struct PrivateServer {
    service: Service,
    layout: Layout,
    /// Prosody: c2s then component; Synapse: the client port.
    ports: Vec<u16>,
    child: Option<tokio::process::Child>,
    /// How many times the process has been started.
    starts: usize,
}

/// A fresh directory under the system temp dir.
fn fresh_dir(service: Service) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(crate::unique(&format!(
        "junction-private-{}-",
        service.name()
    )));
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

impl PrivateServer {
    /// Starts a Prosody of this test's own (c2s and component ports free ones) and waits
    /// until it listens; the seed users (`alice`, `bob`) exist on it.
    pub async fn prosody() -> anyhow::Result<PrivateServer> {
        let layout = Layout::new(&fresh_dir(Service::Prosody)?);
        layout.create()?;
        let (c2s, component) = (free_port()?, free_port()?);
        let cfg = layout.config_file(Service::Prosody);
        fs::write(&cfg, config::prosody_on(&layout, c2s, component))
            .with_context(|| format!("writing {}", cfg.display()))?;
        let (me, servers) = Self::started(Service::Prosody, layout, vec![c2s, component]).await?;
        for (user, pw) in SEED_USERS {
            servers
                .register_xmpp_user(user, pw)
                .await
                .with_context(|| format!("seeding XMPP user {user}"))?;
        }
        Ok(me)
    }

    /// Starts a Synapse of this test's own on a free port, with one appservice
    /// registration per slot in `appservices` (each as [`Slot`] says: its id, tokens,
    /// namespaces and `listen` address), and waits until `/health` answers; the seed users
    /// exist on it. Synapse takes several seconds to start, more on the first start.
    pub async fn synapse(appservices: &[Slot]) -> anyhow::Result<PrivateServer> {
        let layout = Layout::new(&fresh_dir(Service::Synapse)?);
        layout.create()?;
        let port = free_port()?;
        let mut registrations = Vec::new();
        for slot in appservices {
            let path = layout.registration(slot.index);
            fs::write(&path, config::registration(slot))
                .with_context(|| format!("writing {}", path.display()))?;
            registrations.push(path);
        }
        let cfg = layout.config_file(Service::Synapse);
        fs::write(&cfg, config::synapse_on(&layout, port, &registrations))
            .with_context(|| format!("writing {}", cfg.display()))?;
        generate_synapse_keys(&layout).await?;
        let (me, servers) = Self::started(Service::Synapse, layout, vec![port]).await?;
        for (user, pw) in SEED_USERS {
            servers
                .register_matrix_user(user, pw, false)
                .await
                .with_context(|| format!("seeding Matrix user {user}"))?;
        }
        Ok(me)
    }

    /// `service` on `layout` (its config written), started on `ports`; with the servers
    /// value a test uses to reach it.
    async fn started(
        service: Service,
        layout: Layout,
        ports: Vec<u16>,
    ) -> anyhow::Result<(PrivateServer, Servers)> {
        let mut me = PrivateServer {
            service,
            layout,
            ports,
            child: None,
            starts: 0,
        };
        me.start().await?;
        let servers = me.servers_with(None);
        Ok((me, servers))
    }

    /// Which server this is.
    pub fn service(&self) -> Service {
        self.service
    }

    /// Its directory (config, data, `log/<name>.log`).
    pub fn dir(&self) -> &Path {
        &self.layout.root
    }

    /// The server's config file, for a test that wants to change a setting (stop, edit,
    /// start again).
    pub fn config_path(&self) -> PathBuf {
        self.layout.config_file(self.service)
    }

    /// Where its console output goes (appended across starts).
    pub fn log_path(&self) -> PathBuf {
        self.layout.log_file(self.service)
    }

    /// The pid of the running process this value started, if it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// How many times it has been started (1 after the constructor).
    pub fn starts(&self) -> usize {
        self.starts
    }

    /// This Prosody's addresses (for a Synapse: the shared Prosody's, from `shared`).
    pub fn xmpp(&self) -> Option<XmppServer> {
        (self.service == Service::Prosody).then(|| XmppServer {
            c2s: loopback(self.ports[0]),
            component: loopback(self.ports[1]),
            domain: XMPP_DOMAIN.to_owned(),
            muc: MUC_DOMAIN.to_owned(),
        })
    }

    /// This Synapse's handles, if it is one.
    pub fn matrix(&self) -> Option<MatrixServer> {
        (self.service == Service::Synapse).then(|| MatrixServer {
            url: format!("http://127.0.0.1:{}", self.ports[0]),
            server_name: SERVER_NAME.to_owned(),
            shared_secret: config::REGISTRATION_SHARED_SECRET.to_owned(),
        })
    }

    /// The handles test clients take: this server for its network, the `shared` servers
    /// for the others. For a private Prosody, `dir` is this server's directory, so
    /// [`Servers::register_xmpp_user`] (and `XmppUser::register`) make accounts here.
    pub fn servers(&self, shared: &Servers) -> Servers {
        self.servers_with(Some(shared))
    }

    fn servers_with(&self, shared: Option<&Servers>) -> Servers {
        let mut s = shared
            .cloned()
            .unwrap_or_else(|| Servers::new(&self.layout.root));
        if let Some(x) = self.xmpp() {
            s.xmpp = x;
            s.dir = self.layout.root.clone();
        }
        if let Some(m) = self.matrix() {
            s.matrix = m;
        }
        s
    }

    /// Starts the process (again, on the same config and data) and waits until it is
    /// ready. An error if it already runs.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.pid().is_none(),
            "{} already runs (pid {:?})",
            self.service.name(),
            self.pid()
        );
        for port in &self.ports {
            anyhow::ensure!(
                !process::port_open(loopback(*port)).await,
                "cannot start {}: 127.0.0.1:{port} is taken",
                self.service.name()
            );
        }
        let log_path = self.log_path();
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        {
            use std::io::Write as _;
            let _ = writeln!(
                log,
                "==== junction-testkit: starting private {} (start {})",
                self.service.name(),
                self.starts + 1
            );
        }
        let (program, args) = self.service.command(&self.layout);
        let child = tokio::process::Command::new(&program)
            .args(&args)
            .current_dir(self.layout.root.join(self.service.name()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.service.name(), program.display()))?;
        tracing::info!(
            service = self.service.name(),
            pid = child.id(),
            dir = %self.layout.root.display(),
            "Started a private server."
        );
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready().await
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let (deadline, what) = match self.service {
            Service::Synapse => (SYNAPSE_READY, "the private Synapse to answer /health"),
            _ => (PROSODY_READY, "the private Prosody to listen"),
        };
        let http = reqwest::Client::new();
        let health = format!("http://127.0.0.1:{}/health", self.ports[0]);
        let end = tokio::time::Instant::now() + deadline;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    self.child = None;
                    anyhow::bail!(
                        "the private {} exited during startup ({status}); its log ends:\n{}",
                        self.service.name(),
                        process::log_tail(&self.log_path(), 30)
                    );
                }
            }
            let ready = match self.service {
                Service::Synapse => match http.get(&health).send().await {
                    Ok(r) => r.text().await.is_ok_and(|t| t.trim() == "OK"),
                    Err(_) => false,
                },
                _ => {
                    let mut all = true;
                    for port in &self.ports {
                        all &= process::port_open(loopback(*port)).await;
                    }
                    all
                }
            };
            if ready {
                return Ok(());
            }
            if tokio::time::Instant::now() >= end {
                anyhow::bail!(
                    "timed out after {deadline:?} waiting for {what}; its log ends:\n{}",
                    process::log_tail(&self.log_path(), 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process with SIGKILL, as in a crash (every connection drops at once),
    /// and reaps it. Nothing happens if it does not run.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill().ok();
            let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .with_context(|| format!("the private {} did not die", self.service.name()))??;
            tracing::info!(service = self.service.name(), %status, "Killed a private server.");
        }
        Ok(())
    }

    /// Stops the process with SIGTERM (SIGKILL after 15 s) and reaps it. Nothing happens
    /// if it does not run.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if let Some(pid) = child.id() {
            process::signal(pid, rustix::process::Signal::TERM)?;
        }
        match tokio::time::timeout(STOP_GRACE, child.wait()).await {
            Ok(status) => {
                let status = status?;
                tracing::info!(service = self.service.name(), %status, "Stopped a private server.");
            }
            Err(_) => {
                tracing::warn!(
                    service = self.service.name(),
                    "Private server ignored SIGTERM; sending SIGKILL."
                );
                child.start_kill().ok();
                tokio::time::timeout(Duration::from_secs(10), child.wait())
                    .await
                    .with_context(|| {
                        format!("the private {} did not die", self.service.name())
                    })??;
            }
        }
        Ok(())
    }

    /// [`stop`](Self::stop), then [`start`](Self::start).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start().await
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // Reap it before the directory goes, so nothing writes into a removed tree.
            let end = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = fs::remove_dir_all(&self.layout.root);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A private Prosody is killed and started again on the same ports and data: an
    /// account made before the crash still logs in after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_prosody_survives_kill_and_start() -> anyhow::Result<()> {
        crate::servers::servers().await?;
        let mut p = PrivateServer::prosody().await?;
        let shared = crate::servers::servers().await?;
        let s = p.servers(shared);
        assert_ne!(s.xmpp.c2s, shared.xmpp.c2s);
        let user = crate::unique("pp");
        let u = crate::clients::XmppUser::register(&s, &user, "pw").await?;
        drop(u);
        let pid = p.pid().unwrap();
        p.kill().await?;
        assert!(p.pid().is_none());
        assert!(!process::port_open(s.xmpp.c2s).await);
        p.start().await?;
        assert_ne!(p.pid(), Some(pid));
        assert_eq!(p.starts(), 2);
        crate::clients::XmppUser::connect(&s, &user, "pw").await?;
        let dir = p.dir().to_path_buf();
        drop(p);
        assert!(!dir.exists());
        Ok(())
    }

    /// A private Synapse with a slot's registration answers, is killed and comes back on
    /// the same database: a user logged in before the crash is still logged in after it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_synapse_survives_kill_and_start() -> anyhow::Result<()> {
        let shared = crate::servers::servers().await?;
        let mut slot = Slot::new(5);
        slot.listen = loopback(free_port()?);
        let t0 = std::time::Instant::now();
        let mut p = PrivateServer::synapse(&[slot]).await?;
        println!("private Synapse up in {:?}", t0.elapsed());
        let s = p.servers(shared);
        assert_ne!(s.matrix.url, shared.matrix.url);
        assert_eq!(s.xmpp.c2s, shared.xmpp.c2s);
        let alice = crate::clients::MatrixUser::login(&s, "alice", "alicepw").await?;
        let room = alice.create_room(None, false).await?;
        p.kill().await?;
        let t1 = std::time::Instant::now();
        p.start().await?;
        println!("private Synapse back in {:?}", t1.elapsed());
        alice.send_text(&room, "after the crash").await?;
        Ok(())
    }
}
