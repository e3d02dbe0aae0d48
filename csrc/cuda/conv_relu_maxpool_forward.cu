// Fused conv2d + ReLU + max-pool, CUDA: the forward pass (shared machinery: conv_relu_maxpool_gemm.h).
//
// Forward (conv_relu_maxpool_forward_kernel_impl): one block computes a tile of the convolution for
// BN output channels (128 on the tensor cores, 64 or 32 with FMA): the conv outputs that a patch of pooled outputs needs (plus the halo of the
// overlapping windows, recomputed by the neighbouring tile), or G whole small images, as a
// 128-row x BN-column GEMM tile over K = kh kw Ci. The input patches are gathered straight from the
// NHWC input into shared memory (Gather: 16-byte cp.async copies when Ci is a multiple of 16 bytes;
// on the tensor cores otherwise 4 channels at a time through registers, conv1's 3 channels padded
// to 4 in the packed weights' K); the weights stream in as 16-byte rows. bias + ReLU + max-pool
// run in the epilogue from the tile in shared memory. Written: only the pooled output and one code
// byte per pooled output (or one bit: 1x1 windows). Never written: the conv or ReLU output.
#include <type_traits>

#include "cuda/conv_relu_maxpool_passes.h"

namespace pyalexnet {
namespace crm {

// The image and pooled row of row pp of group member gg in tile (gi, tp) (kFlatRows: row tp PH + pp
// of the batch's N Hp pooled rows).
struct ImageRow {
  int64_t n, p;
};
__device__ __forceinline__ ImageRow tile_row(const ForwardTile& t, int64_t Hp, int64_t gi, int64_t gg, int64_t tp,
                                             int64_t pp) {
  if (t.kind != TileKind::kFlatRows) return {gi * t.G + gg, tp * t.PH + pp};
  const int64_t f = tp * t.PH + pp;
  return {f / Hp, f % Hp};
}

// x: N x H x W x Ci; w: Co x Kp (Tc); bias: Co (acc) or nullptr; out: N x Hp x Wp x Co;
// code: N x Hp x Wcode x Co. Block (tile, channel tile): tile = (image group, pooled row tile,
// pooled column tile) of plan_forward_tile; kGather: how x is gathered (Gather: w's K runs over
// packed_channels(Ci) a tap); kAsync: the 16-byte gathers and the weight rows by cp.async through 3
// stages (else loads and stores, 2).
template <typename T, bool kTF32, int kGather, bool kAsync>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, kTF32>) conv_relu_maxpool_forward_kernel_impl(
    const T* __restrict__ x, const typename Cfg<T, kTF32>::Tc* __restrict__ w, int64_t Kp,
    const typename Cfg<T, kTF32>::acc* __restrict__ bias, T* __restrict__ out, uint8_t* __restrict__ code,
    typename Cfg<T, kTF32>::acc* __restrict__ conv, Shape g, ForwardTile t) {
  using C = Cfg<T, kTF32>;
  using Tc = typename C::Tc;
  using acc_t = typename C::acc;
  using L = GemmLay<C, kAsync>;
  PYA_DYNAMIC_SHARED(unsigned char, smem);  // L::kBytes, set by launch_gemm
  __shared__ int64_t rbase[kBM];  // per tile row: offset of its image in x, -1 outside the output
  __shared__ int rih[kBM], riw[kBM];  // first input row/column its conv output reads
  Tc* stages = reinterpret_cast<Tc*>(smem);
  acc_t* sC = reinterpret_cast<acc_t*>(smem);
  const int tid = threadIdx.x;

  int64_t b = blockIdx.x;
  const int64_t tq = b % t.tiles_w;
  b /= t.tiles_w;
  const int64_t tp = b % t.tiles_h, gi = b / t.tiles_h;
  const int64_t co0 = int64_t(blockIdx.y) * C::BN;
  const bool bits = is_bitmask(g.pkh, g.pkw);
  const int64_t step_h = bits ? g.psh : 1, step_w = bits ? g.psw : 1;  // conv rows/cols between tile rows
  const int64_t r0 = tp * t.PH * g.psh, c0 = tq * t.PW * g.psw;       // the tile's first conv row/col
  const int64_t per = t.CH * t.CW, Mt = t.G * per;
  const int64_t K = g.kh * g.kw * g.Ci, img = g.H * g.W * g.Ci, wcode = code_width(g.Wp, g.pkh, g.pkw);
  const int Ci32 = int(g.Ci), kw32 = int(g.kw);
  acc_t run_m = -std::numeric_limits<acc_t>::infinity();  // the running maximum of a multi-pass window
  int64_t run_at = 0;

  for (int64_t pass = 0; pass < t.passes; ++pass) {
    const int64_t m0 = pass * kBM;
    const int mvalid = int(Mt - m0 < kBM ? Mt - m0 : kBM);
    if (tid < kBM) {
      int64_t base = -1;
      int ih = 0, iw = 0;
      if (tid < mvalid) {
        const int64_t m = m0 + tid, gg = m / per, rem = m % per, pp = rem / t.CW;
        const auto [n, p] = tile_row(t, g.Hp, gi, gg, tp, pp);
        int64_t ni = n, r = t.kind == TileKind::kFlatRows ? p * step_h : r0 + pp * step_h, c = c0 + (rem % t.CW) * step_w;
        if (C::kMma && t.kind == TileKind::kFlatConv) {  // conv output tp rows + m of the batch
          const int64_t f = tp * kBM + m, HWc = g.Hc * g.Wc;
          ni = f / HWc, r = (f % HWc) / g.Wc, c = f % g.Wc;
        }
        if (ni < g.N && r < g.Hc && c < g.Wc)
          base = ni * img, ih = int(input_start(r, g.sh, g.ph)), iw = int(input_start(c, g.sw, g.pw));
      }
      rbase[tid] = base, rih[tid] = ih, riw[tid] = iw;
    }
    __syncthreads();

    // Tensor cores (kVectors, kQuads): thread tid gathers vector tid % NV (VE channels) of the rows
    // m = tid / NV + (kThreads / NV) j, whose offsets in x and first input row/column it keeps in
    // registers, and walks its vector's (ky, kx, c) (c in Cp) BK columns of K a step (block_gemm
    // loads the steps in order): no division a step. FMA (kVectors: one (ky, kx) and BK channels a
    // step; kElements: one column k a thread) reads the row table: its accumulators leave no
    // registers for the rows.
    constexpr bool kRegRows = kGather != kElements && C::kMma;
    constexpr int VE = kGather == kQuads ? 4 : 16 / int(sizeof(T));  // channels of a vector
    constexpr int NV = C::BK / VE, RPT = kRegRows ? kBM * NV / kThreads : 1;
    static_assert(kBM * NV % kThreads == 0 && kThreads % NV == 0, "whole rows of vectors per thread");
    int64_t rb[RPT];       // byte offset in x of the row's pixel at (ky, kx) = (0, 0); 0 past the output
    int rh[RPT], rw[RPT];  // first input row/column; far negative for rows past the output
    const int Cp = int(packed_channels<C>(g.Ci)), kh32 = int(g.kh);
    constexpr int64_t E = sizeof(T);
    int wc = kRegRows ? (tid % NV) * VE : 0, wkx = 0, wky = 0;  // this thread's vector: (ky, kx, c)
    for (; wc >= Cp; wc -= Cp)
      if (++wkx == kw32) wkx = 0, ++wky;
    int64_t koff = ((int64_t(wky) * g.W + wkx) * g.Ci + wc) * E;  // its byte offset from a row's first pixel
    if constexpr (kRegRows) {
#pragma unroll
      for (int j = 0; j < RPT; ++j) {
        const int m = tid / NV + (kThreads / NV) * j;
        const bool live = rbase[m] >= 0;
        rh[j] = live ? rih[m] : -(1 << 30), rw[j] = live ? riw[m] : -(1 << 30);
        rb[j] = live ? (rbase[m] + (int64_t(rih[m]) * g.W + riw[m]) * g.Ci) * E : 0;
      }
    }
    // BK columns of K on: c by BK % Cp, (ky, kx) by BK / Cp pixels and one more where c wraps.
    const int px_step = C::BK / Cp, c_step = C::BK % Cp;
    const int64_t px_off = mma::kept((px_step * g.Ci + c_step) * E), row_wrap = mma::kept((g.W - g.kw) * g.Ci * E);
    const int64_t c_wrap = mma::kept((g.Ci - Cp) * E);
    auto walk = [&] {
      wc += c_step, koff += px_off;
      int px = px_step;
      if (wc >= Cp) wc -= Cp, ++px, koff += c_wrap;
      for (wkx += px; wkx >= kw32;) wkx -= kw32, ++wky, koff += row_wrap;
    };
    // kQuads: the vectors loaded by the last load_a, stored into pend_s's stage by deposit().
    Tc quad[kGather == kQuads ? RPT : 1][VE];
    const uint32_t a_d0 = mma::kept(uint32_t((tid / NV) * L::LDA + (tid % NV) * VE));  // row j: + j (kThreads / NV) LDA
    Tc* pend_s = stages;
    auto load_a = [&](Tc* s, int64_t k0) {
      if constexpr (kGather == kVectors && !kRegRows) {
        const auto [ky, kx, ci0] = k_position(int(k0), Ci32, kw32);
#pragma unroll 1
        for (int e = tid; e < kBM * NV; e += kThreads) {
          const int m = e / NV, v = e % NV;
          const int ih = rih[m] + ky, iw = riw[m] + kx;
          const bool ok = rbase[m] >= 0 && patch_inside<T>(g, ih, iw);
          const T* p = x + (ok ? rbase[m] + (int64_t(ih) * g.W + iw) * g.Ci + ci0 + v * VE : 0);
          if constexpr (kAsync) {
            async::copy16<true>(s + m * L::LDA + v * VE, p, ok);
          } else {
            uint4 val = {0u, 0u, 0u, 0u};
            if (ok) val = __ldg(reinterpret_cast<const uint4*>(p));
            put16<C>(s + m * L::LDA + v * VE, val);
          }
        }
      } else if constexpr (kRegRows) {
        const uint32_t H32 = uint32_t(g.H), W32 = uint32_t(g.W);
        const bool kin = wky < kh32;  // false past K
        const int nc = Ci32 - wc;     // channels of the vector inside x (kQuads: 4 or fewer)
#pragma unroll
        for (int j = 0; j < RPT; ++j) {
          const bool ok = kin & (uint32_t(rh[j] + wky) < H32) & (uint32_t(rw[j] + wkx) < W32);
          const T* p = reinterpret_cast<const T*>(reinterpret_cast<const char*>(x) + (rb[j] + koff));  // read only if ok
          Tc* d = s + a_d0 + j * (kThreads / NV) * L::LDA;
          if constexpr (kGather == kQuads) {
#pragma unroll
            for (int e = 0; e < VE; ++e) quad[j][e] = ok && e < nc ? p[e] : to_c<C>(acc_t(0));
          } else if constexpr (kAsync) {  // L1 too: the next (ky, kx) steps read most of these pixels again
            async::copy16<true>(d, p, ok);
          } else {
            uint4 val = {0u, 0u, 0u, 0u};
            if (ok) val = __ldg(reinterpret_cast<const uint4*>(p));
            put16<C>(d, val);
          }
        }
        if constexpr (kGather == kQuads) pend_s = s;
        walk();
      } else {  // element gathers; each thread keeps one column k of the step (BK divides kThreads)
        const int kk = tid % C::BK;
        const int k = int(k0) + kk;
        const auto [ky, kx, ci] = k < K ? k_position(k, Ci32, kw32) : KPos{0, 0, 0};
        for (int m = tid / C::BK; m < kBM; m += kThreads / C::BK) {
          const int ih = rih[m] + ky, iw = riw[m] + kx;
          acc_t v = acc_t(0);
          if (k < K && rbase[m] >= 0 && patch_inside<T>(g, ih, iw))
            v = to_acc(x[rbase[m] + (int64_t(ih) * g.W + iw) * g.Ci + ci]);
          s[m * L::LDA + kk] = to_c<C>(v);
        }
      }
    };
    auto deposit = [&] {
      if constexpr (kGather == kQuads) {
#pragma unroll
        for (int j = 0; j < RPT; ++j) store_vec(pend_s + a_d0 + j * (kThreads / NV) * L::LDA, quad[j]);
      }
    };
    RowLoader<C, L, kAsync> rows_b(w, Kp, co0, g.Co);
    auto load_b = [&](Tc* s, int64_t) { rows_b(s); };
    Accum<C, L, kGather == kQuads || (kRegRows && kAsync) ? kRoundA : kRoundNone> acc;  // raw x in A
    acc.init();
    const int nvalid = int(g.Co - co0 < C::BN ? g.Co - co0 : C::BN);
    // The ring unrolled but for 16-bit 4-channel gathers, where ptxas then keeps the gathers'
    // predicates in registers (P2R): 278 instructions a step against 209 rolled (sm_90).
    constexpr bool kUnrollRing = kGather != kQuads || sizeof(Tc) == 4;
    block_gemm<C, L, kUnrollRing>(acc, stages, 0, Kp, mvalid, nvalid, load_a, load_b, deposit);
    acc.store(sC);
    __syncthreads();

    if (t.passes > 1) {  // one pooled output per tile: fold this pass's window positions in, in order
      if (tid < C::BN && co0 + tid < g.Co) {
        const acc_t bv = bias ? bias[co0 + tid] : acc_t(0);
        for (int i = 0; i < mvalid; ++i) max_update<acc_t>(sC[i * L::LDC + tid] + bv, m0 + i, run_m, run_at);
      }
    } else if (C::kMma && t.kind == TileKind::kFlatConv) {  // conv + bias into the workspace, pooled afterwards
      const int64_t f0 = tp * kBM, total = g.N * g.Hc * g.Wc;
      for (int e = tid; e < kBM * C::BN; e += kThreads) {
        const int j = e % C::BN, m = e / C::BN;
        const int64_t co = co0 + j;
        if (co < g.Co && f0 + m < total) conv[(f0 + m) * g.Co + co] = sC[m * L::LDC + j] + (bias ? bias[co] : acc_t(0));
      }
    } else if (bits) {  // 1x1 windows: bias + ReLU, and 8 mask bits to a byte
      // Tile-local indices (a tile holds at most kBM conv outputs) in 32-bit arithmetic.
      const int bytes = int(t.PW + 7) / 8, PHB = int(t.PH) * bytes, P8 = int(t.G) * PHB;
      for (int e = tid; e < P8 * C::BN; e += kThreads) {
        const int j = e % C::BN, pi = e / C::BN, gg = pi / PHB, rem = pi - gg * PHB, pp = rem / bytes;
        const int bq = rem - pp * bytes;
        const auto [n, p] = tile_row(t, g.Hp, gi, gg, tp, pp);
        const int64_t co = co0 + j, q0 = tq * t.PW + 8 * bq;
        if (co >= g.Co || n >= g.N || p >= g.Hp || q0 >= g.Wp) continue;
        const acc_t bv = bias ? bias[co] : acc_t(0);
        uint8_t byte = 0;
        for (int i = 0; i < 8 && 8 * bq + i < t.PW && q0 + i < g.Wp; ++i) {
          const acc_t v = sC[(gg * per + pp * t.CW + 8 * bq + i) * L::LDC + j] + bv;
          out[((n * g.Hp + p) * g.Wp + q0 + i) * g.Co + co] = from_acc<T>(pooled_value(v));
          byte |= uint8_t((v > acc_t(0)) << i);
        }
        code[((n * g.Hp + p) * wcode + q0 / 8) * g.Co + co] = byte;
      }
    } else {  // bias + ReLU + max-pool of each window, channel fastest: coalesced NHWC writes
      // Tile-local indices (a tile holds at most kBM conv outputs) in 32-bit arithmetic.
      const int PW = int(t.PW), PHW = int(t.PH) * PW, P = int(t.G) * PHW, CW = int(t.CW);
      const int pkh = int(g.pkh), pkw = int(g.pkw), psh = int(g.psh), psw = int(g.psw);
      for (int e = tid; e < P * C::BN; e += kThreads) {
        const int j = e % C::BN, pi = e / C::BN, gg = pi / PHW, rem = pi - gg * PHW, pp = rem / PW;
        const int pq = rem - pp * PW;
        const int64_t co = co0 + j, n = gi * t.G + gg, p = tp * t.PH + pp, q = tq * t.PW + pq;
        if (co >= g.Co || n >= g.N || p >= g.Hp || q >= g.Wp) continue;
        const acc_t bv = bias ? bias[co] : acc_t(0);
        const acc_t* win = sC + (gg * int(per) + pp * psh * CW + pq * psw) * L::LDC + j;
        acc_t mx = -std::numeric_limits<acc_t>::infinity();
        int64_t at = 0;
#pragma unroll 1
        for (int dy = 0; dy < pkh; ++dy)
#pragma unroll 1
          for (int dx = 0; dx < pkw; ++dx) max_update<acc_t>(win[(dy * CW + dx) * L::LDC] + bv, dy * pkw + dx, mx, at);
        const int64_t o = ((n * g.Hp + p) * g.Wp + q) * g.Co + co;
        out[o] = from_acc<T>(pooled_value(mx));
        code[o] = pooled_code(mx, at);
      }
    }
    __syncthreads();  // the next pass reuses the shared memory
  }
  if (t.passes > 1 && tid < C::BN && co0 + tid < g.Co) {
    const int64_t o = ((gi * g.Hp + tp) * g.Wp + tq) * g.Co + co0 + tid;
    out[o] = from_acc<T>(pooled_value(run_m));
    code[o] = pooled_code(run_m, run_at);
  }
}

// The pooling after kFlatConv tiles: conv (N x Hc x Wc x Co, conv + bias) -> out and code, each
// window as the fused epilogue takes it (max_update's order, pooled_value, pooled_code), so the same
// bits. Blocks along y take pooled rows (image and row divided out once a block), along x the row's
// Wp Co outputs, channels fastest: coalesced reads and writes, one division a output.
template <typename T, typename acc_t>
__global__ void __launch_bounds__(kThreads) conv_relu_maxpool_pool_kernel_impl(
    const acc_t* __restrict__ conv, T* __restrict__ out, uint8_t* __restrict__ code, Shape g) {
  const int64_t rows = g.N * g.Hp, len = g.Wp * g.Co, rstep = g.Wc * g.Co;
  const int pkh = int(g.pkh), pkw = int(g.pkw);
  for (int64_t row = blockIdx.y; row < rows; row += gridDim.y) {
    const int64_t n = row / g.Hp, p = row - n * g.Hp;
    const acc_t* top = conv + (n * g.Hc + window_start(p, g.psh)) * rstep;  // the windows' first conv row
    for (int64_t e = int64_t(blockIdx.x) * kThreads + threadIdx.x; e < len; e += int64_t(gridDim.x) * kThreads) {
      const int64_t q = e / g.Co, co = e - q * g.Co;
      const acc_t* win = top + window_start(q, g.psw) * g.Co + co;
      acc_t mx = -std::numeric_limits<acc_t>::infinity();
      int64_t at = 0;
      for (int dy = 0; dy < pkh; ++dy)
        for (int dx = 0; dx < pkw; ++dx) max_update<acc_t>(win[dy * rstep + dx * g.Co], dy * pkw + dx, mx, at);
      out[row * len + e] = from_acc<T>(pooled_value(mx));
      code[row * len + e] = pooled_code(mx, at);
    }
  }
}

// dst = src rounded to TF32 (nearest, ties away: as the fragments round; in place where dst is src):
// the packed float32 weights and the weight gradient's copy of x, once a call, so that the tensor
// cores' K steps need not round them.
__global__ void __launch_bounds__(kThreads) conv_relu_maxpool_round_tf32_kernel_impl(const float* src, float* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    dst[i] = tf32_round(src[i]);
}

// ------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------
namespace {

// Recomputing a pooled tile's halo against writing the conv output and reading it back: the
// H100 model's products (~50% of 989 TFLOP/s, shared-memory bound) against memory (3.35 TB/s), 148
// flops a byte (bench/results/2026-12-03-halo-alternatives.md), with a 5% margin.
constexpr double kFlopsPerByte = 148 * 1.05;

// The forward's tiles: plan_forward_tile's, or on the tensor cores kFlatConv for a pooled layer
// whose recomputed halo (the fused tiles' 32-row slabs past the flat tiles' rows, times K and the
// column tiles) costs more than the conv output's round trip through memory (float, so that the
// codes stay the fused ones). Not for FMA: its float64 variants would spill.
template <class C>
ForwardTile plan_forward(const Shape& g) {
  const ForwardTile t = plan_forward_tile(g.N, g.Hp, g.Wp, g.pkh, g.pkw, g.psh, g.psw, kBM);
  if (!C::kMma || t.kind != TileKind::kPatches || t.passes > 1 || is_bitmask(g.pkh, g.pkw)) return t;
  const int64_t P = g.N * g.Hc * g.Wc, flat = ceil_div(P, kBM);
  const double fused_rows = double(t.count()) * double(warp_slabs(t.G * t.CH * t.CW) * 32);
  const double K = double(g.kh * g.kw * packed_channels<C>(g.Ci)), cols = double(ceil_div(g.Co, C::BN) * C::BN);
  const double saved = (fused_rows - double(flat * kBM)) * 2 * K * cols;
  const double bytes = 2.0 * double(P) * double(g.Co) * double(sizeof(typename C::acc));
  if (saved <= kFlopsPerByte * bytes) return t;
  return ForwardTile{1, 1, kBM, 1, kBM, 1, flat, 1, 1, TileKind::kFlatConv};
}

template <class C>
int64_t forward_workspace(const Shape& g) {
  return plan_forward<C>(g).kind == TileKind::kFlatConv ? g.N * g.Hc * g.Wc * g.Co * int64_t(sizeof(typename C::acc)) : 0;
}

template <typename T, bool kTF32>
cudaError_t forward(const ForwardArgs& a, cudaStream_t stream) {
  using C = Cfg<T, kTF32>;
  using acc_t = typename C::acc;
  const Shape& g = a.g;
  const ForwardTile t = plan_forward<C>(g);
  const dim3 grid = grid_of(t.count(), ceil_div(g.Co, C::BN));
  const auto* x = static_cast<const T*>(a.x);
  const auto* w = static_cast<const typename C::Tc*>(a.w);
  const auto* bias = static_cast<const typename C::acc*>(a.bias);
  auto* out = static_cast<T*>(a.out);
  auto* code = static_cast<uint8_t*>(a.code);
  auto* conv = static_cast<acc_t*>(a.workspace);  // kFlatConv: the conv output + bias
  auto launch = [&](auto gather, auto async_copy) {
    constexpr int G = decltype(gather)::value;
    constexpr bool A = decltype(async_copy)::value;
    launch_gemm<conv_relu_maxpool_forward_kernel_impl<T, kTF32, G, A>>(grid, GemmLay<C, A>::kBytes, stream, x, w, a.Kp, bias, out, code, conv, g, t);
  };
  using Async = std::true_type;
  using Sync = std::false_type;
  using Vec = std::integral_constant<int, kVectors>;
  using Other = std::integral_constant<int, C::kMma ? kQuads : kElements>;
  const bool v2 = a.version >= 2;
  if (gather_of<C>(g.Ci) == kVectors) v2 ? launch(Vec{}, Async{}) : launch(Vec{}, Sync{});
  else v2 ? launch(Other{}, Async{}) : launch(Other{}, Sync{});
  if constexpr (C::kMma) {  // kFlatConv: the pooling
    if (const int64_t rows = g.N * g.Hp, len = g.Wp * g.Co; t.kind == TileKind::kFlatConv && rows * len > 0) {
      const int64_t bx = ceil_div(len, kThreads);
      PYA_LAUNCH(grid_of(bx < 65536 ? bx : 65536, rows < 65535 ? rows : 65535), kThreads, 0, stream,
                 conv_relu_maxpool_pool_kernel_impl<T, acc_t>)(conv, out, code, g);
    }
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_conv_relu_maxpool_forward(const ForwardArgs& a, cudaStream_t stream) {
  return dispatch(a.dtype, a.tf32, [&](auto c, auto* tp) {
    using T = std::remove_pointer_t<decltype(tp)>;
    return forward<T, decltype(c)::kTf32>(a, stream);
  });
}

int64_t conv_relu_maxpool_forward_workspace_bytes(const ForwardArgs& a) {
  return dispatch(a.dtype, a.tf32, [&](auto c, auto*) { return forward_workspace<decltype(c)>(a.g); });
}

cudaError_t launch_conv_relu_maxpool_round_tf32(const float* src, float* dst, int64_t n, cudaStream_t stream) {
  if (n > 0) {
    const int64_t blocks = ceil_div(n, kThreads);
    PYA_LAUNCH(grid_of(blocks < 4096 ? blocks : 4096, 1), kThreads, 0, stream, conv_relu_maxpool_round_tf32_kernel_impl)(src, dst, n);
  }
  return cudaGetLastError();
}

int64_t conv_relu_maxpool_packed_channels(DType dtype, bool tf32, int64_t Ci) {
  return dispatch(dtype, tf32, [&](auto c, auto*) { return packed_channels<decltype(c)>(Ci); });
}

int64_t conv_relu_maxpool_k_multiple(DType dtype, bool tf32) {
  return dispatch(dtype, tf32, [&](auto c, auto*) { return int64_t(decltype(c)::BK); });
}

}  // namespace crm
}  // namespace pyalexnet
