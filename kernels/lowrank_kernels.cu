// Lowrank (PCA) encode and decode kernels: the CPU codec's arithmetic in the
// CPU's order (docs/kernels.md, "Lowrank").
//
// Encode, one launch per half (K, V): block (layer * heads + h, token tile).
// A tile holds 4*G tokens, G = max(1, min(16, 256 / r)) groups of 4; thread
// (g, j) accumulates latent j of the 4 tokens of group g over the dimension
// in order, the centred inputs staged in shared memory in chunks of the
// dimension (x - mu, as fp32) and the basis read from global memory
// (coalesced over j, reused through L1 by the tile's groups). Ranks above
// 256 take several passes. The fp16 format writes each latent directly;
// int8/int4 collect the tile's latents in shared memory, then one warp per
// token builds its record (min/max as first extrema, fp16 min/scale,
// codes).
//
// Decode, one launch per half: block (layer * heads + h, token tile). The
// tile's records are decoded into shared memory (one thread per latent),
// then thread (g, e) computes channel e of 4 tokens: mu_e + sum_j z_j P_ej in
// order of j, reading the transposed basis (coalesced over e).
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/launch.h"
#include "kernels/internal/numeric.h"

namespace strata::kernels::internal {
namespace {

constexpr int kThreads = 256;
constexpr int kTok = 4;                 // Tokens per thread.
constexpr uint32_t kStageFloats = 4096;  // Shared staging (16 KiB each).

__device__ __forceinline__ uint32_t GroupsFor(uint32_t width) {
  const uint32_t g = width >= 256 ? 1 : 256 / width;
  return g > 16 ? 16 : g;
}

// Element index of (side, layer, token, head, 0) in the raw block.
__device__ __forceinline__ uint64_t VecIndex(const LowRankArgs& a, int side,
                                             uint32_t l, uint32_t t,
                                             uint32_t h) {
  return (((static_cast<uint64_t>(side) * a.layers + l) * a.tokens + t) *
              a.heads +
          h) *
         a.dim;
}

__device__ __forceinline__ uint64_t RecordOffset(const LowRankArgs& a,
                                                 int side, uint32_t l,
                                                 uint32_t t, uint32_t h) {
  return a.offset[side] +
         ((static_cast<uint64_t>(l) * a.tokens + t) * a.heads + h) *
             a.record[side];
}

__device__ __forceinline__ float LatentScale(const LowRankArgs& a,
                                             const float* stddev, uint32_t j) {
  if (!a.whiten) return 1.0f;
  const float s = stddev[j];
  return s > 0 ? s : 1.0f;
}

// The largest fp16 <= v and the smallest fp16 >= v (codecs' HalfAtMost /
// HalfAtLeast).
__device__ __forceinline__ uint16_t HalfAtMost(float v) {
  uint16_t h = FloatToHalf(v);
  if (HalfToFloat(h) > v) {
    h = (h == 0) ? 0x8001 : (h & 0x8000) ? h + 1 : h - 1;
  }
  return h;
}
__device__ __forceinline__ uint16_t HalfAtLeast(float v) {
  uint16_t h = FloatToHalf(v);
  if (HalfToFloat(h) < v) h = h + 1;
  return h;
}

__device__ __forceinline__ void StoreU16(uint8_t* p, uint16_t v) {
  p[0] = static_cast<uint8_t>(v);
  p[1] = static_cast<uint8_t>(v >> 8);
}
__device__ __forceinline__ uint16_t LoadU16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

template <class Tr>
__global__ void __launch_bounds__(kThreads)
    LowRankEncodeKernel(const LowRankArgs a, int side) {
  using Bits = typename Tr::Bits;
  __shared__ __align__(16) float xs[kStageFloats];
  __shared__ float zs[kStageFloats];
  const uint32_t r = a.rank[side], d = a.dim, r_max = a.r_max[side];
  const uint32_t lh = blockIdx.x, l = lh / a.heads, h = lh % a.heads;
  const uint32_t groups = GroupsFor(r), tile = kTok * groups;
  const uint32_t t0 = blockIdx.y * tile;
  const uint32_t width = r < 256 ? r : 256;
  const uint32_t g = threadIdx.x / width;
  const bool active = g < groups;
  // Dimensions staged per pass; a multiple of 4 (16-byte rows).
  const uint32_t chunk = (kStageFloats / tile) & ~3u;
  const float* mu = a.profile + a.mean[side] + static_cast<uint64_t>(lh) * d;
  const float* P =
      a.profile + a.basis[side] + static_cast<uint64_t>(lh) * d * r_max;
  const float* sd =
      a.profile + a.stddev[side] + static_cast<uint64_t>(lh) * r_max;
  const Bits* x = static_cast<const Bits*>(a.src);
  uint8_t* out = static_cast<uint8_t*>(a.dst);
  uint32_t flags = 0;
  for (uint32_t jbase = 0; jbase < r; jbase += 256) {
    const uint32_t j = jbase + threadIdx.x % width;
    float acc[kTok] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (uint32_t e0 = 0; e0 < d; e0 += chunk) {
      const uint32_t ec = d - e0 < chunk ? d - e0 : chunk;
      __syncthreads();
      for (uint32_t i = threadIdx.x; i < tile * ec; i += kThreads) {
        const uint32_t tok = i / ec, e = i % ec;
        float c = 0.0f;
        if (t0 + tok < a.tokens) {
          const Bits b = x[VecIndex(a, side, l, t0 + tok, h) + e0 + e];
          if (jbase == 0 && !Tr::IsFinite(b)) flags |= kFlagNonFinite;
          c = Sub(Tr::ToFloat(b), mu[e0 + e]);
        }
        xs[tok * chunk + e] = c;
      }
      __syncthreads();
      if (active && j < r) {
        // Four dimensions per step: one 16-byte shared load per token and
        // four basis loads feed 16 multiply-adds, still in dimension order.
        const float* pcol = P + static_cast<uint64_t>(e0) * r_max + j;
        const float* xrow = xs + kTok * g * chunk;
        uint32_t e = 0;
        for (; e + 4 <= ec; e += 4) {
          const float p0 = pcol[0], p1 = pcol[r_max], p2 = pcol[2 * r_max],
                      p3 = pcol[3 * r_max];
          pcol += 4 * r_max;
#pragma unroll
          for (int k = 0; k < kTok; ++k) {
            const float4 v = *reinterpret_cast<const float4*>(xrow + k * chunk + e);
            acc[k] = Add(acc[k], Mul(v.x, p0));
            acc[k] = Add(acc[k], Mul(v.y, p1));
            acc[k] = Add(acc[k], Mul(v.z, p2));
            acc[k] = Add(acc[k], Mul(v.w, p3));
          }
        }
        for (; e < ec; ++e) {
          const float p = *pcol;
          pcol += r_max;
#pragma unroll
          for (int k = 0; k < kTok; ++k) {
            acc[k] = Add(acc[k], Mul(xrow[k * chunk + e], p));
          }
        }
      }
    }
    if (active && j < r) {
#pragma unroll
      for (int k = 0; k < kTok; ++k) {
        const uint32_t t = t0 + kTok * g + k;
        if (t >= a.tokens) continue;
        if (a.format == 0) {
          StoreU16(out + RecordOffset(a, side, l, t, h) + 2 * j,
                   FloatToHalf(Clamp(acc[k], -kHalfMax, kHalfMax)));
        } else {
          zs[(kTok * g + k) * r + j] = acc[k];
        }
      }
    }
  }
  ReportFlags(a.error_flags, flags);
  if (a.format == 0) return;
  __syncthreads();
  // One warp per token: the record of EncodeRecord. Lane i owns latents
  // i, i + 32, ...; min/max are combined as (value, index) pairs keeping the
  // lower index among equal values, which is std::min_element's /
  // max_element's first extremum (and so the sign of a zero minimum).
  const uint32_t warp = threadIdx.x / 32, lane = threadIdx.x & 31;
  const int bits = a.format == 1 ? 8 : 4;
  const float levels = static_cast<float>((1 << bits) - 1);
  for (uint32_t i = warp; i < tile && t0 + i < a.tokens; i += kThreads / 32) {
    const float* z = zs + i * r;
    float mn = 0, mx = 0;
    uint32_t imn = UINT32_MAX, imx = UINT32_MAX;
    for (uint32_t k = lane; k < r; k += 32) {
      const float y = Div(z[k], LatentScale(a, sd, k));
      if (imn == UINT32_MAX || y < mn) {
        mn = y;
        imn = k;
      }
      if (imx == UINT32_MAX || mx < y) {
        mx = y;
        imx = k;
      }
    }
#pragma unroll
    for (int m = 16; m >= 1; m >>= 1) {
      const float omn = __shfl_xor_sync(kFullMask, mn, m);
      const uint32_t oimn = __shfl_xor_sync(kFullMask, imn, m);
      const float omx = __shfl_xor_sync(kFullMask, mx, m);
      const uint32_t oimx = __shfl_xor_sync(kFullMask, imx, m);
      if (oimn != UINT32_MAX &&
          (imn == UINT32_MAX || omn < mn || (!(mn < omn) && oimn < imn))) {
        mn = omn;
        imn = oimn;
      }
      if (oimx != UINT32_MAX &&
          (imx == UINT32_MAX || mx < omx || (!(omx < mx) && oimx < imx))) {
        mx = omx;
        imx = oimx;
      }
    }
    mn = Clamp(mn, -kHalfMax, kHalfMax);
    const uint16_t mn_h = HalfAtMost(mn);
    const float mnf = HalfToFloat(mn_h);
    const uint16_t sc_h =
        HalfAtLeast(Clamp(Div(Sub(mx, mnf), levels), 0.0f, kHalfMax));
    const float scf = HalfToFloat(sc_h);
    uint8_t* rec = out + RecordOffset(a, side, l, t0 + i, h);
    if (lane == 0) {
      StoreU16(rec, mn_h);
      StoreU16(rec + 2, sc_h);
    }
    uint8_t* codes = rec + 4;
    for (uint32_t base = 0; base < r; base += 32) {  // Uniform: shuffles.
      const uint32_t k = base + lane;
      uint32_t q = 0;
      if (k < r && scf > 0) {
        const float y = Div(z[k], LatentScale(a, sd, k));
        q = static_cast<uint32_t>(
            Clamp(RoundEven(Div(Sub(y, mnf), scf)), 0.0f, levels));
      }
      const uint32_t next = __shfl_xor_sync(kFullMask, q, 1);
      if (k >= r) continue;
      if (bits == 8) {
        codes[k] = static_cast<uint8_t>(q);
      } else if (k % 2 == 0) {  // k + 1 >= r: q of a missing latent is 0.
        codes[k / 2] = static_cast<uint8_t>(q | (next << 4));
      }
    }
  }
}

template <class Tr>
__global__ void __launch_bounds__(kThreads)
    LowRankDecodeKernel(const LowRankArgs a, int side) {
  using Bits = typename Tr::Bits;
  __shared__ __align__(16) float zs[kStageFloats];
  const uint32_t r = a.rank[side], d = a.dim, r_max = a.r_max[side];
  const uint32_t rp = (r + 3) & ~3u;  // zs row stride: 16-byte rows.
  const uint32_t lh = blockIdx.x, l = lh / a.heads, h = lh % a.heads;
  const uint32_t groups = GroupsFor(d), tile = kTok * groups;
  const uint32_t t0 = blockIdx.y * tile;
  const float* mu = a.profile + a.mean[side] + static_cast<uint64_t>(lh) * d;
  const float* Pt =
      a.profile + a.basis_t[side] + static_cast<uint64_t>(lh) * r_max * d;
  const float* sd =
      a.profile + a.stddev[side] + static_cast<uint64_t>(lh) * r_max;
  const uint8_t* in = static_cast<const uint8_t*>(a.src);
  uint32_t flags = 0;
  // Latents of the tile (tokens past the end decode as zeros).
  for (uint32_t i = threadIdx.x; i < tile * r; i += kThreads) {
    const uint32_t tok = i / r, j = i % r;
    float z = 0.0f;
    if (t0 + tok < a.tokens) {
      const uint8_t* rec = in + RecordOffset(a, side, l, t0 + tok, h);
      if (a.format == 0) {
        z = HalfToFloat(LoadU16(rec + 2 * j));
        if (!isfinite(z)) flags |= kFlagBadGroupRecord;
      } else {
        const float mnf = HalfToFloat(LoadU16(rec));
        const float scf = HalfToFloat(LoadU16(rec + 2));
        if (!isfinite(mnf) || !isfinite(scf) || scf < 0) {
          flags |= kFlagBadGroupRecord;
        }
        const uint8_t* codes = rec + 4;
        uint32_t q;
        if (a.format == 1) {
          q = codes[j];
        } else {
          q = (codes[j / 2] >> (4 * (j % 2))) & 0xF;
          if (j + 1 == r && r % 2 == 1 && (codes[j / 2] >> 4) != 0) {
            flags |= kFlagBadGroupRecord;
          }
        }
        const float y = Add(mnf, Mul(static_cast<float>(q), scf));
        z = Mul(y, LatentScale(a, sd, j));
      }
    }
    zs[tok * rp + j] = z;
  }
  __syncthreads();
  ReportFlags(a.error_flags, flags);
  const uint32_t width = d < 256 ? d : 256;
  const uint32_t g = threadIdx.x / width;
  if (g >= groups) return;
  Bits* out = static_cast<Bits*>(a.dst);
  for (uint32_t e = threadIdx.x % width; e < d; e += width) {
    float acc[kTok] = {0.0f, 0.0f, 0.0f, 0.0f};
    const float* pt = Pt + e;
    const float* zrow = zs + kTok * g * rp;
    uint32_t j = 0;
    for (; j + 4 <= r; j += 4) {  // Four latents per step, in order.
      const float p0 = pt[0], p1 = pt[d], p2 = pt[2 * d], p3 = pt[3 * d];
      pt += 4 * d;
#pragma unroll
      for (int k = 0; k < kTok; ++k) {
        const float4 z = *reinterpret_cast<const float4*>(zrow + k * rp + j);
        acc[k] = Add(acc[k], Mul(z.x, p0));
        acc[k] = Add(acc[k], Mul(z.y, p1));
        acc[k] = Add(acc[k], Mul(z.z, p2));
        acc[k] = Add(acc[k], Mul(z.w, p3));
      }
    }
    for (; j < r; ++j) {
      const float p = *pt;
      pt += d;
#pragma unroll
      for (int k = 0; k < kTok; ++k) {
        acc[k] = Add(acc[k], Mul(zrow[k * rp + j], p));
      }
    }
#pragma unroll
    for (int k = 0; k < kTok; ++k) {
      const uint32_t t = t0 + kTok * g + k;
      if (t < a.tokens) {
        out[VecIndex(a, side, l, t, h) + e] = Tr::FromFloat(Add(mu[e], acc[k]));
      }
    }
  }
}

cudaError_t LaunchLowRank(const LowRankArgs& a, bool decode,
                          cudaStream_t st) {
  DispatchDtype(a.dtype, [&](auto traits) {
    using Tr = decltype(traits);
    for (int side = 0; side < 2; ++side) {
      const uint32_t width = decode ? a.dim : a.rank[side];
      uint32_t groups = width >= 256 ? 1 : 256 / width;
      if (groups > 16) groups = 16;
      const dim3 grid(a.layers * a.heads, CeilDiv(a.tokens, kTok * groups));
      if (decode) {
        LowRankDecodeKernel<Tr><<<grid, kThreads, 0, st>>>(a, side);
      } else {
        LowRankEncodeKernel<Tr><<<grid, kThreads, 0, st>>>(a, side);
      }
    }
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchLowRankEncode(const LowRankArgs& args, cudaStream_t stream) {
  return LaunchLowRank(args, /*decode=*/false, stream);
}

cudaError_t LaunchLowRankDecode(const LowRankArgs& args, cudaStream_t stream) {
  return LaunchLowRank(args, /*decode=*/true, stream);
}

}  // namespace strata::kernels::internal
