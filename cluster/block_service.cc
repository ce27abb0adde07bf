#include "cluster/block_service.h"

#include <algorithm>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "kvstore/block_key.h"

namespace strata::cluster {
namespace {

using kvstore::BlockKey;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()),
                      std::string(s.message()));
}

// Records one RPC's outcome in the metrics when it goes out of scope.
class RpcScope {
 public:
  RpcScope(ServiceContext* ctx, Rpc rpc)
      : ctx_(ctx), rpc_(rpc), start_(absl::Now()) {}
  ~RpcScope() {
    ctx_->metrics->RecordRpc(rpc_, code_, absl::Now() - start_, bytes_in_,
                             bytes_out_);
  }
  grpc::Status Finish(const absl::Status& s) {
    code_ = s.code();
    return ToGrpc(s);
  }
  void AddIn(uint64_t n) { bytes_in_ += n; }
  void AddOut(uint64_t n) { bytes_out_ += n; }

 private:
  ServiceContext* const ctx_;
  const Rpc rpc_;
  const absl::Time start_;
  absl::StatusCode code_ = absl::StatusCode::kOk;
  uint64_t bytes_in_ = 0;
  uint64_t bytes_out_ = 0;
};

absl::StatusOr<BlockKey> ParseKey(const std::string& bytes,
                                  const std::string& field) {
  if (bytes.size() != 16) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": a key is 16 bytes, got ", bytes.size()));
  }
  return *BlockKey::FromBytes(bytes);
}

absl::Status CheckBatchSize(size_t n, const char* field) {
  if (n > kMaxBatchItems) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": ", n, " items exceed the batch limit of ", kMaxBatchItems));
  }
  return absl::OkStatus();
}

// Parses a repeated key field, rejecting bad or (optionally) duplicate keys.
absl::StatusOr<std::vector<BlockKey>> ParseKeys(
    const google::protobuf::RepeatedPtrField<std::string>& raw,
    const char* field, bool reject_duplicates) {
  if (absl::Status s = CheckBatchSize(raw.size(), field); !s.ok()) return s;
  std::vector<BlockKey> keys;
  keys.reserve(raw.size());
  absl::flat_hash_set<BlockKey> seen;
  for (int i = 0; i < raw.size(); ++i) {
    auto key = ParseKey(raw[i], absl::StrCat(field, "[", i, "]"));
    if (!key.ok()) return key.status();
    if (reject_duplicates && !seen.insert(*key).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, "[", i, "]: duplicate key ", key->ToHex(), " in one batch"));
    }
    keys.push_back(*key);
  }
  return keys;
}

absl::Status CheckNotDraining(const ServiceContext* ctx) {
  return CheckAcceptingBlocks(ctx);
}

absl::StatusOr<kvstore::PutOutcome> PutOne(ServiceContext* ctx,
                                           const strata::v1::PutRequest& req,
                                           const std::string& field) {
  auto key = ParseKey(req.key(), field + "key");
  if (!key.ok()) return key.status();
  kvstore::PutOptions options;
  if (req.has_durable()) options.durable = req.durable();
  options.tenant = req.labels().tenant();
  options.model = req.labels().model();
  return StoreBlock(
      ctx, *key,
      absl::MakeConstSpan(reinterpret_cast<const uint8_t*>(req.block().data()),
                          req.block().size()),
      options);
}

}  // namespace

absl::Status CheckAcceptingBlocks(const ServiceContext* ctx) {
  if (ctx->draining.load(std::memory_order_acquire)) {
    return absl::UnavailableError(
        "draining: this daemon accepts no new blocks");
  }
  return absl::OkStatus();
}

absl::StatusOr<kvstore::PutOutcome> StoreBlock(
    ServiceContext* ctx, const kvstore::BlockKey& key,
    absl::Span<const uint8_t> block, const kvstore::PutOptions& options) {
  if (absl::Status s = CheckAcceptingBlocks(ctx); !s.ok()) return s;
  kvstore::PutOptions bounded = options;
  bounded.in_flight_write_wait =
      std::min(options.in_flight_write_wait, kInFlightWriteWait);
  return ctx->store->Put(key, block, bounded);
}

// ---------------------------------------------------------------- Data

grpc::Status DataServiceImpl::Put(grpc::ServerContext*,
                                  const strata::v1::PutRequest* req,
                                  strata::v1::PutResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kPut);
  rpc.AddIn(req->block().size());
  if (absl::Status s = CheckNotDraining(ctx_); !s.ok()) return rpc.Finish(s);
  auto outcome = PutOne(ctx_, *req, "");
  if (!outcome.ok()) return rpc.Finish(outcome.status());
  resp->set_already_present(*outcome == kvstore::PutOutcome::kAlreadyPresent);
  return rpc.Finish(absl::OkStatus());
}

grpc::Status DataServiceImpl::BatchPut(grpc::ServerContext*,
                                       const strata::v1::BatchPutRequest* req,
                                       strata::v1::BatchPutResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kBatchPut);
  if (absl::Status s = CheckNotDraining(ctx_); !s.ok()) return rpc.Finish(s);
  if (absl::Status s = CheckBatchSize(req->items_size(), "items"); !s.ok()) {
    return rpc.Finish(s);
  }
  absl::flat_hash_set<std::string> seen;
  for (int i = 0; i < req->items_size(); ++i) {
    if (!seen.insert(req->items(i).key()).second) {
      return rpc.Finish(absl::InvalidArgumentError(
          absl::StrCat("items[", i, "].key: duplicate key in one batch")));
    }
  }
  for (int i = 0; i < req->items_size(); ++i) {
    const auto& item = req->items(i);
    rpc.AddIn(item.block().size());
    auto outcome = PutOne(ctx_, item, absl::StrCat("items[", i, "]."));
    auto* status = resp->add_status();
    status->set_code(static_cast<int>(outcome.status().code()));
    status->set_message(std::string(outcome.status().message()));
    resp->add_already_present(outcome.ok() &&
                              *outcome == kvstore::PutOutcome::kAlreadyPresent);
  }
  return rpc.Finish(absl::OkStatus());
}

grpc::Status DataServiceImpl::Get(grpc::ServerContext*,
                                  const strata::v1::GetRequest* req,
                                  strata::v1::GetResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kGet);
  auto key = ParseKey(req->key(), "key");
  if (!key.ok()) return rpc.Finish(key.status());
  auto lease = ctx_->store->Get(*key);
  if (!lease.ok()) return rpc.Finish(lease.status());
  resp->set_block(reinterpret_cast<const char*>(lease->bytes().data()),
                  lease->bytes().size());
  resp->set_served_from(kvstore::TierName(lease->served_from()));
  rpc.AddOut(lease->bytes().size());
  return rpc.Finish(absl::OkStatus());
}

grpc::Status DataServiceImpl::BatchGet(grpc::ServerContext*,
                                       const strata::v1::BatchGetRequest* req,
                                       strata::v1::BatchGetResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kBatchGet);
  auto keys = ParseKeys(req->keys(), "keys", /*reject_duplicates=*/true);
  if (!keys.ok()) return rpc.Finish(keys.status());
  uint64_t total = 0;
  for (const BlockKey& key : *keys) {
    auto lease = ctx_->store->Get(key);
    absl::Status s = lease.status();
    if (lease.ok() && total + lease->bytes().size() > ctx_->max_message_bytes) {
      s = absl::ResourceExhaustedError(absl::StrCat(
          "keys: the response would exceed ", ctx_->max_message_bytes,
          " bytes; request this key in a smaller batch"));
    }
    auto* status = resp->add_status();
    status->set_code(static_cast<int>(s.code()));
    status->set_message(std::string(s.message()));
    if (s.ok()) {
      resp->add_blocks(reinterpret_cast<const char*>(lease->bytes().data()),
                       lease->bytes().size());
      total += lease->bytes().size();
    } else {
      resp->add_blocks();
    }
  }
  rpc.AddOut(total);
  return rpc.Finish(absl::OkStatus());
}

grpc::Status DataServiceImpl::Exists(grpc::ServerContext*,
                                     const strata::v1::ExistsRequest* req,
                                     strata::v1::ExistsResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kExists);
  auto keys = ParseKeys(req->keys(), "keys", /*reject_duplicates=*/false);
  if (!keys.ok()) return rpc.Finish(keys.status());
  for (const BlockKey& key : *keys) resp->add_exists(ctx_->store->Exists(key));
  return rpc.Finish(absl::OkStatus());
}

grpc::Status DataServiceImpl::LeadingHits(
    grpc::ServerContext*, const strata::v1::LeadingHitsRequest* req,
    strata::v1::LeadingHitsResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kLeadingHits);
  auto keys = ParseKeys(req->keys(), "keys", /*reject_duplicates=*/false);
  if (!keys.ok()) return rpc.Finish(keys.status());
  const size_t hits = ctx_->store->LongestPrefix(*keys);
  resp->set_hits(static_cast<uint32_t>(hits));
  ctx_->metrics->RecordLookup(keys->size(), hits, 0);
  return rpc.Finish(absl::OkStatus());
}

grpc::Status DataServiceImpl::PrefixLookup(
    grpc::ServerContext*, const strata::v1::PrefixLookupRequest* req,
    strata::v1::PrefixLookupResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kPrefixLookup);
  const auto& n = req->namespace_();
  if (n.dtype() == 0 || n.dtype() > 255 ||
      !kvstore::IsValidDType(static_cast<uint8_t>(n.dtype()))) {
    return rpc.Finish(absl::InvalidArgumentError(
        absl::StrCat("namespace.dtype: unknown value ", n.dtype())));
  }
  if (req->tokens_size() > static_cast<int>(kMaxBatchItems) * 1024) {
    return rpc.Finish(absl::InvalidArgumentError(absl::StrCat(
        "tokens: ", req->tokens_size(), " tokens exceed the lookup limit")));
  }
  kvstore::KeyNamespace ns;
  ns.tenant_salt = n.tenant_salt();
  ns.model_id = n.model_id();
  ns.dtype = static_cast<kvstore::DType>(n.dtype());
  ns.num_layers = n.num_layers();
  ns.num_kv_heads = n.num_kv_heads();
  ns.head_dim = n.head_dim();
  ns.chunk_tokens = n.chunk_tokens();
  ns.tp_rank = n.tp_rank();
  ns.tp_size = n.tp_size();
  auto chunks = kvstore::ChunkKeys(
      ns, absl::MakeConstSpan(req->tokens().data(), req->tokens_size()));
  if (!chunks.ok()) {
    return rpc.Finish(absl::InvalidArgumentError(
        absl::StrCat("namespace.", chunks.status().message())));
  }
  std::vector<BlockKey> keys;
  keys.reserve(chunks->size());
  for (const auto& c : *chunks) {
    keys.push_back(c.key);
    resp->add_keys(c.key.ToBytesString());
  }
  const size_t hits = ctx_->store->LongestPrefix(keys);
  resp->set_hit_chunks(static_cast<uint32_t>(hits));
  resp->set_hit_tokens(static_cast<uint32_t>(hits * ns.chunk_tokens));
  ctx_->metrics->RecordLookup(keys.size(), hits, hits * ns.chunk_tokens);
  return rpc.Finish(absl::OkStatus());
}

grpc::Status DataServiceImpl::Remove(grpc::ServerContext*,
                                     const strata::v1::RemoveRequest* req,
                                     strata::v1::RemoveResponse*) {
  RpcScope rpc(ctx_, Rpc::kRemove);
  auto key = ParseKey(req->key(), "key");
  if (!key.ok()) return rpc.Finish(key.status());
  return rpc.Finish(ctx_->store->Remove(*key));
}

grpc::Status DataServiceImpl::Pin(grpc::ServerContext*,
                                  const strata::v1::PinRequest* req,
                                  strata::v1::PinResponse*) {
  RpcScope rpc(ctx_, Rpc::kPin);
  auto key = ParseKey(req->key(), "key");
  if (!key.ok()) return rpc.Finish(key.status());
  if (req->ttl_ms() == 0 || req->ttl_ms() > (uint64_t{1} << 40)) {
    return rpc.Finish(absl::InvalidArgumentError(
        absl::StrCat("ttl_ms: ", req->ttl_ms(), " must be > 0 and at most "
                     "the daemon's max_pin_ttl_s")));
  }
  absl::Status s = ctx_->store->Pin(
      *key, absl::Milliseconds(static_cast<int64_t>(req->ttl_ms())));
  if (absl::IsInvalidArgument(s)) {
    s = absl::InvalidArgumentError(absl::StrCat("ttl_ms: ", s.message()));
  }
  return rpc.Finish(s);
}

grpc::Status DataServiceImpl::Unpin(grpc::ServerContext*,
                                    const strata::v1::UnpinRequest* req,
                                    strata::v1::UnpinResponse*) {
  RpcScope rpc(ctx_, Rpc::kUnpin);
  auto key = ParseKey(req->key(), "key");
  if (!key.ok()) return rpc.Finish(key.status());
  return rpc.Finish(ctx_->store->Unpin(*key));
}

grpc::Status DataServiceImpl::Hello(grpc::ServerContext*,
                                    const strata::v1::HelloRequest* req,
                                    strata::v1::HelloResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kHello);
  resp->set_protocol_version(1);
  const bool wants_ucx =
      std::find(req->transports().begin(), req->transports().end(), "ucx") !=
      req->transports().end();
  if (wants_ucx && !ctx_->ucx_address.empty()) {
    resp->set_ucx_address(ctx_->ucx_address);
    resp->set_ucx_peer_error_handling(ctx_->ucx_peer_error_handling);
  }
  const bool wants_tcp =
      std::find(req->transports().begin(), req->transports().end(), "tcp") !=
      req->transports().end();
  if (wants_tcp && !ctx_->tcp_address.empty()) {
    resp->set_tcp_address(ctx_->tcp_address);
  }
  const bool wants_local =
      std::find(req->transports().begin(), req->transports().end(),
                "local") != req->transports().end();
  if (wants_local && !ctx_->local_path.empty()) {
    resp->set_local_path(ctx_->local_path);
    resp->set_local_token(ctx_->instance_token);
  }
  return rpc.Finish(absl::OkStatus());
}

// ---------------------------------------------------------------- Admin

grpc::Status AdminServiceImpl::Stats(grpc::ServerContext*,
                                     const strata::v1::StatsRequest*,
                                     strata::v1::StatsResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kStats);
  const kvstore::StoreStats s = ctx_->store->Stats();
  resp->set_puts(s.puts);
  resp->set_duplicate_puts(s.duplicate_puts);
  resp->set_rejected_puts(s.rejected_puts);
  resp->set_gets(s.gets);
  resp->set_get_hits(s.get_hits);
  resp->set_get_misses(s.get_misses);
  resp->set_removes(s.removes);
  resp->set_pinned_blocks(s.pinned_blocks);
  resp->set_leased_blocks(s.leased_blocks);
  resp->set_uptime_ms(absl::ToInt64Milliseconds(absl::Now() - ctx_->started));
  resp->set_draining(ctx_->draining.load());
  resp->set_version(STRATA_VERSION);
  for (const kvstore::TierStats& t : s.tiers) {
    auto* out = resp->add_tiers();
    out->set_tier(kvstore::TierName(t.kind));
    out->set_capacity_bytes(t.capacity_bytes);
    out->set_used_bytes(t.used_bytes);
    out->set_blocks(t.blocks);
    out->set_hits(t.hits);
    out->set_misses(t.misses);
    out->set_evictions(t.evictions);
    out->set_demotions(t.demotions);
    out->set_promotions(t.promotions);
    out->set_checksum_failures(t.checksum_failures);
    out->set_write_failures(t.write_failures);
  }
  return rpc.Finish(absl::OkStatus());
}

grpc::Status AdminServiceImpl::Evict(grpc::ServerContext*,
                                     const strata::v1::EvictRequest* req,
                                     strata::v1::EvictResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kEvict);
  kvstore::EvictFilter filter;
  filter.tenant = req->tenant();
  filter.model = req->model();
  filter.key_prefix = req->key_prefix();
  if (req->min_age_ms() > (uint64_t{1} << 50)) {
    return rpc.Finish(absl::InvalidArgumentError("min_age_ms: too large"));
  }
  filter.min_age = absl::Milliseconds(static_cast<int64_t>(req->min_age_ms()));
  filter.dry_run = req->dry_run();
  filter.include_pinned = req->include_pinned();
  auto result = ctx_->store->EvictMatching(filter);
  if (!result.ok()) return rpc.Finish(result.status());
  resp->set_blocks(result->blocks);
  resp->set_bytes(result->bytes);
  resp->set_skipped_pinned(result->skipped_pinned);
  return rpc.Finish(absl::OkStatus());
}

grpc::Status AdminServiceImpl::Drain(grpc::ServerContext*,
                                     const strata::v1::DrainRequest*,
                                     strata::v1::DrainResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kDrain);
  if (!ctx_->draining.exchange(true, std::memory_order_acq_rel) &&
      ctx_->on_drain) {
    ctx_->on_drain();
  }
  absl::Status flushed = ctx_->store->Flush();
  resp->set_draining(true);
  if (ctx_->drain_status) ctx_->drain_status(resp);
  return rpc.Finish(flushed);
}

grpc::Status AdminServiceImpl::GetConfig(grpc::ServerContext*,
                                         const strata::v1::ConfigRequest*,
                                         strata::v1::ConfigResponse* resp) {
  RpcScope rpc(ctx_, Rpc::kGetConfig);
  resp->set_text(ctx_->config_text);
  return rpc.Finish(absl::OkStatus());
}

}  // namespace strata::cluster
