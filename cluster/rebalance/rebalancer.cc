#include "cluster/rebalance/rebalancer.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "cluster/placement/rendezvous.h"

namespace strata::cluster {
namespace {

using kvstore::BlockKey;

// Burst of one token bucket: a tenth of a second's worth, at least one unit.
double Burst(double rate) { return std::max(1.0, rate / 10); }

bool Unreachable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s);
}

}  // namespace

Rebalancer::Rebalancer(kvstore::TieredStore* store, MemberSource* members,
                       RebalanceOptions options)
    : store_(store),
      members_(members),
      options_(std::move(options)),
      // A block larger than the bucket still passes (RateLimiter::Acquire
      // drives the bucket negative), so the bucket need not hold one.
      bytes_limiter_(static_cast<double>(options_.bytes_per_s),
                     Burst(static_cast<double>(options_.bytes_per_s))),
      blocks_limiter_(options_.blocks_per_s, Burst(options_.blocks_per_s)),
      replication_(std::max<size_t>(1, options_.replication)) {}

Rebalancer::~Rebalancer() { Stop(); }

void Rebalancer::Start() {
  {
    absl::MutexLock lock(&mu_);
    if (started_) return;
    started_ = true;
    stop_ = false;
    changed_at_ = absl::Now();
  }
  bytes_limiter_.Reset();
  blocks_limiter_.Reset();
  listener_ = members_->AddListener([this](const MemberList&) {
    absl::MutexLock lock(&mu_);
    ++generation_;
    ++stats_.member_changes;
    changed_at_ = absl::Now();
  });
  thread_ = std::thread([this] { Run(); });
}

void Rebalancer::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (!started_) return;
    stop_ = true;
    started_ = false;
  }
  bytes_limiter_.Cancel();
  blocks_limiter_.Cancel();
  members_->RemoveListener(listener_);
  if (thread_.joinable()) thread_.join();
}

void Rebalancer::StartDrain() {
  draining_.store(true);
  absl::MutexLock lock(&mu_);
  stats_.draining = true;
  ++generation_;  // Interrupts a pass that placed keys on this node.
  kick_ = true;
}

bool Rebalancer::WaitDrained(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stats_.drained || stop_;
  };
  mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
  return stats_.drained;
}

void Rebalancer::SetReplication(size_t replication) {
  if (replication == 0) return;
  absl::MutexLock lock(&mu_);
  if (replication == replication_) return;
  replication_ = replication;
  ++generation_;  // Owners changed: a new pass (after the settle time).
  changed_at_ = absl::Now();
}

size_t Rebalancer::replication() const {
  absl::MutexLock lock(&mu_);
  return replication_;
}

void Rebalancer::SetRates(uint64_t bytes_per_s, uint32_t blocks_per_s,
                          bool paused) {
  bytes_limiter_.SetRate(static_cast<double>(bytes_per_s),
                         Burst(static_cast<double>(bytes_per_s)));
  blocks_limiter_.SetRate(blocks_per_s, Burst(blocks_per_s));
  if (paused) {
    bytes_limiter_.Pause();
  } else {
    bytes_limiter_.Resume();
  }
}

RebalanceStats Rebalancer::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

bool Rebalancer::Changed(uint64_t generation) const {
  absl::MutexLock lock(&mu_);
  return stop_ || generation_ != generation;
}

void Rebalancer::Log(const char* level, const char* event,
                     std::vector<std::pair<std::string, std::string>> fields) const {
  if (options_.log) options_.log(level, event, fields);
}

void Rebalancer::Run() {
  uint64_t done_generation = 0;  // The generation the last full pass saw.
  absl::Time next_pass = absl::InfinitePast();
  while (true) {
    uint64_t generation = 0;
    {
      absl::MutexLock lock(&mu_);
      // Wait for a change that has settled, a retry / periodic deadline, a
      // drain kick, or stop.
      while (true) {
        if (stop_) return;
        const absl::Time now = absl::Now();
        const bool change = generation_ != done_generation;
        const absl::Time settled_at = changed_at_ + options_.settle;
        if (kick_ || (change && now >= settled_at) || (!change && now >= next_pass)) {
          break;
        }
        const absl::Time until = change ? std::min(settled_at, next_pass) : next_pass;
        auto woken = [this, done_generation]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          return stop_ || kick_ || generation_ != done_generation;
        };
        if (change) {
          // Re-evaluate when the settle time passes or on a newer change.
          const uint64_t seen = generation_;
          auto newer = [this, seen]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
            return stop_ || kick_ || generation_ != seen;
          };
          mu_.AwaitWithDeadline(absl::Condition(&newer), until);
        } else {
          mu_.AwaitWithDeadline(absl::Condition(&woken), until);
        }
      }
      kick_ = false;
      generation = generation_;
    }
    PassResult r = Pass(generation);
    absl::MutexLock lock(&mu_);
    if (r.aborted) {
      ++stats_.passes_aborted;
      continue;  // The new generation is pending.
    }
    ++stats_.passes;
    done_generation = generation;
    stats_.last_error = r.error;
    // A drain goes on until the store is empty (blocks that arrived after
    // the snapshot are in the next one).
    const bool again = !r.complete || (draining_.load() && !stats_.drained);
    next_pass = absl::Now() + (again ? options_.retry_after
                                     : options_.full_pass_every);
  }
}

std::shared_ptr<client::Client> Rebalancer::PeerClient(const Member& m) {
  absl::MutexLock lock(&peers_mu_);
  auto it = peers_.find(m.node_id);
  if (it != peers_.end() && it->second.first == m.grpc_address) {
    return it->second.second;
  }
  client::ClientOptions o;
  o.address = m.grpc_address;
  o.data_plane = "grpc";
  o.max_attempts = 2;
  o.default_deadline = options_.call_timeout;
  auto c = client::Client::Connect(o);
  if (!c.ok()) return nullptr;
  std::shared_ptr<client::Client> shared = *std::move(c);
  peers_[m.node_id] = {m.grpc_address, shared};
  return shared;
}

Rebalancer::PassResult Rebalancer::Pass(uint64_t generation) {
  PassResult result;
  const bool draining = draining_.load();
  const size_t replication = this->replication();
  const MemberList members = members_->Members();
  const bool self_listed = std::any_of(
      members.begin(), members.end(),
      [&](const Member& m) { return m.node_id == options_.self_id; });
  std::vector<PlacementNode> nodes;
  std::vector<const Member*> by_index;
  for (const Member& m : members) {
    double weight = static_cast<double>(m.capacity_bytes);
    if (m.node_id == options_.self_id && draining) weight = 0;
    nodes.push_back({m.node_id, weight, m.zone});
    by_index.push_back(&m);
  }
  const std::vector<kvstore::TieredStore::KeySize> snapshot = store_->SnapshotKeys();
  uint64_t local_bytes = 0;
  for (const auto& k : snapshot) local_bytes += k.size;
  {
    absl::MutexLock lock(&mu_);
    stats_.local_blocks = snapshot.size();
    stats_.local_bytes = local_bytes;
    if (draining && snapshot.empty()) stats_.drained = true;
  }
  if (snapshot.empty()) {
    result.complete = true;
    return result;
  }
  if (!self_listed && !draining) {
    result.complete = true;  // Nothing to do until we are a member again.
    return result;
  }
  const RendezvousPlacement placement(nodes);
  const bool others = std::any_of(nodes.begin(), nodes.end(), [&](const PlacementNode& n) {
    return n.id != options_.self_id && n.weight > 0;
  });
  if (!others) {
    if (draining) {
      result.error = "no other live member to move blocks to";
      absl::MutexLock lock(&mu_);
      stats_.misplaced_blocks = snapshot.size();
    } else {
      result.complete = true;  // A cluster of one owns everything here.
    }
    return result;
  }
  const std::vector<kvstore::TieredStore::KeySize>& keys = snapshot;
  uint64_t misplaced = 0, under = 0, checked = 0;
  std::vector<size_t> owners;
  // Owners that timed out or refused connections during this pass are not
  // asked again until the next one (a partitioned member would otherwise
  // cost a timeout per page).
  absl::flat_hash_map<size_t, bool> down;
  for (size_t begin = 0; begin < keys.size(); begin += options_.page_keys) {
    if (Changed(generation)) {
      result.aborted = true;
      return result;
    }
    const size_t end = std::min(keys.size(), begin + options_.page_keys);
    // Owners of each key of the page; per owner, the keys to ask about.
    std::vector<std::vector<size_t>> key_owners(end - begin);
    std::vector<bool> owned_here(end - begin, false);
    absl::flat_hash_map<size_t, std::vector<size_t>> ask;  // node -> key slots
    for (size_t i = begin; i < end; ++i) {
      placement.Owners(keys[i].key, replication, &owners);
      for (size_t o : owners) {
        if (nodes[o].id == options_.self_id) {
          owned_here[i - begin] = true;
        } else {
          key_owners[i - begin].push_back(o);
          ask[o].push_back(i - begin);
        }
      }
    }
    // present[slot][node] : confirmed. Unknown (unreachable) = absent.
    std::vector<absl::flat_hash_map<size_t, bool>> present(end - begin);
    absl::flat_hash_map<size_t, std::shared_ptr<client::Client>> peer;
    absl::flat_hash_map<size_t, bool> reachable;
    for (auto& [node, slots] : ask) {
      auto c = PeerClient(*by_index[node]);
      peer[node] = c;
      reachable[node] = false;
      if (c == nullptr || down.contains(node)) continue;
      std::vector<BlockKey> ask_keys;
      ask_keys.reserve(slots.size());
      for (size_t s : slots) ask_keys.push_back(keys[begin + s].key);
      auto exists = c->Exists(ask_keys);
      if (!exists.ok()) {
        if (Unreachable(exists.status())) down[node] = true;
        absl::MutexLock lock(&mu_);
        ++stats_.push_errors;
        result.error = absl::StrCat("exists on ", nodes[node].id, ": ",
                                    exists.status().ToString());
        continue;
      }
      reachable[node] = true;
      for (size_t j = 0; j < slots.size(); ++j) present[slots[j]][node] = (*exists)[j];
    }
    for (size_t s = 0; s < end - begin; ++s) {
      const BlockKey& key = keys[begin + s].key;
      ++checked;
      bool all_confirmed = true;
      for (size_t o : key_owners[s]) {
        if (present[s][o]) continue;
        if (!reachable[o]) {
          all_confirmed = false;
          continue;
        }
        if (Changed(generation)) {
          result.aborted = true;
          return result;
        }
        auto lease = store_->Get(key);
        if (!lease.ok()) {  // Evicted or removed since the snapshot.
          all_confirmed = false;
          break;
        }
        const auto bytes = lease->bytes();
        if (!bytes_limiter_.Acquire(static_cast<double>(bytes.size())) ||
            !blocks_limiter_.Acquire(1)) {
          result.aborted = true;
          return result;
        }
        // The copy keeps the block's labels (admin filters) and its pin.
        client::PutOptions put_options;
        absl::Duration pinned_for = absl::ZeroDuration();
        if (auto info = store_->Describe(key); info.ok()) {
          put_options.tenant = info->meta.tenant;
          put_options.model = info->meta.model;
          pinned_for = info->pinned_for;
        }
        auto put = peer[o]->Put(key, bytes, put_options);
        if (put.ok() && pinned_for > absl::ZeroDuration()) {
          // The block is there either way; a refused pin (e.g. a TTL over
          // the peer's max_pin_ttl) is reported, not retried.
          absl::Status pin = peer[o]->Pin(key, pinned_for);
          if (!pin.ok()) {
            absl::MutexLock lock(&mu_);
            ++stats_.push_errors;
            result.error = absl::StrCat("pin on ", nodes[o].id, ": ",
                                        pin.ToString());
          }
        }
        if (!put.ok()) {
          all_confirmed = false;
          absl::MutexLock lock(&mu_);
          ++stats_.push_errors;
          result.error = absl::StrCat("put to ", nodes[o].id, ": ",
                                      put.status().ToString());
          if (Unreachable(put.status())) {
            reachable[o] = false;
            down[o] = true;
          }
          continue;
        }
        present[s][o] = true;
        absl::MutexLock lock(&mu_);
        if (!put->already_present) {
          ++stats_.blocks_pushed;
          stats_.bytes_pushed += bytes.size();
        }
      }
      if (!all_confirmed) ++under;
      if (owned_here[s]) continue;
      if (!all_confirmed || key_owners[s].empty()) {
        ++misplaced;
        continue;
      }
      const uint64_t size = keys[begin + s].size;
      absl::Status removed = store_->Remove(key);
      if (removed.ok()) {
        absl::MutexLock lock(&mu_);
        ++stats_.blocks_dropped;
        stats_.bytes_dropped += size;
      }
    }
    absl::MutexLock lock(&mu_);
    stats_.blocks_checked += end - begin;
  }
  result.complete = misplaced == 0 && under == 0;
  {
    absl::MutexLock lock(&mu_);
    stats_.misplaced_blocks = misplaced;
    stats_.under_replicated = under;
    if (draining && misplaced == 0 && store_->SnapshotKeys().empty()) {
      stats_.drained = true;
    }
  }
  Log("info", "rebalance_pass",
      {{"blocks", absl::StrCat(checked)},
       {"misplaced", absl::StrCat(misplaced)},
       {"under_replicated", absl::StrCat(under)},
       {"draining", draining ? "true" : "false"},
       {"error", result.error}});
  return result;
}

}  // namespace strata::cluster
