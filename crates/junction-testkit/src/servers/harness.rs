//! Install, start, stop and inspect the servers of one harness directory.

use super::{
    config, install, loopback, postgres, process, servers_dir, Layout, Servers, Service, Slot,
    MATRIX_PORT, SEED_USERS, SLOTS,
};
use anyhow::Context as _;
use fs2::FileExt;
use process::Liveness;
use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::time::Duration;

/// How long to wait for another process's start or stop to finish.
const LOCK_DEADLINE: Duration = Duration::from_secs(10 * 60);

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
        let postgres = postgres::write_configs(l, write_if_changed)?;
        Ok(vec![
            (Service::Synapse, synapse),
            (Service::Prosody, prosody),
            (Service::Inspircd, inspircd),
            (Service::Ngircd, ngircd),
            (Service::Postgres, postgres),
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
                generate_synapse_keys(&self.layout).await?;
            }
            if svc == Service::Postgres {
                postgres::init_cluster(&self.layout).await?;
            }
            let pid = self.spawn(svc)?;
            tracing::info!(service = svc.name(), pid, "Started server.");
            started.push(svc);
        }
        let (a, b, c, d, e) = tokio::join!(
            self.wait_ready(Service::Synapse),
            self.wait_ready(Service::Prosody),
            self.wait_ready(Service::Inspircd),
            self.wait_ready(Service::Ngircd),
            self.wait_ready(Service::Postgres),
        );
        a.and(b).and(c).and(d).and(e)?;
        postgres::seed(&self.layout).await?;
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
        if svc == Service::Postgres {
            // SIGTERM is PostgreSQL's "smart" shutdown, which waits for every client to
            // leave; SIGINT disconnects them and stops at once, cleanly.
            process::signal(pid, rustix::process::Signal::INT)?;
        }
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

/// Synapse writes its signing key with `--generate-keys` before its first start (once: a
/// key already there is kept).
pub(super) async fn generate_synapse_keys(l: &Layout) -> anyhow::Result<()> {
    if l.signing_key().exists() {
        return Ok(());
    }
    let log_path = l.log_file(Service::Synapse);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let status = tokio::process::Command::new(install::synapse_python())
        .args(["-m", "synapse.app.homeserver", "-c"])
        .arg(l.config_file(Service::Synapse))
        .arg("--generate-keys")
        .current_dir(&l.synapse)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .await
        .context("running synapse --generate-keys")?;
    anyhow::ensure!(
        status.success(),
        "synapse --generate-keys failed ({status}):\n{}",
        process::log_tail(&log_path, 30)
    );
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
