// GrpcClient's bulk data plane: discovery (Hello), choosing and connecting
// a transport (UCX or sockets), and the Put paths that use it. Get / GetInto
// pick it in grpc_client.cc.
#include <algorithm>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/grpc_client.h"
#include "client/tcp_transport.h"
#include "client/ucx_transport.h"
#include "common/status_macros.h"

namespace strata::client::internal {

namespace {

// A wildcard listen address means "the host you reached over gRPC".
std::string Reachable(const std::string& advertised,
                      const std::string& grpc_address) {
  const std::string host = advertised.substr(0, advertised.rfind(':'));
  if (host == "0.0.0.0" || host == "[::]" || host == "::") {
    return absl::StrCat(grpc_address.substr(0, grpc_address.rfind(':')),
                        advertised.substr(advertised.rfind(':')));
  }
  return advertised;
}

}  // namespace

absl::Status GrpcClient::StartDataPlane() {
  const std::string& want = options_.data_plane;
  // Hello: one attempt's worth of waiting in "auto" (a daemon that is down
  // must not hold Connect for the whole deadline), the full deadline when a
  // data plane is required.
  const absl::Duration budget =
      want != "auto" ? options_.default_deadline
                     : std::min(options_.default_deadline, absl::Seconds(5));
  const absl::Time deadline = absl::Now() + budget;
  v1::HelloRequest hello;
  if (want == "auto" || want == "ucx") hello.add_transports("ucx");
  if (want == "auto" || want == "tcp") hello.add_transports("tcp");
  if (want == "auto" || want == "local") hello.add_transports("local");
  using R = absl::StatusOr<v1::HelloResponse>;
  R answer = Unary<v1::HelloRequest, v1::HelloResponse, v1::HelloResponse>(
                 deadline, std::move(hello), STRATA_RPC(data_, Hello),
                 [](v1::HelloResponse& r) -> R { return std::move(r); })
                 .get();
  if (!answer.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: Hello to ", options_.address, " failed: ",
        answer.status().ToString()));
  }
  if (answer->protocol_version() != ucx::kProtocolVersion) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: the daemon speaks data-plane protocol version ",
        answer->protocol_version(), ", this client ", ucx::kProtocolVersion));
  }
  // Local connections with the shared arena first: a block is copied once,
  // by the client, with no socket transfer (bench/results/service.md).
  if (want == "auto" || want == "local") {
    absl::Status local_status = absl::UnavailableError(absl::StrCat(
        "data_plane: the daemon at ", options_.address,
        " serves no local connections (its local_data_plane_path is off)"));
    if (!answer->local_path().empty()) local_status = StartLocal(*answer, deadline);
    if (local_status.ok() || want == "local") return local_status;
  }
  const bool tcp_offered = !answer->tcp_address().empty();
  absl::Status ucx_status = absl::UnavailableError(absl::StrCat(
      "data_plane: the daemon at ", options_.address,
      " serves no UCX data plane (its data_plane_listen is off)"));
  if (want != "tcp" && !answer->ucx_address().empty()) {
    ucx_status = StartUcx(*answer, deadline);
    // "auto" keeps UCX unless every lane is TCP (any shared-memory lane
    // moves blocks faster than a socket); over TCP only, the socket plane
    // is faster (it copies each block once less on each side;
    // bench/results/service.md).
    if (ucx_status.ok() &&
        (want == "ucx" || !tcp_offered || data_plane_ != "ucx:tcp")) {
      return absl::OkStatus();
    }
  }
  if (want == "ucx") return ucx_status;
  if (!tcp_offered) {
    if (bulk_ != nullptr) return absl::OkStatus();  // "auto": UCX over TCP.
    return want == "tcp"
               ? absl::UnavailableError(absl::StrCat(
                     "data_plane: the daemon at ", options_.address,
                     " serves no socket data plane (its tcp_data_plane_listen "
                     "is off)"))
               : ucx_status;
  }
  absl::Status tcp_status = StartTcp(*answer, deadline);
  if (tcp_status.ok() || want == "tcp") return tcp_status;
  // "auto": UCX over TCP, if it started, is still better than gRPC.
  return bulk_ != nullptr ? absl::OkStatus() : tcp_status;
}

absl::Status GrpcClient::StartUcx(const v1::HelloResponse& hello,
                                  absl::Time deadline) {
  UcxTransportOptions ucx_options;
  ucx_options.address = Reachable(hello.ucx_address(), options_.address);
  ucx_options.peer_error_handling = hello.ucx_peer_error_handling();
  ucx_options.retry = policy_;
  auto transport = UcxTransport::Create(ucx_options);
  if (!transport.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: starting UCX: ", transport.status().message()));
  }
  std::promise<absl::Status> pinged;
  std::future<absl::Status> done = pinged.get_future();
  (*transport)->Ping(deadline, [&pinged](absl::Status s) {
    pinged.set_value(std::move(s));
  });
  if (absl::Status s = done.get(); !s.ok()) {
    return absl::UnavailableError(absl::StrCat("data_plane: no UCX round trip to ",
                                               ucx_options.address, ": ",
                                               s.ToString()));
  }
  data_plane_ = absl::StrCat("ucx:", (*transport)->Describe());
  bulk_ = *std::move(transport);
  return absl::OkStatus();
}

absl::Status GrpcClient::StartTcp(const v1::HelloResponse& hello,
                                  absl::Time deadline) {
  TcpTransportOptions tcp_options;
  tcp_options.address = Reachable(hello.tcp_address(), options_.address);
  tcp_options.retry = policy_;
  auto transport = TcpTransport::Create(tcp_options);
  if (!transport.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: the socket data plane's address: ",
        transport.status().message()));
  }
  if (absl::Status s = (*transport)->Ping(deadline); !s.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: no round trip to the socket data plane at ",
        tcp_options.address, ": ", s.ToString()));
  }
  bulk_ = *std::move(transport);  // Replaces a UCX transport over TCP.
  data_plane_ = "tcp";
  return absl::OkStatus();
}

absl::Status GrpcClient::StartLocal(const v1::HelloResponse& hello,
                                    absl::Time deadline) {
  TcpTransportOptions options;
  options.local_path = hello.local_path();
  options.retry = policy_;
  options.populate_arena_max_bytes = options_.populate_arena_max_bytes;
  options.local_daemon_uid = options_.local_daemon_uid;
  auto transport = TcpTransport::Create(options);
  if (!transport.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: the local connections' path: ",
        transport.status().message()));
  }
  if (absl::Status s =
          (*transport)->MapSharedArena(hello.local_token(), deadline);
      !s.ok()) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: no shared arena through ", options.local_path, ": ",
        s.ToString()));
  }
  bulk_ = *std::move(transport);
  data_plane_ = "local";
  return absl::OkStatus();
}

bool GrpcClient::PutOverBulk(absl::Span<const uint8_t> block,
                            const PutOptions& put) const {
  return bulk_ != nullptr && block.size() >= options_.ucx_min_bytes &&
         put.tenant.size() + put.model.size() <= bulk_->max_label_bytes() &&
         put.tenant.size() <= UINT16_MAX && put.model.size() <= UINT16_MAX;
}

std::future<absl::StatusOr<PutResult>> GrpcClient::BulkPut(
    const BlockKey& key, absl::Span<const uint8_t> block, bool caller_waits,
    const PutOptions& put, absl::Time deadline) {
  using R = absl::StatusOr<PutResult>;
  auto promise = std::make_shared<std::promise<R>>();
  std::future<R> future = promise->get_future();
  bulk_->Put(key, block, caller_waits, put, deadline,
            [promise](R r) { promise->set_value(std::move(r)); });
  return future;
}

absl::StatusOr<PutResult> GrpcClient::Put(const BlockKey& key,
                                          absl::Span<const uint8_t> block,
                                          const PutOptions& put,
                                          const CallOptions& call) {
  if (!PutOverBulk(block, put)) return PutAsync(key, block, put, call).get();
  STRATA_RETURN_IF_ERROR(ValidateBlock(block));
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  // The caller waits: in peer mode UCX reads the block from its memory.
  return BulkPut(key, block, /*caller_waits=*/true, put, deadline).get();
}

}  // namespace strata::client::internal
