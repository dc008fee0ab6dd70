//! The portable dump of a store (`junction store export` / `import`): one [`Row`] per line
//! of JSON, in terms every backend shares, so a store moves between sled and PostgreSQL.
//!
//! What is derived is not dumped: the reverse message map (rebuilt from each room's ids),
//! puppet owners (from the puppets) and the time indexes (from the rows' times). Outbox rows
//! get new ids on import, in the order they had.

use crate::{AuditEntry, Result, Store, StoreError};
use junction_core::router::Link;
use junction_core::{Delivered, Delivery, EventId, MessageId, NetworkId, RoomRef, UserRef};
use serde::{Deserialize, Serialize};

/// One row of a dump.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Row {
    /// A recorded event: when (ms since the epoch; none for rows an earlier version stored
    /// without a time, dated at import), who sent it (messages), whether a private
    /// conversation left it.
    Event {
        /// The event.
        event: EventId,
        /// When it was recorded.
        stamp: Option<u64>,
        /// Its sender, for messages.
        sender: Option<UserRef>,
        /// Whether the private retention removes it.
        private: bool,
    },
    /// The ids an event has in one room, in part order.
    Map {
        /// The event.
        event: EventId,
        /// The room.
        room: RoomRef,
        /// Its ids there.
        ids: Vec<MessageId>,
    },
    /// An undelivered outbox row.
    Outbox {
        /// The row (its id is replaced on import).
        delivery: Box<Delivery>,
    },
    /// A Matrix transaction key marked done (time as for events).
    Txn {
        /// The key.
        key: String,
        /// When it was marked.
        stamp: Option<u64>,
    },
    /// The identity `user` has on `network`.
    Puppet {
        /// The network of the identity.
        network: NetworkId,
        /// Whose it is.
        user: UserRef,
        /// The identity.
        identity: String,
    },
    /// A runtime link.
    Link {
        /// The link.
        link: Link,
    },
    /// A room's backfill cursor.
    Cursor {
        /// The room.
        room: RoomRef,
        /// The cursor.
        cursor: String,
    },
    /// An adapter-private row: undated, dated, or dated and private.
    Kv {
        /// Its table.
        ns: String,
        /// Its key.
        key: String,
        /// Its value, in hex.
        value: String,
        /// When it was written, for dated rows.
        stamp: Option<u64>,
        /// Whether the private retention removes it.
        private: bool,
    },
    /// An audit entry (dumped oldest first).
    Audit {
        /// The entry.
        entry: AuditEntry,
    },
}

impl Row {
    /// An adapter-private row.
    pub(crate) fn kv(ns: &str, key: &str, value: &[u8], stamp: Option<u64>, private: bool) -> Row {
        Row::Kv {
            ns: ns.to_owned(),
            key: key.to_owned(),
            value: hex::encode(value),
            stamp,
            private,
        }
    }
}

/// The rows of a dump each backend writes its own way, times given (a row without one is
/// dated now).
pub(crate) enum Own {
    /// A recorded event: id, when, sender, private.
    Event(EventId, u64, Option<UserRef>, bool),
    /// An outbox row, to write under the backend's next id.
    Outbox(Box<Delivery>),
    /// A transaction key and when it was marked.
    Txn(String, u64),
}

/// Writes the rows every backend writes alike, through the [`Store`] methods; gives back
/// the others for the backend to write.
pub(crate) fn import_common<S: Store + ?Sized>(store: &S, row: Row) -> Result<Option<Own>> {
    let dated = |stamp: Option<u64>| stamp.unwrap_or_else(junction_core::clock::now_ms);
    match row {
        Row::Map { event, room, ids } => {
            // No outbox row has id 0 in any backend (ids start at 1): this only maps.
            store.record_delivered(&Delivered {
                outbox_id: 0,
                target: room,
                event,
                outcome: Ok(ids),
            })?;
        }
        Row::Puppet {
            network,
            user,
            identity,
        } => store.set_puppet(&network, &user, &identity)?,
        Row::Link { link } => store.put_link(&link)?,
        Row::Cursor { room, cursor } => store.set_cursor(&room, &cursor)?,
        Row::Kv {
            ns,
            key,
            value,
            stamp,
            private,
        } => {
            let value = hex::decode(&value)
                .map_err(|e| StoreError::Codec(format!("kv value of {ns}/{key}: {e}")))?;
            match (stamp, private) {
                (None, _) => store.kv_put(&ns, &key, &value)?,
                (Some(ts), false) => store.kv_put_dated(&ns, &key, &value, ts)?,
                (Some(ts), true) => store.kv_put_private(&ns, &key, &value, ts)?,
            }
        }
        Row::Audit { entry } => store.audit(&entry)?,
        Row::Event {
            event,
            stamp,
            sender,
            private,
        } => return Ok(Some(Own::Event(event, dated(stamp), sender, private))),
        Row::Outbox { delivery } => return Ok(Some(Own::Outbox(delivery))),
        Row::Txn { key, stamp } => return Ok(Some(Own::Txn(key, dated(stamp)))),
    }
    Ok(None)
}

/// True when `store` holds nothing a dump would carry.
pub fn is_empty<S: Store + ?Sized>(store: &S) -> Result<bool> {
    let mut any = false;
    let r = store.export(&mut |_| {
        any = true;
        Err(StoreError::Backend("stop".into()))
    });
    match r {
        Ok(()) => Ok(true),
        Err(_) if any => Ok(false),
        Err(e) => Err(e),
    }
}
