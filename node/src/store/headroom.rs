//! Whether a write may go ahead on the free disk there is: the free-space floor
//! (`storage.min_free_mib`), and room for what the engine writes later for writes it already
//! took.
//!
//! A write that RocksDB accepts lands in its log and a memtable; the memtable is written out to
//! a table file later, in the background (a flush). If that flush finds the disk full, RocksDB
//! stops taking writes and the node fail-stops (`store::fail_stop`). So the floor alone is not
//! enough: the free space above it (the headroom) must also hold the memtables' flush. Memtables
//! are flushed early when they would take a good part of the headroom, and writes are refused
//! while the headroom would not hold them. A compaction also writes its output before it
//! deletes its input, as much again as it reads, and nothing bounds it: while the headroom is
//! under `storage.compaction_headroom_mib`, compactions are paused, so that only flushes, which
//! the rule above bounds, write in the background. Pure decisions, tested below; `Store::write`
//! asks them before every batch.

/// Bytes the engine holds in memory only (its memtables), to be written to its files later.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unflushed {
    /// In the memtables still taking writes.
    pub active: u64,
    /// In every memtable not yet written out (the active ones, and those being flushed).
    pub all: u64,
}

/// What to do with a write of some bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    Write,
    /// Write, and start flushing the memtables now, while the headroom holds them.
    FlushThenWrite,
    /// Refuse it (nothing written): the reason, for the client and the log.
    Refuse(String),
}

/// A flush is started once the active memtables hold this part of the headroom (1/4): what is
/// being flushed and what keeps arriving meanwhile then stay well inside it.
const FLUSH_AT_PART_OF_HEADROOM: u64 = 4;

const MIB: u64 = 1024 * 1024;

/// The verdict for a write of `bytes` with `free` bytes free, a floor of `floor` bytes (0: no
/// check) and `mem` unflushed.
pub(crate) fn verdict(free: u64, floor: u64, mem: Unflushed, bytes: u64) -> Verdict {
    if floor == 0 {
        return Verdict::Write;
    }
    let Some(headroom) = free.checked_sub(floor) else {
        return Verdict::Refuse(format!(
            "less than {} MiB free in the data directory",
            floor / MIB
        ));
    };
    // The write goes to the log now and, with everything unflushed, to a table file later.
    if mem.all.saturating_add(bytes) >= headroom {
        return Verdict::Refuse(format!(
            "{} MiB free in the data directory: {} MiB are kept free, and {} MiB of accepted writes still have to be written out",
            free / MIB,
            floor / MIB,
            mem.all.div_ceil(MIB)
        ));
    }
    if mem.active >= headroom / FLUSH_AT_PART_OF_HEADROOM {
        return Verdict::FlushThenWrite;
    }
    Verdict::Write
}

/// Whether compactions should run with `h` bytes free above the floor (0 under it), given
/// whether they run now: paused under `threshold`, resumed from 1.5 x `threshold`, so that a
/// headroom near the threshold does not switch them at every write.
pub(crate) fn compactions(h: u64, threshold: u64, running: bool) -> bool {
    if running {
        h >= threshold
    } else {
        h >= threshold.saturating_add(threshold / 2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::StorageError;
    use proptest::prelude::*;

    fn mem(active: u64, all: u64) -> Unflushed {
        Unflushed { active, all }
    }

    #[test]
    fn the_floor_refuses_and_zero_turns_every_check_off() {
        assert!(matches!(
            verdict(7 * MIB, 8 * MIB, mem(0, 0), 1),
            Verdict::Refuse(r) if r.contains("less than 8 MiB")
        ));
        assert_eq!(verdict(0, 0, mem(u64::MAX, u64::MAX), 1), Verdict::Write);
    }

    #[test]
    fn memtables_are_flushed_early_and_writes_refused_when_their_flush_would_not_fit() {
        // 24 MiB above the floor, as on a chaos node.
        let (free, floor) = (32 * MIB, 8 * MIB);
        assert_eq!(verdict(free, floor, mem(MIB, MIB), 1024), Verdict::Write);
        assert_eq!(
            verdict(free, floor, mem(6 * MIB, 6 * MIB), 1024),
            Verdict::FlushThenWrite
        );
        // Being flushed: not flushed again, still room.
        assert_eq!(
            verdict(free, floor, mem(MIB, 20 * MIB), 1024),
            Verdict::Write
        );
        assert!(matches!(
            verdict(free, floor, mem(MIB, 24 * MIB), 1024),
            Verdict::Refuse(r) if r.contains("still have to be written out")
        ));
        // A large batch counts too.
        assert!(matches!(
            verdict(free, floor, mem(0, 0), 24 * MIB),
            Verdict::Refuse(_)
        ));
    }

    /// On RocksDB with a pretended nearly full disk: memtables are flushed early, compactions
    /// pause (and resume once space is back), and a write whose flush would not fit is refused
    /// whole.
    #[test]
    fn a_store_short_of_space_flushes_early_pauses_compactions_and_refuses_what_would_not_fit() {
        use crate::store::{Cf, Store, StoreOptions};
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            retention: Duration::from_secs(3600),
            block_cache_mib: 8,
            min_free_bytes: 8 * MIB,
            compaction_headroom_bytes: 1024 * MIB,
        };
        let store = Store::open(dir.path(), &opts).unwrap();
        // Files are not reserved ahead: the free space says what is taken.
        let options = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("OPTIONS-")
            })
            .expect("an options file");
        assert!(std::fs::read_to_string(options)
            .unwrap()
            .contains("allow_fallocate=false"));
        let tables = || {
            std::fs::read_dir(dir.path())
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().extension() == Some("sst".as_ref()))
                .count()
        };
        let wait = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !done() {
                assert!(
                    Instant::now() < deadline,
                    "{what}: {:?}, {} tables",
                    store.engine.unflushed(),
                    tables()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        // 16 MiB of headroom: a flush starts once 4 MiB are in the active memtables.
        store.pretend_free_bytes(24 * MIB);
        // The same keys again and again: the table files overlap, so a compaction merges them.
        for i in 0..24u8 {
            let mut b = store.batch();
            let value = vec![i; 64 * 1024];
            for j in 0..16u32 {
                b.put(Cf::Meta, format!("k{j:02}").as_bytes(), &value);
            }
            store.write(b, false).unwrap();
        }
        assert!(!store.compactions_on());
        // Flushed five times, and nothing is being flushed any more.
        wait("early flushes", &|| {
            let u = store.engine.unflushed();
            tables() >= 5 && u.all == u.active && u.all < 8 * MIB
        });
        // Five table files at level 0 would be compacted if compactions ran.
        assert!(tables() >= 5);

        // Now the headroom would not hold the unflushed writes and this one.
        let unflushed = store.engine.unflushed().all;
        store.pretend_free_bytes(8 * MIB + unflushed + MIB / 2);
        let mut b = store.batch();
        b.put(Cf::Meta, b"refused", &vec![1u8; MIB as usize]);
        match store.write(b, false) {
            Err(StorageError::Full(why)) => assert!(why.contains("written out"), "{why}"),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(store.engine.get(Cf::Meta, b"refused").unwrap(), None);
        assert_eq!(
            store.engine.get(Cf::Meta, b"k15").unwrap(),
            Some(vec![23u8; 64 * 1024])
        );

        // Space is back: compactions resume and merge the level-0 files.
        store.pretend_free_bytes(8 * MIB + 2048 * MIB);
        let mut b = store.batch();
        b.put(Cf::Meta, b"after", b"1");
        store.write(b, false).unwrap();
        assert!(store.compactions_on());
        wait("a compaction", &|| tables() <= 2);
    }

    #[test]
    fn compactions_pause_under_the_threshold_and_resume_well_above_it() {
        let t = 1024 * MIB;
        assert!(compactions(t, t, true));
        assert!(!compactions(t - 1, t, true));
        assert!(!compactions(t, t, false), "not resumed right at it");
        assert!(!compactions(t + t / 2 - 1, t, false));
        assert!(compactions(t + t / 2, t, false));
        assert!(
            compactions(0, 0, false),
            "a threshold of 0 never pauses them"
        );
    }

    proptest! {
        /// Whatever is accepted leaves the floor, the memtables and the write itself inside
        /// the free space; a flush is asked for only while it fits.
        #[test]
        fn an_accepted_write_and_every_flush_fit(
            free in 0..u64::MAX / 4, floor in 1..u64::MAX / 4,
            active in 0..u64::MAX / 4, extra in 0..u64::MAX / 4, bytes in 0..u64::MAX / 4,
        ) {
            let all = active + extra;
            match verdict(free, floor, mem(active, all), bytes) {
                Verdict::Refuse(_) => prop_assert!(free < floor || floor + all + bytes >= free),
                v => {
                    prop_assert!(floor + all + bytes < free);
                    if v == Verdict::FlushThenWrite {
                        prop_assert!(active >= (free - floor) / FLUSH_AT_PART_OF_HEADROOM);
                    }
                }
            }
        }
    }
}
