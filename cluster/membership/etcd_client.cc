#include "cluster/membership/etcd_client.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include <grpcpp/grpcpp.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"

namespace strata::cluster {

struct EtcdClient::Stubs {
  std::unique_ptr<etcdserverpb::KV::Stub> kv;
  std::unique_ptr<etcdserverpb::Watch::Stub> watch;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease;
};

namespace {

absl::Status FromGrpc(const grpc::Status& s, const char* op) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat("etcd ", op, ": ", s.error_message()));
}

void SetDeadline(grpc::ClientContext* ctx, absl::Duration timeout) {
  ctx->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
}

EtcdKeyValue FromProto(const mvccpb::KeyValue& kv) {
  EtcdKeyValue out;
  out.key = kv.key();
  out.value = kv.value();
  out.create_revision = kv.create_revision();
  out.mod_revision = kv.mod_revision();
  out.version = kv.version();
  out.lease = kv.lease();
  return out;
}

constexpr absl::Duration kMinBackoff = absl::Milliseconds(100);
constexpr absl::Duration kMaxBackoff = absl::Seconds(1);

// ---- Lease keepalive.

class KeepAliveImpl : public EtcdKeepAlive {
 public:
  KeepAliveImpl(std::shared_ptr<EtcdClient::Stubs> stubs, int64_t lease,
                absl::Duration interval, std::function<void()> on_lost)
      : stubs_(std::move(stubs)),
        lease_(lease),
        interval_(std::max(interval, absl::Milliseconds(10))),
        on_lost_(std::move(on_lost)),
        last_renewal_(absl::Now()) {
    thread_ = std::thread([this] { Run(); });
  }

  ~KeepAliveImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      if (ctx_ != nullptr) ctx_->TryCancel();
    }
    cv_.notify_all();
    thread_.join();
  }

  absl::Time last_renewal() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return last_renewal_;
  }
  uint64_t renewals() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return renewals_;
  }

 private:
  // One stream: renew every interval until it breaks, stalls, the lease is
  // gone or we stop. Returns true when the lease is gone.
  bool RunStream() {
    auto ctx = std::make_shared<grpc::ClientContext>();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return false;
      ctx_ = ctx;
      broken_ = false;
      awaiting_ = false;
    }
    auto stream = stubs_->lease->LeaseKeepAlive(ctx.get());
    std::thread reader([&] {
      etcdserverpb::LeaseKeepAliveResponse resp;
      while (stream->Read(&resp)) {
        std::lock_guard<std::mutex> lock(mu_);
        if (resp.ttl() <= 0) {
          lost_ = true;
        } else {
          last_renewal_ = absl::Now();
          ++renewals_;
        }
        awaiting_ = false;
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> lock(mu_);
      broken_ = true;
      cv_.notify_all();
    });
    // An answer slower than this means the stream (or etcd) is stuck.
    const absl::Duration reply_timeout =
        std::max(interval_, absl::Milliseconds(1500));
    etcdserverpb::LeaseKeepAliveRequest req;
    req.set_id(lease_);
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_ && !lost_ && !broken_) {
      awaiting_ = true;
      lock.unlock();
      const bool wrote = stream->Write(req);
      lock.lock();
      if (!wrote) break;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(reply_timeout), [&] {
        return stop_ || lost_ || broken_ || !awaiting_;
      });
      if (stop_ || lost_ || broken_ || awaiting_) break;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(interval_),
                   [&] { return stop_ || broken_; });
    }
    const bool lost = lost_;
    ctx->TryCancel();
    lock.unlock();
    reader.join();
    stream->Finish();
    lock.lock();
    ctx_ = nullptr;
    return lost;
  }

  void Run() {
    absl::Duration backoff = kMinBackoff;
    while (true) {
      const uint64_t before = renewals();
      if (RunStream()) {
        if (on_lost_) on_lost_();
        return;
      }
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) return;
      if (renewals_ > before) backoff = kMinBackoff;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff),
                   [&] { return stop_; });
      if (stop_) return;
      backoff = std::min(backoff * 2, kMaxBackoff);
    }
  }

  const std::shared_ptr<EtcdClient::Stubs> stubs_;
  const int64_t lease_;
  const absl::Duration interval_;
  const std::function<void()> on_lost_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  bool lost_ = false;
  bool broken_ = false;
  bool awaiting_ = false;
  std::shared_ptr<grpc::ClientContext> ctx_;
  absl::Time last_renewal_;
  uint64_t renewals_ = 0;
  std::thread thread_;
};

// ---- Prefix watch.

class WatchImpl : public EtcdWatch {
 public:
  WatchImpl(std::shared_ptr<EtcdClient::Stubs> stubs, std::string prefix,
            int64_t start_revision,
            std::function<void(const std::vector<EtcdEvent>&, int64_t)>
                on_events,
            std::function<void(const absl::Status&)> on_reset, bool resume)
      : stubs_(std::move(stubs)),
        prefix_(std::move(prefix)),
        resume_(resume),
        next_revision_(start_revision),
        on_events_(std::move(on_events)),
        on_reset_(std::move(on_reset)) {
    thread_ = std::thread([this] { Run(); });
  }

  ~WatchImpl() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
      if (ctx_ != nullptr) ctx_->TryCancel();
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  // One stream. Returns a non-OK status when the watch cannot resume
  // without a gap; OK when the stream merely broke (or we stop).
  absl::Status RunStream(bool* progressed) {
    auto ctx = std::make_shared<grpc::ClientContext>();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return absl::OkStatus();
      ctx_ = ctx;
    }
    auto stream = stubs_->watch->Watch(ctx.get());
    etcdserverpb::WatchRequest req;
    auto* create = req.mutable_create_request();
    create->set_key(prefix_);
    create->set_range_end(EtcdPrefixEnd(prefix_));
    create->set_start_revision(next_revision_);
    create->set_progress_notify(true);
    absl::Status result;
    if (stream->Write(req)) {
      etcdserverpb::WatchResponse resp;
      while (result.ok() && stream->Read(&resp)) {
        *progressed = true;
        const int64_t rev = resp.header().revision();
        if (cluster_id_ == 0) cluster_id_ = resp.header().cluster_id();
        if (resp.header().cluster_id() != cluster_id_) {
          result = absl::AbortedError("etcd watch: the etcd cluster id changed");
        } else if (resp.compact_revision() > 0) {
          result = absl::OutOfRangeError(absl::StrCat(
              "etcd watch: revision ", next_revision_, " was compacted (at ",
              resp.compact_revision(), ")"));
        } else if (resp.canceled()) {
          result = absl::AbortedError(absl::StrCat(
              "etcd watch: canceled: ", resp.cancel_reason()));
        } else if (resp.created()) {
          if (next_revision_ > 0 && rev < next_revision_ - 1) {
            result = absl::AbortedError(absl::StrCat(
                "etcd watch: the store's revision went back from ",
                next_revision_ - 1, " to ", rev, " (a new etcd cluster?)"));
          } else if (next_revision_ == 0) {
            next_revision_ = rev + 1;
          }
        } else if (resp.events_size() > 0) {
          std::vector<EtcdEvent> events;
          events.reserve(resp.events_size());
          for (const auto& e : resp.events()) {
            EtcdEvent ev;
            ev.type = e.type() == mvccpb::Event::DELETE ? EtcdEvent::Type::kDelete
                                                        : EtcdEvent::Type::kPut;
            ev.kv = FromProto(e.kv());
            events.push_back(std::move(ev));
          }
          next_revision_ = events.back().kv.mod_revision + 1;
          if (on_events_) on_events_(events, rev);
        } else {
          // Progress notification: every event up to `rev` was sent.
          next_revision_ = std::max(next_revision_, rev + 1);
        }
      }
    }
    ctx->TryCancel();
    const grpc::Status finish = stream->Finish();
    std::lock_guard<std::mutex> lock(mu_);
    ctx_ = nullptr;
    if (result.ok() && !resume_ && !stop_) {
      result = absl::UnavailableError(absl::StrCat(
          "etcd watch: stream ended (", finish.error_message(), ")"));
    }
    return result;
  }

  void Run() {
    absl::Duration backoff = kMinBackoff;
    while (true) {
      bool progressed = false;
      absl::Status s = RunStream(&progressed);
      if (!s.ok()) {
        bool stopped;
        {
          std::lock_guard<std::mutex> lock(mu_);
          stopped = stop_;
        }
        if (!stopped && on_reset_) on_reset_(s);
        return;
      }
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) return;
      if (progressed) backoff = kMinBackoff;
      cv_.wait_for(lock, absl::ToChronoNanoseconds(backoff),
                   [&] { return stop_; });
      if (stop_) return;
      backoff = std::min(backoff * 2, kMaxBackoff);
    }
  }

  const std::shared_ptr<EtcdClient::Stubs> stubs_;
  const std::string prefix_;
  const bool resume_;
  int64_t next_revision_;  // Watch thread only.
  uint64_t cluster_id_ = 0;  // Watch thread only.
  const std::function<void(const std::vector<EtcdEvent>&, int64_t)> on_events_;
  const std::function<void(const absl::Status&)> on_reset_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::shared_ptr<grpc::ClientContext> ctx_;
  std::thread thread_;
};

}  // namespace

std::string EtcdPrefixEnd(const std::string& prefix) {
  std::string end = prefix;
  while (!end.empty()) {
    const unsigned char last = static_cast<unsigned char>(end.back());
    if (last < 0xff) {
      end.back() = static_cast<char>(last + 1);
      return end;
    }
    end.pop_back();
  }
  return std::string(1, '\0');  // Every key.
}

absl::StatusOr<std::unique_ptr<EtcdClient>> EtcdClient::Create(
    const EtcdOptions& options) {
  std::vector<std::string> endpoints;
  for (absl::string_view e :
       absl::StrSplit(options.endpoints, ',', absl::SkipWhitespace())) {
    e = absl::StripAsciiWhitespace(e);
    absl::ConsumePrefix(&e, "http://");
    const size_t colon = e.rfind(':');
    if (e.empty() || colon == absl::string_view::npos || colon == 0 ||
        colon + 1 == e.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("endpoints: \"", e, "\" is not HOST:PORT"));
    }
    endpoints.emplace_back(e);
  }
  if (endpoints.empty()) {
    return absl::InvalidArgumentError("endpoints: empty");
  }
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("call_timeout: must be positive");
  }
  const std::string target =
      endpoints.size() == 1 ? endpoints[0]
                            : absl::StrCat("ipv4:", absl::StrJoin(endpoints, ","));
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  // Not GRPC_ARG_MIN_RECONNECT_BACKOFF_MS: gRPC also uses it as the connect
  // timeout, and 100 ms is too short for a handshake on a busy machine.
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  auto channel = grpc::CreateCustomChannel(
      target, grpc::InsecureChannelCredentials(), args);
  return std::unique_ptr<EtcdClient>(new EtcdClient(options, channel));
}

EtcdClient::EtcdClient(EtcdOptions options,
                       std::shared_ptr<grpc::Channel> channel)
    : options_(std::move(options)), channel_(std::move(channel)) {
  auto stubs = std::make_shared<Stubs>();
  stubs->kv = etcdserverpb::KV::NewStub(channel_);
  stubs->watch = etcdserverpb::Watch::NewStub(channel_);
  stubs->lease = etcdserverpb::Lease::NewStub(channel_);
  stubs_ = std::move(stubs);
}

EtcdClient::~EtcdClient() = default;

absl::StatusOr<int64_t> EtcdClient::Put(const std::string& key,
                                        const std::string& value,
                                        int64_t lease) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.call_timeout);
  etcdserverpb::PutRequest req;
  req.set_key(key);
  req.set_value(value);
  req.set_lease(lease);
  etcdserverpb::PutResponse resp;
  grpc::Status s = stubs_->kv->Put(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s, "Put");
  return resp.header().revision();
}

absl::StatusOr<bool> EtcdClient::PutIfAbsent(const std::string& key,
                                             const std::string& value,
                                             int64_t lease) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.call_timeout);
  etcdserverpb::TxnRequest req;
  auto* cmp = req.add_compare();
  cmp->set_key(key);
  cmp->set_target(etcdserverpb::Compare::CREATE);
  cmp->set_result(etcdserverpb::Compare::EQUAL);
  cmp->set_create_revision(0);
  auto* put = req.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  put->set_lease(lease);
  etcdserverpb::TxnResponse resp;
  grpc::Status s = stubs_->kv->Txn(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s, "Txn");
  return resp.succeeded();
}

namespace {
absl::StatusOr<EtcdRangeResult> DoRange(etcdserverpb::KV::Stub* kv,
                                        absl::Duration timeout,
                                        const std::string& key,
                                        const std::string& range_end) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, timeout);
  etcdserverpb::RangeRequest req;
  req.set_key(key);
  req.set_range_end(range_end);
  etcdserverpb::RangeResponse resp;
  grpc::Status s = kv->Range(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s, "Range");
  EtcdRangeResult out;
  out.revision = resp.header().revision();
  out.kvs.reserve(resp.kvs_size());
  for (const auto& kv_pb : resp.kvs()) out.kvs.push_back(FromProto(kv_pb));
  return out;
}
}  // namespace

absl::StatusOr<EtcdRangeResult> EtcdClient::Get(const std::string& key) {
  return DoRange(stubs_->kv.get(), options_.call_timeout, key, "");
}

absl::StatusOr<EtcdRangeResult> EtcdClient::GetPrefix(
    const std::string& prefix) {
  return DoRange(stubs_->kv.get(), options_.call_timeout, prefix,
                 EtcdPrefixEnd(prefix));
}

absl::StatusOr<int64_t> EtcdClient::Delete(const std::string& key) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.call_timeout);
  etcdserverpb::DeleteRangeRequest req;
  req.set_key(key);
  etcdserverpb::DeleteRangeResponse resp;
  grpc::Status s = stubs_->kv->DeleteRange(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s, "DeleteRange");
  return resp.deleted();
}

absl::StatusOr<EtcdClient::CasResult> EtcdClient::PutIfModRevision(
    const std::string& key, const std::string& value,
    int64_t expected_mod_revision) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.call_timeout);
  etcdserverpb::TxnRequest req;
  auto* cmp = req.add_compare();
  cmp->set_key(key);
  cmp->set_target(etcdserverpb::Compare::MOD);
  cmp->set_result(etcdserverpb::Compare::EQUAL);
  cmp->set_mod_revision(expected_mod_revision);
  auto* put = req.add_success()->mutable_request_put();
  put->set_key(key);
  put->set_value(value);
  req.add_failure()->mutable_request_range()->set_key(key);
  etcdserverpb::TxnResponse resp;
  grpc::Status s = stubs_->kv->Txn(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s, "Txn");
  CasResult out;
  out.succeeded = resp.succeeded();
  if (out.succeeded) {
    out.revision = resp.header().revision();
  } else if (resp.responses_size() > 0 &&
             resp.responses(0).response_range().kvs_size() > 0) {
    out.current_mod_revision =
        resp.responses(0).response_range().kvs(0).mod_revision();
  }
  return out;
}

absl::StatusOr<EtcdLease> EtcdClient::LeaseGrant(absl::Duration ttl) {
  const int64_t ttl_s = absl::ToInt64Seconds(absl::Ceil(ttl, absl::Seconds(1)));
  if (ttl_s <= 0) return absl::InvalidArgumentError("ttl: must be >= 1 s");
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.call_timeout);
  etcdserverpb::LeaseGrantRequest req;
  req.set_ttl(ttl_s);
  etcdserverpb::LeaseGrantResponse resp;
  grpc::Status s = stubs_->lease->LeaseGrant(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s, "LeaseGrant");
  if (!resp.error().empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("etcd LeaseGrant: ", resp.error()));
  }
  return EtcdLease{resp.id(), resp.ttl()};
}

absl::Status EtcdClient::LeaseRevoke(int64_t lease) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.call_timeout);
  etcdserverpb::LeaseRevokeRequest req;
  req.set_id(lease);
  etcdserverpb::LeaseRevokeResponse resp;
  return FromGrpc(stubs_->lease->LeaseRevoke(&ctx, req, &resp), "LeaseRevoke");
}

absl::StatusOr<int64_t> EtcdClient::LeaseTimeToLive(int64_t lease) {
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options_.call_timeout);
  etcdserverpb::LeaseTimeToLiveRequest req;
  req.set_id(lease);
  etcdserverpb::LeaseTimeToLiveResponse resp;
  grpc::Status s = stubs_->lease->LeaseTimeToLive(&ctx, req, &resp);
  if (!s.ok()) return FromGrpc(s, "LeaseTimeToLive");
  if (resp.ttl() <= 0) {
    return absl::NotFoundError(
        absl::StrCat("etcd LeaseTimeToLive: lease ", lease, " not found"));
  }
  return resp.ttl();
}

std::unique_ptr<EtcdKeepAlive> EtcdClient::KeepAlive(
    int64_t lease, absl::Duration interval, std::function<void()> on_lost) {
  return std::make_unique<KeepAliveImpl>(stubs_, lease, interval,
                                         std::move(on_lost));
}

std::unique_ptr<EtcdWatch> EtcdClient::WatchPrefix(
    const std::string& prefix, int64_t start_revision,
    std::function<void(const std::vector<EtcdEvent>&, int64_t)> on_events,
    std::function<void(const absl::Status&)> on_reset, bool resume) {
  return std::make_unique<WatchImpl>(stubs_, prefix, start_revision,
                                     std::move(on_events), std::move(on_reset),
                                     resume);
}

}  // namespace strata::cluster
