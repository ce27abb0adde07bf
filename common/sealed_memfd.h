// SealedMemfd: shared memory of a fixed size to hand to another process.
//
// A memfd whose size is sealed (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL):
// a process it is passed to may map and write it but cannot shrink it under
// the creator, whose next access of the lost pages would end it with
// SIGBUS. Used for the daemon's shared DRAM arena (kvstore/dram_arena.cc)
// and each local connection's message channel (cluster/
// tcp_data_plane_local.cc). Thread-safe.
#ifndef STRATA_COMMON_SEALED_MEMFD_H_
#define STRATA_COMMON_SEALED_MEMFD_H_

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace strata {

// A new close-on-exec memfd named `name` of `bytes` bytes (zeros, not yet
// allocated), sealed at that size; the caller owns it. -1 with errno set
// when a step fails (nothing is left open).
inline int SealedMemfd(const char* name, size_t bytes) {
  const int fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return -1;
  if (ftruncate(fd, static_cast<off_t>(bytes)) != 0 ||
      fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
    const int err = errno;
    close(fd);
    errno = err;
    return -1;
  }
  return fd;
}

// Whether memfd `fd` (one passed to us) cannot shrink under us: a mapping of
// one that can would end this process with SIGBUS on the lost pages.
inline bool SizeCannotShrink(int fd) {
  const int seals = fcntl(fd, F_GET_SEALS);
  return seals >= 0 && (seals & F_SEAL_SHRINK) != 0;
}

}  // namespace strata

#endif  // STRATA_COMMON_SEALED_MEMFD_H_
