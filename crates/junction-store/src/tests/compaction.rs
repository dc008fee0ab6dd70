//! `SledStore::compact`: a fresh copy of the live rows, swapped in.

use super::*;

/// A compacted store reads as before, and ids handed out after it (outbox, audit) keep
/// increasing, across two compactions.
#[test]
fn sled_compact_keeps_everything() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("store");
    let xmpp = NetworkId::new("xmpp");
    let mut last = 0;
    {
        let s = SledStore::open(&path).unwrap();
        tables(&s);
        for i in 0..300 {
            let e = ev("irc:l", "#a", &format!("m{i}"));
            let Recorded::New(rows) = s.record_inbound(&e, vec![plan("xmpp", "a@c")]).unwrap()
            else {
                panic!()
            };
            // Most are delivered, the last five stay in the outbox.
            if i < 295 {
                s.record_delivered(&Delivered {
                    outbox_id: rows[0].outbox_id,
                    target: rows[0].target.clone(),
                    event: e.id.clone(),
                    outcome: Ok(ids(&[&format!("x{i}")])),
                })
                .unwrap();
            }
            last = rows[0].outbox_id;
        }
        s.flush().unwrap();
    }
    for round in 0..2 {
        let c = SledStore::compact(&path).unwrap();
        assert!(c.after > 0 && c.before > 0, "{c:?}");
        assert!(!beside_exists(&path), "nothing left beside the store");
        let s = SledStore::open(&path).unwrap();
        let p = s.pending(&xmpp).unwrap();
        assert_eq!(p.len(), 5 + round, "round {round}");
        assert!(p.windows(2).all(|w| w[0].outbox_id < w[1].outbox_id));
        let e = ev("irc:l", "#a", "m7");
        assert_eq!(
            s.event_for(&room("xmpp", "a@c"), &MessageId::new("x7"))
                .unwrap(),
            Some(e.id.clone())
        );
        assert_eq!(
            s.remote_ids(&e.id, &room("xmpp", "a@c")).unwrap(),
            ids(&["x7"])
        );
        assert_eq!(s.audit_log().unwrap().len(), 3 + round);
        assert!(s.txn_done("t1").unwrap());
        assert_eq!(s.prune_before(0, 10).unwrap(), 0);
        let Recorded::New(r) = s
            .record_inbound(
                &ev("irc:l", "#a", &format!("new{round}")),
                vec![plan("xmpp", "a@c")],
            )
            .unwrap()
        else {
            panic!()
        };
        assert!(r[0].outbox_id > last, "round {round}");
        last = r[0].outbox_id;
        s.audit(&AuditEntry {
            ts_ms: 10 + round as u64,
            actor: "a".into(),
            action: format!("after {round}"),
            outcome: "ok".into(),
        })
        .unwrap();
        let log = s.audit_log().unwrap();
        assert_eq!(
            log.last().unwrap().action,
            format!("after {round}"),
            "appended last"
        );
        s.flush().unwrap();
    }
}

/// Whether a compaction left anything beside the store at `path`.
fn beside_exists(path: &std::path::Path) -> bool {
    [".compacting", ".compacted", ".old"].iter().any(|s| {
        let mut n = path.file_name().unwrap().to_os_string();
        n.push(s);
        path.with_file_name(n).exists()
    })
}

/// A copy a crash left complete after the old store was moved away is put in place at the
/// next open.
#[test]
fn sled_open_finishes_an_interrupted_compaction() {
    let d = tempfile::tempdir().unwrap();
    let path = d.path().join("store");
    {
        let s = SledStore::open(&path).unwrap();
        s.set_cursor(&room("xmpp", "a@c"), "c9").unwrap();
        s.flush().unwrap();
    }
    std::fs::rename(&path, d.path().join("store.compacted")).unwrap();
    let s = SledStore::open(&path).unwrap();
    assert_eq!(
        s.cursor(&room("xmpp", "a@c")).unwrap().as_deref(),
        Some("c9")
    );
    assert!(!beside_exists(&path));
}

/// A store checkpointed (opened once more when the gateway stops) reads as before.
#[test]
fn sled_checkpoint_keeps_everything() {
    let d = tempfile::tempdir().unwrap();
    let e = ev("irc:l", "#a", "m1");
    {
        let s = SledStore::open(d.path()).unwrap();
        s.record_inbound(&e, vec![plan("xmpp", "a@c")]).unwrap();
        s.flush().unwrap();
    }
    SledStore::checkpoint(d.path(), std::time::Duration::from_secs(5)).unwrap();
    let s = SledStore::open(d.path()).unwrap();
    assert_eq!(s.event_for(&e.origin, &e.remote_id).unwrap(), Some(e.id));
    assert_eq!(s.pending(&NetworkId::new("xmpp")).unwrap().len(), 1);
}
