//! Who is online, with no I/O and the time passed in: per user the devices connected to this
//! node, the last activity, and when an online user goes offline by itself.
//!
//! A user is online while a device is connected and the user was active (a frame with the
//! activity flag, a send, a typing event, a read) within the online window since its devices
//! were last all gone. Connecting is not activity: a phone syncing in the background does not
//! make its user online. A [`Change`] is reported exactly when a user's online state flips.

use std::collections::{BTreeSet, HashMap};

/// What others may learn about a user (before its privacy settings apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub online: bool,
    /// When the user was last active here (ms since the epoch); 0 when unknown.
    pub last_seen_ms: i64,
}

/// A user's online state flipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub user: String,
    pub status: Status,
}

#[derive(Debug, Default)]
struct Entry {
    connected: u32,
    /// 0: not active since the entry was made.
    last_active_ms: i64,
    online: bool,
}

pub struct Table {
    window_ms: i64,
    users: HashMap<String, Entry>,
    /// (when, user) for every online user: when it goes offline unless active again.
    deadlines: BTreeSet<(i64, String)>,
}

impl Table {
    pub fn new(window_ms: i64) -> Table {
        Table {
            window_ms,
            users: HashMap::new(),
            deadlines: BTreeSet::new(),
        }
    }

    /// A device of `user` connected here.
    pub fn connected(&mut self, user: &str) {
        self.users.entry(user.to_string()).or_default().connected += 1;
    }

    /// A device of `user` went away; the last one takes the user offline.
    pub fn disconnected(&mut self, user: &str) -> Option<Change> {
        let e = self.users.get_mut(user)?;
        e.connected = e.connected.saturating_sub(1);
        if e.connected > 0 {
            return None;
        }
        let e = self.users.remove(user).expect("present");
        if !e.online {
            return None;
        }
        self.deadlines
            .remove(&(e.last_active_ms + self.window_ms, user.to_string()));
        Some(Change {
            user: user.to_string(),
            status: Status {
                online: false,
                last_seen_ms: e.last_active_ms,
            },
        })
    }

    /// `user` did something on a connected device at `now`.
    pub fn active(&mut self, user: &str, now: i64) -> Option<Change> {
        let window = self.window_ms;
        let e = self.users.get_mut(user).filter(|e| e.connected > 0)?;
        if now <= e.last_active_ms {
            return None;
        }
        let was_online = e.online;
        if was_online {
            self.deadlines
                .remove(&(e.last_active_ms + window, user.to_string()));
        }
        e.last_active_ms = now;
        e.online = true;
        self.deadlines.insert((now + window, user.to_string()));
        (!was_online).then(|| Change {
            user: user.to_string(),
            status: Status {
                online: true,
                last_seen_ms: now,
            },
        })
    }

    /// Users whose window passed by `now` go offline.
    pub fn expire(&mut self, now: i64) -> Vec<Change> {
        let mut out = Vec::new();
        while let Some((at, _)) = self.deadlines.first() {
            if *at > now {
                break;
            }
            let (_, user) = self.deadlines.pop_first().expect("first");
            if let Some(e) = self.users.get_mut(&user) {
                e.online = false;
                out.push(Change {
                    user,
                    status: Status {
                        online: false,
                        last_seen_ms: e.last_active_ms,
                    },
                });
            }
        }
        out
    }

    /// When the next online user goes offline by itself.
    pub fn next_deadline(&self) -> Option<i64> {
        self.deadlines.first().map(|(at, _)| *at)
    }

    /// The user's status as this node sees it now; `None` when no device of it is connected
    /// here (its last seen is then the stored one).
    pub fn status(&self, user: &str) -> Option<Status> {
        self.users.get(user).map(|e| Status {
            online: e.online,
            last_seen_ms: e.last_active_ms,
        })
    }

    /// Users with an entry (a device connected).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn activity_makes_online_and_the_window_or_the_last_device_ends_it() {
        let mut t = Table::new(15_000);
        t.connected("bob");
        assert_eq!(
            t.status("bob").map(|s| s.online),
            Some(false),
            "connecting is not activity"
        );
        let on = t.active("bob", 1_000).unwrap();
        assert!(on.status.online);
        assert_eq!(t.active("bob", 5_000), None, "still online: no change");
        assert_eq!(t.next_deadline(), Some(20_000));
        assert!(t.expire(19_999).is_empty());
        let off = t.expire(20_000);
        assert_eq!(off.len(), 1);
        assert_eq!(
            off[0].status,
            Status {
                online: false,
                last_seen_ms: 5_000
            }
        );
        // Active again, then the device goes: offline at once.
        t.active("bob", 30_000).unwrap();
        let off = t.disconnected("bob").unwrap();
        assert_eq!(
            off.status,
            Status {
                online: false,
                last_seen_ms: 30_000
            }
        );
        assert_eq!(t.next_deadline(), None);
        assert_eq!(t.len(), 0, "nothing kept for a user with no device here");
        assert_eq!(
            t.active("bob", 31_000),
            None,
            "activity needs a connected device"
        );
    }

    #[derive(Debug, Clone)]
    enum Ev {
        Connect(u8),
        Disconnect(u8),
        Active(u8),
        Wait(u16),
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (0u8..3).prop_map(Ev::Connect),
            (0u8..3).prop_map(Ev::Disconnect),
            (0u8..3).prop_map(Ev::Active),
            (0u16..20_000).prop_map(Ev::Wait),
        ]
    }

    proptest! {
        /// Against a model: online iff a device is connected and there was activity within the
        /// window since the devices were last all gone; a change is reported exactly when that
        /// flips, and the last seen reported is the last activity.
        #[test]
        fn changes_are_reported_exactly_when_the_model_flips(evs in proptest::collection::vec(ev(), 1..200)) {
            const W: i64 = 15_000;
            let mut t = Table::new(W);
            let mut now = 1_000_000i64;
            // Model per user: connected devices, last activity while connected (since all gone).
            let mut conn = [0u32; 3];
            let mut last: [Option<i64>; 3] = [None; 3];
            let mut seen_online = [false; 3];
            for e in evs {
                let mut changes = Vec::new();
                match e {
                    Ev::Connect(u) => { t.connected(&u.to_string()); conn[u as usize] += 1; }
                    Ev::Disconnect(u) => {
                        changes.extend(t.disconnected(&u.to_string()));
                        let c = &mut conn[u as usize];
                        if *c > 0 { *c -= 1; if *c == 0 { last[u as usize] = None; } }
                    }
                    Ev::Active(u) => {
                        now += 1;
                        changes.extend(t.active(&u.to_string(), now));
                        if conn[u as usize] > 0 { last[u as usize] = Some(now); }
                    }
                    Ev::Wait(ms) => now += i64::from(ms),
                }
                changes.extend(t.expire(now));
                for c in &changes {
                    let u: usize = c.user.parse().unwrap();
                    prop_assert_ne!(seen_online[u], c.status.online, "a change that changes nothing");
                    seen_online[u] = c.status.online;
                }
                for u in 0..3 {
                    let model = conn[u] > 0 && last[u].is_some_and(|l| now < l + W);
                    prop_assert_eq!(seen_online[u], model, "user {} at {}", u, now);
                    let st = t.status(&u.to_string());
                    prop_assert_eq!(st.map(|s| s.online).unwrap_or(false), model);
                    if let (Some(s), Some(l)) = (st, last[u]) {
                        prop_assert_eq!(s.last_seen_ms, l);
                    }
                }
            }
        }
    }
}
