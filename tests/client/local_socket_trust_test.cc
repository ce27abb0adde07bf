// CheckSocketSharedWithUs (client/local_socket_trust.h): when a client may
// use the shared arena of a daemon of another user. Real socket files in a
// directory under /run, their owner, group and mode and those of their
// directories set as each case needs (chown: root only).
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

namespace strata::client::internal {
namespace {

constexpr uid_t kDaemon = 65534;  // The daemon's user in these cases.

class LocalSocketTrust : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "needs root to own files as others";
    // Every ancestor must be root's and closed to others: /run is, where
    // /tmp (sticky, world-writable) and a build tree under it are not.
    char dir[] = "/run/strata-trust-XXXXXX";
    if (mkdtemp(dir) == nullptr) GTEST_SKIP() << "no /run to work in";
    top_ = dir;
    dir_ = top_ + "/d";
    ASSERT_EQ(mkdir(dir_.c_str(), 0755), 0);
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
    std::error_code error;
    if (!top_.empty()) std::filesystem::remove_all(top_, error);
  }
  void ExpectRefused(const std::string& why) {
    absl::Status s = CheckSocketSharedWithUs(path_, kDaemon);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << why;
    EXPECT_TRUE(absl::StartsWith(s.message(), "local_path:")) << s;
  }

  std::string top_, dir_, path_;
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
  ASSERT_EQ(chmod(top_.c_str(), 0777), 0);
  ExpectRefused("an ancestor directory others may write");
  ASSERT_EQ(chmod(top_.c_str(), 0700), 0);
  // Through a symlink whose target lies under a directory others may write.
  const std::string open_dir = top_ + "/open";
  ASSERT_EQ(mkdir(open_dir.c_str(), 0777), 0);
  ASSERT_EQ(chmod(open_dir.c_str(), 0777), 0);
  ASSERT_EQ(rename(dir_.c_str(), (open_dir + "/d").c_str()), 0);
  ASSERT_EQ(symlink((open_dir + "/d").c_str(), dir_.c_str()), 0);
  ExpectRefused("a symlinked directory under one others may write");
  ASSERT_EQ(unlink(dir_.c_str()), 0);
  ASSERT_EQ(rename((open_dir + "/d").c_str(), dir_.c_str()), 0);
  ASSERT_TRUE(CheckSocketSharedWithUs(path_, kDaemon).ok());
  ASSERT_EQ(unlink(path_.c_str()), 0);
  ExpectRefused("no socket there");
}

}  // namespace
}  // namespace strata::client::internal
