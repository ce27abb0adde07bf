// Block keys: 128-bit identifiers of KV chunks, identical across processes,
// machines and languages. The derivation is specified in docs/keys.md
// (format version 1) together with test vectors; this header is the C++
// implementation of that specification.
//
// Thread safety: every function here is pure and thread-safe.
#ifndef STRATA_KVSTORE_BLOCK_KEY_H_
#define STRATA_KVSTORE_BLOCK_KEY_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvstore/dtype.h"

namespace strata::kvstore {

// A 128-bit block key. `hi` and `lo` are the high and low 64 bits of an
// XXH3-128 digest. The canonical text form is 32 lower-case hex digits, `hi`
// first; the canonical byte form is 16 bytes big-endian (`hi` first), which
// also orders keys in RocksDB the same way as their text form.
struct BlockKey {
  uint64_t hi = 0;
  uint64_t lo = 0;

  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  friend auto operator<=>(const BlockKey&, const BlockKey&) = default;

  template <typename H>
  friend H AbslHashValue(H h, const BlockKey& k) {
    return H::combine(std::move(h), k.hi, k.lo);
  }

  // 32 lower-case hex digits, `hi` first.
  std::string ToHex() const;
  // Parses ToHex() output (exactly 32 hex digits, either case).
  // INVALID_ARGUMENT naming "key" otherwise.
  static absl::StatusOr<BlockKey> FromHex(std::string_view hex);

  // 16 bytes, big-endian, `hi` first.
  void ToBytes(uint8_t out[16]) const;
  std::string ToBytesString() const;
  // INVALID_ARGUMENT naming "key" unless exactly 16 bytes.
  static absl::StatusOr<BlockKey> FromBytes(std::string_view bytes);
};

// Everything that must differ for two caches to be incompatible. Two engines
// produce the same keys for the same tokens iff their namespaces are equal.
struct KeyNamespace {
  std::string tenant_salt;  // Per-tenant secret or id; may be empty.
  std::string model_id;     // E.g. "HuggingFaceTB/SmolLM2-135M-Instruct@rev".
  DType dtype = DType::kFloat16;
  uint32_t num_layers = 0;
  uint32_t num_kv_heads = 0;  // KV heads held by this TP rank.
  uint32_t head_dim = 0;
  uint32_t chunk_tokens = 256;  // Tokens per full chunk.
  uint32_t tp_rank = 0;
  uint32_t tp_size = 1;

  // The 128-bit digest of the namespace: the root of every key chain.
  // INVALID_ARGUMENT naming the field when model_id is empty, any shape field
  // is zero, chunk_tokens is zero, or tp_rank >= tp_size.
  absl::StatusOr<BlockKey> Root() const;
};

// How ChunkKeys treats a trailing chunk shorter than chunk_tokens.
enum class PartialChunk {
  kDrop,     // Only full chunks get keys (the default: what engines store).
  kInclude,  // The partial chunk gets a key too; it never equals a full
             // chunk's key because the token count is hashed.
};

struct ChunkKey {
  BlockKey key;
  uint32_t begin_token = 0;  // Index of the first token in the chunk.
  uint32_t num_tokens = 0;   // chunk_tokens, or fewer for a partial chunk.
  bool is_partial = false;   // True iff num_tokens < chunk_tokens.
};

// Chained prefix keys: key_0 = H(root, tokens[0:C]),
// key_i = H(key_{i-1}, tokens[iC:(i+1)C]). A hit on key_i implies the whole
// prefix tokens[0:(i+1)C] matches, so a lookup hit is always a prefix.
// INVALID_ARGUMENT when the namespace is invalid.
absl::StatusOr<std::vector<ChunkKey>> ChunkKeys(
    const KeyNamespace& ns, absl::Span<const uint32_t> tokens,
    PartialChunk partial = PartialChunk::kDrop);

// One chain step, exposed for callers that extend a chain incrementally.
// `tokens` may be shorter than a chunk (a partial chunk).
BlockKey ChainKey(const BlockKey& previous, absl::Span<const uint32_t> tokens);

// Unchained segment key for CacheBlend-style reuse: depends only on the
// namespace root and the segment's tokens, never on its position or on what
// precedes it. Domain-separated from chain keys, so a segment key never
// equals a chain key for the same tokens.
BlockKey SegmentKey(const BlockKey& root, absl::Span<const uint32_t> tokens);

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_BLOCK_KEY_H_
