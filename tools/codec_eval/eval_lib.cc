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

}  // namespace

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
