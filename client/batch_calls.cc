// BatchPut / BatchGet: split into RPCs of at most max_batch_items items (and,
// for puts, at most max_message_bytes), sent concurrently, reassembled in
// order with one status per item. With the UCX data plane up, every item that
// Put / Get would send over UCX goes there instead, as its own request
// pipelined with the others on the one UCX connection (no gRPC message limit,
// no protobuf copy; docs/protocol.md, "Batches").
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/grpc_client.h"

namespace strata::client::internal {
namespace {

// The per-item status of a batch response.
absl::Status FromItem(const v1::ItemStatus& item) {
  const int code = item.code();
  if (code == 0) return absl::OkStatus();
  if (code < 0 || code > static_cast<int>(absl::StatusCode::kUnauthenticated)) {
    return absl::UnknownError(
        absl::StrCat("status code ", code, ": ", item.message()));
  }
  return absl::Status(static_cast<absl::StatusCode>(code), item.message());
}

// Results shared by the RPCs of one batch; the last RPC to finish fulfils
// the promise. Each RPC writes a disjoint range of `results`.
template <typename T>
struct BatchState {
  explicit BatchState(size_t n, const absl::Status& initial)
      : results(n, T(initial)) {}

  void Release() {
    if (pending.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      promise.set_value(std::move(results));
    }
  }

  std::vector<T> results;
  std::atomic<size_t> pending{0};
  std::promise<std::vector<T>> promise;
};

// How many RPCs to split a BatchGet chunk of m keys into after its response
// did not fit: gRPC's message says "... larger than max (N vs. M)"; aim
// for parts of about half the limit. 0 when the status is something else.
size_t SplitParts(const absl::Status& status, size_t m) {
  if (status.code() != absl::StatusCode::kResourceExhausted || m < 2) return 0;
  const absl::string_view message = status.message();
  const size_t at = message.find("larger than max");
  if (at == absl::string_view::npos) return 0;
  unsigned long long got = 0, limit = 0;
  const std::string tail(message.substr(at));
  if (std::sscanf(tail.c_str(), "larger than max (%llu vs. %llu)", &got,
                  &limit) == 2 &&
      limit > 0 && got > limit) {
    return std::clamp<size_t>(2 * ((got + limit - 1) / limit), 2, m);
  }
  return 2;
}

// A serialized PutRequest's size, minus the labels which every item shares.
size_t PutItemBytes(size_t block_size) { return block_size + 64; }

}  // namespace

std::future<std::vector<absl::StatusOr<PutResult>>> GrpcClient::BatchPutAsync(
    absl::Span<const BlockKey> keys,
    absl::Span<const absl::Span<const uint8_t>> blocks, const PutOptions& put,
    const CallOptions& call) {
  using T = absl::StatusOr<PutResult>;
  const size_t n = keys.size();
  if (blocks.size() != n) {
    return Ready(std::vector<T>(
        n, T(absl::InvalidArgumentError(absl::StrCat(
               "blocks: ", blocks.size(), " blocks for ", n, " keys")))));
  }
  absl::StatusOr<absl::Time> deadline = Deadline(call);
  if (!deadline.ok()) return Ready(std::vector<T>(n, T(deadline.status())));

  auto state = std::make_shared<BatchState<T>>(
      n, absl::InternalError("batch item was not sent"));
  // Validate every item; invalid ones get their own status and stay home.
  std::vector<size_t> valid;
  valid.reserve(n);
  absl::flat_hash_map<BlockKey, size_t> first_index;
  for (size_t i = 0; i < n; ++i) {
    if (absl::Status s = ValidateBlock(blocks[i]); !s.ok()) {
      state->results[i] = s;
      continue;
    }
    auto [it, inserted] = first_index.emplace(keys[i], i);
    if (!inserted) {
      state->results[i] = absl::InvalidArgumentError(absl::StrCat(
          "keys: item ", i, " repeats the key of item ", it->second));
      continue;
    }
    valid.push_back(i);
  }

  // Items UCX carries (as Put would send them), each its own request.
  std::vector<size_t> over_bulk;
  if (bulk_ != nullptr) {
    std::vector<size_t> rest;
    for (size_t i : valid) {
      (PutOverBulk(blocks[i], put) ? over_bulk : rest).push_back(i);
    }
    valid = std::move(rest);
  }

  // Chunks: at most max_batch_items items and max_message_bytes bytes.
  const size_t label_bytes = put.tenant.size() + put.model.size() + 16;
  std::vector<std::vector<size_t>> chunks;
  size_t chunk_bytes = 0;
  for (size_t i : valid) {
    const size_t item_bytes = PutItemBytes(blocks[i].size()) + label_bytes;
    if (chunks.empty() || chunks.back().size() >= options_.max_batch_items ||
        chunk_bytes + item_bytes > options_.max_message_bytes - 1024) {
      chunks.emplace_back();
      chunk_bytes = 0;
    }
    chunks.back().push_back(i);
    chunk_bytes += item_bytes;
  }

  auto future = state->promise.get_future();
  state->pending.store(chunks.size() + over_bulk.size() + 1,
                       std::memory_order_relaxed);
  for (size_t i : over_bulk) {
    // caller_waits = false: the transport copies the block before returning.
    bulk_->Put(keys[i], blocks[i], /*caller_waits=*/false, put, *deadline,
              [state, i](T r) {
                state->results[i] = std::move(r);
                state->Release();
              });
  }
  for (std::vector<size_t>& chunk : chunks) {
    v1::BatchPutRequest req;
    req.mutable_items()->Reserve(static_cast<int>(chunk.size()));
    for (size_t i : chunk) FillPut(req.add_items(), keys[i], blocks[i], put);
    StartRetryingCall<v1::BatchPutRequest, v1::BatchPutResponse>(
        policy_, tracker_, *deadline, std::move(req),
        STRATA_RPC(data_, BatchPut),
        [state, chunk = std::move(chunk)](const absl::Status& status,
                                          v1::BatchPutResponse& r) {
          const size_t m = chunk.size();
          absl::Status whole = status;
          if (whole.ok() && (static_cast<size_t>(r.status_size()) != m ||
                             static_cast<size_t>(r.already_present_size()) !=
                                 m)) {
            whole = absl::InternalError(absl::StrCat(
                "response: ", r.status_size(), " statuses and ",
                r.already_present_size(), " already_present flags for ", m,
                " items"));
          }
          for (size_t j = 0; j < m; ++j) {
            T& out = state->results[chunk[j]];
            if (!whole.ok()) {
              out = whole;
            } else if (absl::Status s = FromItem(r.status(j)); !s.ok()) {
              out = std::move(s);
            } else {
              out = PutResult{r.already_present(j)};
            }
          }
          state->Release();
        });
  }
  state->Release();  // The issuer's reference.
  return future;
}

// BatchGet sends each distinct key once (the daemon refuses duplicates) and
// hands every occurrence its result.
struct GrpcClient::BatchGetState {
  std::vector<BlockKey> keys;  // Distinct, in first-seen order.
  std::vector<size_t> source;  // Caller's index -> index into `keys`.
  absl::Time deadline;
  std::vector<absl::StatusOr<GetResult>> results;  // One per key.
  std::atomic<size_t> pending{0};
  std::promise<std::vector<absl::StatusOr<GetResult>>> promise;

  void Release() {
    if (pending.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    std::vector<size_t> uses(keys.size(), 0);
    for (size_t k : source) ++uses[k];
    std::vector<absl::StatusOr<GetResult>> out;
    out.reserve(source.size());
    for (size_t k : source) {
      if (--uses[k] == 0) {
        out.push_back(std::move(results[k]));
      } else {
        out.push_back(results[k]);
      }
    }
    promise.set_value(std::move(out));
  }
};

std::future<std::vector<absl::StatusOr<GetResult>>> GrpcClient::BatchGetAsync(
    absl::Span<const BlockKey> keys, const CallOptions& call) {
  using T = absl::StatusOr<GetResult>;
  const size_t n = keys.size();
  absl::StatusOr<absl::Time> deadline = Deadline(call);
  if (!deadline.ok()) return Ready(std::vector<T>(n, T(deadline.status())));
  auto state = std::make_shared<BatchGetState>();
  state->deadline = *deadline;
  state->source.reserve(n);
  absl::flat_hash_map<BlockKey, size_t> index;
  for (const BlockKey& key : keys) {
    auto [it, inserted] = index.emplace(key, state->keys.size());
    if (inserted) state->keys.push_back(key);
    state->source.push_back(it->second);
  }
  const size_t distinct = state->keys.size();
  state->results.assign(distinct,
                        T(absl::InternalError("batch item was not sent")));
  auto future = state->promise.get_future();
  if (bulk_ != nullptr) {
    // Every key its own UCX Get, all in flight at once.
    state->pending.store(distinct + 1, std::memory_order_relaxed);
    for (size_t k = 0; k < distinct; ++k) {
      bulk_->Get(state->keys[k], /*caller_waits=*/false, state->deadline,
                [state, k](T r) {
                  state->results[k] = std::move(r);
                  state->Release();
                });
    }
    state->Release();  // The issuer's reference.
    return future;
  }
  const size_t step = options_.max_batch_items;
  state->pending.store((distinct + step - 1) / step + 1,
                       std::memory_order_relaxed);
  for (size_t begin = 0; begin < distinct; begin += step) {
    std::vector<size_t> indices(std::min(step, distinct - begin));
    for (size_t j = 0; j < indices.size(); ++j) indices[j] = begin + j;
    IssueBatchGet(state, std::move(indices));
  }
  state->Release();  // The issuer's reference.
  return future;
}

void GrpcClient::IssueBatchGet(std::shared_ptr<BatchGetState> state,
                               std::vector<size_t> indices) {
  v1::BatchGetRequest req;
  req.mutable_keys()->Reserve(static_cast<int>(indices.size()));
  for (size_t i : indices) req.add_keys(state->keys[i].ToBytesString());
  const absl::Time deadline = state->deadline;
  StartRetryingCall<v1::BatchGetRequest, v1::BatchGetResponse>(
      policy_, tracker_, deadline, std::move(req), STRATA_RPC(data_, BatchGet),
      [this, state = std::move(state), indices = std::move(indices)](
          const absl::Status& status, v1::BatchGetResponse& r) {
        const size_t m = indices.size();
        const bool time_left = absl::Now() < state->deadline;
        // The response did not fit in the client's max_message_bytes
        // (RESOURCE_EXHAUSTED "... larger than max ..."): send the keys
        // again in parts, down to single keys.
        if (const size_t parts = SplitParts(status, m); parts > 0 && time_left) {
          state->pending.fetch_add(parts - 1, std::memory_order_relaxed);
          for (size_t p = 0; p < parts; ++p) {
            IssueBatchGet(state,
                          std::vector<size_t>(indices.begin() + m * p / parts,
                                              indices.begin() +
                                                  m * (p + 1) / parts));
          }
          return;  // This RPC's reference passed to the parts.
        }
        absl::Status whole = status;
        if (whole.ok() && (static_cast<size_t>(r.status_size()) != m ||
                           static_cast<size_t>(r.blocks_size()) != m)) {
          whole = absl::InternalError(
              absl::StrCat("response: ", r.status_size(), " statuses and ",
                           r.blocks_size(), " blocks for ", m, " keys"));
        }
        // The daemon answers RESOURCE_EXHAUSTED for the keys whose blocks
        // would have taken its response past its message limit ("request
        // this key in a smaller batch"): ask again for those, as long as
        // this response made progress.
        std::vector<size_t> again;
        bool progress = false;
        for (size_t j = 0; j < m; ++j) {
          absl::StatusOr<GetResult>& out = state->results[indices[j]];
          if (!whole.ok()) {
            out = whole;
            continue;
          }
          absl::Status s = FromItem(r.status(j));
          if (s.ok()) {
            GetResult result;  // BatchGet reports no tier per item.
            const std::string& block = r.blocks(j);
            result.block.assign(block.begin(), block.end());
            out = std::move(result);
            progress = true;
          } else {
            if (s.code() == absl::StatusCode::kResourceExhausted) {
              again.push_back(indices[j]);
            }
            out = std::move(s);
          }
        }
        if (progress && !again.empty() && time_left) {
          state->pending.fetch_add(1, std::memory_order_relaxed);
          IssueBatchGet(state, std::move(again));
        }
        state->Release();
      });
}

}  // namespace strata::client::internal
