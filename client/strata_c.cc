// The C ABI (strata_c.h) over strata::client::Client.
#include "client/strata_c.h"

#include <sys/types.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/strata_client.h"
#include "kvstore/block_key.h"
#include "kvstore/dtype.h"

struct strata_client {
  std::unique_ptr<strata::client::Client> client;
};

namespace {

using strata::client::BlockKey;

thread_local std::string last_error;

int Report(const absl::Status& status) {
  if (status.ok()) {
    last_error.clear();
    return 0;
  }
  last_error.assign(status.message().data(), status.message().size());
  return static_cast<int>(status.code());
}

int InvalidArgument(const char* message) {
  return Report(absl::InvalidArgumentError(message));
}

// Runs `body` (returning absl::Status); no C++ exception leaves the library.
template <typename Body>
int Guard(Body&& body) noexcept {
  try {
    return Report(body());
  } catch (const std::bad_alloc&) {
    return Report(absl::ResourceExhaustedError("out of memory"));
  } catch (const std::exception& e) {
    return Report(absl::InternalError(e.what()));
  } catch (...) {
    return Report(absl::InternalError("unknown exception"));
  }
}

BlockKey KeyFrom(const uint8_t bytes[16]) {
  // FromBytes cannot fail on exactly 16 bytes.
  return *BlockKey::FromBytes(
      std::string_view(reinterpret_cast<const char*>(bytes), 16));
}

std::vector<BlockKey> KeysFrom(const uint8_t* keys, size_t n) {
  std::vector<BlockKey> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) out.push_back(KeyFrom(keys + 16 * i));
  return out;
}

// strata_client_options_t's struct_size beyond which a caller surely
// passed garbage (the struct is 32 bytes in ABI 1.2).
constexpr size_t kMaxOptionsBytes = 4096;

static_assert(sizeof(uid_t) == sizeof(uint32_t),
              "strata_client_options_t carries a uid in a uint32_t");

}  // namespace

extern "C" {

int strata_abi_version(void) { return STRATA_C_ABI_VERSION; }

int strata_abi_minor_version(void) { return STRATA_C_ABI_MINOR_VERSION; }

const char* strata_last_error(void) { return last_error.c_str(); }

int strata_client_open(const char* address, int64_t deadline_ms,
                       strata_client_t** out) {
  return strata_client_open_with_data_plane(address, deadline_ms, nullptr,
                                            out);
}

int strata_client_open_with_data_plane(const char* address,
                                       int64_t deadline_ms,
                                       const char* data_plane,
                                       strata_client_t** out) {
  strata_client_options_t options{};
  options.struct_size = sizeof(options);
  options.deadline_ms = deadline_ms;
  options.data_plane = data_plane;
  return strata_client_open_with_options(address, &options, out);
}

int strata_client_open_with_options(const char* address,
                                    const strata_client_options_t* options,
                                    strata_client_t** out) {
  if (out == nullptr) return InvalidArgument("out: null");
  *out = nullptr;
  if (address == nullptr) return InvalidArgument("address: null");
  // The caller's struct, as much of it as it and this library both know;
  // the rest zero (defaults).
  strata_client_options_t o{};
  if (options != nullptr) {
    // Every header that had the struct (1.2 on) made it at least this
    // big; a smaller size ends inside a field.
    const size_t size = options->struct_size;
    if (size < sizeof(o) || size > kMaxOptionsBytes) {
      return Report(absl::InvalidArgumentError(absl::StrCat(
          "struct_size: ", size, " (want sizeof(strata_client_options_t): ",
          sizeof(o), " for this library's ABI 1.", STRATA_C_ABI_MINOR_VERSION,
          ", at most ", kMaxOptionsBytes, " for later ones)")));
    }
    const auto* bytes = reinterpret_cast<const uint8_t*>(options);
    for (size_t i = sizeof(o); i < size; ++i) {
      if (bytes[i] != 0) {
        return Report(absl::InvalidArgumentError(absl::StrCat(
            "struct_size: ", size, " bytes with options past the ", sizeof(o),
            " this library knows (ABI 1.", STRATA_C_ABI_MINOR_VERSION, ")")));
      }
    }
    std::memcpy(&o, options, sizeof(o));
  }
  const std::string plane = o.data_plane == nullptr ? "auto" : o.data_plane;
  if (plane != "auto" && plane != "ucx" && plane != "tcp" &&
      plane != "local" && plane != "grpc") {
    return Report(absl::InvalidArgumentError(absl::StrCat(
        "data_plane: \"", plane, "\" is not auto, ucx, tcp, local or grpc")));
  }
  return Guard([&]() -> absl::Status {
    strata::client::ClientOptions client_options;
    client_options.address = address;
    client_options.data_plane = plane;
    if (o.deadline_ms > 0) {
      client_options.default_deadline = absl::Milliseconds(o.deadline_ms);
    }
    if (o.has_local_daemon_uid != 0) {
      client_options.local_daemon_uid = o.local_daemon_uid;
    }
    absl::StatusOr<std::unique_ptr<strata::client::Client>> client =
        strata::client::Client::Connect(client_options);
    if (!client.ok()) return client.status();
    *out = new strata_client{std::move(*client)};
    return absl::OkStatus();
  });
}

int strata_client_data_plane(strata_client_t* client, char* out,
                             size_t capacity) {
  if (client == nullptr) return InvalidArgument("client: null");
  if (out == nullptr && capacity > 0) return InvalidArgument("out: null");
  return Guard([&]() -> absl::Status {
    const std::string plane = client->client->DataPlane();
    if (plane.size() + 1 > capacity) {
      return absl::OutOfRangeError(absl::StrCat(
          "capacity: the data plane \"", plane, "\" needs ", plane.size() + 1,
          " bytes, capacity ", capacity));
    }
    std::memcpy(out, plane.c_str(), plane.size() + 1);
    return absl::OkStatus();
  });
}

void strata_client_close(strata_client_t* client) {
  last_error.clear();
  delete client;
}

int strata_put(strata_client_t* client, const uint8_t key[16],
               const uint8_t* block, size_t len, int durable,
               int* already_present) {
  if (client == nullptr) return InvalidArgument("client: null");
  if (key == nullptr) return InvalidArgument("key: null");
  if (block == nullptr) return InvalidArgument("block: null");
  if (already_present != nullptr) *already_present = 0;
  return Guard([&]() -> absl::Status {
    strata::client::PutOptions put;
    put.durable = durable != 0;
    absl::StatusOr<strata::client::PutResult> result =
        client->client->Put(KeyFrom(key), absl::MakeConstSpan(block, len), put);
    if (!result.ok()) return result.status();
    if (already_present != nullptr) {
      *already_present = result->already_present ? 1 : 0;
    }
    return absl::OkStatus();
  });
}

int strata_get_into(strata_client_t* client, const uint8_t key[16],
                    uint8_t* dst, size_t capacity, size_t* out_len) {
  if (client == nullptr) return InvalidArgument("client: null");
  if (key == nullptr) return InvalidArgument("key: null");
  if (dst == nullptr) return InvalidArgument("dst: null");
  if (capacity == 0) return InvalidArgument("capacity: zero");
  if (out_len == nullptr) return InvalidArgument("out_len: null");
  *out_len = 0;
  return Guard([&]() -> absl::Status {
    // A registration for the duration of the call: the block lands in dst.
    strata::client::Client& c = *client->client;
    absl::StatusOr<strata::client::BufferHandle> buffer =
        c.RegisterBuffer(dst, capacity);
    if (!buffer.ok()) return buffer.status();
    absl::StatusOr<size_t> size = c.GetInto(KeyFrom(key), *buffer, 0, capacity);
    (void)c.UnregisterBuffer(*buffer);
    if (!size.ok()) return size.status();
    *out_len = *size;
    return absl::OkStatus();
  });
}

int strata_leading_hits(strata_client_t* client, const uint8_t* keys, size_t n,
                        uint32_t* hits) {
  if (client == nullptr) return InvalidArgument("client: null");
  if (keys == nullptr && n > 0) return InvalidArgument("keys: null");
  if (hits == nullptr) return InvalidArgument("hits: null");
  *hits = 0;
  return Guard([&]() -> absl::Status {
    absl::StatusOr<uint32_t> result =
        client->client->LeadingHits(KeysFrom(keys, n));
    if (!result.ok()) return result.status();
    *hits = *result;
    return absl::OkStatus();
  });
}

int strata_exists(strata_client_t* client, const uint8_t* keys, size_t n,
                  uint8_t* exists) {
  if (client == nullptr) return InvalidArgument("client: null");
  if (n > 0 && keys == nullptr) return InvalidArgument("keys: null");
  if (n > 0 && exists == nullptr) return InvalidArgument("exists: null");
  return Guard([&]() -> absl::Status {
    absl::StatusOr<std::vector<bool>> result =
        client->client->Exists(KeysFrom(keys, n));
    if (!result.ok()) return result.status();
    for (size_t i = 0; i < n; ++i) exists[i] = (*result)[i] ? 1 : 0;
    return absl::OkStatus();
  });
}

int strata_remove(strata_client_t* client, const uint8_t key[16]) {
  if (client == nullptr) return InvalidArgument("client: null");
  if (key == nullptr) return InvalidArgument("key: null");
  return Guard([&] { return client->client->Remove(KeyFrom(key)); });
}

int strata_pin(strata_client_t* client, const uint8_t key[16],
               uint64_t ttl_ms) {
  if (client == nullptr) return InvalidArgument("client: null");
  if (key == nullptr) return InvalidArgument("key: null");
  if (ttl_ms == 0) return InvalidArgument("ttl_ms: zero");
  if (ttl_ms > static_cast<uint64_t>(INT64_MAX)) {
    return InvalidArgument("ttl_ms: too large");
  }
  return Guard([&] {
    return client->client->Pin(
        KeyFrom(key), absl::Milliseconds(static_cast<int64_t>(ttl_ms)));
  });
}

int strata_unpin(strata_client_t* client, const uint8_t key[16]) {
  if (client == nullptr) return InvalidArgument("client: null");
  if (key == nullptr) return InvalidArgument("key: null");
  return Guard([&] { return client->client->Unpin(KeyFrom(key)); });
}

int strata_health(strata_client_t* client) {
  if (client == nullptr) return InvalidArgument("client: null");
  return Guard([&] { return client->client->Health(); });
}

int strata_key_from_hex(const char* hex, uint8_t out[16]) {
  if (hex == nullptr) return InvalidArgument("hex: null");
  if (out == nullptr) return InvalidArgument("out: null");
  return Guard([&]() -> absl::Status {
    absl::StatusOr<BlockKey> key = BlockKey::FromHex(hex);
    if (!key.ok()) return key.status();
    key->ToBytes(out);
    return absl::OkStatus();
  });
}

int strata_key_to_hex(const uint8_t key[16], char out[33]) {
  if (key == nullptr) return InvalidArgument("key: null");
  if (out == nullptr) return InvalidArgument("out: null");
  return Guard([&]() -> absl::Status {
    const std::string hex = KeyFrom(key).ToHex();
    std::memcpy(out, hex.data(), 32);
    out[32] = '\0';
    return absl::OkStatus();
  });
}

int strata_chunk_keys(const char* model_id, const uint8_t* tenant_salt,
                      size_t tenant_salt_len, uint32_t dtype,
                      uint32_t num_layers, uint32_t num_kv_heads,
                      uint32_t head_dim, uint32_t chunk_tokens,
                      uint32_t tp_rank, uint32_t tp_size,
                      const uint32_t* tokens, size_t n, int include_partial,
                      uint8_t* out_keys, size_t out_capacity,
                      size_t* out_count) {
  if (out_count == nullptr) return InvalidArgument("out_count: null");
  *out_count = 0;
  if (model_id == nullptr) return InvalidArgument("model_id: null");
  if (tenant_salt == nullptr && tenant_salt_len > 0) {
    return InvalidArgument("tenant_salt: null");
  }
  if (tokens == nullptr && n > 0) return InvalidArgument("tokens: null");
  if (out_keys == nullptr && out_capacity > 0) {
    return InvalidArgument("out_keys: null");
  }
  if (dtype > 0xFF || !strata::kvstore::IsValidDType(
                          static_cast<uint8_t>(dtype))) {
    return Report(absl::InvalidArgumentError(
        absl::StrCat("dtype: ", dtype, " is not 1 (fp16), 2 (bf16), ",
                     "3 (fp8_e4m3) or 4 (fp32)")));
  }
  return Guard([&]() -> absl::Status {
    strata::kvstore::KeyNamespace ns;
    ns.model_id = model_id;
    if (tenant_salt_len > 0) {
      ns.tenant_salt.assign(reinterpret_cast<const char*>(tenant_salt),
                            tenant_salt_len);
    }
    ns.dtype = static_cast<strata::kvstore::DType>(dtype);
    ns.num_layers = num_layers;
    ns.num_kv_heads = num_kv_heads;
    ns.head_dim = head_dim;
    ns.chunk_tokens = chunk_tokens;
    ns.tp_rank = tp_rank;
    ns.tp_size = tp_size;
    absl::StatusOr<std::vector<strata::kvstore::ChunkKey>> keys =
        strata::kvstore::ChunkKeys(
            ns, absl::MakeConstSpan(tokens, n),
            include_partial != 0 ? strata::kvstore::PartialChunk::kInclude
                                 : strata::kvstore::PartialChunk::kDrop);
    if (!keys.ok()) return keys.status();
    *out_count = keys->size();
    if (keys->size() > out_capacity) {
      return absl::OutOfRangeError(
          absl::StrCat("out_capacity: ", keys->size(), " keys need room, ",
                       "out_keys holds ", out_capacity));
    }
    for (size_t i = 0; i < keys->size(); ++i) {
      (*keys)[i].key.ToBytes(out_keys + 16 * i);
    }
    return absl::OkStatus();
  });
}

}  // extern "C"
