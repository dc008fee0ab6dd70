//! What the deploy guide ships: the systemd unit passes `systemd-analyze verify` with no
//! warning, and the guide's `bridges.toml` passes `junction check`, as does the example config
//! the package installs (the guide's, with a header). Building and installing the package
//! itself is `scripts/test-package`'s (it needs root).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn unit() -> String {
    std::fs::read_to_string(root().join("packaging/junction.service")).unwrap()
}

/// The path the unit runs the binary from.
const INSTALLED: &str = "/usr/bin/junction";

#[test]
fn the_unit_has_the_promised_settings() {
    let unit = unit();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for want in [
        "ExecStart=/usr/bin/junction run -c /etc/junction/bridges.toml",
        "DynamicUser=yes",
        "StateDirectory=junction",
        "ConfigurationDirectory=junction",
        "EnvironmentFile=-/etc/junction/junction.env",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "NoNewPrivileges=yes",
        "PrivateTmp=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "LimitNOFILE=65536",
    ] {
        assert!(lines.contains(&want), "the unit lacks `{want}`");
    }
}

/// `systemd-analyze verify` on the unit, its `ExecStart` pointed at the binary just built
/// (verify checks that the command exists). Any line it prints about the unit is a failure:
/// verify reports unknown keys and bad values as warnings and still exits 0. Skipped
/// (with a note) where systemd-analyze is not installed.
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let analyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    let Some(analyze) = analyze else {
        eprintln!("systemd-analyze is not installed: the unit was not verified");
        return;
    };
    let unit = unit();
    assert!(unit.contains(INSTALLED));
    let dir = tempfile::tempdir().unwrap();
    // verify takes the unit's name from the file's, so the copy keeps it.
    let copy = dir.path().join("junction.service");
    std::fs::write(
        &copy,
        unit.replace(INSTALLED, env!("CARGO_BIN_EXE_junction")),
    )
    .unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // Lines about other units of the machine (its own broken units) are not ours.
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("junction.service") || l.contains(&*copy.to_string_lossy()))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {:?}\n{text}",
        out.status
    );
}

/// The complete `bridges.toml` of docs/deploy.md: its first ```toml block.
fn guides_config() -> String {
    let guide = std::fs::read_to_string(root().join("docs/deploy.md")).unwrap();
    let start = guide
        .find("```toml\n")
        .expect("a ```toml block in docs/deploy.md")
        + 8;
    let len = guide[start..].find("```").unwrap();
    guide[start..start + len].to_owned()
}

/// The guide's config is valid: every key it shows exists.
#[test]
fn the_guides_config_passes_check() {
    passes_check(&guides_config());
}

/// The example config the package installs in /etc/junction is the guide's, after a header
/// of comments, and so valid too.
#[test]
fn the_packaged_example_is_the_guides_config() {
    let example = std::fs::read_to_string(root().join("packaging/bridges.toml.example")).unwrap();
    let body = example.trim_start_matches(|c| c != '[');
    assert!(
        example[..example.len() - body.len()]
            .lines()
            .all(|l| l.is_empty() || l.starts_with('#')),
        "only comments come before the config"
    );
    assert_eq!(body, guides_config().trim_start_matches(|c| c != '['));
    passes_check(&example);
}

/// `junction check` accepts `toml`, with the secrets it names in the environment.
fn passes_check(toml: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bridges.toml");
    std::fs::write(&file, toml).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_junction"))
        .args(["check", "-c"])
        .arg(&file)
        .env_clear()
        .env("JUNCTION_AS_TOKEN", "as")
        .env("JUNCTION_HS_TOKEN", "hs")
        .env("JUNCTION_XMPP_SECRET", "xs")
        .env("JUNCTION_IRC_SASL_PASSWORD", "pw")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
