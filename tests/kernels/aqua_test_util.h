// Helpers of the aqua kernel tests (host and GPU): the CPU codec as the byte
// reference, and a spread of aqua settings. Header-only (inline).
#ifndef STRATA_TESTS_KERNELS_AQUA_TEST_UTIL_H_
#define STRATA_TESTS_KERNELS_AQUA_TEST_UTIL_H_

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "codecs/aqua_codec.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"
#include "kvstore/block_format.h"
#include "tests/kernels/kernel_test_util.h"

namespace strata::kernels::testing {

// The CPU codec's payload of kv; *params gets the recorded params.
inline absl::StatusOr<std::vector<uint8_t>> CpuAquaEncode(
    const codecs::KvTensor& kv, const codecs::AquaParams& p,
    const codecs::CodecProfile& profile, codecs::CodecParams* params) {
  *params = p.ToBytes();
  return CpuEncode(codecs::CodecId::kAqua, kv, params, &profile);
}

// The CPU decode of layers [begin, begin + count) (count 0: all) as raw
// bytes.
inline absl::StatusOr<std::vector<uint8_t>> CpuAquaDecodeRaw(
    const kvstore::BlockShape& shape, const codecs::CodecParams& params,
    const std::vector<uint8_t>& payload, const codecs::CodecProfile& profile,
    uint32_t begin = 0, uint32_t count = 0) {
  codecs::DecodeSelection sel;
  sel.layer_begin = begin;
  if (count != 0) sel.layer_end = begin + count;
  return CpuDecodeRaw(codecs::CodecId::kAqua, shape, params, payload, &profile,
                      sel);
}

// A profile fitted on fresh random calibration data of shape's geometry.
inline absl::StatusOr<codecs::CodecProfile> RandomAquaProfile(
    const kvstore::BlockShape& shape, std::mt19937& rng,
    uint32_t calib_tokens = 160) {
  kvstore::BlockShape cal = shape;
  cal.dtype = kvstore::DType::kFloat32;
  cal.num_tokens = calib_tokens;
  return codecs::FitAquaProfile({RandomKv(cal, rng)}, 1e-3f, "test/aqua");
}

// A profile of random predictors (no fit: cheap for a wide HD): A ~ 0.5 I +
// noise, B ~ 0.25 [I I] + noise.
inline codecs::CodecProfile SyntheticAquaProfile(
    const kvstore::BlockShape& shape, std::mt19937& rng) {
  const uint32_t hd = shape.num_kv_heads * shape.head_dim;
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float noise = 1.0f / static_cast<float>(hd);
  codecs::CodecProfile profile("test/aqua-synthetic");
  (void)profile.Put("aqua.meta", {3},
                    {static_cast<float>(shape.num_layers),
                     static_cast<float>(shape.num_kv_heads),
                     static_cast<float>(shape.head_dim)});
  for (uint32_t l = 1; l < shape.num_layers; ++l) {
    std::vector<float> a(uint64_t{hd} * hd), b(uint64_t{hd} * 2 * hd),
        ab(hd), bb(hd);
    for (float& v : a) v = noise * u(rng);
    for (float& v : b) v = noise * u(rng);
    for (float& v : ab) v = 0.1f * u(rng);
    for (float& v : bb) v = 0.1f * u(rng);
    for (uint32_t o = 0; o < hd; ++o) {
      a[uint64_t{o} * hd + o] += 0.5f;
      b[uint64_t{o} * 2 * hd + o] += 0.25f;
      b[uint64_t{o} * 2 * hd + hd + o] += 0.25f;
    }
    (void)profile.Put(codecs::AquaTensorName('A', l), {hd, hd}, std::move(a));
    (void)profile.Put(codecs::AquaTensorName('a', l), {hd}, std::move(ab));
    (void)profile.Put(codecs::AquaTensorName('B', l), {hd, 2 * hd},
                      std::move(b));
    (void)profile.Put(codecs::AquaTensorName('b', l), {hd}, std::move(bb));
  }
  return profile;
}

struct AquaCase {
  kvstore::BlockShape shape;  // dtype set per use.
  codecs::AquaParams params;
};

// Shapes with and without a short last token group, hd = 32 / 64 / 96, and every
// bit width, group size, key mode and sink count the format allows.
inline std::vector<AquaCase> AquaCases() {
  using kvstore::DType;
  std::vector<AquaCase> cases;
  auto add = [&](kvstore::BlockShape s, uint8_t kb, uint8_t vb, uint8_t kg,
                 uint8_t vg, bool kpt, uint8_t l0, uint16_t sink) {
    AquaCase c;
    c.shape = s;
    c.params.k_bits = kb;
    c.params.v_bits = vb;
    c.params.k_group = kg;
    c.params.v_group = vg;
    c.params.keys_per_token = kpt;
    c.params.l0_bits = l0;
    c.params.n_sink = sink;
    cases.push_back(c);
  };
  add({DType::kFloat16, 3, 37, 2, 32}, 2, 2, 32, 32, false, 4, 0);
  add({DType::kFloat16, 3, 37, 2, 32}, 3, 3, 32, 32, false, 3, 4);
  add({DType::kFloat16, 4, 70, 1, 64}, 4, 2, 64, 64, true, 8, 1);
  add({DType::kFloat16, 2, 45, 3, 32}, 8, 4, 128, 32, false, 2, 3);
  add({DType::kFloat16, 3, 33, 1, 96}, 2, 3, 32, 32, true, 4, 0);
  add({DType::kFloat16, 2, 5, 1, 32}, 2, 2, 32, 32, false, 4, 5);  // All sinks.
  // Whole token groups only (key codes written as words by the group kernel).
  add({DType::kFloat16, 3, 64, 2, 32}, 3, 2, 32, 32, false, 4, 0);
  add({DType::kFloat16, 2, 68, 1, 64}, 2, 4, 64, 64, false, 3, 4);
  return cases;
}

inline std::string DescribeAqua(const kvstore::BlockShape& s,
                                const codecs::AquaParams& p) {
  return absl::StrCat("dtype ", static_cast<int>(s.dtype), " ", s.num_layers,
                      "x", s.num_tokens, "x", s.num_kv_heads, "x", s.head_dim,
                      " k", p.k_bits, "/", p.k_group, p.keys_per_token ? "t" : "c",
                      " v", p.v_bits, "/", p.v_group, " l0 ", p.l0_bits,
                      " sink ", p.n_sink);
}

}  // namespace strata::kernels::testing

#endif  // STRATA_TESTS_KERNELS_AQUA_TEST_UTIL_H_
