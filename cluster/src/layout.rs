//! Keys and values of the cluster's etcd state, and the view a process keeps of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use chat_ring::{Member, Ring};
use serde::{Deserialize, Serialize};

use crate::ClusterError;

pub fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}nodes/")
}

pub fn node_key(prefix: &str, id: &str) -> String {
    format!("{prefix}nodes/{id}")
}

pub fn ring_key(prefix: &str) -> String {
    format!("{prefix}ring")
}

/// A node's registration: where clients, peers and operators reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: String,
    /// WebSocket URL clients connect to (`ws://host:port`).
    pub client_url: String,
    /// `host:port` of the node's QUIC endpoint for node-to-node traffic.
    pub quic_addr: String,
    /// Base URL of `/healthz`, `/readyz` and `/metrics`.
    pub admin_url: String,
    /// Weight the node asks for when a ring is built from the registered nodes.
    pub weight: u32,
    pub version: String,
}

/// One version of the ring as stored: enough to rebuild the same [`Ring`] anywhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingVersion {
    pub epoch: u64,
    pub vnodes_per_weight: u32,
    pub members: Vec<Member>,
}

impl RingVersion {
    pub fn build(&self) -> Result<Ring, ClusterError> {
        Ok(Ring::new(
            self.epoch,
            &self.members,
            self.vnodes_per_weight,
        )?)
    }
}

/// The `ring` key. Only `current` exists until online rebalancing adds the version being moved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingDoc {
    pub current: RingVersion,
}

/// What a process knows of the cluster: the last ring and nodes it read from etcd.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub ring: Option<Arc<Ring>>,
    pub nodes: BTreeMap<String, NodeInfo>,
    /// False while etcd is unreachable; the ring and nodes are then the last ones seen.
    pub etcd_up: bool,
    /// The etcd revision the view reflects.
    pub revision: i64,
}

impl ClusterView {
    /// A fixed view: one ring, no etcd (a standalone node, or a test).
    pub fn fixed(ring: Ring, nodes: impl IntoIterator<Item = NodeInfo>) -> ClusterView {
        ClusterView {
            ring: Some(Arc::new(ring)),
            nodes: nodes.into_iter().map(|n| (n.id.clone(), n)).collect(),
            etcd_up: true,
            revision: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.ring.as_ref().map_or(0, |r| r.epoch())
    }

    /// The owner of a user or group under the current ring (`None` before the ring exists).
    pub fn owner(&self, id: &str) -> Option<&str> {
        self.ring.as_ref().map(|r| r.owner(id))
    }

    pub fn node(&self, id: &str) -> Option<&NodeInfo> {
        self.nodes.get(id)
    }

    /// Applies one key of the prefix (a put with `Some(value)`, a delete with `None`).
    pub(crate) fn apply(
        &mut self,
        prefix: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<(), ClusterError> {
        fn json<T: serde::de::DeserializeOwned>(key: &str, v: &[u8]) -> Result<T, ClusterError> {
            serde_json::from_slice(v).map_err(|err| ClusterError::Json {
                key: key.to_string(),
                err,
            })
        }
        if key == ring_key(prefix) {
            match value {
                Some(v) => {
                    let doc: RingDoc = json(key, v)?;
                    // Epochs only grow: an older ring than the one held is ignored.
                    if doc.current.epoch >= self.epoch() {
                        self.ring = Some(Arc::new(doc.current.build()?));
                    }
                }
                // Deleting the ring is not an operation the cluster has; keep serving with it.
                None => tracing::warn!(%key, "the ring key was deleted; keeping the last ring"),
            }
        } else if let Some(id) = key.strip_prefix(&nodes_prefix(prefix)) {
            match value {
                Some(v) => {
                    let info: NodeInfo = json(key, v)?;
                    self.nodes.insert(id.to_string(), info);
                }
                None => {
                    self.nodes.remove(id);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(epoch: u64, ids: &[&str]) -> Vec<u8> {
        serde_json::to_vec(&RingDoc {
            current: RingVersion {
                epoch,
                vnodes_per_weight: 16,
                members: ids
                    .iter()
                    .map(|id| Member {
                        id: id.to_string(),
                        weight: 1,
                    })
                    .collect(),
            },
        })
        .unwrap()
    }

    #[test]
    fn ring_epochs_only_grow_and_nodes_come_and_go() {
        let p = "/c/";
        let mut v = ClusterView::default();
        v.apply(p, "/c/ring", Some(&doc(2, &["a", "b"]))).unwrap();
        assert_eq!(v.epoch(), 2);
        v.apply(p, "/c/ring", Some(&doc(1, &["a"]))).unwrap();
        assert_eq!(v.epoch(), 2, "an older ring is ignored");
        v.apply(p, "/c/ring", None).unwrap();
        assert_eq!(v.epoch(), 2, "a deleted ring key keeps the last ring");
        let info = NodeInfo {
            id: "a".into(),
            client_url: "ws://x".into(),
            quic_addr: "127.0.0.1:1".into(),
            admin_url: "http://x".into(),
            weight: 1,
            version: "0".into(),
        };
        v.apply(p, "/c/nodes/a", Some(&serde_json::to_vec(&info).unwrap()))
            .unwrap();
        assert_eq!(v.node("a"), Some(&info));
        v.apply(p, "/c/nodes/a", None).unwrap();
        assert!(v.node("a").is_none());
        assert!(v.apply(p, "/c/ring", Some(b"{")).is_err());
        v.apply(p, "/c/unrelated", Some(b"x")).unwrap();
    }
}
