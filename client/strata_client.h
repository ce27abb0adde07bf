// strata::client::Client — the C++ client of a stratad daemon.
//
// Every RPC has a deadline (CallOptions::deadline, else
// ClientOptions::default_deadline). Calls that fail with UNAVAILABLE are
// retried with exponential backoff and jitter, at most `max_attempts` times in
// all and never past the deadline; no other code is retried. Statuses from the
// daemon arrive unchanged (absl and gRPC codes are the same numbers), so a
// caller can act on the code: NOT_FOUND = miss, DATA_LOSS = the block was
// corrupt and dropped, RESOURCE_EXHAUSTED = back off, INVALID_ARGUMENT = bug.
//
// Async calls return std::future and never block the caller; the block bytes
// given to an async put are copied before the call returns. Sync calls are
// the async ones plus .get().
//
// Batching: BatchPut / BatchGet send up to `max_batch_items` items per RPC
// (larger batches are split and sent concurrently) and report per item.
//
// Zero-copy reads: a caller registers a memory region once and GetInto()
// lands blocks in it directly, with no intermediate buffer owned by the
// client. Over gRPC the bytes are copied once, from the receive buffer into
// the region; the bulk data planes (docs/protocol.md) write them there
// directly (the socket plane: the kernel's copy from the socket; UCX
// rendezvous transfers: UCX places the block into the region; small eager
// UCX replies are copied once from UCX's receive buffer).
//
// Data plane: gRPC carries control and small payloads. When
// ClientOptions::data_plane allows it and the daemon runs a bulk data plane
// (learnt with the Hello RPC at Connect), Put / Get / GetInto of blocks of at
// least `ucx_min_bytes` move over it: UCX (TCP, or shared memory between
// processes of one host, as the UCX_* environment of each process selects)
// or the socket plane (plain TCP); docs/protocol.md. Deadlines, UNAVAILABLE
// retries and status codes are the same on every path. The sync Put sends
// straight from the caller's memory; PutAsync copies the block first (it may
// be freed on return).
//
// Thread safety: a Client is thread-safe; share one per process. It must
// outlive every future it returned.
//
// Threads and CPU in the caller's process: over a local connection
// (data_plane "local"), a call waits for the daemon by polling shared
// memory for a short while, yielding its core between polls, before it
// sleeps (docs/protocol.md, "The message channel"). For blocks of 2 MiB and
// more, the process may also start one helper thread, "strata-hash", that
// hashes a block while the calling thread copies it, when the process's own
// timings say that is faster (kvstore/checksum_helper.h);
// STRATA_CHECKSUM_HELPER=0 in the environment keeps it off.
#ifndef STRATA_CLIENT_STRATA_CLIENT_H_
#define STRATA_CLIENT_STRATA_CLIENT_H_

#include <sys/types.h>

#include <cstdint>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kvstore/block_key.h"

namespace strata::client {

using kvstore::BlockKey;

struct ClientOptions {
  std::string address = "127.0.0.1:7070";
  absl::Duration default_deadline = absl::Seconds(10);
  int max_attempts = 4;  // Total attempts for UNAVAILABLE; >= 1.
  absl::Duration initial_backoff = absl::Milliseconds(20);
  absl::Duration max_backoff = absl::Seconds(1);
  uint64_t max_message_bytes = uint64_t{80} << 20;
  size_t max_batch_items = 128;
  // "grpc": every byte over gRPC. "ucx": bulk over UCX, required: Connect
  // fails with UNAVAILABLE naming "data_plane" unless Hello returns a UCX
  // address and a UCX round trip to it succeeds within default_deadline.
  // "tcp": bulk over the socket data plane, required, likewise. "local":
  // the socket plane's local connections with the daemon's shared DRAM
  // arena (same host, same user; docs/protocol.md), required, likewise.
  // "auto": local connections when the daemon offers them, else UCX when it
  // runs over shared memory, else the socket plane, else UCX over TCP
  // (measured: bench/results/service.md), else gRPC (Connect still
  // succeeds).
  std::string data_plane = "auto";
  // Put blocks smaller than this, and GetInto with a smaller capacity, go
  // over gRPC even when a bulk plane is up (Get, whose size is unknown in
  // advance, always takes the bulk plane then). Default 0, every block over UCX: measured
  // (bench/results/data_plane.md), UCX is 1.2-11x gRPC from 256 KiB up;
  // below 64 KiB it is within noise of gRPC for one client and ahead with
  // four (even for TCP at 64 KiB). No size favoured gRPC.
  uint64_t ucx_min_bytes = 0;
  // Local connections: a daemon's shared arena of up to this many bytes is
  // mapped in at Connect (about 0.25 s per GiB with 4 KiB pages), so no
  // copy pays page faults; a larger one is mapped in 2 MiB at a time as
  // copies first touch it (each first touch then costs about 0.5 ms), which
  // keeps Connect short and page tables to what this process uses.
  uint64_t populate_arena_max_bytes = uint64_t{4} << 30;
  // Local connections: the user id the daemon must run as. Unset, the
  // client uses the arena of a daemon of its own user, or of another user
  // that shared its local connections with one of the client's groups
  // (docs/protocol.md, "Trust"). Set (e.g. to the uid of the service user
  // stratad runs as), the daemon serving the local socket (SO_PEERCRED)
  // must also run as exactly this user, or its arena is not used: "local"
  // fails Connect with UNAVAILABLE, its message naming "local_daemon_uid";
  // "auto" takes the next plane (which for UCX over shared memory is not
  // checked for the daemon's user). (uid_t)-1 is INVALID_ARGUMENT.
  std::optional<uid_t> local_daemon_uid;
};

struct CallOptions {
  std::optional<absl::Duration> deadline;  // From the call's start.
};

struct PutOptions {
  // true: acknowledged only once on the SSD tier. false: the daemon's
  // write_through setting decides (a client cannot opt out of it).
  bool durable = false;
  std::string tenant;    // Labels for admin filters.
  std::string model;
};

struct PutResult {
  bool already_present = false;
};

struct GetResult {
  std::vector<uint8_t> block;  // Verified encoded block.
  std::string served_from;     // "dram" or "ssd".
};

// A caller-owned memory region registered for GetInto. The caller keeps the
// memory alive until Unregister (or the Client's destruction).
struct BufferHandle {
  uint64_t id = 0;
};

struct PrefixLookupResult {
  uint32_t hit_chunks = 0;
  uint32_t hit_tokens = 0;
  std::vector<BlockKey> keys;
};

struct TierStats {
  std::string tier;
  uint64_t capacity_bytes = 0, used_bytes = 0, blocks = 0, hits = 0,
           misses = 0, evictions = 0, demotions = 0, promotions = 0,
           checksum_failures = 0, write_failures = 0;
};

struct ServerStats {
  uint64_t puts = 0, duplicate_puts = 0, rejected_puts = 0, gets = 0,
           get_hits = 0, get_misses = 0, removes = 0, pinned_blocks = 0,
           leased_blocks = 0, uptime_ms = 0;
  bool draining = false;
  std::string version;
  std::vector<TierStats> tiers;
};

struct EvictFilter {
  std::string tenant, model, key_prefix;
  absl::Duration min_age = absl::ZeroDuration();
  bool dry_run = false;
  bool include_pinned = false;
};

struct EvictResult {
  uint64_t blocks = 0, bytes = 0, skipped_pinned = 0;
};

// Key namespace for PrefixLookup; mirrors kvstore::KeyNamespace.
using kvstore::KeyNamespace;

class Client {
 public:
  // Validates options (INVALID_ARGUMENT naming the field) and creates the
  // channel. With data_plane "grpc" it does not wait for the daemon: the
  // first call may fail with UNAVAILABLE (after retries) if it is not up.
  // Otherwise it asks the daemon for its data planes (Hello) and connects to
  // the one `data_plane` picks; "auto" falls back to gRPC when none works,
  // "ucx", "tcp" and "local" fail with UNAVAILABLE naming "data_plane".
  static absl::StatusOr<std::unique_ptr<Client>> Connect(
      const ClientOptions& options);
  virtual ~Client() = default;

  // ---- Data path, async.
  virtual std::future<absl::StatusOr<PutResult>> PutAsync(
      const BlockKey& key, absl::Span<const uint8_t> block,
      const PutOptions& put = {}, const CallOptions& call = {}) = 0;
  virtual std::future<absl::StatusOr<GetResult>> GetAsync(
      const BlockKey& key, const CallOptions& call = {}) = 0;
  // Lands the block at [offset, offset + capacity) of a registered buffer and
  // yields its size. OUT_OF_RANGE naming "capacity" when it does not fit;
  // NOT_FOUND naming "buffer" for an unknown handle; INVALID_ARGUMENT naming
  // "offset" when the range leaves the buffer.
  virtual std::future<absl::StatusOr<size_t>> GetIntoAsync(
      const BlockKey& key, BufferHandle buffer, uint64_t offset,
      uint64_t capacity, const CallOptions& call = {}) = 0;
  virtual std::future<std::vector<absl::StatusOr<PutResult>>> BatchPutAsync(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<const uint8_t>> blocks,
      const PutOptions& put = {}, const CallOptions& call = {}) = 0;
  virtual std::future<std::vector<absl::StatusOr<GetResult>>> BatchGetAsync(
      absl::Span<const BlockKey> keys, const CallOptions& call = {}) = 0;
  virtual std::future<absl::StatusOr<uint32_t>> LeadingHitsAsync(
      absl::Span<const BlockKey> keys, const CallOptions& call = {}) = 0;

  // ---- Data path, sync (the async call + get(); Put may skip PutAsync's
  // copy of the block because the caller's memory outlives the call, and
  // over UCX Put, Get and GetInto may send and wait on the calling thread,
  // sparing two thread hand-offs per call).
  virtual absl::StatusOr<PutResult> Put(const BlockKey& key,
                                        absl::Span<const uint8_t> block,
                                        const PutOptions& put = {},
                                        const CallOptions& call = {}) {
    return PutAsync(key, block, put, call).get();
  }
  virtual absl::StatusOr<GetResult> Get(const BlockKey& key,
                                        const CallOptions& call = {}) {
    return GetAsync(key, call).get();
  }
  virtual absl::StatusOr<size_t> GetInto(const BlockKey& key,
                                         BufferHandle buffer, uint64_t offset,
                                         uint64_t capacity,
                                         const CallOptions& call = {}) {
    return GetIntoAsync(key, buffer, offset, capacity, call).get();
  }
  absl::StatusOr<uint32_t> LeadingHits(absl::Span<const BlockKey> keys,
                                       const CallOptions& call = {}) {
    return LeadingHitsAsync(keys, call).get();
  }
  virtual absl::StatusOr<std::vector<bool>> Exists(
      absl::Span<const BlockKey> keys, const CallOptions& call = {}) = 0;
  virtual absl::StatusOr<PrefixLookupResult> PrefixLookup(
      const KeyNamespace& ns, absl::Span<const uint32_t> tokens,
      const CallOptions& call = {}) = 0;
  virtual absl::Status Remove(const BlockKey& key,
                              const CallOptions& call = {}) = 0;
  virtual absl::Status Pin(const BlockKey& key, absl::Duration ttl,
                           const CallOptions& call = {}) = 0;
  virtual absl::Status Unpin(const BlockKey& key,
                             const CallOptions& call = {}) = 0;

  // ---- Registered buffers.
  // INVALID_ARGUMENT naming "data"/"size" for null or empty regions.
  virtual absl::StatusOr<BufferHandle> RegisterBuffer(void* data,
                                                      size_t size) = 0;
  // Once it returns, no call writes into the buffer any more: it waits for
  // UCX transfers into it that are in flight (bounded by their deadlines);
  // GetInto calls still running on it answer NOT_FOUND naming "buffer".
  virtual absl::Status UnregisterBuffer(BufferHandle buffer) = 0;

  // ---- Admin.
  virtual absl::StatusOr<ServerStats> Stats(const CallOptions& call = {}) = 0;
  virtual absl::StatusOr<EvictResult> Evict(const EvictFilter& filter,
                                            const CallOptions& call = {}) = 0;
  virtual absl::Status Drain(const CallOptions& call = {}) = 0;
  virtual absl::StatusOr<std::string> GetConfig(
      const CallOptions& call = {}) = 0;
  // gRPC health check of the DataService: OK when serving.
  virtual absl::Status Health(const CallOptions& call = {}) = 0;

  // The bulk data path chosen at Connect: "grpc", or "ucx:" and the UCX
  // transports carrying it (e.g. "ucx:tcp", "ucx:sysv,cma").
  virtual std::string DataPlane() const = 0;
};

}  // namespace strata::client

#endif  // STRATA_CLIENT_STRATA_CLIENT_H_
