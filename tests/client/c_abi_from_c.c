/* The C ABI header compiled as C (C99, -pedantic) and called from C against
 * libstrata_c.so: what a C program or another language's FFI sees. The
 * calls need no daemon: their arguments are refused before any connection.
 * Exit status 0 when every check holds; each failed check is printed. */
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "client/strata_c.h"

/* The layout C sees is the one the C++ library was built with (x86-64 and
 * other LP64 targets): a mismatch fails to compile. */
#if defined(__LP64__)
typedef char
    options_are_32_bytes[sizeof(strata_client_options_t) == 32 ? 1 : -1];
typedef char uid_pair_at_24
    [offsetof(strata_client_options_t, has_local_daemon_uid) == 24 ? 1 : -1];
typedef char uid_at_28[offsetof(strata_client_options_t, local_daemon_uid) == 28
                           ? 1
                           : -1];
#endif

static int failures = 0;

static void Check(int ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "FAILED: %s (last error: %s)\n", what, strata_last_error());
    ++failures;
  }
}

int main(void) {
  strata_client_options_t options;
  strata_client_t* client = NULL;
  Check(strata_abi_version() == STRATA_C_ABI_VERSION, "the major version");
  Check(strata_abi_minor_version() >= STRATA_C_ABI_MINOR_VERSION,
        "the library's minor version is at least the header's");

  memset(&options, 0, sizeof(options));
  options.struct_size = sizeof(options);
  Check(strata_client_open_with_options(NULL, &options, &client) == 3,
        "a NULL address is INVALID_ARGUMENT");
  Check(strncmp(strata_last_error(), "address", 7) == 0,
        "the message names address");
  Check(client == NULL, "no client after a refusal");

  options.struct_size = 0;
  Check(strata_client_open_with_options("127.0.0.1:1", &options, &client) == 3,
        "struct_size 0 is INVALID_ARGUMENT");
  Check(strncmp(strata_last_error(), "struct_size", 11) == 0,
        "the message names struct_size");

  options.struct_size = offsetof(strata_client_options_t, local_daemon_uid);
  Check(strata_client_open_with_options("127.0.0.1:1", &options, &client) == 3,
        "a struct_size ending inside a field is INVALID_ARGUMENT");

  options.struct_size = sizeof(options);
  options.data_plane = "rdma";
  Check(strata_client_open_with_options("127.0.0.1:1", &options, &client) == 3,
        "an unknown data plane is INVALID_ARGUMENT");
  Check(strncmp(strata_last_error(), "data_plane", 10) == 0,
        "the message names data_plane");
  return failures == 0 ? 0 : 1;
}
