// Placeholder until the quant codec lands: FindCodec answers UNIMPLEMENTED.
#include "codecs/internal/registry.h"

namespace strata::codecs::internal {
const Codec* QuantCodecInstance() { return nullptr; }
}  // namespace strata::codecs::internal
