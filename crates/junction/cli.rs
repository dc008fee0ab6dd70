//! The `junction` command line: `run` (the default), `check`, `registration`, `doctor`,
//! `status` and `store export` / `store import`.

use crate::config::{self, Config};
use crate::wiring::NETWORKS;
use clap::{Parser, Subcommand};
use junction_core::Link;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status when the config file is invalid or the gateway failed.
pub const EXIT_FAILURE: u8 = 1;
/// Exit status for a command-line usage error (clap's own).
pub const EXIT_USAGE: u8 = 2;

const EXIT_HELP: &str = "\
Exit status:
  0  success
  1  invalid configuration (every error is printed as FILE:LINE:COL: key: message),
     or the gateway failed
  2  usage error
junction doctor: 0 all checks passed, 1 warnings only, 2 an error (or an invalid config)
junction status: 0 every network connected, 1 some not (or the store failing),
  2 the gateway could not be asked (or an invalid config)";

/// Links chat rooms across Matrix, XMPP and IRC, showing every person as themself.
#[derive(Debug, Parser)]
#[command(name = "junction", version, after_help = EXIT_HELP)]
pub struct Cli {
    /// What to do (default: run).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The config file.
    #[arg(
        short,
        long,
        global = true,
        default_value = "bridges.toml",
        value_name = "FILE"
    )]
    pub config: PathBuf,
}

/// The subcommands.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum Command {
    /// Run the gateway until SIGINT or SIGTERM (the default).
    Run,
    /// Validate the config file and print the resolved links.
    Check,
    /// Print what the configured networks need registered on their servers: the Matrix
    /// appservice registration YAML for the homeserver.
    Registration,
    /// Connect to every configured server and check what the gateway needs there; one line
    /// per check with the fix of each problem. Safe beside a running gateway.
    Doctor,
    /// Ask the running gateway (its `[gateway] metrics` listener: /health and /metrics) and
    /// print each network's state, rooms, puppets, outbox depth and last error.
    Status,
    /// Move the store the config names: `export` writes it as a portable dump (JSON lines),
    /// `import` reads one into an empty store (sled or PostgreSQL; stop the gateway first);
    /// `compact` rewrites a sled store with its live rows only.
    Store {
        /// export, import or compact.
        #[command(subcommand)]
        action: StoreAction,
    },
}

/// `junction store ...`.
#[derive(Clone, Debug, PartialEq, Eq, Subcommand)]
pub enum StoreAction {
    /// Write every row of the store, one JSON object a line, to FILE (default: standard
    /// output).
    Export {
        /// Where to write the dump.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Read a dump from FILE (default: standard input) into the store, which must be empty.
    Import {
        /// The dump to read.
        #[arg(value_name = "FILE")]
        input: Option<PathBuf>,
    },
    /// Rewrite the sled store into a fresh database holding only its live rows (stop the
    /// gateway first): sled keeps removed rows and old page images on disk.
    Compact,
}

/// Parses the command line and runs the command. Usage errors exit with status 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            // For the doctor and status an invalid config is an error like any other
            // (status 2).
            return ExitCode::from(
                if matches!(cli.command, Some(Command::Doctor | Command::Status)) {
                    2
                } else {
                    EXIT_FAILURE
                },
            );
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::Run => run(config),
        Command::Check => {
            println!("{}: OK", cli.config.display());
            match stored_links(&config) {
                Ok(extra) => print_links(&config, &extra),
                Err(note) => {
                    print_links(&config, &[]);
                    println!("{note}");
                }
            }
            ExitCode::SUCCESS
        }
        Command::Doctor => match runtime() {
            Some(rt) => ExitCode::from(crate::doctor::main(&rt, &config, &cli.config)),
            None => ExitCode::from(crate::doctor::EXIT_ERRORS),
        },
        Command::Status => match runtime() {
            Some(rt) => ExitCode::from(crate::status::main(&rt, &config)),
            None => ExitCode::from(crate::status::EXIT_UNREACHABLE),
        },
        Command::Store { action } => match move_store(&config, &action) {
            Ok(said) => {
                eprintln!("junction: {said}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("{}: {why}", cli.config.display());
                ExitCode::from(EXIT_FAILURE)
            }
        },
        Command::Registration => match registrations(&config) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(why) => {
                eprintln!("{}: {why}", cli.config.display());
                ExitCode::from(EXIT_FAILURE)
            }
        },
    }
}

/// Opens the store `config` names for `store export` (`create`: false; a sled store must be
/// there) or `store import`.
fn open_store_here(
    config: &Config,
    create: bool,
) -> Result<Box<dyn junction_store::Store>, String> {
    if let config::StoreLocation::Postgres(url) = &config.gateway.store {
        return junction_store::PgStore::open(url.expose())
            .map(|s| Box::new(s) as Box<dyn junction_store::Store>)
            .map_err(|e| format!("the PostgreSQL store: {e}"));
    }
    let path = config.gateway.data_dir.join("store");
    if !create && !path.exists() {
        return Err(format!("there is no store at {}", path.display()));
    }
    std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    match junction_store::SledStore::open(&path) {
        Ok(s) => Ok(Box::new(s)),
        Err(e) if e.to_string().contains("lock") => Err(format!(
            "the store at {} is in use by a running gateway; stop it first",
            path.display()
        )),
        Err(e) => Err(format!("the store at {}: {e}", path.display())),
    }
}

/// `junction store export|import|compact`: what was done, or why not.
fn move_store(config: &Config, action: &StoreAction) -> Result<String, String> {
    use std::io::{BufRead as _, Write as _};
    match action {
        StoreAction::Compact => {
            if let config::StoreLocation::Postgres(_) = &config.gateway.store {
                return Err(
                    "compact is for a sled store; PostgreSQL reclaims space itself (VACUUM)".into(),
                );
            }
            let path = config.gateway.data_dir.join("store");
            if !path.exists() {
                return Err(format!("there is no store at {}", path.display()));
            }
            let c = junction_store::SledStore::compact(&path).map_err(|e| {
                if e.to_string().contains("lock") {
                    format!(
                        "the store at {} is in use by a running gateway; stop it first",
                        path.display()
                    )
                } else {
                    format!("compacting {}: {e}", path.display())
                }
            })?;
            Ok(format!(
                "compacted {}: {:.1} MB, was {:.1} MB",
                path.display(),
                c.after as f64 / 1e6,
                c.before as f64 / 1e6
            ))
        }
        StoreAction::Export { output } => {
            let store = open_store_here(config, false)?;
            let mut out: Box<dyn std::io::Write> = match output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p).map_err(|e| format!("{}: {e}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            };
            let mut n = 0u64;
            store
                .export(&mut |row| {
                    let line = serde_json::to_string(&row)
                        .map_err(|e| junction_store::StoreError::Codec(e.to_string()))?;
                    writeln!(out, "{line}")
                        .map_err(|e| junction_store::StoreError::Backend(e.to_string()))?;
                    n += 1;
                    Ok(())
                })
                .map_err(|e| format!("exporting: {e}"))?;
            out.flush().map_err(|e| format!("writing the dump: {e}"))?;
            Ok(format!("exported {n} rows"))
        }
        StoreAction::Import { input } => {
            let store = open_store_here(config, true)?;
            if !junction_store::is_empty(store.as_ref()).map_err(|e| e.to_string())? {
                return Err("the store is not empty: import into an empty one".into());
            }
            let reader: Box<dyn std::io::BufRead> = match input {
                Some(p) => Box::new(std::io::BufReader::new(
                    std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))?,
                )),
                None => Box::new(std::io::stdin().lock()),
            };
            let mut n = 0u64;
            for (i, line) in reader.lines().enumerate() {
                let line = line.map_err(|e| format!("reading the dump: {e}"))?;
                if line.trim().is_empty() {
                    continue;
                }
                let row: junction_store::Row =
                    serde_json::from_str(&line).map_err(|e| format!("dump line {}: {e}", i + 1))?;
                store
                    .import(row)
                    .map_err(|e| format!("dump line {}: {e}", i + 1))?;
                n += 1;
            }
            store
                .flush()
                .map_err(|e| format!("flushing the store: {e}"))?;
            Ok(format!("imported {n} rows"))
        }
    }
}

/// What `registration` prints: each configured instance's registration
/// ([`junction_network::Network::registration`]), or why there is none.
fn registrations(config: &Config) -> Result<String, String> {
    let printed: String = config
        .sections
        .iter()
        .filter_map(|s| s.kind.registration(&s.section, &config.bridges))
        .collect();
    if !printed.is_empty() {
        return Ok(printed);
    }
    let keys: Vec<&str> = NETWORKS
        .iter()
        .filter(|n| n.registers())
        .map(|n| n.key())
        .collect();
    if keys.is_empty() {
        return Err("no network needs a registration".into());
    }
    let sections: Vec<String> = keys.iter().map(|k| format!("[{k}]")).collect();
    Err(format!(
        "{}: there is no {} section, so no registration",
        keys.join(", "),
        sections.join(" or ")
    ))
}

fn run(config: Config) -> ExitCode {
    init_tracing(config.gateway.log.as_deref());
    let Some(runtime) = runtime() else {
        return ExitCode::from(EXIT_FAILURE);
    };
    match runtime.block_on(crate::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "The gateway failed.");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// The multi-threaded runtime `run` and `doctor` work on; None (said on stderr) when it can
/// not start.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("junction: could not start the runtime: {e}");
            None
        }
    }
}

/// Logs to stderr, filtered by `JUNCTION_LOG`, else `RUST_LOG`, else the file's `log`, else
/// `info`; coloured only when stderr is a terminal.
fn init_tracing(from_file: Option<&str>) {
    let directives = ["JUNCTION_LOG", "RUST_LOG"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.trim().is_empty()))
        .or_else(|| from_file.map(str::to_owned))
        .unwrap_or_else(|| "info".to_owned());
    let filter = tracing_subscriber::EnvFilter::try_new(&directives).unwrap_or_else(|e| {
        eprintln!("junction: ignoring the log filter `{directives}`: {e}");
        tracing_subscriber::EnvFilter::new("info")
    });
    // Colours only on a terminal: a journal or a log file gets plain lines.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

/// The runtime links kept in the store (sled's at `<data_dir>/store` when there is one, or
/// PostgreSQL's). A store held by a running gateway (sled's lock) or one that does not open
/// gives the line to print instead.
pub fn stored_links(config: &Config) -> Result<Vec<Link>, String> {
    use junction_store::Store as _;
    if let crate::config::StoreLocation::Postgres(url) = &config.gateway.store {
        return junction_store::PgStore::open(url.expose())
            .and_then(|s| s.links())
            .map_err(|e| format!("runtime links: not shown, the PostgreSQL store: {e}"));
    }
    let path = config.gateway.data_dir.join("store");
    if !path.exists() {
        return Ok(Vec::new());
    }
    match junction_store::SledStore::open(&path) {
        Ok(store) => store.links().map_err(|e| {
            format!(
                "runtime links: not shown, the store at {} could not be read: {e}",
                path.display()
            )
        }),
        Err(e) => {
            let text = e.to_string();
            if text.contains("lock") || text.contains("WouldBlock") {
                Err(format!(
                    "runtime links: not shown, the store at {} is in use by a running gateway \
                     (ask it with the `bridges` admin command)",
                    path.display()
                ))
            } else {
                Err(format!(
                    "runtime links: not shown, the store at {} could not be opened: {text}",
                    path.display()
                ))
            }
        }
    }
}

/// Prints what [`render_links`] renders to stdout.
pub fn print_links(config: &Config, extra: &[Link]) {
    print!("{}", render_links(config, extra));
}

/// Renders every bridge of the config with its rooms, one room a line, then `extra` (links
/// made at runtime and kept in the store, which replace config bridges of the same name at
/// start) the same way; a stored link without rooms is a closed bridge.
pub fn render_links(config: &Config, extra: &[Link]) -> String {
    let mut out = String::new();
    let write = |out: &mut String, title: &str, links: &[Link]| {
        if links.is_empty() {
            return;
        }
        let _ = writeln!(out, "{title}:");
        let width = links
            .iter()
            .flat_map(|l| &l.rooms)
            .map(|r| r.network.as_str().len())
            .max()
            .unwrap_or(0);
        for link in links {
            let _ = writeln!(out, "  {}", link.bridge);
            if link.rooms.is_empty() {
                let _ = writeln!(out, "    (closed)");
            }
            for room in &link.rooms {
                let _ = writeln!(out, "    {:width$}  {}", room.network.as_str(), room.room);
            }
        }
    };
    write(&mut out, "bridges from the config", &config.bridges);
    write(
        &mut out,
        "links made at runtime (they replace config bridges of the same name)",
        extra,
    );
    if config.bridges.is_empty() && extra.is_empty() {
        out.push_str("no bridges\n");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cli_parses() {
        let c = Cli::try_parse_from(["junction"]).unwrap();
        assert_eq!(c.command, None);
        assert_eq!(c.config, PathBuf::from("bridges.toml"));
        let c = Cli::try_parse_from(["junction", "check", "-c", "x.toml"]).unwrap();
        assert_eq!(c.command, Some(Command::Check));
        assert_eq!(c.config, PathBuf::from("x.toml"));
        let c = Cli::try_parse_from(["junction", "-c", "y.toml", "registration"]).unwrap();
        assert_eq!(c.command, Some(Command::Registration));
        assert_eq!(c.config, PathBuf::from("y.toml"));
        let c = Cli::try_parse_from(["junction", "doctor", "-c", "z.toml"]).unwrap();
        assert_eq!(c.command, Some(Command::Doctor));
        assert_eq!(c.config, PathBuf::from("z.toml"));
        let c = Cli::try_parse_from(["junction", "status", "-c", "s.toml"]).unwrap();
        assert_eq!(c.command, Some(Command::Status));
        assert!(Cli::try_parse_from(["junction", "bogus"]).is_err());
    }
}
