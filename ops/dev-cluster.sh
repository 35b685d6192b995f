#!/usr/bin/env bash
# A local cluster on loopback: etcd, three nodes (n1, n2, n3) and a router serving the web client,
# with everything (data, certificates, secret, logs, pids) under one folder.
#
#   ops/dev-cluster.sh up       install what is missing, build, start, print how to connect
#   ops/dev-cluster.sh status   what runs, the registered nodes and the ring
#   ops/dev-cluster.sh down     stop everything it started (SIGTERM, by pid)
#   ops/dev-cluster.sh start-node N   start one more node (n4..n9), registered but owning nothing
#                                      until `ops/add-node.sh nN` moves its share to it
#   ops/dev-cluster.sh stop-node N    stop one node cleanly (SIGTERM)
#
# Env: CHAT_DEV_DIR (default .dev/cluster), CARGO_TARGET_DIR, CHAT_DEV_PROFILE (debug or release;
# release for benchmarks), CHAT_DEV_BASE_PORT (default 7000:
# router on BASE, node i on BASE+100+i (WebSocket), BASE+200+i (QUIC), BASE+300+i (admin),
# BASE+400+i (HTTP: media);
# etcd on BASE+20 and BASE+21), CHAT_DEV_REPLICATION (copies of every key when the ring is
# created, default 1; docs/replication.md).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${CHAT_DEV_DIR:-$ROOT/.dev/cluster}"
PROFILE="${CHAT_DEV_PROFILE:-debug}"
case "$PROFILE" in debug|release) ;; *) echo "CHAT_DEV_PROFILE: debug or release" >&2; exit 2 ;; esac
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/$PROFILE"
BASE="${CHAT_DEV_BASE_PORT:-7000}"
ETCD="http://127.0.0.1:$((BASE + 20))"
ETCD_PEER="http://127.0.0.1:$((BASE + 21))"
ROUTER="127.0.0.1:${BASE}"
PREFIX="/chat/"
NODES=(n1 n2 n3)

ws_port() { echo $((BASE + 100 + ${1#n})); }
quic_port() { echo $((BASE + 200 + ${1#n})); }
admin_port() { echo $((BASE + 300 + ${1#n})); }
http_port() { echo $((BASE + 400 + ${1#n})); }

# Prints the HTTP status of GET http://127.0.0.1:PORT/PATH (000 when nothing answers).
http_status() {
  local port=$1 path=$2 line
  if ! exec 3<>"/dev/tcp/127.0.0.1/$port" 2>/dev/null; then echo 000; return; fi
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$path" >&3
  IFS=' ' read -r _ line _ <&3 || line=000
  exec 3>&-
  echo "${line:-000}"
}

# Waits until `cmd...` succeeds, at most $1 seconds.
wait_for() {
  local secs=$1; shift
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then return 1; fi
    sleep 0.2
  done
}

# Every node this folder has a pid file for (n1..n3 and any started with start-node).
all_nodes() {
  local extra=()
  for f in "$DIR"/pids/n*; do [ -e "$f" ] && extra+=("$(basename "$f")"); done
  printf '%s\n' "${NODES[@]}" "${extra[@]}" | sort -u
}

start_node() { # name
  local n=$1
  [ -f "$DIR/certs/$n.pem" ] || "$BIN/chatctl" certs issue "$n" --dir "$DIR/certs" >/dev/null
  CHAT_NODE_AUTH__JWT_SECRET_FILE="$DIR/secret" \
  CHAT_NODE_CLUSTER__PREFIX="$PREFIX" \
  CHAT_NODE_CLUSTER__CA_FILE="$DIR/certs/ca.pem" \
  start "$n" "$BIN/chat-node" --node-id "$n" --data-dir "$DIR/$n" \
    --listen "127.0.0.1:$(ws_port "$n")" --quic-listen "127.0.0.1:$(quic_port "$n")" \
    --admin-listen "127.0.0.1:$(admin_port "$n")" --http-listen "127.0.0.1:$(http_port "$n")" \
    --etcd "$ETCD"
}

stop() { # name: SIGTERM, wait, SIGKILL after 20 s
  local name=$1 f="$DIR/pids/$1"
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local end=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $end ]; do sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then echo "$name did not stop; sending SIGKILL"; kill -KILL "$pid"; fi
    echo "$name stopped"
  fi
  rm -f "$f"
}

alive() {
  local f="$DIR/pids/$1"
  [ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

start() { # name, command...
  local name=$1; shift
  if alive "$name"; then echo "  $name already running (pid $(cat "$DIR/pids/$name"))"; return; fi
  nohup "$@" >"$DIR/logs/$name.out" 2>"$DIR/logs/$name.log" </dev/null &
  echo $! >"$DIR/pids/$name"
  echo "  $name started (pid $!, log $DIR/logs/$name.log)"
}

ready() { [ "$(http_status "$1" /readyz)" = 200 ]; }

up() {
  "$ROOT/ops/install-deps.sh"
  echo "building ($PROFILE)..."
  if [ "$PROFILE" = release ]; then
    (cd "$ROOT" && cargo build --workspace --bins --release --quiet)
  else
    (cd "$ROOT" && cargo build --workspace --bins --quiet)
  fi
  echo "building the web client..."
  "$ROOT/ops/build-web.sh"
  mkdir -p "$DIR/logs" "$DIR/pids" "$DIR/certs"
  if [ ! -s "$DIR/secret" ]; then
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/secret"
    chmod 600 "$DIR/secret"
  fi
  local ctl="$BIN/chatctl"
  [ -f "$DIR/certs/ca.pem" ] || "$ctl" certs init --dir "$DIR/certs" >/dev/null
  for n in "${NODES[@]}"; do
    [ -f "$DIR/certs/$n.pem" ] || "$ctl" certs issue "$n" --dir "$DIR/certs" >/dev/null
  done

  echo "starting:"
  start etcd etcd --name dev --data-dir "$DIR/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "$ETCD_PEER" --initial-advertise-peer-urls "$ETCD_PEER" \
    --initial-cluster "dev=$ETCD_PEER"
  wait_for 30 "$ctl" nodes --etcd "$ETCD" --prefix "$PREFIX" || {
    echo "etcd did not start; see $DIR/logs/etcd.log" >&2; exit 1; }
  for n in "${NODES[@]}"; do start_node "$n"; done
  if ! "$ctl" ring show --etcd "$ETCD" --prefix "$PREFIX" >/dev/null 2>&1; then
    "$ctl" cluster init --etcd "$ETCD" --prefix "$PREFIX" --wait-nodes "${#NODES[@]}" \
      --replication-factor "${CHAT_DEV_REPLICATION:-1}"
  fi
  # The web client, with development tokens: anyone who opens the page may sign in as anyone.
  start router "$BIN/chat-router" --listen "$ROUTER" --etcd "$ETCD" --prefix "$PREFIX" \
    --web-dir "$ROOT/web/app/dist" --dev-token-secret-file "$DIR/secret"
  for n in "${NODES[@]}"; do
    wait_for 60 ready "$(admin_port "$n")" || {
      echo "$n is not ready; see $DIR/logs/$n.log" >&2; exit 1; }
  done
  wait_for 30 ready "$BASE" || { echo "router is not ready; see $DIR/logs/router.log" >&2; exit 1; }

  cat <<EOT

Chat in a browser:  http://$ROUTER/   (sign in as any user id: development tokens are on;
                    open a second window, or another browser, as someone else)

cluster up: router ws://$ROUTER, nodes $(for n in "${NODES[@]}"; do printf '%s=ws://127.0.0.1:%s ' "$n" "$(ws_port "$n")"; done)

Two users on (most likely) different home nodes, through the router:
  export CHAT_URL=ws://$ROUTER
  $BIN/chat --token "\$($BIN/chatctl token --user bob --device laptop --secret-file $DIR/secret)" listen --read
  # in another terminal:
  export CHAT_URL=ws://$ROUTER
  $BIN/chat --token "\$($BIN/chatctl token --user alice --device phone --secret-file $DIR/secret)" send --to bob --wait read "hello bob"

Where is everyone:  $BIN/chatctl ring show --etcd $ETCD --user alice --user bob
Metrics:            http://127.0.0.1:$(admin_port n1)/metrics   (router: http://$ROUTER/metrics)
Stop:               ops/dev-cluster.sh down
EOT
}

status() {
  for name in etcd $(all_nodes) router; do
    if alive "$name"; then echo "$name: running (pid $(cat "$DIR/pids/$name"))"; else echo "$name: stopped"; fi
  done
  if alive etcd; then
    echo
    "$BIN/chatctl" nodes --etcd "$ETCD" --prefix "$PREFIX" || true
    echo
    "$BIN/chatctl" ring show --etcd "$ETCD" --prefix "$PREFIX" || true
  fi
}

down() {
  # Router and nodes first (they deregister from etcd while it still runs), etcd last.
  for name in router $(all_nodes) etcd; do stop "$name"; done
}

node_arg() {
  case "${1:-}" in
    n[1-9]) ;;
    *) echo "usage: $0 start-node|stop-node n1..n9" >&2; exit 2 ;;
  esac
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  start-node)
    node_arg "${2:-}"
    start_node "$2"
    wait_for 60 ready "$(admin_port "$2")" || { echo "$2 is not ready; see $DIR/logs/$2.log" >&2; exit 1; }
    if "$BIN/chatctl" ring show --etcd "$ETCD" --prefix "$PREFIX" 2>/dev/null | grep -qw "$2"; then
      echo "$2 is back and serves its users again"
    else
      echo "$2 is registered; move its share to it with: ops/add-node.sh $2"
    fi ;;
  stop-node) node_arg "${2:-}"; stop "$2" ;;
  *) echo "usage: $0 up|down|status|start-node N|stop-node N" >&2; exit 2 ;;
esac
