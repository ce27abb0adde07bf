// The UCX data plane end to end: real stratad processes with the data plane
// on a free port, driven by the client library with data_plane = "ucx", once
// over UCX's TCP transport and once over shared memory (UCX_TLS is set for
// the daemon through StratadProcess and for this process with setenv, before
// any client exists: UCX reads it when a client starts).
#include <signal.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/strata_client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvstore/block_format.h"
#include "tests/cluster/arena_mappings.h"
#include "tests/cluster/stratad_process.h"
#include "tests/cluster/ucx_test_env.h"
#include "tests/kvstore/test_blocks.h"

namespace strata {
namespace {

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
using ::strata::testing::ReadArenaMappings;
using ::strata::testing::StratadProcess;
using ::strata::testing::UcxRoundTripShapes;
using ::strata::testing::UcxTest;
using ::strata::testing::UcxTransport;
using ::strata::testing::UcxTransportName;
using ::strata::testing::UcxTransportTest;
using ::testing::HasSubstr;
using ::testing::StartsWith;

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

class StratadUcx : public UcxTransportTest {
 protected:
  // The daemon's flags for this transport, then `flags`.
  std::vector<std::string> Flags(std::vector<std::string> flags = {}) {
    if (IsLocalPlane(GetParam())) {
      // Each client maps the whole shared arena in at Connect: a smaller
      // one keeps the suite's 150 clients quick (a test's own capacity,
      // later in the list, wins).
      flags.insert(flags.begin(), "--dram_capacity=128MiB");
    }
    if (GetParam().peer) flags.push_back("--data_plane_error_mode=peer");
    for (std::string& f : LocalPlaneFlags(GetParam(), dir_,
                                          absl::StrCat("d", ++daemons_))) {
      flags.push_back(std::move(f));
    }
    return flags;
  }

  // Every block over UCX, whatever its size.
  std::unique_ptr<client::Client> ConnectUcx(
      const StratadProcess& d, absl::Duration deadline = absl::Seconds(20)) {
    client::ClientOptions o;
    o.address = d.grpc_address();
    o.default_deadline = deadline;
    o.data_plane = GetParam().plane;
    o.ucx_min_bytes = 0;
    auto c = client::Client::Connect(o);
    EXPECT_TRUE(c.ok()) << c.status();
    if (!c.ok()) return nullptr;
    // The bytes move over the transport this test asked for.
    const std::string plane = (*c)->DataPlane();
    if (IsSocketPlane(GetParam())) {
      EXPECT_EQ(plane, "tcp");
    } else if (IsLocalPlane(GetParam())) {
      EXPECT_EQ(plane, "local");
    } else if (std::string(GetParam().tls) == "tcp") {
      EXPECT_EQ(plane, "ucx:tcp");
    } else {
      EXPECT_THAT(plane, StartsWith("ucx:"));
      EXPECT_THAT(plane, HasSubstr("cma"));
      EXPECT_THAT(plane, ::testing::Not(HasSubstr("tcp")));
    }
    return *std::move(c);
  }

  // A daemon with this transport's flags (kept in daemon_ for the test) and
  // a client of it over UCX; null, with the failure recorded, if either
  // does not start.
  std::unique_ptr<client::Client> StartDaemonAndConnect() {
    daemon_ = std::make_unique<StratadProcess>(dir_.Sub("data"), Flags(), Env());
    const absl::Status started = daemon_->Start();
    EXPECT_TRUE(started.ok()) << started;
    return started.ok() ? ConnectUcx(*daemon_) : nullptr;
  }

  ScratchDir dir_;
  int daemons_ = 0;  // Names their local sockets.
  std::unique_ptr<StratadProcess> daemon_;
};

TEST_P(StratadUcx, RoundTripsFrom1KiBTo64MiBAreByteExact) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), Flags({"--dram_capacity=512MiB"}), Env());
  ASSERT_TRUE(d.Start().ok());
  ASSERT_NE(d.ucx_address(), "off");
  auto c = ConnectUcx(d);
  ASSERT_NE(c, nullptr);
  const std::vector<BlockShape> shapes = UcxRoundTripShapes();
  uint64_t bytes = 0;
  for (size_t i = 0; i < shapes.size(); ++i) {
    const auto block = MakeBlock(shapes[i], i);
    bytes += block.size();
    auto put = c->Put(KeyFor(i), block);
    ASSERT_TRUE(put.ok()) << shapes[i].RawBytes() << ": " << put.status();
    EXPECT_FALSE(put->already_present);
    auto got = c->Get(KeyFor(i));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_EQ(got->served_from, "dram");
    EXPECT_TRUE(got->block == block) << "payload " << shapes[i].RawBytes();
    // Into a registered buffer at an offset, guarded on both sides.
    std::vector<uint8_t> region(block.size() + 8192, 0xAB);
    auto handle = c->RegisterBuffer(region.data(), region.size());
    ASSERT_TRUE(handle.ok());
    auto n = c->GetInto(KeyFor(i), *handle, 4096, block.size());
    ASSERT_TRUE(n.ok()) << n.status();
    EXPECT_EQ(*n, block.size());
    EXPECT_TRUE(std::equal(block.begin(), block.end(), region.begin() + 4096));
    EXPECT_EQ(region[4095], 0xAB);
    EXPECT_EQ(region[4096 + block.size()], 0xAB);
    EXPECT_TRUE(c->UnregisterBuffer(*handle).ok());
  }
  // PutAsync copies the block: the caller's memory may go away at once.
  auto block = std::make_unique<std::vector<uint8_t>>(
      MakeBlock(ShapeForBytes(2 << 20), 99));
  const std::vector<uint8_t> expected = *block;
  auto pending = c->PutAsync(KeyFor(99), *block);
  block.reset();
  ASSERT_TRUE(pending.get().ok());
  EXPECT_TRUE(c->Get(KeyFor(99))->block == expected);
  EXPECT_TRUE(c->Put(KeyFor(0), MakeBlock(shapes[0], 0))->already_present);
  // /metrics counts UCX traffic like gRPC's.
  const std::string metrics = MetricsText(d);
  EXPECT_THAT(metrics, HasSubstr("strata:rpc_requests_total{rpc=\"put\"} 8"));
  EXPECT_THAT(metrics, HasSubstr("strata:rpc_requests_total{rpc=\"get\"} 13"));
  EXPECT_TRUE(d.Stop().ok());
}

TEST_P(StratadUcx, CorruptOrOversizedPutsAreRejectedAndTheDaemonKeepsServing) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), Flags({"--max_block_size=8MiB"}), Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = ConnectUcx(d);
  ASSERT_NE(c, nullptr);
  for (uint64_t size : {uint64_t{4} << 10, uint64_t{1} << 20}) {
    auto corrupt = MakeBlock(ShapeForBytes(size), 7);
    corrupt[corrupt.size() - 100] ^= 1;  // In the payload.
    auto put = c->Put(KeyFor(1), corrupt);
    EXPECT_EQ(put.status().code(), absl::StatusCode::kDataLoss) << put.status();
    EXPECT_THAT(Msg(put.status()), StartsWith("checksum:"));
  }
  // Above max_block_size: refused before the daemon receives it.
  auto big = c->Put(KeyFor(2), MakeBlock(ShapeForBytes(16 << 20), 2));
  EXPECT_EQ(big.status().code(), absl::StatusCode::kInvalidArgument)
      << big.status();
  EXPECT_THAT(Msg(big.status()), StartsWith("block:"));
  // Nothing was stored, and the daemon still serves over UCX.
  EXPECT_EQ(c->Get(KeyFor(1)).status().code(), absl::StatusCode::kNotFound);
  const auto good = MakeBlock(ShapeForBytes(1 << 20), 7);
  ASSERT_TRUE(c->Put(KeyFor(1), good).ok());
  EXPECT_TRUE(c->Get(KeyFor(1))->block == good);
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->puts, 1u);
  EXPECT_GE(stats->rejected_puts, 2u);
}

TEST_P(StratadUcx, MissesAndSmallBuffersAnswerTheirCodes) {
  auto c = StartDaemonAndConnect();
  ASSERT_NE(c, nullptr);
  std::vector<uint8_t> region(4 << 20);
  auto handle = c->RegisterBuffer(region.data(), region.size());
  ASSERT_TRUE(handle.ok());
  EXPECT_EQ(c->Get(KeyFor(5)).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(c->GetInto(KeyFor(5), *handle, 0, region.size()).status().code(),
            absl::StatusCode::kNotFound);
  const auto block = MakeBlock(ShapeForBytes(2 << 20), 5);
  ASSERT_TRUE(c->Put(KeyFor(5), block).ok());
  // Too small: the block is discarded, the region untouched.
  auto n = c->GetInto(KeyFor(5), *handle, 0, block.size() - 1);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kOutOfRange) << n.status();
  EXPECT_THAT(Msg(n.status()), StartsWith("capacity:"));
  EXPECT_EQ(region[0], 0);
  // The connection is still in step: the next call gets the right bytes.
  n = c->GetInto(KeyFor(5), *handle, 1 << 20, block.size());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), region.begin() + (1 << 20)));
}

TEST_P(StratadUcx, DeadlinesFireAgainstAStoppedDaemonAndTheClientRecovers) {
  auto c = StartDaemonAndConnect();
  ASSERT_NE(c, nullptr);
  StratadProcess& d = *daemon_;
  const auto small = MakeBlock(ShapeForBytes(256 << 10), 1);
  const auto large = MakeBlock(ShapeForBytes(8 << 20), 2);
  ASSERT_TRUE(c->Put(KeyFor(1), small).ok());
  std::vector<uint8_t> region(large.size());
  auto handle = c->RegisterBuffer(region.data(), region.size());
  ASSERT_TRUE(handle.ok());
  d.Pause();
  client::CallOptions short_call;
  short_call.deadline = absl::Milliseconds(300);
  const absl::Time start = absl::Now();
  auto got = c->Get(KeyFor(1), short_call);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded)
      << got.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
  // A large put is mid-transfer (rendezvous) when its deadline passes; it
  // still answers on time.
  absl::Time t = absl::Now();
  auto put = c->Put(KeyFor(2), large, {}, short_call);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kDeadlineExceeded)
      << put.status();
  EXPECT_LT(absl::Now() - t, absl::Seconds(3));
  t = absl::Now();
  auto n = c->GetInto(KeyFor(1), *handle, 0, region.size(), short_call);
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDeadlineExceeded)
      << n.status();
  EXPECT_LT(absl::Now() - t, absl::Seconds(3));
  // Unregistering does not wait for anything: the transfers were stopped.
  EXPECT_TRUE(c->UnregisterBuffer(*handle).ok());
  d.Resume();
  // The late replies of the stopped calls are dropped; new calls answer.
  got = c->Get(KeyFor(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->block == small);
  ASSERT_TRUE(c->Put(KeyFor(2), large).ok());
  got = c->Get(KeyFor(2));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->block == large);
}

// A GET that expired against a stopped daemon is answered late, after the
// daemon resumes, by a rendezvous send that holds the block's lease until
// the client takes it. The client's progress thread must take it by itself
// (it stays awake while a reply is due, instead of parking as between
// back-to-back sync calls), without another data-plane call.
TEST_P(StratadUcx, ALateReplyToAnExpiredGetIsTakenWithoutAnotherCall) {
  auto c = StartDaemonAndConnect();
  ASSERT_NE(c, nullptr);
  StratadProcess& d = *daemon_;
  const auto large = MakeBlock(ShapeForBytes(8 << 20), 9);
  ASSERT_TRUE(c->Put(KeyFor(9), large).ok());  // The progress thread parks.
  d.Pause();
  client::CallOptions short_call;
  short_call.deadline = absl::Milliseconds(200);
  EXPECT_EQ(c->Get(KeyFor(9), short_call).status().code(),
            absl::StatusCode::kDeadlineExceeded);
  d.Resume();
  // Stats travel over gRPC: they do not progress the client's UCX worker.
  const absl::Time until = absl::Now() + absl::Seconds(5);
  uint64_t leased = 1;
  while (absl::Now() < until) {
    auto stats = c->Stats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    leased = stats->leased_blocks;
    if (leased == 0) break;
  }
  EXPECT_EQ(leased, 0u) << "the late reply's lease was never released";
}

// A sync Put hands UCX the caller's block (over TCP an eager send packs
// from it). Puts against a stopped daemon end at their deadline with their
// sends still queued behind a full socket; the caller then reuses its
// buffer. After the daemon resumes, what it stores is each caller's
// original block, never the reused buffer's bytes: in mode none the client
// finishes those sends from copies (all are stored); in peer mode and on
// the socket plane (local connections too: there a put ends at RESERVE)
// the deadline closed the connection, cancelling them
// (none need be; a block that had wholly reached the daemon's socket before
// the close may still be stored, and then it is the original).
TEST_P(StratadUcx, PutsEndedByTheirDeadlineMidSendStoreTheBlockNotTheReusedBuffer) {
  auto c = StartDaemonAndConnect();
  ASSERT_NE(c, nullptr);
  StratadProcess& d = *daemon_;
  // The connection has answered once: later puts of up to a 1 MiB payload
  // go eagerly over TCP.
  ASSERT_TRUE(c->Put(KeyFor(1), MakeBlock(ShapeForBytes(4 << 10), 1)).ok());
  d.Pause();
  client::CallOptions short_call;
  short_call.deadline = absl::Milliseconds(100);
  constexpr int kPuts = 24;  // 6 MiB: more than the sockets take.
  std::vector<std::vector<uint8_t>> blocks;
  std::vector<uint8_t> buffer;
  for (int i = 0; i < kPuts; ++i) {
    blocks.push_back(MakeBlock(ShapeForBytes(256 << 10), 300 + i));
    buffer = blocks.back();
    auto put = c->Put(KeyFor(300 + i), buffer, {}, short_call);
    EXPECT_EQ(put.status().code(), absl::StatusCode::kDeadlineExceeded)
        << put.status();
    std::fill(buffer.begin(), buffer.end(), uint8_t{0xEE});  // Reused.
  }
  d.Resume();
  // A put on the same connection answers after every queued send.
  ASSERT_TRUE(c->Put(KeyFor(2), MakeBlock(ShapeForBytes(4 << 10), 2)).ok());
  int stored = 0;
  for (int i = 0; i < kPuts; ++i) {
    auto got = c->Get(KeyFor(300 + i));
    if (got.status().code() == absl::StatusCode::kNotFound) continue;
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(got->block == blocks[i]) << "put " << i;
    ++stored;
  }
  if (!GetParam().peer && !IsSocketPlane(GetParam()) &&
      !IsLocalPlane(GetParam())) {
    EXPECT_EQ(stored, kPuts) << "the queued sends were delivered";
  }
  auto stats = c->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->rejected_puts, 0u) << "no put arrived damaged";
}

// Engines sharing a prefix store the same keys at the same time. A put that
// meets another put of its key still receiving answers only once the block
// is there, so every client reads its own write back.
TEST_P(StratadUcx, ConcurrentPutsOfOneKeyAnswerOnlyOnceTheBlockIsStored) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), Flags({"--dram_capacity=512MiB"}), Env());
  ASSERT_TRUE(d.Start().ok());
  constexpr int kClients = 3;
  constexpr int kKeys = 6;
  std::vector<std::vector<uint8_t>> blocks;
  for (int k = 0; k < kKeys; ++k) {
    // Rendezvous-sized and eager-sized blocks, stored inline and by a pool.
    blocks.push_back(MakeBlock(ShapeForBytes(k % 2 ? 64 << 10 : 4 << 20),
                               100 + k));
  }
  std::vector<std::unique_ptr<client::Client>> clients;
  for (int i = 0; i < kClients; ++i) {
    clients.push_back(ConnectUcx(d));
    ASSERT_NE(clients.back(), nullptr);
  }
  std::vector<int> stored(kClients, 0), present(kClients, 0);
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      for (int k = 0; k < kKeys; ++k) {
        auto put = clients[i]->Put(KeyFor(200 + k), blocks[k]);
        ASSERT_TRUE(put.ok()) << "client " << i << " key " << k << ": "
                              << put.status();
        ++(put->already_present ? present[i] : stored[i]);
        auto got = clients[i]->Get(KeyFor(200 + k));
        ASSERT_TRUE(got.ok()) << "client " << i << " key " << k << " after "
                              << (put->already_present ? "already present"
                                                       : "stored")
                              << ": " << got.status();
        EXPECT_TRUE(got->block == blocks[k]) << "client " << i << " key " << k;
      }
    });
  }
  for (auto& t : threads) t.join();
  int total_stored = 0, total_present = 0;
  for (int i = 0; i < kClients; ++i) {
    total_stored += stored[i];
    total_present += present[i];
  }
  EXPECT_EQ(total_stored, kKeys);  // First write wins, once per key.
  EXPECT_EQ(total_present, (kClients - 1) * kKeys);
}

// Sync calls of several threads on one client: one thread at a time drives
// the worker (its reply wakes it directly), the others hand their calls to
// whoever progresses it; every call still gets its own bytes.
TEST_P(StratadUcx, ThreadsSharingOneClientTakeTurnsDrivingItsWorker) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), Flags({"--dram_capacity=512MiB"}), Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = ConnectUcx(d);
  ASSERT_NE(c, nullptr);
  constexpr int kThreads = 4;
  constexpr int kRounds = 40;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<uint8_t> region(1 << 20);
      auto handle = c->RegisterBuffer(region.data(), region.size());
      ASSERT_TRUE(handle.ok());
      for (int i = 0; i < kRounds; ++i) {
        const uint64_t k = 1000 + t * kRounds + i;
        // Eager-sized and rendezvous-sized blocks, alternating.
        const auto block =
            MakeBlock(ShapeForBytes(i % 2 ? 16 << 10 : 512 << 10), k);
        ASSERT_TRUE(c->Put(KeyFor(k), block).ok()) << "thread " << t;
        auto got = c->Get(KeyFor(k));
        ASSERT_TRUE(got.ok()) << "thread " << t << ": " << got.status();
        EXPECT_TRUE(got->block == block) << "thread " << t << " key " << k;
        auto n = c->GetInto(KeyFor(k), *handle, 0, region.size());
        ASSERT_TRUE(n.ok()) << "thread " << t << ": " << n.status();
        EXPECT_TRUE(std::equal(block.begin(), block.end(), region.begin()));
      }
      EXPECT_TRUE(c->UnregisterBuffer(*handle).ok());
    });
  }
  for (auto& th : threads) th.join();
}

// A starter that keeps the daemon's stdout pipe open but never reads it
// again (bench/service_bench.sh's fifo): UCX prints a log line or more to
// stdout each time a client goes away, and once the pipe's buffer was full
// the progress thread blocked on it for good. Far more clients come and go
// here than 64 KiB of those lines need; the daemon keeps answering.
TEST_P(StratadUcx, ClientsComingAndGoingDoNotStallADaemonWhoseStdoutIsUnread) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), Flags(), Env());
  d.HoldStdoutUnread();
  ASSERT_TRUE(d.Start().ok());
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 8);
  {
    auto c = ConnectUcx(d);
    ASSERT_NE(c, nullptr);
    ASSERT_TRUE(c->Put(KeyFor(8), block).ok());
  }
  for (int i = 0; i < 150; ++i) {
    auto c = ConnectUcx(d, absl::Seconds(10));
    ASSERT_NE(c, nullptr) << "client " << i;
    auto got = c->Get(KeyFor(8));
    ASSERT_TRUE(got.ok()) << "client " << i << ": " << got.status();
  }
}

TEST_P(StratadUcx, DrainRefusesPutsAndServesGets) {
  auto c = StartDaemonAndConnect();
  ASSERT_NE(c, nullptr);
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 3);
  ASSERT_TRUE(c->Put(KeyFor(3), block).ok());
  ASSERT_TRUE(c->Drain().ok());
  auto put = c->Put(KeyFor(4), block);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(Msg(put.status()), StartsWith("draining:"));
  auto got = c->Get(KeyFor(3));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->block == block);
}

TEST_P(StratadUcx, AKilledDaemonAnswersUnavailableNotAHang) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), Flags(), Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = ConnectUcx(d, absl::Seconds(30));
  ASSERT_NE(c, nullptr);
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 6);
  ASSERT_TRUE(c->Put(KeyFor(6), block).ok());
  d.Kill();
  const absl::Time start = absl::Now();
  auto got = c->Get(KeyFor(6));
  EXPECT_EQ(got.status().code(), absl::StatusCode::kUnavailable)
      << got.status();
  auto put = c->Put(KeyFor(7), block);
  EXPECT_EQ(put.status().code(), absl::StatusCode::kUnavailable)
      << put.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(20));  // Not the deadline.
}

INSTANTIATE_TEST_SUITE_P(Transports, StratadUcx,
                         ::testing::Values(UcxTransport{"tcp", "tcp"},
                                           UcxTransport{"shm", "shm,tcp"},
                                           UcxTransport{"tcp_peer", "tcp", true},
                                           kSocketPlane, kLocalPlane),
                         UcxTransportName);

class StratadDataPlane : public UcxTest {
 protected:
  absl::StatusOr<std::unique_ptr<client::Client>> Connect(
      const StratadProcess& d, const std::string& plane) {
    client::ClientOptions o;
    o.address = d.grpc_address();
    o.default_deadline = absl::Seconds(10);
    o.data_plane = plane;
    return client::Client::Connect(o);
  }
};

TEST_F(StratadDataPlane, UcxRequiredFailsConnectWhenTheDaemonHasNone) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), {"--data_plane_listen="}, Env());
  ASSERT_TRUE(d.Start().ok());
  EXPECT_EQ(d.ucx_address(), "off");
  auto c = Connect(d, "ucx");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  EXPECT_THAT(Msg(c.status()), StartsWith("data_plane:"));
}

// "auto" takes UCX when it moves the bytes through shared memory (below),
// else the socket plane, else UCX over TCP, else gRPC.
TEST_F(StratadDataPlane, AutoPrefersTheSocketPlaneToUcxOverTcpAndFallsBackToGrpc) {
  ScratchDir dir;
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 8);
  {
    StratadProcess d(dir.Sub("grpc-only"),
                     {"--data_plane_listen=", "--tcp_data_plane_listen="},
                     Env());
    ASSERT_TRUE(d.Start().ok());
    EXPECT_EQ(d.tcp_address(), "off");
    auto c = Connect(d, "auto");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ((*c)->DataPlane(), "grpc");
    ASSERT_TRUE((*c)->Put(KeyFor(8), block).ok());
    EXPECT_TRUE((*c)->Get(KeyFor(8))->block == block);
  }
  {
    StratadProcess d(dir.Sub("ucx-only"), {"--tcp_data_plane_listen="}, Env());
    ASSERT_TRUE(d.Start().ok());
    auto c = Connect(d, "auto");
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ((*c)->DataPlane(), "ucx:tcp");
    ASSERT_TRUE((*c)->Put(KeyFor(8), block).ok());
    EXPECT_TRUE((*c)->Get(KeyFor(8))->block == block);
  }
  // Both TCP planes, no local connections (they would come first: the
  // loopback default turns them on; see the test below).
  StratadProcess d(dir.Sub("both"), {"--local_data_plane_path="}, Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d, "auto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->DataPlane(), "tcp");
  ASSERT_TRUE((*c)->Put(KeyFor(8), block).ok());
  EXPECT_TRUE((*c)->Get(KeyFor(8))->block == block);
  // A required plane is what the client gets, whatever "auto" would pick.
  auto u = Connect(d, "ucx");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ((*u)->DataPlane(), "ucx:tcp");
  EXPECT_TRUE((*u)->Get(KeyFor(8))->block == block);
  // "grpc" never touches a bulk plane, even when the daemon offers them.
  auto g = Connect(d, "grpc");
  ASSERT_TRUE(g.ok());
  EXPECT_EQ((*g)->DataPlane(), "grpc");
  EXPECT_TRUE((*g)->Get(KeyFor(8))->block == block);
}

TEST_F(StratadDataPlane, SocketPlaneRequiredFailsConnectWhenTheDaemonHasNone) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), {"--tcp_data_plane_listen="}, Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d, "tcp");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  EXPECT_THAT(Msg(c.status()), StartsWith("data_plane:"));
  EXPECT_THAT(Msg(c.status()), HasSubstr("tcp_data_plane_listen"));
}

TEST_F(StratadDataPlane, LocalRequiredFailsConnectWhenTheDaemonHasNone) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), {"--local_data_plane_path="}, Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d, "local");
  ASSERT_FALSE(c.ok());
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnavailable) << c.status();
  EXPECT_THAT(Msg(c.status()), StartsWith("data_plane:"));
  EXPECT_THAT(Msg(c.status()), HasSubstr("local_data_plane_path"));
}

// The daemon restarts on the same socket path (a new arena): a client that
// mapped the old one never reads or writes it again, and unmaps it; its
// calls go through the socket and return the stored bytes. A kill -9
// leaves the socket file behind, which the new daemon replaces.
TEST_F(StratadDataPlane, ALocalClientOfARestartedDaemonNeverUsesTheOldArena) {
  ScratchDir dir;
  const std::vector<std::string> flags = {
      "--local_data_plane_path=" + dir.SocketPath("stratad.sock"),
      "--write_through=true", "--dram_capacity=64MiB"};
  const auto zeroth = MakeBlock(ShapeForBytes(256 << 10), 30);
  const auto first = MakeBlock(ShapeForBytes(256 << 10), 31);
  const auto second = MakeBlock(ShapeForBytes(256 << 10), 32);
  auto d = std::make_unique<StratadProcess>(dir.Sub("data"), flags, Env());
  ASSERT_TRUE(d->Start().ok());
  auto c = Connect(*d, "local");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->DataPlane(), "local");
  ASSERT_TRUE((*c)->Put(KeyFor(30), zeroth).ok());  // The arena's first range.
  ASSERT_TRUE((*c)->Put(KeyFor(31), first).ok());
  d->Kill();
  d = std::make_unique<StratadProcess>(dir.Sub("data"), flags, Env());
  ASSERT_TRUE(d->Start().ok());
  // A new client stores key 33 in the new arena's first range, where the
  // old arena, still mapped by the first client, holds key 30's valid
  // block: read there, it would pass its checksum.
  const auto third = MakeBlock(ShapeForBytes(256 << 10), 33);
  auto fresh = Connect(*d, "local");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(ReadArenaMappings().count, 2);  // The old arena and the new.
  ASSERT_TRUE((*fresh)->Put(KeyFor(33), third).ok());
  auto got = (*c)->Get(KeyFor(33));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->block == third);
  // The first client found its arena stale and let it go.
  EXPECT_EQ(ReadArenaMappings().count, 1);
  got = (*c)->Get(KeyFor(31));  // From the SSD tier.
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->block == first);
  // A put by the first client lands in the new daemon, not the old arena.
  ASSERT_TRUE((*c)->Put(KeyFor(32), second).ok());
  got = (*fresh)->Get(KeyFor(32));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(got->block == second);
}

// A local client's in-arena GET ends with RELEASE, which has no reply, so
// the next request on the connection follows at once; through the message
// channel it must not overwrite the RELEASE before the daemon took it (the
// daemon would then run it twice: a put answered "already present", which
// it was not before the call). The client waits until the daemon marked the
// RELEASE taken; without that wait this fails only when the daemon is
// preempted between seeing the RELEASE and copying it out, which is rare.
TEST_F(StratadDataPlane, ALocalPutRightAfterAnInArenaGetIsStoredOnce) {
  ScratchDir dir;
  auto d = std::make_unique<StratadProcess>(
      dir.Sub("data"),
      std::vector<std::string>{
          "--local_data_plane_path=" + dir.SocketPath("stratad.sock"),
          "--dram_capacity=512MiB"},
      Env());
  ASSERT_TRUE(d->Start().ok());
  auto c = Connect(*d, "local");
  ASSERT_TRUE(c.ok()) << c.status();
  ASSERT_EQ((*c)->DataPlane(), "local");
  const auto first = MakeBlock(ShapeForBytes(64 << 10), 50);
  ASSERT_TRUE((*c)->Put(KeyFor(50), first).ok());
  std::vector<uint8_t> dst(first.size());
  for (uint64_t i = 0; i < 400; ++i) {
    auto got = (*c)->Get(KeyFor(50));
    ASSERT_TRUE(got.ok()) << got.status();
    ASSERT_TRUE(got->block == first);
    auto put =
        (*c)->Put(KeyFor(1000 + i), MakeBlock(ShapeForBytes(64 << 10), i));
    ASSERT_TRUE(put.ok()) << put.status();
    ASSERT_FALSE(put->already_present) << "put " << i << " ran twice";
  }
}

// UCX_TLS allows shared memory: "auto" keeps UCX.
class StratadDataPlaneShm : public StratadDataPlane {
 protected:
  std::string Tls() const override { return "shm,tcp"; }
};

TEST_F(StratadDataPlaneShm, AutoKeepsUcxWhenItMovesTheBytesThroughSharedMemory) {
  ScratchDir dir;
  // No local connections: "auto" would take them first.
  StratadProcess d(dir.Sub("data"), {"--local_data_plane_path="}, Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d, "auto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_THAT((*c)->DataPlane(), StartsWith("ucx:"));
  EXPECT_THAT((*c)->DataPlane(), HasSubstr("cma"));
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 8);
  ASSERT_TRUE((*c)->Put(KeyFor(8), block).ok());
  EXPECT_TRUE((*c)->Get(KeyFor(8))->block == block);
}

// A daemon with local connections: "auto" takes them before UCX over shared
// memory; "tcp" and "ucx" still get what they ask for from the same daemon.
TEST_F(StratadDataPlaneShm, AutoTakesLocalConnectionsWhenTheDaemonOffersThem) {
  ScratchDir dir;
  StratadProcess d(
      dir.Sub("data"),
      {"--local_data_plane_path=" + dir.SocketPath("stratad.sock")}, Env());
  ASSERT_TRUE(d.Start().ok());
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 9);
  auto c = Connect(d, "auto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->DataPlane(), "local");
  ASSERT_TRUE((*c)->Put(KeyFor(9), block).ok());
  EXPECT_TRUE((*c)->Get(KeyFor(9))->block == block);
  auto t = Connect(d, "tcp");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->DataPlane(), "tcp");
  EXPECT_TRUE((*t)->Get(KeyFor(9))->block == block);
  auto u = Connect(d, "ucx");
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_THAT((*u)->DataPlane(), StartsWith("ucx:"));
  EXPECT_TRUE((*u)->Get(KeyFor(9))->block == block);
}

// The embedded default on loopback: local connections on the data
// directory's socket, which "auto" takes. A second daemon on the same data
// directory (no SSD tier, so no RocksDB lock between them) cannot have that
// socket and starts without local connections instead of failing.
TEST_F(StratadDataPlane,
       TheLoopbackDefaultServesLocalConnectionsFromTheDataDir) {
  ScratchDir dir;
  const std::string data_dir = DataDirForLocalSocket(dir);
  const std::vector<std::string> flags = {"--ssd_capacity=0",
                                          "--dram_capacity=64MiB"};
  StratadProcess first(data_dir, flags, Env());
  ASSERT_TRUE(first.Start().ok());
  EXPECT_EQ(first.local_path(), data_dir + "/local.sock");
  auto c = Connect(first, "auto");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->DataPlane(), "local");
  const auto block = MakeBlock(ShapeForBytes(256 << 10), 21);
  ASSERT_TRUE((*c)->Put(KeyFor(21), block).ok());
  EXPECT_TRUE((*c)->Get(KeyFor(21))->block == block);

  StratadProcess second(data_dir, flags, Env());
  ASSERT_TRUE(second.Start().ok());
  EXPECT_EQ(second.local_path(), "off");
  auto s = Connect(second, "auto");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_NE((*s)->DataPlane(), "local");
  EXPECT_FALSE((*s)->Get(KeyFor(21)).ok());  // Its own (empty) store.
  // The first daemon still owns its socket and serves through it.
  auto again = Connect(first, "local");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->Get(KeyFor(21))->block == block);
}

TEST_F(StratadDataPlane, PeerErrorHandlingIsNegotiatedThroughHello) {
  ScratchDir dir;
  StratadProcess d(dir.Sub("data"), {"--data_plane_error_mode=peer"}, Env());
  ASSERT_TRUE(d.Start().ok());
  auto c = Connect(d, "ucx");
  ASSERT_TRUE(c.ok()) << c.status();
  const auto block = MakeBlock(ShapeForBytes(4 << 20), 9);
  ASSERT_TRUE((*c)->Put(KeyFor(9), block).ok());
  EXPECT_TRUE((*c)->Get(KeyFor(9))->block == block);
  d.Kill();
  EXPECT_EQ((*c)->Get(KeyFor(9)).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(StratadDataPlane, BadDataPlaneSettingsAreRejected) {
  ScratchDir dir;
  client::ClientOptions o;
  o.data_plane = "rdma";
  auto c = client::Client::Connect(o);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Msg(c.status()), StartsWith("data_plane:"));
  StratadProcess d(dir.Sub("data"), {"--data_plane_listen=nohost"}, Env());
  EXPECT_FALSE(d.Start().ok());
  StratadProcess e(dir.Sub("data2"), {"--data_plane_error_mode=maybe"}, Env());
  EXPECT_FALSE(e.Start().ok());
  StratadProcess f(dir.Sub("data3"), {"--tcp_data_plane_listen=nohost"}, Env());
  EXPECT_FALSE(f.Start().ok());
  StratadProcess g(dir.Sub("data4"), {"--tcp_data_plane_max_connections=0"},
                   Env());
  EXPECT_FALSE(g.Start().ok());
}

}  // namespace
}  // namespace strata
