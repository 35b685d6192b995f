//! The nemesis's plan: a pure function of (profile, duration, seed) to a list of faults with
//! their start times, targets and durations. The same seed gives the same plan, so a failing run
//! can be replayed; targets are selectors (an index into whatever nodes are eligible when the
//! fault fires), because which nodes exist then depends on the moves before it.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::history::FaultKind;

/// How big and how long a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Profile {
    /// About three minutes: every fault kind once, one node added and one removed.
    Short,
    /// `--duration` of faults (30 minutes by default): twenty or more moves, every kind many
    /// times, overlapping.
    Long,
}

impl Profile {
    pub fn name(self) -> &'static str {
        match self {
            Profile::Short => "short",
            Profile::Long => "long",
        }
    }

    /// Length of the fault phase when `--duration` is not given.
    pub fn default_duration(self) -> Duration {
        match self {
            Profile::Short => Duration::from_secs(100),
            Profile::Long => Duration::from_secs(30 * 60),
        }
    }

    pub fn default_users(self) -> usize {
        match self {
            Profile::Short => 200,
            Profile::Long => 1000,
        }
    }

    /// Messages per second over all devices.
    pub fn default_rate(self) -> f64 {
        150.0
    }

    /// How long the quiet phase may wait for everything to arrive.
    pub fn quiet_deadline(self) -> Duration {
        match self {
            Profile::Short => Duration::from_secs(60),
            Profile::Long => Duration::from_secs(180),
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Planned {
    /// Since the start of the fault phase.
    pub at_ms: u64,
    pub kind: FaultKind,
    /// Selector of the node it hits (index modulo the eligible nodes when it fires).
    pub target: u32,
    /// Selector of the second node (partitions; the node killed during a move).
    pub peer: u32,
    /// How long the fault holds (down time, pause, partition, full disk) before it heals.
    pub hold_ms: u64,
    /// Rebalances only: `kill -9` a node taking part, in the middle of the move.
    pub kill_during: bool,
}

impl Planned {
    pub fn at(&self) -> Duration {
        Duration::from_millis(self.at_ms)
    }

    pub fn hold(&self) -> Duration {
        Duration::from_millis(self.hold_ms)
    }
}

/// Faults other than moves (those, and kills during them, are planned on their own track), in
/// `FaultKind::ALL` order so a seed keeps its plan.
fn plain() -> Vec<FaultKind> {
    FaultKind::ALL
        .into_iter()
        .filter(|k| !k.is_rebalance() && *k != FaultKind::KillDuringMove)
        .collect()
}

/// How long a fault of `kind` holds. `lease_ttl_ms`: a pause and an etcd partition last longer
/// than the node's registration lease, so that it really drops out of the registry.
fn hold_ms(kind: FaultKind, lease_ttl_ms: u64, rng: &mut ChaCha8Rng) -> u64 {
    match kind {
        FaultKind::Kill => rng.random_range(1_000..4_000),
        FaultKind::Pause => lease_ttl_ms + rng.random_range(1_000..4_000),
        FaultKind::Partition | FaultKind::OneWayPartition => rng.random_range(5_000..15_000),
        FaultKind::EtcdPartition => lease_ttl_ms + rng.random_range(2_000..8_000),
        FaultKind::EtcdKill => rng.random_range(2_000..5_000),
        FaultKind::DiskFull => rng.random_range(3_000..8_000),
        FaultKind::DiskFullKill => rng.random_range(2_000..4_000),
        FaultKind::AddNode | FaultKind::RemoveNode | FaultKind::KillDuringMove => 0,
    }
}

/// The plan for a fault phase of `phase` (see [`Profile::default_duration`]).
pub fn plan(profile: Profile, phase: Duration, seed: u64, lease_ttl: Duration) -> Vec<Planned> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ttl = lease_ttl.as_millis() as u64;
    let phase_ms = phase.as_millis() as u64;
    let mut out = match profile {
        Profile::Short => short(&mut rng, phase_ms, ttl),
        Profile::Long => long(&mut rng, phase_ms, ttl),
    };
    out.sort_by_key(|p| (p.at_ms, p.kind));
    out
}

fn planned(kind: FaultKind, at_ms: u64, ttl: u64, rng: &mut ChaCha8Rng) -> Planned {
    Planned {
        at_ms,
        kind,
        target: rng.random_range(0..1000),
        peer: rng.random_range(0..1000),
        hold_ms: hold_ms(kind, ttl, rng),
        kill_during: false,
    }
}

/// Every plain kind once in a seeded order, one per slot; one node added, then one removed, one
/// of the two with a kill in the middle.
fn short(rng: &mut ChaCha8Rng, phase_ms: u64, ttl: u64) -> Vec<Planned> {
    let mut kinds = plain();
    shuffle(&mut kinds, rng);
    // The last fault must heal before the phase ends.
    let usable = phase_ms
        .saturating_sub(30_000)
        .max(kinds.len() as u64 * 1_000);
    let slot = usable / kinds.len() as u64;
    let mut out: Vec<Planned> = kinds
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let at = 3_000 + i as u64 * slot + rng.random_range(0..slot / 2 + 1);
            planned(k, at, ttl, rng)
        })
        .collect();
    let kill_on_add = rng.random_bool(0.5);
    for (i, kind) in [FaultKind::AddNode, FaultKind::RemoveNode]
        .into_iter()
        .enumerate()
    {
        let base = phase_ms * (1 + 2 * i as u64) / 5;
        let mut p = planned(
            kind,
            base + rng.random_range(0..phase_ms / 10 + 1),
            ttl,
            rng,
        );
        p.kill_during = (i == 0) == kill_on_add;
        out.push(p);
    }
    out
}

/// Moves evenly spread (at least twenty, alternating add and remove, a third of them with a
/// kill in the middle); plain faults arriving at random (about one every 12 s, the first eight
/// one of each kind), overlapping each other and the moves.
fn long(rng: &mut ChaCha8Rng, phase_ms: u64, ttl: u64) -> Vec<Planned> {
    let mut out = Vec::new();
    // About one a minute: some take minutes under faults and the next waits its turn.
    let moves = (phase_ms / 60_000).max(20);
    let gap = phase_ms / (moves + 1);
    let killed = rng.random_range(0..moves);
    for i in 0..moves {
        let kind = if i % 2 == 0 {
            FaultKind::AddNode
        } else {
            FaultKind::RemoveNode
        };
        let at = gap * (i + 1) - gap / 5 + rng.random_range(0..gap * 2 / 5 + 1);
        let mut p = planned(kind, at, ttl, rng);
        p.kill_during = i == killed || rng.random_bool(1.0 / 3.0);
        out.push(p);
    }
    let plain = plain();
    let mut first = plain.clone();
    shuffle(&mut first, rng);
    let mut at = 2_000u64;
    let mut i = 0usize;
    loop {
        at += rng.random_range(2_000..22_000);
        let kind = first
            .get(i)
            .copied()
            .unwrap_or_else(|| plain[rng.random_range(0..plain.len())]);
        let p = planned(kind, at, ttl, rng);
        if p.at_ms + p.hold_ms + 15_000 > phase_ms {
            break;
        }
        out.push(p);
        i += 1;
    }
    out
}

fn shuffle<T>(v: &mut [T], rng: &mut ChaCha8Rng) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.random_range(0..=i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(4);

    fn kinds(p: &[Planned]) -> std::collections::BTreeSet<FaultKind> {
        let mut k: std::collections::BTreeSet<FaultKind> = p.iter().map(|p| p.kind).collect();
        if p.iter().any(|p| p.kill_during) {
            k.insert(FaultKind::KillDuringMove);
        }
        k
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        for profile in [Profile::Short, Profile::Long] {
            let d = profile.default_duration();
            assert_eq!(plan(profile, d, 42, TTL), plan(profile, d, 42, TTL));
            assert_ne!(plan(profile, d, 42, TTL), plan(profile, d, 43, TTL));
        }
    }

    #[test]
    fn short_covers_every_kind_and_heals_in_time() {
        for seed in 0..200 {
            let d = Profile::Short.default_duration();
            let p = plan(Profile::Short, d, seed, TTL);
            assert_eq!(kinds(&p).len(), FaultKind::ALL.len(), "seed {seed}: {p:?}");
            let adds = p.iter().filter(|p| p.kind == FaultKind::AddNode).count();
            let removes = p.iter().filter(|p| p.kind == FaultKind::RemoveNode).count();
            assert_eq!((adds, removes), (1, 1), "seed {seed}");
            let add = p.iter().position(|p| p.kind == FaultKind::AddNode).unwrap();
            let remove = p
                .iter()
                .position(|p| p.kind == FaultKind::RemoveNode)
                .unwrap();
            assert!(add < remove, "seed {seed}: the add comes first");
            for f in &p {
                assert!(
                    f.at_ms + f.hold_ms + 10_000 <= d.as_millis() as u64,
                    "seed {seed}: {f:?}"
                );
            }
            let pause = p.iter().find(|p| p.kind == FaultKind::Pause).unwrap();
            assert!(pause.hold() > TTL, "a pause outlives the lease");
        }
    }

    #[test]
    fn long_has_twenty_moves_every_kind_and_overlaps() {
        let d = Duration::from_secs(30 * 60);
        for seed in 0..20 {
            let p = plan(Profile::Long, d, seed, TTL);
            assert_eq!(kinds(&p).len(), FaultKind::ALL.len(), "seed {seed}");
            let moves: Vec<&Planned> = p.iter().filter(|p| p.kind.is_rebalance()).collect();
            assert!(moves.len() >= 20);
            // Alternating, starting with an add: the member count stays within 3..=4.
            for (i, m) in moves.iter().enumerate() {
                let want = if i % 2 == 0 {
                    FaultKind::AddNode
                } else {
                    FaultKind::RemoveNode
                };
                assert_eq!(m.kind, want, "seed {seed}");
            }
            let overlapping = p
                .windows(2)
                .filter(|w| w[0].at_ms + w[0].hold_ms > w[1].at_ms)
                .count();
            assert!(overlapping > 0, "seed {seed}: some faults overlap");
        }
    }
}
