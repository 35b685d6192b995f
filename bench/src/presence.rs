//! Scenario `presence`: `watchers` users each watch `watch` of `actors` users, and the actors
//! come online (connect, one active frame) and go offline (disconnect) in turn at `rate`
//! changes a second. Prints the updates delivered per second, the time from a change to each
//! watcher's update (p50/p99), and the nodes' CPU per delivered update.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_client::v1::{client_frame, presence_request, server_frame, Ping, PresenceUsers};
use chat_client::Client;
use hdrhistogram::Histogram;

use crate::cost::{cpu_between, node_costs, own_cost};
use crate::run_id;

pub struct Options {
    pub url: String,
    pub secret: String,
    pub watchers: usize,
    pub actors: usize,
    pub watch: usize,
    pub rate: u64,
    pub duration: u64,
}

/// When each actor's latest change was made (online or offline), by user.
type Changes = Arc<Mutex<HashMap<String, (bool, Instant)>>>;

pub async fn run(o: Options, admins: &[(String, String)]) -> anyhow::Result<()> {
    let run = run_id();
    let actor = |i: usize| format!("pa{run}-{i}");
    let changes: Changes = Arc::new(Mutex::new(HashMap::new()));
    let watch = o.watch.min(o.actors).max(1);
    // Watchers: connected, watching `watch` actors each, counting updates as they come.
    let mut receivers = tokio::task::JoinSet::new();
    for w in 0..o.watchers {
        let token = chat_auth::issue_token(o.secret.as_bytes(), &format!("pw{run}-{w}"), "w", 3600);
        let mut c = Client::connect(&o.url, &token).await?;
        let users = (0..watch).map(|k| actor((w + k) % o.actors)).collect();
        c.presence("w", presence_request::Op::Watch(PresenceUsers { users }))
            .await?;
        let changes = changes.clone();
        let (_tx, mut rx) = c.into_split();
        receivers.spawn(async move {
            let _keep = _tx;
            let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
            let mut stale = 0u64;
            while let Ok(Ok(f)) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                let Some(server_frame::Frame::PresenceUpdate(u)) = f.frame else {
                    continue;
                };
                let Some(s) = u.status else { continue };
                let made = changes.lock().unwrap().get(&s.user).copied();
                match made {
                    Some((online, at)) if online == s.online => {
                        let _ = lat.record((at.elapsed().as_micros() as u64).max(1));
                    }
                    _ => stale += 1,
                }
            }
            (lat, stale)
        });
    }
    let (nodes_before, own_before) = (node_costs(admins).await, own_cost());
    let started = Instant::now();
    let every = Duration::from_secs_f64(1.0 / o.rate.max(1) as f64);
    let mut online: HashMap<usize, Client> = HashMap::new();
    let mut made = 0u64;
    let mut next = Instant::now();
    while started.elapsed() < Duration::from_secs(o.duration) {
        tokio::time::sleep_until(next.into()).await;
        next += every;
        let i = (made as usize) % o.actors;
        let user = actor(i);
        match online.remove(&i) {
            Some(c) => {
                changes
                    .lock()
                    .unwrap()
                    .insert(user, (false, Instant::now()));
                drop(c);
            }
            None => {
                let token = chat_auth::issue_token(o.secret.as_bytes(), &user, "a", 3600);
                let mut c = Client::connect(&o.url, &token).await?;
                changes.lock().unwrap().insert(user, (true, Instant::now()));
                c.send_active(client_frame::Frame::Ping(Ping { nonce: 1 }))
                    .await?;
                online.insert(i, c);
            }
        }
        made += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(online);
    let mut lat = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds");
    let mut stale = 0;
    while let Some(r) = receivers.join_next().await {
        let (l, s) = r?;
        lat.add(&l).expect("same bounds");
        stale += s;
    }
    let (nodes_after, own_after) = (node_costs(admins).await, own_cost());
    let nodes_cpu = cpu_between(&nodes_before, &nodes_after);
    let delivered = lat.len();
    let ms = |q: f64| lat.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "## presence: {} watchers watching {watch} of {} actors each, {} changes/s for {:.0} s",
        o.watchers, o.actors, o.rate, elapsed
    );
    println!();
    println!("| changes made | updates delivered | updates/s | change → update p50 / p99 (ms) | stale or out of order | nodes CPU per update | bench CPU |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {made} | {delivered} | {:.0} | {:.1} / {:.1} | {stale} | {} | {:.1} s |",
        delivered as f64 / elapsed,
        ms(0.5),
        ms(0.99),
        if admins.is_empty() || delivered == 0 {
            "n/a".to_string()
        } else {
            format!("{:.0} µs", nodes_cpu * 1e6 / delivered as f64)
        },
        own_after.cpu_s - own_before.cpu_s,
    );
    Ok(())
}
