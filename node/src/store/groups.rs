//! Typed reads of group records: a group's state and members (on its home node), a user's
//! list of its groups (on the user's home node), send dedup and delivered/read tallies.
//! Blocking: async callers use `spawn_blocking`.

use chat_proto::store::{GroupMemberRecord, GroupState, MyGroup, SentRecord};

use super::engine::{Scan, StorageError};
use super::keys::*;
use super::{decode, Cf, Store};

/// The tally kinds (`tally_key`): a member received, or read, a group message.
pub const TALLY_DELIVERED: u8 = 1;
pub const TALLY_READ: u8 = 2;

type NameVisitor<'a> = dyn FnMut(String, &[u8]) -> Result<(), StorageError> + 'a;

impl Store {
    pub fn group_state(&self, group: &str) -> Result<Option<GroupState>, StorageError> {
        match self.engine.get(Cf::Meta, &group_key(group))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// A group's members with their records, in user id order.
    pub fn group_members(
        &self,
        group: &str,
    ) -> Result<Vec<(String, GroupMemberRecord)>, StorageError> {
        let mut out = Vec::new();
        self.scan_names(Cf::Meta, &members_prefix(group), &mut |name, v| {
            out.push((name, decode(v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// The groups `user` is a member of, in group id order.
    pub fn my_groups(&self, user: &str) -> Result<Vec<(String, MyGroup)>, StorageError> {
        let mut out = Vec::new();
        self.scan_names(Cf::Meta, &my_groups_prefix(user), &mut |name, v| {
            out.push((name, decode(v)?));
            Ok(())
        })?;
        Ok(out)
    }

    /// The ✓ a group send got, for a retry (within the retention).
    pub fn group_sent(
        &self,
        group: &str,
        user: &str,
        device: &str,
        client_msg_id: &str,
    ) -> Result<Option<SentRecord>, StorageError> {
        let key = group_send_key(group, user, device, client_msg_id);
        match self.engine.get(Cf::Dedup, &key)? {
            Some(v) => {
                let (ts, rec) = split_timed(&v).ok_or_else(super::reads::corrupt)?;
                if ts < self.retention_floor_ms() {
                    return Ok(None);
                }
                Ok(Some(decode(rec)?))
            }
            None => Ok(None),
        }
    }

    /// The members who received (`TALLY_DELIVERED`) or read (`TALLY_READ`) a group message, in
    /// user id order (within the retention).
    pub fn tallies(
        &self,
        group: &str,
        msg_id: &str,
        kind: u8,
    ) -> Result<Vec<String>, StorageError> {
        let floor = self.retention_floor_ms();
        let mut out = Vec::new();
        self.scan_names(
            Cf::Dedup,
            &tally_prefix(group, msg_id, kind),
            &mut |name, v| {
                if matches!(split_timed(v), Some((ts, _)) if ts >= floor) {
                    out.push(name);
                }
                Ok(())
            },
        )?;
        Ok(out)
    }

    /// Calls `f` with the rest of every key under `prefix` (as a name) and its value.
    fn scan_names(&self, cf: Cf, prefix: &[u8], f: &mut NameVisitor) -> Result<(), StorageError> {
        self.engine.scan(cf, Scan::forward(prefix), &mut |k, v| {
            let Some(name) = k.strip_prefix(prefix) else {
                return Ok(false);
            };
            f(String::from_utf8_lossy(name).into_owned(), v)?;
            Ok(true)
        })
    }
}
