//! `junction doctor`: connects to every configured server and checks what the gateway
//! needs there, one finding per check (ok, warning or error), each problem with its fix.
//!
//! It may run beside a running gateway and leaves it alone: every connection is its own and
//! short-lived. On IRC it registers under a nick of its own (the bot's nick is only looked
//! up); on XMPP it does not log in as the component while a gateway holds the config's
//! store (a server may be set to replace the older connection), and a gateway elsewhere
//! keeps its connection as the server refuses the doctor's (reported); on Matrix it only
//! reads, and answers the homeserver's ping itself for a moment when nothing listens on
//! `[matrix] listen`. No secret is printed.

mod irc;
mod matrix;
mod xmpp;

use crate::config::Config;
use std::fmt::Write as _;
use std::time::Duration;

/// How long one network operation may take before the doctor calls it unanswered.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(15);

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
    fn word(self) -> &'static str {
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
    /// Which check this is (`homeserver`, `as_token`, `ping`, `power`, `component`, `room`,
    /// `archive`, `affiliation`, `server`, `tls`, `nick`, `op`, `history`).
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
}

/// Collects findings for one network.
pub(crate) struct Findings<'a> {
    report: &'a mut Report,
    network: String,
}

impl Findings<'_> {
    pub(crate) fn ok(&mut self, check: &'static str, text: impl Into<String>) {
        self.push(Level::Ok, check, text.into(), None);
    }

    pub(crate) fn warn(
        &mut self,
        check: &'static str,
        text: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.push(Level::Warning, check, text.into(), Some(fix.into()));
    }

    pub(crate) fn error(
        &mut self,
        check: &'static str,
        text: impl Into<String>,
        fix: impl Into<String>,
    ) {
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

impl Report {
    pub(crate) fn network(&mut self, network: impl Into<String>) -> Findings<'_> {
        Findings {
            report: self,
            network: network.into(),
        }
    }
}

/// The rooms of `network` (`matrix`, `xmpp`, `irc:local`) named by the config's bridges, each
/// once, in bridge order.
pub(crate) fn linked_rooms(config: &Config, network: &str) -> Vec<String> {
    let mut rooms: Vec<String> = Vec::new();
    for room in config.bridges.iter().flat_map(|l| &l.rooms) {
        if room.network.as_str() == network && !rooms.iter().any(|r| r == room.room.as_str()) {
            rooms.push(room.room.as_str().to_owned());
        }
    }
    rooms
}

/// True when a gateway runs from the config's `data_dir` on this host: it holds the store's
/// lock.
async fn gateway_holds_store(config: &Config) -> bool {
    if !config.gateway.data_dir.join("store").exists() {
        return false;
    }
    let config = config.clone();
    tokio::task::spawn_blocking(move || {
        matches!(crate::cli::stored_links(&config), Err(note) if note.contains("running gateway"))
    })
    .await
    .unwrap_or(false)
}

/// Runs every check of every configured network.
pub async fn doctor(config: &Config) -> Report {
    let mut report = Report::default();
    if let Some(m) = &config.matrix {
        matrix::check(
            m,
            &linked_rooms(config, "matrix"),
            &mut report.network("matrix"),
        )
        .await;
    }
    if let Some(x) = &config.xmpp {
        let held = gateway_holds_store(config).await;
        let mut out = report.network("xmpp");
        if held {
            // A second component login is refused by default, but a server set to replace
            // the old connection (Prosody's component_conflict_resolve = "kick_old") would
            // drop the gateway's: do not try.
            out.warn(
                "component",
                "not checked: a gateway runs from this config's data_dir (it holds the store), \
                 and a second component login could displace its connection",
                "run `junction doctor` while the gateway is stopped to check the component and \
                 its rooms",
            );
        } else {
            xmpp::check(x, &linked_rooms(config, "xmpp"), &mut out).await;
        }
    }
    for i in &config.irc {
        let network = format!("irc:{}", i.name);
        let rooms = linked_rooms(config, &network);
        irc::check(i, &rooms, &mut report.network(network)).await;
    }
    report
}

/// The exit status when any check (or the doctor itself) found an error.
pub const EXIT_ERRORS: u8 = 2;

/// `junction doctor`: runs the checks on `runtime`, prints one line per check, returns the
/// exit status.
pub fn main(runtime: &tokio::runtime::Runtime, config: &Config, file: &std::path::Path) -> u8 {
    println!(
        "{}: config OK; checking the servers (short-lived connections of the doctor's own; \
         a running gateway is left alone)",
        file.display()
    );
    let report = runtime.block_on(doctor(config));
    print!("{}", report.render());
    report.exit_code()
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
