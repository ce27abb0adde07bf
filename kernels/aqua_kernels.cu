// Aqua (AQUA-KV) encode and decode kernels: the CPU codec's arithmetic in the
// CPU's order (docs/kernels.md, "AQUA-KV"; per-thread arithmetic in
// kernels/internal/aqua_arith.h, shared with the host emulation test).
//
// Per layer l and per side (K, then V), on the caller's stream:
//   1. prediction (l >= 1): AquaPredictKernel, a tiled fp32 GEMM whose every
//      output is one thread's 8 lane sums in increasing k (the CPU's
//      Predict), inputs staged in shared memory kAquaTk columns at a time
//      (small grids: AquaPredictSplitKernel, one thread per lane sum):
//      keys from layer l-1's reconstructed keys, values from layer l's
//      reconstructed keys and layer l-1's reconstructed values;
//   2. encode: AquaEncodeGroupsKernel, one thread per residual group (min,
//      max, record, codes, reconstruction); the codes go straight into the
//      payload's words when every group owns whole words, else one byte
//      per code, packed by AquaPackKernel (a short last token group);
//      decode: AquaDecodeKernel, one thread per element (reconstruction and
//      the dtype output of the selected layers).
// Sink tokens (all layers at once): AquaSinkKernel copies them between the
// raw block and the payload, checking they are finite.
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/aqua_arith.h"
#include "kernels/internal/device_util.cuh"
#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {
namespace {

constexpr int kThreads = 256;

unsigned GridFor(uint64_t items) {
  const uint64_t want = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(want == 0 ? 1 : (want < 8192 ? want : 8192));
}

// Element offset of token 0 of (kv, layer) in a raw block of `layers` layers.
__host__ __device__ __forceinline__ uint64_t RawOffset(uint32_t layers, uint32_t tokens,
                                              uint32_t hd, int kv,
                                              uint32_t layer) {
  return ((static_cast<uint64_t>(kv) * layers + layer) * tokens) * hd;
}

// Sinks of every (layer, kv): encode copies raw -> payload for every layer
// (kFlagNonFinite for a non-finite value, the CPU's CheckKvValues); decode
// checks the sinks of layers [0, gridDim.y) (the CPU loads them all:
// kFlagBadSink) and copies those of the output layers.
template <class Tr>
__global__ void __launch_bounds__(kThreads)
    AquaSinkKernel(const AquaArgs a, bool decode) {
  using Bits = typename Tr::Bits;
  const int kv = blockIdx.z;
  const uint32_t l = blockIdx.y;
  const uint64_t n = static_cast<uint64_t>(a.n_sink) * a.hd;
  const uint64_t pay = AquaSlabOffset(a, l, kv);
  const Bits* src;
  Bits* dst = nullptr;
  if (decode) {
    src = reinterpret_cast<const Bits*>(
        static_cast<const uint8_t*>(a.payload_in) + pay);
    if (l >= a.out_begin && l < a.out_begin + a.out_count) {
      dst = static_cast<Bits*>(a.raw_out) +
            RawOffset(a.out_count, a.tokens, a.hd, kv, l - a.out_begin);
    }
  } else {
    src = static_cast<const Bits*>(a.raw_in) +
          RawOffset(a.layers, a.tokens, a.hd, kv, l);
    dst = reinterpret_cast<Bits*>(static_cast<uint8_t*>(a.payload_out) + pay);
  }
  uint32_t flags = 0;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) +
                    threadIdx.x;
       i < n; i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const Bits b = src[i];
    if (!Tr::IsFinite(b)) flags |= decode ? kFlagBadSink : kFlagNonFinite;
    if (dst != nullptr) dst[i] = b;
  }
  ReportFlags(a.error_flags, flags);
}

// out[t][o] = W[o]·x[t] + bias[o] for t < tq, o < hd; x[t] is row t of x0
// ([tq][hd]) for k < hd, of x1 for k >= hd (in = 2*hd). in and hd are
// multiples of kAquaTk.
__global__ void __launch_bounds__(kAquaPredictThreads)
    AquaPredictKernel(const float* __restrict__ x0,
                      const float* __restrict__ x1, uint32_t in,
                      const float* __restrict__ w,
                      const float* __restrict__ bias, float* __restrict__ out,
                      uint32_t tq, uint32_t hd) {
  constexpr uint32_t kCols = kAquaTn / kAquaNt;  // Threads along outputs.
  __shared__ __align__(16) float xs[kAquaTk][kAquaTm + 4];
  __shared__ __align__(16) float ws[kAquaTk][kAquaTn + 2];
  const uint32_t tx = threadIdx.x % kCols, ty = threadIdx.x / kCols;
  const uint32_t o0 = blockIdx.x * kAquaTn, t0 = blockIdx.y * kAquaTm;
  float acc[kAquaMt][kAquaNt][8];
#pragma unroll
  for (uint32_t m = 0; m < kAquaMt; ++m) {
#pragma unroll
    for (uint32_t n = 0; n < kAquaNt; ++n) {
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[m][n][i] = 0.0f;
    }
  }
  for (uint32_t k0 = 0; k0 < in; k0 += kAquaTk) {
    const float* xsrc = k0 < hd ? x0 + k0 : x1 + (k0 - hd);
    for (uint32_t e = threadIdx.x; e < kAquaTm * kAquaTk;
         e += kAquaPredictThreads) {
      const uint32_t t = e / kAquaTk, k = e % kAquaTk;
      xs[k][t] = (t0 + t < tq && k0 + k < in)
                     ? xsrc[static_cast<uint64_t>(t0 + t) * hd + k]
                     : 0.0f;
    }
    for (uint32_t e = threadIdx.x; e < kAquaTn * kAquaTk;
         e += kAquaPredictThreads) {
      const uint32_t o = e / kAquaTk, k = e % kAquaTk;
      ws[k][o] = (o0 + o < hd && k0 + k < in)
                     ? w[static_cast<uint64_t>(o0 + o) * in + k0 + k]
                     : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (uint32_t k = 0; k < kAquaTk; ++k) {
      const float4 xv = *reinterpret_cast<const float4*>(&xs[k][ty * kAquaMt]);
      const float2 wv = *reinterpret_cast<const float2*>(&ws[k][tx * kAquaNt]);
      const float xa[kAquaMt] = {xv.x, xv.y, xv.z, xv.w};
      const float wa[kAquaNt] = {wv.x, wv.y};
      AquaMac(acc, static_cast<int>(k % 8), xa, wa);  // k0 % 8 == 0.
    }
    __syncthreads();
  }
#pragma unroll
  for (uint32_t m = 0; m < kAquaMt; ++m) {
#pragma unroll
    for (uint32_t n = 0; n < kAquaNt; ++n) {
      const uint32_t t = t0 + ty * kAquaMt + m, o = o0 + tx * kAquaNt + n;
      if (t < tq && o < hd) {
        out[static_cast<uint64_t>(t) * hd + o] = AquaLaneSum(acc[m][n], bias[o]);
      }
    }
  }
}

// The same outputs as AquaPredictKernel for small grids: 8 threads per
// output, one per lane sum, combined by xor shuffles (aqua_arith.h).
__global__ void __launch_bounds__(kAquaSplitThreads)
    AquaPredictSplitKernel(const float* __restrict__ x0,
                           const float* __restrict__ x1, uint32_t in,
                           const float* __restrict__ w,
                           const float* __restrict__ bias,
                           float* __restrict__ out, uint32_t tq, uint32_t hd) {
  constexpr uint32_t kCols = kAquaSplitTn / 2;  // Positions along outputs.
  __shared__ float xs[kAquaTk][kAquaSplitTm + 1];
  __shared__ float ws[kAquaTk][kAquaSplitTn + 1];
  const uint32_t lane = threadIdx.x % 8, pos = threadIdx.x / 8;
  const uint32_t tx = pos % kCols, ty = pos / kCols;
  const uint32_t o0 = blockIdx.x * kAquaSplitTn, t0 = blockIdx.y * kAquaSplitTm;
  float acc[2][2] = {{0.0f, 0.0f}, {0.0f, 0.0f}};
  for (uint32_t k0 = 0; k0 < in; k0 += kAquaTk) {
    const float* xsrc = k0 < hd ? x0 + k0 : x1 + (k0 - hd);
    for (uint32_t e = threadIdx.x; e < kAquaSplitTm * kAquaTk;
         e += kAquaSplitThreads) {
      const uint32_t t = e / kAquaTk, k = e % kAquaTk;
      xs[k][t] = (t0 + t < tq && k0 + k < in)
                     ? xsrc[static_cast<uint64_t>(t0 + t) * hd + k]
                     : 0.0f;
    }
    for (uint32_t e = threadIdx.x; e < kAquaSplitTn * kAquaTk;
         e += kAquaSplitThreads) {
      const uint32_t o = e / kAquaTk, k = e % kAquaTk;
      ws[k][o] = (o0 + o < hd && k0 + k < in)
                     ? w[static_cast<uint64_t>(o0 + o) * in + k0 + k]
                     : 0.0f;
    }
    __syncthreads();
#pragma unroll
    for (uint32_t s = 0; s < kAquaTk / 8; ++s) {
      const uint32_t k = s * 8 + lane;  // k0 % 8 == 0: lane sum `lane`.
#pragma unroll
      for (uint32_t m = 0; m < 2; ++m) {
#pragma unroll
        for (uint32_t n = 0; n < 2; ++n) {
          acc[m][n] =
              Add(acc[m][n], Mul(ws[k][tx * 2 + n], xs[k][ty * 2 + m]));
        }
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (uint32_t m = 0; m < 2; ++m) {
#pragma unroll
    for (uint32_t n = 0; n < 2; ++n) {
      float v = acc[m][n];
      v = Add(v, __shfl_xor_sync(kFullMask, v, 1));  // l_i + l_{i^1}
      v = Add(v, __shfl_xor_sync(kFullMask, v, 2));  // pairs of pairs
      v = Add(v, __shfl_xor_sync(kFullMask, v, 4));  // halves
      const uint32_t t = t0 + ty * 2 + m, o = o0 + tx * 2 + n;
      if (lane == 0 && t < tq && o < hd) {
        out[static_cast<uint64_t>(t) * hd + o] = Add(v, bias[o]);
      }
    }
  }
}

template <class Tr>
__global__ void __launch_bounds__(kThreads)
    AquaEncodeGroupsKernel(const AquaSlab s, const typename Tr::Bits* x,
                           const float* pred, float* recon, uint8_t* records,
                           uint8_t* codes, uint32_t* code_words,
                           uint32_t* error_flags) {
  uint32_t flags = 0;
  for (uint64_t g = blockIdx.x * static_cast<uint64_t>(blockDim.x) +
                    threadIdx.x;
       g < s.num_groups; g += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    flags |=
        AquaEncodeGroup<Tr>(s, g, x, pred, recon, records, codes, code_words);
  }
  ReportFlags(error_flags, flags);
}

__global__ void __launch_bounds__(kThreads)
    AquaPackKernel(const uint8_t* codes, uint64_t n, int bits, uint32_t* dst,
                   uint64_t words) {
  for (uint64_t w = blockIdx.x * static_cast<uint64_t>(blockDim.x) +
                    threadIdx.x;
       w < words; w += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    dst[w] = AquaPackWord(codes, n, bits, w);
  }
}

// Element i = t*hd + j of the slab: recon[i] = pred + dequantized residual;
// out (null for a layer outside the output range): row n_sink + t of the
// (kv, layer) output in the dtype.
template <class Tr>
__global__ void __launch_bounds__(kThreads)
    AquaDecodeKernel(const AquaSlab s, const uint8_t* slab, const float* pred,
                     float* recon, typename Tr::Bits* out,
                     uint32_t* error_flags) {
  const uint64_t n = static_cast<uint64_t>(s.tq) * s.hd;
  uint32_t flags = 0;
  for (uint64_t i = blockIdx.x * static_cast<uint64_t>(blockDim.x) +
                    threadIdx.x;
       i < n; i += static_cast<uint64_t>(gridDim.x) * blockDim.x) {
    const uint32_t t = static_cast<uint32_t>(i / s.hd);
    const uint32_t j = static_cast<uint32_t>(i % s.hd);
    float v;
    flags |= AquaDecodeElement(s, t, j, slab,
                               pred != nullptr ? pred[i] : 0.0f, &v);
    recon[i] = v;
    if (out != nullptr) out[i] = Tr::FromFloat(v);
  }
  ReportFlags(error_flags, flags);
}

// The prediction of (layer l >= 1, kv) into a.pred.
void LaunchPredict(const AquaArgs& a, uint32_t l, int kv, cudaStream_t st) {
  const uint32_t hd = a.hd, tq = a.tokens - a.n_sink;
  const uint64_t hh = static_cast<uint64_t>(hd) * hd;
  const float* w = a.profile + (l - 1) * a.layer_floats;
  // Keys: x = K~_{l-1}, W = A_l. Values: x = [K~_l ; V~_{l-1}], W = B_l.
  const float* x0 = kv == 0 ? a.recon[(l - 1) & 1][0] : a.recon[l & 1][0];
  const float* x1 = kv == 0 ? nullptr : a.recon[(l - 1) & 1][1];
  const uint32_t in = kv == 0 ? hd : 2 * hd;
  const float* wk = kv == 0 ? w : w + hh + hd;
  const float* bias = kv == 0 ? w + hh : w + 3 * hh + hd;
  if (AquaUseSplitPredict(tq, hd)) {
    const dim3 grid(CeilDiv(hd, kAquaSplitTn), CeilDiv(tq, kAquaSplitTm));
    AquaPredictSplitKernel<<<grid, kAquaSplitThreads, 0, st>>>(
        x0, x1, in, wk, bias, a.pred, tq, hd);
  } else {
    const dim3 grid(CeilDiv(hd, kAquaTn), CeilDiv(tq, kAquaTm));
    AquaPredictKernel<<<grid, kAquaPredictThreads, 0, st>>>(
        x0, x1, in, wk, bias, a.pred, tq, hd);
  }
}

template <class Tr>
void LaunchSinks(const AquaArgs& a, bool decode, uint32_t layers,
                 cudaStream_t st) {
  if (a.n_sink == 0 || layers == 0) return;
  const dim3 grid(GridFor(static_cast<uint64_t>(a.n_sink) * a.hd) < 64
                      ? GridFor(static_cast<uint64_t>(a.n_sink) * a.hd)
                      : 64,
                  layers, 2);
  AquaSinkKernel<Tr><<<grid, kThreads, 0, st>>>(a, decode);
}

cudaError_t Encode(const AquaArgs& a, cudaStream_t st) {
  DispatchDtype(a.dtype, [&](auto traits) {
    using Tr = decltype(traits);
    using Bits = typename Tr::Bits;
    LaunchSinks<Tr>(a, /*decode=*/false, a.layers, st);
    const uint32_t tq = a.tokens - a.n_sink;
    if (tq == 0) return;
    const uint64_t n = static_cast<uint64_t>(tq) * a.hd;
    for (uint32_t l = 0; l < a.layers; ++l) {
      for (int kv = 0; kv < 2; ++kv) {
        const AquaSlab& s = AquaSlabOf(a, l, kv);
        if (l > 0) LaunchPredict(a, l, kv, st);
        const Bits* x =
            static_cast<const Bits*>(a.raw_in) +
            RawOffset(a.layers, a.tokens, a.hd, kv, l) +
            static_cast<uint64_t>(a.n_sink) * a.hd;
        uint8_t* records =
            static_cast<uint8_t*>(a.payload_out) + AquaQuantOffset(a, l, kv);
        uint32_t* code_words =
            reinterpret_cast<uint32_t*>(records + 4 * s.num_groups);
        const bool aligned = AquaGroupCodesAligned(s);
        AquaEncodeGroupsKernel<Tr><<<GridFor(s.num_groups), kThreads, 0, st>>>(
            s, x, l > 0 ? a.pred : nullptr, a.recon[l & 1][kv], records,
            aligned ? nullptr : a.codes, aligned ? code_words : nullptr,
            a.error_flags);
        if (!aligned) {  // A short last token group: pack the code bytes.
          const uint64_t words = (s.bytes - 4 * s.num_groups) / 4;
          AquaPackKernel<<<GridFor(words), kThreads, 0, st>>>(
              a.codes, n, s.bits, code_words, words);
        }
      }
    }
  });
  return cudaGetLastError();
}

cudaError_t Decode(const AquaArgs& a, cudaStream_t st) {
  DispatchDtype(a.dtype, [&](auto traits) {
    using Tr = decltype(traits);
    using Bits = typename Tr::Bits;
    const uint32_t end = a.out_begin + a.out_count;
    LaunchSinks<Tr>(a, /*decode=*/true, end, st);
    const uint32_t tq = a.tokens - a.n_sink;
    if (tq == 0) return;
    const uint64_t n = static_cast<uint64_t>(tq) * a.hd;
    for (uint32_t l = 0; l < end; ++l) {
      for (int kv = 0; kv < 2; ++kv) {
        const AquaSlab& s = AquaSlabOf(a, l, kv);
        if (l > 0) LaunchPredict(a, l, kv, st);
        Bits* out = nullptr;
        if (l >= a.out_begin) {
          out = static_cast<Bits*>(a.raw_out) +
                RawOffset(a.out_count, a.tokens, a.hd, kv, l - a.out_begin) +
                static_cast<uint64_t>(a.n_sink) * a.hd;
        }
        const uint8_t* slab = static_cast<const uint8_t*>(a.payload_in) +
                              AquaQuantOffset(a, l, kv);
        AquaDecodeKernel<Tr><<<GridFor(n), kThreads, 0, st>>>(
            s, slab, l > 0 ? a.pred : nullptr, a.recon[l & 1][kv], out,
            a.error_flags);
      }
    }
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchAquaEncode(const AquaArgs& args, cudaStream_t stream) {
  return Encode(args, stream);
}

cudaError_t LaunchAquaDecode(const AquaArgs& args, cudaStream_t stream) {
  return Decode(args, stream);
}

}  // namespace strata::kernels::internal
