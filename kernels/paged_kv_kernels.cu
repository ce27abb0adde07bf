// Paged KV gather/scatter kernels (docs/kernels.md).
//
// One warp copies one row -- the kv_heads * head_dim elements of one (K or
// V, layer, token) -- in 16-byte vectors, four in flight per lane. Rows are
// numbered in block order ((kv * layers + layer) * tokens + token), so
// consecutive warps copy consecutive tokens: contiguous in the block, and
// contiguous slots of one page in the cache.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"

namespace strata::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;

__global__ void __launch_bounds__(kThreads)
    PagedCopyKernel(const __grid_constant__ PagedArgs a, bool scatter) {
  const uint32_t vectors = a.row_bytes / 16;
  const uint32_t rows = 2 * a.layers * a.tokens;
  const uint32_t lane = threadIdx.x & 31;
  const uint32_t warps = (gridDim.x * blockDim.x) / 32;
  uint32_t flags = 0;
  for (uint32_t row = (blockIdx.x * blockDim.x + threadIdx.x) / 32; row < rows;
       row += warps) {
    const uint32_t t = row % a.tokens;
    const uint32_t kv_layer = row / a.tokens;
    const uint32_t layer = kv_layer % a.layers;
    const uint32_t kv = kv_layer / a.layers;
    const int32_t page = a.page_ids[t / a.page_size];
    if (page < 0 || static_cast<uint32_t>(page) >= a.num_pages) {
      flags |= kFlagBadPageId;
      continue;
    }
    const uint32_t slot = t % a.page_size;
    const uint64_t cache_row =
        a.kv_major
            ? (static_cast<uint64_t>(kv) * a.num_pages + page) * a.page_size +
                  slot
            : (static_cast<uint64_t>(page) * 2 + kv) * a.page_size + slot;
    uint4* cache =
        reinterpret_cast<uint4*>(a.caches[layer] + cache_row * a.row_bytes);
    uint4* block = reinterpret_cast<uint4*>(
        a.block + static_cast<uint64_t>(row) * a.row_bytes);
    const uint4* src = scatter ? block : cache;
    uint4* dst = scatter ? cache : block;
    for (uint32_t v = lane; v < vectors; v += 32 * kUnroll) {
      uint4 r[kUnroll];
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        if (v + 32 * k < vectors) r[k] = src[v + 32 * k];
      }
#pragma unroll
      for (int k = 0; k < kUnroll; ++k) {
        if (v + 32 * k < vectors) dst[v + 32 * k] = r[k];
      }
    }
  }
  ReportFlags(a.error_flags, flags);
}

cudaError_t LaunchPaged(const PagedArgs& a, bool scatter, cudaStream_t st) {
  const uint64_t rows = uint64_t{2} * a.layers * a.tokens;
  const uint64_t want = (rows + kThreads / 32 - 1) / (kThreads / 32);
  const unsigned blocks = static_cast<unsigned>(want < 8192 ? want : 8192);
  PagedCopyKernel<<<blocks, kThreads, 0, st>>>(a, scatter);
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchPagedGather(const PagedArgs& args, cudaStream_t stream) {
  return LaunchPaged(args, /*scatter=*/false, stream);
}

cudaError_t LaunchPagedScatter(const PagedArgs& args, cudaStream_t stream) {
  return LaunchPaged(args, /*scatter=*/true, stream);
}

}  // namespace strata::kernels::internal
