#include "cluster/placement/rendezvous.h"

#include <algorithm>
#include <cmath>

#include <xxhash.h>

namespace strata::cluster {

uint64_t NodeSeed(std::string_view node_id) {
  return XXH3_64bits(node_id.data(), node_id.size());
}

double HashUnit(const kvstore::BlockKey& key, uint64_t node_seed) {
  uint8_t bytes[16];
  key.ToBytes(bytes);
  const uint64_t h = XXH3_64bits_withSeed(bytes, sizeof(bytes), node_seed);
  return (static_cast<double>(h >> 11) + 0.5) * 0x1.0p-53;
}

double RendezvousScore(const kvstore::BlockKey& key, uint64_t node_seed,
                       double weight) {
  if (!(weight > 0)) return 0;
  return -weight / std::log(HashUnit(key, node_seed));
}

RendezvousPlacement::RendezvousPlacement(std::vector<PlacementNode> nodes)
    : nodes_(std::move(nodes)) {
  seeds_.reserve(nodes_.size());
  for (const auto& n : nodes_) seeds_.push_back(NodeSeed(n.id));
}

size_t RendezvousPlacement::Primary(const kvstore::BlockKey& key) const {
  size_t best = kNone;
  double best_score = 0;
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const double s = RendezvousScore(key, seeds_[i], nodes_[i].weight);
    if (s <= 0) continue;
    if (best == kNone || s > best_score ||
        (s == best_score && nodes_[i].id < nodes_[best].id)) {
      best = i;
      best_score = s;
    }
  }
  return best;
}

std::vector<size_t> RendezvousPlacement::Owners(const kvstore::BlockKey& key,
                                                size_t r) const {
  std::vector<size_t> out;
  Owners(key, r, &out);
  return out;
}

void RendezvousPlacement::Owners(const kvstore::BlockKey& key, size_t r,
                                 std::vector<size_t>* out) const {
  out->clear();
  if (r == 0) return;
  if (r == 1) {
    const size_t p = Primary(key);
    if (p != kNone) out->push_back(p);
    return;
  }
  struct Scored {
    double score;
    size_t index;
  };
  std::vector<Scored> scored;
  scored.reserve(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    const double s = RendezvousScore(key, seeds_[i], nodes_[i].weight);
    if (s > 0) scored.push_back({s, i});
  }
  std::sort(scored.begin(), scored.end(), [&](const Scored& a, const Scored& b) {
    if (a.score != b.score) return a.score > b.score;
    return nodes_[a.index].id < nodes_[b.index].id;
  });
  r = std::min(r, scored.size());
  // Pass 1: the best node of each zone not used yet.
  std::vector<const std::string*> zones;
  std::vector<bool> taken(scored.size(), false);
  for (size_t j = 0; j < scored.size() && out->size() < r; ++j) {
    const std::string& zone = nodes_[scored[j].index].zone;
    if (!zone.empty()) {
      bool used = false;
      for (const std::string* z : zones) used = used || *z == zone;
      if (used) continue;
      zones.push_back(&zone);
    }
    taken[j] = true;
    out->push_back(scored[j].index);
  }
  // Pass 2: fewer zones than r: the best remaining nodes.
  for (size_t j = 0; j < scored.size() && out->size() < r; ++j) {
    if (!taken[j]) out->push_back(scored[j].index);
  }
}

}  // namespace strata::cluster
