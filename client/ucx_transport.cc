#include "client/ucx_transport.h"

#include <algorithm>
#include <cstring>
#include <future>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/steady_time.h"
#include "kvstore/block_format.h"

namespace strata::client::internal {
namespace {

// The transport whose worker this thread progresses (its loop thread, or a
// caller driving it): UCX completion callbacks get only a request id.
thread_local UcxTransport* tls_transport = nullptr;

void* IdArg(uint64_t id) { return reinterpret_cast<void*>(id); }
uint64_t ArgId(void* arg) { return reinterpret_cast<uint64_t>(arg); }

// UCX's generic datatype over a PackSource: UCX pulls the block into its
// own send buffer (the eager protocol's one copy) when it sends, from
// wherever the source points then.
void* StartPack(void* /*context*/, const void* buffer, size_t /*count*/) {
  return const_cast<void*>(buffer);
}
void* StartUnpack(void* /*context*/, void* /*buffer*/, size_t /*count*/) {
  return nullptr;  // Never used to receive.
}
size_t PackedSize(void* state) {
  return static_cast<UcxTransport::PackSource*>(state)->size;
}
size_t Pack(void* state, size_t offset, void* dest, size_t max_length) {
  const auto* source = static_cast<UcxTransport::PackSource*>(state);
  if (offset >= source->size) return 0;
  const size_t n = std::min(max_length, source->size - offset);
  std::memcpy(dest, source->data + offset, n);
  return n;
}
ucs_status_t Unpack(void* /*state*/, size_t /*offset*/, const void* /*src*/,
                    size_t /*length*/) {
  return UCS_ERR_UNSUPPORTED;
}
void FinishPack(void* /*state*/) {}

}  // namespace

void UcxTransport::PackSource::Detach() {
  if (own != nullptr) return;
  own = std::make_unique_for_overwrite<uint8_t[]>(size);
  if (size != 0) std::memcpy(own.get(), data, size);
  data = own.get();
}

struct UcxTransport::Call {
  uint64_t id = 0;
  ucx::Op op = ucx::Op::kPing;
  BlockKey key;
  uint32_t flags = 0;
  std::string tenant, model;
  // PUT: the block and what keeps it alive (null: the caller's memory, which
  // UCX must be done with before the call completes).
  const uint8_t* data = nullptr;
  size_t size = 0;
  std::shared_ptr<const void> keepalive;
  bool zero_copy = false;
  // Mode none, sync: `data` is the caller's memory, valid until the call
  // completes. Sent eagerly through a PackSource (Complete detaches it), or
  // copied into a pooled buffer when the attempt starts.
  bool borrowed = false;
  // Request ids whose sends pack from `data` (Complete detaches them).
  std::vector<uint64_t> packed_requests;
  // GET: into caller memory, or into `block`.
  bool into = false;
  uint8_t* dst = nullptr;
  size_t capacity = 0;
  absl::Time deadline;
  int attempts = 0;
  StatusCallback on_ping;
  PutCallback on_put;
  GetCallback on_get;
  SizeCallback on_into;
  // The caller blocks on the answer: it may drive the worker itself.
  bool caller_waits = false;
  // Set (on the thread driving) once the callback has run.
  bool* finished = nullptr;
  // GET: this client checks the block's checksum where it lands (asking the
  // daemon to skip its own pass on the first attempt).
  bool verify_here = false;
  // Set when the eager block was checked while it was copied where it
  // landed: that check's outcome.
  std::optional<absl::Status> landed_check;

  // The current attempt.
  uint64_t request_id = 0;  // 0: none in flight.
  uint64_t conn_id = 0;
  bool send_pending = false;
  bool recv_pending = false;
  bool replied = false;  // Reply (or failure) known.
  absl::Status status;
  uint32_t reply_flags = 0;
  size_t received = 0;
  std::shared_ptr<std::vector<uint8_t>> block;  // Get: UCX receives here.
  bool waiting_retry = false;
  // Mode none: the deadline passed while a GetInto's block was being
  // received; answer DEADLINE_EXCEEDED once the receive has ended.
  bool expired = false;
};

absl::StatusOr<std::unique_ptr<UcxTransport>> UcxTransport::Create(
    const UcxTransportOptions& options) {
  std::unique_ptr<UcxTransport> t(new UcxTransport());
  t->options_ = options;
  absl::Status parsed =
      ucx::ParseSockAddr("address", options.address, &t->addr_, &t->addr_len_);
  if (!parsed.ok()) return parsed;
  auto loop = ucx::WorkerLoop::Create(ucx::IsLoopback(t->addr_),
                                      /*callers_drive=*/true);
  if (!loop.ok()) return loop.status();
  t->loop_ = *std::move(loop);
  static const ucp_generic_dt_ops_t kPackOps = {
      &StartPack, &StartUnpack, &PackedSize, &Pack, &Unpack, &FinishPack};
  if (const ucs_status_t s =
          ucp_dt_create_generic(&kPackOps, nullptr, &t->pack_dt_);
      s != UCS_OK) {
    return absl::UnavailableError(absl::StrCat(
        "ucx: creating the pack datatype: ", ucs_status_string(s)));
  }
  t->pack_dt_created_ = true;
  const size_t max_header = t->loop_->max_am_header();
  t->max_label_bytes_ = max_header > sizeof(ucx::RequestHeader)
                            ? max_header - sizeof(ucx::RequestHeader)
                            : 0;
  t->loop_->Start([p = t.get()] { return p->Tick(); },
                  [p = t.get()] { return p->Idle(); });
  std::promise<absl::Status> ready;
  std::future<absl::Status> done = ready.get_future();
  t->loop_->Post([p = t.get(), &ready] {
    tls_transport = p;
    ucp_am_handler_param_t h{};
    h.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
                   UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                   UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
    h.id = ucx::kReplyAmId;
    h.flags = UCP_AM_FLAG_WHOLE_MSG;
    h.cb = &UcxTransport::OnReply;
    h.arg = p;
    const ucs_status_t s = ucp_worker_set_am_recv_handler(p->loop_->worker(), &h);
    ready.set_value(s == UCS_OK ? absl::OkStatus()
                                : absl::UnavailableError(absl::StrCat(
                                      "ucx: active messages: ",
                                      ucs_status_string(s))));
  });
  absl::Status s = done.get();
  if (!s.ok()) return s;  // The destructor stops the loop.
  return t;
}

UcxTransport::~UcxTransport() {
  if (loop_ == nullptr) return;
  loop_->Post([this] { Shutdown(); });
  loop_->Join();
  loop_.reset();  // Destroys the worker while the maps are still alive.
  if (pack_dt_created_) ucp_dt_destroy(pack_dt_);
}

void UcxTransport::Shutdown() {
  Teardown(absl::CancelledError("client: the client is being destroyed"));
  std::vector<uint64_t> ids;
  for (const auto& kv : calls_) ids.push_back(kv.first);
  for (uint64_t id : ids) {
    Complete(id, absl::CancelledError("client: the client is being destroyed"));
  }
  loop_->Drain(&closing_, absl::Seconds(1));
  tls_transport = nullptr;
  loop_->RequestExit();
}

// ---- Calls (any thread).

void UcxTransport::Submit(std::unique_ptr<Call> call) {
  if (call->caller_waits) {
    // Send and wait on this thread when the loop thread is asleep: the reply
    // then wakes only this thread (no hand-off to the loop thread and back).
    bool finished = false;
    call->finished = &finished;
    UcxTransport* const outer = tls_transport;
    tls_transport = this;
    const bool drove = loop_->TryDrive(
        [&] {
          if (call->op == ucx::Op::kGet) {
            // The hashing runs on this thread, where the block just landed.
            call->verify_here = true;
            call->flags |= ucx::kRequestClientVerifies;
          }
          Begin(std::move(call));
        },
        [&] { return finished; });
    tls_transport = outer;
    if (drove) return;
    call->finished = nullptr;  // Not started: the loop thread takes it.
  }
  // The closure owns the call until the loop takes it; if the loop is gone,
  // the call answers CANCELLED here.
  struct Box {
    std::unique_ptr<Call> call;
  };
  auto box = std::make_shared<Box>();
  box->call = std::move(call);
  if (loop_->Post([this, box] { Begin(std::move(box->call)); })) return;
  Call& c = *box->call;
  const absl::Status s = absl::CancelledError("client: the client is closed");
  if (c.on_ping) c.on_ping(s);
  if (c.on_put) c.on_put(s);
  if (c.on_get) c.on_get(s);
  if (c.on_into) c.on_into(s);
}

void UcxTransport::Ping(absl::Time deadline, StatusCallback done) {
  auto c = std::make_unique<Call>();
  c->op = ucx::Op::kPing;
  c->deadline = SteadyFromWall(deadline);
  c->on_ping = std::move(done);
  Submit(std::move(c));
}

void UcxTransport::Put(const BlockKey& key, absl::Span<const uint8_t> block,
                       bool caller_waits, const PutOptions& put,
                       absl::Time deadline, PutCallback done) {
  auto c = std::make_unique<Call>();
  c->op = ucx::Op::kPut;
  c->key = key;
  c->flags = put.durable ? ucx::kRequestDurable : 0;
  c->tenant = put.tenant;
  c->model = put.model;
  c->data = block.data();
  c->size = block.size();
  if (!caller_waits) {
    SendFromPooledCopy(*c);  // UCX may read the block after the call returns.
  } else if (options_.peer_error_handling) {
    c->zero_copy = true;  // A forced close can stop UCX reading it.
  } else {
    c->borrowed = true;  // Mode none: see StartAttempt and Complete.
  }
  c->deadline = SteadyFromWall(deadline);
  c->caller_waits = caller_waits;
  c->on_put = std::move(done);
  Submit(std::move(c));
}

bool UcxTransport::Idle() const {
  // Closing endpoints and orphaned holders keep a tick due instead.
  return calls_.empty() && sends_.empty() && recvs_.empty() &&
         (!conn_.has_value() || conn_->replies_due.empty());
}

void UcxTransport::SendFromPooledCopy(Call& c) {
  size_t capacity = 0;
  ucx::PoolBuffer copy = copies_->Acquire(c.size, &capacity);
  if (c.size != 0) std::memcpy(copy.get(), c.data, c.size);
  c.data = copy.get();
  c.keepalive = std::shared_ptr<uint8_t>(
      copy.release(), [pool = copies_, capacity](uint8_t* p) {
        pool->Release(ucx::PoolBuffer(p), capacity);
      });
  c.borrowed = false;
}

void UcxTransport::Get(const BlockKey& key, bool caller_waits,
                       absl::Time deadline, GetCallback done) {
  auto c = std::make_unique<Call>();
  c->op = ucx::Op::kGet;
  c->key = key;
  c->caller_waits = caller_waits;
  c->deadline = SteadyFromWall(deadline);
  c->on_get = std::move(done);
  Submit(std::move(c));
}

void UcxTransport::GetInto(const BlockKey& key, uint8_t* dst, size_t capacity,
                           bool caller_waits, absl::Time deadline,
                           SizeCallback done) {
  auto c = std::make_unique<Call>();
  c->op = ucx::Op::kGet;
  c->key = key;
  c->caller_waits = caller_waits;
  c->into = true;
  c->dst = dst;
  c->capacity = capacity;
  c->deadline = SteadyFromWall(deadline);
  c->on_into = std::move(done);
  Submit(std::move(c));
}

std::string UcxTransport::Describe() {
  std::promise<std::string> promise;
  std::future<std::string> future = promise.get_future();
  if (!loop_->Post([this, &promise] {
        promise.set_value(conn_.has_value() && !conn_->failed
                              ? ucx::DescribeLanes(conn_->ep)
                              : "");
      })) {
    return "";
  }
  return future.get();
}

// ---- The loop (the progress thread, or a caller driving the worker).

void UcxTransport::Begin(std::unique_ptr<Call> call) {
  const uint64_t id = next_id_++;
  call->id = id;
  Call& c = *call;
  calls_[id] = std::move(call);
  deadlines_.emplace(c.deadline, id);
  StartAttempt(c);
}

absl::Status UcxTransport::EnsureConn() {
  if (conn_.has_value() && !conn_->failed) return absl::OkStatus();
  if (conn_.has_value()) {
    Teardown(absl::UnavailableError(absl::StrCat(
        "data_plane: connection to ", options_.address,
        " failed: ", ucs_status_string(conn_->error))));
  }
  ucp_ep_params_t p{};
  p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                 UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                 UCP_EP_PARAM_FIELD_ERR_HANDLER;
  p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
  p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr_);
  p.sockaddr.addrlen = addr_len_;
  p.err_mode = options_.peer_error_handling ? UCP_ERR_HANDLING_MODE_PEER
                                            : UCP_ERR_HANDLING_MODE_NONE;
  p.err_handler.cb = &UcxTransport::OnEpError;
  p.err_handler.arg = this;
  ucp_ep_h ep = nullptr;
  const ucs_status_t s = ucp_ep_create(loop_->worker(), &p, &ep);
  if (s != UCS_OK) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: cannot connect to ", options_.address, ": ",
        ucs_status_string(s)));
  }
  conn_ = Conn{};
  conn_->id = next_id_++;
  conn_->ep = ep;
  return absl::OkStatus();
}

void UcxTransport::StartAttempt(Call& c) {
  ++c.attempts;
  c.waiting_retry = false;
  c.replied = false;
  c.send_pending = false;
  c.recv_pending = false;
  c.status = absl::OkStatus();
  c.reply_flags = 0;
  c.received = 0;
  c.landed_check.reset();
  c.request_id = next_id_++;
  by_request_[c.request_id] = c.id;
  finished_.push_back(c.id);  // Looked at after this returns.
  if (absl::Status s = EnsureConn(); !s.ok()) {
    c.replied = true;
    c.status = s;
    return;
  }
  c.conn_id = conn_->id;
  ucx::RequestHeader h{};
  h.version = ucx::kProtocolVersion;
  h.op = static_cast<uint16_t>(c.op);
  h.flags = c.flags;
  h.request_id = c.request_id;
  c.key.ToBytes(h.key);
  h.tenant_length = static_cast<uint16_t>(c.tenant.size());
  h.model_length = static_cast<uint16_t>(c.model.size());
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA |
                    UCP_OP_ATTR_FIELD_FLAGS;
  rp.flags = UCP_AM_SEND_FLAG_REPLY;  // The daemon answers on this endpoint.
  if (c.size != 0 && c.size <= ucx::TcpEagerPutMaxBytes() && conn_->answered) {
    if (!conn_->tcp_only.has_value()) {
      conn_->tcp_only = ucx::IsTcpOnly(conn_->ep);
    }
    // No rendezvous round trip: the block goes with the request.
    if (*conn_->tcp_only) rp.flags |= UCP_AM_SEND_FLAG_EAGER;
  }
  // UCX reads the header (and the block) until the send completes, possibly
  // after this attempt: the holder keeps both alive.
  Holder& holder = sends_[c.request_id];
  holder.conn_id = c.conn_id;
  const void* payload = c.data;
  size_t count = c.size;
  if (c.borrowed && (rp.flags & UCP_AM_SEND_FLAG_EAGER)) {
    // Eager over TCP is a copy into UCX's send buffer anyway: UCX packs
    // straight from the caller's memory, no copy of our own first.
    c.packed_requests.push_back(c.request_id);
    holder.pack = std::make_shared<PackSource>();
    holder.pack->data = c.data;
    holder.pack->size = c.size;
    rp.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
    rp.datatype = pack_dt_;
    payload = holder.pack.get();
    count = 1;
  } else if (c.borrowed) {
    // Rendezvous (or shared memory): UCX reads the block in place, maybe
    // after the call ends; send from a pooled copy.
    SendFromPooledCopy(c);
    payload = c.data;
  }
  holder.keepalive = c.keepalive;
  std::vector<uint8_t>& header = holder.header;
  header.resize(sizeof(h) + c.tenant.size() + c.model.size());
  std::memcpy(header.data(), &h, sizeof(h));
  std::memcpy(header.data() + sizeof(h), c.tenant.data(), c.tenant.size());
  std::memcpy(header.data() + sizeof(h) + c.tenant.size(), c.model.data(),
              c.model.size());
  rp.cb.send = &UcxTransport::OnSent;
  rp.user_data = IdArg(c.request_id);
  // Due before the send starts, so a reply taken while it runs finds it.
  conn_->replies_due.insert(c.request_id);
  void* r = ucp_am_send_nbx(conn_->ep, ucx::kRequestAmId, header.data(),
                            header.size(), payload, count, &rp);
  if (r == nullptr || UCS_PTR_IS_ERR(r)) sends_.erase(c.request_id);
  if (UCS_PTR_IS_ERR(r)) conn_->replies_due.erase(c.request_id);
  if (UCS_PTR_IS_ERR(r)) {
    c.replied = true;
    c.status = absl::UnavailableError(
        absl::StrCat("data_plane: sending the request failed: ",
                     ucs_status_string(UCS_PTR_STATUS(r))));
  } else if (r != nullptr) {
    c.send_pending = true;
  }
}

void UcxTransport::MaybeFinishAttempt(uint64_t call_id) {
  auto it = calls_.find(call_id);
  if (it == calls_.end()) return;
  Call& c = *it->second;
  if (c.request_id == 0 || !c.replied || c.recv_pending ||
      (c.zero_copy && c.send_pending)) {
    return;
  }
  by_request_.erase(c.request_id);
  c.request_id = 0;
  if (c.verify_here && c.status.ok() && !c.expired) {
    const absl::Status landed =
        c.landed_check.has_value()
            ? *c.landed_check
            : kvstore::ParseBlock(LandedBytes(c)).status();
    if (!landed.ok() && (c.flags & ucx::kRequestClientVerifies) != 0) {
      // Ask again with the daemon verifying: it drops a corrupt copy.
      c.flags &= ~ucx::kRequestClientVerifies;
      StartAttempt(c);
      return;
    }
    if (!landed.ok()) {
      c.status = absl::DataLossError(absl::StrCat(
          "checksum: the block of ", c.key.ToHex(),
          " failed its check where it landed, also after the daemon verified "
          "its copy (damaged in transit): ",
          landed.message()));
    }
  }
  if (c.expired) {
    Complete(call_id, absl::DeadlineExceededError(
                          "deadline: the daemon did not answer within the "
                          "call's deadline (UCX data plane)"));
    return;
  }
  if (absl::IsUnavailable(c.status) &&
      c.attempts < options_.retry.max_attempts) {
    const absl::Time when =
        SteadyNow() + options_.retry.Backoff(c.attempts + 1);
    if (when < c.deadline) {
      c.waiting_retry = true;
      retries_.emplace(when, c.id);
      return;
    }
  }
  Complete(call_id, c.status);
}

absl::Span<const uint8_t> UcxTransport::LandedBytes(const Call& c) {
  if (c.into) return absl::MakeConstSpan(c.dst, c.received);
  if (c.block != nullptr) return absl::MakeConstSpan(*c.block);
  return {};
}

void UcxTransport::Complete(uint64_t call_id, absl::Status status) {
  auto it = calls_.find(call_id);
  if (it == calls_.end()) return;
  std::unique_ptr<Call> c = std::move(it->second);
  calls_.erase(it);
  deadlines_.erase({c->deadline, call_id});
  // The caller may free the block once this returns: sends UCX has not
  // finished (a deadline, a failed connection) go on from a copy.
  for (uint64_t request_id : c->packed_requests) {
    if (auto h = sends_.find(request_id); h != sends_.end()) {
      h->second.pack->Detach();
    }
  }
  if (c->request_id != 0) by_request_.erase(c->request_id);
  if (c->on_ping) c->on_ping(status);
  if (c->on_put) {
    if (!status.ok()) {
      c->on_put(status);
    } else {
      c->on_put(PutResult{(c->reply_flags & ucx::kReplyAlreadyPresent) != 0});
    }
  }
  if (c->on_get) {
    if (!status.ok()) {
      c->on_get(status);
    } else {
      GetResult r;
      if (c->block != nullptr) r.block = std::move(*c->block);
      r.served_from =
          (c->reply_flags & ucx::kReplyServedFromSsd) ? "ssd" : "dram";
      c->on_get(std::move(r));
    }
  }
  if (c->on_into) {
    if (!status.ok()) {
      c->on_into(status);
    } else {
      c->on_into(c->received);
    }
  }
  if (c->finished != nullptr) *c->finished = true;
}

void UcxTransport::Expire(uint64_t call_id) {
  auto it = calls_.find(call_id);
  if (it == calls_.end()) return;
  Call& c = *it->second;
  const bool moving =
      c.request_id != 0 && (c.recv_pending || (c.zero_copy && c.send_pending));
  if (moving && options_.peer_error_handling) {
    // Stop the transfer before answering: a forced close cancels it.
    by_request_.erase(c.request_id);
    c.request_id = 0;
    c.send_pending = c.recv_pending = false;
    Teardown(absl::UnavailableError(absl::StrCat(
        "data_plane: connection to ", options_.address,
        " reset: a call's deadline passed mid-transfer")));
  } else if (moving && c.into) {
    // Mode none: the receive into the caller's region cannot be cancelled;
    // answer once it has ended (MaybeFinishAttempt).
    c.expired = true;
    deadlines_.erase({c.deadline, call_id});
    return;
  }
  // Whatever else is still moving uses memory the holders keep alive.
  Complete(call_id, absl::DeadlineExceededError(
                        "deadline: the daemon did not answer within the "
                        "call's deadline (UCX data plane)"));
}

void UcxTransport::Teardown(const absl::Status& why) {
  if (!conn_.has_value()) return;
  const Conn conn = *conn_;
  conn_.reset();
  const bool force = options_.peer_error_handling;
  // A failed endpoint in mode none can be neither force-closed (UCX 1.13
  // refuses) nor flushed (UCX logs an error on every progress until it
  // gives up): it is left to ucp_worker_destroy.
  if (force || !conn.failed) {
    if (void* r = ucx::CloseEp(conn.ep, force)) closing_.push_back(r);
  }
  // A forced close cancelled what was in flight: its memory is free now.
  // Without one, UCX may still finish an operation: keep its memory a while.
  const absl::Time release_at = SteadyNow() + kOrphanGrace;
  for (auto* holders : {&sends_, &recvs_}) {
    if (force) {
      absl::erase_if(*holders, [&](const auto& kv) {
        return kv.second.conn_id == conn.id;
      });
      continue;
    }
    for (auto& [id, holder] : *holders) {
      if (holder.conn_id == conn.id &&
          holder.release_at == absl::InfiniteFuture()) {
        holder.release_at = release_at;
        ++orphans_;
      }
    }
  }
  // The attempts on the connection are over.
  for (auto& [id, call] : calls_) {
    Call& c = *call;
    if (c.request_id == 0 || c.conn_id != conn.id) continue;
    if (!c.replied || c.recv_pending) c.status = why;
    c.replied = true;
    c.send_pending = c.recv_pending = false;
    finished_.push_back(id);
  }
}

absl::Time UcxTransport::ReleaseOrphans(absl::Time now) {
  absl::Time next = absl::InfiniteFuture();
  if (orphans_ == 0) return next;
  for (auto* holders : {&sends_, &recvs_}) {
    absl::erase_if(*holders, [&](const auto& kv) {
      if (kv.second.release_at <= now) {
        --orphans_;
        return true;
      }
      next = std::min(next, kv.second.release_at);
      return false;
    });
  }
  return next;
}

absl::Time UcxTransport::Tick() {
  if (conn_.has_value() && conn_->failed) {
    Teardown(absl::UnavailableError(absl::StrCat(
        "data_plane: connection to ", options_.address,
        " failed: ", ucs_status_string(conn_->error))));
  }
  absl::Time now = SteadyNow();
  while (!retries_.empty() && retries_.begin()->first <= now) {
    const uint64_t id = retries_.begin()->second;
    retries_.erase(retries_.begin());
    auto it = calls_.find(id);
    if (it != calls_.end() && it->second->waiting_retry) {
      StartAttempt(*it->second);
    }
  }
  while (!finished_.empty()) {
    std::vector<uint64_t> ids;
    ids.swap(finished_);
    for (uint64_t id : ids) MaybeFinishAttempt(id);
  }
  now = SteadyNow();
  while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
    const uint64_t id = deadlines_.begin()->second;
    if (!calls_.contains(id)) {
      deadlines_.erase(deadlines_.begin());
      continue;
    }
    Expire(id);  // Removes its entry.
  }
  while (!finished_.empty()) {  // Teardowns by expiring calls.
    std::vector<uint64_t> ids;
    ids.swap(finished_);
    for (uint64_t id : ids) MaybeFinishAttempt(id);
  }
  ucx::FreeCompletedRequests(closing_);
  absl::Time next = ReleaseOrphans(now);
  if (!retries_.empty()) next = std::min(next, retries_.begin()->first);
  if (!deadlines_.empty()) next = std::min(next, deadlines_.begin()->first);
  if (!closing_.empty()) next = std::min(next, now + absl::Milliseconds(10));
  if (!finished_.empty()) next = now;
  return next;
}

// ---- UCX callbacks (on the loop).

void UcxTransport::OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
  auto* self = static_cast<UcxTransport*>(arg);
  // Torn down in Tick, outside UCX's callback.
  if (self->conn_.has_value() && self->conn_->ep == ep) {
    self->conn_->failed = true;
    self->conn_->error = status;
  }
}

ucs_status_t UcxTransport::OnReply(void* arg, const void* header,
                                   size_t header_length, void* data,
                                   size_t length,
                                   const ucp_am_recv_param_t* param) {
  return static_cast<UcxTransport*>(arg)->HandleReply(header, header_length,
                                                      data, length, param);
}

ucs_status_t UcxTransport::HandleReply(const void* header,
                                       size_t header_length, void* data,
                                       size_t length,
                                       const ucp_am_recv_param_t* param) {
  // Returning UCS_OK without receiving drops a rendezvous block (the
  // daemon's send completes normally).
  if (header_length < sizeof(ucx::ReplyHeader)) return UCS_OK;
  ucx::ReplyHeader h;
  std::memcpy(&h, header, sizeof(h));
  if (conn_.has_value()) conn_->replies_due.erase(h.request_id);
  auto r = by_request_.find(h.request_id);
  if (r == by_request_.end()) return UCS_OK;  // Late or abandoned: dropped.
  auto it = calls_.find(r->second);
  if (it == calls_.end()) return UCS_OK;
  Call& c = *it->second;
  if (conn_.has_value() && c.conn_id == conn_->id) conn_->answered = true;
  if (c.replied) return UCS_OK;
  c.replied = true;
  finished_.push_back(c.id);
  if (h.version != ucx::kProtocolVersion ||
      h.op != static_cast<uint16_t>(c.op) ||
      header_length < sizeof(h) + h.message_length) {
    c.status = absl::InternalError(absl::StrCat(
        "response: malformed data-plane reply (version ", h.version, ", op ",
        h.op, ", ", header_length, " header bytes)"));
    return UCS_OK;
  }
  if (h.status != 0) {
    c.status = absl::Status(
        static_cast<absl::StatusCode>(h.status),
        std::string(static_cast<const char*>(header) + sizeof(h),
                    h.message_length));
    return UCS_OK;
  }
  c.reply_flags = h.flags;
  if (c.op != ucx::Op::kGet) return UCS_OK;
  uint8_t* dst = nullptr;
  if (c.into) {
    if (length > c.capacity) {
      c.status = absl::OutOfRangeError(absl::StrCat(
          "capacity: block is ", length, " bytes, capacity ", c.capacity));
      return UCS_OK;  // The block is discarded.
    }
    dst = c.dst;
  }
  c.received = length;
  if (!(param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV)) {
    // Eager: valid only now. Copied once (a new vector is not zeroed
    // first); into caller memory, copied and checked in one pass.
    const auto* src = static_cast<const uint8_t*>(data);
    if (!c.into) {
      c.block = std::make_shared<std::vector<uint8_t>>(src, src + length);
    } else if (c.verify_here) {
      c.landed_check = kvstore::CopyVerifiedBlock(
                           absl::MakeConstSpan(src, length),
                           absl::MakeSpan(dst, length))
                           .status();
    } else {
      std::memcpy(dst, src, length);
    }
    return UCS_OK;
  }
  if (!c.into) {
    c.block = std::make_shared<std::vector<uint8_t>>(length);
    dst = c.block->data();
  }
  ucp_request_param_t rp{};
  rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  rp.cb.recv_am = &UcxTransport::OnReceived;
  rp.user_data = IdArg(c.request_id);
  void* req = ucp_am_recv_data_nbx(loop_->worker(), data, dst, length, &rp);
  if (req != nullptr && !UCS_PTR_IS_ERR(req) && !c.into) {
    // The receive buffer outlives the call if the deadline comes first.
    Holder& holder = recvs_[c.request_id];
    holder.conn_id = c.conn_id;
    holder.keepalive = c.block;
  }
  if (UCS_PTR_IS_ERR(req)) {
    c.status = absl::UnavailableError(
        absl::StrCat("data_plane: receiving the block failed: ",
                     ucs_status_string(UCS_PTR_STATUS(req))));
  } else if (req != nullptr) {
    c.recv_pending = true;
  }
  return UCS_OK;
}

void UcxTransport::OnSent(void* request, ucs_status_t status,
                          void* user_data) {
  ucp_request_free(request);
  UcxTransport* self = tls_transport;
  if (self == nullptr) return;  // The worker is being destroyed.
  if (auto h = self->sends_.find(ArgId(user_data)); h != self->sends_.end()) {
    if (h->second.release_at != absl::InfiniteFuture()) --self->orphans_;
    self->sends_.erase(h);  // UCX is done with the header and the block.
  }
  if (status != UCS_OK && self->conn_.has_value()) {
    self->conn_->replies_due.erase(ArgId(user_data));  // None will come.
  }
  auto r = self->by_request_.find(ArgId(user_data));
  if (r == self->by_request_.end()) return;
  auto it = self->calls_.find(r->second);
  if (it == self->calls_.end()) return;
  Call& c = *it->second;
  c.send_pending = false;
  if (status != UCS_OK && !c.replied) {
    c.replied = true;
    c.status = absl::UnavailableError(absl::StrCat(
        "data_plane: sending the request failed: ", ucs_status_string(status)));
  }
  self->finished_.push_back(c.id);
}

void UcxTransport::OnReceived(void* request, ucs_status_t status,
                              size_t length, void* user_data) {
  ucp_request_free(request);
  UcxTransport* self = tls_transport;
  if (self == nullptr) return;  // The worker is being destroyed.
  if (auto h = self->recvs_.find(ArgId(user_data)); h != self->recvs_.end()) {
    if (h->second.release_at != absl::InfiniteFuture()) --self->orphans_;
    self->recvs_.erase(h);
  }
  auto r = self->by_request_.find(ArgId(user_data));
  if (r == self->by_request_.end()) return;
  auto it = self->calls_.find(r->second);
  if (it == self->calls_.end()) return;
  Call& c = *it->second;
  c.recv_pending = false;
  if (status != UCS_OK) {
    c.status = absl::UnavailableError(absl::StrCat(
        "data_plane: receiving the block failed: ", ucs_status_string(status)));
  } else if (length != c.received) {
    c.status = absl::UnavailableError(absl::StrCat(
        "data_plane: received ", length, " of ", c.received, " block bytes"));
  }
  self->finished_.push_back(c.id);
}

}  // namespace strata::client::internal
