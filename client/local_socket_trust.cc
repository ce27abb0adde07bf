#include "client/local_socket_trust.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/process_groups.h"

namespace strata::client::internal {
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
  if (!ProcessInGroup(sock.st_gid)) {
    return refuse(absl::StrCat("this process is not in the socket's group ",
                               sock.st_gid));
  }
  // Every directory on the way, as given and as resolved (symlinks): the
  // daemon's or root's, and writable by nobody else, so nobody else could
  // have put a socket there or swapped a directory under it.
  std::error_code error;
  const std::filesystem::path dir =
      std::filesystem::absolute(path, error).parent_path();
  const std::filesystem::path real = std::filesystem::canonical(dir, error);
  if (error)
    return refuse(
        absl::StrCat("its directory ", dir.native(), " cannot be resolved"));
  for (const std::filesystem::path* walk : {&dir, &real}) {
    std::filesystem::path prefix;
    for (const std::filesystem::path& part : *walk) {
      prefix /= part;
      struct stat st {};
      if (stat(prefix.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) ||
          (st.st_uid != daemon_uid && st.st_uid != 0) ||
          (st.st_mode & 0022) != 0) {
        return refuse(absl::StrCat(
            "the directory ", prefix.native(),
            " is not the daemon's or root's alone (others could replace "
            "the socket)"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace strata::client::internal
