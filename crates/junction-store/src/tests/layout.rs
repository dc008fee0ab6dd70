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

/// Dated adapter rows as an earlier version wrote them (the value in `kv`, its time in
/// `kv_stamps`) are read, listed, exported, replaced and pruned beside the rows written now
/// (one row each in `kv_dated`).
#[test]
fn sled_dated_rows_an_earlier_version_wrote_still_count() {
    let d = tempfile::tempdir().unwrap();
    let old = |k: &str| key(&["irc:l/quotes", k]);
    {
        let db = ::sled::open(d.path()).unwrap();
        let t = |n: &str| db.open_tree(n).unwrap();
        for (k, ts) in [("a", 1_000u64), ("b", 2_000)] {
            t("kv").insert(old(k), k.as_bytes()).unwrap();
            t("kv_stamps").insert(old(k), &ts.to_be_bytes()).unwrap();
            let at = [ts.to_be_bytes().as_slice(), &old(k)].concat();
            t("kv_time").insert(at, &[]).unwrap();
        }
        db.flush().unwrap();
    }
    let s = SledStore::open(d.path()).unwrap();
    s.kv_put_dated("irc:l/quotes", "c", b"c", 1_500).unwrap();
    // `b` written again now: its old time no longer removes it.
    s.kv_put_dated("irc:l/quotes", "b", b"b2", 2_500).unwrap();
    s.kv_put("irc:l/quotes", "d", b"d").unwrap();
    assert_eq!(
        s.kv_get("irc:l/quotes", "a").unwrap().as_deref(),
        Some(&b"a"[..])
    );
    assert_eq!(
        s.kv_get("irc:l/quotes", "b").unwrap().as_deref(),
        Some(&b"b2"[..])
    );
    assert_eq!(
        s.kv_get("irc:l/quotes", "c").unwrap().as_deref(),
        Some(&b"c"[..])
    );
    let keys = |s: &SledStore| -> Vec<String> {
        let rows = s.kv_scan("irc:l/quotes").unwrap();
        rows.into_iter().map(|(k, _)| k).collect()
    };
    assert_eq!(keys(&s), ["a", "b", "c", "d"]);
    let mut stamps = Vec::new();
    s.export(&mut |row| {
        if let Row::Kv { key, stamp, .. } = row {
            stamps.push((key, stamp));
        }
        Ok(())
    })
    .unwrap();
    stamps.sort();
    let want = [
        ("a", Some(1_000)),
        ("b", Some(2_500)),
        ("c", Some(1_500)),
        ("d", None),
    ];
    let want: Vec<_> = want.iter().map(|(k, t)| (k.to_string(), *t)).collect();
    assert_eq!(stamps, want);
    // Up to 2.0 s: `a` (old layout) and `c` (new) go; `b`'s entry at 2.0 s finds it rewritten.
    assert_eq!(s.prune_kv_before(2_100, 100).unwrap(), 2);
    assert_eq!(keys(&s), ["b", "d"]);
    assert_eq!(s.prune_kv_before(3_000, 100).unwrap(), 1);
    assert_eq!(keys(&s), ["d"]);
    // An undated write replaces a dated row: no time removes it.
    s.kv_put_dated("irc:l/quotes", "e", b"e", 4_000).unwrap();
    s.kv_put("irc:l/quotes", "e", b"e2").unwrap();
    assert_eq!(s.prune_kv_before(u64::MAX, 100).unwrap(), 0);
    assert_eq!(keys(&s), ["d", "e"]);
    s.kv_remove("irc:l/quotes", "e").unwrap();
    assert_eq!(keys(&s), ["d"]);
}
