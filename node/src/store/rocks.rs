//! The RocksDB engine: one database, a column family per [`Cf`], expiry by a compaction filter.

use std::any::Any;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rocksdb::compaction_filter::Decision;
use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, Options, ReadOptions, DB};

use super::engine::{Direction, Engine, EngineBatch, Scan, StorageError, Unflushed, Visit};
use super::keys::split_timed;
use super::Cf;

pub struct RocksEngine {
    db: Arc<DB>,
}

/// Drops values whose timestamp header is older than the retention. Runs inside compactions, so
/// expiry costs no scan; reads also skip expired entries, so the result does not depend on when
/// compaction happens to run.
fn retention_filter(retention_ms: i64) -> impl FnMut(u32, &[u8], &[u8]) -> Decision {
    move |_level, _key, value| match split_timed(value) {
        Some((ts, _)) if ts < chat_proto::now_ms().saturating_sub(retention_ms) => Decision::Remove,
        _ => Decision::Keep,
    }
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> StorageError {
        match e.kind() {
            // An I/O error while writing its log or files (ENOSPC between the free-space check
            // and the write, a failing disk) sets a background error after which every write
            // fails until the database is reopened.
            rocksdb::ErrorKind::IOError | rocksdb::ErrorKind::Corruption => {
                StorageError::Failed(e.to_string())
            }
            _ => StorageError::Other(e.to_string()),
        }
    }
}

impl RocksEngine {
    pub fn open(
        path: &Path,
        retention: Duration,
        block_cache_mib: usize,
    ) -> Result<RocksEngine, StorageError> {
        let retention_ms = super::millis(retention);
        let cache = Cache::new_lru_cache(block_cache_mib.max(1) * 1024 * 1024);
        let cf_opts = |cf: Cf| {
            let mut o = Options::default();
            let mut t = BlockBasedOptions::default();
            t.set_block_cache(&cache);
            t.set_bloom_filter(10.0, false);
            o.set_block_based_table_factory(&t);
            o.set_compression_type(rocksdb::DBCompressionType::Lz4);
            if cf == Cf::Dedup {
                // Most lookups here are for keys that do not exist (a new client_msg_id, a new
                // forwarded entry): a memtable bloom filter answers them without a skiplist walk.
                o.set_memtable_whole_key_filtering(true);
                o.set_memtable_prefix_bloom_ratio(0.02);
            }
            if cf.expires() {
                o.set_compaction_filter("retention", retention_filter(retention_ms));
                // Rewrite files at least this often even without new writes, so expired entries
                // leave the disk within about retention + a quarter of it (a week at most),
                // without rewriting the whole database every day.
                o.set_periodic_compaction_seconds(
                    (retention.as_secs() / 4).clamp(60, 7 * 24 * 3600),
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
        // No preallocated files: RocksDB would otherwise reserve about 70 MiB ahead for each new
        // log and table file, so the free space the floor and the headroom rule look at
        // (`store::headroom`) would say little about what is really taken, and a reservation
        // that happens to succeed on a nearly full disk leaves a flush without room. The binding
        // has no setter for this option; the options string sets it on a copy of these options.
        let db_opts = db_opts
            .get_options_from_string("allow_fallocate=false")
            .map_err(StorageError::from)?;
        let cfs = Cf::ALL.map(|cf| ColumnFamilyDescriptor::new(cf.name(), cf_opts(cf)));
        let db = DB::open_cf_descriptors(&db_opts, path, cfs)?;
        Ok(RocksEngine { db: Arc::new(db) })
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(cf.name()).expect("column family opened")
    }
}

impl Engine for RocksEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_pinned_cf(self.cf(cf), key)?.map(|v| v.to_vec()))
    }

    fn scan(&self, cf: Cf, scan: Scan<'_>, visit: &mut Visit<'_>) -> Result<(), StorageError> {
        let mut ro = ReadOptions::default();
        match (scan.direction, scan.bound) {
            (Direction::Forward, Some(end)) => ro.set_iterate_upper_bound(end.to_vec()),
            (Direction::Reverse, Some(lower)) => ro.set_iterate_lower_bound(lower.to_vec()),
            (_, None) => {}
        }
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        match scan.direction {
            Direction::Forward => it.seek(scan.from),
            Direction::Reverse => it.seek_for_prev(scan.from),
        }
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            if !visit(k, v)? {
                return Ok(());
            }
            match scan.direction {
                Direction::Forward => it.next(),
                Direction::Reverse => it.prev(),
            }
        }
        Ok(it.status()?)
    }

    fn batch(&self) -> Box<dyn EngineBatch> {
        Box::new(RocksBatch {
            db: self.db.clone(),
            wb: rocksdb::WriteBatch::default(),
            reversed_range: false,
        })
    }

    fn write(&self, batch: Box<dyn EngineBatch>, sync: bool) -> Result<(), StorageError> {
        let batch = batch
            .into_any()
            .downcast::<RocksBatch>()
            .expect("a batch of this engine");
        // RocksDB fails such a batch after its log write, and then refuses every later write
        // (found by the engines' property test): refused here, before it reaches RocksDB.
        if batch.reversed_range {
            return Err(StorageError::Other(
                "invalid range delete: end key comes before start key".into(),
            ));
        }
        let mut wo = rocksdb::WriteOptions::default();
        wo.set_sync(sync);
        Ok(self.db.write_opt(batch.wb, &wo)?)
    }

    #[cfg(test)]
    fn compact(&self, cf: Cf) {
        self.db
            .compact_range_cf(self.cf(cf), None::<&[u8]>, None::<&[u8]>);
    }

    fn flush(&self) -> Result<(), StorageError> {
        for cf in Cf::MOVING {
            self.db.flush_cf(self.cf(cf))?;
        }
        Ok(())
    }

    fn unflushed(&self) -> Unflushed {
        let mut u = Unflushed::default();
        for cf in Cf::ALL {
            let size = |name: &str| {
                self.db
                    .property_int_value_cf(self.cf(cf), name)
                    .ok()
                    .flatten()
                    .unwrap_or(0)
            };
            u.active += size("rocksdb.cur-size-active-mem-table");
            u.all += size("rocksdb.cur-size-all-mem-tables");
        }
        u
    }

    fn set_compactions(&self, on: bool) -> Result<(), StorageError> {
        let disabled = if on { "false" } else { "true" };
        for cf in Cf::ALL {
            self.db
                .set_options_cf(self.cf(cf), &[("disable_auto_compactions", disabled)])?;
        }
        Ok(())
    }

    fn start_flush(&self) {
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(false);
        let cfs: Vec<_> = Cf::ALL.iter().map(|cf| self.cf(*cf)).collect();
        if let Err(e) = self.db.flush_cfs_opt(&cfs, &opts) {
            tracing::warn!(error = %e, "could not start a flush");
        }
    }
}

struct RocksBatch {
    /// For the column family handles.
    db: Arc<DB>,
    wb: rocksdb::WriteBatch,
    /// A range delete whose end comes before its start: the batch is refused whole.
    reversed_range: bool,
}

impl EngineBatch for RocksBatch {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        let h = self.db.cf_handle(cf.name()).expect("column family opened");
        self.wb.put_cf(h, key, value);
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        let h = self.db.cf_handle(cf.name()).expect("column family opened");
        self.wb.delete_cf(h, key);
    }

    fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        if from > to {
            self.reversed_range = true;
            return;
        }
        let h = self.db.cf_handle(cf.name()).expect("column family opened");
        self.wb.delete_range_cf(h, from, to);
    }

    fn size_in_bytes(&self) -> usize {
        self.wb.size_in_bytes()
    }

    fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
