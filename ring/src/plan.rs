//! The next ring for each change an operator or the failover asks for, as pure computation:
//! the same vnodes per weight and replication factor, the epoch one higher.

use crate::transition::TransitionError;
use crate::{Member, MemberState, Ring};

/// The ring after adding `node` with `weight` to `current` as an active member.
pub fn plan_add(current: &Ring, node: &str, weight: u32) -> Result<Ring, TransitionError> {
    join(current, Member::new(node, weight))
}

/// The ring after adding `node` as a standby: it follows the keys at its points and those of
/// its neighbours (the copies it would hold as an active member) and owns none. This is how a
/// node comes back after a failover: the survivors keep serving, it catches up, and it takes
/// its keys back only when promoted, by an ordinary move.
pub fn plan_standby(current: &Ring, node: &str, weight: u32) -> Result<Ring, TransitionError> {
    join(
        current,
        Member {
            state: MemberState::Standby,
            ..Member::new(node, weight)
        },
    )
}

/// The ring after making standby `node` active: the keys it is the first active member for
/// move to it (an ordinary move; it already holds their copies as a follower).
pub fn plan_promote(current: &Ring, node: &str) -> Result<Ring, TransitionError> {
    match current.state(node) {
        None => return Err(TransitionError::NotMember(node.to_string())),
        Some(MemberState::Active) => return Err(TransitionError::NotStandby(node.to_string())),
        Some(MemberState::Standby) => {}
    }
    let members: Vec<Member> = current
        .member_list()
        .into_iter()
        .map(|m| match m.id == node {
            true => Member::new(m.id, m.weight),
            false => m,
        })
        .collect();
    next(current, &members)
}

/// The ring after removing `node` from `current`.
pub fn plan_remove(current: &Ring, node: &str) -> Result<Ring, TransitionError> {
    if current.state(node).is_none() {
        return Err(TransitionError::NotMember(node.to_string()));
    }
    if current.members().count() == 1 {
        return Err(TransitionError::LastMember);
    }
    plan_without(current, &[node])
}

/// The ring without `nodes` (the failover's: members whose leases expired). Their keys fall to
/// the next active member clockwise, which is their first active follower, so no data moves.
pub fn plan_without(current: &Ring, nodes: &[&str]) -> Result<Ring, TransitionError> {
    if let Some(n) = nodes.iter().find(|n| current.state(n).is_none()) {
        return Err(TransitionError::NotMember(n.to_string()));
    }
    let members: Vec<Member> = current
        .member_list()
        .into_iter()
        .filter(|m| !nodes.contains(&m.id.as_str()))
        .collect();
    if members.is_empty() {
        return Err(TransitionError::LastMember);
    }
    next(current, &members)
}

fn join(current: &Ring, member: Member) -> Result<Ring, TransitionError> {
    if current.state(&member.id).is_some() {
        return Err(TransitionError::AlreadyMember(member.id));
    }
    let mut members = current.member_list();
    members.push(member);
    next(current, &members)
}

fn next(current: &Ring, members: &[Member]) -> Result<Ring, TransitionError> {
    Ok(
        Ring::new(current.epoch() + 1, members, current.vnodes_per_weight())?
            .with_replication(current.replication_factor())?,
    )
}
