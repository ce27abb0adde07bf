// Internal to the TieredStore implementation (tiered_store.cc and
// tiered_store_reserve.cc): the index entry and per-tier state. Invariants
// are described at the top of tiered_store.cc.
#ifndef STRATA_KVSTORE_TIERED_STORE_INTERNAL_H_
#define STRATA_KVSTORE_TIERED_STORE_INTERNAL_H_

#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/time/time.h"
#include "kvstore/eviction_policy.h"
#include "kvstore/tier.h"
#include "kvstore/tiered_store.h"

namespace strata::kvstore {

struct TieredStore::Entry {
  uint64_t size = 0;
  uint64_t generation = 0;
  uint32_t resident = 0;
  uint32_t incoming = 0;
  uint32_t erasing = 0;
  absl::Time pinned_until = absl::InfinitePast();
  uint32_t leases = 0;
  absl::Time lease_until = absl::InfinitePast();
  uint32_t labels = 0;  // Index into labels_.
  int64_t stored_at_unix_ms = 0;
};

struct TieredStore::TierSlot {
  std::unique_ptr<Tier> tier;
  std::unique_ptr<EvictionPolicy> policy;  // Guarded by TieredStore::mu_.
  TierStats stats;                         // Counters guarded by mu_.
  uint64_t high_bytes = 0;
  uint64_t low_bytes = 0;
};

namespace tiered_store_internal {

// The bit of tier `t` in Entry's masks.
constexpr uint32_t Bit(size_t t) { return uint32_t{1} << t; }

}  // namespace tiered_store_internal
}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_TIERED_STORE_INTERNAL_H_
