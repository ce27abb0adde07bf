#include "tests/codecs/codec_test_support.h"

#include <cmath>

namespace strata::codecs::testing {

KvTensor RandomKv(const BlockShape& shape, uint32_t seed) {
  KvTensor t = KvTensor::Zeros(shape);
  std::mt19937 rng(seed);
  std::normal_distribution<float> n(0, 1);
  for (float& x : t.data) x = n(rng);
  return t;
}

CodecParams WithByte(CodecParams params, size_t index, uint8_t value) {
  params[index] = value;
  return params;
}

double RelMseOf(const KvTensor& reference, const KvTensor& approx, int kv) {
  const size_t half = reference.data.size() / 2;
  return RelativeMse(
      absl::MakeConstSpan(reference.data).subspan(kv * half, half),
      absl::MakeConstSpan(approx.data).subspan(kv * half, half));
}

double RoundTripRelMse(const KvTensor& kv, CodecId id,
                       const CodecParams& params, const CodecProfile& profile,
                       double* bits) {
  auto block = EncodeKvBlock(kv, id, params, &profile);
  EXPECT_TRUE(block.ok()) << block.status();
  if (!block.ok()) return INFINITY;
  auto decoded = DecodeKvBlock(*block, &profile);
  EXPECT_TRUE(decoded.ok()) << decoded.status();
  if (!decoded.ok()) return INFINITY;
  if (bits != nullptr) *bits = BitsPerElement(*block);
  return RelativeMse(kv.data, decoded->data);
}

absl::StatusOr<RoundTripErrors> MeasureRoundTrip(const KvTensor& kv, CodecId id,
                                                 const CodecParams& params,
                                                 const CodecProfile* profile) {
  auto block = EncodeKvBlock(kv, id, params, profile);
  if (!block.ok()) return block.status();
  auto decoded = DecodeKvBlock(*block, profile);
  if (!decoded.ok()) return decoded.status();
  RoundTripErrors errors;
  errors.k = RelMseOf(kv, *decoded, 0);
  errors.v = RelMseOf(kv, *decoded, 1);
  errors.bits = BitsPerElement(*block);
  return errors;
}

::testing::AssertionResult EqualsSliceOfFull(const KvTensor& part,
                                             const KvTensor& full,
                                             const DecodeSelection& sel) {
  const BlockShape& ps = part.shape;
  for (int k = 0; k < 2; ++k)
    for (uint32_t l = 0; l < ps.num_layers; ++l)
      for (uint32_t t = 0; t < ps.num_tokens; ++t)
        for (uint32_t h = 0; h < ps.num_kv_heads; ++h)
          for (uint32_t d = 0; d < ps.head_dim; ++d) {
            const float got = part.at(k, l, t, h, d);
            const float want =
                full.at(k, sel.layer_begin + l, sel.Token(t), h, d);
            if (!(got == want)) {
              return ::testing::AssertionFailure()
                     << "kv " << k << " layer " << l << " row " << t
                     << " (token " << sel.Token(t) << ") head " << h << " dim "
                     << d << ": partial " << got << ", full " << want;
            }
          }
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult PartialDecodeEqualsSlice(
    absl::Span<const uint8_t> block, const CodecProfile* profile,
    const KvTensor& full, const DecodeSelection& sel) {
  auto part = DecodeKvBlock(block, profile, sel);
  if (!part.ok()) {
    return ::testing::AssertionFailure() << "partial decode: " << part.status();
  }
  return EqualsSliceOfFull(*part, full, sel);
}

DecodeSelection RandomSelection(std::mt19937& rng, uint32_t num_layers,
                                uint32_t num_tokens, bool by_indices,
                                uint32_t one_in, uint32_t fallback_token) {
  DecodeSelection sel;
  sel.layer_begin = rng() % num_layers;
  sel.layer_end = sel.layer_begin + 1 + rng() % (num_layers - sel.layer_begin);
  if (by_indices) {
    for (uint32_t t = 0; t < num_tokens; ++t)
      if (rng() % one_in == 0) sel.token_indices.push_back(t);
    if (sel.token_indices.empty()) sel.token_indices.push_back(fallback_token);
  } else {
    sel.token_begin = rng() % num_tokens;
    sel.token_end =
        sel.token_begin + 1 + rng() % (num_tokens - sel.token_begin);
  }
  return sel;
}

void FlipRandomBytes(std::mt19937& rng, std::vector<uint8_t>* bytes) {
  const int flips = 1 + rng() % 8;
  for (int f = 0; f < flips; ++f) {
    (*bytes)[rng() % bytes->size()] ^= static_cast<uint8_t>(1 + rng() % 255);
  }
}

::testing::AssertionResult AllFinite(const KvTensor& kv) {
  for (size_t i = 0; i < kv.data.size(); ++i) {
    if (!std::isfinite(kv.data[i])) {
      return ::testing::AssertionFailure()
             << "value " << i << " is " << kv.data[i];
    }
  }
  return ::testing::AssertionSuccess();
}

void ExpectCorruptionsFailOrDecodeFinite(const CorruptDecode& decode,
                                         const std::vector<uint8_t>& payload,
                                         int trials, std::mt19937& rng,
                                         uint32_t seed, int* errors,
                                         int* decodes) {
  for (int trial = 0; trial < trials; ++trial) {
    std::vector<uint8_t> bad = payload;
    FlipRandomBytes(rng, &bad);
    KvTensor out;
    const absl::Status s = decode(bad, &out);
    if (!s.ok()) {
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
      ++*errors;
      continue;
    }
    ++*decodes;
    ASSERT_TRUE(AllFinite(out)) << "seed " << seed;
  }
}

void ExpectTruncatedAndPaddedAreDataLoss(const PayloadDecode& decode,
                                         const std::vector<uint8_t>& payload,
                                         std::initializer_list<size_t> sizes,
                                         absl::string_view prefix) {
  for (size_t size : sizes) {
    EXPECT_THAT(decode(absl::MakeConstSpan(payload).first(size)),
                StatusIs(absl::StatusCode::kDataLoss,
                         ::testing::StartsWith(std::string(prefix))))
        << "truncated to " << size << " of " << payload.size() << " bytes";
  }
  std::vector<uint8_t> padded = payload;
  padded.push_back(0);
  EXPECT_EQ(decode(padded).code(), absl::StatusCode::kDataLoss) << "padded";
}

}  // namespace strata::codecs::testing
