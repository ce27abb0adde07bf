#include "kvstore/eviction_policy.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <list>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_key.h"

namespace strata::kvstore {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr EvictionPolicyKind kAllKinds[] = {EvictionPolicyKind::kLru,
                                            EvictionPolicyKind::kS3Fifo};

BlockKey K(uint64_t i) { return BlockKey{0, i}; }

bool Always(const BlockKey&) { return true; }

// Evicts everything evictable; returns the victims' low words in order.
std::vector<uint64_t> Drain(EvictionPolicy& policy) {
  std::vector<uint64_t> victims;
  while (std::optional<BlockKey> v = policy.NextVictim(Always)) {
    victims.push_back(v->lo);
  }
  return victims;
}

// A cache of `capacity` unit-sized keys in front of a policy: a miss inserts
// and then evicts until the cache fits again.
class SimulatedCache {
 public:
  SimulatedCache(EvictionPolicyKind kind, size_t capacity)
      : policy_(MakeEvictionPolicy(kind)), capacity_(capacity) {}

  // Returns true on a hit.
  bool Touch(uint64_t i) {
    if (resident_.contains(i)) {
      policy_->OnAccess(K(i));
      return true;
    }
    policy_->OnInsert(K(i), 1);
    resident_.insert(i);
    while (resident_.size() > capacity_) {
      std::optional<BlockKey> victim = policy_->NextVictim(Always);
      EXPECT_TRUE(victim.has_value());
      if (!victim.has_value()) break;
      EXPECT_EQ(resident_.erase(victim->lo), 1u);
      victims_.push_back(victim->lo);
    }
    EXPECT_EQ(policy_->tracked_keys(), resident_.size());
    return false;
  }

  bool Resident(uint64_t i) const { return resident_.contains(i); }
  const std::vector<uint64_t>& victims() const { return victims_; }

 private:
  std::unique_ptr<EvictionPolicy> policy_;
  size_t capacity_;
  std::set<uint64_t> resident_;
  std::vector<uint64_t> victims_;
};

TEST(EvictionPolicyTest, LruEvictsLeastRecentlyUsedFirst) {
  auto lru = MakeEvictionPolicy(EvictionPolicyKind::kLru);
  for (uint64_t i = 1; i <= 5; ++i) lru->OnInsert(K(i), 100);
  lru->OnAccess(K(2));
  lru->OnAccess(K(4));
  EXPECT_THAT(Drain(*lru), ElementsAre(1, 3, 5, 2, 4));
  EXPECT_EQ(lru->tracked_keys(), 0u);
}

TEST(EvictionPolicyTest, LruSkipsUnevictableKeysAndKeepsThemTracked) {
  auto lru = MakeEvictionPolicy(EvictionPolicyKind::kLru);
  for (uint64_t i = 1; i <= 4; ++i) lru->OnInsert(K(i), 100);
  std::vector<uint64_t> asked;
  std::optional<BlockKey> victim = lru->NextVictim([&](const BlockKey& key) {
    asked.push_back(key.lo);
    return key.lo > 2;  // 1 and 2 are pinned.
  });
  ASSERT_TRUE(victim.has_value());
  EXPECT_EQ(victim->lo, 3u);
  EXPECT_THAT(asked, ElementsAre(1, 2, 3));  // Stops at the first victim.
  EXPECT_EQ(lru->tracked_keys(), 3u);
  // The skipped keys kept their places at the LRU end.
  EXPECT_THAT(Drain(*lru), ElementsAre(1, 2, 4));
}

TEST(EvictionPolicyTest, NextVictimReturnsNulloptWhenNothingEvictable) {
  for (EvictionPolicyKind kind : kAllKinds) {
    SCOPED_TRACE(EvictionPolicyName(kind));
    auto policy = MakeEvictionPolicy(kind);
    size_t calls = 0;
    auto never = [&](const BlockKey&) {
      ++calls;
      return false;
    };
    EXPECT_EQ(policy->NextVictim(never), std::nullopt);
    EXPECT_EQ(calls, 0u);

    // Spread keys over S3-FIFO's queues with every frequency: insert, access
    // some, evict a few so reused keys move to the main queue, then insert
    // and access more.
    constexpr uint64_t kKeys = 200;
    for (uint64_t i = 0; i < kKeys; ++i) {
      policy->OnInsert(K(i), 1 + i % 7);
      for (uint64_t a = 0; a < i % 5; ++a) policy->OnAccess(K(i));
    }
    for (int v = 0; v < 20; ++v) ASSERT_TRUE(policy->NextVictim(Always));
    for (uint64_t i = kKeys; i < kKeys + 20; ++i) {
      policy->OnInsert(K(i), 3);
      for (uint64_t a = 0; a < i % 4; ++a) policy->OnAccess(K(i));
    }
    for (uint64_t i = 0; i < kKeys + 20; i += 3) policy->OnAccess(K(i));
    const size_t tracked = policy->tracked_keys();
    ASSERT_EQ(tracked, kKeys);

    calls = 0;
    EXPECT_EQ(policy->NextVictim(never), std::nullopt);
    EXPECT_EQ(policy->tracked_keys(), tracked);
    EXPECT_GE(calls, tracked);          // Every key was considered...
    EXPECT_LE(calls, 8 * tracked + 8);  // ...in O(tracked keys) calls.

    // A second refusal pass also ends, and a single evictable key is found.
    calls = 0;
    std::optional<BlockKey> only = policy->NextVictim([&](const BlockKey& k) {
      ++calls;
      return k == K(kKeys + 7);
    });
    ASSERT_TRUE(only.has_value());
    EXPECT_EQ(*only, K(kKeys + 7));
    EXPECT_LE(calls, 8 * tracked + 8);
    EXPECT_EQ(policy->tracked_keys(), tracked - 1);
    EXPECT_EQ(Drain(*policy).size(), tracked - 1);
  }
}

// A pinned main queue must not be walked again for every key promoted out of
// the small queue during one call.
TEST(EvictionPolicyTest, S3FifoEvictableCallsStayLinearWithPinnedMainQueue) {
  auto s3 = MakeEvictionPolicy(EvictionPolicyKind::kS3Fifo);
  constexpr uint64_t kMain = 200;
  constexpr uint64_t kSmall = 100;
  for (uint64_t i = 0; i < kMain; ++i) {
    s3->OnInsert(K(i), 1000);
    s3->OnAccess(K(i));
  }
  s3->OnInsert(K(9999), 1);
  // Promotes the reused keys to the main queue until the small queue is
  // under target, refuses the main queue once, promotes the rest (judging
  // each on the spot), then evicts the new key.
  size_t calls = 0;
  ASSERT_EQ(s3->NextVictim([&](const BlockKey& k) {
    ++calls;
    return k == K(9999);
  }),
            K(9999));
  EXPECT_EQ(calls, kMain + 1);
  // Small, reused keys: the small queue is far under its 10% byte target.
  for (uint64_t i = kMain; i < kMain + kSmall; ++i) {
    s3->OnInsert(K(i), 1);
    s3->OnAccess(K(i));
  }
  calls = 0;
  std::optional<BlockKey> victim = s3->NextVictim([&](const BlockKey& k) {
    ++calls;
    return k == K(kMain + kSmall - 1);  // The newest small key.
  });
  EXPECT_EQ(victim, K(kMain + kSmall - 1));
  // Each main key refused once, each small key judged once after promotion.
  EXPECT_EQ(calls, kMain + kSmall);
  EXPECT_EQ(s3->tracked_keys(), kMain + kSmall - 1);

  calls = 0;
  EXPECT_EQ(s3->NextVictim([&](const BlockKey&) {
    ++calls;
    return false;
  }),
            std::nullopt);
  EXPECT_EQ(calls, kMain + kSmall - 1);
}

TEST(EvictionPolicyTest, OnRemoveStopsTracking) {
  for (EvictionPolicyKind kind : kAllKinds) {
    SCOPED_TRACE(EvictionPolicyName(kind));
    auto policy = MakeEvictionPolicy(kind);
    for (uint64_t i = 1; i <= 3; ++i) policy->OnInsert(K(i), 10);
    policy->OnRemove(K(2));
    EXPECT_EQ(policy->tracked_keys(), 2u);
    policy->OnRemove(K(2));   // Untracked: ignored.
    policy->OnRemove(K(99));  // Never tracked: ignored.
    policy->OnAccess(K(2));   // Untracked: ignored.
    EXPECT_EQ(policy->tracked_keys(), 2u);
    EXPECT_THAT(Drain(*policy), ElementsAre(1, 3));
    // A removed key may be inserted again as a new key.
    policy->OnInsert(K(2), 10);
    EXPECT_EQ(policy->tracked_keys(), 1u);
    EXPECT_THAT(Drain(*policy), ElementsAre(2));
  }
}

TEST(EvictionPolicyTest, S3FifoRemovedKeyDoesNotEnterGhost) {
  auto s3 = MakeEvictionPolicy(EvictionPolicyKind::kS3Fifo);
  s3->OnInsert(K(1), 10);
  s3->OnRemove(K(1));
  s3->OnInsert(K(1), 10);  // Not a ghost hit: back into the small queue...
  for (uint64_t i = 2; i <= 10; ++i) s3->OnInsert(K(i), 10);
  // ...where it is the oldest key, so the first victim.
  EXPECT_THAT(Drain(*s3), ElementsAre(1, 2, 3, 4, 5, 6, 7, 8, 9, 10));
}

TEST(EvictionPolicyTest, S3FifoEvictsOneHitWondersBeforeReusedKeys) {
  {
    auto s3 = MakeEvictionPolicy(EvictionPolicyKind::kS3Fifo);
    for (uint64_t i = 1; i <= 5; ++i) s3->OnInsert(K(i), 100);
    s3->OnAccess(K(2));
    s3->OnAccess(K(4));
    EXPECT_THAT(Drain(*s3), ElementsAre(1, 3, 5, 2, 4));
  }
  // Reused keys outlive one-hit wonders inserted after them; LRU, which
  // only sees recency, evicts the older reused keys instead.
  SimulatedCache s3(EvictionPolicyKind::kS3Fifo, 10);
  SimulatedCache lru(EvictionPolicyKind::kLru, 10);
  for (SimulatedCache* cache : {&s3, &lru}) {
    for (uint64_t i = 1; i <= 5; ++i) cache->Touch(i);
    for (uint64_t i = 1; i <= 5; ++i) EXPECT_TRUE(cache->Touch(i));
    for (uint64_t i = 6; i <= 15; ++i) EXPECT_FALSE(cache->Touch(i));
  }
  EXPECT_THAT(s3.victims(), ElementsAre(6, 7, 8, 9, 10));
  EXPECT_THAT(lru.victims(), ElementsAre(1, 2, 3, 4, 5));
}

TEST(EvictionPolicyTest, S3FifoMainQueueSpendsOneChancePerAccess) {
  auto s3 = MakeEvictionPolicy(EvictionPolicyKind::kS3Fifo);
  for (uint64_t i = 1; i <= 5; ++i) {
    s3->OnInsert(K(i), 1);
    s3->OnAccess(K(i));
  }
  s3->OnInsert(K(6), 1);
  // 1..5 were reused in the small queue: promoted with their counts reset.
  ASSERT_EQ(s3->NextVictim(Always), K(6));
  for (int a = 0; a < 5; ++a) s3->OnAccess(K(1));  // Saturates at 3.
  for (int a = 0; a < 3; ++a) s3->OnAccess(K(2));
  s3->OnAccess(K(3));
  // From the main tail (1 first), each pass spends one chance per key: 4 and
  // 5 have none, 3 has one, and 1 and 2 have three each, so 1 goes first.
  EXPECT_THAT(Drain(*s3), ElementsAre(4, 5, 3, 1, 2));
}

TEST(EvictionPolicyTest, S3FifoIsScanResistant) {
  constexpr size_t kCapacity = 100;
  constexpr uint64_t kHot = 60;
  constexpr uint64_t kScan = 20 * kCapacity;
  SimulatedCache s3(EvictionPolicyKind::kS3Fifo, kCapacity);
  SimulatedCache lru(EvictionPolicyKind::kLru, kCapacity);
  for (SimulatedCache* cache : {&s3, &lru}) {
    // The working set, read repeatedly.
    for (int round = 0; round < 4; ++round) {
      for (uint64_t i = 0; i < kHot; ++i) cache->Touch(i);
    }
    // A long scan of keys read once.
    for (uint64_t i = 0; i < kScan; ++i) cache->Touch(1'000'000 + i);
  }
  size_t s3_hot = 0;
  size_t lru_hot = 0;
  for (uint64_t i = 0; i < kHot; ++i) {
    s3_hot += s3.Resident(i);
    lru_hot += lru.Resident(i);
  }
  EXPECT_GE(s3_hot * 10, kHot * 9) << "s3fifo kept " << s3_hot << "/" << kHot;
  EXPECT_EQ(lru_hot, 0u) << "lru kept " << lru_hot << "/" << kHot;
}

TEST(EvictionPolicyTest, S3FifoGhostHitGoesToMain) {
  constexpr size_t kCapacity = 10;
  SimulatedCache cache(EvictionPolicyKind::kS3Fifo, kCapacity);
  for (uint64_t i = 0; i < kCapacity; ++i) cache.Touch(i);
  cache.Touch(100);  // Evicts 0 from the small queue into the ghost queue.
  ASSERT_THAT(cache.victims(), ElementsAre(0));
  cache.Touch(0);  // Ghost hit: lands in the main queue.
  // Had 0 gone back into the small queue, it would be evicted after the
  // kCapacity - 1 keys ahead of it. In the main queue it outlives all of
  // these one-time keys, since the small queue stays over its 10% target.
  for (uint64_t i = 200; i < 200 + 3 * kCapacity; ++i) cache.Touch(i);
  EXPECT_TRUE(cache.Resident(0));
  EXPECT_EQ(std::count(cache.victims().begin(), cache.victims().end(), 0), 1);
}

TEST(EvictionPolicyTest, S3FifoGhostForgetsOldEvictions) {
  constexpr size_t kCapacity = 10;
  SimulatedCache cache(EvictionPolicyKind::kS3Fifo, kCapacity);
  for (uint64_t i = 0; i < kCapacity; ++i) cache.Touch(i);
  cache.Touch(100);  // Evicts 0 into the ghost queue.
  // Many more evictions than the ghost holds (one per tracked key) push 0
  // out of the ghost queue.
  for (uint64_t i = 200; i < 200 + 5 * kCapacity; ++i) cache.Touch(i);
  cache.Touch(0);  // A plain insert into the small queue.
  for (uint64_t i = 300; i < 300 + kCapacity; ++i) cache.Touch(i);
  EXPECT_FALSE(cache.Resident(0));
}

TEST(EvictionPolicyTest, ParsePolicyNames) {
  for (EvictionPolicyKind kind : kAllKinds) {
    absl::StatusOr<EvictionPolicyKind> parsed =
        ParseEvictionPolicyKind(EvictionPolicyName(kind));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, kind);
    auto policy = MakeEvictionPolicy(kind);
    ASSERT_NE(policy, nullptr);
    EXPECT_EQ(policy->tracked_keys(), 0u);
  }
  EXPECT_EQ(EvictionPolicyName(EvictionPolicyKind::kLru), "lru");
  EXPECT_EQ(EvictionPolicyName(EvictionPolicyKind::kS3Fifo), "s3fifo");
  EXPECT_EQ(*ParseEvictionPolicyKind("lru"), EvictionPolicyKind::kLru);
  EXPECT_EQ(*ParseEvictionPolicyKind("s3fifo"), EvictionPolicyKind::kS3Fifo);

  for (std::string_view bad : {"fifo", "", "LRU", "s3-fifo", "lru "}) {
    absl::StatusOr<EvictionPolicyKind> parsed = ParseEvictionPolicyKind(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(parsed.status().message()),
                HasSubstr("eviction_policy"));
  }
  EXPECT_EQ(ParseEvictionPolicyKind("fifo").status().message(),
            "eviction_policy: unknown policy \"fifo\" (want lru or s3fifo)");
}

uint64_t TestSeed() {
  if (const char* env = std::getenv("STRATA_TEST_SEED"); env && *env) {
    return std::strtoull(env, nullptr, 0);
  }
  return std::random_device()();
}

uint64_t Mix(uint64_t x) {  // splitmix64 finalizer.
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// Random operations against a std::set model (and, for LRU, an exact
// recency-list model): tracked keys always match, and every victim is a
// tracked key the predicate allowed; nullopt only when none is allowed.
TEST(EvictionPolicyTest, RandomOpsMatchModel) {
  const uint64_t seed = TestSeed();
  std::cout << "STRATA_TEST_SEED=" << seed << "\n";
  SCOPED_TRACE("STRATA_TEST_SEED=" + std::to_string(seed));
  for (EvictionPolicyKind kind : kAllKinds) {
    SCOPED_TRACE(EvictionPolicyName(kind));
    const bool is_lru = kind == EvictionPolicyKind::kLru;
    std::mt19937_64 rng(seed ^ static_cast<uint64_t>(kind));
    auto policy = MakeEvictionPolicy(kind);
    std::set<BlockKey> model;
    std::list<BlockKey> lru_order;  // front = LRU; only checked for LRU.
    auto lru_touch = [&](const BlockKey& key) {
      lru_order.remove(key);
      lru_order.push_back(key);
    };
    constexpr uint64_t kKeySpace = 300;
    for (int op = 0; op < 30000; ++op) {
      SCOPED_TRACE("op " + std::to_string(op));
      const int dice = static_cast<int>(rng() % 100);
      const BlockKey key{rng() % 3, rng() % kKeySpace};
      if (dice < 40) {
        if (model.contains(key)) {
          policy->OnAccess(key);
          if (is_lru) lru_touch(key);
        } else {
          policy->OnInsert(key, 1 + rng() % 4096);
          model.insert(key);
          if (is_lru) lru_touch(key);
        }
      } else if (dice < 65) {
        policy->OnAccess(key);
        if (is_lru && model.contains(key)) lru_touch(key);
      } else if (dice < 73) {
        policy->OnRemove(key);
        model.erase(key);
        if (is_lru) lru_order.remove(key);
      } else {
        // Predicates: all, none, or a pseudo-random subset of varying
        // density that is fixed for the duration of the call.
        const uint64_t salt = rng();
        const uint64_t mode = rng() % 8;
        auto allowed = [&](const BlockKey& k) {
          if (mode == 0) return true;
          if (mode == 1) return false;
          return Mix(k.hi * 1000003 + k.lo + salt) % 8 < mode - 1;
        };
        size_t calls = 0;
        const size_t tracked = model.size();
        std::optional<BlockKey> victim =
            policy->NextVictim([&](const BlockKey& k) {
              ++calls;
              EXPECT_TRUE(model.contains(k)) << "asked about untracked key";
              return allowed(k);
            });
        EXPECT_LE(calls, 8 * tracked + 8);
        if (victim.has_value()) {
          ASSERT_TRUE(model.contains(*victim));
          ASSERT_TRUE(allowed(*victim));
          model.erase(*victim);
          if (is_lru) {
            auto expected =
                std::find_if(lru_order.begin(), lru_order.end(), allowed);
            ASSERT_NE(expected, lru_order.end());
            ASSERT_EQ(*expected, *victim);
            lru_order.erase(expected);
          }
        } else {
          ASSERT_TRUE(std::none_of(model.begin(), model.end(), allowed))
              << "nullopt although an allowed key is tracked";
        }
      }
      ASSERT_EQ(policy->tracked_keys(), model.size());
    }
    // Everything still tracked drains exactly once.
    std::set<BlockKey> drained;
    while (std::optional<BlockKey> v = policy->NextVictim(Always)) {
      ASSERT_TRUE(drained.insert(*v).second);
    }
    EXPECT_EQ(drained, model);
    EXPECT_EQ(policy->tracked_keys(), 0u);
    EXPECT_EQ(policy->NextVictim(Always), std::nullopt);
  }
}

}  // namespace
}  // namespace strata::kvstore
