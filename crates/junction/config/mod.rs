//! Loading `bridges.toml`, in two stages: [`raw`] mirrors the file (unknown keys and wrong
//! types are errors, every value keeps its span), [`validate`] turns it into a [`Config`]
//! (required keys, syntax of rooms and addresses, `${VAR}` expansion, cross-references).
//!
//! Every error is collected and reported at once, one per line, as
//! `bridges.toml:LINE:COL: key.path: message`.

pub mod raw;
pub mod validate;

pub use validate::{Config, GatewayConfig, Membership};

use std::fmt;
use std::ops::Range;
use std::path::Path;

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
            let (config, more) = validate::validate(&raw, src, base, env);
            // A key removed after a type error must not be reported again as missing.
            diags.extend(more.into_iter().filter(|d| {
                !(d.table_level
                    && blanked
                        .iter()
                        .any(|b| b.starts_with(&d.key) || d.key.starts_with(b.as_str())))
            }));
            config
        }
        None => None,
    };
    match config {
        Some(c) if diags.is_empty() => Ok(c),
        _ => {
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

/// A problem before it is placed in a file.
#[derive(Clone, Debug)]
pub(crate) struct Diag {
    /// Where, as a byte range of the source.
    pub span: Range<usize>,
    /// Dotted key path.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// True for "the table lacks something" errors, which a removed key can cause.
    pub table_level: bool,
}

/// Most serde-level errors collected before giving up on the rest.
const MAX_SHAPE_ERRORS: usize = 100;

/// Deserialises the raw config, collecting every unknown key and wrongly typed value.
///
/// serde stops at the first error, so after each one the offending key (with its value, or the
/// offending table) is overwritten with spaces and parsing starts again. Blanking keeps every
/// byte offset, so later errors still point at the right place in the original text.
fn parse_raw(src: &str) -> (Option<raw::RawConfig>, Vec<Diag>) {
    let mut diags = Vec::new();
    let doc = match toml_edit::ImDocument::parse(src) {
        Ok(doc) => doc,
        Err(e) => {
            diags.push(Diag {
                span: e.span().unwrap_or(0..0),
                key: "toml".into(),
                message: one_line(e.message()),
                table_level: false,
            });
            return (None, diags);
        }
    };
    let mut entries = Vec::new();
    walk_table(doc.as_table(), "", &mut entries);
    let mut text = src.to_owned();
    for _ in 0..MAX_SHAPE_ERRORS {
        let err = match toml::from_str::<raw::RawConfig>(&text) {
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
            key: entry.map(|e| e.path.clone()).unwrap_or_else(|| "toml".into()),
            message: one_line(err.message()),
            table_level: false,
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
    whole: Range<usize>,
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
    s.trim().lines().map(str::trim).collect::<Vec<_>>().join("; ")
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
