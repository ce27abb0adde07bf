// Whether this process belongs to a group: its effective group or one of
// its supplementary groups. Used where a group grants access to the local
// connections' shared arena (stratad's local_data_plane_group): the daemon
// checks it may hand its socket to the group, a client that a daemon of
// another user shared the socket with its group. Thread-safe.
#ifndef STRATA_COMMON_PROCESS_GROUPS_H_
#define STRATA_COMMON_PROCESS_GROUPS_H_

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

namespace strata {

inline bool ProcessInGroup(gid_t gid) {
  if (getegid() == gid) return true;
  const int count = getgroups(0, nullptr);
  if (count <= 0) return false;
  std::vector<gid_t> groups(static_cast<size_t>(count));
  const int got = getgroups(count, groups.data());
  if (got <= 0) return false;
  groups.resize(static_cast<size_t>(got));
  return std::find(groups.begin(), groups.end(), gid) != groups.end();
}

}  // namespace strata

#endif  // STRATA_COMMON_PROCESS_GROUPS_H_
