// The channel poller of the socket plane's local connections
// (cluster/tcp_data_plane.h, "The channel poller"): one thread serves every
// connection's message channel and never blocks; what would block goes back
// to the connection's own thread. These tests drive channels at the byte
// level (RawChannel) and check that a request that must wait holds up no
// other connection (nor does a durable commit waiting on the SSD), that
// puts needing eviction or a durable write are still served (and evict),
// and that many channels are served at once.
#include <sched.h>

#include <cstring>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/local_channel.h"
#include "common/ucx_protocol.h"
#include "gtest/gtest.h"
#include "tests/cluster/local_data_plane_fixture.h"

namespace strata::testing {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ShapeForBytes;

// A connection with its arena and channel mapped.
struct ChannelClient {
  std::unique_ptr<RawConnection> conn;
  std::unique_ptr<RawChannel> channel;
};

class ChannelPollerTest : public LocalDataPlaneTest {
 protected:
  // Waits until the poller polls `ch` (it clears the channel's asleep mark,
  // set from its creation): then requests posted there go to the poller,
  // unrung, for as long as it keeps polling (channel_spin_).
  static void AwaitPoller(RawChannel& ch) {
    while (ch.page()->request.reader_asleep.load(std::memory_order_seq_cst) !=
           0) {
      sched_yield();
    }
  }

  // Waits until the daemon took the last request posted to `ch`.
  static void AwaitTaken(RawChannel& ch) {
    const uint32_t number = ch.next_number() - 1;
    while (ch.page()->request.taken.load(std::memory_order_acquire) != number) {
      sched_yield();
    }
  }

  // A writes `block` into the range its RESERVE of key `k` answered and
  // commits it; then B's request for the same key, which was waiting, is
  // answered OK with "already present" (the first write won).
  void CommitThenExpectPresent(ChannelClient& a, const Reply& reserved,
                               uint64_t k, const std::vector<uint8_t>& block,
                               ChannelClient& b) {
    std::memcpy(arena_ + Word(reserved, 0), block.data(), block.size());
    ASSERT_TRUE(a.channel->Post(ucx::Op::kCommit, 3, KeyFor(k), {}));
    auto committed = a.channel->Await();
    ASSERT_TRUE(committed.has_value());
    EXPECT_EQ(committed->code(), absl::StatusCode::kOk) << committed->message;
    auto b_reply = b.channel->Await();
    ASSERT_TRUE(b_reply.has_value());
    EXPECT_EQ(b_reply->code(), absl::StatusCode::kOk) << b_reply->message;
    EXPECT_NE(b_reply->header.flags & ucx::kReplyAlreadyPresent, 0u);
  }

  // Starts the plane with pollers that never sleep here, and connects A, B
  // and C, B's and C's channels already polled.
  std::tuple<ChannelClient, ChannelClient, ChannelClient>
  StartWithThreeClients() {
    channel_spin_ = absl::Seconds(60);
    Start();
    ChannelClient a = Connect(), b = Connect(), c = Connect();
    AwaitPoller(*b.channel);
    AwaitPoller(*c.channel);
    return {std::move(a), std::move(b), std::move(c)};
  }

  ChannelClient Connect() {
    ChannelClient client;
    client.conn = std::make_unique<RawConnection>(sock_);
    EXPECT_TRUE(client.conn->connected());
    MapArena(*client.conn);
    client.channel = MapChannel(*client.conn);
    EXPECT_NE(client.channel, nullptr);
    return client;
  }

  // A durable RESERVE of key `k` through `ch` (kRequestDurable), and
  // `block` written into the range it answered; the COMMIT is the caller's.
  void ReserveDurableAndWrite(RawChannel& ch, uint64_t k,
                              const std::vector<uint8_t>& block) {
    ASSERT_TRUE(ch.Post(ucx::Op::kReserve, 2, KeyFor(k), U64(block.size()),
                        ucx::kRequestDurable));
    auto reserved = ch.Await();
    ASSERT_TRUE(reserved.has_value());
    ASSERT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;
    std::memcpy(arena_ + Word(*reserved, 0), block.data(), block.size());
  }

  // RESERVE, the block written into the arena, COMMIT, all through `ch`;
  // the COMMIT's reply.
  std::optional<Reply> PutThroughChannel(RawChannel& ch, uint64_t k,
                                         const std::vector<uint8_t>& block,
                                         uint32_t commit_flags = 0) {
    EXPECT_TRUE(ch.Post(ucx::Op::kReserve, 2, KeyFor(k), U64(block.size())));
    auto reserved = ch.Await();
    if (!reserved.has_value()) return std::nullopt;
    EXPECT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;
    if (reserved->code() != absl::StatusCode::kOk) return reserved;
    std::memcpy(arena_ + Word(*reserved, 0), block.data(), block.size());
    EXPECT_TRUE(ch.Post(ucx::Op::kCommit, 3, KeyFor(k), {}, commit_flags));
    return ch.Await();
  }

  // Eight channels with a request each in flight at once, rounds over: every
  // request is answered once, with its own request id, whoever serves it.
  // Every `churn_every` rounds (0: never) two connections close and two new
  // ones take their place.
  void PingEightChannels(int churn_every) {
    constexpr int kClients = 8;
    std::vector<ChannelClient> clients;
    for (int i = 0; i < kClients; ++i) clients.push_back(Connect());
    for (uint64_t round = 1; round <= 50; ++round) {
      if (churn_every != 0 && round % churn_every == 0) {
        clients.erase(clients.begin(), clients.begin() + 2);
        clients.push_back(Connect());
        clients.push_back(Connect());
      }
      for (int i = 0; i < kClients; ++i) {
        ASSERT_TRUE(clients[i].channel->Post(ucx::Op::kPing, round * 100 + i,
                                             KeyFor(0), {}));
      }
      for (int i = 0; i < kClients; ++i) {
        auto reply = clients[i].channel->Await();
        ASSERT_TRUE(reply.has_value()) << "client " << i << " round " << round;
        EXPECT_EQ(reply->header.request_id, round * 100 + i);
      }
    }
  }
};

// Connection A holds key 7's reservation (its client still "writing").
// B's RESERVE of key 7, taken by the poller, must wait for A's outcome, up
// to 10 s: the poller hands it to B's thread rather than wait itself, so
// C's puts and pings through its own channel are answered meanwhile. B is
// answered only after A commits: ALREADY_PRESENT, the first write having won.
TEST_F(ChannelPollerTest, ARequestThatMustWaitHoldsUpNoOtherChannel) {
  auto [a, b, c] = StartWithThreeClients();
  const auto block = MakeBlock(ShapeForBytes(256 << 10), 7);
  ASSERT_TRUE(
      a.channel->Post(ucx::Op::kReserve, 2, KeyFor(7), U64(block.size())));
  auto reserved = a.channel->Await();
  ASSERT_TRUE(reserved.has_value());
  ASSERT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;

  ASSERT_TRUE(
      b.channel->Post(ucx::Op::kReserve, 2, KeyFor(7), U64(block.size())));
  const uint32_t b_number = b.channel->next_number() - 1;
  // B's request was taken (by the poller, which handed it back) before C
  // goes on, so C's requests really come while B's waits.
  AwaitTaken(*b.channel);
  for (uint64_t k = 20; k < 24; ++k) {
    auto put = PutThroughChannel(*c.channel, k,
                                 MakeBlock(ShapeForBytes(256 << 10), k));
    ASSERT_TRUE(put.has_value());
    EXPECT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
  }
  ASSERT_TRUE(c.channel->Post(ucx::Op::kPing, 9, KeyFor(0), {}));
  ASSERT_TRUE(c.channel->Await().has_value());
  // B is still waiting for key 7's first write.
  EXPECT_NE(b.channel->page()->reply.seq.load(std::memory_order_acquire),
            b_number);

  CommitThenExpectPresent(a, *reserved, 7, block, b);
  // B's connection goes on through its channel.
  ASSERT_TRUE(b.channel->Post(ucx::Op::kPing, 4, KeyFor(0), {}));
  auto ping = b.channel->Await();
  ASSERT_TRUE(ping.has_value());
  EXPECT_EQ(ping->header.request_id, 4u);
}

// The same for a PUT_SPARE: B writes key 7 into the spare range its last
// COMMIT left it and stores it in one step, but A holds key 7's
// reservation. The poller hands the PUT_SPARE back rather than wait; C is
// served meanwhile; after A's commit B is told the block is present.
TEST_F(ChannelPollerTest, APutSpareThatMustWaitHoldsUpNoOtherChannel) {
  auto [a, b, c] = StartWithThreeClients();
  const auto block = MakeBlock(ShapeForBytes(256 << 10), 7);
  // B's spare: a COMMIT of key 30 with kRequestSpareNext.
  auto first =
      PutThroughChannel(*b.channel, 30, MakeBlock(ShapeForBytes(256 << 10), 30),
                        ucx::kRequestSpareNext);
  ASSERT_TRUE(first.has_value());
  ASSERT_EQ(first->code(), absl::StatusCode::kOk) << first->message;
  ASSERT_NE(first->header.flags & ucx::kReplySpare, 0u);
  ASSERT_TRUE(
      a.channel->Post(ucx::Op::kReserve, 2, KeyFor(7), U64(block.size())));
  auto reserved = a.channel->Await();
  ASSERT_TRUE(reserved.has_value());
  ASSERT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;

  std::memcpy(arena_ + Word(*first, 0), block.data(), block.size());
  ASSERT_TRUE(
      b.channel->Post(ucx::Op::kPutSpare, 4, KeyFor(7), U64(block.size())));
  const uint32_t b_number = b.channel->next_number() - 1;
  AwaitTaken(*b.channel);
  auto put = PutThroughChannel(*c.channel, 20,
                               MakeBlock(ShapeForBytes(256 << 10), 20));
  ASSERT_TRUE(put.has_value());
  EXPECT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
  EXPECT_NE(b.channel->page()->reply.seq.load(std::memory_order_acquire),
            b_number);

  CommitThenExpectPresent(a, *reserved, 7, block, b);
}

// B's RESERVE of a key A holds was taken by the poller and handed back
// when Stop begins: B is busy from the take, so Stop lets it finish. Stop
// ends idle A, whose reservation it keeps until every connection is gone,
// so B's request is answered UNAVAILABLE (shutting down, had its thread not
// reached the store yet) or ABORTED (after waiting kInFlightWriteWait, 10
// s, for the key). B's connection then ends too, instead of idling until
// the grace runs out (60 s here, against the test's 120 s limit) with
// nobody polling its channel.
TEST_F(ChannelPollerTest, AConnectionBusyWhenStopBeganEndsAfterItsRequest) {
  channel_spin_ = absl::Seconds(60);
  stop_grace_ = absl::Seconds(60);
  Start();
  ChannelClient a = Connect(), b = Connect();
  AwaitPoller(*b.channel);
  const uint64_t size = 256 << 10;
  ASSERT_TRUE(a.channel->Post(ucx::Op::kReserve, 2, KeyFor(7), U64(size)));
  auto reserved = a.channel->Await();
  ASSERT_TRUE(reserved.has_value());
  ASSERT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;
  ASSERT_TRUE(b.channel->Post(ucx::Op::kReserve, 2, KeyFor(7), U64(size)));
  AwaitTaken(*b.channel);
  const absl::Time start = absl::Now();
  plane_->Stop();
  EXPECT_LT(absl::Now() - start, absl::Seconds(30));
  auto b_reply = b.channel->Await();
  ASSERT_TRUE(b_reply.has_value());
  EXPECT_TRUE(b_reply->code() == absl::StatusCode::kUnavailable ||
              b_reply->code() == absl::StatusCode::kAborted)
      << b_reply->message;
}

// The DRAM tier (64 MiB, no SSD) filled to just under its high watermark,
// so no eviction has run, and fewer free bytes than the next block needs.
class ChannelPollerFullTierTest : public ChannelPollerTest {
 protected:
  void FillBelowHighWatermark() {
    const uint64_t block_bytes = MakeBlock(ShapeForBytes(1 << 20), 0).size();
    for (uint64_t k = 1000; Stats().used_bytes + 2 * block_bytes < High();
         ++k) {
      ASSERT_TRUE(
          store_->Put(KeyFor(k), MakeBlock(ShapeForBytes(1 << 20), k)).ok());
    }
    ASSERT_EQ(Stats().evictions, 0u);
  }
  kvstore::TierStats Stats() { return store_->Stats().tiers[0]; }
  uint64_t High() {
    return static_cast<uint64_t>(store_->options().high_watermark *
                                 store_->options().dram_capacity_bytes);
  }
  // Puts `block` as key `k` through `ch` and reads it back in the arena.
  void PutAndReadBack(RawChannel& ch, uint64_t k,
                      const std::vector<uint8_t>& block,
                      uint32_t commit_flags = 0) {
    auto put = PutThroughChannel(ch, k, block, commit_flags);
    ASSERT_TRUE(put.has_value());
    ASSERT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
    ASSERT_TRUE(ch.Post(ucx::Op::kGet, 5, KeyFor(k), {},
                        ucx::kRequestInArena | ucx::kRequestClientVerifies));
    auto got = ch.Await();
    ASSERT_TRUE(got.has_value());
    ASSERT_EQ(got->code(), absl::StatusCode::kOk) << got->message;
    ASSERT_EQ(Word(*got, 1), block.size());
    EXPECT_EQ(std::memcmp(arena_ + Word(*got, 0), block.data(), block.size()),
              0);
  }
};

// An 8 MiB RESERVE finds no free range without evicting, which the poller
// does not do: it hands the request to the connection's thread, whose
// RESERVE evicts (the client is not told RESOURCE_EXHAUSTED, which would
// send it to a plain PUT).
TEST_F(ChannelPollerFullTierTest, AReserveThatNeedsEvictionIsStillServed) {
  channel_spin_ = absl::Seconds(60);  // The poller never sleeps here.
  Start();
  FillBelowHighWatermark();
  ChannelClient client = Connect();
  AwaitPoller(*client.channel);
  PutAndReadBack(*client.channel, 7, MakeBlock(ShapeForBytes(8 << 20), 7));
  EXPECT_GT(Stats().evictions, 0u);
}

// A 3 MiB commit takes the tier past its high watermark. On the poller the
// commit does not evict; the connection's thread does, after the reply, so
// usage comes back under the mark.
TEST_F(ChannelPollerFullTierTest, ACommitPastTheHighWatermarkStillEvicts) {
  channel_spin_ = absl::Seconds(60);
  Start();
  FillBelowHighWatermark();
  ChannelClient client = Connect();
  AwaitPoller(*client.channel);
  // Fits in the free range, and takes usage past the mark.
  const auto block = MakeBlock(ShapeForBytes(3 << 20), 7);
  ASSERT_LE(Stats().used_bytes + block.size(),
            store_->options().dram_capacity_bytes);
  ASSERT_GT(Stats().used_bytes + block.size(), High());
  // Checked as written (the block is right), so the poller commits it
  // itself rather than hand a 3 MiB checksum pass back.
  PutAndReadBack(*client.channel, 7, block, ucx::kRequestVerifiedInPlace);
  // The eviction runs after the reply: wait for it.
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (Stats().evictions == 0 && absl::Now() < give_up) sched_yield();
  EXPECT_GT(Stats().evictions, 0u);
  EXPECT_LE(Stats().used_bytes, High());
}

// A write-through store (an SSD tier under DRAM): every commit writes the
// SSD first, which the poller leaves to the connection's thread. The whole
// channel round (reserve, commit, spare put, in-arena gets, releases) works,
// and the blocks are on the SSD tier.
TEST_F(ChannelPollerTest, DurableCommitsThroughTheChannelReachTheSsd) {
  with_ssd_ = true;
  Start();
  PutAndGetThroughTheChannel();
  EXPECT_EQ(store_->Stats().tiers[1].blocks, 2u);
}

// A durable put (kRequestDurable on its RESERVE; the store is not
// write-through): its COMMIT, which carries no durable flag, writes the SSD
// first, so the poller hands it back; the block reaches the SSD tier.
TEST_F(ChannelPollerTest, ADurableReserveMakesItsCommitReachTheSsd) {
  with_ssd_ = true;
  write_through_ = false;
  channel_spin_ = absl::Seconds(60);  // The poller never sleeps here.
  Start();
  ChannelClient client = Connect();
  AwaitPoller(*client.channel);
  const auto block = MakeBlock(ShapeForBytes(256 << 10), 8);
  ASSERT_NO_FATAL_FAILURE(ReserveDurableAndWrite(*client.channel, 8, block));
  ASSERT_TRUE(client.channel->Post(ucx::Op::kCommit, 3, KeyFor(8), {},
                                   ucx::kRequestVerifiedInPlace));
  auto committed = client.channel->Await();
  ASSERT_TRUE(committed.has_value());
  EXPECT_EQ(committed->code(), absl::StatusCode::kOk) << committed->message;
  EXPECT_EQ(store_->Stats().tiers[1].blocks, 1u);
}

// A durable commit whose SSD write is held in flight (the WAL append
// waits) is on A's own thread, not the poller: B's requests through its
// channel are answered meanwhile, and A is answered once the write goes.
TEST_F(ChannelPollerTest, ADurableCommitWaitingOnTheSsdHoldsUpNoOtherChannel) {
  with_ssd_ = true;
  write_through_ = false;
  channel_pollers_ = 1;
  channel_spin_ = absl::Seconds(60);  // The poller never sleeps here.
  Start();
  ChannelClient a = Connect(), b = Connect();
  AwaitPoller(*a.channel);
  AwaitPoller(*b.channel);
  const auto block = MakeBlock(ShapeForBytes(256 << 10), 8);
  ASSERT_NO_FATAL_FAILURE(ReserveDurableAndWrite(*a.channel, 8, block));
  ssd_faults_->SetHoldWrites(true, ".log");
  // Released on every way out, or A's thread would hold up TearDown.
  absl::Cleanup release = [&] { ssd_faults_->SetHoldWrites(false); };
  ASSERT_TRUE(a.channel->Post(ucx::Op::kCommit, 3, KeyFor(8), {},
                              ucx::kRequestVerifiedInPlace));
  const uint32_t a_number = a.channel->next_number() - 1;
  const absl::Time held_by = absl::Now() + absl::Seconds(10);
  while (ssd_faults_->writes_held() == 0 && absl::Now() < held_by) {
    sched_yield();
  }
  ASSERT_GT(ssd_faults_->writes_held(), 0) << "A's commit wrote no WAL";

  // B's ping, posted to the channel the (only) poller polls: answered
  // while A's write is held, or the poller is the one waiting on the SSD.
  ASSERT_TRUE(b.channel->Post(ucx::Op::kPing, 5, KeyFor(0), {}));
  const uint32_t b_number = b.channel->next_number() - 1;
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (b.channel->page()->reply.seq.load(std::memory_order_acquire) !=
             b_number &&
         absl::Now() < give_up) {
    sched_yield();
  }
  const bool b_answered =
      b.channel->page()->reply.seq.load(std::memory_order_acquire) == b_number;
  const bool a_answered_early =
      a.channel->page()->reply.seq.load(std::memory_order_acquire) == a_number;
  ssd_faults_->SetHoldWrites(false);  // Before asserting: A must finish.
  EXPECT_TRUE(b_answered) << "B's ping waited for A's SSD write";
  EXPECT_FALSE(a_answered_early) << "A was answered before its write went";
  auto ping = b.channel->Await();
  ASSERT_TRUE(ping.has_value());
  EXPECT_EQ(ping->header.request_id, 5u);
  auto committed = a.channel->Await();
  ASSERT_TRUE(committed.has_value());
  EXPECT_EQ(committed->code(), absl::StatusCode::kOk) << committed->message;
  EXPECT_EQ(store_->Stats().tiers[1].blocks, 1u);
}

TEST_F(ChannelPollerTest, ManyChannelsAreServedAtOnce) {
  channel_pollers_ = 1;
  Start();
  PingEightChannels(/*churn_every=*/0);
}

// Three pollers, the channels shared out among them, some leaving and new
// ones going to the emptiest pollers.
TEST_F(ChannelPollerTest, ChannelsSharedAmongSeveralPollersAreAllServed) {
  channel_pollers_ = 3;
  Start();
  PingEightChannels(/*churn_every=*/10);
}

}  // namespace
}  // namespace strata::testing
