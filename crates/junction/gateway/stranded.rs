//! A failing store: its state on `/health`, the retry tick that tries it again (and gives
//! up after `store_retry`), and the outbox rows a failed flush left recorded but unsent.

use super::{Hub, Loop};
use junction_core::{Delivery, NetworkId};
use std::collections::HashSet;
use std::time::Instant;

/// The store table the gateway writes to when it tries a failing store again.
const PROBE_TABLE: &str = "gateway/probe";

impl Loop {
    /// Whether the loop has something to try again on its retry tick.
    pub(super) fn waits(&self) -> bool {
        self.store_failing.is_some() || self.parting.is_some()
    }

    /// The retry tick: leaves rooms whose announcements took too long, and tries a failing
    /// store again (a write and a flush). Errors when the store has failed for longer than
    /// `store_retry`.
    pub(super) fn retry(&mut self, hub: &Hub) -> anyhow::Result<()> {
        if self
            .parting
            .as_ref()
            .is_some_and(|p| Instant::now() >= p.until)
        {
            self.part(hub);
        }
        let Some(since) = self.store_failing else {
            return Ok(());
        };
        let now_ms = junction_core::clock::now_ms();
        let tried = self
            .store
            .kv_put(PROBE_TABLE, "last", &now_ms.to_be_bytes())
            .and_then(|()| self.store.flush());
        self.note_store(&tried);
        match tried {
            Ok(()) => {
                let out = self.with_stranded(Vec::new(), hub);
                self.dispatch(out, hub);
                Ok(())
            }
            Err(e) if since.elapsed() >= self.store_retry => Err(anyhow::anyhow!(
                "the store has refused writes for {} s ({e}); exiting so that a restart reopens it",
                since.elapsed().as_secs()
            )),
            Err(_) => Ok(()),
        }
    }

    /// Notes the outcome of a flush: a failure shows on `/health` and marks outbox rows as
    /// possibly stranded; a success clears that, and covers every answer recorded before it.
    pub(super) fn note_store(&mut self, r: &junction_store::Result<()>) {
        if r.is_ok() {
            self.marks_since = None;
        }
        match r {
            Err(e) => {
                self.stranded = true;
                if self.store_failing.is_none() {
                    self.store_failing = Some(Instant::now());
                }
                self.health.set_store(Some(e.to_string()));
            }
            Ok(()) => {
                if self.store_failing.take().is_some() {
                    self.health.set_store(None);
                }
            }
        }
    }

    /// After a successful flush: records the answers the store refused before, and puts in
    /// front of `out` the outbox rows recorded but never handed out because a flush failed
    /// (their origin's retry is a duplicate, so nothing else would hand them out before a
    /// restart). Rows in flight, held, or in `out` are left alone.
    pub(super) fn with_stranded(&mut self, out: Vec<Delivery>, hub: &Hub) -> Vec<Delivery> {
        if !self.unrecorded.is_empty() {
            for d in std::mem::take(&mut self.unrecorded) {
                if let Err(e) = self.store.record_delivered(&d) {
                    tracing::error!(error = %e, "Could not record a delivery.");
                    self.unrecorded.push(d);
                }
            }
            let flushed = self.store.flush();
            self.note_store(&flushed);
            if flushed.is_err() || !self.unrecorded.is_empty() {
                return out;
            }
        }
        if !self.stranded {
            return out;
        }
        let mut skip: HashSet<(NetworkId, u64)> = self.sent_at.keys().cloned().collect();
        skip.extend(
            self.held
                .values()
                .flatten()
                .chain(out.iter())
                .map(|d| (d.target.network.clone(), d.outbox_id)),
        );
        let mut found: Vec<Delivery> = Vec::new();
        for network in hub.outboxes.keys() {
            match self.store.pending(network) {
                Ok(rows) => found.extend(
                    rows.into_iter()
                        .filter(|d| !skip.contains(&(d.target.network.clone(), d.outbox_id))),
                ),
                Err(e) => {
                    tracing::error!(error = %e, %network, "Could not read the outbox.");
                    return out;
                }
            }
        }
        self.stranded = false;
        if !found.is_empty() {
            tracing::info!(
                count = found.len(),
                "Handing out messages whose store flush had failed."
            );
        }
        found.extend(out);
        found
    }
}
