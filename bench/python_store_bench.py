#!/usr/bin/env python3
"""LocalStore.get_into throughput from Python (results: bench/results/python.md).

For each block size: stores `--blocks` distinct raw fp16 blocks in a DRAM-only
LocalStore, then times `store.get_into(key, out)` into one reused numpy
array (round-robin over the keys), one call at a time, and reports the median
and p99 latency per call and GiB/s at the median. In the same run it times
`ctypes.memmove` of the same bytes between two numpy arrays (one memcpy call,
what the C++ benchmark's BM_Memcpy measures) and `store.get()` (a new bytes
object per call) for comparison with bench/results/kvstore.md.

    PYTHONPATH=build/python python3 bench/python_store_bench.py [--sizes-mib 1,8]
"""
import argparse
import ctypes
import os
import subprocess
import tempfile
import time

import numpy as np

import strata

GIB = 1 << 30


def block_of(mib, seed):
    # [layers, 2, 64 tokens, 8 heads, 128 dims] fp16 = mib MiB of payload.
    layers = mib * 4
    kv = np.random.default_rng(seed).standard_normal((layers, 2, 64, 8, 128)).astype(np.float16)
    return strata.encode_kv(kv)


def timed(fn, calls):
    ns = []
    for i in range(calls):
        t0 = time.perf_counter_ns()
        fn(i)
        ns.append(time.perf_counter_ns() - t0)
    ns.sort()
    return ns[len(ns) // 2], ns[min(len(ns) - 1, int(len(ns) * 0.99))]


def report(name, nbytes, p50_ns, p99_ns):
    per_s = nbytes / (p50_ns / 1e9)
    print(f"| {name} | {per_s / GIB:6.2f} | {per_s / 1e9:6.2f} | {p50_ns / 1e3:8.1f} | "
          f"{p99_ns / 1e3:8.1f} |", flush=True)


def start_stratad(binary, data_dir):
    """A loopback stratad; returns (process, grpc address) once it is ready."""
    env = {**os.environ, "UCX_NET_DEVICES": "lo"}
    proc = subprocess.Popen(
        [binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
         "--data_plane_listen=127.0.0.1:0", f"--data_dir={data_dir}",
         "--log_format=text", "--dram_capacity=1GiB",
         # No local connections: the rows measure gRPC and UCX, which a
         # shared arena (on by default on loopback) would change.
         "--local_data_plane_path="],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    line = proc.stdout.readline().decode()
    if not line.startswith("stratad ready "):
        proc.kill()
        raise SystemExit(f"stratad did not start: {line!r}")
    grpc = next(f[5:] for f in line.split() if f.startswith("grpc="))
    return proc, grpc


def best_of(fn, calls, repeats):
    return min((timed(fn, calls) for _ in range(repeats)), key=lambda r: r[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes-mib", default="1,8")
    ap.add_argument("--blocks", type=int, default=16)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--repeats", type=int, default=3, help="runs; the best median is kept")
    ap.add_argument("--stratad", help="also time RemoteStore against this stratad binary")
    ap.add_argument("--data-planes", default="grpc,ucx")
    ap.add_argument("--remote-calls", type=int, default=100)
    args = ap.parse_args()
    print("| what | GiB/s at p50 | GB/s at p50 | p50 µs | p99 µs |")
    print("|---|---:|---:|---:|---:|")
    for mib in (int(s) for s in args.sizes_mib.split(",")):
        blocks = [block_of(mib, seed) for seed in range(args.blocks)]
        keys = [bytes([i]) * 16 for i in range(args.blocks)]
        size = len(blocks[0])
        store = strata.LocalStore(dram_bytes=(args.blocks + 4) * (size + (1 << 20)))
        assert store.batch_put(keys, blocks) == [True] * args.blocks
        out = np.empty(size, np.uint8)
        srcs = [np.frombuffer(b, np.uint8) for b in blocks]
        n = args.blocks

        def get_into(i):
            store.get_into(keys[i % n], out)

        def get_bytes(i):
            store.get(keys[i % n])

        def memmove(i):
            ctypes.memmove(out.ctypes.data, srcs[i % n].ctypes.data, size)

        for name, fn in ((f"LocalStore get_into, {mib} MiB block", get_into),
                         (f"LocalStore get (new bytes), {mib} MiB block", get_bytes),
                         (f"memmove (one call), {mib} MiB", memmove)):
            report(name, size, *best_of(fn, args.calls, args.repeats))
        assert out.tobytes() in blocks
        store.close()
        if not args.stratad:
            continue
        with tempfile.TemporaryDirectory(prefix="strata-bench-") as data_dir:
            proc, address = start_stratad(args.stratad, data_dir)
            try:
                for dp in args.data_planes.split(","):
                    remote = strata.RemoteStore(address, deadline_ms=30000, data_plane=dp)
                    remote.batch_put(keys, blocks)

                    def remote_get_into(i):
                        assert remote.get_into(keys[i % n], out) == size

                    report(f"RemoteStore get_into ({remote.data_plane}), {mib} MiB block",
                           size, *best_of(remote_get_into, args.remote_calls, args.repeats))
                    remote.close()
            finally:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
