//! Keys and values of the cluster's etcd state, and the view a process keeps of it.

use std::collections::BTreeMap;
use std::sync::Arc;

use chat_ring::transition::Transition;
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
    /// Base URL of the client HTTP listener (the embedded blob store's media routes); empty
    /// for a node of an older version.
    #[serde(default)]
    pub http_url: String,
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
    /// Copies of every key: the owner's and `replication_factor - 1` followers'
    /// (`docs/replication.md`). Absent in documents written before replication: one copy.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub replication_factor: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

impl RingVersion {
    pub fn build(&self) -> Result<Ring, ClusterError> {
        Ok(
            Ring::new(self.epoch, &self.members, self.vnodes_per_weight)?
                .with_replication(self.replication_factor)?,
        )
    }
}

/// The `ring` key. Only `current` exists until online rebalancing adds the version being moved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingDoc {
    pub current: RingVersion,
    /// The ring being moved to, while a move is in flight (BRIEF §5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<NextRing>,
    /// The ring before the last committed move. A committed move still has work after the
    /// commit (old owners seal and drop, new owners wait for the seals); the next move may
    /// start only once every node with a share in it has finished (`Progress::finished`),
    /// since nodes follow one move at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<RingVersion>,
}

impl RingDoc {
    /// The order of ring documents: a move in flight is newer than the ring it started from,
    /// and its commit or abort (which write a current ring of the next's epoch) newer still.
    /// A watcher ignores documents older than the one it has.
    pub fn version(&self) -> (u64, u64) {
        (
            self.current.epoch,
            self.next.as_ref().map_or(0, |n| n.ring.epoch),
        )
    }

    /// The last committed move (previous → current), built; `None` if there is none on record.
    pub fn last_move(&self) -> Result<Option<Transition>, ClusterError> {
        let Some(prev) = &self.previous else {
            return Ok(None);
        };
        let t = Transition::new(prev.build()?, self.current.build()?)
            .map_err(|e| ClusterError::Move(e.to_string()))?;
        Ok(Some(t))
    }

    /// The move in flight, built.
    pub fn transition(&self) -> Result<Option<Transition>, ClusterError> {
        let Some(next) = &self.next else {
            return Ok(None);
        };
        let t = Transition::new(self.current.build()?, next.ring.build()?)
            .map_err(|e| ClusterError::Move(e.to_string()))?;
        Ok(Some(t))
    }
}

/// A ring being moved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextRing {
    pub ring: RingVersion,
    pub phase: Phase,
    /// What the operator asked for, for status displays: "add n4" or "remove n2".
    pub change: String,
    pub started_ms: i64,
}

/// Where a move is. It begins in `Copying` (nodes acknowledge the next ring, dual-write moving
/// keys and copy their backlog); it ends with one transaction that either makes the next ring
/// current (commit) or drops it (abort), so there is no phase after this one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Copying,
}

impl RingVersion {
    pub fn of(ring: &Ring) -> RingVersion {
        RingVersion {
            epoch: ring.epoch(),
            vnodes_per_weight: ring.vnodes_per_weight(),
            members: ring.member_list(),
            replication_factor: ring.replication_factor(),
        }
    }
}

/// What a process knows of the cluster: the last ring and nodes it read from etcd.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub ring: Option<Arc<Ring>>,
    /// The move in flight, if any (its `from` is `ring`).
    pub moving: Option<Arc<Transition>>,
    /// `RingDoc::version` of the document `ring` and `moving` came from.
    pub ring_version: (u64, u64),
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
            ring_version: (ring.epoch(), 0),
            ring: Some(Arc::new(ring)),
            moving: None,
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

    /// Applies one key of the prefix (a put with `Some(value)`, a delete with `None`); whether
    /// the ring, the move or the nodes changed (progress reports and a node putting the same
    /// registration again change nothing anyone routes by).
    pub(crate) fn apply(
        &mut self,
        prefix: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<bool, ClusterError> {
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
                    // Epochs only grow: a document older than the one held is ignored.
                    let newer = doc.version() > self.ring_version;
                    if self.ring.is_none() || newer {
                        let moving = doc.transition()?.map(Arc::new);
                        self.ring = Some(Arc::new(doc.current.build()?));
                        self.moving = moving;
                        self.ring_version = doc.version();
                        return Ok(true);
                    }
                }
                // Deleting the ring is not an operation the cluster has; keep serving with it.
                None => tracing::warn!(%key, "the ring key was deleted; keeping the last ring"),
            }
        } else if let Some(id) = key.strip_prefix(&nodes_prefix(prefix)) {
            match value {
                Some(v) => {
                    let info: NodeInfo = json(key, v)?;
                    let same = self.nodes.get(id) == Some(&info);
                    self.nodes.insert(id.to_string(), info);
                    return Ok(!same);
                }
                None => return Ok(self.nodes.remove(id).is_some()),
            }
        }
        Ok(false)
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
                members: ids.iter().map(|id| Member::new(*id, 1)).collect(),
                replication_factor: 1,
            },
            next: None,
            previous: None,
        })
        .unwrap()
    }

    #[test]
    fn ring_epochs_only_grow_and_nodes_come_and_go() {
        let p = "/c/";
        let mut v = ClusterView::default();
        assert!(v.apply(p, "/c/ring", Some(&doc(2, &["a", "b"]))).unwrap());
        assert_eq!(v.epoch(), 2);
        assert!(
            !v.apply(p, "/c/ring", Some(&doc(2, &["a", "b"]))).unwrap(),
            "the same ring"
        );
        assert!(!v.apply(p, "/c/ring", Some(&doc(1, &["a"]))).unwrap());
        assert_eq!(v.epoch(), 2, "an older ring is ignored");
        assert!(!v.apply(p, "/c/ring", None).unwrap());
        assert_eq!(v.epoch(), 2, "a deleted ring key keeps the last ring");
        let info = NodeInfo {
            id: "a".into(),
            client_url: "ws://x".into(),
            quic_addr: "127.0.0.1:1".into(),
            admin_url: "http://x".into(),
            http_url: String::new(),
            weight: 1,
            version: "0".into(),
        };
        let put = serde_json::to_vec(&info).unwrap();
        assert!(v.apply(p, "/c/nodes/a", Some(&put)).unwrap());
        assert_eq!(v.node("a"), Some(&info));
        assert!(
            !v.apply(p, "/c/nodes/a", Some(&put)).unwrap(),
            "registered again, the same"
        );
        assert!(v.apply(p, "/c/nodes/a", None).unwrap());
        assert!(v.node("a").is_none());
        assert!(v.apply(p, "/c/ring", Some(b"{")).is_err());
        assert!(
            !v.apply(p, "/c/rebalance/3/a", Some(b"{}")).unwrap(),
            "progress routes nothing"
        );
    }

    #[test]
    fn the_replication_factor_is_stored_only_when_above_one_and_builds_the_ring() {
        let one: RingDoc = serde_json::from_slice(&doc(1, &["a", "b", "c"])).unwrap();
        assert_eq!(
            one.current.replication_factor, 1,
            "older documents: one copy"
        );
        let json = serde_json::to_string(&one).unwrap();
        assert!(!json.contains("replication"), "{json}");
        let mut two = one.current.clone();
        two.replication_factor = 2;
        let ring = two.build().unwrap();
        assert_eq!(ring.copies(), 2);
        assert_eq!(RingVersion::of(&ring), two, "a ring and its document agree");
        let back: RingVersion =
            serde_json::from_str(&serde_json::to_string(&two).unwrap()).unwrap();
        assert_eq!(back, two);
        two.replication_factor = 0;
        assert!(two.build().is_err(), "no copies at all is refused");
    }

    #[test]
    fn a_move_is_newer_than_its_start_and_older_than_its_end() {
        let p = "/c/";
        let version = |epoch, ids: &[&str]| -> RingVersion {
            serde_json::from_slice::<RingDoc>(&doc(epoch, ids))
                .unwrap()
                .current
        };
        let put = |v: &mut ClusterView, d: &RingDoc| {
            v.apply(p, "/c/ring", Some(&serde_json::to_vec(d).unwrap()))
                .unwrap()
        };
        let start = RingDoc {
            current: version(1, &["a", "b"]),
            next: None,
            previous: None,
        };
        let moving = RingDoc {
            current: version(1, &["a", "b"]),
            next: Some(NextRing {
                ring: version(2, &["a", "b", "c"]),
                phase: Phase::Copying,
                change: "add c".into(),
                started_ms: 0,
            }),
            previous: None,
        };
        let committed = RingDoc {
            current: version(2, &["a", "b", "c"]),
            next: None,
            previous: Some(version(1, &["a", "b"])),
        };
        let mut v = ClusterView::default();
        put(&mut v, &start);
        put(&mut v, &moving);
        let t = v.moving.clone().expect("the move is seen");
        assert_eq!((t.from().epoch(), t.to().epoch()), (1, 2));
        assert_eq!(
            v.epoch(),
            1,
            "sessions stay on the current ring during a move"
        );
        // A late copy of the document before the move does not undo it.
        put(&mut v, &start);
        assert!(v.moving.is_some());
        put(&mut v, &committed);
        assert!(v.moving.is_none());
        assert_eq!(v.epoch(), 2);
        put(&mut v, &moving);
        assert_eq!(v.epoch(), 2, "the move, once ended, is not seen again");
        assert!(v.moving.is_none());
        // The JSON of a ring without a move has no `next` at all (what etcdctl shows).
        let json = serde_json::to_string(&start).unwrap();
        assert!(!json.contains("next"), "{json}");
    }
}
