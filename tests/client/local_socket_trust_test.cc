// CheckSocketSharedWithUs (client/local_socket_trust.h): when a client may
// use the shared arena of a daemon of another user. Real socket files in a
// scratch directory, their owner, group and mode set as each case needs
// (chown: root only).
#include "client/local_socket_trust.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <string>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::client::internal {
namespace {

using ::strata::kvstore::testing::ScratchDir;

constexpr uid_t kDaemon = 65534;  // The daemon's user in these cases.

class LocalSocketTrust : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to own files as others";
    dir_ = std::string(
        std::filesystem::path(scratch_.SocketPath("d/x")).parent_path());
    std::filesystem::create_directories(dir_);
    path_ = dir_ + "/stratad.sock";
    fd_ = socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof(addr.sun_path) - 1);
    ASSERT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    // The shared case: the daemon's socket, group = ours (root's 0), 0660,
    // in the daemon's own directory (0755).
    ASSERT_EQ(chown(dir_.c_str(), kDaemon, 0), 0);
    ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
    ASSERT_EQ(chown(path_.c_str(), kDaemon, 0), 0);
    ASSERT_EQ(chmod(path_.c_str(), 0660), 0);
  }
  void TearDown() override {
    if (fd_ >= 0) close(fd_);
  }
  void ExpectRefused(const std::string& why) {
    absl::Status s = CheckSocketSharedWithUs(path_, kDaemon);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << why;
    EXPECT_TRUE(absl::StartsWith(s.message(), "local_path:")) << s;
  }

  ScratchDir scratch_;
  std::string dir_, path_;
  int fd_ = -1;
};

TEST_F(LocalSocketTrust, ASocketTheDaemonSharedWithOurGroupIsTrusted) {
  EXPECT_TRUE(CheckSocketSharedWithUs(path_, kDaemon).ok())
      << CheckSocketSharedWithUs(path_, kDaemon);
  // A root-owned directory is as good.
  ASSERT_EQ(chown(dir_.c_str(), 0, 0), 0);
  EXPECT_TRUE(CheckSocketSharedWithUs(path_, kDaemon).ok());
}

TEST_F(LocalSocketTrust, EachBrokenRuleIsRefusedNamingLocalPath) {
  // Served by another uid than the socket's owner.
  EXPECT_EQ(CheckSocketSharedWithUs(path_, kDaemon + 1).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_EQ(chmod(path_.c_str(), 0600), 0);
  ExpectRefused("not shared with its group");
  ASSERT_EQ(chmod(path_.c_str(), 0660), 0);
  ASSERT_EQ(chown(path_.c_str(), kDaemon, 4243), 0);
  ExpectRefused("a group we are not in");
  ASSERT_EQ(chown(path_.c_str(), kDaemon, 0), 0);
  ASSERT_EQ(chmod(dir_.c_str(), 0775), 0);
  ExpectRefused("a directory its group may write");
  ASSERT_EQ(chmod(dir_.c_str(), 0755), 0);
  ASSERT_EQ(chown(dir_.c_str(), 4244, 0), 0);
  ExpectRefused("a directory of a third user");
  ASSERT_EQ(chown(dir_.c_str(), kDaemon, 0), 0);
  ASSERT_EQ(unlink(path_.c_str()), 0);
  ExpectRefused("no socket there");
}

}  // namespace
}  // namespace strata::client::internal
