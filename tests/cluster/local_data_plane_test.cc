// The socket plane's local connections (cluster/tcp_data_plane_local.cc) at
// the byte level: a TcpDataPlane with a Unix socket over a real TieredStore
// whose DRAM arena is shared, spoken to through raw sockets and the arena
// mapped here, so the tests can do what a well-behaved client does not
// (commit bad bytes, commit without a reservation, vanish mid-put) and check
// that the daemon answers as docs/protocol.md ("Local connections") says;
// the message channel likewise, through its page mapped here (RawChannel).
// The client library over local connections is tested end to end in
// ucx_data_plane_test, ucx_batch_test and ucx_client_verify_test (the
// "local" parameter).
#include <poll.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "cluster/block_service.h"
#include "cluster/metrics.h"
#include "cluster/tcp_data_plane.h"
#include "common/local_channel.h"
#include "common/tcp_protocol.h"
#include "common/ucx_protocol.h"
#include "gtest/gtest.h"
#include "kvstore/dram_arena.h"
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

constexpr uint64_t kToken = 0x70CA1;

std::vector<uint8_t> U64(uint64_t v) {
  std::vector<uint8_t> bytes(sizeof(v));
  std::memcpy(bytes.data(), &v, sizeof(v));
  return bytes;
}

uint64_t Word(const Reply& r, size_t i) {
  uint64_t v = 0;
  EXPECT_GE(r.data.size(), (i + 1) * sizeof(v));
  if (r.data.size() >= (i + 1) * sizeof(v)) {
    std::memcpy(&v, r.data.data() + i * sizeof(v), sizeof(v));
  }
  return v;
}

// The client end of a connection's message channel (common/
// local_channel.h) at the byte level: posts requests into the mapped page,
// rings when the daemon sleeps, and waits for replies the way the client
// library does (asleep on the socket until a doorbell).
class RawChannel {
 public:
  // Maps the channel whose memfd the last reply on `c` carried.
  explicit RawChannel(RawConnection& c) : c_(c) {
    struct stat st {};
    EXPECT_EQ(fstat(c.passed_fd(), &st), 0);
    EXPECT_GE(static_cast<size_t>(st.st_size), local::kChannelBytes);
    void* p = mmap(nullptr, local::kChannelBytes, PROT_READ | PROT_WRITE,
                   MAP_SHARED, c.passed_fd(), 0);
    EXPECT_NE(p, MAP_FAILED);
    if (p != MAP_FAILED) ch_ = static_cast<local::LocalChannel*>(p);
  }
  ~RawChannel() {
    if (ch_ != nullptr) munmap(ch_, local::kChannelBytes);
  }
  local::LocalChannel* page() { return ch_; }

  // Posts `length` bytes of `message` (default: all) as the next request.
  bool PostBytes(const std::vector<uint8_t>& message,
                 std::optional<uint32_t> length = std::nullopt) {
    // Not before the daemon took the last one (a RELEASE has no reply).
    while (ch_->request.taken.load(std::memory_order_acquire) != seq_) {
      sched_yield();
    }
    std::memcpy(ch_->request.bytes, message.data(),
                std::min(message.size(), local::kChannelMessageBytes));
    ch_->request.length.store(length.value_or(message.size()),
                              std::memory_order_relaxed);
    ch_->request.seq.store(++seq_, std::memory_order_seq_cst);
    if (ch_->request.reader_asleep.load(std::memory_order_seq_cst) == 0) {
      return true;
    }
    tcp::TcpFrame bell{tcp::kDoorbellMagic, 0, 0};
    return c_.SendBytes(&bell, sizeof(bell));
  }
  bool Post(ucx::Op op, uint64_t request_id, const kvstore::BlockKey& key,
            const std::vector<uint8_t>& data, uint32_t flags = 0) {
    ucx::RequestHeader h{};
    h.version = ucx::kProtocolVersion;
    h.op = static_cast<uint16_t>(op);
    h.flags = flags;
    h.request_id = request_id;
    const std::string k = key.ToBytesString();
    std::memcpy(h.key, k.data(), sizeof(h.key));
    const tcp::TcpFrame frame{tcp::kFrameMagic, sizeof(h), data.size()};
    std::vector<uint8_t> m(sizeof(frame) + sizeof(h));
    std::memcpy(m.data(), &frame, sizeof(frame));
    std::memcpy(m.data() + sizeof(frame), &h, sizeof(h));
    m.insert(m.end(), data.begin(), data.end());
    return PostBytes(m);
  }

  // The reply to the last request from the channel; nullopt with
  // *on_socket set when the daemon answered on the socket instead (read it
  // with ReadReply), or nullopt when the connection closed.
  std::optional<Reply> Await(bool* on_socket = nullptr) {
    local::ChannelSlot& slot = ch_->reply;
    bool socket = false;
    // Asleep at once (no polling): the daemon rings whenever it answers
    // after this point.
    while (!socket && slot.seq.load(std::memory_order_acquire) != seq_) {
      slot.reader_asleep.store(1, std::memory_order_seq_cst);
      if (slot.seq.load(std::memory_order_seq_cst) == seq_) break;
      tcp::TcpFrame f{};
      if (!c_.ReadFrame(&f, /*peek=*/true)) return std::nullopt;
      if (tcp::IsDoorbell(f)) {
        c_.ReadFrame(&f);
      } else {
        socket = true;  // The reply itself, left there for ReadReply.
      }
    }
    slot.reader_asleep.store(0, std::memory_order_relaxed);
    const uint32_t length = slot.length.load(std::memory_order_relaxed);
    socket = socket || length == local::kReplyOnSocket;
    if (on_socket != nullptr) *on_socket = socket;
    EXPECT_TRUE(!socket || on_socket != nullptr) << "a reply on the socket";
    if (socket) return std::nullopt;
    EXPECT_LE(length, local::kChannelMessageBytes);
    std::vector<uint8_t> m(slot.bytes, slot.bytes + length);
    tcp::TcpFrame frame{};
    std::memcpy(&frame, m.data(), sizeof(frame));
    EXPECT_EQ(frame.magic, tcp::kFrameMagic);
    EXPECT_EQ(sizeof(frame) + frame.header_length + frame.data_length,
              m.size());
    Reply r;
    std::memcpy(&r.header, m.data() + sizeof(frame), sizeof(r.header));
    r.message.assign(reinterpret_cast<const char*>(m.data()) + sizeof(frame) +
                         sizeof(r.header),
                     frame.header_length - sizeof(r.header));
    r.data.assign(m.begin() + sizeof(frame) + frame.header_length, m.end());
    return r;
  }

  // Releases the lease of the last request (an in-arena GET) through the
  // channel's release word, ringing a sleeping daemon.
  bool ReleaseLast() {
    ch_->release.store(seq_, std::memory_order_seq_cst);
    if (ch_->request.reader_asleep.load(std::memory_order_seq_cst) == 0) {
      return true;
    }
    tcp::TcpFrame bell{tcp::kDoorbellMagic, 0, 0};
    return c_.SendBytes(&bell, sizeof(bell));
  }

 private:
  RawConnection& c_;
  local::LocalChannel* ch_ = nullptr;
  uint32_t seq_ = 0;
};

class LocalDataPlaneTest : public ::testing::Test {
 protected:
  // Opens the store (its arena shared unless `shared` is false) and starts
  // the plane with local connections on sock_.
  void Start(bool shared = true) {
    kvstore::TieredStoreOptions o;
    o.dram_capacity_bytes = 64 << 20;
    o.dram_shared = shared;
    if (with_ssd_) {
      o.ssd_path = dir_.Sub("ssd");
      o.write_through = true;
      o.promote_on_read = false;
    }
    auto store = kvstore::TieredStore::Open(o);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    ctx_.store = store_.get();
    ctx_.metrics = &metrics_;
    ctx_.instance_token = kToken;
    cluster::TcpDataPlaneOptions options;
    options.local_path = sock_;
    options.serve_spin = serve_spin_;
    auto plane = cluster::TcpDataPlane::Start(&ctx_, options);
    ASSERT_TRUE(plane.ok()) << plane.status();
    plane_ = *std::move(plane);
  }

  void TearDown() override {
    if (arena_ != nullptr) munmap(arena_, arena_bytes_);
    plane_.reset();
  }

  // MAP_ARENA on `c`, then maps the arena here (arena_).
  void MapArena(RawConnection& c) {
    ASSERT_TRUE(c.SendRequest(ucx::Op::kMapArena, 1, KeyFor(0), {}));
    auto r = c.ReadReply();
    ASSERT_TRUE(r.has_value());
    ASSERT_EQ(r->code(), absl::StatusCode::kOk) << r->message;
    EXPECT_EQ(Word(*r, 0), kToken);
    ASSERT_GE(c.passed_fd(), 0);
    struct stat st{};
    ASSERT_EQ(fstat(c.passed_fd(), &st), 0);
    EXPECT_EQ(static_cast<size_t>(st.st_size),
              store_->SharedDramArena().bytes);
    arena_bytes_ = static_cast<size_t>(st.st_size);
    // Sealed at its size: a client cannot shrink it under the daemon.
    EXPECT_NE(ftruncate(c.passed_fd(), 0), 0);
    EXPECT_EQ(errno, EPERM);
    void* p = mmap(nullptr, arena_bytes_, PROT_READ | PROT_WRITE, MAP_SHARED,
                   c.passed_fd(), 0);
    ASSERT_NE(p, MAP_FAILED);
    arena_ = static_cast<uint8_t*>(p);
  }

  // RESERVE of `k` for `length` bytes; the reply.
  std::optional<Reply> Reserve(RawConnection& c, uint64_t k, uint64_t length) {
    EXPECT_TRUE(c.SendRequest(ucx::Op::kReserve, 2, KeyFor(k), U64(length)));
    return c.ReadReply();
  }

  std::optional<Reply> Commit(RawConnection& c, uint64_t k) {
    EXPECT_TRUE(c.SendRequest(ucx::Op::kCommit, 3, KeyFor(k), {}));
    return c.ReadReply();
  }

  // In-arena puts and gets over a message channel: every request and reply
  // goes through the shared page; the socket carries only doorbells.
  void PutAndGetThroughTheChannel() {
    RawConnection c(sock_);
    ASSERT_TRUE(c.connected());
    MapArena(c);
    std::unique_ptr<RawChannel> ch = MapChannel(c);
    ASSERT_NE(ch, nullptr);
    ASSERT_NE(ch->page(), nullptr);
    EXPECT_EQ(ch->page()->magic, local::kChannelMagic);
    EXPECT_EQ(ch->page()->version, local::kChannelVersion);
    const auto block = MakeBlock(ShapeForBytes(256 << 10), 40);
    ASSERT_TRUE(ch->Post(ucx::Op::kReserve, 2, KeyFor(40), U64(block.size())));
    auto reserved = ch->Await();
    ASSERT_TRUE(reserved.has_value());
    ASSERT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;
    EXPECT_EQ(reserved->header.request_id, 2u);
    EXPECT_EQ(Word(*reserved, 1), kToken);
    std::memcpy(arena_ + Word(*reserved, 0), block.data(), block.size());
    ASSERT_TRUE(
        ch->Post(ucx::Op::kCommit, 3, KeyFor(40), {}, ucx::kRequestSpareNext));
    auto committed = ch->Await();
    ASSERT_TRUE(committed.has_value());
    ASSERT_EQ(committed->code(), absl::StatusCode::kOk) << committed->message;
    EXPECT_NE(committed->header.flags & ucx::kReplySpare, 0u);
    // A second block into the spare, stored in one step.
    const auto next = MakeBlock(ShapeForBytes(256 << 10), 41);
    std::memcpy(arena_ + Word(*committed, 0), next.data(), next.size());
    ASSERT_TRUE(ch->Post(ucx::Op::kPutSpare, 4, KeyFor(41), U64(next.size())));
    auto put = ch->Await();
    ASSERT_TRUE(put.has_value());
    ASSERT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
    // Key 40's lease goes with a RELEASE message, key 41's with the release
    // word (no message: the daemon sees it while it polls, or when rung).
    for (auto [k, b] : {std::pair{40, &block}, std::pair{41, &next}}) {
      ASSERT_TRUE(ch->Post(ucx::Op::kGet, 5, KeyFor(k), {},
                           ucx::kRequestInArena | ucx::kRequestClientVerifies));
      auto got = ch->Await();
      ASSERT_TRUE(got.has_value());
      ASSERT_EQ(got->code(), absl::StatusCode::kOk) << got->message;
      ASSERT_NE(got->header.flags & ucx::kReplyInArena, 0u);
      ASSERT_EQ(Word(*got, 1), b->size());
      EXPECT_EQ(std::memcmp(arena_ + Word(*got, 0), b->data(), b->size()), 0);
      EXPECT_EQ(store_->Stats().leased_blocks, 1u);
      if (k == 40) {
        // RELEASE has no reply; the PING after it finds the lease gone.
        ASSERT_TRUE(ch->Post(ucx::Op::kRelease, 6, KeyFor(k), {}));
      } else {
        ASSERT_TRUE(ch->ReleaseLast());
        const absl::Time give_up = absl::Now() + absl::Seconds(10);
        while (store_->Stats().leased_blocks != 0 && absl::Now() < give_up) {
          sched_yield();
        }
        EXPECT_EQ(store_->Stats().leased_blocks, 0u) << "before any message";
      }
      ASSERT_TRUE(ch->Post(ucx::Op::kPing, 7, KeyFor(0), {}));
      auto ping = ch->Await();
      ASSERT_TRUE(ping.has_value());
      EXPECT_EQ(ping->header.request_id, 7u);
      EXPECT_EQ(store_->Stats().leased_blocks, 0u);
    }
    // Nothing but doorbells ever came on the socket.
    for (;;) {
      pollfd p{c.fd(), POLLIN, 0};
      if (poll(&p, 1, 0) <= 0) break;
      tcp::TcpFrame f{};
      ASSERT_TRUE(c.ReadFrame(&f));
      EXPECT_TRUE(tcp::IsDoorbell(f));
    }
    // The socket still serves what the channel does not carry.
    ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, 8, KeyFor(40), {}));
    auto bytes = c.ReadReply();
    ASSERT_TRUE(bytes.has_value());
    EXPECT_EQ(bytes->data, block);
  }

  // MAP_CHANNEL on `c` (after MapArena), then maps the channel here.
  std::unique_ptr<RawChannel> MapChannel(RawConnection& c) {
    EXPECT_TRUE(c.SendRequest(ucx::Op::kMapChannel, 1, KeyFor(0), {}));
    auto r = c.ReadReply();
    EXPECT_TRUE(r.has_value());
    if (!r.has_value()) return nullptr;
    EXPECT_EQ(r->code(), absl::StatusCode::kOk) << r->message;
    EXPECT_GE(c.passed_fd(), 0);
    if (c.passed_fd() < 0) return nullptr;
    // Sealed at its size: the client cannot shrink it under the daemon.
    EXPECT_NE(ftruncate(c.passed_fd(), 0), 0);
    EXPECT_EQ(errno, EPERM);
    return std::make_unique<RawChannel>(c);
  }

  // Set before Start(): the plane's serve_spin, and an SSD tier under the
  // DRAM one (write-through, no promotion on read).
  absl::Duration serve_spin_ = cluster::TcpDataPlaneOptions().serve_spin;
  bool with_ssd_ = false;
  ScratchDir dir_;
  std::string sock_ = dir_.SocketPath("stratad.sock");
  std::unique_ptr<kvstore::TieredStore> store_;
  cluster::ServiceMetrics metrics_;
  cluster::ServiceContext ctx_;
  std::unique_ptr<cluster::TcpDataPlane> plane_;
  uint8_t* arena_ = nullptr;
  size_t arena_bytes_ = 0;
};

TEST_F(LocalDataPlaneTest, APutWrittenInPlaceIsCommittedAndReadsBackExact) {
  Start();
  EXPECT_EQ(plane_->local_path(), sock_);
  RawConnection c(sock_);
  ASSERT_TRUE(c.connected());
  MapArena(c);
  const auto block = MakeBlock(ShapeForBytes(1 << 20), 1);
  auto reserved = Reserve(c, 1, block.size());
  ASSERT_TRUE(reserved.has_value());
  ASSERT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;
  const uint64_t offset = Word(*reserved, 0);
  EXPECT_EQ(Word(*reserved, 1), kToken);  // Names the arena it is in.
  ASSERT_LE(offset + block.size(), arena_bytes_);
  std::memcpy(arena_ + offset, block.data(), block.size());
  auto committed = Commit(c, 1);
  ASSERT_TRUE(committed.has_value());
  EXPECT_EQ(committed->code(), absl::StatusCode::kOk) << committed->message;
  auto got = store_->Get(KeyFor(1));
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), got->bytes().begin(),
                         got->bytes().end()));
  // The second put of the key is answered at RESERVE.
  auto again = Reserve(c, 1, block.size());
  ASSERT_TRUE(again.has_value());
  EXPECT_EQ(again->code(), absl::StatusCode::kOk);
  EXPECT_NE(again->header.flags & ucx::kReplyAlreadyPresent, 0u);
  EXPECT_TRUE(again->data.empty());
}

TEST_F(LocalDataPlaneTest, ACommitOfDamagedBytesIsRefusedAndStoresNothing) {
  Start();
  RawConnection c(sock_);
  MapArena(c);
  auto block = MakeBlock(ShapeForBytes(256 << 10), 2);
  auto reserved = Reserve(c, 2, block.size());
  ASSERT_TRUE(reserved.has_value());
  ASSERT_EQ(reserved->code(), absl::StatusCode::kOk);
  block[block.size() / 2] ^= 0x5A;  // Not the block its checksum covers.
  std::memcpy(arena_ + Word(*reserved, 0), block.data(), block.size());
  auto committed = Commit(c, 2);
  ASSERT_TRUE(committed.has_value());
  EXPECT_EQ(committed->code(), absl::StatusCode::kDataLoss)
      << committed->message;
  EXPECT_EQ(store_->Get(KeyFor(2)).status().code(),
            absl::StatusCode::kNotFound);
  // The key is free again, and the connection serves on.
  auto retry = Reserve(c, 2, block.size());
  ASSERT_TRUE(retry.has_value());
  EXPECT_EQ(retry->code(), absl::StatusCode::kOk) << retry->message;
}

TEST_F(LocalDataPlaneTest, ACommitWithoutItsReserveIsFailedPrecondition) {
  Start();
  RawConnection c(sock_);
  MapArena(c);
  auto alone = Commit(c, 3);
  ASSERT_TRUE(alone.has_value());
  EXPECT_EQ(alone->code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StartsWith(alone->message, "op:")) << alone->message;
  // Any other message drops the reservation: its COMMIT comes too late.
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 3);
  ASSERT_EQ(Reserve(c, 3, block.size())->code(), absl::StatusCode::kOk);
  ASSERT_TRUE(c.SendRequest(ucx::Op::kPing, 4, KeyFor(0), {}));
  ASSERT_EQ(c.ReadReply()->code(), absl::StatusCode::kOk);
  EXPECT_EQ(Commit(c, 3)->code(), absl::StatusCode::kFailedPrecondition);
  // A COMMIT of another key than the one reserved, likewise.
  ASSERT_EQ(Reserve(c, 3, block.size())->code(), absl::StatusCode::kOk);
  EXPECT_EQ(Commit(c, 4)->code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(store_->Get(KeyFor(3)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(LocalDataPlaneTest, AClientGoneAfterReserveStoresNothingAndFreesTheKey) {
  Start();
  const auto block = MakeBlock(ShapeForBytes(256 << 10), 5);
  {
    RawConnection gone(sock_);
    MapArena(gone);
    auto reserved = Reserve(gone, 5, block.size());
    ASSERT_TRUE(reserved.has_value());
    ASSERT_EQ(reserved->code(), absl::StatusCode::kOk);
    std::memcpy(arena_ + Word(*reserved, 0), block.data(), block.size() / 2);
  }  // Closed before COMMIT.
  // This RESERVE waits for the other reservation's outcome: aborted.
  RawConnection c(sock_);
  auto reserved = Reserve(c, 5, block.size());
  ASSERT_TRUE(reserved.has_value());
  EXPECT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;
  EXPECT_EQ(reserved->header.flags & ucx::kReplyAlreadyPresent, 0u);
  EXPECT_EQ(store_->Get(KeyFor(5)).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(LocalDataPlaneTest, AnInArenaGetHoldsItsLeaseUntilTheNextMessage) {
  Start();
  const auto block = MakeBlock(ShapeForBytes(512 << 10), 6);
  ASSERT_TRUE(store_->Put(KeyFor(6), block).ok());
  RawConnection c(sock_);
  MapArena(c);
  ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, 7, KeyFor(6), {}, std::nullopt,
                            ucx::kProtocolVersion,
                            ucx::kRequestInArena |
                                ucx::kRequestClientVerifies));
  auto got = c.ReadReply();
  ASSERT_TRUE(got.has_value());
  ASSERT_EQ(got->code(), absl::StatusCode::kOk) << got->message;
  EXPECT_NE(got->header.flags & ucx::kReplyInArena, 0u);
  const uint64_t offset = Word(*got, 0), length = Word(*got, 1);
  EXPECT_EQ(Word(*got, 2), kToken);
  ASSERT_EQ(length, block.size());
  ASSERT_LE(offset + length, arena_bytes_);
  EXPECT_EQ(std::memcmp(arena_ + offset, block.data(), length), 0);
  EXPECT_EQ(store_->Stats().leased_blocks, 1u);
  // RELEASE has no reply; the PING after it is answered with the lease gone.
  ASSERT_TRUE(c.SendRequest(ucx::Op::kRelease, 8, KeyFor(6), {}));
  ASSERT_TRUE(c.SendRequest(ucx::Op::kPing, 9, KeyFor(0), {}));
  auto ping = c.ReadReply();
  ASSERT_TRUE(ping.has_value());
  EXPECT_EQ(ping->header.request_id, 9u);
  EXPECT_EQ(store_->Stats().leased_blocks, 0u);
  // A plain GET on the same connection still gets the bytes.
  ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, 10, KeyFor(6), {}));
  auto bytes = c.ReadReply();
  ASSERT_TRUE(bytes.has_value());
  EXPECT_EQ(bytes->data, block);
}

// COMMIT with kRequestSpareNext leaves the connection a spare range of the
// same size; PUT_SPARE stores the block written there in one round trip and
// hands out the next. A stored key is answered already present with the
// spare kept; a PUT_SPARE the connection holds no spare for is refused
// naming op and leaves none; no spare outlives its connection.
TEST_F(LocalDataPlaneTest, ASpareRangeTakesTheNextPutInOneRoundTrip) {
  Start();
  const auto a = MakeBlock(ShapeForBytes(256 << 10), 20);
  const auto b = MakeBlock(ShapeForBytes(256 << 10), 21);
  const uint64_t base_used = store_->Stats().tiers[0].used_bytes;
  {
    RawConnection c(sock_);
    MapArena(c);
    auto reserved = Reserve(c, 20, a.size());
    ASSERT_EQ(reserved->code(), absl::StatusCode::kOk);
    std::memcpy(arena_ + Word(*reserved, 0), a.data(), a.size());
    ASSERT_TRUE(c.SendRequest(ucx::Op::kCommit, 3, KeyFor(20), {},
                              std::nullopt, ucx::kProtocolVersion,
                              ucx::kRequestSpareNext));
    auto committed = c.ReadReply();
    ASSERT_TRUE(committed.has_value());
    ASSERT_EQ(committed->code(), absl::StatusCode::kOk) << committed->message;
    ASSERT_NE(committed->header.flags & ucx::kReplySpare, 0u);
    const uint64_t spare = Word(*committed, 0);
    EXPECT_EQ(Word(*committed, 1), kToken);
    ASSERT_LE(spare + b.size(), arena_bytes_);
    // The block written into the spare, then stored in one step.
    std::memcpy(arena_ + spare, b.data(), b.size());
    ASSERT_TRUE(c.SendRequest(ucx::Op::kPutSpare, 5, KeyFor(21), U64(b.size()),
                              std::nullopt, ucx::kProtocolVersion,
                              ucx::kRequestSpareNext));
    auto put = c.ReadReply();
    ASSERT_TRUE(put.has_value());
    ASSERT_EQ(put->code(), absl::StatusCode::kOk) << put->message;
    ASSERT_NE(put->header.flags & ucx::kReplySpare, 0u);
    EXPECT_NE(Word(*put, 0), spare);  // The old spare is key 21's block now.
    auto got = store_->Get(KeyFor(21));
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(std::equal(b.begin(), b.end(), got->bytes().begin(),
                           got->bytes().end()));
    // A stored key: already present, the same spare kept.
    const uint64_t next = Word(*put, 0);
    ASSERT_TRUE(c.SendRequest(ucx::Op::kPutSpare, 6, KeyFor(20), U64(a.size()),
                              std::nullopt, ucx::kProtocolVersion,
                              ucx::kRequestSpareNext));
    auto again = c.ReadReply();
    ASSERT_TRUE(again.has_value());
    EXPECT_EQ(again->code(), absl::StatusCode::kOk);
    EXPECT_NE(again->header.flags & ucx::kReplyAlreadyPresent, 0u);
    EXPECT_EQ(Word(*again, 0), next);
    // PUT_SPARE of another size: refused naming op, and the spare dropped
    // (a reply without kReplySpare leaves none), so the right size is
    // refused too; the client then reserves.
    ASSERT_TRUE(c.SendRequest(ucx::Op::kPutSpare, 7, KeyFor(22),
                              U64(b.size() + 256)));
    auto wrong = c.ReadReply();
    ASSERT_TRUE(wrong.has_value());
    EXPECT_EQ(wrong->code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(absl::StartsWith(wrong->message, "op:")) << wrong->message;
    EXPECT_EQ(wrong->header.flags & ucx::kReplySpare, 0u);
    ASSERT_TRUE(c.SendRequest(ucx::Op::kPutSpare, 8, KeyFor(22), U64(b.size()),
                              std::nullopt, ucx::kProtocolVersion,
                              ucx::kRequestSpareNext));
    EXPECT_EQ(c.ReadReply()->code(), absl::StatusCode::kFailedPrecondition);
  }  // Closed: its thread frees the spare.
  plane_.reset();  // Joins every connection's thread.
  EXPECT_EQ(store_->Stats().tiers[0].blocks, 2u);
  EXPECT_EQ(store_->Stats().tiers[0].used_bytes,
            base_used + kvstore::DramArena::Footprint(a.size()) +
                kvstore::DramArena::Footprint(b.size()));
}

TEST_F(LocalDataPlaneTest, LocalOpsOnATcpConnectionAreRefusedNamingOp) {
  Start();
  RawConnection c(plane_->address());
  ASSERT_TRUE(c.connected());
  for (ucx::Op op : {ucx::Op::kMapArena, ucx::Op::kCommit}) {
    ASSERT_TRUE(c.SendRequest(op, 11, KeyFor(0), {}));
    auto r = c.ReadReply();
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(r->code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_TRUE(absl::StartsWith(r->message, "op:")) << r->message;
    EXPECT_EQ(c.passed_fd(), -1);
  }
  auto reserve = Reserve(c, 12, 4096);
  ASSERT_TRUE(reserve.has_value());
  EXPECT_EQ(reserve->code(), absl::StatusCode::kFailedPrecondition);
  // An in-arena GET over TCP is served as a plain one.
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 12);
  ASSERT_TRUE(store_->Put(KeyFor(12), block).ok());
  ASSERT_TRUE(c.SendRequest(ucx::Op::kGet, 13, KeyFor(12), {}, std::nullopt,
                            ucx::kProtocolVersion, ucx::kRequestInArena));
  auto got = c.ReadReply();
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(got->header.flags & ucx::kReplyInArena, 0u);
  EXPECT_EQ(got->data, block);
}

// A process of another user gets no arena: PERMISSION_DENIED naming the
// field, no descriptor. (The socket's mode keeps such processes out; the
// test opens it up to reach the check behind it.) Needs root to switch user.
TEST_F(LocalDataPlaneTest, APeerOfAnotherUserGetsNoArena) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a child as nobody";
  // A socket nobody can reach: under /tmp (the build tree's directories may
  // be closed to other users), in a directory opened for traversal.
  char open_dir[] = "/tmp/strata-peer-XXXXXX";
  ASSERT_NE(mkdtemp(open_dir), nullptr);
  ASSERT_EQ(chmod(open_dir, 0711), 0);
  sock_ = std::string(open_dir) + "/stratad.sock";
  Start();
  ASSERT_EQ(chmod(sock_.c_str(), 0666), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Exit codes: 0 refused as expected; 1-5 what went wrong.
    if (setgid(65534) != 0 || setuid(65534) != 0) _exit(1);
    RawConnection c(sock_);
    if (!c.connected()) _exit(2);
    if (!c.SendRequest(ucx::Op::kMapArena, 1, KeyFor(0), {})) _exit(3);
    std::optional<Reply> r = c.ReadReply();
    if (!r.has_value() || r->code() != absl::StatusCode::kPermissionDenied ||
        !absl::StartsWith(r->message, "local_data_plane_path:")) {
      _exit(4);
    }
    if (c.passed_fd() != -1) _exit(5);
    if (!c.SendRequest(ucx::Op::kReserve, 2, KeyFor(1), U64(4096))) _exit(3);
    r = c.ReadReply();
    if (!r.has_value() || r->code() != absl::StatusCode::kPermissionDenied) {
      _exit(4);
    }
    // No message channel either.
    if (!c.SendRequest(ucx::Op::kMapChannel, 3, KeyFor(0), {})) _exit(3);
    r = c.ReadReply();
    if (!r.has_value() || r->code() != absl::StatusCode::kPermissionDenied) {
      _exit(4);
    }
    if (c.passed_fd() != -1) _exit(5);
    _exit(0);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  plane_.reset();  // Removes the socket file.
  rmdir(open_dir);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST_F(LocalDataPlaneTest, APrivateArenaIsRefusedNamingDramShared) {
  Start(/*shared=*/false);
  RawConnection c(sock_);
  ASSERT_TRUE(c.SendRequest(ucx::Op::kMapArena, 1, KeyFor(0), {}));
  auto r = c.ReadReply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StartsWith(r->message, "dram_shared:")) << r->message;
  EXPECT_EQ(c.passed_fd(), -1);
  // No message channel either (its messages are all about the arena).
  ASSERT_TRUE(c.SendRequest(ucx::Op::kMapChannel, 2, KeyFor(0), {}));
  r = c.ReadReply();
  ASSERT_TRUE(r.has_value());
  EXPECT_EQ(r->code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StartsWith(r->message, "dram_shared:")) << r->message;
  EXPECT_EQ(c.passed_fd(), -1);
  // The connection still carries blocks as bytes.
  const auto block = MakeBlock(ShapeForBytes(64 << 10), 14);
  ASSERT_TRUE(c.SendRequest(ucx::Op::kPut, 3, KeyFor(14), block));
  EXPECT_EQ(c.ReadReply()->code(), absl::StatusCode::kOk);
}

TEST_F(LocalDataPlaneTest, AStaleSocketIsReplacedAndALiveOrForeignOneRefused) {
  // A socket file left by a process that died: replaced.
  {
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, sock_.data(), sock_.size());
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    close(fd);  // The file stays; nobody listens.
  }
  Start();
  EXPECT_TRUE(RawConnection(sock_).connected());
  // A live one: UNAVAILABLE naming the field; the first keeps serving.
  cluster::TcpDataPlaneOptions second;
  second.local_path = sock_;
  auto refused = cluster::TcpDataPlane::Start(&ctx_, second);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StartsWith(refused.status().message(),
                               "local_data_plane_path:"))
      << refused.status();
  EXPECT_TRUE(RawConnection(sock_).connected());
  // A file that is not a socket is left alone.
  const std::string file = dir_.path() + "/not-a-socket";
  std::ofstream(file) << "data";
  second.local_path = file;
  refused = cluster::TcpDataPlane::Start(&ctx_, second);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "not a socket"))
      << refused.status();
  std::ifstream kept(file);
  std::string content;
  kept >> content;
  EXPECT_EQ(content, "data");
  // Stopped, the plane removes its socket file.
  plane_.reset();
  struct stat st{};
  EXPECT_NE(lstat(sock_.c_str(), &st), 0);
}

TEST_F(LocalDataPlaneTest, InArenaPutsAndGetsGoThroughTheMessageChannel) {
  Start();
  PutAndGetThroughTheChannel();
}

// serve_spin 0: the daemon never polls the channel, so every request must
// ring it awake (and the test's side sleeps at once, so replies ring too).
TEST_F(LocalDataPlaneTest, DoorbellsWakeADaemonThatNeverPollsTheChannel) {
  serve_spin_ = absl::ZeroDuration();
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

}  // namespace
}  // namespace strata
