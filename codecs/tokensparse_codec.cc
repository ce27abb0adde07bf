// The tokensparse codec: BUZZ segmented heavy hitters + an optional
// LESS-style random-feature summary. Layout:
// docs/codecs/tokensparse_cluster.md.
#include "codecs/tokensparse_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "codecs/internal/kmeans.h"
#include "codecs/internal/registry.h"
#include "common/little_endian.h"
#include "common/status_macros.h"

namespace strata::codecs {
namespace {

constexpr uint8_t kVersion = 1;
constexpr uint8_t kFlagSummary = 1;
constexpr uint8_t kFlagProxyHighNorm = 2;
constexpr uint8_t kKnownFlags = kFlagSummary | kFlagProxyHighNorm;


// Everything the payload size and the kept set depend on.
struct Geometry {
  uint32_t layers = 0, tokens = 0, heads = 0, dim = 0;
  uint32_t sinks = 0, window = 0, mid = 0, stride = 1, segments = 0;
  uint32_t kept = 0, dropped = 0, rank = 0;
  bool summary = false;  // A summary section exists (flag set and dropped > 0).
  size_t positions_bytes() const { return size_t{2} * heads * kept; }
  size_t kv_bytes() const { return size_t{2} * heads * kept * dim; }  // K or V.
  size_t summary_head_bytes() const {
    return 4 + size_t{4} * rank + size_t{2} * dim + size_t{2} * rank * dim;
  }
  size_t layer_bytes() const {
    return positions_bytes() + 2 * kv_bytes() +
           (summary ? heads * summary_head_bytes() : 0);
  }
};

// The stride the block uses: params.stride, or the smallest stride whose
// kept count fits budget_fraction.
absl::StatusOr<uint32_t> ResolveStride(const BlockShape& shape,
                                       const TokenSparseParams& p) {
  const uint32_t t = shape.num_tokens;
  const uint32_t sinks = std::min<uint32_t>(p.n_sink, t);
  const uint32_t window = std::min<uint32_t>(p.window, t - sinks);
  const uint32_t mid = t - sinks - window;
  if (p.stride != 0) return p.stride;
  const uint32_t bp =
      static_cast<uint32_t>(std::lround(p.budget_fraction * 10000));
  if (bp == 0) {
    return absl::InvalidArgumentError(
        "budget_fraction: 0 with stride 0 (set one of them)");
  }
  if (mid == 0) return 1u;
  const uint64_t target = (uint64_t{bp} * t + 5000) / 10000;
  if (target < uint64_t{sinks} + window + 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "budget_fraction: keeps ", target, " of ", t,
        " tokens, fewer than n_sink + window + 1 = ", sinks + window + 1));
  }
  const uint64_t slots = target - sinks - window;
  const uint64_t stride = (mid + slots - 1) / slots;
  if (stride > UINT16_MAX) {
    return absl::InvalidArgumentError(
        "budget_fraction: needs a stride above 65535");
  }
  return static_cast<uint32_t>(stride);
}

Geometry MakeGeometry(const BlockShape& shape, const TokenSparseParams& p,
                      uint32_t stride) {
  Geometry g;
  g.layers = shape.num_layers;
  g.tokens = shape.num_tokens;
  g.heads = shape.num_kv_heads;
  g.dim = shape.head_dim;
  g.sinks = std::min<uint32_t>(p.n_sink, g.tokens);
  g.window = std::min<uint32_t>(p.window, g.tokens - g.sinks);
  g.mid = g.tokens - g.sinks - g.window;
  g.stride = stride;
  g.segments = (g.mid + stride - 1) / stride;
  g.kept = g.sinks + g.segments + g.window;
  g.dropped = g.tokens - g.kept;
  g.rank = p.summary_rank;
  g.summary = p.summary && g.dropped > 0;
  return g;
}

// Orthogonal random features (Performer FAVOR+): blocks of d orthonormal
// Gaussian directions (Gram–Schmidt), each row scaled by the norm of an
// independent Gaussian d-vector, all from SplitMix64(seed).
std::vector<float> FeatureMatrix(uint32_t rank, uint32_t dim, uint32_t seed) {
  internal::SplitMix64 rng(0x4C455353ull << 32 | seed);  // "LESS" | seed.
  std::vector<float> w(static_cast<size_t>(rank) * dim);
  std::vector<double> block(static_cast<size_t>(dim) * dim);
  for (uint32_t base = 0; base < rank; base += dim) {
    const uint32_t rows = std::min(dim, rank - base);
    for (double& x : block) x = rng.Gaussian();
    for (uint32_t i = 0; i < rows; ++i) {
      double* ri = &block[static_cast<size_t>(i) * dim];
      for (uint32_t j = 0; j < i; ++j) {
        const double* rj = &block[static_cast<size_t>(j) * dim];
        double dot = 0;
        for (uint32_t t = 0; t < dim; ++t) dot += ri[t] * rj[t];
        for (uint32_t t = 0; t < dim; ++t) ri[t] -= dot * rj[t];
      }
      double norm = 0;
      for (uint32_t t = 0; t < dim; ++t) norm += ri[t] * ri[t];
      norm = std::sqrt(norm);
      for (uint32_t t = 0; t < dim; ++t) ri[t] /= norm;
    }
    for (uint32_t i = 0; i < rows; ++i) {
      double chi = 0;
      for (uint32_t t = 0; t < dim; ++t) {
        const double g = rng.Gaussian();
        chi += g * g;
      }
      chi = std::sqrt(chi);
      for (uint32_t t = 0; t < dim; ++t) {
        w[static_cast<size_t>(base + i) * dim + t] =
            static_cast<float>(block[static_cast<size_t>(i) * dim + t] * chi);
      }
    }
  }
  return w;
}

double Dot(const float* a, const float* b, uint32_t dim) {
  double s = 0;
  for (uint32_t i = 0; i < dim; ++i) s += static_cast<double>(a[i]) * b[i];
  return s;
}

float RoundHalf(float x) { return HalfToFloat(FloatToHalf(x)); }

// The kept positions of one (layer, head), by importance imp[t].
void SelectKept(const Geometry& g, const float* imp, size_t imp_stride,
                std::vector<uint32_t>& kept) {
  kept.clear();
  for (uint32_t t = 0; t < g.sinks; ++t) kept.push_back(t);
  for (uint32_t s = 0; s < g.segments; ++s) {
    const uint32_t begin = g.sinks + s * g.stride;
    const uint32_t end = std::min(begin + g.stride, g.sinks + g.mid);
    uint32_t best = begin;
    for (uint32_t t = begin + 1; t < end; ++t) {
      if (imp[t * imp_stride] > imp[best * imp_stride]) best = t;
    }
    kept.push_back(best);
  }
  for (uint32_t t = g.tokens - g.window; t < g.tokens; ++t) kept.push_back(t);
}

// Appends the summary of one (layer, head)'s dropped tokens. INVALID_ARGUMENT
// when non-finite input makes it non-finite (the decoder would refuse it).
absl::Status AppendSummary(const KvTensor& kv, const Geometry& g,
                           uint32_t layer, uint32_t head,
                           const std::vector<uint32_t>& kept,
                           const std::vector<float>& w,
                           std::vector<uint8_t>& out) {
  const uint32_t d = g.dim, r = g.rank;
  std::vector<uint32_t> dropped;
  for (uint32_t t = 0, i = 0; t < g.tokens; ++t) {
    if (i < kept.size() && kept[i] == t) {
      ++i;
    } else {
      dropped.push_back(t);
    }
  }
  std::vector<double> mean(d, 0);
  for (uint32_t t : dropped) {
    const float* k = kv.vec(0, layer, t, head);
    for (uint32_t i = 0; i < d; ++i) mean[i] += k[i];
  }
  std::vector<float> key_mean(d);
  for (uint32_t i = 0; i < d; ++i)
    key_mean[i] = RoundHalf(static_cast<float>(mean[i] / dropped.size()));
  // alpha^2 = rms|k - key_mean| over D / rms|k| over the block (docs).
  double res2 = 0, all2 = 0;
  for (uint32_t t : dropped) {
    const float* k = kv.vec(0, layer, t, head);
    for (uint32_t i = 0; i < d; ++i)
      res2 += (k[i] - key_mean[i]) * double(k[i] - key_mean[i]);
  }
  for (uint32_t t = 0; t < g.tokens; ++t) {
    all2 += Dot(kv.vec(0, layer, t, head), kv.vec(0, layer, t, head), d);
  }
  float alpha = 1;
  if (res2 > 0 && all2 > 0) {
    alpha = static_cast<float>(std::sqrt(std::sqrt(res2 / dropped.size()) /
                                         std::sqrt(all2 / g.tokens)));
  }
  const double scale = 1.0 / (alpha * std::pow(static_cast<double>(d), 0.25));
  // log psi_i(y_j) without the 1/sqrt(r), per token and feature.
  std::vector<double> logpsi(dropped.size() * r);
  std::vector<float> y(d);
  for (size_t j = 0; j < dropped.size(); ++j) {
    const float* k = kv.vec(0, layer, dropped[j], head);
    for (uint32_t i = 0; i < d; ++i)
      y[i] = static_cast<float>((k[i] - key_mean[i]) * scale);
    const double half_norm = 0.5 * Dot(y.data(), y.data(), d);
    for (uint32_t i = 0; i < r; ++i) {
      logpsi[j * r + i] =
          Dot(&w[static_cast<size_t>(i) * d], y.data(), d) - half_norm;
    }
  }
  AppendLE<float>(out, alpha);
  std::vector<float> value_mean(static_cast<size_t>(r) * d);
  for (uint32_t i = 0; i < r; ++i) {
    double m = -INFINITY;
    for (size_t j = 0; j < dropped.size(); ++j)
      m = std::max(m, logpsi[j * r + i]);
    double z = 0;
    std::vector<double> acc(d, 0);
    for (size_t j = 0; j < dropped.size(); ++j) {
      const double e = std::exp(logpsi[j * r + i] - m);
      z += e;
      const float* v = kv.vec(1, layer, dropped[j], head);
      for (uint32_t t = 0; t < d; ++t) acc[t] += e * v[t];
    }
    AppendLE<float>(out,
               static_cast<float>(m + std::log(z) - 0.5 * std::log(double(r))));
    for (uint32_t t = 0; t < d; ++t)
      value_mean[static_cast<size_t>(i) * d + t] =
          static_cast<float>(acc[t] / z);
  }
  bool finite = std::isfinite(alpha) && alpha > 0;
  for (float x : key_mean) {
    AppendLE<uint16_t>(out, FloatToHalf(x));
    finite &= std::isfinite(RoundHalf(x));
  }
  for (float x : value_mean) {
    AppendLE<uint16_t>(out, FloatToHalf(x));
    finite &= std::isfinite(RoundHalf(x));
  }
  const size_t log_z_at = out.size() - size_t{2} * d * (r + 1) - 4 * r;
  for (uint32_t i = 0; i < r; ++i) {
    finite &= std::isfinite(LoadLE<float>(&out[log_z_at + 4 * i]));
  }
  if (!finite) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv: layer ", layer, " head ", head,
        " has values that make the summary non-finite (beyond fp16?)"));
  }
  return absl::OkStatus();
}

// imp: [layers][tokens][heads] importance.
absl::StatusOr<std::vector<uint8_t>> EncodePayload(
    const KvTensor& kv, const Geometry& g, const TokenSparseParams& p,
    const std::vector<float>& imp) {
  std::vector<uint8_t> out;
  out.reserve(g.layer_bytes() * g.layers);
  const std::vector<float> w =
      g.summary ? FeatureMatrix(g.rank, g.dim, p.summary_seed)
                : std::vector<float>();
  std::vector<std::vector<uint32_t>> kept(g.heads);
  for (uint32_t l = 0; l < g.layers; ++l) {
    for (uint32_t h = 0; h < g.heads; ++h) {
      SelectKept(g, &imp[static_cast<size_t>(l) * g.tokens * g.heads + h],
                 g.heads, kept[h]);
      for (uint32_t t : kept[h]) AppendLE<uint16_t>(out, static_cast<uint16_t>(t));
    }
    for (int which = 0; which < 2; ++which) {
      for (uint32_t h = 0; h < g.heads; ++h) {
        for (uint32_t t : kept[h]) {
          const float* x = kv.vec(which, l, t, h);
          for (uint32_t i = 0; i < g.dim; ++i)
            AppendLE<uint16_t>(out, FloatToHalf(x[i]));
        }
      }
    }
    if (g.summary) {
      for (uint32_t h = 0; h < g.heads; ++h) {
        STRATA_RETURN_IF_ERROR(AppendSummary(kv, g, l, h, kept[h], w, out));
      }
    }
  }
  return out;
}

absl::Status CheckKv(const KvTensor& kv) {
  STRATA_RETURN_IF_ERROR(kv.shape.Validate());
  if (kv.data.size() != kv.shape.ElementCount()) {
    return absl::InvalidArgumentError(absl::StrCat("kv: ", kv.data.size(),
                                                   " values, shape needs ",
                                                   kv.shape.ElementCount()));
  }
  return absl::OkStatus();
}

// Parsed params + geometry of a stored block; DATA_LOSS for bad ones.
absl::StatusOr<std::pair<TokenSparseParams, Geometry>> ReadLayout(
    const BlockShape& shape, const CodecParams& bytes, size_t payload_size) {
  auto p = TokenSparseParams::FromBytes(bytes);
  if (!p.ok())
    return absl::DataLossError(
        absl::StrCat("codec_params: ", p.status().message()));
  if (p->stride == 0) return absl::DataLossError("codec_params: stride is 0");
  const Geometry g = MakeGeometry(shape, *p, p->stride);
  if (payload_size != g.layer_bytes() * g.layers) {
    return absl::DataLossError(absl::StrCat("payload: ", payload_size,
                                            " bytes, params and shape need ",
                                            g.layer_bytes() * g.layers));
  }
  return std::make_pair(*p, g);
}

// A verified view of one layer: positions checked against the geometry.
struct LayerView {
  const uint8_t* positions;
  const uint8_t* keys;
  const uint8_t* values;
  const uint8_t* summaries;  // Null without a summary.
};

absl::StatusOr<LayerView> ViewLayer(const Geometry& g,
                                    absl::Span<const uint8_t> payload,
                                    uint32_t layer) {
  const uint8_t* base = payload.data() + g.layer_bytes() * layer;
  LayerView v{
      base, base + g.positions_bytes(),
      base + g.positions_bytes() + g.kv_bytes(),
      g.summary ? base + g.positions_bytes() + 2 * g.kv_bytes() : nullptr};
  for (uint32_t h = 0; h < g.heads; ++h) {
    for (uint32_t i = 0; i < g.kept; ++i) {
      const uint32_t pos =
          LoadLE<uint16_t>(v.positions + 2 * (size_t{h} * g.kept + i));
      uint32_t lo, hi;  // The range entry i must lie in.
      if (i < g.sinks) {
        lo = hi = i;
      } else if (i < g.sinks + g.segments) {
        lo = g.sinks + (i - g.sinks) * g.stride;
        hi = std::min(lo + g.stride, g.sinks + g.mid) - 1;
      } else {
        lo = hi = g.tokens - g.kept + i;
      }
      if (pos < lo || pos > hi) {
        return absl::DataLossError(
            absl::StrCat("positions: layer ", layer, " head ", h, " entry ", i,
                         " is ", pos, ", outside [", lo, ", ", hi, "]"));
      }
    }
  }
  return v;
}

absl::StatusOr<LessSummary> ReadSummary(const Geometry& g, const uint8_t* p,
                                        const std::vector<float>& w) {
  LessSummary s;
  s.rank = g.rank;
  s.head_dim = g.dim;
  s.dropped = g.dropped;
  s.features = w;
  s.alpha = LoadLE<float>(p);
  p += 4;
  bool finite = std::isfinite(s.alpha) && s.alpha > 0;
  s.log_z.resize(g.rank);
  for (float& x : s.log_z) {
    x = LoadLE<float>(p);
    p += 4;
    finite &= std::isfinite(x);
  }
  s.key_mean.resize(g.dim);
  for (float& x : s.key_mean) {
    x = HalfToFloat(LoadLE<uint16_t>(p));
    p += 2;
    finite &= std::isfinite(x);
  }
  s.value_mean.resize(size_t{g.rank} * g.dim);
  for (float& x : s.value_mean) {
    x = HalfToFloat(LoadLE<uint16_t>(p));
    p += 2;
    finite &= std::isfinite(x);
  }
  if (!finite)
    return absl::DataLossError("summary: a non-finite or non-positive value");
  return s;
}

class TokenSparseCodec final : public Codec {
 public:
  CodecId id() const override { return CodecId::kTokenSparse; }
  const char* name() const override { return "tokensparse"; }

  absl::Status ValidateParams(const BlockShape& shape,
                              const CodecParams& params) const override {
    STRATA_ASSIGN_OR_RETURN(TokenSparseParams p,
                            TokenSparseParams::FromBytes(params));
    return ResolveStride(shape, p).status();
  }

  absl::StatusOr<std::vector<uint8_t>> Encode(
      const KvTensor& kv, CodecParams& params,
      const CodecProfile*) const override {
    STRATA_RETURN_IF_ERROR(CheckKv(kv));
    STRATA_ASSIGN_OR_RETURN(TokenSparseParams p,
                            TokenSparseParams::FromBytes(params));
    STRATA_ASSIGN_OR_RETURN(const uint32_t stride, ResolveStride(kv.shape, p));
    p.stride = static_cast<uint16_t>(stride);
    const Geometry g = MakeGeometry(kv.shape, p, stride);
    std::vector<float> imp(size_t{g.layers} * g.tokens * g.heads);
    const float sign = p.proxy_high_norm ? 1.0f : -1.0f;
    for (uint32_t l = 0; l < g.layers; ++l) {
      for (uint32_t t = 0; t < g.tokens; ++t) {
        for (uint32_t h = 0; h < g.heads; ++h) {
          const float* k = kv.vec(0, l, t, h);
          imp[(size_t{l} * g.tokens + t) * g.heads + h] =
              sign * static_cast<float>(std::sqrt(Dot(k, k, g.dim)));
        }
      }
    }
    params = p.ToBytes();
    return EncodePayload(kv, g, p, imp);
  }

  absl::Status Decode(const BlockShape& shape, const CodecParams& params,
                      absl::Span<const uint8_t> payload, const CodecProfile*,
                      const DecodeSelection& selection,
                      KvTensor* out) const override {
    STRATA_ASSIGN_OR_RETURN(BlockShape sel, selection.Resolve(shape));
    STRATA_ASSIGN_OR_RETURN(auto layout,
                            ReadLayout(shape, params, payload.size()));
    const Geometry& g = layout.second;
    *out = KvTensor::Zeros(sel);
    for (uint32_t l = 0; l < sel.num_layers; ++l) {
      STRATA_ASSIGN_OR_RETURN(LayerView v,
                              ViewLayer(g, payload, selection.layer_begin + l));
      for (uint32_t h = 0; h < g.heads; ++h) {
        const uint8_t* pos = v.positions + 2 * size_t{h} * g.kept;
        for (uint32_t t = 0; t < sel.num_tokens; ++t) {
          const uint32_t token = selection.Token(t);
          // Positions are strictly increasing (ViewLayer): binary search.
          uint32_t lo = 0, hi = g.kept;
          while (lo < hi) {
            const uint32_t m = (lo + hi) / 2;
            if (LoadLE<uint16_t>(pos + 2 * m) < token)
              lo = m + 1;
            else
              hi = m;
          }
          if (lo == g.kept || LoadLE<uint16_t>(pos + 2 * lo) != token) continue;
          const size_t off = 2 * (size_t{h} * g.kept + lo) * g.dim;
          for (uint32_t i = 0; i < g.dim; ++i) {
            out->at(0, l, t, h, i) =
                HalfToFloat(LoadLE<uint16_t>(v.keys + off + 2 * i));
            out->at(1, l, t, h, i) =
                HalfToFloat(LoadLE<uint16_t>(v.values + off + 2 * i));
          }
        }
      }
    }
    return absl::OkStatus();
  }
};

}  // namespace

CodecParams TokenSparseParams::ToBytes() const {
  CodecParams b{};
  b[0] = kVersion;
  b[1] =
      (summary ? kFlagSummary : 0) | (proxy_high_norm ? kFlagProxyHighNorm : 0);
  std::memcpy(&b[2], &n_sink, 2);
  std::memcpy(&b[4], &window, 2);
  std::memcpy(&b[6], &stride, 2);
  const float f = std::isfinite(budget_fraction) ? budget_fraction : 0.0f;
  const uint16_t bp =
      static_cast<uint16_t>(std::lround(std::clamp(f, 0.0f, 1.0f) * 10000));
  std::memcpy(&b[8], &bp, 2);
  b[10] = summary ? summary_rank : 0;
  std::memcpy(&b[12], &summary_seed, 4);
  return b;
}

absl::StatusOr<TokenSparseParams> TokenSparseParams::FromBytes(
    const CodecParams& b) {
  if (b[0] != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("version: ", b[0], ", this build reads 1"));
  }
  if (b[1] & ~kKnownFlags) {
    return absl::InvalidArgumentError(
        absl::StrCat("flags: unknown bits in ", b[1]));
  }
  if (b[11] != 0 ||
      std::any_of(b.begin() + 16, b.end(), [](uint8_t x) { return x != 0; })) {
    return absl::InvalidArgumentError(
        "codec_params: reserved bytes are not zero");
  }
  TokenSparseParams p;
  p.summary = b[1] & kFlagSummary;
  p.proxy_high_norm = b[1] & kFlagProxyHighNorm;
  std::memcpy(&p.n_sink, &b[2], 2);
  std::memcpy(&p.window, &b[4], 2);
  std::memcpy(&p.stride, &b[6], 2);
  const uint16_t bp = LoadLE<uint16_t>(&b[8]);
  if (bp > 10000) {
    return absl::InvalidArgumentError(
        absl::StrCat("budget_fraction: ", bp, "/10000 above 1"));
  }
  p.budget_fraction = bp / 10000.0f;
  p.summary_rank = b[10];
  if (p.summary ? p.summary_rank == 0 : p.summary_rank != 0) {
    return absl::InvalidArgumentError(
        "summary_rank: must be 1..255 with a summary and 0 without");
  }
  if (!p.summary) p.summary_rank = TokenSparseParams{}.summary_rank;
  std::memcpy(&p.summary_seed, &b[12], 4);
  return p;
}

absl::StatusOr<std::vector<uint8_t>> EncodeTokenSparse(
    const KvTensor& kv, const TokenSparseParams& params,
    absl::Span<const float> scores) {
  STRATA_RETURN_IF_ERROR(CheckKv(kv));
  const CodecParams bytes = params.ToBytes();
  STRATA_ASSIGN_OR_RETURN(TokenSparseParams p,
                          TokenSparseParams::FromBytes(bytes));
  if (scores.empty()) return EncodeKvBlock(kv, CodecId::kTokenSparse, bytes);
  STRATA_ASSIGN_OR_RETURN(const uint32_t stride, ResolveStride(kv.shape, p));
  p.stride = static_cast<uint16_t>(stride);
  const Geometry g = MakeGeometry(kv.shape, p, stride);
  const size_t per_token = size_t{g.layers} * g.tokens;
  const size_t per_head = per_token * g.heads;
  if (scores.size() != per_head && scores.size() != per_token) {
    return absl::InvalidArgumentError(absl::StrCat(
        "scores: ", scores.size(), " values, need ", per_head,
        " ([layers][tokens][kv_heads]) or ", per_token, " ([layers][tokens])"));
  }
  std::vector<float> imp(per_head);
  for (size_t i = 0; i < per_head; ++i) {
    imp[i] = scores.size() == per_head ? scores[i] : scores[i / g.heads];
    if (std::isnan(imp[i])) return absl::InvalidArgumentError("scores: NaN");
  }
  STRATA_ASSIGN_OR_RETURN(std::vector<uint8_t> payload,
                          EncodePayload(kv, g, p, imp));
  return kvstore::EncodeBlock(kv.shape, CodecId::kTokenSparse, p.ToBytes(),
                              payload);
}

absl::StatusOr<TokenSparseLayer> DecodeKept(absl::Span<const uint8_t> block,
                                            uint32_t layer) {
  STRATA_ASSIGN_OR_RETURN(kvstore::BlockView view, kvstore::ParseBlock(block));
  if (view.header.codec != CodecId::kTokenSparse) {
    return absl::InvalidArgumentError(
        absl::StrCat("block: codec ", static_cast<int>(view.header.codec),
                     " is not tokensparse"));
  }
  const BlockShape& shape = view.header.shape;
  if (layer >= shape.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: ", layer, " of ", shape.num_layers));
  }
  STRATA_ASSIGN_OR_RETURN(
      auto layout,
      ReadLayout(shape, view.header.codec_params, view.payload.size()));
  const Geometry& g = layout.second;
  STRATA_ASSIGN_OR_RETURN(LayerView v, ViewLayer(g, view.payload, layer));
  TokenSparseLayer out;
  out.num_kv_heads = g.heads;
  out.head_dim = g.dim;
  out.kept_per_head = g.kept;
  out.positions.resize(size_t{g.heads} * g.kept);
  for (size_t i = 0; i < out.positions.size(); ++i)
    out.positions[i] = LoadLE<uint16_t>(v.positions + 2 * i);
  out.keys.resize(size_t{g.heads} * g.kept * g.dim);
  out.values.resize(out.keys.size());
  for (size_t i = 0; i < out.keys.size(); ++i) {
    out.keys[i] = HalfToFloat(LoadLE<uint16_t>(v.keys + 2 * i));
    out.values[i] = HalfToFloat(LoadLE<uint16_t>(v.values + 2 * i));
  }
  if (g.summary) {
    const std::vector<float> w =
        FeatureMatrix(g.rank, g.dim, layout.first.summary_seed);
    for (uint32_t h = 0; h < g.heads; ++h) {
      STRATA_ASSIGN_OR_RETURN(
          LessSummary s,
          ReadSummary(g, v.summaries + h * g.summary_head_bytes(), w));
      out.summaries.push_back(std::move(s));
    }
  }
  return out;
}

absl::StatusOr<std::vector<float>> AttendWithSummary(
    absl::Span<const float> query, absl::Span<const float> keys,
    absl::Span<const float> values, uint32_t head_dim,
    const LessSummary* summary) {
  const uint32_t d = head_dim;
  if (d == 0 || query.size() != d) {
    return absl::InvalidArgumentError(
        absl::StrCat("query: ", query.size(), " values, head_dim ", d));
  }
  if (keys.size() % d != 0 || values.size() != keys.size()) {
    return absl::InvalidArgumentError(
        "keys: keys and values must both be [n][head_dim]");
  }
  const size_t n = keys.size() / d;
  const bool use_summary = summary != nullptr && summary->dropped > 0;
  if (use_summary) {
    const LessSummary& s = *summary;
    if (s.head_dim != d || s.features.size() != size_t{s.rank} * d ||
        s.key_mean.size() != d || s.log_z.size() != s.rank ||
        s.value_mean.size() != size_t{s.rank} * d || s.rank == 0) {
      return absl::InvalidArgumentError(
          "summary: sizes disagree with rank and head_dim");
    }
  }
  if (n == 0 && !use_summary)
    return absl::InvalidArgumentError("keys: nothing to attend to");
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  // Log-weights: kept tokens first, then the summary's features.
  std::vector<double> logw(n);
  for (size_t j = 0; j < n; ++j)
    logw[j] = Dot(query.data(), &keys[j * d], d) * inv_sqrt_d;
  if (use_summary) {
    const LessSummary& s = *summary;
    const double scale = s.alpha / std::pow(static_cast<double>(d), 0.25);
    std::vector<float> x(d);
    for (uint32_t i = 0; i < d; ++i)
      x[i] = static_cast<float>(query[i] * scale);
    const double base = Dot(query.data(), s.key_mean.data(), d) * inv_sqrt_d -
                        0.5 * Dot(x.data(), x.data(), d) -
                        0.5 * std::log(double(s.rank));
    for (uint32_t i = 0; i < s.rank; ++i) {
      logw.push_back(base + Dot(&s.features[size_t{i} * d], x.data(), d) +
                     s.log_z[i]);
    }
  }
  const double m = *std::max_element(logw.begin(), logw.end());
  std::vector<double> acc(d, 0);
  double den = 0;
  for (size_t j = 0; j < logw.size(); ++j) {
    const double e = std::exp(logw[j] - m);
    den += e;
    const float* v = j < n ? &values[j * d] : &summary->value_mean[(j - n) * d];
    for (uint32_t i = 0; i < d; ++i) acc[i] += e * v[i];
  }
  std::vector<float> out(d);
  for (uint32_t i = 0; i < d; ++i) out[i] = static_cast<float>(acc[i] / den);
  return out;
}

namespace internal {
const Codec* TokenSparseCodecInstance() {
  static const TokenSparseCodec codec;
  return &codec;
}
}  // namespace internal

}  // namespace strata::codecs
