#include "tools/codec_eval/eval_lib.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "codecs/aqua_codec.h"
#include "codecs/lowrank_codec.h"
#include "codecs/quant_codec.h"
#include "common/status_macros.h"

namespace strata::codec_eval {
namespace {

using codecs::AquaParams;
using codecs::BudgetScope;
using codecs::ClusterIndex;
using codecs::ClusterParams;
using codecs::LatentFormat;
using codecs::LowRankParams;
using codecs::QuantParams;
using codecs::RopeForm;
using codecs::SparseParams;
using codecs::TokenSparseLayer;
using codecs::TokenSparseParams;

double Now() {
  return std::chrono::duration<double>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

float RoundHalf(float x) {
  return codecs::HalfToFloat(codecs::FloatToHalf(x));
}

// ---- Setting builders.

Setting Quant(std::string name, std::string label, uint8_t kb, uint8_t vb,
              uint8_t kg, uint8_t vg, bool kpt = false, uint16_t sinks = 0,
              uint16_t outlier_bp = 0, std::string note = "") {
  QuantParams q;
  q.k_bits = kb;
  q.v_bits = vb;
  q.k_group = kg;
  q.v_group = vg;
  q.keys_per_token = kpt;
  q.n_sink = sinks;
  q.outlier_bp = outlier_bp;
  Setting s;
  s.name = std::move(name);
  s.group = "quant";
  s.label = std::move(label);
  s.codec = CodecId::kQuant;
  s.params = q.ToBytes();
  s.note = std::move(note);
  return s;
}

ProfileSpec AquaSpec() {
  ProfileSpec p;
  p.kind = ProfileKind::kAqua;
  p.aqua_ridge_lambda = 1.0f;  // docs/codecs/quant_aqua.md: 256 cal. tokens.
  return p;
}

Setting Aqua(std::string name, std::string label, uint8_t bits, uint8_t group,
             std::string note = "", uint16_t sinks = 0) {
  AquaParams a;
  a.n_sink = sinks;
  a.k_bits = bits;
  a.v_bits = bits;
  a.k_group = group;
  a.v_group = group;
  a.l0_bits = 4;
  Setting s;
  s.name = std::move(name);
  s.group = "aqua";
  s.label = std::move(label);
  s.codec = CodecId::kAqua;
  s.params = a.ToBytes();
  s.profile = AquaSpec();
  s.note = std::move(note);
  return s;
}

ProfileSpec SparseSpec(uint32_t num_atoms, uint32_t chunks_per_head,
                       uint32_t train_atoms) {
  ProfileSpec p;
  p.kind = ProfileKind::kSparse;
  p.sparse.num_atoms = num_atoms;
  p.sparse.chunks_per_head = chunks_per_head;
  p.sparse.layers_per_group = 5;
  p.sparse.atoms_per_chunk = train_atoms;
  return p;
}

Setting Csr(std::string name, std::string label, uint8_t s_atoms,
            uint8_t chunks, uint8_t online, const ProfileSpec& spec,
            std::string note = "") {
  SparseParams sp;
  sp.atoms_per_chunk = s_atoms;
  sp.chunks_per_head = chunks;
  sp.online_atoms = online;
  Setting s;
  s.name = std::move(name);
  s.group = "sparse";
  s.label = std::move(label);
  s.codec = CodecId::kSparse;
  s.params = sp.ToBytes();
  s.profile = spec;
  s.note = std::move(note);
  return s;
}

ProfileSpec LowRankSpec() {
  ProfileSpec p;
  p.kind = ProfileKind::kLowRank;
  p.lowrank_r_max = 64;
  return p;
}

Setting LowRank(std::string name, std::string label, uint16_t rk, uint16_t rv,
                LatentFormat format, bool whiten, std::string note = "") {
  LowRankParams lp;
  lp.format = format;
  lp.flags = whiten ? LowRankParams::kFlagWhiten : 0;
  lp.rank_k = rk;
  lp.rank_v = rv;
  Setting s;
  s.name = std::move(name);
  s.group = "lowrank";
  s.label = std::move(label);
  s.codec = CodecId::kLowRank;
  s.params = lp.ToBytes();
  s.profile = LowRankSpec();
  s.note = std::move(note);
  return s;
}

TokenSparseParams Buzz(float budget, bool summary) {
  TokenSparseParams p;
  p.n_sink = 4;
  p.window = 16;
  p.stride = 0;
  p.budget_fraction = budget;
  p.summary = summary;
  p.summary_rank = 32;
  return p;
}

Setting TokenSparse(std::string name, std::string label, float budget,
                    ScoreSource scores, bool summary, std::string note = "") {
  Setting s;
  s.name = std::move(name);
  s.group = "tokensparse";
  s.label = std::move(label);
  s.kind = SettingKind::kTokenSparse;
  s.codec = CodecId::kTokenSparse;
  s.tokensparse = Buzz(budget, summary);
  s.scores = scores;
  s.note = std::move(note);
  return s;
}

Setting Eviction(std::string name, std::string label, float budget,
                 EvictionPolicy policy, std::string note = "") {
  Setting s;
  s.name = std::move(name);
  s.group = "tokensparse";
  s.label = std::move(label);
  s.kind = SettingKind::kEviction;
  s.tokensparse = Buzz(budget, false);
  s.eviction = policy;
  s.note = std::move(note);
  return s;
}

Setting Cluster(std::string name, std::string label,
                uint32_t tokens_per_cluster, BudgetScope scope, float budget,
                std::string note = "") {
  ClusterParams cp;
  cp.n_sink = 4;
  cp.num_clusters = 0;
  cp.first_layer = 2;
  Setting s;
  s.name = std::move(name);
  s.group = "cluster";
  s.label = std::move(label);
  s.kind = SettingKind::kCluster;
  s.codec = CodecId::kCluster;
  s.params = cp.ToBytes();
  s.scope = scope;
  s.cluster_budget = budget;
  s.cluster_tokens_per_cluster = tokens_per_cluster;
  s.note = std::move(note);
  return s;
}

std::vector<Setting> MakeSettings() {
  std::vector<Setting> v;
  {
    Setting raw;
    raw.name = "fp16";
    raw.group = "quant";
    raw.label = "fp16 (raw)";
    raw.codec = CodecId::kRaw;
    v.push_back(raw);
  }
  v.push_back(Quant("kivi4", "KIVI-4, G=32", 4, 4, 32, 32));
  v.push_back(Quant("kivi4-g128", "KIVI-4, K G=128, V G=64", 4, 4, 128, 64));
  v.push_back(Quant("kivi3", "KIVI-3, G=32", 3, 3, 32, 32));
  v.push_back(Quant("kivi2", "KIVI-2, G=32", 2, 2, 32, 32));
  v.push_back(Quant("kivi2-g64", "KIVI-2, G=64", 2, 2, 64, 64));
  v.push_back(Quant("kivi2-g128", "KIVI-2, K G=128, V G=64", 2, 2, 128, 64,
                    false, 0, 0, "V groups must divide head_dim 64"));
  v.push_back(Quant("kivi2-ktok", "KIVI-2, G=32, keys per token", 2, 2, 32,
                    32, true, 0, 0, "the per-channel vs per-token comparison"));
  v.push_back(Quant("kivi2-sink4", "KIVI-2, G=32 + 4 fp16 sinks", 2, 2, 32, 32,
                    false, 4));
  v.push_back(Quant("kivi2-out1", "KIVI-2, G=32 + 1% fp16 outliers", 2, 2, 32,
                    32, false, 0, 100));
  v.push_back(Quant("kivi2-sink4-out1", "KIVI-2, G=32 + 4 sinks + 1% outliers",
                    2, 2, 32, 32, false, 4, 100));
  v.push_back(Aqua("aqua2-g64", "AQUA-KV 2-bit residual, G=64", 2, 64,
                   "layer 0: KIVI-4"));
  v.push_back(Aqua("aqua2-g32", "AQUA-KV 2-bit residual, G=32", 2, 32,
                   "layer 0: KIVI-4"));
  v.push_back(Aqua("aqua2-g64-s4", "AQUA-KV 2-bit residual, G=64 + 4 sinks", 2,
                   64, "layer 0: KIVI-4; first 4 tokens exact", 4));
  v.push_back(Aqua("aqua2-g32-s4", "AQUA-KV 2-bit residual, G=32 + 4 sinks", 2,
                   32, "layer 0: KIVI-4; first 4 tokens exact", 4));
  v.push_back(Aqua("aqua3-g64", "AQUA-KV 3-bit residual, G=64", 3, 64,
                   "layer 0: KIVI-4"));
  v.push_back(Aqua("aqua4-g32", "AQUA-KV 4-bit residual, G=32", 4, 32,
                   "layer 0: KIVI-4"));
  // CSR: d = 64, bits = 32·s·s_n/64 (+ header, + online atoms). Profiles:
  // 5-layer groups, N = 1024, trained with s = 4/s_n (the 2-bit setting);
  // one 30-layer group with N = 4096 (docs/codecs/sparse_lowrank.md).
  const ProfileSpec csr1 = SparseSpec(1024, 1, 4);
  const ProfileSpec csr2 = SparseSpec(1024, 2, 2);
  ProfileSpec csr2big = SparseSpec(4096, 2, 2);
  csr2big.sparse.layers_per_group = 30;
  v.push_back(Csr("csr-s4", "CSR N=1024, s_n=1, s=4 (2 bits)", 4, 1, 0, csr1));
  v.push_back(Csr("csr-sn2-s2", "CSR N=1024, s_n=2, s=2 (2 bits)", 2, 2, 0,
                  csr2));
  v.push_back(Csr("csr-sn2-s2-m32", "CSR N=1024, s_n=2, s=2 + 32 online atoms",
                  2, 2, 32, csr2, "online atoms: 32 per (K/V, layer)"));
  v.push_back(Csr("csr-n4096-sn2-s2", "CSR N=4096 (1 group), s_n=2, s=2 (2 bits)",
                  2, 2, 0, csr2big));
  v.push_back(Csr("csr-s2", "CSR N=1024, s_n=1, s=2 (1 bit)", 2, 1, 0, csr1));
  v.push_back(Csr("csr-sn2-s1", "CSR N=1024, s_n=2, s=1 (1 bit)", 1, 2, 0,
                  csr2));
  v.push_back(Csr("csr-n4096-sn2-s1", "CSR N=4096 (1 group), s_n=2, s=1 (1 bit)",
                  1, 2, 0, csr2big));
  v.push_back(Csr("csr-sn2-s4", "CSR N=1024, s_n=2, s=4 (4 bits)", 4, 2, 0,
                  csr2));
  // PCA: fp16 latents cost 16·r/64 per half; int8/int4 (32 + B·r)/64.
  v.push_back(LowRank("pca-k16v32", "PCA rank K16/V32, fp16 latents", 16, 32,
                      LatentFormat::kFloat16, false));
  v.push_back(LowRank("pca-k16v32-int8", "PCA rank K16/V32, int8 latents", 16,
                      32, LatentFormat::kInt8, false));
  v.push_back(LowRank("pca-k16v32-int4w",
                      "PCA rank K16/V32, int4 whitened latents", 16, 32,
                      LatentFormat::kInt4, true));
  v.push_back(LowRank("pca-k24v48-int4w",
                      "PCA rank K24/V48, int4 whitened latents", 24, 48,
                      LatentFormat::kInt4, true));
  v.push_back(LowRank("pca-k32v48-int4w",
                      "PCA rank K32/V48, int4 whitened latents", 32, 48,
                      LatentFormat::kInt4, true));
  v.push_back(LowRank("pca-k32v64-int4w",
                      "PCA rank K32/V64, int4 whitened latents", 32, 64,
                      LatentFormat::kInt4, true));
  v.push_back(LowRank("pca-k48v64-int4w",
                      "PCA rank K48/V64, int4 whitened latents", 48, 64,
                      LatentFormat::kInt4, true));
  v.push_back(LowRank("pca-k64v64-int4w",
                      "PCA full rank, int4 whitened latents", 64, 64,
                      LatentFormat::kInt4, true,
                      "a per-head rotation + 4-bit quantization"));
  for (int pct : {25, 50}) {
    const float b = pct / 100.0f;
    const std::string p = absl::StrCat(pct);
    v.push_back(Eviction("evict" + p + "-recent",
                         "plain eviction, budget " + p + "%: sinks + recent", b,
                         EvictionPolicy::kRecent,
                         "StreamingLLM-style, same kept count as BUZZ"));
    v.push_back(Eviction("evict" + p + "-random",
                         "random eviction, budget " + p + "%: sinks + window + random",
                         b, EvictionPolicy::kRandom,
                         "same sinks/window as BUZZ, middle sampled at random"));
    v.push_back(TokenSparse("buzz" + p + "-proxy",
                            "BUZZ, budget " + p + "%, key-norm proxy", b,
                            ScoreSource::kProxy, false, "low key norm kept"));
    v.push_back(TokenSparse("buzz" + p + "-proxy-less",
                            "BUZZ, budget " + p + "%, key-norm proxy + LESS r=32", b,
                            ScoreSource::kProxy, true));
    v.push_back(TokenSparse("buzz" + p + "-scores",
                            "BUZZ, budget " + p + "%, real scores", b,
                            ScoreSource::kRealScores, false,
                            "scores: the other 16 queries (2-fold)"));
    v.push_back(TokenSparse("buzz" + p + "-scores-less",
                            "BUZZ, budget " + p + "%, real scores + LESS r=32", b,
                            ScoreSource::kRealScores, true,
                            "scores: the other 16 queries (2-fold)"));
  }
  v.push_back(Cluster("cluster10", "ClusterKV C=T/16, 10%, per query head", 16,
                      BudgetScope::kPerQueryHead, 0.10f,
                      "the paper's scope: union over 9 query heads"));
  v.push_back(Cluster("cluster10-c2x", "ClusterKV C=T/8, 10%, per query head",
                      8, BudgetScope::kPerQueryHead, 0.10f));
  v.push_back(Cluster("cluster10-total", "ClusterKV C=T/16, 10% in total", 16,
                      BudgetScope::kTotal, 0.10f,
                      "the union holds at most 10% of the block"));
  return v;
}

}  // namespace

// ---- Profiles.

std::string ProfileSpec::Key() const {
  switch (kind) {
    case ProfileKind::kNone: return "";
    case ProfileKind::kAqua:
      return absl::StrFormat("aqua-lambda%g", aqua_ridge_lambda);
    case ProfileKind::kSparse:
      return absl::StrFormat("csr-n%u-sn%u-lg%u-s%u", sparse.num_atoms,
                             sparse.chunks_per_head, sparse.layers_per_group,
                             sparse.atoms_per_chunk);
    case ProfileKind::kLowRank:
      return absl::StrFormat("pca-r%u", lowrank_r_max);
  }
  return "";
}

std::string ProfileSpec::CalibrateFlags() const {
  switch (kind) {
    case ProfileKind::kNone: return "";
    case ProfileKind::kAqua:
      return absl::StrFormat("--codec=aqua --ridge-lambda=%g",
                             aqua_ridge_lambda);
    case ProfileKind::kSparse:
      return absl::StrFormat(
          "--codec=sparse --atoms=%u --chunks-per-head=%u "
          "--layers-per-group=%u --train-atoms-per-chunk=%u "
          "--kmeans-iterations=%u --refine-rounds=%u --max-training-chunks=%u",
          sparse.num_atoms, sparse.chunks_per_head, sparse.layers_per_group,
          sparse.atoms_per_chunk, sparse.kmeans_iterations,
          sparse.refine_rounds, sparse.max_training_chunks);
    case ProfileKind::kLowRank:
      return absl::StrFormat("--codec=lowrank --rank-max=%u", lowrank_r_max);
  }
  return "";
}

const char* KindName(ProfileKind kind) {
  switch (kind) {
    case ProfileKind::kNone: return "none";
    case ProfileKind::kAqua: return "aqua";
    case ProfileKind::kSparse: return "sparse";
    case ProfileKind::kLowRank: return "lowrank";
  }
  return "?";
}

absl::StatusOr<CodecProfile> FitProfile(const ProfileSpec& spec,
                                        const std::vector<KvTensor>& calibration,
                                        const std::string& model_id) {
  switch (spec.kind) {
    case ProfileKind::kNone:
      return absl::InvalidArgumentError("profile: this setting needs none");
    case ProfileKind::kAqua:
      return codecs::FitAquaProfile(calibration, spec.aqua_ridge_lambda,
                                    model_id);
    case ProfileKind::kSparse:
      return codecs::FitSparseProfile(calibration, spec.sparse, model_id);
    case ProfileKind::kLowRank:
      return codecs::FitLowRankProfile(calibration, spec.lowrank_r_max,
                                       model_id);
  }
  return absl::InvalidArgumentError("profile: unknown kind");
}

ProfileKind KindOf(const CodecProfile& profile) {
  if (profile.Find("aqua.meta") != nullptr) return ProfileKind::kAqua;
  if (profile.Find("csr.k.dict") != nullptr) return ProfileKind::kSparse;
  if (profile.Find("pca.k.mean") != nullptr) return ProfileKind::kLowRank;
  return ProfileKind::kNone;
}

bool ProfileServes(const CodecProfile& profile, const ProfileSpec& spec,
                   uint32_t head_dim) {
  if (spec.kind == ProfileKind::kNone || KindOf(profile) != spec.kind) {
    return false;
  }
  if (spec.kind == ProfileKind::kSparse) {
    // Same atom dimension, dictionary size and layer grouping (the other
    // fit options are not recorded in the profile).
    const codecs::ProfileTensor* dict = profile.Find("csr.k.dict");
    const codecs::ProfileTensor* groups = profile.Find("csr.layer_group");
    if (dict->dims.size() != 3 || groups == nullptr || groups->data.empty() ||
        dict->dims[1] != spec.sparse.num_atoms ||
        dict->dims[2] != head_dim / spec.sparse.chunks_per_head) {
      return false;
    }
    const uint32_t per = std::max<uint32_t>(spec.sparse.layers_per_group, 1);
    const size_t layers = groups->data.size();
    return dict->dims[0] == (layers + per - 1) / per;
  }
  if (spec.kind == ProfileKind::kLowRank) {
    const codecs::ProfileTensor* basis = profile.Find("pca.k.basis");
    return basis != nullptr && basis->dims.size() == 4 &&
           basis->dims[3] >= spec.lowrank_r_max;
  }
  return true;
}

// ---- Settings.

const std::vector<Setting>& AllSettings() {
  static const std::vector<Setting>* settings =
      new std::vector<Setting>(MakeSettings());
  return *settings;
}

absl::StatusOr<Setting> FindSetting(const std::string& name) {
  for (const Setting& s : AllSettings()) {
    if (s.name == name) return s;
  }
  return absl::NotFoundError(absl::StrCat("setting: unknown \"", name, "\""));
}

std::vector<uint32_t> EvictionTokens(EvictionPolicy policy, uint32_t tokens,
                                     uint32_t kept, uint32_t sinks,
                                     uint32_t window, std::mt19937_64& rng) {
  kept = std::min(kept, tokens);
  sinks = std::min(sinks, kept);
  window = std::min(window, kept - sinks);
  std::vector<uint32_t> out;
  for (uint32_t t = 0; t < sinks; ++t) out.push_back(t);
  if (policy == EvictionPolicy::kRecent) {
    for (uint32_t t = tokens - (kept - sinks); t < tokens; ++t) {
      out.push_back(t);
    }
    return out;
  }
  std::vector<uint32_t> middle;
  for (uint32_t t = sinks; t < tokens - window; ++t) middle.push_back(t);
  std::shuffle(middle.begin(), middle.end(), rng);
  middle.resize(kept - sinks - window);
  std::sort(middle.begin(), middle.end());
  out.insert(out.end(), middle.begin(), middle.end());
  for (uint32_t t = tokens - window; t < tokens; ++t) out.push_back(t);
  return out;
}

absl::StatusOr<RoundTripResult> RoundTrip(const Setting& s, const KvTensor& kv,
                                          const CodecProfile* profile,
                                          uint64_t seed) {
  const codecs::BlockShape& shape = kv.shape;
  RoundTripResult r;
  const size_t keep_n =
      size_t{shape.num_layers} * shape.num_tokens * shape.num_kv_heads;
  switch (s.kind) {
    case SettingKind::kDense: {
      STRATA_ASSIGN_OR_RETURN(
          std::vector<uint8_t> block,
          codecs::EncodeKvBlock(kv, s.codec, s.params, profile));
      r.bits = codecs::BitsPerElement(block);
      STRATA_ASSIGN_OR_RETURN(r.decoded, codecs::DecodeKvBlock(block, profile));
      r.keep.assign(keep_n, 1);
      return r;
    }
    case SettingKind::kTokenSparse: {
      if (s.scores != ScoreSource::kProxy || s.tokensparse.summary) {
        return absl::UnimplementedError(
            "setting: real scores and LESS summaries need the queries; only "
            "the key-norm proxy without summary round-trips");
      }
      // Key norms are RoPE invariant: the proxy selects the same tokens from
      // pre-RoPE keys (up to fp16 rounding).
      STRATA_ASSIGN_OR_RETURN(
          std::vector<uint8_t> block,
          codecs::EncodeTokenSparse(kv, s.tokensparse, {}));
      r.bits = codecs::BitsPerElement(block);
      STRATA_ASSIGN_OR_RETURN(r.decoded, codecs::DecodeKvBlock(block));
      r.keep.assign(keep_n, 0);
      for (uint32_t l = 0; l < shape.num_layers; ++l) {
        STRATA_ASSIGN_OR_RETURN(TokenSparseLayer k, codecs::DecodeKept(block, l));
        for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
          for (uint32_t j = 0; j < k.kept_per_head; ++j) {
            const uint32_t t = k.positions[size_t{h} * k.kept_per_head + j];
            r.keep[(size_t{l} * shape.num_tokens + t) * shape.num_kv_heads +
                   h] = 1;
          }
        }
      }
      return r;
    }
    case SettingKind::kEviction: {
      STRATA_ASSIGN_OR_RETURN(
          std::vector<uint8_t> block,
          codecs::EncodeTokenSparse(kv, s.tokensparse, {}));
      STRATA_ASSIGN_OR_RETURN(TokenSparseLayer k0, codecs::DecodeKept(block, 0));
      const uint32_t K = k0.kept_per_head;
      std::mt19937_64 rng(seed);
      r.decoded = KvTensor::Zeros(shape);
      r.keep.assign(keep_n, 0);
      for (uint32_t l = 0; l < shape.num_layers; ++l) {
        for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
          for (uint32_t t : EvictionTokens(s.eviction, shape.num_tokens, K,
                                           s.tokensparse.n_sink,
                                           s.tokensparse.window, rng)) {
            r.keep[(size_t{l} * shape.num_tokens + t) * shape.num_kv_heads +
                   h] = 1;
            for (int side = 0; side < 2; ++side) {
              std::copy_n(kv.vec(side, l, t, h), shape.head_dim,
                          r.decoded.vec(side, l, t, h));
            }
          }
        }
      }
      r.bits = (2.0 * shape.head_dim * 16 +
                (s.eviction == EvictionPolicy::kRandom ? 16 : 0)) *
               K / (2.0 * shape.head_dim * shape.num_tokens);
      return r;
    }
    case SettingKind::kCluster:
      return absl::UnimplementedError(
          "setting: ClusterKV selects per query; it has no round trip");
  }
  return absl::InvalidArgumentError("setting: unknown kind");
}

// ---- Timing.

namespace {

// Best wall time of `f` over options' repetitions.
template <typename F>
absl::StatusOr<double> BestSeconds(const EvalOptions& o, F f) {
  double best = INFINITY, spent = 0;
  for (int rep = 0; rep < o.max_reps; ++rep) {
    const double t0 = Now();
    STRATA_RETURN_IF_ERROR(f());
    const double dt = Now() - t0;
    best = std::min(best, dt);
    spent += dt;
    if (rep + 1 >= o.min_reps && spent >= o.min_seconds) break;
  }
  return best;
}

double Gbps(uint64_t elements, double seconds) {
  return 2.0 * static_cast<double>(elements) / seconds / 1e9;
}

std::pair<double, double> KvRelMse(const KvTensor& ref, const KvTensor& got) {
  const size_t half = ref.data.size() / 2;
  const auto r = absl::MakeConstSpan(ref.data);
  const auto g = absl::MakeConstSpan(got.data);
  return {codecs::RelativeMse(r.first(half), g.first(half)),
          codecs::RelativeMse(r.subspan(half), g.subspan(half))};
}

}  // namespace

// ---- Evaluator.

absl::StatusOr<std::unique_ptr<Evaluator>> Evaluator::Create(
    const EvalOptions& options) {
  std::unique_ptr<Evaluator> e(new Evaluator(options));
  STRATA_RETURN_IF_ERROR(e->Init());
  return e;
}

absl::Status Evaluator::Init() {
  const std::string path = options_.fixture_path.empty()
                               ? codecs::DefaultFixturePath()
                               : options_.fixture_path;
  STRATA_ASSIGN_OR_RETURN(KvFixture fx, codecs::LoadKvFixture(path));
  fixture_ = std::make_unique<KvFixture>(std::move(fx));
  const KvFixture& f = *fixture_;
  const uint32_t P = options_.evaluation_passage;
  if (P >= f.passages.size() ||
      options_.calibration_passage >= f.passages.size()) {
    return absl::InvalidArgumentError("passage: out of range");
  }
  layer_begin_ = options_.layer_begin;
  layer_end_ = std::min(options_.layer_end, f.num_layers);
  if (layer_begin_ >= layer_end_) {
    return absl::InvalidArgumentError("layer_begin: empty layer range");
  }
  total_tokens_ = f.passages[P].num_tokens();
  block_tokens_ = options_.block_tokens;
  if (block_tokens_ == 0 || block_tokens_ > total_tokens_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "block_tokens: ", block_tokens_, " of ", total_tokens_, " tokens"));
  }
  H_ = f.num_kv_heads;
  QH_ = f.num_q_heads;
  D_ = f.head_dim;
  STRATA_ASSIGN_OR_RETURN(all_post_, f.Kv(P, layer_begin_, layer_end_, 0,
                                          total_tokens_, RopeForm::kPostRope));
  STRATA_ASSIGN_OR_RETURN(block_pre_, f.Kv(P, layer_begin_, layer_end_, 0,
                                           block_tokens_, RopeForm::kPreRope));
  STRATA_ASSIGN_OR_RETURN(block_post_,
                          f.Kv(P, layer_begin_, layer_end_, 0, block_tokens_,
                               RopeForm::kPostRope));
  for (uint32_t l = 0; l < num_layers(); ++l) {
    STRATA_ASSIGN_OR_RETURN(codecs::FixtureQueries q,
                            f.Queries(P, layer_begin_ + l));
    STRATA_ASSIGN_OR_RETURN(std::vector<float> ref,
                            codecs::AttentionOutput(q, all_post_, l));
    queries_.push_back(std::move(q));
    reference_.push_back(std::move(ref));
  }
  return absl::OkStatus();
}

void Evaluator::AddProfile(CodecProfile profile, const std::string& source) {
  loaded_.push_back(std::move(profile));
  loaded_sources_.push_back(source);
}

absl::StatusOr<const CodecProfile*> Evaluator::Profile(
    const ProfileSpec& spec) {
  const std::string key = spec.Key();
  auto it = profiles_.find(key);
  if (it != profiles_.end()) return it->second.get();
  ProfileInfo info;
  info.key = key;
  std::unique_ptr<CodecProfile> profile;
  for (size_t i = 0; i < loaded_.size(); ++i) {
    if (ProfileServes(loaded_[i], spec, D_)) {
      profile = std::make_unique<CodecProfile>(loaded_[i]);
      info.source = loaded_sources_[i];
      break;
    }
  }
  if (profile == nullptr) {
    const KvFixture& f = *fixture_;
    const uint32_t C = options_.calibration_passage;
    // The profile covers the whole model (all layers), as the store's does.
    STRATA_ASSIGN_OR_RETURN(
        KvTensor cal, f.Kv(C, 0, f.num_layers, 0, f.passages[C].num_tokens()));
    const double t0 = Now();
    STRATA_ASSIGN_OR_RETURN(CodecProfile fitted,
                            FitProfile(spec, {cal}, f.model));
    info.fit_seconds = Now() - t0;
    info.source = "fitted";
    profile = std::make_unique<CodecProfile>(std::move(fitted));
  }
  // Evaluations over a layer sub-range need a profile of those layers only;
  // only full-model profiles are supported (the codecs check the meta).
  info.id = profile->id();
  info.bytes = profile->Serialize().size();
  profile_infos_[key] = info;
  const CodecProfile* raw = profile.get();
  profiles_[key] = std::move(profile);
  return raw;
}

absl::Status Evaluator::DenseAttention(const KvTensor& decoded_pre,
                                       LayerErr* err) {
  KvTensor full = all_post_;
  const float theta = fixture_->rope_theta;
  for (uint32_t l = 0; l < num_layers(); ++l) {
    for (uint32_t t = 0; t < block_tokens_; ++t) {
      for (uint32_t h = 0; h < H_; ++h) {
        float* k = full.vec(0, l, t, h);
        std::copy_n(decoded_pre.vec(0, l, t, h), D_, k);
        codecs::ApplyRope(k, D_, t, theta);
        for (uint32_t d = 0; d < D_; ++d) k[d] = RoundHalf(k[d]);
        std::copy_n(decoded_pre.vec(1, l, t, h), D_, full.vec(1, l, t, h));
      }
    }
  }
  for (uint32_t l = 0; l < num_layers(); ++l) {
    STRATA_ASSIGN_OR_RETURN(std::vector<float> o,
                            codecs::AttentionOutput(queries_[l], full, l));
    const std::vector<float>& ref = reference_[l];
    for (size_t i = 0; i < o.size(); ++i) {
      const double diff = double{o[i]} - ref[i];
      err->num[l] += diff * diff;
      err->den[l] += double{ref[i]} * ref[i];
    }
  }
  return absl::OkStatus();
}

absl::Status Evaluator::KeptAttention(uint32_t layer, const KeptLayer& kept,
                                      const std::vector<uint32_t>& subset,
                                      LayerErr* err) {
  const codecs::FixtureQueries& q = queries_[layer];
  const uint32_t group = QH_ / H_;
  std::vector<float> keys, values;
  for (uint32_t qi : subset) {
    const uint32_t pos = q.positions[qi];
    for (uint32_t qh = 0; qh < QH_; ++qh) {
      const uint32_t h = qh / group;
      keys.clear();
      values.clear();
      const std::vector<uint32_t>& toks = kept.tokens[h];
      for (size_t j = 0; j < toks.size(); ++j) {
        if (toks[j] > pos) continue;
        keys.insert(keys.end(), kept.keys[h].begin() + j * D_,
                    kept.keys[h].begin() + (j + 1) * D_);
        values.insert(values.end(), kept.values[h].begin() + j * D_,
                      kept.values[h].begin() + (j + 1) * D_);
      }
      for (uint32_t t = block_tokens_; t <= pos && t < total_tokens_; ++t) {
        const float* k = all_post_.vec(0, layer, t, h);
        const float* v = all_post_.vec(1, layer, t, h);
        keys.insert(keys.end(), k, k + D_);
        values.insert(values.end(), v, v + D_);
      }
      const float* query = &q.data[(size_t{qi} * QH_ + qh) * D_];
      const codecs::LessSummary* summary =
          kept.summaries.empty() ? nullptr : &kept.summaries[h];
      STRATA_ASSIGN_OR_RETURN(
          std::vector<float> o,
          codecs::AttendWithSummary(absl::MakeConstSpan(query, D_), keys,
                                    values, D_, summary));
      const float* ref = &reference_[layer][(size_t{qi} * QH_ + qh) * D_];
      for (uint32_t d = 0; d < D_; ++d) {
        const double diff = double{o[d]} - ref[d];
        err->num[layer] += diff * diff;
        err->den[layer] += double{ref[d]} * ref[d];
      }
    }
  }
  return absl::OkStatus();
}

void Evaluator::Finish(const LayerErr& err, SettingResult* r) const {
  r->attn_per_layer.clear();
  double sum = 0;
  r->attn_worst = -1;
  for (uint32_t l = 0; l < num_layers(); ++l) {
    const double e = err.den[l] > 0 ? std::sqrt(err.num[l] / err.den[l]) : 0;
    r->attn_per_layer.push_back(e);
    sum += e;
    if (e > r->attn_worst) {
      r->attn_worst = e;
      r->attn_worst_layer = layer_begin_ + l;
    }
  }
  r->attn_mean = sum / num_layers();
}

absl::StatusOr<SettingResult> Evaluator::Run(const Setting& s) {
  switch (s.kind) {
    case SettingKind::kDense: return RunDense(s);
    case SettingKind::kTokenSparse: return RunTokenSparse(s);
    case SettingKind::kEviction: return RunEviction(s);
    case SettingKind::kCluster: return RunCluster(s);
  }
  return absl::InvalidArgumentError("setting: unknown kind");
}

absl::StatusOr<SettingResult> Evaluator::RunDense(const Setting& s) {
  SettingResult r;
  r.setting = s;
  r.note = s.note;
  const CodecProfile* profile = nullptr;
  if (s.profile.kind != ProfileKind::kNone) {
    STRATA_ASSIGN_OR_RETURN(profile, Profile(s.profile));
    r.profile_key = s.profile.Key();
  }
  STRATA_ASSIGN_OR_RETURN(
      std::vector<uint8_t> block,
      codecs::EncodeKvBlock(block_pre_, s.codec, s.params, profile));
  r.bits = codecs::BitsPerElement(block);
  STRATA_ASSIGN_OR_RETURN(KvTensor decoded,
                          codecs::DecodeKvBlock(block, profile));
  std::tie(r.k_relmse, r.v_relmse) = KvRelMse(block_pre_, decoded);
  if (options_.exact_side == 0 || options_.exact_side == 1) {
    const size_t half = decoded.data.size() / 2;
    const size_t off = options_.exact_side == 0 ? 0 : half;
    std::copy_n(block_pre_.data.begin() + off, half,
                decoded.data.begin() + off);
  }
  LayerErr err{std::vector<double>(num_layers()),
               std::vector<double>(num_layers())};
  STRATA_RETURN_IF_ERROR(DenseAttention(decoded, &err));
  Finish(err, &r);
  if (options_.timing) {
    const uint64_t n = block_pre_.shape.ElementCount();
    STRATA_ASSIGN_OR_RETURN(const double enc, BestSeconds(options_, [&] {
      return codecs::EncodeKvBlock(block_pre_, s.codec, s.params, profile)
          .status();
    }));
    STRATA_ASSIGN_OR_RETURN(const double dec, BestSeconds(options_, [&] {
      return codecs::DecodeKvBlock(block, profile).status();
    }));
    r.encode_gbps = Gbps(n, enc);
    r.decode_gbps = Gbps(n, dec);
  }
  return r;
}

std::vector<float> Evaluator::RealScores(
    const std::vector<uint32_t>& subset) const {
  const uint32_t L = num_layers(), B = block_tokens_, group = QH_ / H_;
  std::vector<float> scores(size_t{L} * B * H_, 0.0f);
  for (uint32_t l = 0; l < L; ++l) {
    for (uint32_t qi : subset) {
      for (uint32_t qh = 0; qh < QH_; ++qh) {
        const std::vector<double> p = BlockSoftmax(l, qi, qh);
        for (uint32_t t = 0; t < B; ++t) {
          scores[(size_t{l} * B + t) * H_ + qh / group] +=
              static_cast<float>(p[t]);
        }
      }
    }
  }
  return scores;
}

std::vector<double> Evaluator::BlockSoftmax(uint32_t layer, uint32_t qi,
                                            uint32_t qh) const {
  const codecs::FixtureQueries& q = queries_[layer];
  const float* query = &q.data[(size_t{qi} * QH_ + qh) * D_];
  const uint32_t h = qh / (QH_ / H_);
  const uint32_t visible = std::min(block_tokens_, q.positions[qi] + 1);
  std::vector<double> p(block_tokens_, 0.0);
  double m = -INFINITY;
  for (uint32_t t = 0; t < visible; ++t) {
    const float* k = block_post_.vec(0, layer, t, h);
    double dot = 0;
    for (uint32_t d = 0; d < D_; ++d) dot += double{query[d]} * k[d];
    p[t] = dot / std::sqrt(static_cast<double>(D_));
    m = std::max(m, p[t]);
  }
  double z = 0;
  for (uint32_t t = 0; t < visible; ++t) z += (p[t] = std::exp(p[t] - m));
  for (uint32_t t = 0; t < visible; ++t) p[t] /= z;
  return p;
}

absl::StatusOr<SettingResult> Evaluator::RunTokenSparse(const Setting& s) {
  SettingResult r;
  r.setting = s;
  r.note = s.note;
  const uint32_t nq = queries_[0].positions.size();
  std::vector<uint32_t> all(nq), first, second;
  std::iota(all.begin(), all.end(), 0);
  for (uint32_t i = 0; i < nq; ++i) (i < nq / 2 ? first : second).push_back(i);
  // (scores, evaluated queries) per fold.
  std::vector<std::pair<std::vector<float>, std::vector<uint32_t>>> folds;
  if (s.scores == ScoreSource::kProxy) {
    folds.push_back({{}, all});
  } else {
    folds.push_back({RealScores(first), second});
    folds.push_back({RealScores(second), first});
  }
  LayerErr err{std::vector<double>(num_layers()),
               std::vector<double>(num_layers())};
  std::vector<uint8_t> block;
  double bits = 0;
  for (const auto& [scores, subset] : folds) {
    STRATA_ASSIGN_OR_RETURN(
        block, codecs::EncodeTokenSparse(block_post_, s.tokensparse, scores));
    bits += codecs::BitsPerElement(block) / folds.size();
    for (uint32_t l = 0; l < num_layers(); ++l) {
      STRATA_ASSIGN_OR_RETURN(TokenSparseLayer k, codecs::DecodeKept(block, l));
      r.kept_per_head = k.kept_per_head;
      KeptLayer kept;
      kept.tokens.resize(H_);
      kept.keys.resize(H_);
      kept.values.resize(H_);
      const size_t K = k.kept_per_head;
      for (uint32_t h = 0; h < H_; ++h) {
        kept.tokens[h].assign(k.positions.begin() + h * K,
                              k.positions.begin() + (h + 1) * K);
        kept.keys[h].assign(k.keys.begin() + h * K * D_,
                            k.keys.begin() + (h + 1) * K * D_);
        kept.values[h].assign(k.values.begin() + h * K * D_,
                              k.values.begin() + (h + 1) * K * D_);
      }
      if (s.tokensparse.summary) kept.summaries = std::move(k.summaries);
      STRATA_RETURN_IF_ERROR(KeptAttention(l, kept, subset, &err));
    }
  }
  r.bits = bits;
  Finish(err, &r);
  if (options_.timing) {
    const uint64_t n = block_post_.shape.ElementCount();
    const std::vector<float>& scores = folds[0].first;
    STRATA_ASSIGN_OR_RETURN(const double enc, BestSeconds(options_, [&] {
      return codecs::EncodeTokenSparse(block_post_, s.tokensparse, scores)
          .status();
    }));
    STRATA_ASSIGN_OR_RETURN(const double dec, BestSeconds(options_, [&] {
      for (uint32_t l = 0; l < num_layers(); ++l) {
        STRATA_RETURN_IF_ERROR(codecs::DecodeKept(block, l).status());
      }
      return absl::OkStatus();
    }));
    r.encode_gbps = Gbps(n, enc);
    r.decode_gbps = Gbps(n, dec);
  }
  return r;
}

absl::StatusOr<SettingResult> Evaluator::RunEviction(const Setting& s) {
  SettingResult r;
  r.setting = s;
  r.note = s.note;
  // The kept count of BUZZ at this budget.
  STRATA_ASSIGN_OR_RETURN(
      std::vector<uint8_t> buzz,
      codecs::EncodeTokenSparse(block_post_, s.tokensparse, {}));
  STRATA_ASSIGN_OR_RETURN(TokenSparseLayer k0, codecs::DecodeKept(buzz, 0));
  const uint32_t K = k0.kept_per_head, B = block_tokens_;
  const uint32_t sinks = s.tokensparse.n_sink, window = s.tokensparse.window;
  r.kept_per_head = K;
  std::mt19937_64 rng(options_.seed);
  LayerErr err{std::vector<double>(num_layers()),
               std::vector<double>(num_layers())};
  std::vector<uint32_t> all(queries_[0].positions.size());
  std::iota(all.begin(), all.end(), 0);
  for (uint32_t l = 0; l < num_layers(); ++l) {
    KeptLayer kept;
    kept.tokens.resize(H_);
    kept.keys.resize(H_);
    kept.values.resize(H_);
    for (uint32_t h = 0; h < H_; ++h) {
      kept.tokens[h] = EvictionTokens(s.eviction, B, K, sinks, window, rng);
      for (uint32_t t : kept.tokens[h]) {
        const float* kv = block_post_.vec(0, l, t, h);
        kept.keys[h].insert(kept.keys[h].end(), kv, kv + D_);
        const float* vv = block_post_.vec(1, l, t, h);
        kept.values[h].insert(kept.values[h].end(), vv, vv + D_);
      }
    }
    STRATA_RETURN_IF_ERROR(KeptAttention(l, kept, all, &err));
  }
  // fp16 K and V of the kept tokens (+ a u16 position each for random).
  const double per_kept = 2.0 * D_ * 16 +
                          (s.eviction == EvictionPolicy::kRandom ? 16 : 0);
  r.bits = per_kept * K / (2.0 * D_ * B);
  Finish(err, &r);
  return r;
}

absl::StatusOr<SettingResult> Evaluator::RunCluster(const Setting& s) {
  SettingResult r;
  r.setting = s;
  r.note = s.note;
  CodecParams params = s.params;
  {
    STRATA_ASSIGN_OR_RETURN(ClusterParams cp,
                            ClusterParams::FromBytes(params));
    if (s.cluster_tokens_per_cluster > 0) {
      const uint32_t per = s.cluster_tokens_per_cluster;
      cp.num_clusters =
          static_cast<uint16_t>((block_tokens_ - cp.n_sink + per - 1) / per);
      params = cp.ToBytes();
    }
  }
  STRATA_ASSIGN_OR_RETURN(
      std::vector<uint8_t> block,
      codecs::EncodeKvBlock(block_post_, CodecId::kCluster, params));
  r.bits = codecs::BitsPerElement(block);
  STRATA_ASSIGN_OR_RETURN(ClusterIndex index, ClusterIndex::Parse(block));
  const uint32_t budget = std::max<uint32_t>(
      1, static_cast<uint32_t>(s.cluster_budget * block_tokens_));
  const uint32_t nq = queries_[0].positions.size();
  LayerErr err{std::vector<double>(num_layers()),
               std::vector<double>(num_layers())};
  double mass_sum = 0, recalled = 0, select_seconds = 0;
  uint64_t mass_n = 0, selects = 0;
  r.mass_worst_layer = 1;
  r.mass_min = 1;
  for (uint32_t l = 0; l < num_layers(); ++l) {
    const bool clustered = index.clustered(l);
    double layer_mass = 0;
    for (uint32_t qi = 0; qi < nq; ++qi) {
      const float* q = &queries_[l].data[size_t{qi} * QH_ * D_];
      const double t0 = Now();
      STRATA_ASSIGN_OR_RETURN(
          std::vector<uint32_t> sel,
          codecs::SelectTokens(index, l, absl::MakeConstSpan(q, QH_ * D_),
                               QH_, budget, s.scope));
      select_seconds += Now() - t0;
      ++selects;
      if (clustered) {
        recalled += sel.size();
        for (uint32_t qh = 0; qh < QH_; ++qh) {
          const std::vector<double> p = BlockSoftmax(l, qi, qh);
          double m = 0;
          for (uint32_t t : sel) m += p[t];
          layer_mass += m / (nq * QH_);
          mass_sum += m;
          ++mass_n;
          r.mass_min = std::min(r.mass_min, m);
        }
      }
      // Every query head attends to the whole recalled set.
      KeptLayer kept;
      kept.tokens.assign(H_, sel);
      kept.keys.resize(H_);
      kept.values.resize(H_);
      for (uint32_t h = 0; h < H_; ++h) {
        for (uint32_t t : sel) {
          const float* kv = block_post_.vec(0, l, t, h);
          kept.keys[h].insert(kept.keys[h].end(), kv, kv + D_);
          const float* vv = block_post_.vec(1, l, t, h);
          kept.values[h].insert(kept.values[h].end(), vv, vv + D_);
        }
      }
      STRATA_RETURN_IF_ERROR(KeptAttention(l, kept, {qi}, &err));
    }
    if (clustered) r.mass_worst_layer = std::min(r.mass_worst_layer, layer_mass);
  }
  if (mass_n > 0) {
    r.mass_mean = mass_sum / mass_n;
    r.recalled_mean = recalled / (static_cast<double>(mass_n) / QH_);
  }
  r.select_us = 1e6 * select_seconds / std::max<uint64_t>(selects, 1);
  r.kept_per_head = budget;
  Finish(err, &r);
  if (options_.timing) {
    const uint64_t n = block_post_.shape.ElementCount();
    STRATA_ASSIGN_OR_RETURN(const double enc, BestSeconds(options_, [&] {
      return codecs::EncodeKvBlock(block_post_, CodecId::kCluster, params)
          .status();
    }));
    STRATA_ASSIGN_OR_RETURN(const double dec, BestSeconds(options_, [&] {
      return codecs::DecodeKvBlock(block).status();
    }));
    r.encode_gbps = Gbps(n, enc);
    r.decode_gbps = Gbps(n, dec);
  }
  return r;
}

// ---- Reports.

namespace {

std::string Num(double v, const char* fmt = "%.4f") {
  if (v < 0) return "—";
  return absl::StrFormat(fmt, v);
}

std::string Speed(double gbps) {
  if (gbps < 0) return "—";
  if (gbps >= 0.1) return absl::StrFormat("%.2f", gbps);
  return absl::StrFormat("%.4f", gbps);
}

std::string Worst(const SettingResult& r) {
  return absl::StrFormat("%.4f (%u)", r.attn_worst, r.attn_worst_layer);
}

}  // namespace

std::string MarkdownReport(const std::vector<SettingResult>& results,
                           const std::map<std::string, ProfileInfo>& profiles,
                           uint32_t block_tokens, uint64_t elements_per_token) {
  std::string out;
  bool dense = false, sparse = false, cluster = false;
  for (const SettingResult& r : results) {
    dense |= r.setting.kind == SettingKind::kDense;
    sparse |= r.setting.kind == SettingKind::kTokenSparse ||
              r.setting.kind == SettingKind::kEviction;
    cluster |= r.setting.kind == SettingKind::kCluster;
  }
  if (dense) {
    absl::StrAppend(
        &out,
        "| Setting | `--settings` | bits/elem | relMSE K | relMSE V | attn err "
        "mean | attn err worst (layer) | enc GB/s | dec GB/s | notes |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for (const SettingResult& r : results) {
      if (r.setting.kind != SettingKind::kDense) continue;
      absl::StrAppend(
          &out,
          absl::StrFormat("| %s | `%s` | %.3f | %s | %s | %.4f | %s | %s | "
                          "%s | %s |\n",
                          r.setting.label, r.setting.name, r.bits,
                          Num(r.k_relmse), Num(r.v_relmse), r.attn_mean,
                          Worst(r), Speed(r.encode_gbps), Speed(r.decode_gbps),
                          r.note));
    }
    out += "\n";
  }
  if (sparse) {
    absl::StrAppend(
        &out,
        "| Setting | `--settings` | kept/head | bits/elem | attn err mean | "
        "attn err worst (layer) | enc GB/s | dec GB/s | notes |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---|\n");
    for (const SettingResult& r : results) {
      if (r.setting.kind != SettingKind::kTokenSparse &&
          r.setting.kind != SettingKind::kEviction) {
        continue;
      }
      absl::StrAppend(
          &out,
          absl::StrFormat("| %s | `%s` | %u of %u | %.3f | %.4f | %s | %s | "
                          "%s | %s |\n",
                          r.setting.label, r.setting.name, r.kept_per_head,
                          block_tokens, r.bits, r.attn_mean, Worst(r),
                          Speed(r.encode_gbps), Speed(r.decode_gbps), r.note));
    }
    out += "\n";
  }
  if (cluster) {
    absl::StrAppend(
        &out,
        "| Setting | `--settings` | budget | recalled tokens (mean) | covered "
        "mass mean | worst layer | min (layer, query, head) | attn err mean | "
        "attn err worst (layer) | bits/elem | enc GB/s | dec GB/s | select "
        "µs |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (const SettingResult& r : results) {
      if (r.setting.kind != SettingKind::kCluster) continue;
      absl::StrAppend(
          &out,
          absl::StrFormat(
              "| %s | `%s` | %u of %u | %.1f | %s | %s | %s | %.4f | %s | "
              "%.3f | %s | %s | %s |\n",
              r.setting.label, r.setting.name, r.kept_per_head, block_tokens,
              r.recalled_mean, Num(r.mass_mean), Num(r.mass_worst_layer),
              Num(r.mass_min), r.attn_mean, Worst(r), r.bits,
              Speed(r.encode_gbps), Speed(r.decode_gbps),
              Num(r.select_us, "%.1f")));
    }
    out += "\n";
  }
  if (!profiles.empty()) {
    absl::StrAppend(
        &out,
        "| Profile | source | id | size (MB) | amortised bits/elem over "
        "this block | over 1M tokens | fit (s) |\n"
        "|---|---|---|---:|---:|---:|---:|\n");
    for (const auto& [key, p] : profiles) {
      const double bits = 8.0 * p.bytes;
      absl::StrAppend(
          &out,
          absl::StrFormat("| `%s` | %s | `%016x` | %.2f | %.3f | %.5f | %s |\n",
                          key, p.source, p.id, p.bytes / 1e6,
                          bits / (double(elements_per_token) * block_tokens),
                          bits / (double(elements_per_token) * 1e6),
                          p.source == "fitted"
                              ? absl::StrFormat("%.1f", p.fit_seconds)
                              : std::string("—")));
    }
    out += "\n";
  }
  return out;
}

std::string TextLine(const SettingResult& r) {
  std::string s = absl::StrFormat(
      "%-22s bits %7.3f  relMSE K %s V %s  attn mean %.4f worst %.4f (layer "
      "%u)  enc %s dec %s GB/s",
      r.setting.name, r.bits, Num(r.k_relmse), Num(r.v_relmse), r.attn_mean,
      r.attn_worst, r.attn_worst_layer, Speed(r.encode_gbps),
      Speed(r.decode_gbps));
  if (r.kept_per_head > 0 && r.setting.kind != SettingKind::kCluster) {
    absl::StrAppend(&s, absl::StrFormat("  kept %u/head", r.kept_per_head));
  }
  if (r.setting.kind == SettingKind::kCluster) {
    absl::StrAppend(&s, absl::StrFormat(
                            "  mass mean %.4f worst layer %.4f min %.4f "
                            "recalled %.1f select %.1f us",
                            r.mass_mean, r.mass_worst_layer, r.mass_min,
                            r.recalled_mean, r.select_us));
  }
  return s;
}

}  // namespace strata::codec_eval
