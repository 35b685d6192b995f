//! Fuzz checks for the wire codec (`chat-proto`): see docs/fuzzing.md.
//!
//! The checks live in `checks.rs` so that proto/tests/fuzz_regressions.rs can include the same
//! file and replay the corpus in the root workspace's `cargo test`.

mod checks;

pub use checks::*;

/// Directory of the seed corpus of `target` (fuzz/corpus/<target>/).
pub fn corpus_dir(target: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}
