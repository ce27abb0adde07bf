#include "client/local_socket_trust.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"

namespace strata::client::internal {
namespace {

bool InOurGroups(gid_t gid) {
  if (gid == getegid()) return true;
  const int count = getgroups(0, nullptr);
  if (count <= 0) return false;
  std::vector<gid_t> groups(static_cast<size_t>(count));
  const int got = getgroups(count, groups.data());
  if (got < 0) return false;
  groups.resize(static_cast<size_t>(got));
  return std::find(groups.begin(), groups.end(), gid) != groups.end();
}

}  // namespace

absl::Status CheckSocketSharedWithUs(const std::string& path,
                                     uid_t daemon_uid) {
  auto refuse = [&](const std::string& why) {
    return absl::FailedPreconditionError(absl::StrCat(
        "local_path: ", path, " is served by a process of another user (uid ",
        daemon_uid, ") and ", why));
  };
  struct stat sock {};
  if (lstat(path.c_str(), &sock) != 0 || !S_ISSOCK(sock.st_mode)) {
    return refuse("is not a socket here");
  }
  if (sock.st_uid != daemon_uid) return refuse("the socket is not its own");
  if ((sock.st_mode & 0060) != 0060) {
    return refuse("the socket is not shared with its group (mode 0660)");
  }
  if (!InOurGroups(sock.st_gid)) {
    return refuse(absl::StrCat("this process is not in the socket's group ",
                               sock.st_gid));
  }
  const std::string dir = std::filesystem::path(path).parent_path().native();
  struct stat parent {};
  if (stat(dir.empty() ? "." : dir.c_str(), &parent) != 0 ||
      (parent.st_uid != daemon_uid && parent.st_uid != 0) ||
      (parent.st_mode & 0022) != 0) {
    return refuse(absl::StrCat(
        "its directory ", dir,
        " is not the daemon's or root's alone (others could replace the "
        "socket)"));
  }
  return absl::OkStatus();
}

}  // namespace strata::client::internal
