//! Placement: which node owns a user or a group.
//!
//! Everything here is pure computation (no I/O), shared by node, router and `chatctl`, so that every
//! process on every machine gives the same answer for the same ring.
//!
//! Two promises matter for the rest of the system:
//! - [`key_hash`] is stable forever (XXH3-64 over the id's UTF-8 bytes, seed 0). Storage keys begin
//!   with it, so a ring segment is a contiguous key range on disk.
//! - [`Ring::owner`] uses the `hashring` crate with the same hasher, so the node a key maps to is the
//!   first virtual node at or after `key_hash(key)` on the circle.
//!
//! We never feed `std::hash::Hash` impls of std types to the hasher: their byte layout is not
//! promised across Rust versions. [`RingKey`] and [`VNode`] write explicit bytes instead.

pub mod range;
pub mod transition;

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};

use hashring::HashRing;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3DefaultBuilder;

/// The hasher of the ring: XXH3-64 with seed 0. Its output for a byte string is fixed by the XXH3
/// specification, so it does not change with the machine, the process or the Rust version.
pub type StableHasher = Xxh3DefaultBuilder;

/// A user or group id as the ring hashes it: its UTF-8 bytes, nothing else.
#[derive(Debug, Clone, Copy)]
pub struct RingKey<'a>(pub &'a str);

impl Hash for RingKey<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(self.0.as_bytes());
    }
}

/// The ring hash of a user or group id: its point on the circle and the first 8 bytes (big-endian)
/// of every storage key it owns.
pub fn key_hash(id: &str) -> u64 {
    StableHasher::default().hash_one(RingKey(id))
}

/// One virtual node: the `index`-th point of node `node` on the circle, hashed as `"<node>#<index>"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VNode {
    pub node: String,
    pub index: u32,
}

impl Hash for VNode {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write(format!("{}#{}", self.node, self.index).as_bytes());
    }
}

/// A member of the ring and its weight (relative share of keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    #[error("a ring needs at least one member")]
    Empty,
    #[error("member {0:?} appears twice")]
    DuplicateMember(String),
    #[error("member {0:?} has weight 0")]
    ZeroWeight(String),
    #[error("vnodes per weight must be at least 1")]
    NoVnodes,
}

/// One version of the ring: members with weights, each member placed at
/// `weight * vnodes_per_weight` points on the circle.
#[derive(Clone)]
pub struct Ring {
    epoch: u64,
    members: BTreeMap<String, u32>,
    vnodes_per_weight: u32,
    circle: HashRing<VNode, StableHasher>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("epoch", &self.epoch)
            .field("members", &self.members)
            .field("vnodes_per_weight", &self.vnodes_per_weight)
            .finish()
    }
}

/// Virtual nodes per unit of weight unless a ring says otherwise: enough that each member's share
/// is within a few percent of its ideal.
pub const DEFAULT_VNODES_PER_WEIGHT: u32 = 256;

impl Ring {
    pub fn new(epoch: u64, members: &[Member], vnodes_per_weight: u32) -> Result<Ring, RingError> {
        if members.is_empty() {
            return Err(RingError::Empty);
        }
        if vnodes_per_weight == 0 {
            return Err(RingError::NoVnodes);
        }
        let mut map = BTreeMap::new();
        for m in members {
            if m.weight == 0 {
                return Err(RingError::ZeroWeight(m.id.clone()));
            }
            if map.insert(m.id.clone(), m.weight).is_some() {
                return Err(RingError::DuplicateMember(m.id.clone()));
            }
        }
        let mut circle = HashRing::with_hasher(StableHasher::default());
        let vnodes = map
            .iter()
            .flat_map(|(id, w)| {
                (0..w * vnodes_per_weight).map(move |index| VNode {
                    node: id.clone(),
                    index,
                })
            })
            .collect();
        circle.batch_add(vnodes);
        Ok(Ring {
            epoch,
            members: map,
            vnodes_per_weight,
            circle,
        })
    }

    /// A ring of these members, each with weight 1.
    pub fn equal(epoch: u64, ids: &[&str], vnodes_per_weight: u32) -> Result<Ring, RingError> {
        let members: Vec<Member> = ids
            .iter()
            .map(|id| Member {
                id: id.to_string(),
                weight: 1,
            })
            .collect();
        Ring::new(epoch, &members, vnodes_per_weight)
    }

    /// The ring of one node that a standalone node serves: it owns every key.
    pub fn single(node: &str) -> Ring {
        Ring::new(
            0,
            &[Member {
                id: node.to_string(),
                weight: 1,
            }],
            1,
        )
        .expect("a one-member ring is valid")
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn members(&self) -> impl Iterator<Item = (&str, u32)> {
        self.members.iter().map(|(id, w)| (id.as_str(), *w))
    }

    pub fn vnodes_per_weight(&self) -> u32 {
        self.vnodes_per_weight
    }

    /// The members as a list (sorted by id).
    pub fn member_list(&self) -> Vec<Member> {
        self.members()
            .map(|(id, weight)| Member {
                id: id.to_string(),
                weight,
            })
            .collect()
    }

    /// Every virtual node's point on the circle with its node, sorted by point: the same points
    /// `owner` searches (a key belongs to the first point at or after its hash, wrapping).
    pub fn points(&self) -> Vec<(u64, &str)> {
        let hasher = StableHasher::default();
        let mut points: Vec<(u64, &str)> = self
            .members
            .iter()
            .flat_map(|(id, w)| {
                (0..w * self.vnodes_per_weight).map(|index| {
                    let v = VNode {
                        node: id.clone(),
                        index,
                    };
                    (hasher.hash_one(&v), id.as_str())
                })
            })
            .collect();
        points.sort_unstable();
        points
    }

    /// The node that owns `id` (a user or group id).
    pub fn owner(&self, id: &str) -> &str {
        &self
            .circle
            .get(&RingKey(id))
            .expect("a ring is never empty")
            .node
    }
}

/// Placement golden vectors: who owns what in a fixed weighted ring. Computed independently
/// (Python: XXH3-64 of "<node>#<index>" for every vnode, sorted; a key belongs to the first vnode
/// at or after XXH3-64 of its id, wrapping), so they pin the placement rule itself, not just
/// whatever the `hashring` crate does today. Shared with the integration tests, which check that
/// node, router and chatctl give the same answers.
pub mod golden {
    use super::{Member, Ring};

    /// Members (id, weight) of the golden ring.
    pub const MEMBERS: [(&str, u32); 3] = [("node-a", 1), ("node-b", 1), ("node-c", 2)];
    pub const VNODES_PER_WEIGHT: u32 = 16;

    pub const PLACEMENT: &[(&str, &str)] = &[
        ("alice", "node-c"),
        ("bob", "node-b"),
        ("carol", "node-b"),
        ("dave", "node-c"),
        ("erin", "node-c"),
        ("frank", "node-c"),
        ("grace", "node-c"),
        ("heidi", "node-b"),
        ("ivan", "node-c"),
        ("judy", "node-c"),
        ("mallory", "node-c"),
        ("oscar", "node-b"),
        ("peggy", "node-c"),
        ("trent", "node-c"),
        ("victor", "node-a"),
        ("walter", "node-c"),
        ("group:family", "node-b"),
        ("group:work", "node-b"),
        ("", "node-c"),
        ("ünïcödé", "node-c"),
    ];

    pub fn ring() -> Ring {
        let members = MEMBERS.map(|(id, weight)| Member {
            id: id.into(),
            weight,
        });
        Ring::new(1, &members, VNODES_PER_WEIGHT).expect("valid golden ring")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors: these values must never change, on any machine or Rust version, because
    /// storage keys on disk and placement across processes depend on them. They were computed
    /// with an independent XXH3 implementation (Python `xxhash.xxh3_64_intdigest`).
    #[test]
    fn key_hash_golden_vectors() {
        let golden: &[(&str, u64)] = &[
            ("", 0x2d06800538d394c2),
            ("alice", 0x4da10dd61a0116b0),
            ("bob", 0x1403c0c40f49b8e5),
            ("group:family", 0x50888c566bfa94c2),
            ("ünïcödé", 0xc5dbb4af33baf371),
        ];
        let got: Vec<(&str, u64)> = golden.iter().map(|(k, _)| (*k, key_hash(k))).collect();
        assert_eq!(got, golden.to_vec());
    }

    /// Placement golden vectors (see [`golden`]): node, router and chatctl all call
    /// `Ring::owner`, and the integration tests check the same table through each of them.
    #[test]
    fn placement_golden_vectors() {
        let ring = golden::ring();
        let got: Vec<(&str, &str)> = golden::PLACEMENT
            .iter()
            .map(|(k, _)| (*k, ring.owner(k)))
            .collect();
        assert_eq!(got, golden::PLACEMENT.to_vec());
    }

    #[test]
    fn single_ring_owns_everything() {
        let r = Ring::single("n1");
        for u in ["a", "b", "zzz", ""] {
            assert_eq!(r.owner(u), "n1");
        }
    }

    #[test]
    fn invalid_rings_are_refused() {
        assert_eq!(Ring::new(1, &[], 4).unwrap_err(), RingError::Empty);
        let m = |id: &str, weight| Member {
            id: id.into(),
            weight,
        };
        assert_eq!(
            Ring::new(1, &[m("a", 1), m("a", 2)], 4).unwrap_err(),
            RingError::DuplicateMember("a".into())
        );
        assert_eq!(
            Ring::new(1, &[m("a", 0)], 4).unwrap_err(),
            RingError::ZeroWeight("a".into())
        );
    }

    #[test]
    fn owner_is_first_vnode_at_or_after_key_hash() {
        let members: Vec<Member> = ["n1", "n2", "n3"]
            .iter()
            .map(|id| Member {
                id: id.to_string(),
                weight: 1,
            })
            .collect();
        let ring = Ring::new(7, &members, 16).unwrap();
        let mut points: Vec<(u64, String)> = members
            .iter()
            .flat_map(|m| {
                (0..16).map(|i| {
                    let v = VNode {
                        node: m.id.clone(),
                        index: i,
                    };
                    (StableHasher::default().hash_one(&v), m.id.clone())
                })
            })
            .collect();
        points.sort();
        for i in 0..500 {
            let user = format!("user-{i}");
            let h = key_hash(&user);
            let expected = points
                .iter()
                .find(|(p, _)| *p >= h)
                .unwrap_or(&points[0])
                .1
                .clone();
            assert_eq!(ring.owner(&user), expected, "user {user}");
        }
    }

    #[test]
    fn shares_follow_weights() {
        let members = vec![
            Member {
                id: "a".into(),
                weight: 1,
            },
            Member {
                id: "b".into(),
                weight: 1,
            },
            Member {
                id: "c".into(),
                weight: 2,
            },
        ];
        let ring = Ring::new(1, &members, DEFAULT_VNODES_PER_WEIGHT).unwrap();
        let mut counts = BTreeMap::new();
        let n = 40_000;
        for i in 0..n {
            *counts.entry(ring.owner(&format!("u{i}"))).or_insert(0u32) += 1;
        }
        let share = |id: &str| counts[id] as f64 / n as f64;
        assert!((share("a") - 0.25).abs() < 0.03, "{counts:?}");
        assert!((share("b") - 0.25).abs() < 0.03, "{counts:?}");
        assert!((share("c") - 0.50).abs() < 0.03, "{counts:?}");
    }
}
