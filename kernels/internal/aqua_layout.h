// The aqua payload layout and workspace split as kernel arguments (pointers
// left null): shared by kernels/aqua_kernels.cc and the host tests that
// emulate the kernels. g++ only.
//
// Not a public header.
#ifndef STRATA_KERNELS_INTERNAL_AQUA_LAYOUT_H_
#define STRATA_KERNELS_INTERNAL_AQUA_LAYOUT_H_

#include <cstddef>
#include <cstdint>

#include "codecs/aqua_codec.h"
#include "kernels/internal/aqua_arith.h"
#include "kvstore/block_format.h"

namespace strata::kernels::internal {

// codecs/aqua_codec.cc's MakeLayout for a valid shape and params.
AquaArgs MakeAquaArgs(const kvstore::BlockShape& shape,
                      const codecs::AquaParams& params);

// Workspace bytes for a layout: 4 reconstruction buffers and the prediction
// ([tq][hd] fp32 each), plus the code bytes [tq*hd] when `encode`; each part
// starts 256-byte aligned.
size_t AquaWorkspaceBytes(const AquaArgs& args, bool encode);

// Points args->recon / pred / codes into `workspace` (AquaWorkspaceBytes).
void AquaSplitWorkspace(void* workspace, bool encode, AquaArgs* args);

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_AQUA_LAYOUT_H_
