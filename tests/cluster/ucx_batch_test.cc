// Batches over the UCX data plane and the C ABI's choice of data plane, end
// to end against real stratad processes (UCX over TCP and over shared
// memory; UCX_TLS is set for the daemon through StratadProcess and for this
// process with setenv before any client exists).
#include <unistd.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "client/strata_c.h"
#include "client/strata_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "tests/cluster/stratad_process.h"
#include "tests/cluster/ucx_test_env.h"
#include "tests/kvstore/test_blocks.h"

namespace strata {
namespace {

using ::strata::kvstore::BlockKey;
using ::strata::kvstore::BlockShape;
using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::testing::DataDirForLocalSocket;
using ::strata::testing::IsLocalPlane;
using ::strata::testing::IsSocketPlane;
using ::strata::testing::kLocalPlane;
using ::strata::testing::kSocketPlane;
using ::strata::testing::LocalPlaneFlags;
using ::strata::testing::MetricsText;
using ::strata::testing::StratadProcess;
using ::strata::testing::UcxRoundTripShapes;
using ::strata::testing::UcxTest;
using ::strata::testing::UcxTransport;
using ::strata::testing::UcxTransportName;
using ::strata::testing::UcxTransportTest;
using ::testing::HasSubstr;
using ::testing::StartsWith;

class UcxBatch : public UcxTransportTest {
 protected:
  std::unique_ptr<client::Client> ConnectUcx(const StratadProcess& d) {
    client::ClientOptions o;
    o.address = d.grpc_address();
    o.default_deadline = absl::Seconds(30);
    o.data_plane = GetParam().plane;
    auto c = client::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    EXPECT_THAT((*c)->DataPlane(),
                StartsWith(IsSocketPlane(GetParam())  ? "tcp"
                           : IsLocalPlane(GetParam()) ? "local"
                                                      : "ucx:"));
    return *std::move(c);
  }
};

TEST_P(UcxBatch, BatchPutAndBatchGetFrom1KiBTo64MiBAreByteExactOverUcx) {
  ScratchDir dir;
  std::vector<std::string> flags = {"--dram_capacity=512MiB"};
  for (std::string& f : LocalPlaneFlags(GetParam(), dir, "d")) {
    flags.push_back(std::move(f));
  }
  StratadProcess d(dir.Sub("data"), flags, Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = ConnectUcx(d);
  ASSERT_NE(c, nullptr);
  const std::vector<BlockShape> shapes = UcxRoundTripShapes();
  std::vector<std::vector<uint8_t>> blocks;
  std::vector<BlockKey> keys;
  std::vector<absl::Span<const uint8_t>> spans;
  for (size_t i = 0; i < shapes.size(); ++i) {
    blocks.push_back(MakeBlock(shapes[i], 100 + i));
    keys.push_back(KeyFor(100 + i));
  }
  for (const auto& b : blocks) spans.push_back(b);
  // A corrupt item fails alone.
  auto corrupt = MakeBlock(ShapeForBytes(256 << 10), 7);
  corrupt[corrupt.size() - 10] ^= 1;
  keys.push_back(KeyFor(7));
  spans.push_back(corrupt);

  auto put = c->BatchPutAsync(keys, spans).get();
  ASSERT_EQ(put.size(), keys.size());
  for (size_t i = 0; i < shapes.size(); ++i) {
    ASSERT_TRUE(put[i].ok()) << i << ": " << put[i].status();
    EXPECT_FALSE(put[i]->already_present);
  }
  EXPECT_EQ(put.back().status().code(), absl::StatusCode::kDataLoss)
      << put.back().status();
  // Again: first write wins, every item already present.
  spans.pop_back();
  keys.pop_back();
  auto again = c->BatchPutAsync(keys, spans).get();
  for (size_t i = 0; i < again.size(); ++i) {
    ASSERT_TRUE(again[i].ok()) << i << ": " << again[i].status();
    EXPECT_TRUE(again[i]->already_present) << i;
  }

  // Reversed, with a repeated key and a missing one.
  std::vector<BlockKey> get_keys(keys.rbegin(), keys.rend());
  get_keys.push_back(keys[2]);
  get_keys.push_back(KeyFor(7));
  auto got = c->BatchGetAsync(get_keys).get();
  ASSERT_EQ(got.size(), get_keys.size());
  for (size_t j = 0; j < blocks.size(); ++j) {
    const size_t i = blocks.size() - 1 - j;
    ASSERT_TRUE(got[j].ok()) << j << ": " << got[j].status();
    EXPECT_TRUE(got[j]->block == blocks[i])
        << "payload " << shapes[i].RawBytes();
    EXPECT_EQ(got[j]->served_from, "dram");
  }
  ASSERT_TRUE(got[blocks.size()].ok());
  EXPECT_TRUE(got[blocks.size()]->block == blocks[2]);
  EXPECT_EQ(got.back().status().code(), absl::StatusCode::kNotFound);

  // Every item went over UCX (counted as single puts and gets), none in a
  // gRPC batch.
  const std::string metrics = MetricsText(d);
  EXPECT_THAT(metrics, HasSubstr("strata:rpc_requests_total{rpc=\"put\"} 13"));
  EXPECT_THAT(metrics, HasSubstr("strata:rpc_requests_total{rpc=\"get\"} 7"));
  EXPECT_THAT(metrics,
              HasSubstr("strata:rpc_requests_total{rpc=\"batch_put\"} 0"));
  EXPECT_THAT(metrics,
              HasSubstr("strata:rpc_requests_total{rpc=\"batch_get\"} 0"));
  EXPECT_TRUE(d.Stop().ok());
}

INSTANTIATE_TEST_SUITE_P(Transports, UcxBatch,
                         ::testing::Values(UcxTransport{"tcp", "tcp"},
                                           UcxTransport{"shm", "shm,tcp"},
                                           kSocketPlane, kLocalPlane),
                         UcxTransportName);

// The C ABI (1.1, 1.2) opens clients on a chosen data plane.
class CAbiDataPlane : public UcxTest {
 protected:
  static std::string PlaneOf(strata_client_t* c) {
    char plane[64];
    EXPECT_EQ(strata_client_data_plane(c, plane, sizeof(plane)), 0);
    return plane;
  }
};

TEST_F(CAbiDataPlane,
       OpenWithDataPlaneChoosesThePlaneAndAutoTakesLocalOnLoopback) {
  EXPECT_EQ(strata_abi_version(), STRATA_C_ABI_VERSION);
  EXPECT_EQ(strata_abi_minor_version(), 2);
  ScratchDir dir;
  StratadProcess d(DataDirForLocalSocket(dir), {}, Env());
  ASSERT_TRUE(d.Start().ok());
  const std::string addr = d.grpc_address();
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 21);
  uint8_t key[16];
  ASSERT_EQ(strata_key_from_hex(KeyFor(21).ToHex().c_str(), key), 0);

  strata_client_t* ucx = nullptr;
  ASSERT_EQ(strata_client_open_with_data_plane(addr.c_str(), 10000, "ucx",
                                               &ucx),
            0)
      << strata_last_error();
  EXPECT_EQ(PlaneOf(ucx), "ucx:tcp");
  int present = -1;
  ASSERT_EQ(strata_put(ucx, key, block.data(), block.size(), 0, &present), 0)
      << strata_last_error();
  EXPECT_EQ(present, 0);
  std::vector<uint8_t> dst(block.size() + 16, 0);
  size_t n = 0;
  ASSERT_EQ(strata_get_into(ucx, key, dst.data(), dst.size(), &n), 0);
  ASSERT_EQ(n, block.size());
  EXPECT_TRUE(std::equal(block.begin(), block.end(), dst.begin()));
  // Too small a buffer for the description: OUT_OF_RANGE naming capacity.
  char tiny[4];
  EXPECT_EQ(strata_client_data_plane(ucx, tiny, sizeof(tiny)), 11);
  EXPECT_THAT(strata_last_error(), StartsWith("capacity:"));
  strata_client_close(ucx);

  strata_client_t* grpc = nullptr;
  ASSERT_EQ(strata_client_open_with_data_plane(addr.c_str(), 10000, "grpc",
                                               &grpc),
            0);
  EXPECT_EQ(PlaneOf(grpc), "grpc");
  std::fill(dst.begin(), dst.end(), 0);
  ASSERT_EQ(strata_get_into(grpc, key, dst.data(), dst.size(), &n), 0);
  EXPECT_TRUE(std::equal(block.begin(), block.end(), dst.begin()));
  strata_client_close(grpc);

  strata_client_t* bad = nullptr;
  EXPECT_EQ(strata_client_open_with_data_plane(addr.c_str(), 10000, "rdma",
                                               &bad),
            3);
  EXPECT_THAT(strata_last_error(), StartsWith("data_plane:"));
  EXPECT_EQ(bad, nullptr);

  strata_client_t* sockets = nullptr;
  ASSERT_EQ(strata_client_open_with_data_plane(addr.c_str(), 10000, "tcp",
                                               &sockets),
            0)
      << strata_last_error();
  EXPECT_EQ(PlaneOf(sockets), "tcp");
  std::fill(dst.begin(), dst.end(), 0);
  ASSERT_EQ(strata_get_into(sockets, key, dst.data(), dst.size(), &n), 0);
  EXPECT_TRUE(std::equal(block.begin(), block.end(), dst.begin()));
  strata_client_close(sockets);

  // NULL is "auto": local connections here, which a daemon listening on
  // loopback only serves by default.
  strata_client_t* automatic = nullptr;
  ASSERT_EQ(strata_client_open_with_data_plane(addr.c_str(), 10000, nullptr,
                                               &automatic),
            0);
  EXPECT_EQ(PlaneOf(automatic), "local");
  std::fill(dst.begin(), dst.end(), 0);
  ASSERT_EQ(strata_get_into(automatic, key, dst.data(), dst.size(), &n), 0);
  EXPECT_TRUE(std::equal(block.begin(), block.end(), dst.begin()));
  strata_client_close(automatic);
  EXPECT_TRUE(d.Stop().ok());
}

// 1.2: options in a struct that grows at its end. local_daemon_uid keeps a
// client off the arena of a daemon of another user; a size no header made
// (ending inside a field, or absurd) is refused, as is a struct from a newer
// header asking for more than this library knows.
TEST_F(CAbiDataPlane, OpenWithOptionsPinsTheLocalDaemonsUserAndChecksTheSize) {
  ScratchDir dir;
  StratadProcess d(DataDirForLocalSocket(dir), {}, Env());
  ASSERT_TRUE(d.Start().ok());
  ASSERT_NE(d.local_path(), "off");
  const std::string addr = d.grpc_address();

  strata_client_options_t o{};
  o.struct_size = sizeof(o);
  o.deadline_ms = 10000;
  o.data_plane = "local";
  o.has_local_daemon_uid = 1;
  o.local_daemon_uid = geteuid() + 1;
  strata_client_t* c = nullptr;
  EXPECT_EQ(strata_client_open_with_options(addr.c_str(), &o, &c), 14);
  EXPECT_THAT(strata_last_error(), HasSubstr("local_daemon_uid"));
  EXPECT_EQ(c, nullptr);
  o.data_plane = nullptr;  // auto: the next plane.
  ASSERT_EQ(strata_client_open_with_options(addr.c_str(), &o, &c), 0)
      << strata_last_error();
  EXPECT_NE(PlaneOf(c), "local");
  strata_client_close(c);
  o.data_plane = "local";
  o.local_daemon_uid = geteuid();
  ASSERT_EQ(strata_client_open_with_options(addr.c_str(), &o, &c), 0)
      << strata_last_error();
  EXPECT_EQ(PlaneOf(c), "local");
  strata_client_close(c);

  // Sizes no header made: ending inside data_plane, before the uid pair,
  // inside it, and garbage.
  for (const size_t size :
       {size_t{20}, offsetof(strata_client_options_t, has_local_daemon_uid),
        offsetof(strata_client_options_t, local_daemon_uid),
        sizeof(strata_client_options_t) - 1, size_t{1} << 20}) {
    o.struct_size = size;
    EXPECT_EQ(strata_client_open_with_options(addr.c_str(), &o, &c), 3) << size;
    EXPECT_THAT(strata_last_error(), StartsWith("struct_size:")) << size;
    EXPECT_EQ(c, nullptr);
  }
  o.struct_size = sizeof(o);
  o.local_daemon_uid = static_cast<uint32_t>(-1);  // Names no user.
  EXPECT_EQ(strata_client_open_with_options(addr.c_str(), &o, &c), 3);
  EXPECT_THAT(strata_last_error(), StartsWith("local_daemon_uid:"));
  // A newer header's: zeros past what this library knows are fine, an
  // option there is not.
  struct {
    strata_client_options_t known;
    uint64_t newer_option;
  } newer{};
  newer.known.struct_size = sizeof(newer);
  newer.known.data_plane = "grpc";
  ASSERT_EQ(strata_client_open_with_options(addr.c_str(), &newer.known, &c), 0)
      << strata_last_error();
  strata_client_close(c);
  newer.newer_option = 1;
  EXPECT_EQ(strata_client_open_with_options(addr.c_str(), &newer.known, &c), 3);
  EXPECT_THAT(strata_last_error(), StartsWith("struct_size:"));
  o.struct_size = 0;
  EXPECT_EQ(strata_client_open_with_options(addr.c_str(), &o, &c), 3);
  EXPECT_THAT(strata_last_error(), StartsWith("struct_size:"));
  // NULL options: every default (auto).
  ASSERT_EQ(strata_client_open_with_options(addr.c_str(), nullptr, &c), 0);
  EXPECT_EQ(PlaneOf(c), "local");
  strata_client_close(c);
  EXPECT_TRUE(d.Stop().ok());
}

TEST_F(CAbiDataPlane, UcxRequiredIsUnavailableWhenTheDaemonHasNone) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"),
                   {"--data_plane_listen=", "--tcp_data_plane_listen="}, Env());
  ASSERT_TRUE(d.Start().ok());
  strata_client_t* c = nullptr;
  EXPECT_EQ(strata_client_open_with_data_plane(d.grpc_address().c_str(), 5000,
                                               "ucx", &c),
            14);
  EXPECT_THAT(strata_last_error(), StartsWith("data_plane:"));
  EXPECT_EQ(c, nullptr);
  // strata_client_open (auto) falls back to gRPC.
  ASSERT_EQ(strata_client_open(d.grpc_address().c_str(), 5000, &c), 0);
  char plane[32];
  ASSERT_EQ(strata_client_data_plane(c, plane, sizeof(plane)), 0);
  EXPECT_STREQ(plane, "grpc");
  strata_client_close(c);
}

}  // namespace
}  // namespace strata
