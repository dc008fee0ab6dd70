//! Moving stores: a dump carries every kind of row between backends.

use super::pg::pg_store;
use super::*;

/// A store with a row of every kind a dump carries.
fn fill(s: &dyn Store) {
    let m = message("matrix", "#lobby:matrix.test", "$m", 5);
    let Recorded::New(rows) = s
        .record_inbound(&m, vec![plan("xmpp", "lobby@c"), plan("irc:l", "#lobby")])
        .unwrap()
    else {
        panic!()
    };
    s.record_delivered(&Delivered {
        outbox_id: rows[0].outbox_id,
        target: rows[0].target.clone(),
        event: m.id.clone(),
        outcome: Ok(ids(&["x1", "x2"])),
    })
    .unwrap();
    for i in 0..3 {
        s.record_inbound(
            &message("irc:l", "#lobby", &format!("i{i}"), 10 + i),
            vec![plan("xmpp", "lobby@c")],
        )
        .unwrap();
    }
    let dm = "dm:bob\u{1f}matrix\u{1f}@alice:m";
    s.record_inbound(&message("irc:l", dm, "p1", 7), vec![])
        .unwrap();
    s.record_inbound(&ev("matrix", "#lobby:matrix.test", "$join"), vec![])
        .unwrap();
    s.mark_txn("t1").unwrap();
    s.set_puppet(
        &NetworkId::new("irc:l"),
        &UserRef::new("matrix", "@bob:m"),
        "bob[m]",
    )
    .unwrap();
    s.put_link(&Link {
        bridge: BridgeName::new("b"),
        rooms: vec![room("irc:l", "#a"), room("xmpp", "a@c")],
    })
    .unwrap();
    s.set_cursor(&room("xmpp", "lobby@c"), "c1").unwrap();
    s.kv_put("irc:l/nicks", "a", b"\x00\xffplain").unwrap();
    s.kv_put_dated("irc:l/quotes", "q", b"dated", 10).unwrap();
    s.kv_put_private("irc:l/quotes", "p", b"private", 20)
        .unwrap();
    audit_entries(s, &[(1, "a"), (2, "b")]);
}

/// A store's dump as sorted JSON lines, outbox ids left out (an import renumbers them).
fn dumped(s: &dyn Store) -> Vec<String> {
    let mut lines = Vec::new();
    s.export(&mut |row| {
        let row = match row {
            Row::Outbox { mut delivery } => {
                delivery.outbox_id = 0;
                Row::Outbox { delivery }
            }
            other => other,
        };
        lines.push(serde_json::to_string(&row).unwrap());
        Ok(())
    })
    .unwrap();
    lines.sort();
    lines
}

fn copy(from: &dyn Store, to: &dyn Store) {
    assert!(is_empty(to).unwrap());
    from.export(&mut |row| to.import(row)).unwrap();
    to.flush().unwrap();
}

/// A dump moves a store between backends whole: memory → sled → PostgreSQL → memory gives
/// the same dump, and the copies answer as the original does (both directions of the map,
/// puppet owners, outbox order, what the private retention removes).
#[test]
fn dump_round_trips_across_backends() {
    let mem = MemStore::new();
    fill(&mem);
    assert!(!is_empty(&mem).unwrap());
    let want = dumped(&mem);
    assert!(want.iter().any(|l| l.contains("\"kind\":\"outbox\"")));
    let d = tempfile::tempdir().unwrap();
    let sled = SledStore::open(d.path()).unwrap();
    copy(&mem, &sled);
    assert_eq!(dumped(&sled), want, "memory → sled");
    let mut last: Box<dyn Store> = Box::new(sled);
    let pg = pg_store("dump");
    if let Some((_schema, pg)) = &pg {
        copy(last.as_ref(), pg);
        assert_eq!(dumped(pg), want, "sled → PostgreSQL");
        let back = MemStore::new();
        copy(pg, &back);
        assert_eq!(dumped(&back), want, "PostgreSQL → memory");
        last = Box::new(back);
    }
    let s = last.as_ref();
    let x = room("xmpp", "lobby@c");
    let m = message("matrix", "#lobby:matrix.test", "$m", 5);
    assert_eq!(
        s.event_for(&x, &MessageId::new("x2")).unwrap(),
        Some(m.id.clone())
    );
    assert_eq!(
        s.event_for(&m.origin, &m.remote_id).unwrap(),
        Some(m.id.clone())
    );
    assert!(s.sender_of(&m.id).unwrap().is_some());
    assert_eq!(
        s.puppet_owner(&NetworkId::new("irc:l"), "bob[m]").unwrap(),
        Some(UserRef::new("matrix", "@bob:m"))
    );
    let pending = s.pending(&NetworkId::new("xmpp")).unwrap();
    assert_eq!(
        pending.iter().map(|d| d.event.ts_ms).collect::<Vec<_>>(),
        vec![10, 11, 12],
        "outbox order kept"
    );
    assert!(s.txn_done("t1").unwrap());
    assert_eq!(
        s.kv_get("irc:l/nicks", "a").unwrap().as_deref(),
        Some(b"\x00\xffplain".as_slice())
    );
    // The private event and row go with the private retention, as in the original.
    assert_eq!(s.prune_private_before(u64::MAX, 10).unwrap(), 2);
    assert_eq!(s.kv_get("irc:l/quotes", "p").unwrap(), None);
    assert_eq!(s.audit_log().unwrap().len(), 2);
}

/// PostgreSQL's export streams in batches: every row of a store larger than a batch comes
/// out once, a caller that stops early gets its own error back (the read ends there), and
/// the store answers the next call as before.
#[test]
fn postgresql_export_streams_and_stops_early() {
    let Some((_schema, pg)) = pg_store("stream") else {
        return;
    };
    let rows = 2_500;
    for i in 0..rows {
        pg.kv_put("ns", &format!("k{i:05}"), b"v").unwrap();
    }
    let mut n = 0;
    pg.export(&mut |_| {
        n += 1;
        Ok(())
    })
    .unwrap();
    assert_eq!(n, rows);
    assert!(!is_empty(&pg).unwrap());
    let mut seen = 0;
    let err = pg
        .export(&mut |_| {
            seen += 1;
            if seen == 10 {
                return Err(StoreError::Backend("enough".into()));
            }
            Ok(())
        })
        .unwrap_err();
    assert!(err.to_string().contains("enough"), "{err}");
    assert_eq!(seen, 10);
    assert_eq!(
        pg.kv_get("ns", "k00042").unwrap().as_deref(),
        Some(b"v".as_slice())
    );
}
