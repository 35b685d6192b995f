//! Talking to etcd: connecting, registering a node under a lease, watching the cluster, and the
//! compare-and-swap that creates the first ring.

use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use tokio::sync::{oneshot, watch as tokio_watch};

use crate::layout::{node_key, nodes_prefix, ring_key, ClusterView, NodeInfo, RingDoc};
use crate::ClusterError;
use chat_retry::Backoff;

/// The default etcd client URL (a local etcd), for every process and tool.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";
/// The default prefix of the cluster's etcd keys.
pub const DEFAULT_PREFIX: &str = "/chat/";

/// Where the cluster's state lives.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    /// Every key of the cluster starts with it (for example `/chat/`).
    pub prefix: String,
}

/// How long one etcd request may take before it counts as a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub async fn connect(cfg: &EtcdConfig) -> Result<Client, ClusterError> {
    // HTTP/2 keepalives notice a silent etcd (paused, partitioned) on long-lived watch and lease
    // streams, which would otherwise wait forever. Not more often than every 5 s: etcd's
    // --grpc-keepalive-min-time (default 5 s) answers more frequent pings on an otherwise quiet
    // connection (an idle watch) with GOAWAY, which broke the watch every few seconds.
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_keep_alive_while_idle(true);
    timed(Client::connect(&cfg.endpoints, Some(opts))).await
}

pub(crate) async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ClusterError> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ClusterError::Timeout(REQUEST_TIMEOUT)),
    }
}

pub async fn read_ring(client: &mut Client, prefix: &str) -> Result<Option<RingDoc>, ClusterError> {
    let key = ring_key(prefix);
    let resp = timed(client.get(key.clone(), None)).await?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|err| ClusterError::Json { key, err }),
    }
}

pub async fn list_nodes(client: &mut Client, prefix: &str) -> Result<Vec<NodeInfo>, ClusterError> {
    let resp =
        timed(client.get(nodes_prefix(prefix), Some(GetOptions::new().with_prefix()))).await?;
    resp.kvs()
        .iter()
        .map(|kv| {
            serde_json::from_slice(kv.value()).map_err(|err| ClusterError::Json {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                err,
            })
        })
        .collect()
}

/// Creates the first ring; refused (with the existing epoch) if a ring already exists.
pub async fn init_ring(
    client: &mut Client,
    prefix: &str,
    doc: &RingDoc,
) -> Result<(), ClusterError> {
    doc.current.build()?;
    let key = ring_key(prefix);
    let value = serde_json::to_vec_pretty(doc).expect("ring serializes");
    let txn = Txn::new()
        .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(key.clone(), value, None)]);
    let resp = timed(client.txn(txn)).await?;
    if resp.succeeded() {
        return Ok(());
    }
    let existing = read_ring(client, prefix).await?;
    Err(ClusterError::RingExists(
        existing.map_or(0, |d| d.current.epoch),
    ))
}

/// Watches the cluster's keys. The returned view is updated on every change; while etcd is
/// unreachable it keeps the last state with `etcd_up = false`, and catches up when etcd returns.
pub fn watch(cfg: EtcdConfig) -> tokio_watch::Receiver<ClusterView> {
    let (tx, rx) = tokio_watch::channel(ClusterView::default());
    tokio::spawn(async move {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let err = watch_once(&cfg, &tx, &mut backoff).await;
            if tx.is_closed() {
                return;
            }
            tx.send_if_modified(|v| std::mem::replace(&mut v.etcd_up, false));
            let wait = backoff.fail();
            tracing::warn!(error = %err, retry_in = ?wait, "etcd watch lost");
            tokio::time::sleep(wait).await;
        }
    });
    rx
}

/// One watch session: read everything, then follow changes until an error.
async fn watch_once(
    cfg: &EtcdConfig,
    tx: &tokio_watch::Sender<ClusterView>,
    backoff: &mut Backoff,
) -> ClusterError {
    let run = async {
        let mut client = connect(cfg).await?;
        let resp =
            timed(client.get(cfg.prefix.clone(), Some(GetOptions::new().with_prefix()))).await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        // Rebuild from scratch (nodes that vanished while we were away must go), but never let
        // the ring go back: `apply` ignores older epochs, so start from the ring we hold.
        let mut view = ClusterView {
            ring: tx.borrow().ring.clone(),
            ..ClusterView::default()
        };
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let Err(e) = view.apply(&cfg.prefix, &key, Some(kv.value())) {
                tracing::error!(error = %e, "ignoring a bad cluster key");
            }
        }
        view.etcd_up = true;
        view.revision = revision;
        tx.send_replace(view);
        backoff.reset();
        tracing::info!(revision, "cluster state loaded from etcd; watching");
        let mut stream = client
            .watch(
                cfg.prefix.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                return Err(ClusterError::Etcd(etcd_client::Error::WatchError(format!(
                    "watch canceled: {}",
                    resp.cancel_reason()
                ))));
            }
            let rev = resp.header().map_or(0, |h| h.revision());
            // Watchers (every client session among them) wake only when what they route by
            // changed, not on every progress report of a move.
            tx.send_if_modified(|view| {
                let mut changed = false;
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key());
                    let value = match ev.event_type() {
                        etcd_client::EventType::Put => Some(kv.value()),
                        etcd_client::EventType::Delete => None,
                    };
                    match view.apply(&cfg.prefix, &key, value) {
                        Ok(c) => changed |= c,
                        Err(e) => tracing::error!(error = %e, "ignoring a bad cluster key"),
                    }
                }
                view.revision = view.revision.max(rev);
                changed
            });
        }
        Err(ClusterError::Etcd(etcd_client::Error::WatchError(
            "watch stream ended".into(),
        )))
    };
    match run.await {
        Ok(()) => unreachable!(),
        Err(e) => e,
    }
}

/// A node's registration, kept alive in the background.
pub struct Registration {
    /// True while the registration key is known to be in etcd under a live lease.
    pub registered: tokio_watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Registration {
    /// Removes the registration (revokes the lease) and stops keeping it alive.
    pub async fn deregister(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, &mut self.task).await;
    }
}

/// Registers `info` under a lease of `ttl` and keeps it alive. When the lease is lost (etcd was
/// away longer than the TTL, or the lease was revoked) it registers again with a new lease.
pub fn register(cfg: EtcdConfig, info: NodeInfo, ttl: Duration) -> Registration {
    let (reg_tx, reg_rx) = tokio_watch::channel(false);
    let (stop_tx, mut stop_rx) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let ttl_secs = ttl.as_secs().max(2) as i64;
        loop {
            // The lease in use, for the revoke on shutdown (shared with the session future).
            let current = std::sync::Mutex::new(None);
            let session = async {
                let mut client = connect(&cfg).await?;
                let lease = timed(client.lease_grant(ttl_secs, None)).await?;
                *current.lock().unwrap() = Some((lease.id(), client.clone()));
                let value = serde_json::to_vec(&info).expect("node info serializes");
                timed(client.put(
                    node_key(&cfg.prefix, &info.id),
                    value,
                    Some(PutOptions::new().with_lease(lease.id())),
                ))
                .await?;
                reg_tx.send_replace(true);
                backoff.reset();
                tracing::info!(node = %info.id, lease = lease.id(), "registered in etcd");
                let (mut keeper, mut stream) = timed(client.lease_keep_alive(lease.id())).await?;
                let mut tick = tokio::time::interval(Duration::from_secs(ttl_secs as u64) / 3);
                loop {
                    tick.tick().await;
                    keeper.keep_alive().await?;
                    let resp = timed(stream.message()).await?;
                    match resp {
                        Some(r) if r.ttl() > 0 => {}
                        _ => {
                            return Err::<(), _>(ClusterError::Etcd(
                                etcd_client::Error::LeaseKeepAliveError("lease expired".into()),
                            ))
                        }
                    }
                }
            };
            let wait = tokio::select! {
                res = session => {
                    reg_tx.send_replace(false);
                    let wait = backoff.fail();
                    if let Err(e) = res {
                        tracing::warn!(node = %info.id, error = %e, retry_in = ?wait, "registration lost");
                    }
                    wait
                }
                _ = &mut stop_rx => {
                    let held = current.lock().unwrap().take();
                    if let Some((id, mut client)) = held {
                        match timed(client.lease_revoke(id)).await {
                            Ok(_) => tracing::info!(node = %info.id, "deregistered from etcd"),
                            Err(e) => tracing::warn!(error = %e, "could not deregister; the lease will expire"),
                        }
                    }
                    reg_tx.send_replace(false);
                    return;
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = &mut stop_rx => return,
            }
        }
    });
    Registration {
        registered: reg_rx,
        stop: Some(stop_tx),
        task,
    }
}
