// Sparse (CSR) encode and decode kernels (docs/kernels.md, "Sparse (CSR)").
//
// Encode, per tile of chunks coded against one dictionary:
//   1. SparseLoadKernel: the tile's chunks, raw dtype -> fp32 residuals
//      (workspace [tile][C]); a non-finite value sets kErrorNonFiniteInput.
//   2. For each of the s matching-pursuit iterations:
//      a. cuBLAS: scores S = D^T R ([N] x [tile], column-major), fp32
//         (CUBLAS_COMPUTE_32F_PEDANTIC: no TF32 whatever the handle's math
//         mode), any reduction order;
//      b. SparseSelectKernel: one warp per chunk. Pass 1 takes the best
//         lower bound L = max_i (S_i*inv_i - E_i) (SparseScoreSlack); pass 2
//         re-scores exactly (SparseDot, the CPU's order) every atom whose
//         upper bound S_i*inv_i + E_i reaches L, and reduces (score, index)
//         with the CPU's winner rule. The true winner always passes the
//         filter and every atom filtered out scores strictly less, so the
//         pick is the CPU's. Then the fp16 coefficient, the record (written
//         by lane 0) and the residual update r_e - c16*a_e, all as the CPU.
//         Non-finite scores or residual norm: lane 0 runs the CPU's
//         sequential loop over every atom instead.
//
// Decode: one warp per chunk, each lane summing its channels over the
// chunk's s records in order (y = y + c16*a_e from y = 0), rounded to the
// dtype.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/internal/device_util.cuh"
#include "kernels/internal/numeric.h"
#include "kernels/internal/sparse_launch.h"
#include "kernels/internal/sparse_math.h"

namespace strata::kernels::internal {
namespace {

constexpr int kSelectWarps = 4;  // Warps (chunks) per select block.
constexpr int kBatch = 4;        // Atoms per lane whose loads are in flight.
constexpr int kMaxDim = 512;     // kSparseMaxGpuAtomDim.
constexpr int kThreads = 256;

template <class Tr>
__global__ void SparseLoadKernel(const void* kv, uint64_t first_element,
                                 uint64_t elements, float* residual,
                                 uint32_t* error_flags) {
  using Bits = typename Tr::Bits;
  const Bits* src = static_cast<const Bits*>(kv) + first_element;
  uint32_t flags = 0;
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x;
       i < elements; i += uint64_t{gridDim.x} * blockDim.x) {
    const Bits b = src[i];
    float v = Tr::ToFloat(b);
    if (!Tr::IsFinite(b)) {
      flags |= kFlagNonFinite;
      v = 0.0f;  // The output is unspecified; keep the arithmetic finite.
    }
    residual[i] = v;
  }
  ReportFlags(error_flags, flags);
}

struct SelectArgs {
  uint32_t atoms, dim, s, j;
  uint32_t chunks;
  uint64_t first_chunk;
  uint64_t records_offset;
  const float* dict;
  const float* norm2;
  const float* inv;
  const float* scores;
  float* residual;
  uint8_t* payload;
};

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

__global__ void __launch_bounds__(kSelectWarps * 32)
    SparseSelectKernel(SelectArgs a) {
  __shared__ float shared_r[kSelectWarps][kMaxDim];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const uint64_t b = uint64_t{blockIdx.x} * kSelectWarps + warp;
  if (b >= a.chunks) return;  // Warp-uniform.
  float* r = shared_r[warp];
  float* rg = a.residual + b * a.dim;
  const uint32_t C = a.dim, N = a.atoms;
  float ss = 0;
  for (uint32_t e = lane; e < C; e += 32) {
    const float v = rg[e];
    r[e] = v;
    ss += v * v;  // Any order: only bounds ||r||.
  }
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(kFullMask, ss, o);
  __syncwarp();
  const float rnorm = SparseNormUpperBound(ss);
  const float* srow = a.scores + b * N;
  bool bad = !isfinite(rnorm);

  // Pass 1: the best lower bound. Loads go in batches of kBatch atoms per
  // lane (all issued before any is used: the loop is latency bound).
  float lower = -INFINITY;
  for (uint32_t base = lane; base < N; base += 32 * kBatch) {
    float q[kBatch], n2[kBatch], inv[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const uint32_t i = base + 32 * u;
      const bool in = i < N;
      n2[u] = in ? a.norm2[i] : 0.0f;
      inv[u] = in ? a.inv[i] : 0.0f;
      q[u] = in ? srow[i] : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      if (n2[u] == 0 || n2[u] < kSparseTinyNorm2) continue;
      const float sc = SparseScore(q[u], inv[u]);
      if (!isfinite(sc)) bad = true;
      lower = fmaxf(lower, Sub(sc, SparseScoreSlack(sc, inv[u], rnorm, C)));
    }
  }
  bad = __any_sync(kFullMask, bad);
  lower = WarpMax(lower);

  // Pass 2: exact re-scoring of the candidates (same batching for the
  // filter; the exact dot runs only for candidates).
  float best_s = 0, best_p = 0;
  uint32_t best_i = kSparseNoAtom;
  if (!bad) {
    for (uint32_t base = lane; base < N; base += 32 * kBatch) {
      float q[kBatch], n2[kBatch], inv[kBatch];
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const uint32_t i = base + 32 * u;
        const bool in = i < N;
        n2[u] = in ? a.norm2[i] : 0.0f;
        inv[u] = in ? a.inv[i] : 0.0f;
        q[u] = in ? srow[i] : 0.0f;
      }
#pragma unroll
      for (int u = 0; u < kBatch; ++u) {
        const uint32_t i = base + 32 * u;
        if (n2[u] == 0) continue;  // Also i >= N.
        if (!(n2[u] < kSparseTinyNorm2)) {
          const float sc = SparseScore(q[u], inv[u]);
          if (Add(sc, SparseScoreSlack(sc, inv[u], rnorm, C)) < lower) continue;
        }
        const float p = SparseDot(r, a.dict + uint64_t{i} * C, C);
        const float sc = SparseScore(p, inv[u]);
        if (!isfinite(sc)) bad = true;
        if (SparseBetter(sc, i, best_s, best_i)) {
          best_s = sc;
          best_i = i;
          best_p = p;
        }
      }
    }
    bad = __any_sync(kFullMask, bad);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
      const float os = __shfl_xor_sync(kFullMask, best_s, o);
      const uint32_t oi = __shfl_xor_sync(kFullMask, best_i, o);
      const float op = __shfl_xor_sync(kFullMask, best_p, o);
      if (SparseBetter(os, oi, best_s, best_i)) {
        best_s = os;
        best_i = oi;
        best_p = op;
      }
    }
  }
  if (bad) {
    // The CPU's loop, sequentially (non-finite values compare as the CPU's).
    if (lane == 0) {
      int64_t bi = -1;
      float bs = 0, bp = 0;
      for (uint32_t i = 0; i < N; ++i) {
        if (a.norm2[i] == 0) continue;
        const float p = SparseDot(r, a.dict + uint64_t{i} * C, C);
        const float sc = SparseScore(p, a.inv[i]);
        if (bi < 0 || sc > bs) {
          bi = i;
          bs = sc;
          bp = p;
        }
      }
      best_i = bi < 0 ? kSparseNoAtom : static_cast<uint32_t>(bi);
      best_p = bp;
    }
    best_i = __shfl_sync(kFullMask, best_i, 0);
    best_p = __shfl_sync(kFullMask, best_p, 0);
  }

  uint16_t code = 0, index = 0;
  if (best_i != kSparseNoAtom) {
    index = static_cast<uint16_t>(best_i);
    code = SparseCoefficientCode(best_p, a.norm2[best_i]);
    const float cf = HalfToFloat(code);
    const float* atom = a.dict + uint64_t{best_i} * C;
    for (uint32_t e = lane; e < C; e += 32) {
      const float v = Sub(r[e], Mul(cf, atom[e]));
      rg[e] = v;
    }
  }
  if (lane == 0) {
    const uint64_t rec =
        a.records_offset + ((a.first_chunk + b) * a.s + a.j) * 4;
    *reinterpret_cast<uint32_t*>(a.payload + rec) =
        static_cast<uint32_t>(index) | (static_cast<uint32_t>(code) << 16);
  }
}

// One warp per chunk: lane l owns channels l, l + 32, ... (K per lane, K =
// ceil(C / 32)); each record is read once per lane (a broadcast) and added
// to the lane's K sums, so every channel still sums its records in order.
template <class Tr, int K>
__global__ void __launch_bounds__(kThreads)
    SparseDecodeKernel(SparseDecodeArgs a) {
  using Bits = typename Tr::Bits;
  Bits* out = static_cast<Bits*>(a.kv);
  const uint32_t C = a.dim;
  const uint64_t per_layer =
      uint64_t{a.tokens} * a.heads * a.chunks_per_head;  // Chunks.
  const uint32_t count = a.atoms + a.online;
  const int lane = threadIdx.x % 32;
  const uint64_t warps = uint64_t{gridDim.x} * (blockDim.x / 32);
  uint32_t flags = 0;
  for (uint64_t g = uint64_t{blockIdx.x} * (blockDim.x / 32) + threadIdx.x / 32;
       g < a.chunks; g += warps) {
    const uint64_t kl = g / per_layer;  // kv * L + layer
    const uint32_t kv = kl >= a.layers ? 1u : 0u;
    const uint32_t layer = static_cast<uint32_t>(kl - kv * uint64_t{a.layers});
    const uint32_t group = static_cast<uint32_t>(a.profile[a.groups + layer]);
    // A select, not a.dict[kv]: indexing the parameter array by a runtime
    // value would copy it to local memory.
    const uint64_t dict_offset = kv != 0 ? a.dict[1] : a.dict[0];
    const float* dict = a.profile + dict_offset + uint64_t{group} * a.atoms * C;
    const uint16_t* online =
        reinterpret_cast<const uint16_t*>(a.payload) + kl * a.online * C;
    const uint32_t* rec =
        reinterpret_cast<const uint32_t*>(a.payload + a.records_offset) +
        g * a.s;
    float y[K];
#pragma unroll
    for (int k = 0; k < K; ++k) y[k] = 0.0f;
    for (uint32_t j = 0; j < a.s; ++j) {
      const uint32_t w = rec[j];
      const uint32_t i = w & 0xFFFF;
      const uint16_t h = static_cast<uint16_t>(w >> 16);
      if (i >= count || (h & 0x7C00) == 0x7C00) {
        flags |= kFlagBadGroupRecord;
        continue;
      }
      const float cf = HalfToFloat(h);
      if (i < a.atoms) {
        const float* atom = dict + uint64_t{i} * C;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const uint32_t e = lane + 32 * k;
          if (e < C) y[k] = Add(y[k], Mul(cf, atom[e]));
        }
      } else {
        const uint16_t* atom = online + uint64_t{i - a.atoms} * C;
#pragma unroll
        for (int k = 0; k < K; ++k) {
          const uint32_t e = lane + 32 * k;
          if (e < C) y[k] = Add(y[k], Mul(cf, HalfToFloat(atom[e])));
        }
      }
    }
    Bits* dst = out + g * C;
#pragma unroll
    for (int k = 0; k < K; ++k) {
      const uint32_t e = lane + 32 * k;
      if (e < C) dst[e] = Tr::FromFloat(y[k]);
    }
  }
  ReportFlags(a.error_flags, flags);
}

// Every online atom value must be finite (the CPU checks each (kv, layer)'s
// atoms before decoding its records).
__global__ void SparseCheckOnlineKernel(const uint8_t* payload, uint64_t halves,
                                        uint32_t* error_flags) {
  uint32_t flags = 0;
  for (uint64_t i = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x;
       i < halves; i += uint64_t{gridDim.x} * blockDim.x) {
    const uint32_t h = payload[2 * i] | (payload[2 * i + 1] << 8);
    if ((h & 0x7C00) == 0x7C00) flags |= kFlagBadGroupRecord;
  }
  ReportFlags(error_flags, flags);
}

unsigned GridFor(uint64_t items) {
  const uint64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 * 4 ? (blocks ? blocks : 1)
                                                  : 65535 * 4);
}

// Restores the handle's stream and pointer mode on scope exit.
class HandleState {
 public:
  explicit HandleState(cublasHandle_t h) : h_(h) {
    ok_ = cublasGetStream(h_, &stream_) == CUBLAS_STATUS_SUCCESS &&
          cublasGetPointerMode(h_, &mode_) == CUBLAS_STATUS_SUCCESS;
  }
  ~HandleState() {
    if (ok_) {
      cublasSetStream(h_, stream_);
      cublasSetPointerMode(h_, mode_);
    }
  }
  bool ok() const { return ok_; }

 private:
  cublasHandle_t h_;
  cudaStream_t stream_ = nullptr;
  cublasPointerMode_t mode_ = CUBLAS_POINTER_MODE_HOST;
  bool ok_ = false;
};

}  // namespace

SparseLaunchResult LaunchSparseEncode(const SparseEncodeArgs& a,
                                      cudaStream_t stream) {
  SparseLaunchResult result;
  HandleState saved(a.cublas);
  if (!saved.ok()) {
    result.cublas = CUBLAS_STATUS_NOT_INITIALIZED;
    result.what = "cublasGetStream";
    return result;
  }
  cublasStatus_t st = cublasSetStream(a.cublas, stream);
  if (st == CUBLAS_STATUS_SUCCESS) {
    st = cublasSetPointerMode(a.cublas, CUBLAS_POINTER_MODE_HOST);
  }
  if (st != CUBLAS_STATUS_SUCCESS) {
    result.cublas = st;
    result.what = "cublasSetStream";
    return result;
  }
  const float alpha = 1.0f, beta = 0.0f;
  for (const SparseTile& t : a.tiles) {
    DispatchDtype(a.dtype, [&](auto traits) {
      using Tr = decltype(traits);
      const uint64_t elements = uint64_t{t.chunks} * a.dim;
      SparseLoadKernel<Tr><<<GridFor(elements), kThreads, 0, stream>>>(
          a.kv, t.first_chunk * a.dim, elements, a.residual, a.error_flags);
    });
    if ((result.cuda = cudaGetLastError()) != cudaSuccess) {
      result.what = "sparse load";
      return result;
    }
    for (uint32_t j = 0; j < a.s; ++j) {
      // scores (N x chunks, column-major) = dict^T (N x C) * R (C x chunks);
      // dict is row-major [N][C] = column-major C x N, R likewise C x chunks.
      st = cublasGemmEx(a.cublas, CUBLAS_OP_T, CUBLAS_OP_N,
                        static_cast<int>(a.atoms), static_cast<int>(t.chunks),
                        static_cast<int>(a.dim), &alpha, t.dict, CUDA_R_32F,
                        static_cast<int>(a.dim), a.residual, CUDA_R_32F,
                        static_cast<int>(a.dim), &beta, a.scores, CUDA_R_32F,
                        static_cast<int>(a.atoms), CUBLAS_COMPUTE_32F_PEDANTIC,
                        CUBLAS_GEMM_DEFAULT);
      if (st != CUBLAS_STATUS_SUCCESS) {
        result.cublas = st;
        result.what = "cublasGemmEx";
        return result;
      }
      SelectArgs s;
      s.atoms = a.atoms;
      s.dim = a.dim;
      s.s = a.s;
      s.j = j;
      s.chunks = t.chunks;
      s.first_chunk = t.first_chunk;
      s.records_offset = a.records_offset;
      s.dict = t.dict;
      s.norm2 = t.norm2;
      s.inv = t.inv;
      s.scores = a.scores;
      s.residual = a.residual;
      s.payload = a.payload;
      SparseSelectKernel<<<CeilDiv(t.chunks, kSelectWarps),
                           kSelectWarps * 32, 0, stream>>>(s);
      if ((result.cuda = cudaGetLastError()) != cudaSuccess) {
        result.what = "sparse select";
        return result;
      }
    }
  }
  return result;
}

cudaError_t LaunchSparseDecode(const SparseDecodeArgs& a, cudaStream_t stream) {
  if (a.online > 0) {
    const uint64_t halves = 2ull * a.layers * a.online * a.dim;
    SparseCheckOnlineKernel<<<GridFor(halves), kThreads, 0, stream>>>(
        a.payload, halves, a.error_flags);
  }
  DispatchDtype(a.dtype, [&](auto traits) {
    using Tr = decltype(traits);
    const unsigned grid = GridFor(a.chunks * 32);  // A warp per chunk.
    if (a.dim <= 32) {
      SparseDecodeKernel<Tr, 1><<<grid, kThreads, 0, stream>>>(a);
    } else if (a.dim <= 64) {
      SparseDecodeKernel<Tr, 2><<<grid, kThreads, 0, stream>>>(a);
    } else if (a.dim <= 128) {
      SparseDecodeKernel<Tr, 4><<<grid, kThreads, 0, stream>>>(a);
    } else {
      SparseDecodeKernel<Tr, 16><<<grid, kThreads, 0, stream>>>(a);
    }
  });
  return cudaGetLastError();
}

}  // namespace strata::kernels::internal
