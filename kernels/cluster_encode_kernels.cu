// ClusterKV encode kernels (kernels/cluster_encode_kernels.h has the
// algorithm; kernels/internal/cluster_encode.h the arithmetic).
//
// ClusterKMeansKernel: one block of 256 threads per (clustered layer, KV
// head) slot, the slot's state in its part of the workspace (global memory,
// made visible to the block by __syncthreads). Row-parallel steps give each
// thread the rows i = tid, tid + 256, ...; sequential steps of the CPU
// (k-means++'s running sums) run on thread 0; the stable partition by label
// runs on warp 0 (__match_any_sync ranks equal labels within 32 rows, in row
// order). CopyRawKernel writes the inner params (zero) and the raw K/V.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/cluster_encode.h"
#include "kernels/internal/device_util.cuh"
#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {
namespace {

constexpr uint32_t kThreads = kClusterEncodeThreads;
constexpr uint32_t kWarps = kThreads / 32;

struct SlotState {
  float* unit;
  float* cent;
  uint32_t* labels;
  float* sim;
  double* dist;
  uint32_t* count;
  uint32_t* starts;
  uint32_t* cursor;
  uint32_t* pos;
};

__device__ __forceinline__ SlotState StateOf(const ClusterEncodeArgs& a,
                                             uint32_t slot) {
  uint8_t* w = a.workspace + static_cast<uint64_t>(slot) * a.ws.slot_bytes;
  SlotState s;
  s.unit = reinterpret_cast<float*>(w + a.ws.unit);
  s.cent = reinterpret_cast<float*>(w + a.ws.cent);
  s.labels = reinterpret_cast<uint32_t*>(w + a.ws.labels);
  s.sim = reinterpret_cast<float*>(w + a.ws.sim);
  s.dist = reinterpret_cast<double*>(w + a.ws.dist);
  s.count = reinterpret_cast<uint32_t*>(w + a.ws.count);
  s.starts = reinterpret_cast<uint32_t*>(w + a.ws.starts);
  s.cursor = reinterpret_cast<uint32_t*>(w + a.ws.cursor);
  s.pos = reinterpret_cast<uint32_t*>(w + a.ws.pos);
  return s;
}

// count[j] = #{i : labels[i] == j}. All threads; ends synchronised.
__device__ void CountLabels(const ClusterEncodeArgs& a, const SlotState& s,
                            uint32_t* flags) {
  for (uint32_t j = threadIdx.x; j < a.clusters; j += kThreads) s.count[j] = 0;
  __syncthreads();
  for (uint32_t i = threadIdx.x; i < a.members; i += kThreads) {
    const uint32_t lab = s.labels[i];
    if (lab < a.clusters) {
      atomicAdd(&s.count[lab], 1u);
    } else {
      *flags |= kFlagBadIndex;  // Unreachable: labels come from AssignRow.
    }
  }
  __syncthreads();
}

// starts = exclusive scan of count; pos = rows sorted by label, then row
// (the CPU's stable_sort). Warp 0 only; the caller synchronises after.
__device__ void StablePartition(const ClusterEncodeArgs& a,
                                const SlotState& s) {
  if (threadIdx.x >= 32) return;
  const uint32_t lane = threadIdx.x;
  uint32_t carry = 0;
  for (uint32_t base = 0; base < a.clusters; base += 32) {
    const uint32_t j = base + lane;
    const uint32_t c = j < a.clusters ? s.count[j] : 0;
    uint32_t x = c;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(kFullMask, x, o);
      if (lane >= static_cast<uint32_t>(o)) x += y;
    }
    if (j < a.clusters) {
      s.starts[j] = carry + x - c;
      s.cursor[j] = carry + x - c;
    }
    carry += __shfl_sync(kFullMask, x, 31);
  }
  if (lane == 0) s.starts[a.clusters] = carry;
  __syncwarp();
  const uint32_t below = (1u << lane) - 1;
  for (uint32_t base = 0; base < a.members; base += 32) {
    const uint32_t i = base + lane;
    const bool valid = i < a.members;
    uint32_t lab = valid ? s.labels[i] : kNoRow;
    if (lab >= a.clusters) lab = kNoRow;
    const unsigned peers = __match_any_sync(kFullMask, lab);
    const uint32_t rank = __popc(peers & below);
    if (lab != kNoRow) {
      const uint32_t p = s.cursor[lab] + rank;
      if (p < a.members) s.pos[p] = i;
    }
    __syncwarp();
    if (lab != kNoRow && rank == 0) s.cursor[lab] += __popc(peers);
    __syncwarp();
  }
}

__global__ void __launch_bounds__(kThreads)
    ClusterKMeansKernel(ClusterEncodeArgs a) {
  __shared__ uint32_t s_pick, s_stop;
  __shared__ float s_red_sim[kWarps];
  __shared__ uint32_t s_red_row[kWarps];
  const uint32_t slot = blockIdx.x;
  const uint32_t layer = a.first_layer + slot / a.heads;
  const uint32_t head = slot % a.heads;
  const uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid / 32;
  const uint32_t n = a.members, k = a.clusters, d = a.dim;
  const SlotState s = StateOf(a, slot);
  uint32_t flags = 0;

  // 1. Normalised rows.
  for (uint32_t i = tid; i < n; i += kThreads) {
    flags |= LoadUnitRow(a, layer, head, i, s.unit + static_cast<uint64_t>(i) * d);
    s.labels[i] = kNoRow;
  }
  DeviceSplitMix64 rng{SlotSeed(a.seed, layer, head)};  // Thread 0's.
  if (tid == 0) s_pick = static_cast<uint32_t>(rng.Next() % n);
  __syncthreads();

  // 2. k-means++ seeding.
  for (uint32_t j = 0; j < k; ++j) {
    const uint32_t pick = s_pick;
    float* c = s.cent + static_cast<uint64_t>(j) * d;
    for (uint32_t t = tid; t < d; t += kThreads) {
      c[t] = s.unit[static_cast<uint64_t>(pick) * d + t];
    }
    __syncthreads();
    for (uint32_t i = tid; i < n; i += kThreads) {
      s.dist[i] = SeedDistance(s.unit + static_cast<uint64_t>(i) * d, c, d,
                               j == 0, j == 0 ? 0.0 : s.dist[i]);
    }
    __syncthreads();
    if (tid == 0 && j + 1 < k) s_pick = SeedNextPick(&rng, s.dist, n, pick);
    __syncthreads();
  }

  // 3. Lloyd rounds.
  for (uint32_t it = 0; it < a.iterations; ++it) {
    bool changed = false;
    for (uint32_t i = tid; i < n; i += kThreads) {
      uint32_t best;
      float best_sim;
      AssignRow(s.unit + static_cast<uint64_t>(i) * d, s.cent, k, d, &best,
                &best_sim);
      changed |= s.labels[i] != best;
      s.labels[i] = best;
      s.sim[i] = best_sim;
    }
    if (!__syncthreads_or(changed)) break;
    if (tid == 0) s_stop = 0;
    CountLabels(a, s, &flags);
    // Re-seed empty clusters, in cluster order, with the least similar
    // row of a cluster that keeps a member.
    for (uint32_t j = 0; j < k; ++j) {
      if (s.count[j] != 0) continue;  // Uniform: read after a barrier.
      float best_sim = 0;
      uint32_t best_row = kNoRow;
      for (uint32_t i = tid; i < n; i += kThreads) {
        const uint32_t lab = s.labels[i];
        if (lab >= k || s.count[lab] < 2) continue;
        if (ReseedBetter(s.sim[i], i, best_sim, best_row)) {
          best_sim = s.sim[i];
          best_row = i;
        }
      }
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) {
        const float os = __shfl_down_sync(kFullMask, best_sim, o);
        const uint32_t oi = __shfl_down_sync(kFullMask, best_row, o);
        if (ReseedBetter(os, oi, best_sim, best_row)) {
          best_sim = os;
          best_row = oi;
        }
      }
      if (lane == 0) {
        s_red_sim[warp] = best_sim;
        s_red_row[warp] = best_row;
      }
      __syncthreads();
      if (tid == 0) {
        for (uint32_t w = 1; w < kWarps; ++w) {
          if (ReseedBetter(s_red_sim[w], s_red_row[w], best_sim, best_row)) {
            best_sim = s_red_sim[w];
            best_row = s_red_row[w];
          }
        }
        if (best_row == kNoRow) {
          s_stop = 1;  // Fewer distinct rows than clusters.
        } else {
          --s.count[s.labels[best_row]];
          s.labels[best_row] = j;
          s.count[j] = 1;
          s.sim[best_row] = 1.0f;
        }
      }
      __syncthreads();
      if (s_stop) break;
    }
    StablePartition(a, s);
    __syncthreads();
    for (uint32_t p = tid; p < k * d; p += kThreads) {
      const uint32_t j = p / d, t = p % d;
      s.cent[p] = CentroidSum(s.unit, s.pos, s.starts[j], s.starts[j + 1], d, t);
    }
    __syncthreads();
    for (uint32_t j = tid; j < k; j += kThreads) {
      NormaliseVec(s.cent + static_cast<uint64_t>(j) * d, d);
    }
    __syncthreads();
  }

  // 4. The index slot: centroids (raw-key means), ends, token ids.
  CountLabels(a, s, &flags);
  StablePartition(a, s);
  __syncthreads();
  uint8_t* out = a.payload + static_cast<uint64_t>(slot) * a.index_slot_bytes;
  uint8_t* ends = out + 2ull * k * d;
  uint8_t* tokens = ends + 4ull * k;
  for (uint32_t p = tid; p < k * d; p += kThreads) {
    const uint32_t j = p / d, t = p % d;
    StoreU16(out + 2ull * p,
             CentroidMeanHalf(a, layer, head, s.pos, s.starts[j],
                              s.starts[j + 1], t, &flags));
  }
  for (uint32_t j = tid; j < k; j += kThreads) {
    StoreU32(ends + 4ull * j, s.starts[j + 1]);
  }
  for (uint32_t m = tid; m < n; m += kThreads) {
    StoreU16(tokens + 2ull * m, static_cast<uint16_t>(a.sinks + s.pos[m]));
  }
  ReportFlags(a.error_flags, flags);
}

// The inner params (zero bytes) and the raw K/V after the index.
__global__ void __launch_bounds__(kThreads) CopyRawKernel(ClusterEncodeArgs a) {
  uint8_t* inner = a.payload + a.index_bytes;
  if (blockIdx.x == 0 && threadIdx.x < a.inner_bytes) inner[threadIdx.x] = 0;
  uint8_t* dst = inner + a.inner_bytes;
  const uint64_t dsize = a.dtype == kDtypeF32     ? 4
                         : a.dtype == kDtypeFp8E4M3 ? 1
                                                    : 2;
  const uint64_t elements = a.raw_bytes / dsize;
  for (uint64_t e = static_cast<uint64_t>(blockIdx.x) * kThreads + threadIdx.x;
       e < elements; e += static_cast<uint64_t>(gridDim.x) * kThreads) {
    RoundTripElement(a.dtype, a.kv, dst, e);
  }
}

}  // namespace

cudaError_t LaunchClusterEncode(const ClusterEncodeArgs& a, cudaStream_t st) {
  const uint64_t slots = uint64_t{a.clustered_layers} * a.heads;
  if (a.clusters > 0 && slots > 0) {
    ClusterKMeansKernel<<<static_cast<unsigned>(slots), kThreads, 0, st>>>(a);
  }
  const uint64_t per_block = uint64_t{kThreads} * 8;
  uint64_t blocks = (a.raw_bytes + per_block - 1) / per_block;
  if (blocks < 1) blocks = 1;
  if (blocks > 8192) blocks = 8192;
  CopyRawKernel<<<static_cast<unsigned>(blocks), kThreads, 0, st>>>(a);
  return cudaGetLastError();
}

}  // namespace strata::kernels::internal
