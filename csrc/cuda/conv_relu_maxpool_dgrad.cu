// Fused conv2d + ReLU + max-pool, CUDA: the data gradient, dx = un-pooled gradient . W, an implicit
// GEMM over (ky, kx, co) (shared machinery: conv_relu_maxpool_gemm.h).
#include <type_traits>

#include "cuda/conv_relu_maxpool_passes.h"

namespace pyalexnet {
namespace crm {

// How dgrad walks its A rows, 16-byte cp.async copies of dconv: kStrided, any stride
// (DgradStridedRows); kUnitStride, stride 1, each thread's rows in registers and (ky, kx, co) walked
// a step at a time.
enum DgradWalk : int { kStrided, kUnitStride };

// dgrad's A tiles at stride > 1 (kStrided), one K step (BK channels of one tap) after another
// (block_gemm loads the steps in order): thread tid copies vector tid % NV of the tile rows tid / NV
// + (kThreads / NV) j. Each row holds the conv output its input pixel meets at the current tap as
// quotient and remainder of (rih - ky, riw - kx) by the stride, stepped by one at a tap change (no
// division), and from them whether that output exists and its offset in dconv.
template <class C, class L>
struct DgradStridedRows {
  using Tc = typename C::Tc;
  static constexpr int V = 16 / int(sizeof(Tc)), NV = C::BK / V, R = kBM * NV / kThreads;
  static_assert(kBM * NV % kThreads == 0 && kThreads % NV == 0, "whole rows of vectors per thread");
  int64_t base[R], off[R];  // dconv offset of the row's image (and vector); of its conv output at this tap
  int qh[R], rh[R], qw[R], rw[R], qw0[R], rw0[R];  // quotients and remainders; the columns' at kx = 0
  bool ok[R];
  int co = 0, kx = 0;  // the next step's first channel and kernel column
  const Tc* d_;
  int Cd_, kw_, sh_, sw_, Hc_, Wc_;
  __device__ void retap() {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      ok[j] = (rh[j] | rw[j]) == 0 && uint32_t(qh[j]) < uint32_t(Hc_) && uint32_t(qw[j]) < uint32_t(Wc_);
      off[j] = base[j] + (int64_t(qh[j]) * Wc_ + qw[j]) * Cd_;
    }
  }
  __device__ void operator()(Tc* s) {
    const int tid = int(threadIdx.x);
#pragma unroll
    for (int j = 0; j < R; ++j)  // not read when !ok (a zero-fill copy)
      async::copy16<true>(s + (tid / NV + (kThreads / NV) * j) * L::LDA + (tid % NV) * V, d_ + (off[j] + co), ok[j]);
    if ((co += C::BK) < Cd_) return;
    co = 0;
    const bool next_ky = ++kx == kw_;  // rih - ky one down, riw - kx back to kx = 0
    if (next_ky) kx = 0;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      if (next_ky) {
        qw[j] = qw0[j], rw[j] = rw0[j];
        if (rh[j] == 0) rh[j] = sh_ - 1, --qh[j];
        else --rh[j];
      } else if (rw[j] == 0) {
        rw[j] = sw_ - 1, --qw[j];
      } else {
        --rw[j];
      }
    }
    retap();
  }
};

// dx (N x H x W x Ci) = unpooled gradient (rows: input pixels; K = (ky, kx, co < Cd)) . wt^T.
// dconv: N x Hc x Wc x Cd (compute type, Cd = dconv_channels); wt: Ci x Kdp (Tc), zero for co >=
// Co. Block: 128 consecutive input pixels x BN input channels. Both operands by cp.async through 3
// stages; kWalk: how the dconv rows are walked (stride 1 or not).
template <typename T, bool kTF32, int kWalk>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, kTF32>) conv_relu_maxpool_dgrad_kernel_impl(
    const typename Cfg<T, kTF32>::Tc* __restrict__ dconv, const typename Cfg<T, kTF32>::Tc* __restrict__ wt,
    int64_t Kdp, T* __restrict__ dx, Shape g) {
  using C = Cfg<T, kTF32>;
  using Tc = typename C::Tc;
  using acc_t = typename C::acc;
  using L = GemmLay<C, true>;
  PYA_DYNAMIC_SHARED(unsigned char, smem);  // L::kBytes, set by launch_gemm
  __shared__ int64_t rn[kBM];         // per tile row: image, -1 past the batch
  __shared__ int rih[kBM], riw[kBM];  // input row/column + padding: conv row = (rih - ky) / sh
  Tc* stages = reinterpret_cast<Tc*>(smem);
  acc_t* sC = reinterpret_cast<acc_t*>(smem);
  const int tid = threadIdx.x;
  const int64_t pix0 = int64_t(blockIdx.x) * kBM, ci0 = int64_t(blockIdx.y) * C::BN, HW = g.H * g.W;
  const int64_t Cd = dconv_channels<C>(g.Co), total = g.N * HW;
  if (tid < kBM) {
    const int64_t pix = pix0 + tid;
    rn[tid] = pix < total ? pix / HW : -1;
    rih[tid] = int((pix % HW) / g.W + g.ph), riw[tid] = int(pix % g.W + g.pw);
  }
  __syncthreads();
  const int sh = int(g.sh), sw = int(g.sw), Hc32 = int(g.Hc), Wc32 = int(g.Wc), Cd32 = int(Cd), kw32 = int(g.kw);
  // kUnitStride: thread tid copies vector tid % NV of the rows tid / NV + (kThreads / NV) j: conv
  // output (rih - ky, riw - kx) at offset roff - ((ky Wc + kx) Cd - co0) of dconv.
  constexpr int V = 16 / int(sizeof(Tc)), NV = C::BK / V, RPT = kWalk == kUnitStride ? kBM * NV / kThreads : 1;
  int64_t roff[RPT];
  int rh[RPT], rw[RPT];  // far negative past the batch
  if constexpr (kWalk == kUnitStride) {
    static_assert(kBM * NV % kThreads == 0 && kThreads % NV == 0, "whole rows of vectors per thread");
#pragma unroll
    for (int j = 0; j < RPT; ++j) {
      const int m = tid / NV + (kThreads / NV) * j;
      const bool live = rn[m] >= 0;
      rh[j] = live ? rih[m] : -(1 << 30), rw[j] = live ? riw[m] : -(1 << 30);
      roff[j] = live ? ((rn[m] * g.Hc + rih[m]) * g.Wc + riw[m]) * Cd + (tid % NV) * V : 0;
    }
  }
  int wky = 0, wkx = 0, wco = 0;  // kUnitStride: the next step's (ky, kx, first channel)
  int64_t koff = 0;               // and co0 - (ky Wc + kx) Cd
  DgradStridedRows<C, L> strided;
  if constexpr (kWalk == kStrided) {
    using SR = DgradStridedRows<C, L>;
    strided.d_ = dconv, strided.Cd_ = Cd32, strided.kw_ = kw32, strided.sh_ = sh, strided.sw_ = sw;
    strided.Hc_ = Hc32, strided.Wc_ = Wc32;
#pragma unroll
    for (int j = 0; j < SR::R; ++j) {
      const int m = tid / SR::NV + (kThreads / SR::NV) * j;
      const bool live = rn[m] >= 0;
      strided.qh[j] = live ? rih[m] / sh : -(1 << 30), strided.rh[j] = rih[m] % sh;
      strided.qw0[j] = strided.qw[j] = riw[m] / sw, strided.rw0[j] = strided.rw[j] = riw[m] % sw;
      strided.base[j] = live ? rn[m] * g.Hc * g.Wc * Cd + (tid % SR::NV) * SR::V : 0;
    }
    strided.retap();
  }
  auto load_a = [&](Tc* s, int64_t) {
    if constexpr (kWalk == kUnitStride) {
#pragma unroll
      for (int j = 0; j < RPT; ++j) {
        const bool ok = uint32_t(rh[j] - wky) < uint32_t(Hc32) && uint32_t(rw[j] - wkx) < uint32_t(Wc32);
        async::copy16<true>(s + (tid / NV + (kThreads / NV) * j) * L::LDA + (tid % NV) * V,
                            dconv + (roff[j] + koff), ok);  // not read when !ok (a zero-fill copy)
      }
      koff += C::BK;
      if ((wco += C::BK) == Cd32) {  // next kx: co0 back by Cd, (ky Wc + kx) Cd on by Cd
        wco = 0, koff -= 2 * Cd;
        if (++wkx == kw32) wkx = 0, ++wky, koff -= (g.Wc - g.kw) * Cd;
      }
    } else {  // kStrided: one (ky, kx) and BK consecutive channels: 16-byte copies
      strided(s);
    }
  };
  RowLoader<C, L, true> rows_b(wt, Kdp, ci0, g.Ci);
  auto load_b = [&](Tc* s, int64_t) { rows_b(s); };
  Accum<C, L> acc;  // both operands arrive rounded: dconv and the packed weights
  acc.init();
  const int64_t left = total - pix0;
  const int64_t cols = g.Ci - ci0;
  block_gemm<C, L>(acc, stages, 0, Kdp, int(left < kBM ? left : kBM), int(cols < C::BN ? cols : C::BN), load_a, load_b);
  acc.store(sC);
  __syncthreads();
  for (int e = tid; e < kBM * C::BN; e += kThreads) {
    const int j = e % C::BN, m = e / C::BN;
    if (pix0 + m < total && ci0 + j < g.Ci) dx[(pix0 + m) * g.Ci + ci0 + j] = from_acc<T>(sC[m * L::LDC + j]);
  }
}

void launch_dgrad(const BackwardArgs& a, const void* dconv, cudaStream_t stream) {
  dispatch(a.dtype, a.tf32, [&](auto c, auto* tp) {
    using C = decltype(c);
    using T = std::remove_pointer_t<decltype(tp)>;
    constexpr bool kTF32 = C::kTf32;
    using Tc = typename C::Tc;
    const Shape& g = a.g;
    const auto* d = static_cast<const Tc*>(dconv);
    const auto* wt = static_cast<const Tc*>(a.wt);
    auto* dx = static_cast<T*>(a.dx);
    const dim3 grid = grid_of(ceil_div(g.N * g.H * g.W, kBM), ceil_div(g.Ci, C::BN));
    constexpr int kBytes = GemmLay<C, true>::kBytes;
    if (g.sh == 1 && g.sw == 1)
      launch_gemm<conv_relu_maxpool_dgrad_kernel_impl<T, kTF32, kUnitStride>>(grid, kBytes, stream, d, wt, a.Kdp, dx, g);
    else
      launch_gemm<conv_relu_maxpool_dgrad_kernel_impl<T, kTF32, kStrided>>(grid, kBytes, stream, d, wt, a.Kdp, dx, g);
  });
}

int64_t conv_relu_maxpool_dgrad_channels(DType dtype, bool tf32, int64_t Co) {
  return dispatch(dtype, tf32, [&](auto c, auto*) { return dconv_channels<decltype(c)>(Co); });
}

}  // namespace crm
}  // namespace pyalexnet
