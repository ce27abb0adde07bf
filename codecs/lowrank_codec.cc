// The lowrank (PCA) codec and its profile builder.
// Layouts: docs/codecs/sparse_lowrank.md.
#include "codecs/lowrank_codec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "codecs/internal/bytes.h"
#include "codecs/internal/linalg.h"
#include "codecs/internal/registry.h"
#include "common/status_macros.h"

namespace strata::codecs {
namespace {

constexpr const char* kMeanTensor[2] = {"pca.k.mean", "pca.v.mean"};
constexpr const char* kBasisTensor[2] = {"pca.k.basis", "pca.v.basis"};
constexpr const char* kStddevTensor[2] = {"pca.k.stddev", "pca.v.stddev"};
constexpr float kHalfMax = 65504.0f;

using internal::AllFinite;
using internal::LoadU16;
using internal::StoreU16;

// The largest fp16 <= v and the smallest fp16 >= v (v finite, |v| <= 65504).
uint16_t HalfAtMost(float v) {
  uint16_t h = FloatToHalf(v);
  if (HalfToFloat(h) > v) h = (h == 0) ? 0x8001 : (h & 0x8000) ? h + 1 : h - 1;
  return h;
}
uint16_t HalfAtLeast(float v) {  // v >= 0.
  uint16_t h = FloatToHalf(v);
  if (HalfToFloat(h) < v) h = h + 1;
  return h;
}

int Bits(LatentFormat f) { return f == LatentFormat::kInt8 ? 8 : 4; }

size_t RecordBytes(LatentFormat f, uint32_t r) {
  switch (f) {
    case LatentFormat::kFloat16:
      return 2 * size_t{r};
    case LatentFormat::kInt8:
      return 4 + size_t{r};
    case LatentFormat::kInt4:
      return 4 + (size_t{r} + 1) / 2;
  }
  return 0;
}

// The profile's PCA tensors of one half (K or V), checked against a shape.
struct Pca {
  const float* mean = nullptr;    // [L][H][d]
  const float* basis = nullptr;   // [L][H][d][r_max]
  const float* stddev = nullptr;  // [L][H][r_max]
  uint32_t r_max = 0;
};

absl::StatusOr<Pca> LoadPca(const CodecProfile& profile,
                            const BlockShape& shape, int kv, uint32_t rank) {
  const uint32_t L = shape.num_layers, H = shape.num_kv_heads,
                 d = shape.head_dim;
  STRATA_ASSIGN_OR_RETURN(const ProfileTensor* mean,
                          profile.Require(kMeanTensor[kv], {L, H, d}));
  const ProfileTensor* basis = profile.Find(kBasisTensor[kv]);
  if (basis == nullptr || basis->dims.size() != 4 || basis->dims[0] != L ||
      basis->dims[1] != H || basis->dims[2] != d) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: \"", profile.model_id(), "\" has no tensor \"",
        kBasisTensor[kv], "\" of dims [", L, ", ", H, ", ", d, ", r_max]"));
  }
  Pca pca;
  pca.r_max = basis->dims[3];
  if (rank > pca.r_max) {
    return absl::FailedPreconditionError(
        absl::StrCat("profile: ", kBasisTensor[kv], " has ", pca.r_max,
                     " components, the params ask for rank ", rank));
  }
  STRATA_ASSIGN_OR_RETURN(
      const ProfileTensor* stddev,
      profile.Require(kStddevTensor[kv], {L, H, pca.r_max}));
  if (!AllFinite(mean->data) || !AllFinite(basis->data) ||
      !AllFinite(stddev->data)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "profile: PCA tensors of ", kv == 0 ? "K" : "V", " are not finite"));
  }
  pca.mean = mean->data.data();
  pca.basis = basis->data.data();
  pca.stddev = stddev->data.data();
  return pca;
}

// Per-half record geometry.
struct Half {
  Pca pca;
  uint32_t rank = 0;
  size_t record = 0;
  uint64_t offset = 0;  // Of the half's first record.
};

absl::Status LoadHalves(const CodecProfile* profile, const BlockShape& shape,
                        const LowRankParams& p, Half halves[2]) {
  if (profile == nullptr) {
    return absl::FailedPreconditionError(
        "profile: the lowrank codec needs a profile (FitLowRankProfile)");
  }
  const uint64_t vectors =
      uint64_t{shape.num_layers} * shape.num_tokens * shape.num_kv_heads;
  for (int kv = 0; kv < 2; ++kv) {
    halves[kv].rank = kv == 0 ? p.rank_k : p.rank_v;
    STRATA_ASSIGN_OR_RETURN(halves[kv].pca,
                            LoadPca(*profile, shape, kv, halves[kv].rank));
    halves[kv].record = RecordBytes(p.format, halves[kv].rank);
  }
  halves[1].offset = vectors * halves[0].record;
  return absl::OkStatus();
}

uint64_t PayloadBytes(const BlockShape& shape, const Half halves[2]) {
  return halves[1].offset + uint64_t{shape.num_layers} * shape.num_tokens *
                                shape.num_kv_heads * halves[1].record;
}

// Scale applied to latent j before quantization (whiten) or 1.
float LatentScale(const LowRankParams& p, const float* stddev, uint32_t j) {
  if ((p.flags & LowRankParams::kFlagWhiten) == 0) return 1.0f;
  return stddev[j] > 0 ? stddev[j] : 1.0f;
}

void EncodeRecord(const LowRankParams& p, const float* z, const float* stddev,
                  uint32_t r, uint8_t* rec) {
  if (p.format == LatentFormat::kFloat16) {
    for (uint32_t j = 0; j < r; ++j) {
      StoreU16(rec + 2 * j, FloatToHalf(std::clamp(z[j], -kHalfMax, kHalfMax)));
    }
    return;
  }
  std::vector<float> y(r);
  for (uint32_t j = 0; j < r; ++j) y[j] = z[j] / LatentScale(p, stddev, j);
  const float mn =
      std::clamp(*std::min_element(y.begin(), y.end()), -kHalfMax, kHalfMax);
  const float mx = *std::max_element(y.begin(), y.end());
  const uint16_t mn_h = HalfAtMost(mn);
  const float mnf = HalfToFloat(mn_h);
  const int levels = (1 << Bits(p.format)) - 1;
  const uint16_t sc_h =
      HalfAtLeast(std::clamp((mx - mnf) / levels, 0.0f, kHalfMax));
  const float scf = HalfToFloat(sc_h);
  StoreU16(rec, mn_h);
  StoreU16(rec + 2, sc_h);
  uint8_t* codes = rec + 4;
  if (p.format == LatentFormat::kInt4) std::fill_n(codes, (r + 1) / 2, 0);
  for (uint32_t j = 0; j < r; ++j) {
    int q = 0;
    if (scf > 0) {
      q = static_cast<int>(std::clamp(std::nearbyint((y[j] - mnf) / scf), 0.0f,
                                      static_cast<float>(levels)));
    }
    if (p.format == LatentFormat::kInt8) {
      codes[j] = static_cast<uint8_t>(q);
    } else {
      codes[j / 2] |= static_cast<uint8_t>(q << (4 * (j % 2)));
    }
  }
}

// False when the record is inconsistent (non-finite values, negative scale,
// non-zero padding nibble).
bool DecodeRecord(const LowRankParams& p, const uint8_t* rec,
                  const float* stddev, uint32_t r, float* z) {
  if (p.format == LatentFormat::kFloat16) {
    for (uint32_t j = 0; j < r; ++j) {
      z[j] = HalfToFloat(LoadU16(rec + 2 * j));
      if (!std::isfinite(z[j])) return false;
    }
    return true;
  }
  const float mnf = HalfToFloat(LoadU16(rec));
  const float scf = HalfToFloat(LoadU16(rec + 2));
  if (!std::isfinite(mnf) || !std::isfinite(scf) || scf < 0) return false;
  const uint8_t* codes = rec + 4;
  if (p.format == LatentFormat::kInt4 && r % 2 == 1 &&
      (codes[r / 2] >> 4) != 0) {
    return false;
  }
  for (uint32_t j = 0; j < r; ++j) {
    const int q = p.format == LatentFormat::kInt8
                      ? codes[j]
                      : (codes[j / 2] >> (4 * (j % 2))) & 0xF;
    const float y = mnf + static_cast<float>(q) * scf;
    z[j] = y * LatentScale(p, stddev, j);
  }
  return true;
}

class LowRankCodec final : public Codec {
 public:
  CodecId id() const override { return CodecId::kLowRank; }
  const char* name() const override { return "lowrank"; }
  bool needs_profile() const override { return true; }

  absl::Status ValidateParams(const BlockShape& shape,
                              const CodecParams& params) const override {
    STRATA_ASSIGN_OR_RETURN(LowRankParams p, LowRankParams::FromBytes(params));
    if (p.rank_k == 0 || p.rank_k > shape.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat("rank_k: ", p.rank_k,
                                                     " is not in [1, head_dim ",
                                                     shape.head_dim, "]"));
    }
    if (p.rank_v == 0 || p.rank_v > shape.head_dim) {
      return absl::InvalidArgumentError(absl::StrCat("rank_v: ", p.rank_v,
                                                     " is not in [1, head_dim ",
                                                     shape.head_dim, "]"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<uint8_t>> Encode(
      const KvTensor& kv, CodecParams& params,
      const CodecProfile* profile) const override {
    STRATA_RETURN_IF_ERROR(kv.shape.Validate());
    STRATA_RETURN_IF_ERROR(ValidateParams(kv.shape, params));
    STRATA_ASSIGN_OR_RETURN(LowRankParams p, LowRankParams::FromBytes(params));
    if (kv.data.size() != kv.shape.ElementCount() || !AllFinite(kv.data)) {
      return absl::InvalidArgumentError(
          "kv: wrong size or a non-finite value (the lowrank codec codes "
          "finite values)");
    }
    const BlockShape& shape = kv.shape;
    Half halves[2];
    STRATA_RETURN_IF_ERROR(LoadHalves(profile, shape, p, halves));
    const uint64_t total = PayloadBytes(shape, halves);
    if (total > kvstore::kMaxPayloadBytes) {
      return absl::InvalidArgumentError(
          "kv: the lowrank payload would exceed 4 GiB");
    }
    std::vector<uint8_t> payload(total);
    const uint32_t d = shape.head_dim, H = shape.num_kv_heads;
    std::vector<float> centered(d), z;
    for (int k = 0; k < 2; ++k) {
      const Half& half = halves[k];
      const uint32_t r = half.rank, r_max = half.pca.r_max;
      z.assign(r, 0);
      uint8_t* rec = &payload[half.offset];
      for (uint32_t l = 0; l < shape.num_layers; ++l) {
        for (uint32_t t = 0; t < shape.num_tokens; ++t) {
          for (uint32_t h = 0; h < H; ++h, rec += half.record) {
            const size_t lh = size_t{l} * H + h;
            const float* mu = half.pca.mean + lh * d;
            const float* P = half.pca.basis + lh * d * r_max;
            const float* x = kv.vec(k, l, t, h);
            for (uint32_t e = 0; e < d; ++e) centered[e] = x[e] - mu[e];
            for (uint32_t j = 0; j < r; ++j) {
              float acc = 0;
              for (uint32_t e = 0; e < d; ++e)
                acc = acc + centered[e] * P[e * r_max + j];
              z[j] = acc;
            }
            EncodeRecord(p, z.data(), half.pca.stddev + lh * r_max, r, rec);
          }
        }
      }
    }
    p.profile_id = profile->id();
    params = p.ToBytes();
    return payload;
  }

  absl::Status Decode(const BlockShape& shape, const CodecParams& params,
                      absl::Span<const uint8_t> payload,
                      const CodecProfile* profile,
                      const DecodeSelection& selection,
                      KvTensor* out) const override {
    STRATA_RETURN_IF_ERROR(shape.Validate());
    STRATA_RETURN_IF_ERROR(ValidateParams(shape, params));
    const LowRankParams p = *LowRankParams::FromBytes(params);
    STRATA_ASSIGN_OR_RETURN(BlockShape sel, selection.Resolve(shape));
    STRATA_RETURN_IF_ERROR(CheckProfileId(profile, p.profile_id));
    Half halves[2];
    STRATA_RETURN_IF_ERROR(LoadHalves(profile, shape, p, halves));
    const uint64_t total = PayloadBytes(shape, halves);
    if (payload.size() != total) {
      return absl::DataLossError(
          absl::StrCat("payload: ", payload.size(),
                       " bytes, the shape and params need ", total));
    }
    const uint32_t d = shape.head_dim, H = shape.num_kv_heads;
    KvTensor result = KvTensor::Zeros(sel);
    std::vector<float> z;
    for (int k = 0; k < 2; ++k) {
      const Half& half = halves[k];
      const uint32_t r = half.rank, r_max = half.pca.r_max;
      z.assign(r, 0);
      for (uint32_t l = 0; l < sel.num_layers; ++l) {
        const uint32_t layer = selection.layer_begin + l;
        for (uint32_t t = 0; t < sel.num_tokens; ++t) {
          const uint32_t token = selection.Token(t);
          for (uint32_t h = 0; h < H; ++h) {
            const size_t lh = size_t{layer} * H + h;
            const uint8_t* rec =
                &payload[half.offset +
                         ((uint64_t{layer} * shape.num_tokens + token) * H +
                          h) *
                             half.record];
            if (!DecodeRecord(p, rec, half.pca.stddev + lh * r_max, r,
                              z.data())) {
              return absl::DataLossError(absl::StrCat(
                  "payload: record (kv ", k, ", layer ", layer, ", token ",
                  token, ", head ", h, ") is inconsistent"));
            }
            const float* mu = half.pca.mean + lh * d;
            const float* P = half.pca.basis + lh * d * r_max;
            float* x = result.vec(k, l, t, h);
            for (uint32_t e = 0; e < d; ++e) {
              float acc = 0;
              for (uint32_t j = 0; j < r; ++j)
                acc = acc + z[j] * P[e * r_max + j];
              x[e] = RoundToDtype(mu[e] + acc, shape.dtype);
            }
          }
        }
      }
    }
    *out = std::move(result);
    return absl::OkStatus();
  }
};

}  // namespace

CodecParams LowRankParams::ToBytes() const {
  CodecParams b{};
  b[0] = kVersion;
  b[1] = static_cast<uint8_t>(format);
  b[2] = flags;
  StoreU16(&b[4], rank_k);
  StoreU16(&b[6], rank_v);
  std::memcpy(&b[8], &profile_id, 8);
  return b;
}

absl::StatusOr<LowRankParams> LowRankParams::FromBytes(const CodecParams& b) {
  if (b[0] != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("version: lowrank params version ", static_cast<int>(b[0]),
                     " is not ", static_cast<int>(kVersion)));
  }
  if (b[1] > static_cast<uint8_t>(LatentFormat::kInt4)) {
    return absl::InvalidArgumentError(
        absl::StrCat("format: unknown latent format ", static_cast<int>(b[1])));
  }
  if ((b[2] & ~kFlagWhiten) != 0 ||
      ((b[2] & kFlagWhiten) &&
       b[1] == static_cast<uint8_t>(LatentFormat::kFloat16))) {
    return absl::InvalidArgumentError(absl::StrCat(
        "flags: ", static_cast<int>(b[2]),
        " (only whiten = 1 is defined, and only for int8/int4 latents)"));
  }
  if (b[3] != 0)
    return absl::InvalidArgumentError("reserved: byte 3 must be 0");
  for (size_t i = 16; i < b.size(); ++i) {
    if (b[i] != 0)
      return absl::InvalidArgumentError("reserved: bytes 16-31 must be 0");
  }
  LowRankParams p;
  p.format = static_cast<LatentFormat>(b[1]);
  p.flags = b[2];
  p.rank_k = LoadU16(&b[4]);
  p.rank_v = LoadU16(&b[6]);
  std::memcpy(&p.profile_id, &b[8], 8);
  return p;
}

absl::StatusOr<CodecProfile> FitLowRankProfile(
    const std::vector<KvTensor>& calibration, uint32_t r_max,
    const std::string& model_id) {
  if (calibration.empty())
    return absl::InvalidArgumentError("calibration: no tensors");
  const BlockShape& s0 = calibration[0].shape;
  for (size_t i = 0; i < calibration.size(); ++i) {
    const KvTensor& t = calibration[i];
    STRATA_RETURN_IF_ERROR(t.shape.Validate());
    if (t.shape.num_layers != s0.num_layers ||
        t.shape.num_kv_heads != s0.num_kv_heads ||
        t.shape.head_dim != s0.head_dim ||
        t.data.size() != t.shape.ElementCount() || !AllFinite(t.data)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "calibration: tensor ", i,
          " differs in layers/heads/head_dim or size, or is not finite"));
    }
  }
  const uint32_t L = s0.num_layers, H = s0.num_kv_heads, d = s0.head_dim;
  if (r_max == 0 || r_max > d) {
    return absl::InvalidArgumentError(
        absl::StrCat("r_max: ", r_max, " is not in [1, head_dim ", d, "]"));
  }
  CodecProfile profile(model_id);
  std::vector<double> mean(d), cov(size_t{d} * d), values, vectors;
  for (int kv = 0; kv < 2; ++kv) {
    std::vector<float> means, bases, stddevs;
    for (uint32_t l = 0; l < L; ++l) {
      for (uint32_t h = 0; h < H; ++h) {
        std::fill(mean.begin(), mean.end(), 0.0);
        std::fill(cov.begin(), cov.end(), 0.0);
        double n = 0;
        for (const KvTensor& t : calibration) {
          for (uint32_t tok = 0; tok < t.shape.num_tokens; ++tok) {
            const float* x = t.vec(kv, l, tok, h);
            for (uint32_t e = 0; e < d; ++e) mean[e] += x[e];
            n += 1;
          }
        }
        for (double& m : mean) m /= n;
        for (const KvTensor& t : calibration) {
          for (uint32_t tok = 0; tok < t.shape.num_tokens; ++tok) {
            const float* x = t.vec(kv, l, tok, h);
            for (uint32_t a = 0; a < d; ++a) {
              const double ca = x[a] - mean[a];
              for (uint32_t b = a; b < d; ++b)
                cov[a * d + b] += ca * (x[b] - mean[b]);
            }
          }
        }
        for (uint32_t a = 0; a < d; ++a) {
          for (uint32_t b = a; b < d; ++b) cov[b * d + a] = cov[a * d + b] /= n;
        }
        internal::SymmetricEigen(cov, d, &values, &vectors);
        for (uint32_t e = 0; e < d; ++e)
          means.push_back(static_cast<float>(mean[e]));
        for (uint32_t e = 0; e < d; ++e) {
          for (uint32_t j = 0; j < r_max; ++j) {
            bases.push_back(static_cast<float>(vectors[size_t{e} * d + j]));
          }
        }
        for (uint32_t j = 0; j < r_max; ++j) {
          stddevs.push_back(
              static_cast<float>(std::sqrt(std::max(values[j], 0.0))));
        }
      }
    }
    STRATA_RETURN_IF_ERROR(
        profile.Put(kMeanTensor[kv], {L, H, d}, std::move(means)));
    STRATA_RETURN_IF_ERROR(
        profile.Put(kBasisTensor[kv], {L, H, d, r_max}, std::move(bases)));
    STRATA_RETURN_IF_ERROR(
        profile.Put(kStddevTensor[kv], {L, H, r_max}, std::move(stddevs)));
  }
  return profile;
}

namespace internal {
const Codec* LowRankCodecInstance() {
  static const LowRankCodec* codec = new LowRankCodec();
  return codec;
}
}  // namespace internal

}  // namespace strata::codecs
