//! Crash safety of the sled store: a kill -9 mid-write, and every prefix of
//! `record_inbound`'s writes.

use super::*;

const CHILD_ENV: &str = "JUNCTION_STORE_KILL_CHILD_DIR";

#[test]
fn kill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let s = SledStore::open(dir).unwrap();
    for i in 0..50 {
        s.record_inbound(
            &ev("irc:l", "#a", &format!("m{i}")),
            vec![plan("xmpp", "a@c")],
        )
        .unwrap();
    }
    s.flush().unwrap();
    println!("flushed");
    let mut i = 50u64;
    loop {
        s.record_inbound(
            &ev("irc:l", "#a", &format!("m{i}")),
            vec![plan("xmpp", "a@c")],
        )
        .unwrap();
        i += 1;
    }
}

#[test]
fn sled_survives_kill_9() {
    use std::io::BufRead;
    let d = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "tests::torn::kill_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, d.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    let mut seen = false;
    for _ in 0..100 {
        match lines.next() {
            Some(Ok(l)) if l.contains("flushed") => {
                seen = true;
                break;
            }
            Some(_) => {}
            None => break,
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(seen, "child never flushed");
    let s = SledStore::open(d.path()).unwrap();
    let pending = s.pending(&NetworkId::new("xmpp")).unwrap();
    for i in 0..50 {
        let e = ev("irc:l", "#a", &format!("m{i}"));
        assert_eq!(
            s.event_for(&e.origin, &e.remote_id).unwrap(),
            Some(e.id.clone())
        );
        assert!(pending.iter().any(|p| p.event.id == e.id));
    }
    // A record the kill cut short left no outbox row behind: every row's event is mapped.
    for p in &pending {
        assert_eq!(
            s.event_for(&p.event.origin, &p.event.remote_id).unwrap(),
            Some(p.event.id.clone()),
            "an outbox row without its record"
        );
    }
    let max = pending.iter().map(|p| p.outbox_id).max().unwrap();
    let Recorded::New(r) = s
        .record_inbound(&ev("irc:l", "#a", "after"), vec![plan("xmpp", "a@c")])
        .unwrap()
    else {
        panic!()
    };
    assert!(r[0].outbox_id > max);
}

/// `record_inbound` without a transaction: whatever prefix of its writes a crash leaves, the
/// reopened store either has the event whole (mapped, its rows pending) or not at all (no
/// row pending, and the origin's resend records it once).
#[test]
fn sled_torn_inbound_is_whole_or_undone() {
    let xmpp = NetworkId::new("xmpp");
    let irc = NetworkId::new("irc:l");
    let e = ev("matrix", "!r:m", "$torn");
    let targets = || vec![plan("xmpp", "a@c"), plan("irc:l", "#a")];
    let mut whole = 0;
    for writes in 0..20 {
        let d = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(d.path()).unwrap();
            s.torn_inbound(&e, targets(), writes);
            s.flush().unwrap();
        }
        let s = SledStore::open(d.path()).unwrap();
        let pending = s.pending(&xmpp).unwrap().len() + s.pending(&irc).unwrap().len();
        if s.event_for(&e.origin, &e.remote_id).unwrap().is_some() {
            whole += 1;
            assert_eq!(
                pending, 2,
                "after {writes} writes: mapped, so its rows are there"
            );
            assert_eq!(
                s.record_inbound(&e, targets()).unwrap(),
                Recorded::Duplicate
            );
        } else {
            assert_eq!(
                pending, 0,
                "after {writes} writes: undone, so no row is left"
            );
            let Recorded::New(rows) = s.record_inbound(&e, targets()).unwrap() else {
                panic!("the resend is new");
            };
            assert_eq!(rows.len(), 2);
            assert_eq!(s.pending(&xmpp).unwrap().len(), 1, "recorded once");
        }
        assert_eq!(s.intents_left(), 0, "every intent is settled at open");
    }
    assert!(whole > 0 && whole < 20, "both outcomes were tried");
}
