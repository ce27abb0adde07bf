// EtcdClient: a thin C++ client of etcd's v3 gRPC API (KV, Lease, Watch),
// over stubs generated with our protoc/grpc_cpp_plugin from etcd's own protos
// (proto/etcd/CMakeLists.txt). It covers what membership needs: Put with a
// lease, Get of a key or a prefix, Delete, LeaseGrant / LeaseRevoke, a lease
// keepalive bidi stream, and a prefix Watch bidi stream that reconnects.
//
// Every unary call has a deadline (EtcdOptions::call_timeout). Statuses keep
// gRPC's codes (UNAVAILABLE when etcd is down, DEADLINE_EXCEEDED, ...) with
// the operation named in the message. Unary calls are not retried here: the
// callers (MembershipRegistry, MemberWatcher) loop with backoff.
//
// The channel reconnects quickly after an etcd restart (reconnect backoff
// 100 ms .. 1 s) and pings idle connections (every 10 s; etcd's default
// --grpc-keepalive-min-time is 5 s) so that streams to a dead etcd fail.
//
// Thread safety: EtcdClient is thread-safe. EtcdKeepAlive and EtcdWatch run
// their own threads; destroying them stops those threads (joins), so their
// callbacks must not destroy them.
#ifndef STRATA_CLUSTER_MEMBERSHIP_ETCD_CLIENT_H_
#define STRATA_CLUSTER_MEMBERSHIP_ETCD_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Channel;
}

namespace strata::cluster {

struct EtcdOptions {
  // "HOST:PORT", "http://HOST:PORT", or a comma-separated list of IPv4
  // "A.B.C.D:PORT" endpoints of one cluster (tried in order, failing over).
  std::string endpoints = "127.0.0.1:2379";
  absl::Duration call_timeout = absl::Seconds(5);
};

struct EtcdKeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t version = 0;
  int64_t lease = 0;
};

struct EtcdRangeResult {
  std::vector<EtcdKeyValue> kvs;
  int64_t revision = 0;  // The store's revision when it was read.
};

struct EtcdLease {
  int64_t id = 0;
  int64_t ttl_s = 0;  // As granted (etcd may raise it to its minimum).
};

struct EtcdEvent {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  EtcdKeyValue kv;  // For kDelete: key and mod_revision only.
};

// The end of the key range holding every key that starts with `prefix`
// (etcd's prefix convention).
std::string EtcdPrefixEnd(const std::string& prefix);

class EtcdKeepAlive;
class EtcdWatch;

class EtcdClient {
 public:
  // INVALID_ARGUMENT naming "endpoints" for an empty or malformed list. Does
  // not connect: the first call may fail with UNAVAILABLE.
  static absl::StatusOr<std::unique_ptr<EtcdClient>> Create(
      const EtcdOptions& options);
  ~EtcdClient();

  // Returns the revision of the write. lease 0 = no lease.
  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                              int64_t lease = 0);
  // Puts only when `key` does not exist. Returns true when it was written.
  absl::StatusOr<bool> PutIfAbsent(const std::string& key,
                                   const std::string& value, int64_t lease = 0);
  absl::StatusOr<EtcdRangeResult> Get(const std::string& key);
  absl::StatusOr<EtcdRangeResult> GetPrefix(const std::string& prefix);
  // Returns the number of keys deleted.
  absl::StatusOr<int64_t> Delete(const std::string& key);

  // Compare-and-put in one etcd transaction: writes `value` only when the
  // key's mod_revision is `expected_mod_revision` (0 = the key must not
  // exist). Versioned config (cluster/config_store.h) is built on it.
  struct CasResult {
    bool succeeded = false;
    int64_t revision = 0;  // The write's revision when it succeeded.
    // When it did not: the key's current mod_revision (0 = absent).
    int64_t current_mod_revision = 0;
  };
  absl::StatusOr<CasResult> PutIfModRevision(const std::string& key,
                                             const std::string& value,
                                             int64_t expected_mod_revision);

  absl::StatusOr<EtcdLease> LeaseGrant(absl::Duration ttl);
  // NOT_FOUND when the lease does not exist (any more).
  absl::Status LeaseRevoke(int64_t lease);
  // Remaining TTL in seconds; NOT_FOUND when the lease does not exist.
  absl::StatusOr<int64_t> LeaseTimeToLive(int64_t lease);

  // Keeps `lease` alive over a LeaseKeepAlive stream, renewing every
  // `interval` (ttl/3 is usual). `on_lost` runs once, on the keepalive's
  // thread, when etcd answers that the lease no longer exists (expired or
  // revoked); the keepalive then stops. While etcd is unreachable it keeps
  // reopening the stream: only etcd decides that a lease is gone.
  std::unique_ptr<EtcdKeepAlive> KeepAlive(int64_t lease,
                                           absl::Duration interval,
                                           std::function<void()> on_lost);

  // Watches every key under `prefix` from `start_revision` (0 = from now).
  // `on_events` gets each batch of events with the response's store
  // revision, on the watch's thread, in revision order. When the stream
  // breaks it reopens from the next unseen revision (backoff 100 ms .. 1 s).
  // When it cannot resume without a gap — the revision was compacted, the
  // watch was canceled, or etcd's revision went backwards (a new cluster) —
  // it calls `on_reset` with the reason and stops: the caller must Get the
  // prefix again and start a new watch. With `resume` false it does that on
  // every break too (UNAVAILABLE): for callers that prefer a fresh, gap-free
  // list after any disconnection (MemberWatcher does).
  std::unique_ptr<EtcdWatch> WatchPrefix(
      const std::string& prefix, int64_t start_revision,
      std::function<void(const std::vector<EtcdEvent>&, int64_t revision)>
          on_events,
      std::function<void(const absl::Status&)> on_reset, bool resume = true);

  const EtcdOptions& options() const { return options_; }

  struct Stubs;  // Implementation detail (shared with the stream threads).

 private:
  EtcdClient(EtcdOptions options, std::shared_ptr<grpc::Channel> channel);

  EtcdOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<Stubs> stubs_;
};

class EtcdKeepAlive {
 public:
  virtual ~EtcdKeepAlive() = default;
  // Time of the last renewal etcd acknowledged (construction time before).
  virtual absl::Time last_renewal() const = 0;
  // Renewals acknowledged so far.
  virtual uint64_t renewals() const = 0;
};

class EtcdWatch {
 public:
  virtual ~EtcdWatch() = default;
};

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_MEMBERSHIP_ETCD_CLIENT_H_
