//! Who watches whom, with no I/O: this node's connections and the users they watch (`Local`),
//! and the other nodes whose users watch users of this node (`Remote`, soft state that expires
//! unless renewed, so it follows the ring without any hand-over).

use std::collections::{HashMap, HashSet};

/// The connections of this node watching users, per watched user.
pub struct Local<T> {
    by_target: HashMap<String, Vec<(u64, String, T)>>,
    by_conn: HashMap<u64, Vec<String>>,
}

impl<T: Clone> Local<T> {
    pub fn new() -> Local<T> {
        Local {
            by_target: HashMap::new(),
            by_conn: HashMap::new(),
        }
    }

    /// Connection `conn` of `user` now watches exactly `targets` (replacing what it watched);
    /// `sink` is where its updates go.
    pub fn set(&mut self, conn: u64, user: &str, sink: T, targets: &[String]) {
        self.remove(conn);
        if targets.is_empty() {
            return;
        }
        for t in targets {
            self.by_target.entry(t.clone()).or_default().push((
                conn,
                user.to_string(),
                sink.clone(),
            ));
        }
        self.by_conn.insert(conn, targets.to_vec());
    }

    pub fn remove(&mut self, conn: u64) {
        for t in self.by_conn.remove(&conn).unwrap_or_default() {
            if let Some(v) = self.by_target.get_mut(&t) {
                v.retain(|(c, _, _)| *c != conn);
                if v.is_empty() {
                    self.by_target.remove(&t);
                }
            }
        }
    }

    /// The (watcher user, sink) pairs watching `target`.
    pub fn watching(&self, target: &str) -> Vec<(String, T)> {
        self.by_target
            .get(target)
            .map(|v| v.iter().map(|(_, u, s)| (u.clone(), s.clone())).collect())
            .unwrap_or_default()
    }

    /// The users (each once, in id order) watching `target` from this node.
    pub fn watchers_of(&self, target: &str) -> Vec<String> {
        let mut users: Vec<String> = self
            .by_target
            .get(target)
            .map(|v| v.iter().map(|(_, u, _)| u.clone()).collect())
            .unwrap_or_default();
        users.sort();
        users.dedup();
        users
    }

    /// Every watched user with the users watching it.
    pub fn interests(&self) -> Vec<(String, Vec<String>)> {
        self.by_target
            .keys()
            .map(|t| (t.clone(), self.watchers_of(t)))
            .collect()
    }

    #[cfg(test)]
    pub fn connections(&self) -> usize {
        self.by_conn.len()
    }
}

/// Users of other nodes watching users of this node: per target, per node, the watchers and
/// when the interest lapses.
#[derive(Default)]
pub struct Remote {
    by_target: HashMap<String, HashMap<String, (HashSet<String>, i64)>>,
}

impl Remote {
    /// `node` renews its interest in `target` for `watchers` until `until_ms` (replacing the
    /// watchers it named before); whether the interest is new (none, or a lapsed one, before).
    pub fn renew(
        &mut self,
        node: &str,
        target: &str,
        watchers: &[String],
        until_ms: i64,
        now: i64,
    ) -> bool {
        let old = self
            .by_target
            .entry(target.to_string())
            .or_default()
            .insert(
                node.to_string(),
                (watchers.iter().cloned().collect(), until_ms),
            );
        old.is_none_or(|(_, until)| until <= now)
    }

    /// The nodes (with their watchers) interested in `target` at `now`; lapsed interests are
    /// dropped on the way.
    pub fn interested(&mut self, target: &str, now: i64) -> Vec<(String, Vec<String>)> {
        let Some(nodes) = self.by_target.get_mut(target) else {
            return Vec::new();
        };
        nodes.retain(|_, (_, until)| *until > now);
        let out = nodes
            .iter()
            .map(|(n, (w, _))| {
                let mut w: Vec<String> = w.iter().cloned().collect();
                w.sort();
                (n.clone(), w)
            })
            .collect();
        if nodes.is_empty() {
            self.by_target.remove(target);
        }
        out
    }

    /// Drops every lapsed interest (memory follows the interests renewed, not all ever made).
    pub fn sweep(&mut self, now: i64) {
        self.by_target.retain(|_, nodes| {
            nodes.retain(|_, (_, until)| *until > now);
            !nodes.is_empty()
        });
    }

    #[cfg(test)]
    pub fn targets(&self) -> usize {
        self.by_target.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn a_connection_watches_exactly_its_latest_list() {
        let mut l: Local<u8> = Local::new();
        l.set(1, "alice", 7, &s(&["bob", "carol"]));
        l.set(2, "dave", 8, &s(&["bob"]));
        assert_eq!(l.watching("bob").len(), 2);
        l.set(1, "alice", 7, &s(&["carol"]));
        assert_eq!(l.watching("bob"), vec![("dave".to_string(), 8)]);
        assert_eq!(l.watching("carol"), vec![("alice".to_string(), 7)]);
        l.remove(2);
        l.set(1, "alice", 7, &[]);
        assert!(l.watching("bob").is_empty() && l.watching("carol").is_empty());
        assert_eq!(l.connections(), 0);
        assert!(l.interests().is_empty(), "nothing left behind");
    }

    #[test]
    fn remote_interest_lapses_unless_renewed() {
        let mut r = Remote::default();
        assert!(r.renew("n2", "bob", &s(&["alice"]), 1_000, 0));
        assert!(r.renew("n3", "bob", &s(&["carol", "dave"]), 2_000, 0));
        assert!(
            !r.renew("n3", "bob", &s(&["carol", "dave"]), 2_000, 100),
            "a renewal"
        );
        assert_eq!(r.interested("bob", 500).len(), 2);
        assert_eq!(
            r.interested("bob", 1_500),
            vec![("n3".to_string(), s(&["carol", "dave"]))]
        );
        assert!(!r.renew("n3", "bob", &s(&["carol"]), 3_000, 1_500));
        assert!(
            r.renew("n2", "bob", &s(&["alice"]), 3_000, 1_500),
            "after it lapsed: new"
        );
        let mut now = r.interested("bob", 2_500);
        now.sort();
        assert_eq!(
            now,
            vec![
                ("n2".to_string(), s(&["alice"])),
                ("n3".to_string(), s(&["carol"]))
            ]
        );
        r.sweep(3_000);
        assert_eq!(r.targets(), 0);
    }
}
