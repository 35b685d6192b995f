#!/usr/bin/env bash
# Grows the ring by one node, online: ops/add-node.sh NODE [WEIGHT]
#
# NODE must be running and registered (for the local dev cluster: ops/dev-cluster.sh start-node
# NODE). Starts the move (refused while another is in flight), then follows it until it commits:
# every node dual-writes and copies its share, the nodes commit, moved users are redirected.
# Exit 0 once committed; 1 if the move was aborted (chatctl rebalance abort) or failed.
#
# Env: CHAT_ETCD, CHAT_PREFIX (as chatctl), CARGO_TARGET_DIR, CHAT_DEV_PROFILE (debug|release:
# which chatctl build to use), CHAT_MOVE_TIMEOUT (seconds to wait, default 3600).
# etcd outages while the move runs are ridden out: `chatctl rebalance wait` retries its reads
# until CHAT_MOVE_TIMEOUT (the nodes go on with the move without it).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
CTL="${CARGO_TARGET_DIR:-$ROOT/target}/${CHAT_DEV_PROFILE:-debug}/chatctl"
[ -x "$CTL" ] || CTL=chatctl
NODE="${1:?usage: $0 NODE [WEIGHT]}"
export CHAT_ETCD="${CHAT_ETCD:-http://127.0.0.1:7020}"

if [ -n "${2:-}" ]; then
  "$CTL" rebalance start --add "$NODE" --weight "$2"
else
  "$CTL" rebalance start --add "$NODE"
fi
"$CTL" rebalance wait --timeout-secs "${CHAT_MOVE_TIMEOUT:-3600}"
# Only a summary: an etcd blip here must not turn a finished move into a failure.
"$CTL" ring show || echo "(could not read the ring now: chatctl ring show)" >&2
