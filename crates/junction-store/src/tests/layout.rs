//! The sled message map one row per event: time rows shared by sixteen events, pruned in
//! part; an event whose id is not derived from its origin.

use super::*;

#[test]
fn sled_time_rows_prune_in_part_and_in_order() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    let record = |s: &SledStore, range: std::ops::Range<usize>| {
        for i in range {
            let m = message("irc:l", "#a", &format!("m{i}"), 1);
            s.record_inbound(&m, vec![]).unwrap();
        }
    };
    record(&s, 0..20);
    let cut = after(junction_core::clock::now_ms());
    record(&s, 20..30);
    // Reopened: new events go to a row of their own.
    drop(s);
    let s = SledStore::open(d.path()).unwrap();
    record(&s, 30..40);
    let found = |i: usize| {
        let m = message("irc:l", "#a", &format!("m{i}"), 1);
        s.event_for(&m.origin, &m.remote_id).unwrap().is_some()
    };
    assert_eq!(s.prune_before(cut, 7).unwrap(), 7);
    assert!(!found(6) && found(7), "oldest first");
    assert_eq!(s.prune_before(cut, 7).unwrap(), 7);
    assert_eq!(s.prune_before(cut, 7).unwrap(), 6);
    assert_eq!(s.prune_before(cut, 7).unwrap(), 0);
    assert!((0..20).all(|i| !found(i)) && (20..40).all(found));
    let mut events = 0;
    s.export(&mut |row| {
        events += usize::from(matches!(row, Row::Event { .. }));
        Ok(())
    })
    .unwrap();
    assert_eq!(events, 20);
    assert_eq!(s.prune_before(u64::MAX, 100).unwrap(), 20);
    assert!((20..40).all(|i| !found(i)));
}

/// An event whose id is not derived from its origin room and id gets a `remote` row for it.
#[test]
fn sled_an_event_id_not_derived_is_found_from_its_origin() {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    let mut m = message("matrix", "!r:m", "$x", 1);
    m.id = EventId("not-derived".into());
    s.record_inbound(&m, vec![]).unwrap();
    assert_eq!(
        s.event_for(&m.origin, &m.remote_id).unwrap(),
        Some(m.id.clone())
    );
    assert_eq!(s.record_inbound(&m, vec![]).unwrap(), Recorded::Duplicate);
    assert_eq!(
        s.remote_ids(&m.id, &m.origin).unwrap(),
        vec![m.remote_id.clone()]
    );
    assert_eq!(s.prune_before(u64::MAX, 10).unwrap(), 1);
    assert_eq!(s.event_for(&m.origin, &m.remote_id).unwrap(), None);
}
