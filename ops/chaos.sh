#!/usr/bin/env bash
# Runs the chaos suite against a fresh local cluster and prints its table:
#   ops/chaos.sh                                  # short profile (~3 min), random seed
#   ops/chaos.sh --duration 30m --seed 42         # long profile (--duration implies it)
#   ops/chaos.sh --profile short --seed 7 --keep-dir
# Any other flag goes to chat-chaos (see `target/debug/chat-chaos --help`).
#
# Builds the workspace binaries in debug (CHAT_CHAOS_RELEASE=1: release; the run uses the
# chat-node, chat-router and chatctl next to chat-chaos), installs nftables and etcd if missing,
# and runs as root (through sudo if needed: nftables rules and tmpfs mounts need it). The seed
# is always printed; a run that finds a violation exits 1 and keeps its run dir (logs,
# histories, node data), whose path it prints.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! command -v nft >/dev/null 2>&1; then
  echo "chaos: installing nftables"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nftables >/dev/null
fi
ops/install-deps.sh

PROFILE_DIR=debug
BUILD=(cargo build --workspace --bins)
if [ "${CHAT_CHAOS_RELEASE:-0}" = 1 ]; then
  PROFILE_DIR=release
  BUILD+=(--release)
fi
"${BUILD[@]}"

args=("$@")
has() { local f=$1; shift; for a in "$@"; do [ "$a" = "$f" ] && return 0; done; return 1; }
if has --duration "$@" && ! has --profile "$@"; then
  args=(--profile long "${args[@]}")
fi
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE_DIR/chat-chaos"
exec $SUDO "$BIN" "${args[@]}"
