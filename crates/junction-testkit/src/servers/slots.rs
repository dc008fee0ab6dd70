//! Test slots: one gateway identity (appservice registration, XMPP component) per test at a
//! time, held through a lock file.

use super::{loopback, servers_dir, Layout, SLOTS};
use anyhow::Context as _;
use fs2::FileExt;
use std::fs::{self, File, OpenOptions};
use std::net::SocketAddr;
use std::ops::Deref;
use std::path::Path;
use std::time::Duration;

/// How long to wait for a free test slot before giving up.
const SLOT_DEADLINE: Duration = Duration::from_secs(20 * 60);

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
}
