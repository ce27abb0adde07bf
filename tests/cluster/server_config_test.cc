// stratad's configuration resolution (cluster/server_config.h): the socket
// data plane's settings (its local connections too) get their embedded
// defaults, and bad values are INVALID_ARGUMENT naming the field.
#include "cluster/server_config.h"

#include "absl/strings/match.h"
#include "gtest/gtest.h"

namespace strata::cluster {
namespace {

TEST(ServerConfig, TheSocketDataPlaneDefaultsToAFreeLoopbackPortAnd256Connections) {
  auto resolved = ResolveConfig(strata::v1::StratadConfig());
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->tcp_data_plane_listen, "127.0.0.1:0");
  EXPECT_EQ(resolved->tcp_data_plane_max_connections, 256u);
  EXPECT_TRUE(absl::StrContains(ConfigText(resolved->effective),
                                "tcp_data_plane_listen"));
}

TEST(ServerConfig, BadSocketDataPlaneSettingsNameTheirField) {
  struct Case {
    const char* what;
    strata::v1::StratadConfig config;
    const char* field;
  };
  std::vector<Case> cases(4);
  cases[0] = {"no port", {}, "tcp_data_plane_listen:"};
  cases[0].config.set_tcp_data_plane_listen("nohost");
  cases[1] = {"port out of range", {}, "tcp_data_plane_listen:"};
  cases[1].config.set_tcp_data_plane_listen("127.0.0.1:70000");
  cases[2] = {"no connections", {}, "tcp_data_plane_max_connections:"};
  cases[2].config.set_tcp_data_plane_max_connections(0);
  cases[3] = {"too many connections", {}, "tcp_data_plane_max_connections:"};
  cases[3].config.set_tcp_data_plane_max_connections(70000);
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

TEST(ServerConfig, LocalConnectionsAreOffByDefaultAndShareTheArenaWhenOn) {
  auto resolved = ResolveConfig(strata::v1::StratadConfig());
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_EQ(resolved->local_data_plane_path, "");
  EXPECT_FALSE(resolved->store.dram_shared);
  strata::v1::StratadConfig on;
  on.set_local_data_plane_path("run/stratad.sock");  // Relative.
  resolved = ResolveConfig(on);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_TRUE(resolved->store.dram_shared);
  EXPECT_EQ(resolved->local_data_plane_path.front(), '/');
  EXPECT_TRUE(absl::EndsWith(resolved->local_data_plane_path,
                             "/run/stratad.sock"));
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
