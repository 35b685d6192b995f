//! Blocking: a user's list of blocked users (in its `meta` records, so it moves with the user),
//! and the one check every message path asks.

use super::batch::Batch;
use super::Writer;
use crate::error::ChatError;
use crate::store::keys::block_key;
use crate::store::Cf;

impl Writer {
    /// Whether `user` has blocked `other`, as of this batch.
    pub(super) fn blocked(&self, user: &str, other: &str, b: &Batch) -> Result<bool, ChatError> {
        if !b.blocks.is_empty() {
            if let Some(v) = b.blocks.get(&(user.to_string(), other.to_string())) {
                return Ok(*v);
            }
        }
        Ok(self.store.is_blocked(user, other)?)
    }

    pub(super) fn set_block(
        &mut self,
        user: &str,
        other: &str,
        block: bool,
        max: u32,
        b: &mut Batch,
    ) -> Result<(), ChatError> {
        if user == other {
            return Err(ChatError::InvalidArgument(
                "a user cannot block itself".into(),
            ));
        }
        if block == self.blocked(user, other, b)? {
            return Ok(());
        }
        let key = block_key(user, other);
        if block {
            let mut n = self.store.blocked(user)?.len();
            for ((u, _), v) in &b.blocks {
                if u == user {
                    // A change in this batch the store does not show yet.
                    if *v {
                        n += 1;
                    } else {
                        n = n.saturating_sub(1);
                    }
                }
            }
            if n >= max as usize {
                return Err(ChatError::LimitReached(format!(
                    "already {n} blocked users (the limit is {max})"
                )));
            }
            b.writes.put(Cf::Meta, &key, b.now_ms.to_be_bytes());
        } else {
            b.writes.delete(Cf::Meta, &key);
        }
        b.blocks
            .insert((user.to_string(), other.to_string()), block);
        Ok(())
    }
}
