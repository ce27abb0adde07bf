// Helpers shared by the codec tests (tests/codecs/*_codec_test.cc): status
// checks, block round trips, the partial-decode slice comparison, and the
// byte-level corruption of payloads. Plumbing only: each test still states
// its own inputs (shapes, seeds, params) and what it expects of them.
#ifndef STRATA_TESTS_CODECS_CODEC_TEST_SUPPORT_H_
#define STRATA_TESTS_CODECS_CODEC_TEST_SUPPORT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <random>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace strata::codecs::testing {

// Every cache dtype a block may declare.
inline constexpr DType kAllDtypes[] = {DType::kFloat16, DType::kBFloat16,
                                       DType::kFloat8E4M3, DType::kFloat32};

// Matches an absl::Status whose code is `code` and whose message matches
// `message_matcher` (a std::string matcher, e.g. StartsWith("profile")).
MATCHER_P2(
    StatusIs, code, message_matcher,
    absl::StrCat("has code ", absl::StatusCodeToString(code),
                 " and a message that ",
                 ::testing::DescribeMatcher<std::string>(message_matcher))) {
  const absl::Status& status = arg;
  *result_listener << "whose status is " << status.ToString();
  return status.code() == code &&
         ::testing::ExplainMatchResult(
             message_matcher, std::string(status.message()), result_listener);
}

// A tensor of `shape` whose values are N(0, 1) draws from mt19937(seed), in
// order (not rounded to shape.dtype).
KvTensor RandomKv(const BlockShape& shape, uint32_t seed);

// `params` with byte `index` set to `value` (a malformed field).
CodecParams WithByte(CodecParams params, size_t index, uint8_t value);

// relMSE of the K (kv = 0) or V (kv = 1) half of `approx` against
// `reference` (same shape).
double RelMseOf(const KvTensor& reference, const KvTensor& approx, int kv);

// Encodes `kv` as a block (codec `id`, `params`, `profile`) and decodes it:
// the relMSE of the decode (INFINITY, with a non-fatal failure, when either
// step fails); *bits (optional) gets the block's bits per element.
double RoundTripRelMse(const KvTensor& kv, CodecId id,
                       const CodecParams& params, const CodecProfile& profile,
                       double* bits = nullptr);

// The K and V relMSE of a block round trip, and its bits per element.
struct RoundTripErrors {
  double k = 0, v = 0, bits = 0;
};
// As RoundTripRelMse, split by half; an error when encode or decode fails.
absl::StatusOr<RoundTripErrors> MeasureRoundTrip(const KvTensor& kv, CodecId id,
                                                 const CodecParams& params,
                                                 const CodecProfile* profile);

// Success when every value of `part` (a decode of `sel`) equals the same
// element of `full` (the decode of the whole block); else names the first
// element that differs.
::testing::AssertionResult EqualsSliceOfFull(const KvTensor& part,
                                             const KvTensor& full,
                                             const DecodeSelection& sel);
// Decodes `sel` of `block` (DecodeKvBlock with `profile`): success when the
// decode succeeds and EqualsSliceOfFull(part, full, sel).
::testing::AssertionResult PartialDecodeEqualsSlice(
    absl::Span<const uint8_t> block, const CodecProfile* profile,
    const KvTensor& full, const DecodeSelection& sel);

// A random selection of a block of `num_layers` x `num_tokens`: a layer
// range, then either a token range or (by_indices) each token with chance
// 1 / `one_in`, `fallback_token` when none was picked.
DecodeSelection RandomSelection(std::mt19937& rng, uint32_t num_layers,
                                uint32_t num_tokens, bool by_indices,
                                uint32_t one_in, uint32_t fallback_token);

// XORs 1 to 8 random bytes of `bytes` (at least one byte) with non-zero
// values drawn from `rng`.
void FlipRandomBytes(std::mt19937& rng, std::vector<uint8_t>* bytes);

// Success when every value of `kv` is finite.
::testing::AssertionResult AllFinite(const KvTensor& kv);

// Decodes a (corrupted) payload into *out.
using CorruptDecode =
    std::function<absl::Status(absl::Span<const uint8_t>, KvTensor*)>;
// `trials` times: decodes `payload` with FlipRandomBytes(rng) applied, into
// a fresh tensor; the decode must fail with DATA_LOSS (counted in *errors)
// or give finite values (counted in *decodes; a fatal failure naming `seed`
// otherwise: call under ASSERT_NO_FATAL_FAILURE).
void ExpectCorruptionsFailOrDecodeFinite(const CorruptDecode& decode,
                                         const std::vector<uint8_t>& payload,
                                         int trials, std::mt19937& rng,
                                         uint32_t seed, int* errors,
                                         int* decodes);

// Decodes a payload into `out`-like storage of the caller's choosing.
using PayloadDecode = std::function<absl::Status(absl::Span<const uint8_t>)>;

// Each prefix of `payload` of the given sizes decodes to DATA_LOSS with a
// message starting with `prefix`; the payload plus a zero byte decodes to
// DATA_LOSS.
void ExpectTruncatedAndPaddedAreDataLoss(const PayloadDecode& decode,
                                         const std::vector<uint8_t>& payload,
                                         std::initializer_list<size_t> sizes,
                                         absl::string_view prefix);

}  // namespace strata::codecs::testing

#endif  // STRATA_TESTS_CODECS_CODEC_TEST_SUPPORT_H_
