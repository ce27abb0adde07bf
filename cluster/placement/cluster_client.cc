#include "cluster/placement/cluster_client.h"

#include <algorithm>
#include <atomic>
#include <future>
#include <map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace strata::cluster {

struct ClusterClient::Node {
  explicit Node(Member m) : member(std::move(m)) {}
  const Member member;
  std::mutex mu;
  std::shared_ptr<client::Client> client;  // Under mu.
  std::atomic<int64_t> suspect_until_ns{0};
};

struct ClusterClient::View {
  size_t replication = 1;  // R of every call made on this view.
  RendezvousPlacement placement;
  std::vector<std::shared_ptr<Node>> nodes;  // Index-aligned with placement.
  MemberList members;
  // The views this one replaced (newest first, at most kMaxPrevious), each
  // for previous_owners_for after it was replaced: Get falls back to their
  // owners while the daemons are still moving blocks.
  struct Previous {
    RendezvousPlacement placement;
    std::vector<std::shared_ptr<Node>> nodes;
    absl::Time until;
  };
  static constexpr size_t kMaxPrevious = 4;
  std::vector<Previous> previous;
};

namespace {

bool Unreachable(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsDeadlineExceeded(s);
}

absl::Time DeadlineOf(const client::CallOptions& call,
                      const client::ClientOptions& defaults) {
  return absl::Now() + call.deadline.value_or(defaults.default_deadline);
}

// Options for one attempt: the time left, capped at `cap`.
client::CallOptions Attempt(absl::Time deadline, absl::Duration cap) {
  client::CallOptions o;
  o.deadline = std::max(absl::ZeroDuration(),
                        std::min(deadline - absl::Now(), cap));
  return o;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ClusterClient>> ClusterClient::Create(
    MemberSource* members, ClusterClientOptions options) {
  if (options.replication == 0) {
    return absl::InvalidArgumentError("replication: must be >= 1");
  }
  if (members == nullptr) {
    return absl::InvalidArgumentError("members: null");
  }
  std::unique_ptr<ClusterClient> c(new ClusterClient(members, std::move(options)));
  // Listen first, then read: no change can fall between the two.
  c->listener_id_ = members->AddListener(
      [raw = c.get()](const MemberList& m) { raw->OnMembers(m); });
  c->OnMembers(members->Members());
  return c;
}

ClusterClient::ClusterClient(MemberSource* members, ClusterClientOptions options)
    : members_(members),
      options_(std::move(options)) {
  auto v = std::make_shared<View>();
  v->replication = options_.replication;
  view_ = std::move(v);
}

absl::Status ClusterClient::SetReplication(size_t replication) {
  if (replication == 0) {
    return absl::InvalidArgumentError("replication: must be >= 1");
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (view_->replication == replication) return absl::OkStatus();
  // Rendezvous owners are a ranking, so the owners under the new R are a
  // prefix or an extension of the old ones: reads keep finding blocks on the
  // owners they share while the daemons re-replicate.
  auto next = std::make_shared<View>(*view_);
  next->replication = replication;
  view_ = std::move(next);
  return absl::OkStatus();
}

size_t ClusterClient::replication() const { return view()->replication; }

ClusterClient::~ClusterClient() { members_->RemoveListener(listener_id_); }

void ClusterClient::OnMembers(const MemberList&) {
  std::lock_guard<std::mutex> lock(mu_);
  // Read the set afresh under mu_ rather than trusting the argument: the
  // listener and Create() race, and the last one to run must see the newest.
  const MemberList members = members_->Members();
  auto next = std::make_shared<View>();
  next->replication = view_->replication;
  std::map<std::string, std::shared_ptr<Node>> old;
  for (const auto& n : view_->nodes) old[n->member.node_id] = n;
  std::vector<PlacementNode> placement;
  for (const Member& m : members) {
    std::shared_ptr<Node> node;
    auto it = old.find(m.node_id);
    if (it != old.end() && it->second->member.grpc_address == m.grpc_address) {
      node = it->second;  // Keep its connection.
    } else {
      node = std::make_shared<Node>(m);
    }
    next->nodes.push_back(std::move(node));
    placement.push_back({m.node_id, static_cast<double>(m.capacity_bytes), m.zone});
  }
  next->placement = RendezvousPlacement(std::move(placement));
  next->members = members;
  const absl::Time now = absl::Now();
  if (view_->members != members && !view_->nodes.empty()) {
    next->previous.push_back(
        {view_->placement, view_->nodes, now + options_.previous_owners_for});
  }
  for (const View::Previous& p : view_->previous) {
    if (p.until > now && next->previous.size() < View::kMaxPrevious) {
      next->previous.push_back(p);
    }
  }
  view_ = std::move(next);
}

std::shared_ptr<const ClusterClient::View> ClusterClient::view() const {
  std::lock_guard<std::mutex> lock(mu_);
  return view_;
}

MemberList ClusterClient::members() const { return view()->members; }

std::vector<std::string> ClusterClient::Owners(const kvstore::BlockKey& key) const {
  auto v = view();
  std::vector<std::string> out;
  for (size_t i : v->placement.Owners(key, v->replication)) {
    out.push_back(v->nodes[i]->member.node_id);
  }
  return out;
}

absl::StatusOr<std::shared_ptr<client::Client>> ClusterClient::ClientFor(
    Node& node) {
  std::lock_guard<std::mutex> lock(node.mu);
  if (node.client != nullptr) return node.client;
  client::ClientOptions o = options_.client;
  o.address = node.member.grpc_address;
  auto c = client::Client::Connect(o);
  if (!c.ok()) return c.status();
  node.client = std::shared_ptr<client::Client>(std::move(*c));
  return node.client;
}

bool ClusterClient::Suspect(const Node& node) const {
  return node.suspect_until_ns.load(std::memory_order_relaxed) >
         absl::ToUnixNanos(absl::Now());
}

void ClusterClient::MarkSuspect(Node& node, const absl::Status& status) {
  if (!Unreachable(status)) return;
  node.suspect_until_ns.store(absl::ToUnixNanos(absl::Now() + options_.suspect_for),
                              std::memory_order_relaxed);
}

absl::StatusOr<ClusterPutResult> ClusterClient::Put(
    const kvstore::BlockKey& key, absl::Span<const uint8_t> block,
    const client::PutOptions& put, const client::CallOptions& call) {
  const absl::Time deadline = DeadlineOf(call, options_.client);
  auto v = view();
  const std::vector<size_t> owners =
      v->placement.Owners(key, v->replication);
  if (owners.empty()) {
    return absl::UnavailableError(
        absl::StrCat("put ", key.ToHex(), ": no live members"));
  }
  ClusterPutResult result;
  std::vector<size_t> targets;
  for (size_t i : owners) {
    if (Suspect(*v->nodes[i])) {
      result.unreachable.push_back(v->nodes[i]->member.node_id);
    } else {
      targets.push_back(i);
    }
  }
  if (targets.empty()) {  // Every owner is suspect: try them all anyway.
    targets = owners;
    result.unreachable.clear();
  }
  struct Pending {
    size_t node;
    std::shared_ptr<client::Client> client;  // Outlives its future.
    std::future<absl::StatusOr<client::PutResult>> future;
  };
  std::vector<Pending> pending;
  absl::Status hard_error;
  for (size_t i : targets) {
    auto c = ClientFor(*v->nodes[i]);
    if (!c.ok()) {
      MarkSuspect(*v->nodes[i], c.status());
      if (Unreachable(c.status())) {
        result.unreachable.push_back(v->nodes[i]->member.node_id);
      } else if (hard_error.ok()) {
        hard_error = c.status();
      }
      continue;
    }
    auto f = (*c)->PutAsync(key, block, put,
                            Attempt(deadline, options_.attempt_timeout));
    pending.push_back({i, *std::move(c), std::move(f)});
  }
  for (Pending& p : pending) {
    absl::StatusOr<client::PutResult> r = p.future.get();
    Node& node = *v->nodes[p.node];
    if (r.ok()) {
      result.acked.push_back(node.member.node_id);
      result.already_present = result.already_present || r->already_present;
    } else if (Unreachable(r.status())) {
      MarkSuspect(node, r.status());
      result.unreachable.push_back(node.member.node_id);
    } else if (hard_error.ok()) {
      hard_error = absl::Status(
          r.status().code(),
          absl::StrCat("node ", node.member.node_id, ": ", r.status().message()));
    }
  }
  if (!hard_error.ok()) return hard_error;
  if (result.acked.empty()) {
    // No owner took it: hand it to the best-placed other live member. Its
    // rebalancer pushes the block to the owners once they answer and then
    // drops its copy (cluster/rebalance/rebalancer.h).
    const std::vector<size_t> ranked =
        v->placement.Owners(key, v->replication + options_.handoff_nodes);
    for (size_t k = owners.size(); k < ranked.size() && result.acked.empty(); ++k) {
      Node& node = *v->nodes[ranked[k]];
      if (Suspect(node) || absl::Now() >= deadline) continue;
      auto c = ClientFor(node);
      absl::StatusOr<client::PutResult> r =
          c.ok() ? (*c)->Put(key, block, put,
                             Attempt(deadline, options_.attempt_timeout))
                 : absl::StatusOr<client::PutResult>(c.status());
      if (r.ok()) {
        result.acked.push_back(node.member.node_id);
        result.handed_off = true;
        result.already_present = r->already_present;
      } else {
        MarkSuspect(node, r.status());
      }
    }
  }
  if (result.acked.empty()) {
    return absl::UnavailableError(
        absl::StrCat("put ", key.ToHex(), ": no owner reachable (",
                     absl::StrJoin(result.unreachable, ", "), ")"));
  }
  return result;
}

void ClusterClient::AppendReadFallbacks(const View& v,
                                        const kvstore::BlockKey& key,
                                        std::vector<Node*>* nodes) const {
  auto add = [nodes](Node* node) {
    for (const Node* x : *nodes) {
      if (x->member.node_id == node->member.node_id) return;
    }
    nodes->push_back(node);
  };
  // Members of weight 0: a draining daemon still holds the blocks it has not
  // moved to their new owners yet (docs/cluster.md, "Drain").
  for (const auto& node : v.nodes) {
    if (node->member.capacity_bytes == 0) add(node.get());
  }
  // Shortly after a change of the member set, the owners under the previous
  // sets: a block whose owners changed may not have been pushed to the new
  // ones yet. Suspects among them last (a draining daemon is suspect to
  // writers: it refuses puts, yet serves reads).
  const absl::Time now = absl::Now();
  for (const bool suspects : {false, true}) {
    for (const View::Previous& p : v.previous) {
      if (now >= p.until) continue;
      for (size_t i : p.placement.Owners(key, v.replication)) {
        if (Suspect(*p.nodes[i]) == suspects) add(p.nodes[i].get());
      }
    }
  }
}

absl::StatusOr<ClusterGetResult> ClusterClient::Get(
    const kvstore::BlockKey& key, const client::CallOptions& call) {
  const absl::Time deadline = DeadlineOf(call, options_.client);
  auto v = view();
  std::vector<size_t> owners = v->placement.Owners(key, v->replication);
  if (owners.empty()) {
    return absl::UnavailableError(
        absl::StrCat("get ", key.ToHex(), ": no live members"));
  }
  // Suspects last; ranks stay those of the placement.
  std::vector<std::pair<size_t, size_t>> order;  // (rank, node)
  for (size_t r = 0; r < owners.size(); ++r) order.push_back({r, owners[r]});
  std::stable_partition(order.begin(), order.end(), [&](const auto& o) {
    return !Suspect(*v->nodes[o.second]);
  });
  std::vector<std::pair<size_t, Node*>> tries;  // (rank, node)
  for (const auto& [rank, i] : order) tries.push_back({rank, v->nodes[i].get()});
  // Then draining members and the previous owners (AppendReadFallbacks).
  std::vector<Node*> nodes;
  for (const auto& t : tries) nodes.push_back(t.second);
  AppendReadFallbacks(*v, key, &nodes);
  for (size_t k = tries.size(); k < nodes.size(); ++k) tries.push_back({k, nodes[k]});
  // Last, when an owner was unreachable: the members a put hands a block to
  // when no owner takes it.
  const size_t handoff_from = tries.size();
  {
    const std::vector<size_t> ranked =
        v->placement.Owners(key, v->replication + options_.handoff_nodes);
    for (size_t k = owners.size(); k < ranked.size(); ++k) {
      Node* n = v->nodes[ranked[k]].get();
      const bool tried = std::any_of(tries.begin(), tries.end(), [&](const auto& t) {
        return t.second == n;
      });
      if (!tried) tries.push_back({owners.size() + tries.size(), n});
    }
  }
  bool saw_miss = false, owner_unreachable = false;
  std::vector<std::string> errors;
  for (size_t t = 0; t < tries.size(); ++t) {
    const auto& [rank, node_ptr] = tries[t];
    Node& node = *node_ptr;
    if (absl::Now() >= deadline) break;
    if (t >= handoff_from && !owner_unreachable) break;
    auto c = ClientFor(node);
    absl::StatusOr<client::GetResult> r =
        c.ok() ? (*c)->Get(key, Attempt(deadline, options_.attempt_timeout))
               : absl::StatusOr<client::GetResult>(c.status());
    if (r.ok()) {
      ClusterGetResult out;
      out.get = *std::move(r);
      out.node_id = node.member.node_id;
      out.owner_rank = rank;
      return out;
    }
    const absl::Status& s = r.status();
    if (absl::IsNotFound(s) || absl::IsDataLoss(s)) {
      saw_miss = true;
    } else if (Unreachable(s)) {
      MarkSuspect(node, s);
      if (rank < owners.size()) owner_unreachable = true;
    } else {
      return absl::Status(s.code(), absl::StrCat("node ", node.member.node_id,
                                                 ": ", s.message()));
    }
    errors.push_back(absl::StrCat(node.member.node_id, ": ",
                                  absl::StatusCodeToString(s.code())));
  }
  const std::string what = absl::StrCat("get ", key.ToHex(), ": ",
                                        absl::StrJoin(errors, ", "));
  if (saw_miss) return absl::NotFoundError(what);
  if (absl::Now() >= deadline) return absl::DeadlineExceededError(what);
  return absl::UnavailableError(what);
}

absl::StatusOr<uint32_t> ClusterClient::LeadingHits(
    absl::Span<const kvstore::BlockKey> keys, const client::CallOptions& call) {
  const absl::Time deadline = DeadlineOf(call, options_.client);
  if (keys.empty()) return 0;
  auto v = view();
  const size_t n = keys.size();
  // Who may hold each key, asked in this order: its owners by rank, then
  // (as Get) draining members and the previous owners. In a settled cluster
  // the list is the owners alone.
  std::vector<std::vector<Node*>> candidates(n);
  std::vector<size_t> owner_index;
  for (size_t k = 0; k < n; ++k) {
    v->placement.Owners(keys[k], v->replication, &owner_index);
    for (size_t i : owner_index) candidates[k].push_back(v->nodes[i].get());
    AppendReadFallbacks(*v, keys[k], &candidates[k]);
  }
  std::vector<bool> present(n, false);
  size_t limit = n;  // Keys at or past `limit` cannot matter.
  bool any_answer = false;
  absl::Status last_error;
  for (size_t rank = 0;; ++rank) {
    // node -> the indices of the keys to ask it about, in key order (one
    // batched Exists per node and rank).
    std::map<Node*, std::vector<size_t>> groups;
    for (size_t k = 0; k < limit; ++k) {
      if (!present[k] && rank < candidates[k].size()) {
        groups[candidates[k][rank]].push_back(k);
      }
    }
    if (groups.empty()) break;
    struct Pending {
      Node* node;
      const std::vector<size_t>* indices;
      std::future<absl::StatusOr<std::vector<bool>>> future;
    };
    std::vector<Pending> pending;
    for (const auto& [node, indices] : groups) {
      auto c = ClientFor(*node);
      if (!c.ok()) {
        MarkSuspect(*node, c.status());
        last_error = c.status();
        continue;
      }
      std::vector<kvstore::BlockKey> subset;
      subset.reserve(indices.size());
      for (size_t k : indices) subset.push_back(keys[k]);
      const client::CallOptions attempt =
          Attempt(deadline, options_.attempt_timeout);
      pending.push_back(
          {node, &indices,
           std::async(std::launch::async,
                      [client = *std::move(c), subset = std::move(subset),
                       attempt] { return client->Exists(subset, attempt); })});
    }
    for (Pending& p : pending) {
      absl::StatusOr<std::vector<bool>> r = p.future.get();
      if (!r.ok()) {
        MarkSuspect(*p.node, r.status());
        last_error = r.status();
        continue;
      }
      any_answer = true;
      for (size_t j = 0; j < p.indices->size() && j < r->size(); ++j) {
        if ((*r)[j]) present[(*p.indices)[j]] = true;
      }
    }
    // A key missing on every candidate so far and with none left to ask
    // ends the run.
    for (size_t k = 0; k < limit; ++k) {
      if (!present[k] && candidates[k].size() <= rank + 1) {
        limit = k;
        break;
      }
    }
  }
  size_t hits = 0;
  while (hits < limit && present[hits]) ++hits;
  if (!any_answer && !last_error.ok()) return last_error;
  return static_cast<uint32_t>(hits);
}

}  // namespace strata::cluster
