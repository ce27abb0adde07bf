// libstrata_codec_shim.so: a C ABI over the codec evaluation library, for
// tools/codec_eval/perplexity.py (ctypes). Not a product API.
//
//   int strata_codec_roundtrip(const char* setting, const float* k,
//                              const float* v, uint32_t layers,
//                              uint32_t tokens, uint32_t heads, uint32_t dim,
//                              const char* profile_path, float* k_out,
//                              float* v_out, uint8_t* keep_out,
//                              double* bits_out);
//     k, v, k_out, v_out: [layers][tokens][heads][dim] fp32 (keys pre-RoPE);
//     the input is treated as an fp16 cache (rounded on encode, decoded
//     values are fp16 values). keep_out (nullable): [layers][tokens][heads],
//     1 where the token is kept (0 for tokens a token-sparse setting drops;
//     their k_out/v_out are 0). profile_path: a strata-calibrate file, or
//     null/"" for settings that need none. bits_out (nullable): bits/element
//     of the encoded block. Returns 0, or -1 with strata_codec_last_error().
//   const char* strata_codec_last_error(void);   // This thread's last error.
//   const char* strata_codec_settings(void);     // "name,name,..." (static).
//
// Thread safety: calls are independent; the error string is thread-local.
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "codecs/codec_profile.h"
#include "codecs/kv_tensor.h"
#include "tools/codec_eval/eval_lib.h"

namespace {

thread_local std::string last_error;

int Fail(const std::string& message) {
  last_error = message;
  return -1;
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) const char* strata_codec_last_error(
    void) {
  return last_error.c_str();
}

__attribute__((visibility("default"))) const char* strata_codec_settings(void) {
  static const std::string* names = [] {
    auto* s = new std::string;
    for (const auto& setting : strata::codec_eval::AllSettings()) {
      if (!s->empty()) *s += ",";
      *s += setting.name;
    }
    return s;
  }();
  return names->c_str();
}

__attribute__((visibility("default"))) int strata_codec_roundtrip(
    const char* setting, const float* k, const float* v, uint32_t layers,
    uint32_t tokens, uint32_t heads, uint32_t dim, const char* profile_path,
    float* k_out, float* v_out, uint8_t* keep_out, double* bits_out) {
  using namespace strata;
  if (setting == nullptr || k == nullptr || v == nullptr ||
      k_out == nullptr || v_out == nullptr) {
    return Fail("null argument");
  }
  auto s = codec_eval::FindSetting(setting);
  if (!s.ok()) return Fail(s.status().ToString());
  codecs::KvTensor kv;
  kv.shape.dtype = kvstore::DType::kFloat16;
  kv.shape.num_layers = layers;
  kv.shape.num_tokens = tokens;
  kv.shape.num_kv_heads = heads;
  kv.shape.head_dim = dim;
  if (absl::Status st = kv.shape.Validate(); !st.ok()) {
    return Fail(st.ToString());
  }
  const size_t half = size_t{layers} * tokens * heads * dim;
  kv.data.resize(2 * half);
  // The cache is fp16: round the input as the engine's cache would hold it.
  for (size_t i = 0; i < half; ++i) {
    kv.data[i] = codecs::HalfToFloat(codecs::FloatToHalf(k[i]));
    kv.data[half + i] = codecs::HalfToFloat(codecs::FloatToHalf(v[i]));
  }
  std::unique_ptr<codecs::CodecProfile> profile;
  if (profile_path != nullptr && profile_path[0] != '\0') {
    auto p = codecs::CodecProfile::ReadFile(profile_path);
    if (!p.ok()) return Fail(p.status().ToString());
    profile = std::make_unique<codecs::CodecProfile>(*std::move(p));
  }
  auto r = codec_eval::RoundTrip(*s, kv, profile.get());
  if (!r.ok()) return Fail(r.status().ToString());
  std::memcpy(k_out, r->decoded.data.data(), half * sizeof(float));
  std::memcpy(v_out, r->decoded.data.data() + half, half * sizeof(float));
  if (keep_out != nullptr) {
    std::memcpy(keep_out, r->keep.data(), r->keep.size());
  }
  if (bits_out != nullptr) *bits_out = r->bits;
  return 0;
}

}  // extern "C"
