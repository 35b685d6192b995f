//! Scenario `idle`: authenticated idle connections, and each node's resident memory before
//! and after.

use std::time::{Duration, Instant};

use chat_client::Client;

use crate::cost::{node_costs, own_cost, scrape};
use crate::run_id;

/// (resident bytes, client connections) of each node.
async fn node_memory(admins: &[(String, String)]) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    for (id, url) in admins {
        match scrape(url).await {
            Ok(m) => out.push((
                m.get("process_resident_memory_bytes")
                    .copied()
                    .unwrap_or(0.0),
                m.get("chat_connections").copied().unwrap_or(0.0),
            )),
            Err(e) => {
                eprintln!("could not read {id}'s metrics: {e:#}");
                out.push((0.0, 0.0));
            }
        }
    }
    out
}

pub async fn idle(
    url: &str,
    secret: &str,
    admins: &[(String, String)],
    connections: usize,
    sources: u8,
    concurrency: usize,
    hold: u64,
) -> anyhow::Result<()> {
    let run = run_id();
    let before = node_memory(admins).await;
    let own_before = own_cost();
    let started = Instant::now();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..connections {
        let user = format!("idle{run}-{i}");
        let token = chat_auth::issue_token(secret.as_bytes(), &user, "idle", 3600);
        let opts = chat_client::ConnectOptions {
            local_ip: Some(std::net::IpAddr::from([
                127,
                0,
                0,
                1 + (i % sources as usize) as u8,
            ])),
            timeout: Duration::from_secs(60),
            ..Default::default()
        };
        let (url, gate) = (url.to_string(), gate.clone());
        tasks.spawn(async move {
            let _slot = gate.acquire_owned().await;
            Client::connect_with(&url, &token, &opts).await
        });
    }
    let mut clients = Vec::with_capacity(connections);
    let mut failed = 0;
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(c)) => clients.push(c),
            Ok(Err(e)) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("connect failed: {e}");
                }
            }
            Err(e) => anyhow::bail!("connect task: {e}"),
        }
    }
    let setup = started.elapsed().as_secs_f64();
    let after = node_memory(admins).await;
    let own_after = own_cost();
    println!(
        "idle connections={} failed={failed} setup {:.1} s ({:.0}/s) | bench peak rss {} MiB, cpu {:.1} s",
        clients.len(),
        setup,
        clients.len() as f64 / setup,
        own_after.max_rss >> 20,
        own_after.cpu_s - own_before.cpu_s,
    );
    let (mut total_bytes, mut total_conns) = (0.0, 0.0);
    for ((id, _), ((rss0, c0), (rss1, c1))) in admins.iter().zip(before.iter().zip(&after)) {
        let (bytes, conns) = (rss1 - rss0, c1 - c0);
        total_bytes += bytes;
        total_conns += conns;
        println!(
            "  {id}: +{conns:.0} connections, resident {:.1} -> {:.1} MiB, {:.2} KiB per connection",
            rss0 / 1048576.0,
            rss1 / 1048576.0,
            if conns > 0.0 { bytes / conns / 1024.0 } else { 0.0 }
        );
    }
    if total_conns > 0.0 {
        println!(
            "  all nodes: {:.2} KiB per idle connection",
            total_bytes / total_conns / 1024.0
        );
    }
    if hold > 0 && !admins.is_empty() {
        // Idle means idle: the keepalive pings and timers of every connection, nothing else.
        let cpu_before = node_costs(admins).await;
        tokio::time::sleep(Duration::from_secs(hold)).await;
        let cpu_after = node_costs(admins).await;
        let mut line = format!("  idle for {hold} s: nodes cpu");
        for ((id, _), (b, a)) in admins.iter().zip(cpu_before.iter().zip(&cpu_after)) {
            line += &format!(" {id}={:.2}%", 100.0 * (a.cpu_s - b.cpu_s) / hold as f64);
        }
        line += &format!(" of a core, {} connections held", clients.len());
        println!("{line}");
    }
    drop(clients);
    Ok(())
}
