//! One conformance suite run against every backend (PostgreSQL's in `pg`, moving stores in
//! `dump`), plus sled-only reopen and kill tests.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::*;
use junction_core::router::Link;
use junction_core::{BridgeName, EventKind, Sender};

fn room(n: &str, r: &str) -> RoomRef {
    RoomRef::new(n, r)
}

fn ev(n: &str, r: &str, remote: &str) -> Event {
    Event::new(
        room(n, r),
        MessageId::new(remote),
        Sender::new(UserRef::new(n, "alice"), "alice"),
        1,
        EventKind::Join,
    )
}

fn plan(n: &str, r: &str) -> Planned {
    Planned {
        bridge: BridgeName::new("lobby"),
        target: room(n, r),
        reply_to: vec![],
        target_ids: vec![],
    }
}

fn ids(v: &[&str]) -> Vec<MessageId> {
    v.iter().map(|s| MessageId::new(*s)).collect()
}

pub(crate) fn inbound_and_outbox(s: &dyn Store) {
    let e = ev("matrix", "#lobby:matrix.test", "$1");
    let Recorded::New(rows) = s
        .record_inbound(&e, vec![plan("xmpp", "lobby@c"), plan("irc:l", "#lobby")])
        .unwrap()
    else {
        panic!("expected new")
    };
    assert_eq!(rows.len(), 2);
    assert_eq!(
        s.record_inbound(&e, vec![plan("xmpp", "lobby@c")]).unwrap(),
        Recorded::Duplicate
    );
    assert_eq!(
        s.event_for(&e.origin, &e.remote_id).unwrap(),
        Some(e.id.clone())
    );
    assert_eq!(s.remote_ids(&e.id, &e.origin).unwrap(), ids(&["$1"]));
    let e2 = ev("matrix", "#lobby:matrix.test", "$2");
    let Recorded::New(rows2) = s
        .record_inbound(&e2, vec![plan("xmpp", "lobby@c")])
        .unwrap()
    else {
        panic!()
    };
    assert!(rows2[0].outbox_id > rows[0].outbox_id);
    let x = s.pending(&NetworkId::new("xmpp")).unwrap();
    assert_eq!(
        x.iter().map(|d| d.event.id.clone()).collect::<Vec<_>>(),
        vec![e.id.clone(), e2.id.clone()]
    );
    assert_eq!(s.outbox_depth(&NetworkId::new("xmpp")).unwrap(), 2);
    assert_eq!(s.outbox_depth(&NetworkId::new("irc:l")).unwrap(), 1);
    assert_eq!(s.outbox_depth(&NetworkId::new("irc")).unwrap(), 0);

    // delivered, multi-part
    let d = Delivered {
        outbox_id: x[0].outbox_id,
        target: x[0].target.clone(),
        event: e.id.clone(),
        outcome: Ok(ids(&["p1", "p2", "p3"])),
    };
    s.record_delivered(&d).unwrap();
    s.record_delivered(&d).unwrap();
    assert_eq!(
        s.remote_ids(&e.id, &x[0].target).unwrap(),
        ids(&["p1", "p2", "p3"])
    );
    for p in ["p1", "p2", "p3"] {
        assert_eq!(
            s.event_for(&x[0].target, &MessageId::new(p)).unwrap(),
            Some(e.id.clone())
        );
    }
    assert_eq!(s.outbox_depth(&NetworkId::new("xmpp")).unwrap(), 1);
    assert_eq!(s.outbox_depth(&NetworkId::new("irc:l")).unwrap(), 1);
    // failed outcome only removes the row
    let f = Delivered {
        outbox_id: x[1].outbox_id,
        target: x[1].target.clone(),
        event: e2.id.clone(),
        outcome: Err("no".into()),
    };
    s.record_delivered(&f).unwrap();
    assert_eq!(s.outbox_depth(&NetworkId::new("xmpp")).unwrap(), 0);
    assert!(s.remote_ids(&e2.id, &x[1].target).unwrap().is_empty());
    // resolver
    let r = Resolver(s);
    assert_eq!(
        RefResolver::event_for(&r, &x[0].target, &MessageId::new("p2")),
        Some(e.id.clone())
    );
    assert_eq!(RefResolver::remote_ids(&r, &e.id, &x[0].target).len(), 3);
    assert!(!r.is_own_puppet(&UserRef::new("xmpp", "lobby@c/alice")));
    s.set_puppet(
        &NetworkId::new("xmpp"),
        &UserRef::new("matrix", "@a:m"),
        "lobby@c/alice",
    )
    .unwrap();
    assert!(r.is_own_puppet(&UserRef::new("xmpp", "lobby@c/alice")));
}

pub(crate) fn tables(s: &dyn Store) {
    assert!(!s.txn_done("t1").unwrap());
    s.mark_txn("t1").unwrap();
    assert!(s.txn_done("t1").unwrap());
    let n = NetworkId::new("irc:l");
    let u = UserRef::new("matrix", "@bob:m");
    s.set_puppet(&n, &u, "bob[m]").unwrap();
    assert_eq!(s.puppet(&n, &u).unwrap().as_deref(), Some("bob[m]"));
    assert_eq!(s.puppet_owner(&n, "bob[m]").unwrap(), Some(u.clone()));
    s.set_puppet(&n, &u, "bob2").unwrap();
    assert_eq!(s.puppet_owner(&n, "bob[m]").unwrap(), None);
    assert_eq!(s.puppet_owner(&n, "bob2").unwrap(), Some(u.clone()));
    assert_eq!(s.puppet(&NetworkId::new("xmpp"), &u).unwrap(), None);
    let l = Link {
        bridge: BridgeName::new("b"),
        rooms: vec![room("irc:l", "#a"), room("xmpp", "a@c")],
    };
    s.put_link(&l).unwrap();
    assert_eq!(s.links().unwrap(), vec![l.clone()]);
    s.remove_link(&l.bridge).unwrap();
    assert!(s.links().unwrap().is_empty());
    let r = room("xmpp", "a@c");
    assert_eq!(s.cursor(&r).unwrap(), None);
    s.set_cursor(&r, "c1").unwrap();
    s.set_cursor(&r, "c2").unwrap();
    assert_eq!(s.cursor(&r).unwrap().as_deref(), Some("c2"));
    s.kv_put("ns", "b", b"2").unwrap();
    s.kv_put("ns", "a", b"1").unwrap();
    s.kv_put("ns2", "x", b"9").unwrap();
    s.kv_put("n", "sx", b"8").unwrap();
    assert_eq!(s.kv_get("ns", "a").unwrap(), Some(b"1".to_vec()));
    assert_eq!(s.kv_get("ns2", "a").unwrap(), None);
    assert_eq!(
        s.kv_scan("ns").unwrap(),
        vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]
    );
    s.kv_remove("ns", "a").unwrap();
    assert_eq!(s.kv_scan("ns").unwrap().len(), 1);
    assert_eq!(s.kv_scan("n").unwrap().len(), 1);
    for i in 0..3 {
        s.audit(&AuditEntry {
            ts_ms: i,
            actor: "a".into(),
            action: format!("x{i}"),
            outcome: "ok".into(),
        })
        .unwrap();
    }
    let log = s.audit_log().unwrap();
    assert_eq!(
        log.iter().map(|e| e.ts_ms).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    s.flush().unwrap();
}

/// A message whose body nests `depth` bold spans, built directly (the readers never nest
/// this deep).
fn deep_message(n: &str, r: &str, remote: &str, depth: usize) -> Event {
    let mut span = junction_core::format::Span::Text("x".into());
    for _ in 0..depth {
        span = junction_core::format::Span::Bold(vec![span]);
    }
    let body = junction_core::RichText { spans: vec![span] };
    Event::new(
        room(n, r),
        MessageId::new(remote),
        Sender::new(UserRef::new(n, "mallory"), "mallory"),
        1,
        EventKind::Message(junction_core::Message {
            body,
            ..Default::default()
        }),
    )
}

/// A record that cannot be read back is set aside (counted, moved out of the outbox), and the
/// other rows are still handed out; a record that would not read back is refused up front, as
/// permanent, and nothing of it is written.
pub(crate) fn unreadable_records_are_set_aside(
    s: &dyn Store,
    put_raw: &dyn Fn(&NetworkId, u64, &[u8]),
    quarantined: &dyn Fn() -> usize,
) {
    let x = NetworkId::new("xmpp");
    for i in 0..3 {
        s.record_inbound(
            &ev("irc:l", "#a", &format!("m{i}")),
            vec![plan("xmpp", "a@c")],
        )
        .unwrap();
    }
    // Corrupt JSON before and after the good rows, and a row nested past serde_json's limit.
    put_raw(&x, 0, b"{not json");
    put_raw(&x, 1_000_000, &[b'['; 10_000]);
    let mut deep = String::new();
    for _ in 0..200 {
        deep.push_str("{\"Bold\":[");
    }
    put_raw(&x, 1_000_001, deep.as_bytes());
    assert_eq!(s.set_aside(), 0);
    let p = s.pending(&x).unwrap();
    assert_eq!(p.len(), 3, "the readable rows are handed out");
    assert_eq!(s.set_aside(), 3);
    assert_eq!(quarantined(), 3);
    // Set aside once: the next read neither sees nor counts them again.
    assert_eq!(s.pending(&x).unwrap().len(), 3);
    assert_eq!(s.set_aside(), 3);
    assert_eq!(s.outbox_depth(&x).unwrap(), 3);

    // What would not read back is refused, permanently, and leaves no trace.
    let e = deep_message("matrix", "!r:m", "$deep", 200);
    let err = s
        .record_inbound(&e, vec![plan("xmpp", "a@c")])
        .expect_err("a record that would not read back is refused");
    assert!(err.is_permanent(), "{err}");
    assert_eq!(
        s.event_for(&room("matrix", "!r:m"), &MessageId::new("$deep"))
            .unwrap(),
        None
    );
    assert_eq!(s.pending(&x).unwrap().len(), 3);
    // A body within the core's depth bound is stored and read back.
    let ok = deep_message("matrix", "!r:m", "$ok", junction_core::format::MAX_DEPTH);
    s.record_inbound(&ok, vec![plan("xmpp", "a@c")]).unwrap();
    assert_eq!(s.pending(&x).unwrap().len(), 4);
    s.flush().unwrap();
}

/// Messages keep their sender, which edits and redactions are judged against; the judgement
/// follows the message map into the rooms the message was delivered to.
pub(crate) fn senders_and_authority(s: &dyn Store) {
    let origin = room("matrix", "#lobby:matrix.test");
    let alice = Sender::new(UserRef::new("matrix", "@alice:hs"), "alice");
    let msg = Event::new(
        origin.clone(),
        MessageId::new("$m"),
        alice.clone(),
        1,
        EventKind::Message(Default::default()),
    );
    let Recorded::New(rows) = s
        .record_inbound(&msg, vec![plan("xmpp", "lobby@c")])
        .unwrap()
    else {
        panic!("expected new")
    };
    assert_eq!(s.sender_of(&msg.id).unwrap(), Some(alice.user.clone()));
    // Other kinds note no sender.
    let join = ev("matrix", "#lobby:matrix.test", "$j");
    s.record_inbound(&join, vec![]).unwrap();
    assert_eq!(s.sender_of(&join.id).unwrap(), None);
    // Delivered to XMPP as stanza S1: a retraction of S1 there names alice's message.
    s.record_delivered(&Delivered {
        outbox_id: rows[0].outbox_id,
        event: msg.id.clone(),
        target: room("xmpp", "lobby@c"),
        outcome: Ok(ids(&["S1"])),
    })
    .unwrap();
    let retract = |who: &str, moderator: bool| {
        Event::new(
            room("xmpp", "lobby@c"),
            MessageId::new(format!("R-{who}")),
            Sender::new(UserRef::new("xmpp", who), who),
            2,
            EventKind::Redact {
                target: MessageId::new("S1"),
                reason: None,
            },
        )
        .moderated(moderator)
    };
    use junction_core::authority::Refusal;
    assert_eq!(
        authorise(s, &retract("troll", false)),
        Err(Refusal::NotAuthor)
    );
    assert_eq!(authorise(s, &retract("mod", true)), Ok(()));
    let own = Event::new(
        origin,
        MessageId::new("$r"),
        alice,
        3,
        EventKind::Redact {
            target: MessageId::new("$m"),
            reason: None,
        },
    );
    assert_eq!(authorise(s, &own), Ok(()));
    s.flush().unwrap();
}

/// Waits until the clock has moved past `t`, and returns the time then.
fn after(t: u64) -> u64 {
    while junction_core::clock::now_ms() <= t {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    junction_core::clock::now_ms()
}

fn message(n: &str, r: &str, remote: &str, ts: u64) -> Event {
    Event::new(
        room(n, r),
        MessageId::new(remote),
        Sender::new(UserRef::new(n, "alice"), "alice"),
        ts,
        EventKind::Message(Default::default()),
    )
}

/// Appends an admin's audit entries, each `(when, action)`.
fn audit_entries(s: &dyn Store, entries: &[(u64, &str)]) {
    for (ts, action) in entries {
        s.audit(&AuditEntry {
            ts_ms: *ts,
            actor: "matrix/@admin:m".into(),
            action: (*action).into(),
            outcome: "ok".into(),
        })
        .unwrap();
    }
}

/// Message-map rows, senders, transaction keys and dated adapter rows recorded before a
/// time go, in bounded passes, both directions and every part; later ones stay.
pub(crate) fn retention(s: &dyn Store) {
    let (xmpp, irc) = (room("xmpp", "lobby@c"), room("irc:l", "#lobby"));
    let old = message("matrix", "#lobby:matrix.test", "$old", 1);
    let Recorded::New(rows) = s
        .record_inbound(&old, vec![plan("xmpp", "lobby@c"), plan("irc:l", "#lobby")])
        .unwrap()
    else {
        panic!()
    };
    for (r, parts) in rows.iter().zip([&["x1"][..], &["i1", "i2"][..]]) {
        s.record_delivered(&Delivered {
            outbox_id: r.outbox_id,
            target: r.target.clone(),
            event: old.id.clone(),
            outcome: Ok(ids(parts)),
        })
        .unwrap();
    }
    s.mark_txn("t-old").unwrap();
    s.kv_put_dated("irc:l/quotes", "q-old", b"old", 10).unwrap();
    s.kv_put_dated("irc:l/quotes", "q-new", b"new", 30).unwrap();
    s.kv_put_dated("irc:l/quotes", "q-again", b"v1", 10)
        .unwrap();
    s.kv_put("irc:l/quotes", "q-again", b"undated now").unwrap();
    s.kv_put("irc:l/quotes", "q-plain", b"kept").unwrap();
    let cut = after(junction_core::clock::now_ms());
    let young = message("matrix", "#lobby:matrix.test", "$young", 2);
    s.record_inbound(&young, vec![plan("xmpp", "lobby@c")])
        .unwrap();
    s.mark_txn("t-young").unwrap();

    assert_eq!(s.prune_before(0, 10).unwrap(), 0, "nothing that old");
    // One event and one key are due: limit 1 takes one per pass.
    assert_eq!(s.prune_before(cut, 1).unwrap(), 1);
    assert_eq!(s.prune_before(cut, 1).unwrap(), 1);
    assert_eq!(s.prune_before(cut, 10).unwrap(), 0);
    assert_eq!(s.event_for(&old.origin, &old.remote_id).unwrap(), None);
    assert_eq!(s.event_for(&irc, &MessageId::new("i2")).unwrap(), None);
    assert_eq!(s.event_for(&xmpp, &MessageId::new("x1")).unwrap(), None);
    assert!(s.remote_ids(&old.id, &irc).unwrap().is_empty());
    assert!(s.remote_ids(&old.id, &old.origin).unwrap().is_empty());
    assert_eq!(s.sender_of(&old.id).unwrap(), None);
    assert!(!s.txn_done("t-old").unwrap());
    assert_eq!(
        s.event_for(&young.origin, &young.remote_id).unwrap(),
        Some(young.id.clone())
    );
    assert!(s.sender_of(&young.id).unwrap().is_some());
    assert!(s.txn_done("t-young").unwrap());
    // A pruned message recorded again is new (its outbox rows are written again).
    assert!(matches!(
        s.record_inbound(&old, vec![]).unwrap(),
        Recorded::New(_)
    ));

    assert_eq!(s.prune_kv_before(20, 10).unwrap(), 1);
    let left: Vec<String> = s
        .kv_scan("irc:l/quotes")
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, vec!["q-again", "q-new", "q-plain"]);
    assert_eq!(s.prune_kv_before(u64::MAX, 10).unwrap(), 1);
    assert_eq!(s.kv_scan("irc:l/quotes").unwrap().len(), 2);

    audit_entries(s, &[(10, "a"), (20, "b"), (30, "c")]);
    assert_eq!(s.prune_audit_before(25, 1).unwrap(), 1);
    assert_eq!(s.prune_audit_before(25, 10).unwrap(), 1);
    assert_eq!(s.prune_audit_before(25, 10).unwrap(), 0);
    let log = s.audit_log().unwrap();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].action, "c");
    s.flush().unwrap();
}

/// What private conversations leave (events said in one, the gateway's answers sent into
/// one, adapter rows written as private) goes with `prune_private_before`; rooms' events
/// and ordinary dated rows stay for `prune_before` and `prune_kv_before`.
pub(crate) fn private_retention(s: &dyn Store) {
    let dm = "dm:bob\u{1f}matrix\u{1f}@alice:m";
    let said = message("irc:l", dm, "p1", 1);
    s.record_inbound(
        &said,
        vec![plan("matrix", "dm:@alice:m\u{1f}irc:l\u{1f}bob")],
    )
    .unwrap();
    let answer = message("gateway", "private", "refused:x", 1);
    s.record_inbound(&answer, vec![plan("irc:l", dm)]).unwrap();
    let room = message("matrix", "#lobby:matrix.test", "$r", 1);
    s.record_inbound(&room, vec![plan("irc:l", "#lobby")])
        .unwrap();
    s.kv_put_private("irc:l/quotes", "q-private", b"secret", 10)
        .unwrap();
    s.kv_put_private("irc:l/quotes", "q-rewritten", b"v1", 10)
        .unwrap();
    s.kv_put_dated("irc:l/quotes", "q-rewritten", b"v2", 40)
        .unwrap();
    s.kv_put_dated("irc:l/quotes", "q-room", b"hello", 10)
        .unwrap();
    let cut = after(junction_core::clock::now_ms());
    let young = message("irc:l", dm, "p2", 2);
    s.record_inbound(&young, vec![]).unwrap();

    assert_eq!(
        s.prune_private_before(0, 10).unwrap(),
        0,
        "nothing that old"
    );
    assert_eq!(s.prune_private_before(cut, 1).unwrap(), 1);
    assert_eq!(s.prune_private_before(cut, 10).unwrap(), 2);
    assert_eq!(s.prune_private_before(cut, 10).unwrap(), 0);
    assert_eq!(s.event_for(&said.origin, &said.remote_id).unwrap(), None);
    assert_eq!(s.sender_of(&said.id).unwrap(), None);
    assert_eq!(
        s.event_for(&answer.origin, &answer.remote_id).unwrap(),
        None
    );
    assert_eq!(s.kv_get("irc:l/quotes", "q-private").unwrap(), None);
    assert_eq!(
        s.kv_get("irc:l/quotes", "q-rewritten").unwrap().as_deref(),
        Some(b"v2".as_slice()),
        "written again since: kept"
    );
    assert!(s.kv_get("irc:l/quotes", "q-room").unwrap().is_some());
    assert_eq!(
        s.event_for(&room.origin, &room.remote_id).unwrap(),
        Some(room.id.clone()),
        "rooms keep theirs"
    );
    assert_eq!(
        s.event_for(&young.origin, &young.remote_id).unwrap(),
        Some(young.id.clone())
    );
    // The longer retention still removes what is left (its index rows of the events
    // already forgotten go too).
    assert_eq!(s.prune_before(cut, 10).unwrap(), 3);
    assert_eq!(s.event_for(&room.origin, &room.remote_id).unwrap(), None);
    assert_eq!(s.prune_kv_before(20, 10).unwrap(), 1);
    s.flush().unwrap();
}

/// Outbox rows older than the age, or beyond the newest `keep`, are dropped and reported.
pub(crate) fn outbox_bounds(s: &dyn Store) {
    let x = NetworkId::new("xmpp");
    for (i, ts) in [100u64, 200, 5000, 6000, 7000].into_iter().enumerate() {
        s.record_inbound(
            &message("irc:l", "#a", &format!("m{i}"), ts),
            vec![plan("xmpp", "a@c"), plan("matrix", "!a:m")],
        )
        .unwrap();
    }
    let none = |_: u64| false;
    assert!(s.drop_outbox(&x, 50, 10, &none).unwrap().is_empty());
    // The oldest is spared (with the adapter already): neither dropped nor counted.
    let first = s.pending(&x).unwrap()[0].outbox_id;
    let spared = s.drop_outbox(&x, 0, 4, &|id| id == first).unwrap();
    assert!(spared.is_empty(), "{spared:?}");
    // Older than 1000: two; beyond the 2 newest: one more.
    let dropped = s.drop_outbox(&x, 1000, 2, &none).unwrap();
    assert_eq!(dropped.len(), 3);
    assert!(dropped.windows(2).all(|w| w[0].outbox_id < w[1].outbox_id));
    assert!(dropped.iter().all(|d| d.target == room("xmpp", "a@c")));
    assert_eq!(
        dropped[0].event,
        message("irc:l", "#a", "m0", 0).id,
        "oldest first"
    );
    let left = s.pending(&x).unwrap();
    assert_eq!(
        left.iter().map(|d| d.event.ts_ms).collect::<Vec<_>>(),
        vec![6000, 7000]
    );
    assert_eq!(s.outbox_depth(&x).unwrap(), 2);
    assert_eq!(s.outbox_depth(&NetworkId::new("matrix")).unwrap(), 5);
    // The message map is untouched: a reply to a dropped message still resolves.
    let m0 = message("irc:l", "#a", "m0", 0);
    assert_eq!(s.event_for(&m0.origin, &m0.remote_id).unwrap(), Some(m0.id));
}

/// Rows an earlier version stored without a time (put there by `legacy`, which says when the
/// store was upgraded) keep working, and go once that time is older than the cut.
pub(crate) fn legacy_rows(
    s: &dyn Store,
    legacy: &dyn Fn(&EventId, &RoomRef, &MessageId, &str) -> u64,
) {
    let r = room("matrix", "!old:m");
    let e = EventId::derive(&r, &MessageId::new("$legacy"));
    let upgraded = legacy(&e, &r, &MessageId::new("$legacy"), "t-legacy");
    assert_eq!(
        s.event_for(&r, &MessageId::new("$legacy")).unwrap(),
        Some(e.clone())
    );
    assert!(s.txn_done("t-legacy").unwrap());
    assert_eq!(
        s.prune_before(upgraded, 100).unwrap(),
        0,
        "as young as the upgrade"
    );
    let young = message("matrix", "!old:m", "$young", 1);
    s.record_inbound(&young, vec![]).unwrap();
    let cut = after(upgraded.max(junction_core::clock::now_ms()));
    assert_eq!(s.prune_before(cut, 1).unwrap(), 1);
    let mut n = 0;
    for _ in 0..10 {
        n += s.prune_before(cut, 1).unwrap();
    }
    assert_eq!(
        n, 2,
        "the legacy key and the young event (recorded before the cut)"
    );
    assert_eq!(s.event_for(&r, &MessageId::new("$legacy")).unwrap(), None);
    assert!(!s.txn_done("t-legacy").unwrap());
    assert_eq!(s.prune_before(u64::MAX, 100).unwrap(), 0);
}

macro_rules! store_conformance_tests {
    ($m:ident, $make:expr) => {
        mod $m {
            #[allow(unused_imports)]
            use super::*;
            #[test]
            fn inbound_and_outbox() {
                let (_d, s) = $make;
                super::inbound_and_outbox(&s);
            }
            #[test]
            fn senders_and_authority() {
                let (_d, s) = $make;
                super::senders_and_authority(&s);
            }
            #[test]
            fn tables() {
                let (_d, s) = $make;
                super::tables(&s);
            }
            #[test]
            fn retention() {
                let (_d, s) = $make;
                super::retention(&s);
            }
            #[test]
            fn private_retention() {
                let (_d, s) = $make;
                super::private_retention(&s);
            }
            #[test]
            fn outbox_bounds() {
                let (_d, s) = $make;
                super::outbox_bounds(&s);
            }
            #[test]
            fn unreadable_records_are_set_aside() {
                let (_d, s) = $make;
                super::unreadable_records_are_set_aside(
                    &s,
                    &|n, i, b| s.put_raw_outbox(n, i, b),
                    &|| s.quarantined(),
                );
            }
        }
    };
}

store_conformance_tests!(mem, ((), MemStore::new()));
store_conformance_tests!(sled, {
    let d = tempfile::tempdir().unwrap();
    let s = SledStore::open(d.path()).unwrap();
    (d, s)
});

mod compaction;
mod dump;
mod encodings;
mod layout;
mod pg;
mod torn;

#[test]
fn mem_legacy_rows() {
    let s = MemStore::new();
    legacy_rows(&s, &|e, r, m, t| {
        let now = junction_core::clock::now_ms();
        s.put_legacy(e, r, m, t, now);
        now
    });
}
#[test]
fn sled_reopen_keeps_everything() {
    let d = tempfile::tempdir().unwrap();
    let last;
    {
        let s = SledStore::open(d.path()).unwrap();
        tables(&s);
        for i in 0..5 {
            s.record_inbound(
                &ev("irc:l", "#a", &format!("m{i}")),
                vec![plan("xmpp", "a@c")],
            )
            .unwrap();
        }
        last = s
            .pending(&NetworkId::new("xmpp"))
            .unwrap()
            .last()
            .unwrap()
            .outbox_id;
        s.flush().unwrap();
    }
    let s = SledStore::open(d.path()).unwrap();
    let p = s.pending(&NetworkId::new("xmpp")).unwrap();
    assert_eq!(p.len(), 5);
    assert!(p.windows(2).all(|w| w[0].outbox_id < w[1].outbox_id));
    assert_eq!(s.audit_log().unwrap().len(), 3);
    assert_eq!(
        s.cursor(&room("xmpp", "a@c")).unwrap().as_deref(),
        Some("c2")
    );
    assert!(s.txn_done("t1").unwrap());
    let Recorded::New(r) = s
        .record_inbound(&ev("irc:l", "#a", "new"), vec![plan("xmpp", "a@c")])
        .unwrap()
    else {
        panic!()
    };
    assert!(r[0].outbox_id > last);
}
