//! A store that fails for real: the gateway's `data_dir` sits on a small tmpfs of the test's
//! own, which the test fills with a file while people on all three networks talk.
//!
//! sled latches the first I/O error and refuses every write until the process restarts, so
//! "the store comes back" means: `/health` answers 503 with a `store` entry while the disk is
//! full, the gateway exits non-zero by itself after `store_retry_seconds`, the space is freed,
//! and the gateway started again on the same `data_dir` relays every line said before, during
//! and after the failure exactly once (the figures per direction as in `faults.rs`).
//!
//! A tmpfs needs the right to mount (root, or `CAP_SYS_ADMIN`). Where the test may not mount,
//! it says so and passes without running: a loop-mounted filesystem needs the same right, and
//! a file size limit (`RLIMIT_FSIZE`) on the gateway process would refuse writes by file
//! size rather than fill a disk (and sled grows one file, so it would not show a full disk's
//! effect on the other files of the store).

use super::faults::{self, tail, tally, Net, OwnInspircd, Rig};
use anyhow::Context as _;
use junction_testkit::{eventually, unique};
use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// How long anything may take to cross or come up.
const WAIT: Duration = Duration::from_secs(120);
/// The pause between two lines one user sends (pacing, not synchronisation).
const PACE: Duration = Duration::from_millis(150);
/// The size of the tmpfs under `data_dir`: room for a fresh store, small enough to fill.
const TMPFS_BYTES: u64 = 32 * 1024 * 1024;
/// How long the gateway's store may fail before it exits (`store_retry_seconds`).
const STORE_RETRY_SECONDS: u64 = 10;

/// A tmpfs mounted by the test; unmounted when dropped, whatever happened (lazily when a
/// process still has files open on it, so the mount never outlives the test).
struct Tmpfs {
    at: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `bytes` at `at` (created if needed). `Ok(None)` when mounting is not
    /// permitted here, with the reason printed.
    fn mount(at: &Path, bytes: u64) -> anyhow::Result<Option<Tmpfs>> {
        std::fs::create_dir_all(at)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("tmpfs")
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Ok(Some(Tmpfs { at: at.to_owned() })),
            Ok(o) => {
                println!(
                    "SKIPPED: cannot mount a tmpfs for the store ({}; needs root or CAP_SYS_ADMIN): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                Ok(None)
            }
            Err(e) => {
                println!("SKIPPED: cannot run mount(8): {e}");
                Ok(None)
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let plain = Command::new("umount")
            .arg(&self.at)
            .stderr(std::process::Stdio::null())
            .status();
        if !plain.is_ok_and(|s| s.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.at).status();
        }
    }
}

/// Writes zeros to `path` until the filesystem is full; bounded by `limit` bytes (more than
/// the filesystem holds). Returns how many bytes went in.
fn fill(path: &Path, limit: u64) -> anyhow::Result<u64> {
    let mut f =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let chunk = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    while written <= limit {
        match f.write(&chunk) {
            Ok(0) => return Ok(written),
            Ok(n) => written += n as u64,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return Ok(written),
            Err(e) => return Err(e).context("filling the store's filesystem"),
        }
    }
    anyhow::bail!("wrote {written} bytes without filling the filesystem")
}

/// Sends numbered lines `range` from every network, paced, and notes them as expected.
async fn talk(
    rig: &Rig,
    tag: &str,
    range: std::ops::Range<u32>,
    expected: &mut BTreeMap<Net, Vec<u32>>,
) -> anyhow::Result<()> {
    faults::talk(expected, &Net::ALL, range, PACE, |net, n| {
        rig.send(net, tag, n)
    })
    .await
}

/// When the space comes back, relative to the gateway's own exit.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Freed {
    /// After the gateway has exited: a supervisor restarts it once the disk has room.
    AfterTheExit,
    /// While the gateway still runs with its store failing: sled keeps refusing writes
    /// (the error is latched), so it exits all the same.
    BeforeTheExit,
}

/// The gateway's data directory fills up while all three networks talk: `/health` answers
/// 503 with a `store` entry, the gateway exits non-zero by itself after
/// `store_retry_seconds`, and once the space is freed and it is started again on the same
/// data directory, every line said before, during and after the failure has reached both
/// other networks exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_503_then_a_restart_loses_and_doubles_nothing() -> anyhow::Result<()> {
    full_disk(Freed::AfterTheExit).await
}

/// As above, but the space comes back while the gateway still runs on its failing store:
/// it still exits non-zero (sled has latched the error), and its restart loses and doubles
/// nothing, the lines said after the space came back included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_back_before_the_exit_still_restarts_and_loses_nothing() -> anyhow::Result<()> {
    full_disk(Freed::BeforeTheExit).await
}

/// The scenario of both tests; `freed` says when the filler is removed.
async fn full_disk(freed: Freed) -> anyhow::Result<()> {
    // An InspIRCd of the test's own, whose channel history replays the IRC lines the failing
    // gateway could not store.
    let ircd = OwnInspircd::start().await?;
    let mut rig = Rig::new(ircd.addr()).await?;
    let data = rig.dir.path().join("data");
    let Some(tmpfs) = Tmpfs::mount(&data, TMPFS_BYTES)? else {
        return Ok(());
    };
    let config = rig.config().replacen(
        "[gateway]\n",
        &format!("[gateway]\nstore_retry_seconds = {STORE_RETRY_SECONDS}\n"),
        1,
    );
    std::fs::write(rig.config_path(), config)?;
    rig.start_gateway().await?;
    let tag = unique("full");
    let mut expected: BTreeMap<Net, Vec<u32>> = BTreeMap::new();

    // Up: every line crosses.
    talk(&rig, &tag, 0..5, &mut expected).await?;
    eventually(WAIT, "the first lines on every other network", || async {
        let got = rig.received(&tag).await.ok()?;
        tally(&expected, &Net::ALL, &got)
            .values()
            .all(|f| f.lost == 0)
            .then_some(())
    })
    .await?;

    // The disk fills up; everyone keeps talking.
    let filler = tmpfs.at.join("filler");
    let filled = fill(&filler, TMPFS_BYTES + 1024 * 1024)?;
    println!("filler: {filled} bytes");
    talk(&rig, &tag, 10..16, &mut expected).await?;

    let http = reqwest::Client::new();
    let url = format!("http://{}/health", rig.metrics);
    let health = eventually(WAIT, "/health to answer 503 with a store entry", || {
        let req = http.get(&url).send();
        async move {
            let r = req.await.ok()?;
            if r.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                return None;
            }
            let body: serde_json::Value = r.json().await.ok()?;
            (body["store"]["state"] == "failing").then_some(body)
        }
    })
    .await
    .with_context(|| tail(&rig.log_path(), 40))?;
    println!("health while the disk is full: {health}");
    assert!(
        health["store"]["reason"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "the store entry says why: {health}"
    );
    if freed == Freed::BeforeTheExit {
        std::fs::remove_file(&filler)?;
        talk(&rig, &tag, 16..20, &mut expected).await?;
    }

    // The gateway gives up by itself, with a non-zero exit, after store_retry_seconds.
    let mut gateway = rig.gateway.take().context("the gateway runs")?;
    let status = tokio::time::timeout(
        Duration::from_secs(STORE_RETRY_SECONDS) + WAIT,
        gateway.child.wait(),
    )
    .await
    .with_context(|| {
        format!(
            "the gateway did not exit with its store failing; log ends:\n{}",
            tail(&rig.log_path(), 40)
        )
    })??;
    println!("gateway exited: {status}");
    assert!(
        !status.success() && status.code().is_some(),
        "the gateway must exit by itself with a non-zero status, not {status}"
    );
    let log = std::fs::read_to_string(rig.log_path())?;
    assert!(
        log.contains("exiting so that a restart reopens it"),
        "the log says why it exits:\n{}",
        tail(&rig.log_path(), 40)
    );

    // Down: everyone keeps talking. Then the space comes back and the gateway is restarted
    // on the same data directory, as a supervisor would.
    talk(&rig, &tag, 20..24, &mut expected).await?;
    if freed == Freed::AfterTheExit {
        std::fs::remove_file(&filler)?;
    }
    rig.start_gateway().await?;
    talk(&rig, &tag, 30..34, &mut expected).await?;

    rig.settle(
        &tag,
        &expected,
        "full disk under the store (lines said before, during and after the failure):",
        80,
    )
    .await?;
    rig.kill_gateway().await?;
    drop(tmpfs);
    Ok(())
}
