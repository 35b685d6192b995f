//! Cluster state in etcd, shared by node, router and `chatctl`.
//!
//! Layout under one prefix per cluster (default `/chat/`), JSON values readable with `etcdctl`:
//! - `<prefix>nodes/<id>`: a [`NodeInfo`], bound to a lease the node keeps alive;
//! - `<prefix>ring`: a [`RingDoc`] (the current ring and, during a move, the next one), written
//!   only by compare-and-swap transactions;
//! - `<prefix>rebalance/<epoch>/<node>`: each node's [`rebalance::Progress`] on the move in flight.
//!
//! [`watch`] keeps a [`ClusterView`] up to date from a watch on the whole prefix. When etcd is
//! unreachable the view keeps the last ring and nodes it saw (with `etcd_up = false`) and the
//! watcher reconnects with backoff; [`register`] likewise re-creates a lost registration.

mod etcd;
mod layout;
pub mod rebalance;

pub use etcd::{
    connect, init_ring, list_nodes, read_ring, register, watch, EtcdConfig, Registration,
    DEFAULT_ENDPOINT as DEFAULT_ETCD_ENDPOINT, DEFAULT_PREFIX,
};
pub use etcd_client;
pub use layout::{
    node_key, nodes_prefix, ring_key, ClusterView, NextRing, NodeInfo, Phase, RingDoc, RingVersion,
};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd: no answer within {0:?}")]
    Timeout(std::time::Duration),
    #[error("bad JSON at {key}: {err}")]
    Json { key: String, err: serde_json::Error },
    #[error("invalid ring: {0}")]
    Ring(#[from] chat_ring::RingError),
    #[error("the ring already exists (epoch {0}); refusing to overwrite it")]
    RingExists(u64),
    #[error("no node is registered under {0}")]
    NoNodes(String),
    #[error("a move to epoch {0} ({1}) is in flight; wait for it or abort it")]
    MoveInFlight(u64, String),
    #[error("no move is in flight")]
    NoMove,
    #[error("the move to epoch {epoch} committed but {} not finished their share yet (seal, drop); a new move waits for them (`chatctl rebalance status`)", .nodes.join(", ") + if .nodes.len() == 1 { " has" } else { " have" })]
    PreviousMoveUnfinished { epoch: u64, nodes: Vec<String> },
    #[error("{0}")]
    Move(String),
}
