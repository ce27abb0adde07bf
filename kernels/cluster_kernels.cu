// ClusterKV selection kernels (kernels/cluster_kernels.h has the algorithm).
//
// Index slot of (layer, head): [clusters][dim] fp16 centroids, [clusters]
// u32 cluster ends, [members] u16 token ids; slots are 2-byte aligned, so
// the u32 ends are read as two u16 halves.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr int kScanThreads = 1024;
constexpr uint32_t kRankTile = 2048;

__device__ __forceinline__ uint16_t LoadU16(const uint8_t* p) {
  return *reinterpret_cast<const uint16_t*>(p);
}

struct Slot {
  const uint8_t* centroids;  // fp16 [clusters][dim]
  const uint8_t* ends;       // u32 [clusters] as u16 pairs
  const uint8_t* tokens;     // u16 [members]
};

__device__ __forceinline__ Slot SlotOf(const ClusterSelectArgs& a,
                                       uint32_t kv_head) {
  Slot s;
  s.centroids = a.layer_index + kv_head * a.slot_bytes;
  s.ends = s.centroids + 2ull * a.clusters * a.dim;
  s.tokens = s.ends + 4ull * a.clusters;
  return s;
}

// Cluster j's entries [begin, end) of the token list, clamped to the list
// (a bad end sets kFlagBadIndex).
__device__ __forceinline__ void ClusterRange(const ClusterSelectArgs& a,
                                             const Slot& s, uint32_t j,
                                             uint32_t* begin, uint32_t* end,
                                             uint32_t* flags) {
  auto end_of = [&](uint32_t c) {
    const uint8_t* p = s.ends + 4ull * c;
    return static_cast<uint32_t>(LoadU16(p)) |
           (static_cast<uint32_t>(LoadU16(p + 2)) << 16);
  };
  uint32_t b = j ? end_of(j - 1) : 0, e = end_of(j);
  if (e > a.members || b > e) {
    *flags |= kFlagBadIndex;
    e = e > a.members ? a.members : e;
    b = b > e ? e : b;
  }
  *begin = b;
  *end = e;
}

__device__ __forceinline__ void Choose(const ClusterSelectArgs& a,
                                       uint32_t token, uint32_t* flags) {
  if (token >= a.tokens) {
    *flags |= kFlagBadIndex;
    return;
  }
  a.chosen[token] = 1;
}

__global__ void __launch_bounds__(kThreads) InitKernel(ClusterSelectArgs a) {
  for (uint32_t t = blockIdx.x * kThreads + threadIdx.x; t < a.tokens;
       t += gridDim.x * kThreads) {
    if (a.select_all) {
      a.selected[t] = t;
    } else {
      a.chosen[t] = t < a.sinks ? 1 : 0;
    }
  }
  if (a.select_all && blockIdx.x == 0 && threadIdx.x == 0) {
    *a.num_selected = a.tokens;
  }
}

// grid (q_heads, ceil(clusters / 256)); dynamic shared: dim floats.
__global__ void __launch_bounds__(kThreads) ScoreKernel(ClusterSelectArgs a) {
  extern __shared__ float q[];
  const uint32_t qh = blockIdx.x;
  const uint32_t group = a.q_heads / a.heads;
  for (uint32_t t = threadIdx.x; t < a.dim; t += kThreads) {
    q[t] = a.queries[static_cast<uint64_t>(qh) * a.dim + t];
  }
  __syncthreads();
  const uint32_t j = blockIdx.y * kThreads + threadIdx.x;
  if (j >= a.clusters) return;
  const Slot s = SlotOf(a, qh / group);
  const uint8_t* c = s.centroids + 2ull * j * a.dim;
  double sum = 0;
  for (uint32_t t = 0; t < a.dim; ++t) {
    const double x = static_cast<double>(HalfToFloat(LoadU16(c + 2 * t)));
    sum = __dadd_rn(sum, __dmul_rn(static_cast<double>(q[t]), x));
  }
  if (!isfinite(sum)) ReportFlags(a.error_flags, kFlagNonFinite);
  a.scores[static_cast<uint64_t>(qh) * a.clusters + j] = sum;
}

// grid (q_heads, ceil(clusters / 256)): ranked[qh][rank(j)] = j.
__global__ void __launch_bounds__(kThreads) RankKernel(ClusterSelectArgs a) {
  __shared__ double tile[kRankTile];
  const uint32_t qh = blockIdx.x;
  const double* s = a.scores + static_cast<uint64_t>(qh) * a.clusters;
  const uint32_t j = blockIdx.y * kThreads + threadIdx.x;
  const double mine = j < a.clusters ? s[j] : 0;
  uint32_t rank = 0;
  for (uint32_t base = 0; base < a.clusters; base += kRankTile) {
    const uint32_t n =
        a.clusters - base < kRankTile ? a.clusters - base : kRankTile;
    __syncthreads();
    for (uint32_t i = threadIdx.x; i < n; i += kThreads) tile[i] = s[base + i];
    __syncthreads();
    if (j < a.clusters) {
      for (uint32_t i = 0; i < n; ++i) {
        const double o = tile[i];
        rank += (o > mine || (o == mine && base + i < j)) ? 1 : 0;
      }
    }
  }
  if (j < a.clusters) {
    a.ranked[static_cast<uint64_t>(qh) * a.clusters + rank] = j;
  }
}

// Exclusive prefix sum over a block of kScanThreads; *total = the block sum.
__device__ uint32_t BlockScan(uint32_t v, uint32_t* total, uint32_t* warp_sums) {
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x / 32;
  constexpr uint32_t kWarps = kScanThreads / 32;
  uint32_t x = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t y = __shfl_up_sync(kFullMask, x, o);
    if (lane >= static_cast<uint32_t>(o)) x += y;
  }
  if (lane == 31) warp_sums[warp] = x;
  __syncthreads();
  if (warp == 0) {
    uint32_t w = lane < kWarps ? warp_sums[lane] : 0;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const uint32_t y = __shfl_up_sync(kFullMask, w, o);
      if (lane >= static_cast<uint32_t>(o)) w += y;
    }
    warp_sums[lane] = w;
  }
  __syncthreads();
  const uint32_t before = warp > 0 ? warp_sums[warp - 1] : 0;
  *total = warp_sums[kWarps - 1];
  __syncthreads();
  return before + x - v;
}

// kPerQueryHead: one block per query head.
__global__ void __launch_bounds__(kScanThreads)
    SelectPerHeadKernel(ClusterSelectArgs a) {
  __shared__ uint32_t warp_sums[32];
  const uint32_t qh = blockIdx.x;
  const Slot s = SlotOf(a, qh / (a.q_heads / a.heads));
  const uint32_t* ranked = a.ranked + static_cast<uint64_t>(qh) * a.clusters;
  if (a.sinks >= a.budget) return;
  const uint32_t room = a.budget - a.sinks;  // Tokens this head may add.
  uint32_t flags = 0, before = 0;
  for (uint32_t base = 0; base < a.clusters && before < room;
       base += kScanThreads) {
    const uint32_t rank = base + threadIdx.x;
    uint32_t begin = 0, end = 0;
    if (rank < a.clusters) ClusterRange(a, s, ranked[rank], &begin, &end, &flags);
    uint32_t total;
    const uint32_t start = before + BlockScan(end - begin, &total, warp_sums);
    if (start < room) {
      const uint32_t take = end - begin < room - start ? end - begin : room - start;
      for (uint32_t i = 0; i < take; ++i) {
        Choose(a, LoadU16(s.tokens + 2ull * (begin + i)), &flags);
      }
    }
    before += total;
  }
  ReportFlags(a.error_flags, flags);
}

// kTotal: one warp, (rank, query head) in order.
__global__ void __launch_bounds__(32) SelectTotalKernel(ClusterSelectArgs a) {
  const uint32_t lane = threadIdx.x;
  const uint32_t group = a.q_heads / a.heads;
  uint32_t count = a.sinks, flags = 0;
  for (uint32_t rank = 0; rank < a.clusters && count < a.budget; ++rank) {
    for (uint32_t qh = 0; qh < a.q_heads && count < a.budget; ++qh) {
      const Slot s = SlotOf(a, qh / group);
      uint32_t begin, end;
      ClusterRange(a, s,
                   a.ranked[static_cast<uint64_t>(qh) * a.clusters + rank],
                   &begin, &end, &flags);
      const uint32_t room = a.budget - count;
      uint32_t taken = 0;
      for (uint32_t i = begin; i < end && taken < room; i += 32) {
        uint32_t token = UINT32_MAX;
        bool fresh = false;
        if (i + lane < end) {
          token = LoadU16(s.tokens + 2ull * (i + lane));
          if (token >= a.tokens) {
            flags |= kFlagBadIndex;
          } else {
            fresh = a.chosen[token] == 0;
          }
        }
        const unsigned ballot = __ballot_sync(kFullMask, fresh);
        const uint32_t ahead = __popc(ballot & ((1u << lane) - 1));
        if (fresh && taken + ahead < room) a.chosen[token] = 1;
        const uint32_t n = __popc(ballot);
        taken += n < room - taken ? n : room - taken;
        __syncwarp();
      }
      count += taken;
    }
  }
  ReportFlags(a.error_flags, flags);
}

__global__ void __launch_bounds__(kScanThreads) CompactKernel(ClusterSelectArgs a) {
  __shared__ uint32_t warp_sums[32];
  uint32_t written = 0;
  for (uint32_t base = 0; base < a.tokens; base += kScanThreads) {
    const uint32_t t = base + threadIdx.x;
    const bool on = t < a.tokens && a.chosen[t] != 0;
    uint32_t total;
    const uint32_t pos = BlockScan(on ? 1 : 0, &total, warp_sums);
    if (on) a.selected[written + pos] = t;
    written += total;
  }
  if (threadIdx.x == 0) *a.num_selected = written;
}

}  // namespace

cudaError_t LaunchClusterSelect(const ClusterSelectArgs& a, cudaStream_t st) {
  const unsigned init_blocks = CeilDiv(a.tokens, kThreads);
  InitKernel<<<init_blocks, kThreads, 0, st>>>(a);
  if (a.select_all) return cudaGetLastError();
  if (a.clusters > 0) {
    const dim3 grid(a.q_heads, CeilDiv(a.clusters, kThreads));
    ScoreKernel<<<grid, kThreads, a.dim * sizeof(float), st>>>(a);
    RankKernel<<<grid, kThreads, 0, st>>>(a);
    if (a.total_scope) {
      SelectTotalKernel<<<1, 32, 0, st>>>(a);
    } else {
      SelectPerHeadKernel<<<a.q_heads, kScanThreads, 0, st>>>(a);
    }
  }
  CompactKernel<<<1, kScanThreads, 0, st>>>(a);
  return cudaGetLastError();
}

}  // namespace strata::kernels::internal
