#!/usr/bin/env bash
# Builds web/: the TypeScript client library (web/client) and the web client (web/app/dist, the
# files chat-router serves with --web-dir).
#   ops/build-web.sh          install the npm packages (when the lock file changed), then build
#   ops/build-web.sh --test   also run both packages' unit tests
set -euo pipefail
cd "$(dirname "$0")/../web"
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
npm run build --silent
if [ "${1:-}" = --test ]; then
  npm test --silent
fi
