// LocalStore's backend: an in-process kvstore::TieredStore (DRAM, plus an
// optional RocksDB SSD tier). Prefetch runs on a thread of its own per call.
#include <algorithm>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "client/python/native/stores.h"
#include "common/status_macros.h"
#include "kvstore/eviction_policy.h"
#include "kvstore/tier.h"
#include "kvstore/tiered_store.h"

namespace strata::python {
namespace {

using kvstore::TieredStore;

// A lease on a block; keeps the store alive (declared first: destroyed last).
class LeasedBlock : public HeldBlock {
 public:
  LeasedBlock(std::shared_ptr<TieredStore> store, kvstore::BlockLease lease)
      : store_(std::move(store)), lease_(std::move(lease)) {}
  absl::Span<const uint8_t> bytes() const override { return lease_.bytes(); }

 private:
  std::shared_ptr<TieredStore> store_;
  kvstore::BlockLease lease_;
};

BlockResult GetLeased(const std::shared_ptr<TieredStore>& store,
                      const BlockKey& key) {
  absl::StatusOr<kvstore::BlockLease> lease = store->Get(key);
  if (!lease.ok()) return lease.status();
  return std::make_shared<LeasedBlock>(store, *std::move(lease));
}

class LocalPrefetch : public PrefetchHandle {
 public:
  explicit LocalPrefetch(std::future<std::vector<BlockResult>> f)
      : future_(f.share()) {}
  bool Wait(absl::Duration timeout) override {
    if (timeout == absl::InfiniteDuration()) {
      future_.wait();
      return true;
    }
    return future_.wait_for(absl::ToChronoNanoseconds(timeout)) ==
           std::future_status::ready;
  }
  std::vector<BlockResult> Take() override { return future_.get(); }

 private:
  std::shared_future<std::vector<BlockResult>> future_;  // Thread-safe to share.
};

class LocalBackend : public StoreBackend {
 public:
  explicit LocalBackend(std::shared_ptr<TieredStore> store)
      : store_(std::move(store)) {}

  absl::StatusOr<bool> Put(const BlockKey& key, absl::Span<const uint8_t> block,
                           const PutArgs& args) override {
    kvstore::PutOptions options;
    if (args.durable) options.durable = true;  // Else the store's default.
    options.tenant = args.tenant;
    options.model = args.model;
    STRATA_ASSIGN_OR_RETURN(kvstore::PutOutcome outcome,
                            store_->Put(key, block, options));
    return outcome == kvstore::PutOutcome::kStored;
  }

  std::vector<absl::StatusOr<bool>> BatchPut(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<const uint8_t>> blocks,
      const PutArgs& args) override {
    std::vector<absl::StatusOr<bool>> out;
    out.reserve(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      out.push_back(Put(keys[i], blocks[i], args));
    }
    return out;
  }

  BlockResult Get(const BlockKey& key) override { return GetLeased(store_, key); }

  absl::StatusOr<size_t> GetInto(const BlockKey& key,
                                 absl::Span<uint8_t> dst) override {
    return store_->GetInto(key, dst);
  }

  // Large batches are copied (and verified) on several threads by the
  // store itself (TieredStore::BatchGetInto).
  std::vector<absl::StatusOr<size_t>> BatchGetInto(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<uint8_t>> dsts) override {
    return store_->BatchGetInto(keys, dsts);
  }

  absl::StatusOr<std::vector<bool>> Exists(
      absl::Span<const BlockKey> keys) override {
    std::vector<bool> out;
    out.reserve(keys.size());
    for (const BlockKey& k : keys) out.push_back(store_->Exists(k));
    return out;
  }

  absl::StatusOr<size_t> LeadingHits(absl::Span<const BlockKey> keys) override {
    return store_->LongestPrefix(keys);
  }

  std::unique_ptr<PrefetchHandle> Prefetch(std::vector<BlockKey> keys) override {
    // Reading promotes SSD-only blocks into DRAM. The results are copies, not
    // leases, so a finished prefetch holds nothing of the store (close()
    // releases it even while results are unread).
    return std::make_unique<LocalPrefetch>(std::async(
        std::launch::async, [store = store_, keys = std::move(keys)]() mutable {
          // The future keeps this callable: move the store out of it, so the
          // thread's reference ends before the results are ready.
          const std::shared_ptr<TieredStore> s = std::move(store);
          std::vector<BlockResult> out;
          out.reserve(keys.size());
          for (const BlockKey& k : keys) {
            absl::StatusOr<kvstore::BlockLease> lease = s->Get(k);
            if (!lease.ok()) {
              out.push_back(lease.status());
            } else {
              const absl::Span<const uint8_t> b = lease->bytes();
              out.push_back(std::make_shared<OwnedBlock>(
                  std::vector<uint8_t>(b.begin(), b.end())));
            }
          }
          return out;
        }));
  }

  absl::Status Remove(const BlockKey& key) override { return store_->Remove(key); }
  absl::Status Pin(const BlockKey& key, absl::Duration ttl) override {
    return store_->Pin(key, ttl);
  }
  absl::Status Unpin(const BlockKey& key) override { return store_->Unpin(key); }

  absl::StatusOr<StatsValue> Stats() override {
    const kvstore::StoreStats s = store_->Stats();
    StatsValue v;
    v.counters = {{"puts", s.puts},
                  {"duplicate_puts", s.duplicate_puts},
                  {"rejected_puts", s.rejected_puts},
                  {"gets", s.gets},
                  {"get_hits", s.get_hits},
                  {"get_misses", s.get_misses},
                  {"removes", s.removes},
                  {"pinned_blocks", s.pinned_blocks},
                  {"leased_blocks", s.leased_blocks}};
    for (const kvstore::TierStats& t : s.tiers) {
      v.tiers.push_back({kvstore::TierName(t.kind),
                         {{"capacity_bytes", t.capacity_bytes},
                          {"used_bytes", t.used_bytes},
                          {"blocks", t.blocks},
                          {"hits", t.hits},
                          {"misses", t.misses},
                          {"evictions", t.evictions},
                          {"demotions", t.demotions},
                          {"promotions", t.promotions},
                          {"checksum_failures", t.checksum_failures},
                          {"write_failures", t.write_failures}}});
    }
    return v;
  }

  std::string DataPlane() const override { return "local"; }

 private:
  std::shared_ptr<TieredStore> store_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<StoreBackend>> OpenLocalStore(
    const LocalStoreArgs& args) {
  kvstore::TieredStoreOptions options;
  options.dram_capacity_bytes = args.dram_bytes;
  options.ssd_path = args.ssd_path;
  if (args.ssd_bytes != 0) options.ssd_capacity_bytes = args.ssd_bytes;
  options.write_through = args.write_through;
  options.ssd_sync_writes = args.ssd_sync_writes;
  STRATA_ASSIGN_OR_RETURN(options.dram_policy,
                          kvstore::ParseEvictionPolicyKind(args.dram_policy));
  STRATA_ASSIGN_OR_RETURN(options.ssd_policy,
                          kvstore::ParseEvictionPolicyKind(args.ssd_policy));
  absl::StatusOr<std::unique_ptr<TieredStore>> opened = TieredStore::Open(options);
  if (!opened.ok()) {
    // Name the Python arguments, not the C++ option fields.
    std::string message(opened.status().message());
    for (const auto& [cc, py] : {std::pair<std::string, std::string>{"dram_capacity_bytes", "dram_bytes"},
                                 {"ssd_capacity_bytes", "ssd_bytes"}}) {
      if (message.rfind(cc, 0) == 0) message = py + message.substr(cc.size());
    }
    return absl::Status(opened.status().code(), message);
  }
  std::unique_ptr<TieredStore> store = *std::move(opened);
  return std::shared_ptr<StoreBackend>(
      std::make_shared<LocalBackend>(std::shared_ptr<TieredStore>(std::move(store))));
}

}  // namespace strata::python
