// Member: one stratad node of a Strata cluster, as registered in etcd under
// <prefix>members/<node_id> (docs/cluster.md), and the MemberSource interface
// through which clients and daemons see the live member set — from etcd
// (MemberWatcher) or from a fixed list (StaticMemberSource: single-node mode
// and tests, no etcd).
//
// Thread safety: the functions are pure; StaticMemberSource is thread-safe.
#ifndef STRATA_CLUSTER_MEMBERSHIP_MEMBER_H_
#define STRATA_CLUSTER_MEMBERSHIP_MEMBER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::cluster {

// Version of the record layout and of the key layout under the prefix.
inline constexpr uint32_t kMemberFormatVersion = 1;
// Default etcd key prefix; members live under "<prefix>members/".
inline constexpr std::string_view kDefaultEtcdPrefix = "/strata/v1/";

struct Member {
  std::string node_id;
  std::string grpc_address;
  std::string ucx_address;
  uint64_t capacity_bytes = 0;
  std::string zone;
  uint64_t incarnation = 0;
  int64_t registered_unix_ms = 0;
  std::string version;

  friend bool operator==(const Member&, const Member&) = default;
};

// OK, or INVALID_ARGUMENT naming the field ("node_id", "grpc_address").
absl::Status ValidateMember(const Member& m);
absl::Status ValidateNodeId(std::string_view node_id);

// The binary protobuf strata.cluster.v1.Member (cluster/membership/member.proto).
std::string EncodeMember(const Member& m);
// INVALID_ARGUMENT for bytes that do not parse, a newer format_version, or a
// record that fails ValidateMember.
absl::StatusOr<Member> DecodeMember(std::string_view bytes);

// "<prefix>members/" and "<prefix>members/<node_id>". The prefix must end
// with '/'.
std::string MembersPrefix(std::string_view prefix);
std::string MemberKey(std::string_view prefix, std::string_view node_id);

// "node_id=a grpc=127.0.0.1:7070 capacity=1073741824 zone=z1 incarnation=..."
std::string MemberDebugString(const Member& m);

// The live member set, sorted by node_id.
using MemberList = std::vector<Member>;

class MemberSource {
 public:
  using Listener = std::function<void(const MemberList&)>;
  virtual ~MemberSource() = default;
  // The current set, sorted by node_id.
  virtual MemberList Members() const = 0;
  // Calls `listener` with the new set after every change, on the source's
  // own thread, one call at a time, in order. Listeners must not call
  // AddListener/RemoveListener. Returns an id for RemoveListener.
  virtual uint64_t AddListener(Listener listener) = 0;
  // Once it returns, `id`'s listener is not running and will not run again.
  virtual void RemoveListener(uint64_t id) = 0;
};

// A fixed member list (single-node mode, no etcd; tests). SetMembers()
// replaces it and notifies the listeners on the caller's thread.
class StaticMemberSource : public MemberSource {
 public:
  explicit StaticMemberSource(MemberList members = {});
  MemberList Members() const override;
  uint64_t AddListener(Listener listener) override;
  void RemoveListener(uint64_t id) override;
  void SetMembers(MemberList members);

 private:
  mutable std::mutex mu_;
  MemberList members_;
  std::mutex listeners_mu_;  // Held while listeners run.
  std::map<uint64_t, Listener> listeners_;
  uint64_t next_id_ = 1;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_MEMBERSHIP_MEMBER_H_
