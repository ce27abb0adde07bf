// EvictionPolicy: which block a tier gives up next.
//
// A policy only orders keys; it owns no block bytes and knows nothing about
// pins or leases. The TieredStore keeps one policy per tier, tells it about
// inserts, accesses and removals, and asks it for victims with a predicate
// that says whether a key may be evicted right now (not pinned, not leased,
// not mid-migration). Keys the predicate refuses stay tracked.
//
// Thread safety: none. The owner serialises all calls (the TieredStore calls
// policies only while holding its metadata mutex).
#ifndef STRATA_KVSTORE_EVICTION_POLICY_H_
#define STRATA_KVSTORE_EVICTION_POLICY_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "kvstore/block_key.h"

namespace strata::kvstore {

enum class EvictionPolicyKind {
  kLru,      // Least recently used.
  kS3Fifo,   // S3-FIFO (Yang et al., SOSP'23): scan-resistant.
};

// "lru" or "s3fifo"; INVALID_ARGUMENT naming "eviction_policy" otherwise.
absl::StatusOr<EvictionPolicyKind> ParseEvictionPolicyKind(
    std::string_view name);
std::string_view EvictionPolicyName(EvictionPolicyKind kind);

class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;

  // A new key of `size_bytes` became resident. Inserting a tracked key is a
  // programming error.
  virtual void OnInsert(const BlockKey& key, uint64_t size_bytes) = 0;
  // A tracked key was read. Untracked keys are ignored.
  virtual void OnAccess(const BlockKey& key) = 0;
  // A tracked key left the tier for a reason other than NextVictim (removed,
  // dropped for corruption). Untracked keys are ignored.
  virtual void OnRemove(const BlockKey& key) = 0;

  // Picks the next victim among tracked keys for which `evictable` is true,
  // stops tracking it and returns it; nullopt when no tracked key is
  // evictable. Calls `evictable` at most O(tracked keys) times.
  virtual std::optional<BlockKey> NextVictim(
      absl::FunctionRef<bool(const BlockKey&)> evictable) = 0;

  virtual size_t tracked_keys() const = 0;
};

std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(EvictionPolicyKind kind);

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_EVICTION_POLICY_H_
