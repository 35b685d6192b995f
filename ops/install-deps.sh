#!/usr/bin/env bash
# Installs the system packages the build and the tests need, only when missing (safe to run again).
#   libclang-dev      librocksdb-sys runs bindgen
#   protobuf-compiler prost-build and etcd-client compile .proto files with protoc
#   libprotobuf-dev   etcd-client's protos import google/protobuf/*.proto (the well-known types)
#   etcd-server       tests and the dev cluster run a real etcd
#   build-essential   RocksDB is compiled from source (C++)
#   nftables          the chaos suite drops packets between nodes, and to etcd, with nft rules
#   prometheus        its promtool checks and unit-tests ops/monitoring's alert rules and the
#                     dashboard's queries
#   systemd           systemd-analyze verifies ops/systemd's units (not run as init)
#   chromium, chromium-driver   the web client's browser tests drive headless Chromium
#   nodejs, npm       build and unit-test the TypeScript client and the web client (web/);
#                     only when the machine has no Node.js of its own; Node 20 or later is
#                     needed (the TypeScript client's live test uses its WebSocket)
#   s3s-fs            (cargo install) a real S3-compatible server for the media tests; pinned to
#                     0.14.1 (needs Rust 1.92; 0.15 and later need 1.96, newer than this machine's)
set -euo pipefail

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: no Rust toolchain: install stable Rust with rustup first" >&2
  exit 1
fi

need=()
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
[ -f /usr/include/google/protobuf/descriptor.proto ] || need+=(libprotobuf-dev)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v c++ >/dev/null 2>&1 || need+=(build-essential)
command -v nft >/dev/null 2>&1 || need+=(nftables)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
# bindgen needs libclang.so (not libclang-cpp), whatever version Debian ships.
dpkg -s libclang-dev >/dev/null 2>&1 || need+=(libclang-dev)

if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The Debian etcd-server package starts a system etcd on 2379; the project never uses it, and
# tests pick free ports, but stop it so it does not hold the default port on a developer's laptop.
# The same for the prometheus package's server on 9090: only its promtool is used.
for svc in etcd prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet "$svc" 2>/dev/null; then
    systemctl stop "$svc" 2>/dev/null || true
  fi
done
S3S_FS_VERSION=0.14.1
if ! s3s-fs --version 2>/dev/null | grep -qwF "$S3S_FS_VERSION"; then
  echo "install-deps: installing s3s-fs $S3S_FS_VERSION (cargo install, a few minutes)"
  cargo install --quiet --locked s3s-fs --version "$S3S_FS_VERSION" --features binary
fi

node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "install-deps: Node.js $(node --version) is too old for web/ (20 or later: install it from nodejs.org or NodeSource)" >&2
  exit 1
fi

echo "install-deps: ok (node $(node --version), chromium $(chromium --version 2>/dev/null | awk '{print $2}'), protoc $(protoc --version | awk '{print $2}'), etcd $(etcd --version 2>/dev/null | head -n1 | awk '{print $3}'), promtool $(promtool --version 2>&1 | head -n1 | awk '{print $3}'))"
