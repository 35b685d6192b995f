//! Replays the seed corpus (fuzz/corpus/<target>/*) through the same checks as the AFL++
//! targets, without AFL. proto/tests/fuzz_regressions.rs does the same in the root workspace.

use chat_fuzz::{by_name, corpus_dir, TARGETS};

#[test]
fn corpus_replays_without_panic() {
    for target in TARGETS {
        let check = by_name(target).unwrap();
        let dir = corpus_dir(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{target}: {} panics", path.display());
            }
            n += 1;
        }
        assert!(n > 0, "{target}: empty corpus");
    }
}
