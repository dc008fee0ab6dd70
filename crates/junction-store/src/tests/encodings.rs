//! sled stores an earlier version wrote: rows without a time, and the encodings and layout
//! before the `events` tree.

use super::*;

/// A store an earlier version wrote (message map and transaction keys without a time) is
/// dated at the first open by this version: its rows resolve, and go once that is old.
#[test]
fn sled_legacy_rows_count_from_the_upgrade() {
    let d = tempfile::tempdir().unwrap();
    let r = room("matrix", "!old:m");
    let remote = MessageId::new("$legacy");
    {
        let db = ::sled::open(d.path()).unwrap();
        write_old_map(&db, &r, &remote);
        db.open_tree("txns")
            .unwrap()
            .insert("t-legacy", &[])
            .unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(d.path()).unwrap();
    let upgraded = s.legacy_until().expect("dated at the first open");
    legacy_rows(&s, &|_, _, _, _| upgraded);
    assert_eq!(s.legacy_until(), None, "the walk is done");
    // Reopened: the walk is done and nothing new counts as legacy.
    drop(s);
    let s = SledStore::open(d.path()).unwrap();
    assert_eq!(s.prune_before(u64::MAX, 100).unwrap(), 0);
}

/// Writes the message-map rows of `remote` in `r` as an earlier version did (the event id as
/// text, its ids as JSON).
fn write_old_map(db: &::sled::Db, r: &RoomRef, remote: &MessageId) {
    let e = EventId::derive(r, remote);
    let (n, room) = (r.network.as_str(), r.room.as_str());
    db.open_tree("by_remote")
        .unwrap()
        .insert(key(&[n, room, remote.as_str()]), e.as_str().as_bytes())
        .unwrap();
    db.open_tree("by_event")
        .unwrap()
        .insert(
            key(&[e.as_str(), n, room]),
            serde_json::to_vec(&[remote]).unwrap(),
        )
        .unwrap();
}

/// `remote` in `r`, said by `sender`, reads back whole.
fn reads_back(s: &SledStore, r: &RoomRef, remote: &MessageId, sender: &UserRef) {
    let e = EventId::derive(r, remote);
    assert_eq!(s.event_for(r, remote).unwrap(), Some(e.clone()));
    assert_eq!(s.remote_ids(&e, r).unwrap(), vec![remote.clone()]);
    assert_eq!(s.sender_of(&e).unwrap(), Some(sender.clone()));
}

/// Values an earlier version wrote (event ids as text, JSON id lists and senders) read as
/// before beside the compact ones, and go with their event.
#[test]
fn sled_reads_the_earlier_encodings() {
    let d = tempfile::tempdir().unwrap();
    let r = room("matrix", "!old:m");
    let remote = MessageId::new("$old");
    let e = EventId::derive(&r, &remote);
    let alice = UserRef::new("matrix", "@alice:m");
    {
        let db = ::sled::open(d.path()).unwrap();
        write_old_map(&db, &r, &remote);
        db.open_tree("senders")
            .unwrap()
            .insert(e.as_str(), serde_json::to_vec(&alice).unwrap())
            .unwrap();
        db.open_tree("stamps")
            .unwrap()
            .insert(e.as_str(), &5u64.to_be_bytes())
            .unwrap();
        db.open_tree("by_time")
            .unwrap()
            .insert(
                [&5u64.to_be_bytes()[..], e.as_str().as_bytes()].concat(),
                &[],
            )
            .unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(d.path()).unwrap();
    reads_back(&s, &r, &remote, &alice);
    // A new message beside it, stored compact; an id list with an empty id and none at all.
    let new = message("matrix", "!old:m", "$new", 1);
    s.record_inbound(&new, vec![plan("xmpp", "a@c")]).unwrap();
    for (i, list) in [ids(&["x1", "", "x3"]), vec![]].into_iter().enumerate() {
        let target = room("xmpp", &format!("r{i}@c"));
        s.record_delivered(&Delivered {
            outbox_id: 1,
            target: target.clone(),
            event: new.id.clone(),
            outcome: Ok(list.clone()),
        })
        .unwrap();
        assert_eq!(s.remote_ids(&new.id, &target).unwrap(), list);
    }
    assert_eq!(
        s.event_for(&room("xmpp", "r0@c"), &MessageId::new("x3"))
            .unwrap(),
        Some(new.id.clone())
    );
    assert_eq!(s.sender_of(&new.id).unwrap(), Some(new.sender.user.clone()));
    assert_eq!(
        s.remote_ids(&new.id, &new.origin).unwrap(),
        vec![new.remote_id.clone()]
    );
    // The old event goes with its rows.
    assert_eq!(s.prune_before(6, 10).unwrap(), 1);
    assert_eq!(s.event_for(&r, &remote).unwrap(), None);
    assert_eq!(s.sender_of(&e).unwrap(), None);
    assert_eq!(
        s.event_for(&new.origin, &new.remote_id).unwrap(),
        Some(new.id.clone())
    );
}

/// A store the layout before the `events` tree wrote (the map both ways with names in its
/// keys, compact values, a sender and a stamp row, an undelivered outbox row): it reads as
/// before, its pending line is delivered into the same rows, a dump carries it, and pruning
/// removes it whole; a new event beside it lives in `events`.
#[test]
fn sled_reads_the_layout_before_events() {
    let d = tempfile::tempdir().unwrap();
    let r = room("matrix", "!prev:m");
    let xmpp = room("xmpp", "prev@c");
    let remote = MessageId::new("$prev");
    let m = message("matrix", "!prev:m", "$prev", 1);
    let e = m.id.clone();
    let alice = m.sender.user.clone();
    {
        let db = ::sled::open(d.path()).unwrap();
        let t = |n: &str| db.open_tree(n).unwrap();
        let compact_id = [&[0u8][..], &hex::decode(e.as_str()).unwrap()].concat();
        t("by_remote")
            .insert(key(&["matrix", "!prev:m", "$prev"]), compact_id.as_slice())
            .unwrap();
        t("by_event")
            .insert(
                key(&[e.as_str(), "matrix", "!prev:m"]),
                b"\0$prev\0".as_slice(),
            )
            .unwrap();
        t("senders")
            .insert(
                e.as_str(),
                [b"\0matrix\0".as_slice(), alice.user.as_str().as_bytes()].concat(),
            )
            .unwrap();
        t("stamps").insert(e.as_str(), &5u64.to_be_bytes()).unwrap();
        t("by_time")
            .insert(
                [&5u64.to_be_bytes()[..], e.as_str().as_bytes()].concat(),
                &[],
            )
            .unwrap();
        let row = Delivery {
            outbox_id: 3,
            bridge: BridgeName::new("b"),
            target: xmpp.clone(),
            event: m.clone(),
            reply_to: vec![],
            target_ids: vec![],
        };
        t("outbox")
            .insert(
                [b"xmpp\0".as_slice(), &3u64.to_be_bytes()].concat(),
                encode_row(&row).unwrap(),
            )
            .unwrap();
        db.flush().unwrap();
    }
    let s = SledStore::open(d.path()).unwrap();
    reads_back(&s, &r, &remote, &alice);
    assert_eq!(s.record_inbound(&m, vec![]).unwrap(), Recorded::Duplicate);
    let pending = s.pending(&NetworkId::new("xmpp")).unwrap();
    assert_eq!(pending.len(), 1);
    s.record_delivered(&Delivered {
        outbox_id: pending[0].outbox_id,
        target: xmpp.clone(),
        event: e.clone(),
        outcome: Ok(ids(&["x1"])),
    })
    .unwrap();
    assert_eq!(s.outbox_depth(&NetworkId::new("xmpp")).unwrap(), 0);
    assert_eq!(
        s.event_for(&xmpp, &MessageId::new("x1")).unwrap(),
        Some(e.clone())
    );
    assert_eq!(s.remote_ids(&e, &xmpp).unwrap(), ids(&["x1"]));
    // A new event beside it.
    let new = message("matrix", "!prev:m", "$new", 2);
    s.record_inbound(&new, vec![]).unwrap();
    assert_eq!(s.sender_of(&new.id).unwrap(), Some(new.sender.user.clone()));
    // A dump carries both.
    let mem = MemStore::new();
    s.export(&mut |row| mem.import(row)).unwrap();
    for st in [&s as &dyn Store, &mem] {
        assert_eq!(
            st.event_for(&xmpp, &MessageId::new("x1")).unwrap(),
            Some(e.clone())
        );
        assert_eq!(st.remote_ids(&e, &r).unwrap(), vec![remote.clone()]);
        assert_eq!(st.sender_of(&e).unwrap(), Some(alice.clone()));
        assert_eq!(
            st.event_for(&new.origin, &new.remote_id).unwrap(),
            Some(new.id.clone())
        );
    }
    // The old event goes whole at its time, the new one at its own.
    assert_eq!(s.prune_before(6, 10).unwrap(), 1);
    assert_eq!(s.event_for(&r, &remote).unwrap(), None);
    assert_eq!(s.event_for(&xmpp, &MessageId::new("x1")).unwrap(), None);
    assert_eq!(s.remote_ids(&e, &xmpp).unwrap(), vec![]);
    assert_eq!(s.sender_of(&e).unwrap(), None);
    assert_eq!(
        s.record_inbound(&m, vec![]).unwrap(),
        Recorded::New(vec![]),
        "forgotten"
    );
    assert_eq!(s.prune_before(u64::MAX, 10).unwrap(), 2);
    assert_eq!(s.event_for(&new.origin, &new.remote_id).unwrap(), None);
    assert_eq!(s.sender_of(&new.id).unwrap(), None);
    let mut left = 0;
    s.export(&mut |_| {
        left += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(left, 0, "nothing of either is left");
}
