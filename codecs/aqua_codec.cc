// Placeholder until the aqua codec lands: FindCodec answers UNIMPLEMENTED.
#include "codecs/internal/registry.h"

namespace strata::codecs::internal {
const Codec* AquaCodecInstance() { return nullptr; }
}  // namespace strata::codecs::internal
