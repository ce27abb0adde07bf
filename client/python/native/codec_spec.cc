#include "client/python/native/codec_spec.h"

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "codecs/aqua_codec.h"
#include "codecs/cluster_codec.h"
#include "codecs/lowrank_codec.h"
#include "codecs/quant_codec.h"
#include "codecs/sparse_codec.h"
#include "codecs/tokensparse_codec.h"
#include "common/status_macros.h"

namespace strata::python {
namespace {

using codecs::CodecId;

// key -> value text of one spec, consumed as fields are read; what is left
// at the end is an unknown key.
class Fields {
 public:
  explicit Fields(std::map<std::string, std::string> kv) : kv_(std::move(kv)) {}

  template <typename T>
  absl::Status Uint(const std::string& key, T* out, uint64_t max) {
    auto it = kv_.find(key);
    if (it == kv_.end()) return absl::OkStatus();
    uint64_t v = 0;
    if (!absl::SimpleAtoi(it->second, &v) || v > max) {
      return absl::InvalidArgumentError(absl::StrCat(
          key, ": \"", it->second, "\" is not an integer in [0, ", max, "]"));
    }
    *out = static_cast<T>(v);
    kv_.erase(it);
    return absl::OkStatus();
  }
  absl::Status U8(const std::string& key, uint8_t* out) { return Uint(key, out, 255); }
  absl::Status U16(const std::string& key, uint16_t* out) { return Uint(key, out, 65535); }
  absl::Status U32(const std::string& key, uint32_t* out) {
    return Uint(key, out, UINT32_MAX);
  }
  absl::Status Bool(const std::string& key, bool* out) {
    auto it = kv_.find(key);
    if (it == kv_.end()) return absl::OkStatus();
    const std::string& v = it->second;
    if (v == "1" || v == "true" || v == "True") {
      *out = true;
    } else if (v == "0" || v == "false" || v == "False") {
      *out = false;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(key, ": \"", v, "\" is not 0/1/true/false"));
    }
    kv_.erase(it);
    return absl::OkStatus();
  }
  absl::Status Float(const std::string& key, float* out) {
    auto it = kv_.find(key);
    if (it == kv_.end()) return absl::OkStatus();
    if (!absl::SimpleAtof(it->second, out)) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, ": \"", it->second, "\" is not a number"));
    }
    kv_.erase(it);
    return absl::OkStatus();
  }
  // Sets both `a` and `b` from a shared key ("bits" -> k_bits and v_bits).
  absl::Status U8Pair(const std::string& key, uint8_t* a, uint8_t* b) {
    uint8_t v = 0;
    if (!kv_.contains(key)) return absl::OkStatus();
    STRATA_RETURN_IF_ERROR(U8(key, &v));
    *a = *b = v;
    return absl::OkStatus();
  }
  absl::Status Done(const std::string& codec) const {
    if (kv_.empty()) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(
        "codec: unknown key \"", kv_.begin()->first, "\" for ", codec));
  }
  std::string Take(const std::string& key) {
    auto it = kv_.find(key);
    if (it == kv_.end()) return "";
    std::string v = it->second;
    kv_.erase(it);
    return v;
  }

 private:
  std::map<std::string, std::string> kv_;
};

std::string B(bool v) { return v ? "1" : "0"; }

// The fields that quant and aqua share ("bits" and "group" set both halves,
// the k_ / v_ keys one of them). P: QuantParams or AquaParams.
template <typename P>
absl::Status ParseBitsAndGroups(Fields& f, P* p) {
  STRATA_RETURN_IF_ERROR(f.U8Pair("bits", &p->k_bits, &p->v_bits));
  STRATA_RETURN_IF_ERROR(f.U8Pair("group", &p->k_group, &p->v_group));
  STRATA_RETURN_IF_ERROR(f.U8("k_bits", &p->k_bits));
  STRATA_RETURN_IF_ERROR(f.U8("v_bits", &p->v_bits));
  STRATA_RETURN_IF_ERROR(f.U8("k_group", &p->k_group));
  STRATA_RETURN_IF_ERROR(f.U8("v_group", &p->v_group));
  return f.Bool("keys_per_token", &p->keys_per_token);
}

// Their spec text, in ParseBitsAndGroups's order.
template <typename P>
std::vector<std::string> FormatBitsAndGroups(const P& p) {
  return {absl::StrCat("k_bits=", p.k_bits), absl::StrCat("v_bits=", p.v_bits),
          absl::StrCat("k_group=", p.k_group), absl::StrCat("v_group=", p.v_group),
          "keys_per_token=" + B(p.keys_per_token)};
}

}  // namespace

const char* CodecName(CodecId id) {
  switch (id) {
    case CodecId::kRaw: return "raw";
    case CodecId::kQuant: return "quant";
    case CodecId::kAqua: return "aqua";
    case CodecId::kSparse: return "sparse";
    case CodecId::kLowRank: return "lowrank";
    case CodecId::kTokenSparse: return "tokensparse";
    case CodecId::kCluster: return "cluster";
  }
  return "unknown";
}

absl::StatusOr<CodecSpec> ParseCodecSpec(const std::string& spec) {
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  std::map<std::string, std::string> kv;
  if (colon != std::string::npos) {
    for (absl::string_view item :
         absl::StrSplit(spec.substr(colon + 1), ',', absl::SkipEmpty())) {
      std::vector<std::string> parts = absl::StrSplit(item, absl::MaxSplits('=', 1));
      if (parts.size() != 2 || parts[0].empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "codec: \"", std::string(item), "\" is not key=value in \"", spec, "\""));
      }
      kv[parts[0]] = parts[1];
    }
  }
  Fields f(std::move(kv));
  CodecSpec out;
  if (name == "raw") {
    out.id = CodecId::kRaw;
  } else if (name == "quant") {
    codecs::QuantParams p;
    STRATA_RETURN_IF_ERROR(ParseBitsAndGroups(f, &p));
    STRATA_RETURN_IF_ERROR(f.U16("n_sink", &p.n_sink));
    STRATA_RETURN_IF_ERROR(f.U16("outlier_bp", &p.outlier_bp));
    out.id = CodecId::kQuant;
    out.params = p.ToBytes();
  } else if (name == "aqua") {
    codecs::AquaParams p;
    STRATA_RETURN_IF_ERROR(ParseBitsAndGroups(f, &p));
    STRATA_RETURN_IF_ERROR(f.U8("l0_bits", &p.l0_bits));
    STRATA_RETURN_IF_ERROR(f.U16("n_sink", &p.n_sink));
    out.id = CodecId::kAqua;
    out.params = p.ToBytes();
  } else if (name == "sparse") {
    codecs::SparseParams p;
    STRATA_RETURN_IF_ERROR(f.U8("atoms_per_chunk", &p.atoms_per_chunk));
    STRATA_RETURN_IF_ERROR(f.U8("chunks_per_head", &p.chunks_per_head));
    STRATA_RETURN_IF_ERROR(f.U8("online_atoms", &p.online_atoms));
    out.id = CodecId::kSparse;
    out.params = p.ToBytes();
  } else if (name == "lowrank") {
    codecs::LowRankParams p;
    const std::string format = f.Take("format");
    if (format == "fp16" || format == "float16") {
      p.format = codecs::LatentFormat::kFloat16;
    } else if (format == "int8") {
      p.format = codecs::LatentFormat::kInt8;
    } else if (format == "int4") {
      p.format = codecs::LatentFormat::kInt4;
    } else if (!format.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("format: \"", format, "\" is not fp16, int8 or int4"));
    }
    bool whiten = false;
    STRATA_RETURN_IF_ERROR(f.Bool("whiten", &whiten));
    if (whiten) p.flags |= codecs::LowRankParams::kFlagWhiten;
    uint16_t rank = 0;
    STRATA_RETURN_IF_ERROR(f.U16("rank", &rank));
    if (rank != 0) p.rank_k = p.rank_v = rank;
    STRATA_RETURN_IF_ERROR(f.U16("rank_k", &p.rank_k));
    STRATA_RETURN_IF_ERROR(f.U16("rank_v", &p.rank_v));
    out.id = CodecId::kLowRank;
    out.params = p.ToBytes();
  } else if (name == "tokensparse") {
    codecs::TokenSparseParams p;
    STRATA_RETURN_IF_ERROR(f.U16("n_sink", &p.n_sink));
    STRATA_RETURN_IF_ERROR(f.U16("window", &p.window));
    STRATA_RETURN_IF_ERROR(f.U16("stride", &p.stride));
    STRATA_RETURN_IF_ERROR(f.Float("budget", &p.budget_fraction));
    STRATA_RETURN_IF_ERROR(f.Bool("proxy_high_norm", &p.proxy_high_norm));
    STRATA_RETURN_IF_ERROR(f.Bool("summary", &p.summary));
    STRATA_RETURN_IF_ERROR(f.U8("summary_rank", &p.summary_rank));
    STRATA_RETURN_IF_ERROR(f.U32("summary_seed", &p.summary_seed));
    out.id = CodecId::kTokenSparse;
    out.params = p.ToBytes();
  } else if (name == "cluster") {
    codecs::ClusterParams p;
    STRATA_RETURN_IF_ERROR(f.U16("n_sink", &p.n_sink));
    STRATA_RETURN_IF_ERROR(f.U16("num_clusters", &p.num_clusters));
    STRATA_RETURN_IF_ERROR(f.U16("first_layer", &p.first_layer));
    STRATA_RETURN_IF_ERROR(f.U8("iterations", &p.iterations));
    STRATA_RETURN_IF_ERROR(f.U32("seed", &p.seed));
    out.id = CodecId::kCluster;
    out.params = p.ToBytes();
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "codec: unknown codec \"", name,
        "\" (raw, quant, aqua, sparse, lowrank, tokensparse, cluster)"));
  }
  STRATA_RETURN_IF_ERROR(f.Done(name));
  return out;
}

absl::StatusOr<std::string> FormatCodecSpec(CodecId id,
                                            const codecs::CodecParams& params) {
  std::vector<std::string> kv;
  switch (id) {
    case CodecId::kRaw:
      return std::string("raw");
    case CodecId::kQuant: {
      STRATA_ASSIGN_OR_RETURN(codecs::QuantParams p,
                              codecs::QuantParams::FromBytes(params));
      kv = FormatBitsAndGroups(p);
      kv.push_back(absl::StrCat("n_sink=", p.n_sink));
      kv.push_back(absl::StrCat("outlier_bp=", p.outlier_bp));
      break;
    }
    case CodecId::kAqua: {
      STRATA_ASSIGN_OR_RETURN(codecs::AquaParams p,
                              codecs::AquaParams::FromBytes(params));
      kv = FormatBitsAndGroups(p);
      kv.push_back(absl::StrCat("l0_bits=", p.l0_bits));
      kv.push_back(absl::StrCat("n_sink=", p.n_sink));
      break;
    }
    case CodecId::kSparse: {
      STRATA_ASSIGN_OR_RETURN(codecs::SparseParams p,
                              codecs::SparseParams::FromBytes(params));
      kv = {absl::StrCat("atoms_per_chunk=", p.atoms_per_chunk),
            absl::StrCat("chunks_per_head=", p.chunks_per_head),
            absl::StrCat("online_atoms=", p.online_atoms)};
      break;
    }
    case CodecId::kLowRank: {
      STRATA_ASSIGN_OR_RETURN(codecs::LowRankParams p,
                              codecs::LowRankParams::FromBytes(params));
      const char* format = p.format == codecs::LatentFormat::kInt8   ? "int8"
                           : p.format == codecs::LatentFormat::kInt4 ? "int4"
                                                                     : "fp16";
      kv = {absl::StrCat("format=", format),
            "whiten=" + B(p.flags & codecs::LowRankParams::kFlagWhiten),
            absl::StrCat("rank_k=", p.rank_k), absl::StrCat("rank_v=", p.rank_v)};
      break;
    }
    case CodecId::kTokenSparse: {
      STRATA_ASSIGN_OR_RETURN(codecs::TokenSparseParams p,
                              codecs::TokenSparseParams::FromBytes(params));
      kv = {absl::StrCat("n_sink=", p.n_sink), absl::StrCat("window=", p.window),
            absl::StrCat("stride=", p.stride),
            absl::StrCat("budget=", p.budget_fraction),
            "proxy_high_norm=" + B(p.proxy_high_norm), "summary=" + B(p.summary),
            absl::StrCat("summary_rank=", p.summary_rank),
            absl::StrCat("summary_seed=", p.summary_seed)};
      break;
    }
    case CodecId::kCluster: {
      STRATA_ASSIGN_OR_RETURN(codecs::ClusterParams p,
                              codecs::ClusterParams::FromBytes(params));
      kv = {absl::StrCat("n_sink=", p.n_sink),
            absl::StrCat("num_clusters=", p.num_clusters),
            absl::StrCat("first_layer=", p.first_layer),
            absl::StrCat("iterations=", p.iterations), absl::StrCat("seed=", p.seed)};
      break;
    }
  }
  if (kv.empty()) return absl::InvalidArgumentError("codec: unknown codec id");
  return absl::StrCat(CodecName(id), ":", absl::StrJoin(kv, ","));
}

}  // namespace strata::python
