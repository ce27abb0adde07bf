// Placeholder until the tokensparse codec lands: FindCodec answers UNIMPLEMENTED.
#include "codecs/internal/registry.h"

namespace strata::codecs::internal {
const Codec* TokenSparseCodecInstance() { return nullptr; }
}  // namespace strata::codecs::internal
