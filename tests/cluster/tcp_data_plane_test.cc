// The socket data plane's daemon end (cluster/tcp_data_plane.h) at the byte
// level: a TcpDataPlane over a real TieredStore in this process, spoken to
// through raw sockets, so the tests can send what no well-behaved client
// sends (foreign bytes, unknown ops, half a block, nothing at all) and check
// that the daemon answers or closes as docs/protocol.md says and keeps
// serving. The client library over the same plane is tested end to end in
// ucx_data_plane_test (the "socket" parameter).
#include "cluster/tcp_data_plane.h"

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cluster/block_service.h"
#include "cluster/metrics.h"
#include "common/tcp_protocol.h"
#include "common/ucx_protocol.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "kvstore/tiered_store.h"
#include "tests/cluster/raw_data_plane_connection.h"
#include "tests/kvstore/test_blocks.h"

namespace strata {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;
using ::strata::testing::RawConnection;
using ::strata::testing::Reply;

class TcpDataPlaneTest : public ::testing::Test {
 protected:
  // Opens the store and starts the plane with `options` (listen on a free
  // loopback port).
  void Start(cluster::TcpDataPlaneOptions options = {},
             uint64_t dram_bytes = 64 << 20) {
    kvstore::TieredStoreOptions o;
    o.dram_capacity_bytes = dram_bytes;
    o.ssd_path = dir_.Sub("ssd");
    auto store = kvstore::TieredStore::Open(o);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    ctx_.store = store_.get();
    ctx_.metrics = &metrics_;
    options.listen = "127.0.0.1:0";
    auto plane = cluster::TcpDataPlane::Start(&ctx_, options);
    ASSERT_TRUE(plane.ok()) << plane.status();
    plane_ = *std::move(plane);
  }

  void TearDown() override { plane_.reset(); }

  // A put over a fresh connection; the reply.
  std::optional<Reply> Put(uint64_t k, const std::vector<uint8_t>& block) {
    RawConnection c(plane_->address());
    EXPECT_TRUE(c.SendRequest(ucx::Op::kPut, 1, KeyFor(k), block));
    return c.ReadReply();
  }

  ScratchDir dir_;
  std::unique_ptr<kvstore::TieredStore> store_;
  cluster::ServiceMetrics metrics_;
  cluster::ServiceContext ctx_;
  std::unique_ptr<cluster::TcpDataPlane> plane_;
};

TEST_F(TcpDataPlaneTest, PutThenGetReturnsTheBlockWithTheRequestsId) {
  Start();
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 1);
  RawConnection c(plane_->address());
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.SendRequest(ucx::Op::kPut, 41, KeyFor(1), block));
  auto put = c.ReadReply();
  ASSERT_TRUE(put.has_value());
  EXPECT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
  EXPECT_EQ(put->header.request_id, 41u);
  EXPECT_EQ(put->header.flags & ucx::kReplyAlreadyPresent, 0u);
  // The same connection carries the next request.
  ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, 42, KeyFor(1), {}));
  auto got = c.ReadReply();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), absl::StatusCode::kOk) << got->message;
  EXPECT_EQ(got->header.request_id, 42u);
  EXPECT_TRUE(got->data == block);
  // A second put of the key: already present, its block read and dropped.
  ASSERT_TRUE(c.SendRequest(ucx::Op::kPut, 43, KeyFor(1), block));
  put = c.ReadReply();
  ASSERT_TRUE(put.has_value());
  EXPECT_EQ(put->code(), absl::StatusCode::kOk);
  EXPECT_NE(put->header.flags & ucx::kReplyAlreadyPresent, 0u);
  ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, 44, KeyFor(2), {}));
  got = c.ReadReply();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(got->data.empty());
}

// Whatever piece a PUT is received and hashed in (tcp_data_plane_verify_
// piece): 0 (one receive, then the commit's checksum pass), pieces that do
// not divide the block, the host default, one larger than the block. Each
// stores intact blocks byte-exact and refuses a block damaged in its first,
// a middle or its last piece.
TEST_F(TcpDataPlaneTest,
       EveryVerifyPieceStoresIntactBlocksAndRefusesDamagedOnes) {
  for (const uint64_t piece :
       {uint64_t{0}, uint64_t{4} << 10, uint64_t{64} << 10, uint64_t{128} << 10,
        uint64_t{3} << 20}) {
    SCOPED_TRACE(absl::StrCat("piece ", piece));
    plane_.reset();
    store_.reset();
    cluster::TcpDataPlaneOptions options;
    options.verify_chunk_bytes = piece;
    Start(options);
    RawConnection c(plane_->address());
    uint64_t id = 0;
    uint64_t k = piece + 1;  // Keys of their own: the SSD tier is reopened.
    for (const uint64_t size : {uint64_t{4} << 10, uint64_t{1} << 20}) {
      const auto intact = MakeBlock(ShapeForBytes(size), 3);
      for (const size_t at : {size_t{kvstore::kBlockHeaderSize + 1},
                              intact.size() / 2, intact.size() - 1}) {
        auto damaged = intact;
        damaged[at] ^= 0x10;
        ASSERT_TRUE(c.SendRequest(ucx::Op::kPut, ++id, KeyFor(++k), damaged));
        auto put = c.ReadReply();
        ASSERT_TRUE(put.has_value());
        EXPECT_EQ(put->code(), absl::StatusCode::kDataLoss)
            << "size " << size << " at " << at << ": " << put->message;
        EXPECT_TRUE(absl::StartsWith(put->message, "checksum:"))
            << put->message;
      }
      ASSERT_TRUE(c.SendRequest(ucx::Op::kPut, ++id, KeyFor(++k), intact));
      auto put = c.ReadReply();
      ASSERT_TRUE(put.has_value());
      EXPECT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
      ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, ++id, KeyFor(k), {}));
      auto got = c.ReadReply();
      ASSERT_TRUE(got.has_value());
      EXPECT_TRUE(got->data == intact) << "size " << size;
    }
    EXPECT_EQ(store_->Stats().puts, 2u);
  }
}

TEST_F(TcpDataPlaneTest, RefusedRequestsAreAnsweredAndTheConnectionStaysFramed) {
  Start();
  RawConnection c(plane_->address());
  const std::vector<uint8_t> junk(3000, 0x5A);
  struct Case {
    const char* what;
    ucx::Op op;
    uint16_t version;
    std::vector<uint8_t> data;
    const char* field;
  };
  const Case cases[] = {
      {"unknown op", static_cast<ucx::Op>(99), ucx::kProtocolVersion, junk,
       "op:"},
      {"other version", ucx::Op::kGet, 7, {}, "version:"},
      {"GET with data", ucx::Op::kGet, ucx::kProtocolVersion, junk, "block:"},
      {"PUT of junk", ucx::Op::kPut, ucx::kProtocolVersion, junk, "magic"},
  };
  uint64_t id = 100;
  for (const Case& k : cases) {
    ASSERT_TRUE(c.SendRequest(k.op, ++id, KeyFor(5), k.data, std::nullopt,
                              k.version))
        << k.what;
    auto r = c.ReadReply();
    ASSERT_TRUE(r.has_value()) << k.what << ": the daemon closed";
    EXPECT_EQ(r->code(), absl::StatusCode::kInvalidArgument) << k.what;
    EXPECT_TRUE(absl::StrContains(r->message, k.field))
        << k.what << ": " << r->message;
    EXPECT_EQ(r->header.request_id, id);
    // Still in step: a ping answers.
    ASSERT_TRUE(c.SendRequest(ucx::Op::kPing, ++id, KeyFor(5), {}));
    r = c.ReadReply();
    ASSERT_TRUE(r.has_value()) << k.what;
    EXPECT_EQ(r->code(), absl::StatusCode::kOk) << k.what;
  }
  EXPECT_EQ(store_->Stats().puts, 0u);
}

TEST_F(TcpDataPlaneTest, AnOversizedPutIsRefusedBeforeAnythingIsSetAside) {
  Start();
  RawConnection c(plane_->address());
  // Claims 1 TiB: too much to read and drop, so the answer comes at once,
  // naming the field, and the connection closes.
  const uint64_t claimed = uint64_t{1} << 40;
  ASSERT_TRUE(c.SendRequest(ucx::Op::kPut, 7, KeyFor(6), {}, claimed));
  auto r = c.ReadReply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(r->message, "block:")) << r->message;
  EXPECT_TRUE(c.WaitForClose());
  EXPECT_EQ(store_->Stats().tiers[0].used_bytes, 0u);
  EXPECT_EQ(store_->Stats().puts, 0u);
}

TEST_F(TcpDataPlaneTest, ForeignBytesCloseOnlyTheirConnection) {
  Start();
  RawConnection bad(plane_->address());
  const char http[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
  ASSERT_TRUE(bad.SendBytes(http, sizeof(http) - 1));
  EXPECT_TRUE(bad.WaitForClose());
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 7);
  auto put = Put(7, block);
  ASSERT_TRUE(put.has_value());
  EXPECT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
}

TEST_F(TcpDataPlaneTest, AClientGoneMidPutStoresNothingAndFreesTheKey) {
  Start();
  const auto block = MakeBlock(ShapeForBytes(4 << 20), 8);
  {
    RawConnection c(plane_->address());
    std::vector<uint8_t> half(block.begin(), block.begin() + block.size() / 2);
    ASSERT_TRUE(c.SendRequest(ucx::Op::kPut, 1, KeyFor(8), half, block.size()));
  }  // Closed mid-block.
  // A second put of the key waits for the first write's outcome (its
  // reservation), which is an abort: this one stores the block.
  auto put = Put(8, block);
  ASSERT_TRUE(put.has_value());
  EXPECT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
  EXPECT_EQ(put->header.flags & ucx::kReplyAlreadyPresent, 0u)
      << "the half block was stored";
  RawConnection c(plane_->address());
  ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, 2, KeyFor(8), {}));
  auto got = c.ReadReply();
  ASSERT_TRUE(got.has_value());
  EXPECT_TRUE(got->data == block);
}

TEST_F(TcpDataPlaneTest, AStalledPutIsDroppedAfterTheStallTimeout) {
  cluster::TcpDataPlaneOptions options;
  options.stall_timeout = absl::Milliseconds(300);
  Start(options);
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 9);
  RawConnection c(plane_->address());
  std::vector<uint8_t> part(block.begin(), block.begin() + 1000);
  ASSERT_TRUE(c.SendRequest(ucx::Op::kPut, 1, KeyFor(9), part, block.size()));
  const absl::Time start = absl::Now();
  EXPECT_TRUE(c.WaitForClose());
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));
  auto put = Put(9, block);
  ASSERT_TRUE(put.has_value());
  EXPECT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
  EXPECT_EQ(put->header.flags & ucx::kReplyAlreadyPresent, 0u);
}

TEST_F(TcpDataPlaneTest, IdleConnectionsStayOpenUntilStop) {
  cluster::TcpDataPlaneOptions options;
  options.stall_timeout = absl::Milliseconds(200);
  Start(options);
  RawConnection idle(plane_->address());
  // Longer than the stall timeout between two requests: still served.
  const absl::Time until = absl::Now() + absl::Milliseconds(600);
  for (uint64_t id = 1; absl::Now() < until; ++id) {
    auto put = Put(100 + id, MakeBlock(ShapeForBytes(4 << 10), id));
    ASSERT_TRUE(put.has_value());
  }
  ASSERT_TRUE(idle.SendRequest(ucx::Op::kPing, 1, KeyFor(1), {}));
  ASSERT_TRUE(idle.ReadReply().has_value());
  plane_->Stop();
  EXPECT_TRUE(idle.WaitForClose());
  // And the listener is closed: a new client is refused at once, not left
  // waiting in the backlog until its deadline.
  RawConnection late(plane_->address());
  EXPECT_FALSE(late.connected());
}

TEST_F(TcpDataPlaneTest, ConnectionsBeyondTheLimitAreClosedAtAccept) {
  cluster::TcpDataPlaneOptions options;
  options.max_connections = 2;
  Start(options);
  RawConnection a(plane_->address()), b(plane_->address());
  ASSERT_TRUE(a.SendRequest(ucx::Op::kPing, 1, KeyFor(1), {}));
  ASSERT_TRUE(a.ReadReply().has_value());
  ASSERT_TRUE(b.SendRequest(ucx::Op::kPing, 1, KeyFor(1), {}));
  ASSERT_TRUE(b.ReadReply().has_value());
  RawConnection c(plane_->address());
  EXPECT_TRUE(c.WaitForClose());
  const std::string metrics =
      metrics_.Render(store_->Stats(), false, absl::ZeroDuration());
  EXPECT_TRUE(absl::StrContains(
      metrics, "strata:data_plane_connections{plane=\"tcp\"} 2"))
      << metrics;
  EXPECT_TRUE(absl::StrContains(
      metrics, "strata:data_plane_refused_connections_total{plane=\"tcp\"} 1"))
      << metrics;
  // TCP connections, none of them local.
  EXPECT_TRUE(absl::StrContains(
      metrics, "strata:data_plane_connections{plane=\"local\"} 0"))
      << metrics;
  // The two admitted ones still answer.
  ASSERT_TRUE(a.SendRequest(ucx::Op::kPing, 2, KeyFor(1), {}));
  EXPECT_TRUE(a.ReadReply().has_value());
}

TEST_F(TcpDataPlaneTest, ABlockTheArenaCannotHoldGoesToTheSsdTier) {
  Start({}, /*dram_bytes=*/4 << 20);
  const auto block = MakeBlock(ShapeForBytes(8 << 20), 10);
  auto put = Put(10, block);
  ASSERT_TRUE(put.has_value());
  EXPECT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
  RawConnection c(plane_->address());
  ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, 2, KeyFor(10), {}));
  auto got = c.ReadReply();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->code(), absl::StatusCode::kOk) << got->message;
  EXPECT_NE(got->header.flags & ucx::kReplyServedFromSsd, 0u);
  EXPECT_TRUE(got->data == block);
}

TEST_F(TcpDataPlaneTest, APortInUseIsUnavailableNamingTheField) {
  Start();
  cluster::TcpDataPlaneOptions options;
  options.listen = plane_->address();  // Listening already.
  auto second = cluster::TcpDataPlane::Start(&ctx_, options);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StartsWith(second.status().message(),
                               "tcp_data_plane_listen:"))
      << second.status();
  // The first plane still serves.
  RawConnection c(plane_->address());
  ASSERT_TRUE(c.SendRequest(ucx::Op::kPing, 1, KeyFor(1), {}));
  EXPECT_TRUE(c.ReadReply().has_value());
}

TEST_F(TcpDataPlaneTest, AnAddressThatIsNotHostPortIsRefusedNamingTheField) {
  cluster::ServiceContext ctx;
  cluster::TcpDataPlaneOptions options;
  options.listen = "nohost";
  auto plane = cluster::TcpDataPlane::Start(&ctx, options);
  EXPECT_EQ(plane.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(plane.status().message(),
                               "tcp_data_plane_listen:"))
      << plane.status();
}

}  // namespace
}  // namespace strata
