#!/usr/bin/env bash
# Runs one standalone chat node in the foreground (Ctrl-C stops it cleanly), with its data and a
# generated development secret under .dev/. Prints how to connect two users to it.
set -euo pipefail
cd "$(dirname "$0")/.."

ops/install-deps.sh
# The dev build shares its compiled RocksDB with the test suite (one cold build, not two).
cargo build --bins --locked

mkdir -p .dev
[ -s .dev/secret ] || head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > .dev/secret
export CHAT_NODE_AUTH__JWT_SECRET="$(cat .dev/secret)"
listen="${CHAT_LISTEN:-127.0.0.1:7400}"
bin="${CARGO_TARGET_DIR:-target}/debug"

cat <<TXT

  chat node on ws://$listen  (data: .dev/node-1, secret: .dev/secret)

  In two other terminals:
    export CHAT_URL=ws://$listen
    CHAT_TOKEN=\$($bin/chatctl token --secret-file .dev/secret --user bob --device cli) $bin/chat listen --read
    CHAT_TOKEN=\$($bin/chatctl token --secret-file .dev/secret --user alice --device cli) $bin/chat send --to bob --wait read "hello bob"

  Or speak JSON by hand (websocat): {"hello":{"token":"..."}} then {"send":{"clientMsgId":"1","to":"bob","body":"hi"}}

TXT
exec $bin/chat-node --standalone --node-id node-1 --data-dir .dev/node-1 --listen "$listen"
