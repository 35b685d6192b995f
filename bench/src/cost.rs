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
    // utime + stime of all threads, in USER_HZ (100) ticks, after the command name.
    let cpu_s = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 1..)?.to_string();
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .map_or(0.0, |ticks| ticks as f64 / 100.0);
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
