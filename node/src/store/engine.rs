//! What the node needs from a storage engine, and nothing more: point reads, ordered scans in
//! either direction, and atomic batches of puts, deletes and range deletes, per column family
//! ([`Cf`]). [`rocks`](super::rocks) is the engine the node runs on; [`memory`](super::memory)
//! keeps everything in ordered maps, for unit tests that need no disk.

use std::any::Any;

pub use super::headroom::Unflushed;
use super::Cf;

/// A storage failure, by what the caller can do about it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The engine takes no more writes until it is reopened (an I/O error while writing its
    /// log or files, corruption): the node stops (`store::fail_stop`).
    #[error("storage failed: {0}")]
    Failed(String),
    /// The disk is full (or under the free-space floor): nothing was written; retry later.
    #[error("No space left on device: {0}")]
    Full(String),
    /// A record that cannot be decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// Anything else: this operation failed, the engine goes on.
    #[error("storage error: {0}")]
    Other(String),
}

/// Which way a scan walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the first key `>= from`, upward.
    Forward,
    /// From the last key `<= from`, downward.
    Reverse,
}

/// One scan: where it starts, the way it walks and the key it must not pass (exclusive above
/// for a forward scan, inclusive below for a reverse one).
#[derive(Debug, Clone, Copy)]
pub struct Scan<'a> {
    pub from: &'a [u8],
    pub direction: Direction,
    pub bound: Option<&'a [u8]>,
}

impl<'a> Scan<'a> {
    /// Upward from `from`, to the end of the column family.
    pub fn forward(from: &'a [u8]) -> Scan<'a> {
        Scan {
            from,
            direction: Direction::Forward,
            bound: None,
        }
    }

    /// Upward from `from`, stopping below `end`.
    pub fn forward_until(from: &'a [u8], end: &'a [u8]) -> Scan<'a> {
        Scan {
            bound: Some(end),
            ..Scan::forward(from)
        }
    }

    /// Downward from `from`, not below `lower`.
    pub fn reverse(from: &'a [u8], lower: &'a [u8]) -> Scan<'a> {
        Scan {
            from,
            direction: Direction::Reverse,
            bound: Some(lower),
        }
    }
}

/// Called with each key and value of a scan, in order; `Ok(false)` ends the scan.
pub type Visit<'v> = dyn FnMut(&[u8], &[u8]) -> Result<bool, StorageError> + 'v;

/// A storage engine: the node's database.
pub trait Engine: Send + Sync + 'static {
    /// The value of `key`, if any.
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Visits the keys of `cf` as `scan` says, until `visit` says stop or the keys end.
    fn scan(&self, cf: Cf, scan: Scan<'_>, visit: &mut Visit<'_>) -> Result<(), StorageError>;
    /// An empty batch for [`Engine::write`].
    fn batch(&self) -> Box<dyn EngineBatch>;
    /// Applies a batch atomically (all of it or none), durably when `sync`.
    fn write(&self, batch: Box<dyn EngineBatch>, sync: bool) -> Result<(), StorageError>;
    /// Drops what the retention says has expired from `cf` now (normally left to background
    /// compaction).
    #[cfg(test)]
    fn compact(&self, cf: Cf);
    /// Moves what is only in memory and the write-ahead log to the engine's files.
    fn flush(&self) -> Result<(), StorageError>;
    /// What is held in memory only, to be written to the engine's files later.
    fn unflushed(&self) -> Unflushed;
    /// Starts moving what is in memory to the engine's files, without waiting for it.
    fn start_flush(&self);
    /// Lets the engine start background compactions, or stops it from starting more.
    fn set_compactions(&self, on: bool) -> Result<(), StorageError>;
}

/// Writes collected for one [`Engine::write`], made by that engine's [`Engine::batch`].
pub trait EngineBatch: Send {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]);
    fn delete(&mut self, cf: Cf, key: &[u8]);
    /// Deletes every key in `[from, to)`. A range that ends before it starts makes the whole
    /// batch fail (and nothing else).
    fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]);
    /// About how many bytes the batch holds.
    fn size_in_bytes(&self) -> usize;
    fn is_empty(&self) -> bool;
    /// The engine takes its own batch back.
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

#[cfg(test)]
mod tests {
    //! The two engines are held to one behaviour: the same random writes, then the same scans,
    //! give the same answers.

    use super::super::memory::MemoryEngine;
    use super::super::rocks::RocksEngine;
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8, u8),
        Delete(u8, u8),
        DeleteRange(u8, u8, u8),
    }

    fn cf(i: u8) -> Cf {
        [Cf::Inbox, Cf::Meta, Cf::Outbox][i as usize % 3]
    }

    fn key(k: u8) -> Vec<u8> {
        // Two-byte keys with shared first bytes, so ranges cover several keys or none.
        vec![k / 16, k % 16]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..3u8, any::<u8>(), any::<u8>()).prop_map(|(c, k, v)| Op::Put(c, k, v)),
            1 => (0..3u8, any::<u8>()).prop_map(|(c, k)| Op::Delete(c, k)),
            // Unordered bounds too: a range that ends before it starts fails its batch.
            1 => (0..3u8, any::<u8>(), any::<u8>()).prop_map(|(c, a, b)| Op::DeleteRange(c, a, b)),
        ]
    }

    /// Applies each batch; whether each was taken.
    fn apply(e: &dyn Engine, batches: &[Vec<Op>]) -> Vec<bool> {
        let mut taken = Vec::new();
        for ops in batches {
            let mut b = e.batch();
            for op in ops {
                match *op {
                    Op::Put(c, k, v) => b.put(cf(c), &key(k), &[v]),
                    Op::Delete(c, k) => b.delete(cf(c), &key(k)),
                    Op::DeleteRange(c, a, z) => b.delete_range(cf(c), &key(a), &key(z)),
                }
            }
            taken.push(e.write(b, false).is_ok());
        }
        taken
    }

    fn collect(e: &dyn Engine, c: Cf, scan: Scan<'_>, limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        e.scan(c, scan, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            Ok(out.len() < limit)
        })
        .unwrap();
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn memory_and_rocksdb_answer_alike(
            batches in prop::collection::vec(prop::collection::vec(op(), 1..12), 1..8),
            probes in prop::collection::vec((0..3u8, any::<u8>(), any::<u8>(), 1..6usize), 8),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let rocks = RocksEngine::open(dir.path(), std::time::Duration::MAX, 8).unwrap();
            let memory = MemoryEngine::new(std::time::Duration::MAX);
            prop_assert_eq!(apply(&rocks, &batches), apply(&memory, &batches));
            for (c, a, b, limit) in probes {
                let (c, a, b) = (cf(c), key(a), key(b));
                prop_assert_eq!(rocks.get(c, &a).unwrap(), memory.get(c, &a).unwrap());
                for scan in [
                    Scan::forward(&a),
                    Scan::forward_until(&a, &b),
                    Scan::reverse(&b, &a),
                ] {
                    prop_assert_eq!(
                        collect(&rocks, c, scan, limit),
                        collect(&memory, c, scan, limit),
                        "{:?} {:?}", c, scan
                    );
                }
            }
        }
    }
}
