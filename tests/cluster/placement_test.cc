// RendezvousPlacement: pure functions, no etcd, no daemons.
#include "cluster/placement/rendezvous.h"

#include <cmath>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_key.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::cluster {
namespace {

using ::strata::kvstore::BlockKey;
using ::strata::kvstore::testing::KeyFor;

constexpr int kKeys = 100000;
constexpr double kGiB = 1024.0 * 1024 * 1024;

std::vector<PlacementNode> Nodes(int n, double weight = kGiB) {
  std::vector<PlacementNode> nodes;
  for (int i = 0; i < n; ++i) {
    nodes.push_back({"node-" + std::to_string(i), weight, ""});
  }
  return nodes;
}

// Primary counts per node index.
std::vector<int> PrimaryCounts(const RendezvousPlacement& p, int keys) {
  std::vector<int> counts(p.size(), 0);
  for (int k = 0; k < keys; ++k) ++counts[p.Primary(KeyFor(k))];
  return counts;
}

TEST(Placement, HashUnitIsInOpenUnitInterval) {
  for (int k = 0; k < 1000; ++k) {
    const double u = HashUnit(KeyFor(k), NodeSeed("n" + std::to_string(k)));
    EXPECT_GT(u, 0.0);
    EXPECT_LT(u, 1.0);
  }
  EXPECT_EQ(RendezvousScore(KeyFor(1), NodeSeed("a"), 0.0), 0.0);
}

TEST(Placement, IsAPureFunctionOfKeyAndMembers) {
  // The same members in another order give the same owners: every client
  // must agree on placement.
  auto nodes = Nodes(5);
  RendezvousPlacement a(nodes);
  std::reverse(nodes.begin(), nodes.end());
  RendezvousPlacement b(nodes);
  for (int k = 0; k < 2000; ++k) {
    std::vector<std::string> ia, ib;
    for (size_t i : a.Owners(KeyFor(k), 3)) ia.push_back(a.nodes()[i].id);
    for (size_t i : b.Owners(KeyFor(k), 3)) ib.push_back(b.nodes()[i].id);
    ASSERT_EQ(ia, ib) << k;
  }
}

TEST(Placement, HashIsPinned) {
  // Placement version 1 (docs/cluster.md): changing the hash would move
  // every key. These values pin it.
  const BlockKey key{0x0123456789abcdefULL, 0xfedcba9876543210ULL};
  // Cross-checked with an independent implementation of the spec (Python,
  // ctypes on libxxhash's XXH3_64bits / XXH3_64bits_withSeed).
  EXPECT_EQ(NodeSeed("node-0"), 10964802707904888217ULL);
  EXPECT_NEAR(HashUnit(key, NodeSeed("node-0")), 0.6783588657415955, 1e-15);
  RendezvousPlacement p(Nodes(8));
  EXPECT_EQ(p.nodes()[p.Primary(key)].id, "node-1");
  std::vector<std::string> owners;
  for (size_t i : p.Owners(key, 3)) owners.push_back(p.nodes()[i].id);
  EXPECT_THAT(owners, ::testing::ElementsAre("node-1", "node-6", "node-3"));
}

TEST(Placement, EqualCapacitiesAreWithin10PercentOfEven) {
  RendezvousPlacement p(Nodes(4));
  const std::vector<int> counts = PrimaryCounts(p, kKeys);
  for (size_t i = 0; i < counts.size(); ++i) {
    EXPECT_NEAR(counts[i], kKeys / 4, kKeys / 4 * 0.10) << p.nodes()[i].id;
  }
  // With R = 2 every node holds about 2/4 of the keys.
  std::vector<int> held(4, 0);
  for (int k = 0; k < kKeys; ++k) {
    for (size_t i : p.Owners(KeyFor(k), 2)) ++held[i];
  }
  for (size_t i = 0; i < held.size(); ++i) {
    EXPECT_NEAR(held[i], kKeys / 2, kKeys / 2 * 0.10) << p.nodes()[i].id;
  }
}

TEST(Placement, UnequalCapacitiesAreProportional) {
  std::vector<PlacementNode> nodes = {
      {"small", 1 * kGiB, ""}, {"medium", 2 * kGiB, ""},
      {"large", 3 * kGiB, ""}, {"huge", 4 * kGiB, ""}};
  RendezvousPlacement p(nodes);
  const std::vector<int> counts = PrimaryCounts(p, kKeys);
  for (size_t i = 0; i < nodes.size(); ++i) {
    const double expected = kKeys * nodes[i].weight / (10 * kGiB);
    EXPECT_NEAR(counts[i], expected, expected * 0.10) << nodes[i].id;
  }
}

TEST(Placement, ZeroWeightOwnsNothing) {
  std::vector<PlacementNode> nodes = Nodes(3);
  nodes.push_back({"drained", 0, ""});
  RendezvousPlacement p(nodes);
  for (int k = 0; k < 5000; ++k) {
    for (size_t i : p.Owners(KeyFor(k), 3)) ASSERT_NE(p.nodes()[i].id, "drained");
  }
  EXPECT_EQ(p.Owners(KeyFor(1), 10).size(), 3u);  // Only 3 eligible.
  EXPECT_EQ(RendezvousPlacement().Primary(KeyFor(1)), RendezvousPlacement::kNone);
  EXPECT_TRUE(RendezvousPlacement().Owners(KeyFor(1), 2).empty());
}

TEST(Placement, ReplicasAreOnDistinctNodes) {
  RendezvousPlacement p(Nodes(5));
  for (int k = 0; k < 20000; ++k) {
    const auto owners = p.Owners(KeyFor(k), 3);
    ASSERT_EQ(owners.size(), 3u);
    ASSERT_EQ(std::set<size_t>(owners.begin(), owners.end()).size(), 3u);
    ASSERT_EQ(owners[0], p.Primary(KeyFor(k)));  // Primary first.
  }
  // More replicas than nodes: every node, once.
  EXPECT_EQ(p.Owners(KeyFor(7), 9).size(), 5u);
}

TEST(Placement, ReplicasAreInDistinctZones) {
  // Six nodes in three zones, unequal sizes inside a zone.
  std::vector<PlacementNode> nodes = {
      {"a1", 1 * kGiB, "za"}, {"a2", 2 * kGiB, "za"}, {"b1", 1 * kGiB, "zb"},
      {"b2", 1 * kGiB, "zb"}, {"c1", 3 * kGiB, "zc"}, {"c2", 1 * kGiB, "zc"}};
  RendezvousPlacement p(nodes);
  std::map<std::string, int> primaries;
  for (int k = 0; k < 20000; ++k) {
    for (size_t r : {2u, 3u}) {
      const auto owners = p.Owners(KeyFor(k), r);
      ASSERT_EQ(owners.size(), r);
      std::set<std::string> zones;
      for (size_t i : owners) zones.insert(p.nodes()[i].zone);
      ASSERT_EQ(zones.size(), r) << "key " << k << " R=" << r;
      ASSERT_EQ(owners[0], p.Primary(KeyFor(k)));
    }
    // R = 4 > 3 zones: 4 distinct nodes, the first 3 in distinct zones.
    const auto owners = p.Owners(KeyFor(k), 4);
    ASSERT_EQ(owners.size(), 4u);
    ASSERT_EQ(std::set<size_t>(owners.begin(), owners.end()).size(), 4u);
    std::set<std::string> zones;
    for (size_t j = 0; j < 3; ++j) zones.insert(p.nodes()[owners[j]].zone);
    ASSERT_EQ(zones.size(), 3u);
    ++primaries[p.nodes()[owners[0]].id];
  }
  // The primary still follows the weights (c1 has 3 of 9 GiB).
  EXPECT_NEAR(primaries["c1"], 20000 * 3.0 / 9, 20000 * 3.0 / 9 * 0.10);
}

TEST(Placement, NodesWithoutZoneAreZonesOfTheirOwn) {
  std::vector<PlacementNode> nodes = {{"x", 1, ""}, {"y", 1, ""}, {"z", 1, "z"}};
  RendezvousPlacement p(nodes);
  for (int k = 0; k < 1000; ++k) ASSERT_EQ(p.Owners(KeyFor(k), 3).size(), 3u);
}

TEST(Placement, AJoiningNodeTakesAboutOneNthAndTheRestStayPut) {
  RendezvousPlacement before(Nodes(4));
  RendezvousPlacement after(Nodes(5));  // node-4 joins.
  int moved = 0;
  int replica_sets_changed = 0;
  for (int k = 0; k < kKeys; ++k) {
    const std::string& was = before.nodes()[before.Primary(KeyFor(k))].id;
    const std::string& now = after.nodes()[after.Primary(KeyFor(k))].id;
    if (was != now) {
      ++moved;
      ASSERT_EQ(now, "node-4") << "key " << k << " moved between old nodes";
    }
    // With R = 2 a key's owner set changes only by taking in node-4.
    std::set<std::string> ob, oa;
    for (size_t i : before.Owners(KeyFor(k), 2)) ob.insert(before.nodes()[i].id);
    for (size_t i : after.Owners(KeyFor(k), 2)) oa.insert(after.nodes()[i].id);
    if (ob != oa) {
      ++replica_sets_changed;
      ASSERT_TRUE(oa.contains("node-4"));
    }
  }
  EXPECT_NEAR(moved, kKeys / 5, kKeys / 5 * 0.10);
  // P(node-4 among the top 2 of 5) = 2/5.
  EXPECT_NEAR(replica_sets_changed, kKeys * 2 / 5, kKeys * 2 / 5 * 0.10);
}

TEST(Placement, ALeavingNodeMovesOnlyItsKeys) {
  auto nodes = Nodes(5);
  RendezvousPlacement before(nodes);
  nodes.erase(nodes.begin() + 2);  // node-2 leaves.
  RendezvousPlacement after(nodes);
  int moved = 0;
  for (int k = 0; k < kKeys; ++k) {
    const std::string& was = before.nodes()[before.Primary(KeyFor(k))].id;
    const std::string& now = after.nodes()[after.Primary(KeyFor(k))].id;
    if (was == "node-2") {
      ++moved;
      // Its keys go to their old second owner: that replica has them.
      ASSERT_EQ(now, before.nodes()[before.Owners(KeyFor(k), 2)[1]].id);
    } else {
      ASSERT_EQ(was, now);
    }
  }
  EXPECT_NEAR(moved, kKeys / 5, kKeys / 5 * 0.10);
}

}  // namespace
}  // namespace strata::cluster
