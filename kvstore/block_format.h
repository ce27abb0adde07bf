// The Strata block format, version 1 (specified in docs/format.md).
//
// A block is the KV cache of one chunk of tokens of one model shard: all
// layers, K and V. On the wire and in every tier it is one contiguous byte
// string: a fixed 96-byte little-endian header followed by the payload. The
// header names the logical layout, the dtype and the codec that produced the
// payload, and ends with an XXH3-64 checksum over the header bytes before it
// and the payload. Every tier stores these bytes unchanged, and every read
// verifies the checksum before any byte reaches a caller.
//
// Thread safety: all functions are pure and thread-safe.
#ifndef STRATA_KVSTORE_BLOCK_FORMAT_H_
#define STRATA_KVSTORE_BLOCK_FORMAT_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kvstore/dtype.h"

namespace strata::kvstore {

inline constexpr uint32_t kBlockMagic = 0x564B5453;  // "STKV" in memory.
inline constexpr uint16_t kBlockFormatVersion = 1;
inline constexpr size_t kBlockHeaderSize = 96;
inline constexpr size_t kCodecParamsSize = 32;

// Shape limits. They bound arithmetic (no overflow anywhere) and reject
// garbage early; they are far above any real model.
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxTokens = 1u << 16;
inline constexpr uint32_t kMaxKvHeads = 1024;
inline constexpr uint32_t kMaxHeadDim = 4096;
inline constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 32;  // 4 GiB.

// How the logical tensor is ordered. Only one layout exists in version 1.
enum class BlockLayoutKind : uint8_t {
  kKvLayersTokensHeadsDim = 1,  // [2][layers][tokens][kv_heads][head_dim]
};

// The codec that produced the payload. Numeric values are part of the format
// (docs/codecs.md specifies each payload); never renumber, only append.
enum class CodecId : uint8_t {
  kRaw = 0,          // Payload is the uncompressed tensor in `dtype`.
  kQuant = 1,        // KIVI-style min-max quantization.
  kAqua = 2,         // AQUA-KV: cross-layer predictors + quantized residual.
  kSparse = 3,       // CSR: dictionary + matching pursuit.
  kLowRank = 4,      // PCA projection per (layer, head).
  kTokenSparse = 5,  // BUZZ heavy hitters (+ optional LESS summary).
  kCluster = 6,      // ClusterKV: clustered keys for partial recall.
};
inline constexpr uint8_t kMaxCodecId = 6;

struct BlockShape {
  DType dtype = DType::kFloat16;
  uint32_t num_layers = 0;
  uint32_t num_tokens = 0;
  uint32_t num_kv_heads = 0;
  uint32_t head_dim = 0;

  // 2 * layers * tokens * kv_heads * head_dim; call only on a valid shape.
  uint64_t ElementCount() const;
  // ElementCount() * DTypeSize(dtype): the raw payload size.
  uint64_t RawBytes() const;
  // INVALID_ARGUMENT naming the first bad field (zero, or above its limit).
  absl::Status Validate() const;

  friend bool operator==(const BlockShape&, const BlockShape&) = default;
};

struct BlockHeader {
  uint16_t format_version = kBlockFormatVersion;
  BlockLayoutKind layout = BlockLayoutKind::kKvLayersTokensHeadsDim;
  CodecId codec = CodecId::kRaw;
  BlockShape shape;
  std::array<uint8_t, kCodecParamsSize> codec_params{};  // Codec-defined.
  uint64_t payload_length = 0;
  uint64_t checksum = 0;  // XXH3-64 of header bytes [0, 88) ++ payload.
};

// A parsed, verified block. `payload` points into the bytes it was parsed
// from; the view is valid only while those bytes are.
struct BlockView {
  BlockHeader header;
  absl::Span<const uint8_t> payload;
};

// Total encoded size of a block whose payload is `payload_length` bytes.
inline constexpr uint64_t EncodedBlockSize(uint64_t payload_length) {
  return kBlockHeaderSize + payload_length;
}

// Encodes header + payload into `out`, which must be exactly
// EncodedBlockSize(payload.size()) bytes. Computes the checksum.
// INVALID_ARGUMENT naming the field when the shape is invalid, the codec is
// unknown, codec_params is longer than kCodecParamsSize, the payload is
// empty or too large, a raw payload's length differs from shape.RawBytes(),
// or `out` has the wrong size.
absl::Status EncodeBlockInto(const BlockShape& shape, CodecId codec,
                             absl::Span<const uint8_t> codec_params,
                             absl::Span<const uint8_t> payload,
                             absl::Span<uint8_t> out);

// Same, returning a new buffer.
absl::StatusOr<std::vector<uint8_t>> EncodeBlock(
    const BlockShape& shape, CodecId codec,
    absl::Span<const uint8_t> codec_params, absl::Span<const uint8_t> payload);

// Parses and validates the header only (no checksum: the payload may not be
// here yet). INVALID_ARGUMENT naming the field for a short buffer, bad magic,
// unsupported version, unknown layout/dtype/codec, non-zero reserved bytes,
// an invalid shape or a payload length that contradicts the shape.
absl::StatusOr<BlockHeader> ParseBlockHeader(absl::Span<const uint8_t> bytes);

// Validates the header and that `bytes` is exactly header + payload_length
// long, without hashing the payload (errors as ParseBlock, minus DATA_LOSS).
absl::Status ValidateBlockFrame(absl::Span<const uint8_t> bytes);
// The same checks, returning the view: for bytes whose checksum was verified
// before (a stored block) or will be where they land.
absl::StatusOr<BlockView> ParseBlockFrame(absl::Span<const uint8_t> bytes);

// Parses a whole block and verifies its checksum. Everything ParseBlockHeader
// rejects is INVALID_ARGUMENT; a buffer whose length is not exactly
// header + payload_length is INVALID_ARGUMENT naming "payload_length"; a
// checksum mismatch is DATA_LOSS naming "checksum".
absl::StatusOr<BlockView> ParseBlock(absl::Span<const uint8_t> bytes);

// How the destination of a copy is used next.
enum class CopyDestination {
  // Read soon, or a buffer reused from call to call (a GET into caller
  // memory): plain stores, the copy stays in the cache.
  kReadSoon,
  // Kept and not read soon (a block landing in the store's arena, memory
  // not touched lately): non-temporal stores skip the read-for-ownership of
  // every line. On the dev VM a 1 MiB copy-and-verify into cold memory took
  // 120 us instead of 142-153; into a hot reused buffer it is slower (the
  // kvstore benchmark's BM_CopyVerifiedBlock: 2 MiB 149-171 -> 213-246 us),
  // hence the choice.
  kStored,
  // As kStored, but each piece is hashed from `src` just before it is
  // copied (while it is in the cache), not read back from `dst`: a local
  // client's PUT into the shared arena, where reading the streamed bytes
  // back would cost a pass over memory. A caller that changes `src` during
  // the copy can leave `dst` not matching the checksum, which every read of
  // the stored block catches (DATA_LOSS); nothing else differs.
  kStoredHashSource,
};

// Copies n bytes into memory that is kept and not read soon, around the
// cache (CopyDestination::kStored's copy, without the checksum pass): a
// local client's PUT into the shared arena.
void CopyAroundTheCache(uint8_t* dst, const uint8_t* src, size_t n);

// Who computes a copy's checksum.
enum class CopyHelp {
  // The calling thread, piece by piece after each piece's copy.
  kCallerOnly,
  // For a block of kHelpedCopyMinBytes or more: the process's
  // ChecksumHelper thread (kvstore/checksum_helper.h), trailing the
  // caller's copy piece by piece, when the process's measurements favour it
  // (CopyHelpChooser; ChecksumHelper::Policy), it is free and the machine
  // has more than one CPU; otherwise the caller. The same bytes are hashed
  // either way (what landed in `dst`, or `src` for kStoredHashSource), so
  // results and errors do not change. For callers that wait on the copy
  // (a client's GET or PUT of a large block), not for a daemon serving many
  // at once.
  kHelperForLargeBlocks,
};
// Below this a helper's wake-up costs more than its hashing saves
// (bench/results/kvstore.md, BM_CopyVerifiedBlockHelped).
inline constexpr size_t kHelpedCopyMinBytes = size_t{2} << 20;

// Copies a stored block from `src` into `dst` (dst.size() >= src.size()) and
// verifies the checksum over the bytes as they landed in `dst`, in one pass
// (64 KiB at a time: copy, then hash what landed). Returns a view into `dst`.
// Errors as ParseBlock, plus OUT_OF_RANGE naming "dst" when it is too small.
// On any error the contents of `dst` are unspecified and must not be used.
absl::StatusOr<BlockView> CopyVerifiedBlock(
    absl::Span<const uint8_t> src, absl::Span<uint8_t> dst,
    CopyDestination use = CopyDestination::kReadSoon,
    CopyHelp help = CopyHelp::kCallerOnly);

// Verifies a block's checksum while its bytes arrive in pieces, in order (a
// receive from a socket): each piece is hashed right after it landed, while
// it is still in the cache and while the sender is still sending, instead of
// in a second pass over the whole block once it is there.
//
// Not thread-safe; one block per verifier.
class StreamingBlockVerifier {
 public:
  StreamingBlockVerifier();
  ~StreamingBlockVerifier();
  StreamingBlockVerifier(const StreamingBlockVerifier&) = delete;
  StreamingBlockVerifier& operator=(const StreamingBlockVerifier&) = delete;

  // The block's next bytes, where they landed (and will stay).
  void Update(absl::Span<const uint8_t> bytes);
  // `block` is the whole block: the memory every Update covered, in order.
  // ParseBlock's checks and errors, without hashing the payload again;
  // INVALID_ARGUMENT naming "block" when Update saw another number of
  // bytes.
  absl::StatusOr<BlockView> Finish(absl::Span<const uint8_t> block);

 private:
  struct State;
  std::unique_ptr<State> state_;
  uint64_t seen_ = 0;
};

}  // namespace strata::kvstore

#endif  // STRATA_KVSTORE_BLOCK_FORMAT_H_
