// The codec interface: how a KV block is compressed into a payload and back.
//
// Every codec has a CPU reference implementation here (the source of truth:
// the CUDA kernels must produce the same bytes) behind one interface. A codec
// is stateless; its parameters travel in the block header's 32-byte
// codec_params field (docs/format.md) and a model-specific CodecProfile
// (PCA bases, dictionaries, predictors) is passed in when the codec needs one.
// Payload layouts are specified in docs/codecs.md.
//
// Contracts shared by every codec:
// - Deterministic: the same input, params and profile give the same bytes.
// - Encode validates params (INVALID_ARGUMENT naming the parameter) and the
//   shape (e.g. head_dim divisible by the group size), and needs a profile
//   only if the codec says so (FAILED_PRECONDITION naming "profile" when it is
//   missing or of another model; the profile id is recorded in the params).
// - Decode never trusts the payload: a truncated, padded or inconsistent
//   payload is DATA_LOSS naming what is wrong; a profile whose id differs
//   from the one recorded at encode time is FAILED_PRECONDITION naming
//   "profile". Decode never writes outside `out` and never returns garbage.
// - Partial decode: a selection of layers and tokens decodes to exactly the
//   same values as the same slice of a full decode.
//
// Thread safety: codecs are immutable singletons; all methods are const and
// thread-safe.
#ifndef STRATA_CODECS_CODEC_H_
#define STRATA_CODECS_CODEC_H_

#include <array>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "codecs/kv_tensor.h"
#include "kvstore/block_format.h"

namespace strata::codecs {

class CodecProfile;
using kvstore::CodecId;
using CodecParams = std::array<uint8_t, kvstore::kCodecParamsSize>;

// Which part of a block to decode. Defaults: everything.
struct DecodeSelection {
  uint32_t layer_begin = 0;
  uint32_t layer_end = UINT32_MAX;  // Clamped to num_layers.
  uint32_t token_begin = 0;
  uint32_t token_end = UINT32_MAX;  // Clamped to num_tokens.
  // When non-empty, these tokens (strictly increasing, < num_tokens) instead
  // of the token range.
  std::vector<uint32_t> token_indices;

  // The decoded tensor's shape for a block of `shape`, or INVALID_ARGUMENT
  // naming "layer_begin"/"token_begin"/"token_indices".
  absl::StatusOr<BlockShape> Resolve(const BlockShape& shape) const;
  // The block token held by row `i` of the decoded tensor.
  uint32_t Token(uint32_t i) const {
    return token_indices.empty() ? token_begin + i : token_indices[i];
  }
};

class Codec {
 public:
  virtual ~Codec() = default;
  virtual CodecId id() const = 0;
  virtual const char* name() const = 0;
  // True when Encode/Decode need a CodecProfile.
  virtual bool needs_profile() const { return false; }

  // Checks params against the shape without encoding anything.
  virtual absl::Status ValidateParams(const BlockShape& shape,
                                      const CodecParams& params) const = 0;

  // Compresses `kv` (kv.shape.dtype is the cache dtype the block declares)
  // into a payload. `params` may be updated with values the decoder needs
  // (e.g. the profile id); they are written into the block header.
  virtual absl::StatusOr<std::vector<uint8_t>> Encode(
      const KvTensor& kv, CodecParams& params,
      const CodecProfile* profile) const = 0;

  // Decodes `selection` of a block whose header says `shape` and `params`
  // into `out` (resized to the selection's shape).
  virtual absl::Status Decode(const BlockShape& shape,
                              const CodecParams& params,
                              absl::Span<const uint8_t> payload,
                              const CodecProfile* profile,
                              const DecodeSelection& selection,
                              KvTensor* out) const = 0;
};

// The codec for an id; NOT_FOUND naming "codec" for an unknown id,
// UNIMPLEMENTED for an id reserved but not built yet.
absl::StatusOr<const Codec*> FindCodec(CodecId id);

// ---- Whole blocks (header + payload).

// Encodes `kv` with `codec` and `params` into a complete, checksummed block.
absl::StatusOr<std::vector<uint8_t>> EncodeKvBlock(
    const KvTensor& kv, CodecId codec, CodecParams params,
    const CodecProfile* profile = nullptr);

// Verifies and decodes (a selection of) a block. DATA_LOSS for a bad
// checksum or payload, FAILED_PRECONDITION for a missing/mismatched profile.
absl::StatusOr<KvTensor> DecodeKvBlock(absl::Span<const uint8_t> block,
                                       const CodecProfile* profile = nullptr,
                                       const DecodeSelection& selection = {});

// Exact bits per element of an encoded block: 8 * (header + payload bytes)
// / (2 * layers * tokens * heads * head_dim). Profiles are not counted (they
// are amortised over every block of a model); docs/codecs.md reports them.
double BitsPerElement(absl::Span<const uint8_t> block);

}  // namespace strata::codecs

#endif  // STRATA_CODECS_CODEC_H_
