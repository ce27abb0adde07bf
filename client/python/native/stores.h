// The store backends behind strata.LocalStore and strata.RemoteStore: one
// interface (StoreBackend) with an in-process TieredStore implementation
// (local_store.cc) and a stratad client implementation (remote_store.cc).
// store_bindings.cc binds it to Python once for both.
//
// Contracts: every method is called WITHOUT the GIL and is thread-safe (the
// C++ store and client are). A miss is NOT_FOUND (the bindings turn it into
// None); every other error is returned as the C++ layer reports it. Objects
// a backend hands out (HeldBlock, PrefetchHandle) keep the store alive, so
// they stay valid after the Python store is closed.
#ifndef STRATA_CLIENT_PYTHON_NATIVE_STORES_H_
#define STRATA_CLIENT_PYTHON_NATIVE_STORES_H_

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvstore/block_key.h"

namespace strata::python {

using kvstore::BlockKey;

// A verified block's bytes, readable while this object lives.
class HeldBlock {
 public:
  virtual ~HeldBlock() = default;
  virtual absl::Span<const uint8_t> bytes() const = 0;
};

using BlockResult = absl::StatusOr<std::shared_ptr<const HeldBlock>>;

// A block in memory of its own.
class OwnedBlock : public HeldBlock {
 public:
  explicit OwnedBlock(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
  absl::Span<const uint8_t> bytes() const override { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

// An asynchronous batch read (prefetch).
class PrefetchHandle {
 public:
  virtual ~PrefetchHandle() = default;
  // Waits up to `timeout` (absl::InfiniteDuration(): until done); true once
  // the reads are finished.
  virtual bool Wait(absl::Duration timeout) = 0;
  // One result per key, in order; waits until done. Call at most once.
  virtual std::vector<BlockResult> Take() = 0;
};

struct PutArgs {
  bool durable = false;
  std::string tenant;
  std::string model;
};

// Counters and labels of stats(), as the bindings turn them into a dict.
struct StatsValue {
  std::map<std::string, uint64_t> counters;
  std::map<std::string, std::string> labels;
  std::vector<std::pair<std::string, std::map<std::string, uint64_t>>> tiers;
};

class StoreBackend {
 public:
  virtual ~StoreBackend() = default;

  // OK(true) when stored, OK(false) when the key already existed.
  virtual absl::StatusOr<bool> Put(const BlockKey& key,
                                   absl::Span<const uint8_t> block,
                                   const PutArgs& args) = 0;
  virtual std::vector<absl::StatusOr<bool>> BatchPut(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<const uint8_t>> blocks,
      const PutArgs& args) = 0;
  virtual BlockResult Get(const BlockKey& key) = 0;
  // Lands the verified block at the start of `dst`; its size.
  virtual absl::StatusOr<size_t> GetInto(const BlockKey& key,
                                         absl::Span<uint8_t> dst) = 0;
  virtual std::vector<absl::StatusOr<size_t>> BatchGetInto(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<uint8_t>> dsts) = 0;
  virtual absl::StatusOr<std::vector<bool>> Exists(
      absl::Span<const BlockKey> keys) = 0;
  virtual absl::StatusOr<size_t> LeadingHits(
      absl::Span<const BlockKey> keys) = 0;
  // Starts reading `keys` in the background (into the fastest tier, and into
  // memory the handle holds). Never blocks on the reads. Once Wait() is true
  // the handle no longer uses the store (its results are its own).
  virtual std::unique_ptr<PrefetchHandle> Prefetch(
      std::vector<BlockKey> keys) = 0;
  virtual absl::Status Remove(const BlockKey& key) = 0;
  virtual absl::Status Pin(const BlockKey& key, absl::Duration ttl) = 0;
  virtual absl::Status Unpin(const BlockKey& key) = 0;
  virtual absl::StatusOr<StatsValue> Stats() = 0;
  // "local", "grpc" or "ucx:<transports>".
  virtual std::string DataPlane() const = 0;
};

struct LocalStoreArgs {
  uint64_t dram_bytes = uint64_t{1} << 30;
  std::string ssd_path;  // Empty: no SSD tier.
  uint64_t ssd_bytes = 0;  // 0: the TieredStore default (16 GiB).
  bool write_through = false;
  bool ssd_sync_writes = false;
  std::string dram_policy = "lru";
  std::string ssd_policy = "lru";
};
absl::StatusOr<std::shared_ptr<StoreBackend>> OpenLocalStore(
    const LocalStoreArgs& args);

struct RemoteStoreArgs {
  std::string address;
  int64_t deadline_ms = 5000;
  std::string data_plane = "auto";
  int max_attempts = 4;
  uint64_t ucx_min_bytes = 0;
  // ClientOptions'; Python passes any int, checked by ConnectRemoteStore.
  std::optional<int64_t> local_daemon_uid;
};
absl::StatusOr<std::shared_ptr<StoreBackend>> ConnectRemoteStore(
    const RemoteStoreArgs& args);

}  // namespace strata::python

#endif  // STRATA_CLIENT_PYTHON_NATIVE_STORES_H_
