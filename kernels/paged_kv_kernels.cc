// Host side of the paged KV gather/scatter kernels.
#include "kernels/paged_kv_kernels.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/internal/host_checks.h"
#include "kernels/internal/launch.h"

namespace strata::kernels {
namespace {

uint64_t RowBytes(const PagedCacheDesc& c) {
  return uint64_t{c.shape.num_kv_heads} * c.shape.head_dim *
         kvstore::DTypeSize(c.shape.dtype);
}

uint64_t CacheBytes(const PagedCacheDesc& c) {
  return uint64_t{2} * c.num_pages * c.page_size * RowBytes(c);
}

absl::Status CheckDesc(const PagedCacheDesc& c) {
  STRATA_RETURN_IF_ERROR(c.shape.Validate());
  if (RowBytes(c) % 16 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_kv_heads: a token row of kv_heads * head_dim * dtype size = ",
        RowBytes(c), " bytes is not a multiple of 16"));
  }
  if (c.layout != PagedLayout::kPageMajor &&
      c.layout != PagedLayout::kKvMajor) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout: unknown value ", static_cast<int>(c.layout)));
  }
  if (c.page_size == 0 || c.page_size > kvstore::kMaxTokens) {
    return absl::InvalidArgumentError(absl::StrCat("page_size: ", c.page_size,
                                                   " is outside [1, ",
                                                   kvstore::kMaxTokens, "]"));
  }
  if (c.num_pages == 0) {
    return absl::InvalidArgumentError("num_pages: must be >= 1");
  }
  if (CacheBytes(c) > (uint64_t{1} << 48)) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_pages: a layer's cache of ", CacheBytes(c),
                     " bytes is implausibly large"));
  }
  return absl::OkStatus();
}

// Everything both directions check; `block` is the Strata block pointer.
absl::StatusOr<internal::PagedArgs> Plan(const PagedCacheDesc& c,
                                         const void* const* layer_caches,
                                         const int32_t* page_ids,
                                         const void* block,
                                         uint32_t* error_flags) {
  STRATA_RETURN_IF_ERROR(CheckDesc(c));
  if (layer_caches == nullptr) {
    return absl::InvalidArgumentError("layer_caches: null host array");
  }
  internal::PagedArgs a;
  for (uint32_t l = 0; l < c.shape.num_layers; ++l) {
    const std::string field = absl::StrCat("layer_caches[", l, "]");
    STRATA_RETURN_IF_ERROR(
        internal::CheckDevicePointer(field.c_str(), layer_caches[l], 16));
    STRATA_RETURN_IF_ERROR(internal::CheckDisjoint(
        "block", block, c.shape.RawBytes(), layer_caches[l], CacheBytes(c)));
    a.caches[l] = static_cast<uint8_t*>(const_cast<void*>(layer_caches[l]));
  }
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("page_ids", page_ids, 4));
  STRATA_RETURN_IF_ERROR(internal::CheckDevicePointer("block", block, 16));
  STRATA_RETURN_IF_ERROR(
      internal::CheckOptionalPointer("error_flags", error_flags, 4));
  a.layers = c.shape.num_layers;
  a.tokens = c.shape.num_tokens;
  a.row_bytes = static_cast<uint32_t>(RowBytes(c));
  a.page_size = c.page_size;
  a.num_pages = c.num_pages;
  a.kv_major = c.layout == PagedLayout::kKvMajor;
  a.page_ids = page_ids;
  a.block = static_cast<uint8_t*>(const_cast<void*>(block));
  a.error_flags = error_flags;
  return a;
}

absl::StatusOr<internal::PagedArgs> Plan(const PagedGatherParams& p) {
  return Plan(p.cache, p.layer_caches, p.page_ids, p.block, p.error_flags);
}
absl::StatusOr<internal::PagedArgs> Plan(const PagedScatterParams& p) {
  return Plan(p.cache, const_cast<const void* const*>(p.layer_caches),
              p.page_ids, p.block, p.error_flags);
}

}  // namespace

uint64_t PagedRowOffset(const PagedCacheDesc& cache, int kv, uint32_t page,
                        uint32_t slot) {
  const uint64_t row =
      cache.layout == PagedLayout::kKvMajor
          ? (uint64_t{static_cast<uint32_t>(kv)} * cache.num_pages + page) *
                    cache.page_size +
                slot
          : (uint64_t{page} * 2 + static_cast<uint32_t>(kv)) * cache.page_size +
                slot;
  return row * RowBytes(cache);
}

absl::Status Validate(const PagedGatherParams& params) {
  return Plan(params).status();
}

size_t WorkspaceBytes(const PagedGatherParams&) { return 0; }

absl::Status Launch(const PagedGatherParams& params, void* /*workspace*/,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(const internal::PagedArgs a, Plan(params));
  return internal::CudaStatus(internal::LaunchPagedGather(a, stream),
                              "paged gather");
}

absl::Status Validate(const PagedScatterParams& params) {
  return Plan(params).status();
}

size_t WorkspaceBytes(const PagedScatterParams&) { return 0; }

absl::Status Launch(const PagedScatterParams& params, void* /*workspace*/,
                    cudaStream_t stream) {
  STRATA_ASSIGN_OR_RETURN(const internal::PagedArgs a, Plan(params));
  return internal::CudaStatus(internal::LaunchPagedScatter(a, stream),
                              "paged scatter");
}

}  // namespace strata::kernels
