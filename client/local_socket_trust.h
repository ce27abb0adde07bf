// Whether a client may use the shared arena of a daemon that runs as
// another user: only when that daemon shared its local connections with one
// of the client's groups on purpose (stratad's local_data_plane_group), in
// a place nobody else could have put the socket.
//
// Thread safety: a pure check of the file system and this process's
// credentials; any thread.
#ifndef STRATA_CLIENT_LOCAL_SOCKET_TRUST_H_
#define STRATA_CLIENT_LOCAL_SOCKET_TRUST_H_

#include <sys/types.h>

#include <string>

#include "absl/status/status.h"

namespace strata::client::internal {

// OK when the Unix socket at `path`, served by a process running as
// `daemon_uid`:
//   - is a socket owned by `daemon_uid`,
//   - grants its group read and write (mode 0060),
//   - has a group this process is in (effective or supplementary), and
//   - lies in a directory whose every ancestor, as given and with symlinks
//     resolved, is owned by `daemon_uid` or root and writable by nobody
//     else (no group or other write bit, sticky or not), so only the daemon
//     or root could have put it there.
// The file checked is the one at `path` now; the caller's connection was
// made to `path` just before, and nobody else can change what `path` names.
// Otherwise FAILED_PRECONDITION naming "local_path" and the first rule the
// socket breaks.
absl::Status CheckSocketSharedWithUs(const std::string& path, uid_t daemon_uid);

}  // namespace strata::client::internal

#endif  // STRATA_CLIENT_LOCAL_SOCKET_TRUST_H_
