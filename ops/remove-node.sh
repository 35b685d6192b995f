#!/usr/bin/env bash
# Shrinks the ring by one node, online, then stops it: ops/remove-node.sh NODE
#
# Starts the move (refused while another is in flight) and follows it until it commits: NODE
# dual-writes and copies its users to their new owners, the nodes commit, its sessions are
# redirected, and it drops what it gave away. Then waits until NODE's outbox is empty (messages
# its users sent are all handed on) and its share of the move is finished (its streams sealed,
# `chat_rebalance_pending 0`), and stops it with SIGTERM:
#   - with CHAT_NODE_STOP_CMD set, by running it with NODE as its argument;
#   - else, for the local dev cluster, by its pid file under CHAT_DEV_DIR (default .dev/cluster);
#   - else it says when the node may be stopped.
# Exit 0 once committed (and stopped); 1 if the move was aborted or failed.
#
# Env: CHAT_ETCD, CHAT_PREFIX, CARGO_TARGET_DIR, CHAT_DEV_PROFILE, CHAT_DEV_DIR,
# CHAT_NODE_STOP_CMD, CHAT_MOVE_TIMEOUT (seconds to wait, default 3600).
# etcd outages while the move runs are ridden out: `chatctl rebalance wait` retries its reads
# until CHAT_MOVE_TIMEOUT (the nodes go on with the move without it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CTL="${CARGO_TARGET_DIR:-$ROOT/target}/${CHAT_DEV_PROFILE:-debug}/chatctl"
[ -x "$CTL" ] || CTL=chatctl
NODE="${1:?usage: $0 NODE}"
export CHAT_ETCD="${CHAT_ETCD:-http://127.0.0.1:7020}"

# The node's admin URL, read before the move (it stays registered until it stops).
ADMIN=$("$CTL" nodes | awk -v n="$NODE" '$1 == n { print $4 }')

# The body of GET http://HOST:PORT/PATH, with bash alone.
http_get() {
  local hostport=${1#http://} path=$2
  exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
  cat <&3
  exec 3>&-
}

"$CTL" rebalance start --remove "$NODE"
"$CTL" rebalance wait --timeout-secs "${CHAT_MOVE_TIMEOUT:-3600}"

if [ -n "$ADMIN" ]; then
  echo "waiting for $NODE to hand on what its outbox holds..."
  end=$((SECONDS + ${CHAT_MOVE_TIMEOUT:-3600}))
  # Outbox handed on, and its share of the move finished (sealed, ranges dropped).
  until m=$(http_get "$ADMIN" /metrics 2>/dev/null | tr -d '\r') &&
        grep -q '^chat_outbox_depth 0$' <<<"$m" && grep -q '^chat_rebalance_pending 0$' <<<"$m"; do
    if [ $SECONDS -ge $end ]; then echo "$NODE's outbox did not empty; not stopping it" >&2; exit 1; fi
    sleep 0.5
  done
fi

DEV_DIR="${CHAT_DEV_DIR:-$ROOT/.dev/cluster}"
if [ -n "${CHAT_NODE_STOP_CMD:-}" ]; then
  $CHAT_NODE_STOP_CMD "$NODE"
elif [ -f "$DEV_DIR/pids/$NODE" ]; then
  "$ROOT/ops/dev-cluster.sh" stop-node "$NODE"
else
  echo "$NODE owns nothing now and its outbox is empty: stop it (SIGTERM) whenever you like"
fi
# Only a summary: an etcd blip here must not turn a finished move into a failure.
"$CTL" ring show || echo "(could not read the ring now: chatctl ring show)" >&2
