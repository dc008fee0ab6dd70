//! `junction status`: asks a running gateway's `/health` and `/metrics` (on the config's
//! `[gateway] metrics` listener) and prints one table: each network's state, linked rooms,
//! puppets, outbox depth, errors counted and last error, then the rooms of each network.
//!
//! Exit status: 0 when every network is connected, 1 when one is not (or the store refuses
//! writes), 2 when the gateway cannot be asked (no `metrics` listener, nothing answers).

use crate::config::Config;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Exit status: every network connected.
pub const EXIT_OK: u8 = 0;
/// Exit status: the gateway answers, and some network is not connected or the store fails.
pub const EXIT_PROBLEMS: u8 = 1;
/// Exit status: the gateway could not be asked.
pub const EXIT_UNREACHABLE: u8 = 2;

/// How long one request to the gateway may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer read (the metrics of many networks fit many times over).
const MAX_BODY: u64 = 8 << 20;

/// Runs `junction status` for `config` on `rt`: prints the table (or why there is none) and
/// returns the exit status.
pub fn main(rt: &tokio::runtime::Runtime, config: &Config) -> u8 {
    let Some(listen) = config.gateway.metrics else {
        eprintln!(
            "junction status: the config has no [gateway] metrics listener to ask; set \
             metrics = \"127.0.0.1:9100\" (for example) and restart the gateway"
        );
        return EXIT_UNREACHABLE;
    };
    let addr = reachable(listen);
    let asked = rt.block_on(async {
        let health = get(addr, "/health").await?;
        let metrics = get(addr, "/metrics").await?;
        Ok::<_, String>((health, metrics))
    });
    let ((_, health), (_, metrics)) = match asked {
        Ok(answers) => answers,
        Err(why) => {
            eprintln!(
                "junction status: cannot ask the gateway at http://{addr}: {why} (is it \
                 running with this config?)"
            );
            return EXIT_UNREACHABLE;
        }
    };
    let health: Value = match serde_json::from_str(&health) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("junction status: http://{addr}/health did not answer JSON: {e}");
            return EXIT_UNREACHABLE;
        }
    };
    print!(
        "{}",
        render(
            &format!("http://{addr}"),
            &health,
            &metrics,
            junction_core::clock::now_ms()
        )
    );
    if health["status"] == "ok" {
        EXIT_OK
    } else {
        EXIT_PROBLEMS
    }
}

/// The address to ask for a listener on `listen`: an unspecified address (`0.0.0.0`, `::`)
/// is asked on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port())
        }
        _ => listen,
    }
}

/// `GET path` on `addr` over HTTP/1.0 (so the answer is never chunked): its status and body,
/// within [`TIMEOUT`] and [`MAX_BODY`].
pub async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let ask = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .take(MAX_BODY)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("{path}: not an HTTP answer"))?;
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| format!("{path}: not an HTTP answer"))?;
        Ok((status, body.to_owned()))
    };
    tokio::time::timeout(TIMEOUT, ask)
        .await
        .map_err(|_| format!("{path}: no answer within {} s", TIMEOUT.as_secs()))?
}

/// The per-network samples of `text` (Prometheus text format): (metric, network) → the sum
/// of its samples over the other labels. Samples without a `network` label are left out.
pub fn per_network(text: &str) -> BTreeMap<(String, String), f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let Some((name, labels)) = series.split_once('{') else {
            continue;
        };
        let Some(network) = label(labels, "network") else {
            continue;
        };
        *out.entry((name.to_owned(), network)).or_insert(0.0) += value;
    }
    out
}

/// The value of label `key` in `labels` (the text after `{`), unescaped.
fn label(labels: &str, key: &str) -> Option<String> {
    let start = labels.find(&format!("{key}=\""))? + key.len() + 2;
    let mut value = String::new();
    let mut chars = labels[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => value.push('\n'),
                other => value.push(other),
            },
            '"' => return Some(value),
            c => value.push(c),
        }
    }
    None
}

/// The table `junction status` prints for the gateway at `base`, from its `/health` JSON and
/// `/metrics` text, `now_ms` being the time now (for the age of the last errors).
pub fn render(base: &str, health: &Value, metrics: &str, now_ms: u64) -> String {
    let counts = per_network(metrics);
    let count = |name: &str, network: &str| -> String {
        counts
            .get(&(name.to_owned(), network.to_owned()))
            .map_or_else(|| "-".to_owned(), |v| format!("{v}"))
    };
    let networks = health["networks"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "gateway {base}: {}",
        health["status"].as_str().unwrap_or("unknown")
    );
    if let Some(reason) = health["store"]["reason"].as_str() {
        let _ = writeln!(out, "store: refuses writes: {reason}");
    }
    let mut rows = vec![[
        "network".to_owned(),
        "state".to_owned(),
        "rooms".to_owned(),
        "puppets".to_owned(),
        "outbox".to_owned(),
        "errors".to_owned(),
        "last error".to_owned(),
    ]];
    for n in &networks {
        let name = n["network"].as_str().unwrap_or("?");
        let mut state = n["state"].as_str().unwrap_or("?").to_owned();
        if let Some(reason) = n["reason"].as_str() {
            let _ = write!(state, " ({reason})");
        }
        let rooms = n["rooms"].as_array().map_or(0, Vec::len);
        let last = match (
            n["last_error"]["reason"].as_str(),
            n["last_error"]["at_ms"].as_u64(),
        ) {
            (Some(reason), Some(at)) => format!("{reason} ({} ago)", ago(now_ms, at)),
            (Some(reason), None) => reason.to_owned(),
            _ => "-".to_owned(),
        };
        rows.push([
            name.to_owned(),
            state,
            rooms.to_string(),
            count("junction_puppets_connected", name),
            count("junction_outbox_depth", name),
            count("junction_errors_total", name).replace('-', "0"),
            last,
        ]);
    }
    let mut widths = [0usize; 7];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (w, cell)) in widths.iter().zip(row).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:w$}  ");
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out.push_str("rooms:\n");
    for n in &networks {
        let name = n["network"].as_str().unwrap_or("?");
        for room in n["rooms"].as_array().into_iter().flatten() {
            let _ = writeln!(out, "  {name}  {}", room.as_str().unwrap_or("?"));
        }
    }
    out
}

/// How long ago `at_ms` was, `now_ms` being now: `42s`, `5m`, `3h`, `2d`.
fn ago(now_ms: u64, at_ms: u64) -> String {
    let s = now_ms.saturating_sub(at_ms) / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const METRICS: &str = "\
# TYPE junction_puppets_connected gauge
junction_puppets_connected{network=\"irc:local\"} 2
junction_puppets_connected{network=\"matrix\"} 1
# TYPE junction_outbox_depth gauge
junction_outbox_depth{network=\"irc:local\"} 7
junction_outbox_depth{network=\"matrix\"} 0
# TYPE junction_errors_total counter
junction_errors_total{network=\"irc:local\",kind=\"send\"} 3
junction_errors_total{network=\"irc:local\",kind=\"malformed_input\"} 1
junction_duplicates_skipped_total 4
";

    #[test]
    fn samples_are_summed_per_network() {
        let c = per_network(METRICS);
        let get = |m: &str, n: &str| c.get(&(m.to_owned(), n.to_owned())).copied();
        assert_eq!(get("junction_errors_total", "irc:local"), Some(4.0));
        assert_eq!(get("junction_outbox_depth", "irc:local"), Some(7.0));
        assert_eq!(get("junction_errors_total", "matrix"), None);
        assert!(!c
            .keys()
            .any(|(m, _)| m == "junction_duplicates_skipped_total"));
        assert_eq!(
            label(r#"network="a\"b",kind="x""#, "network").unwrap(),
            "a\"b"
        );
    }

    #[test]
    fn the_table_has_a_row_per_network_and_the_rooms() {
        let health = serde_json::json!({
            "status": "degraded",
            "networks": [
                {"network": "irc:local", "state": "degraded", "reason": "could not join #x",
                 "rooms": ["#lobby", "#x"],
                 "last_error": {"reason": "could not join #x", "at_ms": 100_000}},
                {"network": "matrix", "state": "connected", "rooms": ["#lobby:example.org"]},
            ],
        });
        let text = render("http://127.0.0.1:9100", &health, METRICS, 400_000);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "gateway http://127.0.0.1:9100: degraded");
        assert!(lines[1].starts_with("network"), "{text}");
        assert!(lines[1].contains("last error"), "{text}");
        let irc: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(irc[0], "irc:local", "{text}");
        assert!(
            lines[2].contains("degraded (could not join #x)  2"),
            "{text}"
        );
        assert!(lines[2].ends_with("could not join #x (5m ago)"), "{text}");
        let matrix: Vec<&str> = lines[3].split_whitespace().collect();
        assert_eq!(
            matrix,
            ["matrix", "connected", "1", "1", "0", "0", "-"],
            "{text}"
        );
        assert!(
            text.contains(
                "rooms:\n  irc:local  #lobby\n  irc:local  #x\n  matrix  #lobby:example.org\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn an_unspecified_listener_is_asked_on_loopback() {
        let a: SocketAddr = "0.0.0.0:9100".parse().unwrap();
        assert_eq!(reachable(a), "127.0.0.1:9100".parse().unwrap());
        let a: SocketAddr = "[::]:9100".parse().unwrap();
        assert_eq!(reachable(a), "[::1]:9100".parse().unwrap());
        let a: SocketAddr = "10.0.0.1:9100".parse().unwrap();
        assert_eq!(reachable(a), a);
    }
}
