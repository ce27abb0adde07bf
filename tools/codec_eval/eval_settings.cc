// Codec evaluation settings and profile specs (split from eval_lib.cc).
#include "tools/codec_eval/eval_lib.h"

#include <algorithm>
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

}  // namespace strata::codec_eval
