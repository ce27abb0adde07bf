// The socket plane's local connections (cluster/tcp_data_plane_local.cc) at
// the byte level: the shared arena (MAP_ARENA, RESERVE/COMMIT, spares,
// in-arena GETs), through raw sockets and the arena mapped here, so the
// tests can do what a well-behaved client does not (commit bad bytes,
// commit without a reservation, vanish mid-put). The message channel is in
// local_channel_test.cc; the client library over local connections is
// tested end to end in ucx_data_plane_test, ucx_batch_test and
// ucx_client_verify_test (the "local" parameter).
#include <grp.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "common/local_channel.h"
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

// A new directory whose sockets other users can reach: under /tmp (the
// build tree's directories may be closed to them), opened for traversal;
// "" if it could not be made.
std::string DirOthersCanReach() {
  char dir[] = "/tmp/strata-peer-XXXXXX";
  if (mkdtemp(dir) == nullptr || chmod(dir, 0711) != 0) return "";
  return dir;
}

// A process of another user gets no arena: PERMISSION_DENIED naming the
// field, no descriptor. (The socket's mode keeps such processes out; the
// test opens it up to reach the check behind it.) Needs root to switch user.
TEST_F(LocalDataPlaneTest, APeerOfAnotherUserGetsNoArena) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a child as nobody";
  const std::string open_dir = DirOthersCanReach();
  ASSERT_FALSE(open_dir.empty());
  sock_ = open_dir + "/stratad.sock";
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
  rmdir(open_dir.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

// With local_group set, a process of another user in that group (as its
// primary group, or a supplementary one) gets the arena; the socket file
// carries the group, mode 0660. Children run as nobody (uid 65534).
TEST_F(LocalDataPlaneTest, APeerInTheLocalGroupGetsTheArena) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root to run a child as nobody";
  const std::string open_dir = DirOthersCanReach();
  ASSERT_FALSE(open_dir.empty());
  sock_ = open_dir + "/stratad.sock";
  constexpr gid_t kGroup = 4242;  // Needs no name: the plane takes an id.
  local_group_ = kGroup;
  Start();
  struct stat st {};
  ASSERT_EQ(lstat(sock_.c_str(), &st), 0);
  EXPECT_EQ(st.st_gid, kGroup);
  EXPECT_EQ(st.st_mode & 0777, 0660u);
  // Exit codes: 0 the arena came; 1-5 what went wrong.
  auto map_arena_as_nobody = [&](gid_t primary, std::vector<gid_t> extra) {
    const pid_t child = fork();
    if (child == 0) {
      if (setgroups(extra.size(), extra.data()) != 0 || setgid(primary) != 0 ||
          setuid(65534) != 0) {
        _exit(1);
      }
      RawConnection c(sock_);
      if (!c.connected()) _exit(2);
      if (!c.SendRequest(ucx::Op::kMapArena, 1, KeyFor(0), {})) _exit(3);
      std::optional<Reply> r = c.ReadReply();
      if (!r.has_value() || r->code() != absl::StatusCode::kOk) _exit(4);
      if (c.passed_fd() < 0) _exit(5);
      _exit(0);
    }
    int status = 0;
    if (child < 0 || waitpid(child, &status, 0) != child) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  };
  EXPECT_EQ(map_arena_as_nobody(kGroup, {}), 0) << "primary group";
  EXPECT_EQ(map_arena_as_nobody(65534, {kGroup}), 0) << "supplementary group";
  // In neither: the socket's mode keeps it out (connect fails).
  EXPECT_EQ(map_arena_as_nobody(65534, {}), 2) << "no group";
  // Let it reach the socket: the daemon still refuses it the arena.
  ASSERT_EQ(chmod(sock_.c_str(), 0666), 0);
  EXPECT_EQ(map_arena_as_nobody(65534, {}), 4) << "no group, socket open";
  plane_.reset();
  rmdir(open_dir.c_str());
}

// A socket in a directory others may write is not opened to a group (one
// of them could swap the file being chown'ed): the plane does not start,
// naming the field.
TEST_F(LocalDataPlaneTest, AGroupSocketInADirectoryOthersMayWriteIsRefused) {
  const std::string dir = dir_.Sub("open");
  ASSERT_EQ(mkdir(dir.c_str(), 0777), 0);
  ASSERT_EQ(chmod(dir.c_str(), 0777), 0);
  kvstore::TieredStoreOptions o;
  o.dram_capacity_bytes = 16 << 20;
  o.dram_shared = true;
  auto store = kvstore::TieredStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status();
  ctx_.store = store->get();
  ctx_.metrics = &metrics_;
  cluster::TcpDataPlaneOptions options;
  options.local_path = dir + "/s.sock";
  options.local_group = getegid();
  if (options.local_path.size() > 107) GTEST_SKIP() << "build tree too deep";
  auto plane = cluster::TcpDataPlane::Start(&ctx_, options);
  ASSERT_FALSE(plane.ok());
  EXPECT_EQ(plane.status().code(), absl::StatusCode::kUnavailable)
      << plane.status();
  EXPECT_TRUE(
      absl::StartsWith(plane.status().message(), "local_data_plane_path:"))
      << plane.status();
  EXPECT_FALSE(std::filesystem::exists(options.local_path));
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
  // The same socket, optional (stratad's loopback default): the plane starts
  // without local connections and leaves the live socket alone.
  second.local_path_optional = true;
  auto without_local = cluster::TcpDataPlane::Start(&ctx_, second);
  ASSERT_TRUE(without_local.ok()) << without_local.status();
  EXPECT_EQ((*without_local)->local_path(), "");
  without_local->reset();
  EXPECT_TRUE(RawConnection(sock_).connected());
  second.local_path_optional = false;
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

// Stop() while a client may still write: the reservation of a connection
// that Stop closes (it was idle) is kept, not freed, until Stop has joined
// every connection, so no request still being served can be given its
// range meanwhile; then it is freed with everything else.
TEST_F(LocalDataPlaneTest, StopFreesTheRangesOfClosedConnectionsOnlyAtTheEnd) {
  Start();
  const uint64_t base = store_->Stats().tiers[0].used_bytes;
  auto connections = [&] {
    const std::string text =
        metrics_.Render(store_->Stats(), false, absl::ZeroDuration());
    const std::string name = "strata:data_plane_connections{plane=\"local\"} ";
    const size_t at = text.find(name);
    return at == std::string::npos ? -1.0
                                   : std::stod(text.substr(at + name.size()));
  };
  RawConnection a(sock_);
  MapArena(a);
  auto reserved = Reserve(a, 60, 1 << 20);
  ASSERT_TRUE(reserved.has_value());
  ASSERT_EQ(reserved->code(), absl::StatusCode::kOk) << reserved->message;
  const uint64_t with_a = store_->Stats().tiers[0].used_bytes;
  ASSERT_GT(with_a, base);
  // Connection b is mid-request: a PUT whose frame claims 1 MiB, of which it
  // sent 4 KiB. Once its reservation shows, its thread is busy receiving.
  auto b = std::make_unique<RawConnection>(sock_);
  ASSERT_TRUE(b->SendRequest(ucx::Op::kPut, 2, KeyFor(61),
                             std::vector<uint8_t>(4096, 1), 1 << 20));
  const absl::Time give_up = absl::Now() + absl::Seconds(10);
  while (store_->Stats().tiers[0].used_bytes == with_a &&
         absl::Now() < give_up) {
    sched_yield();
  }
  const uint64_t with_both = store_->Stats().tiers[0].used_bytes;
  ASSERT_GT(with_both, with_a);
  std::thread stopper([&] { plane_->Stop(); });
  // a was idle: Stop closes it at once and its thread ends (the gauge
  // falls to 1, b), leaving its reservation retired, not freed.
  while (connections() != 1.0 && absl::Now() < give_up) sched_yield();
  ASSERT_EQ(connections(), 1.0);
  EXPECT_EQ(store_->Stats().tiers[0].used_bytes, with_both);
  // b's client goes: its request ends, Stop joins every connection and
  // frees what they held.
  b.reset();
  stopper.join();
  EXPECT_EQ(connections(), 0.0);
  EXPECT_EQ(store_->Stats().tiers[0].used_bytes, base);
  EXPECT_EQ(store_->Get(KeyFor(60)).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->Get(KeyFor(61)).status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace strata::testing
