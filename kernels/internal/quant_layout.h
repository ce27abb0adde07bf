// The quant payload layout as kernel arguments (pointers left null): shared
// by kernels/quant_kernels.cc and the host tests that emulate the kernels.
//
// Not a public header.
#ifndef STRATA_KERNELS_INTERNAL_QUANT_LAYOUT_H_
#define STRATA_KERNELS_INTERNAL_QUANT_LAYOUT_H_

#include <cstdint>

#include "codecs/quant_codec.h"
#include "kernels/internal/launch.h"
#include "kvstore/block_format.h"

namespace strata::kernels::internal {

// The layout of codecs/quant_codec.cc's MakeLayout for a valid shape and
// params (outlier lists included in slab_bytes when outlier_bp > 0).
QuantArgs MakeQuantArgs(const kvstore::BlockShape& shape,
                        const codecs::QuantParams& params);

// Total payload bytes of a layout.
uint64_t QuantTotalBytes(const QuantArgs& args);

// Channels per block of the per-channel kernels: 64 when hd allows it.
inline uint32_t QuantChannelTile(uint32_t hd) { return hd % 64 == 0 ? 64 : 32; }

// Threads per block of the quant kernels.
inline constexpr uint32_t kQuantThreads = 256;

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_QUANT_LAYOUT_H_
