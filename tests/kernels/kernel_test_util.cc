#include "tests/kernels/kernel_test_util.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "codecs/codec.h"
#include "codecs/kv_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/internal/numeric.h"
#include "kernels/internal/quant_layout.h"
#include "kernels/rope_kernels.h"

namespace strata::kernels::testing {
namespace {

using internal::GroupRecord;
using internal::QuantArgs;
using internal::QuantSideArgs;

constexpr float kInf = __builtin_huge_valf();

void StoreLe(uint64_t v, int bytes, uint8_t* p) {
  for (int i = 0; i < bytes; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
uint64_t LoadLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}

template <class Tr>
float Elem(const std::vector<uint8_t>& raw, uint64_t index) {
  typename Tr::Bits b;
  std::memcpy(&b, &raw[index * sizeof(b)], sizeof(b));
  return Tr::ToFloat(b);
}

template <class Tr>
void PutElem(std::vector<uint8_t>& raw, uint64_t index, float v) {
  const typename Tr::Bits b = Tr::FromFloat(v);
  std::memcpy(&raw[index * sizeof(b)], &b, sizeof(b));
}

template <class Tr>
void EncodeSlabPerToken(const QuantArgs& a, const QuantSideArgs& s,
                        const std::vector<uint8_t>& raw, uint64_t first,
                        uint8_t* slab) {
  const uint32_t lanes = s.group / 8;
  const uint64_t items = uint64_t{a.tokens - a.n_sink} * a.hd / 8;
  uint8_t* codes = slab + 4 * s.num_groups;
  const float levels = internal::Levels(s.bits);
  for (uint64_t g = 0; g < items / lanes; ++g) {
    float x[16][8], lo[16], hi[16];
    for (uint32_t i = 0; i < lanes; ++i) {
      lo[i] = kInf;
      hi[i] = -kInf;
      for (int m = 0; m < 8; ++m) {
        x[i][m] = Elem<Tr>(raw, first + (g * lanes + i) * 8 + m);
        lo[i] = internal::OrderedMin(lo[i], x[i][m]);
        hi[i] = internal::OrderedMax(hi[i], x[i][m]);
      }
    }
    for (uint32_t m = 1; m < lanes; m <<= 1) {  // The shuffle butterfly.
      float nlo[16], nhi[16];
      for (uint32_t i = 0; i < lanes; ++i) {
        const uint32_t o = i ^ m;
        nlo[i] = (i & m) ? internal::OrderedMin(lo[o], lo[i])
                         : internal::OrderedMin(lo[i], lo[o]);
        nhi[i] = (i & m) ? internal::OrderedMax(hi[o], hi[i])
                         : internal::OrderedMax(hi[i], hi[o]);
      }
      std::memcpy(lo, nlo, sizeof(lo));
      std::memcpy(hi, nhi, sizeof(hi));
    }
    const GroupRecord r = internal::MakeGroupRecord(lo[0], hi[0], s.bits);
    StoreLe(r.Word(), 4, slab + 4 * g);
    for (uint32_t i = 0; i < lanes; ++i) {
      uint64_t packed = 0;
      for (int m = 0; m < 8; ++m) {
        packed |=
            uint64_t{internal::QuantizeCode(x[i][m], r.zero, r.scale, levels)}
            << (m * s.bits);
      }
      StoreLe(packed, s.bits, codes + (g * lanes + i) * s.bits);
    }
  }
}

template <class Tr>
void EncodeSlabPerChannel(const QuantArgs& a, const QuantSideArgs& s,
                          const std::vector<uint8_t>& raw, uint64_t first,
                          uint8_t* slab) {
  const uint32_t C = internal::QuantChannelTile(a.hd);
  const uint32_t P = internal::kQuantThreads / C;
  const uint32_t tq = a.tokens - a.n_sink;
  const float levels = internal::Levels(s.bits);
  for (uint32_t t0 = 0, tg = 0; t0 < tq; t0 += s.group, ++tg) {
    const uint32_t len = std::min(s.group, tq - t0);
    for (uint32_t j0 = 0; j0 < a.hd; j0 += C) {
      std::vector<float> x(size_t{len} * C);
      for (uint32_t t = 0; t < len; ++t) {
        for (uint32_t c = 0; c < C; ++c) {
          x[t * C + c] =
              Elem<Tr>(raw, first + uint64_t{t0 + t} * a.hd + j0 + c);
        }
      }
      std::vector<float> zero(C), scale(C);
      const uint32_t per = (len + P - 1) / P;
      for (uint32_t c = 0; c < C; ++c) {
        float lo = kInf, hi = -kInf;
        for (uint32_t k = 0; k < P; ++k) {  // Ranges, combined in order.
          const uint32_t tb = std::min(len, k * per);
          const uint32_t te = std::min(len, tb + per);
          float plo = kInf, phi = -kInf;
          for (uint32_t t = tb; t < te; ++t) {
            plo = internal::OrderedMin(plo, x[t * C + c]);
            phi = internal::OrderedMax(phi, x[t * C + c]);
          }
          lo = k == 0 ? plo : internal::OrderedMin(lo, plo);
          hi = k == 0 ? phi : internal::OrderedMax(hi, phi);
        }
        const GroupRecord r = internal::MakeGroupRecord(lo, hi, s.bits);
        zero[c] = r.zero;
        scale[c] = r.scale;
        StoreLe(r.Word(), 4, slab + 4 * (uint64_t{tg} * a.hd + j0 + c));
      }
      const uint32_t n = C * len;
      std::vector<uint8_t> code(n);
      for (uint32_t i = 0; i < n; ++i) {
        const uint32_t c = i / len, t = i % len;
        code[i] = static_cast<uint8_t>(
            internal::QuantizeCode(x[t * C + c], zero[c], scale[c], levels));
      }
      uint8_t* dst = slab + 4 * s.num_groups +
                     (uint64_t{t0} * a.hd + uint64_t{j0} * len) * s.bits / 8;
      for (uint32_t w = 0; w < n * s.bits / 32; ++w) {
        StoreLe(internal::PackWord(code.data(), n, s.bits, w), 4, dst + 4 * w);
      }
    }
  }
}

template <class Tr>
void DecodeSlabPerToken(const QuantArgs& a, const QuantSideArgs& s,
                        const uint8_t* slab, uint64_t first,
                        std::vector<uint8_t>& raw) {
  const uint32_t lanes = s.group / 8;
  const uint64_t items = uint64_t{a.tokens - a.n_sink} * a.hd / 8;
  const uint8_t* codes = slab + 4 * s.num_groups;
  for (uint64_t item = 0; item < items; ++item) {
    const GroupRecord r = internal::RecordFromWord(
        static_cast<uint32_t>(LoadLe(slab + 4 * (item / lanes), 4)));
    const uint64_t packed = LoadLe(codes + item * s.bits, s.bits);
    for (int m = 0; m < 8; ++m) {
      const uint32_t q =
          static_cast<uint32_t>(packed >> (m * s.bits)) & ((1u << s.bits) - 1);
      PutElem<Tr>(raw, first + item * 8 + m,
                  internal::DequantizeCode(q, r.zero, r.scale));
    }
  }
}

template <class Tr>
void DecodeSlabPerChannel(const QuantArgs& a, const QuantSideArgs& s,
                          const uint8_t* slab, uint64_t first,
                          std::vector<uint8_t>& raw) {
  const uint32_t C = internal::QuantChannelTile(a.hd);
  const uint32_t tq = a.tokens - a.n_sink;
  for (uint32_t t0 = 0, tg = 0; t0 < tq; t0 += s.group, ++tg) {
    const uint32_t len = std::min(s.group, tq - t0);
    for (uint32_t j0 = 0; j0 < a.hd; j0 += C) {
      const uint8_t* code =
          slab + 4 * s.num_groups +
          (uint64_t{t0} * a.hd + uint64_t{j0} * len) * s.bits / 8;
      for (uint32_t t = 0; t < len; ++t) {
        for (uint32_t c = 0; c < C; ++c) {
          const GroupRecord r = internal::RecordFromWord(static_cast<uint32_t>(
              LoadLe(slab + 4 * (uint64_t{tg} * a.hd + j0 + c), 4)));
          const uint32_t q = internal::ReadCode(code, c * len + t, s.bits);
          PutElem<Tr>(raw, first + uint64_t{t0 + t} * a.hd + j0 + c,
                      internal::DequantizeCode(q, r.zero, r.scale));
        }
      }
    }
  }
}

template <class Tr>
void EncodeAll(const QuantArgs& a, const std::vector<uint8_t>& raw,
               std::vector<uint8_t>& out) {
  for (int side = 0; side < 2; ++side) {
    const QuantSideArgs& s = a.side[side];
    for (uint32_t l = 0; l < a.layers; ++l) {
      const uint64_t first =
          (static_cast<uint64_t>(side) * a.layers + l) * a.tokens * a.hd;
      uint8_t* pay = out.data() + s.side_offset + l * s.slab_bytes;
      std::memcpy(pay, &raw[first * a.dsize], s.sink_bytes);
      const uint64_t q = first + uint64_t{a.n_sink} * a.hd;
      if (s.per_token) {
        EncodeSlabPerToken<Tr>(a, s, raw, q, pay + s.sink_bytes);
      } else {
        EncodeSlabPerChannel<Tr>(a, s, raw, q, pay + s.sink_bytes);
      }
    }
  }
}

template <class Tr>
void DecodeAll(const QuantArgs& a, const std::vector<uint8_t>& payload,
               std::vector<uint8_t>& raw) {
  for (int side = 0; side < 2; ++side) {
    const QuantSideArgs& s = a.side[side];
    for (uint32_t l = 0; l < a.layers; ++l) {
      const uint64_t first =
          (static_cast<uint64_t>(side) * a.layers + l) * a.tokens * a.hd;
      const uint8_t* pay = payload.data() + s.side_offset + l * s.slab_bytes;
      std::memcpy(&raw[first * a.dsize], pay, s.sink_bytes);
      const uint64_t q = first + uint64_t{a.n_sink} * a.hd;
      if (s.per_token) {
        DecodeSlabPerToken<Tr>(a, s, pay + s.sink_bytes, q, raw);
      } else {
        DecodeSlabPerChannel<Tr>(a, s, pay + s.sink_bytes, q, raw);
      }
    }
  }
}

template <class F>
void WithTraits(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16:
      return f(internal::Fp16Traits{});
    case DType::kBFloat16:
      return f(internal::BFloat16Traits{});
    case DType::kFloat8E4M3:
      return f(internal::Fp8E4M3Traits{});
    case DType::kFloat32:
      return f(internal::Fp32Traits{});
  }
}

}  // namespace

std::vector<QuantCase> QuantCases() {
  std::vector<QuantCase> cases;
  const BlockShape shapes[] = {
      {DType::kFloat16, 2, 77, 3, 64},    // Short last token group, hd 192.
      {DType::kFloat16, 1, 256, 2, 128},  // hd 256 (64-channel tiles).
      {DType::kFloat16, 2, 40, 1, 32},    // hd 32 (32-channel tiles).
  };
  for (const BlockShape& base : shapes) {
    for (DType dtype : {DType::kFloat16, DType::kBFloat16, DType::kFloat32,
                        DType::kFloat8E4M3}) {
      for (uint8_t bits : {2, 3, 4, 8}) {
        for (uint8_t group : {32, 64, 128}) {
          BlockShape shape = base;
          shape.dtype = dtype;
          QuantParams p;
          p.k_bits = bits;
          p.v_bits = bits == 8 ? 2 : bits;
          p.k_group = group;
          p.v_group =
              static_cast<uint8_t>(shape.head_dim % group == 0 ? group : 32);
          cases.push_back({shape, p});
          if (shape.head_dim % group == 0) {
            p.keys_per_token = true;
            p.n_sink = 5;
            cases.push_back({shape, p});
          }
        }
      }
    }
  }
  return cases;
}

bool QuickMode() { return std::getenv("STRATA_KERNEL_TEST_QUICK") != nullptr; }

uint32_t TestSeed(const char* test_name) {
  uint32_t seed;
  if (const char* env = std::getenv("STRATA_TEST_SEED")) {
    seed = static_cast<uint32_t>(std::strtoul(env, nullptr, 10));
  } else {
    seed = std::random_device{}();
  }
  std::printf("%s: seed %u (STRATA_TEST_SEED=%u replays it)\n", test_name, seed,
              seed);
  return seed;
}

std::string FixturePath() {
  if (const char* env = std::getenv("STRATA_KV_FIXTURE")) return env;
  return codecs::DefaultFixturePath();
}

KvTensor RandomKv(const BlockShape& shape, std::mt19937& rng, float scale) {
  KvTensor t = KvTensor::Zeros(shape);
  std::normal_distribution<float> n(0, scale);
  for (float& x : t.data) {
    const uint32_t r = rng();
    if ((r & 63) == 0) {
      x = (r & 64) ? -0.0f : 0.0f;
    } else {
      x = codecs::RoundToDtype(n(rng), shape.dtype);
    }
  }
  return t;
}

KvTensor SignedZeroKv(const BlockShape& shape, std::mt19937& rng) {
  KvTensor kv = KvTensor::Zeros(shape);
  for (float& x : kv.data) {
    const uint32_t r = rng() % 4;
    x = r == 0 ? -0.0f : r == 1 ? 0.0f : static_cast<float>(rng() % 7);
  }
  return kv;
}

absl::StatusOr<KvTensor> RefillKv(const KvTensor& real,
                                  const BlockShape& shape) {
  KvTensor kv = KvTensor::Zeros(shape);
  if (kv.data.size() != real.data.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("shape: ", kv.data.size(), " elements, the values have ",
                     real.data.size()));
  }
  for (size_t i = 0; i < kv.data.size(); ++i) {
    kv.data[i] = codecs::RoundToDtype(real.data[i], shape.dtype);
  }
  return kv;
}

std::vector<uint8_t> RawOf(const KvTensor& kv) {
  return codecs::KvTensorToRaw(kv);
}

absl::StatusOr<std::vector<uint8_t>> CpuEncode(
    codecs::CodecId id, const KvTensor& kv, codecs::CodecParams* params,
    const codecs::CodecProfile* profile) {
  absl::StatusOr<const codecs::Codec*> codec = codecs::FindCodec(id);
  if (!codec.ok()) return codec.status();
  return (*codec)->Encode(kv, *params, profile);
}

absl::StatusOr<std::vector<uint8_t>> CpuDecodeRaw(
    codecs::CodecId id, const BlockShape& shape,
    const codecs::CodecParams& params, const std::vector<uint8_t>& payload,
    const codecs::CodecProfile* profile, const codecs::DecodeSelection& sel) {
  absl::StatusOr<const codecs::Codec*> codec = codecs::FindCodec(id);
  if (!codec.ok()) return codec.status();
  KvTensor out;
  absl::Status s = (*codec)->Decode(shape, params, payload, profile, sel, &out);
  if (!s.ok()) return s;
  return codecs::KvTensorToRaw(out);
}

absl::StatusOr<std::vector<uint8_t>> CpuQuantEncode(const KvTensor& kv,
                                                    const QuantParams& p) {
  codecs::CodecParams bytes = p.ToBytes();
  return CpuEncode(codecs::CodecId::kQuant, kv, &bytes, nullptr);
}

absl::StatusOr<std::vector<uint8_t>> CpuQuantDecodeRaw(
    const BlockShape& shape, const QuantParams& p,
    const std::vector<uint8_t>& payload) {
  return CpuDecodeRaw(codecs::CodecId::kQuant, shape, p.ToBytes(), payload,
                      nullptr);
}

std::vector<uint8_t> EmulateQuantEncode(const BlockShape& shape,
                                        const QuantParams& p,
                                        const std::vector<uint8_t>& raw) {
  const QuantArgs a = internal::MakeQuantArgs(shape, p);
  std::vector<uint8_t> out(internal::QuantTotalBytes(a), 0xA5);
  WithTraits(shape.dtype,
             [&](auto traits) { EncodeAll<decltype(traits)>(a, raw, out); });
  return out;
}

std::vector<uint8_t> EmulateQuantDecode(const BlockShape& shape,
                                        const QuantParams& p,
                                        const std::vector<uint8_t>& payload) {
  const QuantArgs a = internal::MakeQuantArgs(shape, p);
  std::vector<uint8_t> raw(shape.RawBytes(), 0xA5);
  WithTraits(shape.dtype, [&](auto traits) {
    DecodeAll<decltype(traits)>(a, payload, raw);
  });
  return raw;
}

std::vector<uint8_t> EmulateRopeShift(DType dtype, uint32_t head_dim,
                                      uint64_t num_vectors, bool neox,
                                      float theta, int32_t delta,
                                      const std::vector<uint8_t>& raw) {
  std::vector<uint8_t> out = raw;
  const uint32_t pairs = head_dim / 2;
  std::vector<float> cs(pairs), sn(pairs);
  for (uint32_t i = 0; i < pairs; ++i) {
    RopeShiftCosSin(head_dim, theta, delta, i, &cs[i], &sn[i]);
  }
  WithTraits(dtype, [&](auto traits) {
    using Tr = decltype(traits);
    for (uint64_t v = 0; v < num_vectors; ++v) {
      for (uint32_t i = 0; i < pairs; ++i) {
        const uint64_t e0 = v * head_dim + (neox ? i : 2 * i);
        const uint64_t e1 = v * head_dim + (neox ? i + pairs : 2 * i + 1);
        float x0 = Elem<Tr>(raw, e0), x1 = Elem<Tr>(raw, e1);
        internal::RopeRotate(x0, x1, cs[i], sn[i]);
        PutElem<Tr>(out, e0, x0);
        PutElem<Tr>(out, e1, x1);
      }
    }
  });
  return out;
}

void CpuPagedGather(const PagedCacheDesc& cache,
                    const std::vector<std::vector<uint8_t>>& layer_caches,
                    const std::vector<int32_t>& page_ids,
                    std::vector<uint8_t>* block) {
  const BlockShape& s = cache.shape;
  const uint64_t row =
      uint64_t{s.num_kv_heads} * s.head_dim * kvstore::DTypeSize(s.dtype);
  for (int kv = 0; kv < 2; ++kv) {
    for (uint32_t l = 0; l < s.num_layers; ++l) {
      for (uint32_t t = 0; t < s.num_tokens; ++t) {
        const int32_t page = page_ids[t / cache.page_size];
        if (page < 0 || static_cast<uint32_t>(page) >= cache.num_pages) {
          continue;
        }
        const uint64_t src =
            PagedRowOffset(cache, kv, page, t % cache.page_size);
        const uint64_t dst =
            ((uint64_t{static_cast<uint32_t>(kv)} * s.num_layers + l) *
                 s.num_tokens +
             t) *
            row;
        std::memcpy(block->data() + dst, layer_caches[l].data() + src, row);
      }
    }
  }
}

int64_t FirstDifference(const std::vector<uint8_t>& a,
                        const std::vector<uint8_t>& b) {
  const size_t n = std::min(a.size(), b.size());
  for (size_t i = 0; i < n; ++i) {
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  }
  return a.size() == b.size() ? -1 : static_cast<int64_t>(n);
}

void ExpectField(const absl::Status& s, absl::StatusCode code,
                 const std::string& field) {
  EXPECT_EQ(s.code(), code) << s;
  EXPECT_THAT(std::string(s.message()), ::testing::StartsWith(field + ":"))
      << s;
}

std::string Describe(const BlockShape& shape, const QuantParams& p) {
  return absl::StrCat("shape [2][", shape.num_layers, "][", shape.num_tokens,
                      "][", shape.num_kv_heads, "][", shape.head_dim, "] ",
                      kvstore::DTypeName(shape.dtype), ", K ", p.k_bits,
                      "-bit G", p.k_group,
                      p.keys_per_token ? " per token" : " per channel", ", V ",
                      p.v_bits, "-bit G", p.v_group, ", n_sink ", p.n_sink);
}

}  // namespace strata::kernels::testing
