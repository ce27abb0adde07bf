// Movement between vLLM's paged KV cache and Strata's block layout.
//
// vLLM keeps one cache tensor per layer, in one of two layouts:
//   kPageMajor: [num_pages][2][page_size][kv_heads][head_dim] (FlashInfer)
//   kKvMajor:   [2][num_pages][page_size][kv_heads][head_dim] (FlashAttention)
// and a request's tokens live in the pages its block table names: token t of
// a Strata block is slot t % page_size of page page_ids[t / page_size].
// Gather copies those tokens of every layer into a Strata block
// [2][layers][tokens][kv_heads][head_dim]; scatter writes a block back into
// the pages. Both copy bytes (any dtype), so scatter(gather(x)) == x.
//
// Host API (docs/kernels.md): Validate / WorkspaceBytes (0) / Launch, no
// allocation, no synchronisation, caller-owned device memory.
//
// Thread safety: pure functions. Scatter to the same page from two launches
// (or a block table naming a page twice) races; the caller prevents it.
#ifndef STRATA_KERNELS_PAGED_KV_KERNELS_H_
#define STRATA_KERNELS_PAGED_KV_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "kvstore/block_format.h"

namespace strata::kernels {

enum class PagedLayout : uint8_t {
  kPageMajor = 0,  // [num_pages][2][page_size][kv_heads][head_dim]
  kKvMajor = 1,    // [2][num_pages][page_size][kv_heads][head_dim]
};

// The paged cache and the Strata block it exchanges with.
struct PagedCacheDesc {
  // The Strata block's dtype and dimensions (BlockShape::Validate rules);
  // the cache has the same dtype, layers, kv_heads and head_dim.
  // kv_heads * head_dim * dtype size must be a multiple of 16 bytes.
  kvstore::BlockShape shape;
  PagedLayout layout = PagedLayout::kPageMajor;
  uint32_t num_pages = 0;  // Pages in each layer's cache tensor (>= 1).
  uint32_t page_size = 0;  // Tokens per page, vLLM's block_size (1..65536).
};

struct PagedGatherParams {
  PagedCacheDesc cache;
  // HOST array of shape.num_layers DEVICE pointers, layer l's cache tensor,
  // each 16-byte aligned and non-null. Read during Launch only.
  const void* const* layer_caches = nullptr;
  // DEVICE array of ceil(num_tokens / page_size) page ids (int32, as vLLM's
  // block tables). An id outside [0, num_pages) sets kErrorBadPageId and its
  // tokens are not copied.
  const int32_t* page_ids = nullptr;
  // Output: the Strata block (shape.RawBytes() bytes), 16-byte aligned.
  void* block = nullptr;
  uint32_t* error_flags = nullptr;  // Optional (kernels/kernel_errors.h).
};

struct PagedScatterParams {
  PagedCacheDesc cache;
  void* const* layer_caches = nullptr;  // As in PagedGatherParams; written.
  const int32_t* page_ids = nullptr;    // Distinct ids (else races).
  const void* block = nullptr;          // Input block, 16-byte aligned.
  uint32_t* error_flags = nullptr;
};

[[nodiscard]] absl::Status Validate(const PagedGatherParams& params);
[[nodiscard]] size_t WorkspaceBytes(const PagedGatherParams& params);
[[nodiscard]] absl::Status Launch(const PagedGatherParams& params,
                                  void* workspace, cudaStream_t stream);

[[nodiscard]] absl::Status Validate(const PagedScatterParams& params);
[[nodiscard]] size_t WorkspaceBytes(const PagedScatterParams& params);
[[nodiscard]] absl::Status Launch(const PagedScatterParams& params,
                                  void* workspace, cudaStream_t stream);

// Byte offset of (kv, page, slot) row start in one layer's cache tensor:
// the layout both kernels use, for tests and callers that fill caches.
uint64_t PagedRowOffset(const PagedCacheDesc& cache, int kv, uint32_t page,
                        uint32_t slot);

}  // namespace strata::kernels

#endif  // STRATA_KERNELS_PAGED_KV_KERNELS_H_
