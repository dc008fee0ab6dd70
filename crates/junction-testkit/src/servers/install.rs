//! Installing the servers: Debian packages through apt, Synapse from PyPI into a venv.
//!
//! [`plan`] looks at the machine and lists only the steps still needed, so an installed
//! machine costs a few `dpkg-query` calls; [`run`] carries the plan out. Both are separate
//! so `junction-testkit install --dry-run` can show what a fresh machine would do.

use anyhow::Context as _;
use std::path::{Path, PathBuf};
use tokio::process::Command;

/// Where Synapse's virtualenv lives.
pub const SYNAPSE_VENV: &str = "/opt/junction-synapse";
/// The Synapse release the harness pins.
pub const SYNAPSE_VERSION: &str = "1.163.2";
/// The Debian packages that provide the other three servers, `prosody-modules` (the MUC's
/// message moderation, XEP-0425, as deployments run it), and `openssl`, whose command the TLS
/// tests use to make their certificates, `postgresql` for the store's PostgreSQL backend,
/// and matrix-nio on libolm, the encrypting Matrix client of the encrypted-room tests
/// ([`crate::clients::nio::PACKAGES`]).
pub const APT_PACKAGES: &[&str] = &[
    "prosody",
    "prosody-modules",
    "inspircd",
    "ngircd",
    "openssl",
    "postgresql",
    crate::clients::nio::PACKAGES[0],
    crate::clients::nio::PACKAGES[1],
];
/// The system Python the venv is made from (Debian's, so `python3-venv` applies).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

/// One install step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `apt-get update` (once, before the first package install).
    AptUpdate,
    /// `apt-get install -y <packages>`.
    AptInstall(Vec<String>),
    /// `python3 -m venv <dir>` (after removing a broken one).
    Venv(PathBuf),
    /// `<venv>/bin/pip install matrix-synapse==<version>`.
    PipSynapse(PathBuf),
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::AptUpdate => write!(f, "apt-get update"),
            Step::AptInstall(p) => write!(f, "apt-get install -y {}", p.join(" ")),
            Step::Venv(d) => write!(f, "{SYSTEM_PYTHON} -m venv {}", d.display()),
            Step::PipSynapse(d) => write!(
                f,
                "{}/bin/pip install matrix-synapse=={SYNAPSE_VERSION}",
                d.display()
            ),
        }
    }
}

/// The Python interpreter inside Synapse's venv.
pub fn synapse_python() -> PathBuf {
    Path::new(SYNAPSE_VENV).join("bin/python")
}

/// Whether dpkg has `pkg` fully installed.
async fn dpkg_installed(pkg: &str) -> bool {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .await;
    matches!(out, Ok(o) if o.status.success()
        && String::from_utf8_lossy(&o.stdout).trim() == "install ok installed")
}

/// The Synapse version importable from the venv at `venv`, if any.
async fn synapse_installed(venv: &Path) -> Option<String> {
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", "import synapse; print(synapse.__version__)"])
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether the venv at `venv` has a working interpreter and pip.
async fn venv_usable(venv: &Path) -> bool {
    if !venv.join("bin/pip").exists() {
        return false;
    }
    matches!(
        Command::new(venv.join("bin/python")).args(["-c", "import pip"]).output().await,
        Ok(o) if o.status.success()
    )
}

/// The steps this machine still needs, in order. Empty when everything is installed.
pub async fn plan() -> Vec<Step> {
    plan_for(APT_PACKAGES, Path::new(SYNAPSE_VENV)).await
}

/// [`plan`] for the given server packages and venv directory.
async fn plan_for(packages: &[&str], venv: &Path) -> Vec<Step> {
    let mut missing: Vec<String> = Vec::new();
    for p in packages {
        if !dpkg_installed(p).await {
            missing.push((*p).to_owned());
        }
    }
    let synapse_ok = synapse_installed(venv).await.as_deref() == Some(SYNAPSE_VERSION);
    let venv_ok = synapse_ok || venv_usable(venv).await;
    if !venv_ok {
        // Debian's python3 has no ensurepip without python3-venv.
        for p in ["python3", "python3-venv"] {
            if !dpkg_installed(p).await {
                missing.push(p.to_owned());
            }
        }
    }
    let mut steps = Vec::new();
    if !missing.is_empty() {
        steps.push(Step::AptUpdate);
        steps.push(Step::AptInstall(missing));
    }
    if !venv_ok {
        steps.push(Step::Venv(venv.to_path_buf()));
    }
    if !synapse_ok {
        steps.push(Step::PipSynapse(venv.to_path_buf()));
    }
    steps
}

/// Runs `cmd`, failing with its name and exit status. Output goes to our stderr so a
/// slow install shows progress.
async fn run_cmd(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    cmd.stdin(std::process::Stdio::null());
    cmd.stdout(std::process::Stdio::inherit());
    cmd.stderr(std::process::Stdio::inherit());
    let status = cmd
        .status()
        .await
        .with_context(|| format!("running {what}"))?;
    anyhow::ensure!(status.success(), "{what} failed ({status})");
    Ok(())
}

/// Keeps Debian's maintainer scripts from starting the packages' system daemons while
/// installing: they would take the ports with the stock configs. Containers usually
/// have this file already; when it is absent it is created for the install and removed
/// afterwards.
struct NoDaemonStart {
    created: Option<PathBuf>,
}

impl NoDaemonStart {
    fn new() -> Self {
        let path = PathBuf::from("/usr/sbin/policy-rc.d");
        if path.exists() {
            return Self { created: None };
        }
        let written = std::fs::write(&path, "#!/bin/sh\n# junction-testkit install\nexit 101\n")
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            });
        match written {
            Ok(()) => Self {
                created: Some(path),
            },
            Err(e) => {
                tracing::warn!(error = %e, "Could not write policy-rc.d; daemons may start.");
                Self { created: None }
            }
        }
    }
}

impl Drop for NoDaemonStart {
    fn drop(&mut self) {
        if let Some(p) = &self.created {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Carries out `steps`.
pub async fn run(steps: &[Step]) -> anyhow::Result<()> {
    let _guard = steps
        .iter()
        .any(|s| matches!(s, Step::AptInstall(_)))
        .then(NoDaemonStart::new);
    for step in steps {
        tracing::info!(%step, "Installing.");
        match step {
            Step::AptUpdate => {
                let mut c = Command::new("apt-get");
                c.args(["update", "-q"]);
                c.env("DEBIAN_FRONTEND", "noninteractive");
                run_cmd(c, "apt-get update").await?;
            }
            Step::AptInstall(pkgs) => {
                let mut c = Command::new("apt-get");
                c.args(["install", "-y", "-q"]);
                c.args(pkgs);
                c.env("DEBIAN_FRONTEND", "noninteractive");
                run_cmd(c, "apt-get install").await?;
            }
            Step::Venv(dir) => {
                if dir.exists() {
                    std::fs::remove_dir_all(dir)
                        .with_context(|| format!("removing broken venv {}", dir.display()))?;
                }
                let mut c = Command::new(SYSTEM_PYTHON);
                c.args(["-m", "venv"]).arg(dir);
                run_cmd(c, "python3 -m venv").await?;
            }
            Step::PipSynapse(dir) => {
                let mut c = Command::new(dir.join("bin/pip"));
                c.args(["install", "-q", "--disable-pip-version-check"]);
                c.arg(format!("matrix-synapse=={SYNAPSE_VERSION}"));
                run_cmd(c, "pip install matrix-synapse").await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn steps_print_as_the_commands_they_run() {
        assert_eq!(
            Step::AptInstall(vec!["prosody".into(), "ngircd".into()]).to_string(),
            "apt-get install -y prosody ngircd"
        );
        assert_eq!(
            Step::PipSynapse(PathBuf::from(SYNAPSE_VENV)).to_string(),
            "/opt/junction-synapse/bin/pip install matrix-synapse==1.163.2"
        );
    }

    /// What a fresh machine would do, shown with a package and a venv this one lacks
    /// (the real list is `junction-testkit install --dry-run`).
    #[tokio::test]
    async fn plan_lists_missing_packages_then_venv_then_synapse() {
        let dir = tempfile::tempdir().unwrap();
        let venv = dir.path().join("venv");
        let steps = plan_for(&["junction-testkit-no-such-package"], &venv).await;
        assert_eq!(steps.len(), 4, "{steps:?}");
        assert_eq!(steps[0], Step::AptUpdate);
        match &steps[1] {
            Step::AptInstall(p) => assert_eq!(p[0], "junction-testkit-no-such-package"),
            other => panic!("expected apt-get install, got {other}"),
        }
        assert_eq!(steps[2], Step::Venv(venv.clone()));
        assert_eq!(steps[3], Step::PipSynapse(venv));
    }

    #[tokio::test]
    async fn plan_skips_what_is_installed() {
        // dpkg itself is always installed on Debian.
        let dir = tempfile::tempdir().unwrap();
        let steps = plan_for(&["dpkg"], &dir.path().join("venv")).await;
        assert!(
            !steps
                .iter()
                .any(|s| matches!(s, Step::AptInstall(p) if p.iter().any(|p| p == "dpkg"))),
            "{steps:?}"
        );
    }
}
