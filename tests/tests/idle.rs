//! Resource use is behaviour: a node with connected but quiet clients uses next to no CPU, as a
//! standalone node and as a cluster member.

use std::time::Duration;

use chat_tests::*;

/// CPU seconds (user + system, all threads) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("process stat");
    let rest = &s[s.rfind(')').expect("comm") + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime, fields 14 and 15 of stat (11 and 12 after the command name), in
    // USER_HZ = 100 ticks a second.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Connects `n` authenticated clients, then measures the node's CPU over a quiet interval.
async fn idle_cpu_share(node: &TestNode, n: usize) -> f64 {
    let mut clients = Vec::new();
    for i in 0..n {
        clients.push(node.connect(&format!("idle-{i}"), "phone").await);
    }
    // Every session has sent its welcome and read its (empty) backlog: a pong proves each
    // session's loop has run since.
    for (i, c) in clients.iter_mut().enumerate() {
        until_pong(c, i as u64).await;
    }
    // This is a measurement over an interval, not a wait for an event.
    let interval = Duration::from_secs(3);
    let (t0, c0) = (std::time::Instant::now(), cpu_seconds(node.pid()));
    tokio::time::sleep(interval).await;
    let (t1, c1) = (std::time::Instant::now(), cpu_seconds(node.pid()));
    drop(clients);
    (c1 - c0) / (t1 - t0).as_secs_f64()
}

// Before the fix every session of a standalone node spun on a closed watch channel: one idle
// connection cost a whole core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_standalone_node_with_clients_uses_next_to_no_cpu() {
    let node = TestNode::start(&[]);
    let share = idle_cpu_share(&node, 50).await;
    assert!(
        share < 0.05,
        "an idle standalone node with 50 clients used {:.0}% of a core",
        share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_node_with_clients_uses_next_to_no_cpu() {
    let c = TestCluster::start_with(&[("n1", 1)], chat_ring::DEFAULT_VNODES_PER_WEIGHT, &[]);
    let share = idle_cpu_share(c.node("n1"), 50).await;
    assert!(
        share < 0.05,
        "an idle cluster node with 50 clients used {:.0}% of a core",
        share * 100.0
    );
}
