// Block format v1. Field offsets (docs/format.md is the normative copy):
//
//   0 u32 magic   4 u16 format_version   6 u16 header_size   8 u8 layout
//   9 u8 dtype   10 u8 codec   11 u8 flags   12 u32 num_layers
//  16 u32 num_tokens   20 u32 num_kv_heads   24 u32 head_dim   28 u32 reserved
//  32 u64 payload_length   40 u8[32] codec_params   72 u8[16] reserved
//  88 u64 checksum (XXH3-64 over bytes [0, 88) then the payload)
#include "kvstore/block_format.h"

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>  // SSE2 (every x86-64): non-temporal stores.
#endif

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kvstore/checksum_helper.h"
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack.
#include "xxhash.h"
#include "xxh_x86dispatch.h"  // Runtime SIMD dispatch (AVX2 when present).

namespace strata::kvstore {
namespace {

static_assert(std::endian::native == std::endian::little,
              "the block format is little-endian; add byte swaps to port");

constexpr size_t kChecksumOffset = 88;
constexpr size_t kCopyChunkBytes = 64 * 1024;


template <typename T>
T Load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
void Store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

bool AllZero(const uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    if (p[i] != 0) return false;
  }
  return true;
}

absl::Status CheckDim(const char* field, uint32_t value, uint32_t limit) {
  if (value == 0) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must be > 0"));
  }
  if (value > limit) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", value, " exceeds the limit ", limit));
  }
  return absl::OkStatus();
}

absl::Status ValidatePayloadLength(const BlockShape& shape, CodecId codec,
                                   uint64_t payload_length) {
  if (payload_length == 0) {
    return absl::InvalidArgumentError("payload_length: must be > 0");
  }
  if (payload_length > kMaxPayloadBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("payload_length: ", payload_length,
                     " exceeds the limit ", kMaxPayloadBytes));
  }
  if (codec == CodecId::kRaw && payload_length != shape.RawBytes()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload_length: ", payload_length, " does not match the raw size ",
        shape.RawBytes(), " of shape [2][", shape.num_layers, "][",
        shape.num_tokens, "][", shape.num_kv_heads, "][", shape.head_dim,
        "] ", DTypeName(shape.dtype)));
  }
  return absl::OkStatus();
}

uint64_t ChecksumOf(const uint8_t* header, absl::Span<const uint8_t> payload) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, header, kChecksumOffset);
  XXH3_64bits_update(&state, payload.data(), payload.size());
  return XXH3_64bits_digest(&state);
}

absl::Status ChecksumMismatch(uint64_t stored, uint64_t computed) {
  return absl::DataLossError(
      absl::StrCat("checksum: block checksum mismatch (stored ",
                   absl::Hex(stored, absl::kZeroPad16), ", computed ",
                   absl::Hex(computed, absl::kZeroPad16), ")"));
}

}  // namespace

// x86-64: non-temporal stores for 64-byte runs of the 16-byte-aligned
// middle; memcpy for the ends, and on other architectures.
void CopyAroundTheCache(uint8_t* dst, const uint8_t* src, size_t n) {
#if defined(__x86_64__)
  const size_t head =
      std::min(n, (16 - reinterpret_cast<uintptr_t>(dst) % 16) % 16);
  std::memcpy(dst, src, head);
  size_t i = head;
  for (; i + 64 <= n; i += 64) {
    const __m128i a = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i));
    const __m128i b =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 16));
    const __m128i c =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 32));
    const __m128i d =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i + 48));
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i), a);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 16), b);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 32), c);
    _mm_stream_si128(reinterpret_cast<__m128i*>(dst + i + 48), d);
  }
  std::memcpy(dst + i, src + i, n - i);
  _mm_sfence();  // Ordered before any later store (another thread's view).
#else
  std::memcpy(dst, src, n);
#endif
}

uint64_t BlockShape::ElementCount() const {
  return uint64_t{2} * num_layers * num_tokens * num_kv_heads * head_dim;
}

uint64_t BlockShape::RawBytes() const {
  return ElementCount() * DTypeSize(dtype);
}

absl::Status BlockShape::Validate() const {
  if (!IsValidDType(static_cast<uint8_t>(dtype))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dtype: unknown value ", static_cast<int>(dtype)));
  }
  STRATA_RETURN_IF_ERROR(CheckDim("num_layers", num_layers, kMaxLayers));
  STRATA_RETURN_IF_ERROR(CheckDim("num_tokens", num_tokens, kMaxTokens));
  STRATA_RETURN_IF_ERROR(CheckDim("num_kv_heads", num_kv_heads, kMaxKvHeads));
  STRATA_RETURN_IF_ERROR(CheckDim("head_dim", head_dim, kMaxHeadDim));
  // Each factor is below 2^16 (tokens) or 2^12, so the product of all five
  // (< 2^1+10+16+10+12+2 = 2^51) never overflows.
  if (RawBytes() > kMaxPayloadBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_tokens: shape holds ", RawBytes(),
                     " bytes, above the block limit ", kMaxPayloadBytes));
  }
  return absl::OkStatus();
}

absl::Status EncodeBlockInto(const BlockShape& shape, CodecId codec,
                             absl::Span<const uint8_t> codec_params,
                             absl::Span<const uint8_t> payload,
                             absl::Span<uint8_t> out) {
  STRATA_RETURN_IF_ERROR(shape.Validate());
  if (static_cast<uint8_t>(codec) > kMaxCodecId) {
    return absl::InvalidArgumentError(
        absl::StrCat("codec: unknown codec id ", static_cast<int>(codec)));
  }
  if (codec_params.size() > kCodecParamsSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("codec_params: ", codec_params.size(),
                     " bytes exceed the ", kCodecParamsSize, "-byte field"));
  }
  STRATA_RETURN_IF_ERROR(ValidatePayloadLength(shape, codec, payload.size()));
  if (out.size() != EncodedBlockSize(payload.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("out: buffer is ", out.size(), " bytes, block needs ",
                     EncodedBlockSize(payload.size())));
  }
  uint8_t* h = out.data();
  std::memset(h, 0, kBlockHeaderSize);
  Store<uint32_t>(h + 0, kBlockMagic);
  Store<uint16_t>(h + 4, kBlockFormatVersion);
  Store<uint16_t>(h + 6, static_cast<uint16_t>(kBlockHeaderSize));
  h[8] = static_cast<uint8_t>(BlockLayoutKind::kKvLayersTokensHeadsDim);
  h[9] = static_cast<uint8_t>(shape.dtype);
  h[10] = static_cast<uint8_t>(codec);
  Store<uint32_t>(h + 12, shape.num_layers);
  Store<uint32_t>(h + 16, shape.num_tokens);
  Store<uint32_t>(h + 20, shape.num_kv_heads);
  Store<uint32_t>(h + 24, shape.head_dim);
  Store<uint64_t>(h + 32, payload.size());
  if (!codec_params.empty()) {
    std::memcpy(h + 40, codec_params.data(), codec_params.size());
  }
  std::memcpy(h + kBlockHeaderSize, payload.data(), payload.size());
  Store<uint64_t>(h + kChecksumOffset, ChecksumOf(h, payload));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> EncodeBlock(
    const BlockShape& shape, CodecId codec,
    absl::Span<const uint8_t> codec_params,
    absl::Span<const uint8_t> payload) {
  // Validate before allocating, so a huge bogus size never allocates.
  STRATA_RETURN_IF_ERROR(shape.Validate());
  STRATA_RETURN_IF_ERROR(ValidatePayloadLength(shape, codec, payload.size()));
  std::vector<uint8_t> out(EncodedBlockSize(payload.size()));
  STRATA_RETURN_IF_ERROR(
      EncodeBlockInto(shape, codec, codec_params, payload, absl::MakeSpan(out)));
  return out;
}

absl::StatusOr<BlockHeader> ParseBlockHeader(absl::Span<const uint8_t> bytes) {
  if (bytes.size() < kBlockHeaderSize) {
    return absl::InvalidArgumentError(
        absl::StrCat("header: block is ", bytes.size(),
                     " bytes, shorter than the ", kBlockHeaderSize,
                     "-byte header"));
  }
  const uint8_t* h = bytes.data();
  if (Load<uint32_t>(h) != kBlockMagic) {
    return absl::InvalidArgumentError(
        absl::StrCat("magic: ", absl::Hex(Load<uint32_t>(h), absl::kZeroPad8),
                     " is not a Strata block (want ",
                     absl::Hex(kBlockMagic, absl::kZeroPad8), ")"));
  }
  BlockHeader header;
  header.format_version = Load<uint16_t>(h + 4);
  if (header.format_version != kBlockFormatVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("format_version: ", header.format_version,
                     " is not supported (this build reads version ",
                     kBlockFormatVersion, ")"));
  }
  if (uint16_t size = Load<uint16_t>(h + 6); size != kBlockHeaderSize) {
    return absl::InvalidArgumentError(absl::StrCat(
        "header_size: ", size, " (version 1 headers are ", kBlockHeaderSize,
        " bytes)"));
  }
  if (h[8] != static_cast<uint8_t>(BlockLayoutKind::kKvLayersTokensHeadsDim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("layout: unknown layout ", static_cast<int>(h[8])));
  }
  header.layout = BlockLayoutKind::kKvLayersTokensHeadsDim;
  if (!IsValidDType(h[9])) {
    return absl::InvalidArgumentError(
        absl::StrCat("dtype: unknown value ", static_cast<int>(h[9])));
  }
  header.shape.dtype = static_cast<DType>(h[9]);
  if (h[10] > kMaxCodecId) {
    return absl::InvalidArgumentError(
        absl::StrCat("codec: unknown codec id ", static_cast<int>(h[10])));
  }
  header.codec = static_cast<CodecId>(h[10]);
  if (h[11] != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flags: ", static_cast<int>(h[11]), " (no flags defined in v1)"));
  }
  header.shape.num_layers = Load<uint32_t>(h + 12);
  header.shape.num_tokens = Load<uint32_t>(h + 16);
  header.shape.num_kv_heads = Load<uint32_t>(h + 20);
  header.shape.head_dim = Load<uint32_t>(h + 24);
  STRATA_RETURN_IF_ERROR(header.shape.Validate());
  if (!AllZero(h + 28, 4) || !AllZero(h + 72, 16)) {
    return absl::InvalidArgumentError("reserved: reserved bytes must be zero");
  }
  header.payload_length = Load<uint64_t>(h + 32);
  STRATA_RETURN_IF_ERROR(
      ValidatePayloadLength(header.shape, header.codec, header.payload_length));
  std::memcpy(header.codec_params.data(), h + 40, kCodecParamsSize);
  if (header.codec == CodecId::kRaw && !AllZero(h + 40, kCodecParamsSize)) {
    return absl::InvalidArgumentError(
        "codec_params: must be zero for the raw codec");
  }
  header.checksum = Load<uint64_t>(h + kChecksumOffset);
  return header;
}

namespace {
absl::Status CheckTotalLength(const BlockHeader& header, size_t size) {
  if (size != EncodedBlockSize(header.payload_length)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "payload_length: header says ", header.payload_length,
        " payload bytes but the block carries ", size - kBlockHeaderSize));
  }
  return absl::OkStatus();
}
}  // namespace

absl::StatusOr<BlockView> ParseBlockFrame(absl::Span<const uint8_t> bytes) {
  STRATA_ASSIGN_OR_RETURN(BlockHeader header, ParseBlockHeader(bytes));
  STRATA_RETURN_IF_ERROR(CheckTotalLength(header, bytes.size()));
  return BlockView{header, bytes.subspan(kBlockHeaderSize)};
}

absl::Status ValidateBlockFrame(absl::Span<const uint8_t> bytes) {
  return ParseBlockFrame(bytes).status();
}

absl::StatusOr<BlockView> ParseBlock(absl::Span<const uint8_t> bytes) {
  STRATA_ASSIGN_OR_RETURN(BlockHeader header, ParseBlockHeader(bytes));
  STRATA_RETURN_IF_ERROR(CheckTotalLength(header, bytes.size()));
  absl::Span<const uint8_t> payload = bytes.subspan(kBlockHeaderSize);
  uint64_t computed = ChecksumOf(bytes.data(), payload);
  if (computed != header.checksum) {
    return ChecksumMismatch(header.checksum, computed);
  }
  return BlockView{header, payload};
}

namespace {

// Which of the process's CopyHelpChooser measures copies for `use` (each use
// apart). A new CopyDestination must be given one here (-Wswitch).
constexpr int ChooserKind(CopyDestination use) {
  switch (use) {
    case CopyDestination::kReadSoon:
      return 0;
    case CopyDestination::kStored:
      return 1;
    case CopyDestination::kStoredHashSource:
      return 2;
  }
  return CopyHelpChooser::kKinds - 1;
}
static_assert(ChooserKind(CopyDestination::kStoredHashSource) <
              CopyHelpChooser::kKinds);

}  // namespace

absl::StatusOr<BlockView> CopyVerifiedBlock(absl::Span<const uint8_t> src,
                                            absl::Span<uint8_t> dst,
                                            CopyDestination use,
                                            CopyHelp help) {
  if (dst.size() < src.size()) {
    return absl::OutOfRangeError(absl::StrCat(
        "dst: ", dst.size(), " bytes cannot hold a ", src.size(),
        "-byte block"));
  }
  if (src.size() < kBlockHeaderSize) {
    return ParseBlockHeader(src).status();
  }
  // Parse the header from the copy, so what we validate is what the caller
  // sees even if `src` changes underneath.
  std::memcpy(dst.data(), src.data(), kBlockHeaderSize);
  STRATA_ASSIGN_OR_RETURN(BlockHeader header,
                          ParseBlockHeader(dst.first(kBlockHeaderSize)));
  STRATA_RETURN_IF_ERROR(CheckTotalLength(header, src.size()));
  // The hash reads what landed in dst, not src: what is checked is what the
  // caller gets, even if src changes underneath (but kStoredHashSource).
  const bool hash_source = use == CopyDestination::kStoredHashSource;
  const uint8_t* hashed = (hash_source ? src.data() : dst.data());
  // Large copies go helped or alone as this process's measurements of
  // copies for the same use say (CopyHelpChooser); each timed copy adds to
  // them.
  const bool large = help == CopyHelp::kHelperForLargeBlocks &&
                     src.size() >= kHelpedCopyMinBytes &&
                     ChecksumHelper::Enabled();
  const bool choose = large && ChecksumHelper::CurrentPolicy() ==
                                   ChecksumHelper::Policy::kMeasured;
  CopyHelpChooser::Choice choice;
  CopyHelpChooser* const chooser =
      choose ? &CopyHelpChooser::Process(ChooserKind(use)) : nullptr;
  if (choose) choice = chooser->Choose();
  const bool wants_helper =
      large && (!choose || choice.mode == CopyHelpChooser::Mode::kHelped);
  ChecksumHelper* helper =
      wants_helper ? ChecksumHelper::TryAcquire() : nullptr;
  // A helped choice that found the helper lent runs alone: untimed, and not
  // one of its trial's copies.
  const bool lent = choose && wants_helper && helper == nullptr;
  if (lent) chooser->Unused(choice);
  const bool timed = choose && choice.counted && !lent;
  const auto started = timed ? std::chrono::steady_clock::now()
                             : std::chrono::steady_clock::time_point();
  XXH3_state_t state;
  if (helper != nullptr) {
    helper->Start(dst.data(), kChecksumOffset, hashed + kBlockHeaderSize,
                  src.size() - kBlockHeaderSize);
  } else {
    XXH3_64bits_reset(&state);
    XXH3_64bits_update(&state, dst.data(), kChecksumOffset);
  }
  for (size_t off = kBlockHeaderSize; off < src.size();
       off += kCopyChunkBytes) {
    const size_t n = std::min(kCopyChunkBytes, src.size() - off);
    // Hashing the source on this thread: just before its copy, while the
    // piece is in the cache.
    if (helper == nullptr && hash_source) {
      XXH3_64bits_update(&state, src.data() + off, n);
    }
    if (use == CopyDestination::kReadSoon) {
      std::memcpy(dst.data() + off, src.data() + off, n);
    } else {
      CopyAroundTheCache(dst.data() + off, src.data() + off, n);  // Fenced.
    }
    if (helper != nullptr) {
      helper->Advance(off + n - kBlockHeaderSize);
    } else if (!hash_source) {
      XXH3_64bits_update(&state, dst.data() + off, n);
    }
  }
  const uint64_t computed =
      helper != nullptr ? helper->Finish() : XXH3_64bits_digest(&state);
  if (timed) {
    chooser->Record(choice, src.size(),
                    static_cast<uint64_t>(
                        std::chrono::duration_cast<std::chrono::nanoseconds>(
                            std::chrono::steady_clock::now() - started)
                            .count()));
  }
  if (computed != header.checksum) {
    return ChecksumMismatch(header.checksum, computed);
  }
  return BlockView{header, dst.subspan(kBlockHeaderSize, header.payload_length)};
}

struct StreamingBlockVerifier::State {
  XXH3_state_t xxh;
};

StreamingBlockVerifier::StreamingBlockVerifier()
    : state_(std::make_unique<State>()) {
  XXH3_64bits_reset(&state_->xxh);
}

StreamingBlockVerifier::~StreamingBlockVerifier() = default;

void StreamingBlockVerifier::Update(absl::Span<const uint8_t> bytes) {
  // The checksum covers header bytes [0, kChecksumOffset) and everything
  // from kBlockHeaderSize on: the checksum field itself is skipped.
  const uint64_t begin = seen_;
  const uint64_t end = seen_ + bytes.size();
  seen_ = end;
  auto hash_range = [&](uint64_t from, uint64_t to) {
    from = std::max(from, begin);
    to = std::min(to, end);
    if (from < to) {
      XXH3_64bits_update(&state_->xxh, bytes.data() + (from - begin), to - from);
    }
  };
  hash_range(0, kChecksumOffset);
  hash_range(kBlockHeaderSize, UINT64_MAX);
}

absl::StatusOr<BlockView> StreamingBlockVerifier::Finish(
    absl::Span<const uint8_t> block) {
  if (block.size() != seen_) {
    return absl::InvalidArgumentError(
        absl::StrCat("block: ", block.size(), " bytes, of which ", seen_,
                     " were hashed as they arrived"));
  }
  STRATA_ASSIGN_OR_RETURN(BlockView view, ParseBlockFrame(block));
  const uint64_t computed = XXH3_64bits_digest(&state_->xxh);
  if (computed != view.header.checksum) {
    return ChecksumMismatch(view.header.checksum, computed);
  }
  return view;
}

}  // namespace strata::kvstore
