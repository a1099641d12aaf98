#!/usr/bin/env bash
# The browser chat: builds the server and the chat plugin, serves this
# folder's page at http://127.0.0.1:7800/ beside the socket, and prints a
# link per user (each with a development token). Ctrl-C stops it.
#
#   examples/chat/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet -p switchboard -p chat -p echo
ACTIONS=target/chat-actions
install -d -m 755 "$ACTIONS"
install -m 644 target/release/libchat.so target/release/libecho.so "$ACTIONS/"
./target/release/switchboard serve --actions "$ACTIONS" --static-dir examples/chat/public \
  --listen 127.0.0.1:7800 >target/chat.out 2>target/chat.log &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT INT TERM
until curl -sf http://127.0.0.1:7800/healthz >/dev/null 2>&1; do sleep 0.1; done
echo "Open one link per browser window (log: target/chat.log):"
for user in alice bob; do
  echo "  $user: http://127.0.0.1:7800/#token=$(./target/release/switchboard token --sub "$user" --ttl 24h 2>/dev/null)"
done
wait $SERVER
