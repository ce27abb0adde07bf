// The aqua kernels' plain arguments and their per-thread arithmetic, written
// once for nvcc (kernels/aqua_kernels.cu) and g++ (the host emulation in
// tests/kernels/aqua_kernels_host_test.cc), so that the device decomposition
// can be checked against codecs/aqua_codec.cc on a machine without a GPU.
//
// Layout (codecs/aqua_codec.cc's MakeLayout; docs/codecs/quant_aqua.md):
// slabs in the order layer 0 K, layer 0 V, layer 1 K, ...; a slab is
// [n_sink sink tokens in the block dtype][group records (u16 scale, u16 min)]
// [packed codes] of the tq = tokens - n_sink other tokens' residuals.
//
// Not a public header.
#ifndef STRATA_KERNELS_INTERNAL_AQUA_ARITH_H_
#define STRATA_KERNELS_INTERNAL_AQUA_ARITH_H_

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {

// One quantized slab: tq tokens x hd channels of residuals.
struct AquaSlab {
  int bits = 2;
  uint32_t group = 32;
  bool per_token = false;
  uint32_t tq = 0;  // Quantized tokens (tokens - n_sink).
  uint32_t hd = 0;  // kv_heads * head_dim, a multiple of 32.
  uint64_t num_groups = 0;
  uint64_t bytes = 0;  // 4 * num_groups + packed codes.
};

struct AquaArgs {
  int dtype = 1;  // kvstore::DType value.
  uint32_t dsize = 2;
  uint32_t layers = 0;  // Of the block.
  uint32_t tokens = 0;  // All tokens, sinks included.
  uint32_t n_sink = 0;
  uint32_t hd = 0;
  AquaSlab slab[2][2];  // [layer 0 or >= 1][kv]
  uint64_t sink_bytes = 0;  // n_sink * hd * dsize, at the start of each slab.
  uint64_t first = 0;       // Bytes of layer 0 (K and V slabs).
  uint64_t rest = 0;        // Bytes of any later layer.
  uint64_t total = 0;
  // The packed profile (kernels/aqua_kernels.h): layer l >= 1 at float
  // (l - 1) * layer_floats: A [hd][hd], a [hd], B [hd][2hd], b [hd].
  const float* profile = nullptr;
  uint64_t layer_floats = 0;
  // Encode: the raw block [2][layers][tokens][hd] (in) and the payload (out).
  // Decode: the payload (in) and the raw output [2][out_count][tokens][hd]
  // holding layers [out_begin, out_begin + out_count).
  const void* raw_in = nullptr;
  void* payload_out = nullptr;
  const void* payload_in = nullptr;
  void* raw_out = nullptr;
  uint32_t out_begin = 0;
  uint32_t out_count = 0;
  // Workspace: recon[parity][kv] [tq][hd] fp32 (the reconstructions of the
  // current and previous layer), pred [tq][hd] fp32, codes [tq*hd] bytes
  // (encode only).
  float* recon[2][2] = {{nullptr, nullptr}, {nullptr, nullptr}};
  float* pred = nullptr;
  uint8_t* codes = nullptr;
  uint32_t* error_flags = nullptr;
};

cudaError_t LaunchAquaEncode(const AquaArgs& args, cudaStream_t stream);
cudaError_t LaunchAquaDecode(const AquaArgs& args, cudaStream_t stream);

// ---- Layout.

STRATA_HD const AquaSlab& AquaSlabOf(const AquaArgs& a, uint32_t l, int kv) {
  return a.slab[l == 0 ? 0 : 1][kv];
}
// Payload offset of the slab (its sinks) of (layer l, kv).
STRATA_HD uint64_t AquaSlabOffset(const AquaArgs& a, uint32_t l, int kv) {
  const uint64_t base = l == 0 ? 0 : a.first + (l - 1) * a.rest;
  return base + (kv == 0 ? 0 : a.sink_bytes + AquaSlabOf(a, l, 0).bytes);
}
// Payload offset of the slab's group records (its codes follow them).
STRATA_HD uint64_t AquaQuantOffset(const AquaArgs& a, uint32_t l, int kv) {
  return AquaSlabOffset(a, l, kv) + a.sink_bytes;
}

// ---- Groups (SlabQuantizer of codecs/quant_codec.h).
//
// per_token: group g = channels [c*G, c*G + G) of token t, g = t*hd/G + c,
//   code index of (t, j) = t*hd + j.
// per channel: group g = (token group tg, channel j), g = tg*hd + j, tokens
//   [tg*G, tg*G + len), len = min(G, tq - tg*G); code index of (t, j) =
//   tg*G*hd + j*len + (t - tg*G).

STRATA_HD uint32_t AquaGroupLen(const AquaSlab& s, uint64_t g) {
  if (s.per_token) return s.group;
  const uint64_t t0 = g / s.hd * s.group;
  const uint64_t left = s.tq - t0;
  return static_cast<uint32_t>(left < s.group ? left : s.group);
}

// Element k (< AquaGroupLen) of group g, in the CPU's scan order (token-major
// over the slab, so channel order within a per-token group and token order
// within a per-channel group): its token, channel and code index.
STRATA_HD void AquaGroupElement(const AquaSlab& s, uint64_t g, uint32_t k,
                                uint32_t* t, uint32_t* j, uint64_t* code) {
  if (s.per_token) {
    const uint64_t e = g * s.group + k;
    *t = static_cast<uint32_t>(e / s.hd);
    *j = static_cast<uint32_t>(e % s.hd);
    *code = e;
  } else {
    const uint64_t tg = g / s.hd;
    *j = static_cast<uint32_t>(g % s.hd);
    *t = static_cast<uint32_t>(tg * s.group + k);
    *code = tg * s.group * s.hd + uint64_t{*j} * AquaGroupLen(s, g) + k;
  }
}

// The group and code index of element (t, j) (decode).
STRATA_HD void AquaElementGroup(const AquaSlab& s, uint32_t t, uint32_t j,
                                uint64_t* g, uint64_t* code) {
  if (s.per_token) {
    *code = uint64_t{t} * s.hd + j;
    *g = *code / s.group;
  } else {
    const uint64_t tg = t / s.group;
    *g = tg * s.hd + j;
    *code = tg * s.group * s.hd + uint64_t{j} * AquaGroupLen(s, *g) +
            (t - tg * s.group);
  }
}

// One group of the encode: residual r = x - pred (pred 0 at layer 0, as the
// CPU's zero-filled prediction), min/max in scan order (OrderedMin/Max keep
// the first of equal values, as std::min/max), the record, the codes (one
// byte each, at their code index) and the reconstruction pred + (zero +
// q*scale), each operation rounded in fp32 as the CPU does. x: the slab's
// quantized tokens [tq][hd] in the block dtype. Returns error bits:
// kFlagNonFinite / kFlagOutOfRange for a residual that is not finite or above
// 65504 (the CPU's "kv" INVALID_ARGUMENT), else kFlagBadGroupRecord for a
// non-finite reconstruction (the CPU's "payload" DATA_LOSS).
//
// Codes go either to `codes` (one byte each at its code index; a packing pass
// follows) or, when AquaGroupCodesAligned(s), straight into the payload's
// code words `code_words` (the group's codes are then whole 32-bit words of
// the stream, LSB first as bitpack.h); the other pointer is null.
template <class Tr>
STRATA_HD uint32_t AquaEncodeGroup(const AquaSlab& s, uint64_t g,
                                   const typename Tr::Bits* x,
                                   const float* pred, float* recon,
                                   uint8_t* records, uint8_t* codes,
                                   uint32_t* code_words) {
  const uint32_t len = AquaGroupLen(s, g);
  uint32_t flags = 0;
  float lo = BitsToFloat(0x7F800000u), hi = BitsToFloat(0xFF800000u);
  for (uint32_t k = 0; k < len; ++k) {
    uint32_t t, j;
    uint64_t c;
    AquaGroupElement(s, g, k, &t, &j, &c);
    const uint64_t i = uint64_t{t} * s.hd + j;
    const float p = pred != nullptr ? pred[i] : 0.0f;
    const float r = Sub(Tr::ToFloat(x[i]), p);
    flags |= QuantInputFlags(r);
    lo = OrderedMin(lo, r);
    hi = OrderedMax(hi, r);
  }
  const GroupRecord rec = MakeGroupRecord(lo, hi, s.bits);
  reinterpret_cast<uint32_t*>(records)[g] = rec.Word();
  const float levels = Levels(s.bits);
  // A group with a bad residual is the CPU's "kv" error (Quantize stops
  // there): its non-finite reconstructions are not reported as well.
  const bool check_recon = flags == 0;
  uint64_t acc = 0;  // Packed codes not yet stored (code_words).
  int pending = 0;   // Bits in acc.
  uint64_t word = 0;
  for (uint32_t k = 0; k < len; ++k) {
    uint32_t t, j;
    uint64_t c;
    AquaGroupElement(s, g, k, &t, &j, &c);
    const uint64_t i = uint64_t{t} * s.hd + j;
    const float p = pred != nullptr ? pred[i] : 0.0f;
    const float r = Sub(Tr::ToFloat(x[i]), p);
    const uint32_t q = QuantizeCode(r, rec.zero, rec.scale, levels);
    if (code_words != nullptr) {
      if (k == 0) word = c * s.bits / 32;  // A word boundary (aligned).
      acc |= static_cast<uint64_t>(q) << pending;
      pending += s.bits;
      if (pending >= 32) {
        code_words[word++] = static_cast<uint32_t>(acc);
        acc >>= 32;
        pending -= 32;
      }
    } else {
      codes[c] = static_cast<uint8_t>(q);
    }
    const float v = Add(p, DequantizeCode(q, rec.zero, rec.scale));
    if (check_recon && (FloatBits(v) & 0x7F800000u) == 0x7F800000u) {
      flags |= kFlagBadGroupRecord;
    }
    recon[i] = v;
  }
  return flags;
}

// True when every group's codes are whole 32-bit words of the slab's code
// stream: per-token groups (G * bits bits, G >= 32), and per-channel groups
// when no token group is short (hd is a multiple of 32).
STRATA_HD bool AquaGroupCodesAligned(const AquaSlab& s) {
  return s.per_token || s.tq % s.group == 0;
}

// Code i of a stream of `bits`-bit codes, LSB first (bitpack.h), 64-bit
// index; reads only the bytes holding it.
STRATA_HD uint32_t AquaReadCode(const uint8_t* bytes, uint64_t i, int bits) {
  const uint64_t bit = i * bits;
  const uint64_t byte = bit >> 3;
  const int shift = static_cast<int>(bit & 7);
  uint32_t v = bytes[byte];
  if (shift + bits > 8) v |= static_cast<uint32_t>(bytes[byte + 1]) << 8;
  return (v >> shift) & ((1u << bits) - 1);
}

// Word w of the packed stream of n codes (one byte each): bits [32w, 32w+32),
// zero past the last code (numeric.h's PackWord with 64-bit indices).
STRATA_HD uint32_t AquaPackWord(const uint8_t* codes, uint64_t n, int bits,
                                uint64_t w) {
  const uint64_t first_bit = 32 * w;
  const uint64_t i0 = first_bit / bits;
  uint64_t i1 = (first_bit + 32 + bits - 1) / bits;
  if (i1 > n) i1 = n;
  uint64_t acc = 0;
  for (uint64_t i = i0; i < i1; ++i) {
    const int64_t pos = static_cast<int64_t>(i * bits) -
                        static_cast<int64_t>(first_bit);
    const uint64_t c = codes[i];
    acc |= pos >= 0 ? (c << pos) : (c >> (-pos));
  }
  return static_cast<uint32_t>(acc);
}

// One element of the decode: pred + dequantized residual (the CPU's
// DequantizeToken then ReconstructRow). slab: the group records, then the
// codes. Returns kFlagBadGroupRecord for a bad record (the CPU's DATA_LOSS)
// or a non-finite reconstruction.
STRATA_HD uint32_t AquaDecodeElement(const AquaSlab& s, uint32_t t, uint32_t j,
                                     const uint8_t* slab, float p, float* v) {
  uint64_t g, c;
  AquaElementGroup(s, t, j, &g, &c);
  const uint32_t word = reinterpret_cast<const uint32_t*>(slab)[g];
  uint32_t flags = RecordWordIsBad(word) ? kFlagBadGroupRecord : 0u;
  const GroupRecord rec = RecordFromWord(word);
  const uint32_t q = AquaReadCode(slab + 4 * s.num_groups, c, s.bits);
  *v = Add(p, DequantizeCode(q, rec.zero, rec.scale));
  if ((FloatBits(*v) & 0x7F800000u) == 0x7F800000u) {
    flags |= kFlagBadGroupRecord;
  }
  return flags;
}

// ---- The predictor y = W·x + bias (codecs/aqua_codec.cc's Predict): lane
// i (of 8) adds the rounded products W[o][k]*x[k] for k ≡ i (mod 8) in
// increasing k; the lanes are combined as ((l0+l1)+(l2+l3)) +
// ((l4+l5)+(l6+l7)), then + bias. No FMA.
//
// Kernel tile: a block computes kAquaTm tokens x kAquaTn outputs; thread
// (ty, tx) of kAquaTm/kAquaMt x kAquaTn/kAquaNt owns tokens ty*kAquaMt + m
// and outputs tx*kAquaNt + n, with 8 lane sums each; the input dimension is
// staged kAquaTk (a multiple of 8, dividing hd) at a time.
inline constexpr uint32_t kAquaTm = 32;
inline constexpr uint32_t kAquaTn = 64;
inline constexpr uint32_t kAquaTk = 32;
inline constexpr uint32_t kAquaMt = 4;
inline constexpr uint32_t kAquaNt = 2;
inline constexpr uint32_t kAquaPredictThreads =
    (kAquaTm / kAquaMt) * (kAquaTn / kAquaNt);  // 256

// Small grids (few tokens or a narrow HD leave most SMs idle with the tile
// above) use AquaPredictSplitKernel instead: the 8 lanes of an output are 8
// neighbouring threads (lane = threadIdx.x % 8), each summing its k ≡ lane
// (mod 8) in increasing k; the lanes are then combined with xor shuffles 1,
// 2, 4 (l_i + l_{i^1}, then pairs of pairs, then halves: the CPU's tree, as
// fp32 addition is commutative). A block computes kAquaSplitTm tokens x
// kAquaSplitTn outputs; thread (ty, tx, lane) owns tokens ty*2 + m and
// outputs tx*2 + n.
inline constexpr uint32_t kAquaSplitTm = 8;
inline constexpr uint32_t kAquaSplitTn = 16;
inline constexpr uint32_t kAquaSplitPos = (kAquaSplitTm / 2) *
                                          (kAquaSplitTn / 2);  // 32
inline constexpr uint32_t kAquaSplitThreads = kAquaSplitPos * 8;  // 256

// The tile kernel when it has at least this many blocks.
inline constexpr uint64_t kAquaTileMinBlocks = 96;
STRATA_HD bool AquaUseSplitPredict(uint32_t tq, uint32_t hd) {
  const uint64_t blocks = (uint64_t{hd} + kAquaTn - 1) / kAquaTn *
                          ((uint64_t{tq} + kAquaTm - 1) / kAquaTm);
  return blocks < kAquaTileMinBlocks;
}

// acc[m][n][lane] += x[m] * w[n] (the product rounded, then the sum).
STRATA_HD void AquaMac(float (&acc)[kAquaMt][kAquaNt][8], int lane,
                       const float (&x)[kAquaMt], const float (&w)[kAquaNt]) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (uint32_t m = 0; m < kAquaMt; ++m) {
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (uint32_t n = 0; n < kAquaNt; ++n) {
      acc[m][n][lane] = Add(acc[m][n][lane], Mul(w[n], x[m]));
    }
  }
}

STRATA_HD float AquaLaneSum(const float (&lane)[8], float bias) {
  const float sum = Add(Add(Add(lane[0], lane[1]), Add(lane[2], lane[3])),
                        Add(Add(lane[4], lane[5]), Add(lane[6], lane[7])));
  return Add(sum, bias);
}

}  // namespace strata::kernels::internal

#endif  // STRATA_KERNELS_INTERNAL_AQUA_ARITH_H_
