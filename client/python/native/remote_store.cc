// RemoteStore's backend: client::Client (client/strata_client.h) connected to
// a stratad. GetInto registers the caller's memory for the one call (a map
// entry in the client; the UCX data plane then lands the block in it
// directly). Prefetch is the client's BatchGetAsync.
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/python/native/stores.h"
#include "client/strata_client.h"
#include "common/status_macros.h"

namespace strata::python {
namespace {

using client::Client;

BlockResult Own(absl::StatusOr<client::GetResult> r) {
  if (!r.ok()) return r.status();
  return std::make_shared<OwnedBlock>(std::move(r->block));
}

// A block inside a finished prefetch's shared state (no copy): the
// shared_future keeps the state, and so the bytes, alive.
class PrefetchedBlock : public HeldBlock {
 public:
  using Results = std::vector<absl::StatusOr<client::GetResult>>;
  PrefetchedBlock(std::shared_future<Results> state, const std::vector<uint8_t>* b)
      : state_(std::move(state)), bytes_(b) {}
  absl::Span<const uint8_t> bytes() const override { return *bytes_; }

 private:
  std::shared_future<Results> state_;
  const std::vector<uint8_t>* bytes_;
};

// Keeps the client alive while its future is pending (client first: it is
// destroyed after the future).
class RemotePrefetch : public PrefetchHandle {
 public:
  using Results = PrefetchedBlock::Results;
  RemotePrefetch(std::shared_ptr<Client> client, std::future<Results> f)
      : client_(std::move(client)), future_(f.share()) {}
  bool Wait(absl::Duration timeout) override {
    if (timeout == absl::InfiniteDuration()) {
      future_.wait();
      return true;
    }
    return future_.wait_for(absl::ToChronoNanoseconds(timeout)) ==
           std::future_status::ready;
  }
  std::vector<BlockResult> Take() override {
    std::vector<BlockResult> out;
    for (const auto& r : future_.get()) {
      if (r.ok()) {
        out.push_back(std::make_shared<PrefetchedBlock>(future_, &r->block));
      } else {
        out.push_back(r.status());
      }
    }
    return out;
  }

 private:
  std::shared_ptr<Client> client_;
  std::shared_future<Results> future_;  // Const use only: safe to share.
};

class RemoteBackend : public StoreBackend {
 public:
  explicit RemoteBackend(std::shared_ptr<Client> client)
      : client_(std::move(client)) {}

  absl::StatusOr<bool> Put(const BlockKey& key, absl::Span<const uint8_t> block,
                           const PutArgs& args) override {
    STRATA_ASSIGN_OR_RETURN(client::PutResult r,
                            client_->Put(key, block, PutOptionsOf(args)));
    return !r.already_present;
  }

  std::vector<absl::StatusOr<bool>> BatchPut(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<const uint8_t>> blocks,
      const PutArgs& args) override {
    std::vector<absl::StatusOr<bool>> out;
    for (auto& r : client_->BatchPutAsync(keys, blocks, PutOptionsOf(args)).get()) {
      if (r.ok()) {
        out.push_back(!r->already_present);
      } else {
        out.push_back(r.status());
      }
    }
    return out;
  }

  BlockResult Get(const BlockKey& key) override { return Own(client_->Get(key)); }

  absl::StatusOr<size_t> GetInto(const BlockKey& key,
                                 absl::Span<uint8_t> dst) override {
    STRATA_ASSIGN_OR_RETURN(client::BufferHandle h,
                            client_->RegisterBuffer(dst.data(), dst.size()));
    absl::StatusOr<size_t> n = client_->GetInto(key, h, 0, dst.size());
    const absl::Status unregistered = client_->UnregisterBuffer(h);
    if (n.ok() && !unregistered.ok()) return unregistered;
    return n;
  }

  std::vector<absl::StatusOr<size_t>> BatchGetInto(
      absl::Span<const BlockKey> keys,
      absl::Span<const absl::Span<uint8_t>> dsts) override {
    std::vector<absl::StatusOr<size_t>> out(keys.size());
    std::vector<client::BufferHandle> handles(keys.size());
    std::vector<std::future<absl::StatusOr<size_t>>> calls(keys.size());
    std::vector<bool> registered(keys.size(), false);
    for (size_t i = 0; i < keys.size(); ++i) {  // All in flight at once.
      absl::StatusOr<client::BufferHandle> h =
          client_->RegisterBuffer(dsts[i].data(), dsts[i].size());
      if (!h.ok()) {
        out[i] = h.status();
        continue;
      }
      handles[i] = *h;
      registered[i] = true;
      calls[i] = client_->GetIntoAsync(keys[i], *h, 0, dsts[i].size());
    }
    for (size_t i = 0; i < keys.size(); ++i) {
      if (!registered[i]) continue;
      out[i] = calls[i].get();
      const absl::Status unregistered = client_->UnregisterBuffer(handles[i]);
      if (out[i].ok() && !unregistered.ok()) out[i] = unregistered;
    }
    return out;
  }

  absl::StatusOr<std::vector<bool>> Exists(
      absl::Span<const BlockKey> keys) override {
    return client_->Exists(keys);
  }

  absl::StatusOr<size_t> LeadingHits(absl::Span<const BlockKey> keys) override {
    STRATA_ASSIGN_OR_RETURN(uint32_t n, client_->LeadingHits(keys));
    return n;
  }

  std::unique_ptr<PrefetchHandle> Prefetch(std::vector<BlockKey> keys) override {
    return std::make_unique<RemotePrefetch>(client_, client_->BatchGetAsync(keys));
  }

  absl::Status Remove(const BlockKey& key) override { return client_->Remove(key); }
  absl::Status Pin(const BlockKey& key, absl::Duration ttl) override {
    return client_->Pin(key, ttl);
  }
  absl::Status Unpin(const BlockKey& key) override { return client_->Unpin(key); }

  absl::StatusOr<StatsValue> Stats() override {
    STRATA_ASSIGN_OR_RETURN(client::ServerStats s, client_->Stats());
    StatsValue v;
    v.counters = {{"puts", s.puts},
                  {"duplicate_puts", s.duplicate_puts},
                  {"rejected_puts", s.rejected_puts},
                  {"gets", s.gets},
                  {"get_hits", s.get_hits},
                  {"get_misses", s.get_misses},
                  {"removes", s.removes},
                  {"pinned_blocks", s.pinned_blocks},
                  {"leased_blocks", s.leased_blocks},
                  {"uptime_ms", s.uptime_ms},
                  {"draining", s.draining ? 1u : 0u}};
    v.labels = {{"version", s.version}, {"data_plane", client_->DataPlane()}};
    for (const client::TierStats& t : s.tiers) {
      v.tiers.push_back({t.tier,
                         {{"capacity_bytes", t.capacity_bytes},
                          {"used_bytes", t.used_bytes},
                          {"blocks", t.blocks},
                          {"hits", t.hits},
                          {"misses", t.misses},
                          {"evictions", t.evictions},
                          {"demotions", t.demotions},
                          {"promotions", t.promotions},
                          {"checksum_failures", t.checksum_failures},
                          {"write_failures", t.write_failures}}});
    }
    return v;
  }

  std::string DataPlane() const override { return client_->DataPlane(); }

 private:
  static client::PutOptions PutOptionsOf(const PutArgs& args) {
    client::PutOptions p;
    p.durable = args.durable;
    p.tenant = args.tenant;
    p.model = args.model;
    return p;
  }

  std::shared_ptr<Client> client_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<StoreBackend>> ConnectRemoteStore(
    const RemoteStoreArgs& args) {
  client::ClientOptions options;
  options.address = args.address;
  options.default_deadline = absl::Milliseconds(args.deadline_ms);
  options.data_plane = args.data_plane;
  options.max_attempts = args.max_attempts;
  options.ucx_min_bytes = args.ucx_min_bytes;
  if (args.local_daemon_uid.has_value()) {
    // Only what uid_t cannot hold is refused here; which ids name a user is
    // ClientOptions' rule (Connect checks it).
    const int64_t uid = *args.local_daemon_uid;
    if (uid < 0 || uid > int64_t{UINT32_MAX}) {
      return absl::InvalidArgumentError(absl::StrCat(
          "local_daemon_uid: ", uid, " is not a number from 0 to 2^32-1"));
    }
    options.local_daemon_uid = static_cast<uid_t>(uid);
  }
  STRATA_ASSIGN_OR_RETURN(std::unique_ptr<Client> c, Client::Connect(options));
  return std::shared_ptr<StoreBackend>(
      std::make_shared<RemoteBackend>(std::shared_ptr<Client>(std::move(c))));
}

}  // namespace strata::python
