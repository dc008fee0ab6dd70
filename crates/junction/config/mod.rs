//! Loading `bridges.toml`, in two stages: [`raw`] mirrors the file (unknown keys and wrong
//! types are errors, every value keeps its span), [`validate`] turns it into a [`Config`]
//! (required keys, syntax of rooms and addresses, `${VAR}` expansion, cross-references).
//! Each network reads and checks its own section, rooms and admins through
//! [`crate::wiring::NETWORKS`] ([`junction_network::Network`]); the checks of values they
//! share (`${VAR}`, secrets, addresses, counts) are [`junction_network::Checker`]'s.
//!
//! Every error is collected and reported at once, one per line, as
//! `bridges.toml:LINE:COL: key.path: message`.
//!
//! # Keys
//!
//! Every section is optional; `${VAR}` in any string expands from the environment (an unset
//! variable is an error). Unknown keys are errors.
//!
//! - `[gateway]`: `data_dir` (default `"data"`, relative to the file's directory), `store`
//!   (`"sled"`, the default, under `data_dir`; or `"postgres://user:${PGPASS}@host:port/db"`,
//!   with `?options=-c%20search_path%3Dschema` for a schema of its own), `metrics`
//!   (`ip:port`, off by default), `membership` (`"off"`, `"summarised"` (default), `"all"`),
//!   `log` (a tracing filter such as `"info"`; `JUNCTION_LOG` / `RUST_LOG` win), `admins`,
//!   `web` (`ip:port` of the listener for public pages: the whole text of messages too long
//!   for IRC, at `/paste/<id>`; off by default), `public_url` (the base URL people use to
//!   reach `web`, at most 200 bytes; default `http://<web>`, required when `web` listens on
//!   0.0.0.0 or ::, and an error without `web`), `max_attachments` (per message, default 4),
//!   `rate_per_minute` and `rate_burst` (the per-sender rate limit, default 60 and 40; a
//!   `rate_per_minute` of 0 turns it off), `private_messages` (`"off"`, `"members"`
//!   (default), `"all"`: who can be reached by private message across networks).
//! - Each network's section, with its keys documented in its crate's `config.rs`:
//!   `[matrix]` ([`junction_matrix::config`]), `[xmpp]` ([`junction_xmpp::config`]),
//!   `[irc.<name>]` (network id `irc:<name>`, [`junction_irc::config`]).
//! - `[[bridge]]`: `name` (unique), at least two rooms under the networks' keys, each a
//!   string or a list, written as the network writes them: `matrix` (`#alias:server` or
//!   `!id[:server]`), `xmpp` (`room@muc.domain`) and `irc` (`network/#channel`); `admins`. A
//!   room belongs to one bridge at most.
//!
//! Admins are identities no one else can take on their network: `@user:server` (Matrix),
//! `user@domain` (XMPP), `network/account` or `network/nick!user@host` (IRC), never a bare
//! nick.

pub mod raw;
pub mod validate;

pub use validate::{Config, Configured, GatewayConfig, Membership, PrivateMessages, StoreLocation};

pub(crate) use junction_network::Diag;
use std::fmt;
use std::path::Path;
use validate::RawSections;

/// One problem in the config file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file as named on the command line.
    pub file: String,
    /// 1-based line, or 0 when the error concerns the file as a whole.
    pub line: usize,
    /// 1-based column, in characters.
    pub col: usize,
    /// Dotted key path, e.g. `irc.local.nick` or `bridge[0].xmpp`.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}: {}", self.file, self.key, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}: {}",
                self.file, self.line, self.col, self.key, self.message
            )
        }
    }
}

/// Every problem found in a config file, in file order. Displays one error per line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Loads and validates the config file at `path`, expanding `${VAR}` from the environment.
/// Relative paths in it (`data_dir`) are relative to the file's directory.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with_env(path, &|name| std::env::var(name).ok())
}

/// [`load`] with the environment given as a lookup function.
pub fn load_with_env(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let src = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            line: 0,
            col: 0,
            key: "file".into(),
            message: format!("could not read it: {e}"),
        }])
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    parse(&src, &file, base, env)
}

/// Parses and validates config text. `file` names it in errors; `base` is the directory that
/// relative paths are resolved against.
pub fn parse(
    src: &str,
    file: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let (raw, mut diags) = parse_raw(src);
    let config = match raw {
        Some(raw) => {
            let blanked: Vec<String> = diags.iter().map(|d| d.key.clone()).collect();
            let (raw, sections) = raw;
            let (config, more) = validate::validate(&raw, &sections, src, base, env);
            // A key removed after a type error must not be reported again as missing.
            diags.extend(more.into_iter().filter(|d| {
                !d.unless_removed
                    .iter()
                    .any(|k| blanked.iter().any(|b| under(b, k) || under(k, b)))
            }));
            config
        }
        None => None,
    };
    match config {
        Some(c) if diags.is_empty() => Ok(c),
        _ => {
            if diags.is_empty() {
                // Every rejection above records why; this keeps a gap from ever turning into a
                // silent failure.
                diags.push(Diag {
                    span: 0..0,
                    key: "config".into(),
                    message: "rejected without a recorded reason (please report this)".into(),
                    unless_removed: Vec::new(),
                });
            }
            diags.sort_by_key(|d| d.span.start);
            Err(ConfigErrors(
                diags
                    .into_iter()
                    .map(|d| {
                        let (line, col) = line_col(src, d.span.start);
                        ConfigError {
                            file: file.to_owned(),
                            line,
                            col,
                            key: d.key,
                            message: d.message,
                        }
                    })
                    .collect(),
            ))
        }
    }
}

/// True when key path `a` is `b` or lies inside it (`b.x`, `b[0]`).
fn under(a: &str, b: &str) -> bool {
    a.strip_prefix(b)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
}

/// Most serde-level errors collected before giving up on the rest.
const MAX_SHAPE_ERRORS: usize = 100;

/// The gateway's tables, then each network's section, as read from `text`.
fn read(text: &str) -> Result<(raw::RawConfig, RawSections), toml::de::Error> {
    let raw = toml::from_str::<raw::RawConfig>(text)?;
    let mut sections = Vec::new();
    for network in crate::wiring::NETWORKS.iter() {
        if let Some(section) = network.read(text)? {
            sections.push((network, section));
        }
    }
    Ok((raw, sections))
}

/// Deserialises the raw config (the gateway's tables and the networks' sections), collecting
/// every unknown key and wrongly typed value.
///
/// serde stops at the first error, so after each one the offending key (with its value, or the
/// offending table) is overwritten with spaces and parsing starts again. Blanking keeps every
/// byte offset, so later errors still point at the right place in the original text.
fn parse_raw(src: &str) -> (Option<(raw::RawConfig, RawSections)>, Vec<Diag>) {
    let mut diags = Vec::new();
    let doc = match toml_edit::ImDocument::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            diags.push(Diag {
                span: e.span().unwrap_or(0..0),
                key: "toml".into(),
                message: one_line(e.message()),
                unless_removed: Vec::new(),
            });
            return (None, diags);
        }
    };
    let mut entries = Vec::new();
    walk_table(doc.as_table(), "", &mut entries);
    let mut text = src.to_owned();
    for _ in 0..MAX_SHAPE_ERRORS {
        let err = match read(&text) {
            Ok(raw) => return (Some(raw), diags),
            Err(e) => e,
        };
        let span = err.span().unwrap_or(0..0);
        let entry = entries
            .iter()
            .filter(|e| e.whole.start <= span.start && span.end <= e.whole.end)
            .min_by_key(|e| e.whole.len());
        diags.push(Diag {
            span: span.clone(),
            key: entry
                .map(|e| e.path.clone())
                .unwrap_or_else(|| "toml".into()),
            message: one_line(err.message()),
            unless_removed: Vec::new(),
        });
        let Some(entry) = entry else { break };
        if entry.whole.is_empty() {
            break;
        }
        let blanked: String = text[entry.whole.clone()]
            .chars()
            .map(|c| if c == '\n' || c == '\r' { c } else { ' ' })
            .collect();
        text.replace_range(entry.whole.clone(), &blanked);
        if toml_edit::ImDocument::parse(text.as_str()).is_err() {
            // Blanking broke the syntax (a key inside an inline table): stop here rather
            // than report an error the user did not make.
            break;
        }
    }
    (None, diags)
}

/// A key of the document with its dotted path and the byte range it covers (key and value,
/// or a table from its header to its last value).
struct Entry {
    path: String,
    whole: std::ops::Range<usize>,
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk_table(table: &toml_edit::Table, prefix: &str, out: &mut Vec<Entry>) {
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = join(prefix, name);
        match item {
            toml_edit::Item::None => {}
            toml_edit::Item::Value(v) => {
                if let (Some(k), Some(s)) = (key.span(), v.span()) {
                    out.push(Entry {
                        path: path.clone(),
                        whole: k.start.min(s.start)..s.end,
                    });
                }
                walk_value(v, &path, out);
            }
            toml_edit::Item::Table(t) => {
                if let Some(s) = t.span() {
                    out.push(Entry {
                        path: path.clone(),
                        whole: s,
                    });
                }
                walk_table(t, &path, out);
            }
            toml_edit::Item::ArrayOfTables(a) => {
                for (i, t) in a.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    if let Some(s) = t.span() {
                        out.push(Entry {
                            path: p.clone(),
                            whole: s,
                        });
                    }
                    walk_table(t, &p, out);
                }
            }
        }
    }
}

fn walk_value(v: &toml_edit::Value, path: &str, out: &mut Vec<Entry>) {
    match v {
        toml_edit::Value::InlineTable(t) => {
            for (name, _) in t.iter() {
                if let Some((key, value)) = t.get_key_value(name) {
                    let p = join(path, name);
                    if let (Some(k), Some(s)) = (key.span(), value.span()) {
                        out.push(Entry {
                            path: p.clone(),
                            whole: k.start.min(s.start)..s.end,
                        });
                    }
                    if let Some(value) = value.as_value() {
                        walk_value(value, &p, out);
                    }
                }
            }
        }
        toml_edit::Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                if let toml_edit::Value::InlineTable(_) = v {
                    walk_value(v, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn one_line(s: &str) -> String {
    s.trim()
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ")
}

/// 1-based line and column (in characters) of a byte offset.
pub(crate) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = src[line_start..offset].chars().count() + 1;
    (line, col)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use junction_core::{RoomRef, UserRef};
    use junction_irc::config::{IrcConfig, IrcMode};
    use junction_matrix::config::MatrixSection;
    use junction_xmpp::config::XmppSection;
    use std::path::PathBuf;

    fn irc(c: &Config) -> Vec<&IrcConfig> {
        c.sections_of::<IrcConfig>().collect()
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "JUNCTION_AS_TOKEN" => Some("as-secret".into()),
            "JUNCTION_HS_TOKEN" => Some("hs-secret".into()),
            "JUNCTION_XMPP_SECRET" => Some("xmpp-secret".into()),
            "JUNCTION_EMPTY" => Some(String::new()),
            "PGPASS" => Some("pg-secret".into()),
            _ => None,
        }
    }

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn ok(src: &str) -> Config {
        match parse(src, "bridges.toml", Path::new("/etc/junction"), &env) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    #[test]
    fn shipped_bridges_toml_validates() {
        let c = load_with_env(&root().join("bridges.toml"), &env).unwrap();
        assert_eq!(c.gateway.data_dir, root().join("data"));
        assert_eq!(c.gateway.metrics, Some("127.0.0.1:9184".parse().unwrap()));
        assert_eq!(c.gateway.membership, Membership::Summarised);
        let ms = c.section::<MatrixSection>().unwrap();
        let m = &ms.config;
        assert_eq!(m.homeserver, "http://127.0.0.1:8008");
        assert_eq!(m.server_name, "matrix.test");
        assert_eq!(m.listen, "127.0.0.1:9009".parse().unwrap());
        assert_eq!(m.as_token.expose(), "as-secret");
        assert_eq!(m.hs_token.expose(), "hs-secret");
        assert_eq!((m.bot.as_str(), m.id.as_str()), ("junction", "junction"));
        assert_eq!(m.user_prefix, "_junction_");
        assert!(m.origin_marks, "marks are on by default");
        assert!(
            !ms.private_attachment_urls,
            "attachments come from public addresses only by default"
        );
        let x = &c.section::<XmppSection>().unwrap().config;
        assert_eq!(x.component, "bridge.xmpp.test");
        assert!(x.origin_marks, "marks are on by default");
        assert_eq!(x.server, "127.0.0.1:5347");
        assert_eq!(x.secret.expose(), "xmpp-secret");
        assert_eq!(irc(&c).len(), 1);
        let i = irc(&c)[0];
        assert_eq!(
            (i.name.as_str(), i.server.as_str()),
            ("local", "127.0.0.1:6667")
        );
        assert_eq!(
            (i.nick.as_str(), i.mode, i.tls),
            ("junction", IrcMode::Puppet, false)
        );
        assert_eq!(c.bridges.len(), 1);
        assert_eq!(c.bridges[0].bridge.as_str(), "lobby");
        assert_eq!(
            c.bridges[0].rooms,
            vec![
                RoomRef::new("matrix", "#lobby:matrix.test"),
                RoomRef::new("xmpp", "lobby@conference.xmpp.test"),
                RoomRef::new("irc:local", "#lobby"),
            ]
        );
    }

    /// Every `tests/config_errors/NAME.toml` fails with exactly the lines of `NAME.expected`.
    #[test]
    fn bad_configs_report_every_error() {
        let dir = root().join("tests/config_errors");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        names.sort();
        assert!(names.len() >= 12, "only {} bad configs", names.len());
        let mut failures = Vec::new();
        for path in &names {
            let src = std::fs::read_to_string(path).unwrap();
            let expected = std::fs::read_to_string(path.with_extension("expected")).unwrap();
            match parse(&src, "bridges.toml", Path::new(""), &env) {
                Ok(_) => failures.push(format!("{}: accepted", path.display())),
                Err(e) => {
                    let got = e.to_string();
                    if got.trim_end() != expected.trim_end() {
                        failures.push(format!(
                            "{}:\n--- expected\n{}\n--- got\n{}",
                            path.display(),
                            expected.trim_end(),
                            got
                        ));
                    }
                }
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn defaults_and_lists() {
        let c = ok(r##"
[gateway]
data_dir = "/var/lib/junction"
membership = "off"
admins = ["@alice:matrix.test", "alice@xmpp.test", "local/alice", "local/bob!b@host"]

[matrix]
homeserver = "http://127.0.0.1:8008/"
server_name = "matrix.test"
listen = "127.0.0.1:9009"
as_token = "a"
hs_token = "h"
bot = "junction"
id = "gw"
user_prefix = "_gw_"
origin_marks = false
max_ghosts = 7
ghost_idle_timeout_seconds = 0
private_attachment_urls = true

[irc.local]
server = "localhost:6667"
nick = "[junction]"
mode = "relay"
password = "pw"
sasl_account = "acct"
sasl_password = "sasl-${JUNCTION_AS_TOKEN}"
max_puppets = 5
puppet_idle_timeout_seconds = 60
lines_per_second = 1
burst = 3
max_lines = 2

[irc.other]
server = "127.0.0.1:6668"
nick = "j"

[[bridge]]
name = "a"
matrix = ["#a:matrix.test", "!room"]
irc = ["local/#a", "other/#a"]
admins = ["@carol:matrix.test"]
"##);
        assert_eq!(c.gateway.data_dir, PathBuf::from("/var/lib/junction"));
        assert_eq!(c.gateway.membership, Membership::Off);
        assert_eq!(c.gateway.metrics, None);
        assert_eq!(
            c.gateway.admins,
            vec![
                UserRef::new("matrix", "@alice:matrix.test"),
                UserRef::new("xmpp", "alice@xmpp.test"),
                UserRef::new("irc:local", "alice"),
                UserRef::new("irc:local", "bob!b@host"),
            ]
        );
        let ms = c.section::<MatrixSection>().unwrap();
        let m = &ms.config;
        assert_eq!(m.homeserver, "http://127.0.0.1:8008");
        assert_eq!((m.id.as_str(), m.user_prefix.as_str()), ("gw", "_gw_"));
        assert!(!m.origin_marks);
        assert!(ms.private_attachment_urls);
        assert_eq!(
            ms.ghosts,
            junction_core::PuppetLimits {
                max: 7,
                idle_timeout_ms: 0
            }
        );
        // No [xmpp] section: no XMPP instance (an [xmpp] without limits gets the defaults,
        // see `dollar_without_brace_is_literal_and_secrets_do_not_print`).
        assert!(c.section::<XmppSection>().is_none());
        let i = irc(&c)[0];
        assert_eq!(i.mode, IrcMode::Relay);
        assert_eq!(i.password.as_ref().map(|p| p.expose()), Some("pw"));
        let (acct, pw) = i.sasl.as_ref().unwrap();
        assert_eq!((acct.as_str(), pw.expose()), ("acct", "sasl-as-secret"));
        assert_eq!((i.max_puppets, i.burst, i.max_lines), (5, 3, 2));
        assert_eq!(i.puppet_idle_timeout, std::time::Duration::from_secs(60));
        assert_eq!(i.lines_per_second, 1.0);
        let d = junction_irc::config::IrcConfig::new("other", "", "");
        let o = irc(&c)[1];
        assert_eq!(
            (o.max_puppets, o.burst, o.max_lines),
            (d.max_puppets, d.burst, d.max_lines)
        );
        assert_eq!(o.puppet_idle_timeout, d.puppet_idle_timeout);
        assert_eq!(o.mode, IrcMode::Puppet);
        assert_eq!(
            c.bridges[0].rooms,
            vec![
                RoomRef::new("matrix", "#a:matrix.test"),
                RoomRef::new("matrix", "!room"),
                RoomRef::new("irc:local", "#a"),
                RoomRef::new("irc:other", "#a"),
            ]
        );
        let admins = &c.bridge_admins[&junction_core::BridgeName::new("a")];
        assert_eq!(admins, &vec![UserRef::new("matrix", "@carol:matrix.test")]);
    }

    #[test]
    fn limits_have_defaults_and_can_be_set() {
        let d = ok("[gateway]\n").gateway.limits;
        assert_eq!(d, crate::ratelimit::Limits::default());
        assert_eq!(
            (d.rate.per_minute, d.rate.burst, d.caps.max_attachments),
            (60, 40, 4)
        );
        let c = ok("[gateway]\nmax_attachments = 1\nrate_per_minute = 0\nrate_burst = 5\n")
            .gateway
            .limits;
        assert_eq!(
            (c.rate.per_minute, c.rate.burst, c.caps.max_attachments),
            (0, 5, 1)
        );
    }

    #[test]
    fn retention_has_defaults_fractions_and_zero_for_ever() {
        use std::time::Duration;
        let d = ok("[gateway]\n").gateway.retention;
        assert_eq!(d, crate::gateway::Retention::default());
        assert_eq!(d.messages, Some(Duration::from_secs(90 * 86_400)));
        assert_eq!(d.private, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(d.audit, Some(Duration::from_secs(365 * 86_400)));
        assert_eq!(d.outbox_max_age, Some(Duration::from_secs(24 * 3600)));
        assert_eq!(d.outbox_max_depth, Some(10_000));
        let c = ok("[gateway]\nretention_days = 0.5\nprivate_retention_days = 0.25\naudit_days = 0\noutbox_max_age_hours = 2\noutbox_max_depth = 0\n")
            .gateway
            .retention;
        assert_eq!(c.messages, Some(Duration::from_secs(43_200)));
        assert_eq!(c.private, Some(Duration::from_secs(21_600)));
        assert_eq!((c.audit, c.outbox_max_depth), (None, None));
        assert_eq!(c.outbox_max_age, Some(Duration::from_secs(7200)));
    }

    #[test]
    fn web_and_public_url() {
        let c = ok("[gateway]\nweb = \"127.0.0.1:9200\"\n");
        assert_eq!(c.gateway.web, Some("127.0.0.1:9200".parse().unwrap()));
        assert_eq!(
            c.gateway.public_url.as_deref(),
            Some("http://127.0.0.1:9200")
        );
        let c = ok(
            "[gateway]\nweb = \"0.0.0.0:9200\"\npublic_url = \"https://chat.example.org/junction/\"\n",
        );
        assert_eq!(c.gateway.web, Some("0.0.0.0:9200".parse().unwrap()));
        assert_eq!(
            c.gateway.public_url.as_deref(),
            Some("https://chat.example.org/junction")
        );
        let c = ok("");
        assert_eq!((c.gateway.web, c.gateway.public_url), (None, None));

        let long = format!("https://example.org/{}", "a".repeat(200));
        let e = parse(
            &format!(
                "[gateway]\nweb = \"127.0.0.1:9009\"\npublic_url = \"{long}\"\n\n[matrix]\n\
                 homeserver = \"http://127.0.0.1:8008\"\nserver_name = \"matrix.test\"\n\
                 listen = \"127.0.0.1:9009\"\nas_token = \"a\"\nhs_token = \"h\"\nbot = \"junction\"\n"
            ),
            "bridges.toml",
            Path::new(""),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "bridges.toml:2:7: gateway.web: `127.0.0.1:9009` is also `matrix.listen`; each needs its own address\n\
             bridges.toml:3:14: gateway.public_url: 220 bytes long; at most 200 leave room for the text on an IRC line"
        );
    }

    #[test]
    fn tls_is_accepted_and_tls_ca_is_read_relative_to_the_file() {
        let c = ok("[irc.libera]\nserver = \"irc.libera.chat:6697\"\nnick = \"j\"\ntls = true\n");
        assert!(irc(&c)[0].tls);
        assert_eq!(irc(&c)[0].tls_ca, None);
        // A file without a certificate is found before start, with its place in the file.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate\n").unwrap();
        let src = "[irc.x]\nserver = \"h:6697\"\nnick = \"j\"\ntls = true\ntls_ca = \"ca.pem\"\n";
        let e = parse(src, "bridges.toml", dir.path(), &env)
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("bridges.toml:5:10: irc.x.tls_ca: TLS CA file ")
                && e.contains("no PEM certificate"),
            "{e}"
        );
    }

    #[test]
    fn relative_data_dir_follows_the_file_and_gateway_is_optional() {
        let c = ok("");
        assert_eq!(c.gateway.data_dir, PathBuf::from("/etc/junction/data"));
        assert!(c.sections.is_empty() && c.networks().is_empty());
        assert!(c.bridges.is_empty());
    }

    #[test]
    fn dollar_without_brace_is_literal_and_secrets_do_not_print() {
        let c = ok(r#"
[xmpp]
component = "bridge.xmpp.test"
server = "127.0.0.1:5347"
secret = "pa$$word"
"#);
        let xs = c.section::<XmppSection>().unwrap();
        let x = &xs.config;
        assert_eq!(x.secret.expose(), "pa$$word");
        assert!(!format!("{x:?}").contains("pa$$word"));
        assert!(!format!("{c:?}").contains("pa$$word"));
        // Limits not given: the defaults.
        assert_eq!(xs.occupants, junction_core::PuppetLimits::default());
    }

    #[test]
    fn matrix_encryption_is_off_by_default_and_its_key_checked() {
        let matrix = "[matrix]\nhomeserver = \"http://127.0.0.1:8008\"\nserver_name = \"matrix.test\"\n\
                      listen = \"127.0.0.1:9009\"\nas_token = \"a\"\nhs_token = \"h\"\nbot = \"junction\"\n";
        let ms = ok(matrix).section::<MatrixSection>().unwrap().clone();
        assert!(!ms.encryption && ms.pickle_key.is_none());
        let c = ok(&format!(
            "{matrix}encryption = true\npickle_key = \"${{JUNCTION_AS_TOKEN}}-and-more\"\n"
        ));
        let ms = c.section::<MatrixSection>().unwrap();
        assert!(ms.encryption);
        assert_eq!(
            ms.pickle_key.as_ref().map(|k| k.expose()),
            Some("as-secret-and-more")
        );
        assert!(!format!("{ms:?}").contains("as-secret-and-more"));
        let error = |extra: &str| {
            parse(
                &format!("{matrix}{extra}"),
                "bridges.toml",
                Path::new(""),
                &env,
            )
            .unwrap_err()
            .to_string()
        };
        assert_eq!(
            error("pickle_key = \"0123456789abcdef\"\n"),
            "bridges.toml:8:14: matrix.pickle_key: is used only with `encryption = true`"
        );
        let e = error("encryption = true\npickle_key = \"short\"\n");
        assert!(
            e.starts_with("bridges.toml:9:14: matrix.pickle_key: is too short"),
            "{e}"
        );
        // How long an undecryptable message waits: two minutes unless given.
        assert_eq!(ms.undecryptable_after, std::time::Duration::from_secs(120));
        let c = ok(&format!(
            "{matrix}encryption = true\nundecryptable_after = \"90s\"\n"
        ));
        let ms = c.section::<MatrixSection>().unwrap();
        assert_eq!(ms.undecryptable_after, std::time::Duration::from_secs(90));
        let e = error("encryption = true\nundecryptable_after = \"soon\"\n");
        assert!(
            e.starts_with("bridges.toml:9:23: matrix.undecryptable_after: `soon` is not a wait"),
            "{e}"
        );
        assert_eq!(
            error("undecryptable_after = \"2m\"\n"),
            "bridges.toml:8:23: matrix.undecryptable_after: is used only with `encryption = true`"
        );
        // Messages one room sends at once: one unless given, at most eight.
        assert_eq!(ms.parallel_senders, 1);
        let c = ok(&format!("{matrix}parallel_senders = 4\n"));
        assert_eq!(c.section::<MatrixSection>().unwrap().parallel_senders, 4);
        assert_eq!(
            error("parallel_senders = 9\n"),
            "bridges.toml:8:20: matrix.parallel_senders: must be at most 8, got 9"
        );
        assert_eq!(
            error("parallel_senders = 0\n"),
            "bridges.toml:8:20: matrix.parallel_senders: must be at least 1, got 0"
        );
    }

    #[test]
    fn unterminated_variable_and_bad_name() {
        let e = parse(
            "[xmpp]\ncomponent = \"bridge.xmpp.test\"\nserver = \"127.0.0.1:5347\"\nsecret = \"${OOPS\"\n[gateway]\ndata_dir = \"${1X}\"\n",
            "f.toml",
            Path::new(""),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "f.toml:4:10: xmpp.secret: unterminated `${` (write `${NAME}`)\n\
             f.toml:6:13: gateway.data_dir: `${1X}` is not a variable name (letters, digits and _)"
        );
    }

    #[test]
    fn store_is_sled_by_default_or_postgres_with_the_password_kept_secret() {
        let xmpp = "[xmpp]\ncomponent = \"bridge.xmpp.test\"\nserver = \"127.0.0.1:5347\"\nsecret = \"s\"\n";
        let c = parse(xmpp, "f.toml", Path::new(""), &env).unwrap();
        assert_eq!(c.gateway.store, StoreLocation::Sled);
        let src = format!(
            "{xmpp}[gateway]\nstore = \"postgres://junction:${{PGPASS}}@127.0.0.1:5439/junction\"\n"
        );
        let c = parse(&src, "f.toml", Path::new(""), &env).unwrap();
        let StoreLocation::Postgres(url) = &c.gateway.store else {
            panic!("expected PostgreSQL, got {:?}", c.gateway.store)
        };
        assert_eq!(
            url.expose(),
            "postgres://junction:pg-secret@127.0.0.1:5439/junction"
        );
        assert!(!format!("{c:?}").contains("pg-secret"));
        let src = format!("{xmpp}[gateway]\nstore = \"sled\"\n");
        let c = parse(&src, "f.toml", Path::new(""), &env).unwrap();
        assert_eq!(c.gateway.store, StoreLocation::Sled);
    }

    #[test]
    fn a_store_that_is_neither_sled_nor_postgres_is_named_without_its_password() {
        let src = "[gateway]\nstore = \"mysql://u:${PGPASS}@h/db\"\n";
        let e = parse(src, "f.toml", Path::new(""), &env)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.toml:2:9: gateway.store: expected `sled` or `postgres://"),
            "{e}"
        );
        assert!(!e.contains("pg-secret"), "{e}");
        let e = parse(
            "[gateway]\nstore = \"postgres://u:${NOPE}@h/db\"\n",
            "f.toml",
            Path::new(""),
            &env,
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("f.toml:2:"), "{e}");
        assert!(e.contains("gateway.store"), "{e}");
    }

    #[test]
    fn unreadable_file_is_one_error() {
        let e = load_with_env(Path::new("/nonexistent/bridges.toml"), &env).unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert!(e
            .to_string()
            .starts_with("/nonexistent/bridges.toml: file: could not read it"));
    }

    #[test]
    fn key_paths_nest_by_segment() {
        assert!(under("bridge[0].irc", "bridge[0]"));
        assert!(under("bridge[0]", "bridge[0]"));
        assert!(under("bridge[0].irc[1]", "bridge[0].irc"));
        assert!(!under("bridge[0].irc_x", "bridge[0].irc"));
        assert!(!under("bridge[10]", "bridge[1]"));
    }

    #[test]
    fn line_col_counts_characters() {
        assert_eq!(line_col("a\nbc", 0), (1, 1));
        assert_eq!(line_col("a\nbc", 3), (2, 2));
        assert_eq!(line_col("é = 1", 3), (1, 3));
        assert_eq!(line_col("x", 99), (1, 2));
    }
}
