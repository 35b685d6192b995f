//! The sections of the node's config that tune node-to-node traffic: forwarding (`[forward]`),
//! moves of the ring (`[rebalance]`) and the QUIC links between nodes (`[peer]`). Durations are
//! in milliseconds; the accessors give `Duration`s.

use std::time::Duration;

use serde::{Deserialize, Serialize};

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Handing outbox entries to the nodes that own their recipients.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardSection {
    /// Most entries in one forward request.
    pub batch: u32,
    /// Most forward requests in flight to one node. A recipient's entries are never in two
    /// requests at once (so each recipient's order holds); more than 1 lets a message to one
    /// user go out while another user's request waits for the peer's fsync. 1 to 64.
    pub max_inflight: usize,
    /// How long one forward request may take before it counts as failed.
    pub timeout_ms: u64,
    /// A message that could not be handed to the recipient's node for this long after it was
    /// accepted is given up: the sender receives `Failed`.
    pub give_up_ms: u64,
    /// Entries of one destination held in memory; more stay on disk until the queue drains.
    pub max_queued: usize,
    /// The wait after a failed request to a destination, doubling up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for ForwardSection {
    fn default() -> Self {
        ForwardSection {
            batch: 512,
            max_inflight: 4,
            timeout_ms: 10_000,
            give_up_ms: 24 * 3600 * 1000,
            max_queued: 100_000,
            backoff_min_ms: 100,
            backoff_max_ms: 5_000,
        }
    }
}

impl ForwardSection {
    pub fn timeout(&self) -> Duration {
        ms(self.timeout_ms)
    }
    pub fn give_up(&self) -> Duration {
        ms(self.give_up_ms)
    }
    pub fn backoff(&self) -> (Duration, Duration) {
        (ms(self.backoff_min_ms), ms(self.backoff_max_ms))
    }
}

/// This node's part in a move of the ring.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebalanceSection {
    /// Most keys and bytes in one copy page (one page in flight per move).
    pub page_keys: usize,
    pub page_bytes: usize,
    /// Most writes and bytes in one stream request to a new owner (a batch's writes are never
    /// split, so one request can be larger).
    pub request_writes: usize,
    pub request_bytes: usize,
    /// How long one stream request may take before it counts as failed.
    pub request_timeout_ms: u64,
    /// The wait after a failed stream request, doubling up to `backoff_max_ms`.
    pub backoff_min_ms: u64,
    pub backoff_max_ms: u64,
    /// How often a node whose copy is done tries the commit (one compare-and-swap in etcd).
    pub commit_every_ms: u64,
}

impl Default for RebalanceSection {
    fn default() -> Self {
        RebalanceSection {
            page_keys: 2_000,
            page_bytes: 1 << 20,
            request_writes: 10_000,
            request_bytes: 8 << 20,
            request_timeout_ms: 10_000,
            backoff_min_ms: 50,
            backoff_max_ms: 2_000,
            commit_every_ms: 500,
        }
    }
}

impl RebalanceSection {
    pub fn request_timeout(&self) -> Duration {
        ms(self.request_timeout_ms)
    }
    pub fn backoff(&self) -> (Duration, Duration) {
        (ms(self.backoff_min_ms), ms(self.backoff_max_ms))
    }
    pub fn commit_every(&self) -> Duration {
        ms(self.commit_every_ms)
    }
}

/// The QUIC links between nodes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSection {
    /// How often a quiet link is kept alive.
    pub keep_alive_ms: u64,
    /// A link that hears nothing for this long is closed (a peer paused or cut off).
    pub idle_timeout_ms: u64,
    /// How often this node checks its links to the peers it dials.
    pub dial_every_ms: u64,
    /// The longest wait before dialing an unreachable peer again.
    pub dial_backoff_max_ms: u64,
}

impl Default for PeerSection {
    fn default() -> Self {
        PeerSection {
            keep_alive_ms: 1_000,
            idle_timeout_ms: 5_000,
            dial_every_ms: 500,
            dial_backoff_max_ms: 5_000,
        }
    }
}

impl PeerSection {
    pub fn keep_alive(&self) -> Duration {
        ms(self.keep_alive_ms)
    }
    pub fn idle_timeout(&self) -> Duration {
        ms(self.idle_timeout_ms)
    }
    pub fn dial_every(&self) -> Duration {
        ms(self.dial_every_ms)
    }
    pub fn dial_backoff_max(&self) -> Duration {
        ms(self.dial_backoff_max_ms)
    }
}
