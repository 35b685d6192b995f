#!/usr/bin/env bash
# Runs the whole test suite: installs what is missing, checks formatting and lints, builds the
# binaries the multi-process tests start, then runs every test with nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

ops/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# The integration tests start target/debug/chat-node as a child process.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
