//! The vocabulary of `junction doctor`: findings (ok, warning or error, each problem with its
//! fix) collected into a [`Report`] whose worst level is the exit status (0/1/2).
//!
//! Each network's checks (in its adapter crate) add findings through a [`Findings`] for that
//! network; the binary runs them and prints the report. Nothing here connects or prints.

use std::fmt::Write as _;
use std::time::Duration;

/// How long one network operation may take before the doctor calls it unanswered.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// The exit status when any check (or the doctor itself) found an error.
pub const EXIT_ERRORS: u8 = 2;

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// The check passed.
    Ok,
    /// The gateway runs, but something it does is lost or weaker.
    Warning,
    /// The gateway can not do its job on that network.
    Error,
}

impl Level {
    /// The level as the report prints it: `ok`, `warning`, `error`.
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Error => "error",
        }
    }
}

/// One check's outcome.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// How bad it is.
    pub level: Level,
    /// The network it is about (`matrix`, `xmpp`, `irc:local`).
    pub network: String,
    /// Which check this is (`homeserver`, `as_token`, `namespace`, `ping`, `power`,
    /// `component`, `room`, `archive`, `affiliation`, `server`, `tls`, `sasl`, `nick`, `op`,
    /// `history`).
    pub check: &'static str,
    /// What was found, in words.
    pub text: String,
    /// What to do about it (for warnings and errors).
    pub fix: Option<String>,
}

/// Every finding of one doctor run, in the order checked.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The findings.
    pub findings: Vec<Finding>,
}

impl Report {
    /// 0 when every check passed, 1 when there are warnings only, 2 when any check failed.
    pub fn exit_code(&self) -> u8 {
        match self.findings.iter().map(|f| f.level).max() {
            Some(Level::Error) => EXIT_ERRORS,
            Some(Level::Warning) => 1,
            _ => 0,
        }
    }

    /// The findings of `check` on `network`.
    pub fn of<'a>(&'a self, network: &'a str, check: &'a str) -> impl Iterator<Item = &'a Finding> {
        self.findings
            .iter()
            .filter(move |f| f.network == network && f.check == check)
    }

    /// One line per finding: `error   irc:local server: ... Fix: ...`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let _ = write!(
                out,
                "{:<7} {} {}: {}",
                f.level.word(),
                f.network,
                f.check,
                f.text
            );
            if let Some(fix) = &f.fix {
                let _ = write!(out, " Fix: {fix}");
            }
            out.push('\n');
        }
        let (w, e) = (
            self.findings
                .iter()
                .filter(|f| f.level == Level::Warning)
                .count(),
            self.findings
                .iter()
                .filter(|f| f.level == Level::Error)
                .count(),
        );
        let _ = writeln!(
            out,
            "{} checks: {e} errors, {w} warnings",
            self.findings.len()
        );
        out
    }

    /// Collects the findings of one network (`matrix`, `xmpp`, `irc:local`) into this report.
    pub fn network(&mut self, network: impl Into<String>) -> Findings<'_> {
        Findings {
            report: self,
            network: network.into(),
        }
    }
}

/// Collects findings for one network, appending them to a [`Report`] in the order added.
pub struct Findings<'a> {
    report: &'a mut Report,
    network: String,
}

impl Findings<'_> {
    /// The check passed.
    pub fn ok(&mut self, check: &'static str, text: impl Into<String>) {
        self.push(Level::Ok, check, text.into(), None);
    }

    /// The gateway runs, but something is lost or weaker; `fix` says what to do.
    pub fn warn(&mut self, check: &'static str, text: impl Into<String>, fix: impl Into<String>) {
        self.push(Level::Warning, check, text.into(), Some(fix.into()));
    }

    /// The gateway can not do its job on this network; `fix` says what to do.
    pub fn error(&mut self, check: &'static str, text: impl Into<String>, fix: impl Into<String>) {
        self.push(Level::Error, check, text.into(), Some(fix.into()));
    }

    fn push(&mut self, level: Level, check: &'static str, text: String, fix: Option<String>) {
        self.report.findings.push(Finding {
            level,
            network: self.network.clone(),
            check,
            text,
            fix,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(level: Level) -> Finding {
        Finding {
            level,
            network: "irc:local".into(),
            check: "nick",
            text: "taken".into(),
            fix: Some("pick another".into()),
        }
    }

    #[test]
    fn exit_codes_follow_the_worst_finding() {
        let mut r = Report::default();
        assert_eq!(r.exit_code(), 0);
        r.findings.push(finding(Level::Ok));
        assert_eq!(r.exit_code(), 0);
        r.findings.push(finding(Level::Warning));
        assert_eq!(r.exit_code(), 1);
        r.findings.push(finding(Level::Error));
        assert_eq!(r.exit_code(), 2);
        let text = r.render();
        assert!(
            text.contains("warning irc:local nick: taken Fix: pick another\n"),
            "{text}"
        );
        assert!(text.ends_with("3 checks: 1 errors, 1 warnings\n"), "{text}");
    }
}
