//! The sled store's message map, one row per event (the layout since the `events` tree):
//!
//! - `events`: the event id ([`event_value`]: 17 bytes for a derived id) → [`EventRow`], its
//!   time, sender, private flag and every room's ids;
//! - `remote`: a room's number ([`Names`], 4 bytes) ++ a remote id → the event id, what
//!   [`crate::Store::event_for`] reads; none for an event's origin id, since a gateway event
//!   id is derived from its origin room and id ([`EventId::derive`]): `event_for` derives it
//!   and checks that the event's row holds that id in that room;
//! - `by_time`: the time ++ the event id → the ids of up to 15 events recorded after it
//!   ([`time_row_ids`]), for pruning oldest first; one row per 16 messages, the ids' times
//!   read from their rows.
//!
//! Two sled rows and a sixteenth per message with one target, where the layout before had
//! seven (the map
//! both ways with network and room names in every key, a sender row and a stamp row). sled
//! takes about 100 bytes per row whatever it holds (leaves split at 16 entries, each one's
//! writes logged) plus about 1.7 times the row's bytes, so fewer rows is what saves most.

use crate::{Result, StoreError};
use junction_core::{EventId, MessageId, RoomRef, UserRef};
use std::collections::HashMap;
use std::sync::Mutex;

/// A compact value begins with this byte, which no JSON text nor event id begins with; values
/// an earlier version wrote (JSON, event ids as text) are read as before.
pub(crate) const COMPACT: u8 = 0;

/// An event id as stored in keys and values: a derived id (32 lowercase hex digits) as
/// [`COMPACT`] then its 16 bytes, any other id as its text.
pub(crate) fn event_value(e: &EventId) -> Vec<u8> {
    let id = e.as_str();
    let derived = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    match hex::decode(id) {
        Ok(raw) if derived => [&[COMPACT][..], &raw].concat(),
        _ => id.as_bytes().to_vec(),
    }
}

/// Reads what [`event_value`] wrote (or an earlier version's text).
pub(crate) fn event_from(v: &[u8]) -> EventId {
    match v.split_first() {
        Some((&COMPACT, raw)) if raw.len() == 16 => EventId(hex::encode(raw)),
        _ => EventId(String::from_utf8_lossy(v).into_owned()),
    }
}

fn put_varint(v: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        v.push((n as u8) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
}

/// Reads a varint at the front of `v`, moving past it.
fn take_varint(v: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = v.split_first()?;
        *v = rest;
        n |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

fn put_bytes(v: &mut Vec<u8>, b: &[u8]) {
    put_varint(v, b.len() as u64);
    v.extend_from_slice(b);
}

fn take_bytes<'a>(v: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(take_varint(v)?).ok()?;
    let (b, rest) = (v.get(..len)?, &v[len..]);
    *v = rest;
    Some(b)
}

/// The format byte an [`EventRow`] begins with.
const ROW_V1: u8 = 1;
const PRIVATE: u8 = 1;
const HAS_SENDER: u8 = 2;

/// One event's row in `events`: rooms and networks by number ([`Names`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct EventRow {
    /// When it was recorded (ms since the epoch).
    pub time: u64,
    /// Said in a private conversation, or sent into one.
    pub private: bool,
    /// The sender of a message: its network's number and its user id.
    pub sender: Option<(u32, String)>,
    /// Each room's number and the event's ids there, in part order.
    pub rooms: Vec<(u32, Vec<MessageId>)>,
}

impl EventRow {
    /// The row as stored: the format byte, the time (8 bytes), flags, then varint-prefixed
    /// parts.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![ROW_V1];
        v.extend_from_slice(&self.time.to_be_bytes());
        let flags = if self.private { PRIVATE } else { 0 }
            | if self.sender.is_some() { HAS_SENDER } else { 0 };
        v.push(flags);
        if let Some((net, user)) = &self.sender {
            put_varint(&mut v, u64::from(*net));
            put_bytes(&mut v, user.as_bytes());
        }
        for (room, ids) in &self.rooms {
            put_varint(&mut v, u64::from(*room));
            put_varint(&mut v, ids.len() as u64);
            for id in ids {
                put_bytes(&mut v, id.as_str().as_bytes());
            }
        }
        v
    }

    /// Reads what [`EventRow::encode`] wrote.
    pub fn decode(mut v: &[u8]) -> Result<Self> {
        let bad = || StoreError::Codec("an event row that does not read".into());
        let (&format, rest) = v.split_first().ok_or_else(bad)?;
        if format != ROW_V1 || rest.len() < 9 {
            return Err(bad());
        }
        let time = u64::from_be_bytes(rest[..8].try_into().map_err(|_| bad())?);
        let flags = rest[8];
        v = &rest[9..];
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let sender = if flags & HAS_SENDER != 0 {
            let net = take_varint(&mut v).ok_or_else(bad)?;
            let user = take_bytes(&mut v).ok_or_else(bad)?;
            Some((u32::try_from(net).map_err(|_| bad())?, text(user)))
        } else {
            None
        };
        let mut rooms = Vec::new();
        while !v.is_empty() {
            let room = u32::try_from(take_varint(&mut v).ok_or_else(bad)?).map_err(|_| bad())?;
            let n = take_varint(&mut v).ok_or_else(bad)?;
            let mut ids = Vec::new();
            for _ in 0..n {
                ids.push(MessageId::new(text(take_bytes(&mut v).ok_or_else(bad)?)));
            }
            rooms.push((room, ids));
        }
        Ok(Self {
            time,
            private: flags & PRIVATE != 0,
            sender,
            rooms,
        })
    }

    /// Sets the ids of `room` (replacing those it had).
    pub fn set_ids(&mut self, room: u32, ids: Vec<MessageId>) {
        match self.rooms.iter_mut().find(|(r, _)| *r == room) {
            Some((_, old)) => *old = ids,
            None => self.rooms.push((room, ids)),
        }
    }
}

/// How many events one `by_time` row holds at most.
pub(crate) const TIME_ROW: usize = 16;

/// The event ids a `by_time` row holds, oldest first: the one in its key (after the time),
/// then those its value lists, each varint-prefixed ([`push_time_id`]). An earlier version's
/// rows hold one (an empty value).
pub(crate) fn time_row_ids<'a>(first: &'a [u8], mut v: &'a [u8]) -> Vec<&'a [u8]> {
    let mut ids = vec![first];
    while let Some(id) = take_bytes(&mut v) {
        ids.push(id);
    }
    ids
}

/// Adds an event id to a `by_time` row's value.
pub(crate) fn push_time_id(v: &mut Vec<u8>, id: &[u8]) {
    put_bytes(v, id);
}

/// A `remote` key: the room's number (4 bytes, big-endian: its first byte is NUL for the
/// first 16M rooms, which sets it apart from the earlier `by_remote` keys, whose network
/// name comes first) then the remote id.
pub(crate) fn remote_key(room: u32, remote: &str) -> Vec<u8> {
    let mut k = room.to_be_bytes().to_vec();
    k.extend_from_slice(remote.as_bytes());
    k
}

/// The text a room is named by in [`Names`]: network NUL room.
pub(crate) fn room_name(r: &RoomRef) -> Vec<u8> {
    crate::key(&[r.network.as_str(), r.room.as_str()])
}

/// Network and room names by number: `names` (name → number, 4 bytes big-endian) and
/// `named` (number → name), both kept whole in memory once read. A number is written to
/// `named` before `names`, and before any row using it, so a crash leaves at most a number
/// nothing uses.
pub(crate) struct Names {
    names: sled::Tree,
    named: sled::Tree,
    cache: Mutex<NameCache>,
}

/// Names read so far, both ways.
type NameCache = (HashMap<Vec<u8>, u32>, HashMap<u32, Vec<u8>>);

fn be(e: sled::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

impl Names {
    pub fn new(names: sled::Tree, named: sled::Tree) -> Self {
        Self {
            names,
            named,
            cache: Mutex::new(Default::default()),
        }
    }

    /// The number of `name`, if it has one.
    pub fn get(&self, name: &[u8]) -> Result<Option<u32>> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = c.0.get(name) {
            return Ok(Some(*n));
        }
        let Some(v) = self.names.get(name).map_err(be)? else {
            return Ok(None);
        };
        let n = u32::from_be_bytes(v.as_ref().try_into().map_err(|_| {
            StoreError::Codec(format!("name number of {}", String::from_utf8_lossy(name)))
        })?);
        c.0.insert(name.to_vec(), n);
        c.1.insert(n, name.to_vec());
        Ok(Some(n))
    }

    /// The number of `name`, given one if it has none.
    pub fn number(&self, name: &[u8]) -> Result<u32> {
        if let Some(n) = self.get(name)? {
            return Ok(n);
        }
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller may have numbered it meanwhile.
        if let Some(v) = self.names.get(name).map_err(be)? {
            if let Ok(b) = <[u8; 4]>::try_from(v.as_ref()) {
                return Ok(u32::from_be_bytes(b));
            }
        }
        let next = match self.named.last().map_err(be)? {
            Some((k, _)) => <[u8; 4]>::try_from(k.as_ref())
                .map(|b| u32::from_be_bytes(b).saturating_add(1))
                .unwrap_or(u32::MAX),
            None => 1,
        };
        if next == u32::MAX {
            return Err(StoreError::Backend("no room numbers left".into()));
        }
        self.named.insert(next.to_be_bytes(), name).map_err(be)?;
        self.names.insert(name, &next.to_be_bytes()).map_err(be)?;
        c.0.insert(name.to_vec(), next);
        c.1.insert(next, name.to_vec());
        Ok(next)
    }

    /// The name numbered `n`.
    pub fn name(&self, n: u32) -> Result<Vec<u8>> {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(name) = c.1.get(&n) {
            return Ok(name.clone());
        }
        let name = self
            .named
            .get(n.to_be_bytes())
            .map_err(be)?
            .ok_or_else(|| StoreError::Codec(format!("no name numbered {n}")))?
            .to_vec();
        c.0.insert(name.clone(), n);
        c.1.insert(n, name.clone());
        Ok(name)
    }

    /// The room numbered `n`.
    pub fn room(&self, n: u32) -> Result<RoomRef> {
        let [network, room, _] = crate::split3_at(&self.name(n)?, 2);
        Ok(RoomRef::new(network, room))
    }

    /// A sender as an [`EventRow`] holds it.
    pub fn sender(&self, u: &UserRef) -> Result<(u32, String)> {
        Ok((
            self.number(u.network.as_str().as_bytes())?,
            u.user.to_string(),
        ))
    }

    /// Reads a sender an [`EventRow`] holds.
    pub fn user(&self, (net, user): &(u32, String)) -> Result<UserRef> {
        let network = String::from_utf8_lossy(&self.name(*net)?).into_owned();
        Ok(UserRef::new(network, user.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn event_rows_read_back() {
        let rows = [
            EventRow::default(),
            EventRow {
                time: u64::MAX,
                private: true,
                sender: Some((300, "@alice:m".into())),
                rooms: vec![
                    (1, vec![MessageId::new("$a")]),
                    (70_000, vec![MessageId::new(""), MessageId::new("x\0y")]),
                    (2, vec![]),
                ],
            },
        ];
        for r in rows {
            assert_eq!(EventRow::decode(&r.encode()).unwrap(), r);
        }
        assert!(EventRow::decode(b"").is_err());
        assert!(EventRow::decode(&[ROW_V1, 0, 0]).is_err());
        let mut cut = rows_with_ids().encode();
        cut.pop();
        assert!(EventRow::decode(&cut).is_err(), "a truncated id");
    }

    fn rows_with_ids() -> EventRow {
        EventRow {
            time: 5,
            rooms: vec![(1, vec![MessageId::new("abc")])],
            ..EventRow::default()
        }
    }

    #[test]
    fn names_are_numbered_once() {
        let d = tempfile::tempdir().unwrap();
        let db = sled::open(d.path()).unwrap();
        let names = || {
            Names::new(
                db.open_tree("names").unwrap(),
                db.open_tree("named").unwrap(),
            )
        };
        let n = names();
        let a = n.number(b"matrix\0!a:m").unwrap();
        let b = n.number(b"xmpp").unwrap();
        assert_ne!(a, b);
        assert_eq!(n.number(b"matrix\0!a:m").unwrap(), a);
        assert_eq!(n.get(b"none").unwrap(), None);
        let fresh = names();
        assert_eq!(fresh.get(b"xmpp").unwrap(), Some(b));
        assert_eq!(fresh.room(a).unwrap(), RoomRef::new("matrix", "!a:m"));
        assert!(fresh.number(b"irc").unwrap() > b);
    }
}
