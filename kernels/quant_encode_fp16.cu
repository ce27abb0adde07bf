// The fp16 fast path of the quant (KIVI) encoder: one launch encodes both
// sides of a block, for the common configuration (fp16, 2/4/8-bit codes,
// groups of 32 on both sides, per-channel or per-token keys, a token count
// after the sinks that is a multiple of 32, hd a multiple of 256, a
// 16-byte-aligned payload layout). Everything else goes to the general
// kernels in quant_kernels.cu. Same bytes as the CPU codec: the arithmetic
// and why it is exact are in kernels/internal/quant_fast.h.
//
// Grid: (tile, layer, side). A tile is 32 tokens x 256 channels of one
// layer (keys, per channel) or 256 consecutive groups (values, and keys with
// keys_per_token) -- the same number of tiles per layer either way.
//
// Per-channel keys: warp w loads token rows 4w..4w+3 of the tile (one
// 512-byte row per load instruction, 8 channels per lane), reduces each
// channel over its 4 rows with packed fp16 min/max, and leaves the partials
// in shared memory; thread c combines channel c's 8 partials, writes the
// group record, and shares zero/inv/scale; each thread then quantizes its 4
// rows x 8 channels into one 4*bits-bit piece per channel, staged as
// [warp][channel]; thread c finally gathers channel c's 8 pieces (tokens in
// order) and writes its 4*bits bytes of codes.
//
// Per-token groups: a warp loads 32 consecutive groups (2 KiB) with
// coalesced 16-byte loads into a swizzled shared-memory buffer, then each
// lane reads back one whole group (bank-conflict free both ways), reduces
// it, computes its record once, and writes 4*bits bytes of codes.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"
#include "kernels/internal/quant_device.cuh"
#include "kernels/internal/quant_fast.h"

namespace strata::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr uint32_t kGroup = 32;
constexpr uint32_t kTileChannels = 256;  // 32 lanes x 8 channels.
constexpr int kRows = 4;                 // Token rows per warp (32 / 8 warps).

struct alignas(16) ChannelSmem {
  __half part_lo[8][kTileChannels];  // [warp][channel]
  __half part_hi[8][kTileChannels];
  float zero[kTileChannels];
  float inv[kTileChannels];
  float scale[kTileChannels];
  uint32_t pieces[8 * kTileChannels];  // [warp][channel], 4*bits bits each.
};
struct alignas(16) TokenSmem {
  uint4 pieces[8][32 * 4];  // [warp][group * 4 + swizzled piece]
};
union alignas(16) EncodeSmem {
  ChannelSmem channel;
  TokenSmem token;
};

// The record of a group with fp16 minimum lo and maximum hi (from unordered
// min/max), the non-finite flag, and -- when the minimum is zero -- the
// sign of the group's first zero from first_zero_sign().
template <int kBits, class FirstZero>
__device__ __forceinline__ GroupRecord RecordOf(__half lo, __half hi,
                                                uint32_t* flags,
                                                FirstZero first_zero_sign) {
  const float flo = __half2float(lo), fhi = __half2float(hi);
  // NaN propagates through the _nan min/max; inf shows as lo or hi.
  if (!(fabsf(flo) <= kHalfMax && fabsf(fhi) <= kHalfMax)) {
    *flags |= kFlagNonFinite;
  }
  GroupRecord r = MakeGroupRecordHw(flo, fhi, kBits);
  if (flo == 0.0f) r.min16 = first_zero_sign();
  return r;
}

// The fast code of x added into a packed word at bit `shift` (see
// MagicPackBias); *near is set when the code must be recomputed exactly.
template <int kBits>
__device__ __forceinline__ void AddFastCode(float x, float zero, float inv,
                                            int shift, uint32_t* word,
                                            bool* near) {
  constexpr float levels = static_cast<float>((1u << kBits) - 1);
  bool nk;
  const float m = FastCodeMagic(x, zero, inv, levels, &nk);
  *near |= nk;
  *word += __float_as_uint(m) << shift;
}

// ---- Per-channel keys: one tile of 32 tokens x 256 channels.

template <int kBits>
__device__ __forceinline__ void EncodeChannelTile(const QuantArgs& a,
                                                  uint32_t layer,
                                                  uint32_t tile,
                                                  ChannelSmem& sm) {
  const QuantSideArgs& s = a.side[0];
  const uint32_t chunks = a.hd / kTileChannels;
  const uint32_t tg = tile / chunks;
  const uint32_t j0 = (tile % chunks) * kTileChannels;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const __half* in = static_cast<const __half*>(a.src) +
                     RawSlabOffset(a, 0, layer) +
                     (static_cast<uint64_t>(a.n_sink) + tg * kGroup) * a.hd +
                     j0;

  // 1. Rows 4w..4w+3, channels 8*lane..8*lane+7.
  uint4 v[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    v[r] = *reinterpret_cast<const uint4*>(
        in + static_cast<uint64_t>(warp * kRows + r) * a.hd + lane * 8);
  }
  {
    const __half2* h0 = reinterpret_cast<const __half2*>(&v[0]);
    __half2 lo[4], hi[4];
#pragma unroll
    for (int p = 0; p < 4; ++p) lo[p] = hi[p] = h0[p];
#pragma unroll
    for (int r = 1; r < kRows; ++r) {
      const __half2* h = reinterpret_cast<const __half2*>(&v[r]);
#pragma unroll
      for (int p = 0; p < 4; ++p) {
        lo[p] = __hmin2_nan(lo[p], h[p]);
        hi[p] = __hmax2_nan(hi[p], h[p]);
      }
    }
    *reinterpret_cast<uint4*>(&sm.part_lo[warp][lane * 8]) =
        *reinterpret_cast<const uint4*>(lo);
    *reinterpret_cast<uint4*>(&sm.part_hi[warp][lane * 8]) =
        *reinterpret_cast<const uint4*>(hi);
  }
  __syncthreads();

  // 2. Thread c: channel c's record.
  uint8_t* slab = static_cast<uint8_t*>(a.dst) +
                  PayloadSlabOffset(a, 0, layer) + s.sink_bytes;
  uint32_t flags = 0;
  {
    const uint32_t c = threadIdx.x;
    __half lo = sm.part_lo[0][c], hi = sm.part_hi[0][c];
#pragma unroll
    for (int w = 1; w < 8; ++w) {
      lo = __hmin_nan(lo, sm.part_lo[w][c]);
      hi = __hmax_nan(hi, sm.part_hi[w][c]);
    }
    const GroupRecord r = RecordOf<kBits>(lo, hi, &flags, [&] {
      const uint16_t* col = reinterpret_cast<const uint16_t*>(in) + c;
      return FirstZeroSign16(kGroup, [&](int t) {
        return col[static_cast<uint64_t>(t) * a.hd];
      });
    });
    reinterpret_cast<uint32_t*>(slab)[static_cast<uint64_t>(tg) * a.hd + j0 +
                                      c] = r.Word();
    sm.zero[c] = r.zero;
    sm.scale[c] = r.scale;
    sm.inv[c] = QuantInverse(r.scale);
  }
  __syncthreads();

  // 3. Each thread's 4 rows of 8 channels -> one 4*bits-bit piece per
  // channel (token 4w + r at bit r * bits).
  constexpr int kPieceBits = kRows * kBits;  // 8, 16 or 32.
  uint32_t piece[8];
  {
    bool near[4] = {false, false, false, false};  // Per channel pair.
#pragma unroll
    for (int p = 0; p < 4; ++p) {  // Channel pair (2p, 2p + 1).
      const int c = lane * 8 + 2 * p;
      const float z0 = sm.zero[c], i0 = sm.inv[c];
      const float z1 = sm.zero[c + 1], i1 = sm.inv[c + 1];
      uint32_t w0 = 0, w1 = 0;
#pragma unroll
      for (int r = 0; r < kRows; ++r) {
        const float2 f =
            __half22float2(reinterpret_cast<const __half2*>(&v[r])[p]);
        AddFastCode<kBits>(f.x, z0, i0, r * kBits, &w0, &near[p]);
        AddFastCode<kBits>(f.y, z1, i1, r * kBits, &w1, &near[p]);
      }
      piece[2 * p] = w0 - MagicPackBias(kBits, kRows);
      piece[2 * p + 1] = w1 - MagicPackBias(kBits, kRows);
    }
    // The rare exact path, by the whole warp for one lane at a time: lane
    // j recomputes row j / 8, channel j % 8 of lane src's 4 x 8 elements;
    // OR-shuffles over the 4 rows give each channel's piece.
    constexpr float levels = static_cast<float>((1u << kBits) - 1);
    const bool any_near = near[0] || near[1] || near[2] || near[3];
    for (uint32_t need = __ballot_sync(kFullMask, any_near); need != 0;
         need &= need - 1) {
      const int src = __ffs(need) - 1;
      const int row = lane >> 3, m = lane & 7;
      const int c = src * 8 + m;
      const float x = __half2float(
          in[static_cast<uint64_t>(warp * kRows + row) * a.hd + c]);
      uint32_t part =
          FastOrExactCode(x, sm.zero[c], sm.inv[c], sm.scale[c], levels)
          << (row * kBits);
      part |= __shfl_xor_sync(kFullMask, part, 8);
      part |= __shfl_xor_sync(kFullMask, part, 16);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const uint32_t exact = __shfl_sync(kFullMask, part, k);
        if (lane == src) piece[k] = exact;
      }
    }
  }
  if constexpr (kPieceBits == 8) {
    uint8_t* row = reinterpret_cast<uint8_t*>(sm.pieces) +
                   warp * kTileChannels + lane * 8;
    uint2 w;
    w.x = piece[0] | piece[1] << 8 | piece[2] << 16 | piece[3] << 24;
    w.y = piece[4] | piece[5] << 8 | piece[6] << 16 | piece[7] << 24;
    *reinterpret_cast<uint2*>(row) = w;
  } else if constexpr (kPieceBits == 16) {
    uint16_t* row = reinterpret_cast<uint16_t*>(sm.pieces) +
                    warp * kTileChannels + lane * 8;
    uint4 w;
    w.x = piece[0] | piece[1] << 16;
    w.y = piece[2] | piece[3] << 16;
    w.z = piece[4] | piece[5] << 16;
    w.w = piece[6] | piece[7] << 16;
    *reinterpret_cast<uint4*>(row) = w;
  } else {
    uint32_t* row = sm.pieces + warp * kTileChannels + lane * 8;
    reinterpret_cast<uint4*>(row)[0] =
        make_uint4(piece[0], piece[1], piece[2], piece[3]);
    reinterpret_cast<uint4*>(row)[1] =
        make_uint4(piece[4], piece[5], piece[6], piece[7]);
  }
  __syncthreads();

  // 4. Thread c writes channel c's 32 codes (4*bits bytes) in token order.
  {
    const uint32_t c = threadIdx.x;
    uint8_t* out = slab + 4 * s.num_groups +
                   (static_cast<uint64_t>(tg) * kGroup * a.hd +
                    static_cast<uint64_t>(j0 + c) * kGroup) *
                       kBits / 8;
    if constexpr (kPieceBits == 8) {
      const uint8_t* col = reinterpret_cast<const uint8_t*>(sm.pieces) + c;
      uint2 w;
      w.x = col[0] | col[kTileChannels] << 8 | col[2 * kTileChannels] << 16 |
            static_cast<uint32_t>(col[3 * kTileChannels]) << 24;
      w.y = col[4 * kTileChannels] | col[5 * kTileChannels] << 8 |
            col[6 * kTileChannels] << 16 |
            static_cast<uint32_t>(col[7 * kTileChannels]) << 24;
      *reinterpret_cast<uint2*>(out) = w;
    } else if constexpr (kPieceBits == 16) {
      const uint16_t* col = reinterpret_cast<const uint16_t*>(sm.pieces) + c;
      uint4 w;
      w.x = col[0] | static_cast<uint32_t>(col[kTileChannels]) << 16;
      w.y = col[2 * kTileChannels] |
            static_cast<uint32_t>(col[3 * kTileChannels]) << 16;
      w.z = col[4 * kTileChannels] |
            static_cast<uint32_t>(col[5 * kTileChannels]) << 16;
      w.w = col[6 * kTileChannels] |
            static_cast<uint32_t>(col[7 * kTileChannels]) << 16;
      *reinterpret_cast<uint4*>(out) = w;
    } else {
      const uint32_t* col = sm.pieces + c;
      reinterpret_cast<uint4*>(out)[0] =
          make_uint4(col[0], col[kTileChannels], col[2 * kTileChannels],
                     col[3 * kTileChannels]);
      reinterpret_cast<uint4*>(out)[1] =
          make_uint4(col[4 * kTileChannels], col[5 * kTileChannels],
                     col[6 * kTileChannels], col[7 * kTileChannels]);
    }
  }
  ReportFlags(a.error_flags, flags);
}

// ---- Per-token groups: 256 consecutive groups of 32 elements.

template <int kBits>
__device__ __forceinline__ void EncodeTokenGroups(const QuantArgs& a, int side,
                                                  uint32_t layer,
                                                  uint32_t tile,
                                                  TokenSmem& sm) {
  const QuantSideArgs& s = a.side[side];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const uint64_t g0 = static_cast<uint64_t>(tile) * kThreads + warp * 32;
  const uint4* in = reinterpret_cast<const uint4*>(
                        static_cast<const __half*>(a.src) +
                        RawSlabOffset(a, side, layer) +
                        static_cast<uint64_t>(a.n_sink) * a.hd) +
                    g0 * 4;
  // Piece p = 32i + lane of the warp's 2 KiB is piece p & 3 of local group
  // p >> 2; stored at slot (p & 3) ^ ((group >> 1) & 3) of that group.
  uint4* buf = sm.pieces[warp];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int p = i * 32 + lane;
    const int g = p >> 2;
    buf[g * 4 + ((p & 3) ^ ((g >> 1) & 3))] = in[p];
  }
  __syncwarp();
  uint4 v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = buf[lane * 4 + (i ^ ((lane >> 1) & 3))];

  const __half2* h = reinterpret_cast<const __half2*>(v);  // 16 pairs.
  __half2 lo2 = __hmin2_nan(h[0], h[1]), hi2 = __hmax2_nan(h[0], h[1]);
#pragma unroll
  for (int p = 2; p < 16; ++p) {
    lo2 = __hmin2_nan(lo2, h[p]);
    hi2 = __hmax2_nan(hi2, h[p]);
  }
  uint32_t flags = 0;
  const GroupRecord r = RecordOf<kBits>(
      __hmin_nan(__low2half(lo2), __high2half(lo2)),
      __hmax_nan(__low2half(hi2), __high2half(hi2)), &flags, [&] {
        // From global memory (a cache hit): indexing v would put it in
        // local memory.
        const uint16_t* e = reinterpret_cast<const uint16_t*>(in + lane * 4);
        return FirstZeroSign16(kGroup, [&](int i) { return e[i]; });
      });
  const uint64_t g = g0 + lane;
  uint8_t* slab = static_cast<uint8_t*>(a.dst) +
                  PayloadSlabOffset(a, side, layer) + s.sink_bytes;
  reinterpret_cast<uint32_t*>(slab)[g] = r.Word();

  // 32 codes: kWords words of kPer codes.
  constexpr int kPer = 32 / kBits;
  constexpr int kWords = kGroup / kPer;  // 2, 4 or 8.
  const float inv = QuantInverse(r.scale);
  uint32_t word[kWords];
  bool near = false;
#pragma unroll
  for (int w = 0; w < kWords; ++w) {
    uint32_t acc = 0;
#pragma unroll
    for (int k = 0; k < kPer; k += 2) {
      const float2 f = __half22float2(h[(w * kPer + k) / 2]);
      AddFastCode<kBits>(f.x, r.zero, inv, k * kBits, &acc, &near);
      AddFastCode<kBits>(f.y, r.zero, inv, (k + 1) * kBits, &acc, &near);
    }
    word[w] = acc - MagicPackBias(kBits, kPer);
  }
  // The rare exact path, by the whole warp for one lane at a time (a lane
  // alone would run 32 codes serially while the others wait): lane j
  // recomputes code j of lane src's group, and OR-reductions assemble the
  // words for lane src.
  constexpr float levels = static_cast<float>((1u << kBits) - 1);
  for (uint32_t need = __ballot_sync(kFullMask, near); need != 0;
       need &= need - 1) {
    const int src = __ffs(need) - 1;
    const float zero = __shfl_sync(kFullMask, r.zero, src);
    const float sinv = __shfl_sync(kFullMask, inv, src);
    const float scale = __shfl_sync(kFullMask, r.scale, src);
    const int piece = lane >> 3;
    const __half x = reinterpret_cast<const __half*>(
        &buf[src * 4 + (piece ^ ((src >> 1) & 3))])[lane & 7];
    const uint32_t code =
        FastOrExactCode(__half2float(x), zero, sinv, scale, levels);
#pragma unroll
    for (int w = 0; w < kWords; ++w) {
      const uint32_t part =
          lane / kPer == w ? code << ((lane % kPer) * kBits) : 0u;
      const uint32_t exact = __reduce_or_sync(kFullMask, part);
      if (lane == src) word[w] = exact;
    }
  }
  uint4* out = reinterpret_cast<uint4*>(slab + 4 * s.num_groups +
                                        g * (kGroup * kBits / 8));
  if constexpr (kWords == 2) {
    *reinterpret_cast<uint2*>(out) = make_uint2(word[0], word[1]);
  } else {
#pragma unroll
    for (int i = 0; i < kWords / 4; ++i) {
      out[i] = make_uint4(word[4 * i], word[4 * i + 1], word[4 * i + 2],
                          word[4 * i + 3]);
    }
  }
  ReportFlags(a.error_flags, flags);
}

template <int kBitsK, int kBitsV>
__global__ void __launch_bounds__(kThreads, 5)
    EncodeFp16G32Kernel(const QuantArgs a) {
  __shared__ EncodeSmem sm;
  const uint32_t layer = blockIdx.y;
  if (blockIdx.z == 1) {
    EncodeTokenGroups<kBitsV>(a, 1, layer, blockIdx.x, sm.token);
  } else if (a.side[0].per_token) {
    EncodeTokenGroups<kBitsK>(a, 0, layer, blockIdx.x, sm.token);
  } else {
    EncodeChannelTile<kBitsK>(a, layer, blockIdx.x, sm.channel);
  }
}

}  // namespace

bool QuantFp16FastPathApplies(const QuantArgs& a) {
  if (a.dtype != kDtypeF16 || a.tokens <= a.n_sink) return false;
  const uint32_t tq = a.tokens - a.n_sink;
  if (tq % kGroup != 0 || a.hd % kTileChannels != 0) return false;
  if (!a.side[1].per_token) return false;
  if (reinterpret_cast<uintptr_t>(a.src) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(a.dst) % 16 != 0) {
    return false;
  }
  for (const QuantSideArgs& s : a.side) {
    if (s.group != kGroup || (s.bits != 2 && s.bits != 4 && s.bits != 8)) {
      return false;
    }
    // 16-byte aligned slabs, record arrays and code arrays.
    if (s.side_offset % 16 != 0 || s.slab_bytes % 16 != 0 ||
        s.sink_bytes % 16 != 0 || (4 * s.num_groups) % 16 != 0) {
      return false;
    }
  }
  return true;
}

cudaError_t LaunchQuantEncodeFp16Fast(const QuantArgs& a, cudaStream_t st) {
  const uint32_t tq = a.tokens - a.n_sink;
  const dim3 grid((tq / kGroup) * (a.hd / kTileChannels), a.layers, 2);
  // QuantFp16FastPathApplies admits 2, 4 and 8 bits only.
  DispatchBits(a.side[0].bits, [&](auto k_tag) {
    DispatchBits(a.side[1].bits, [&](auto v_tag) {
      constexpr int kBitsK = decltype(k_tag)::value;
      constexpr int kBitsV = decltype(v_tag)::value;
      if constexpr (kBitsK != 3 && kBitsV != 3) {
        EncodeFp16G32Kernel<kBitsK, kBitsV><<<grid, kThreads, 0, st>>>(a);
      }
    });
  });
  return cudaGetLastError();
}

}  // namespace strata::kernels::internal
