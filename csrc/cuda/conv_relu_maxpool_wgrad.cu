// Fused conv2d + ReLU + max-pool, CUDA: the weight gradient, dw = un-pooled gradient^T . patches,
// split over conv positions into partial sums that a reduce kernel adds up in a fixed order; the
// bias gradient the same way (shared machinery: conv_relu_maxpool_gemm.h).
#include <type_traits>

#include "cuda/conv_relu_maxpool_passes.h"

namespace pyalexnet {
namespace crm {

// wgrad's layout, for the kernel and its launch: k-major tiles through kAsyncStages when the patches
// come by 16-byte vectors or 4-channel quads along the channels (kGatherX kVectors or kQuads), as
// dconv always does, else 2 stages.
template <class C, int kGatherX>
using WgradLay = Lay<C, kGatherX != kElements ? kAsyncStages : 2, kGatherX != kElements>;

// The weight gradient's k-major tiles (kKM), one K step (BK positions) after another (block_gemm
// loads the steps in order): every thread's copies keep their sources in registers and move one step
// a call; the patch copies walk their position's conv row and column (and its offset in x) forward
// instead of dividing; the positions left in the split count down in 32 bits. A: BK positions x kBM
// channels of dconv; B: BK positions x BN columns k of the patches.
template <class C, class L>
struct WgradDconvRows {
  using Tc = typename C::Tc;
  static constexpr int V = 16 / int(sizeof(Tc)), NV = kBM / V, R = C::BK * NV / kThreads;
  static_assert(C::BK * NV % kThreads == 0, "whole copies per thread");
  const Tc* p[R];
  int left[R];    // positions of the split from this copy's on (a split holds < 2^30: backward_splits);
                  // far negative for channels past Co (zero-fill copies)
  uint32_t d[R];  // its offset in the tile
  int64_t step_;  // BK positions of dconv
  // The tiles of channels [co0, co0 + kBM) of dconv (Co channels, Cd a row) over positions [pbeg, pend).
  __device__ WgradDconvRows(const Tc* dconv, int64_t Co, int64_t Cd, int64_t co0, int64_t pbeg, int64_t pend)
      : step_(int64_t(C::BK) * Cd) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int e = int(threadIdx.x) + j * kThreads;
      const int64_t co = co0 + (e % NV) * V, pos = pbeg + e / NV;
      const bool in = co < Co;
      left[j] = in ? int(pend - pos) : -(1 << 30);
      p[j] = dconv + (in ? pos * Cd + co : 0);
      d[j] = mma::kept(uint32_t((e / NV) * L::LDA + (e % NV) * V));
    }
  }
  __device__ void operator()(Tc* s) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      async::copy16<false>(s + d[j], p[j], left[j] > 0);
      p[j] += step_, left[j] -= C::BK;
    }
  }
};

// What an FMA kernel holds in place of the k-major loaders.
struct NoLoader {
  template <class... A> __device__ explicit NoLoader(const A&...) {}
};

// A position's walk through x, shared by the patch loaders: BK positions on along the conv rows
// (and images), its input pixel's offset in x moved with it (no division a step).
template <class T, class C>
struct PositionWalk {
  const T* x;
  int64_t step_o, row_o, img_o;  // x offsets: BK positions along a row, a conv row on, an image on
  int H, W, Hc, Wc, sh, sw;
  __device__ PositionWalk(const T* x_, const Shape& g)
      : x(x_), step_o(C::BK * g.sw * g.Ci), row_o((g.sh * g.W - g.Wc * g.sw) * g.Ci),
        img_o((g.H * g.W - g.Hc * g.sh * g.W) * g.Ci), H(int(g.H)), W(int(g.W)), Hc(int(g.Hc)),
        Wc(int(g.Wc)), sh(int(g.sh)), sw(int(g.sw)) {}
  __device__ void next(int& oh, int& ow, int64_t& off) const {
    off += step_o;
    for (ow += C::BK; ow >= Wc;) {  // the next conv row(s), image(s)
      ow -= Wc, off += row_o;
      if (++oh == Hc) oh = 0, off += img_o;
    }
  }
};

// The patches' tiles over positions [pbeg, pend) and the block's BN columns k, whose (ky, kx, ci)
// the kernel tabled in shared memory (cky, ckx, cci; ci -1 past K).
template <class T, class C, class L>
struct WgradPatchRows {
  using Tc = typename C::Tc;
  static constexpr int V = 16 / int(sizeof(T)), NV = C::BN / V, R = (C::BK * NV + kThreads - 1) / kThreads;
  int64_t xo[R];  // offset in x of this copy's patch element (may lie outside x when !ok)
  int left[R];    // positions of the split from this copy's on; far negative for a column past K
  int oh[R], ow[R], ih0[R], iw0[R];  // conv row/column; input row/column at conv (0, 0)
  PositionWalk<T, C> w;
  __device__ WgradPatchRows(const T* x, const Shape& g, const int* cky, const int* ckx, const int* cci,
                            int64_t pbeg, int64_t pend)
      : w(x, g) {
    const int64_t HWc = g.Hc * g.Wc;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int e = int(threadIdx.x) + j * kThreads, c = e < C::BK * NV ? (e % NV) * V : 0;
      const int64_t pos = pbeg + e / NV, n = pos / HWc;
      oh[j] = int((pos % HWc) / g.Wc), ow[j] = int(pos % g.Wc);
      left[j] = cci[c] >= 0 ? int(pend - pos) : -(1 << 30);
      ih0[j] = cky[c] - int(g.ph), iw0[j] = ckx[c] - int(g.pw);
      xo[j] = ((n * g.H + ih0[j] + int64_t(oh[j]) * g.sh) * g.W + iw0[j] + int64_t(ow[j]) * g.sw) * g.Ci + cci[c];
    }
  }
  __device__ void operator()(Tc* s) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int e = int(threadIdx.x) + j * kThreads;
      if (C::BK * NV % kThreads != 0 && e >= C::BK * NV) break;
      const int ih = ih0[j] + oh[j] * w.sh, iw = iw0[j] + ow[j] * w.sw;
      const bool ok = left[j] > 0 && uint32_t(ih) < uint32_t(w.H) && uint32_t(iw) < uint32_t(w.W);
      async::copy16<true>(s + (e / NV) * L::LDB + (e % NV) * V, w.x + xo[j], ok);  // read only when ok
      left[j] -= C::BK;
      w.next(oh[j], ow[j], xo[j]);
    }
  }
};
// The same tiles where Ci is not a multiple of 16 bytes (kQuads, conv1's 3 channels): the columns
// run over (ky, kx, c < Cp = Ci rounded up to 4), and each copy is 4 channels of one tap, loaded
// element by element into registers (zero past Ci and outside the image) and stored by deposit()
// after the next products. Thread tid takes position row tid / Q of each step and the quads
// tid % Q + Q j of it (Q = kThreads / BK threads a row), so that one walk along the positions
// serves all its copies.
template <class T, class C, class L>
struct WgradPatchQuads {
  using Tc = typename C::Tc;
  static constexpr int Q = kThreads / C::BK, R = C::BN / 4 / Q > 0 ? C::BN / 4 / Q : 1;
  static_assert(C::kMma && kThreads % C::BK == 0 && C::BN == 4 * Q * R, "whole rows of quads (tensor cores)");
  int64_t coff[R];         // offset in x of quad j's first element from the position's input pixel
  int ih0[R], iw0[R], nc[R];  // its tap's row/column offsets (ky - ph, kx - pw); channels inside x
  int64_t po;              // offset in x of this thread's position's input pixel (oh sh, ow sw)
  int left, oh, ow;        // positions of the split from this one on; conv row/column
  Tc quad[R][4];
  Tc* pend_s;
  uint32_t d0;             // offset of quad 0 in the tile
  PositionWalk<T, C> w;
  __device__ WgradPatchQuads(const T* x, const Shape& g, const int* cky, const int* ckx, const int* cci,
                             int64_t pbeg, int64_t pend)
      : w(x, g) {
    const int tid = int(threadIdx.x);
    const int64_t HWc = g.Hc * g.Wc, pos = pbeg + tid / Q, n = pos / HWc;
    oh = int((pos % HWc) / g.Wc), ow = int(pos % g.Wc), left = int(pend - pos);
    po = ((n * g.H + int64_t(oh) * g.sh) * g.W + int64_t(ow) * g.sw) * g.Ci;
    d0 = mma::kept(uint32_t((tid / Q) * L::LDB + (tid % Q) * 4));
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int c = 4 * (tid % Q + Q * j);  // the quad's first column
      // past K no element: ok stays false (or, in an image of more than 2^30 rows, reads a valid
      // element of x into a column that is not stored)
      ih0[j] = cci[c] >= 0 ? cky[c] - int(g.ph) : -(1 << 30), iw0[j] = ckx[c] - int(g.pw);
      nc[j] = cci[c] >= 0 ? int(g.Ci) - cci[c] : 0;
      coff[j] = (int64_t(cky[c] - g.ph) * g.W + iw0[j]) * g.Ci + (cci[c] >= 0 ? cci[c] : 0);
    }
  }
  __device__ void operator()(Tc* s) {
    const int ohs = oh * w.sh, ows = ow * w.sw;
    const T* xp = w.x + po;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int ih = ohs + ih0[j], iw = ows + iw0[j];
      const bool ok = (left > 0) & (uint32_t(ih) < uint32_t(w.H)) & (uint32_t(iw) < uint32_t(w.W));
      const T* p = xp + coff[j];  // read only when ok
#pragma unroll
      for (int c = 0; c < 4; ++c)  // nc >= 1 inside K, 0 past it where ih0 keeps ok false
        quad[j][c] = ok && (c == 0 || c < nc[j]) ? p[c] : Tc(to_c<C>(typename C::acc(0)));
    }
    pend_s = s;
    left -= C::BK;
    w.next(oh, ow, po);
  }
  __device__ void deposit() const {
#pragma unroll
    for (int j = 0; j < R; ++j) store_vec(pend_s + d0 + 4 * Q * j, quad[j]);
  }
};

// Partial weight gradients: part[s] (Co x K, k = (ky kw + kx) Ci + ci) = sum over conv positions
// [s p_chunk, (s + 1) p_chunk) of unpooled gradient (Co) x input patch (K). Block: 128 output
// channels x BN columns of K x one split.
// The un-pooled gradient comes from dconv (16-byte loads along its Cd channels); kVecX: the patches
// by 16-byte loads along ci (Ci a multiple of 16 bytes of T), 4-channel quads (tensor cores), or
// elements (FMA). With vectors or quads the tiles are k-major (Lay's kKMajor: a row per conv
// position) and filled by cp.async through kAsyncStages. With elements, dconv's 16-byte loads go through
// registers and are stored down a column (k = position contiguous): lanes take consecutive
// positions, so that their 2- or 4-byte stores fall in distinct banks.
template <typename T, bool kTF32, int kVecX>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, kTF32>) conv_relu_maxpool_wgrad_kernel_impl(
    const typename Cfg<T, kTF32>::Tc* __restrict__ dconv, const T* __restrict__ x,
    typename Cfg<T, kTF32>::acc* __restrict__ part, Shape g, int64_t p_chunk) {
  using C = Cfg<T, kTF32>;
  using Tc = typename C::Tc;
  using acc_t = typename C::acc;
  using L = WgradLay<C, kVecX>;
  constexpr bool kKM = L::kKMajor, kQ = kVecX == kQuads;
  PYA_DYNAMIC_SHARED(unsigned char, smem);  // L::kBytes, set by launch_gemm
  __shared__ int cky[C::BN], ckx[C::BN], cci[C::BN];  // per tile column k: (ky, kx, ci), ci -1 past K
  Tc* stages = reinterpret_cast<Tc*>(smem);
  acc_t* sC = reinterpret_cast<acc_t*>(smem);
  const int tid = threadIdx.x;
  const int64_t Cp = kQ ? quad_channels(g.Ci) : g.Ci;  // K's channels a tap (wgrad_channels)
  const int64_t K = g.kh * g.kw * Cp, HWc = g.Hc * g.Wc, P = g.N * HWc;
  const int64_t k0c = int64_t(blockIdx.x) * C::BN, co0 = int64_t(blockIdx.y) * kBM;
  const int64_t Cd = dconv_channels<C>(g.Co);  // dconv's channels (a multiple of 16 bytes)
  const int64_t pbeg = int64_t(blockIdx.z) * p_chunk, pend = pbeg + p_chunk < P ? pbeg + p_chunk : P;
  if (tid < C::BN) {
    const int64_t k = k0c + tid, q = k / Cp;
    cci[tid] = k < K ? int(k - q * Cp) : -1, cky[tid] = int(q / g.kw), ckx[tid] = int(q % g.kw);
  }
  __syncthreads();
  // Both loaders give thread tid the same position column kk = tid % BK of each step: (image, conv
  // row, conv column) of position k0 + kk, image -1 past the split.
  struct Pos {
    int64_t n;
    int r, c;
  };
  auto position = [&](int64_t k0) {
    const int64_t p = k0 + tid % C::BK;
    if (p >= pend) return Pos{-1, 0, 0};
    return Pos{p / HWc, int((p % HWc) / g.Wc), int(p % g.Wc)};
  };
  // The k-major loaders (the FMA kernels load in place: NoLoader stands in).
  using KA = std::conditional_t<kKM, WgradDconvRows<C, L>, NoLoader>;
  using KB = std::conditional_t<kKM, std::conditional_t<kQ, WgradPatchQuads<T, C, L>, WgradPatchRows<T, C, L>>, NoLoader>;
  KB kb(x, g, cky, ckx, cci, pbeg, pend);  // before ka: 4 fewer register moves in the 4-channel loop (ptxas)
  KA ka(dconv, g.Co, Cd, co0, pbeg, pend);
  auto load_a = [&](Tc* s, int64_t k0) {  // A[co][p]: the unpooled gradient
    const int kk = tid % C::BK;
    const int64_t p = k0 + kk;  // dconv's row of position p: p Cd (positions are n, r, c in order)
    if constexpr (kKM) {  // row r of the tile = kBM channels of position k0 + r: 16-byte copies
      ka(s);
    } else {
      constexpr int V = 16 / int(sizeof(Tc));
#pragma unroll 1
      for (int v = tid / C::BK; v < kBM / V; v += kThreads / C::BK) {
        uint4 val = {0u, 0u, 0u, 0u};
        if (p < pend && co0 + v * V < g.Co) val = __ldg(reinterpret_cast<const uint4*>(dconv + p * Cd + co0 + v * V));
        const Tc* e = reinterpret_cast<const Tc*>(&val);
#pragma unroll
        for (int i = 0; i < V; ++i) s[(v * V + i) * L::LDA + kk] = e[i];
      }
    }
  };
  auto load_b = [&](Tc* s, int64_t k0) {  // B[k][p]: the input patch of position p
    if constexpr (kKM) {  // row r of the tile = BN columns k of position k0 + r
      kb(s);
      return;
    }
    const Pos ps = position(k0);
    const int kk = tid % C::BK;
    const int ih0 = int(input_start(ps.r, g.sh, g.ph)), iw0 = int(input_start(ps.c, g.sw, g.pw));
    if constexpr (kVecX == kVectors) {  // V consecutive columns k share (ky, kx): one 16-byte load of x each
      constexpr int V = 16 / int(sizeof(T));
#pragma unroll 1
      for (int v = tid / C::BK; v < C::BN / V; v += kThreads / C::BK) {
        const int j = v * V, ih = ih0 + cky[j], iw = iw0 + ckx[j];
        uint4 val = {0u, 0u, 0u, 0u};
        if (ps.n >= 0 && cci[j] >= 0 && patch_inside<T>(g, ih, iw))
          val = __ldg(reinterpret_cast<const uint4*>(x + ((ps.n * g.H + ih) * g.W + iw) * g.Ci + cci[j]));
        const T* e = reinterpret_cast<const T*>(&val);
#pragma unroll
        for (int i = 0; i < V; ++i) s[(j + i) * L::LDB + kk] = to_c<C>(to_acc(e[i]));
      }
    } else {
      for (int j = tid / C::BK; j < C::BN; j += kThreads / C::BK) {
        acc_t v = acc_t(0);
        const int ih = ih0 + cky[j], iw = iw0 + ckx[j];
        if (ps.n >= 0 && cci[j] >= 0 && patch_inside<T>(g, ih, iw))
          v = to_acc(x[((ps.n * g.H + ih) * g.W + iw) * g.Ci + cci[j]]);
        s[j * L::LDB + kk] = to_c<C>(v);
      }
    }
  };
  Accum<C, L> acc;  // both operands arrive rounded: dconv, and x (BackwardArgs::x)
  acc.init();
  const int64_t left = g.Co - co0;
  const int64_t cols = K - k0c;
  block_gemm<C, L>(acc, stages, pbeg, pend, int(left < kBM ? left : kBM), int(cols < C::BN ? cols : C::BN), load_a,
                   load_b, [&] {
    if constexpr (kQ) kb.deposit();
  });
  acc.store(sC);
  __syncthreads();
  acc_t* dst = part + int64_t(blockIdx.z) * g.Co * K;
  for (int e = tid; e < kBM * C::BN; e += kThreads) {
    const int j = e % C::BN, m = e / C::BN;
    if (co0 + m < g.Co && k0c + j < K) dst[(co0 + m) * K + k0c + j] = sC[m * L::LDC + j];
  }
}

// Partial bias gradients: part[s] (Co) = sum of the pooled gradients that pass (code) over pooled
// outputs [s rows, (s + 1) rows). Block: 64 channels x one split; 4 row groups summed in order.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) conv_relu_maxpool_bias_grad_kernel_impl(
    const T* __restrict__ gy, const uint8_t* __restrict__ code, acc_t* __restrict__ part, Shape g, int64_t rows) {
  __shared__ acc_t red[4][64];
  const int j = threadIdx.x % 64, grp = threadIdx.x / 64;
  const int64_t co = int64_t(blockIdx.x) * 64 + j, R = g.N * g.Hp * g.Wp;
  const int64_t beg = int64_t(blockIdx.y) * rows, end = beg + rows < R ? beg + rows : R;
  const bool bits = is_bitmask(g.pkh, g.pkw);
  const int64_t wcode = code_width(g.Wp, g.pkh, g.pkw);
  acc_t s = acc_t(0);
  if (co < g.Co)
    for (int64_t i = beg + grp; i < end; i += 4) {
      const int64_t q = i % g.Wp, np = i / g.Wp;
      const bool pass = bits ? (code[(np * wcode + q / 8) * g.Co + co] >> (q & 7)) & 1
                             : code[i * g.Co + co] != kNoGrad;
      if (pass) s += to_acc(gy[i * g.Co + co]);
    }
  red[grp][j] = s;
  __syncthreads();
  if (grp == 0 && co < g.Co) part[int64_t(blockIdx.y) * g.Co + co] = red[0][j] + red[1][j] + red[2][j] + red[3][j];
}

// out[i] = sum over s of part[s][src(i)] (part[s] at s stride), s ascending. cp > 0: i runs over
// Co x Ci x kh x kw and src(i) is its column (ky kw + kx) cp + ci of the Co x kh kw cp partials
// (cp: wgrad_channels); cp = 0: src(i) = i.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) conv_relu_maxpool_reduce_kernel_impl(
    const acc_t* __restrict__ part, int64_t splits, int64_t stride, int64_t count, T* __restrict__ out, Shape g,
    int64_t cp) {
  const int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= count) return;
  int64_t src = i;
  if (cp > 0) {  // the weight layout from part's Co x (ky, kx, ci < cp)
    const int64_t kx = i % g.kw, ky = (i / g.kw) % g.kh, ci = (i / (g.kw * g.kh)) % g.Ci, co = i / (g.kw * g.kh * g.Ci);
    src = co * (g.kh * g.kw * cp) + (ky * g.kw + kx) * cp + ci;
  }
  acc_t s = acc_t(0);
  for (int64_t sp = 0; sp < splits; ++sp) s += part[sp * stride + src];
  out[i] = from_acc<T>(s);
}

void launch_bias_grad(const BackwardArgs& a, const Splits& s, void* part, cudaStream_t stream) {
  dispatch(a.dtype, a.tf32, [&](auto c, auto* tp) {
    using acc_t = typename decltype(c)::acc;
    using T = std::remove_pointer_t<decltype(tp)>;
    const Shape& g = a.g;
    auto* bpart = static_cast<acc_t*>(part);
    PYA_LAUNCH(grid_of(ceil_div(g.Co, 64), s.b_splits), kThreads, 0, stream,
               conv_relu_maxpool_bias_grad_kernel_impl<T, acc_t>)(static_cast<const T*>(a.gy),
                                                                   static_cast<const uint8_t*>(a.code), bpart, g, s.b_rows);
    PYA_LAUNCH(grid_of(ceil_div(g.Co, kThreads), 1), kThreads, 0, stream, conv_relu_maxpool_reduce_kernel_impl<T, acc_t>)(
        bpart, s.b_splits, g.Co, g.Co, static_cast<T*>(a.db), g, int64_t(0));
  });
}

void launch_wgrad(const BackwardArgs& a, const Splits& s, void* part, const void* dconv, cudaStream_t stream) {
  dispatch(a.dtype, a.tf32, [&](auto c, auto* tp) {
    using C = decltype(c);
    using T = std::remove_pointer_t<decltype(tp)>;
    constexpr bool kTF32 = C::kTf32;
    using acc_t = typename C::acc;
    const Shape& g = a.g;
    const auto* d = static_cast<const typename C::Tc*>(dconv);
    const auto* x = static_cast<const T*>(a.x);
    auto* wpart = static_cast<acc_t*>(part);
    const int64_t K = g.kh * g.kw * g.Ci, cw = wgrad_channels<C>(a), Kw = g.kh * g.kw * cw;  // Kw: the partial sums' columns
    const dim3 grid = grid_of(ceil_div(Kw, C::BN), ceil_div(g.Co, kBM), s.w_splits);
    auto launch = [&](auto gather) {
      constexpr int G = decltype(gather)::value;
      launch_gemm<conv_relu_maxpool_wgrad_kernel_impl<T, kTF32, G>>(grid, WgradLay<C, G>::kBytes, stream, d, x, wpart, g, s.w_chunk);
    };
    using XVec = std::integral_constant<int, kVectors>;
    using XOther = std::integral_constant<int, C::kMma ? kQuads : kElements>;
    if (wgrad_gather<C>(a) == kVectors) launch(XVec{});
    else launch(XOther{});  // kQuads on the tensor cores, else kElements
    PYA_LAUNCH(grid_of(ceil_div(g.Co * K, kThreads), 1), kThreads, 0, stream, conv_relu_maxpool_reduce_kernel_impl<T, acc_t>)(
        wpart, s.w_splits, g.Co * Kw, g.Co * K, static_cast<T*>(a.dw), g, cw);
  });
}

}  // namespace crm
}  // namespace pyalexnet
