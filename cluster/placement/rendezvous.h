// Weighted rendezvous (highest-random-weight) placement of block keys over
// the live members of a cluster (docs/cluster.md, "Placement, version 1").
//
// Every client and daemon must compute the same owners for a key, so the
// hash is part of the protocol:
//   seed(node)     = XXH3_64bits(node_id bytes)
//   h(key, node)   = XXH3_64bits_withSeed(key's 16 big-endian bytes, seed(node))
//   u(key, node)   = ((h >> 11) + 0.5) / 2^53                  in (0, 1)
//   score          = -weight(node) / ln(u)                      (weight > 0)
// The node with the highest score is the primary owner. This is the
// logarithmic method for weighted HRW: node i wins a key with probability
// weight_i / sum(weights), and adding, removing or reweighting one node only
// moves keys to or from that node.
//
// Replicas: Owners(key, R) picks, in descending score, nodes of zones not yet
// used (a node with an empty zone is a zone of its own), then, when fewer
// than R zones exist, the best remaining nodes. So the R owners are always
// distinct nodes, in distinct zones whenever there are at least R zones, and
// the primary is always the top-scoring node. Nodes with weight 0 own nothing.
//
// Thread safety: immutable after construction; every method is const and
// thread-safe. Pure functions: no I/O, unit-testable without etcd.
#ifndef STRATA_CLUSTER_PLACEMENT_RENDEZVOUS_H_
#define STRATA_CLUSTER_PLACEMENT_RENDEZVOUS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "kvstore/block_key.h"

namespace strata::cluster {

struct PlacementNode {
  std::string id;
  double weight = 1.0;  // E.g. capacity in bytes; <= 0 owns nothing.
  std::string zone;     // "" = a zone of its own.
};

uint64_t NodeSeed(std::string_view node_id);
// u(key, node) in (0, 1), as above.
double HashUnit(const kvstore::BlockKey& key, uint64_t node_seed);
// -weight / ln(u); 0 when weight <= 0.
double RendezvousScore(const kvstore::BlockKey& key, uint64_t node_seed,
                       double weight);

class RendezvousPlacement {
 public:
  static constexpr size_t kNone = ~size_t{0};

  RendezvousPlacement() = default;
  // Node ids should be unique (a duplicate id gets the same scores as the
  // first and is never preferred over it).
  explicit RendezvousPlacement(std::vector<PlacementNode> nodes);

  // Indices into nodes() of the owners of `key`, best first: min(r, number
  // of nodes with weight > 0) distinct nodes, zone-spread as above.
  std::vector<size_t> Owners(const kvstore::BlockKey& key, size_t r) const;
  void Owners(const kvstore::BlockKey& key, size_t r,
              std::vector<size_t>* out) const;
  // The highest-scoring node, or kNone when no node has weight > 0.
  size_t Primary(const kvstore::BlockKey& key) const;

  const std::vector<PlacementNode>& nodes() const { return nodes_; }
  size_t size() const { return nodes_.size(); }

 private:
  std::vector<PlacementNode> nodes_;
  std::vector<uint64_t> seeds_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_PLACEMENT_RENDEZVOUS_H_
