// GrpcClient's UCX data plane: discovery (Hello), connecting the UCX
// transport, and the Put paths that use it. Get / GetInto pick UCX in
// grpc_client.cc.
#include <algorithm>
#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/grpc_client.h"
#include "common/status_macros.h"

namespace strata::client::internal {

absl::Status GrpcClient::StartDataPlane() {
  // Hello: one attempt's worth of waiting in "auto" (a daemon that is down
  // must not hold Connect for the whole deadline), the full deadline in
  // "ucx".
  const absl::Duration budget =
      options_.data_plane == "ucx"
          ? options_.default_deadline
          : std::min(options_.default_deadline, absl::Seconds(5));
  const absl::Time deadline = absl::Now() + budget;
  v1::HelloRequest hello;
  hello.add_transports("ucx");
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
  if (answer->ucx_address().empty()) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: the daemon at ", options_.address,
        " serves no UCX data plane (its data_plane_listen is off)"));
  }
  if (answer->protocol_version() != ucx::kProtocolVersion) {
    return absl::UnavailableError(absl::StrCat(
        "data_plane: the daemon speaks data-plane protocol version ",
        answer->protocol_version(), ", this client ", ucx::kProtocolVersion));
  }
  // A wildcard listen address means "the host you reached over gRPC".
  std::string address = answer->ucx_address();
  const std::string host = address.substr(0, address.rfind(':'));
  if (host == "0.0.0.0" || host == "[::]" || host == "::") {
    address = absl::StrCat(options_.address.substr(0, options_.address.rfind(':')),
                           address.substr(address.rfind(':')));
  }
  UcxTransportOptions ucx_options;
  ucx_options.address = address;
  ucx_options.peer_error_handling = answer->ucx_peer_error_handling();
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
    return absl::UnavailableError(absl::StrCat(
        "data_plane: no UCX round trip to ", address, ": ", s.ToString()));
  }
  ucx_ = *std::move(transport);
  data_plane_ = absl::StrCat("ucx:", ucx_->Describe());
  return absl::OkStatus();
}

bool GrpcClient::PutOverUcx(absl::Span<const uint8_t> block,
                            const PutOptions& put) const {
  return ucx_ != nullptr && block.size() >= options_.ucx_min_bytes &&
         put.tenant.size() + put.model.size() <= ucx_->max_label_bytes() &&
         put.tenant.size() <= UINT16_MAX && put.model.size() <= UINT16_MAX;
}

std::future<absl::StatusOr<PutResult>> GrpcClient::UcxPut(
    const BlockKey& key, absl::Span<const uint8_t> block, bool caller_waits,
    const PutOptions& put, absl::Time deadline) {
  using R = absl::StatusOr<PutResult>;
  auto promise = std::make_shared<std::promise<R>>();
  std::future<R> future = promise->get_future();
  ucx_->Put(key, block, caller_waits, put, deadline,
            [promise](R r) { promise->set_value(std::move(r)); });
  return future;
}

absl::StatusOr<PutResult> GrpcClient::Put(const BlockKey& key,
                                          absl::Span<const uint8_t> block,
                                          const PutOptions& put,
                                          const CallOptions& call) {
  if (!PutOverUcx(block, put)) return PutAsync(key, block, put, call).get();
  STRATA_RETURN_IF_ERROR(ValidateBlock(block));
  STRATA_ASSIGN_OR_RETURN(absl::Time deadline, Deadline(call));
  // The caller waits: in peer mode UCX reads the block from its memory.
  return UcxPut(key, block, /*caller_waits=*/true, put, deadline).get();
}

}  // namespace strata::client::internal
