// Block key derivation, format version 1. The normative description is
// docs/keys.md; tools/keys_reference.py is an independent implementation of
// the same specification, and tests/kvstore/block_key_test.cc checks that the
// two agree byte for byte.
#include "kvstore/block_key.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"

// Exposes XXH3_state_t so the streaming state can live on the stack instead of
// the heap (XXH3_createState). The header and the library come from the same
// libxxhash-dev package, so the struct layout matches.
#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

namespace strata::kvstore {
namespace {

// Wire constants of key format version 1 (docs/keys.md). Never change them;
// a new derivation gets a new version byte.
constexpr uint8_t kKeyFormatVersion = 1;
constexpr uint8_t kTagRoot = 0x4E;     // 'N'
constexpr uint8_t kTagChain = 0x43;    // 'C'
constexpr uint8_t kTagSegment = 0x53;  // 'S'

// Longest tenant_salt or model_id accepted by KeyNamespace::Root().
constexpr size_t kMaxNamespaceStringBytes = 4096;

constexpr bool kHostIsLittleEndian = std::endian::native == std::endian::little;
static_assert(kHostIsLittleEndian || std::endian::native == std::endian::big,
              "mixed-endian hosts are not supported");

void PutU32LE(uint32_t v, uint8_t* out) {
  out[0] = static_cast<uint8_t>(v);
  out[1] = static_cast<uint8_t>(v >> 8);
  out[2] = static_cast<uint8_t>(v >> 16);
  out[3] = static_cast<uint8_t>(v >> 24);
}

void PutU64BE(uint64_t v, uint8_t* out) {
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

uint64_t GetU64BE(const uint8_t* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | in[i];
  return v;
}

// Streaming XXH3-128 (seed 0, default secret) with helpers for the field
// encodings of docs/keys.md. Streaming and one-shot XXH3 give the same digest
// for the same bytes, so the message never needs to be materialised.
class Hasher {
 public:
  Hasher(uint8_t tag) {
    XXH3_INITSTATE(&state_);
    XXH3_128bits_reset(&state_);
    const uint8_t header[2] = {tag, kKeyFormatVersion};
    Bytes(header, sizeof(header));
  }

  void Bytes(const void* data, size_t len) {
    if (len > 0) XXH3_128bits_update(&state_, data, len);
  }
  void U8(uint8_t v) { Bytes(&v, 1); }
  void U32(uint32_t v) {
    uint8_t buf[4];
    PutU32LE(v, buf);
    Bytes(buf, sizeof(buf));
  }
  // u32 length, then the bytes.
  void LengthPrefixed(std::string_view s) {
    U32(static_cast<uint32_t>(s.size()));
    Bytes(s.data(), s.size());
  }
  // 16 bytes, big-endian, hi first (the canonical byte form of a key).
  void Key(const BlockKey& k) {
    uint8_t buf[16];
    k.ToBytes(buf);
    Bytes(buf, sizeof(buf));
  }
  // u32 count, then each token as u32 little-endian. No per-token allocation:
  // on little-endian hosts the token array already is the wire encoding.
  void Tokens(absl::Span<const uint32_t> tokens) {
    if (tokens.size() > std::numeric_limits<uint32_t>::max()) {
      // ChunkKeys rejects such inputs with a status; a direct ChainKey or
      // SegmentKey caller must never pass them (the count would wrap and two
      // different token lists could hash alike).
      std::fprintf(stderr,
                   "strata::kvstore: block key over %zu tokens; at most "
                   "4294967295 are allowed\n",
                   tokens.size());
      std::abort();
    }
    U32(static_cast<uint32_t>(tokens.size()));
    if constexpr (kHostIsLittleEndian) {
      Bytes(tokens.data(), tokens.size() * sizeof(uint32_t));
    } else {
      std::array<uint8_t, 1024> buf;  // 256 tokens at a time.
      constexpr size_t kPerPiece = buf.size() / sizeof(uint32_t);
      for (size_t i = 0; i < tokens.size(); i += kPerPiece) {
        const size_t n = std::min(kPerPiece, tokens.size() - i);
        for (size_t j = 0; j < n; ++j) PutU32LE(tokens[i + j], &buf[4 * j]);
        Bytes(buf.data(), 4 * n);
      }
    }
  }

  BlockKey Finish() {
    const XXH128_hash_t d = XXH3_128bits_digest(&state_);
    return BlockKey{d.high64, d.low64};
  }

 private:
  XXH3_state_t state_;
};

BlockKey TokenStep(uint8_t tag, const BlockKey& key,
                   absl::Span<const uint32_t> tokens) {
  Hasher h(tag);
  h.Key(key);
  h.Tokens(tokens);
  return h.Finish();
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

absl::Status CheckNamespaceString(absl::string_view field,
                                  std::string_view value) {
  if (value.size() > kMaxNamespaceStringBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value.size(), " bytes exceeds the limit of ",
                     kMaxNamespaceStringBytes));
  }
  return absl::OkStatus();
}

absl::Status CheckPositive(absl::string_view field, uint32_t value) {
  if (value == 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be > 0"));
  }
  return absl::OkStatus();
}

absl::Status ValidateNamespace(const KeyNamespace& ns) {
  if (absl::Status s = CheckNamespaceString("tenant_salt", ns.tenant_salt);
      !s.ok()) {
    return s;
  }
  if (ns.model_id.empty()) {
    return absl::InvalidArgumentError("model_id: must not be empty");
  }
  if (absl::Status s = CheckNamespaceString("model_id", ns.model_id); !s.ok()) {
    return s;
  }
  const auto raw_dtype = static_cast<uint8_t>(ns.dtype);
  if (!IsValidDType(raw_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype: ", static_cast<int>(raw_dtype), " is not a valid DType"));
  }
  for (const auto& [field, value] :
       {std::pair<absl::string_view, uint32_t>{"num_layers", ns.num_layers},
        {"num_kv_heads", ns.num_kv_heads},
        {"head_dim", ns.head_dim},
        {"chunk_tokens", ns.chunk_tokens},
        {"tp_size", ns.tp_size}}) {
    if (absl::Status s = CheckPositive(field, value); !s.ok()) return s;
  }
  if (ns.tp_rank >= ns.tp_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "tp_rank: ", ns.tp_rank, " must be < tp_size ", ns.tp_size));
  }
  return absl::OkStatus();
}

}  // namespace

std::string BlockKey::ToHex() const {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(32, '0');
  for (int i = 0; i < 16; ++i) {
    out[15 - i] = kDigits[(hi >> (4 * i)) & 0xF];
    out[31 - i] = kDigits[(lo >> (4 * i)) & 0xF];
  }
  return out;
}

absl::StatusOr<BlockKey> BlockKey::FromHex(std::string_view hex) {
  if (hex.size() != 32) {
    return absl::InvalidArgumentError(absl::StrCat(
        "key: expected 32 hex digits, got ", hex.size(), " characters"));
  }
  uint64_t halves[2] = {0, 0};
  for (size_t i = 0; i < 32; ++i) {
    const int v = HexValue(hex[i]);
    if (v < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("key: invalid hex digit '",
                       absl::CHexEscape(absl::string_view(&hex[i], 1)), "' at offset ", i));
    }
    halves[i / 16] = (halves[i / 16] << 4) | static_cast<uint64_t>(v);
  }
  return BlockKey{halves[0], halves[1]};
}

void BlockKey::ToBytes(uint8_t out[16]) const {
  PutU64BE(hi, out);
  PutU64BE(lo, out + 8);
}

std::string BlockKey::ToBytesString() const {
  uint8_t buf[16];
  ToBytes(buf);
  return std::string(reinterpret_cast<const char*>(buf), sizeof(buf));
}

absl::StatusOr<BlockKey> BlockKey::FromBytes(std::string_view bytes) {
  if (bytes.size() != 16) {
    return absl::InvalidArgumentError(
        absl::StrCat("key: expected 16 bytes, got ", bytes.size()));
  }
  const auto* p = reinterpret_cast<const uint8_t*>(bytes.data());
  return BlockKey{GetU64BE(p), GetU64BE(p + 8)};
}

absl::StatusOr<BlockKey> KeyNamespace::Root() const {
  if (absl::Status s = ValidateNamespace(*this); !s.ok()) return s;
  Hasher h(kTagRoot);
  h.LengthPrefixed(tenant_salt);
  h.LengthPrefixed(model_id);
  h.U8(static_cast<uint8_t>(dtype));
  h.U32(num_layers);
  h.U32(num_kv_heads);
  h.U32(head_dim);
  h.U32(chunk_tokens);
  h.U32(tp_rank);
  h.U32(tp_size);
  return h.Finish();
}

absl::StatusOr<std::vector<ChunkKey>> ChunkKeys(
    const KeyNamespace& ns, absl::Span<const uint32_t> tokens,
    PartialChunk partial) {
  // Checked before anything touches the tokens: begin_token and num_tokens
  // are u32, and so is the hashed count.
  if (tokens.size() > std::numeric_limits<uint32_t>::max()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens: ", tokens.size(),
                     " tokens exceeds the limit of 4294967295"));
  }
  absl::StatusOr<BlockKey> root = ns.Root();
  if (!root.ok()) return root.status();

  const size_t chunk = ns.chunk_tokens;
  const size_t full_chunks = tokens.size() / chunk;
  const size_t tail = tokens.size() % chunk;
  const bool with_tail = tail > 0 && partial == PartialChunk::kInclude;

  std::vector<ChunkKey> keys;
  keys.reserve(full_chunks + (with_tail ? 1 : 0));
  BlockKey key = *root;
  for (size_t i = 0; i < full_chunks; ++i) {
    const size_t begin = i * chunk;
    key = ChainKey(key, tokens.subspan(begin, chunk));
    keys.push_back(ChunkKey{key, static_cast<uint32_t>(begin),
                            static_cast<uint32_t>(chunk), false});
  }
  if (with_tail) {
    const size_t begin = full_chunks * chunk;
    key = ChainKey(key, tokens.subspan(begin, tail));
    keys.push_back(ChunkKey{key, static_cast<uint32_t>(begin),
                            static_cast<uint32_t>(tail), true});
  }
  return keys;
}

BlockKey ChainKey(const BlockKey& previous, absl::Span<const uint32_t> tokens) {
  return TokenStep(kTagChain, previous, tokens);
}

BlockKey SegmentKey(const BlockKey& root, absl::Span<const uint32_t> tokens) {
  return TokenStep(kTagSegment, root, tokens);
}

}  // namespace strata::kvstore
