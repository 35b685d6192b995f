//! Fuzzing without AFL, in the root workspace's `cargo test`: every input the fuzzers found a
//! bug with, and the whole seed corpus (fuzz/corpus/<target>/), run through the same checks as
//! the AFL++ targets. The checks are fuzz/src/checks.rs, included here by path. docs/fuzzing.md
//! tells how to add a crash found by fuzzing.

#[path = "../../fuzz/src/checks.rs"]
mod checks;

use std::path::Path;

/// Inputs that made a target panic, by target, with what was wrong. A new crash goes here (and
/// into fuzz/src/bin/gen_corpus.rs as a `regress-*` seed) with its fix.
const CRASHES: &[(&str, &[u8], &str)] = &[
    (
        "server_frame_protobuf",
        // ServerFrame { error: Error { code: 1000 } }
        &[0x32, 0x03, 0x08, 0xe8, 0x07],
        "encode(Json, ..) panicked on an enum value this version does not know",
    ),
    (
        "server_frame_protobuf",
        // ServerFrame { deliver: Deliver { receipt: Receipt { kind: 5 } } }
        &[0x1a, 0x04, 0x1a, 0x02, 0x08, 0x05],
        "same, in a receipt",
    ),
    (
        "server_frame_protobuf",
        // ServerFrame { history: HistoryPage { entries: [Deliver { receipt { kind: 5 } }] } }
        &[0x22, 0x06, 0x12, 0x04, 0x1a, 0x02, 0x08, 0x05],
        "same, in a receipt of a history page",
    ),
];

#[test]
fn crashes_found_by_fuzzing_stay_fixed() {
    for (target, input, what) in CRASHES {
        let check = checks::by_name(target).expect("known target");
        if std::panic::catch_unwind(|| check(input)).is_err() {
            panic!("{target} {input:02x?} panics again: {what}");
        }
    }
}

#[test]
fn fuzz_corpus_replays_without_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
    for target in checks::TARGETS {
        let check = checks::by_name(target).expect("known target");
        let dir = root.join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("read corpus file");
            if std::panic::catch_unwind(|| check(&data)).is_err() {
                panic!("{target}: {} panics", path.display());
            }
            n += 1;
        }
        assert!(n > 0, "{target}: empty corpus in {}", dir.display());
    }
}
