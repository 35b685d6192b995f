//! The `[groups]` section: group sizes and how calls reach a group's home node.

use serde::{Deserialize, Serialize};

/// Groups (fan-out on write): limits, and the calls a node makes to the home node of a group.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupsSection {
    /// Members one group may have, its creator included; more are refused with LIMIT_REACHED.
    pub max_members: u32,
    /// Longest group name, in bytes of UTF-8.
    pub max_name_bytes: u32,
    /// How long a group call (a send, a change, a query) waits for the group's home node; then
    /// the user gets UNAVAILABLE and retries (a send with the same client_msg_id is stored once).
    pub call_timeout_ms: u64,
    /// Most calls to one node in one request (calls queue in order per node: one sender's
    /// messages keep their order).
    pub call_batch: u32,
    /// Calls waiting for one node; beyond it a call is refused with OVERLOADED.
    pub call_queue: u32,
}

impl Default for GroupsSection {
    fn default() -> Self {
        GroupsSection {
            max_members: 256,
            max_name_bytes: 100,
            call_timeout_ms: 5_000,
            call_batch: 256,
            call_queue: 4_096,
        }
    }
}

/// The largest group a node accepts as `groups.max_members`: a message is one inbox entry per
/// member, written in one batch on the group's home node.
pub const MAX_GROUP_MEMBERS: u32 = 4_096;

impl GroupsSection {
    pub(super) fn check(&self) -> Result<(), String> {
        if !(2..=MAX_GROUP_MEMBERS).contains(&self.max_members) {
            return Err(format!(
                "groups.max_members must be 2 to {MAX_GROUP_MEMBERS}"
            ));
        }
        for (name, v) in [
            ("groups.max_name_bytes", u64::from(self.max_name_bytes)),
            ("groups.call_timeout_ms", self.call_timeout_ms),
            ("groups.call_batch", u64::from(self.call_batch)),
            ("groups.call_queue", u64::from(self.call_queue)),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}
