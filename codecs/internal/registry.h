// Internal: the codec singletons, one per file. FindCodec (block_codec.cc)
// maps ids to them; a function returning null marks a codec not built yet.
#ifndef STRATA_CODECS_INTERNAL_REGISTRY_H_
#define STRATA_CODECS_INTERNAL_REGISTRY_H_

#include "codecs/codec.h"

namespace strata::codecs::internal {

const Codec* QuantCodecInstance();       // quant_codec.cc
const Codec* AquaCodecInstance();        // aqua_codec.cc
const Codec* SparseCodecInstance();      // sparse_codec.cc
const Codec* LowRankCodecInstance();     // lowrank_codec.cc
const Codec* TokenSparseCodecInstance(); // tokensparse_codec.cc
const Codec* ClusterCodecInstance();     // cluster_codec.cc

}  // namespace strata::codecs::internal

#endif  // STRATA_CODECS_INTERNAL_REGISTRY_H_
