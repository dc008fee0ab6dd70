//! The conformance suite on PostgreSQL, and what only PostgreSQL has: reopening a schema,
//! the active lock of the hot standby.

use super::*;

/// The PostgreSQL the conformance tests use: `JUNCTION_TEST_PG_URL`, or the testkit's.
fn pg_url() -> String {
    std::env::var("JUNCTION_TEST_PG_URL")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "postgres://junction:junction_testkit_pg@127.0.0.1:5439/junction".into())
}

/// The URL of the test PostgreSQL with `schema` as the search path.
fn schema_url(schema: &str) -> String {
    format!("{}?options=-c%20search_path%3D{schema}", pg_url())
}

/// A test's own schema, dropped at the end.
pub(crate) struct PgSchema(String);

impl Drop for PgSchema {
    fn drop(&mut self) {
        if let Ok(mut c) = pg_url()
            .parse::<postgres::Config>()
            .and_then(|c| c.connect(postgres::NoTls))
        {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.0));
        }
    }
}

/// A [`PgStore`] in a schema of its own, or `None` (with a message) when no PostgreSQL
/// answers; under CI (`CI` set) a missing PostgreSQL fails the test instead.
pub(crate) fn pg_store(test: &str) -> Option<(PgSchema, PgStore)> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let schema = format!(
        "t_{test}_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        junction_core::clock::now_ms()
    );
    let url = schema_url(&schema);
    match PgStore::open(&url) {
        Ok(s) => Some((PgSchema(schema), s)),
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipped: no PostgreSQL reachable ({e}); `cargo run -p junction-testkit -- start` starts one");
            None
        }
        Err(e) => panic!("PostgreSQL is needed under CI: {e}"),
    }
}

store_conformance_tests!(pg, {
    let Some(made) = pg_store("conformance") else {
        return;
    };
    made
});

#[test]
fn pg_reopen_keeps_everything_and_migrates_once() {
    let Some((schema, s)) = pg_store("reopen") else {
        return;
    };
    s.kv_put("ns", "k", b"v").unwrap();
    drop(s);
    let url = schema_url(&schema.0);
    let s = PgStore::open(&url).unwrap();
    assert_eq!(s.kv_get("ns", "k").unwrap(), Some(b"v".to_vec()));
    assert_eq!(s.schema(), schema.0);
}

/// Polls `f` every 10 ms for up to 10 s.
fn within_10s(f: impl Fn() -> bool) -> bool {
    (0..1000).any(|_| {
        let done = f();
        if !done {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        done
    })
}

/// One gateway at a time holds a store's active lock; the next takes it once the first lets
/// go, and a store in another schema has a lock of its own.
#[test]
fn pg_active_lock_is_held_by_one_at_a_time() {
    let Some((schema, _store)) = pg_store("lock") else {
        return;
    };
    let url = schema_url(&schema.0);
    let first = ActiveLock::wait(&url).unwrap();
    assert!(within_10s(|| first.is_held()));
    let second = ActiveLock::wait(&url).unwrap();
    let Some((other, _other_store)) = pg_store("lock") else {
        return;
    };
    let elsewhere = ActiveLock::wait(&schema_url(&other.0)).unwrap();
    assert!(within_10s(|| elsewhere.is_held()));
    assert!(!second.is_held(), "the first still holds it");
    drop(first);
    assert!(within_10s(|| second.is_held()), "taken over");
    assert!(!second.is_lost());
}

/// The store's own connection holds the active lock: a second store on the schema waits,
/// the doctor's `ActiveLock` sees it taken, and it is free again once the first is gone.
#[test]
fn pg_store_becomes_active_one_at_a_time() {
    let Some((schema, first)) = pg_store("active") else {
        return;
    };
    let url = schema_url(&schema.0);
    assert!(first.try_become_active().unwrap());
    assert!(first.try_become_active().unwrap(), "held stays held");
    let second = PgStore::open(&url).unwrap();
    assert!(!second.try_become_active().unwrap());
    let probe = ActiveLock::wait(&url).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(!probe.is_held(), "the same lock");
    drop(probe);
    drop(first);
    assert!(within_10s(|| second.try_become_active().unwrap()));
    assert!(!second.lost_active());
}
