// AdviseHugePages: asks the kernel to back a range with transparent huge
// pages, unless an environment variable turns the advice off.
//
// Used by the DRAM arena (kvstore/dram_arena.cc, STRATA_ARENA_HUGE_PAGES)
// and the data plane's large pool buffers (common/ucx_buffer_pool.h,
// STRATA_POOL_HUGE_PAGES). The advice is honoured when the kernel's THP mode
// (/sys/kernel/mm/transparent_hugepage/enabled) is "madvise" or "always",
// for the whole 2 MiB-aligned pages of the range; otherwise, or when the
// variable is "0", the range keeps 4 KiB pages. Either way the memory is the
// same to its users: failure is harmless and not reported. Why: UCX's cma
// reads pin every page of the buffer they read (bench/results/service.md,
// session 8). Thread-safe.
#ifndef STRATA_COMMON_HUGE_PAGES_H_
#define STRATA_COMMON_HUGE_PAGES_H_

#include <sys/mman.h>

#include <cstddef>
#include <cstdlib>
#include <string_view>

namespace strata {

inline constexpr size_t kHugePageBytes = size_t{2} << 20;

// `off_env`: the variable that, set to "0", leaves the advice out (A/B runs
// with one binary).
inline void AdviseHugePages(void* addr, size_t bytes, const char* off_env) {
  const char* env = std::getenv(off_env);
  if (env != nullptr && std::string_view(env) == "0") return;
  madvise(addr, bytes, MADV_HUGEPAGE);
}

}  // namespace strata

#endif  // STRATA_COMMON_HUGE_PAGES_H_
