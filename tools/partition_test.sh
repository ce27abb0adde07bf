#!/usr/bin/env bash
# Partition test of a Strata cluster (docs/cluster.md, "Partition test"):
# three stratad daemons, each in its own network namespace (ip netns + veth
# into a bridge), etcd and the client in the root namespace. With R = 2:
#
#   1. put N keys through the ClusterClient (`stratactl cluster bench`);
#   2. while a reader keeps reading and verifying every key, cut n3 off
#      (its veth taken down: etcd and clients lose it, it keeps running);
#   3. check that no read failed or returned wrong bytes (replicas serve
#      n3's keys), that puts of new keys made during the cut all succeed
#      (unreachable owners are skipped), that n3's lease expires (it leaves
#      the member set) within TTL + margin, and that n3 is still alive;
#   4. heal the link: n3 registers again (new lease) and every key — old
#      ones and those written during the cut — reads back, byte for byte.
#
# Usage: tools/partition_test.sh [BUILD_DIR]   (default: ./build)
# Needs root, iproute2 with netns and bridge support, /usr/bin/etcd.
# Exit 0 pass, 1 fail, 77 skipped (the reason is printed), as ctest's
# SKIP_RETURN_CODE expects.
set -uo pipefail

BUILD=${1:-build}
STRATAD=$BUILD/cluster/stratad
STRATACTL=$BUILD/cluster/stratactl
KEYS=${PARTITION_KEYS:-600}
TTL=3
MARGIN=5  # Lease expiry tick (500 ms) + keepalive/watch delays on a busy box.

skip() { echo "SKIP: $*"; exit 77; }
[[ $(id -u) == 0 ]] || skip "needs root (ip netns)"
command -v ip >/dev/null || skip "no iproute2"
command -v etcdctl >/dev/null || skip "no etcdctl"
[[ -x /usr/bin/etcd ]] || skip "no /usr/bin/etcd"
[[ -x $STRATAD && -x $STRATACTL ]] || skip "build $STRATAD and $STRATACTL first"

# One run at a time: the subnet and names are fixed.
exec 9>/tmp/strata-partition-test.lock
flock -w 120 9 || skip "another partition test holds /tmp/strata-partition-test.lock"

ID=$$
NET=10.213.77
BR=stpbr$((ID % 100000))
WORK=$(mktemp -d /tmp/strata-partition.XXXXXX)
PIDS=()
NSS=()

cleanup() {
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  for ns in "${NSS[@]}"; do ip netns del "$ns" 2>/dev/null; done
  ip link del "$BR" 2>/dev/null
  if [[ ${KEEP_WORK:-0} == 1 ]]; then echo "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

if ! ip netns add "stp-probe-$ID" 2>/dev/null; then
  skip "ip netns add is not permitted here"
fi
ip netns del "stp-probe-$ID"
ip link add "$BR" type bridge 2>/dev/null || skip "cannot create a bridge"
ip addr add "$NET.1/24" dev "$BR"
ip link set "$BR" up

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
fail() { echo "FAIL: $*"; KEEP_WORK=1; exit 1; }

# etcd on the bridge address (root namespace).
/usr/bin/etcd --name stp --data-dir "$WORK/etcd" \
  --listen-client-urls "http://$NET.1:23790" \
  --advertise-client-urls "http://$NET.1:23790" \
  --listen-peer-urls "http://127.0.0.1:23800" \
  --initial-advertise-peer-urls "http://127.0.0.1:23800" \
  --initial-cluster "stp=http://127.0.0.1:23800" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)
ETCD=$NET.1:23790
CTL=("$STRATACTL" "--etcd=$ETCD" --deadline=10s)

wait_for() {  # wait_for SECONDS CMD...: polls CMD until it succeeds.
  local until=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    (( $(date +%s) < until )) || return 1
    sleep 0.1  # Pacing between polls (each spawns a process), not a wait.
  done
}
wait_for 20 env ETCDCTL_API=3 etcdctl --endpoints="$ETCD" endpoint health ||
  fail "etcd did not come up"

for i in 1 2 3; do
  ns=stp-n$i-$ID
  ip netns add "$ns"
  NSS+=("$ns")
  ip link add "stph$i-$ID" type veth peer name "stpc$i-$ID"
  ip link set "stpc$i-$ID" netns "$ns"
  ip link set "stph$i-$ID" master "$BR" up
  ip -n "$ns" addr add "$NET.1$i/24" dev "stpc$i-$ID"
  ip -n "$ns" link set "stpc$i-$ID" up
  ip -n "$ns" link set lo up
  ip netns exec "$ns" "$STRATAD" --listen="$NET.1$i:7070" --metrics_listen= \
    --data_plane_listen= --data_dir="$WORK/n$i" --dram_capacity=256MiB \
    --ssd_capacity=0 --log_format=text --cluster_etcd="$ETCD" \
    --cluster_node_id="n$i" --cluster_zone="z$i" --cluster_lease_ttl_s=$TTL \
    >"$WORK/n$i.out" 2>"$WORK/n$i.log" &
  PIDS+=($!)
  eval "PID_N$i=$!"
done

# The member set straight from etcd (stratactl cluster members would also
# wait for each node's health answer, up to its deadline for a cut-off one).
members() {
  ETCDCTL_API=3 etcdctl --endpoints="$ETCD" --command-timeout=2s get \
    --prefix --keys-only /strata/v1/members/ | { grep . || true; } | sed 's|.*/||' | tr '\n' ' '
}
has_members() { [[ $(members) == "$1" ]]; }
wait_for 30 has_members "n1 n2 n3 " || fail "daemons did not register: $(members)"
echo "members: $(members)"

# 1. Keys through the ClusterClient, R = 2.
"${CTL[@]}" cluster bench --op=put --keys="$KEYS" --size=64KiB --seed=7 \
  --replication=2 --min-members=3 | tee "$WORK/put.txt"
grep -q "failed=0 wrong=0 replica=0" "$WORK/put.txt" || fail "puts failed"

# 2. A reader over every key while n3 is cut off.
"${CTL[@]}" cluster bench --op=get --keys="$KEYS" --size=64KiB --seed=7 \
  --replication=2 --clients=2 --verify --duration=$((TTL + MARGIN + 8))s \
  --report-every=1s >"$WORK/reads.txt" 2>&1 &
READER=$!
PIDS+=($READER)
wait_for 10 grep -q "^t=1" "$WORK/reads.txt" || fail "reader did not start"
CUT=$(now)
ip link set "stph3-$ID" down
echo "cut n3 off (veth down) at t=$(grep -c '^t=' "$WORK/reads.txt")s of the reader"
# New writes during the cut (another key set): owners that cannot be reached
# are skipped, so every put must still succeed on the live owner(s).
"${CTL[@]}" cluster bench --op=put --keys=$((KEYS / 2)) --size=64KiB --seed=8 \
  --replication=2 --clients=2 >"$WORK/cut_puts.txt" 2>&1 &
WRITER=$!
PIDS+=($WRITER)

# 3. n3 leaves once its lease expires.
wait_for $((TTL + MARGIN + 5)) has_members "n1 n2 " || fail "n3 still a member: $(members)"
LEFT=$(now)
echo "n3 left the member set $(elapsed "$CUT" "$LEFT") s after the cut (TTL $TTL s)"
kill -0 "$PID_N3" || fail "n3 died"
wait "$READER"; READER_RC=$?
cat "$WORK/reads.txt"
[[ $READER_RC == 0 ]] || fail "reads failed or returned wrong bytes during the partition"
wait "$WRITER"; WRITER_RC=$?
cat "$WORK/cut_puts.txt"
[[ $WRITER_RC == 0 ]] || fail "puts failed during the partition"

# 4. Heal: n3 registers again with a new lease; everything reads back.
HEAL=$(now)
ip link set "stph3-$ID" up
wait_for $((TTL + MARGIN + 10)) has_members "n1 n2 n3 " || fail "n3 did not rejoin: $(members)"
echo "n3 rejoined $(elapsed "$HEAL" "$(now)") s after the link came back"
"${CTL[@]}" cluster bench --op=get --keys="$KEYS" --size=64KiB --seed=7 \
  --replication=2 --verify | tee "$WORK/after.txt"
grep -q "not_found=0 failed=0 wrong=0" "$WORK/after.txt" || fail "reads after the heal"
"${CTL[@]}" cluster bench --op=get --keys=$((KEYS / 2)) --size=64KiB --seed=8 \
  --replication=2 --verify | tee "$WORK/after_cut_puts.txt"
grep -q "not_found=0 failed=0 wrong=0" "$WORK/after_cut_puts.txt" ||
  fail "keys written during the cut do not read back after the heal"
"${CTL[@]}" cluster members
grep -E "registered|lease_lost|re_?regist" "$WORK/n3.log" | tail -3
echo "PASS"
