//! The admin HTTP listener (`/healthz`, `/readyz`, `/metrics`) and the names of the node's
//! Prometheus metrics. `docs/operations.md` explains each metric.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use chat_cluster::ClusterView;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub const CONNECTIONS: &str = "chat_connections";
pub const MESSAGES_IN: &str = "chat_messages_in_total";
pub const MESSAGES_OUT: &str = "chat_messages_out_total";
pub const REDIRECTS: &str = "chat_redirects_total";
pub const OUTBOX_DEPTH: &str = "chat_outbox_depth";
/// 1 while this node has a share of a move left to finish (its move marker is stored).
pub const REBALANCE_PENDING: &str = "chat_rebalance_pending";
/// Commands held until the old owners' seals are in (a receiver after a commit).
pub const REBALANCE_HELD: &str = "chat_rebalance_held_commands";
/// Committed batches not yet visible: waiting for new owners to store their moving writes.
pub const BATCHES_HELD: &str = "chat_batches_held";
pub const FORWARD_SECONDS: &str = "chat_forward_seconds";
pub const COMMIT_SECONDS: &str = "chat_commit_seconds";
/// Batches that did not commit, by `reason`: `storage_full` (below `storage.min_free_mib`, or
/// ENOSPC) or `error`. Their commands were answered with an error; nothing was stored.
pub const COMMIT_FAILURES: &str = "chat_commit_failures_total";
pub const COMMIT_FAILURE_REASONS: &[&str] = &["storage_full", "error"];
pub const FORWARDED: &str = "chat_forwarded_entries_total";
pub const FORWARD_RECEIVED: &str = "chat_forward_received_entries_total";
pub const PEER_HANDSHAKE_FAILURES: &str = "chat_peer_handshake_failures_total";
pub const ETCD_UP: &str = "chat_etcd_up";
pub const REGISTERED: &str = "chat_registered";
pub const RING_EPOCH: &str = "chat_ring_epoch";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_MAX_RSS: &str = "process_max_resident_memory_bytes";

/// CPU time this process (all its threads) has used, in seconds: utime + stime from
/// `/proc/self/stat`, which Linux reports in USER_HZ = 100 ticks per second.
pub fn process_cpu_seconds() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = s.get(s.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// Resident and peak resident memory of this process, in bytes (`/proc/self/status`).
pub fn process_memory() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |field: &str| -> Option<u64> {
        s.lines()
            .find_map(|l| l.strip_prefix(field))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((kib("VmRSS:")? * 1024, kib("VmHWM:")? * 1024))
}

/// The process-wide Prometheus recorder (installed once).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(COMMIT_SECONDS.into()),
                    &[
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                        0.25, 0.5, 1.0, 2.5,
                    ],
                )
                .expect("valid buckets")
                .set_buckets_for_metric(
                    Matcher::Full(FORWARD_SECONDS.into()),
                    &[
                        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ],
                )
                .expect("valid buckets")
                .install_recorder()
                .expect("the only metrics recorder of the process")
        })
        .clone()
}

/// The outcomes `chat_forwarded_entries_total{result}` counts.
pub const FORWARD_RESULTS: &[&str] = &["stored", "invalid", "not_owner", "failed", "given_up"];

/// Registers every series at zero, so that each documented metric is on `/metrics` from the
/// start: an alert on `absent(...)` or a rate over a counter that has not moved yet must see 0,
/// not "no data". `standalone`: no etcd, so the cluster gauges stay out.
pub fn register_all(standalone: bool) {
    for c in [
        MESSAGES_IN,
        MESSAGES_OUT,
        REDIRECTS,
        FORWARD_RECEIVED,
        PEER_HANDSHAKE_FAILURES,
    ] {
        metrics::counter!(c).increment(0);
    }
    for r in FORWARD_RESULTS {
        metrics::counter!(FORWARDED, "result" => *r).increment(0);
    }
    for r in COMMIT_FAILURE_REASONS {
        metrics::counter!(COMMIT_FAILURES, "reason" => *r).increment(0);
    }
    for g in [
        CONNECTIONS,
        OUTBOX_DEPTH,
        REBALANCE_PENDING,
        REBALANCE_HELD,
        BATCHES_HELD,
        RING_EPOCH,
    ] {
        metrics::gauge!(g).increment(0.0);
    }
    if !standalone {
        metrics::gauge!(ETCD_UP).increment(0.0);
        metrics::gauge!(REGISTERED).increment(0.0);
    }
    for h in [COMMIT_SECONDS, FORWARD_SECONDS] {
        // Registers the series; a histogram with no sample renders with zero counts.
        let _ = metrics::histogram!(h);
    }
}

/// What `/readyz` looks at.
pub struct Health {
    /// `None` for a standalone node (nothing to register).
    pub registered: Option<watch::Receiver<bool>>,
    pub view: watch::Receiver<ClusterView>,
    pub shutting_down: AtomicBool,
    pub metrics: PrometheusHandle,
}

impl Health {
    /// Ready = storage open (the node exists), registered, ring loaded, not draining.
    fn problems(&self) -> Vec<&'static str> {
        let mut p = Vec::new();
        if self.shutting_down.load(Ordering::Relaxed) {
            p.push("shutting down");
        }
        if let Some(r) = &self.registered {
            if !*r.borrow() {
                p.push("not registered in etcd");
            }
        }
        if self.view.borrow().ring.is_none() {
            p.push("no ring (run `chatctl cluster init`)");
        }
        p
    }
}

pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    // The recorder keeps histogram samples until upkeep folds them in: run it between scrapes.
    let handle = health.metrics.clone();
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .with_state(health);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "admin listener failed");
    }
    upkeep.abort();
}

async fn readyz(State(h): State<Arc<Health>>) -> (StatusCode, String) {
    let p = h.problems();
    if p.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", p.join("; ")),
        )
    }
}

async fn render(State(h): State<Arc<Health>>) -> String {
    let (up, epoch) = {
        let v = h.view.borrow();
        (v.etcd_up, v.epoch())
    };
    metrics::gauge!(RING_EPOCH).set(epoch as f64);
    // A standalone node has no etcd: neither gauge would mean anything.
    if let Some(r) = &h.registered {
        metrics::gauge!(ETCD_UP).set(if up { 1.0 } else { 0.0 });
        metrics::gauge!(REGISTERED).set(if *r.borrow() { 1.0 } else { 0.0 });
    }
    // Read at scrape time, so that a load generator can tell the node's cost from its own.
    if let Some(cpu) = process_cpu_seconds() {
        metrics::gauge!(PROCESS_CPU).set(cpu);
    }
    if let Some((rss, max)) = process_memory() {
        metrics::gauge!(PROCESS_RSS).set(rss as f64);
        metrics::gauge!(PROCESS_MAX_RSS).set(max as f64);
    }
    h.metrics.render()
}
