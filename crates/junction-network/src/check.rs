//! Checking values of `bridges.toml`, shared by the gateway's own sections and every
//! network's: each check reports what is wrong at the value's place in the file and goes on,
//! so that one run finds every problem.

use junction_core::{PuppetLimits, Secret};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

/// A string value with its place in the file.
pub type Str = Spanned<String>;

/// A problem before it is placed in a file.
#[derive(Clone, Debug)]
pub struct Diag {
    /// Where, as a byte range of the source.
    pub span: Range<usize>,
    /// Dotted key path, e.g. `irc.local.nick` or `bridge[0].xmpp`.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// Keys whose absence causes this error: it is dropped when one of them (or the table
    /// holding it) was removed after a type error, since that error already covers it.
    pub unless_removed: Vec<String>,
}

/// Collects the problems of one config file while its values are checked.
pub struct Checker<'a> {
    src: &'a str,
    base: &'a Path,
    env: &'a dyn Fn(&str) -> Option<String>,
    diags: Vec<Diag>,
    listeners: Vec<(SocketAddr, String)>,
}

impl<'a> Checker<'a> {
    /// A checker of the file `src`, whose relative paths are relative to `base`, expanding
    /// `${VAR}` with `env`.
    pub fn new(src: &'a str, base: &'a Path, env: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            src,
            base,
            env,
            diags: Vec::new(),
            listeners: Vec::new(),
        }
    }

    /// The file's text.
    pub fn src(&self) -> &'a str {
        self.src
    }

    /// The directory relative paths in the file are relative to.
    pub fn base(&self) -> &'a Path {
        self.base
    }

    /// The problems found so far, in the order they were found.
    pub fn diags(&self) -> &[Diag] {
        &self.diags
    }

    /// Every problem found.
    pub fn into_diags(self) -> Vec<Diag> {
        self.diags
    }

    /// Records a problem.
    pub fn push(&mut self, diag: Diag) {
        self.diags.push(diag);
    }

    /// Records a problem with the value at `span`.
    pub fn error(&mut self, span: Range<usize>, key: &str, message: impl Into<String>) {
        self.push(Diag {
            span,
            key: key.to_owned(),
            message: message.into(),
            unless_removed: Vec::new(),
        });
    }

    /// Notes that `key` (e.g. `matrix.listen`) listens on `addr`, so that the gateway's own
    /// listeners are kept off it ([`Checker::listeners`]).
    pub fn listen(&mut self, addr: SocketAddr, key: &str) {
        self.listeners.push((addr, key.to_owned()));
    }

    /// The addresses networks listen on, with the key that says so.
    pub fn listeners(&self) -> &[(SocketAddr, String)] {
        &self.listeners
    }

    /// Reports the absence of `key` from the table `table_key` whose place is `table`.
    pub fn missing(&mut self, table: Range<usize>, table_key: &str, key: &str) {
        let path = format!("{table_key}.{key}");
        self.push(Diag {
            span: table.start..table.start,
            key: path.clone(),
            message: format!("missing required key `{key}`"),
            unless_removed: vec![path],
        });
    }

    /// A required value: reports its absence at the table.
    pub fn required<'v>(
        &mut self,
        v: &'v Option<Str>,
        table: Range<usize>,
        table_key: &str,
        key: &str,
    ) -> Option<&'v Str> {
        if v.is_none() {
            self.missing(table, table_key, key);
        }
        v.as_ref()
    }

    /// Expands `${VAR}` in a string value. Every unset variable is an error at its `$`.
    pub fn expand(&mut self, v: &Str, key: &str) -> Option<String> {
        let s = v.get_ref();
        let span = v.span();
        // Where the value's text starts in the file, to point inside it; escapes in the
        // string may shift this, in which case the value's own start is used.
        let written = self.src.get(span.clone()).unwrap_or("");
        let mut out = String::with_capacity(s.len());
        let mut ok = true;
        let mut rest = s.as_str();
        let mut search_from = 0;
        while let Some(i) = rest.find("${") {
            out.push_str(&rest[..i]);
            let after = &rest[i + 2..];
            let Some(end) = after.find('}') else {
                self.error(span.clone(), key, "unterminated `${` (write `${NAME}`)");
                return None;
            };
            let name = &after[..end];
            let pattern = format!("${{{name}}}");
            let at = match written.get(search_from..).and_then(|w| w.find(&pattern)) {
                Some(j) => {
                    search_from += j + pattern.len();
                    let p = span.start + search_from - pattern.len();
                    p..p + pattern.len()
                }
                None => span.clone(),
            };
            let valid_name = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                self.error(
                    at,
                    key,
                    format!("`${{{name}}}` is not a variable name (letters, digits and _)"),
                );
                ok = false;
            } else {
                match (self.env)(name) {
                    Some(value) => out.push_str(&value),
                    None => {
                        self.error(at, key, format!("environment variable `{name}` is not set"));
                        ok = false;
                    }
                }
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        ok.then_some(out)
    }

    /// An expanded, non-empty string.
    pub fn nonempty(&mut self, v: &Str, key: &str) -> Option<String> {
        let s = self.expand(v, key)?;
        if s.trim().is_empty() {
            self.error(v.span(), key, "must not be empty");
            return None;
        }
        Some(s)
    }

    /// An expanded, non-empty secret without line breaks.
    pub fn secret(&mut self, v: &Str, key: &str) -> Option<Secret> {
        let s = self.nonempty(v, key)?;
        if s.chars().any(char::is_control) {
            self.error(v.span(), key, "must not contain control characters");
            return None;
        }
        Some(Secret::new(s))
    }

    /// An `ip:port` socket address.
    pub fn socket_addr(&mut self, v: &Str, key: &str) -> Option<SocketAddr> {
        let s = self.nonempty(v, key)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.error(
                    v.span(),
                    key,
                    format!("`{s}` is not a socket address like `127.0.0.1:9009`"),
                );
                None
            }
        }
    }

    /// `host:port` where host may be a name.
    pub fn host_port(&mut self, v: &Str, key: &str) -> Option<String> {
        let s = self.nonempty(v, key)?;
        if s.parse::<SocketAddr>().is_ok() {
            return Some(s);
        }
        let good = match s.rsplit_once(':') {
            Some((host, port)) => {
                !host.is_empty()
                    && host
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
                    && port.parse::<u16>().is_ok_and(|p| p > 0)
            }
            None => false,
        };
        if good {
            Some(s)
        } else {
            self.error(
                v.span(),
                key,
                format!("`{s}` is not an address like `host:port` (port 1-65535)"),
            );
            None
        }
    }

    /// An http(s) URL with a host, without a trailing slash; `example` shows one in the error.
    pub fn http_url(&mut self, v: &Str, key: &str, example: &str) -> Option<String> {
        let s = self.nonempty(v, key)?;
        match url::Url::parse(&s) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => {
                Some(s.trim_end_matches('/').to_owned())
            }
            _ => {
                self.error(
                    v.span(),
                    key,
                    format!("`{s}` is not an http(s) URL like `{example}`"),
                );
                None
            }
        }
    }

    /// A whole number of at least `min`, `default` when absent.
    pub fn count(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        default: i64,
    ) -> Option<i64> {
        let Some(v) = v else { return Some(default) };
        let n = *v.get_ref();
        if n < min {
            self.error(v.span(), key, format!("must be at least {min}, got {n}"));
            return None;
        }
        Some(n)
    }

    /// [`Checker::count`], then that it fits in `T`.
    pub fn count_as<T: TryFrom<i64>>(
        &mut self,
        v: &Option<Spanned<i64>>,
        key: &str,
        min: i64,
        default: i64,
    ) -> Option<T> {
        let n = self.count(v, key, min, default)?;
        match T::try_from(n) {
            Ok(x) => Some(x),
            Err(_) => {
                if let Some(v) = v {
                    self.error(v.span(), key, format!("{n} is too large"));
                }
                None
            }
        }
    }

    /// A cap of puppets in rooms and their idle timeout in seconds (0: never), defaults from
    /// [`PuppetLimits`].
    pub fn puppet_limits(
        &mut self,
        max: &Option<Spanned<i64>>,
        max_key: &str,
        idle: &Option<Spanned<i64>>,
        idle_key: &str,
    ) -> Option<PuppetLimits> {
        let d = PuppetLimits::default();
        let max = self.count(max, max_key, 0, i64::try_from(d.max).unwrap_or(i64::MAX));
        let idle_default = i64::try_from(d.idle_timeout_ms / 1000).unwrap_or(i64::MAX);
        let idle = self.count(idle, idle_key, 0, idle_default);
        Some(PuppetLimits {
            max: usize::try_from(max?).ok()?,
            idle_timeout_ms: u64::try_from(idle?).ok()?.saturating_mul(1000),
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn value(src: &str, at: &str) -> Str {
        let start = src.find(at).unwrap();
        Spanned::new(start..start + at.len(), at.trim_matches('"').to_owned())
    }

    #[test]
    fn variables_expand_and_errors_point_at_them() {
        let src = r#"x = "a${HOME_X}b${NOPE}""#;
        let env = |n: &str| (n == "HOME_X").then(|| "h".to_owned());
        let mut c = Checker::new(src, Path::new(""), &env);
        let v = value(src, r#""a${HOME_X}b${NOPE}""#);
        assert_eq!(c.expand(&v, "x"), None);
        let d = &c.diags()[0];
        assert_eq!(&src[d.span.clone()], "${NOPE}");
        assert_eq!(d.message, "environment variable `NOPE` is not set");
        let ok = value(src, r#""a${HOME_X}b"#);
        let mut c = Checker::new(src, Path::new(""), &env);
        assert_eq!(c.expand(&ok, "x").as_deref(), Some("ahb"));
    }

    #[test]
    fn addresses_counts_and_listeners() {
        let env = |_: &str| None;
        let src = "";
        let mut c = Checker::new(src, Path::new(""), &env);
        let s = |t: &str| Spanned::new(0..0, t.to_owned());
        assert_eq!(
            c.host_port(&s("irc.example:6697"), "k").as_deref(),
            Some("irc.example:6697")
        );
        assert_eq!(c.host_port(&s("irc.example:0"), "k"), None);
        assert!(c.socket_addr(&s("localhost:1"), "k").is_none());
        assert_eq!(c.count(&None, "k", 1, 7), Some(7));
        assert_eq!(
            c.count_as::<u8>(&Some(Spanned::new(0..0, 300)), "k", 0, 0),
            None
        );
        c.listen("127.0.0.1:9".parse().unwrap(), "x.listen");
        assert_eq!(c.listeners()[0].1, "x.listen");
        assert_eq!(c.diags().len(), 3);
    }
}
