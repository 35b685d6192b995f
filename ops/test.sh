#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, builds and unit-tests web/ (TypeScript),
# checks formatting and lints, builds the
# binaries the multi-process tests start, runs each fuzz target briefly, then runs every test
# with nextest (including the chaos suite's short profile, which needs root for nftables and
# tmpfs mounts).
set -euo pipefail
cd "$(dirname "$0")/.."

ops/install-deps.sh
# The TypeScript client and the web client: build (the browser tests load web/app/dist) and
# unit-test them.
ops/build-web.sh --test
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The integration tests start target/debug/chat-node as a child process.
cargo build --workspace --bins --locked
# A short run of every fuzz target (docs/fuzzing.md); a crash or hang fails the suite. Before the
# tests, so that the test runner's summary is the last thing printed.
ops/fuzz.sh --seconds "${CHAT_FUZZ_SECONDS:-20}"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
