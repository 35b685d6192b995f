//! The node's storage: one RocksDB with a column family per record kind ([`Cf`]).
//!
//! Every write goes through the writer (`crate::writer`), which batches them; this module opens
//! the database and serves reads (`reads`). Reads are blocking calls: async callers use
//! `spawn_blocking`.

mod cf;
pub mod keys;
mod reads;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rocksdb::compaction_filter::Decision;
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, DB};

use chat_proto::store::InboxEntry;

use crate::error::ChatError;
pub use cf::Cf;
use keys::*;

/// Where an older version kept the move marker: a file beside the database (read once, for an
/// upgrade in the middle of a move).
const LEGACY_MOVE_MARKER: &str = "move-in-flight.json";
/// The move marker's key in [`Cf::Node`].
pub(crate) const MOVE_MARKER_KEY: &[u8] = b"move-in-flight";

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
    dir: std::path::PathBuf,
    min_free_bytes: std::sync::atomic::AtomicU64,
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
        let cfs = Cf::ALL.map(|cf| {
            let (expiring, lookups_miss) = match cf {
                Cf::Inbox => (true, false),
                Cf::Dedup => (true, true),
                Cf::Meta | Cf::Outbox | Cf::Node => (false, false),
            };
            ColumnFamilyDescriptor::new(cf.name(), cf_opts(expiring, lookups_miss))
        });
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        let store = Store {
            db,
            retention_ms,
            dir: path.to_path_buf(),
            min_free_bytes: opts.min_free_bytes.into(),
        };
        Ok(Arc::new(store))
    }

    #[cfg(test)]
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }

    pub(crate) fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column family opened")
    }

    /// Writes a batch the writer assembled (with a WAL fsync when `sync`). Below the
    /// free-space floor it is refused first; a storage failure stops the node ([`fail_stop`]).
    pub(crate) fn write(&self, wb: rocksdb::WriteBatch, sync: bool) -> Result<(), String> {
        if let Some(why) = self.below_floor() {
            return Err(why);
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        match self.db.write_opt(wb, &wo) {
            Ok(()) => Ok(()),
            Err(e) if storage_failed(&e) => fail_stop(&e),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Oldest timestamp still inside the retention.
    pub fn retention_floor_ms(&self) -> i64 {
        chat_proto::now_ms() - self.retention_ms
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

    /// The move this node has an unfinished share of (see `crate::rebalance::role`), written by
    /// the writer in the batch that adopts the move.
    pub fn move_marker(&self) -> Result<Option<Vec<u8>>, ChatError> {
        if let Some(v) = self.db.get_cf(self.cf(Cf::Node), MOVE_MARKER_KEY)? {
            return Ok(Some(v));
        }
        Ok(std::fs::read(self.dir.join(LEGACY_MOVE_MARKER)).ok())
    }

    /// Removes an older version's marker file once the marker it held is settled.
    pub(crate) fn remove_legacy_marker(&self) {
        let _ = std::fs::remove_file(self.dir.join(LEGACY_MOVE_MARKER));
    }

    /// Compacts the inbox and dedup column families now (retention applies at once). Operators
    /// rarely need it; tests use it.
    pub fn compact_now(&self) {
        for cf in [Cf::Inbox, Cf::Dedup] {
            self.db
                .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
        }
    }

    /// Flushes memtables to SST files (the WAL already holds every acknowledged write).
    pub fn flush(&self) -> Result<(), ChatError> {
        for cf in Cf::MOVING {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }
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

/// The key bounds `[from, to)` of every key whose owner hash lies in `start..=end`: keys are
/// the 8-byte hash and more, so everything with hash <= end sorts below end + 1, or below nine
/// 0xFF bytes for the last hash.
pub(crate) fn hash_range_bounds(start: u64, end: u64) -> (Vec<u8>, Vec<u8>) {
    let from = start.to_be_bytes().to_vec();
    let to = match end.checked_add(1) {
        Some(e) => e.to_be_bytes().to_vec(),
        None => vec![0xFF; 9],
    };
    (from, to)
}
