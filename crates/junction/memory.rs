//! Giving the system back the memory a burst left free.
//!
//! glibc's allocator keeps what the program frees for its own reuse and returns pages to the
//! system only from the top of a heap. After a burst (10,000 puppets' first lines queued at
//! once after a restart, a backlog handed out when a network comes back) most of what the
//! burst took is free again, but it lies below memory still in use, so the resident size
//! stays at the burst's height: about 0.7 kB per puppet more than the puppets use, measured
//! with 10,000 (BENCHMARKS.md, "Memory per IRC puppet: what a burst freed, handed back").
//! `malloc_trim(0)` hands those free pages back; with a 100 MB heap it takes about 2 ms. The
//! gateway calls it every [`TRIM_EVERY`], off the async threads.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the gateway returns freed memory to the system.
pub const TRIM_EVERY: Duration = Duration::from_secs(60);

/// Asks the allocator to return the free pages of all its arenas to the system; true when
/// any went. With an allocator other than glibc's it does nothing and returns false (musl's
/// and the others return memory themselves, or have no such call).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn release_freed() -> bool {
    // SAFETY: `malloc_trim` takes no pointer; it works on the allocator's own free lists
    // under the allocator's locks, so any thread may call it at any time.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// See the other [`release_freed`]: this allocator has nothing to trim.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn release_freed() -> bool {
    false
}

/// Starts the trimmer: [`release_freed`] every [`TRIM_EVERY`], on a blocking thread (the
/// allocator's locks are held while it runs), until `shutdown`.
pub fn spawn_trimmer(shutdown: CancellationToken) {
    let tick = tokio::time::interval_at(tokio::time::Instant::now() + TRIM_EVERY, TRIM_EVERY);
    let job = || {
        let started = std::time::Instant::now();
        (release_freed(), started.elapsed())
    };
    crate::gateway::spawn_ticking(tick, shutdown, job, |r| {
        if let Ok((released, took)) = r {
            tracing::debug!(released, ?took, "Freed memory offered back to the system.");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trim may be called from any thread while others allocate, with blocks freed below
    /// one still in use.
    #[test]
    fn trimming_is_safe_while_other_threads_allocate() {
        let burst: Vec<Vec<u8>> = (0..64).map(|i| vec![i as u8; 64 * 1024]).collect();
        let live = vec![1u8; 1024];
        drop(burst);
        let other = std::thread::spawn(|| (0..1000).map(|i| vec![0u8; i].len()).sum::<usize>());
        let released = release_freed();
        assert!(other.join().is_ok());
        // Off glibc there is nothing to trim. On glibc what comes back depends on what the
        // other tests hold (and on the allocator actually loaded), so only the call is checked.
        if !cfg!(all(target_os = "linux", target_env = "gnu")) {
            assert!(!released);
        }
        assert_eq!(live.len(), 1024);
    }
}
