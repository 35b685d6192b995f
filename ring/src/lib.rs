//! Placement: which node owns a user or a group.
//!
//! Everything here is pure computation (no I/O), shared by node, router and `chatctl`, so that every
//! process on every machine gives the same answer for the same ring.
//!
//! Three promises matter for the rest of the system:
//! - [`key_hash`] is stable forever (XXH3-64 over the id's UTF-8 bytes, seed 0). Storage keys begin
//!   with it, so a ring segment is a contiguous key range on disk.
//! - [`Ring::owner`] uses the `hashring` crate with the same hasher, so the node a key maps to is the
//!   first virtual node at or after `key_hash(key)` on the circle (active members only).
//! - [`Ring::replicas`] names the owner and the followers that hold copies of a key: the first
//!   `replication_factor` distinct members clockwise from the key, the owner being the first
//!   active one among them (`replicas.rs`).
//!
//! We never feed `std::hash::Hash` impls of std types to the hasher: their byte layout is not
//! promised across Rust versions. [`RingKey`] and [`VNode`] write explicit bytes instead.

pub mod failover;
pub mod plan;
pub mod range;
pub mod replicas;
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

/// A member of the ring, its weight (relative share of keys) and its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Absent in the stored document for an active member, so rings written before states
    /// existed read the same.
    #[serde(default, skip_serializing_if = "MemberState::is_active")]
    pub state: MemberState,
}

impl Member {
    /// An active member.
    pub fn new(id: impl Into<String>, weight: u32) -> Member {
        Member {
            id: id.into(),
            weight,
            state: MemberState::Active,
        }
    }
}

fn default_weight() -> u32 {
    1
}

/// What a member does with the keys at its points on the circle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Owns keys (serves their sessions) and follows others.
    #[default]
    Active,
    /// Only follows: holds copies of the keys it would own and of its neighbours', serves no
    /// sessions. A node back after a failover rejoins so (`plan::plan_standby`), and takes its
    /// keys back only by an ordinary move (`plan::plan_promote`), never by itself.
    Standby,
}

impl MemberState {
    pub fn is_active(&self) -> bool {
        *self == MemberState::Active
    }
}

/// A member's place in a ring: its weight and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Seat {
    weight: u32,
    state: MemberState,
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
    #[error("a ring needs at least one active member")]
    NoActiveMember,
    #[error("the replication factor must be at least 1")]
    NoReplicas,
}

/// One version of the ring: members with weights and states, each member placed at
/// `weight * vnodes_per_weight` points on the circle, and how many copies a key has.
#[derive(Clone)]
pub struct Ring {
    epoch: u64,
    members: BTreeMap<String, Seat>,
    vnodes_per_weight: u32,
    replication_factor: u32,
    /// The active members' points: `owner` searches these.
    circle: HashRing<VNode, StableHasher>,
    /// Every member's points (active or not) sorted, each with the member's index in `names`:
    /// `replicas` walks these.
    all_points: Vec<(u64, u32)>,
    /// Member ids in `members`' order.
    names: Vec<String>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("epoch", &self.epoch)
            .field("members", &self.members)
            .field("vnodes_per_weight", &self.vnodes_per_weight)
            .field("replication_factor", &self.replication_factor)
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
            let seat = Seat {
                weight: m.weight,
                state: m.state,
            };
            if map.insert(m.id.clone(), seat).is_some() {
                return Err(RingError::DuplicateMember(m.id.clone()));
            }
        }
        if !map.values().any(|s| s.state.is_active()) {
            return Err(RingError::NoActiveMember);
        }
        let mut circle = HashRing::with_hasher(StableHasher::default());
        let vnodes = map
            .iter()
            .filter(|(_, s)| s.state.is_active())
            .flat_map(|(id, s)| {
                (0..s.weight * vnodes_per_weight).map(move |index| VNode {
                    node: id.clone(),
                    index,
                })
            })
            .collect();
        circle.batch_add(vnodes);
        let hasher = StableHasher::default();
        let mut all_points: Vec<(u64, u32)> = map
            .iter()
            .enumerate()
            .flat_map(|(i, (id, s))| {
                let hasher = &hasher;
                (0..s.weight * vnodes_per_weight).map(move |index| {
                    let v = VNode {
                        node: id.clone(),
                        index,
                    };
                    (hasher.hash_one(&v), i as u32)
                })
            })
            .collect();
        all_points.sort_unstable();
        Ok(Ring {
            epoch,
            names: map.keys().cloned().collect(),
            members: map,
            vnodes_per_weight,
            replication_factor: 1,
            circle,
            all_points,
        })
    }

    /// This ring with `factor` copies of every key (the owner's and `factor - 1` followers'),
    /// or as many as it has members if fewer. A ring has 1 unless given another.
    pub fn with_replication(mut self, factor: u32) -> Result<Ring, RingError> {
        if factor == 0 {
            return Err(RingError::NoReplicas);
        }
        self.replication_factor = factor;
        Ok(self)
    }

    /// A ring of these members, each with weight 1.
    pub fn equal(epoch: u64, ids: &[&str], vnodes_per_weight: u32) -> Result<Ring, RingError> {
        let members: Vec<Member> = ids.iter().map(|id| Member::new(*id, 1)).collect();
        Ring::new(epoch, &members, vnodes_per_weight)
    }

    /// The ring of one node that a standalone node serves: it owns every key.
    pub fn single(node: &str) -> Ring {
        Ring::new(0, &[Member::new(node, 1)], 1).expect("a one-member ring is valid")
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Every member (active or not) and its weight, sorted by id.
    pub fn members(&self) -> impl Iterator<Item = (&str, u32)> {
        self.members.iter().map(|(id, s)| (id.as_str(), s.weight))
    }

    /// A member's state; `None` if it is not a member.
    pub fn state(&self, id: &str) -> Option<MemberState> {
        self.members.get(id).map(|s| s.state)
    }

    pub fn vnodes_per_weight(&self) -> u32 {
        self.vnodes_per_weight
    }

    /// The replication factor the ring was given.
    pub fn replication_factor(&self) -> u32 {
        self.replication_factor
    }

    /// How many copies each key has: the replication factor, or the member count if smaller.
    pub fn copies(&self) -> usize {
        (self.replication_factor as usize).min(self.members.len())
    }

    /// The members as a list (sorted by id).
    pub fn member_list(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, s)| Member {
                id: id.clone(),
                weight: s.weight,
                state: s.state,
            })
            .collect()
    }

    /// Every active member's point on the circle with its node, sorted by point: the same
    /// points `owner` searches (a key belongs to the first point at or after its hash, wrapping).
    pub fn points(&self) -> Vec<(u64, &str)> {
        self.all_points
            .iter()
            .map(|&(h, i)| (h, self.names[i as usize].as_str()))
            .filter(|(_, id)| self.members[*id].state.is_active())
            .collect()
    }

    /// The node that owns `id` (a user or group id): the first active member clockwise.
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
    use super::{Member, MemberState, Ring};

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

    /// Owner and followers of each key in the golden ring with replication factor 2.
    pub const RF2: &[(&str, &str, &[&str])] = &[
        ("alice", "node-c", &["node-b"]),
        ("bob", "node-b", &["node-c"]),
        ("carol", "node-b", &["node-c"]),
        ("dave", "node-c", &["node-a"]),
        ("erin", "node-c", &["node-b"]),
        ("frank", "node-c", &["node-b"]),
        ("grace", "node-c", &["node-b"]),
        ("heidi", "node-b", &["node-a"]),
        ("ivan", "node-c", &["node-b"]),
        ("judy", "node-c", &["node-a"]),
        ("mallory", "node-c", &["node-b"]),
        ("oscar", "node-b", &["node-c"]),
        ("peggy", "node-c", &["node-a"]),
        ("trent", "node-c", &["node-a"]),
        ("victor", "node-a", &["node-b"]),
        ("walter", "node-c", &["node-a"]),
        ("group:family", "node-b", &["node-a"]),
        ("group:work", "node-b", &["node-c"]),
        ("", "node-c", &["node-a"]),
        ("ünïcödé", "node-c", &["node-b"]),
    ];

    /// The same with replication factor 3 (every member holds every key).
    pub const RF3: &[(&str, &str, &[&str])] = &[
        ("alice", "node-c", &["node-b", "node-a"]),
        ("bob", "node-b", &["node-c", "node-a"]),
        ("carol", "node-b", &["node-c", "node-a"]),
        ("dave", "node-c", &["node-a", "node-b"]),
        ("erin", "node-c", &["node-b", "node-a"]),
        ("frank", "node-c", &["node-b", "node-a"]),
        ("grace", "node-c", &["node-b", "node-a"]),
        ("heidi", "node-b", &["node-a", "node-c"]),
        ("ivan", "node-c", &["node-b", "node-a"]),
        ("judy", "node-c", &["node-a", "node-b"]),
        ("mallory", "node-c", &["node-b", "node-a"]),
        ("oscar", "node-b", &["node-c", "node-a"]),
        ("peggy", "node-c", &["node-a", "node-b"]),
        ("trent", "node-c", &["node-a", "node-b"]),
        ("victor", "node-a", &["node-b", "node-c"]),
        ("walter", "node-c", &["node-a", "node-b"]),
        ("group:family", "node-b", &["node-a", "node-c"]),
        ("group:work", "node-b", &["node-c", "node-a"]),
        ("", "node-c", &["node-a", "node-b"]),
        ("ünïcödé", "node-c", &["node-b", "node-a"]),
    ];

    /// Factor 2 with node-b a standby (as after its failover and return): it owns nothing and
    /// follows every key it owned.
    pub const STANDBY_B_RF2: &[(&str, &str, &[&str])] = &[
        ("alice", "node-c", &["node-b"]),
        ("bob", "node-c", &["node-b"]),
        ("carol", "node-c", &["node-b"]),
        ("dave", "node-c", &["node-a"]),
        ("erin", "node-c", &["node-b"]),
        ("frank", "node-c", &["node-b"]),
        ("grace", "node-c", &["node-b"]),
        ("heidi", "node-a", &["node-b"]),
        ("ivan", "node-c", &["node-b"]),
        ("judy", "node-c", &["node-a"]),
        ("mallory", "node-c", &["node-b"]),
        ("oscar", "node-c", &["node-b"]),
        ("peggy", "node-c", &["node-a"]),
        ("trent", "node-c", &["node-a"]),
        ("victor", "node-a", &["node-b"]),
        ("walter", "node-c", &["node-a"]),
        ("group:family", "node-a", &["node-b"]),
        ("group:work", "node-c", &["node-b"]),
        ("", "node-c", &["node-a"]),
        ("ünïcödé", "node-c", &["node-b"]),
    ];

    pub fn ring() -> Ring {
        let members = MEMBERS.map(|(id, weight)| Member::new(id, weight));
        Ring::new(1, &members, VNODES_PER_WEIGHT).expect("valid golden ring")
    }

    /// The golden ring with `replication_factor` copies and `standby` members.
    pub fn replicated(replication_factor: u32, standby: &[&str]) -> Ring {
        let members = MEMBERS.map(|(id, weight)| Member {
            state: match standby.contains(&id) {
                true => MemberState::Standby,
                false => MemberState::Active,
            },
            ..Member::new(id, weight)
        });
        Ring::new(1, &members, VNODES_PER_WEIGHT)
            .and_then(|r| r.with_replication(replication_factor))
            .expect("valid golden ring")
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

    /// Replica golden vectors (see [`golden`]), computed with the same independent code.
    #[test]
    fn replica_golden_vectors() {
        for (ring, table) in [
            (golden::replicated(2, &[]), golden::RF2),
            (golden::replicated(3, &[]), golden::RF3),
            (golden::replicated(2, &["node-b"]), golden::STANDBY_B_RF2),
        ] {
            for (key, owner, followers) in table {
                let r = ring.replicas(key);
                assert_eq!(
                    (r.owner, r.followers.as_slice()),
                    (*owner, *followers),
                    "{key:?}"
                );
                assert_eq!(r.owner, ring.owner(key));
            }
        }
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
        let m = |id: &str, weight| Member::new(id, weight);
        assert_eq!(
            Ring::new(1, &[m("a", 1), m("a", 2)], 4).unwrap_err(),
            RingError::DuplicateMember("a".into())
        );
        assert_eq!(
            Ring::new(1, &[m("a", 0)], 4).unwrap_err(),
            RingError::ZeroWeight("a".into())
        );
        let standby = Member {
            state: MemberState::Standby,
            ..m("a", 1)
        };
        assert_eq!(
            Ring::new(1, &[standby], 4).unwrap_err(),
            RingError::NoActiveMember
        );
        let r = Ring::new(1, &[m("a", 1)], 4).unwrap();
        assert_eq!(r.with_replication(0).unwrap_err(), RingError::NoReplicas);
    }

    #[test]
    fn owner_is_first_vnode_at_or_after_key_hash() {
        let members: Vec<Member> = ["n1", "n2", "n3"]
            .iter()
            .map(|id| Member::new(*id, 1))
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
            Member::new("a", 1),
            Member::new("b", 1),
            Member::new("c", 2),
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
