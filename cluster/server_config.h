// stratad's configuration: the embedded defaults, the config file (protobuf
// text format, proto/strata/v1/config.proto, documented in docs/stratad.md)
// and command-line overrides, resolved into one ServerConfig.
//
// Thread safety: plain values; no shared state.
#ifndef STRATA_CLUSTER_SERVER_CONFIG_H_
#define STRATA_CLUSTER_SERVER_CONFIG_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvstore/tiered_store.h"
#include "strata/v1/config.pb.h"

namespace strata::cluster {

struct ServerConfig {
  std::string listen;          // gRPC "host:port"; port 0 picks a free one.
  std::string metrics_listen;  // Prometheus "host:port"; empty = off.
  std::string data_plane_listen;  // UCX "host:port"; empty = off.
  bool data_plane_peer_errors = false;  // data_plane_error_mode == "peer".
  std::string tcp_data_plane_listen;  // Socket data plane; empty = off.
  uint32_t tcp_data_plane_max_connections = 0;
  // tcp_data_plane_verify_piece in bytes ("auto" resolved); 0: one receive.
  uint64_t tcp_data_plane_verify_piece_bytes = 0;
  // Its local connections' Unix socket, absolute; empty = off. When set,
  // store.dram_shared is true. Unset in the config, it defaults to
  // DATA_DIR/local.sock when every listener a client reaches data through
  // (listen, data_plane_listen, tcp_data_plane_listen) and any
  // cluster_advertise are on loopback.
  std::string local_data_plane_path;
  // The path came from that default, not the config: stratad creates its
  // directory, and starts without local connections (logging why) where it
  // cannot listen there.
  bool local_data_plane_by_default = false;
  // Why the default left local connections off; "" when it did not apply.
  std::string local_data_plane_default_off;
  // local_data_plane_group's id; -1 when unset.
  int64_t local_data_plane_gid = -1;
  std::string data_dir;
  std::string log_format;      // "json" or "text".
  uint32_t grpc_threads = 0;
  uint64_t max_message_bytes = 0;  // max_block_size + headroom.
  kvstore::TieredStoreOptions store;
  strata::v1::StratadConfig effective;  // Every field set, for GetConfig.
};

// "64MiB" -> 67108864. Accepts an integer with an optional unit B, KiB, MiB,
// GiB, TiB (also KB/MB/GB/TB as powers of 1000). INVALID_ARGUMENT naming
// `field` otherwise.
absl::StatusOr<uint64_t> ParseByteSize(const std::string& field,
                                       const std::string& text);

// tcp_data_plane_verify_piece's "auto" for a daemon that may run on
// `hardware_threads`: 64 KiB below 8, 128 KiB from 8.
uint64_t AutoVerifyPieceBytes(unsigned hardware_threads);

// The hardware threads this process may run on (its affinity mask; the
// host's count where that cannot be read).
unsigned UsableHardwareThreads();

// Reads a config file in text format. INVALID_ARGUMENT naming the file and
// the parse error (line and column); NOT_FOUND when the file is missing.
absl::StatusOr<strata::v1::StratadConfig> LoadConfigFile(
    const std::string& path);

// Fills every unset field of `config` with the embedded default, validates
// and converts. INVALID_ARGUMENT naming the first bad field.
absl::StatusOr<ServerConfig> ResolveConfig(strata::v1::StratadConfig config);

// The effective configuration in config-file format.
std::string ConfigText(const strata::v1::StratadConfig& config);

}  // namespace strata::cluster

#endif  // STRATA_CLUSTER_SERVER_CONFIG_H_
