//! An encrypting Matrix user that shares no code with the gateway: matrix-nio on libolm
//! (Debian's `python3-matrix-nio` and `python3-olm`), driven through `nio/client.py` by
//! stdin and stdout (one JSON object a line).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::servers::Servers;

/// The Debian packages the client needs.
pub const PACKAGES: [&str; 2] = ["python3-matrix-nio", "python3-olm"];

/// The system Python, where Debian installs the packages.
const PYTHON: &str = "/usr/bin/python3";

/// The script, in the testkit's source tree.
fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("nio/client.py")
}

/// Installs [`PACKAGES`] with apt when the system Python can not import them (idempotent).
pub async fn ensure_installed() -> anyhow::Result<()> {
    let ok = Command::new(PYTHON)
        .args(["-c", "import nio, olm"])
        .output()
        .await
        .is_ok_and(|o| o.status.success());
    if ok {
        return Ok(());
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends"])
        .args(PACKAGES)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .await
        .context("running apt-get")?;
    anyhow::ensure!(status.success(), "apt-get install {PACKAGES:?} failed");
    Ok(())
}

/// A logged-in nio client in one room. Dropping it ends the process.
pub struct NioUser {
    child: Child,
    stdin: ChildStdin,
    lines: Arc<Mutex<Vec<Value>>>,
    user_id: String,
    _store: tempfile::TempDir,
}

impl NioUser {
    /// Registers `localpart` (idempotent), logs in as a new device, joins `room` and waits
    /// until the client is ready to encrypt there (the room must be encrypted).
    pub async fn join(
        servers: &Servers,
        localpart: &str,
        password: &str,
        room: &str,
    ) -> anyhow::Result<Self> {
        ensure_installed().await?;
        servers
            .register_matrix_user(localpart, password, false)
            .await?;
        let user_id = format!("@{localpart}:{}", servers.matrix.server_name);
        let store = tempfile::tempdir()?;
        let mut child = Command::new(PYTHON)
            .arg(script())
            .arg(&servers.matrix.url)
            .arg(&user_id)
            .arg(password)
            .arg(room)
            .arg(store.path())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // `JUNCTION_TEST_NIO_LOG=1` shows the client's own complaints.
            .stderr(if std::env::var_os("JUNCTION_TEST_NIO_LOG").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            })
            .kill_on_drop(true)
            .spawn()
            .context("starting the nio client")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let lines: Arc<Mutex<Vec<Value>>> = Arc::default();
        let seen = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    seen.lock().unwrap_or_else(|e| e.into_inner()).push(v);
                }
            }
        });
        let user = NioUser {
            child,
            stdin,
            lines,
            user_id,
            _store: store,
        };
        user.wait_for(Duration::from_secs(90), "the nio client ready", |v| {
            v["event"] == "ready"
        })
        .await?;
        Ok(user)
    }

    /// The user id.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// Sends `text` encrypted into the room; returns its event id.
    pub async fn send(&mut self, text: &str) -> anyhow::Result<String> {
        self.command(&format!("send {}", text.replace('\n', " ")))
            .await
    }

    /// Replaces the message `event_id` with `text` (an encrypted `m.replace`); returns the
    /// edit's event id.
    pub async fn edit(&mut self, event_id: &str, text: &str) -> anyhow::Result<String> {
        self.command(&format!("edit {event_id} {}", text.replace('\n', " ")))
            .await
    }

    /// Answers the message `event_id` with `text` (an encrypted reply); returns its event id.
    pub async fn reply(&mut self, event_id: &str, text: &str) -> anyhow::Result<String> {
        self.command(&format!("reply {event_id} {}", text.replace('\n', " ")))
            .await
    }

    /// Reacts to the message `event_id` with `key` (an encrypted `m.reaction`); returns the
    /// reaction's event id.
    pub async fn react(&mut self, event_id: &str, key: &str) -> anyhow::Result<String> {
        self.command(&format!("react {event_id} {key}")).await
    }

    /// Redacts the event `event_id` (in clear, as redactions are); returns the redaction's
    /// event id.
    pub async fn redact(&mut self, event_id: &str) -> anyhow::Result<String> {
        self.command(&format!("redact {event_id}")).await
    }

    /// Sends `text` encrypted into `room` (another room the client is in, such as a direct
    /// chat it made); returns its event id.
    pub async fn send_to(&mut self, room: &str, text: &str) -> anyhow::Result<String> {
        self.command(&format!("sendto {room} {}", text.replace('\n', " ")))
            .await
    }

    /// Sends `text` into `room` encrypted with a Megolm session the client never shares, so
    /// that no other device can decrypt it; returns its event id.
    pub async fn send_undecryptable(&mut self, room: &str, text: &str) -> anyhow::Result<String> {
        self.command(&format!("forge {room} {}", text.replace('\n', " ")))
            .await
    }

    /// Makes an encrypted direct chat with `with` (an `is_direct` invite, encryption in the
    /// room's initial state, as Element makes one) and waits until `with` and every one of
    /// `members` joined it; returns its room id.
    pub async fn direct_chat(&mut self, with: &str, members: &[&str]) -> anyhow::Result<String> {
        let line = std::iter::once(with)
            .chain(members.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let v = self
            .run(&format!("dm {line}"), "room", Duration::from_secs(120))
            .await?;
        Ok(v["room_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Uploads `data` encrypted and sends it as the file `name` (an `m.file` whose content
    /// carries the key); returns its event id.
    pub async fn send_file(&mut self, name: &str, data: &[u8]) -> anyhow::Result<String> {
        use base64::Engine as _;
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        anyhow::ensure!(!name.contains(char::is_whitespace), "a name without spaces");
        self.command(&format!("file {name} {data}")).await
    }

    /// Waits for an encrypted file named `name`, downloads and decrypts it; returns its bytes.
    pub async fn receives_file(&self, name: &str, deadline: Duration) -> anyhow::Result<Vec<u8>> {
        use base64::Engine as _;
        let v = self
            .wait_for(deadline, &format!("nio receives the file {name:?}"), |v| {
                v["event"] == "file" && v["body"] == name
            })
            .await?;
        let data = v["data"]
            .as_str()
            .with_context(|| format!("nio could not decrypt the file: {v}"))?;
        Ok(base64::engine::general_purpose::STANDARD.decode(data)?)
    }

    /// Runs one command of the script and waits for what it sent.
    async fn command(&mut self, line: &str) -> anyhow::Result<String> {
        let v = self.run(line, "sent", Duration::from_secs(60)).await?;
        Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Runs one command of the script and waits for its answer, a line of event `answer`
    /// (or an error).
    async fn run(&mut self, line: &str, answer: &str, deadline: Duration) -> anyhow::Result<Value> {
        let mark = self.backlog().len();
        self.stdin.write_all(format!("{line}\n").as_bytes()).await?;
        self.stdin.flush().await?;
        let v = crate::eventually(deadline, "the nio client's answer", || {
            let found = self.backlog()[mark..]
                .iter()
                .find(|v| v["event"] == answer || v["event"] == "error")
                .cloned();
            async move { found }
        })
        .await?;
        anyhow::ensure!(v["event"] == answer, "nio failed: {v}");
        Ok(v)
    }

    /// Everything the client printed so far.
    pub fn backlog(&self) -> Vec<Value> {
        self.lines.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Waits until a printed line matches `pred`.
    pub async fn wait_for(
        &self,
        deadline: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        crate::eventually(deadline, what, || {
            let found = self.backlog().into_iter().find(|v| pred(v));
            async move { found }
        })
        .await
    }

    /// Waits for a decrypted message whose body contains `text`.
    pub async fn sees(&self, text: &str, deadline: Duration) -> anyhow::Result<Value> {
        self.wait_for(deadline, &format!("nio sees {text:?}"), |v| {
            v["event"] == "message" && v["body"].as_str().is_some_and(|b| b.contains(text))
        })
        .await
    }

    /// Waits for a decrypted message in `room` whose body contains `text`.
    pub async fn sees_in(
        &self,
        room: &str,
        text: &str,
        deadline: Duration,
    ) -> anyhow::Result<Value> {
        self.wait_for(deadline, &format!("nio sees {text:?} in {room}"), |v| {
            v["event"] == "message"
                && v["room_id"] == room
                && v["body"].as_str().is_some_and(|b| b.contains(text))
        })
        .await
    }

    /// Ends the client.
    pub async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}
