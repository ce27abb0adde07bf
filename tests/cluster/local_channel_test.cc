// The message channel of local connections (common/local_channel.h;
// docs/protocol.md, "The message channel") at the byte level: its page
// mapped here (RawChannel), requests posted and replies awaited the way the
// client library does, and what a client should not do (requests the
// channel does not carry, malformed messages, stale release words).
#include "common/local_channel.h"

#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "common/tcp_protocol.h"
#include "common/ucx_protocol.h"
#include "gtest/gtest.h"
#include "kvstore/dram_arena.h"
#include "tests/cluster/local_data_plane_fixture.h"

namespace strata::testing {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ShapeForBytes;

TEST_F(LocalDataPlaneTest, InArenaPutsAndGetsGoThroughTheMessageChannel) {
  Start();
  PutAndGetThroughTheChannel();
}

// serve_spin and channel_spin 0: the daemon never polls the channel (nor
// the socket), so every request must ring it awake (and the test's side
// sleeps at once, so replies ring too).
TEST_F(LocalDataPlaneTest, DoorbellsWakeADaemonThatNeverPollsTheChannel) {
  serve_spin_ = absl::ZeroDuration();
  channel_spin_ = absl::ZeroDuration();
  Start();
  PutAndGetThroughTheChannel();
}

TEST_F(LocalDataPlaneTest, RequestsTheChannelDoesNotCarryAreRefusedNamingOp) {
  Start();
  RawConnection c(sock_);
  MapArena(c);
  std::unique_ptr<RawChannel> ch = MapChannel(c);
  ASSERT_NE(ch, nullptr);
  // A PUT with data, a GET of bytes, MAP_ARENA, a second MAP_CHANNEL.
  const std::vector<std::pair<ucx::Op, std::vector<uint8_t>>> refused = {
      {ucx::Op::kPut, std::vector<uint8_t>(512, 7)},
      {ucx::Op::kGet, {}},
      {ucx::Op::kMapArena, {}},
      {ucx::Op::kMapChannel, {}}};
  uint64_t id = 10;
  for (const auto& [op, data] : refused) {
    ASSERT_TRUE(ch->Post(op, ++id, KeyFor(42), data));
    auto r = ch->Await();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->code(), absl::StatusCode::kInvalidArgument) << r->message;
    EXPECT_TRUE(absl::StartsWith(r->message, "op:")) << r->message;
    EXPECT_EQ(r->header.request_id, id);
  }
  EXPECT_EQ(store_->Get(KeyFor(42)).status().code(),
            absl::StatusCode::kNotFound);
  // The connection serves on; a second MAP_CHANNEL on the socket is refused.
  ASSERT_TRUE(ch->Post(ucx::Op::kPing, 20, KeyFor(0), {}));
  EXPECT_EQ(ch->Await()->code(), absl::StatusCode::kOk);
  ASSERT_TRUE(c.SendRequest(ucx::Op::kMapChannel, 21, KeyFor(0), {}));
  auto again = c.ReadReply();
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StartsWith(again->message, "op:")) << again->message;
}

// A daemon that cannot create a channel (here: out of descriptors, the
// soft limit lowered to the lowest free one) answers RESOURCE_EXHAUSTED
// naming channel, keeps the connection, and maps one once it can.
TEST_F(LocalDataPlaneTest, AChannelThatCannotBeCreatedIsRefusedNamingChannel) {
  Start();
  RawConnection c(sock_);
  ASSERT_TRUE(c.connected());
  MapArena(c);
  const int arena_fd = c.passed_fd();
  rlimit before{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &before), 0);
  const int lowest_free = dup(0);
  ASSERT_GE(lowest_free, 0);
  close(lowest_free);
  rlimit none_left = before;
  none_left.rlim_cur = static_cast<rlim_t>(lowest_free);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &none_left), 0);
  ASSERT_TRUE(c.SendRequest(ucx::Op::kMapChannel, 5, KeyFor(0), {}));
  auto refused = c.ReadReply();
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &before), 0);
  ASSERT_TRUE(refused.has_value());
  EXPECT_EQ(refused->code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(absl::StartsWith(refused->message, "channel:"))
      << refused->message;
  EXPECT_EQ(c.passed_fd(), arena_fd) << "no descriptor rides on a refusal";
  // The connection serves on, and gets its channel now.
  std::unique_ptr<RawChannel> ch = MapChannel(c);
  ASSERT_NE(ch, nullptr);
  ASSERT_TRUE(ch->Post(ucx::Op::kPing, 6, KeyFor(0), {}));
  auto pong = ch->Await();
  ASSERT_TRUE(pong.has_value());
  EXPECT_EQ(pong->code(), absl::StatusCode::kOk);
}

// What the client writes into the page is not trusted: a message longer
// than the slot, or framed as more bytes than it has, closes its connection
// (its framing is lost) and nothing else.
TEST_F(LocalDataPlaneTest, AMalformedChannelMessageClosesOnlyItsConnection) {
  Start();
  RawConnection healthy(sock_);
  MapArena(healthy);
  std::unique_ptr<RawChannel> healthy_ch = MapChannel(healthy);
  ASSERT_NE(healthy_ch, nullptr);
  for (int variant = 0; variant < 2; ++variant) {
    RawConnection c(sock_);
    ASSERT_TRUE(c.connected());
    ASSERT_TRUE(c.SendRequest(ucx::Op::kMapChannel, 1, KeyFor(0), {}));
    ASSERT_EQ(c.ReadReply()->code(), absl::StatusCode::kOk);
    RawChannel ch(c);
    ASSERT_NE(ch.page(), nullptr);
    ucx::RequestHeader h{};
    h.version = ucx::kProtocolVersion;
    h.op = static_cast<uint16_t>(ucx::Op::kPing);
    // Variant 0: claims 8 data bytes the message lacks; 1: a length past
    // the slot.
    const tcp::TcpFrame frame{tcp::kFrameMagic, sizeof(h), 8};
    std::vector<uint8_t> m(sizeof(frame) + sizeof(h));
    std::memcpy(m.data(), &frame, sizeof(frame));
    std::memcpy(m.data() + sizeof(frame), &h, sizeof(h));
    ASSERT_TRUE(variant == 0
                    ? ch.PostBytes(m)
                    : ch.PostBytes(m, local::kChannelMessageBytes + 1));
    EXPECT_TRUE(c.WaitForClose()) << "variant " << variant;
  }
  ASSERT_TRUE(healthy_ch->Post(ucx::Op::kPing, 2, KeyFor(0), {}));
  auto ping = healthy_ch->Await();
  ASSERT_TRUE(ping.has_value());
  EXPECT_EQ(ping->code(), absl::StatusCode::kOk);
}

// A block that is not in the arena (only on SSD) comes as bytes, on the
// socket; the channel's reply says so (kReplyOnSocket).
TEST_F(LocalDataPlaneTest, AGetOfABlockOutsideTheArenaIsAnsweredOnTheSocket) {
  with_ssd_ = true;
  Start();
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 43);
  ASSERT_TRUE(store_->Put(KeyFor(43), block).ok());
  // Fill the 64 MiB DRAM tier until key 43's DRAM copy is evicted.
  for (uint64_t k = 100; store_->Stats().tiers[0].evictions == 0 && k < 300;
       ++k) {
    ASSERT_TRUE(
        store_->Put(KeyFor(k), MakeBlock(ShapeForBytes(1 << 20), k)).ok());
  }
  RawConnection c(sock_);
  MapArena(c);
  std::unique_ptr<RawChannel> ch = MapChannel(c);
  ASSERT_NE(ch, nullptr);
  ASSERT_TRUE(ch->Post(ucx::Op::kGet, 2, KeyFor(43), {},
                       ucx::kRequestInArena | ucx::kRequestClientVerifies));
  bool on_socket = false;
  EXPECT_FALSE(ch->Await(&on_socket).has_value());
  ASSERT_TRUE(on_socket);
  auto bytes = c.ReadReply();
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(bytes->code(), absl::StatusCode::kOk) << bytes->message;
  EXPECT_EQ(bytes->header.request_id, 2u);
  EXPECT_EQ(bytes->header.flags & ucx::kReplyInArena, 0u);
  EXPECT_NE(bytes->header.flags & ucx::kReplyServedFromSsd, 0u);
  EXPECT_EQ(bytes->data, block);
  // The channel carries the next request as before.
  ASSERT_TRUE(ch->Post(ucx::Op::kPing, 3, KeyFor(0), {}));
  auto ping = ch->Await();
  ASSERT_TRUE(ping.has_value());
  EXPECT_EQ(ping->header.request_id, 3u);
}

// Request numbers wrap, so a release word left from an earlier GET may
// equal a later GET's number: the daemon clears the word before it answers
// a GET, and the new lease stays until its own release.
TEST_F(LocalDataPlaneTest, AStaleReleaseWordNeverDropsANewGetsLease) {
  Start();
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 44);
  ASSERT_TRUE(store_->Put(KeyFor(44), block).ok());
  RawConnection c(sock_);
  MapArena(c);
  std::unique_ptr<RawChannel> ch = MapChannel(c);
  ASSERT_NE(ch, nullptr);
  // Left over, and equal to the number the GET below gets.
  ch->page()->release.store(ch->next_number());
  ASSERT_TRUE(ch->Post(ucx::Op::kGet, 2, KeyFor(44), {},
                       ucx::kRequestInArena | ucx::kRequestClientVerifies));
  auto got = ch->Await();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->code(), absl::StatusCode::kOk) << got->message;
  ASSERT_NE(got->header.flags & ucx::kReplyInArena, 0u);
  // Once the daemon's thread has gone to sleep it has looked at the word
  // (every polling round and before sleeping): the lease is still held.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (ch->page()->request.reader_asleep.load() == 0 &&
         absl::Now() < give_up) {
    sched_yield();
  }
  ASSERT_EQ(ch->page()->request.reader_asleep.load(), 1u);
  EXPECT_EQ(store_->Stats().leased_blocks, 1u);
  EXPECT_EQ(std::memcmp(arena_ + Word(*got, 0), block.data(), block.size()), 0);
  // Its own release drops it.
  ASSERT_TRUE(ch->ReleaseLast());
  while (store_->Stats().leased_blocks != 0 && absl::Now() < give_up) {
    sched_yield();
  }
  EXPECT_EQ(store_->Stats().leased_blocks, 0u);
}

}  // namespace
}  // namespace strata::testing
