// The aqua codec: cross-layer ridge predictors + min-max quantized residuals.
// Payload layout: docs/codecs/quant_aqua.md.
#include "codecs/aqua_codec.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "codecs/internal/registry.h"
#include "codecs/quant_codec.h"
#include "common/status_macros.h"

namespace strata::codecs {

// ---- Params.

CodecParams AquaParams::ToBytes() const {
  CodecParams b{};
  b[0] = kVersion;
  b[1] = k_bits;
  b[2] = v_bits;
  b[3] = k_group;
  b[4] = v_group;
  b[5] = keys_per_token ? 1 : 0;
  b[6] = l0_bits;
  for (int i = 0; i < 8; ++i)
    b[8 + i] = static_cast<uint8_t>(profile_id >> (8 * i));
  b[16] = static_cast<uint8_t>(n_sink & 0xFF);
  b[17] = static_cast<uint8_t>(n_sink >> 8);
  return b;
}

absl::StatusOr<AquaParams> AquaParams::FromBytes(const CodecParams& b) {
  using quant_internal::CheckBits;
  using quant_internal::CheckGroup;
  if (b[0] != kVersion) {
    return absl::InvalidArgumentError(absl::StrCat(
        "version: aqua params version ", b[0], " is not supported (1)"));
  }
  AquaParams p;
  p.k_bits = b[1];
  p.v_bits = b[2];
  p.k_group = b[3];
  p.v_group = b[4];
  p.l0_bits = b[6];
  STRATA_RETURN_IF_ERROR(CheckBits("k_bits", p.k_bits));
  STRATA_RETURN_IF_ERROR(CheckBits("v_bits", p.v_bits));
  STRATA_RETURN_IF_ERROR(CheckGroup("k_group", p.k_group));
  STRATA_RETURN_IF_ERROR(CheckGroup("v_group", p.v_group));
  STRATA_RETURN_IF_ERROR(CheckBits("l0_bits", p.l0_bits));
  if ((b[5] & ~1u) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("flags: unknown bits in ", b[5]));
  }
  p.keys_per_token = (b[5] & 1) != 0;
  p.profile_id = 0;
  for (int i = 0; i < 8; ++i) p.profile_id |= uint64_t{b[8 + i]} << (8 * i);
  p.n_sink = static_cast<uint16_t>(b[16] | (b[17] << 8));
  if (b[7] != 0) {
    return absl::InvalidArgumentError("reserved: params byte 7 is not zero");
  }
  for (size_t i = 18; i < b.size(); ++i) {
    if (b[i] != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("reserved: params byte ", i, " is not zero"));
    }
  }
  return p;
}

absl::StatusOr<AquaParams> AquaParams::FromBytes(const CodecParams& b,
                                                 const BlockShape& shape) {
  STRATA_ASSIGN_OR_RETURN(AquaParams p, FromBytes(b));
  if (p.n_sink > shape.num_tokens) {
    return absl::InvalidArgumentError(absl::StrCat(
        "n_sink: ", p.n_sink, " sink tokens in a block of ", shape.num_tokens));
  }
  if (shape.head_dim % p.v_group != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "v_group: ", p.v_group, " does not divide head_dim ", shape.head_dim));
  }
  if (p.keys_per_token && shape.head_dim % p.k_group != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("k_group: ", p.k_group, " does not divide head_dim ",
                     shape.head_dim, " (keys_per_token)"));
  }
  return p;
}

std::string AquaTensorName(char which, uint32_t layer) {
  return absl::StrCat("aqua.", std::string(1, which), ".l", layer);
}

namespace {

using quant_internal::LoadDtype;
using quant_internal::SlabQuantizer;
using quant_internal::StoreDtype;

// y = W·x + bias for W [out, in] row-major, in fp32 with a fixed order (the
// CUDA kernel must match it): eight lane sums, lane i adding the rounded
// products W[o][j]*x[j] for j ≡ i (mod 8) in increasing j, combined as
// ((l0+l1)+(l2+l3)) + ((l4+l5)+(l6+l7)), then + bias[o]. No FMA.
void Predict(const float* w, const float* bias, const float* x, uint32_t in,
             uint32_t out, float* y) {
  for (uint32_t o = 0; o < out; ++o) {
    const float* row = w + static_cast<size_t>(o) * in;
    float lane[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    uint32_t j = 0;
    for (; j + 8 <= in; j += 8) {
      for (int i = 0; i < 8; ++i) {
        const float prod = row[j + i] * x[j + i];
        lane[i] = lane[i] + prod;
      }
    }
    for (int i = 0; j < in; ++i, ++j) {
      const float prod = row[j] * x[j];
      lane[i] = lane[i] + prod;
    }
    const float sum = ((lane[0] + lane[1]) + (lane[2] + lane[3])) +
                      ((lane[4] + lane[5]) + (lane[6] + lane[7]));
    y[o] = sum + bias[o];
  }
}

// The profile tensors one block needs.
struct Predictors {
  uint32_t hd = 0;
  std::vector<const ProfileTensor*> a_w, a_b, b_w, b_b;  // Index = layer.
};

absl::StatusOr<Predictors> LoadPredictors(const CodecProfile* profile,
                                          const BlockShape& shape) {
  if (profile == nullptr) {
    return absl::FailedPreconditionError(
        "profile: the aqua codec needs the model's codec profile");
  }
  STRATA_ASSIGN_OR_RETURN(const ProfileTensor* meta,
                          profile->Require("aqua.meta", {3}));
  if (meta->data[0] != static_cast<float>(shape.num_layers) ||
      meta->data[1] != static_cast<float>(shape.num_kv_heads) ||
      meta->data[2] != static_cast<float>(shape.head_dim)) {
    return absl::FailedPreconditionError(
        absl::StrCat("profile: \"", profile->model_id(), "\" was fitted for ",
                     meta->data[0], " layers x ", meta->data[1], " heads x ",
                     meta->data[2], " dims, the block has ", shape.num_layers,
                     " x ", shape.num_kv_heads, " x ", shape.head_dim));
  }
  Predictors p;
  p.hd = shape.num_kv_heads * shape.head_dim;
  const uint32_t L = shape.num_layers;
  p.a_w.assign(L, nullptr);
  p.a_b.assign(L, nullptr);
  p.b_w.assign(L, nullptr);
  p.b_b.assign(L, nullptr);
  for (uint32_t l = 1; l < L; ++l) {
    STRATA_ASSIGN_OR_RETURN(
        p.a_w[l], profile->Require(AquaTensorName('A', l), {p.hd, p.hd}));
    STRATA_ASSIGN_OR_RETURN(p.a_b[l],
                            profile->Require(AquaTensorName('a', l), {p.hd}));
    STRATA_ASSIGN_OR_RETURN(
        p.b_w[l], profile->Require(AquaTensorName('B', l), {p.hd, 2 * p.hd}));
    STRATA_ASSIGN_OR_RETURN(p.b_b[l],
                            profile->Require(AquaTensorName('b', l), {p.hd}));
  }
  return p;
}

// Slabs in payload order: layer 0 K, layer 0 V, layer 1 K, layer 1 V, ...
// Each slab is [n_sink sink tokens in the block dtype | quantized residual
// of the other num_tokens - n_sink tokens].
struct Layout {
  SlabQuantizer q[2][2];  // [layer 0 or >= 1][kv]
  uint64_t sink = 0;      // Sink bytes at the start of every slab.
  uint64_t first = 0;     // Bytes of layer 0 (K + V).
  uint64_t rest = 0;      // Bytes of any later layer.
  uint64_t total = 0;
  const SlabQuantizer& quant(uint32_t l, int kv) const {
    return q[l == 0 ? 0 : 1][kv];
  }
  // Start of the slab (its sinks).
  uint64_t Offset(uint32_t l, int kv) const {
    const uint64_t base = l == 0 ? 0 : first + (l - 1) * rest;
    return base + (kv == 0 ? 0 : sink + quant(l, 0).Bytes());
  }
  // Start of the slab's quantized residuals.
  uint64_t QuantOffset(uint32_t l, int kv) const {
    return Offset(l, kv) + sink;
  }
};

Layout MakeLayout(const BlockShape& shape, const AquaParams& p) {
  Layout lay;
  lay.sink = uint64_t{p.n_sink} * shape.num_kv_heads * shape.head_dim *
             kvstore::DTypeSize(shape.dtype);
  for (int pos = 0; pos < 2; ++pos) {
    for (int kv = 0; kv < 2; ++kv) {
      SlabQuantizer& s = lay.q[pos][kv];
      s.tokens = shape.num_tokens - p.n_sink;
      s.heads = shape.num_kv_heads;
      s.head_dim = shape.head_dim;
      s.bits = pos == 0 ? p.l0_bits : (kv == 0 ? p.k_bits : p.v_bits);
      s.group = kv == 0 ? p.k_group : p.v_group;
      s.per_token = kv == 1 || (pos == 1 && p.keys_per_token);
    }
  }
  lay.first = 2 * lay.sink + lay.q[0][0].Bytes() + lay.q[0][1].Bytes();
  lay.rest = 2 * lay.sink + lay.q[1][0].Bytes() + lay.q[1][1].Bytes();
  lay.total = lay.first + (shape.num_layers - 1) * lay.rest;
  return lay;
}

// The layer walk: reconstructed K and V of the previous and current layer,
// one row (kv_heads*head_dim floats) per token being reconstructed.
struct Walk {
  uint32_t hd = 0;
  std::vector<float> prev_k, prev_v, k, v, in2, deq;

  void Init(uint32_t rows, uint32_t hd_) {
    hd = hd_;
    for (auto* b : {&prev_k, &prev_v, &k, &v}) b->assign(size_t{rows} * hd, 0);
    in2.assign(2 * size_t{hd}, 0);
    deq.assign(hd, 0);
  }
  float* Row(int kv, uint32_t r) { return &(kv == 0 ? k : v)[size_t{r} * hd]; }

  // The prediction x̂ of row r of layer l (kv 0: key, 1: value) into pred;
  // layer 0 predicts zero. For values, k must already hold row r of layer l.
  void PredictRow(const Predictors& w, uint32_t l, int kv, uint32_t r,
                  float* pred) {
    if (l == 0) {
      std::fill_n(pred, hd, 0.0f);
    } else if (kv == 0) {
      Predict(w.a_w[l]->data.data(), w.a_b[l]->data.data(),
              &prev_k[size_t{r} * hd], hd, hd, pred);
    } else {
      std::copy_n(&k[size_t{r} * hd], hd, in2.begin());
      std::copy_n(&prev_v[size_t{r} * hd], hd, in2.begin() + hd);
      Predict(w.b_w[l]->data.data(), w.b_b[l]->data.data(), in2.data(), 2 * hd,
              hd, pred);
    }
  }

  // Row r of (l, kv) := pred + dequant(residual of `token`), each sum
  // rounded in fp32. DATA_LOSS when the payload reconstructs a non-finite
  // value.
  absl::Status ReconstructRow(const SlabQuantizer& q,
                              absl::Span<const uint8_t> slab, uint32_t l,
                              int kv, uint32_t r, uint32_t token,
                              const float* pred) {
    STRATA_RETURN_IF_ERROR(q.DequantizeToken(slab, token, deq.data()));
    float* dst = Row(kv, r);
    for (uint32_t j = 0; j < hd; ++j) {
      dst[j] = pred[j] + deq[j];
      if (!std::isfinite(dst[j])) {
        return absl::DataLossError(absl::StrCat(
            "payload: layer ", l, " reconstructs to a non-finite value"));
      }
    }
    return absl::OkStatus();
  }

  // Row r of (l, kv) := sink token `token` stored in the block dtype at the
  // start of the slab. DATA_LOSS for a non-finite value.
  absl::Status LoadSinkRow(absl::Span<const uint8_t> slab, DType dtype,
                           uint32_t l, int kv, uint32_t r, uint32_t token) {
    const uint64_t dsize = kvstore::DTypeSize(dtype);
    float* dst = Row(kv, r);
    for (uint32_t j = 0; j < hd; ++j) {
      if (!LoadDtype(&slab[(uint64_t{token} * hd + j) * dsize], dtype,
                     &dst[j])) {
        return absl::DataLossError(absl::StrCat(
            "payload: sink token ", token, " of layer ", l, " is not finite"));
      }
    }
    return absl::OkStatus();
  }

  void NextLayer() {
    std::swap(prev_k, k);
    std::swap(prev_v, v);
  }
};

class AquaCodec final : public Codec {
 public:
  CodecId id() const override { return CodecId::kAqua; }
  const char* name() const override { return "aqua"; }
  bool needs_profile() const override { return true; }

  absl::Status ValidateParams(const BlockShape& shape,
                              const CodecParams& params) const override {
    STRATA_RETURN_IF_ERROR(shape.Validate());
    return AquaParams::FromBytes(params, shape).status();
  }

  absl::StatusOr<std::vector<uint8_t>> Encode(
      const KvTensor& kv, CodecParams& params,
      const CodecProfile* profile) const override {
    STRATA_RETURN_IF_ERROR(quant_internal::CheckKvValues(kv));
    const BlockShape& shape = kv.shape;
    STRATA_ASSIGN_OR_RETURN(AquaParams p, AquaParams::FromBytes(params, shape));
    STRATA_ASSIGN_OR_RETURN(Predictors w, LoadPredictors(profile, shape));
    p.profile_id = profile->id();
    const Layout lay = MakeLayout(shape, p);
    const uint32_t T = shape.num_tokens, S = p.n_sink, hd = w.hd;
    const uint64_t dsize = kvstore::DTypeSize(shape.dtype);
    std::vector<uint8_t> out(lay.total, 0);
    Walk walk;
    walk.Init(T, hd);
    std::vector<float> pred(size_t{T} * hd), residual(size_t{T} * hd);
    for (uint32_t l = 0; l < shape.num_layers; ++l) {
      for (int k = 0; k < 2; ++k) {
        const SlabQuantizer& q = lay.quant(l, k);
        uint8_t* sinks = out.data() + lay.Offset(l, k);
        uint8_t* slab = out.data() + lay.QuantOffset(l, k);
        // Sinks: stored in the dtype, reconstructed as the decoder sees them.
        const float* xs = kv.vec(k, l, 0, 0);
        for (uint64_t i = 0; i < uint64_t{S} * hd; ++i)
          StoreDtype(xs[i], shape.dtype, sinks + i * dsize);
        for (uint32_t t = 0; t < S; ++t) {
          STRATA_RETURN_IF_ERROR(walk.LoadSinkRow(
              absl::Span<const uint8_t>(sinks, lay.sink), shape.dtype, l, k,
              t, t));
        }
        // Other tokens: prediction + quantized residual (row t-S of the
        // quantizer holds token t).
        for (uint32_t t = S; t < T; ++t) {
          float* pt = &pred[size_t{t} * hd];
          walk.PredictRow(w, l, k, t, pt);
          const float* x = kv.vec(k, l, t, 0);
          for (uint32_t j = 0; j < hd; ++j)
            residual[size_t{t - S} * hd + j] = x[j] - pt[j];
        }
        STRATA_RETURN_IF_ERROR(q.Quantize(residual.data(), {}, slab));
        const absl::Span<const uint8_t> bytes(slab, q.Bytes());
        for (uint32_t t = S; t < T; ++t) {
          STRATA_RETURN_IF_ERROR(walk.ReconstructRow(q, bytes, l, k, t, t - S,
                                                     &pred[size_t{t} * hd]));
        }
      }
      walk.NextLayer();
    }
    params = p.ToBytes();
    return out;
  }

  absl::Status Decode(const BlockShape& shape, const CodecParams& params,
                      absl::Span<const uint8_t> payload,
                      const CodecProfile* profile,
                      const DecodeSelection& selection,
                      KvTensor* out) const override {
    STRATA_RETURN_IF_ERROR(shape.Validate());
    STRATA_ASSIGN_OR_RETURN(AquaParams p, AquaParams::FromBytes(params, shape));
    STRATA_ASSIGN_OR_RETURN(Predictors w, LoadPredictors(profile, shape));
    STRATA_RETURN_IF_ERROR(CheckProfileId(profile, p.profile_id));
    const Layout lay = MakeLayout(shape, p);
    if (payload.size() != lay.total) {
      return absl::DataLossError(absl::StrCat("payload: ", payload.size(),
                                              " bytes, shape and params need ",
                                              lay.total));
    }
    STRATA_ASSIGN_OR_RETURN(BlockShape sel, selection.Resolve(shape));
    KvTensor result = KvTensor::Zeros(sel);
    Walk walk;
    walk.Init(sel.num_tokens, w.hd);
    std::vector<float> pred(w.hd);
    const uint32_t layer_end = selection.layer_begin + sel.num_layers;
    for (uint32_t l = 0; l < layer_end; ++l) {
      for (int k = 0; k < 2; ++k) {
        const SlabQuantizer& q = lay.quant(l, k);
        const absl::Span<const uint8_t> sinks =
            payload.subspan(lay.Offset(l, k), lay.sink);
        const absl::Span<const uint8_t> slab =
            payload.subspan(lay.QuantOffset(l, k), q.Bytes());
        for (uint32_t r = 0; r < sel.num_tokens; ++r) {
          const uint32_t t = selection.Token(r);
          if (t < p.n_sink) {
            STRATA_RETURN_IF_ERROR(
                walk.LoadSinkRow(sinks, shape.dtype, l, k, r, t));
          } else {
            walk.PredictRow(w, l, k, r, pred.data());
            STRATA_RETURN_IF_ERROR(walk.ReconstructRow(q, slab, l, k, r,
                                                       t - p.n_sink,
                                                       pred.data()));
          }
          if (l < selection.layer_begin) continue;
          const float* src = walk.Row(k, r);
          float* dst = result.vec(k, l - selection.layer_begin, r, 0);
          for (uint32_t j = 0; j < w.hd; ++j) {
            dst[j] = RoundToDtype(src[j], shape.dtype);
          }
        }
      }
      walk.NextLayer();
    }
    *out = std::move(result);
    return absl::OkStatus();
  }
};

// ---- Calibration.

// Accumulates centered second moments of (x, y) rows in double.
struct RidgeFit {
  uint32_t in, out;
  double n = 0;
  std::vector<double> sx, sy, sxx, sxy;  // sxx [in][in] upper, sxy [in][out].

  RidgeFit(uint32_t in_, uint32_t out_)
      : in(in_),
        out(out_),
        sx(in_),
        sy(out_),
        sxx(size_t{in_} * in_),
        sxy(size_t{in_} * out_) {}

  void Add(const double* x, const float* y) {
    n += 1;
    for (uint32_t i = 0; i < in; ++i) {
      sx[i] += x[i];
      double* row = &sxx[size_t{i} * in];
      for (uint32_t j = i; j < in; ++j) row[j] += x[i] * x[j];
      double* xy = &sxy[size_t{i} * out];
      for (uint32_t o = 0; o < out; ++o) xy[o] += x[i] * y[o];
    }
    for (uint32_t o = 0; o < out; ++o) sy[o] += y[o];
  }

  // W [out][in] and bias [out], or INVALID_ARGUMENT for a singular system.
  absl::Status Solve(double lambda, std::vector<float>* w,
                     std::vector<float>* bias) const {
    std::vector<double> a(size_t{in} * in), b(size_t{in} * out);
    double trace = 0;
    for (uint32_t i = 0; i < in; ++i) {
      for (uint32_t j = i; j < in; ++j) {
        const double c = sxx[size_t{i} * in + j] - sx[i] * sx[j] / n;
        a[size_t{i} * in + j] = a[size_t{j} * in + i] = c;
      }
      trace += a[size_t{i} * in + i];
      for (uint32_t o = 0; o < out; ++o) {
        b[size_t{i} * out + o] = sxy[size_t{i} * out + o] - sx[i] * sy[o] / n;
      }
    }
    const double reg = lambda * std::max(trace / in, 1e-30);
    for (uint32_t i = 0; i < in; ++i) a[size_t{i} * in + i] += reg;
    // Cholesky a = L·Lᵀ in place (lower triangle).
    for (uint32_t j = 0; j < in; ++j) {
      double d = a[size_t{j} * in + j];
      for (uint32_t k = 0; k < j; ++k)
        d -= a[size_t{j} * in + k] * a[size_t{j} * in + k];
      if (!(d > 0)) {
        return absl::InvalidArgumentError(
            "ridge_lambda: the calibration Gram matrix is singular; use a "
            "positive ridge_lambda or more calibration tokens");
      }
      const double ljj = std::sqrt(d);
      a[size_t{j} * in + j] = ljj;
      for (uint32_t i = j + 1; i < in; ++i) {
        double s = a[size_t{i} * in + j];
        for (uint32_t k = 0; k < j; ++k)
          s -= a[size_t{i} * in + k] * a[size_t{j} * in + k];
        a[size_t{i} * in + j] = s / ljj;
      }
    }
    // Solve L·Lᵀ·X = b for X = Wᵀ [in][out], column by column.
    std::vector<double> col(in);
    w->assign(size_t{out} * in, 0);
    bias->assign(out, 0);
    for (uint32_t o = 0; o < out; ++o) {
      for (uint32_t i = 0; i < in; ++i) {
        double s = b[size_t{i} * out + o];
        for (uint32_t k = 0; k < i; ++k) s -= a[size_t{i} * in + k] * col[k];
        col[i] = s / a[size_t{i} * in + i];
      }
      for (uint32_t i = in; i-- > 0;) {
        double s = col[i];
        for (uint32_t k = i + 1; k < in; ++k)
          s -= a[size_t{k} * in + i] * col[k];
        col[i] = s / a[size_t{i} * in + i];
      }
      double intercept = sy[o] / n;
      for (uint32_t i = 0; i < in; ++i) {
        (*w)[size_t{o} * in + i] = static_cast<float>(col[i]);
        intercept -= col[i] * sx[i] / n;
      }
      (*bias)[o] = static_cast<float>(intercept);
    }
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<CodecProfile> FitAquaProfile(
    const std::vector<KvTensor>& calibration, float ridge_lambda,
    const std::string& model_id) {
  if (calibration.empty()) {
    return absl::InvalidArgumentError("calibration: no tensors");
  }
  if (!(ridge_lambda >= 0) || !std::isfinite(ridge_lambda)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ridge_lambda: ", ridge_lambda, " is not a finite value >= 0"));
  }
  const BlockShape& s0 = calibration[0].shape;
  for (size_t i = 0; i < calibration.size(); ++i) {
    const BlockShape& s = calibration[i].shape;
    if (auto st = quant_internal::CheckKvValues(calibration[i]); !st.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration: tensor ", i, ": ", st.message()));
    }
    if (s.num_layers != s0.num_layers || s.num_kv_heads != s0.num_kv_heads ||
        s.head_dim != s0.head_dim) {
      return absl::InvalidArgumentError(
          absl::StrCat("calibration: tensor ", i,
                       " has other layers/heads/head_dim than tensor 0"));
    }
  }
  const uint32_t L = s0.num_layers, hd = s0.num_kv_heads * s0.head_dim;
  CodecProfile profile(model_id);
  STRATA_RETURN_IF_ERROR(
      profile.Put("aqua.meta", {3},
                  {static_cast<float>(L), static_cast<float>(s0.num_kv_heads),
                   static_cast<float>(s0.head_dim)}));
  std::vector<double> x(2 * size_t{hd});
  std::vector<float> w, bias;
  for (uint32_t l = 1; l < L; ++l) {
    RidgeFit fk(hd, hd), fv(2 * hd, hd);
    for (const KvTensor& kv : calibration) {
      for (uint32_t t = 0; t < kv.shape.num_tokens; ++t) {
        const float* k_prev = kv.vec(0, l - 1, t, 0);
        const float* k_cur = kv.vec(0, l, t, 0);
        const float* v_prev = kv.vec(1, l - 1, t, 0);
        std::copy_n(k_prev, hd, x.begin());
        fk.Add(x.data(), k_cur);
        std::copy_n(k_cur, hd, x.begin());
        std::copy_n(v_prev, hd, x.begin() + hd);
        fv.Add(x.data(), kv.vec(1, l, t, 0));
      }
    }
    STRATA_RETURN_IF_ERROR(fk.Solve(ridge_lambda, &w, &bias));
    STRATA_RETURN_IF_ERROR(profile.Put(AquaTensorName('A', l), {hd, hd}, w));
    STRATA_RETURN_IF_ERROR(profile.Put(AquaTensorName('a', l), {hd}, bias));
    STRATA_RETURN_IF_ERROR(fv.Solve(ridge_lambda, &w, &bias));
    STRATA_RETURN_IF_ERROR(
        profile.Put(AquaTensorName('B', l), {hd, 2 * hd}, w));
    STRATA_RETURN_IF_ERROR(profile.Put(AquaTensorName('b', l), {hd}, bias));
  }
  return profile;
}

namespace internal {
const Codec* AquaCodecInstance() {
  static const AquaCodec* const codec = new AquaCodec();
  return codec;
}
}  // namespace internal
}  // namespace strata::codecs
