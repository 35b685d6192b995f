//! The sections of the node's config for traffic that is not stored: rate limits (`[rate]`),
//! ephemeral events such as typing (`[ephemeral]`) and presence (`[presence]`).

use serde::{Deserialize, Serialize};

use crate::rate::bucket::Rate;
use crate::rate::Limit;

/// Rate limits, each a token bucket: `*_per_min` refills it, `*_burst` is how many requests may
/// come at once. A `*_per_min` of 0 turns that limit off. A refused request gets
/// `RATE_LIMITED` with the exact wait as `retryAfterMs`; nothing is dropped silently.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateSection {
    /// Messages one user may send a minute, all its devices together.
    pub messages_per_min: u32,
    /// Messages one user may send at once before the per-minute rate applies.
    pub messages_burst: u32,
    /// Typing events one user may send a minute.
    pub typing_per_min: u32,
    /// Typing events one user may send at once.
    pub typing_burst: u32,
    /// Presence requests (queries, watch lists) one user may make a minute.
    pub presence_per_min: u32,
    /// Presence requests one user may make at once.
    pub presence_burst: u32,
    /// Group messages one user may send a minute (each also counts as a message). Tighter
    /// than messages: each is stored once per member.
    pub group_sends_per_min: u32,
    /// Group messages one user may send at once.
    pub group_sends_burst: u32,
    /// Group changes and queries (create, add, info, receipts...) one user may make a minute.
    pub group_requests_per_min: u32,
    /// Group changes and queries one user may make at once.
    pub group_requests_burst: u32,
    /// Media requests (upload slots, download URLs) one user may make a minute.
    pub media_per_min: u32,
    /// Media requests one user may make at once.
    pub media_burst: u32,
    /// New connections a minute from one source IP address; beyond it a connection gets
    /// `RATE_LIMITED` right after the WebSocket handshake and is closed. Generous by default:
    /// many users can share an address (NAT, a company proxy).
    pub connections_per_addr_per_min: u32,
    /// New connections from one address at once.
    pub connections_per_addr_burst: u32,
}

impl Default for RateSection {
    fn default() -> Self {
        RateSection {
            messages_per_min: 600,
            messages_burst: 100,
            typing_per_min: 120,
            typing_burst: 20,
            presence_per_min: 120,
            presence_burst: 30,
            group_sends_per_min: 300,
            group_sends_burst: 50,
            group_requests_per_min: 120,
            group_requests_burst: 30,
            media_per_min: 120,
            media_burst: 30,
            connections_per_addr_per_min: 600,
            connections_per_addr_burst: 200,
        }
    }
}

impl RateSection {
    /// The bucket of each `Limit` (in `Limit::ALL` order) for limits per user.
    pub fn per_user(&self) -> [Rate; Limit::COUNT] {
        let off = Rate::OFF;
        [
            Rate {
                per_min: self.messages_per_min,
                burst: self.messages_burst,
            },
            Rate {
                per_min: self.typing_per_min,
                burst: self.typing_burst,
            },
            off,
            Rate {
                per_min: self.presence_per_min,
                burst: self.presence_burst,
            },
            Rate {
                per_min: self.group_sends_per_min,
                burst: self.group_sends_burst,
            },
            Rate {
                per_min: self.group_requests_per_min,
                burst: self.group_requests_burst,
            },
            Rate {
                per_min: self.media_per_min,
                burst: self.media_burst,
            },
        ]
    }

    /// The buckets for limits per source address (only `Limit::Connections`).
    pub fn per_addr(&self) -> [Rate; Limit::COUNT] {
        let off = Rate::OFF;
        [
            off,
            off,
            Rate {
                per_min: self.connections_per_addr_per_min,
                burst: self.connections_per_addr_burst,
            },
            off,
            off,
            off,
            off,
        ]
    }

    /// Every limit that is on needs a burst of at least 1.
    pub(super) fn check(&self) -> Result<(), String> {
        for (name, per_min, burst) in [
            ("messages", self.messages_per_min, self.messages_burst),
            ("typing", self.typing_per_min, self.typing_burst),
            ("presence", self.presence_per_min, self.presence_burst),
            (
                "group_sends",
                self.group_sends_per_min,
                self.group_sends_burst,
            ),
            (
                "group_requests",
                self.group_requests_per_min,
                self.group_requests_burst,
            ),
            ("media", self.media_per_min, self.media_burst),
            (
                "connections_per_addr",
                self.connections_per_addr_per_min,
                self.connections_per_addr_burst,
            ),
        ] {
            if per_min > 0 && burst == 0 {
                return Err(format!(
                    "rate.{name}_burst must be at least 1 while rate.{name}_per_min is on"
                ));
            }
        }
        Ok(())
    }
}

/// Ephemeral events (typing): never stored, never retried, and the first traffic shed when a
/// queue fills.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EphemeralSection {
    /// How long a typing notice shows unless renewed; a client repeats TYPING while its user
    /// types, so a lost STOPPED cannot leave "typing…" on screen.
    pub typing_expiry_ms: u32,
    /// Events waiting for one peer node; beyond it new events are shed.
    pub peer_queue: usize,
    /// Most events in one request to a peer.
    pub peer_batch: usize,
    /// How long a request to a peer may take before its events are dropped.
    pub peer_timeout_ms: u64,
    /// Events buffered per connected device; beyond it new events are shed.
    pub device_queue: usize,
}

impl Default for EphemeralSection {
    fn default() -> Self {
        EphemeralSection {
            typing_expiry_ms: 6_000,
            peer_queue: 4_096,
            peer_batch: 256,
            peer_timeout_ms: 2_000,
            device_queue: 64,
        }
    }
}

impl EphemeralSection {
    pub(super) fn check(&self) -> Result<(), String> {
        for (name, v) in [
            (
                "ephemeral.typing_expiry_ms",
                u64::from(self.typing_expiry_ms),
            ),
            ("ephemeral.peer_queue", self.peer_queue as u64),
            ("ephemeral.peer_batch", self.peer_batch as u64),
            ("ephemeral.peer_timeout_ms", self.peer_timeout_ms),
            ("ephemeral.device_queue", self.device_queue as u64),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Presence: who is online, last seen, and watch lists.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceSection {
    /// A user is online while a device is connected and it was active within this long.
    pub online_window_ms: u64,
    /// Users one connection may watch at once (its chat screen).
    pub max_watch: u32,
    /// Users one query may ask about.
    pub max_query: u32,
    /// How often a node renews, at the users' home nodes, its connections' interest in them;
    /// an interest not renewed for three times this long lapses.
    pub watch_renew_ms: u64,
    /// How long a query or watch waits for another node's answer.
    pub peer_timeout_ms: u64,
}

impl Default for PresenceSection {
    fn default() -> Self {
        PresenceSection {
            online_window_ms: 15_000,
            max_watch: 100,
            max_query: 100,
            watch_renew_ms: 20_000,
            peer_timeout_ms: 2_000,
        }
    }
}

impl PresenceSection {
    pub(super) fn check(&self) -> Result<(), String> {
        for (name, v) in [
            ("presence.online_window_ms", self.online_window_ms),
            ("presence.max_watch", u64::from(self.max_watch)),
            ("presence.max_query", u64::from(self.max_query)),
            ("presence.watch_renew_ms", self.watch_renew_ms),
            ("presence.peer_timeout_ms", self.peer_timeout_ms),
        ] {
            if v == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        Ok(())
    }
}

/// Shedding under overload (`crate::overload`): the writer's queue fill, in percent, at which
/// each kind of traffic is shed, and how long a send may wait for room before it is refused.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadSection {
    /// Typing events are dropped from this fill of the writer's queue.
    pub shed_typing_pct: u8,
    /// Presence updates are not pushed from this fill (statuses are still kept).
    pub shed_presence_pct: u8,
    /// Acks and reads are held back and merged from this fill: receipts come later, never lost.
    pub defer_receipts_pct: u8,
    /// A send that finds the writer's queue full waits this long for room, then is refused
    /// with OVERLOADED and a retry hint.
    pub send_wait_ms: u64,
}

impl Default for OverloadSection {
    fn default() -> Self {
        OverloadSection {
            shed_typing_pct: 50,
            shed_presence_pct: 70,
            defer_receipts_pct: 85,
            send_wait_ms: 2_000,
        }
    }
}

impl OverloadSection {
    pub fn thresholds(&self) -> crate::overload::Thresholds {
        crate::overload::Thresholds {
            typing_pct: self.shed_typing_pct,
            presence_pct: self.shed_presence_pct,
            receipts_pct: self.defer_receipts_pct,
        }
    }

    pub(super) fn check(&self) -> Result<(), String> {
        let (t, p, r) = (
            self.shed_typing_pct,
            self.shed_presence_pct,
            self.defer_receipts_pct,
        );
        if !(t <= p && p <= r && r <= 100) {
            return Err(format!(
                "overload: shed_typing_pct ({t}) <= shed_presence_pct ({p}) <= defer_receipts_pct ({r}) <= 100"
            ));
        }
        if self.send_wait_ms == 0 {
            return Err("overload.send_wait_ms must be at least 1".into());
        }
        Ok(())
    }
}
