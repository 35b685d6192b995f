//! The node's storage: one RocksDB with a column family per record kind.
//!
//! Writes go through the committer (`crate::commit`), which batches them; this module opens the
//! database and serves reads. Reads are blocking calls: async callers use `spawn_blocking`.

pub mod keys;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::cluster::ForwardEntry;
use chat_proto::store::{DeviceState, InboxEntry, SentRecord, UserState};
use rocksdb::compaction_filter::Decision;
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, ReadOptions, DB};

use crate::error::ChatError;
use keys::*;

pub const CF_INBOX: &str = "inbox";
pub const CF_META: &str = "meta";
pub const CF_DEDUP: &str = "dedup";
pub const CF_OUTBOX: &str = "outbox";
const MOVE_MARKER: &str = "move-in-flight.json";
/// The column families whose keys begin with their owner's hash and move with it (the outbox
/// is this node's own queue and stays).
pub const MOVING_CFS: [&str; 3] = [CF_META, CF_INBOX, CF_DEDUP];

/// A raw key and value, as copied between nodes.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Storage tuning that comes from the node's config.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub retention: Duration,
    pub block_cache_mib: usize,
    /// Writes are refused below this much free disk (`storage.min_free_mib`; 0: never).
    pub min_free_bytes: u64,
}

/// An inbox entry read back from storage.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    pub seq: u64,
    pub ts_ms: i64,
    pub entry: InboxEntry,
}

pub struct Store {
    db: DB,
    retention_ms: i64,
    /// Column family ids (as a `WriteBatch` reports them) and names.
    cf_ids: Vec<(u32, &'static str)>,
    /// Recipients with entries waiting in the outbox, and how many. A message for a user this
    /// node owns goes through the outbox too while older ones for that user wait there (after
    /// the ring moved the user here), so it cannot overtake them.
    pending: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    dir: std::path::PathBuf,
    /// The move marker is on disk: this node has an unfinished share of a move.
    move_pending: std::sync::atomic::AtomicBool,
    min_free_bytes: std::sync::atomic::AtomicU64,
}

/// Learns each column family's id by iterating a probe batch (the crate exposes no id getter).
struct CfProbe(Vec<u32>);

impl rocksdb::WriteBatchIteratorCf for CfProbe {
    fn put_cf(&mut self, cf_id: u32, _key: &[u8], _value: &[u8]) {
        self.0.push(cf_id);
    }
    fn delete_cf(&mut self, _cf_id: u32, _key: &[u8]) {}
    fn merge_cf(&mut self, _cf_id: u32, _key: &[u8], _value: &[u8]) {}
}

/// Drops values whose timestamp header is older than the retention. Runs inside compactions, so
/// expiry costs no scan; reads also skip expired entries, so the result does not depend on when
/// compaction happens to run.
fn retention_filter(retention_ms: i64) -> impl FnMut(u32, &[u8], &[u8]) -> Decision {
    move |_level, _key, value| match split_timed(value) {
        Some((ts, _)) if ts < chat_proto::now_ms() - retention_ms => Decision::Remove,
        _ => Decision::Keep,
    }
}

impl Store {
    pub fn open(path: &Path, opts: &StoreOptions) -> Result<Arc<Store>, ChatError> {
        std::fs::create_dir_all(path)
            .map_err(|e| ChatError::Internal(format!("create {}: {e}", path.display())))?;
        let retention_ms = opts.retention.as_millis().min(i64::MAX as u128) as i64;
        let cache = Cache::new_lru_cache(opts.block_cache_mib.max(1) * 1024 * 1024);
        let cf_opts = |expiring: bool, lookups_miss: bool| {
            let mut o = Options::default();
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            t.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&t);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if lookups_miss {
                // Most lookups here are for keys that do not exist (a new client_msg_id, a new
                // forwarded entry): a memtable bloom filter answers them without a skiplist walk.
                o.set_memtable_whole_key_filtering(true);
                o.set_memtable_prefix_bloom_ratio(0.02);
            }
            if expiring {
                o.set_compaction_filter("retention", retention_filter(retention_ms));
                // Rewrite files at least this often even without new writes, so expired entries
                // leave the disk within about retention + a quarter of it (a week at most),
                // without rewriting the whole database every day.
                o.set_periodic_compaction_seconds(
                    (opts.retention.as_secs() / 4).clamp(60, 7 * 24 * 3600),
                );
            }
            o
        };
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.increase_parallelism(2);
        // Write flushed and compacted files out in 1 MiB steps instead of all at their end: a
        // memtable flush otherwise leaves tens of MB dirty, and the WAL fsync behind every ✓
        // waits for that writeback (second-long ✓ stalls once per flush on this machine).
        db_opts.set_bytes_per_sync(1 << 20);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_INBOX, cf_opts(true, false)),
            ColumnFamilyDescriptor::new(CF_META, cf_opts(false, false)),
            ColumnFamilyDescriptor::new(CF_DEDUP, cf_opts(true, true)),
            ColumnFamilyDescriptor::new(CF_OUTBOX, cf_opts(false, false)),
        ];
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let names = [CF_INBOX, CF_META, CF_DEDUP, CF_OUTBOX];
        let mut probe = rocksdb::WriteBatch::default();
        for n in names {
            probe.put_cf(db.cf_handle(n).expect("opened"), b"", b"");
        }
        let mut ids = CfProbe(Vec::new());
        probe.iterate_cf(&mut ids);
        let cf_ids = ids.0.into_iter().zip(names).collect();
        let store = Store {
            db,
            retention_ms,
            cf_ids,
            pending: Default::default(),
            dir: path.to_path_buf(),
            move_pending: Default::default(),
            min_free_bytes: opts.min_free_bytes.into(),
        };
        let mut from = 0;
        loop {
            let page = store.outbox_from(from, 10_000)?;
            let Some((last, _)) = page.last() else { break };
            from = last + 1;
            store.outbox_added(page.iter().map(|(_, e)| e.to.as_str()));
        }
        let pending = store.move_marker().is_some();
        store.set_move_pending(pending);
        Ok(Arc::new(store))
    }

    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    /// The name of the column family with this id in a `WriteBatch`.
    pub(crate) fn cf_name(&self, id: u32) -> Option<&'static str> {
        self.cf_ids.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
    }

    /// Deletes every key whose owner hash lies in `start..=end` from the column families that
    /// move with their owners, in `wb`.
    pub(crate) fn delete_hash_range(&self, wb: &mut rocksdb::WriteBatch, start: u64, end: u64) {
        let from = start.to_be_bytes().to_vec();
        // Keys are the 8-byte hash and more: everything with hash <= end sorts below end + 1, or
        // below nine 0xFF bytes for the last hash.
        let to = match end.checked_add(1) {
            Some(e) => e.to_be_bytes().to_vec(),
            None => vec![0xFF; 9],
        };
        for cf in MOVING_CFS {
            wb.delete_range_cf(self.cf(cf), &from, &to);
        }
    }

    /// Up to `max_keys` / `max_bytes` of `cf`'s keys whose owner hash lies in `start..=end`,
    /// after `after` (from the start of the range without it), and whether the range ended.
    pub(crate) fn hash_range_page(
        &self,
        cf: &str,
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
            let hash = k.get(..8).map_or(u64::MAX, |h| {
                u64::from_be_bytes(h.try_into().expect("8 bytes"))
            });
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

    pub(crate) fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family opened")
    }

    /// Oldest timestamp still inside the retention.
    pub fn retention_floor_ms(&self) -> i64 {
        chat_proto::now_ms() - self.retention_ms
    }

    /// Whether a forwarded entry with this id was already stored for `user` (within the retention).
    pub fn forward_seen(&self, user: &str, entry_id: &str) -> Result<bool, ChatError> {
        Ok(
            match self
                .db
                .get_pinned_cf(self.cf(CF_DEDUP), forward_dedup_key(user, entry_id))?
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
        let mut it = self.db.raw_iterator_cf(self.cf(CF_OUTBOX));
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
        let mut it = self.db.raw_iterator_cf(self.cf(CF_OUTBOX));
        it.seek_to_last();
        let last = match it.key() {
            Some(k) => outbox_seq(k).ok_or_else(corrupt)?,
            None => 0,
        };
        it.status()?;
        Ok(last)
    }

    /// The move this node gives segments away in and has not finished (sealed) yet, kept in a
    /// small file beside the database so that a restart finishes it (see `crate::rebalance`).
    pub fn move_marker(&self) -> Option<Vec<u8>> {
        std::fs::read(self.dir.join(MOVE_MARKER)).ok()
    }

    /// Free space for this process on the data directory's filesystem.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.dir)
    }

    /// Why a write must be refused now, if it must: free disk is under the floor. Every write
    /// checks this first, so RocksDB does not run out of space itself (then it refuses every
    /// write until reopened: see [`fail_stop`]).
    pub fn below_floor(&self) -> Option<String> {
        let floor = self
            .min_free_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        self.free_bytes().filter(|f| *f < floor).map(|_| {
            format!(
                "No space left on device: less than {} MiB free in the data directory",
                floor / (1024 * 1024)
            )
        })
    }

    /// Changes the free-space floor (tests).
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn set_move_marker(&self, bytes: &[u8]) -> Result<(), ChatError> {
        let io = |e: std::io::Error| ChatError::Internal(format!("move marker: {e}"));
        let tmp = self.dir.join(format!("{MOVE_MARKER}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        std::io::Write::write_all(&mut f, bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, self.dir.join(MOVE_MARKER)).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        self.set_move_pending(true);
        Ok(())
    }

    pub fn clear_move_marker(&self) {
        let _ = std::fs::remove_file(self.dir.join(MOVE_MARKER));
        self.set_move_pending(false);
    }

    /// Whether the move marker is on disk (without reading it).
    pub fn move_pending(&self) -> bool {
        self.move_pending.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set_move_pending(&self, pending: bool) {
        self.move_pending
            .store(pending, std::sync::atomic::Ordering::Release);
        metrics::gauge!(crate::admin::REBALANCE_PENDING).set(if pending { 1.0 } else { 0.0 });
    }

    /// Counts outbox entries for these recipients (on their commit).
    pub fn outbox_added<'a>(&self, to: impl IntoIterator<Item = &'a str>) {
        let mut p = self.pending.lock().expect("not poisoned");
        for t in to {
            *p.entry(t.to_string()).or_default() += 1;
        }
    }

    /// Uncounts outbox entries for these recipients (on their removal).
    pub fn outbox_removed<'a>(&self, to: impl IntoIterator<Item = &'a str>) {
        let mut p = self.pending.lock().expect("not poisoned");
        for t in to {
            if let Some(n) = p.get_mut(t) {
                *n -= 1;
                if *n == 0 {
                    p.remove(t);
                }
            }
        }
    }

    /// Whether entries for `to` wait in the outbox.
    pub fn outbox_pending(&self, to: &str) -> bool {
        self.pending.lock().expect("not poisoned").contains_key(to)
    }

    /// Removes outbox entries the receiving node has stored. Not synced: if the removal is lost
    /// in a crash the entries are forwarded again, and the receiver deduplicates them.
    pub fn delete_outbox(&self, seqs: &[u64]) -> Result<(), ChatError> {
        if let Some(why) = self.below_floor() {
            return Err(ChatError::StorageFull(why));
        }
        let mut wb = rocksdb::WriteBatch::default();
        for s in seqs {
            wb.delete_cf(self.cf(CF_OUTBOX), outbox_key(*s));
        }
        match self.db.write(wb) {
            Ok(()) => Ok(()),
            Err(e) if storage_failed(&e) => fail_stop(&e),
            Err(e) => Err(e.into()),
        }
    }

    pub fn user_state(&self, user: &str) -> Result<UserState, ChatError> {
        Ok(
            match self
                .db
                .get_pinned_cf(self.cf(CF_META), user_state_key(user))?
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
            .get_pinned_cf(self.cf(CF_META), device_key(user, device))?
        {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    /// Every device of `user` with its state.
    pub fn devices(&self, user: &str) -> Result<Vec<(String, DeviceState)>, ChatError> {
        let prefix = device_prefix(user);
        let mut it = self.db.raw_iterator_cf(self.cf(CF_META));
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
        match self.db.get_pinned_cf(self.cf(CF_DEDUP), key)? {
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
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_INBOX), ro);
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
        let mut it = self.db.raw_iterator_cf_opt(self.cf(CF_INBOX), ro);
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

    /// Compacts the inbox and dedup column families now (retention applies at once). Operators
    /// rarely need it; tests use it.
    pub fn compact_now(&self) {
        for cf in [CF_INBOX, CF_DEDUP] {
            self.db
                .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Keys physically present in a column family, expired or not (diagnostics and tests).
    pub fn count_keys(&self, cf: &str) -> Result<usize, ChatError> {
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

    /// Flushes memtables to SST files (the WAL already holds every acknowledged write).
    pub fn flush(&self) -> Result<(), ChatError> {
        for cf in [CF_INBOX, CF_META, CF_DEDUP] {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
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

pub(crate) fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, ChatError> {
    M::decode(bytes).map_err(|e| ChatError::Internal(format!("corrupt record: {e}")))
}

/// Free space for this process on the filesystem of `dir` (`statvfs`: blocks available to
/// unprivileged writers), or `None` if it cannot be read.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a NUL-terminated string and `st` a valid statvfs to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Whether a failed write leaves RocksDB unable to take more: an I/O error while writing its
/// log or files (ENOSPC between the free-space check and the write, a failing disk) sets a
/// background error after which every write fails until the database is reopened.
pub fn storage_failed(e: &rocksdb::Error) -> bool {
    matches!(
        e.kind(),
        rocksdb::ErrorKind::IOError | rocksdb::ErrorKind::Corruption
    )
}

/// Stops the node at once (see [`crate::error::EXIT_STORAGE_FAILED`]): nothing of the failed
/// write was acknowledged, and a restart is the one way back to a writable store. The binding
/// has no `DB::Resume`, and reopening in place would need every reader to let go first.
pub fn fail_stop(e: &rocksdb::Error) -> ! {
    tracing::error!(
        error = %e,
        "storage failed: RocksDB takes no more writes; stopping so a restart recovers from its log"
    );
    eprintln!(
        "chat-node: storage failed ({e}); exiting with code {}",
        crate::error::EXIT_STORAGE_FAILED
    );
    std::process::exit(crate::error::EXIT_STORAGE_FAILED)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The forwarder's outbox deletes are writes too: below the free-space floor they are
    /// refused before RocksDB runs out of space (after which it would take no write at all).
    #[test]
    fn outbox_deletes_are_refused_below_the_free_space_floor() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            retention: Duration::from_secs(3600),
            block_cache_mib: 8,
            min_free_bytes: 0,
        };
        let store = Store::open(dir.path(), &opts).unwrap();
        let entry = ForwardEntry {
            to: "bob".into(),
            ..ForwardEntry::default()
        };
        let value = prost::Message::encode_to_vec(&entry);
        store
            .db()
            .put_cf(store.cf(CF_OUTBOX), outbox_key(1), value)
            .unwrap();
        store.set_min_free_bytes(u64::MAX);
        assert!(matches!(
            store.delete_outbox(&[1]),
            Err(ChatError::StorageFull(_))
        ));
        assert_eq!(store.outbox_from(0, 10).unwrap().len(), 1, "still queued");
        store.set_min_free_bytes(0);
        store.delete_outbox(&[1]).unwrap();
        assert!(store.outbox_from(0, 10).unwrap().is_empty());
    }
}
