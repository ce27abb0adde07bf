#!/usr/bin/env bash
# A/B of two stratad binaries on local-connection rows (shared arena and
# message channel), alternated: for each round, each row and each binary,
# a fresh daemon (shared DRAM arena of DRAM bytes, pre-faulted, no SSD) and
# one `stratactl bench` run against it. Prints one line per run: label,
# row, GB/s, p50, p99 and the daemon's CPU ticks (user + system, 10 ms)
# over the run, from /proc.
#
#   A=old/stratad B=build/cluster/stratad ROWS="put:262144:4:8000" \
#     ROUNDS=3 bench/local_plane_ab.sh
#
# ROWS: space-separated op:size:clients:ops_per_client. STRATACTL: the
# client (default build/cluster/stratactl). DRAM: arena size (default 3GiB;
# ops x clients x size beyond 0.95 of it evicts). A_ENV / B_ENV: extra
# environment of each daemon (e.g. STRATA_CHANNEL_SPIN_US=100). Labels are
# A and B. Run nothing else meanwhile: the numbers are only comparable
# within one invocation.
set -euo pipefail
: "${A:?path of the first stratad}" "${B:?path of the second stratad}"
ROWS="${ROWS:-put:262144:4:8000}"
ROUNDS="${ROUNDS:-3}"
STRATACTL="${STRATACTL:-build/cluster/stratactl}"
DRAM="${DRAM:-3GiB}"
A_ENV="${A_ENV:-}"
B_ENV="${B_ENV:-}"

dram_bytes() {  # 3GiB -> bytes (GiB / MiB suffixes only)
  local v=$1
  case "$v" in
    *GiB) echo $(( ${v%GiB} << 30 )) ;;
    *MiB) echo $(( ${v%MiB} << 20 )) ;;
    *) echo "$v" ;;
  esac
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_one() {  # label binary env op size clients ops
  local label=$1 bin=$2 env=$3 op=$4 size=$5 clients=$6 ops=$7
  local dir pid line addr t0 t1 result
  dir=$(mktemp -d)
  mkfifo "$dir/ready"
  # shellcheck disable=SC2086  # env is a list of VAR=value words
  env $env "$bin" --listen=127.0.0.1:0 --metrics_listen= \
    --data_plane_listen=127.0.0.1:0 --ssd_capacity=0 --dram_capacity="$DRAM" \
    --data_dir="$dir/data" --log_format=text \
    --local_data_plane_path="$dir/l.sock" >"$dir/ready" 2>"$dir/log" &
  pid=$!
  read -r line <"$dir/ready"
  addr=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")
  # The shared arena is pre-faulted at start: wait until it is resident.
  local want=$(( $(dram_bytes "$DRAM") >> 10 ))
  until [ "$(awk '/RssShmem/ {print $2}' "/proc/$pid/status")" -ge "$want" ]; do
    sleep 0.1
  done
  t0=$(cpu_ticks "$pid")
  result=$("$STRATACTL" --addr="$addr" bench --op="$op" --size="$size" \
    --clients="$clients" --ops="$ops" --warmup=2 --data-plane=local 2>&1 |
    grep -o "[0-9.]* GB/s.*p99=[0-9.]* us" || echo "failed")
  t1=$(cpu_ticks "$pid")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  rm -rf "$dir"
  echo "$label $op $size x$clients $result daemon_ticks=$((t1 - t0))"
}

for round in $(seq "$ROUNDS"); do
  for row in $ROWS; do
    IFS=: read -r op size clients ops <<<"$row"
    run_one A "$A" "$A_ENV" "$op" "$size" "$clients" "$ops"
    run_one B "$B" "$B_ENV" "$op" "$size" "$clients" "$ops"
  done
done
