// strata_codec_eval: the evaluation behind `strata-eval`, `strata-calibrate`,
// the Python shim (libstrata_codec_shim.so) and tests/codecs/eval_smoke_test.
//
// What it measures (docs/codecs/eval.md has the table and the method): on the
// real SmolLM2-135M fixture (codecs/kv_fixture.h), profiles are fitted on the
// calibration passage (0) and every setting is evaluated on the held-out
// evaluation passage (1, 320 tokens):
//   - the stored block is tokens [0, block_tokens) of the selected layers
//     (default 288: the 32 stored queries sit at positions 288..319, so the
//     block is the prefix a store would hold when those decode steps run);
//     tokens [block_tokens, 320) are the live tail and stay exact fp16;
//   - bits/element = BitsPerElement of the encoded block (header + every byte
//     of metadata; profiles reported separately);
//   - relMSE of K (pre-RoPE) and V over the block;
//   - attention-output error ||o - o'|| / ||o|| per layer over the 32 real
//     queries x 9 query heads (GQA mapping, causal), o from the fp16 fixture,
//     o' with the decoded block (keys rotated with ApplyRope at their
//     positions and rounded to fp16, as an fp16 post-RoPE cache holds them)
//     plus the exact tail; mean over layers and the worst layer;
//   - encode/decode throughput in GB/s of fp16 input (best of a few
//     repetitions, one thread).
// Token-sparse settings (BUZZ, eviction) attend per KV head to the kept
// tokens (+ the LESS summary with AttendWithSummary); ClusterKV attends to the
// recalled tokens and reports the covered attention mass.
//
// Thread safety: an Evaluator is not thread-safe; settings are plain values.
#ifndef STRATA_TOOLS_CODEC_EVAL_EVAL_LIB_H_
#define STRATA_TOOLS_CODEC_EVAL_EVAL_LIB_H_

#include <cstdint>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "codecs/cluster_codec.h"
#include "codecs/codec.h"
#include "codecs/codec_profile.h"
#include "codecs/kv_fixture.h"
#include "codecs/sparse_codec.h"
#include "codecs/tokensparse_codec.h"

namespace strata::codec_eval {

using codecs::CodecId;
using codecs::CodecParams;
using codecs::CodecProfile;
using codecs::KvFixture;
using codecs::KvTensor;

// ---- Profiles.

enum class ProfileKind { kNone, kAqua, kSparse, kLowRank };

// What a profile is fitted with. `Key()` names it (settings that share a key
// share one profile).
struct ProfileSpec {
  ProfileKind kind = ProfileKind::kNone;
  float aqua_ridge_lambda = 1.0f;            // kAqua.
  codecs::SparseFitOptions sparse;           // kSparse.
  uint32_t lowrank_r_max = 64;               // kLowRank.

  std::string Key() const;
  // The strata-calibrate flags that fit this profile ("--codec=aqua ...").
  std::string CalibrateFlags() const;
};

// Fits the profile on `calibration` (KV of one shape except tokens).
absl::StatusOr<CodecProfile> FitProfile(const ProfileSpec& spec,
                                        const std::vector<KvTensor>& calibration,
                                        const std::string& model_id);
// Whether a loaded profile is of `spec`'s kind and serves it (sparse: the
// dictionary's atom dimension matches chunks_per_head).
bool ProfileServes(const CodecProfile& profile, const ProfileSpec& spec,
                   uint32_t head_dim);
// The kind of a loaded profile, from its tensor names.
ProfileKind KindOf(const CodecProfile& profile);
const char* KindName(ProfileKind kind);

// ---- Settings.

enum class SettingKind {
  kDense,        // Encode/decode with a codec; attention on the decoded block.
  kTokenSparse,  // BUZZ block (tokensparse codec) by key-norm proxy or scores.
  kEviction,     // No codec: sinks + recent window / random, same kept count.
  kCluster,      // ClusterKV index; attention to the recalled tokens.
};
enum class ScoreSource { kProxy, kRealScores };
enum class EvictionPolicy { kRecent, kRandom };

struct Setting {
  std::string name;   // For --settings and the shim ("kivi2", "aqua2-g64").
  std::string group;  // Table section.
  std::string label;  // Table row.
  SettingKind kind = SettingKind::kDense;
  // kDense / kCluster.
  CodecId codec = CodecId::kRaw;
  CodecParams params{};
  ProfileSpec profile;
  // kTokenSparse / kEviction: BUZZ params (budget_fraction, sinks, window).
  codecs::TokenSparseParams tokensparse;
  ScoreSource scores = ScoreSource::kProxy;
  EvictionPolicy eviction = EvictionPolicy::kRecent;
  // kCluster.
  codecs::BudgetScope scope = codecs::BudgetScope::kPerQueryHead;
  float cluster_budget = 0.10f;  // Fraction of the block's tokens.
  // Clusters per (layer, head) = ceil((T - sinks) / this); 0: the codec's
  // default (T/16).
  uint32_t cluster_tokens_per_cluster = 0;
  std::string note;
};

// Every setting strata-eval knows, in table order.
const std::vector<Setting>& AllSettings();
// NOT_FOUND naming the setting.
absl::StatusOr<Setting> FindSetting(const std::string& name);

// ---- One round trip (the Python shim's strata_codec_roundtrip).

struct RoundTripResult {
  KvTensor decoded;           // Pre-RoPE keys, values; dropped tokens zero.
  std::vector<uint8_t> keep;  // [layers][tokens][kv_heads]: 1 = kept.
  double bits = 0;            // BitsPerElement of the block.
};
// Encodes and decodes `kv` (pre-RoPE keys) with a dense, token-sparse
// (key-norm proxy, no summary) or eviction setting. UNIMPLEMENTED for
// settings that need queries or scores (ClusterKV, real scores, LESS).
absl::StatusOr<RoundTripResult> RoundTrip(const Setting& setting,
                                          const KvTensor& kv,
                                          const CodecProfile* profile,
                                          uint64_t seed = 0x5EEDu);

// Kept block tokens of one KV head for an eviction policy keeping `kept`
// tokens of `tokens` with BUZZ's sinks and window (sorted).
std::vector<uint32_t> EvictionTokens(EvictionPolicy policy, uint32_t tokens,
                                     uint32_t kept, uint32_t sinks,
                                     uint32_t window, std::mt19937_64& rng);

// ---- Evaluation.

struct EvalOptions {
  std::string fixture_path;      // Empty: codecs::DefaultFixturePath().
  uint32_t calibration_passage = 0;
  uint32_t evaluation_passage = 1;
  uint32_t layer_begin = 0;
  uint32_t layer_end = UINT32_MAX;   // Clamped to the fixture's layers.
  uint32_t block_tokens = 288;       // Tokens [0, block_tokens) are stored.
  bool timing = true;                // Measure throughput.
  int min_reps = 2;                  // Timing: at least this many runs,
  int max_reps = 10;                 // at most this many,
  double min_seconds = 0.5;          // and until this much time is spent.
  uint64_t seed = 0x5EEDu;           // Random eviction.
  // Diagnostics for dense codecs: 0 keeps the keys exact, 1 the values (the
  // attention error is then that of the other side alone); -1 neither.
  int exact_side = -1;
};

struct ProfileInfo {
  std::string key;
  std::string source;   // "fitted" or a file path.
  uint64_t id = 0;
  size_t bytes = 0;     // Serialized size.
  double fit_seconds = 0;
};

struct SettingResult {
  Setting setting;
  double bits = 0;                  // BitsPerElement of the block (or model).
  double k_relmse = -1, v_relmse = -1;  // < 0: not applicable.
  double attn_mean = 0, attn_worst = 0;
  uint32_t attn_worst_layer = 0;
  std::vector<double> attn_per_layer;
  double encode_gbps = -1, decode_gbps = -1;  // < 0: not measured.
  // Token sparse / eviction: kept tokens per head of the block.
  uint32_t kept_per_head = 0;
  // Cluster: covered attention mass over clustered layers, queries, heads.
  double mass_mean = -1, mass_worst_layer = -1, mass_min = -1;
  double recalled_mean = 0;  // Tokens recalled per (layer, query).
  double select_us = -1;     // SelectTokens per (layer, query), microseconds.
  std::string profile_key;
  std::string note;
};

class Evaluator {
 public:
  static absl::StatusOr<std::unique_ptr<Evaluator>> Create(
      const EvalOptions& options);

  const KvFixture& fixture() const { return *fixture_; }
  const EvalOptions& options() const { return options_; }
  uint32_t num_layers() const { return layer_end_ - layer_begin_; }

  // Registers a loaded profile; settings whose spec it serves use it
  // instead of fitting one.
  void AddProfile(CodecProfile profile, const std::string& source);
  // The profile for `spec` (fitted on the calibration passage on first use).
  absl::StatusOr<const CodecProfile*> Profile(const ProfileSpec& spec);
  const std::map<std::string, ProfileInfo>& profile_infos() const {
    return profile_infos_;
  }

  absl::StatusOr<SettingResult> Run(const Setting& setting);

 private:
  explicit Evaluator(const EvalOptions& options) : options_(options) {}
  absl::Status Init();

  // Per-layer sums of ||o - o'||^2 and ||o||^2.
  struct LayerErr {
    std::vector<double> num, den;
  };
  // Attention over the decoded block (pre-RoPE K) + exact tail.
  absl::Status DenseAttention(const KvTensor& decoded_pre, LayerErr* err);
  // Per layer and KV head: kept block tokens; keys/values post-RoPE
  // [heads][kept][d]; summaries optional. Queries in `query_subset`.
  struct KeptLayer {
    std::vector<std::vector<uint32_t>> tokens;  // [heads][kept]
    std::vector<std::vector<float>> keys, values;  // [heads][kept*d]
    std::vector<codecs::LessSummary> summaries;    // [heads] or empty.
  };
  absl::Status KeptAttention(uint32_t layer, const KeptLayer& kept,
                             const std::vector<uint32_t>& query_subset,
                             LayerErr* err);
  void Finish(const LayerErr& err, SettingResult* r) const;

  absl::StatusOr<SettingResult> RunDense(const Setting& s);
  absl::StatusOr<SettingResult> RunTokenSparse(const Setting& s);
  absl::StatusOr<SettingResult> RunEviction(const Setting& s);
  absl::StatusOr<SettingResult> RunCluster(const Setting& s);

  // Accumulated attention of `queries` (indices into the 32) over the block,
  // [layers][block_tokens][kv_heads].
  std::vector<float> RealScores(const std::vector<uint32_t>& queries) const;
  // Softmax over the block tokens of one (layer, query, q head), post-RoPE.
  std::vector<double> BlockSoftmax(uint32_t layer, uint32_t query,
                                   uint32_t q_head) const;

  EvalOptions options_;
  std::unique_ptr<KvFixture> fixture_;
  uint32_t layer_begin_ = 0, layer_end_ = 0, total_tokens_ = 0;
  uint32_t block_tokens_ = 0, H_ = 0, QH_ = 0, D_ = 0;
  KvTensor block_pre_;    // [2][L][B][H][D], pre-RoPE keys, fp16 values.
  KvTensor block_post_;   // Same, post-RoPE keys (rounded to fp16).
  KvTensor all_post_;     // [2][L][T][H][D], all tokens, post-RoPE.
  std::vector<codecs::FixtureQueries> queries_;  // Per layer, post-RoPE.
  std::vector<std::vector<float>> reference_;    // Per layer [nq][QH][D].
  std::vector<CodecProfile> loaded_;
  std::vector<std::string> loaded_sources_;
  std::map<std::string, std::unique_ptr<CodecProfile>> profiles_;
  std::map<std::string, ProfileInfo> profile_infos_;
};

// ---- Reports.

// The markdown tables (dense codecs, token-sparse, ClusterKV, profiles).
std::string MarkdownReport(const std::vector<SettingResult>& results,
                           const std::map<std::string, ProfileInfo>& profiles,
                           uint32_t block_tokens, uint64_t block_elements);
// One plain-text line per setting.
std::string TextLine(const SettingResult& r);

}  // namespace strata::codec_eval

#endif  // STRATA_TOOLS_CODEC_EVAL_EVAL_LIB_H_
