// Whole-block encode/decode over the codec registry, and DecodeSelection.
#include <algorithm>

#include "absl/strings/str_cat.h"
#include "codecs/codec.h"
#include "codecs/internal/registry.h"
#include "common/status_macros.h"

namespace strata::codecs {

absl::StatusOr<BlockShape> DecodeSelection::Resolve(
    const BlockShape& shape) const {
  const uint32_t lend = std::min(layer_end, shape.num_layers);
  if (layer_begin >= lend) {
    return absl::InvalidArgumentError(absl::StrCat(
        "layer_begin: ", layer_begin, " selects no layer of ",
        shape.num_layers));
  }
  BlockShape out = shape;
  out.num_layers = lend - layer_begin;
  if (!token_indices.empty()) {
    for (size_t i = 0; i < token_indices.size(); ++i) {
      if (token_indices[i] >= shape.num_tokens ||
          (i > 0 && token_indices[i] <= token_indices[i - 1])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token_indices: entry ", i, " (", token_indices[i],
            ") is out of range or not increasing"));
      }
    }
    out.num_tokens = static_cast<uint32_t>(token_indices.size());
    return out;
  }
  const uint32_t tend = std::min(token_end, shape.num_tokens);
  if (token_begin >= tend) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_begin: ", token_begin, " selects no token of ",
        shape.num_tokens));
  }
  out.num_tokens = tend - token_begin;
  return out;
}

absl::StatusOr<const Codec*> FindCodec(CodecId id) {
  const Codec* codec = nullptr;
  switch (id) {
    case CodecId::kRaw:
      return absl::InvalidArgumentError(
          "codec: raw blocks need no codec (use KvTensorFromRaw)");
    case CodecId::kQuant: codec = internal::QuantCodecInstance(); break;
    case CodecId::kAqua: codec = internal::AquaCodecInstance(); break;
    case CodecId::kSparse: codec = internal::SparseCodecInstance(); break;
    case CodecId::kLowRank: codec = internal::LowRankCodecInstance(); break;
    case CodecId::kTokenSparse:
      codec = internal::TokenSparseCodecInstance();
      break;
    case CodecId::kCluster: codec = internal::ClusterCodecInstance(); break;
    default:
      return absl::NotFoundError(
          absl::StrCat("codec: unknown codec id ", static_cast<int>(id)));
  }
  if (codec == nullptr) {
    return absl::UnimplementedError(absl::StrCat(
        "codec: codec id ", static_cast<int>(id), " is not built yet"));
  }
  return codec;
}

absl::StatusOr<std::vector<uint8_t>> EncodeKvBlock(
    const KvTensor& kv, CodecId id, CodecParams params,
    const CodecProfile* profile) {
  STRATA_RETURN_IF_ERROR(kv.shape.Validate());
  if (kv.data.size() != kv.shape.ElementCount()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "kv: ", kv.data.size(), " values, shape needs ",
        kv.shape.ElementCount()));
  }
  if (id == CodecId::kRaw) {
    return kvstore::EncodeBlock(kv.shape, id, {}, KvTensorToRaw(kv));
  }
  STRATA_ASSIGN_OR_RETURN(const Codec* codec, FindCodec(id));
  STRATA_RETURN_IF_ERROR(codec->ValidateParams(kv.shape, params));
  STRATA_ASSIGN_OR_RETURN(std::vector<uint8_t> payload,
                          codec->Encode(kv, params, profile));
  return kvstore::EncodeBlock(kv.shape, id, params, payload);
}

absl::StatusOr<KvTensor> DecodeKvBlock(absl::Span<const uint8_t> block,
                                       const CodecProfile* profile,
                                       const DecodeSelection& selection) {
  STRATA_ASSIGN_OR_RETURN(kvstore::BlockView view, kvstore::ParseBlock(block));
  const BlockShape& shape = view.header.shape;
  KvTensor out;
  if (view.header.codec == CodecId::kRaw) {
    STRATA_ASSIGN_OR_RETURN(KvTensor full, KvTensorFromRaw(shape, view.payload));
    STRATA_ASSIGN_OR_RETURN(BlockShape sel, selection.Resolve(shape));
    out = KvTensor::Zeros(sel);
    for (int kv = 0; kv < 2; ++kv) {
      for (uint32_t l = 0; l < sel.num_layers; ++l) {
        for (uint32_t t = 0; t < sel.num_tokens; ++t) {
          for (uint32_t h = 0; h < shape.num_kv_heads; ++h) {
            std::copy_n(full.vec(kv, selection.layer_begin + l,
                                 selection.Token(t), h),
                        shape.head_dim, out.vec(kv, l, t, h));
          }
        }
      }
    }
    return out;
  }
  STRATA_ASSIGN_OR_RETURN(const Codec* codec, FindCodec(view.header.codec));
  STRATA_RETURN_IF_ERROR(codec->Decode(shape, view.header.codec_params,
                                       view.payload, profile, selection, &out));
  return out;
}

double BitsPerElement(absl::Span<const uint8_t> block) {
  auto header = kvstore::ParseBlockHeader(block);
  if (!header.ok()) return 0;
  return 8.0 * static_cast<double>(block.size()) /
         static_cast<double>(header->shape.ElementCount());
}

}  // namespace strata::codecs
