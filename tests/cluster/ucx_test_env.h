// The UCX environment shared by the UCX test fixtures (ucx_data_plane_test,
// ucx_batch_test): UCX on loopback only, with one transport list (UCX_TLS),
// set for this process in SetUp (before any client exists: UCX reads the
// environment when a client starts) and for the daemons through Env().
//
// Threading: SetUp calls setenv, so the fixtures are used from the test's
// thread before it starts any other. Header-only: test code.
#ifndef STRATA_TESTS_CLUSTER_UCX_TEST_ENV_H_
#define STRATA_TESTS_CLUSTER_UCX_TEST_ENV_H_

#include <stdlib.h>

#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "httplib.h"
#include "kvstore/block_format.h"
#include "tests/cluster/stratad_process.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::testing {

// A bulk data plane for the client (ClientOptions::data_plane: "ucx", or
// "tcp" for the socket plane) and, for UCX, a transport selection, as
// UCX_TLS. With UCX 1.13 the client-server connection needs tcp in the list
// even when the bytes move over shared memory (sysv/posix for messages, cma
// for rendezvous).
struct UcxTransport {
  const char* name;
  const char* tls;
  bool peer = false;  // --data_plane_error_mode=peer (TCP only).
  const char* plane = "ucx";
};

// The socket data plane, as a parameter of the same suites.
inline constexpr UcxTransport kSocketPlane{"socket", "tcp", false, "tcp"};
// Its local connections with the shared arena (the daemon needs
// --local_data_plane_path: LocalPlaneFlags).
inline constexpr UcxTransport kLocalPlane{"local", "tcp", false, "local"};

// Client::DataPlane() of a client connected with `t`: "tcp" for the socket
// plane, "local" for its local connections; for UCX "ucx:" and the UCX
// transports (checked by the caller).
inline bool IsSocketPlane(const UcxTransport& t) {
  return std::string(t.plane) == "tcp";
}
inline bool IsLocalPlane(const UcxTransport& t) {
  return std::string(t.plane) == "local";
}
// Planes whose client verifies every GET where it lands, sync or async.
inline bool ClientVerifiesEveryGet(const UcxTransport& t) {
  return IsSocketPlane(t) || IsLocalPlane(t);
}
// The daemon flags `t` needs: for the local plane a Unix socket of `dir`
// (ScratchDir::SocketPath), named by `name`; for the others no local
// connections, so they run over a private arena as a remote client's
// daemon does (a loopback daemon would otherwise share it by default).
inline std::vector<std::string> LocalPlaneFlags(
    const UcxTransport& t, kvstore::testing::ScratchDir& dir,
    const std::string& name) {
  if (!IsLocalPlane(t)) return {"--local_data_plane_path="};
  return {"--local_data_plane_path=" + dir.SocketPath(name + ".sock")};
}

inline void PrintTo(const UcxTransport& t, std::ostream* os) { *os << t.name; }

// The test-name suffix of a transport-parameterized suite.
inline std::string UcxTransportName(
    const ::testing::TestParamInfo<UcxTransport>& info) {
  return info.param.name;
}

// A fixture with UCX_NET_DEVICES=lo and UCX_TLS=Tls() ("tcp" unless a
// subclass picks another list).
class UcxTest : public ::testing::Test {
 protected:
  virtual std::string Tls() const { return "tcp"; }

  void SetUp() override {
    for (const auto& [name, value] : Env()) {
      setenv(name.c_str(), value.c_str(), 1);
    }
  }

  // The same variables, for a StratadProcess's `env`.
  std::map<std::string, std::string> Env() const {
    return {{"UCX_NET_DEVICES", "lo"}, {"UCX_TLS", Tls()}};
  }
};

// The same, once per transport of the suite's parameters.
class UcxTransportTest : public UcxTest,
                         public ::testing::WithParamInterface<UcxTransport> {
 protected:
  std::string Tls() const override { return GetParam().tls; }
};

// Block shapes from a 1 KiB payload (eager messages) to 64 MiB, over the
// dtypes.
inline std::vector<kvstore::BlockShape> UcxRoundTripShapes() {
  using ::strata::kvstore::DType;
  using ::strata::kvstore::testing::ShapeForBytes;
  return {
      {DType::kFloat16, 1, 1, 4, 64},  // 1 KiB payload: eager messages.
      ShapeForBytes(64 << 10),
      ShapeForBytes(1 << 20, DType::kBFloat16),
      ShapeForBytes(8 << 20, DType::kFloat32),
      {DType::kFloat8E4M3, 32, 256, 8, 128},  // 16 MiB.
      {DType::kBFloat16, 64, 256, 8, 128},    // 64 MiB.
  };
}

// The daemon's /metrics text ("" when unreachable).
inline std::string MetricsText(const StratadProcess& d) {
  const std::string& a = d.metrics_address();
  httplib::Client http(a.substr(0, a.rfind(':')),
                       std::atoi(a.substr(a.rfind(':') + 1).c_str()));
  auto res = http.Get("/metrics");
  return res ? res->body : "";
}

}  // namespace strata::testing

#endif  // STRATA_TESTS_CLUSTER_UCX_TEST_ENV_H_
