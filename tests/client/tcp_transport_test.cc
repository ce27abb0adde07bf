// The socket data plane's client end (client/tcp_transport.h) against a
// fake daemon in this process: a plain listening socket whose peer thread
// behaves as a test needs (reads slowly, answers slowly, answers before it
// read the block). What a real daemon does is tested in
// tests/cluster/ucx_data_plane_test ("socket" parameter) and
// tests/cluster/tcp_data_plane_test.
#include "client/tcp_transport.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/sealed_memfd.h"
#include "common/socket_io.h"
#include "common/tcp_protocol.h"
#include "common/ucx_protocol.h"
#include "gtest/gtest.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::client::internal {
namespace {

using ::strata::kvstore::testing::KeyFor;
using ::strata::kvstore::testing::MakeBlock;
using ::strata::kvstore::testing::ShapeForBytes;

bool ReadFull(int fd, void* p, size_t n) {
  return n == 0 || recv(fd, p, n, MSG_WAITALL) == static_cast<ssize_t>(n);
}

// A listening socket on a free loopback port, or at Unix socket path
// `unix_path` when one is given (a daemon's local connections); each
// accepted connection is handed to `serve` on a thread of its own. The
// destructor stops accepting and joins.
class FakeDaemon {
 public:
  explicit FakeDaemon(std::function<void(int fd)> serve,
                      const std::string& unix_path = "")
      : serve_(std::move(serve)) {
    if (unix_path.empty()) {
      listener_ = socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in addr{};
      addr.sin_family = AF_INET;
      addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      EXPECT_EQ(
          bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
      socklen_t len = sizeof(addr);
      getsockname(listener_, reinterpret_cast<sockaddr*>(&addr), &len);
      address_ = absl::StrCat("127.0.0.1:", ntohs(addr.sin_port));
    } else {
      listener_ = socket(AF_UNIX, SOCK_STREAM, 0);
      sockaddr_un addr{};
      addr.sun_family = AF_UNIX;
      // Callers pass short paths (ArenaPeer: under /tmp).
      EXPECT_LT(unix_path.size(), sizeof(addr.sun_path)) << unix_path;
      std::memcpy(addr.sun_path, unix_path.data(),
                  std::min(unix_path.size(), sizeof(addr.sun_path) - 1));
      EXPECT_EQ(
          bind(listener_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0)
          << std::strerror(errno);
      address_ = "127.0.0.1:1";  // Unused: calls go to the Unix socket.
    }
    EXPECT_EQ(listen(listener_, 8), 0);
    acceptor_ = std::thread([this] {
      for (;;) {
        const int fd = accept(listener_, nullptr, nullptr);
        if (fd < 0) return;  // Shut down.
        ++accepted_;
        threads_.emplace_back([this, fd] {
          serve_(fd);
          close(fd);
        });
      }
    });
  }
  ~FakeDaemon() {
    stop_ = true;
    shutdown(listener_, SHUT_RDWR);
    acceptor_.join();
    for (auto& t : threads_) t.join();
    close(listener_);
  }

  const std::string& address() const { return address_; }
  int accepted() const { return accepted_; }
  bool stopping() const { return stop_; }

 private:
  std::function<void(int)> serve_;
  int listener_ = -1;
  std::string address_;
  std::thread acceptor_;
  std::vector<std::thread> threads_;  // The acceptor's only.
  std::atomic<int> accepted_{0};
  std::atomic<bool> stop_{false};
};

// Reads one request's frame and header; false when the client went away.
bool ReadRequest(int fd, tcp::TcpFrame* frame, ucx::RequestHeader* h) {
  std::vector<char> header;
  if (!ReadFull(fd, frame, sizeof(*frame))) return false;
  header.resize(frame->header_length);
  if (!ReadFull(fd, header.data(), header.size())) return false;
  std::memcpy(h, header.data(), sizeof(*h));
  return true;
}

void SendReply(int fd, const ucx::RequestHeader& req, absl::StatusCode code,
               const std::string& message, uint64_t data_length) {
  ucx::ReplyHeader r{};
  r.version = ucx::kProtocolVersion;
  r.op = req.op;
  r.status = static_cast<int32_t>(code);
  r.request_id = req.request_id;
  r.message_length = static_cast<uint32_t>(message.size());
  tcp::TcpFrame frame{tcp::kFrameMagic,
                      static_cast<uint32_t>(sizeof(r) + message.size()),
                      data_length};
  std::string bytes(reinterpret_cast<const char*>(&frame), sizeof(frame));
  bytes.append(reinterpret_cast<const char*>(&r), sizeof(r));
  bytes += message;
  send(fd, bytes.data(), bytes.size(), MSG_NOSIGNAL);
}

std::unique_ptr<TcpTransport> Connect(const FakeDaemon& d) {
  TcpTransportOptions o;
  o.address = d.address();
  o.retry.max_attempts = 3;
  auto t = TcpTransport::Create(o);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

template <typename T>
absl::StatusOr<T> SyncPut(TcpTransport& t, const std::vector<uint8_t>& block,
                          absl::Duration deadline) {
  std::promise<absl::StatusOr<T>> p;
  t.Put(KeyFor(1), block, /*caller_waits=*/true, {}, absl::Now() + deadline,
        [&](absl::StatusOr<T> r) { p.set_value(std::move(r)); });
  return p.get_future().get();
}

// Linux restarts a socket's timeout for every syscall, and a syscall that
// moved a few bytes returns them without an error: a peer that keeps
// reading a little kept a send going far past its deadline. The deadline
// now bounds the whole call.
TEST(TcpTransport, APutToAPeerThatReadsSlowlyEndsAtItsDeadline) {
  FakeDaemon d([&d](int fd) {
    char buf[4096];
    // A slow reader: 4 KiB every 20 ms (8 MiB would take 40 s).
    while (!d.stopping() && recv(fd, buf, sizeof(buf), 0) > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  auto t = Connect(d);
  ASSERT_NE(t, nullptr);
  const auto block = MakeBlock(ShapeForBytes(8 << 20), 1);
  const absl::Time start = absl::Now();
  auto put = SyncPut<PutResult>(*t, block, absl::Milliseconds(500));
  EXPECT_EQ(put.status().code(), absl::StatusCode::kDeadlineExceeded)
      << put.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

TEST(TcpTransport, AGetWhoseBlockArrivesSlowlyEndsAtItsDeadline) {
  FakeDaemon d([&d](int fd) {
    tcp::TcpFrame frame;
    ucx::RequestHeader h;
    if (!ReadRequest(fd, &frame, &h)) return;
    SendReply(fd, h, absl::StatusCode::kOk, "", 8 << 20);
    const std::vector<char> piece(4096, 'x');
    // 4 KiB every 20 ms of the 8 MiB announced.
    while (!d.stopping() &&
           send(fd, piece.data(), piece.size(), MSG_NOSIGNAL) > 0) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  });
  auto t = Connect(d);
  ASSERT_NE(t, nullptr);
  std::promise<absl::StatusOr<GetResult>> p;
  const absl::Time start = absl::Now();
  t->Get(KeyFor(1), /*caller_waits=*/true, start + absl::Milliseconds(500),
         [&](absl::StatusOr<GetResult> r) { p.set_value(std::move(r)); });
  auto got = p.get_future().get();
  EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded)
      << got.status();
  EXPECT_LT(absl::Now() - start, absl::Seconds(5));
}

// A daemon that refuses a block too large to read and drop answers first
// and closes; the client's send then fails, but the answer is there to be
// read, and it is the call's result (not UNAVAILABLE, not a retry).
TEST(TcpTransport, AnAnswerSentBeforeTheBlockWasReadIsTheResult) {
  FakeDaemon d([](int fd) {
    tcp::TcpFrame frame;
    ucx::RequestHeader h;
    if (!ReadRequest(fd, &frame, &h)) return;
    SendReply(fd, h, absl::StatusCode::kInvalidArgument,
              "block: too large for this test", 0);
    shutdown(fd, SHUT_WR);
    // Returning closes with the block unread: the client's send is reset.
  });
  auto t = Connect(d);
  ASSERT_NE(t, nullptr);
  const auto block = MakeBlock(ShapeForBytes(32 << 20), 2);
  auto put = SyncPut<PutResult>(*t, block, absl::Seconds(20));
  EXPECT_EQ(put.status().code(), absl::StatusCode::kInvalidArgument)
      << put.status();
  EXPECT_TRUE(absl::StartsWith(put.status().message(), "block:"))
      << put.status();
  EXPECT_EQ(d.accepted(), 1) << "the put was retried";
}

TEST(TcpTransport, AReplyThatDoesNotMatchItsRequestIsInternalNotRetried) {
  FakeDaemon d([](int fd) {
    tcp::TcpFrame frame;
    ucx::RequestHeader h;
    if (!ReadRequest(fd, &frame, &h)) return;
    std::vector<char> block(frame.data_length);
    if (!ReadFull(fd, block.data(), block.size())) return;
    h.request_id += 1;  // Someone else's answer.
    SendReply(fd, h, absl::StatusCode::kOk, "", 0);
  });
  auto t = Connect(d);
  ASSERT_NE(t, nullptr);
  auto put = SyncPut<PutResult>(*t, MakeBlock(ShapeForBytes(4 << 10), 3),
                                absl::Seconds(10));
  EXPECT_EQ(put.status().code(), absl::StatusCode::kInternal) << put.status();
  EXPECT_TRUE(absl::StartsWith(put.status().message(), "data_plane:"))
      << put.status();
  EXPECT_EQ(d.accepted(), 1);
}

// The daemon closed an idle pooled connection (a restart, or its own
// limits): the next call opens a new one instead of failing on the dead
// one, so it needs no retry (here it has none).
TEST(TcpTransport, APooledConnectionTheDaemonClosedIsNotUsed) {
  std::promise<void> first_closed;
  std::atomic<int> served{0};
  FakeDaemon d([&](int fd) {
    tcp::TcpFrame frame;
    ucx::RequestHeader h;
    while (ReadRequest(fd, &frame, &h)) {
      SendReply(fd, h, absl::StatusCode::kOk, "", 0);
      if (served.fetch_add(1) == 0) {
        // The first connection ends after one call; the test goes on once
        // the client's kernel acknowledged the FIN (FIN_WAIT2 here), so the
        // client's socket already shows the close.
        shutdown(fd, SHUT_RDWR);
        tcp_info info{};
        socklen_t len = sizeof(info);
        const absl::Time until = absl::Now() + absl::Seconds(10);
        while (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &info, &len) == 0 &&
               info.tcpi_state != TCP_FIN_WAIT2 && absl::Now() < until) {
          std::this_thread::yield();
        }
        first_closed.set_value();
        return;
      }
    }
  });
  TcpTransportOptions o;
  o.address = d.address();
  o.retry.max_attempts = 1;
  auto t = TcpTransport::Create(o);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_TRUE((*t)->Ping(absl::Now() + absl::Seconds(10)).ok());
  first_closed.get_future().wait();
  const absl::Status second = (*t)->Ping(absl::Now() + absl::Seconds(10));
  EXPECT_TRUE(second.ok()) << second;
  EXPECT_EQ(d.accepted(), 2);
}

TEST(TcpTransport, AnAddressThatIsNotHostPortIsInvalidArgument) {
  TcpTransportOptions o;
  o.address = "no-port";
  auto t = TcpTransport::Create(o);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(t.status().message(), "address"))
      << t.status();
}

// A directory of its own under /tmp (a Unix socket path must stay under
// 108 bytes, which TEST_TMPDIR may not), removed with the object.
struct ShortTempDir {
  ShortTempDir() {
    char name[] = "/tmp/strata-test-XXXXXX";
    EXPECT_NE(mkdtemp(name), nullptr) << std::strerror(errno);
    path = name;
  }
  ~ShortTempDir() { rmdir(path.c_str()); }
  std::string path;
};

// A fake daemon's local connections that answer MAP_ARENA with `token` and
// memfd `arena` (the descriptor rides on the reply, as stratad's does).
struct ArenaPeer {
  ArenaPeer(uint64_t token, int arena)
      : path(dir.path + "/local.sock"),
        daemon(
            [token, arena](int fd) {
              tcp::TcpFrame frame{};
              ucx::RequestHeader req{};
              if (!ReadRequest(fd, &frame, &req)) return;
              ucx::ReplyHeader r{};
              r.version = ucx::kProtocolVersion;
              r.op = req.op;
              r.request_id = req.request_id;
              tcp::TcpFrame reply{tcp::kFrameMagic, sizeof(r), sizeof(token)};
              uint64_t word = token;
              iovec iov[3] = {{&reply, sizeof(reply)},
                              {&r, sizeof(r)},
                              {&word, sizeof(word)}};
              sockio::SendAll(fd, iov, 3, absl::InfiniteFuture(), arena);
              char end;
              recv(fd, &end, 1, 0);  // Until the client closes.
            },
            path) {}
  ~ArenaPeer() { unlink(path.c_str()); }  // Before `dir` goes.

  ShortTempDir dir;
  std::string path;
  FakeDaemon daemon;
};

std::unique_ptr<TcpTransport> ConnectLocal(const std::string& path) {
  TcpTransportOptions o;
  o.address = "127.0.0.1:1";
  o.local_path = path;
  auto t = TcpTransport::Create(o);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *std::move(t) : nullptr;
}

// A daemon could shrink an arena that is not sealed against shrinking after
// the client mapped it, and the client's next copy into the lost pages
// would end the engine with SIGBUS: such an arena is refused before it is
// mapped, whatever other seals it has.
TEST(TcpTransport, AnArenaThatCouldShrinkIsRefused) {
  const int unsealed = memfd_create("unsealed-arena", MFD_CLOEXEC);
  ASSERT_GE(unsealed, 0);
  absl::Cleanup close_unsealed = [unsealed] { close(unsealed); };
  ASSERT_EQ(ftruncate(unsealed, 4 << 20), 0);
  // Sealed, but not against shrinking.
  const int grow_sealed =
      memfd_create("grow-sealed-arena", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  ASSERT_GE(grow_sealed, 0);
  absl::Cleanup close_grow_sealed = [grow_sealed] { close(grow_sealed); };
  ASSERT_EQ(ftruncate(grow_sealed, 4 << 20), 0);
  ASSERT_EQ(fcntl(grow_sealed, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SEAL), 0);
  for (const int arena : {unsealed, grow_sealed}) {
    ArenaPeer peer(/*token=*/42, arena);
    auto t = ConnectLocal(peer.path);
    ASSERT_NE(t, nullptr);
    const absl::Status s =
        t->MapSharedArena(/*token=*/42, absl::Now() + absl::Seconds(10));
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_TRUE(absl::StrContains(s.message(), "sealed")) << s;
  }
}

// The same answer with the arena sealed at its size is mapped: the refusal
// above is the seal's, not the fake daemon's.
TEST(TcpTransport, AnArenaSealedAtItsSizeIsMapped) {
  const int sealed = SealedMemfd("sealed-arena", 4 << 20);
  ASSERT_GE(sealed, 0);
  absl::Cleanup close_sealed = [sealed] { close(sealed); };
  ArenaPeer peer(/*token=*/42, sealed);
  auto t = ConnectLocal(peer.path);
  ASSERT_NE(t, nullptr);
  const absl::Status s =
      t->MapSharedArena(/*token=*/42, absl::Now() + absl::Seconds(10));
  EXPECT_TRUE(s.ok()) << s;
}

}  // namespace
}  // namespace strata::client::internal
