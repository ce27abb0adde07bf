// stratad's configuration resolution (cluster/server_config.h): the socket
// data plane's settings (its local connections too, on by default only
// where every data listener is loopback) get their embedded defaults, and
// bad values are INVALID_ARGUMENT naming the field.
#include "cluster/server_config.h"

#include <grp.h>

#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace strata::cluster {
namespace {

// INVALID_ARGUMENT with a message that starts with `field`.
void ExpectInvalidNaming(const absl::StatusOr<ServerConfig>& resolved,
                         const char* field) {
  EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(resolved.status().message(), field))
      << resolved.status();
}

TEST(ServerConfig, TheSocketDataPlaneDefaultsToAFreeLoopbackPortAnd256Connections) {
  auto resolved = ResolveConfig(strata::v1::StratadConfig());
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->tcp_data_plane_listen, "127.0.0.1:0");
  EXPECT_EQ(resolved->tcp_data_plane_max_connections, 256u);
  EXPECT_TRUE(absl::StrContains(ConfigText(resolved->effective),
                                "tcp_data_plane_listen"));
}

// Where the client and the daemon share the cores, small pieces keep both
// moving; with cores to spare, fewer wake-ups matter more.
TEST(ServerConfig, TheVerifyPieceIsPickedByTheHostsHardwareThreadsUnlessSet) {
  EXPECT_EQ(AutoVerifyPieceBytes(0), 64u << 10);  // Unknown.
  EXPECT_EQ(AutoVerifyPieceBytes(1), 64u << 10);
  EXPECT_EQ(AutoVerifyPieceBytes(2), 64u << 10);
  EXPECT_EQ(AutoVerifyPieceBytes(7), 64u << 10);
  EXPECT_EQ(AutoVerifyPieceBytes(8), 128u << 10);
  EXPECT_EQ(AutoVerifyPieceBytes(128), 128u << 10);
  // By the CPUs this process may use, not the host's.
  EXPECT_LE(UsableHardwareThreads(), std::thread::hardware_concurrency());
  EXPECT_GE(UsableHardwareThreads(), 1u);
  const uint64_t here = AutoVerifyPieceBytes(UsableHardwareThreads());
  for (const char* unset_or_auto : {"", "auto"}) {
    strata::v1::StratadConfig config;
    if (*unset_or_auto != '\0') config.set_tcp_data_plane_verify_piece("auto");
    auto resolved = ResolveConfig(config);
    ASSERT_TRUE(resolved.ok()) << resolved.status();
    EXPECT_EQ(resolved->tcp_data_plane_verify_piece_bytes, here);
    // The config view shows what "auto" became.
    EXPECT_EQ(resolved->effective.tcp_data_plane_verify_piece(),
              absl::StrCat(here >> 10, "KiB"));
  }
  for (const auto& [text, bytes] :
       {std::pair<const char*, uint64_t>{"256KiB", 256 << 10},
        {"4KiB", 4 << 10},
        {"64MiB", 64 << 20},
        {"0", 0}}) {
    strata::v1::StratadConfig config;
    config.set_tcp_data_plane_verify_piece(text);
    auto resolved = ResolveConfig(config);
    ASSERT_TRUE(resolved.ok()) << text << ": " << resolved.status();
    EXPECT_EQ(resolved->tcp_data_plane_verify_piece_bytes, bytes) << text;
  }
}

TEST(ServerConfig, BadSocketDataPlaneSettingsNameTheirField) {
  struct Case {
    const char* what;
    strata::v1::StratadConfig config;
    const char* field;
  };
  std::vector<Case> cases(8);
  cases[0] = {"no port", {}, "tcp_data_plane_listen:"};
  cases[0].config.set_tcp_data_plane_listen("nohost");
  cases[1] = {"port out of range", {}, "tcp_data_plane_listen:"};
  cases[1].config.set_tcp_data_plane_listen("127.0.0.1:70000");
  cases[2] = {"no connections", {}, "tcp_data_plane_max_connections:"};
  cases[2].config.set_tcp_data_plane_max_connections(0);
  cases[3] = {"too many connections", {}, "tcp_data_plane_max_connections:"};
  cases[3].config.set_tcp_data_plane_max_connections(70000);
  cases[4] = {"piece below 4KiB", {}, "tcp_data_plane_verify_piece:"};
  cases[4].config.set_tcp_data_plane_verify_piece("1KiB");
  cases[5] = {"piece above 64MiB", {}, "tcp_data_plane_verify_piece:"};
  cases[5].config.set_tcp_data_plane_verify_piece("65MiB");
  cases[6] = {"piece not a size", {}, "tcp_data_plane_verify_piece:"};
  cases[6].config.set_tcp_data_plane_verify_piece("big");
  cases[7] = {"auto misspelt", {}, "tcp_data_plane_verify_piece:"};
  cases[7].config.set_tcp_data_plane_verify_piece("Auto");
  for (const Case& c : cases) {
    auto resolved = ResolveConfig(c.config);
    EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument)
        << c.what;
    EXPECT_TRUE(absl::StartsWith(resolved.status().message(), c.field))
        << c.what << ": " << resolved.status();
  }
  strata::v1::StratadConfig off;
  off.set_tcp_data_plane_listen("");  // "" turns the plane off.
  auto resolved = ResolveConfig(off);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->tcp_data_plane_listen, "");
}

TEST(ServerConfig,
     LocalConnectionsDefaultToTheDataDirWhenEveryListenerIsLoopback) {
  strata::v1::StratadConfig config;
  config.set_data_dir("/var/tmp/strata-test/./data");
  auto resolved = ResolveConfig(config);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->local_data_plane_path,
            "/var/tmp/strata-test/data/local.sock");
  EXPECT_TRUE(resolved->local_data_plane_by_default);
  EXPECT_EQ(resolved->local_data_plane_default_off, "");
  EXPECT_TRUE(resolved->store.dram_shared);
  // The config view shows the path the default chose.
  EXPECT_TRUE(absl::StrContains(ConfigText(resolved->effective),
                                "/var/tmp/strata-test/data/local.sock"));
  // Other loopback spellings count as loopback too.
  config.set_listen("localhost:7070");
  config.set_data_plane_listen("[::1]:7071");
  config.set_tcp_data_plane_listen("127.0.0.2:0");
  resolved = ResolveConfig(config);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_TRUE(resolved->local_data_plane_by_default);
}

TEST(ServerConfig,
     LocalConnectionsDefaultToOffWhenAnyDataListenerIsNotLoopback) {
  for (const char* field : {"listen", "data_plane_listen",
                            "tcp_data_plane_listen", "cluster_advertise"}) {
    strata::v1::StratadConfig config;
    if (std::string(field) == "listen") config.set_listen("0.0.0.0:7070");
    if (std::string(field) == "data_plane_listen") {
      config.set_data_plane_listen("10.0.0.5:7071");
    }
    if (std::string(field) == "tcp_data_plane_listen") {
      config.set_tcp_data_plane_listen("[::]:0");
    }
    // A loopback listener behind a forwarder that clients elsewhere reach.
    if (std::string(field) == "cluster_advertise") {
      config.set_cluster_advertise("10.0.1.7:7070");
    }
    auto resolved = ResolveConfig(config);
    ASSERT_TRUE(resolved.ok()) << field << ": " << resolved.status();
    EXPECT_EQ(resolved->local_data_plane_path, "") << field;
    EXPECT_FALSE(resolved->local_data_plane_by_default) << field;
    EXPECT_FALSE(resolved->store.dram_shared) << field;
    EXPECT_TRUE(absl::StartsWith(resolved->local_data_plane_default_off,
                                 absl::StrCat(field, " ")))
        << field << ": " << resolved->local_data_plane_default_off;
  }
  // The metrics endpoint moves no blocks: it does not count.
  strata::v1::StratadConfig metrics_public;
  metrics_public.set_metrics_listen("0.0.0.0:9464");
  auto resolved = ResolveConfig(metrics_public);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_TRUE(resolved->local_data_plane_by_default);
  // Without the socket plane, or with a data_dir too long for a socket
  // path, the default is off (not an error: nobody asked for it).
  strata::v1::StratadConfig no_socket_plane;
  no_socket_plane.set_tcp_data_plane_listen("");
  resolved = ResolveConfig(no_socket_plane);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->local_data_plane_path, "");
  EXPECT_EQ(resolved->local_data_plane_default_off,
            "tcp_data_plane_listen is off");
  strata::v1::StratadConfig long_dir;
  long_dir.set_data_dir("/tmp/" + std::string(110, 'd'));
  resolved = ResolveConfig(long_dir);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->local_data_plane_path, "");
  EXPECT_TRUE(absl::StrContains(resolved->local_data_plane_default_off,
                                "longer than 107 bytes"))
      << resolved->local_data_plane_default_off;
}

TEST(ServerConfig, AnExplicitLocalPathWinsOverTheDefault) {
  strata::v1::StratadConfig off;
  off.set_local_data_plane_path("");  // "" turns local connections off.
  auto resolved = ResolveConfig(off);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->local_data_plane_path, "");
  EXPECT_FALSE(resolved->local_data_plane_by_default);
  EXPECT_EQ(resolved->local_data_plane_default_off, "");
  EXPECT_FALSE(resolved->store.dram_shared);
  strata::v1::StratadConfig on;
  on.set_local_data_plane_path("run/stratad.sock");  // Relative.
  on.set_listen("0.0.0.0:7070");  // Set explicitly, it is on regardless.
  resolved = ResolveConfig(on);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_TRUE(resolved->store.dram_shared);
  EXPECT_FALSE(resolved->local_data_plane_by_default);
  EXPECT_EQ(resolved->local_data_plane_path.front(), '/');
  EXPECT_TRUE(absl::EndsWith(resolved->local_data_plane_path,
                             "/run/stratad.sock"));
}

TEST(ServerConfig, ALocalGroupIsResolvedByNameAndNeedsLocalConnections) {
  strata::v1::StratadConfig config;
  config.set_local_data_plane_group("root");  // gid 0 on every Linux.
  auto resolved = ResolveConfig(config);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->local_data_plane_gid, 0);
  EXPECT_EQ(ResolveConfig(strata::v1::StratadConfig())->local_data_plane_gid,
            -1);
  config.set_local_data_plane_group("no-such-group-strata");
  resolved = ResolveConfig(config);
  ExpectInvalidNaming(resolved, "local_data_plane_group:");
  // The overflow gid, which unmapped groups show as in a user namespace.
  if (getgrgid(65534) != nullptr) {
    config.set_local_data_plane_group(getgrgid(65534)->gr_name);
    ExpectInvalidNaming(ResolveConfig(config), "local_data_plane_group:");
  }
  // Local connections off (here: a remote listener turns the default off).
  config.set_local_data_plane_group("root");
  config.set_listen("0.0.0.0:7070");
  resolved = ResolveConfig(config);
  ExpectInvalidNaming(resolved, "local_data_plane_group:");
  EXPECT_TRUE(absl::StrContains(resolved.status().message(), "not loopback"))
      << resolved.status();
}

TEST(ServerConfig, BadLocalConnectionSettingsNameTheirField) {
  strata::v1::StratadConfig no_socket_plane;
  no_socket_plane.set_local_data_plane_path("/tmp/stratad.sock");
  no_socket_plane.set_tcp_data_plane_listen("");
  auto resolved = ResolveConfig(no_socket_plane);
  EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(resolved.status().message(),
                               "local_data_plane_path:"))
      << resolved.status();
  strata::v1::StratadConfig too_long;
  too_long.set_local_data_plane_path("/tmp/" + std::string(120, 's'));
  resolved = ResolveConfig(too_long);
  EXPECT_EQ(resolved.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(resolved.status().message(),
                               "local_data_plane_path:"))
      << resolved.status();
}

}  // namespace
}  // namespace strata::cluster
