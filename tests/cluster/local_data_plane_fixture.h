// The fixture of the local-connection tests at the byte level
// (local_data_plane_test.cc: the shared arena; local_channel_test.cc: the
// message channel): a TcpDataPlane with a Unix socket over a real
// TieredStore whose DRAM arena is shared, spoken to through raw sockets
// (RawConnection) with the arena and the channel mapped in the test, so the
// tests can do what a well-behaved client does not and check that the
// daemon answers as docs/protocol.md ("Local connections") says.
#ifndef STRATA_TESTS_CLUSTER_LOCAL_DATA_PLANE_FIXTURE_H_
#define STRATA_TESTS_CLUSTER_LOCAL_DATA_PLANE_FIXTURE_H_

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
#include "kvstore/fault_injection_file_system.h"
#include "kvstore/tiered_store.h"
#include "tests/cluster/raw_data_plane_connection.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::testing {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ScratchDir;
using ::strata::kvstore::testing::ShapeForBytes;

inline constexpr uint64_t kToken = 0x70CA1;

inline std::vector<uint8_t> U64(uint64_t v) {
  std::vector<uint8_t> bytes(sizeof(v));
  std::memcpy(bytes.data(), &v, sizeof(v));
  return bytes;
}

inline uint64_t Word(const Reply& r, size_t i) {
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
    return local::RingIfAsleep(c_.fd(), ch_->request) == sockio::Io::kOk;
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

  // The number the next request will get.
  uint32_t next_number() const { return seq_ + 1; }

  // Releases the lease of the last request (an in-arena GET) through the
  // channel's release word, ringing a sleeping daemon.
  bool ReleaseLast() {
    ch_->release.store(seq_, std::memory_order_seq_cst);
    return local::RingIfAsleep(c_.fd(), ch_->request) == sockio::Io::kOk;
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
      o.write_through = write_through_;
      o.promote_on_read = false;
      o.ssd_file_system = ssd_faults_;
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
    options.channel_spin = channel_spin_;
    options.stop_grace = stop_grace_;
    options.channel_pollers = channel_pollers_;
    options.local_group = local_group_;
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
    struct stat st {};
    ASSERT_EQ(fstat(c.passed_fd(), &st), 0);
    EXPECT_EQ(static_cast<size_t>(st.st_size), store_->SharedDramArena().bytes);
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

  // Set before Start(): the plane's serve_spin, channel_spin, stop_grace
  // and channel_pollers, and an SSD tier under the DRAM one (write-through
  // unless write_through_ is false; no promotion on read).
  absl::Duration serve_spin_ = cluster::TcpDataPlaneOptions().serve_spin;
  absl::Duration channel_spin_ = cluster::TcpDataPlaneOptions().channel_spin;
  absl::Duration stop_grace_ = cluster::TcpDataPlaneOptions().stop_grace;
  int channel_pollers_ = cluster::TcpDataPlaneOptions().channel_pollers;
  int64_t local_group_ = -1;  // TcpDataPlaneOptions::local_group.
  bool with_ssd_ = false;
  bool write_through_ = true;  // With with_ssd_.
  // With with_ssd_: the SSD tier's file system, through which a test can
  // hold its writes in flight.
  std::shared_ptr<kvstore::FaultInjectionFileSystem> ssd_faults_ =
      std::make_shared<kvstore::FaultInjectionFileSystem>();
  ScratchDir dir_;
  std::string sock_ = dir_.SocketPath("stratad.sock");
  std::unique_ptr<kvstore::TieredStore> store_;
  cluster::ServiceMetrics metrics_;
  cluster::ServiceContext ctx_;
  std::unique_ptr<cluster::TcpDataPlane> plane_;
  uint8_t* arena_ = nullptr;
  size_t arena_bytes_ = 0;
};

}  // namespace strata::testing

#endif  // STRATA_TESTS_CLUSTER_LOCAL_DATA_PLANE_FIXTURE_H_
