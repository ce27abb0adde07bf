#include "cluster/data_plane_request.h"

#include <algorithm>
#include <cstring>
#include <string_view>

#include "absl/strings/str_cat.h"

namespace strata::cluster {

absl::Status ParseDataRequest(absl::Span<const uint8_t> header,
                              DataRequest* out) {
  ucx::RequestHeader h{};
  std::memcpy(&h, header.data(), std::min(header.size(), sizeof(h)));
  out->request_id = h.request_id;
  out->op = h.op;
  out->flags = h.flags;
  if (h.version != ucx::kProtocolVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "version: data-plane protocol version ", h.version,
        " is not supported (this daemon speaks ", ucx::kProtocolVersion, ")"));
  }
  if (header.size() < sizeof(h) ||
      header.size() != sizeof(h) + h.tenant_length + h.model_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header: ", header.size(), " bytes do not match a ", sizeof(h),
        "-byte request header with ", h.tenant_length, " + ", h.model_length,
        " label bytes"));
  }
  out->key = *kvstore::BlockKey::FromBytes(
      std::string_view(reinterpret_cast<const char*>(h.key), sizeof(h.key)));
  const char* labels = reinterpret_cast<const char*>(header.data()) + sizeof(h);
  out->tenant.assign(labels, h.tenant_length);
  out->model.assign(labels + h.tenant_length, h.model_length);
  return absl::OkStatus();
}

bool IsBlockOp(uint16_t op) {
  return op == static_cast<uint16_t>(ucx::Op::kGet) ||
         op == static_cast<uint16_t>(ucx::Op::kPut);
}

std::vector<uint8_t> ReplyHeaderBytes(uint16_t op, uint64_t request_id,
                                      const absl::Status& status,
                                      uint32_t flags) {
  const std::string_view message(
      status.message().data(),
      std::min(status.message().size(), ucx::kMaxMessageBytes));
  ucx::ReplyHeader h{};
  h.version = ucx::kProtocolVersion;
  h.op = op;
  h.status = static_cast<int32_t>(status.code());
  h.request_id = request_id;
  h.message_length = static_cast<uint32_t>(message.size());
  h.flags = flags;
  std::vector<uint8_t> bytes(sizeof(h) + message.size());
  std::memcpy(bytes.data(), &h, sizeof(h));
  std::memcpy(bytes.data() + sizeof(h), message.data(), message.size());
  return bytes;
}

absl::Status CheckPutAdmissible(const ServiceContext* ctx, uint64_t length) {
  if (absl::Status s = CheckAcceptingBlocks(ctx); !s.ok()) return s;
  const uint64_t max_block = ctx->store->options().max_block_bytes;
  if (length > max_block) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block: ", length, " bytes exceed max_block_bytes ", max_block));
  }
  return absl::OkStatus();
}

kvstore::PutOptions PutOptionsFor(const DataRequest& req,
                                  absl::Duration in_flight_write_wait) {
  kvstore::PutOptions options;
  options.in_flight_write_wait = in_flight_write_wait;
  if (req.flags & ucx::kRequestDurable) options.durable = true;
  options.tenant = req.tenant;
  options.model = req.model;
  return options;
}

kvstore::GetOptions GetOptionsFor(uint32_t request_flags) {
  kvstore::GetOptions options;
  options.verify_first_tier = (request_flags & ucx::kRequestClientVerifies) == 0;
  return options;
}

uint32_t ReplyFlagsFor(const kvstore::BlockLease& lease) {
  return lease.served_from() == kvstore::TierKind::kSsd
             ? ucx::kReplyServedFromSsd
             : 0;
}

}  // namespace strata::cluster
