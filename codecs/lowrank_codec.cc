// Placeholder until the lowrank codec lands: FindCodec answers UNIMPLEMENTED.
#include "codecs/internal/registry.h"

namespace strata::codecs::internal {
const Codec* LowRankCodecInstance() { return nullptr; }
}  // namespace strata::codecs::internal
