// strata::client::Client over one gRPC channel (the callback API; retries on
// grpc::Alarm, see rpc_call.h). Batch calls are in batch_calls.cc; the UCX
// data plane's discovery and puts in data_plane_calls.cc.
#include "client/grpc_client.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <climits>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/wire.h"
#include "common/status_macros.h"

namespace strata::client {
namespace internal {
namespace {

absl::Status ValidateOptions(const ClientOptions& o) {
  if (o.address.empty()) {
    return absl::InvalidArgumentError("address: empty");
  }
  if (o.default_deadline <= absl::ZeroDuration() ||
      o.default_deadline == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("default_deadline: must be positive and finite, got ",
                     absl::FormatDuration(o.default_deadline)));
  }
  if (o.local_daemon_uid.has_value() &&
      *o.local_daemon_uid == static_cast<uid_t>(-1)) {
    return absl::InvalidArgumentError(
        "local_daemon_uid: (uid_t)-1 names no user (no daemon runs as it)");
  }
  if (o.max_attempts < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_attempts: must be at least 1, got ", o.max_attempts));
  }
  if (o.initial_backoff <= absl::ZeroDuration() ||
      o.initial_backoff == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("initial_backoff: must be positive and finite, got ",
                     absl::FormatDuration(o.initial_backoff)));
  }
  if (o.max_backoff < o.initial_backoff ||
      o.max_backoff == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_backoff: must be finite and at least initial_backoff (",
        absl::FormatDuration(o.initial_backoff), "), got ",
        absl::FormatDuration(o.max_backoff)));
  }
  if (o.max_message_bytes < kMinMessageBytes ||
      o.max_message_bytes > static_cast<uint64_t>(INT_MAX)) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_message_bytes: must be in [", kMinMessageBytes, ", ",
                     INT_MAX, "], got ", o.max_message_bytes));
  }
  if (o.data_plane != "grpc" && o.data_plane != "ucx" &&
      o.data_plane != "tcp" && o.data_plane != "local" &&
      o.data_plane != "auto") {
    return absl::InvalidArgumentError(absl::StrCat(
        "data_plane: \"", o.data_plane,
        "\" (want grpc, ucx, tcp, local or auto)"));
  }
  if (o.max_batch_items < 1 || o.max_batch_items > kMaxRpcItems) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_batch_items: must be in [1, ", kMaxRpcItems,
                     "], got ", o.max_batch_items));
  }
  return absl::OkStatus();
}

int ClampMs(absl::Duration d) {
  return static_cast<int>(
      std::clamp<int64_t>(absl::ToInt64Milliseconds(d), 1, INT_MAX));
}

}  // namespace

GrpcClient::GrpcClient(const ClientOptions& options)
    : options_(options),
      policy_{options.max_attempts, options.initial_backoff,
              options.max_backoff},
      tracker_(std::make_shared<InflightTracker>()),
      get_method_(absl::StrCat("/", v1::DataService::service_full_name(),
                               "/Get")) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  args.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // Reconnect on the same schedule as RPC retries: with gRPC's default
  // (1 s, growing to 120 s) every retry after a daemon restart would fail
  // fast while the channel waits out its own backoff.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS,
              ClampMs(options.initial_backoff));
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS,
              ClampMs(options.max_backoff));
  channel_ = grpc::CreateCustomChannel(
      options.address, grpc::InsecureChannelCredentials(), args);
  data_ = v1::DataService::NewStub(channel_);
  admin_ = v1::AdminService::NewStub(channel_);
  generic_get_ =
      std::make_unique<grpc::TemplatedGenericStub<v1::GetRequest,
                                                  grpc::ByteBuffer>>(channel_);
  generic_ = std::make_unique<grpc::GenericStub>(channel_);
}

GrpcClient::~GrpcClient() {
  // UCX calls still pending answer CANCELLED; their callbacks use the buffer
  // table.
  bulk_.reset();
  // In-flight callbacks use the stubs and the buffer table.
  tracker_->WaitIdle();
}

absl::StatusOr<absl::Time> GrpcClient::Deadline(const CallOptions& call,
                                                absl::Duration fallback) const {
  const absl::Duration d = call.deadline.value_or(fallback);
  if (d <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "deadline: must be positive, got ", absl::FormatDuration(d)));
  }
  return absl::Now() + d;
}

absl::Status GrpcClient::ValidateBlock(absl::Span<const uint8_t> block) const {
  if (block.empty()) return absl::InvalidArgumentError("block: empty");
  // The request carries the key and labels too; leave them 4 KiB.
  if (block.size() > options_.max_message_bytes - 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block: ", block.size(), " bytes does not fit max_message_bytes (",
        options_.max_message_bytes, ")"));
  }
  // Header only (96 bytes): catches a caller bug without a round trip. The
  // daemon verifies the checksum.
  absl::StatusOr<kvstore::BlockHeader> header =
      kvstore::ParseBlockHeader(block);
  if (!header.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("block: ", header.status().message()));
  }
  const uint64_t expected = kvstore::EncodedBlockSize(header->payload_length);
  if (block.size() != expected) {
    return absl::InvalidArgumentError(
        absl::StrCat("block: ", block.size(), " bytes, but its header says ",
                     expected));
  }
  return absl::OkStatus();
}

void GrpcClient::FillPut(v1::PutRequest* req, const BlockKey& key,
                         absl::Span<const uint8_t> block,
                         const PutOptions& put) {
  req->set_key(key.ToBytesString());
  req->set_block(block.data(), block.size());
  // Unset unless durable: the daemon's write_through setting decides.
  if (put.durable) req->set_durable(true);
  if (!put.tenant.empty() || !put.model.empty()) {
    req->mutable_labels()->set_tenant(put.tenant);
    req->mutable_labels()->set_model(put.model);
  }
}

// ---- Data path.

std::future<absl::StatusOr<PutResult>> GrpcClient::PutAsync(
    const BlockKey& key, absl::Span<const uint8_t> block, const PutOptions& put,
    const CallOptions& call) {
  using R = absl::StatusOr<PutResult>;
  if (absl::Status s = ValidateBlock(block); !s.ok()) return Ready<R>(s);
  absl::StatusOr<absl::Time> deadline = Deadline(call);
  if (!deadline.ok()) return Ready<R>(deadline.status());
  if (PutOverBulk(block, put)) {
    // The caller may free the block on return: the transport copies it.
    return BulkPut(key, block, /*caller_waits=*/false, put, *deadline);
  }
  v1::PutRequest req;
  FillPut(&req, key, block, put);
  return Unary<v1::PutRequest, v1::PutResponse, PutResult>(
      *deadline, std::move(req), STRATA_RPC(data_, Put),
      [](v1::PutResponse& r) -> R { return PutResult{r.already_present()}; });
}

std::future<absl::StatusOr<GetResult>> GrpcClient::StartGet(
    const BlockKey& key, const CallOptions& call, bool caller_waits) {
  using R = absl::StatusOr<GetResult>;
  absl::StatusOr<absl::Time> deadline = Deadline(call);
  if (!deadline.ok()) return Ready<R>(deadline.status());
  if (bulk_ != nullptr) {
    auto promise = std::make_shared<std::promise<R>>();
    std::future<R> future = promise->get_future();
    bulk_->Get(key, caller_waits, *deadline,
              [promise](R r) { promise->set_value(std::move(r)); });
    return future;
  }
  v1::GetRequest req;
  req.set_key(key.ToBytesString());
  return Unary<v1::GetRequest, v1::GetResponse, GetResult>(
      *deadline, std::move(req), STRATA_RPC(data_, Get),
      [](v1::GetResponse& r) -> R {
        GetResult result;
        result.block.assign(r.block().begin(), r.block().end());
        result.served_from = std::move(*r.mutable_served_from());
        return result;
      });
}

std::future<absl::StatusOr<size_t>> GrpcClient::StartGetInto(
    const BlockKey& key, BufferHandle buffer, uint64_t offset,
    uint64_t capacity, const CallOptions& call, bool caller_waits) {
  using R = absl::StatusOr<size_t>;
  const bool over_bulk = bulk_ != nullptr && capacity >= options_.ucx_min_bytes;
  uint8_t* dst = nullptr;
  absl::Time deadline;
  {
    absl::MutexLock lock(&buffers_mu_);
    auto it = buffers_.find(buffer.id);
    if (it == buffers_.end() || it->second->unregistering) {
      return Ready<R>(absl::NotFoundError(
          absl::StrCat("buffer: no registered buffer ", buffer.id)));
    }
    Region& region = *it->second;
    if (offset > region.size || capacity > region.size - offset) {
      return Ready<R>(absl::InvalidArgumentError(absl::StrCat(
          "offset: [", offset, ", ", offset, " + ", capacity,
          ") leaves buffer ", buffer.id, " of ", region.size, " bytes")));
    }
    if (capacity == 0) {
      return Ready<R>(absl::InvalidArgumentError("capacity: zero"));
    }
    absl::StatusOr<absl::Time> d = Deadline(call);
    if (!d.ok()) return Ready<R>(d.status());
    deadline = *d;
    dst = static_cast<uint8_t*>(region.data) + offset;
    // UCX writes into the region directly: UnregisterBuffer waits for it.
    if (over_bulk) ++region.bulk_inflight;
  }
  if (over_bulk) {
    auto promise = std::make_shared<std::promise<R>>();
    std::future<R> future = promise->get_future();
    bulk_->GetInto(key, dst, static_cast<size_t>(capacity), caller_waits,
                  deadline,
                  [this, id = buffer.id, promise](R r) {
                    {
                      absl::MutexLock lock(&buffers_mu_);
                      auto it = buffers_.find(id);
                      if (it != buffers_.end()) --it->second->bulk_inflight;
                    }
                    promise->set_value(std::move(r));
                  });
    return future;
  }
  v1::GetRequest req;
  req.set_key(key.ToBytesString());
  std::promise<R> promise;
  std::future<R> future = promise.get_future();
  auto start = [stub = generic_get_.get(), method = &get_method_](
                   grpc::ClientContext* ctx, const v1::GetRequest* q,
                   grpc::ByteBuffer* r, std::function<void(grpc::Status)> f) {
    stub->UnaryCall(ctx, *method, grpc::StubOptions(), q, r, std::move(f));
  };
  auto done = [this, id = buffer.id, offset, capacity,
               promise = std::move(promise)](const absl::Status& status,
                                             grpc::ByteBuffer& r) mutable {
    if (!status.ok()) {
      promise.set_value(status);
      return;
    }
    // Copy under the reader lock: once UnregisterBuffer returns, no call
    // writes to the region any more.
    absl::ReaderMutexLock lock(&buffers_mu_);
    auto it = buffers_.find(id);
    if (it == buffers_.end() || it->second->unregistering) {
      promise.set_value(absl::NotFoundError(absl::StrCat(
          "buffer: ", id, " was unregistered during the call")));
      return;
    }
    promise.set_value(CopyGetResponseBlock(
        r, static_cast<uint8_t*>(it->second->data) + offset,
        static_cast<size_t>(capacity)));
  };
  StartRetryingCall<v1::GetRequest, grpc::ByteBuffer>(
      policy_, tracker_, deadline, std::move(req), std::move(start),
      std::move(done));
  return future;
}

struct GrpcClient::LeadingHitsState {
  std::vector<BlockKey> keys;
  absl::Time deadline;
  uint32_t hits = 0;  // In the ranges answered so far.
  std::promise<absl::StatusOr<uint32_t>> promise;
};

std::future<absl::StatusOr<uint32_t>> GrpcClient::LeadingHitsAsync(
    absl::Span<const BlockKey> keys, const CallOptions& call) {
  using R = absl::StatusOr<uint32_t>;
  absl::StatusOr<absl::Time> deadline = Deadline(call);
  if (!deadline.ok()) return Ready<R>(deadline.status());
  if (keys.empty()) return Ready<R>(uint32_t{0});
  if (keys.size() > UINT32_MAX) {
    return Ready<R>(absl::InvalidArgumentError("keys: more than 2^32 - 1"));
  }
  auto state = std::make_shared<LeadingHitsState>();
  state->keys.assign(keys.begin(), keys.end());
  state->deadline = *deadline;
  std::future<R> future = state->promise.get_future();
  IssueLeadingHits(std::move(state), 0);
  return future;
}

void GrpcClient::IssueLeadingHits(std::shared_ptr<LeadingHitsState> state,
                                  size_t begin) {
  const size_t end = std::min(state->keys.size(), begin + kMaxRpcItems);
  v1::LeadingHitsRequest req;
  req.mutable_keys()->Reserve(static_cast<int>(end - begin));
  for (size_t i = begin; i < end; ++i) {
    req.add_keys(state->keys[i].ToBytesString());
  }
  const absl::Time deadline = state->deadline;
  StartRetryingCall<v1::LeadingHitsRequest, v1::LeadingHitsResponse>(
      policy_, tracker_, deadline, std::move(req),
      STRATA_RPC(data_, LeadingHits),
      [this, state = std::move(state), begin, end](
          const absl::Status& status, v1::LeadingHitsResponse& r) {
        if (!status.ok()) {
          state->promise.set_value(status);
          return;
        }
        if (r.hits() > end - begin) {
          state->promise.set_value(absl::InternalError(absl::StrCat(
              "response: ", r.hits(), " leading hits for ", end - begin,
              " keys")));
          return;
        }
        state->hits += r.hits();
        if (r.hits() == end - begin && end < state->keys.size()) {
          IssueLeadingHits(state, end);  // The whole range hit: go on.
          return;
        }
        state->promise.set_value(state->hits);
      });
}

absl::StatusOr<std::vector<bool>> GrpcClient::Exists(
    absl::Span<const BlockKey> keys, const CallOptions& call) {
  using R = absl::StatusOr<std::vector<bool>>;
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  // Ranges of kMaxRpcItems keys, sent concurrently.
  std::vector<std::future<R>> parts;
  for (size_t begin = 0; begin < keys.size(); begin += kMaxRpcItems) {
    const size_t n = std::min(keys.size() - begin, kMaxRpcItems);
    v1::ExistsRequest req;
    req.mutable_keys()->Reserve(static_cast<int>(n));
    for (const BlockKey& k : keys.subspan(begin, n)) {
      req.add_keys(k.ToBytesString());
    }
    parts.push_back(Unary<v1::ExistsRequest, v1::ExistsResponse,
                          std::vector<bool>>(
        deadline, std::move(req), STRATA_RPC(data_, Exists),
        [n](v1::ExistsResponse& r) -> R {
          if (static_cast<size_t>(r.exists_size()) != n) {
            return absl::InternalError(absl::StrCat(
                "response: ", r.exists_size(), " exists flags for ", n,
                " keys"));
          }
          return std::vector<bool>(r.exists().begin(), r.exists().end());
        }));
  }
  std::vector<bool> exists;
  exists.reserve(keys.size());
  absl::Status first_error;
  for (std::future<R>& part : parts) {
    R r = part.get();  // Wait for all: none may outlive this call's data.
    if (!r.ok()) {
      first_error.Update(r.status());
    } else {
      exists.insert(exists.end(), r->begin(), r->end());
    }
  }
  if (!first_error.ok()) return first_error;
  return exists;
}

absl::StatusOr<PrefixLookupResult> GrpcClient::PrefixLookup(
    const KeyNamespace& ns, absl::Span<const uint32_t> tokens,
    const CallOptions& call) {
  using R = absl::StatusOr<PrefixLookupResult>;
  STRATA_RETURN_IF_ERROR(ns.Root().status());  // Names the bad field.
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  v1::PrefixLookupRequest req;
  v1::KeyNamespace* pns = req.mutable_namespace_();
  pns->set_tenant_salt(ns.tenant_salt);
  pns->set_model_id(ns.model_id);
  pns->set_dtype(static_cast<uint32_t>(ns.dtype));
  pns->set_num_layers(ns.num_layers);
  pns->set_num_kv_heads(ns.num_kv_heads);
  pns->set_head_dim(ns.head_dim);
  pns->set_chunk_tokens(ns.chunk_tokens);
  pns->set_tp_rank(ns.tp_rank);
  pns->set_tp_size(ns.tp_size);
  req.mutable_tokens()->Add(tokens.begin(), tokens.end());
  return Unary<v1::PrefixLookupRequest, v1::PrefixLookupResponse,
               PrefixLookupResult>(
             deadline, std::move(req), STRATA_RPC(data_, PrefixLookup),
             [](v1::PrefixLookupResponse& r) -> R {
               PrefixLookupResult result;
               result.hit_chunks = r.hit_chunks();
               result.hit_tokens = r.hit_tokens();
               result.keys.reserve(r.keys_size());
               for (const std::string& bytes : r.keys()) {
                 absl::StatusOr<BlockKey> key = BlockKey::FromBytes(bytes);
                 if (!key.ok()) {
                   return absl::InternalError(absl::StrCat(
                       "response: ", key.status().message()));
                 }
                 result.keys.push_back(*key);
               }
               return result;
             })
      .get();
}

absl::Status GrpcClient::Remove(const BlockKey& key, const CallOptions& call) {
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  v1::RemoveRequest req;
  req.set_key(key.ToBytesString());
  return UnaryStatus<v1::RemoveRequest, v1::RemoveResponse>(
      deadline, std::move(req), STRATA_RPC(data_, Remove));
}

absl::Status GrpcClient::Pin(const BlockKey& key, absl::Duration ttl,
                             const CallOptions& call) {
  if (ttl <= absl::ZeroDuration() || ttl == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ttl: must be positive and finite, got ", absl::FormatDuration(ttl)));
  }
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  v1::PinRequest req;
  req.set_key(key.ToBytesString());
  // Round up: a sub-millisecond ttl must not become 0 ("no ttl").
  req.set_ttl_ms(static_cast<uint64_t>(
      absl::Ceil(ttl, absl::Milliseconds(1)) / absl::Milliseconds(1)));
  return UnaryStatus<v1::PinRequest, v1::PinResponse>(
      deadline, std::move(req), STRATA_RPC(data_, Pin));
}

absl::Status GrpcClient::Unpin(const BlockKey& key, const CallOptions& call) {
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  v1::UnpinRequest req;
  req.set_key(key.ToBytesString());
  return UnaryStatus<v1::UnpinRequest, v1::UnpinResponse>(
      deadline, std::move(req), STRATA_RPC(data_, Unpin));
}

// ---- Registered buffers.

absl::StatusOr<BufferHandle> GrpcClient::RegisterBuffer(void* data,
                                                        size_t size) {
  if (data == nullptr) return absl::InvalidArgumentError("data: null");
  if (size == 0) return absl::InvalidArgumentError("size: zero");
  absl::MutexLock lock(&buffers_mu_);
  const uint64_t id = next_buffer_id_++;  // Never reused.
  buffers_.emplace(id, std::make_unique<Region>(Region{data, size}));
  return BufferHandle{id};
}

absl::Status GrpcClient::UnregisterBuffer(BufferHandle buffer) {
  absl::MutexLock lock(&buffers_mu_);
  auto it = buffers_.find(buffer.id);
  if (it == buffers_.end() || it->second->unregistering) {
    return absl::NotFoundError(
        absl::StrCat("buffer: no registered buffer ", buffer.id));
  }
  Region* region = it->second.get();
  region->unregistering = true;
  // UCX transfers into the region end by their deadlines at the latest.
  buffers_mu_.Await(absl::Condition(
      +[](Region* r) { return r->bulk_inflight == 0; }, region));
  buffers_.erase(buffer.id);
  return absl::OkStatus();
}

// ---- Admin.

absl::StatusOr<ServerStats> GrpcClient::Stats(const CallOptions& call) {
  using R = absl::StatusOr<ServerStats>;
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  return Unary<v1::StatsRequest, v1::StatsResponse, ServerStats>(
             deadline, v1::StatsRequest(), STRATA_RPC(admin_, Stats),
             [](v1::StatsResponse& r) -> R {
               ServerStats s;
               s.puts = r.puts();
               s.duplicate_puts = r.duplicate_puts();
               s.rejected_puts = r.rejected_puts();
               s.gets = r.gets();
               s.get_hits = r.get_hits();
               s.get_misses = r.get_misses();
               s.removes = r.removes();
               s.pinned_blocks = r.pinned_blocks();
               s.leased_blocks = r.leased_blocks();
               s.uptime_ms = r.uptime_ms();
               s.draining = r.draining();
               s.version = r.version();
               for (const v1::TierStats& t : r.tiers()) {
                 TierStats& o = s.tiers.emplace_back();
                 o.tier = t.tier();
                 o.capacity_bytes = t.capacity_bytes();
                 o.used_bytes = t.used_bytes();
                 o.blocks = t.blocks();
                 o.hits = t.hits();
                 o.misses = t.misses();
                 o.evictions = t.evictions();
                 o.demotions = t.demotions();
                 o.promotions = t.promotions();
                 o.checksum_failures = t.checksum_failures();
                 o.write_failures = t.write_failures();
               }
               return s;
             })
      .get();
}

absl::StatusOr<EvictResult> GrpcClient::Evict(const EvictFilter& filter,
                                              const CallOptions& call) {
  using R = absl::StatusOr<EvictResult>;
  std::string prefix = absl::AsciiStrToLower(filter.key_prefix);
  if (prefix.size() > 32 ||
      !std::all_of(prefix.begin(), prefix.end(), [](char c) {
        return absl::ascii_isxdigit(static_cast<unsigned char>(c));
      })) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key_prefix: want at most 32 hex digits, got \"", filter.key_prefix,
        "\""));
  }
  if (filter.min_age < absl::ZeroDuration() ||
      filter.min_age == absl::InfiniteDuration()) {
    return absl::InvalidArgumentError(
        absl::StrCat("min_age: must be non-negative and finite, got ",
                     absl::FormatDuration(filter.min_age)));
  }
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  v1::EvictRequest req;
  req.set_tenant(filter.tenant);
  req.set_model(filter.model);
  req.set_key_prefix(std::move(prefix));
  req.set_min_age_ms(
      static_cast<uint64_t>(absl::ToInt64Milliseconds(filter.min_age)));
  req.set_dry_run(filter.dry_run);
  req.set_include_pinned(filter.include_pinned);
  return Unary<v1::EvictRequest, v1::EvictResponse, EvictResult>(
             deadline, std::move(req), STRATA_RPC(admin_, Evict),
             [](v1::EvictResponse& r) -> R {
               return EvictResult{r.blocks(), r.bytes(), r.skipped_pinned()};
             })
      .get();
}

absl::Status GrpcClient::Drain(const CallOptions& call) {
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  return UnaryStatus<v1::DrainRequest, v1::DrainResponse>(
      deadline, v1::DrainRequest(), STRATA_RPC(admin_, Drain));
}

absl::StatusOr<std::string> GrpcClient::GetConfig(const CallOptions& call) {
  using R = absl::StatusOr<std::string>;
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  return Unary<v1::ConfigRequest, v1::ConfigResponse, std::string>(
             deadline, v1::ConfigRequest(), STRATA_RPC(admin_, GetConfig),
             [](v1::ConfigResponse& r) -> R {
               return std::move(*r.mutable_text());
             })
      .get();
}

absl::Status GrpcClient::Health(const CallOptions& call) {
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  // HealthCheckRequest{service: ""}: the server as a whole, which is what
  // stratad reports (grpc::HealthCheckServiceInterface::SetServingStatus).
  // Its serialized form is empty.
  grpc::Slice empty;
  grpc::ByteBuffer request(&empty, 1);
  std::promise<absl::Status> promise;
  std::future<absl::Status> future = promise.get_future();
  StartRetryingCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      policy_, tracker_, deadline, std::move(request),
      [stub = generic_.get()](grpc::ClientContext* ctx,
                              const grpc::ByteBuffer* q, grpc::ByteBuffer* r,
                              std::function<void(grpc::Status)> f) {
        stub->UnaryCall(ctx, kHealthCheckMethod, grpc::StubOptions(), q, r,
                        std::move(f));
      },
      [promise = std::move(promise)](const absl::Status& status,
                                     grpc::ByteBuffer& r) mutable {
        if (!status.ok()) {
          promise.set_value(status);
          return;
        }
        absl::StatusOr<int> serving = ParseHealthCheckResponse(r);
        if (!serving.ok()) {
          promise.set_value(serving.status());
        } else if (*serving == kHealthServing) {
          promise.set_value(absl::OkStatus());
        } else if (*serving == kHealthNotServing) {
          promise.set_value(absl::UnavailableError("health: NOT_SERVING"));
        } else if (*serving == kHealthServiceUnknown) {
          promise.set_value(absl::NotFoundError("health: SERVICE_UNKNOWN"));
        } else {
          promise.set_value(absl::UnavailableError(
              absl::StrCat("health: status ", *serving)));
        }
      });
  return future.get();
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(
    const ClientOptions& options) {
  STRATA_RETURN_IF_ERROR(internal::ValidateOptions(options));
  auto client = std::make_unique<internal::GrpcClient>(options);
  if (options.data_plane != "grpc") {
    absl::Status s = client->StartDataPlane();
    if (!s.ok() && options.data_plane != "auto") return s;
    // "auto": gRPC carries everything.
  }
  return std::unique_ptr<Client>(std::move(client));
}

}  // namespace strata::client
