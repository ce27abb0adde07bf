#include "cluster/membership/member.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "cluster/membership/member.pb.h"

namespace strata::cluster {
namespace {
// This Abseil's string_view is not std::string_view.
absl::string_view AV(std::string_view s) { return {s.data(), s.size()}; }
}  // namespace

absl::Status ValidateNodeId(std::string_view node_id) {
  if (node_id.empty() || node_id.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("node_id: must be 1..128 characters, got ",
                     node_id.size()));
  }
  for (char c : node_id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                    (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(absl::StrCat(
          "node_id: \"", AV(node_id), "\" has a character outside [A-Za-z0-9._-]"));
    }
  }
  return absl::OkStatus();
}

absl::Status ValidateMember(const Member& m) {
  if (absl::Status s = ValidateNodeId(m.node_id); !s.ok()) return s;
  const size_t colon = m.grpc_address.rfind(':');
  if (m.grpc_address.empty() || colon == std::string::npos || colon == 0 ||
      colon + 1 == m.grpc_address.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "grpc_address: \"", m.grpc_address, "\" is not HOST:PORT"));
  }
  return absl::OkStatus();
}

std::string EncodeMember(const Member& m) {
  v1::Member p;
  p.set_format_version(kMemberFormatVersion);
  p.set_node_id(m.node_id);
  p.set_grpc_address(m.grpc_address);
  p.set_ucx_address(m.ucx_address);
  p.set_capacity_bytes(m.capacity_bytes);
  p.set_zone(m.zone);
  p.set_incarnation(m.incarnation);
  p.set_registered_unix_ms(m.registered_unix_ms);
  p.set_version(m.version);
  std::string out;
  p.SerializeToString(&out);
  return out;
}

absl::StatusOr<Member> DecodeMember(std::string_view bytes) {
  v1::Member p;
  if (!p.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::InvalidArgumentError("member: not a strata.cluster.v1.Member");
  }
  if (p.format_version() != kMemberFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("member: format_version ", p.format_version(),
                     " (this build reads ", kMemberFormatVersion, ")"));
  }
  Member m;
  m.node_id = p.node_id();
  m.grpc_address = p.grpc_address();
  m.ucx_address = p.ucx_address();
  m.capacity_bytes = p.capacity_bytes();
  m.zone = p.zone();
  m.incarnation = p.incarnation();
  m.registered_unix_ms = p.registered_unix_ms();
  m.version = p.version();
  if (absl::Status s = ValidateMember(m); !s.ok()) return s;
  return m;
}

std::string MembersPrefix(std::string_view prefix) {
  return absl::StrCat(AV(prefix), "members/");
}

std::string MemberKey(std::string_view prefix, std::string_view node_id) {
  return absl::StrCat(AV(prefix), "members/", AV(node_id));
}

std::string MemberDebugString(const Member& m) {
  return absl::StrCat("node_id=", m.node_id, " grpc=", m.grpc_address,
                      " ucx=", m.ucx_address.empty() ? "off" : m.ucx_address,
                      " capacity=", m.capacity_bytes,
                      " zone=", m.zone.empty() ? "-" : m.zone,
                      " incarnation=", m.incarnation);
}

StaticMemberSource::StaticMemberSource(MemberList members) {
  std::sort(members.begin(), members.end(),
            [](const Member& a, const Member& b) { return a.node_id < b.node_id; });
  members_ = std::move(members);
}

MemberList StaticMemberSource::Members() const {
  std::lock_guard<std::mutex> lock(mu_);
  return members_;
}

uint64_t StaticMemberSource::AddListener(Listener listener) {
  std::lock_guard<std::mutex> lock(listeners_mu_);
  const uint64_t id = next_id_++;
  listeners_.emplace(id, std::move(listener));
  return id;
}

void StaticMemberSource::RemoveListener(uint64_t id) {
  std::lock_guard<std::mutex> lock(listeners_mu_);
  listeners_.erase(id);
}

void StaticMemberSource::SetMembers(MemberList members) {
  std::sort(members.begin(), members.end(),
            [](const Member& a, const Member& b) { return a.node_id < b.node_id; });
  {
    std::lock_guard<std::mutex> lock(mu_);
    members_ = members;
  }
  std::lock_guard<std::mutex> lock(listeners_mu_);
  for (auto& [id, listener] : listeners_) listener(members);
}

}  // namespace strata::cluster
