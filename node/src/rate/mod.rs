//! Rate limits: per user (messages, typing) and per source address (new connections), each a
//! token bucket ([`bucket`]). A refusal is `RATE_LIMITED` with the exact wait as its retry hint;
//! nothing is ever dropped silently.
//!
//! Buckets live in memory on the node that serves the user (its home), so a user's limit holds
//! across all its devices. A bucket that has refilled completely is forgotten, so memory follows
//! the number of recently active users, not the number ever seen.

pub mod bucket;

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Instant;

use bucket::{Bucket, Rate};

use crate::error::ChatError;

const SHARDS: usize = 16;
/// A shard is swept (full buckets dropped) when it grows past this, or twice its size after
/// the last sweep.
const SWEEP_FLOOR: usize = 1024;

/// What a request counts against: a user's sends, typing events, presence and media requests, an
/// address's new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Messages = 0,
    Typing = 1,
    Connections = 2,
    Presence = 3,
    GroupSends = 4,
    GroupRequests = 5,
    Media = 6,
}

impl Limit {
    pub const COUNT: usize = 7;

    /// The `limit` label of `chat_rate_limited_total`, and the word in the error message.
    pub fn name(self) -> &'static str {
        match self {
            Limit::Messages => "messages",
            Limit::Typing => "typing",
            Limit::Connections => "connections",
            Limit::Presence => "presence",
            Limit::GroupSends => "group_sends",
            Limit::GroupRequests => "group_requests",
            Limit::Media => "media",
        }
    }

    pub const ALL: [Limit; Limit::COUNT] = [
        Limit::Messages,
        Limit::Typing,
        Limit::Connections,
        Limit::Presence,
        Limit::GroupSends,
        Limit::GroupRequests,
        Limit::Media,
    ];
}

struct Shard<K> {
    buckets: HashMap<K, [Bucket; Limit::COUNT]>,
    sweep_at: usize,
}

/// Token buckets per key (a user id, a source address), one per [`Limit`].
pub struct Limiter<K> {
    shards: Vec<Mutex<Shard<K>>>,
    rates: [Rate; Limit::COUNT],
    started: Instant,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// `rates[i]` is the rate of `Limit::ALL[i]`.
    pub fn new(rates: [Rate; Limit::COUNT]) -> Limiter<K> {
        Limiter {
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        buckets: HashMap::new(),
                        sweep_at: SWEEP_FLOOR,
                    })
                })
                .collect(),
            rates,
            started: Instant::now(),
        }
    }

    /// Counts one request of `key` against `limit` now.
    pub fn check(&self, key: &K, limit: Limit) -> Result<(), ChatError> {
        let now = self.started.elapsed().as_millis() as u64;
        self.check_at(key, limit, now)
    }

    /// Counts one request of `key` against `limit` at `now_ms` (milliseconds on the limiter's
    /// own clock).
    pub fn check_at(&self, key: &K, limit: Limit, now_ms: u64) -> Result<(), ChatError> {
        let rate = self.rates[limit as usize];
        if rate.is_off() {
            return Ok(());
        }
        let mut shard = self.shards[shard_of(key)].lock().expect("limiter lock");
        let taken = match shard.buckets.get_mut(key) {
            Some(b) => b[limit as usize].take(rate, now_ms),
            None => {
                let mut b = [Bucket::default(); Limit::COUNT];
                let taken = b[limit as usize].take(rate, now_ms);
                shard.buckets.insert(key.clone(), b);
                if shard.buckets.len() >= shard.sweep_at {
                    shard
                        .buckets
                        .retain(|_, b| !b.iter().all(|b| b.is_full(now_ms)));
                    shard.sweep_at = (shard.buckets.len() * 2).max(SWEEP_FLOOR);
                }
                taken
            }
        };
        taken.map_err(|wait_ms| {
            metrics::counter!(crate::admin::RATE_LIMITED, "limit" => limit.name()).increment(1);
            ChatError::RateLimited {
                what: limit.name(),
                per_min: rate.per_min,
                retry_after_ms: wait_ms,
            }
        })
    }

    /// Keys with a bucket in memory.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap().buckets.len())
            .sum()
    }
}

fn shard_of<K: Hash>(key: &K) -> usize {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let h =
        BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(key);
    (h % SHARDS as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_min: u32, burst: u32) -> Limiter<String> {
        let r = Rate { per_min, burst };
        Limiter::new([r; Limit::COUNT])
    }

    #[test]
    fn one_users_flood_does_not_touch_another_user_or_limit() {
        let l = limiter(60, 5);
        let alice = "alice".to_string();
        for _ in 0..5 {
            l.check_at(&alice, Limit::Messages, 0).unwrap();
        }
        match l.check_at(&alice, Limit::Messages, 0) {
            Err(ChatError::RateLimited { retry_after_ms, .. }) => assert_eq!(retry_after_ms, 1000),
            other => panic!("expected RateLimited, got {other:?}"),
        }
        l.check_at(&alice, Limit::Typing, 0).unwrap();
        l.check_at(&"bob".to_string(), Limit::Messages, 0).unwrap();
        l.check_at(&alice, Limit::Messages, 1000).unwrap();
    }

    #[test]
    fn refilled_buckets_are_forgotten_so_memory_follows_active_keys() {
        let l = limiter(600, 10);
        // 100 ms per token, 1 s to fill: users seen once and then idle are swept away as new
        // users arrive.
        let mut now = 0;
        for i in 0..100_000u64 {
            now = i; // a new user every millisecond
            l.check_at(&format!("u{i}"), Limit::Messages, now).unwrap();
        }
        let tracked = l.tracked();
        assert!(
            tracked < 2 * SHARDS * SWEEP_FLOOR,
            "{tracked} buckets kept for ~1,000 active users"
        );
        let _ = now;
    }

    #[test]
    fn a_limit_of_zero_is_off() {
        let mut rates = [Rate {
            per_min: 1,
            burst: 1,
        }; Limit::COUNT];
        rates[Limit::Messages as usize] = Rate::OFF;
        let l: Limiter<String> = Limiter::new(rates);
        for _ in 0..1000 {
            l.check_at(&"a".to_string(), Limit::Messages, 0).unwrap();
        }
        assert_eq!(l.tracked(), 0, "an off limit keeps no state");
    }
}
