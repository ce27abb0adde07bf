#!/usr/bin/env bash
# One device-tool call that measures the engine's TTFT on the GPU machine and
# runs the kernel suite, logs under $OUT. Build both bundles here first:
#   tools/gpu/run_gpu_suite.sh                      # -> bundle/
#   cmake -S . -B build-gpu-py -G Ninja -DCMAKE_BUILD_TYPE=Release
#   ninja -C build-gpu-py strata_python   # the modules and the package sources
#   python3 tools/gpu/pack_python.py build-gpu-py bundle-py
# then: run(command="bash bench/engine/run_h100.sh", carry=["bundle", "bundle-py"])
# STRATA_RUN_PARTS picks parts (default "dram kernels ssd"; also "disk").
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PARTS=${STRATA_RUN_PARTS:-dram kernels ssd}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
if [[ -d bundle-py ]]; then
  bash bundle-py/build.sh > "$OUT/pybuild.log" 2>&1 || echo "bundle-py build failed" | tee -a "$OUT/summary.txt"
fi
export PYTHONPATH=$PWD/bundle-py/python:$PWD/client/python
TTFT=(python3 bench/engine/ttft_bench.py --model llama3-8b-random --device cuda --dtype bfloat16)
for part in $PARTS; do
  t0=$SECONDS
  case $part in
    dram)
      timeout 270 "${TTFT[@]}" --lengths 4096,16384,32768 --codec raw \
        --codec quant:bits=4,group=64 --codec quant:bits=2,group=32 --repeats 2 \
        --json "$OUT/ttft_dram.json" > "$OUT/ttft_dram.txt" 2>&1 ;;
    ssd)
      # A native backtrace if it crashes (tools/gpu/segv_backtrace.c; the
      # machine has no gdb), so UCX's own handler is off.
      gcc -shared -fPIC -O1 -o /tmp/segv_backtrace.so tools/gpu/segv_backtrace.c -ldl
      # Large blocks stay in the heap (docs/python.md); the 18:40 UTC SSD rows
      # of bench/results/engine.md were measured before this was set.
      MALLOC_MMAP_THRESHOLD_=67108864 MALLOC_TRIM_THRESHOLD_=1073741824 \
      UCX_HANDLE_ERRORS=none LD_PRELOAD=/tmp/segv_backtrace.so timeout 300 "${TTFT[@]}" \
        --tier ssd --lengths 32768 --codec raw --codec quant:bits=2,group=32 --repeats 2 \
        --json "$OUT/ttft_ssd.json" > "$OUT/ttft_ssd.txt" 2>&1 ;;
    disk)
      # The read ceiling of the disk under /tmp (where --tier ssd keeps its
      # RocksDB): 4 GiB written, page cache dropped, read back.
      dd if=/dev/zero of=/tmp/strata-disk-probe bs=16M count=256 oflag=direct 2> "$OUT/disk.txt"
      sync; echo 3 > /proc/sys/vm/drop_caches
      dd if=/tmp/strata-disk-probe of=/dev/null bs=16M 2>> "$OUT/disk.txt"
      rm -f /tmp/strata-disk-probe; df -h /tmp >> "$OUT/disk.txt" ;;
    kernels)
      OUT=$OUT/kernels STRATA_GPU_NCU=0 timeout 200 bash bundle/run.sh > "$OUT/kernels.txt" 2>&1 ;;
  esac
  echo "$part: exit $? in $((SECONDS - t0)) s" | tee -a "$OUT/summary.txt"
done
