// ClusterClient: the data path over a Strata cluster (docs/cluster.md).
//
// It follows a MemberSource (a MemberWatcher on etcd, or a
// StaticMemberSource in single-node mode), keeps one strata::client::Client
// per live member (created on first use), and places every block key with
// weighted rendezvous hashing (RendezvousPlacement; weight = the member's
// capacity_bytes, zone = its zone) on R owners:
//
// - Put sends the block to the R owners concurrently. The daemons keep the
//   first write of a key (a second put answers already_present and leaves
//   the stored bytes alone): first write wins on every owner. The put
//   succeeds when every owner that answered acknowledged it and at least one
//   did; owners that are unreachable (UNAVAILABLE, DEADLINE_EXCEEDED) are
//   skipped and listed in `unreachable`. Any other error from an owner fails
//   the put with that error, naming the node.
// - Get asks the owners in preference order and falls back to the next one
//   on NOT_FOUND, UNAVAILABLE, DEADLINE_EXCEEDED and DATA_LOSS (a corrupt
//   block the owner dropped). Every attempt gets at most `attempt_timeout`
//   of the call's deadline, so a hung owner leaves time for a replica. All
//   owners missing the key = NOT_FOUND; none reachable = UNAVAILABLE. Each
//   owner's store verifies the block's checksum before it answers (a
//   corrupt copy is dropped there: DATA_LOSS, and the next owner is asked),
//   so a Get returns the bytes that were put under the key, or an error.
//   The client library itself does not hash what it receives (TCP has its
//   own checksums; shared memory is a local copy).
// - LeadingHits batches the keys per owner: one Exists per owner for the
//   keys it is primary of, then, for keys not confirmed there, one per
//   second owner, and so on; then, as Get, draining members and (for
//   `previous_owners_for` after a change of the member set) the owners under
//   the previous set. The answer is the length of the leading run of keys
//   present on at least one of those.
//
// Owners that just failed with UNAVAILABLE/DEADLINE_EXCEEDED are "suspect"
// for `suspect_for`: reads try them last and writes skip them (unless every
// owner is suspect), so a dead node costs one failed attempt, not one per
// call, until the membership drops it (within the lease TTL).
//
// - After its owners, Get also asks members of capacity 0 (draining daemons,
//   which own nothing but still hold the blocks they have not moved yet),
//   then, for `previous_owners_for` after a change of the member set, the
//   key's owners under the previous set (blocks not pushed yet).
// - A put that no owner takes (all unreachable) is handed to the next-ranked
//   member (`handoff_nodes`); that daemon's rebalancer moves it on.
//
// Placement follows the current member set. The daemons move blocks when it
// changes (cluster/rebalance/rebalancer.h: re-replication after a loss,
// rebalancing after a join, drain), at a bounded rate: until a block has
// reached a new owner, a Get finds it on a remaining old owner through the
// fallback, or misses.
//
// The member set is whatever the source reports: wait for a MemberWatcher's
// first list (WaitSynced) before the first call, or calls answer
// UNAVAILABLE "no live members".
//
// Thread safety: thread-safe. Calls block the caller (sync API).
#ifndef STRATA_CLUSTER_PLACEMENT_CLUSTER_CLIENT_H_
#define STRATA_CLUSTER_PLACEMENT_CLUSTER_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/strata_client.h"
#include "cluster/membership/member.h"
#include "cluster/placement/rendezvous.h"

namespace strata::cluster {

struct ClusterClientOptions {
  // R >= 1 at creation; SetReplication changes it (a client following the
  // cluster config in etcd: FollowClusterConfig in
  // cluster/config_store/config_follower.h).
  size_t replication = 2;
  // Template for every member's Client; `address` is replaced by the
  // member's grpc_address. Fewer UNAVAILABLE retries than a single-node
  // client: a replica is the better retry.
  client::ClientOptions client = [] {
    client::ClientOptions o;
    o.max_attempts = 2;
    return o;
  }();
  absl::Duration attempt_timeout = absl::Seconds(5);
  absl::Duration suspect_for = absl::Seconds(2);
  // After a change of the member set, Get also asks the key's owners under
  // the previous set for this long (the daemons move blocks meanwhile).
  absl::Duration previous_owners_for = absl::Seconds(30);
  // When no owner takes a put, it goes to the first of this many next-ranked
  // members instead (hinted handoff; its daemon moves it to the owners).
  size_t handoff_nodes = 2;
};

struct ClusterPutResult {
  bool already_present = false;          // Some owner had it already.
  std::vector<std::string> acked;        // Owners that hold it now.
  std::vector<std::string> unreachable;  // Owners skipped or unreachable.
  // No owner was reachable: `acked` is one other member holding it for
  // them (its daemon pushes it to the owners when they answer).
  bool handed_off = false;
};

struct ClusterGetResult {
  client::GetResult get;
  std::string node_id;  // The owner that served it.
  size_t owner_rank = 0;  // 0 = primary.
};

class ClusterClient {
 public:
  // INVALID_ARGUMENT naming "replication" when 0. `members` must outlive the
  // ClusterClient.
  static absl::StatusOr<std::unique_ptr<ClusterClient>> Create(
      MemberSource* members, ClusterClientOptions options);
  ~ClusterClient();

  absl::StatusOr<ClusterPutResult> Put(const kvstore::BlockKey& key,
                                       absl::Span<const uint8_t> block,
                                       const client::PutOptions& put = {},
                                       const client::CallOptions& call = {});
  absl::StatusOr<ClusterGetResult> Get(const kvstore::BlockKey& key,
                                       const client::CallOptions& call = {});
  absl::StatusOr<uint32_t> LeadingHits(absl::Span<const kvstore::BlockKey> keys,
                                       const client::CallOptions& call = {});

  // Makes every later call place keys on `replication` owners (calls in
  // flight finish with the R they started with). INVALID_ARGUMENT naming
  // "replication" when 0.
  absl::Status SetReplication(size_t replication);
  size_t replication() const;

  // The owners of `key` under the current member set, best first.
  std::vector<std::string> Owners(const kvstore::BlockKey& key) const;
  // The member set placement currently uses.
  MemberList members() const;

  struct Node;  // Implementation detail.
  struct View;

 private:
  ClusterClient(MemberSource* members, ClusterClientOptions options);
  void OnMembers(const MemberList& members);
  std::shared_ptr<const View> view() const;
  absl::StatusOr<std::shared_ptr<client::Client>> ClientFor(Node& node);
  bool Suspect(const Node& node) const;
  // Where a read looks after a key's owners: draining members (capacity 0),
  // then, for previous_owners_for after a change of the member set, the
  // key's owners under the previous sets (non-suspects first). Appends to
  // `nodes` those not in it yet.
  void AppendReadFallbacks(const View& v, const kvstore::BlockKey& key,
                           std::vector<Node*>* nodes) const;
  void MarkSuspect(Node& node, const absl::Status& status);

  MemberSource* const members_;
  const ClusterClientOptions options_;
  uint64_t listener_id_ = 0;
  mutable std::mutex mu_;
  std::shared_ptr<const View> view_;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_PLACEMENT_CLUSTER_CLIENT_H_
