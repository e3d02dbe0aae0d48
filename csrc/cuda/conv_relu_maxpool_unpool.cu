// Fused conv2d + ReLU + max-pool, CUDA: the un-pooled gradient, the first pass of the backward
// (conv_relu_maxpool_backward.cu), which both backward GEMMs then read by 16-byte copies.
#include <type_traits>

#include "cuda/conv_relu_maxpool_passes.h"

namespace pyalexnet {
namespace crm {

// The code byte of pooled output (p, q) (for a 1x1 window: the byte holding its mask bit) and the
// pooled gradient there, for one image n and channel co, in NHWC.
struct PooledAt {
  const uint8_t* code;
  int64_t n, co;
  const Shape* g;
  int64_t wcode;
  bool bits;
  __device__ uint8_t operator()(int64_t p, int64_t q) const {
    return code[((n * g->Hp + p) * wcode + (bits ? q >> 3 : q)) * g->Co + co];
  }
};
template <typename T>
struct GradAt {
  const T* gy;
  int64_t n, co;
  const Shape* g;
  __device__ auto operator()(int64_t p, int64_t q) const { return to_acc(gy[((n * g->Hp + p) * g->Wp + q) * g->Co + co]); }
};

template <typename acc_t, typename T>
__device__ __forceinline__ acc_t unpooled_at(const Shape& g, const T* gy, const uint8_t* code, int64_t n, int64_t r,
                                              int64_t c, int64_t co) {
  const bool bits = is_bitmask(g.pkh, g.pkw);
  const PooledAt ca{code, n, co, &g, code_width(g.Wp, g.pkh, g.pkw), bits};
  const GradAt<T> ga{gy, n, co, &g};
  return unpooled_gradient<acc_t>(r, c, g.pkh, g.pkw, g.psh, g.psw, g.Hp, g.Wp, ga, ca);
}

// The un-pooled gradient, materialised: dconv (N x Hc x Wc x Cd, compute type, zero past Co:
// dconv_channels) at each conv output = the sum of the pooled gradients whose window's saved
// maximum sits there, rounded once to the compute type. gy: N x Hp x Wp x Co; code: N x Hp x Wcode
// x Co. Computed once per conv output (un-pooling inside the GEMM loaders instead, in every (ky, kx)
// of the data gradient and every column tile of the weight gradient, cost 924-1356 instructions a K
// step: bench/results/2026-12-03-cuda-main-loop-sass.md).
template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads) conv_relu_maxpool_unpool_kernel_impl(
    const T* __restrict__ gy, const uint8_t* __restrict__ code, typename Cfg<T, kTF32>::Tc* __restrict__ dconv,
    Shape g) {
  using C = Cfg<T, kTF32>;
  using acc_t = typename C::acc;
  const int64_t Cd = dconv_channels<C>(g.Co), total = g.N * g.Hc * g.Wc * Cd;
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += int64_t(gridDim.x) * kThreads) {
    const int64_t co = i % Cd, pos = i / Cd, c = pos % g.Wc, nr = pos / g.Wc;
    dconv[i] = to_c<C>(co < g.Co ? unpooled_at<acc_t>(g, gy, code, nr / g.Hc, nr % g.Hc, c, co) : acc_t(0));
  }
}

// The same, V = 16 bytes of T channels per thread (Co a multiple of V): the window arithmetic and
// its 64-bit divisions once per V channels, 16-byte loads of gy, V-byte loads of the codes, 16-byte
// stores; the same sums in the same order as unpooled_gradient, so the same bits.
template <typename T, bool kTF32>
__global__ void __launch_bounds__(kThreads) conv_relu_maxpool_unpool_vec_kernel_impl(
    const T* __restrict__ gy, const uint8_t* __restrict__ code, typename Cfg<T, kTF32>::Tc* __restrict__ dconv,
    Shape g) {
  using C = Cfg<T, kTF32>;
  using Tc = typename C::Tc;
  using acc_t = typename C::acc;
  constexpr int V = 16 / int(sizeof(T));
  static_assert(sizeof(Tc) == sizeof(T), "dconv holds V channels in 16 bytes too");
  struct alignas(V) Codes { uint8_t b[V]; };
  struct alignas(16) Vals { T e[V]; };
  struct alignas(16) Outs { Tc e[V]; };
  const int64_t CV = dconv_channels<C>(g.Co) / V, total = g.N * g.Hc * g.Wc * CV;  // vectors past Co: zeros
  const bool bits = is_bitmask(g.pkh, g.pkw);
  const int64_t wcode = code_width(g.Wp, g.pkh, g.pkw);
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < total; i += int64_t(gridDim.x) * kThreads) {
    const int64_t co = (i % CV) * V, pos = i / CV, c = pos % g.Wc, nr = pos / g.Wc, r = nr % g.Hc, n = nr / g.Hc;
    acc_t sum[V];
#pragma unroll
    for (int e = 0; e < V; ++e) sum[e] = acc_t(0);
    if (co >= g.Co) {  // a vector of dconv's zero channels
    } else if (bits) {
      const int64_t p = r / g.psh, q = c / g.psw;
      if (r % g.psh == 0 && c % g.psw == 0 && p < g.Hp && q < g.Wp) {
        const Codes cb = *reinterpret_cast<const Codes*>(code + ((n * g.Hp + p) * wcode + (q >> 3)) * g.Co + co);
        const Vals gv = *reinterpret_cast<const Vals*>(gy + ((n * g.Hp + p) * g.Wp + q) * g.Co + co);
#pragma unroll
        for (int e = 0; e < V; ++e)
          if ((cb.b[e] >> (q & 7)) & 1) sum[e] = to_acc(gv.e[e]);
      }
    } else {
      int64_t p0, p1, q0, q1;
      covering_windows(r, g.pkh, g.psh, g.Hp, p0, p1);
      covering_windows(c, g.pkw, g.psw, g.Wp, q0, q1);
      for (int64_t p = p0; p <= p1; ++p)
        for (int64_t q = q0; q <= q1; ++q) {
          const uint8_t want = encode(r - window_start(p, g.psh), c - window_start(q, g.psw), g.pkw);
          const int64_t at = ((n * g.Hp + p) * g.Wp + q) * g.Co + co;
          const Codes cb = *reinterpret_cast<const Codes*>(code + at);
          const Vals gv = *reinterpret_cast<const Vals*>(gy + at);
#pragma unroll
          for (int e = 0; e < V; ++e)
            if (cb.b[e] == want) sum[e] += to_acc(gv.e[e]);
        }
    }
    Outs o;
#pragma unroll
    for (int e = 0; e < V; ++e) o.e[e] = to_c<C>(sum[e]);
    *reinterpret_cast<Outs*>(dconv + pos * CV * V + co) = o;
  }
}

void launch_unpool(const BackwardArgs& a, void* dconv, cudaStream_t stream) {
  dispatch(a.dtype, a.tf32, [&](auto c, auto* tp) {
    using C = decltype(c);
    using T = std::remove_pointer_t<decltype(tp)>;
    const Shape& g = a.g;
    const auto* gy = static_cast<const T*>(a.gy);
    const auto* code = static_cast<const uint8_t*>(a.code);
    auto* d = static_cast<typename C::Tc*>(dconv);
    const int64_t total = g.N * g.Hc * g.Wc * dconv_channels<C>(g.Co);
    if (total == 0) return;
    constexpr int64_t V = 16 / int64_t(sizeof(T));
    if (g.Co % V == 0) {  // 16-byte loads of gy and the codes
      const int64_t blocks = ceil_div(total / V, kThreads);
      PYA_LAUNCH(grid_of(blocks < 65536 ? blocks : 65536, 1), kThreads, 0, stream,
                 conv_relu_maxpool_unpool_vec_kernel_impl<T, C::kTf32>)(gy, code, d, g);
    } else {
      const int64_t blocks = ceil_div(total, kThreads);
      PYA_LAUNCH(grid_of(blocks < 65536 ? blocks : 65536, 1), kThreads, 0, stream,
                 conv_relu_maxpool_unpool_kernel_impl<T, C::kTf32>)(gy, code, d, g);
    }
  });
}

}  // namespace crm
}  // namespace pyalexnet
