// Placeholder until the sparse codec lands: FindCodec answers UNIMPLEMENTED.
#include "codecs/internal/registry.h"

namespace strata::codecs::internal {
const Codec* SparseCodecInstance() { return nullptr; }
}  // namespace strata::codecs::internal
