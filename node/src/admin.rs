//! The admin HTTP listener (`/healthz`, `/readyz`, `/metrics`) and the names of the node's
//! Prometheus metrics. `docs/operations.md` explains each metric.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chat_cluster::ClusterView;
use metrics_exporter_prometheus::PrometheusHandle;
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
/// Committed batches not yet visible: waiting for new owners to store their moving writes, or
/// followers to store their copies.
pub const BATCHES_HELD: &str = "chat_batches_held";
/// Items queued on the ordered stream to another node (a follower's replication lag, a new
/// owner's backlog during a move), by `node`.
pub const STREAM_QUEUED: &str = "chat_stream_queued_items";
/// 1 while the follower `node` holds a full copy of what it follows for this node (filled and
/// following); 0 while it is being filled. Only followers of this node's keys are listed.
pub const REPLICA_IN_SYNC: &str = "chat_replica_in_sync";
/// Fills of a follower started (at start, or after it lost its store), by `node`.
pub const REPLICA_FILLS: &str = "chat_replica_fills_total";
pub const FORWARD_SECONDS: &str = "chat_forward_seconds";
pub const COMMIT_SECONDS: &str = "chat_commit_seconds";
/// Batches that did not commit, by `reason`: `storage_full` (below `storage.min_free_mib`, or
/// ENOSPC) or `error`. Their commands were answered with an error; nothing was stored.
pub const COMMIT_FAILURES: &str = "chat_commit_failures_total";
pub const COMMIT_FAILURE_REASONS: &[&str] = &["storage_full", "error"];
/// 1 while RocksDB's compactions are paused because the disk is nearly full
/// (`storage.compaction_headroom_mib`).
pub const COMPACTIONS_PAUSED: &str = "chat_storage_compactions_paused";
pub const FORWARDED: &str = "chat_forwarded_entries_total";
pub const FORWARD_RECEIVED: &str = "chat_forward_received_entries_total";
pub const PEER_HANDSHAKE_FAILURES: &str = "chat_peer_handshake_failures_total";
pub const ETCD_UP: &str = "chat_etcd_up";
pub const REGISTERED: &str = "chat_registered";
pub const RING_EPOCH: &str = "chat_ring_epoch";
/// Requests refused by a rate limit (`crate::rate`), by `limit`.
pub const RATE_LIMITED: &str = "chat_rate_limited_total";
/// Ephemeral events dropped on purpose, by `kind` (`typing`) and `reason`: `device_queue_full`
/// (a device not reading fast enough), `peer_queue_full` (the link to the recipient's node is
/// backed up), `peer_failed` (the peer did not take them in time), and for presence
/// `writer_busy` (a last seen not stored because the writer's queue was full).
pub const SHED: &str = "chat_shed_total";
pub const SHED_REASONS: &[&str] = &[
    "device_queue_full",
    "peer_queue_full",
    "peer_failed",
    "overload",
];
/// Kinds of traffic that may be shed, first to go first.
pub const SHED_KINDS: &[&str] = &["typing", "presence", "read_state"];
/// The overload level (`crate::overload::Level`): 0 normal, 1 typing shed, 2 presence updates
/// shed too, 3 acks and reads held back and merged as well.
pub const OVERLOAD_LEVEL: &str = "chat_overload_level";
/// Acks and reads held back under overload and merged into a later one.
pub const ACKS_DEFERRED: &str = "chat_acks_deferred_total";
/// Sends refused with OVERLOADED because the writer's queue stayed full.
pub const SENDS_REFUSED: &str = "chat_sends_refused_total";
/// Users going online or offline on this node (their home), by `to`.
pub const PRESENCE_CHANGES: &str = "chat_presence_changes_total";
/// Ephemeral events handed to connected devices on this node, by `kind`.
pub const EPHEMERAL_DELIVERED: &str = "chat_ephemeral_delivered_total";
/// Group messages stored on their group's home node (one per send, retries not counted).
pub const GROUP_SENDS: &str = "chat_group_sends_total";
/// Member copies of group messages made on the group's home node (the fan-out).
pub const GROUP_COPIES: &str = "chat_group_copies_total";
/// Group calls made by this node's users, by `route`: `local` (the group's home is here) or
/// `remote` (sent over QUIC), and by `result`: `ok`, `refused` (an error for the user) or
/// `unavailable` (the group's node did not answer in time).
pub const GROUP_CALLS: &str = "chat_group_calls_total";
/// Media requests answered (WebSocket and HTTP API), by `kind`: `slot` (an upload slot),
/// `attachment` (a message naming an upload, checked), `download` (a download URL); and by
/// `result`: `ok` or `refused` (an error for the user).
pub const MEDIA_REQUESTS: &str = "chat_media_requests_total";
/// Blobs the sweep deleted (past the retention and the attach window).
pub const MEDIA_SWEPT: &str = "chat_media_blobs_deleted_total";
/// The process-wide Prometheus recorder (installed once), with the node's histogram buckets.
pub fn metrics_handle() -> PrometheusHandle {
    chat_service::admin::recorder(&[
        (
            COMMIT_SECONDS,
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5,
            ],
        ),
        (
            FORWARD_SECONDS,
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        ),
    ])
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
        ACKS_DEFERRED,
        SENDS_REFUSED,
        GROUP_SENDS,
        GROUP_COPIES,
        MEDIA_SWEPT,
    ] {
        metrics::counter!(c).increment(0);
    }
    for r in FORWARD_RESULTS {
        metrics::counter!(FORWARDED, "result" => *r).increment(0);
    }
    for l in crate::rate::Limit::ALL {
        metrics::counter!(RATE_LIMITED, "limit" => l.name()).increment(0);
    }
    for k in SHED_KINDS {
        for r in SHED_REASONS {
            metrics::counter!(SHED, "kind" => *k, "reason" => *r).increment(0);
        }
    }
    metrics::counter!(SHED, "kind" => "presence", "reason" => "writer_busy").increment(0);
    metrics::counter!(EPHEMERAL_DELIVERED, "kind" => "typing").increment(0);
    for to in ["online", "offline"] {
        metrics::counter!(PRESENCE_CHANGES, "to" => to).increment(0);
    }
    for route in ["local", "remote"] {
        for result in ["ok", "refused", "unavailable"] {
            metrics::counter!(GROUP_CALLS, "route" => route, "result" => result).increment(0);
        }
    }
    for kind in ["slot", "attachment", "download"] {
        for result in ["ok", "refused"] {
            metrics::counter!(MEDIA_REQUESTS, "kind" => kind, "result" => result).increment(0);
        }
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
        COMPACTIONS_PAUSED,
        OVERLOAD_LEVEL,
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

impl chat_service::admin::Status for Health {
    /// Ready = storage open (the node exists), registered, ring loaded, not draining.
    fn not_ready(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.shutting_down.load(Ordering::Relaxed) {
            p.push("shutting down".to_string());
        }
        if let Some(r) = &self.registered {
            if !*r.borrow() {
                p.push("not registered in etcd".to_string());
            }
        }
        if self.view.borrow().ring.is_none() {
            p.push("no ring (run `chatctl cluster init`)".to_string());
        }
        p
    }

    fn before_scrape(&self) {
        let (up, epoch) = {
            let v = self.view.borrow();
            (v.etcd_up, v.epoch())
        };
        metrics::gauge!(RING_EPOCH).set(epoch as f64);
        // A standalone node has no etcd: neither gauge would mean anything.
        if let Some(r) = &self.registered {
            metrics::gauge!(ETCD_UP).set(if up { 1.0 } else { 0.0 });
            metrics::gauge!(REGISTERED).set(if *r.borrow() { 1.0 } else { 0.0 });
        }
    }
}

/// Serves `/healthz`, `/readyz` and `/metrics` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let metrics = health.metrics.clone();
    let app = chat_service::admin::routes(health, metrics.clone());
    if let Err(e) = chat_service::admin::serve(listener, app, metrics, shutdown).await {
        tracing::error!(error = %e, "admin listener failed");
    }
}
