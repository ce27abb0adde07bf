#include "cluster/server_config.h"

#include <grp.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/process_groups.h"
#include "common/status_macros.h"
#include "google/protobuf/io/tokenizer.h"
#include "google/protobuf/text_format.h"

namespace strata::cluster {
namespace {

using strata::v1::StratadConfig;

// sockaddr_un's sun_path holds 107 bytes and a terminator.
constexpr size_t kMaxSocketPathBytes = 107;

// tcp_data_plane_verify_piece's range (0 aside).
constexpr uint64_t kMinVerifyPiece = uint64_t{4} << 10;
constexpr uint64_t kMaxVerifyPiece = uint64_t{64} << 20;

// Collects text-format parse errors with their positions.
class ErrorCollector : public google::protobuf::io::ErrorCollector {
 public:
  void AddError(int line, google::protobuf::io::ColumnNumber column,
                const std::string& message) override {
    if (!first.empty()) return;
    first = absl::StrCat("line ", line + 1, ", column ", column + 1, ": ",
                         message);
  }
  std::string first;
};

// Whether a validated "host:port" (or "[host]:port") binds loopback only.
bool IsLoopbackListen(const std::string& host_port) {
  std::string host = host_port.substr(0, host_port.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}

// The embedded default of local_data_plane_path: DATA_DIR/local.sock when
// the socket plane runs and every listener a client reaches data through
// (gRPC, UCX, the socket plane), and the address a cluster advertises if
// set, is on loopback, so that every client is on this host. Otherwise ""
// (off), with the reason in `why_off`: remote clients cannot use a shared
// arena, and its memfd gets 4 KiB pages where a private arena has huge pages
// (large socket-plane GETs measured a fifth slower from it in session 16,
// within the VM's noise in session 17: bench/results/service.md).
std::string DefaultLocalPath(const StratadConfig& c, std::string* why_off) {
  if (c.tcp_data_plane_listen().empty()) {
    *why_off = "tcp_data_plane_listen is off";
    return "";
  }
  for (const auto& [field, value] :
       {std::pair<const char*, const std::string*>{"listen", &c.listen()},
        {"data_plane_listen", &c.data_plane_listen()},
        {"tcp_data_plane_listen", &c.tcp_data_plane_listen()},
        {"cluster_advertise", &c.cluster_advertise()}}) {
    if (!value->empty() && !IsLoopbackListen(*value)) {
      *why_off = absl::StrCat(field, " \"", *value,
                              "\" is not loopback: clients may be remote");
      return "";
    }
  }
  std::error_code error;
  const std::filesystem::path path =
      (std::filesystem::absolute(c.data_dir(), error) / "local.sock")
          .lexically_normal();
  if (error || path.native().size() > kMaxSocketPathBytes) {
    *why_off = absl::StrCat("\"", path.native(), "\" is longer than ",
                            kMaxSocketPathBytes, " bytes");
    return "";
  }
  return path.native();
}

}  // namespace

uint64_t AutoVerifyPieceBytes(unsigned hardware_threads) {
  // Measured on a 2-vCPU VM (64 KiB best: 128 KiB pieces put 256 KiB
  // requests at 79-82 us instead of 35 in 2 of 3 runs, one receive of the
  // whole block at 84-207 us) and a 16-vCPU host (128 KiB 7-27% above
  // 64 KiB for 1-32 MiB blocks): bench/results/service.md, session 17.
  return hardware_threads >= 8 ? uint64_t{128} << 10 : uint64_t{64} << 10;
}

unsigned UsableHardwareThreads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  return std::thread::hardware_concurrency();
}

absl::StatusOr<uint64_t> ParseByteSize(const std::string& field,
                                       const std::string& text) {
  std::string t(absl::StripAsciiWhitespace(text));
  size_t digits = 0;
  while (digits < t.size() && std::isdigit(static_cast<unsigned char>(t[digits]))) {
    ++digits;
  }
  uint64_t value = 0;
  if (digits == 0 || !absl::SimpleAtoi(t.substr(0, digits), &value)) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": \"", text, "\" is not a size (e.g. 512MiB, 16GiB)"));
  }
  std::string unit(absl::StripAsciiWhitespace(t.substr(digits)));
  struct Unit {
    const char* name;
    uint64_t factor;
  };
  static constexpr Unit kUnits[] = {
      {"", 1},          {"B", 1},
      {"KiB", 1ull << 10}, {"MiB", 1ull << 20}, {"GiB", 1ull << 30},
      {"TiB", 1ull << 40}, {"KB", 1000ull},     {"MB", 1000000ull},
      {"GB", 1000000000ull}, {"TB", 1000000000000ull}};
  for (const Unit& u : kUnits) {
    if (unit == u.name) {
      if (value > UINT64_MAX / u.factor) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": \"", text, "\" overflows 64 bits"));
      }
      return value * u.factor;
    }
  }
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": unknown unit \"", unit, "\" (use B, KiB, MiB, GiB, TiB)"));
}

absl::StatusOr<StratadConfig> LoadConfigFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(
        absl::StrCat("config: cannot open \"", path, "\""));
  }
  std::stringstream text;
  text << in.rdbuf();
  StratadConfig config;
  google::protobuf::TextFormat::Parser parser;
  ErrorCollector errors;
  parser.RecordErrorsTo(&errors);
  if (!parser.ParseFromString(text.str(), &config)) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: ", path, ": ", errors.first));
  }
  if (config.config_version() != 0 && config.config_version() != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("config_version: ", config.config_version(),
                     " is not supported (this build reads version 1)"));
  }
  return config;
}

absl::StatusOr<ServerConfig> ResolveConfig(StratadConfig c) {
  c.set_config_version(1);
  if (!c.has_listen()) c.set_listen("127.0.0.1:7070");
  if (!c.has_metrics_listen()) c.set_metrics_listen("127.0.0.1:9464");
  if (!c.has_data_dir()) c.set_data_dir("./strata-data");
  if (!c.has_dram_capacity()) c.set_dram_capacity("1GiB");
  if (!c.has_ssd_capacity()) c.set_ssd_capacity("16GiB");
  if (!c.has_dram_policy()) c.set_dram_policy("lru");
  if (!c.has_ssd_policy()) c.set_ssd_policy("lru");
  if (!c.has_high_watermark()) c.set_high_watermark(0.95);
  if (!c.has_low_watermark()) c.set_low_watermark(0.85);
  if (!c.has_write_through()) c.set_write_through(false);
  if (!c.has_ssd_sync_writes()) c.set_ssd_sync_writes(false);
  if (!c.has_promote_on_read()) c.set_promote_on_read(true);
  if (!c.has_max_block_size()) c.set_max_block_size("68MiB");
  if (!c.has_default_lease_ms()) c.set_default_lease_ms(10000);
  if (!c.has_max_pin_ttl_s()) c.set_max_pin_ttl_s(86400);
  if (!c.has_log_format()) c.set_log_format("json");
  if (!c.has_data_plane_listen()) c.set_data_plane_listen("127.0.0.1:7071");
  if (!c.has_data_plane_error_mode()) c.set_data_plane_error_mode("none");
  if (!c.has_tcp_data_plane_listen()) {
    c.set_tcp_data_plane_listen("127.0.0.1:0");
  }
  if (!c.has_tcp_data_plane_max_connections()) {
    c.set_tcp_data_plane_max_connections(256);
  }
  if (!c.has_grpc_threads()) {
    c.set_grpc_threads(std::max(4u, std::thread::hardware_concurrency()));
  }
  if (!c.has_tcp_data_plane_verify_piece() ||
      c.tcp_data_plane_verify_piece() == "auto") {
    c.set_tcp_data_plane_verify_piece(absl::StrCat(
        AutoVerifyPieceBytes(UsableHardwareThreads()) >> 10, "KiB"));
  }

  ServerConfig out;
  if (c.listen().empty() || c.listen().find(':') == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("listen: \"", c.listen(), "\" is not host:port"));
  }
  if (!c.metrics_listen().empty() &&
      c.metrics_listen().find(':') == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics_listen: \"", c.metrics_listen(), "\" is not host:port"));
  }
  for (const auto& [field, value] :
       {std::pair<const char*, const std::string*>{"data_plane_listen",
                                                   &c.data_plane_listen()},
        {"tcp_data_plane_listen", &c.tcp_data_plane_listen()}}) {
    if (value->empty()) continue;
    const size_t colon = value->rfind(':');
    uint32_t port = 0;
    if (colon == std::string::npos || colon == 0 ||
        !absl::SimpleAtoi(value->substr(colon + 1), &port) || port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          field, ": \"", *value, "\" is not host:port (\"\" = off)"));
    }
  }
  if (c.data_plane_error_mode() != "none" &&
      c.data_plane_error_mode() != "peer") {
    return absl::InvalidArgumentError(
        absl::StrCat("data_plane_error_mode: \"", c.data_plane_error_mode(),
                     "\" (want none or peer)"));
  }
  if (c.data_dir().empty()) {
    return absl::InvalidArgumentError("data_dir: must not be empty");
  }
  if (c.log_format() != "json" && c.log_format() != "text") {
    return absl::InvalidArgumentError(absl::StrCat(
        "log_format: \"", c.log_format(), "\" (want json or text)"));
  }
  if (c.grpc_threads() == 0) {
    return absl::InvalidArgumentError("grpc_threads: must be > 0");
  }
  if (c.tcp_data_plane_max_connections() == 0 ||
      c.tcp_data_plane_max_connections() > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tcp_data_plane_max_connections: ", c.tcp_data_plane_max_connections(),
        " (want 1..65536; each connection has a thread)"));
  }
  {
    absl::StatusOr<uint64_t> piece = ParseByteSize(
        "tcp_data_plane_verify_piece", c.tcp_data_plane_verify_piece());
    if (!piece.ok() || (*piece != 0 && (*piece < kMinVerifyPiece ||
                                        *piece > kMaxVerifyPiece))) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tcp_data_plane_verify_piece: \"", c.tcp_data_plane_verify_piece(),
          "\" (want \"auto\", \"0\" or a size from 4KiB to 64MiB)"));
    }
    out.tcp_data_plane_verify_piece_bytes = *piece;
  }
  out.listen = c.listen();
  out.metrics_listen = c.metrics_listen();
  out.data_plane_listen = c.data_plane_listen();
  out.data_plane_peer_errors = c.data_plane_error_mode() == "peer";
  out.tcp_data_plane_listen = c.tcp_data_plane_listen();
  out.tcp_data_plane_max_connections = c.tcp_data_plane_max_connections();
  if (!c.has_local_data_plane_path()) {
    c.set_local_data_plane_path(
        DefaultLocalPath(c, &out.local_data_plane_default_off));
    out.local_data_plane_by_default = !c.local_data_plane_path().empty();
  }
  if (!c.local_data_plane_path().empty()) {
    if (c.tcp_data_plane_listen().empty()) {
      return absl::InvalidArgumentError(
          "local_data_plane_path: needs the socket data plane "
          "(tcp_data_plane_listen is off)");
    }
    std::error_code error;
    const std::filesystem::path path =
        std::filesystem::absolute(c.local_data_plane_path(), error);
    if (error || path.native().size() > kMaxSocketPathBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "local_data_plane_path: \"", c.local_data_plane_path(),
          "\" is not a usable socket path (at most 107 bytes absolute)"));
    }
    out.local_data_plane_path = path.native();
    out.store.dram_shared = true;
  }
  if (!c.local_data_plane_group().empty()) {
    if (out.local_data_plane_path.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "local_data_plane_group: \"", c.local_data_plane_group(),
          "\" needs local connections (local_data_plane_path is off",
          out.local_data_plane_default_off.empty()
              ? ""
              : absl::StrCat(": ", out.local_data_plane_default_off),
          ")"));
    }
    group entry{};
    group* found = nullptr;
    std::vector<char> buffer(16384);
    int rc;
    // A group with many members needs a larger buffer (ERANGE).
    while ((rc = getgrnam_r(c.local_data_plane_group().c_str(), &entry,
                            buffer.data(), buffer.size(), &found)) == ERANGE &&
           buffer.size() < (size_t{1} << 24)) {
      buffer.resize(buffer.size() * 2);
    }
    const std::string field = absl::StrCat("local_data_plane_group: \"",
                                           c.local_data_plane_group(), "\"");
    if (rc != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": cannot look it up: ", std::strerror(rc)));
    }
    if (found == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": no such group"));
    }
    // In a user namespace every unmapped group shows as the overflow gid.
    if (found->gr_gid == 65534) {
      return absl::InvalidArgumentError(
          absl::StrCat(field,
                       " is gid 65534, which every unmapped group shows as "
                       "in a user namespace; use a group of its own"));
    }
    // The socket file is given the group: the daemon must be in it.
    if (geteuid() != 0 && !ProcessInGroup(found->gr_gid)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": the daemon's user is not in it"));
    }
    out.local_data_plane_gid = found->gr_gid;
  }
  out.data_dir = c.data_dir();
  out.log_format = c.log_format();
  out.grpc_threads = c.grpc_threads();

  kvstore::TieredStoreOptions& s = out.store;
  STRATA_ASSIGN_OR_RETURN(s.dram_capacity_bytes,
                          ParseByteSize("dram_capacity", c.dram_capacity()));
  STRATA_ASSIGN_OR_RETURN(s.ssd_capacity_bytes,
                          ParseByteSize("ssd_capacity", c.ssd_capacity()));
  if (s.ssd_capacity_bytes > 0) s.ssd_path = c.data_dir() + "/ssd";
  STRATA_ASSIGN_OR_RETURN(s.dram_policy,
                          kvstore::ParseEvictionPolicyKind(c.dram_policy()));
  auto ssd_policy = kvstore::ParseEvictionPolicyKind(c.ssd_policy());
  if (!ssd_policy.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ssd_policy: unknown policy \"", c.ssd_policy(),
        "\" (want lru or s3fifo)"));
  }
  s.ssd_policy = *ssd_policy;
  s.high_watermark = c.high_watermark();
  s.low_watermark = c.low_watermark();
  s.write_through = c.write_through();
  s.ssd_sync_writes = c.ssd_sync_writes();
  s.promote_on_read = c.promote_on_read();
  STRATA_ASSIGN_OR_RETURN(s.max_block_bytes,
                          ParseByteSize("max_block_size", c.max_block_size()));
  if (s.max_block_bytes > (uint64_t{1} << 30)) {
    return absl::InvalidArgumentError(
        "max_block_size: above the 1GiB limit of one gRPC message");
  }
  s.default_lease_ttl = absl::Milliseconds(c.default_lease_ms());
  s.max_pin_ttl = absl::Seconds(c.max_pin_ttl_s());
  if (s.default_lease_ttl > s.max_lease_ttl) s.max_lease_ttl = s.default_lease_ttl;
  if (auto st = s.Validate(); !st.ok()) {
    // Name the config field, not the options field.
    std::string msg(st.message());
    if (msg.rfind("default_lease_ttl", 0) == 0) {
      return absl::InvalidArgumentError("default_lease_ms: must be > 0");
    }
    if (msg.rfind("max_pin_ttl", 0) == 0) {
      return absl::InvalidArgumentError("max_pin_ttl_s: must be > 0");
    }
    if (msg.rfind("dram_capacity_bytes", 0) == 0) {
      return absl::InvalidArgumentError("dram_capacity: must be > 0");
    }
    return st;
  }
  // One block plus the protobuf framing of a put or a batch item.
  out.max_message_bytes = s.max_block_bytes + (uint64_t{16} << 20);
  out.effective = c;
  return out;
}

std::string ConfigText(const StratadConfig& config) {
  std::string text;
  google::protobuf::TextFormat::PrintToString(config, &text);
  return text;
}

}  // namespace strata::cluster
