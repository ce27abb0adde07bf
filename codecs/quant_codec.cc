// The quant codec: KIVI min-max quantization with sink tokens and sparse
// outliers. Payload layout: docs/codecs/quant_aqua.md.
#include "codecs/quant_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "codecs/bitpack.h"
#include "codecs/internal/registry.h"
#include "common/status_macros.h"

namespace strata::codecs {
namespace quant_internal {
namespace {

constexpr float kHalfMax = 65504.0f;
constexpr float kBFloat16Max = 3.38953139e38f;  // 0x7F7F.

uint16_t LoadU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}
void StoreU16(uint16_t v, uint8_t* p) {
  p[0] = static_cast<uint8_t>(v & 0xFF);
  p[1] = static_cast<uint8_t>(v >> 8);
}

}  // namespace

absl::Status CheckBits(const char* field, uint8_t bits) {
  if (bits == 2 || bits == 3 || bits == 4 || bits == 8) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": ", bits, " bits is not supported (2, 3, 4 or 8)"));
}

absl::Status CheckGroup(const char* field, uint8_t group) {
  if (group == 32 || group == 64 || group == 128) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      field, ": group size ", group, " is not supported (32, 64 or 128)"));
}

uint64_t SlabQuantizer::NumGroups() const {
  const uint64_t hd = uint64_t{heads} * head_dim;
  if (per_token) return uint64_t{tokens} * hd / group;
  return (uint64_t{tokens} + group - 1) / group * hd;
}

uint64_t SlabQuantizer::Bytes() const {
  return 4 * NumGroups() +
         PackedBytes(uint64_t{tokens} * heads * head_dim, bits);
}

absl::Status SlabQuantizer::Quantize(const float* x,
                                     absl::Span<const uint8_t> skip,
                                     uint8_t* out) const {
  const uint64_t hd = uint64_t{heads} * head_dim;
  const uint64_t n = uint64_t{tokens} * hd;
  const uint64_t num_groups = NumGroups();
  // Element i = (t*heads + h)*head_dim + d belongs to group GroupOf(t, j)
  // with j = h*head_dim + d, and has code index CodeOf(t, j).
  auto group_of = [&](uint64_t t, uint64_t j) {
    return per_token ? (t * hd + j) / group : (t / group) * hd + j;
  };
  auto code_of = [&](uint64_t t, uint64_t j) {
    if (per_token) return t * hd + j;
    const uint64_t tg = t / group;
    const uint64_t len = std::min<uint64_t>(group, tokens - tg * group);
    return tg * group * hd + j * len + (t - tg * group);
  };
  std::vector<float> lo(num_groups, INFINITY), hi(num_groups, -INFINITY);
  for (uint64_t t = 0; t < tokens; ++t) {
    for (uint64_t j = 0; j < hd; ++j) {
      const uint64_t i = t * hd + j;
      if (!skip.empty() && skip[i]) continue;
      const float v = x[i];
      if (!(std::fabs(v) <= kHalfMax)) {
        return absl::InvalidArgumentError(
            absl::StrCat("kv: value ", v,
                         " is outside the fp16 range of the quantizer "
                         "(keep it as an outlier or sink token)"));
      }
      const uint64_t g = group_of(t, j);
      lo[g] = std::min(lo[g], v);
      hi[g] = std::max(hi[g], v);
    }
  }
  const float levels = static_cast<float>((1u << bits) - 1);
  std::vector<float> scale(num_groups), zero(num_groups);
  for (uint64_t g = 0; g < num_groups; ++g) {
    if (lo[g] > hi[g]) lo[g] = hi[g] = 0;  // Every element skipped.
    const uint16_t hmin = FloatToHalf(lo[g]);
    zero[g] = HalfToFloat(hmin);
    float s = (hi[g] - zero[g]) / levels;
    if (!(s > 0)) s = 0;  // fp16(min) may round above max.
    const uint16_t hscale = FloatToHalf(s);
    scale[g] = HalfToFloat(hscale);
    StoreU16(hscale, out + 4 * g);
    StoreU16(hmin, out + 4 * g + 2);
  }
  std::vector<uint32_t> codes(n);
  for (uint64_t t = 0; t < tokens; ++t) {
    for (uint64_t j = 0; j < hd; ++j) {
      const uint64_t g = group_of(t, j);
      float q = 0;
      if (scale[g] > 0) {
        q = std::nearbyint((x[t * hd + j] - zero[g]) / scale[g]);
        q = std::min(std::max(q, 0.0f), levels);
      }
      codes[code_of(t, j)] = static_cast<uint32_t>(q);
    }
  }
  const uint64_t code_bytes = PackedBytes(n, bits);
  if (!PackBits(codes, bits, 0,
                absl::MakeSpan(out + 4 * num_groups, code_bytes))) {
    return absl::InternalError("quant: code packing failed");
  }
  return absl::OkStatus();
}

absl::Status SlabQuantizer::DequantizeToken(absl::Span<const uint8_t> slab,
                                            uint32_t t, float* dst) const {
  const uint64_t hd = uint64_t{heads} * head_dim;
  const uint64_t num_groups = NumGroups();
  if (t >= tokens || slab.size() != Bytes()) {
    return absl::InternalError("quant: slab addressing is inconsistent");
  }
  const absl::Span<const uint8_t> codes = slab.subspan(4 * num_groups);
  const uint64_t tg = t / group;
  const uint64_t len = std::min<uint64_t>(group, tokens - tg * group);
  uint64_t cached = UINT64_MAX;
  float s = 0, z = 0;
  for (uint64_t j = 0; j < hd; ++j) {
    uint64_t g, c;
    if (per_token) {
      g = (t * hd + j) / group;
      c = t * hd + j;
    } else {
      g = tg * hd + j;
      c = tg * group * hd + j * len + (t - tg * group);
    }
    if (g != cached) {
      const uint16_t hs = LoadU16(&slab[4 * g]);
      const uint16_t hz = LoadU16(&slab[4 * g + 2]);
      if ((hs & 0x7C00) == 0x7C00 || (hz & 0x7C00) == 0x7C00 ||
          (hs & 0x8000) != 0) {
        return absl::DataLossError(absl::StrCat(
            "payload: group ", g, " has a non-finite or negative scale/min"));
      }
      s = HalfToFloat(hs);
      z = HalfToFloat(hz);
      cached = g;
    }
    uint32_t q = 0;
    if (!ReadBits(codes, bits, c * bits, &q)) {
      return absl::InternalError("quant: code read out of range");
    }
    const float step = static_cast<float>(q) * s;  // Rounded, then added.
    dst[j] = z + step;
  }
  return absl::OkStatus();
}


void StoreDtype(float v, DType dtype, uint8_t* p) {
  switch (dtype) {
    case DType::kFloat16:
      StoreU16(FloatToHalf(std::clamp(v, -kHalfMax, kHalfMax)), p);
      return;
    case DType::kBFloat16:
      StoreU16(FloatToBFloat16(std::clamp(v, -kBFloat16Max, kBFloat16Max)), p);
      return;
    case DType::kFloat8E4M3:
      p[0] = FloatToFp8E4M3(v);
      return;
    case DType::kFloat32: {
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(bits >> (8 * i));
      return;
    }
  }
}

bool LoadDtype(const uint8_t* p, DType dtype, float* v) {
  switch (dtype) {
    case DType::kFloat16: {
      const uint16_t h = LoadU16(p);
      *v = HalfToFloat(h);
      return (h & 0x7C00) != 0x7C00;
    }
    case DType::kBFloat16: {
      const uint16_t b = LoadU16(p);
      *v = BFloat16ToFloat(b);
      return (b & 0x7F80) != 0x7F80;
    }
    case DType::kFloat8E4M3:
      *v = Fp8E4M3ToFloat(p[0]);
      return (p[0] & 0x7F) != 0x7F;
    case DType::kFloat32: {
      uint32_t bits = 0;
      for (int i = 0; i < 4; ++i)
        bits |= static_cast<uint32_t>(p[i]) << (8 * i);
      std::memcpy(v, &bits, 4);
      return std::isfinite(*v);
    }
  }
  return false;
}

absl::Status CheckKvValues(const KvTensor& kv) {
  STRATA_RETURN_IF_ERROR(kv.shape.Validate());
  if (kv.data.size() != kv.shape.ElementCount()) {
    return absl::InvalidArgumentError(absl::StrCat("kv: ", kv.data.size(),
                                                   " values, shape needs ",
                                                   kv.shape.ElementCount()));
  }
  for (size_t i = 0; i < kv.data.size(); ++i) {
    if (!std::isfinite(kv.data[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("kv: value ", i, " is not finite"));
    }
  }
  return absl::OkStatus();
}

}  // namespace quant_internal

// ---- Params.

CodecParams QuantParams::ToBytes() const {
  CodecParams b{};
  b[0] = kVersion;
  b[1] = k_bits;
  b[2] = v_bits;
  b[3] = k_group;
  b[4] = v_group;
  b[5] = keys_per_token ? 1 : 0;
  b[6] = static_cast<uint8_t>(n_sink & 0xFF);
  b[7] = static_cast<uint8_t>(n_sink >> 8);
  b[8] = static_cast<uint8_t>(outlier_bp & 0xFF);
  b[9] = static_cast<uint8_t>(outlier_bp >> 8);
  return b;
}

absl::StatusOr<QuantParams> QuantParams::FromBytes(const CodecParams& b) {
  using quant_internal::CheckBits;
  using quant_internal::CheckGroup;
  if (b[0] != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "version: quant params version ", b[0], " is not supported (1)"));
  }
  QuantParams p;
  p.k_bits = b[1];
  p.v_bits = b[2];
  p.k_group = b[3];
  p.v_group = b[4];
  STRATA_RETURN_IF_ERROR(CheckBits("k_bits", p.k_bits));
  STRATA_RETURN_IF_ERROR(CheckBits("v_bits", p.v_bits));
  STRATA_RETURN_IF_ERROR(CheckGroup("k_group", p.k_group));
  STRATA_RETURN_IF_ERROR(CheckGroup("v_group", p.v_group));
  if ((b[5] & ~1u) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("flags: unknown bits in ", b[5]));
  }
  p.keys_per_token = (b[5] & 1) != 0;
  p.n_sink = static_cast<uint16_t>(b[6] | (b[7] << 8));
  p.outlier_bp = static_cast<uint16_t>(b[8] | (b[9] << 8));
  if (p.outlier_bp > 10000) {
    return absl::InvalidArgumentError(absl::StrCat(
        "outlier_bp: ", p.outlier_bp, " basis points is above 10000"));
  }
  for (size_t i = 10; i < b.size(); ++i) {
    if (b[i] != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("reserved: params byte ", i, " is not zero"));
    }
  }
  return p;
}

absl::StatusOr<QuantParams> QuantParams::FromBytes(const CodecParams& b,
                                                   const BlockShape& shape) {
  STRATA_ASSIGN_OR_RETURN(QuantParams p, FromBytes(b));
  if (shape.head_dim % p.v_group != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "v_group: ", p.v_group, " does not divide head_dim ", shape.head_dim));
  }
  if (p.keys_per_token && shape.head_dim % p.k_group != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("k_group: ", p.k_group, " does not divide head_dim ",
                     shape.head_dim, " (keys_per_token)"));
  }
  if (p.n_sink > shape.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n_sink: ", p.n_sink, " sink tokens in a block of ", shape.num_tokens));
  }
  return p;
}

// ---- The codec.
namespace {

using quant_internal::LoadDtype;
using quant_internal::SlabQuantizer;

// Sizes of one K or V slab: [sinks | scales/mins + codes | outlier lists].
struct SideLayout {
  SlabQuantizer quant;
  uint64_t sink_bytes = 0;
  uint64_t outliers = 0;     // Per head.
  uint64_t index_space = 0;  // Quantized elements per head: tokens*head_dim.
  int index_width = 1;
  uint64_t list_bytes = 0;  // One head's outlier list.
  uint64_t slab_bytes = 0;
};

struct Layout {
  SideLayout side[2];
  uint64_t total = 0;
  uint64_t Offset(int kv, uint32_t layer, uint32_t layers) const {
    return kv == 0 ? layer * side[0].slab_bytes
                   : layers * side[0].slab_bytes + layer * side[1].slab_bytes;
  }
};

Layout MakeLayout(const BlockShape& shape, const QuantParams& p) {
  const uint64_t dsize = kvstore::DTypeSize(shape.dtype);
  const uint32_t tq = shape.num_tokens - p.n_sink;
  Layout lay;
  for (int kv = 0; kv < 2; ++kv) {
    SideLayout& s = lay.side[kv];
    s.quant.tokens = tq;
    s.quant.heads = shape.num_kv_heads;
    s.quant.head_dim = shape.head_dim;
    s.quant.bits = kv == 0 ? p.k_bits : p.v_bits;
    s.quant.group = kv == 0 ? p.k_group : p.v_group;
    s.quant.per_token = kv == 1 || p.keys_per_token;
    s.sink_bytes =
        uint64_t{p.n_sink} * shape.num_kv_heads * shape.head_dim * dsize;
    s.index_space = uint64_t{tq} * shape.head_dim;
    s.outliers = s.index_space * p.outlier_bp / 10000;
    s.index_width = IndexWidth(s.index_space);
    s.list_bytes = PackedBytes(s.outliers, s.index_width) + s.outliers * dsize;
    s.slab_bytes = s.sink_bytes + s.quant.Bytes() +
                   uint64_t{shape.num_kv_heads} * s.list_bytes;
    lay.total += s.slab_bytes * shape.num_layers;
  }
  return lay;
}

// The `count` largest-|x| elements of head h of slab x[tokens][heads][dim],
// as ascending indices t*head_dim + d (ties: the lower index wins).
std::vector<uint32_t> SelectOutliers(const float* x, const SlabQuantizer& q,
                                     uint32_t h, uint64_t count) {
  const uint64_t n = uint64_t{q.tokens} * q.head_dim;
  std::vector<uint32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0u);
  auto mag = [&](uint32_t i) {
    const uint64_t t = i / q.head_dim, d = i % q.head_dim;
    return std::fabs(x[(t * q.heads + h) * q.head_dim + d]);
  };
  std::nth_element(idx.begin(), idx.begin() + count, idx.end(),
                   [&](uint32_t a, uint32_t b) {
                     const float ma = mag(a), mb = mag(b);
                     return ma > mb || (ma == mb && a < b);
                   });
  idx.resize(count);
  std::sort(idx.begin(), idx.end());
  return idx;
}

class QuantCodec final : public Codec {
 public:
  CodecId id() const override { return CodecId::kQuant; }
  const char* name() const override { return "quant"; }

  absl::Status ValidateParams(const BlockShape& shape,
                              const CodecParams& params) const override {
    STRATA_RETURN_IF_ERROR(shape.Validate());
    return QuantParams::FromBytes(params, shape).status();
  }

  absl::StatusOr<std::vector<uint8_t>> Encode(
      const KvTensor& kv, CodecParams& params,
      const CodecProfile* /*profile*/) const override {
    STRATA_RETURN_IF_ERROR(quant_internal::CheckKvValues(kv));
    const BlockShape& shape = kv.shape;
    STRATA_ASSIGN_OR_RETURN(QuantParams p,
                            QuantParams::FromBytes(params, shape));
    const Layout lay = MakeLayout(shape, p);
    const uint64_t dsize = kvstore::DTypeSize(shape.dtype);
    const uint64_t hd = uint64_t{shape.num_kv_heads} * shape.head_dim;
    std::vector<uint8_t> out(lay.total, 0);
    std::vector<uint8_t> skip;
    for (int k = 0; k < 2; ++k) {
      const SideLayout& s = lay.side[k];
      for (uint32_t l = 0; l < shape.num_layers; ++l) {
        uint8_t* slab = out.data() + lay.Offset(k, l, shape.num_layers);
        const float* x = kv.vec(k, l, 0, 0);
        for (uint64_t i = 0; i < p.n_sink * hd; ++i) {
          quant_internal::StoreDtype(x[i], shape.dtype, slab + i * dsize);
        }
        const float* xq = x + p.n_sink * hd;
        skip.assign(s.outliers > 0 ? s.quant.tokens * hd : 0, 0);
        uint8_t* lists = slab + s.sink_bytes + s.quant.Bytes();
        for (uint32_t h = 0; h < shape.num_kv_heads && s.outliers > 0; ++h) {
          const std::vector<uint32_t> idx =
              SelectOutliers(xq, s.quant, h, s.outliers);
          uint8_t* list = lists + h * s.list_bytes;
          const uint64_t index_bytes = PackedBytes(s.outliers, s.index_width);
          if (!PackBits(idx, s.index_width, 0,
                        absl::MakeSpan(list, index_bytes))) {
            return absl::InternalError("quant: outlier index packing failed");
          }
          for (uint64_t e = 0; e < idx.size(); ++e) {
            const uint64_t t = idx[e] / shape.head_dim,
                           d = idx[e] % shape.head_dim;
            const uint64_t i =
                (t * shape.num_kv_heads + h) * shape.head_dim + d;
            skip[i] = 1;
            quant_internal::StoreDtype(xq[i], shape.dtype,
                                       list + index_bytes + e * dsize);
          }
        }
        STRATA_RETURN_IF_ERROR(s.quant.Quantize(xq, skip, slab + s.sink_bytes));
      }
    }
    return out;
  }

  absl::Status Decode(const BlockShape& shape, const CodecParams& params,
                      absl::Span<const uint8_t> payload,
                      const CodecProfile* /*profile*/,
                      const DecodeSelection& selection,
                      KvTensor* out) const override {
    STRATA_RETURN_IF_ERROR(shape.Validate());
    STRATA_ASSIGN_OR_RETURN(QuantParams p,
                            QuantParams::FromBytes(params, shape));
    const Layout lay = MakeLayout(shape, p);
    if (payload.size() != lay.total) {
      return absl::DataLossError(absl::StrCat("payload: ", payload.size(),
                                              " bytes, shape and params need ",
                                              lay.total));
    }
    STRATA_ASSIGN_OR_RETURN(BlockShape sel, selection.Resolve(shape));
    const uint64_t dsize = kvstore::DTypeSize(shape.dtype);
    const uint64_t hd = uint64_t{shape.num_kv_heads} * shape.head_dim;
    std::vector<int32_t> row_of(shape.num_tokens, -1);
    for (uint32_t r = 0; r < sel.num_tokens; ++r) {
      row_of[selection.Token(r)] = static_cast<int32_t>(r);
    }
    KvTensor result = KvTensor::Zeros(sel);
    std::vector<uint32_t> idx;
    for (int k = 0; k < 2; ++k) {
      const SideLayout& s = lay.side[k];
      for (uint32_t lo = 0; lo < sel.num_layers; ++lo) {
        const uint32_t l = selection.layer_begin + lo;
        const absl::Span<const uint8_t> slab =
            payload.subspan(lay.Offset(k, l, shape.num_layers), s.slab_bytes);
        const absl::Span<const uint8_t> quantized =
            slab.subspan(s.sink_bytes, s.quant.Bytes());
        for (uint32_t r = 0; r < sel.num_tokens; ++r) {
          const uint32_t t = selection.Token(r);
          float* dst = result.vec(k, lo, r, 0);
          if (t >= p.n_sink) {
            STRATA_RETURN_IF_ERROR(
                s.quant.DequantizeToken(quantized, t - p.n_sink, dst));
            continue;
          }
          for (uint64_t i = 0; i < hd; ++i) {
            if (!LoadDtype(&slab[(t * hd + i) * dsize], shape.dtype, &dst[i])) {
              return absl::DataLossError(absl::StrCat("payload: sink token ", t,
                                                      " of layer ", l,
                                                      " is not finite"));
            }
          }
        }
        const uint64_t index_bytes = PackedBytes(s.outliers, s.index_width);
        idx.resize(s.outliers);
        for (uint32_t h = 0; h < shape.num_kv_heads && s.outliers > 0; ++h) {
          const absl::Span<const uint8_t> list = slab.subspan(
              s.sink_bytes + s.quant.Bytes() + h * s.list_bytes, s.list_bytes);
          if (!UnpackBits(list, s.index_width, 0, absl::MakeSpan(idx))) {
            return absl::InternalError("quant: outlier list addressing");
          }
          for (uint64_t e = 0; e < idx.size(); ++e) {
            if (idx[e] >= s.index_space || (e > 0 && idx[e] <= idx[e - 1])) {
              return absl::DataLossError(absl::StrCat(
                  "payload: outlier list of layer ", l, " head ", h,
                  " is out of range or not increasing at entry ", e));
            }
            const int32_t row = row_of[p.n_sink + idx[e] / shape.head_dim];
            if (row < 0) continue;
            float v;
            if (!LoadDtype(&list[index_bytes + e * dsize], shape.dtype, &v)) {
              return absl::DataLossError(absl::StrCat("payload: outlier ", e,
                                                      " of layer ", l, " head ",
                                                      h, " is not finite"));
            }
            result.at(k, lo, row, h, idx[e] % shape.head_dim) = v;
          }
        }
      }
    }
    for (float& v : result.data)
      v = RoundToDtype(v, shape.dtype);
    *out = std::move(result);
    return absl::OkStatus();
  }
};

}  // namespace

namespace internal {
const Codec* QuantCodecInstance() {
  static const QuantCodec* const codec = new QuantCodec();
  return codec;
}
}  // namespace internal
}  // namespace strata::codecs
