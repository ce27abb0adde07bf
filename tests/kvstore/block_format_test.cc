#include "kvstore/block_format.h"

#include <cstring>
#include <random>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/kvstore/test_blocks.h"

namespace strata::kvstore {
namespace {

using ::strata::kvstore::testing::MakeBlock;
using ::testing::HasSubstr;
using ::testing::StartsWith;

BlockShape SmallShape(DType dtype) {
  return BlockShape{dtype, /*num_layers=*/3, /*num_tokens=*/5,
                    /*num_kv_heads=*/2, /*head_dim=*/16};
}

// Writes a little-endian value into an encoded block's header and fixes the
// checksum, so only the targeted field is wrong.
template <typename T>
void PokeHeader(std::vector<uint8_t>& block, size_t offset, T value) {
  std::memcpy(block.data() + offset, &value, sizeof(T));
}

class EveryDType : public ::testing::TestWithParam<DType> {};

TEST_P(EveryDType, EncodeThenParseRoundTripsPayloadAndShape) {
  const BlockShape shape = SmallShape(GetParam());
  std::vector<uint8_t> payload(shape.RawBytes());
  std::mt19937 rng(7);
  for (auto& b : payload) b = static_cast<uint8_t>(rng());
  auto block = EncodeBlock(shape, CodecId::kRaw, {}, payload);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ(block->size(), kBlockHeaderSize + payload.size());

  auto view = ParseBlock(*block);
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_EQ(view->header.shape, shape);
  EXPECT_EQ(view->header.codec, CodecId::kRaw);
  EXPECT_EQ(view->header.format_version, kBlockFormatVersion);
  EXPECT_EQ(view->header.payload_length, payload.size());
  EXPECT_TRUE(std::equal(view->payload.begin(), view->payload.end(),
                         payload.begin(), payload.end()));
}

TEST_P(EveryDType, CopyVerifiedBlockCopiesExactBytes) {
  const std::vector<uint8_t> block = MakeBlock(SmallShape(GetParam()), 3);
  std::vector<uint8_t> dst(block.size() + 10, 0xEE);
  auto view = CopyVerifiedBlock(block, absl::MakeSpan(dst));
  ASSERT_TRUE(view.ok()) << view.status();
  EXPECT_TRUE(std::equal(block.begin(), block.end(), dst.begin()));
  EXPECT_EQ(view->header.shape.dtype, GetParam());
}

// A copy into the store streams 64-byte runs around the cache and copies the
// ends plainly: every destination alignment and a size that ends mid-run,
// across the 64 KiB chunks of the hash, must land byte-exact.
TEST(BlockFormat, CopyVerifiedBlockIsExactAtEveryDestinationAlignment) {
  const BlockShape shape = testing::ShapeForBytes((192 << 10) + 40);
  const std::vector<uint8_t> block = MakeBlock(shape, 11);
  ASSERT_NE(block.size() % 64, 0u);
  std::vector<uint8_t> dst(block.size() + 64 + 2);
  for (size_t align = 0; align < 64; ++align) {
    std::fill(dst.begin(), dst.end(), 0xEE);
    auto view =
        CopyVerifiedBlock(block, absl::MakeSpan(dst.data() + align, block.size()),
                          CopyDestination::kStored);
    ASSERT_TRUE(view.ok()) << align << ": " << view.status();
    ASSERT_TRUE(std::equal(block.begin(), block.end(), dst.begin() + align))
        << align;
    for (size_t i = 0; i < align; ++i) ASSERT_EQ(dst[i], 0xEE) << align;
    ASSERT_EQ(dst[align + block.size()], 0xEE) << align;
  }
}

// Hashing the source while it is copied (a local client's PUT into the shared
// arena) lands the same bytes and refuses a damaged block the same way.
TEST(BlockFormat, CopyVerifiedBlockHashingTheSourceIsExactAndCatchesDamage) {
  const std::vector<uint8_t> block =
      MakeBlock(testing::ShapeForBytes((192 << 10) + 40), 13);
  std::vector<uint8_t> dst(block.size() + 1);
  for (size_t align : {0, 1}) {
    auto view = CopyVerifiedBlock(
        block, absl::MakeSpan(dst.data() + align, block.size()),
        CopyDestination::kStoredHashSource);
    ASSERT_TRUE(view.ok()) << view.status();
    EXPECT_TRUE(std::equal(block.begin(), block.end(), dst.begin() + align));
  }
  auto damaged = block;
  damaged[damaged.size() - 100] ^= 0x10;
  auto view = CopyVerifiedBlock(damaged, absl::MakeSpan(dst),
                                CopyDestination::kStoredHashSource);
  EXPECT_EQ(view.status().code(), absl::StatusCode::kDataLoss) << view.status();
}

// Pieces of every size from 1 to 200 bytes, so piece boundaries fall inside
// the header, inside the checksum field and at every payload offset; and
// one whole-block piece.
TEST(StreamingBlockVerifier, AgreesWithParseBlockForEveryPieceSize) {
  const std::vector<uint8_t> block =
      MakeBlock(testing::ShapeForBytes((16 << 10) + 24), 12);
  for (size_t piece = 1; piece <= 200; ++piece) {
    StreamingBlockVerifier v;
    for (size_t off = 0; off < block.size(); off += piece) {
      v.Update(absl::MakeConstSpan(block).subspan(off, piece));
    }
    auto view = v.Finish(block);
    ASSERT_TRUE(view.ok()) << piece << ": " << view.status();
    EXPECT_EQ(view->payload.size(), block.size() - kBlockHeaderSize);
  }
  StreamingBlockVerifier whole;
  whole.Update(block);
  EXPECT_TRUE(whole.Finish(block).ok());
}

TEST(StreamingBlockVerifier, AFlippedByteAnywhereIsDataLossOrAHeaderError) {
  const std::vector<uint8_t> good =
      MakeBlock(testing::ShapeForBytes(4 << 10), 13);
  for (size_t at : {size_t{0}, size_t{87}, size_t{90}, kBlockHeaderSize,
                    good.size() / 2, good.size() - 1}) {
    std::vector<uint8_t> block = good;
    block[at] ^= 0x10;
    StreamingBlockVerifier v;
    for (size_t off = 0; off < block.size(); off += 1000) {
      v.Update(absl::MakeConstSpan(block).subspan(off, 1000));
    }
    const absl::Status s = v.Finish(block).status();
    // The same verdict as ParseBlock over the whole block.
    EXPECT_EQ(s.code(), ParseBlock(block).status().code()) << at << ": " << s;
    EXPECT_FALSE(s.ok()) << at;
  }
}

TEST(StreamingBlockVerifier, FinishOverOtherBytesThanWereHashedIsInvalidArgument) {
  const std::vector<uint8_t> block =
      MakeBlock(testing::ShapeForBytes(4 << 10), 14);
  StreamingBlockVerifier v;
  v.Update(absl::MakeConstSpan(block).first(block.size() - 1));
  const absl::Status s = v.Finish(block).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StartsWith(s.message(), "block:")) << s;
}

INSTANTIATE_TEST_SUITE_P(Dtypes, EveryDType,
                         ::testing::ValuesIn(testing::kAllDTypes),
                         testing::DTypeParamName);

TEST(BlockFormat, RawPayloadSizeFollowsShapeAndDtype) {
  BlockShape llama{DType::kBFloat16, 32, 256, 8, 128};
  EXPECT_EQ(llama.RawBytes(), uint64_t{32} << 20);  // 32 MiB per chunk.
  llama.dtype = DType::kFloat8E4M3;
  EXPECT_EQ(llama.RawBytes(), uint64_t{16} << 20);
}

TEST(BlockFormat, FlippedPayloadByteIsDataLossNamingChecksum) {
  std::vector<uint8_t> block = MakeBlock(SmallShape(DType::kFloat16), 1);
  block[kBlockHeaderSize + 17] ^= 0x01;
  auto view = ParseBlock(block);
  EXPECT_EQ(view.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(view.status().message()), StartsWith("checksum:"));
  std::vector<uint8_t> dst(block.size());
  EXPECT_EQ(CopyVerifiedBlock(block, absl::MakeSpan(dst)).status().code(),
            absl::StatusCode::kDataLoss);
}

TEST(BlockFormat, FlippedChecksumByteIsDataLoss) {
  std::vector<uint8_t> block = MakeBlock(SmallShape(DType::kFloat16), 1);
  block[88] ^= 0x80;
  EXPECT_EQ(ParseBlock(block).status().code(), absl::StatusCode::kDataLoss);
}

struct HeaderCorruption {
  const char* name;
  size_t offset;
  uint32_t value;
  size_t width;  // 1, 2 or 4 bytes.
  const char* field;
};

class MalformedHeader : public ::testing::TestWithParam<HeaderCorruption> {};

TEST_P(MalformedHeader, IsInvalidArgumentNamingTheField) {
  const HeaderCorruption& c = GetParam();
  std::vector<uint8_t> block = MakeBlock(SmallShape(DType::kFloat16), 2);
  if (c.width == 1) PokeHeader<uint8_t>(block, c.offset, c.value);
  if (c.width == 2) PokeHeader<uint16_t>(block, c.offset, c.value);
  if (c.width == 4) PokeHeader<uint32_t>(block, c.offset, c.value);
  auto header = ParseBlockHeader(block);
  EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(header.status().message()), StartsWith(std::string(c.field) + ":"))
      << header.status();
  EXPECT_EQ(ParseBlock(block).status().code(),
            absl::StatusCode::kInvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(
    Fields, MalformedHeader,
    ::testing::Values(
        HeaderCorruption{"BadMagic", 0, 0x12345678, 4, "magic"},
        HeaderCorruption{"FutureVersion", 4, 2, 2, "format_version"},
        HeaderCorruption{"HeaderSize", 6, 128, 2, "header_size"},
        HeaderCorruption{"UnknownLayout", 8, 9, 1, "layout"},
        HeaderCorruption{"UnknownDtype", 9, 0, 1, "dtype"},
        HeaderCorruption{"UnknownDtypeHigh", 9, 77, 1, "dtype"},
        HeaderCorruption{"UnknownCodec", 10, 200, 1, "codec"},
        HeaderCorruption{"Flags", 11, 1, 1, "flags"},
        HeaderCorruption{"ZeroLayers", 12, 0, 4, "num_layers"},
        HeaderCorruption{"HugeLayers", 12, 1u << 20, 4, "num_layers"},
        HeaderCorruption{"ZeroTokens", 16, 0, 4, "num_tokens"},
        HeaderCorruption{"HugeTokens", 16, 0xFFFFFFFF, 4, "num_tokens"},
        HeaderCorruption{"ZeroHeads", 20, 0, 4, "num_kv_heads"},
        HeaderCorruption{"ZeroHeadDim", 24, 0, 4, "head_dim"},
        HeaderCorruption{"HugeHeadDim", 24, 1u << 30, 4, "head_dim"},
        HeaderCorruption{"ReservedWord", 28, 1, 4, "reserved"},
        HeaderCorruption{"PayloadLengthLow", 32, 7, 4, "payload_length"},
        HeaderCorruption{"PayloadLengthZero", 32, 0, 4, "payload_length"},
        HeaderCorruption{"CodecParamsForRaw", 40, 1, 1, "codec_params"},
        HeaderCorruption{"ReservedTail", 80, 1, 1, "reserved"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(BlockFormat, PayloadLengthAboveLimitIsRejectedNamingField) {
  std::vector<uint8_t> block = MakeBlock(SmallShape(DType::kFloat16), 2);
  PokeHeader<uint64_t>(block, 32, uint64_t{1} << 40);
  auto header = ParseBlockHeader(block);
  EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(header.status().message()), StartsWith("payload_length:"));
}

TEST(BlockFormat, ShortBufferIsRejectedNamingHeader) {
  std::vector<uint8_t> block = MakeBlock(SmallShape(DType::kFloat16), 2);
  for (size_t n : {size_t{0}, size_t{1}, kBlockHeaderSize - 1}) {
    auto view = ParseBlock(absl::MakeConstSpan(block.data(), n));
    EXPECT_EQ(view.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(view.status().message()), StartsWith("header:"));
  }
}

TEST(BlockFormat, TruncatedOrPaddedBlockIsRejectedNamingPayloadLength) {
  std::vector<uint8_t> block = MakeBlock(SmallShape(DType::kFloat16), 2);
  auto truncated = ParseBlock(absl::MakeConstSpan(block).first(block.size() - 1));
  EXPECT_EQ(truncated.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(truncated.status().message()), StartsWith("payload_length:"));
  block.push_back(0);
  auto padded = ParseBlock(block);
  EXPECT_EQ(padded.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(padded.status().message()), StartsWith("payload_length:"));
}

TEST(BlockFormat, EncodeRejectsWrongShapesAndSizesNamingTheField) {
  const BlockShape good = SmallShape(DType::kFloat16);
  std::vector<uint8_t> payload(good.RawBytes());

  BlockShape zero_heads = good;
  zero_heads.num_kv_heads = 0;
  auto s = EncodeBlock(zero_heads, CodecId::kRaw, {}, payload).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("num_kv_heads:"));

  BlockShape huge = good;
  huge.num_tokens = kMaxTokens;
  huge.num_layers = kMaxLayers;
  huge.num_kv_heads = 64;
  huge.head_dim = 128;
  s = EncodeBlock(huge, CodecId::kRaw, {}, payload).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("above the block limit"));

  s = EncodeBlock(good, CodecId::kRaw, {}, absl::MakeConstSpan(payload).first(3))
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), StartsWith("payload_length:"));

  s = EncodeBlock(good, CodecId::kRaw, {}, {}).status();
  EXPECT_THAT(std::string(s.message()), StartsWith("payload_length: must be > 0"));

  s = EncodeBlock(good, static_cast<CodecId>(9), {}, payload).status();
  EXPECT_THAT(std::string(s.message()), StartsWith("codec:"));

  std::vector<uint8_t> params(kCodecParamsSize + 1);
  s = EncodeBlock(good, CodecId::kRaw, params, payload).status();
  EXPECT_THAT(std::string(s.message()), StartsWith("codec_params:"));

  BlockShape bad_dtype = good;
  bad_dtype.dtype = static_cast<DType>(0);
  s = EncodeBlock(bad_dtype, CodecId::kRaw, {}, payload).status();
  EXPECT_THAT(std::string(s.message()), StartsWith("dtype:"));

  std::vector<uint8_t> out(10);
  s = EncodeBlockInto(good, CodecId::kRaw, {}, payload, absl::MakeSpan(out));
  EXPECT_THAT(std::string(s.message()), StartsWith("out:"));
}

TEST(BlockFormat, CopyVerifiedBlockRejectsSmallDestinationNamingDst) {
  const std::vector<uint8_t> block = MakeBlock(SmallShape(DType::kFloat16), 5);
  std::vector<uint8_t> dst(block.size() - 1);
  auto view = CopyVerifiedBlock(block, absl::MakeSpan(dst));
  EXPECT_EQ(view.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_THAT(std::string(view.status().message()), StartsWith("dst:"));
}

TEST(BlockFormat, EncodingIsDeterministic) {
  EXPECT_EQ(MakeBlock(SmallShape(DType::kBFloat16), 11),
            MakeBlock(SmallShape(DType::kBFloat16), 11));
}

}  // namespace
}  // namespace strata::kvstore
