/* Strata client, stable C ABI (version STRATA_C_ABI_VERSION.
 * STRATA_C_ABI_MINOR_VERSION).
 *
 * For C programs and for other languages' FFIs (Python ctypes, Rust, Go):
 * link strata_client_c statically or load libstrata_c.so. The header uses C
 * types only; the library wraps strata::client::Client (strata_client.h).
 *
 * Return codes: every function returning int returns a canonical status
 * code, the same numbers as absl::StatusCode and grpc::StatusCode:
 *   0 OK, 1 CANCELLED, 2 UNKNOWN, 3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED,
 *   5 NOT_FOUND, 6 ALREADY_EXISTS, 7 PERMISSION_DENIED, 8 RESOURCE_EXHAUSTED,
 *   9 FAILED_PRECONDITION, 10 ABORTED, 11 OUT_OF_RANGE, 12 UNIMPLEMENTED,
 *   13 INTERNAL, 14 UNAVAILABLE, 15 DATA_LOSS, 16 UNAUTHENTICATED.
 * E.g. strata_get_into returns 5 on a miss and 15 when the block was corrupt.
 * strata_last_error() describes the last call made on the calling thread.
 *
 * Keys are 16 bytes, the canonical big-endian byte form of a block key
 * (docs/keys.md): `hi` first. Blocks are encoded blocks (docs/format.md).
 *
 * Ownership: the library never keeps a pointer passed to it after the call
 * returns; buffers are the caller's before and after. A strata_client_t is
 * created by strata_client_open and freed by strata_client_close.
 *
 * Threading: all calls are synchronous (they block the calling thread until
 * the daemon answers, the deadline passes or retries run out). A
 * strata_client_t is thread-safe: share one per process and call it from any
 * number of threads at once. strata_client_close must not race with other
 * calls on the same client. Calls on UNAVAILABLE are retried with backoff
 * within the deadline (strata_client.h).
 */
#ifndef STRATA_CLIENT_STRATA_C_H_
#define STRATA_CLIENT_STRATA_C_H_

#include <stddef.h>
#include <stdint.h>

/* Major: changes only when a function's meaning or signature changes (never
 * so far). Minor: grows with additions; a library of a higher minor runs
 * every program built against a lower one. libstrata_c.so is versioned
 * MAJOR.MINOR.0 with soname libstrata_c.so.MAJOR.
 *   1.0  the first release.
 *   1.1  strata_abi_minor_version, strata_client_open_with_data_plane,
 *        strata_client_data_plane.
 *   1.2  data_plane "local"; strata_client_options_t,
 *        strata_client_open_with_options. */
#define STRATA_C_ABI_VERSION 1
#define STRATA_C_ABI_MINOR_VERSION 2

#if defined(STRATA_C_BUILDING_SHARED)
#define STRATA_C_API __attribute__((visibility("default")))
#else
#define STRATA_C_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* An open client: one gRPC channel (and, when the daemon offers it, one UCX
 * data-plane connection) to one daemon. Opaque. */
typedef struct strata_client strata_client_t;

/* STRATA_C_ABI_VERSION of the loaded library; compare it with the header's
 * before anything else when loading the library dynamically. */
STRATA_C_API int strata_abi_version(void);

/* STRATA_C_ABI_MINOR_VERSION of the loaded library (since 1.1; a 1.0 library
 * lacks the symbol, so look it up with dlsym before calling it). */
STRATA_C_API int strata_abi_minor_version(void);

/* A NUL-terminated description of the last call made on this thread: the
 * error message after a non-zero return, "" after success. Owned by the
 * library; valid until the thread's next strata_* call. Never NULL. */
STRATA_C_API const char* strata_last_error(void);

/* ---- Clients. */

/* Opens a client to `address` ("host:port"). `deadline_ms` is the deadline of
 * every call of this client; <= 0 takes the default (10 s). It asks the
 * daemon for its bulk data planes (ClientOptions::data_plane "auto",
 * docs/protocol.md) and moves blocks over one when reachable; a daemon that
 * is not up makes it fall back to gRPC, not fail: the first call then fails
 * with 14 (UNAVAILABLE). On success *out is the new client. */
STRATA_C_API int strata_client_open(const char* address, int64_t deadline_ms,
                                    strata_client_t** out);

/* As strata_client_open, choosing the bulk data path (since 1.1):
 *   "auto" (or NULL)  local connections with the daemon's shared arena,
 *                     else UCX over shared memory, else the socket data
 *                     plane, else UCX over TCP, whichever the daemon offers
 *                     and answers a round trip, else gRPC (what
 *                     strata_client_open does);
 *   "ucx"             UCX required: fails with 14 (UNAVAILABLE, message
 *                     naming "data_plane") when the daemon has no UCX data
 *                     plane or it cannot be reached within the deadline;
 *   "tcp"             the socket data plane required, likewise;
 *   "local"           local connections with the shared arena required,
 *                     likewise (since 1.2; docs/protocol.md);
 *   "grpc"            every byte over gRPC; does not wait for the daemon.
 * Anything else is 3 (INVALID_ARGUMENT naming "data_plane"). UCX picks TCP or
 * shared memory from this process's UCX_* environment (docs/protocol.md). */
STRATA_C_API int strata_client_open_with_data_plane(const char* address,
                                                    int64_t deadline_ms,
                                                    const char* data_plane,
                                                    strata_client_t** out);

/* Options of strata_client_open_with_options (since 1.2). memset it to 0,
 * set struct_size to sizeof(strata_client_options_t), then the fields
 * wanted; a field left zero takes its default. The library reads
 * struct_size bytes at the pointer, so it must not exceed the caller's
 * object. Fields are only ever added at the end, in groups of 8 bytes (no
 * tail padding): a library takes defaults for fields past a caller's
 * struct_size (a program built against an older header), and refuses with 3
 * (INVALID_ARGUMENT naming "struct_size") a size no header made (below
 * 1.2's, or above 4096) and a larger struct whose bytes past the fields it
 * knows are not all zero (a program built against a newer header asking for
 * something this library cannot do). */
typedef struct strata_client_options {
  size_t struct_size;
  /* The deadline of every call; <= 0: the default (10 s). */
  int64_t deadline_ms;
  /* As strata_client_open_with_data_plane's; NULL: "auto". */
  const char* data_plane;
  /* Non-zero: the daemon serving the local connections must run as user
   * local_daemon_uid, or their shared arena is not used (ClientOptions::
   * local_daemon_uid: "local" fails with 14 naming "local_daemon_uid",
   * "auto" takes the next plane, where UCX over shared memory is not
   * checked for the daemon's user). */
  int32_t has_local_daemon_uid;
  uint32_t local_daemon_uid;
} strata_client_options_t;

/* Opens a client to `address` with `options` (NULL: every default, as
 * strata_client_open). Since 1.2: a program that may load an older library
 * checks strata_abi_minor_version() >= 2 first. local_daemon_uid
 * 4294967295 ((uid_t)-1) is 3 (INVALID_ARGUMENT). */
STRATA_C_API int strata_client_open_with_options(
    const char* address, const strata_client_options_t* options,
    strata_client_t** out);

/* Writes the data path chosen at open as a NUL-terminated string into
 * out[0, capacity): "grpc", "tcp" (the socket data plane), "local" (its
 * local connections with the shared arena), or "ucx:" and
 * the UCX transports carrying it (e.g. "ucx:tcp", "ucx:cma,sysv"). 11 (OUT_OF_RANGE) when it does not fit
 * (nothing written). Since 1.1. */
STRATA_C_API int strata_client_data_plane(strata_client_t* client, char* out,
                                          size_t capacity);

/* Closes the client and frees it. NULL is a no-op. The pointer is invalid
 * afterwards. */
STRATA_C_API void strata_client_close(strata_client_t* client);

/* ---- Data path. */

/* Stores `block` (len bytes) under `key`. `durable` != 0 acknowledges only
 * once the block is on the SSD tier. *already_present (if not NULL) is set to
 * 1 when the key was stored before (nothing changed), else 0. */
STRATA_C_API int strata_put(strata_client_t* client, const uint8_t key[16],
                            const uint8_t* block, size_t len, int durable,
                            int* already_present);

/* Reads the block stored under `key` into dst[0, capacity) and sets *out_len
 * to its size. 5 (NOT_FOUND) on a miss; 11 (OUT_OF_RANGE) when the block is
 * larger than `capacity` (dst is unchanged then). The bytes land directly in
 * dst, with no intermediate copy. */
STRATA_C_API int strata_get_into(strata_client_t* client, const uint8_t key[16],
                                 uint8_t* dst, size_t capacity,
                                 size_t* out_len);

/* *hits = how many of the n keys (keys: n * 16 bytes, in order, e.g. a
 * prompt's chained chunk keys) are stored before the first missing one. */
STRATA_C_API int strata_leading_hits(strata_client_t* client,
                                     const uint8_t* keys, size_t n,
                                     uint32_t* hits);

/* exists[i] = 1 if keys[i] (keys: n * 16 bytes) is stored, else 0. */
STRATA_C_API int strata_exists(strata_client_t* client, const uint8_t* keys,
                               size_t n, uint8_t* exists);

/* Removes the block stored under `key` (the daemon's status is returned
 * unchanged, e.g. for an absent key). */
STRATA_C_API int strata_remove(strata_client_t* client, const uint8_t key[16]);

/* Protects the block from eviction for ttl_ms milliseconds (> 0). */
STRATA_C_API int strata_pin(strata_client_t* client, const uint8_t key[16],
                            uint64_t ttl_ms);
STRATA_C_API int strata_unpin(strata_client_t* client, const uint8_t key[16]);

/* 0 when the daemon's gRPC health check (grpc.health.v1) answers SERVING;
 * 14 (UNAVAILABLE) when it answers NOT_SERVING or is unreachable. */
STRATA_C_API int strata_health(strata_client_t* client);

/* ---- Keys (no client needed; pure and thread-safe). */

/* Parses 32 hex digits (either case, NUL-terminated) into out[16]. */
STRATA_C_API int strata_key_from_hex(const char* hex, uint8_t out[16]);

/* Writes 32 lower-case hex digits and a NUL to out[33]. */
STRATA_C_API int strata_key_to_hex(const uint8_t key[16], char out[33]);

/* Chained chunk keys of `tokens` (n token ids) under a key namespace, exactly
 * as kvstore::ChunkKeys (docs/keys.md) derives them, so that every language
 * agrees with the C++ engines. The namespace:
 *   model_id        NUL-terminated, non-empty;
 *   tenant_salt     tenant_salt_len bytes (may be NULL when the length is 0);
 *   dtype           1 fp16, 2 bf16, 3 fp8_e4m3, 4 fp32;
 *   num_layers, num_kv_heads, head_dim, chunk_tokens  > 0;
 *   tp_rank < tp_size.
 * A trailing partial chunk gets a key only when include_partial != 0.
 * Writes the keys (16 bytes each) to out_keys, which holds out_capacity keys,
 * and sets *out_count to the number of keys. When out_capacity is too small
 * nothing is written, *out_count is the number needed and the call returns
 * 11 (OUT_OF_RANGE); out_keys may be NULL when out_capacity is 0. */
STRATA_C_API int strata_chunk_keys(
    const char* model_id, const uint8_t* tenant_salt, size_t tenant_salt_len,
    uint32_t dtype, uint32_t num_layers, uint32_t num_kv_heads,
    uint32_t head_dim, uint32_t chunk_tokens, uint32_t tp_rank,
    uint32_t tp_size, const uint32_t* tokens, size_t n, int include_partial,
    uint8_t* out_keys, size_t out_capacity, size_t* out_count);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* STRATA_CLIENT_STRATA_C_H_ */
