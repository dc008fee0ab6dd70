//! PostgreSQL for the store's PostgreSQL backend: Debian's `postgresql` package, one private
//! cluster under the harness directory (`postgresql/data`, owned by `postgres`), listening
//! only on 127.0.0.1:[`POSTGRES_PORT`], with a role [`USER`] (password [`PASSWORD`]) owning
//! a database [`DATABASE`].
//!
//! The cluster is made with `initdb` the first time and kept; the role and the database are
//! made after each start when missing. The server runs as `postgres` through `setpriv`
//! (PostgreSQL refuses root); the superuser is reached only over the cluster's Unix socket,
//! by peer authentication.

use super::{process, Layout, Service, POSTGRES_PORT};
use anyhow::Context as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::process::Command;

/// The role the gateway and the tests log in as.
pub const USER: &str = "junction";
/// Test-only password of [`USER`].
pub const PASSWORD: &str = "junction_testkit_pg";
/// The database [`USER`] owns.
pub const DATABASE: &str = "junction";

/// The URL of the test database, password included (`postgres://junction:…@127.0.0.1:5439/junction`).
pub fn url() -> String {
    format!("postgres://{USER}:{PASSWORD}@127.0.0.1:{POSTGRES_PORT}/{DATABASE}")
}

/// The URL of a schema `schema` of its own in the test database (made by the store at
/// open). `schema` is letters, digits and `_`.
pub fn schema_url(schema: &str) -> String {
    format!("{}?options=-c%20search_path%3D{schema}", url())
}

/// Whether end-to-end gateways keep their store on PostgreSQL:
/// `JUNCTION_TEST_STORE=postgres` (else sled, the default).
pub fn e2e_store_is_postgres() -> bool {
    std::env::var("JUNCTION_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// `config` (a gateway's config text) with its store in the test database, in `schema`: a
/// `store` line at the top of its `[gateway]` table (made when missing). A config that names
/// a store already is kept as it is.
pub fn with_store(config: &str, schema: &str) -> String {
    if config.lines().any(|l| l.starts_with("store = ")) {
        return config.to_owned();
    }
    let line = format!("store = \"{}\"\n", schema_url(schema));
    match config.find("[gateway]\n") {
        Some(i) => {
            let at = i + "[gateway]\n".len();
            format!("{}{line}{}", &config[..at], &config[at..])
        }
        None => format!("[gateway]\n{line}{config}"),
    }
}

/// Drops `schema` and everything in it from the test database (best effort: a server that
/// is not there has nothing to drop).
pub fn drop_schema(schema: &str) {
    let _ = std::process::Command::new(bin("psql"))
        .args(["-X", "-q", "-h", "127.0.0.1", "-p"])
        .arg(POSTGRES_PORT.to_string())
        .args(["-U", USER, "-d", DATABASE, "-c"])
        .arg(format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
        .env("PGPASSWORD", PASSWORD)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
}

/// The directory of the newest installed PostgreSQL's programs
/// (`/usr/lib/postgresql/<major>/bin`), or that of version 15 when none is installed yet.
fn bin_dir() -> PathBuf {
    let newest = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|v| {
            Path::new("/usr/lib/postgresql")
                .join(v.to_string())
                .join("bin/postgres")
                .exists()
        })
        .max()
        .unwrap_or(15);
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
}

/// The path of PostgreSQL's program `name`.
pub(crate) fn bin(name: &str) -> PathBuf {
    bin_dir().join(name)
}

/// `setpriv`'s arguments that run `program` as the `postgres` user.
pub(crate) fn as_postgres(program: PathBuf) -> Vec<String> {
    vec![
        "--reuid=postgres".into(),
        "--regid=postgres".into(),
        "--init-groups".into(),
        program.display().to_string(),
    ]
}

/// `postgresql.conf`: loopback only, our port, the socket in the data directory, our
/// `pg_hba.conf`. Durability is traded for speed: it is a test cluster.
pub(crate) fn config(l: &Layout) -> String {
    format!(
        "# Written by junction-testkit; rewritten on each start.\n\
         listen_addresses = '127.0.0.1'\n\
         port = {POSTGRES_PORT}\n\
         unix_socket_directories = '{data}'\n\
         hba_file = '{hba}'\n\
         ident_file = '{data}/pg_ident.conf'\n\
         max_connections = 200\n\
         shared_buffers = 64MB\n\
         fsync = off\n\
         synchronous_commit = off\n\
         full_page_writes = off\n\
         password_encryption = 'scram-sha-256'\n\
         log_min_messages = warning\n",
        data = l.postgres_data().display(),
        hba = hba_path(l).display(),
    )
}

fn hba_path(l: &Layout) -> PathBuf {
    l.postgres.join("pg_hba.conf")
}

/// `pg_hba.conf`: the superuser by peer over the socket, everyone else by password over
/// loopback TCP.
pub(crate) fn hba(_: &Layout) -> String {
    "# Written by junction-testkit; rewritten on each start.\n\
     local all postgres peer\n\
     host all all 127.0.0.1/32 scram-sha-256\n"
        .to_owned()
}

/// Writes the config files; true if either changed.
pub(crate) fn write_configs(
    l: &Layout,
    write: impl Fn(&Path, &str) -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let a = write(&l.config_file(Service::Postgres), &config(l))?;
    let b = write(&hba_path(l), &hba(l))?;
    Ok(a | b)
}

async fn run_as_postgres(
    l: &Layout,
    program: &str,
    args: &[&str],
    stdin: Option<&str>,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let mut cmd = Command::new("setpriv");
    cmd.args(as_postgres(bin(program)))
        .args(args)
        .current_dir(&l.postgres)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {program} as postgres"))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    anyhow::ensure!(
        out.status.success(),
        "{program} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Makes the cluster with `initdb` unless it is there (its `PG_VERSION` exists).
pub(crate) async fn init_cluster(l: &Layout) -> anyhow::Result<()> {
    let data = l.postgres_data();
    if data.join("PG_VERSION").exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(&data)
        .status()
        .await
        .context("running chown")?;
    anyhow::ensure!(status.success(), "chown postgres {} failed", data.display());
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700))?;
    }
    let data = data.display().to_string();
    run_as_postgres(
        l,
        "initdb",
        &[
            "-D",
            &data,
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--auth-local=peer",
            "--auth-host=scram-sha-256",
        ],
        None,
    )
    .await
    .context("initdb")
}

/// Makes the role and the database when missing (and sets the role's password), retrying
/// while the server is still starting up.
pub(crate) async fn seed(l: &Layout) -> anyhow::Result<()> {
    let sql = format!(
        "SELECT 'CREATE ROLE {USER} LOGIN' WHERE NOT EXISTS \
         (SELECT FROM pg_roles WHERE rolname = '{USER}')\\gexec\n\
         ALTER ROLE {USER} LOGIN PASSWORD '{PASSWORD}';\n\
         SELECT 'CREATE DATABASE {DATABASE} OWNER {USER}' WHERE NOT EXISTS \
         (SELECT FROM pg_database WHERE datname = '{DATABASE}')\\gexec\n"
    );
    let data = l.postgres_data().display().to_string();
    let port = POSTGRES_PORT.to_string();
    let args = [
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        &data,
        "-p",
        &port,
        "-U",
        "postgres",
        "-d",
        "postgres",
        "-f",
        "-",
    ];
    // Bounded: two minutes of attempts, while the server finishes starting up.
    let mut last = None;
    for _ in 0..240 {
        match run_as_postgres(l, "psql", &args, Some(&sql)).await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let why = last.unwrap_or_else(|| anyhow::anyhow!("no attempt made"));
    Err(why.context(format!(
        "seeding PostgreSQL; its log ends:\n{}",
        process::log_tail(&l.log_file(Service::Postgres), 30)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_line_goes_into_the_gateway_table() {
        let with = with_store("\n[gateway]\ndata_dir = \"data\"\n[xmpp]\n", "s1");
        let want = format!("\n[gateway]\nstore = \"{}\"\ndata_dir", schema_url("s1"));
        assert!(with.starts_with(&want), "{with}");
        let without = with_store("[xmpp]\n", "s2");
        assert!(
            without.starts_with("[gateway]\nstore = \"postgres://"),
            "{without}"
        );
        assert!(schema_url("s1").ends_with("search_path%3Ds1"));
    }
}
