//! The `junction` binary as a user runs it: `check`, `registration`, `run`, and every
//! config error reported at once.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const AS_TOKEN: &str = "as-token-cli-test";
const HS_TOKEN: &str = "hs-token-cli-test";
const XMPP_SECRET: &str = "xmpp-secret-cli-test";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The binary with a clean environment holding only the shipped config's variables.
fn junction(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_junction"));
    c.current_dir(dir)
        .env_clear()
        .env("JUNCTION_AS_TOKEN", AS_TOKEN)
        .env("JUNCTION_HS_TOKEN", HS_TOKEN)
        .env("JUNCTION_XMPP_SECRET", XMPP_SECRET)
        .env("JUNCTION_EMPTY", "");
    c
}

fn output(c: &mut Command) -> (Option<i32>, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = c.output().unwrap();
    (
        status.code(),
        String::from_utf8(stdout).unwrap(),
        String::from_utf8(stderr).unwrap(),
    )
}

#[test]
fn check_accepts_the_shipped_config_and_prints_the_links() {
    let (code, out, err) = output(junction(&root()).arg("check"));
    assert_eq!(code, Some(0), "stderr: {err}");
    let expected = "bridges.toml: OK\n\
         bridges from the config:\n\
         \x20 lobby\n\
         \x20   matrix     #lobby:matrix.test\n\
         \x20   xmpp       lobby@conference.xmpp.test\n\
         \x20   irc:local  #lobby\n";
    // The shipped config's store (`data/store`) may exist, or be held by the gateway another
    // test runs: what follows the config's bridges is then about it.
    let rest = out
        .strip_prefix(expected)
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        rest.is_empty()
            || rest.starts_with("links made at runtime")
            || rest.starts_with("runtime links: not shown"),
        "{out}"
    );
    for secret in [AS_TOKEN, HS_TOKEN, XMPP_SECRET] {
        assert!(!out.contains(secret) && !err.contains(secret));
    }
}

#[test]
fn check_with_an_explicit_file() {
    let (code, out, _) = output(
        junction(Path::new("/"))
            .args(["check", "-c"])
            .arg(root().join("bridges.toml")),
    );
    assert_eq!(code, Some(0));
    assert!(out.contains("irc:local  #lobby"));
}

/// A config in a fresh directory whose store (`data/store`, the default `data_dir`) holds
/// `links`; returns the directory.
fn config_with_store(links: &[junction_core::Link]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bridges.toml"),
        "[irc.local]\nserver = \"127.0.0.1:6667\"\nnick = \"junction\"\n\n\
         [[bridge]]\nname = \"lobby\"\nirc = [\"local/#lobby\", \"local/#lobby2\"]\n",
    )
    .unwrap();
    if !links.is_empty() {
        use junction_store::Store as _;
        let store = junction_store::SledStore::open(dir.path().join("data/store")).unwrap();
        for l in links {
            store.put_link(l).unwrap();
        }
        store.flush().unwrap();
    }
    dir
}

#[test]
fn check_shows_the_runtime_links_from_the_store() {
    use junction_core::{Link, RoomRef};
    let dir = config_with_store(&[]);
    let (code, out, _) = output(junction(dir.path()).arg("check"));
    assert_eq!(code, Some(0));
    assert!(
        !out.contains("runtime"),
        "no store, nothing about it: {out}"
    );
    assert!(!dir.path().join("data").exists(), "check creates no store");

    let dir = config_with_store(&[
        Link {
            bridge: "side".into(),
            rooms: vec![
                RoomRef::new("irc:local", "#side"),
                RoomRef::new("matrix", "#side:matrix.test"),
            ],
        },
        Link {
            bridge: "lobby".into(),
            rooms: Vec::new(),
        },
    ]);
    let (code, out, err) = output(junction(dir.path()).arg("check"));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        out,
        "bridges.toml: OK\n\
         bridges from the config:\n\
         \x20 lobby\n\
         \x20   irc:local  #lobby\n\
         \x20   irc:local  #lobby2\n\
         links made at runtime (they replace config bridges of the same name):\n\
         \x20 lobby\n\
         \x20   (closed)\n\
         \x20 side\n\
         \x20   irc:local  #side\n\
         \x20   matrix     #side:matrix.test\n"
    );
}

#[test]
fn check_says_so_when_a_running_gateway_holds_the_store() {
    let dir = config_with_store(&[]);
    // This process holds sled's lock, as a running gateway would.
    let _held = junction_store::SledStore::open(dir.path().join("data/store")).unwrap();
    let (code, out, err) = output(junction(dir.path()).arg("check"));
    assert_eq!(code, Some(0), "a valid config stays valid: {err}");
    assert!(out.contains("bridges from the config:"), "{out}");
    assert!(
        out.ends_with(
            "runtime links: not shown, the store at data/store is in use by a running gateway \
             (ask it with the `bridges` admin command)\n"
        ),
        "{out}"
    );
}

/// Each bad config in tests/config_errors fails `check` with exit status 1 and every one of
/// its errors on stderr, named by the file as given on the command line.
#[test]
fn check_reports_every_error_with_file_line_and_column() {
    let dir = root().join("tests/config_errors");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "toml") {
            continue;
        }
        seen += 1;
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        let expected = std::fs::read_to_string(path.with_extension("expected"))
            .unwrap()
            .replace("bridges.toml:", &format!("{name}:"));
        let (code, out, err) = output(junction(&dir).args(["check", "-c", &name]));
        assert_eq!(code, Some(1), "{name}: stdout {out} stderr {err}");
        assert_eq!(out, "", "{name}");
        assert_eq!(err.trim_end(), expected.trim_end(), "{name}");
        for line in err.lines() {
            let mut parts = line.splitn(4, ':');
            assert_eq!(parts.next(), Some(name.as_str()), "{line}");
            assert!(
                parts.next().unwrap().parse::<usize>().unwrap() > 0,
                "{line}"
            );
            assert!(
                parts.next().unwrap().parse::<usize>().unwrap() > 0,
                "{line}"
            );
        }
    }
    assert!(seen >= 12, "only {seen} bad configs");
}

#[test]
fn check_names_an_unset_variable() {
    let (code, _, err) = output(
        junction(&root())
            .env_remove("JUNCTION_HS_TOKEN")
            .arg("check"),
    );
    assert_eq!(code, Some(1));
    assert_eq!(
        err.trim_end(),
        "bridges.toml:15:13: matrix.hs_token: environment variable `JUNCTION_HS_TOKEN` is not set"
    );
}

/// The doctor loads the config as `run` does: a bad one gives the same FILE:LINE:COL: key
/// errors, and is an error to the doctor (status 2), before any connection.
#[test]
fn doctor_reports_config_errors_with_file_line_and_key() {
    let (code, out, err) = output(
        junction(&root())
            .env_remove("JUNCTION_HS_TOKEN")
            .arg("doctor"),
    );
    assert_eq!(code, Some(2), "{out}");
    assert_eq!(out, "");
    assert_eq!(
        err.trim_end(),
        "bridges.toml:15:13: matrix.hs_token: environment variable `JUNCTION_HS_TOKEN` is not set"
    );
}

#[test]
fn missing_file_is_a_config_error() {
    let (code, _, err) = output(junction(&root()).args(["check", "-c", "no-such.toml"]));
    assert_eq!(code, Some(1));
    assert!(
        err.starts_with("no-such.toml: file: could not read it"),
        "{err}"
    );
}

#[test]
fn registration_prints_the_appservice_yaml() {
    let (code, out, err) = output(junction(&root()).arg("registration"));
    assert_eq!(code, Some(0), "stderr: {err}");
    let lines: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        vec![
            "id: 'junction'",
            "url: 'http://127.0.0.1:9009'",
            "as_token: 'as-token-cli-test'",
            "hs_token: 'hs-token-cli-test'",
            "sender_localpart: 'junction'",
            "rate_limited: false",
            "receive_ephemeral: true",
            "namespaces:",
            "  users:",
            "    - exclusive: true",
            "      regex: '@_junction_.*:matrix\\.test'",
            "  aliases:",
            "    - exclusive: true",
            "      regex: '#_junction_.*:matrix\\.test'",
            // bridges.toml links #lobby:matrix.test: the gateway may create it.
            "    - exclusive: false",
            "      regex: '#lobby:matrix\\.test'",
            "  rooms: []",
        ]
    );
    assert!(out.contains("@junction:matrix.test"));
}

/// With `[matrix] encryption = true` the registration asks the homeserver for the bot
/// device's data (MSC3202) and lets the appservice make the device (MSC4190).
#[test]
fn registration_with_encryption_adds_the_device_keys() {
    let dir = tempfile::tempdir().unwrap();
    let config = std::fs::read_to_string(root().join("bridges.toml")).unwrap();
    let config = config.replacen("[matrix]\n", "[matrix]\nencryption = true\n", 1);
    std::fs::write(dir.path().join("bridges.toml"), config).unwrap();
    let (code, out, err) = output(junction(dir.path()).arg("registration"));
    assert_eq!(code, Some(0), "stderr: {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.contains(&"receive_ephemeral: true"), "{out}");
    assert!(lines.contains(&"org.matrix.msc3202: true"), "{out}");
    assert!(lines.contains(&"io.element.msc4190: true"), "{out}");
    // Without it, neither.
    let (_, plain, _) = output(junction(&root()).arg("registration"));
    assert!(
        !plain.contains("msc3202") && !plain.contains("msc4190"),
        "{plain}"
    );
}

#[test]
fn registration_without_matrix_fails() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bridges.toml"), "[gateway]\n").unwrap();
    let (code, out, err) = output(junction(dir.path()).arg("registration"));
    assert_eq!(code, Some(1));
    assert_eq!(out, "");
    assert!(err.contains("no [matrix] section"), "{err}");
}

#[test]
fn usage_errors_exit_2_and_help_documents_exit_codes() {
    let (code, _, _) = output(junction(&root()).arg("bogus"));
    assert_eq!(code, Some(2));
    let (code, _, _) = output(junction(&root()).args(["check", "--nope"]));
    assert_eq!(code, Some(2));
    let (code, out, _) = output(junction(&root()).arg("--help"));
    assert_eq!(code, Some(0));
    assert!(out.contains("Exit status:"), "{out}");
    assert!(out.contains("registration"));
}

/// Waits (bounded) for the child to exit.
fn wait_exit(child: &mut Child, deadline: Duration) -> Option<i32> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() >= end {
            let _ = child.kill();
            let _ = child.wait();
            panic!("junction did not exit within {deadline:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `run` (and the bare command, which means `run`) stops cleanly on SIGTERM and SIGINT.
#[test]
fn run_stops_cleanly_on_sigterm_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bridges.toml");
    std::fs::write(&config, "[gateway]\ndata_dir = \"data\"\nlog = \"info\"\n").unwrap();
    for (args, signal) in [(&["run"][..], "-TERM"), (&[][..], "-INT")] {
        let mut child = junction(dir.path())
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        // Signal only once the handlers are in place (the start line is logged after).
        let end = Instant::now() + Duration::from_secs(20);
        let mut log = Vec::new();
        while !log.iter().any(|l: &String| l.contains("Gateway starting.")) {
            let left = end.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => log.push(line),
                Err(_) => {
                    let _ = child.kill();
                    panic!("no start line; log so far: {log:?}");
                }
            }
        }
        let pid = child.id().to_string();
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
        assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(0));
        reader.join().unwrap();
        log.extend(rx.try_iter());
        assert!(
            log.iter().any(|l| l.contains("Gateway stopped.")),
            "{log:?}"
        );
    }
}

/// `junction store compact` rewrites the sled store, which reads as before.
#[test]
fn store_compact_keeps_the_rows() {
    use junction_store::Store as _;
    let dir = config_with_store(&[]);
    let path = dir.path().join("data/store");
    {
        let store = junction_store::SledStore::open(&path).unwrap();
        for i in 0..200 {
            store
                .kv_put("irc:local/nicks", &format!("k{i}"), b"v")
                .unwrap();
        }
        store.flush().unwrap();
    }
    // The store's lock is let go of a moment after its last handle.
    std::thread::sleep(Duration::from_secs(1));
    let (code, _, err) = output(junction(dir.path()).args(["store", "compact"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("compacted"), "{err}");
    let store = junction_store::SledStore::open(&path).unwrap();
    assert_eq!(store.kv_scan("irc:local/nicks").unwrap().len(), 200);
}

/// `junction store export` and `import` move a store from sled to PostgreSQL and back: the
/// runtime links, puppets and adapter rows arrive whole, with the password from `${VAR}`, and
/// an import refuses a store that is not empty.
#[test]
fn store_moves_between_sled_and_postgresql() {
    use junction_store::Store as _;
    use junction_testkit::servers::postgres;
    if std::net::TcpStream::connect(("127.0.0.1", junction_testkit::servers::POSTGRES_PORT))
        .is_err()
    {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL is needed under CI"
        );
        eprintln!("skipped: no PostgreSQL (`cargo run -p junction-testkit -- start`)");
        return;
    }
    let link = junction_core::Link {
        bridge: "side".into(),
        rooms: vec![
            junction_core::RoomRef::new("irc:local", "#side"),
            junction_core::RoomRef::new("irc:local", "#side2"),
        ],
    };
    let sled = config_with_store(std::slice::from_ref(&link));
    {
        let store = junction_store::SledStore::open(sled.path().join("data/store")).unwrap();
        store.kv_put("irc:local/nicks", "k", b"\x00v").unwrap();
        store.flush().unwrap();
    }
    let (code, _, err) = output(junction(sled.path()).args(["store", "export", "-o", "dump"]));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("exported 2 rows"), "{err}");

    // Into PostgreSQL, a schema of the test's own, the password from the environment.
    let schema = junction_testkit::unique("cli").to_lowercase();
    let pg = tempfile::tempdir().unwrap();
    let url = postgres::schema_url(&schema).replace(postgres::PASSWORD, "${PGPASS}");
    std::fs::write(
        pg.path().join("bridges.toml"),
        format!(
            "[gateway]\nstore = \"{url}\"\n\n[irc.local]\nserver = \"127.0.0.1:6667\"\n\
             nick = \"junction\"\n\n[[bridge]]\nname = \"lobby\"\nirc = [\"local/#lobby\", \"local/#lobby2\"]\n"
        ),
    )
    .unwrap();
    let dump = sled.path().join("dump");
    let in_pg = |args: &[&str]| {
        output(
            junction(pg.path())
                .env("PGPASS", postgres::PASSWORD)
                .args(args),
        )
    };
    let (code, _, err) = in_pg(&["store", "import", dump.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("imported 2 rows"), "{err}");
    assert!(!err.contains(postgres::PASSWORD), "{err}");
    let (code, out, err) = in_pg(&["check"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("side"), "the link, from PostgreSQL: {out}");
    let (code, _, err) = in_pg(&["store", "import", dump.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("not empty"), "{err}");

    // And back to a fresh sled store, through a pipe.
    let (code, dumped, err) = in_pg(&["store", "export"]);
    assert_eq!(code, Some(0), "{err}");
    postgres::drop_schema(&schema);
    let back = config_with_store(&[]);
    let mut child = junction(back.path())
        .args(["store", "import"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write as _;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dumped.as_bytes())
            .unwrap();
    }
    let done = child.wait_with_output().unwrap();
    assert!(done.status.success(), "{:?}", done);
    let store = junction_store::SledStore::open(back.path().join("data/store")).unwrap();
    assert_eq!(store.links().unwrap(), vec![link]);
    assert_eq!(
        store.kv_get("irc:local/nicks", "k").unwrap().as_deref(),
        Some(b"\x00v".as_slice())
    );
}
