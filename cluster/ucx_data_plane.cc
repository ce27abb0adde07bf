#include "cluster/ucx_data_plane.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <future>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/functional/any_invocable.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "cluster/data_plane_request.h"
#include "cluster/log.h"
#include "common/steady_time.h"
#include "common/ucx_buffer_pool.h"

namespace strata::cluster {

// Threads for the store work of the data plane.
class WorkPool {
 public:
  explicit WorkPool(int threads) {
    for (int i = 0; i < std::max(1, threads); ++i) {
      threads_.emplace_back([this] { Run(); });
    }
  }
  ~WorkPool() { Shutdown(); }

  // False (dropping `fn`) after Shutdown.
  bool Submit(absl::AnyInvocable<void()> fn) {
    absl::MutexLock lock(&mu_);
    if (closed_) return false;
    queue_.push_back(std::move(fn));
    return true;
  }

  // Runs what is queued, then joins the threads.
  void Shutdown() {
    {
      absl::MutexLock lock(&mu_);
      closed_ = true;
    }
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  void Run() {
    while (true) {
      absl::AnyInvocable<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](WorkPool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
              return p->closed_ || !p->queue_.empty();
            },
            this));
        if (queue_.empty()) return;  // Closed and drained.
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

namespace {

void* IdArg(uint64_t id) { return reinterpret_cast<void*>(id); }
uint64_t ArgId(void* arg) { return reinterpret_cast<uint64_t>(arg); }

// The data plane whose progress thread this is: UCX completion callbacks get
// only an operation id.
thread_local UcxDataPlane* tls_plane = nullptr;

}  // namespace

UcxDataPlane::UcxDataPlane(ServiceContext* ctx,
                           const UcxDataPlaneOptions& options)
    : ctx_(ctx), options_(options) {}

absl::StatusOr<std::unique_ptr<UcxDataPlane>> UcxDataPlane::Start(
    ServiceContext* ctx, const UcxDataPlaneOptions& options) {
  std::unique_ptr<UcxDataPlane> plane(new UcxDataPlane(ctx, options));
  if (const char* env = std::getenv("STRATA_UCX_INLINE_MAX_BYTES")) {
    plane->options_.inline_store_max_bytes = std::strtoull(env, nullptr, 10);
  }
  sockaddr_storage addr;
  socklen_t len = 0;
  absl::Status parsed =
      ucx::ParseSockAddr("data_plane_listen", options.listen, &addr, &len);
  if (!parsed.ok()) return parsed;
  // A loopback daemon keeps UCX's own TCP sockets on loopback too.
  auto loop = ucx::WorkerLoop::Create(ucx::IsLoopback(addr));
  if (!loop.ok()) {
    return absl::UnavailableError(
        absl::StrCat("data_plane_listen: ", loop.status().message()));
  }
  plane->loop_ = *std::move(loop);
  plane->loop_->Start([p = plane.get()] { return p->Tick(); });
  // The worker belongs to the progress thread: listen from there.
  std::promise<absl::Status> listened;
  std::future<absl::Status> done = listened.get_future();
  plane->loop_->Post([p = plane.get(), &listened] {
    listened.set_value(p->Listen());
  });
  absl::Status s = done.get();
  if (!s.ok()) {
    plane->stopped_ = true;
    plane->loop_->Post([p = plane.get()] {
      p->CloseEverything();
      p->loop_->RequestExit();
    });
    plane->loop_->Join();
    return s;
  }
  plane->pool_ = std::make_unique<WorkPool>(options.worker_threads);
  plane->commit_pool_ = std::make_unique<WorkPool>(options.worker_threads);
  // Enough for a few blocks of the largest size in flight at once.
  plane->buffers_ = std::make_unique<ucx::BufferPool>(std::min<uint64_t>(
      uint64_t{512} << 20, 4 * ctx->store->options().max_block_bytes));
  return plane;
}

UcxDataPlane::~UcxDataPlane() {
  Stop();
  loop_.reset();  // Destroys the worker while the maps are still alive.
}

absl::Status UcxDataPlane::Listen() {
  tls_plane = this;
  ucp_worker_h worker = loop_->worker();
  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                       UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                       UCP_AM_HANDLER_PARAM_FIELD_CB |
                       UCP_AM_HANDLER_PARAM_FIELD_ARG;
  handler.id = ucx::kRequestAmId;
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  handler.cb = &UcxDataPlane::OnRequest;
  handler.arg = this;
  ucs_status_t s = ucp_worker_set_am_recv_handler(worker, &handler);
  if (s != UCS_OK) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane_listen: active messages: ", ucs_status_string(s)));
  }
  sockaddr_storage addr;
  socklen_t len = 0;
  absl::Status parsed =
      ucx::ParseSockAddr("data_plane_listen", options_.listen, &addr, &len);
  if (!parsed.ok()) return parsed;
  ucp_listener_params_t lp{};
  lp.field_mask =
      UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
  lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
  lp.sockaddr.addrlen = len;
  lp.conn_handler.cb = &UcxDataPlane::OnConnRequest;
  lp.conn_handler.arg = this;
  s = ucp_listener_create(worker, &lp, &listener_);
  if (s != UCS_OK) {
    listener_ = nullptr;
    return absl::UnavailableError(
        absl::StrCat("data_plane_listen: cannot listen on ", options_.listen,
                     ": ", ucs_status_string(s)));
  }
  ucp_listener_attr_t attr{};
  attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
  s = ucp_listener_query(listener_, &attr);
  if (s != UCS_OK) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane_listen: ucp_listener_query: ", ucs_status_string(s)));
  }
  address_ = ucx::FormatSockAddr(attr.sockaddr);
  return absl::OkStatus();
}

void UcxDataPlane::Stop() {
  if (stopped_) return;
  stopped_ = true;
  loop_->Post([this] { stopping_ = true; });
  // Queued store work finishes and posts its replies; puts waiting for a
  // reservation's outcome need the commit threads, so those stop last.
  pool_->Shutdown();
  commit_pool_->Shutdown();
  loop_->Post([this] {
    finishing_ = true;
    finish_by_ = SteadyNow() + options_.stop_grace;
  });
  loop_->Join();
}

absl::Time UcxDataPlane::Tick() {
  std::vector<uint64_t> failed;
  failed.swap(failed_);
  for (uint64_t id : failed) Teardown(id);
  ucx::FreeCompletedRequests(closing_);
  const absl::Time now = SteadyNow();
  absl::Time next_release = absl::InfiniteFuture();
  absl::erase_if(pending_, [&](const auto& kv) {
    if (kv.second->release_at <= now) return true;
    next_release = std::min(next_release, kv.second->release_at);
    return false;
  });
  if (finishing_) {
    const bool sending = std::any_of(
        pending_.begin(), pending_.end(), [](const auto& kv) {
          return !kv.second->put.has_value() &&
                 kv.second->release_at == absl::InfiniteFuture();
        });
    if (!sending || now >= finish_by_) {
      CloseEverything();
      loop_->RequestExit();
      return absl::InfiniteFuture();
    }
    return std::min(finish_by_, now + absl::Milliseconds(5));
  }
  // Close requests complete on progress; look again soon while any remain.
  return closing_.empty() ? next_release
                          : std::min(next_release, now + absl::Milliseconds(10));
}

void UcxDataPlane::CloseEverything() {
  if (listener_ != nullptr) {
    ucp_listener_destroy(listener_);
    listener_ = nullptr;
  }
  std::vector<uint64_t> ids;
  for (const auto& kv : conns_) ids.push_back(kv.first);
  for (uint64_t id : ids) Teardown(id);
  // What is still pending is released after the worker is destroyed
  // (~UcxDataPlane), when UCX can no longer touch it.
  // Give the close requests a moment, then release them regardless.
  loop_->Drain(&closing_, absl::Seconds(1));
}

void UcxDataPlane::Teardown(uint64_t conn_id) {
  auto it = conns_.find(conn_id);
  if (it == conns_.end()) return;
  ucp_ep_h ep = it->second;
  conns_.erase(it);
  conn_of_ep_.erase(ep);
  tcp_only_.erase(conn_id);
  // Mode none cannot force-close (UCX 1.13 refuses): a flushing close
  // answers a client's orderly disconnect (its close waits for ours). After
  // a crash UCX logs the failed flush a few times before the close ends.
  const bool force = options_.peer_error_handling;
  if (void* r = ucx::CloseEp(ep, force)) closing_.push_back(r);
  // A forced close cancelled what was in flight: release it (leases
  // included). Without one, keep it a while: UCX may still finish it. A
  // completion that arrives later finds no entry and only frees its request.
  const absl::Time release_at = SteadyNow() + kOrphanGrace;
  if (force) {
    absl::erase_if(pending_, [&](const auto& kv) {
      return kv.second->conn_id == conn_id;
    });
    return;
  }
  for (auto& [id, p] : pending_) {
    if (p->conn_id == conn_id) p->release_at = release_at;
  }
}

void UcxDataPlane::OnConnRequest(ucp_conn_request_h request, void* arg) {
  auto* self = static_cast<UcxDataPlane*>(arg);
  if (self->stopping_ || self->listener_ == nullptr) {
    if (self->listener_ != nullptr) ucp_listener_reject(self->listener_, request);
    return;
  }
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST |
                 UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.conn_request = request;
  p.err_mode = self->options_.peer_error_handling ? UCP_ERR_HANDLING_MODE_PEER
                                                  : UCP_ERR_HANDLING_MODE_NONE;
  p.err_handler.cb = &UcxDataPlane::OnEpError;
  p.err_handler.arg = self;
  ucp_ep_h ep = nullptr;
  const ucs_status_t s = ucp_ep_create(self->loop_->worker(), &p, &ep);
  if (s != UCS_OK) {
    LogWarning("ucx_accept_failed", {{"error", ucs_status_string(s)}});
    return;
  }
  const uint64_t id = self->next_id_++;
  self->conns_[id] = ep;
  self->conn_of_ep_[ep] = id;
}

void UcxDataPlane::OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<UcxDataPlane*>(arg);
  auto it = self->conn_of_ep_.find(ep);
  // Torn down in Tick, outside UCX's callback.
  if (it != self->conn_of_ep_.end()) self->failed_.push_back(it->second);
}

ucs_status_t UcxDataPlane::OnRequest(void* arg, const void* header,
                                     size_t header_length, void* data,
                                     size_t length,
                                     const ucp_am_recv_param_t* param) {
  return static_cast<UcxDataPlane*>(arg)->HandleRequest(header, header_length,
                                                        data, length, param);
}

ucs_status_t UcxDataPlane::HandleRequest(const void* header,
                                         size_t header_length, void* data,
                                         size_t length,
                                         const ucp_am_recv_param_t* param) {
  // Returning UCS_OK without receiving drops a rendezvous block; the
  // sender's send completes normally.
  if (!(param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP)) return UCS_OK;
  auto conn = conn_of_ep_.find(param->reply_ep);
  if (conn == conn_of_ep_.end()) return UCS_OK;
  // version, op, flags and request_id: without them there is no one to
  // answer.
  if (header_length < kMinAnswerableHeaderBytes) return UCS_OK;
  Request req;
  const absl::Status header_status = ParseDataRequest(
      absl::MakeConstSpan(static_cast<const uint8_t*>(header), header_length),
      &req);
  req.conn_id = conn->second;
  req.start = SteadyNow();
  if (req.op == static_cast<uint16_t>(ucx::Op::kPut)) req.bytes_in = length;
  auto reject = [&](const absl::Status& s) {
    Reply(req, s, 0, std::nullopt);
    return UCS_OK;
  };
  if (!header_status.ok()) return reject(header_status);

  switch (static_cast<ucx::Op>(req.op)) {
    case ucx::Op::kPing:
      return reject(absl::OkStatus());
    case ucx::Op::kGet:
      if (length != 0) {
        return reject(
            absl::InvalidArgumentError("block: a GET request carries no data"));
      }
      if (!TryInlineGet(req)) SubmitGet(std::move(req));
      return UCS_OK;
    case ucx::Op::kPut:
      break;
    default:
      return reject(absl::InvalidArgumentError(
          absl::StrCat("op: unknown data-plane operation ", req.op)));
  }
  if (stopping_) {
    return reject(absl::UnavailableError(
        "data_plane: the daemon is shutting down"));
  }
  // Refused before anything is allocated for the block.
  if (absl::Status s = CheckPutAdmissible(ctx_, length); !s.ok()) {
    return reject(s);
  }
  const bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
  // Straight into the DRAM arena when it has room now (no eviction or
  // waiting on this thread), else into a pooled buffer that a pool thread
  // Put()s.
  const kvstore::PutOptions put_options =
      PutOptionsFor(req, absl::ZeroDuration());  // Never block.
  absl::StatusOr<kvstore::BlockReservation> reservation =
      ctx_->store->Reserve(req.key, length, put_options,
                           kvstore::ReserveOptions{.may_evict = false});
  if (absl::IsAlreadyExists(reservation.status())) {
    // First write wins: the block is not received (a rendezvous transfer is
    // dropped), as Put answers kAlreadyPresent without storing.
    Reply(req, absl::OkStatus(), ucx::kReplyAlreadyPresent, std::nullopt);
    return UCS_OK;
  }
  // No room without evicting, or another write of the key is in flight: a
  // pool thread's Put evicts, or waits for that write's outcome (answering
  // "already present" only if it stored the block).
  if (!reservation.ok() && !absl::IsResourceExhausted(reservation.status()) &&
      !absl::IsAborted(reservation.status())) {
    return reject(reservation.status());
  }
  uint8_t* dst = nullptr;
  size_t capacity = 0;
  ucx::PoolBuffer buffer;
  if (reservation.ok()) {
    dst = reservation->data().data();
  } else {
    buffer = buffers_->Acquire(length, &capacity);
    dst = buffer.get();
  }
  if (!rndv) {
    // Eager: valid only now. Into the arena it is copied and checksummed in
    // one pass (Commit then skips its own); a block that fails is left to
    // Commit, which refuses it with the same status and counts it.
    if (reservation.ok()) {
      reservation
          ->CopyIn(absl::MakeConstSpan(static_cast<const uint8_t*>(data),
                                       length))
          .IgnoreError();
      CommitOrSubmit(std::move(req), *std::move(reservation));
    } else {
      std::memcpy(dst, data, length);
      SubmitPut(std::move(req), std::move(buffer), capacity, length);
    }
    return UCS_OK;
  }
  const uint64_t id = next_id_++;
  auto pending = std::make_unique<Pending>();
  pending->conn_id = req.conn_id;
  if (reservation.ok()) pending->reservation = *std::move(reservation);
  pending->buffer = std::move(buffer);
  pending->capacity = capacity;
  pending->size = length;
  pending->put = std::move(req);
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.recv_am = &UcxDataPlane::OnPutData;
  rp.user_data = IdArg(id);
  void* r = ucp_am_recv_data_nbx(loop_->worker(), data, dst, length, &rp);
  if (UCS_PTR_IS_ERR(r)) {
    return reject(absl::UnavailableError(
        absl::StrCat("data_plane: receiving the block failed: ",
                     ucs_status_string(UCS_PTR_STATUS(r)))));
  }
  if (r == nullptr) {  // Already received.
    if (pending->reservation.has_value()) {
      CommitOrSubmit(std::move(*pending->put),
                     *std::move(pending->reservation));
    } else {
      SubmitPut(std::move(*pending->put), std::move(pending->buffer), capacity,
                length);
    }
  } else {
    pending_[id] = std::move(pending);
  }
  return UCS_OK;
}

void UcxDataPlane::OnPutData(void* request, ucs_status_t status, size_t length,
                             void* user_data) {
  ucp_request_free(request);
  UcxDataPlane* self = tls_plane;
  if (self == nullptr) return;  // The worker is being destroyed.
  // user_data is an id, never a pointer: the connection may be gone.
  auto it = self->pending_.find(ArgId(user_data));
  if (it == self->pending_.end()) return;
  std::unique_ptr<Pending> p = std::move(it->second);
  self->pending_.erase(it);
  if (status != UCS_OK || length != p->size) {
    self->Reply(*p->put,
                absl::UnavailableError(absl::StrCat(
                    "data_plane: receiving the block failed: ",
                    status != UCS_OK ? ucs_status_string(status)
                                     : "short transfer")),
                0, std::nullopt);
    return;
  }
  if (p->reservation.has_value()) {
    self->CommitOrSubmit(std::move(*p->put), *std::move(p->reservation));
    return;
  }
  self->SubmitPut(std::move(*p->put), std::move(p->buffer), p->capacity,
                  p->size);
}

void UcxDataPlane::OnReplySent(void* request, ucs_status_t status,
                               void* user_data) {
  ucp_request_free(request);
  if (tls_plane == nullptr) return;  // The worker is being destroyed.
  tls_plane->pending_.erase(ArgId(user_data));  // Releases the lease.
}

void UcxDataPlane::SubmitGet(Request req) {
  const bool queued = pool_->Submit([this, req]() mutable {
    const kvstore::GetOptions options = GetOptionsFor(req.flags);
    auto lease = ctx_->store->Get(req.key, options);
    if (!lease.ok()) {
      PostReply(std::move(req), lease.status(), 0, std::nullopt);
      return;
    }
    const uint32_t flags = ReplyFlagsFor(*lease);
    PostReply(std::move(req), absl::OkStatus(), flags, *std::move(lease));
  });
  if (!queued) {
    Reply(req, absl::UnavailableError("data_plane: the daemon is shutting down"),
          0, std::nullopt);
  }
}

void UcxDataPlane::SubmitPut(Request req, ucx::PoolBuffer buffer,
                             size_t capacity, size_t size) {
  const bool queued = pool_->Submit([this, req, buffer = std::move(buffer),
                                     capacity, size]() mutable {
    const kvstore::PutOptions options = PutOptionsFor(req, kInFlightWriteWait);
    auto outcome = StoreBlock(ctx_, req.key,
                              absl::MakeConstSpan(buffer.get(), size), options);
    buffers_->Release(std::move(buffer), capacity);  // The store copied it.
    const uint32_t flags =
        outcome.ok() && *outcome == kvstore::PutOutcome::kAlreadyPresent
            ? ucx::kReplyAlreadyPresent
            : 0;
    PostReply(std::move(req), outcome.status(), flags, std::nullopt);
  });
  if (!queued) {
    Reply(req, absl::UnavailableError("data_plane: the daemon is shutting down"),
          0, std::nullopt);
  }
}

bool UcxDataPlane::TryInlineGet(const Request& req) {
  if (options_.inline_store_max_bytes == 0) return false;
  kvstore::GetOptions fast = GetOptionsFor(req.flags);
  fast.fast_path_max_bytes = options_.inline_store_max_bytes;
  absl::StatusOr<kvstore::BlockLease> lease = ctx_->store->Get(req.key, fast);
  if (absl::IsFailedPrecondition(lease.status())) return false;  // Not here.
  if (!lease.ok()) {
    Reply(req, lease.status(), 0, std::nullopt);
  } else {
    const uint32_t flags = ReplyFlagsFor(*lease);
    Reply(req, absl::OkStatus(), flags, *std::move(lease));  // A DRAM block.
  }
  return true;
}

void UcxDataPlane::CommitOrSubmit(Request req,
                                  kvstore::BlockReservation reservation) {
  if (reservation.durable() ||
      reservation.data().size() > options_.inline_store_max_bytes) {
    SubmitCommit(std::move(req), std::move(reservation));
    return;
  }
  absl::Status s = CheckAcceptingBlocks(ctx_);
  if (s.ok()) {
    // Eviction may write the SSD tier: a store thread does it.
    s = ctx_->store->Commit(std::move(reservation),
                            kvstore::CommitOptions{.evict = false});
  } else {
    reservation.Abort();
  }
  if (ctx_->store->NeedsEviction() && !eviction_queued_.exchange(true)) {
    const bool queued = pool_->Submit([this] {
      eviction_queued_.store(false);
      ctx_->store->EvictToWatermarks();
    });
    if (!queued) eviction_queued_.store(false);
  }
  Reply(req, s, 0, std::nullopt);
}

void UcxDataPlane::SubmitCommit(Request req,
                                kvstore::BlockReservation reservation) {
  const bool queued = commit_pool_->Submit(
      [this, req, reservation = std::move(reservation)]() mutable {
        // The drain check as StoreBlock makes it; the checksum pass (unless
        // CopyIn did it) reads the block where it landed.
        absl::Status s = CheckAcceptingBlocks(ctx_);
        if (s.ok()) {
          s = ctx_->store->Commit(std::move(reservation));
        } else {
          reservation.Abort();
        }
        PostReply(std::move(req), std::move(s), 0, std::nullopt);
      });
  if (!queued) {
    Reply(req, absl::UnavailableError("data_plane: the daemon is shutting down"),
          0, std::nullopt);
  }
}

void UcxDataPlane::PostReply(Request req, absl::Status status, uint32_t flags,
                             std::optional<kvstore::BlockLease> lease) {
  // Dropped (lease released) if the loop has exited.
  loop_->Post([this, req = std::move(req), status = std::move(status), flags,
               lease = std::move(lease)]() mutable {
    Reply(req, status, flags, std::move(lease));
  });
}

void UcxDataPlane::Reply(const Request& req, const absl::Status& status,
                         uint32_t flags,
                         std::optional<kvstore::BlockLease> lease) {
  const uint64_t bytes_out = lease.has_value() ? lease->bytes().size() : 0;
  if (IsBlockOp(req.op)) {
    ctx_->metrics->RecordRpc(
        req.op == static_cast<uint16_t>(ucx::Op::kPut) ? Rpc::kPut : Rpc::kGet,
        status.code(), SteadyNow() - req.start, req.bytes_in, bytes_out);
  }
  auto conn = conns_.find(req.conn_id);
  if (conn == conns_.end()) return;  // Torn down: nobody to answer.
  auto pending = std::make_unique<Pending>();
  pending->conn_id = req.conn_id;
  pending->header = ReplyHeaderBytes(req.op, req.request_id, status, flags);
  const uint8_t* data = lease.has_value() ? lease->bytes().data() : nullptr;
  pending->lease = std::move(lease);
  const uint64_t id = next_id_++;
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.send = &UcxDataPlane::OnReplySent;
  rp.user_data = IdArg(id);
  if (bytes_out != 0 && bytes_out <= ucx::TcpEagerReplyMaxBytes()) {
    // The client's request arrived on this endpoint: its lanes are final.
    auto [known, inserted] = tcp_only_.try_emplace(req.conn_id, false);
    if (inserted) known->second = ucx::IsTcpOnly(conn->second);
    if (known->second) {
      // No rendezvous round trip: the block goes with the reply.
      rp.op_attr_mask |= UCP_OP_ATTR_FIELD_FLAGS;
      rp.flags = UCP_AM_SEND_FLAG_EAGER;
    }
  }
  void* r = ucp_am_send_nbx(conn->second, ucx::kReplyAmId,
                            pending->header.data(), pending->header.size(),
                            data, bytes_out, &rp);
  if (r == nullptr) return;  // Sent; the lease is released here.
  if (UCS_PTR_IS_ERR(r)) {
    LogWarning("ucx_reply_failed",
               {{"error", ucs_status_string(UCS_PTR_STATUS(r))}});
    return;
  }
  pending_[id] = std::move(pending);
}

}  // namespace strata::cluster
