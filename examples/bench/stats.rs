//! Statistics: percentiles, and the memory and CPU time of the gateway and the servers.

use super::*;

pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> String {
    let v = d.as_secs_f64() * 1000.0;
    if v < 10.0 {
        format!("{v:.2}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// "p50 / p99" in milliseconds.
pub(crate) fn p50_99(mut v: Vec<Duration>) -> String {
    if v.is_empty() {
        return "–".into();
    }
    v.sort_unstable();
    format!("{} / {}", ms(pct(&v, 0.5)), ms(pct(&v, 0.99)))
}

pub(crate) fn rss_kb() -> u64 {
    rss_kb_of("self")
}

/// A process's resident set size in kB (`pid` a number or `self`), from /proc.
pub(crate) fn rss_kb_of(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU time (user + system) a process used so far, from /proc (clock ticks of 10 ms).
pub(crate) fn cpu_secs(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces.
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The processes whose CPU is accounted: this one (gateway and test clients) and the servers.
pub(crate) fn processes(servers: &Servers) -> Vec<(&'static str, String)> {
    let mut v = vec![("gateway+clients", "self".to_owned())];
    for name in ["prosody", "inspircd", "synapse"] {
        let pid = std::fs::read_to_string(servers.dir.join("run").join(format!("{name}.pid")))
            .map(|p| p.trim().to_owned())
            .unwrap_or_default();
        if !pid.is_empty() {
            v.push((name, pid));
        }
    }
    v
}

/// CPU used by each process over a closure's run, as a share of one core.
pub(crate) struct CpuMeter {
    pub(crate) procs: Vec<(&'static str, String)>,
    pub(crate) start: Vec<f64>,
    pub(crate) at: Instant,
}

impl CpuMeter {
    pub(crate) fn start(servers: &Servers) -> CpuMeter {
        let procs = processes(servers);
        let start = procs.iter().map(|(_, p)| cpu_secs(p)).collect();
        CpuMeter {
            procs,
            start,
            at: Instant::now(),
        }
    }

    pub(crate) fn report(&self) -> String {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        self.procs
            .iter()
            .zip(&self.start)
            .map(|((n, p), s)| format!("{n} {:.0}%", (cpu_secs(p) - s) / wall * 100.0))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A Markdown table: the `columns` row (`"| a | b |"`), the `align` row, then `rows`, one a
/// line (more may be appended).
pub(crate) fn table(columns: &str, align: &str, rows: impl IntoIterator<Item = String>) -> String {
    let mut s = format!("{columns}\n{align}\n");
    for r in rows {
        s.push_str(&r);
        s.push('\n');
    }
    s
}
