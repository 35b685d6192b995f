//! Typed reads of the node's records. Blocking: async callers use `spawn_blocking`.

use chat_proto::cluster::ForwardEntry;
use chat_proto::store::{DeviceState, SentRecord, UserState};
use rocksdb::ReadOptions;

use super::keys::*;
use super::{decode, Cf, KeyValue, Store, StoredEntry};
use crate::error::ChatError;

impl Store {
    /// Whether a forwarded entry with this id was already stored for `user` (within the retention).
    pub fn forward_seen(&self, user: &str, entry_id: &str) -> Result<bool, ChatError> {
        Ok(
            match self
                .db
                .get_pinned_cf(self.cf(Cf::Dedup), forward_dedup_key(user, entry_id))?
            {
                Some(v) => {
                    matches!(split_timed(&v), Some((ts, _)) if ts >= self.retention_floor_ms())
                }
                None => false,
            },
        )
    }

    /// Up to `limit` outbox entries with seq >= `from`, in order.
    pub fn outbox_from(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, ForwardEntry)>, ChatError> {
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::Outbox));
        it.seek(outbox_key(from));
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let seq = outbox_seq(k).ok_or_else(corrupt)?;
            out.push((seq, decode(v)?));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// The highest outbox seq in use (0 when the outbox is empty).
    pub fn last_outbox_seq(&self) -> Result<u64, ChatError> {
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::Outbox));
        it.seek_to_last();
        let last = match it.key() {
            Some(k) => outbox_seq(k).ok_or_else(corrupt)?,
            None => 0,
        };
        it.status()?;
        Ok(last)
    }

    /// Up to `max_keys` / `max_bytes` of `cf`'s keys whose owner hash lies in `start..=end`,
    /// after `after` (from the start of the range without it), and whether the range ended.
    pub(crate) fn hash_range_page(
        &self,
        cf: Cf,
        start: u64,
        end: u64,
        after: Option<&[u8]>,
        max_keys: usize,
        max_bytes: usize,
    ) -> Result<(Vec<KeyValue>, bool), ChatError> {
        let first = match after {
            Some(k) => {
                let mut k = k.to_vec();
                k.push(0);
                k
            }
            None => start.to_be_bytes().to_vec(),
        };
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek(&first);
        let (mut out, mut bytes) = (Vec::new(), 0usize);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            let hash = owner_hash(k).unwrap_or(u64::MAX);
            if hash > end {
                return Ok((out, true));
            }
            if out.len() >= max_keys || bytes >= max_bytes {
                return Ok((out, false));
            }
            bytes += k.len() + v.len();
            out.push((k.to_vec(), v.to_vec()));
            it.next();
        }
        it.status()?;
        Ok((out, true))
    }

    pub fn user_state(&self, user: &str) -> Result<UserState, ChatError> {
        Ok(
            match self
                .db
                .get_pinned_cf(self.cf(Cf::Meta), user_state_key(user))?
            {
                Some(v) => decode(&v)?,
                None => UserState {
                    next_seq: 1,
                    ..Default::default()
                },
            },
        )
    }

    pub fn device_state(&self, user: &str, device: &str) -> Result<Option<DeviceState>, ChatError> {
        match self
            .db
            .get_pinned_cf(self.cf(Cf::Meta), device_key(user, device))?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every device of `user` with its state.
    pub fn devices(&self, user: &str) -> Result<Vec<(String, DeviceState)>, ChatError> {
        let prefix = device_prefix(user);
        let mut it = self.db.raw_iterator_cf(self.cf(Cf::Meta));
        it.seek(&prefix);
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            let Some(name) = k.strip_prefix(prefix.as_slice()) else {
                break;
            };
            out.push((String::from_utf8_lossy(name).into_owned(), decode(v)?));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    pub fn sent_record(
        &self,
        user: &str,
        device: &str,
        client_msg_id: &str,
    ) -> Result<Option<SentRecord>, ChatError> {
        let key = dedup_key(user, device, client_msg_id);
        match self.db.get_pinned_cf(self.cf(Cf::Dedup), key)? {
            Some(v) => {
                let (ts, rec) = split_timed(&v).ok_or_else(corrupt)?;
                // Past the retention it is gone, whether or not compaction has run yet.
                if ts < self.retention_floor_ms() {
                    return Ok(None);
                }
                Ok(Some(decode(rec)?))
            }
            None => Ok(None),
        }
    }

    /// Up to `max` entries of `user`'s inbox with seq >= `from_seq`, oldest first, skipping
    /// entries past the retention.
    pub fn inbox_from(
        &self,
        user: &str,
        from_seq: u64,
        max: usize,
    ) -> Result<Vec<StoredEntry>, ChatError> {
        let prefix = owner_prefix(user);
        let floor = self.retention_floor_ms();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(inbox_key(user, u64::MAX));
        let mut it = self.db.raw_iterator_cf_opt(self.cf(Cf::Inbox), ro);
        it.seek(inbox_key(user, from_seq));
        let mut out = Vec::new();
        while out.len() < max {
            let (Some(k), Some(v)) = (it.key(), it.value()) else {
                break;
            };
            if let Some(e) = parse_entry(&prefix, k, v, floor)? {
                out.push(e);
            }
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Up to `max` entries of `user`'s inbox with seq < `before_seq` (0: no bound), newest first,
    /// and whether older entries remain.
    pub fn inbox_before(
        &self,
        user: &str,
        before_seq: u64,
        max: usize,
    ) -> Result<(Vec<StoredEntry>, bool), ChatError> {
        let prefix = owner_prefix(user);
        let floor = self.retention_floor_ms();
        let upper = if before_seq == 0 {
            u64::MAX
        } else {
            before_seq
        };
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(inbox_key(user, 0));
        let mut it = self.db.raw_iterator_cf_opt(self.cf(Cf::Inbox), ro);
        it.seek_for_prev(inbox_key(user, upper - 1));
        let mut out = Vec::new();
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if let Some(e) = parse_entry(&prefix, k, v, floor)? {
                if out.len() == max {
                    return Ok((out, true));
                }
                out.push(e);
            }
            it.prev();
        }
        it.status()?;
        Ok((out, false))
    }

    /// Keys physically present in a column family, expired or not (diagnostics and tests).
    pub fn count_keys(&self, cf: Cf) -> Result<usize, ChatError> {
        let mut it = self.db.raw_iterator_cf(self.cf(cf));
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        it.status()?;
        Ok(n)
    }
}

fn parse_entry(
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    floor_ms: i64,
) -> Result<Option<StoredEntry>, ChatError> {
    let Some(seq) = inbox_seq(prefix, key) else {
        return Ok(None);
    };
    let (ts_ms, rec) = split_timed(value).ok_or_else(corrupt)?;
    if ts_ms < floor_ms {
        return Ok(None);
    }
    Ok(Some(StoredEntry {
        seq,
        ts_ms,
        entry: decode(rec)?,
    }))
}

fn corrupt() -> ChatError {
    ChatError::Internal("corrupt record: short value".into())
}
