#!/usr/bin/env bash
# One row of the service benchmark, for A/B comparisons of two builds on a
# noisy machine: starts a fresh DRAM-only stratad from BUILD_DIR, runs
# `stratactl bench` REPEAT times against it over UCX, prints each result
# line, then the client's and the daemon's CPU time over the runs (user +
# system clock ticks from /proc, the daemon's start-up not counted: compare
# builds by it where GB/s drowns in noise).
#
#   bench/service_row.sh OP SIZE CLIENTS [REPEAT]
#   TLS=shm BUILD_DIR=build bench/service_row.sh get 262144 4 3
#   CLIENT_ENV="STRATA_UCX_CALLER_SPIN_US=0" DAEMON_ENV="..." bench/service_row.sh ...
#   DAEMON_FLAGS="--data_plane_error_mode=peer" bench/service_row.sh put 1048576 1
#   PLANE=local DAEMON_FLAGS="--local_data_plane_path=/tmp/l.sock" \
#     bench/service_row.sh put 262144 1
#   BYTES=$((512<<20)) bench/service_row.sh put 8388608 4   # bytes per run
#
# TLS: tcp (default) or shm (UCX_TLS=posix,cma,tcp). Alternate the builds
# (A B A B ...) and compare like with like; bench/results/service.md has
# the runs made with it.
set -euo pipefail
op=$1; size=$2; clients=$3; repeat=${4:-3}
build=${BUILD_DIR:-build}
tls="UCX_TLS=tcp"
[ "${TLS:-tcp}" = shm ] && tls="UCX_TLS=posix,cma,tcp"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2> /dev/null; rm -rf "$work"; }
trap cleanup EXIT
mkfifo "$work/ready"
# shellcheck disable=SC2086
env UCX_NET_DEVICES=lo $tls ${DAEMON_ENV:-} "$build/cluster/stratad" \
  --listen=127.0.0.1:0 --metrics_listen= --data_plane_listen=127.0.0.1:0 \
  --ssd_capacity=0 --dram_capacity=3GiB --data_dir="$work/data" \
  --log_format=text --local_data_plane_path= ${DAEMON_FLAGS:-} \
  > "$work/ready" 2> "$work/log" &
pid=$!
read -r line < "$work/ready"
addr=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<< "$line")
if [ "${PLANE:-ucx}" = local ]; then
  # A shared arena is mapped in by a thread after start-up: wait until all
  # 3 GiB are, so the mapping does not compete with the runs.
  until [ "$(awk '/RssShmem/ {print $2}' "/proc/$pid/status")" -ge $((3 << 20)) ]; do
    sleep 0.2
  done
fi
ops=$(( ${BYTES:-$((256 << 20))} / size / clients ))
[ "$ops" -lt 8 ] && ops=8
# From here on: the start-up (the DRAM arena's pre-fault) is not counted.
ticks_at_start=$(awk '{print $14 + $15}' "/proc/$pid/stat")
for _ in $(seq "$repeat"); do
  # shellcheck disable=SC2086
  env UCX_NET_DEVICES=lo $tls ${CLIENT_ENV:-} "$build/cluster/stratactl" \
    --addr="$addr" bench --op="$op" --size="$size" --clients="$clients" \
    --ops="$ops" --warmup=2 --data-plane="${PLANE:-ucx}" 2> /dev/null | grep "GB/s"
done
echo "client cpu ticks (all runs): $(awk '{print $16 + $17}' /proc/$$/stat)"
echo "daemon cpu ticks (all runs): $(awk -v s="$ticks_at_start" '{print $14 + $15 - s}' "/proc/$pid/stat")"
