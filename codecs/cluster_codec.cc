// The cluster codec: ClusterKV index + full K/V for query-driven recall.
// Layout: docs/codecs/tokensparse_cluster.md.
#include "codecs/cluster_codec.h"

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
constexpr size_t kInnerParamsSize = kvstore::kCodecParamsSize;


struct Geometry {
  uint32_t layers = 0, tokens = 0, heads = 0, dim = 0;
  uint32_t sinks = 0, members = 0;  // members = T - sinks: clustered tokens.
  uint32_t clusters = 0, first_layer = 0, clustered_layers = 0;
  size_t index_slot_bytes() const {  // One (layer, head).
    return size_t{2} * clusters * dim + size_t{4} * clusters +
           size_t{2} * members;
  }
  size_t index_bytes() const {
    return index_slot_bytes() * clustered_layers * heads;
  }
};

Geometry MakeGeometry(const BlockShape& shape, const ClusterParams& p,
                      uint32_t clusters) {
  Geometry g;
  g.layers = shape.num_layers;
  g.tokens = shape.num_tokens;
  g.heads = shape.num_kv_heads;
  g.dim = shape.head_dim;
  g.sinks = std::min<uint32_t>(p.n_sink, g.tokens);
  g.members = g.tokens - g.sinks;
  g.clusters = clusters;
  g.first_layer = p.first_layer;
  g.clustered_layers = g.layers > g.first_layer ? g.layers - g.first_layer : 0;
  return g;
}

// C for a block: params.num_clusters, or ceil(members / 16).
absl::StatusOr<uint32_t> ResolveClusters(const BlockShape& shape,
                                         const ClusterParams& p) {
  const uint32_t members =
      shape.num_tokens - std::min<uint32_t>(p.n_sink, shape.num_tokens);
  if (p.num_clusters == 0) return (members + 15) / 16;
  if (p.num_clusters > members) {
    return absl::InvalidArgumentError(
        absl::StrCat("num_clusters: ", p.num_clusters, " above the ", members,
                     " non-sink tokens"));
  }
  return p.num_clusters;
}

float ReadElement(DType dtype, const uint8_t* raw, size_t i) {
  switch (dtype) {
    case DType::kFloat16:
      return HalfToFloat(LoadLE<uint16_t>(raw + 2 * i));
    case DType::kBFloat16:
      return BFloat16ToFloat(LoadLE<uint16_t>(raw + 2 * i));
    case DType::kFloat8E4M3:
      return Fp8E4M3ToFloat(raw[i]);
    case DType::kFloat32:
      return LoadLE<float>(raw + 4 * i);
  }
  return 0;
}

}  // namespace

CodecParams ClusterParams::ToBytes() const {
  CodecParams b{};
  b[0] = kVersion;
  b[1] = static_cast<uint8_t>(inner_codec);
  std::memcpy(&b[2], &n_sink, 2);
  std::memcpy(&b[4], &num_clusters, 2);
  std::memcpy(&b[6], &first_layer, 2);
  b[8] = iterations;
  std::memcpy(&b[12], &seed, 4);
  return b;
}

absl::StatusOr<ClusterParams> ClusterParams::FromBytes(const CodecParams& b) {
  if (b[0] != kVersion) {
    return absl::InvalidArgumentError(
        absl::StrCat("version: ", b[0], ", this build reads 1"));
  }
  if (b[1] != static_cast<uint8_t>(CodecId::kRaw)) {
    return absl::InvalidArgumentError(
        absl::StrCat("inner_codec: ", b[1], "; only raw (0) is built"));
  }
  if (b[9] != 0 || b[10] != 0 || b[11] != 0 ||
      std::any_of(b.begin() + 16, b.end(), [](uint8_t x) { return x != 0; })) {
    return absl::InvalidArgumentError(
        "codec_params: reserved bytes are not zero");
  }
  ClusterParams p;
  p.inner_codec = CodecId::kRaw;
  std::memcpy(&p.n_sink, &b[2], 2);
  std::memcpy(&p.num_clusters, &b[4], 2);
  std::memcpy(&p.first_layer, &b[6], 2);
  p.iterations = b[8];
  if (p.iterations == 0) return absl::InvalidArgumentError("iterations: 0");
  std::memcpy(&p.seed, &b[12], 4);
  return p;
}

namespace {

// Parses params + index of a stored payload; everything wrong is DATA_LOSS.
absl::StatusOr<ClusterIndex> ParseIndex(const BlockShape& shape,
                                        const CodecParams& bytes,
                                        absl::Span<const uint8_t> payload,
                                        Geometry* geometry_out);

}  // namespace

absl::StatusOr<ClusterIndex> ClusterIndex::Parse(
    absl::Span<const uint8_t> block) {
  STRATA_ASSIGN_OR_RETURN(kvstore::BlockView view, kvstore::ParseBlock(block));
  if (view.header.codec != CodecId::kCluster) {
    return absl::InvalidArgumentError(
        absl::StrCat("block: codec ", static_cast<int>(view.header.codec),
                     " is not cluster"));
  }
  return ParseIndex(view.header.shape, view.header.codec_params, view.payload,
                    nullptr);
}

absl::Span<const float> ClusterIndex::centroids(uint32_t layer,
                                                uint32_t head) const {
  const size_t n = size_t{clusters_} * shape_.head_dim;
  return absl::MakeConstSpan(centroids_).subspan(Slot(layer, head) * n, n);
}
absl::Span<const uint32_t> ClusterIndex::ends(uint32_t layer,
                                              uint32_t head) const {
  return absl::MakeConstSpan(ends_).subspan(Slot(layer, head) * clusters_,
                                            clusters_);
}
absl::Span<const uint32_t> ClusterIndex::tokens(uint32_t layer,
                                                uint32_t head) const {
  const size_t n = shape_.num_tokens - sinks_;
  return absl::MakeConstSpan(tokens_).subspan(Slot(layer, head) * n, n);
}

// Fills a ClusterIndex (a friend) from a payload whose size and params
// ParseIndex has checked; validates every entry.
class ClusterIndexBuilder {
 public:
  static absl::StatusOr<ClusterIndex> Build(const BlockShape& shape,
                                            const ClusterParams& p,
                                            const uint8_t* index) {
    const Geometry g = MakeGeometry(shape, p, p.num_clusters);
    ClusterIndex out;
    out.shape_ = shape;
    out.params_ = p;
    out.params_.num_clusters = static_cast<uint16_t>(g.clusters);
    out.sinks_ = g.sinks;
    out.clusters_ = g.clusters;
    const size_t slots = size_t{g.clustered_layers} * g.heads;
    out.centroids_.resize(slots * g.clusters * g.dim);
    out.ends_.resize(slots * g.clusters);
    out.tokens_.resize(slots * g.members);
    std::vector<uint8_t> seen(g.tokens);
    for (size_t s = 0; s < slots; ++s) {
      const uint32_t layer = g.first_layer + static_cast<uint32_t>(s / g.heads);
      const uint32_t head = static_cast<uint32_t>(s % g.heads);
      const uint8_t* p8 = index + s * g.index_slot_bytes();
      float* c = &out.centroids_[s * g.clusters * g.dim];
      for (size_t i = 0; i < size_t{g.clusters} * g.dim; ++i, p8 += 2) {
        c[i] = HalfToFloat(LoadLE<uint16_t>(p8));
        if (!std::isfinite(c[i])) {
          return absl::DataLossError(absl::StrCat("centroids: layer ", layer,
                                                  " head ", head,
                                                  " holds a non-finite value"));
        }
      }
      uint32_t* ends = &out.ends_[s * g.clusters];
      for (uint32_t j = 0; j < g.clusters; ++j, p8 += 4) {
        ends[j] = LoadLE<uint32_t>(p8);
        if (ends[j] < (j ? ends[j - 1] : 0) || ends[j] > g.members) {
          return absl::DataLossError(
              absl::StrCat("cluster_ends: layer ", layer, " head ", head,
                           " cluster ", j, " ends at ", ends[j],
                           ", not in [previous end, ", g.members, "]"));
        }
      }
      if (g.clusters > 0 && ends[g.clusters - 1] != g.members) {
        return absl::DataLossError(absl::StrCat(
            "cluster_ends: layer ", layer, " head ", head, " sizes sum to ",
            ends[g.clusters - 1], ", not the ", g.members, " non-sink tokens"));
      }
      std::fill(seen.begin(), seen.end(), 0);
      uint32_t* tokens = &out.tokens_[s * g.members];
      for (uint32_t i = 0, j = 0; i < g.members; ++i, p8 += 2) {
        tokens[i] = LoadLE<uint16_t>(p8);
        while (j < g.clusters && ends[j] <= i) ++j;  // Cluster of entry i.
        const bool first_of_cluster = i == (j ? ends[j - 1] : 0);
        if (tokens[i] < g.sinks || tokens[i] >= g.tokens || seen[tokens[i]] ||
            (!first_of_cluster && tokens[i] <= tokens[i - 1])) {
          return absl::DataLossError(absl::StrCat(
              "token_ids: layer ", layer, " head ", head, " entry ", i, " (",
              tokens[i], ") is out of [", g.sinks, ", ", g.tokens,
              "), repeated or not increasing within its cluster"));
        }
        seen[tokens[i]] = 1;
      }
    }
    return out;
  }
};

namespace {

absl::StatusOr<ClusterIndex> ParseIndex(const BlockShape& shape,
                                        const CodecParams& bytes,
                                        absl::Span<const uint8_t> payload,
                                        Geometry* geometry_out) {
  auto p = ClusterParams::FromBytes(bytes);
  if (!p.ok())
    return absl::DataLossError(
        absl::StrCat("codec_params: ", p.status().message()));
  const uint32_t members =
      shape.num_tokens - std::min<uint32_t>(p->n_sink, shape.num_tokens);
  if (members > 0 ? (p->num_clusters == 0 || p->num_clusters > members)
                  : p->num_clusters != 0) {
    return absl::DataLossError(absl::StrCat("codec_params: num_clusters ",
                                            p->num_clusters, " for ", members,
                                            " non-sink tokens"));
  }
  const Geometry g = MakeGeometry(shape, *p, p->num_clusters);
  const size_t need = g.index_bytes() + kInnerParamsSize + shape.RawBytes();
  if (payload.size() != need) {
    return absl::DataLossError(absl::StrCat(
        "payload: ", payload.size(), " bytes, params and shape need ", need));
  }
  const uint8_t* inner = payload.data() + g.index_bytes();
  if (std::any_of(inner, inner + kInnerParamsSize,
                  [](uint8_t x) { return x != 0; })) {
    return absl::DataLossError(
        "inner_params: not zero for the raw inner codec");
  }
  if (geometry_out) *geometry_out = g;
  return ClusterIndexBuilder::Build(shape, *p, payload.data());
}

class ClusterCodec final : public Codec {
 public:
  CodecId id() const override { return CodecId::kCluster; }
  const char* name() const override { return "cluster"; }

  absl::Status ValidateParams(const BlockShape& shape,
                              const CodecParams& params) const override {
    STRATA_ASSIGN_OR_RETURN(ClusterParams p, ClusterParams::FromBytes(params));
    return ResolveClusters(shape, p).status();
  }

  absl::StatusOr<std::vector<uint8_t>> Encode(
      const KvTensor& kv, CodecParams& params,
      const CodecProfile*) const override {
    STRATA_RETURN_IF_ERROR(kv.shape.Validate());
    if (kv.data.size() != kv.shape.ElementCount()) {
      return absl::InvalidArgumentError(absl::StrCat("kv: ", kv.data.size(),
                                                     " values, shape needs ",
                                                     kv.shape.ElementCount()));
    }
    STRATA_ASSIGN_OR_RETURN(ClusterParams p, ClusterParams::FromBytes(params));
    STRATA_ASSIGN_OR_RETURN(const uint32_t clusters,
                            ResolveClusters(kv.shape, p));
    p.num_clusters = static_cast<uint16_t>(clusters);
    const Geometry g = MakeGeometry(kv.shape, p, clusters);
    std::vector<uint8_t> out;
    out.reserve(g.index_bytes() + kInnerParamsSize + kv.shape.RawBytes());
    std::vector<float> rows(size_t{g.members} * g.dim);
    for (uint32_t l = g.first_layer; l < g.layers && clusters > 0; ++l) {
      for (uint32_t h = 0; h < g.heads; ++h) {
        for (uint32_t i = 0; i < g.members; ++i) {
          std::copy_n(kv.vec(0, l, g.sinks + i, h), g.dim,
                      &rows[size_t{i} * g.dim]);
        }
        const std::vector<uint32_t> labels = internal::SphericalKMeans(
            rows, g.members, g.dim, clusters, p.iterations,
            (uint64_t{p.seed} << 32) | (uint64_t{l} * 1024 + h));
        std::vector<double> sum(size_t{clusters} * g.dim, 0);
        std::vector<uint32_t> size(clusters, 0);
        for (uint32_t i = 0; i < g.members; ++i) {
          ++size[labels[i]];
          for (uint32_t t = 0; t < g.dim; ++t) {
            sum[size_t{labels[i]} * g.dim + t] += rows[size_t{i} * g.dim + t];
          }
        }
        for (uint32_t j = 0; j < clusters; ++j) {
          for (uint32_t t = 0; t < g.dim; ++t) {
            const double mean =
                size[j] ? sum[size_t{j} * g.dim + t] / size[j] : 0;
            AppendLE<uint16_t>(out, FloatToHalf(static_cast<float>(mean)));
          }
        }
        uint32_t end = 0;
        for (uint32_t j = 0; j < clusters; ++j)
          AppendLE<uint32_t>(out, end += size[j]);
        std::vector<uint32_t> order(g.members);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(
            order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return labels[a] < labels[b]; });
        for (uint32_t i : order)
          AppendLE<uint16_t>(out, static_cast<uint16_t>(g.sinks + i));
      }
    }
    out.resize(out.size() + kInnerParamsSize, 0);
    const std::vector<uint8_t> raw = KvTensorToRaw(kv);
    out.insert(out.end(), raw.begin(), raw.end());
    params = p.ToBytes();
    return out;
  }

  absl::Status Decode(const BlockShape& shape, const CodecParams& params,
                      absl::Span<const uint8_t> payload, const CodecProfile*,
                      const DecodeSelection& selection,
                      KvTensor* out) const override {
    STRATA_ASSIGN_OR_RETURN(BlockShape sel, selection.Resolve(shape));
    Geometry g;
    STRATA_RETURN_IF_ERROR(ParseIndex(shape, params, payload, &g).status());
    const uint8_t* raw = payload.data() + g.index_bytes() + kInnerParamsSize;
    *out = KvTensor::Zeros(sel);
    for (int kv = 0; kv < 2; ++kv) {
      for (uint32_t l = 0; l < sel.num_layers; ++l) {
        for (uint32_t t = 0; t < sel.num_tokens; ++t) {
          // Index of (kv, layer, token, head 0, dim 0) in the full tensor.
          const size_t base =
              ((size_t{static_cast<uint32_t>(kv)} * shape.num_layers +
                selection.layer_begin + l) *
                   shape.num_tokens +
               selection.Token(t)) *
              shape.num_kv_heads * shape.head_dim;
          float* dst = out->vec(kv, l, t, 0);
          for (size_t i = 0; i < size_t{shape.num_kv_heads} * shape.head_dim;
               ++i) {
            dst[i] = ReadElement(shape.dtype, raw, base + i);
          }
        }
      }
    }
    return absl::OkStatus();
  }
};

}  // namespace

absl::StatusOr<std::vector<uint32_t>> SelectTokens(
    const ClusterIndex& index, uint32_t layer, absl::Span<const float> queries,
    uint32_t q_heads, uint32_t token_budget, BudgetScope scope) {
  const BlockShape& shape = index.shape();
  const uint32_t T = shape.num_tokens, H = shape.num_kv_heads,
                 d = shape.head_dim;
  if (layer >= shape.num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("layer: ", layer, " of ", shape.num_layers));
  }
  if (q_heads == 0 || q_heads % H != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("q_heads: ", q_heads, " is not a positive multiple of ", H,
                     " KV heads"));
  }
  if (queries.size() != size_t{q_heads} * d) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries: ", queries.size(),
                     " values, need q_heads * head_dim = ", q_heads * d));
  }
  std::vector<uint32_t> result;
  if (!index.clustered(layer) || token_budget >= T) {
    result.resize(T);
    std::iota(result.begin(), result.end(), 0);
    return result;
  }
  const uint32_t C = index.num_clusters();
  const uint32_t group = q_heads / H;
  std::vector<std::vector<uint32_t>> ranked(q_heads);
  std::vector<double> score(C);
  for (uint32_t qh = 0; qh < q_heads; ++qh) {
    const absl::Span<const float> cent = index.centroids(layer, qh / group);
    const float* q = &queries[size_t{qh} * d];
    for (uint32_t j = 0; j < C; ++j) {
      double s = 0;
      for (uint32_t t = 0; t < d; ++t)
        s += static_cast<double>(q[t]) * cent[size_t{j} * d + t];
      score[j] = s;
    }
    ranked[qh].resize(C);
    std::iota(ranked[qh].begin(), ranked[qh].end(), 0);
    std::stable_sort(
        ranked[qh].begin(), ranked[qh].end(),
        [&](uint32_t a, uint32_t b) { return score[a] > score[b]; });
  }
  std::vector<uint8_t> chosen(T, 0);
  const uint32_t sinks = index.num_sinks();
  std::fill_n(chosen.begin(), sinks, 1);
  // Takes up to `room` tokens of cluster j of KV head kvh (lowest ids first);
  // returns how many it took (counting tokens another head already chose).
  auto take = [&](uint32_t kvh, uint32_t j, uint32_t room,
                  bool count_new_only) {
    const absl::Span<const uint32_t> ends = index.ends(layer, kvh);
    const absl::Span<const uint32_t> tokens = index.tokens(layer, kvh);
    uint32_t taken = 0;
    for (uint32_t i = j ? ends[j - 1] : 0; i < ends[j] && taken < room; ++i) {
      if (!chosen[tokens[i]] || !count_new_only) ++taken;
      chosen[tokens[i]] = 1;
    }
    return taken;
  };
  if (scope == BudgetScope::kPerQueryHead) {
    for (uint32_t qh = 0; qh < q_heads; ++qh) {
      uint32_t count = sinks;
      for (uint32_t rank = 0; rank < C && count < token_budget; ++rank) {
        count +=
            take(qh / group, ranked[qh][rank], token_budget - count, false);
      }
    }
  } else {
    uint32_t count = sinks;
    for (uint32_t rank = 0; rank < C && count < token_budget; ++rank) {
      for (uint32_t qh = 0; qh < q_heads && count < token_budget; ++qh) {
        count += take(qh / group, ranked[qh][rank], token_budget - count, true);
      }
    }
  }
  for (uint32_t t = 0; t < T; ++t) {
    if (chosen[t]) result.push_back(t);
  }
  return result;
}

absl::StatusOr<std::vector<uint32_t>> SelectTokens(
    absl::Span<const uint8_t> block, uint32_t layer,
    absl::Span<const float> queries, uint32_t q_heads, uint32_t token_budget,
    BudgetScope scope) {
  STRATA_ASSIGN_OR_RETURN(ClusterIndex index, ClusterIndex::Parse(block));
  return SelectTokens(index, layer, queries, q_heads, token_budget, scope);
}

namespace internal {
const Codec* ClusterCodecInstance() {
  static const ClusterCodec codec;
  return &codec;
}
}  // namespace internal

}  // namespace strata::codecs
