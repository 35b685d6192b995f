//! The short chaos profile (about three minutes): every fault kind once, a node added and one
//! removed, 200 users at 150 msg/s, hostile clients throughout; the checker must find nothing.
//! Needs root (nftables, tmpfs) and the debug binaries (`cargo build --workspace --bins`).
//! `CHAT_CHAOS_SEED` picks the seed (default 1); a failing run keeps its dir and prints it.

use chat_chaos::run::{run, Options};
use chat_chaos::schedule::Profile;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_short_profile_finds_no_violation() {
    assert!(
        chat_chaos::is_root(),
        "the chaos suite needs root (nftables rules, tmpfs mounts); CI runs as root"
    );
    let seed = std::env::var("CHAT_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let outcome = run(Options::new(Profile::Short, seed))
        .await
        .unwrap_or_else(|e| panic!("chaos run (seed {seed}) failed to run: {e}"));
    println!("{}", outcome.text);
    assert!(
        outcome.report.is_clean(),
        "seed {seed}: violations (run dir {:?}):\n{}",
        outcome.run_dir,
        outcome.text
    );
}
