//! Processes the harness starts: pid files, liveness, ports, signals.
//!
//! A pid file is trusted only while `/proc/PID/cmdline` still names the program and the
//! config file under the harness dir: a pid the kernel reused for something else, or a
//! server from another harness dir, is never signalled. Exited servers can linger as
//! zombies until their parent reaps them, so a zombie counts as dead.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// What `/proc` says about a pid.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Liveness {
    /// Running, and its command line names `marker` and the config path.
    Ours,
    /// Gone, a zombie, or some other program.
    NotOurs,
}

/// The process state letter from `/proc/PID/stat` (`R`, `S`, `Z`, ...), if the pid exists.
pub(crate) fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_state(&stat)
}

/// Whether `pid` exists and has not exited (a zombie counts as exited). Unlike [`liveness`]
/// it does not read the command line, which is briefly unreadable or the launcher's own
/// while the process execs the server.
pub(crate) fn alive(pid: u32) -> bool {
    !matches!(proc_state(pid), None | Some('Z') | Some('X') | Some('x'))
}

/// The state letter follows the last `)`: the command name in parentheses may itself
/// contain spaces or parentheses.
fn parse_stat_state(stat: &str) -> Option<char> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().next()?.chars().next()
}

/// Whether `pid` is a live process whose command line contains every one of `needles`.
pub(crate) fn liveness(pid: u32, needles: &[&str]) -> Liveness {
    match proc_state(pid) {
        None | Some('Z') | Some('X') | Some('x') => return Liveness::NotOurs,
        Some(_) => {}
    }
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return Liveness::NotOurs;
    };
    let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
    if needles.iter().all(|n| cmdline.contains(n)) {
        Liveness::Ours
    } else {
        Liveness::NotOurs
    }
}

/// The pid recorded in `path`, if the file exists and holds a number.
pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Whether something accepts TCP connections on `addr` right now.
pub(crate) async fn port_open(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

/// Sends `signal` to `pid`. A pid that is already gone is not an error.
pub(crate) fn signal(pid: u32, signal: rustix::process::Signal) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("pid out of range")?;
    let Some(p) = rustix::process::Pid::from_raw(raw) else {
        anyhow::bail!("invalid pid {pid}");
    };
    match rustix::process::kill_process(p, signal) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::SRCH => Ok(()),
        Err(e) => Err(anyhow::anyhow!("signalling pid {pid}: {e}")),
    }
}

/// Stops `pid` (SIGTERM, then SIGKILL after `grace`) and waits until it is gone or a
/// zombie. Only call this for a pid that [`liveness`] says is ours.
pub(crate) async fn terminate(pid: u32, needles: &[&str], grace: Duration) -> anyhow::Result<()> {
    signal(pid, rustix::process::Signal::TERM)?;
    if wait_dead(pid, needles, grace).await {
        return Ok(());
    }
    tracing::warn!(pid, "Server ignored SIGTERM; sending SIGKILL.");
    signal(pid, rustix::process::Signal::KILL)?;
    if wait_dead(pid, needles, Duration::from_secs(10)).await {
        Ok(())
    } else {
        anyhow::bail!("pid {pid} still running after SIGKILL")
    }
}

async fn wait_dead(pid: u32, needles: &[&str], deadline: Duration) -> bool {
    crate::eventually(deadline, "a server to exit", || async {
        (liveness(pid, needles) == Liveness::NotOurs).then_some(())
    })
    .await
    .is_ok()
}

/// The last `lines` lines of a log file, for error messages.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(raw) = std::fs::read(path) else {
        return format!("(no log at {})", path.display());
    };
    let text = String::from_utf8_lossy(&raw);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    all[from..].join("\n")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn stat_state_after_last_paren() {
        assert_eq!(parse_stat_state("12 (a b) c) S 1 2 3"), Some('S'));
        assert_eq!(parse_stat_state("12 (x) Z 1"), Some('Z'));
        assert_eq!(parse_stat_state("garbage"), None);
    }

    #[test]
    fn own_process_is_alive_with_matching_cmdline() {
        let me = std::process::id();
        assert_eq!(liveness(me, &[]), Liveness::Ours);
        assert_eq!(
            liveness(me, &["/definitely/not/in/the/cmdline"]),
            Liveness::NotOurs
        );
    }

    #[test]
    fn zombie_counts_as_dead() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: once it exits it is a zombie, which must read as dead.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while proc_state(pid) != Some('Z') && std::time::Instant::now() < deadline {
            std::thread::yield_now();
        }
        assert_eq!(proc_state(pid), Some('Z'));
        assert_eq!(liveness(pid, &[]), Liveness::NotOurs);
        child.wait().unwrap();
    }

    #[test]
    fn log_tail_keeps_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.log");
        std::fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(log_tail(&p, 2), "b\nc");
    }
}
