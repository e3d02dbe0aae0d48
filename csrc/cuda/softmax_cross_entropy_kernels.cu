// Fused softmax + cross-entropy, CUDA kernels.
//
// Fused: log-softmax, the (weighted, smoothed) NLL and the per-row loss in one pass over the logits
// (online max and sum of exponentials in registers); backward writes softmax minus the smoothed
// one-hot target, times the incoming gradient, in one pass. Saved for backward: the per-row
// log-sum-exp as (max, log-sum) (N x 2 floats) and wstats (2 floats). Never written: softmax or log-softmax (N x C).
// Roofline (bytes are the bound: ~4 flops/element): forward reads N*C*s bytes (s = element size),
// backward reads N*C*s and writes N*C*s; everything else is O(N + C).
//
// Work split: one warp per row for C <= 2048, one 512-thread block per row above. Each thread
// streams 16-byte vectors of its row when the rows are 16-byte aligned, scalars otherwise.
// A target outside [0, C) that is not ignore_index is reported by printf and a trap: the op fails
// (the next synchronising call raises) instead of returning a wrong loss; no host synchronisation.
// Each thread issues four 16-byte loads before it folds them (kUnroll; float64: one), so that an SM
// keeps ~100 KB of loads in flight instead of ~32 KB: enough for HBM3's latency x bandwidth.
// ptxas, sm_90 (nvcc 13.0; `python bench/kernel_report.py --filter softmax`): forward 29-40
// registers, backward 30-62 (float64 up to 64), no spills except 16 bytes in one float64 backward
// variant; 4 back-to-back LDG.E.128 in the unrolled vector loops (STG.E.128 in the backward's),
// MUFU.EX2 for exp; local memory only for the printf arguments of the bad-target path.
// Occupancy (registers, 64K per SM): forward 40 -> 3 blocks of 512 (75%) or 6 of 256; backward
// bf16 56 (allocated) -> 2 blocks of 512 (50%), float32 at 64 -> 4 blocks of 256 (50%); no block
// needs more than 512 bytes of shared memory.
// Performance model against issue 9's bars (H100 SXM: 3.35 TB/s HBM, ~50 MB L2; not yet measured:
// no GPU has run these kernels). Forward + backward move 3 N C s bytes (s: element size), the least
// any implementation can (read the logits twice, write the gradient once); F.cross_entropy moves
// ~6 N C s (log_softmax writes N x C, nll reads it back; backward zero-fills a one-hot gradient,
// then reads it and the saved log-softmax and writes the result) in ~6 launches, against our 3.
// - N 128..4096, C 10 and 1000: <= 8 MB of logits, so launches and the L2 dominate: at C 1000 and
//   N 4096 bf16 ours needs ~24 MB (7 us at HBM rate, less from L2) plus 3 launches, PyTorch ~48 MB
//   plus 6: ~2x expected, the bar, with nothing to spare; at C 10 each side is all launch latency,
//   so the ratio is the launch count, ~2x.
// - N 16384, C 32768..131072 (1-8 GB): streaming. Each SM needs ~25 B/ns x ~1 us of loads in
//   flight (~25 KB); the unrolled loops give it ~100 KB (forward) and ~64 KB (backward), so both
//   should run at the copy kernel's rate: 85-95% of the measured copy bandwidth, the bar being 85%.
//   Exp throughput is not a limit: ~7 elements/cycle/SM at HBM rate against 16 MUFU ops/cycle/SM.
// Compiled without nvcc (tests/emulation), the same source runs in the CPU emulation of CUDA.
#include "cuda/cuda_or_emulation.h"

#include <cmath>
#include <cstdio>

#include "common/softmax_cross_entropy_math.h"
#include "cuda/acc_convert.h"
#include "cuda/softmax_cross_entropy_kernels.h"

namespace pyalexnet {
namespace xent {
namespace {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

// 16-byte loads each thread has in flight in the vector loops: one at a time leaves an SM ~32 KB of
// loads in flight at full occupancy, about what HBM3's latency x bandwidth needs, with no margin.
// float64 keeps one: its exp() is a called function, and four packs live across the calls spill.
template <typename T> constexpr int kUnroll = 4;
template <> constexpr int kUnroll<double> = 1;

using cuda_convert::from_acc;
using cuda_convert::to_acc;

__device__ __forceinline__ float exp_(float x) { return __expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float log_(float x) { return __logf(x); }
__device__ __forceinline__ double log_(double x) { return log(x); }

// 16 bytes of T: what one vector load or store moves.
template <typename T>
struct alignas(16) Pack {
  static constexpr int V = 16 / sizeof(T);
  T e[V];
};

// Running (max, sum of exp(x - max)) of a set of logits; merging two is exact up to rounding.
template <typename acc_t>
struct MaxSum {
  acc_t m, s;
};

template <typename acc_t>
__device__ __forceinline__ MaxSum<acc_t> merge(MaxSum<acc_t> a, MaxSum<acc_t> b) {
  acc_t m = a.m > b.m ? a.m : b.m;
  acc_t mm = m == -INFINITY ? acc_t(0) : m;  // two empty sets: keep exp() away from -inf - -inf
  return {m, a.s * exp_(a.m - mm) + b.s * exp_(b.m - mm)};
}

// Folds V logits into the running (max, sum) and, when smoothing, into a = sum w_c (z_c - r).
template <typename acc_t, int V>
__device__ __forceinline__ void accumulate(MaxSum<acc_t>& ms, acc_t& a, acc_t& ws, const acc_t (&z)[V],
                                           const acc_t* w, int64_t j, acc_t r, bool smooth) {
  acc_t vm = z[0];
#pragma unroll
  for (int k = 1; k < V; ++k) vm = z[k] > vm ? z[k] : vm;
  acc_t m = ms.m > vm ? ms.m : vm;
  acc_t mm = m == -INFINITY ? acc_t(0) : m;
  acc_t s = ms.s * exp_(ms.m - mm);
#pragma unroll
  for (int k = 0; k < V; ++k) s += exp_(z[k] - mm);
  ms = {m, s};
  if (smooth) {
#pragma unroll
    for (int k = 0; k < V; ++k) {
      acc_t wk = w ? __ldg(w + j + k) : acc_t(1);
      a += wk * (z[k] - r);
      ws += wk;
    }
  }
}

// Reduces (ms, a, ws) over the 32 lanes of a warp (butterfly: every lane gets the result).
template <typename acc_t>
__device__ __forceinline__ void warp_reduce(MaxSum<acc_t>& ms, acc_t& a, acc_t& ws) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum<acc_t> other{__shfl_xor_sync(0xffffffffu, ms.m, o), __shfl_xor_sync(0xffffffffu, ms.s, o)};
    ms = merge(ms, other);
    a += __shfl_xor_sync(0xffffffffu, a, o);
    ws += __shfl_xor_sync(0xffffffffu, ws, o);
  }
}

// Reduces (ms, a, ws) over the G threads of a row group; the result is valid in lane 0 of the group.
// G == 32: warp shuffles only. G > 32: the group is the whole block (one row per block).
template <int G, typename acc_t>
__device__ __forceinline__ void group_reduce(MaxSum<acc_t>& ms, acc_t& a, acc_t& ws) {
  warp_reduce(ms, a, ws);
  if constexpr (G > 32) {
    constexpr int W = G / 32;
    __shared__ acc_t sm[W], ss[W], sa[W], sw[W];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) sm[warp] = ms.m, ss[warp] = ms.s, sa[warp] = a, sw[warp] = ws;
    __syncthreads();
    if (warp == 0) {
      ms = lane < W ? MaxSum<acc_t>{sm[lane], ss[lane]} : MaxSum<acc_t>{-INFINITY, acc_t(0)};
      a = lane < W ? sa[lane] : acc_t(0);
      ws = lane < W ? sw[lane] : acc_t(0);
      warp_reduce(ms, a, ws);
    }
  }
}

__device__ __noinline__ void report_bad_target(int64_t t, int64_t row, int64_t C, int64_t ignore) {
  printf("pyalexnet softmax_cross_entropy: target %lld at position %lld is out of range for %lld "
         "classes (valid: 0..%lld, or ignore_index = %lld)\n",
         (long long)t, (long long)row, (long long)C, (long long)(C - 1), (long long)ignore);
  __trap();
}

// x: N x C (row stride sN, unit column stride); tgt: N (stride sT); w: C or nullptr.
// Per row: lse, and loss (reduction none, dtype T) or row_loss (acc); row_w: used target weight.
template <typename T, typename I, int G, int BLOCK, bool kVec>
__global__ void __launch_bounds__(BLOCK) softmax_cross_entropy_forward_kernel_impl(
    const T* __restrict__ x, int64_t N, int64_t C, int64_t sN, const I* __restrict__ tgt, int64_t sT,
    const typename AccOf<T>::type* __restrict__ w, int64_t ignore, typename AccOf<T>::type eps, int red,
    T* __restrict__ loss, typename AccOf<T>::type* __restrict__ lse,
    typename AccOf<T>::type* __restrict__ rloss, typename AccOf<T>::type* __restrict__ row_w) {
  using acc_t = typename AccOf<T>::type;
  constexpr int V = Pack<T>::V;
  const int64_t row = int64_t(blockIdx.x) * (BLOCK / G) + threadIdx.x / G;
  const int lane = threadIdx.x % G;
  if (row >= N) return;  // whole groups leave together (G == BLOCK: never)
  const T* xr = x + row * sN;
  const acc_t r = smoothing_shift(to_acc(xr[0]));
  const bool smooth = eps > acc_t(0);
  MaxSum<acc_t> ms{-INFINITY, acc_t(0)};
  acc_t a = 0, ws = 0;
  int64_t j0 = 0;
  if constexpr (kVec) {
    const int64_t Cv = C / V * V, step = int64_t(G) * V;
    auto fold = [&](const Pack<T>& p, int64_t j) {
      acc_t z[V];
#pragma unroll
      for (int k = 0; k < V; ++k) z[k] = to_acc(p.e[k]);
      accumulate<acc_t, V>(ms, a, ws, z, w, j, r, smooth);
    };
    int64_t j = int64_t(lane) * V;
    for (; j + (kUnroll<T> - 1) * step < Cv; j += kUnroll<T> * step) {  // kUnroll<T> loads issued, then folded
      Pack<T> p[kUnroll<T>];
#pragma unroll
      for (int u = 0; u < kUnroll<T>; ++u) p[u] = *reinterpret_cast<const Pack<T>*>(xr + j + u * step);
#pragma unroll
      for (int u = 0; u < kUnroll<T>; ++u) fold(p[u], j + u * step);
    }
    for (; j < Cv; j += step) fold(*reinterpret_cast<const Pack<T>*>(xr + j), j);
    j0 = Cv;
  }
  for (int64_t j = j0 + lane; j < C; j += G) {
    acc_t z[1] = {to_acc(xr[j])};
    accumulate<acc_t, 1>(ms, a, ws, z, w, j, r, smooth);
  }
  group_reduce<G>(ms, a, ws);
  if (lane != 0) return;
  const acc_t l = log_(ms.s);
  const int64_t t = static_cast<int64_t>(tgt[row * sT]);
  const bool ign = is_ignored(t, ignore);
  if (!ign && !in_range(t, C)) report_bad_target(t, row, C, ignore);
  lse[2 * row] = ms.m;
  lse[2 * row + 1] = l;
  acc_t wt = 0, li = 0;
  if (!ign) {
    wt = w ? w[t] : acc_t(1);
    li = row_loss<acc_t>(to_acc(xr[t]), wt, ms.m, l, r, a, w ? ws : acc_t(C), eps, C);
  }
  if (red == kNone) loss[row] = from_acc<T>(li);
  else rloss[row] = li;
  row_w[row] = wt;
}

// One block: the reduction over rows (in double, fixed order: deterministic) and wstats.
template <typename T>
__global__ void __launch_bounds__(1024) softmax_cross_entropy_finalize_kernel_impl(
    const typename AccOf<T>::type* __restrict__ row_loss, const typename AccOf<T>::type* __restrict__ row_w,
    int64_t N, const typename AccOf<T>::type* __restrict__ w, int64_t C, int red, T* __restrict__ loss,
    typename AccOf<T>::type* __restrict__ wstats) {
  __shared__ double sl[32], sw[32], sc[32];
  double l = 0, d = 0, c = 0;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    d += row_w[i];
    if (red != kNone) l += row_loss[i];
  }
  if (w)
    for (int64_t k = threadIdx.x; k < C; k += blockDim.x) c += w[k];
  for (int o = 16; o > 0; o >>= 1) {
    l += __shfl_xor_sync(0xffffffffu, l, o);
    d += __shfl_xor_sync(0xffffffffu, d, o);
    c += __shfl_xor_sync(0xffffffffu, c, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, nw = blockDim.x / 32;
  if (lane == 0) sl[warp] = l, sw[warp] = d, sc[warp] = c;
  __syncthreads();
  if (threadIdx.x == 0) {
    l = d = c = 0;
    for (int k = 0; k < nw; ++k) l += sl[k], d += sw[k], c += sc[k];
    wstats[0] = d;
    wstats[1] = w ? c : double(C);
    if (red != kNone) loss[0] = from_acc<T>(typename AccOf<T>::type(red == kMean ? l / d : l));
  }
}

// Row of a backward group: exact zeros (an ignored row, whose logits are not read: they may be
// inf/NaN), 16-byte stores where kVec.
template <typename T, int G, bool kVec>
__device__ __forceinline__ void zero_row(T* o, int64_t C, int lane) {
  constexpr int V = Pack<T>::V;
  int64_t j0 = 0;
  if constexpr (kVec) {
    Pack<T> z;
#pragma unroll
    for (int q = 0; q < V; ++q) z.e[q] = from_acc<T>(typename AccOf<T>::type(0));
    const int64_t Cv = C / V * V;
    for (int64_t j = int64_t(lane) * V; j < Cv; j += int64_t(G) * V) *reinterpret_cast<Pack<T>*>(o + j) = z;
    j0 = Cv;
  }
  for (int64_t j = j0 + lane; j < C; j += G) o[j] = from_acc<T>(typename AccOf<T>::type(0));
}

// Row of a backward group that is not ignored: dz_j = A p_j - E w_j for every class (kW: class
// weights, else w_j = 1), then the target's element again with - B, by the lane that wrote it: the
// per-element loop holds no target test, no weight branch and no ignored-row select.
template <typename T, int G, bool kVec, bool kW, typename acc_t>
__device__ __forceinline__ void grad_row(const T* xr, T* o, int64_t C, int lane, GradCoeffs<acc_t> k, acc_t m,
                                         acc_t l, const acc_t* w, int64_t t) {
  constexpr int V = Pack<T>::V;
  auto grad = [&](acc_t z, int64_t j) { return k.A * exp_((z - m) - l) - k.E * (kW ? __ldg(w + j) : acc_t(1)); };
  int64_t j0 = 0, Cv = 0;
  if constexpr (kVec) {
    Cv = C / V * V;
    const int64_t step = int64_t(G) * V;
    auto apply = [&](Pack<T>& p, int64_t j) {
#pragma unroll
      for (int q = 0; q < V; ++q) p.e[q] = from_acc<T>(grad(to_acc(p.e[q]), j + q));
    };
    int64_t j = int64_t(lane) * V;
    for (; j + (kUnroll<T> - 1) * step < Cv; j += kUnroll<T> * step) {  // kUnroll<T> loads issued, then written
      Pack<T> p[kUnroll<T>];
#pragma unroll
      for (int u = 0; u < kUnroll<T>; ++u) p[u] = *reinterpret_cast<const Pack<T>*>(xr + j + u * step);
#pragma unroll
      for (int u = 0; u < kUnroll<T>; ++u) {
        apply(p[u], j + u * step);
        *reinterpret_cast<Pack<T>*>(o + j + u * step) = p[u];
      }
    }
    for (; j < Cv; j += step) {
      Pack<T> p = *reinterpret_cast<const Pack<T>*>(xr + j);
      apply(p, j);
      *reinterpret_cast<Pack<T>*>(o + j) = p;
    }
    j0 = Cv;
  }
  for (int64_t j = j0 + lane; j < C; j += G) o[j] = from_acc<T>(grad(to_acc(xr[j]), j));
  const int64_t writer = t < Cv ? (t / V) % G : (t - j0) % G;  // the lane that wrote element t
  if (lane == writer) o[t] = from_acc<T>(grad(to_acc(xr[t]), t) - k.B);
}

// out = grad of the loss w.r.t. x: N x C contiguous.
template <typename T, typename I, int G, int BLOCK, bool kVec>
__global__ void __launch_bounds__(BLOCK) softmax_cross_entropy_backward_kernel_impl(
    const typename AccOf<T>::type* __restrict__ go, int64_t sG, const T* __restrict__ x, int64_t N,
    int64_t C, int64_t sN, const I* __restrict__ tgt, int64_t sT,
    const typename AccOf<T>::type* __restrict__ w, const typename AccOf<T>::type* __restrict__ lse,
    const typename AccOf<T>::type* __restrict__ wstats, int64_t ignore, typename AccOf<T>::type eps,
    int red, T* __restrict__ out) {
  using acc_t = typename AccOf<T>::type;
  const int64_t row = int64_t(blockIdx.x) * (BLOCK / G) + threadIdx.x / G;
  const int lane = threadIdx.x % G;
  if (row >= N) return;
  T* o = out + row * C;
  const int64_t t = static_cast<int64_t>(tgt[row * sT]);
  if (is_ignored(t, ignore)) return zero_row<T, G, kVec>(o, C, lane);
  if (!in_range(t, C)) report_bad_target(t, row, C, ignore);
  const acc_t g = row_grad_scale<acc_t>(go[red == kNone ? row * sG : 0], red, wstats[0]);
  const GradCoeffs<acc_t> k = grad_coeffs<acc_t>(g, w ? w[t] : acc_t(1), wstats[1], eps, C);
  const acc_t m = lse[2 * row], l = lse[2 * row + 1];
  if (w) grad_row<T, G, kVec, true>(x + row * sN, o, C, lane, k, m, l, w, t);
  else grad_row<T, G, kVec, false>(x + row * sN, o, C, lane, k, m, l, w, t);
}

constexpr int kSmallC = 2048;  // up to here a warp per row, above a 512-thread block per row

template <typename T>
bool aligned16(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0;
}

template <typename T, typename I>
cudaError_t forward_typed(const ForwardArgs& a, cudaStream_t stream) {
  using acc_t = typename AccOf<T>::type;
  const T* x = static_cast<const T*>(a.logits);
  const I* t = static_cast<const I*>(a.target);
  const acc_t* w = static_cast<const acc_t*>(a.weight);
  auto* lse = static_cast<acc_t*>(a.lse);
  auto* rl = static_cast<acc_t*>(a.row_loss);
  auto* rw = static_cast<acc_t*>(a.row_weight);
  T* loss = static_cast<T*>(a.loss);
  const acc_t eps = static_cast<acc_t>(a.label_smoothing);
  const bool vec = aligned16<T>(x) && (a.row_stride * int64_t(sizeof(T))) % 16 == 0;
  if (a.N > 0) {
#define PYA_FWD(G, B, VEC)                                                                        \
  PYA_LAUNCH(unsigned((a.N + B / G - 1) / (B / G)), B, 0, stream,                                \
             softmax_cross_entropy_forward_kernel_impl<T, I, G, B, VEC>)(                          \
      x, a.N, a.C, a.row_stride, t, a.target_stride, w, a.ignore_index, eps, a.reduction, loss, lse, rl, rw)
    if (a.C <= kSmallC) {
      if (vec) PYA_FWD(32, 256, true); else PYA_FWD(32, 256, false);
    } else {
      if (vec) PYA_FWD(512, 512, true); else PYA_FWD(512, 512, false);
    }
#undef PYA_FWD
  }
  PYA_LAUNCH(1, 1024, 0, stream, softmax_cross_entropy_finalize_kernel_impl<T>)(
      rl, rw, a.N, w, a.C, a.reduction, loss, static_cast<acc_t*>(a.wstats));
  return cudaGetLastError();
}

template <typename T, typename I>
cudaError_t backward_typed(const BackwardArgs& a, cudaStream_t stream) {
  using acc_t = typename AccOf<T>::type;
  if (a.N == 0) return cudaSuccess;
  const T* x = static_cast<const T*>(a.logits);
  T* out = static_cast<T*>(a.grad_logits);
  const bool vec = aligned16<T>(x) && aligned16<T>(out) && (a.row_stride * int64_t(sizeof(T))) % 16 == 0 &&
                   (a.C * int64_t(sizeof(T))) % 16 == 0;
  const auto* go = static_cast<const acc_t*>(a.grad_loss);
  const I* t = static_cast<const I*>(a.target);
  const auto* w = static_cast<const acc_t*>(a.weight);
  const auto* lse = static_cast<const acc_t*>(a.lse);
  const auto* ws = static_cast<const acc_t*>(a.wstats);
  const acc_t eps = static_cast<acc_t>(a.label_smoothing);
#define PYA_BWD(G, B, VEC)                                                                        \
  PYA_LAUNCH(unsigned((a.N + B / G - 1) / (B / G)), B, 0, stream,                                \
             softmax_cross_entropy_backward_kernel_impl<T, I, G, B, VEC>)(                         \
      go, a.grad_stride, x, a.N, a.C, a.row_stride, t, a.target_stride, w, lse, ws, a.ignore_index, eps, \
      a.reduction, out)
  if (a.C <= kSmallC) {
    if (vec) PYA_BWD(32, 256, true); else PYA_BWD(32, 256, false);
  } else {
    if (vec) PYA_BWD(512, 512, true); else PYA_BWD(512, 512, false);
  }
#undef PYA_BWD
  return cudaGetLastError();
}

}  // namespace

#define PYA_DISPATCH(FN, A, S)                                                             \
  switch (A.dtype) {                                                                       \
    case DType::kFloat:                                                                    \
      return A.target_i32 ? FN<float, int32_t>(A, S) : FN<float, int64_t>(A, S);           \
    case DType::kHalf:                                                                     \
      return A.target_i32 ? FN<__half, int32_t>(A, S) : FN<__half, int64_t>(A, S);         \
    case DType::kBFloat16:                                                                 \
      return A.target_i32 ? FN<__nv_bfloat16, int32_t>(A, S) : FN<__nv_bfloat16, int64_t>(A, S); \
    case DType::kDouble:                                                                   \
      return A.target_i32 ? FN<double, int32_t>(A, S) : FN<double, int64_t>(A, S);         \
  }                                                                                        \
  return cudaErrorInvalidValue

cudaError_t launch_softmax_cross_entropy_forward(const ForwardArgs& a, cudaStream_t stream) {
  PYA_DISPATCH(forward_typed, a, stream);
}

cudaError_t launch_softmax_cross_entropy_backward(const BackwardArgs& a, cudaStream_t stream) {
  PYA_DISPATCH(backward_typed, a, stream);
}

}  // namespace xent
}  // namespace pyalexnet
