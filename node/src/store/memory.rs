//! An engine that keeps everything in ordered maps: for unit tests of the writer and of the
//! reads, which then need no disk. It behaves as [`RocksEngine`](super::rocks::RocksEngine)
//! does (a test in `engine` holds them to it), except that nothing survives the process.

use std::any::Any;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;
use std::time::Duration;

use super::engine::{Direction, Engine, EngineBatch, Scan, StorageError, Unflushed, Visit};
use super::keys::split_timed;
use super::Cf;

type Tree = BTreeMap<Vec<u8>, Vec<u8>>;

pub struct MemoryEngine {
    trees: RwLock<BTreeMap<Cf, Tree>>,
    retention_ms: i64,
}

impl MemoryEngine {
    pub fn new(retention: Duration) -> MemoryEngine {
        MemoryEngine {
            trees: RwLock::new(Cf::ALL.into_iter().map(|c| (c, Tree::new())).collect()),
            retention_ms: super::millis(retention),
        }
    }
}

impl Engine for MemoryEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.trees.read().expect("engine lock")[&cf]
            .get(key)
            .cloned())
    }

    fn scan(&self, cf: Cf, scan: Scan<'_>, visit: &mut Visit<'_>) -> Result<(), StorageError> {
        // Visited from a copy, so that `visit` may read the engine again.
        let rows: Vec<(Vec<u8>, Vec<u8>)> = {
            let trees = self.trees.read().expect("engine lock");
            let tree = &trees[&cf];
            let from = Bound::Included(scan.from);
            match (scan.direction, scan.bound) {
                (Direction::Forward, end) => {
                    let end = end.map_or(Bound::Unbounded, Bound::Excluded);
                    if matches!(end, Bound::Excluded(e) if e <= scan.from) {
                        return Ok(());
                    }
                    tree.range::<[u8], _>((from, end))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                }
                (Direction::Reverse, lower) => {
                    let lower = lower.map_or(Bound::Unbounded, Bound::Included);
                    if matches!(lower, Bound::Included(l) if l > scan.from) {
                        return Ok(());
                    }
                    tree.range::<[u8], _>((lower, from))
                        .rev()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                }
            }
        };
        for (k, v) in rows {
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn batch(&self) -> Box<dyn EngineBatch> {
        Box::new(MemoryBatch::default())
    }

    fn write(&self, batch: Box<dyn EngineBatch>, _sync: bool) -> Result<(), StorageError> {
        let batch = batch
            .into_any()
            .downcast::<MemoryBatch>()
            .expect("a batch of this engine");
        // As the RocksDB engine: a range that ends before it starts fails the whole batch.
        if batch
            .ops
            .iter()
            .any(|op| matches!(op, Op::DeleteRange(_, from, to) if from > to))
        {
            return Err(StorageError::Other(
                "invalid range delete: end key comes before start key".into(),
            ));
        }
        let mut trees = self.trees.write().expect("engine lock");
        for op in batch.ops {
            match op {
                Op::Put(cf, k, v) => {
                    trees.get_mut(&cf).expect("every cf").insert(k, v);
                }
                Op::Delete(cf, k) => {
                    trees.get_mut(&cf).expect("every cf").remove(&k);
                }
                Op::DeleteRange(cf, from, to) => {
                    let tree = trees.get_mut(&cf).expect("every cf");
                    let doomed: Vec<Vec<u8>> =
                        tree.range(from..to).map(|(k, _)| k.clone()).collect();
                    for k in doomed {
                        tree.remove(&k);
                    }
                }
            }
        }
        Ok(())
    }

    fn compact(&self, cf: Cf) {
        if !cf.expires() {
            return;
        }
        let floor = chat_proto::now_ms().saturating_sub(self.retention_ms);
        let mut trees = self.trees.write().expect("engine lock");
        trees
            .get_mut(&cf)
            .expect("every cf")
            .retain(|_, v| !matches!(split_timed(v), Some((ts, _)) if ts < floor));
    }

    fn flush(&self) -> Result<(), StorageError> {
        Ok(())
    }

    /// Nothing is ever to be written out: memory is all there is.
    fn unflushed(&self) -> Unflushed {
        Unflushed::default()
    }

    fn start_flush(&self) {}

    fn set_compactions(&self, _on: bool) -> Result<(), StorageError> {
        Ok(())
    }
}

enum Op {
    Put(Cf, Vec<u8>, Vec<u8>),
    Delete(Cf, Vec<u8>),
    DeleteRange(Cf, Vec<u8>, Vec<u8>),
}

#[derive(Default)]
struct MemoryBatch {
    ops: Vec<Op>,
    bytes: usize,
}

impl EngineBatch for MemoryBatch {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.bytes += key.len() + value.len();
        self.ops.push(Op::Put(cf, key.to_vec(), value.to_vec()));
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.bytes += key.len();
        self.ops.push(Op::Delete(cf, key.to_vec()));
    }

    fn delete_range(&mut self, cf: Cf, from: &[u8], to: &[u8]) {
        self.bytes += from.len() + to.len();
        self.ops
            .push(Op::DeleteRange(cf, from.to_vec(), to.to_vec()));
    }

    fn size_in_bytes(&self) -> usize {
        self.bytes
    }

    fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
