#!/usr/bin/env bash
# Drain throughput of stratad in cluster mode on loopback (docs/cluster.md,
# "Measured"): etcd + 3 self-registering daemons, KEYS blocks of SIZE put
# with R = 2 through `stratactl cluster bench`, then `stratactl drain` of one
# daemon, timed. Rates: rebalance_bytes_per_s / rebalance_blocks_per_s of
# every daemon ("0" = unlimited).
#
#   bench/cluster_drain.sh BUILD_DIR [KEYS=4000] [SIZE=64KiB] [BYTES_PER_S=0] [BLOCKS_PER_S=0]
set -euo pipefail
B=${1:?build dir}; KEYS=${2:-4000}; SIZE=${3:-64KiB}; RB=${4:-0}; RK=${5:-0}
W=$(mktemp -d /tmp/strata-drain.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$W"; }
trap cleanup EXIT
PORT=$((20000 + RANDOM % 20000))
/usr/bin/etcd --name=drain --data-dir="$W/etcd" \
  --listen-client-urls=http://127.0.0.1:$PORT --advertise-client-urls=http://127.0.0.1:$PORT \
  --listen-peer-urls=http://127.0.0.1:$((PORT + 1)) --initial-advertise-peer-urls=http://127.0.0.1:$((PORT + 1)) \
  --initial-cluster=drain=http://127.0.0.1:$((PORT + 1)) --enable-grpc-gateway=false 2>"$W/etcd.log" &
PIDS+=($!)
until grep -q "serving insecure client requests" "$W/etcd.log"; do sleep 0.1; done
ADDR=()
for i in 0 1 2; do
  mkfifo "$W/ready$i"
  "$B/cluster/stratad" --listen=127.0.0.1:0 --metrics_listen= --data_plane_listen= \
    --data_dir="$W/n$i" --dram_capacity=512MiB --ssd_capacity=0 --log_format=text \
    --local_data_plane_path= \
    --cluster_etcd=127.0.0.1:$PORT --cluster_node_id=n$i --cluster_capacity=512MiB \
    --cluster_lease_ttl_s=5 --rebalance_bytes_per_s="$RB" --rebalance_blocks_per_s="$RK" \
    --rebalance_settle_ms=200 >"$W/ready$i" 2>"$W/n$i.log" &
  PIDS+=($!)
  read -r line <"$W/ready$i"
  ADDR+=("$(sed -E 's/.* grpc=([^ ]+).*/\1/' <<<"$line")")
done
"$B/cluster/stratactl" --etcd=127.0.0.1:$PORT cluster bench --op=put --keys="$KEYS" \
  --size="$SIZE" --clients=2 --replication=2 --min-members=3 | tail -2
start=$(date +%s.%N)
"$B/cluster/stratactl" drain "${ADDR[1]}" | tail -2
end=$(date +%s.%N)
echo "drain of n1: $(echo "$end - $start" | bc) s (keys=$KEYS size=$SIZE bytes_per_s=$RB blocks_per_s=$RK)"
