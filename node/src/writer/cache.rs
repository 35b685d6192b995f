//! What the writer keeps in memory between batches: user states, device states and each user's
//! newest entries. Everything here is on disk too; after a failed batch, or raw writes from a
//! move, the cache is emptied and read again.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use chat_proto::store::{DeviceState, GroupMemberRecord, GroupState, InboxEntry, UserState};

use crate::error::ChatError;
use crate::store::Store;

/// User states cached between batches before the cache is emptied (they are all on disk).
const USER_CACHE_MAX: usize = 200_000;
/// Newest committed entries kept per cached user, and in all, for receipts (see `CachedUser`).
const RECENT_PER_USER: usize = 32;
const RECENT_MAX: usize = 100_000;
/// Groups (state and members) cached between batches.
const GROUP_CACHE_MAX: usize = 10_000;

/// A group as its home node's writer knows it (`None` in the cache: no such group).
#[derive(Clone)]
pub(crate) struct CachedGroup {
    pub state: GroupState,
    pub members: BTreeMap<String, GroupMemberRecord>,
}

#[derive(Clone)]
pub(crate) struct CachedUser {
    pub state: UserState,
    /// `next_seq` as of the last successful commit: seqs below it are on disk.
    pub committed_next: u64,
    /// The newest committed inbox entries not yet covered by both receipts, contiguous by seq
    /// (seq, stored ts, entry). A device acks an entry milliseconds after it was appended, so
    /// the receipts for it are made from here instead of reading the entry back from storage.
    pub recent: VecDeque<(u64, i64, Arc<InboxEntry>)>,
    /// The user's `history_days` setting once read (`None`: not read yet), so that an ack
    /// reads no storage for it.
    pub history_days: Option<Option<u32>>,
}

#[derive(Default)]
pub(crate) struct Cache {
    users: HashMap<String, CachedUser>,
    /// Entries held in all `CachedUser::recent` together.
    recent_len: usize,
    /// Committed device states (`None`: known to have no record), so an ack reads no storage.
    pub devices: HashMap<Vec<u8>, Option<DeviceState>>,
    /// Groups this node owns, changed in place by a batch before it commits: a failed batch
    /// empties the cache.
    pub groups: HashMap<String, Option<CachedGroup>>,
}

impl Cache {
    /// `user`'s cached state, read from storage first if needed.
    pub(crate) fn user(&mut self, store: &Store, user: &str) -> Result<&mut CachedUser, ChatError> {
        if !self.users.contains_key(user) {
            let state = store.user_state(user)?;
            let committed_next = state.next_seq;
            self.users.insert(
                user.to_string(),
                CachedUser {
                    state,
                    committed_next,
                    recent: VecDeque::new(),
                    history_days: None,
                },
            );
        }
        Ok(self.users.get_mut(user).expect("just inserted"))
    }

    /// `group`'s cached state and members, read from storage first if needed.
    pub(crate) fn group(
        &mut self,
        store: &Store,
        group: &str,
    ) -> Result<Option<&mut CachedGroup>, ChatError> {
        if !self.groups.contains_key(group) {
            let cached = match store.group_state(group)? {
                Some(state) => Some(CachedGroup {
                    state,
                    members: store.group_members(group)?.into_iter().collect(),
                }),
                None => None,
            };
            self.groups.insert(group.to_string(), cached);
        }
        Ok(self.groups.get_mut(group).expect("just inserted").as_mut())
    }

    pub(crate) fn cached(&self, user: &str) -> Option<&CachedUser> {
        self.users.get(user)
    }

    /// The batch that changed these users is on disk.
    pub(crate) fn committed<'a>(&mut self, users: impl IntoIterator<Item = &'a String>) {
        for user in users {
            if let Some(u) = self.users.get_mut(user) {
                u.committed_next = u.state.next_seq;
            }
        }
    }

    /// Empties the caches; everything in them is on disk (or, after a failed commit, was never
    /// written and must be forgotten).
    pub(crate) fn forget(&mut self) {
        self.users.clear();
        self.devices.clear();
        self.groups.clear();
        self.recent_len = 0;
    }

    /// Empties the caches once they hold too much.
    pub(crate) fn trim(&mut self) {
        if self.users.len() > USER_CACHE_MAX
            || self.devices.len() > USER_CACHE_MAX
            || self.groups.len() > GROUP_CACHE_MAX
        {
            self.forget();
        }
    }

    /// Keeps a committed entry in its user's `recent` (if the user is cached).
    pub(crate) fn remember(&mut self, user: &str, seq: u64, ts: i64, entry: Arc<InboxEntry>) {
        if self.recent_len >= RECENT_MAX {
            for u in self.users.values_mut() {
                u.recent.clear();
            }
            self.recent_len = 0;
        }
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        if u.recent.back().is_some_and(|(last, _, _)| last + 1 != seq) {
            self.recent_len -= u.recent.len();
            u.recent.clear();
        }
        if u.recent.len() == RECENT_PER_USER {
            u.recent.pop_front();
            self.recent_len -= 1;
        }
        u.recent.push_back((seq, ts, entry));
        self.recent_len += 1;
    }

    /// Forgets `user`'s recent entries up to `done` (covered by both receipts: never needed
    /// for a receipt again).
    pub(crate) fn covered(&mut self, user: &str, done: u64) {
        let Some(u) = self.users.get_mut(user) else {
            return;
        };
        while u.recent.front().is_some_and(|(seq, _, _)| *seq <= done) {
            u.recent.pop_front();
            self.recent_len -= 1;
        }
    }

    /// `user`'s recent entries with seqs `from..=to`, if all of them are here.
    pub(crate) fn recent(
        &self,
        user: &str,
        from: u64,
        to: u64,
    ) -> Option<impl Iterator<Item = &(u64, i64, Arc<InboxEntry>)>> {
        let u = self.users.get(user)?;
        let first = u.recent.front()?.0;
        (first <= from && u.recent.back()?.0 >= to).then(|| {
            u.recent
                .range((from - first) as usize..=(to - first) as usize)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache_with(user: &str) -> Cache {
        let mut c = Cache::default();
        c.users.insert(
            user.into(),
            CachedUser {
                state: UserState::default(),
                committed_next: 1,
                recent: VecDeque::new(),
                history_days: None,
            },
        );
        c
    }

    fn entry() -> Arc<InboxEntry> {
        Arc::new(InboxEntry::default())
    }

    #[test]
    fn recent_entries_stay_contiguous_and_bounded() {
        let mut c = cache_with("bob");
        for seq in 1..=40 {
            c.remember("bob", seq, 0, entry());
        }
        assert_eq!(c.recent_len, RECENT_PER_USER);
        assert!(c.recent("bob", 1, 40).is_none(), "the oldest fell out");
        assert_eq!(c.recent("bob", 9, 40).unwrap().count(), 32);
        // A gap (entries committed while the user was not cached) starts the window again.
        c.remember("bob", 45, 0, entry());
        assert_eq!(c.recent_len, 1);
        assert!(c.recent("bob", 40, 40).is_none());
        c.covered("bob", 45);
        assert_eq!(c.recent_len, 0);
        c.remember("carol", 1, 0, entry());
        assert_eq!(c.recent_len, 0, "only cached users keep entries");
    }
}
