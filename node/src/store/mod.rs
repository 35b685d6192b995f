//! The node's storage: a small engine ([`engine::Engine`]: RocksDB in the node, ordered maps in
//! unit tests) with a column family per record kind ([`Cf`]), and typed reads of the node's
//! records ([`reads`]).
//!
//! Every write goes through the writer (`crate::writer`), which batches them; this module opens
//! the database, writes the writer's batches and serves reads. Reads are blocking calls: async
//! callers use `spawn_blocking`.

mod cf;
pub mod engine;
pub mod groups;
mod headroom;
pub mod keys;
#[cfg(test)]
mod memory;
mod reads;
mod rocks;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use chat_proto::store::InboxEntry;

use crate::error::ChatError;
pub use cf::Cf;
use engine::{Engine, EngineBatch, StorageError};
pub use reads::history_floor;

/// Where an older version kept the move marker: a file beside the database (read once, for an
/// upgrade in the middle of a move).
const LEGACY_MOVE_MARKER: &str = "move-in-flight.json";
/// The move marker's key in [`Cf::Node`].
pub(crate) const MOVE_MARKER_KEY: &[u8] = b"move-in-flight";
/// The store's incarnation's key in [`Cf::Node`].
const INCARNATION_KEY: &[u8] = b"incarnation";

fn keep_incarnation(engine: &dyn Engine, id: &str) -> Result<(), StorageError> {
    let mut b = engine.batch();
    b.put(Cf::Node, INCARNATION_KEY, id.as_bytes());
    engine.write(b, true)
}

/// A raw key and value, as copied between nodes.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Storage tuning that comes from the node's config.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub retention: Duration,
    pub block_cache_mib: usize,
    /// Writes are refused below this much free disk (`storage.min_free_mib`; 0: never).
    pub min_free_bytes: u64,
    /// Compactions pause while the free disk above the floor is under this
    /// (`storage.compaction_headroom_mib`).
    pub compaction_headroom_bytes: u64,
}

/// An inbox entry read back from storage.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEntry {
    pub seq: u64,
    pub ts_ms: i64,
    pub entry: InboxEntry,
}

pub struct Store {
    engine: Box<dyn Engine>,
    /// A random id made when the store was created: another id means another disk's data
    /// (replication fills a follower whose id changed again).
    incarnation: String,
    /// Whether this open created the store: no incarnation and no data before.
    created: bool,
    retention_ms: i64,
    /// The data directory (`None` in memory): its free space is checked before each write.
    dir: Option<std::path::PathBuf>,
    min_free_bytes: std::sync::atomic::AtomicU64,
    compaction_headroom_bytes: u64,
    /// Whether the engine may start compactions now (see [`headroom::compactions`]).
    compactions_on: std::sync::atomic::AtomicBool,
    /// The free space to report instead of the file system's (tests of a nearly full disk).
    #[cfg(test)]
    free_bytes_override: std::sync::Mutex<Option<u64>>,
}

impl Store {
    /// Opens (or creates) the node's RocksDB in `path`.
    pub fn open(path: &Path, opts: &StoreOptions) -> Result<Arc<Store>, ChatError> {
        std::fs::create_dir_all(path)
            .map_err(|e| ChatError::Internal(format!("create {}: {e}", path.display())))?;
        let engine = rocks::RocksEngine::open(path, opts.retention, opts.block_cache_mib)?;
        Store::with_engine(Box::new(engine), Some(path.to_path_buf()), opts)
    }

    /// A store that keeps everything in memory (unit tests): no disk, no free-space floor.
    #[cfg(test)]
    pub fn in_memory(opts: &StoreOptions) -> Arc<Store> {
        Store::with_engine(
            Box::new(memory::MemoryEngine::new(opts.retention)),
            None,
            opts,
        )
        .expect("an in-memory store opens")
    }

    fn with_engine(
        engine: Box<dyn Engine>,
        dir: Option<std::path::PathBuf>,
        opts: &StoreOptions,
    ) -> Result<Arc<Store>, ChatError> {
        let (incarnation, created) = match engine.get(Cf::Node, INCARNATION_KEY)? {
            Some(id) => (String::from_utf8_lossy(&id).into_owned(), false),
            None => {
                // A store from before incarnations has data: it was not created now.
                let mut empty = true;
                for cf in Cf::ALL {
                    engine.scan(cf, engine::Scan::forward(&[]), &mut |_, _| {
                        empty = false;
                        Ok(false)
                    })?;
                }
                let id = uuid::Uuid::now_v7().to_string();
                if !empty {
                    keep_incarnation(engine.as_ref(), &id)?;
                }
                (id, empty)
            }
        };
        Ok(Arc::new(Store {
            engine,
            incarnation,
            created,
            retention_ms: millis(opts.retention),
            dir,
            min_free_bytes: opts.min_free_bytes.into(),
            compaction_headroom_bytes: opts.compaction_headroom_bytes,
            compactions_on: true.into(),
            #[cfg(test)]
            free_bytes_override: Default::default(),
        }))
    }

    /// The random id made when this store was created.
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    /// Whether this store held nothing when it was opened (its incarnation is not stored until
    /// [`Store::keep_incarnation`]: a node that refuses to start with it stays new).
    pub fn created(&self) -> bool {
        self.created
    }

    /// Stores a new store's incarnation, once the node accepted to start with it.
    pub fn keep_incarnation(&self) -> Result<(), ChatError> {
        if self.created {
            keep_incarnation(self.engine.as_ref(), &self.incarnation)?;
        }
        Ok(())
    }

    /// An empty batch for [`Store::write`].
    pub(crate) fn batch(&self) -> Box<dyn EngineBatch> {
        self.engine.batch()
    }

    /// Writes a batch the writer assembled (with a WAL fsync when `sync`). Without room for it
    /// above the free-space floor it is refused first ([`headroom`]); an engine that stops
    /// taking writes stops the node ([`fail_stop`]).
    pub(crate) fn write(
        &self,
        batch: Box<dyn EngineBatch>,
        sync: bool,
    ) -> Result<(), StorageError> {
        let floor = self
            .min_free_bytes
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some(free) = self.free_bytes().filter(|_| floor > 0) {
            self.pace_compactions(free.saturating_sub(floor));
            let unflushed = self.engine.unflushed();
            match headroom::verdict(free, floor, unflushed, batch.size_in_bytes() as u64) {
                headroom::Verdict::Write => {}
                headroom::Verdict::FlushThenWrite => {
                    tracing::debug!(
                        free,
                        ?unflushed,
                        "free space is short: flushing memtables early"
                    );
                    self.engine.start_flush();
                }
                headroom::Verdict::Refuse(why) => return Err(StorageError::Full(why)),
            }
        }
        match self.engine.write(batch, sync) {
            Err(StorageError::Failed(e)) => fail_stop(&e),
            r => r,
        }
    }

    /// Pauses or resumes compactions for `headroom` bytes free above the floor (0 under it).
    fn pace_compactions(&self, headroom: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let running = self.compactions_on.load(Relaxed);
        let want = headroom::compactions(headroom, self.compaction_headroom_bytes, running);
        if want == running {
            return;
        }
        match self.engine.set_compactions(want) {
            Ok(()) => {
                self.compactions_on.store(want, Relaxed);
                metrics::gauge!(crate::admin::COMPACTIONS_PAUSED).set(f64::from(u8::from(!want)));
                tracing::warn!(
                    headroom_mib = headroom / (1024 * 1024),
                    "compactions {}",
                    if want {
                        "resumed: free space is back"
                    } else {
                        "paused: free space above the floor is short"
                    }
                );
            }
            Err(e) => tracing::error!(error = %e, "could not switch compactions"),
        }
    }

    /// Whether background compactions may run now.
    #[cfg(test)]
    pub(crate) fn compactions_on(&self) -> bool {
        self.compactions_on
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Oldest timestamp still inside the retention.
    pub fn retention_floor_ms(&self) -> i64 {
        chat_proto::now_ms() - self.retention_ms
    }

    /// Free space for this process on the data directory's filesystem.
    pub fn free_bytes(&self) -> Option<u64> {
        #[cfg(test)]
        if let Some(free) = *self.free_bytes_override.lock().expect("not poisoned") {
            return Some(free);
        }
        free_bytes(self.dir.as_deref()?)
    }

    /// Reports `free` bytes free from now on (tests of a nearly full disk).
    #[cfg(test)]
    pub(crate) fn pretend_free_bytes(&self, free: u64) {
        *self.free_bytes_override.lock().expect("not poisoned") = Some(free);
    }

    /// Changes the free-space floor (tests).
    #[cfg(test)]
    pub fn set_min_free_bytes(&self, bytes: u64) {
        self.min_free_bytes
            .store(bytes, std::sync::atomic::Ordering::Relaxed);
    }

    /// The move this node has an unfinished share of (see `crate::rebalance::role`), written by
    /// the writer in the batch that adopts the move.
    pub fn move_marker(&self) -> Result<Option<Vec<u8>>, ChatError> {
        if let Some(v) = self.engine.get(Cf::Node, MOVE_MARKER_KEY)? {
            return Ok(Some(v));
        }
        Ok(self
            .dir
            .as_ref()
            .and_then(|d| std::fs::read(d.join(LEGACY_MOVE_MARKER)).ok()))
    }

    /// Removes an older version's marker file once the marker it held is settled.
    pub(crate) fn remove_legacy_marker(&self) {
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_file(d.join(LEGACY_MOVE_MARKER));
        }
    }

    /// Compacts the inbox and dedup column families now (retention applies at once, instead of
    /// in the next background compaction).
    #[cfg(test)]
    pub fn compact_now(&self) {
        for cf in Cf::EXPIRING {
            self.engine.compact(cf);
        }
    }

    /// Flushes memtables to SST files (the WAL already holds every acknowledged write).
    pub fn flush(&self) -> Result<(), ChatError> {
        Ok(self.engine.flush()?)
    }
}

/// A duration in milliseconds, as the stored timestamps count (saturating).
fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

pub(crate) fn decode<M: prost::Message + Default>(bytes: &[u8]) -> Result<M, StorageError> {
    M::decode(bytes).map_err(|e| StorageError::Corrupt(e.to_string()))
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

/// Stops the node at once (see [`crate::error::EXIT_STORAGE_FAILED`]): nothing of the failed
/// write was acknowledged, and a restart is the one way back to a writable store. The binding
/// has no `DB::Resume`, and reopening in place would need every reader to let go first.
pub fn fail_stop(e: &str) -> ! {
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
