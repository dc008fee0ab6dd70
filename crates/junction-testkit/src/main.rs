//! `junction-testkit`: install, start, stop and inspect the local test servers.
//!
//! ```text
//! junction-testkit install [--dry-run]   apt packages + Synapse venv, only what is missing
//! junction-testkit start                 install, start what is not running, print the env
//!                                        (and PostgreSQL's URL, password as `${JUNCTION_PGPASS}`)
//! junction-testkit stop                  stop the servers this dir's pid files name
//! junction-testkit status                what runs; exit 0 all, 3 none, 4 some
//! junction-testkit env                   the demo slot's secrets, for `eval`
//! ```
//! The servers dir is `/tmp/junction-servers` unless `JUNCTION_SERVERS_DIR` (absolute) says
//! otherwise. Progress goes to stderr; `start` and `env` print only the env on stdout.
#![forbid(unsafe_code)]

use junction_testkit::servers::{self, install, Harness};
use std::process::ExitCode;

const USAGE: &str = "usage: junction-testkit <install [--dry-run] | start | stop | status | env>";

/// The demo slot's secrets as one `export` line, for `eval "$(junction-testkit env)"`.
fn env_line() -> String {
    let s = servers::demo_slot();
    format!(
        "export JUNCTION_AS_TOKEN='{}' JUNCTION_HS_TOKEN='{}' JUNCTION_XMPP_SECRET='{}' \
         JUNCTION_PGPASS='{}'",
        s.as_token,
        s.hs_token,
        s.component_secret,
        servers::postgres::PASSWORD
    )
}

/// PostgreSQL's URL as a config takes it, the password left to `${JUNCTION_PGPASS}`.
fn pg_url_shown() -> String {
    use servers::postgres::{DATABASE, USER};
    format!(
        "postgres://{USER}:${{JUNCTION_PGPASS}}@127.0.0.1:{}/{DATABASE}",
        servers::POSTGRES_PORT
    )
}

async fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        ["install"] => {
            Harness::from_env()?.install().await?;
            eprintln!("junction-testkit: everything is installed");
        }
        ["install", "--dry-run"] => {
            let steps = install::plan().await;
            if steps.is_empty() {
                println!("nothing to install");
            }
            for step in steps {
                println!("{step}");
            }
        }
        ["start"] => {
            let h = Harness::from_env()?;
            h.install().await?;
            let s = h.start().await?;
            eprintln!(
                "junction-testkit: servers ready in {}: Matrix {} ({}), XMPP {} (c2s) {} \
                 (components), IRC {} (InspIRCd) {} (ngIRCd), PostgreSQL {}",
                s.dir.display(),
                s.matrix.url,
                s.matrix.server_name,
                s.xmpp.c2s,
                s.xmpp.component,
                s.inspircd,
                s.ngircd,
                pg_url_shown()
            );
            println!("{}", env_line());
            println!("# PostgreSQL store: {}", pg_url_shown());
        }
        ["stop"] => {
            let h = Harness::from_env()?;
            let stopped = h.stop().await?;
            if stopped.is_empty() {
                eprintln!(
                    "junction-testkit: nothing was running from {}",
                    h.dir().display()
                );
            }
            for (svc, pid) in stopped {
                eprintln!("junction-testkit: stopped {} (pid {pid})", svc.name());
            }
        }
        ["status"] => {
            let h = Harness::from_env()?;
            println!("servers dir: {}", h.dir().display());
            let mut running = 0;
            for st in h.status().await {
                let ports: Vec<String> = st.service.ports().iter().map(u16::to_string).collect();
                let state = match st.pid {
                    Some(pid) => format!("running (pid {pid})"),
                    None if st.open_ports.is_empty() => "stopped".to_owned(),
                    None => "stopped, but its port is taken by another process".to_owned(),
                };
                running += usize::from(st.pid.is_some());
                println!("{:<10} {:<12} {state}", st.service.name(), ports.join(","));
            }
            return Ok(match running {
                n if n == servers::Service::ALL.len() => ExitCode::SUCCESS,
                0 => ExitCode::from(3),
                _ => ExitCode::from(4),
            });
        }
        ["env"] => println!("{}", env_line()),
        _ => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("junction-testkit: {e:#}");
            ExitCode::FAILURE
        }
    }
}
