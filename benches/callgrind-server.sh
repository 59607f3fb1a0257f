#!/usr/bin/env bash
# Instructions per request of a bench server through HTTP (user space, the
# server process only): the server runs under callgrind on core 0, wrk
# (benches/wrk/zipf.lua, 4 connections) loads it from core 1; counters are
# zeroed after a 2 s warm-up and dumped after SECONDS of load, and the
# dump's total is divided by the requests wrk completed. Repeatable to a
# percent or two on a busy machine, where wall-clock CPU per request is not.
#
#   cargo build --release -p apikey-cache-benches --bin compare
#   benches/callgrind-server.sh axum apikey [SECONDS]    # or: axum noauth, axum bearer, actix apikey, ...
#
# Needs valgrind, wrk, taskset.
set -euo pipefail
cd "$(dirname "$0")/.."
framework=$1 mode=$2 seconds=${3:-10}
bin="${CARGO_TARGET_DIR:-target}/release/compare"
script=benches/wrk/zipf.lua
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
out=$(mktemp -d)
PORT=$port TOKIO_WORKER_THREADS=1 taskset -c 0 valgrind --tool=callgrind \
    --callgrind-out-file="$out/cg.out" "$bin" --serve "$framework" "$mode" >/dev/null 2>"$out/valgrind.log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -rf "$out"' EXIT
for _ in $(seq 1 1200); do
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.5
done
url="http://127.0.0.1:$port/v1/whoami"
taskset -c 1 wrk -t1 -c4 -d2s -s "$script" "$url" >/dev/null
callgrind_control -z "$server" >/dev/null 2>&1
requests=$(taskset -c 1 wrk -t1 -c4 -d"${seconds}s" -s "$script" "$url" | awk '/ requests in /{print $1}')
callgrind_control -d "$server" >/dev/null 2>&1
sleep 1
ir=$(grep -h '^summary:' "$out"/cg.out.* | awk '{s += $2} END {print s}')
echo "$framework $mode: $requests requests, $((ir / requests)) instructions per request"
