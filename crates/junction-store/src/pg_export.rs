//! `export` of the PostgreSQL backend, streamed: the connection thread reads each table
//! through a portal, a batch at a time, inside one read-only repeatable-read transaction (one
//! consistent view of the whole store), and hands the batches over a bounded channel to the
//! caller, which writes them out as they come. Memory stays at a few batches whatever the
//! store's size, and a caller that stops early (`is_empty` after the first row) ends the read
//! at once.

use super::{be, codec, u64_of};
use crate::{AuditEntry, Result, Row, StoreError};
use junction_core::{Delivery, EventId, MessageId, NetworkId, RoomRef, UserRef};
use postgres::{Client, IsolationLevel, Transaction};
use std::sync::mpsc::SyncSender;

/// Rows fetched from a portal at a time.
const BATCH: i32 = 1000;

/// Batches waiting for the caller at most: the reader waits while they are there.
pub(super) const QUEUED: usize = 4;

/// The caller stopped taking rows: the read ends, and the caller's own error is the answer.
fn gone() -> StoreError {
    StoreError::Backend("the export was stopped".into())
}

/// Reads every row of the store, in the dump's order, into `send`.
pub(super) fn export_rows(c: &mut Client, send: &SyncSender<Vec<Row>>) -> Result<()> {
    let mut tx = c
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(be)?;
    let each = |tx: &mut Transaction<'_>,
                sql: &str,
                row: &mut dyn FnMut(&postgres::Row) -> Result<Option<Row>>|
     -> Result<()> {
        let portal = tx.bind(sql, &[]).map_err(be)?;
        loop {
            let rows = tx.query_portal(&portal, BATCH).map_err(be)?;
            if rows.is_empty() {
                return Ok(());
            }
            let mut batch = Vec::with_capacity(rows.len());
            for r in &rows {
                if let Some(out) = row(r)? {
                    batch.push(out);
                }
            }
            send.send(batch).map_err(|_| gone())?;
        }
    };
    each(
        &mut tx,
        "SELECT event, stamp, sender_network, sender_user, private FROM events \
         ORDER BY stamp, event",
        &mut |r| {
            let (n, u): (Option<String>, Option<String>) = (r.get(2), r.get(3));
            Ok(Some(Row::Event {
                event: EventId(r.get(0)),
                stamp: Some(u64_of(r.get(1))),
                sender: n.zip(u).map(|(n, u)| UserRef::new(n, u)),
                private: r.get(4),
            }))
        },
    )?;
    each(
        &mut tx,
        "SELECT event, network, room, ids FROM by_event",
        &mut |r| {
            let ids: Vec<String> = r.get(3);
            Ok(Some(Row::Map {
                event: EventId(r.get(0)),
                room: RoomRef::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                ids: ids.into_iter().map(MessageId::new).collect(),
            }))
        },
    )?;
    each(
        &mut tx,
        "SELECT network, id, row FROM outbox ORDER BY network, id",
        &mut |r| match serde_json::from_slice::<Delivery>(r.get(2)) {
            Ok(delivery) => Ok(Some(Row::Outbox {
                delivery: Box::new(delivery),
            })),
            Err(e) => {
                let k = format!("{}/{}", r.get::<_, &str>(0), r.get::<_, i64>(1));
                tracing::warn!(table = "outbox", key = %k, error = %e, "A stored record could not be read back; it is left out.");
                Ok(None)
            }
        },
    )?;
    each(&mut tx, "SELECT k, stamp FROM txns", &mut |r| {
        Ok(Some(Row::Txn {
            key: r.get(0),
            stamp: Some(u64_of(r.get(1))),
        }))
    })?;
    each(
        &mut tx,
        "SELECT network, user_network, user_id, identity FROM puppets",
        &mut |r| {
            Ok(Some(Row::Puppet {
                network: NetworkId::new(r.get::<_, String>(0)),
                user: UserRef::new(r.get::<_, String>(1), r.get::<_, String>(2)),
                identity: r.get(3),
            }))
        },
    )?;
    each(
        &mut tx,
        "SELECT link FROM links ORDER BY bridge COLLATE \"C\"",
        &mut |r| {
            Ok(Some(Row::Link {
                link: serde_json::from_slice(r.get(0)).map_err(codec)?,
            }))
        },
    )?;
    each(
        &mut tx,
        "SELECT network, room, cursor FROM cursors",
        &mut |r| {
            Ok(Some(Row::Cursor {
                room: RoomRef::new(r.get::<_, String>(0), r.get::<_, String>(1)),
                cursor: r.get(2),
            }))
        },
    )?;
    each(
        &mut tx,
        "SELECT ns, k, v, stamp, private FROM kv",
        &mut |r| {
            let stamp: Option<i64> = r.get(3);
            Ok(Some(Row::kv(
                r.get(0),
                r.get(1),
                r.get(2),
                stamp.map(u64_of),
                r.get(4),
            )))
        },
    )?;
    each(
        &mut tx,
        "SELECT ts, actor, action, outcome FROM audit ORDER BY id",
        &mut |r| {
            Ok(Some(Row::Audit {
                entry: AuditEntry {
                    ts_ms: u64_of(r.get(0)),
                    actor: r.get(1),
                    action: r.get(2),
                    outcome: r.get(3),
                },
            }))
        },
    )?;
    tx.commit().map_err(be)
}
