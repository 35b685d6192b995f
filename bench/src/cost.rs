//! Cost accounting: this process's CPU and memory, and each node's from its `/metrics`.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// CPU seconds and peak memory of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cost {
    pub cpu_s: f64,
    pub max_rss: u64,
}

/// This process's CPU time (all threads) and peak resident memory.
pub fn own_cost() -> Cost {
    let cpu_s = stat_cpu_s("self").unwrap_or(0.0);
    let max_rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))?
                .split_whitespace()
                .next()?
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kib| kib * 1024);
    Cost { cpu_s, max_rss }
}

/// A node's metrics (plain HTTP/1.0 GET of `/metrics`): name (with labels) → value.
pub async fn scrape(admin: &str) -> anyhow::Result<std::collections::HashMap<String, f64>> {
    let host = admin
        .strip_prefix("http://")
        .context("admin URL must be http://")?
        .trim_end_matches('/');
    let mut conn =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
            .await??;
    conn.write_all(format!("GET /metrics HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .await?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(5), conn.read_to_string(&mut text)).await??;
    Ok(text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect())
}

async fn node_cost(admin: &str) -> anyhow::Result<Cost> {
    let m = scrape(admin).await?;
    Ok(Cost {
        cpu_s: *m
            .get("process_cpu_seconds_total")
            .context("no process_cpu_seconds_total")?,
        max_rss: m
            .get("process_max_resident_memory_bytes")
            .copied()
            .unwrap_or(0.0) as u64,
    })
}

pub async fn node_costs(admins: &[(String, String)]) -> Vec<Cost> {
    let mut out = Vec::new();
    for (id, url) in admins {
        match node_cost(url).await {
            Ok(c) => out.push(c),
            Err(e) => {
                eprintln!("could not read {id}'s metrics at {url}: {e:#}");
                out.push(Cost::default());
            }
        }
    }
    out
}

/// The nodes' CPU seconds between two readings of [`node_costs`].
pub fn cpu_between(before: &[Cost], after: &[Cost]) -> f64 {
    after
        .iter()
        .zip(before)
        .map(|(a, b)| a.cpu_s - b.cpu_s)
        .sum()
}

/// CPU seconds (user + system, all threads) of a local process (a pid, or `self`): utime and
/// stime from `/proc/<pid>/stat`, in USER_HZ (100) ticks, after the command name.
fn stat_cpu_s(pid: &str) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// The local processes named by a folder of pid files (`ops/dev-cluster.sh` keeps one per
/// process: `etcd`, `router`, `n1`, ...), so a step can split the cluster's CPU by process.
#[derive(Debug, Clone, Default)]
pub struct Processes {
    procs: Vec<(String, u32)>,
}

impl Processes {
    /// Every readable pid file in `dir`, sorted by name; none without a folder.
    pub fn from_dir(dir: Option<&std::path::Path>) -> Processes {
        let Some(dir) = dir else {
            return Processes::default();
        };
        let mut procs: Vec<(String, u32)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let pid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((e.file_name().to_string_lossy().into_owned(), pid))
            })
            .collect();
        procs.sort();
        Processes { procs }
    }

    /// Each process's CPU seconds so far (0 for one that is gone).
    pub fn cpu(&self) -> Vec<(String, f64)> {
        self.procs
            .iter()
            .map(|(name, pid)| (name.clone(), stat_cpu_s(&pid.to_string()).unwrap_or(0.0)))
            .collect()
    }
}

/// Per process, the CPU seconds between two readings of [`Processes::cpu`].
pub fn procs_between(before: &[(String, f64)], after: &[(String, f64)]) -> Vec<(String, f64)> {
    after
        .iter()
        .zip(before)
        .map(|((name, a), (_, b))| (name.clone(), a - b))
        .collect()
}
