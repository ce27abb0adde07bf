// Quant (KIVI) encode and decode kernels. Layout and arithmetic:
// docs/codecs/quant_aqua.md; thread mapping: docs/kernels.md.
//
// A payload is [K slab of layer 0..L-1][V slab of layer 0..L-1]; a slab is
// [sinks][group records][packed codes]. Per side, one launch handles every
// layer (blockIdx.y = layer):
//   - sinks: a word copy (with a finiteness check) of the first n_sink tokens;
//   - per-token groups (values; keys with keys_per_token): a group is G
//     consecutive elements of the flattened slab, so a thread owns 8
//     consecutive elements, G/8 neighbouring lanes own one group and reduce
//     its min/max with shuffles, and the thread's 8 codes are `bits` whole
//     bytes of the code stream;
//   - per-channel groups (keys): a block owns one token group (<= G tokens)
//     of C channels: it stages the [len][C] tile in shared memory, reduces
//     each channel's min/max over tokens, and writes the C records and the
//     C*len*bits/8 bytes of codes that those channels own (a contiguous,
//     4-byte aligned range).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"
#include "kernels/internal/quant_device.cuh"

namespace strata::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr float kInf = __builtin_huge_valf();

// ---- Sinks: a word copy of n_sink * hd elements per (side, layer), both
// directions, checking that every element is finite.

template <class Tr>
__global__ void __launch_bounds__(kThreads)
    SinkCopyKernel(const QuantArgs a, bool decode) {
  using Bits = typename Tr::Bits;
  constexpr int kPerWord = 4 / sizeof(Bits);
  const int side = blockIdx.z;
  const uint32_t layer = blockIdx.y;
  const uint64_t raw = RawSlabOffset(a, side, layer) * a.dsize;
  const uint64_t pay = PayloadSlabOffset(a, side, layer);
  const uint32_t* src = reinterpret_cast<const uint32_t*>(
      static_cast<const uint8_t*>(a.src) + (decode ? pay : raw));
  uint32_t* dst = reinterpret_cast<uint32_t*>(static_cast<uint8_t*>(a.dst) +
                                              (decode ? raw : pay));
  const uint64_t words = a.side[side].sink_bytes / 4;
  uint32_t flags = 0;
  for (uint64_t w = blockIdx.x * blockDim.x + threadIdx.x; w < words;
       w += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint32_t v = src[w];
#pragma unroll
    for (int e = 0; e < kPerWord; ++e) {
      const Bits b = static_cast<Bits>(v >> (8 * sizeof(Bits) * e));
      if (!Tr::IsFinite(b)) flags = decode ? kFlagBadSink : kFlagNonFinite;
    }
    dst[w] = v;
  }
  ReportFlags(a.error_flags, flags);
}

// ---- Per-token groups.
//
// Each thread handles kPerThread items per iteration of its grid-stride loop:
// item u of block chunk k is chunk_base + u * kThreads + threadIdx.x, so
// every warp still owns 32 consecutive items (whole groups: lanes_per_group
// divides 32) and each load instruction stays coalesced. All loads of an
// iteration are issued before any item is quantized (memory-level
// parallelism: 4 x 16 bytes in flight per thread instead of 16). The code
// width is a template parameter (shifts, masks and the packed-code store are
// then constant).

// 64 bytes of input (encode) / output (decode) per thread per iteration;
// fp32 gets 2 items (4 spill at 64 registers for bits = 8).
template <class Bits>
constexpr int kItemsPerThread = sizeof(Bits) == 4 ? 2 : 4;
// Encode keeps 2 (more registers per item: min/max, record, codes): 4
// items took 60 registers, so 40% occupancy, on the H100 (ncu).
template <class Bits>
constexpr int kEncodeItemsPerThread = 2;

template <class Tr, int kBits>
__global__ void __launch_bounds__(kThreads)
    EncodePerTokenKernel(const QuantArgs a, int side) {
  using Bits = typename Tr::Bits;
  const QuantSideArgs& s = a.side[side];
  const uint32_t layer = blockIdx.y;
  const uint32_t lanes_per_group = s.group / 8;  // 4, 8 or 16.
  const int group_shift = __ffs(lanes_per_group) - 1;
  const uint64_t items = static_cast<uint64_t>(a.tokens - a.n_sink) * a.hd / 8;
  const uint8_t* in =
      static_cast<const uint8_t*>(a.src) +
      (RawSlabOffset(a, side, layer) + static_cast<uint64_t>(a.n_sink) * a.hd) *
          a.dsize;
  uint8_t* slab = static_cast<uint8_t*>(a.dst) +
                  PayloadSlabOffset(a, side, layer) + s.sink_bytes;
  uint8_t* codes = slab + 4 * s.num_groups;
  constexpr float levels = static_cast<float>((1u << kBits) - 1);
  const int lane = threadIdx.x & 31;
  uint32_t amax = 0;  // Of |x|'s bits (FlagsOfAbsMax).
  constexpr int kPerThread = kEncodeItemsPerThread<Bits>;
  constexpr uint64_t kChunk = static_cast<uint64_t>(kThreads) * kPerThread;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kChunk;
  // Whole warps iterate together (the shuffles need every lane).
  for (uint64_t chunk = blockIdx.x * kChunk; chunk < items; chunk += stride) {
    Bits b[kPerThread][8];
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const uint64_t item = chunk + u * kThreads + threadIdx.x;
      if (item < items) Load8(in + item * 8 * sizeof(Bits), b[u]);
    }
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const uint64_t item = chunk + u * kThreads + threadIdx.x;
      const bool active = item < items;
      float x[8];
      float lo = kInf, hi = -kInf;
      if (active) {
#pragma unroll
        for (int m = 0; m < 8; ++m) {
          x[m] = Tr::ToFloat(b[u][m]);
          amax = max(amax, AbsBits(x[m]));
          lo = OrderedMin(lo, x[m]);
          hi = OrderedMax(hi, x[m]);
        }
      }
      // Combine the group's lanes in element order (earlier range on the
      // left).
      for (uint32_t m = 1; m < lanes_per_group; m <<= 1) {
        const float olo = __shfl_xor_sync(kFullMask, lo, m);
        const float ohi = __shfl_xor_sync(kFullMask, hi, m);
        if (lane & m) {
          lo = OrderedMin(olo, lo);
          hi = OrderedMax(ohi, hi);
        } else {
          lo = OrderedMin(lo, olo);
          hi = OrderedMax(hi, ohi);
        }
      }
      if (active) {
        const GroupRecord r = MakeGroupRecordHw(lo, hi, kBits);
        if ((lane & (lanes_per_group - 1)) == 0) {
          reinterpret_cast<uint32_t*>(slab)[item >> group_shift] = r.Word();
        }
        const float inv = QuantInverse(r.scale);
        uint64_t packed = 0;
        uint32_t slow_mask = 0;
#pragma unroll
        for (int m = 0; m < 8; ++m) {
          bool slow;
          packed |= static_cast<uint64_t>(
                        QuantizeCodeInv(x[m], r.zero, inv, levels, &slow))
                    << (m * kBits);
          slow_mask |= static_cast<uint32_t>(slow) << m;
        }
        if (slow_mask != 0) {  // Rare (~2% of items): the IEEE quotient.
#pragma unroll
          for (int m = 0; m < 8; ++m) {
            if ((slow_mask >> m) & 1) {
              constexpr uint64_t kMask = (1u << kBits) - 1;
              packed = (packed & ~(kMask << (m * kBits))) |
                       static_cast<uint64_t>(
                           QuantizeCode(x[m], r.zero, r.scale, levels))
                           << (m * kBits);
            }
          }
        }
        StorePackedCodes(codes + item * kBits, packed, kBits);
      }
    }
  }
  ReportFlags(a.error_flags, FlagsOfAbsMax(amax));
}

template <class Tr, int kBits>
__global__ void __launch_bounds__(kThreads)
    DecodePerTokenKernel(const QuantArgs a, int side) {
  using Bits = typename Tr::Bits;
  const QuantSideArgs& s = a.side[side];
  const uint32_t layer = blockIdx.y;
  const uint32_t lanes_per_group = s.group / 8;
  const int group_shift = __ffs(lanes_per_group) - 1;
  const uint64_t items = static_cast<uint64_t>(a.tokens - a.n_sink) * a.hd / 8;
  const uint8_t* slab = static_cast<const uint8_t*>(a.src) +
                        PayloadSlabOffset(a, side, layer) + s.sink_bytes;
  const uint8_t* codes = slab + 4 * s.num_groups;
  uint8_t* out =
      static_cast<uint8_t*>(a.dst) +
      (RawSlabOffset(a, side, layer) + static_cast<uint64_t>(a.n_sink) * a.hd) *
          a.dsize;
  constexpr uint32_t mask = (1u << kBits) - 1;
  uint32_t flags = 0;
  constexpr int kPerThread = kItemsPerThread<Bits>;
  constexpr uint64_t kChunk = static_cast<uint64_t>(kThreads) * kPerThread;
  const uint64_t stride = static_cast<uint64_t>(gridDim.x) * kChunk;
  for (uint64_t chunk = blockIdx.x * kChunk; chunk < items; chunk += stride) {
    uint32_t word[kPerThread];
    uint64_t packed[kPerThread];
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const uint64_t item = chunk + u * kThreads + threadIdx.x;
      if (item < items) {
        word[u] =
            reinterpret_cast<const uint32_t*>(slab)[item >> group_shift];
        packed[u] = LoadPackedCodes(codes + item * kBits, kBits);
      }
    }
#pragma unroll
    for (int u = 0; u < kPerThread; ++u) {
      const uint64_t item = chunk + u * kThreads + threadIdx.x;
      if (item >= items) break;
      if (RecordWordIsBad(word[u])) flags |= kFlagBadGroupRecord;
      const GroupRecord r = RecordFromWordHw(word[u]);
      if constexpr (kBits == 2 &&
                    std::is_same_v<Tr, DeviceTraits<Fp16Traits>>) {
        // The group's 4 possible halves, each StoreValues8's bytes for
        // that code, then a byte permutation per pair of codes.
        StoreFp16By2BitTable(out + item * 8 * sizeof(Bits),
                             static_cast<uint32_t>(packed[u]), r);
        continue;
      }
      float v[8];
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        const uint32_t q =
            static_cast<uint32_t>(packed[u] >> (m * kBits)) & mask;
        v[m] = DequantizeCode(q, r.zero, r.scale);
      }
      StoreValues8<Tr>(out + item * 8 * sizeof(Bits), v);
    }
  }
  ReportFlags(a.error_flags, flags);
}

// ---- Per-channel groups (keys): one block per (token group, C channels).

struct ChannelTile {
  uint32_t tg, j0, t0, len;
};

template <int C>
__device__ __forceinline__ ChannelTile TileOf(const QuantArgs& a,
                                              const QuantSideArgs& s,
                                              uint32_t tile_index) {
  const uint32_t chunks = a.hd / C;
  ChannelTile t;
  t.tg = tile_index / chunks;
  t.j0 = (tile_index % chunks) * C;
  t.t0 = t.tg * s.group;
  const uint32_t tq = a.tokens - a.n_sink;
  t.len = min(s.group, tq - t.t0);
  return t;
}

template <int C>
constexpr size_t EncodePerChannelSmem(uint32_t group) {
  constexpr int kP = kThreads / C;
  return sizeof(float) *
             (static_cast<size_t>(group) * (C + 1) + 2 * kP * C + 3 * C) +
         static_cast<size_t>(C) * group;
}

template <int C, class Tr, int kBits>
__global__ void __launch_bounds__(kThreads)
    EncodePerChannelKernel(const QuantArgs a, int side, uint32_t first_tile) {
  using Bits = typename Tr::Bits;
  constexpr int kP = kThreads / C;  // Threads per channel in the reduction.
  constexpr int kStride = C + 1;    // Padded tile row: no bank conflicts.
  const QuantSideArgs& s = a.side[side];
  const uint32_t layer = blockIdx.y;
  const ChannelTile tile = TileOf<C>(a, s, first_tile + blockIdx.x);
  const uint32_t len = tile.len;

  extern __shared__ float smem[];
  float* x = smem;                                        // [group][C + 1]
  float* part_lo = x + s.group * kStride;                 // [kP][C]
  float* part_hi = part_lo + kP * C;                      // [kP][C]
  float* zero = part_hi + kP * C;                         // [C]
  float* scale = zero + C;                                // [C]
  float* inv = scale + C;                                 // [C]
  uint8_t* code = reinterpret_cast<uint8_t*>(inv + C);    // [C * len]

  // 1. Stage the tile: rows of C channels, 8 elements per load.
  const uint8_t* in =
      static_cast<const uint8_t*>(a.src) +
      (RawSlabOffset(a, side, layer) +
       static_cast<uint64_t>(a.n_sink + tile.t0) * a.hd + tile.j0) *
          sizeof(Bits);
  uint32_t amax = 0;  // Of |x|'s bits (FlagsOfAbsMax).
  constexpr uint32_t kChunksPerRow = C / 8;
  for (uint32_t v = threadIdx.x; v < len * kChunksPerRow; v += kThreads) {
    const uint32_t t = v / kChunksPerRow, c8 = v % kChunksPerRow;
    Bits b[8];
    Load8(in + (static_cast<uint64_t>(t) * a.hd + c8 * 8) * sizeof(Bits), b);
#pragma unroll
    for (int m = 0; m < 8; ++m) {
      const float f = Tr::ToFloat(b[m]);
      amax = max(amax, AbsBits(f));
      x[t * kStride + c8 * 8 + m] = f;
    }
  }
  __syncthreads();

  // 2. Min/max per channel: kP threads each scan a contiguous token range,
  // then one thread per channel combines the ranges in token order.
  {
    const uint32_t c = threadIdx.x % C, k = threadIdx.x / C;
    const uint32_t per = (len + kP - 1) / kP;
    const uint32_t tb = min(len, k * per), te = min(len, tb + per);
    float lo = kInf, hi = -kInf;
    for (uint32_t t = tb; t < te; ++t) {
      lo = OrderedMin(lo, x[t * kStride + c]);
      hi = OrderedMax(hi, x[t * kStride + c]);
    }
    part_lo[k * C + c] = lo;
    part_hi[k * C + c] = hi;
  }
  __syncthreads();
  uint8_t* slab = static_cast<uint8_t*>(a.dst) +
                  PayloadSlabOffset(a, side, layer) + s.sink_bytes;
  if (threadIdx.x < C) {
    const uint32_t c = threadIdx.x;
    float lo = part_lo[c], hi = part_hi[c];
#pragma unroll
    for (int k = 1; k < kP; ++k) {
      lo = OrderedMin(lo, part_lo[k * C + c]);
      hi = OrderedMax(hi, part_hi[k * C + c]);
    }
    const GroupRecord r = MakeGroupRecordHw(lo, hi, kBits);
    zero[c] = r.zero;
    scale[c] = r.scale;
    inv[c] = QuantInverse(r.scale);
    // Group (tg, j): records ordered [tg][h][d].
    reinterpret_cast<uint32_t*>(
        slab)[static_cast<uint64_t>(tile.tg) * a.hd + tile.j0 + c] = r.Word();
  }
  __syncthreads();

  // 3. Codes in the payload's order for this tile: channel-major, tokens
  // minor. This tile's codes are code indices [t0*hd + j0*len, +n) of the
  // slab's stream; n * bits is a multiple of 32 and the start is 4-byte
  // aligned, so the tile is whole words.
  constexpr float levels = static_cast<float>((1u << kBits) - 1);
  const uint32_t n = C * len;
  uint32_t* dst =
      reinterpret_cast<uint32_t*>(slab + 4 * s.num_groups +
                                  (static_cast<uint64_t>(tile.t0) * a.hd +
                                   static_cast<uint64_t>(tile.j0) * len) *
                                      kBits / 8);
  const uint32_t words = n * kBits / 32;
  if constexpr (32 % kBits == 0) {
    // bits = 2, 4, 8: a word is kPer whole codes, so each thread quantizes
    // the codes of its own word (i = kPer * w + k, bit k * bits of the word,
    // LSB first as bitpack.h) in registers and stores the word; no staging
    // of code bytes, no extra barrier. (c, t) = divmod(i, len) is computed
    // once per word and then stepped. Consecutive threads read consecutive
    // token runs of the padded tile: no bank conflicts.
    constexpr uint32_t kPer = 32 / kBits;
    for (uint32_t w = threadIdx.x; w < words; w += kThreads) {
      const uint32_t i0 = w * kPer;
      uint32_t c = i0 / len, t = i0 % len;
      const uint32_t c0 = c, t0 = t;
      uint32_t word = 0, slow_mask = 0;
#pragma unroll
      for (uint32_t k = 0; k < kPer; ++k) {
        bool slow;
        word |= QuantizeCodeInv(x[t * kStride + c], zero[c], inv[c], levels,
                                &slow)
                << (k * kBits);
        slow_mask |= static_cast<uint32_t>(slow) << k;
        if (++t == len) {
          t = 0;
          ++c;
        }
      }
      if (slow_mask != 0) {  // Rare: the IEEE quotient for those codes.
        c = c0;
        t = t0;
        for (uint32_t k = 0; k < kPer; ++k) {
          if ((slow_mask >> k) & 1) {
            constexpr uint32_t kMask = (1u << kBits) - 1;
            word = (word & ~(kMask << (k * kBits))) |
                   (QuantizeCode(x[t * kStride + c], zero[c], scale[c], levels)
                    << (k * kBits));
          }
          if (++t == len) {
            t = 0;
            ++c;
          }
        }
      }
      dst[w] = word;
    }
  } else {
    // bits = 3: codes straddle words; stage the code bytes, then pack.
    // (c, t) = divmod(i, len) is stepped incrementally: one runtime division
    // per thread instead of one per code.
    {
      uint32_t c = threadIdx.x / len, t = threadIdx.x % len;
      const uint32_t dc = kThreads / len, dt = kThreads % len;
      for (uint32_t i = threadIdx.x; i < n; i += kThreads) {
        bool slow;
        uint32_t q = QuantizeCodeInv(x[t * kStride + c], zero[c], inv[c],
                                     levels, &slow);
        if (slow) q = QuantizeCode(x[t * kStride + c], zero[c], scale[c], levels);
        code[i] = static_cast<uint8_t>(q);
        c += dc;
        t += dt;
        if (t >= len) {
          t -= len;
          ++c;
        }
      }
    }
    __syncthreads();
    for (uint32_t w = threadIdx.x; w < words; w += kThreads) {
      dst[w] = PackWord(code, n, kBits, w);
    }
  }
  ReportFlags(a.error_flags, FlagsOfAbsMax(amax));
}

// Per-channel keys, full token groups, 2/4/8-bit codes: one lane per
// channel, one warp per 32 channels of one token group, no shared memory.
// Pass 1 reads the group's G values of the lane's channel in token order
// (each warp load is 32 consecutive channels of one token row) and reduces
// min/max sequentially, which is the CPU's order; pass 2 re-reads them (L1)
// and packs the channel's G codes into G * bits / 32 whole words. Code
// index of (token group tg, channel j, token t) in the slab's stream:
// tg * G * hd + j * G + t (channel-major within a token group), so each lane
// owns whole words. Short last groups and 3-bit codes use
// EncodePerChannelKernel.
template <class Tr, int kBits>
__global__ void __launch_bounds__(kThreads)
    EncodePerChannelWarpKernel(const QuantArgs a, int side) {
  using Bits = typename Tr::Bits;
  constexpr uint32_t kPer = 32 / kBits;  // Codes per word.
  const QuantSideArgs& s = a.side[side];
  const uint32_t layer = blockIdx.y;
  const uint32_t blocks_per_group = (a.hd + kThreads - 1) / kThreads;
  const uint32_t tg = blockIdx.x / blocks_per_group;
  const uint32_t j = (blockIdx.x % blocks_per_group) * kThreads + threadIdx.x;
  if (j >= a.hd) return;  // hd is a multiple of 32: whole warps leave.
  const uint32_t G = s.group;
  const Bits* in =
      reinterpret_cast<const Bits*>(static_cast<const uint8_t*>(a.src)) +
      RawSlabOffset(a, side, layer) +
      (static_cast<uint64_t>(a.n_sink) + static_cast<uint64_t>(tg) * G) * a.hd +
      j;
  float lo = kInf, hi = -kInf;
  uint32_t amax = 0;
#pragma unroll 8
  for (uint32_t t = 0; t < G; ++t) {
    const float v = Tr::ToFloat(in[static_cast<uint64_t>(t) * a.hd]);
    amax = max(amax, AbsBits(v));
    lo = OrderedMin(lo, v);
    hi = OrderedMax(hi, v);
  }
  const GroupRecord r = MakeGroupRecordHw(lo, hi, kBits);
  uint8_t* slab = static_cast<uint8_t*>(a.dst) +
                  PayloadSlabOffset(a, side, layer) + s.sink_bytes;
  reinterpret_cast<uint32_t*>(slab)[static_cast<uint64_t>(tg) * a.hd + j] =
      r.Word();
  constexpr float levels = static_cast<float>((1u << kBits) - 1);
  const float inv = QuantInverse(r.scale);
  uint32_t* dst = reinterpret_cast<uint32_t*>(
      slab + 4 * s.num_groups +
      (static_cast<uint64_t>(tg) * G * a.hd + static_cast<uint64_t>(j) * G) *
          kBits / 8);
  for (uint32_t w = 0; w < G / kPer; ++w) {
    const Bits* row = in + static_cast<uint64_t>(w) * kPer * a.hd;
    uint32_t word = 0, slow_mask = 0;
#pragma unroll
    for (uint32_t k = 0; k < kPer; ++k) {
      bool slow;
      word |= QuantizeCodeInv(Tr::ToFloat(row[static_cast<uint64_t>(k) * a.hd]),
                              r.zero, inv, levels, &slow)
              << (k * kBits);
      slow_mask |= static_cast<uint32_t>(slow) << k;
    }
    if (slow_mask != 0) {  // Rare: the IEEE quotient for those codes.
      for (uint32_t k = 0; k < kPer; ++k) {
        if ((slow_mask >> k) & 1) {
          constexpr uint32_t kMask = (1u << kBits) - 1;
          const float v = Tr::ToFloat(row[static_cast<uint64_t>(k) * a.hd]);
          word = (word & ~(kMask << (k * kBits))) |
                 (QuantizeCode(v, r.zero, r.scale, levels) << (k * kBits));
        }
      }
    }
    dst[w] = word;
  }
  ReportFlags(a.error_flags, FlagsOfAbsMax(amax));
}

// Row stride (bytes) of the transposed code tile of the decode kernel: C
// codes of one token plus 4 bytes of padding (rows stay 4-byte aligned, and
// consecutive rows start in different banks).
template <int C>
constexpr uint32_t kCodeRow = C + 4;

template <int C>
constexpr size_t DecodePerChannelSmem(uint32_t group) {
  // [group][kCodeRow] bytes also holds the C * group * 3 / 8 bytes of packed
  // 3-bit codes.
  return sizeof(float) * 2 * C + static_cast<size_t>(kCodeRow<C>) * group;
}

template <int C, class Tr, int kBits>
__global__ void __launch_bounds__(kThreads)
    DecodePerChannelKernel(const QuantArgs a, int side, uint32_t first_tile) {
  using Bits = typename Tr::Bits;
  constexpr uint32_t kRow = kCodeRow<C>;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  const QuantSideArgs& s = a.side[side];
  const uint32_t layer = blockIdx.y;
  const ChannelTile tile = TileOf<C>(a, s, first_tile + blockIdx.x);
  const uint32_t len = tile.len;

  extern __shared__ float smem[];
  float* zero = smem;
  float* scale = zero + C;
  // bits = 2, 4, 8: codes[t * kRow + c] (one byte per code, transposed);
  // bits = 3: the packed code words as in the payload.
  uint32_t* code_words = reinterpret_cast<uint32_t*>(scale + C);
  uint8_t* code = reinterpret_cast<uint8_t*>(code_words);

  const uint8_t* slab = static_cast<const uint8_t*>(a.src) +
                        PayloadSlabOffset(a, side, layer) + s.sink_bytes;
  uint32_t flags = 0;
  if (threadIdx.x < C) {
    const uint32_t c = threadIdx.x;
    const uint32_t word = reinterpret_cast<const uint32_t*>(
        slab)[static_cast<uint64_t>(tile.tg) * a.hd + tile.j0 + c];
    if (RecordWordIsBad(word)) flags |= kFlagBadGroupRecord;
    const GroupRecord r = RecordFromWordHw(word);
    zero[c] = r.zero;
    scale[c] = r.scale;
  }
  const uint32_t n = C * len;
  const uint32_t* src =
      reinterpret_cast<const uint32_t*>(slab + 4 * s.num_groups +
                                        (static_cast<uint64_t>(tile.t0) * a.hd +
                                         static_cast<uint64_t>(tile.j0) * len) *
                                            kBits / 8);
  const uint32_t words = n * kBits / 32;
  if constexpr (32 % kBits == 0) {
    // Each word holds kPer whole codes, i = kPer * w + k at bit k * bits
    // (channel-major stream: c = i / len, t = i % len, computed once per
    // word and then stepped): unpack them straight into the transposed
    // tile, so the output pass reads 8 channels' codes with two word loads
    // instead of 8 byte-wise ReadCode calls.
    constexpr uint32_t kPer = 32 / kBits;
    for (uint32_t w = threadIdx.x; w < words; w += kThreads) {
      const uint32_t word = src[w];
      const uint32_t i0 = w * kPer;
      uint32_t c = i0 / len, t = i0 % len;
#pragma unroll
      for (uint32_t k = 0; k < kPer; ++k) {
        code[t * kRow + c] = static_cast<uint8_t>((word >> (k * kBits)) & kMask);
        if (++t == len) {
          t = 0;
          ++c;
        }
      }
    }
  } else {
    for (uint32_t w = threadIdx.x; w < words; w += kThreads) {
      code_words[w] = src[w];
    }
  }
  __syncthreads();

  uint8_t* out = static_cast<uint8_t*>(a.dst) +
                 (RawSlabOffset(a, side, layer) +
                  static_cast<uint64_t>(a.n_sink + tile.t0) * a.hd + tile.j0) *
                     sizeof(Bits);
  constexpr uint32_t kChunksPerRow = C / 8;
  for (uint32_t v = threadIdx.x; v < len * kChunksPerRow; v += kThreads) {
    const uint32_t t = v / kChunksPerRow, c8 = v % kChunksPerRow;
    uint32_t q[8];
    if constexpr (32 % kBits == 0) {
      const uint32_t* row =
          reinterpret_cast<const uint32_t*>(code + t * kRow + c8 * 8);
      const uint32_t w0 = row[0], w1 = row[1];
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        q[m] = (w0 >> (8 * m)) & 0xFF;
        q[m + 4] = (w1 >> (8 * m)) & 0xFF;
      }
    } else {
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        q[m] = ReadCode(code, (c8 * 8 + m) * len + t, kBits);
      }
    }
    Bits b[8];
#pragma unroll
    for (int m = 0; m < 8; ++m) {
      const uint32_t c = c8 * 8 + m;
      b[m] = Tr::FromFloat(DequantizeCode(q[m], zero[c], scale[c]));
    }
    Store8(out + (static_cast<uint64_t>(t) * a.hd + c8 * 8) * sizeof(Bits), b);
  }
  ReportFlags(a.error_flags, flags);
}

// Per-channel decode of FULL token groups with 2/4/8-bit codes, without
// shared memory: a thread owns 8 consecutive channels of one token group.
// It loads their 8 group records, then per code word (32 / bits tokens of a
// channel) the 8 channels' words, and writes each of those tokens' 8
// channels as one 16-byte store; the threads of a warp own consecutive
// channel octets, so each token row is written contiguously. Every element
// is DequantizeCode of its code and record, as in the tile kernel (decode
// has no order-dependent arithmetic). Needs hd % 8 == 0 and G * bits % 32
// == 0 (the launcher checks); the short last group goes to the tile kernel.
template <class Tr, int kBits>
__global__ void __launch_bounds__(kThreads)
    DecodePerChannelRegKernel(const QuantArgs a, int side,
                              uint32_t full_groups) {
  using Bits = typename Tr::Bits;
  constexpr uint32_t kPer = 32 / kBits;  // Tokens per code word.
  constexpr uint32_t kMask = (1u << kBits) - 1;
  const QuantSideArgs& s = a.side[side];
  const uint32_t layer = blockIdx.y;
  const uint32_t octets = a.hd / 8;
  const uint32_t g = blockIdx.x * kThreads + threadIdx.x;
  if (g >= full_groups * octets) return;
  const uint32_t tg = g / octets;
  const uint32_t j0 = (g % octets) * 8;
  const uint32_t G = s.group;
  const uint8_t* slab = static_cast<const uint8_t*>(a.src) +
                        PayloadSlabOffset(a, side, layer) + s.sink_bytes;
  const uint32_t* rec = reinterpret_cast<const uint32_t*>(slab) +
                        static_cast<uint64_t>(tg) * a.hd + j0;
  float zero[8], scale[8];
  uint32_t flags = 0;
#pragma unroll
  for (int m = 0; m < 8; ++m) {
    const uint32_t word = rec[m];
    if (RecordWordIsBad(word)) flags |= kFlagBadGroupRecord;
    const GroupRecord r = RecordFromWordHw(word);
    zero[m] = r.zero;
    scale[m] = r.scale;
  }
  const uint32_t words_per_channel = G / kPer;
  const uint32_t* codes =
      reinterpret_cast<const uint32_t*>(slab + 4 * s.num_groups) +
      (static_cast<uint64_t>(tg) * G * a.hd + static_cast<uint64_t>(j0) * G) /
          kPer;
  uint8_t* out = static_cast<uint8_t*>(a.dst) +
                 (RawSlabOffset(a, side, layer) +
                  (static_cast<uint64_t>(a.n_sink) +
                   static_cast<uint64_t>(tg) * G) *
                      a.hd +
                  j0) *
                     sizeof(Bits);
  const uint64_t row_bytes = static_cast<uint64_t>(a.hd) * sizeof(Bits);
  // Tokens w*kPer .. w*kPer + kPer - 1 of the 8 channels, from their words.
  auto emit = [&](uint32_t w, const uint32_t (&word)[8]) {
#pragma unroll
    for (uint32_t k = 0; k < kPer; ++k) {
      float v[8];
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        v[m] = DequantizeCode((word[m] >> (k * kBits)) & kMask, zero[m],
                              scale[m]);
      }
      StoreValues8<Tr>(out + (static_cast<uint64_t>(w) * kPer + k) * row_bytes,
                       v);
    }
  };
  if constexpr (kBits <= 4 && sizeof(Bits) <= 2) {
    if (G == 32) {  // Every word of the 8 channels up front, as vectors.
      constexpr uint32_t kWords = 32 / kPer;  // Per channel: 2 or 4.
      using Vec = std::conditional_t<kWords == 2, uint2, uint4>;
      uint32_t all[8][kWords];
#pragma unroll
      for (int m = 0; m < 8; ++m) {
        const Vec v = reinterpret_cast<const Vec*>(codes)[m];
        static_assert(sizeof(Vec) == sizeof(all[m]));
        memcpy(all[m], &v, sizeof(Vec));
      }
#pragma unroll
      for (uint32_t w = 0; w < kWords; ++w) {
        uint32_t word[8];
#pragma unroll
        for (int m = 0; m < 8; ++m) word[m] = all[m][w];
        emit(w, word);
      }
      ReportFlags(a.error_flags, flags);
      return;
    }
  }
  for (uint32_t w = 0; w < words_per_channel; ++w) {
    uint32_t word[8];
#pragma unroll
    for (int m = 0; m < 8; ++m) word[m] = codes[m * words_per_channel + w];
    emit(w, word);
  }
  ReportFlags(a.error_flags, flags);
}

// ---- Launch plumbing.

unsigned GridFor(uint64_t items, uint32_t layers) {
  // Enough blocks to fill the GPU several times over; the kernels loop.
  const uint64_t want = (items + kThreads - 1) / kThreads;
  const uint64_t cap = layers >= 64 ? 64 : 4096 / layers;
  return static_cast<unsigned>(want < cap ? (want ? want : 1) : cap);
}

template <class Tr>
void LaunchSide(const QuantArgs& a, int side, bool decode, cudaStream_t st) {
  const QuantSideArgs& s = a.side[side];
  const uint32_t tq = a.tokens - a.n_sink;
  if (tq == 0) return;
  DispatchBits(s.bits, [&](auto bits_tag) {
    constexpr int kBits = decltype(bits_tag)::value;
    if (s.per_token) {
      const uint64_t items = static_cast<uint64_t>(tq) * a.hd / 8;
      constexpr int kPer = kItemsPerThread<typename Tr::Bits>;
      constexpr int kEncPer = kEncodeItemsPerThread<typename Tr::Bits>;
      const dim3 grid(
          GridFor((items + (decode ? kPer : kEncPer) - 1) /
                      (decode ? kPer : kEncPer),
                  a.layers),
          a.layers);
      if (decode) {
        DecodePerTokenKernel<Tr, kBits><<<grid, kThreads, 0, st>>>(a, side);
      } else {
        EncodePerTokenKernel<Tr, kBits><<<grid, kThreads, 0, st>>>(a, side);
      }
      return;
    }
    const uint32_t token_groups = (tq + s.group - 1) / s.group;
    // Encode with 2/4/8-bit codes: full token groups by the warp kernel,
    // the short last group (if any) by the tile kernel.
    uint32_t full_groups = 0;
    if constexpr (32 % kBits == 0) {
      if (!decode) full_groups = tq / s.group;
      if (full_groups > 0) {
        const dim3 grid(full_groups * CeilDiv(a.hd, kThreads), a.layers);
        EncodePerChannelWarpKernel<Tr, kBits>
            <<<grid, kThreads, 0, st>>>(a, side);
      }
    }
    // Decode with 2/4/8-bit codes: full token groups by the register
    // kernel when a group's codes are whole words per channel.
    if constexpr (32 % kBits == 0) {
      if (decode && a.hd % 8 == 0 && (s.group * kBits) % 32 == 0) {
        full_groups = tq / s.group;
        if (full_groups > 0) {
          const dim3 grid(CeilDiv(full_groups * (a.hd / 8), kThreads),
                          a.layers);
          DecodePerChannelRegKernel<Tr, kBits>
              <<<grid, kThreads, 0, st>>>(a, side, full_groups);
        }
      }
    }
    auto run = [&](auto c_tag) {
      constexpr int C = decltype(c_tag)::value;
      if (decode && token_groups > full_groups) {
        const dim3 grid((token_groups - full_groups) * (a.hd / C), a.layers);
        DecodePerChannelKernel<C, Tr, kBits>
            <<<grid, kThreads, DecodePerChannelSmem<C>(s.group), st>>>(
                a, side, full_groups * (a.hd / C));
      } else if (!decode && token_groups > full_groups) {
        const dim3 grid((token_groups - full_groups) * (a.hd / C), a.layers);
        EncodePerChannelKernel<C, Tr, kBits>
            <<<grid, kThreads, EncodePerChannelSmem<C>(s.group), st>>>(
                a, side, full_groups * (a.hd / C));
      }
    };
    // The same choice as internal::QuantChannelTile (the host emulation).
    if (a.hd % 64 == 0) {
      run(std::integral_constant<int, 64>{});
    } else {
      run(std::integral_constant<int, 32>{});
    }
  });
}

cudaError_t LaunchQuant(const QuantArgs& a, bool decode, cudaStream_t st) {
  DispatchDtype(a.dtype, [&](auto traits) {
    using Tr = DeviceTraits<decltype(traits)>;
    if (a.n_sink > 0) {
      const uint64_t words = a.side[0].sink_bytes / 4;
      const dim3 grid(GridFor(words, 2 * a.layers), a.layers, 2);
      SinkCopyKernel<Tr><<<grid, kThreads, 0, st>>>(a, decode);
    }
    if (!decode && QuantFp16FastPathApplies(a)) {
      LaunchQuantEncodeFp16Fast(a, st);
      return;
    }
    LaunchSide<Tr>(a, 0, decode, st);
    LaunchSide<Tr>(a, 1, decode, st);
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchQuantEncode(const QuantArgs& args, cudaStream_t stream) {
  return LaunchQuant(args, /*decode=*/false, stream);
}

cudaError_t LaunchQuantDecode(const QuantArgs& args, cudaStream_t stream) {
  return LaunchQuant(args, /*decode=*/true, stream);
}

}  // namespace strata::kernels::internal
