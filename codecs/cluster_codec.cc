// Placeholder until the cluster codec lands: FindCodec answers UNIMPLEMENTED.
#include "codecs/internal/registry.h"

namespace strata::codecs::internal {
const Codec* ClusterCodecInstance() { return nullptr; }
}  // namespace strata::codecs::internal
