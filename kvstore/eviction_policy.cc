// Eviction policies: LRU and S3-FIFO.
//
// Invariants (both policies):
//  * Every tracked key is in exactly one queue and has exactly one index
//    entry; tracked_keys() == index size == sum of queue lengths.
//  * NextVictim untracks only the key it returns; keys that `evictable`
//    refuses stay tracked. It calls `evictable` O(tracked keys) times at most.
//
// LRU: one list, front = least recently used, back = most recently used.
// NextVictim walks from the front and skips refused keys in place.
//
// S3-FIFO (Yang et al., SOSP'23), byte-sized:
//  * small_ (S) and main_ (M) are FIFOs with the head at front() and the tail
//    at back(); small_bytes_ / main_bytes_ are the sums of their key sizes.
//  * Each tracked key has freq in [0, 3]; OnAccess saturates at 3.
//  * A victim comes from S while S holds more than 10% of tracked bytes (or M
//    has nothing left to offer this call), else from M. In S a tail key with
//    freq >= 1 is promoted to M's head with freq 0; a freq-0 tail key is the
//    victim and its key enters the ghost queue G. In M a tail key with
//    freq > 0 is decremented and reinserted at M's head; a freq-0 one is the
//    victim (M victims do not enter G).
//  * A key that `evictable` refuses gets a second chance: it moves to the
//    head of its own queue with freq unchanged. Per call, a queue is "closed"
//    once every key in it has been refused (counted with a per-call epoch
//    stamped on the entry), so the call ends with nullopt when nothing is
//    evictable; the whole call makes O(tracked keys) pops.
//  * G (ghost_) holds keys only, in eviction order, disjoint from the tracked
//    keys. It is bounded by entry count: when a key is added, the oldest ghost
//    keys are dropped until G holds no more keys than are tracked. The paper
//    sizes G like M's capacity (~90% of the cache); tracked keys is the best
//    capacity estimate a policy without a capacity has, and unlike M's current
//    size it is useful from a cold start, when M is still empty.
//  * OnInsert of a ghost key puts it in M (and drops it from G); any other
//    insert goes to S. OnRemove drops a key without touching G.
#include "kvstore/eviction_policy.h"

#include <cassert>
#include <cstdint>
#include <list>
#include <memory>
#include <optional>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "kvstore/block_key.h"

namespace strata::kvstore {
namespace {

using KeyList = std::list<BlockKey>;

class LruPolicy final : public EvictionPolicy {
 public:
  void OnInsert(const BlockKey& key, uint64_t size_bytes) override {
    auto [it, inserted] = index_.try_emplace(key);
    assert(inserted && "EvictionPolicy::OnInsert of a tracked key");
    if (!inserted) return;
    it->second = order_.insert(order_.end(), key);
  }

  void OnAccess(const BlockKey& key) override {
    auto it = index_.find(key);
    if (it == index_.end()) return;
    order_.splice(order_.end(), order_, it->second);
  }

  void OnRemove(const BlockKey& key) override {
    auto it = index_.find(key);
    if (it == index_.end()) return;
    order_.erase(it->second);
    index_.erase(it);
  }

  std::optional<BlockKey> NextVictim(
      absl::FunctionRef<bool(const BlockKey&)> evictable) override {
    for (auto it = order_.begin(); it != order_.end(); ++it) {
      if (!evictable(*it)) continue;
      const BlockKey victim = *it;
      index_.erase(victim);
      order_.erase(it);
      return victim;
    }
    return std::nullopt;
  }

  size_t tracked_keys() const override { return index_.size(); }

 private:
  KeyList order_;  // front = LRU, back = MRU.
  absl::flat_hash_map<BlockKey, KeyList::iterator> index_;
};

class S3FifoPolicy final : public EvictionPolicy {
 public:
  void OnInsert(const BlockKey& key, uint64_t size_bytes) override {
    auto [it, inserted] = entries_.try_emplace(key);
    assert(inserted && "EvictionPolicy::OnInsert of a tracked key");
    if (!inserted) return;
    Entry& e = it->second;
    e.size = size_bytes;
    auto ghost = ghost_index_.find(key);
    if (ghost != ghost_index_.end()) {
      ghost_.erase(ghost->second);
      ghost_index_.erase(ghost);
      e.in_main = true;
      e.pos = main_.insert(main_.begin(), key);
      main_bytes_ += size_bytes;
    } else {
      e.in_main = false;
      e.pos = small_.insert(small_.begin(), key);
      small_bytes_ += size_bytes;
    }
  }

  void OnAccess(const BlockKey& key) override {
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    if (it->second.freq < kMaxFreq) ++it->second.freq;
  }

  void OnRemove(const BlockKey& key) override {
    auto it = entries_.find(key);
    if (it == entries_.end()) return;
    Untrack(it);
  }

  std::optional<BlockKey> NextVictim(
      absl::FunctionRef<bool(const BlockKey&)> evictable) override;

  size_t tracked_keys() const override { return entries_.size(); }

 private:
  static constexpr uint8_t kMaxFreq = 3;

  struct Entry {
    KeyList::iterator pos;  // Position in small_ or main_.
    uint64_t size = 0;
    uint64_t refused_epoch = 0;  // NextVictim call that last refused it.
    uint8_t freq = 0;
    bool in_main = false;
  };
  using EntryMap = absl::flat_hash_map<BlockKey, Entry>;

  // S holds more than 10% of the tracked bytes.
  bool SmallOverTarget() const {
    return small_bytes_ > (small_bytes_ + main_bytes_) / 10;
  }

  void Untrack(EntryMap::iterator it) {
    Entry& e = it->second;
    if (e.in_main) {
      main_.erase(e.pos);
      main_bytes_ -= e.size;
    } else {
      small_.erase(e.pos);
      small_bytes_ -= e.size;
    }
    entries_.erase(it);
  }

  void AddGhost(const BlockKey& key) {
    auto [it, inserted] = ghost_index_.try_emplace(key);
    if (!inserted) ghost_.erase(it->second);
    it->second = ghost_.insert(ghost_.begin(), key);
    while (ghost_.size() > entries_.size()) {
      ghost_index_.erase(ghost_.back());
      ghost_.pop_back();
    }
  }

  KeyList small_;  // S: front = head (newest), back = tail.
  KeyList main_;   // M: front = head, back = tail.
  uint64_t small_bytes_ = 0;
  uint64_t main_bytes_ = 0;
  EntryMap entries_;
  KeyList ghost_;  // G: front = most recently evicted from S.
  absl::flat_hash_map<BlockKey, KeyList::iterator> ghost_index_;
  uint64_t epoch_ = 0;  // Incremented by every NextVictim call.
};

// Termination: S never gains keys during a call and refused S keys are never
// promoted, so S is closed after at most |S| refusals. S's share of the bytes
// only falls during a call, so the call runs S steps while S is over target,
// then M steps until M is closed, then S steps again. In the M phase every
// pass over M decrements each key with freq > 0, so after at most 4 passes
// every key has been refused once. After that, a key promoted from S is the
// only unrefused key in M, and is judged on the spot instead of walking the
// refused ones again (same outcome and order as the walk). `budget` is only a
// safety net above that bound.
std::optional<BlockKey> S3FifoPolicy::NextVictim(
    absl::FunctionRef<bool(const BlockKey&)> evictable) {
  const uint64_t epoch = ++epoch_;
  size_t small_refused = 0;  // Distinct S keys refused in this call.
  size_t main_refused = 0;   // Distinct M keys refused in this call.
  auto refuse = [epoch](Entry& e, size_t& refused) {
    if (e.refused_epoch != epoch) {
      e.refused_epoch = epoch;
      ++refused;
    }
  };
  for (size_t budget = 8 * entries_.size() + 8; budget > 0; --budget) {
    const bool small_open = small_refused < small_.size();
    const bool main_open = main_refused < main_.size();
    if (!small_open && !main_open) return std::nullopt;
    const bool from_small = small_open && (!main_open || SmallOverTarget());
    if (from_small) {
      const BlockKey key = small_.back();
      auto it = entries_.find(key);
      Entry& e = it->second;
      if (e.freq >= 1) {
        // Promote: reused while in S.
        main_.splice(main_.begin(), small_, e.pos);
        e.in_main = true;
        e.freq = 0;
        small_bytes_ -= e.size;
        main_bytes_ += e.size;
        const bool next_is_main =
            !(small_refused < small_.size() && SmallOverTarget());
        if (main_refused + 1 == main_.size() && next_is_main) {
          // The next step would walk past every refused M key to this one.
          if (evictable(key)) {
            Untrack(it);
            return key;
          }
          refuse(e, main_refused);
        }
        continue;
      }
      if (evictable(key)) {
        Untrack(it);
        AddGhost(key);
        return key;
      }
      small_.splice(small_.begin(), small_, e.pos);
      refuse(e, small_refused);
      continue;
    }
    const BlockKey key = main_.back();
    auto it = entries_.find(key);
    Entry& e = it->second;
    if (e.freq > 0) {
      --e.freq;
      main_.splice(main_.begin(), main_, e.pos);
      continue;
    }
    if (evictable(key)) {
      Untrack(it);
      return key;
    }
    main_.splice(main_.begin(), main_, e.pos);
    refuse(e, main_refused);
  }
  return std::nullopt;
}

}  // namespace

absl::StatusOr<EvictionPolicyKind> ParseEvictionPolicyKind(
    std::string_view name) {
  if (name == "lru") return EvictionPolicyKind::kLru;
  if (name == "s3fifo") return EvictionPolicyKind::kS3Fifo;
  return absl::InvalidArgumentError(
      // Debian's Abseil is built with its own absl::string_view, which
      // std::string_view does not convert to implicitly.
      absl::StrCat("eviction_policy: unknown policy \"",
                   absl::string_view(name.data(), name.size()),
                   "\" (want lru or s3fifo)"));
}

std::string_view EvictionPolicyName(EvictionPolicyKind kind) {
  switch (kind) {
    case EvictionPolicyKind::kLru:
      return "lru";
    case EvictionPolicyKind::kS3Fifo:
      return "s3fifo";
  }
  return "unknown";
}

std::unique_ptr<EvictionPolicy> MakeEvictionPolicy(EvictionPolicyKind kind) {
  switch (kind) {
    case EvictionPolicyKind::kLru:
      return std::make_unique<LruPolicy>();
    case EvictionPolicyKind::kS3Fifo:
      return std::make_unique<S3FifoPolicy>();
  }
  return nullptr;  // Not a valid EvictionPolicyKind.
}

}  // namespace strata::kvstore
