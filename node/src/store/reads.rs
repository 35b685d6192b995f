//! Typed reads of the node's records. Blocking: async callers use `spawn_blocking`.

use chat_proto::cluster::ForwardEntry;
use chat_proto::store::{DeviceState, SentRecord, UploadRecord, UserSettings, UserState};

use super::engine::{Scan, StorageError};
use super::keys::*;
use super::{decode, Cf, KeyValue, Store, StoredEntry};

impl Store {
    /// Whether a forwarded entry with this id was already stored for `user` (within the retention).
    pub fn forward_seen(&self, user: &str, entry_id: &str) -> Result<bool, StorageError> {
        Ok(
            match self
                .engine
                .get(Cf::Dedup, &forward_dedup_key(user, entry_id))?
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
    ) -> Result<Vec<(u64, ForwardEntry)>, StorageError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.engine
            .scan(Cf::Outbox, Scan::forward(&outbox_key(from)), &mut |k, v| {
                let seq = outbox_seq(k).ok_or_else(corrupt)?;
                out.push((seq, decode(v)?));
                Ok(out.len() < limit)
            })?;
        Ok(out)
    }

    /// The highest outbox seq in use (0 when the outbox is empty).
    pub fn last_outbox_seq(&self) -> Result<u64, StorageError> {
        let mut last = 0;
        self.engine.scan(
            Cf::Outbox,
            Scan::reverse(&outbox_key(u64::MAX), &[]),
            &mut |k, _| {
                last = outbox_seq(k).ok_or_else(corrupt)?;
                Ok(false)
            },
        )?;
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
    ) -> Result<(Vec<KeyValue>, bool), StorageError> {
        let first = match after {
            Some(k) => {
                let mut k = k.to_vec();
                k.push(0);
                k
            }
            None => start.to_be_bytes().to_vec(),
        };
        let (mut out, mut bytes, mut ended) = (Vec::new(), 0usize, true);
        self.engine.scan(cf, Scan::forward(&first), &mut |k, v| {
            let hash = owner_hash(k).unwrap_or(u64::MAX);
            if hash > end {
                return Ok(false);
            }
            if out.len() >= max_keys || bytes >= max_bytes {
                ended = false;
                return Ok(false);
            }
            bytes += k.len() + v.len();
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok((out, ended))
    }

    pub fn user_state(&self, user: &str) -> Result<UserState, StorageError> {
        Ok(match self.engine.get(Cf::Meta, &user_state_key(user))? {
            Some(v) => decode(&v)?,
            None => UserState {
                next_seq: 1,
                ..Default::default()
            },
        })
    }

    pub fn device_state(
        &self,
        user: &str,
        device: &str,
    ) -> Result<Option<DeviceState>, StorageError> {
        match self.engine.get(Cf::Meta, &device_key(user, device))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every device of `user` with its state.
    pub fn devices(&self, user: &str) -> Result<Vec<(String, DeviceState)>, StorageError> {
        let prefix = device_prefix(user);
        let mut out = Vec::new();
        self.engine
            .scan(Cf::Meta, Scan::forward(&prefix), &mut |k, v| {
                let Some(name) = k.strip_prefix(prefix.as_slice()) else {
                    return Ok(false);
                };
                out.push((String::from_utf8_lossy(name).into_owned(), decode(v)?));
                Ok(true)
            })?;
        Ok(out)
    }

    /// When `user` was last seen active, as last stored (coarsely: when it went offline).
    pub fn last_seen(&self, user: &str) -> Result<Option<i64>, StorageError> {
        Ok(self
            .engine
            .get(Cf::Meta, &last_seen_key(user))?
            .and_then(|v| Some(i64::from_be_bytes(v.get(..8)?.try_into().ok()?))))
    }

    pub fn settings(&self, user: &str) -> Result<UserSettings, StorageError> {
        Ok(match self.engine.get(Cf::Meta, &settings_key(user))? {
            Some(v) => decode(&v)?,
            None => UserSettings::default(),
        })
    }

    /// Whether `user` has blocked `other`.
    pub fn is_blocked(&self, user: &str, other: &str) -> Result<bool, StorageError> {
        Ok(self
            .engine
            .get(Cf::Meta, &block_key(user, other))?
            .is_some())
    }

    /// The users `user` has blocked, in id order.
    pub fn blocked(&self, user: &str) -> Result<Vec<String>, StorageError> {
        let prefix = block_prefix(user);
        let mut out = Vec::new();
        self.engine
            .scan(Cf::Meta, Scan::forward(&prefix), &mut |k, _| {
                let Some(name) = k.strip_prefix(prefix.as_slice()) else {
                    return Ok(false);
                };
                out.push(String::from_utf8_lossy(name).into_owned());
                Ok(true)
            })?;
        Ok(out)
    }

    pub fn sent_record(
        &self,
        user: &str,
        device: &str,
        client_msg_id: &str,
    ) -> Result<Option<SentRecord>, StorageError> {
        let key = dedup_key(user, device, client_msg_id);
        match self.engine.get(Cf::Dedup, &key)? {
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

    /// What of `user`'s inbox its history setting no longer keeps but is not trimmed yet (see
    /// `writer::history`): the entries up to the returned seq older than the returned time.
    pub fn history_window(
        &self,
        user: &str,
        now_ms: i64,
    ) -> Result<Option<(u64, i64)>, StorageError> {
        let Some(days) = self.settings(user)?.history_days else {
            return Ok(None);
        };
        let Some(min_cursor) = self.devices(user)?.iter().map(|(_, d)| d.cursor).min() else {
            return Ok(None);
        };
        let read = self.user_state(user)?.read_upto;
        Ok(Some((min_cursor.min(read), history_floor(now_ms, days))))
    }

    /// The upload slot `media_id` given to `user` and when, unless past the retention.
    pub fn upload_record(
        &self,
        user: &str,
        media_id: &str,
    ) -> Result<Option<(i64, UploadRecord)>, StorageError> {
        match self.engine.get(Cf::Dedup, &upload_key(user, media_id))? {
            Some(v) => {
                let (ts, rec) = split_timed(&v).ok_or_else(corrupt)?;
                if ts < self.retention_floor_ms() {
                    return Ok(None);
                }
                Ok(Some((ts, decode(rec)?)))
            }
            None => Ok(None),
        }
    }

    /// The entry of `user`'s inbox at `seq`, unless there is none or it is past the retention.
    pub fn inbox_entry(&self, user: &str, seq: u64) -> Result<Option<StoredEntry>, StorageError> {
        let prefix = owner_prefix(user);
        match self.engine.get(Cf::Inbox, &inbox_key(user, seq))? {
            Some(v) => parse_entry(
                &prefix,
                &inbox_key(user, seq),
                &v,
                self.retention_floor_ms(),
            ),
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
    ) -> Result<Vec<StoredEntry>, StorageError> {
        let prefix = owner_prefix(user);
        let floor = self.retention_floor_ms();
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let (from, end) = (inbox_key(user, from_seq), inbox_key(user, u64::MAX));
        self.engine
            .scan(Cf::Inbox, Scan::forward_until(&from, &end), &mut |k, v| {
                if let Some(e) = parse_entry(&prefix, k, v, floor)? {
                    out.push(e);
                }
                Ok(out.len() < max)
            })?;
        Ok(out)
    }

    /// Up to `max` entries of `user`'s inbox with seq < `before_seq` (0: no bound), newest first,
    /// and whether older entries remain.
    pub fn inbox_before(
        &self,
        user: &str,
        before_seq: u64,
        max: usize,
    ) -> Result<(Vec<StoredEntry>, bool), StorageError> {
        let prefix = owner_prefix(user);
        let floor = self.retention_floor_ms();
        let upper = if before_seq == 0 {
            u64::MAX
        } else {
            before_seq
        };
        let (from, lower) = (inbox_key(user, upper - 1), inbox_key(user, 0));
        let (mut out, mut more) = (Vec::new(), false);
        self.engine
            .scan(Cf::Inbox, Scan::reverse(&from, &lower), &mut |k, v| {
                if let Some(e) = parse_entry(&prefix, k, v, floor)? {
                    if out.len() == max {
                        more = true;
                        return Ok(false);
                    }
                    out.push(e);
                }
                Ok(true)
            })?;
        Ok((out, more))
    }

    /// Every key and value physically present in a column family (tests: what a node holds).
    #[cfg(any(test, feature = "testing"))]
    pub fn all_keys(&self, cf: Cf) -> Result<Vec<KeyValue>, StorageError> {
        let mut out = Vec::new();
        self.engine.scan(cf, Scan::forward(&[]), &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(true)
        })?;
        Ok(out)
    }

    /// Keys physically present in a column family, expired or not (tests: what a node still
    /// holds).
    #[cfg(any(test, feature = "testing"))]
    pub fn count_keys(&self, cf: Cf) -> Result<usize, StorageError> {
        let mut n = 0;
        self.engine.scan(cf, Scan::forward(&[]), &mut |_, _| {
            n += 1;
            Ok(true)
        })?;
        Ok(n)
    }
}

fn parse_entry(
    prefix: &[u8],
    key: &[u8],
    value: &[u8],
    floor_ms: i64,
) -> Result<Option<StoredEntry>, StorageError> {
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

/// The oldest time a history setting of `days` keeps a received and read entry, at `now_ms`.
pub fn history_floor(now_ms: i64, days: u32) -> i64 {
    now_ms - i64::from(days) * chat_media::id::DAY_MS as i64
}

pub(super) fn corrupt() -> StorageError {
    StorageError::Corrupt("short value".into())
}
