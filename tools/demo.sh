#!/usr/bin/env bash
# The README's first command: install dependencies, build, start a
# single-node stratad with the embedded defaults (data in ./strata-data,
# 127.0.0.1:7070 gRPC, 127.0.0.1:9464 metrics; DRAM lowered to 64 MiB so the
# demo shows eviction), and drive it with stratactl: puts, prefix hits,
# eviction under pressure, the metrics it produced, and a restart that keeps
# the SSD tier.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD_DIR="${BUILD_DIR:-build}"
DATA_DIR="${DATA_DIR:-./strata-data}"

tools/install-deps.sh
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo > /dev/null
cmake --build "$BUILD_DIR" -j 2 --target stratad stratactl

STRATAD="$BUILD_DIR/cluster/stratad"
CTL="$BUILD_DIR/cluster/stratactl"
work="$(mktemp -d)"
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

start_stratad() {
  mkfifo "$work/ready.$1"
  "$STRATAD" --data_dir="$DATA_DIR" --dram_capacity=64MiB --log_format=text \
    > "$work/ready.$1" 2>> "$work/stratad.log" &
  pid=$!
  exec 3< "$work/ready.$1"      # stratad prints one line when it serves.
  read -r line <&3 || { echo "stratad failed to start:"; cat "$work/stratad.log"; exit 1; }
  echo "$line"
}

step() { printf '\n== %s\n$ %s\n' "$1" "${*:2}"; "${@:2}"; }

# SmolLM2-135M's KV shape: 30 layers x 3 KV heads x 64, bf16 (5.6 MiB/chunk).
NS=(--model=HuggingFaceTB/SmolLM2-135M --dtype=bf16 --layers=30 --kv-heads=3 --head-dim=64 --chunk=256)
seq 1000 2999 > "$work/prompt_a.txt"                          # 2,000 tokens
{ seq 1000 2299; seq 50000 50699; } > "$work/prompt_b.txt"    # shares 1,300

start_stratad 1
step "Daemon status" "$CTL" status
step "Store prompt A's KV (7 full chunks)" "$CTL" fill-prompt --tokens-file="$work/prompt_a.txt" "${NS[@]}"
step "Prompt B shares 1,300 tokens: how much can it reuse?" "$CTL" lookup --tokens-file="$work/prompt_b.txt" "${NS[@]}"
step "Pressure: 40 x 4 MiB puts into a 64 MiB DRAM tier" "$CTL" bench --op=put --size=4MiB --clients=2 --ops=20 --data-plane=auto --keep
step "Eviction demoted blocks to the SSD tier" "$CTL" stats
printf '\n== Prometheus metrics (GET /metrics on 127.0.0.1:9464), a selection\n'
exec 4<>/dev/tcp/127.0.0.1/9464
printf 'GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' >&4
grep -E '^strata:(tier_(used_bytes|evictions_total|demotions_total)|lookup_hit_tokens_total|puts_total|get_hits_total)' <&4 || true
exec 4>&-

printf '\n== Restart: SIGTERM, start again on the same data directory\n'
kill -TERM "$pid"; wait "$pid" || true; exec 3<&-
start_stratad 2
step "Prompt B's prefix is still cached (SSD tier survived)" "$CTL" lookup --tokens-file="$work/prompt_b.txt" "${NS[@]}"
kill -TERM "$pid"; wait "$pid" || true; pid=""
printf '\nDone. Daemon log: structured lines like\n'; head -n 3 "$work/stratad.log"
