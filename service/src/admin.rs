//! The admin HTTP listener every process serves: `/healthz` (the process answers), `/readyz`
//! (what the process says it is waiting for), `/metrics` (Prometheus text, with the process's
//! CPU and memory read at scrape time).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_MAX_RSS: &str = "process_max_resident_memory_bytes";

/// What a process tells its admin listener.
pub trait Status: Send + Sync + 'static {
    /// Why the process is not ready; empty when it is.
    fn not_ready(&self) -> Vec<String>;
    /// Sets the gauges that are read rather than kept up to date (called before each scrape).
    fn before_scrape(&self) {}
}

/// The process-wide Prometheus recorder, installed on the first call with `buckets` (histogram
/// name, bucket bounds); later calls get the same handle (tests run several nodes in one process).
pub fn recorder(buckets: &[(&str, &[f64])]) -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let mut b = PrometheusBuilder::new();
            for (name, bounds) in buckets {
                b = b
                    .set_buckets_for_metric(Matcher::Full((*name).into()), bounds)
                    .expect("valid buckets");
            }
            b.install_recorder()
                .expect("the only metrics recorder of the process")
        })
        .clone()
}

/// `/healthz`, `/readyz` and `/metrics` for `status`; merge it with a process's own routes, or
/// serve it alone with [`serve`].
pub fn routes<S: Status>(status: Arc<S>, metrics: PrometheusHandle) -> Router {
    let state = Arc::new(Admin { status, metrics });
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(render::<S>))
        .with_state(state)
}

/// Serves `app` until `shutdown`, folding histogram samples in between scrapes.
pub async fn serve<L>(
    listener: L,
    app: Router,
    metrics: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    // The recorder keeps histogram samples until upkeep folds them in: run it between scrapes.
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            metrics.run_upkeep();
        }
    });
    let r = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    upkeep.abort();
    r
}

struct Admin<S> {
    status: Arc<S>,
    metrics: PrometheusHandle,
}

async fn readyz<S: Status>(State(a): State<Arc<Admin<S>>>) -> (StatusCode, String) {
    let p = a.status.not_ready();
    if p.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", p.join("; ")),
        )
    }
}

async fn render<S: Status>(State(a): State<Arc<Admin<S>>>) -> String {
    a.status.before_scrape();
    // Read at scrape time, so that a load generator can tell a process's cost from its own.
    if let Some(cpu) = process_cpu_seconds() {
        metrics::gauge!(PROCESS_CPU).set(cpu);
    }
    if let Some((rss, max)) = process_memory() {
        metrics::gauge!(PROCESS_RSS).set(rss as f64);
        metrics::gauge!(PROCESS_MAX_RSS).set(max as f64);
    }
    a.metrics.render()
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let start = process_cpu_seconds().expect("linux /proc");
        // Work until the counter moves (it counts 10 ms ticks), bounded in time.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x = 0u64;
        while process_cpu_seconds().expect("linux /proc") <= start {
            assert!(std::time::Instant::now() < deadline, "CPU time never grew");
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let (rss, max) = process_memory().expect("linux /proc");
        assert!(rss > 0 && max >= rss);
    }
}
