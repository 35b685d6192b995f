#!/usr/bin/env bash
# The standard benchmark profile: a fresh local cluster (etcd, three nodes, router; release build)
# in a temp dir on its own ports, the chat-bench scenarios against it, everything stopped again.
# Results go to stdout and to bench-results/<UTC time>.txt (or $CHAT_BENCH_OUT), one-to-one's
# picture beside it (<same name>-one-to-one.svg).
#
# Env: CHAT_BENCH_RATES (default 1000,4000,8000,12000,16000), CHAT_BENCH_DURATION (10 s a step),
#      CHAT_BENCH_PAIRS (50), CHAT_BENCH_IDLE (10000 connections, then held 20 s for the idle CPU), CHAT_BENCH_DRAIN (100000
#      messages), CHAT_BENCH_WATCHERS (1000 presence watchers), CHAT_BENCH_PRESENCE_RATE (200
#      changes/s), CHAT_BENCH_GROUP_RATES (10,40 group sends/s to a 256-member group),
#      CHAT_BENCH_BIG_GROUP (1024 members, at the first group rate), CHAT_BENCH_MEDIA (pairs x
#      files x bytes of the media scenario, default 4x10x2000000 then 16x4x200000: the
#      embedded store), CHAT_BENCH_BASE_PORT (17000), CHAT_BENCH_SCENARIOS
#      (one-to-one,idle,presence,group,offline-drain,media,scaling: the ones to run),
#      CHAT_BENCH_RECEIPTS (none | delivered | read: what one-to-one's recipients do, default
#      delivered), CHAT_BENCH_NO_FSYNC=1 (the nodes acknowledge without a WAL fsync, to measure
#      what durability costs), CHAT_BENCH_SCALING_RATES (the one-node steps of `scaling`, run
#      with the node pinned to one core, then to two: default 4000,8000,12000,16000,20000,24000;
#      CHAT_BENCH_SCALING_PAIRS, 50, and CHAT_BENCH_SCALING_DURATION, 10 s a step),
#      CHAT_BENCH_REPLICATION (copies of every key, default 1: 2 measures replication's cost).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"
DIR="$(mktemp -d /tmp/chat-bench.XXXXXX)"
BASE="${CHAT_BENCH_BASE_PORT:-17000}"
OUT="${CHAT_BENCH_OUT:-$ROOT/bench-results/$(date -u +%Y%m%dT%H%M%SZ).txt}"
mkdir -p "$(dirname "$OUT")"

export CHAT_DEV_DIR="$DIR" CHAT_DEV_PROFILE=release CHAT_DEV_BASE_PORT="$BASE"
# The bench offers hundreds of messages a second per user and thousands of connections from a
# few addresses: far past the per-user and per-address rate limits, which it does not measure.
export CHAT_NODE_RATE__MESSAGES_PER_MIN=0 CHAT_NODE_RATE__GROUP_SENDS_PER_MIN=0 CHAT_NODE_RATE__GROUP_REQUESTS_PER_MIN=0 CHAT_NODE_RATE__CONNECTIONS_PER_ADDR_PER_MIN=0 CHAT_NODE_RATE__MEDIA_PER_MIN=0
# The big-group run needs a cap above the default 256.
BIG_GROUP="${CHAT_BENCH_BIG_GROUP:-1024}"
export CHAT_NODE_GROUPS__MAX_MEMBERS="$(( BIG_GROUP > 256 ? BIG_GROUP : 256 ))"
SCENARIOS=",${CHAT_BENCH_SCENARIOS:-one-to-one,idle,presence,group,offline-drain,media,scaling},"
PROFILE="fsync on"
if [ "${CHAT_BENCH_NO_FSYNC:-0}" = 1 ]; then
  export CHAT_NODE_STORAGE__SYNC=false
  PROFILE="fsync off"
fi
export CHAT_DEV_REPLICATION="${CHAT_BENCH_REPLICATION:-1}"
if [ "$CHAT_DEV_REPLICATION" != 1 ]; then
  PROFILE="$PROFILE, $CHAT_DEV_REPLICATION copies"
fi
want() { [[ "$SCENARIOS" == *",$1,"* ]]; }
cleanup() { "$ROOT/ops/dev-cluster.sh" down >/dev/null 2>&1 || true; rm -rf "$DIR"; }
trap cleanup EXIT

"$ROOT/ops/dev-cluster.sh" up >/dev/null
export CHAT_NODE_AUTH__JWT_SECRET="$(cat "$DIR/secret")"
export CHAT_URL="ws://127.0.0.1:$BASE" CHAT_ETCD="http://127.0.0.1:$((BASE + 20))"
# one-to-one splits the CPU by process: the cluster's pid files.
export CHAT_BENCH_PIDS="$DIR/pids"

# One standalone node pinned to the cores $1 (taskset), the one-to-one steps against it until it
# saturates, the node stopped again (by pid).
scaling() {
  local cores=$1 port=$((BASE + 60)) data="$DIR/scaling-${1//,/-}"
  taskset -c "$cores" "$BIN/chat-node" --standalone --node-id scaling --data-dir "$data" \
    --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$((port + 1))" \
    --http-listen "127.0.0.1:$((port + 2))" >"$DIR/logs/scaling.log" 2>&1 &
  local pid=$! end=$((SECONDS + 30))
  until grep -qs "chat-node ready" "$DIR/logs/scaling.log" || [ $SECONDS -ge $end ]; do sleep 0.2; done
  echo "## one node pinned to core(s) $cores (taskset)"
  env -u CHAT_BENCH_PIDS -u CHAT_ETCD "$BIN/chat-bench" --url "ws://127.0.0.1:$port" --admin "http://127.0.0.1:$((port + 1))" \
    one-to-one --pairs "${CHAT_BENCH_SCALING_PAIRS:-50}" --receipts "${CHAT_BENCH_RECEIPTS:-delivered}" \
    --rates "${CHAT_BENCH_SCALING_RATES:-4000,8000,12000,16000,20000,24000}" \
    --duration "${CHAT_BENCH_SCALING_DURATION:-10}" || true
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

{
  echo "# chat-bench $(date -u +%FT%TZ) on $(nproc) cores, $(git -C "$ROOT" rev-parse --short HEAD), $PROFILE"
  echo
  if want one-to-one; then
    "$BIN/chat-bench" one-to-one --pairs "${CHAT_BENCH_PAIRS:-50}" \
      --receipts "${CHAT_BENCH_RECEIPTS:-delivered}" --rates "${CHAT_BENCH_RATES:-1000,4000,8000,12000,16000}" --duration "${CHAT_BENCH_DURATION:-10}" \
      --svg "${OUT%.txt}-one-to-one.svg"
    echo
  fi
  if want idle; then
    "$BIN/chat-bench" idle --connections "${CHAT_BENCH_IDLE:-10000}" --sources 8 --hold 20
    echo
  fi
  if want presence; then
    "$BIN/chat-bench" presence --watchers "${CHAT_BENCH_WATCHERS:-1000}" --actors 500 --watch 20 \
      --rate "${CHAT_BENCH_PRESENCE_RATE:-200}" --duration "${CHAT_BENCH_DURATION:-10}"
    echo
  fi
  if want group; then
    IFS=, read -ra GROUP_RATES <<<"${CHAT_BENCH_GROUP_RATES:-10,40}"
    for rate in "${GROUP_RATES[@]}"; do
      "$BIN/chat-bench" group --members 256 --senders 4 --rate "$rate" --duration "${CHAT_BENCH_DURATION:-10}"
      echo
    done
    "$BIN/chat-bench" group --members "$BIG_GROUP" --senders 4 --rate "${GROUP_RATES[0]}" \
      --duration "${CHAT_BENCH_DURATION:-10}"
    echo
  fi
  if want offline-drain; then
    "$BIN/chat-bench" offline-drain --users 20 --messages "${CHAT_BENCH_DRAIN:-100000}"
    echo
  fi
  if want media; then
    IFS=' ' read -ra MEDIA <<<"${CHAT_BENCH_MEDIA:-4x10x2000000 16x4x200000}"
    for m in "${MEDIA[@]}"; do
      IFS=x read -r pairs files size <<<"$m"
      "$BIN/chat-bench" media --pairs "$pairs" --files "$files" --size "$size"
      echo
    done
  fi
  if want scaling; then
    scaling 0
    echo
    scaling 0,1
    echo
  fi
} 2>&1 | tee "$OUT"
echo "results written to $OUT"
