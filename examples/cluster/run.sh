#!/usr/bin/env bash
# Starts a local cluster: one redis-server (no persistence) and three
# Switchboard nodes sharing rooms, presence and pushes through it, with the
# example actions. Ctrl-C stops them all.
#
#   examples/cluster/run.sh            (from the repository's root or anywhere)
#
# Nodes listen on 127.0.0.1:7801, :7802 and :7803; Redis on 127.0.0.1:6390.
# With no secret configured, all three sign tokens with this user's
# development secret, so one token works on every node.
set -euo pipefail
cd "$(dirname "$0")/../.."
REDIS_PORT="${REDIS_PORT:-6390}"
command -v redis-server >/dev/null || bash .ci/deps
cargo build --release --quiet -p switchboard -p echo -p kv -p chat -p example-hello-action
ACTIONS=target/cluster-actions
install -d -m 755 "$ACTIONS"
install -m 644 target/release/libecho.so target/release/libkv.so target/release/libchat.so \
  target/release/libhello_action.so "$ACTIONS/"

PIDS=()
stop() { kill "${PIDS[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT INT TERM

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >/dev/null &
PIDS+=($!)
until (exec 3<>"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null; do sleep 0.1; done

for node in a:7801 b:7802 c:7803; do
  name=${node%%:*}
  port=${node##*:}
  ./target/release/switchboard serve --actions "$ACTIONS" --listen "127.0.0.1:$port" \
    --redis-url "redis://127.0.0.1:$REDIS_PORT/0" --node-id "$name" \
    >"target/cluster-$name.out" 2>"target/cluster-$name.log" &
  PIDS+=($!)
done
for port in 7801 7802 7803; do
  until curl -sf "http://127.0.0.1:$port/healthz" >/dev/null 2>&1; do sleep 0.1; done
done

TOKEN=$(./target/release/switchboard token --sub alice --ttl 24h 2>/dev/null)
cat <<TEXT
Three nodes share rooms through Redis on 127.0.0.1:$REDIS_PORT:
  ws://127.0.0.1:7801/ws   (node a, log: target/cluster-a.log)
  ws://127.0.0.1:7802/ws   (node b, log: target/cluster-b.log)
  ws://127.0.0.1:7803/ws   (node c, log: target/cluster-c.log)
A token for user "alice" (any node accepts it; mint others with
./target/release/switchboard token --sub NAME):
  $TOKEN
Each node's /status has a "cluster" section. Ctrl-C stops everything.
TEXT
wait
