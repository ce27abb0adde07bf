// Codec spec strings of the strata package: "raw", "quant:bits=4,group=64",
// "aqua:bits=2,group=64,n_sink=4", ... (the grammar and every key are listed
// in docs/python.md). A spec names a codec and the fields of its params
// struct (codecs/*_codec.h); unnamed fields keep the struct's defaults.
//
// Thread safety: pure functions.
#ifndef STRATA_CLIENT_PYTHON_NATIVE_CODEC_SPEC_H_
#define STRATA_CLIENT_PYTHON_NATIVE_CODEC_SPEC_H_

#include <string>

#include "absl/status/statusor.h"
#include "codecs/codec.h"

namespace strata::python {

struct CodecSpec {
  codecs::CodecId id = codecs::CodecId::kRaw;
  codecs::CodecParams params{};
};

// Parses `name[:key=value[,key=value]...]`. INVALID_ARGUMENT naming "codec"
// for an unknown codec or key, or the key for a bad value.
absl::StatusOr<CodecSpec> ParseCodecSpec(const std::string& spec);

// The codec's name ("raw", "quant", ...); "unknown" for another id.
const char* CodecName(codecs::CodecId id);

// The spec string of a block's codec and params (every field named, so
// ParseCodecSpec of it gives the same params, minus encoder-written fields
// such as profile ids). INVALID_ARGUMENT when the params do not parse.
absl::StatusOr<std::string> FormatCodecSpec(codecs::CodecId id,
                                            const codecs::CodecParams& params);

}  // namespace strata::python

#endif  // STRATA_CLIENT_PYTHON_NATIVE_CODEC_SPEC_H_
