// TieredStore's batch reads: BatchGet (leases) and BatchGetInto (copies into
// caller buffers, on several threads for large batches); and Describe (the
// index's view of one block, no read).
#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kvstore/tiered_store.h"
#include "kvstore/tiered_store_internal.h"

namespace strata::kvstore {
namespace {

// Threads for a batch read of `blocks` blocks totalling `bytes` (contract in
// the header): a thread costs ~20 us to start, so one below 16 MiB.
size_t CopyThreadsFor(size_t blocks, uint64_t bytes) {
  constexpr uint64_t kMinParallelBytes = 16 << 20;
  if (blocks < 2 || bytes < kMinParallelBytes) return 1;
  const size_t cores = std::max(1u, std::thread::hardware_concurrency());
  const size_t n = std::min<size_t>({blocks, std::max<size_t>(1, cores / 2), 8,
                                     static_cast<size_t>(bytes >> 22)});
  return std::max<size_t>(1, n);
}

}  // namespace

std::vector<absl::StatusOr<BlockLease>> TieredStore::BatchGet(
    absl::Span<const BlockKey> keys, const GetOptions& options) {
  std::vector<absl::StatusOr<BlockLease>> out;
  out.reserve(keys.size());
  for (const BlockKey& key : keys) out.push_back(Get(key, options));
  return out;
}

std::vector<absl::StatusOr<size_t>> TieredStore::BatchGetInto(
    absl::Span<const BlockKey> keys,
    absl::Span<const absl::Span<uint8_t>> dsts, size_t threads) {
  if (keys.size() != dsts.size()) {
    return std::vector<absl::StatusOr<size_t>>(
        keys.size(), absl::InvalidArgumentError(absl::StrCat(
                         "dsts: ", dsts.size(), " destinations for ",
                         keys.size(), " keys")));
  }
  std::vector<absl::StatusOr<size_t>> out(keys.size(), size_t{0});
  uint64_t bytes = 0;
  for (const auto& d : dsts) bytes += d.size();
  threads = threads == 0 ? CopyThreadsFor(keys.size(), bytes)
                         : std::min(threads, keys.size());
  threads = std::max<size_t>(threads, 1);
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < keys.size(); i = next++) {
      out[i] = GetInto(keys[i], dsts[i]);
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (size_t t = 1; t < threads; ++t) pool.emplace_back(work);
  work();
  for (std::thread& t : pool) t.join();
  return out;
}

absl::StatusOr<TieredStore::BlockInfo> TieredStore::Describe(
    const BlockKey& key) const {
  absl::MutexLock lock(&mu_);
  auto it = index_.find(key);
  if (it == index_.end() || it->second.resident == 0) {
    return absl::NotFoundError(
        absl::StrCat("key: ", key.ToHex(), " is not stored"));
  }
  const Entry& e = it->second;
  const absl::Time now = clock_->Now();
  return BlockInfo{e.size, MetaOf(e),
                   e.pinned_until > now ? e.pinned_until - now
                                        : absl::ZeroDuration()};
}

}  // namespace strata::kvstore
