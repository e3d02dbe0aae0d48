// The fused conv2d + ReLU + max-pool CUDA kernels' shared GEMM machinery: per dtype the tile
// arithmetic (Cfg), the shared-memory layout of a tile (Lay), the warp tile's inner product (Accum),
// the operand pipeline (block_gemm) and the weight-row loader (RowLoader). The passes, one file
// each: conv_relu_maxpool_forward.cu (conv + bias + ReLU + max-pool), conv_relu_maxpool_unpool.cu
// (the backward's un-pooled gradient), conv_relu_maxpool_dgrad.cu (the data gradient),
// conv_relu_maxpool_wgrad.cu (the weight and bias gradients), conv_relu_maxpool_backward.cu (the
// backward's workspace and order of launches).
//
// Arithmetic: bfloat16/float16 on the tensor cores (mma.sync m16n8k16, fragments by ldmatrix.x4 from
// 32-bit shared addresses: csrc/cuda/mma_sync.h) with float accumulation; float32 as TF32 on the
// tensor cores (m16n8k8) when allowed (torch.backends.cudnn.allow_tf32), else exact FP32 FMA; float64
// FMA. The tile loops are the same for all: only the warp tile's inner product (Accum) differs.
// Operand pipeline (block_gemm): cp.async (cuda/async_copy.h) copies the 16-byte input gathers, the
// weight rows, dgrad's dconv gathers and wgrad's tiles straight into a ring of 4 shared-memory
// stages (kAsyncStages), three K steps ahead of the tensor cores, one barrier per step. wgrad's
// operands run along the channels (m and n), so its tiles are k-major (a row per conv position) and
// read by ldmatrix.trans (TF32: 32-bit LDS). 4-channel gathers (the forward's and wgrad's patches
// where Ci is not a multiple of 16 bytes) load through registers and store after the next step's
// products (block_gemm's deposit); element gathers (FMA) still load and store in place. TF32: the
// packed weights are rounded once a call, dconv when written; raw input tiles round on the
// fragments. The forward's loaders keep each thread's rows in registers and walk (ky, kx, c) by one
// K step at a time (no division a step). Values the main loops reuse are computed once and held
// (mma::kept) where nvcc would recompute them each step.
// The forward's version 1 (loads and stores through 2 stages) stays selectable,
// PYALEXNET_CONV_VERSION=1, so that one GPU run times both (bench/compare.py's ours_v1); both give
// the same bits (tests). The backward has one version: the first one's, which un-pooled inside its
// GEMM loaders, issued 924-1356 instructions a K step (2.4-3.5% HMMA), and is gone.
// Machine code: `python bench/kernel_report.py --filter conv` prints registers, spills and, per
// kernel, the main loop's instructions per K step, its HMMA share, ldmatrix and generic loads;
// tests/test_kernel_code.py checks no spills and no generic loads in the tensor-core main loops.
// Counts and the performance model built on them: bench/results/2026-12-03-cuda-main-loop-sass.md
// (no GPU has run these kernels yet).
// Index arithmetic inside the K loops and the forward's epilogue is 32-bit (K, image rows and
// columns < 2^31, which the wrapper checks; tile-local indices < kBM x BN; offsets stay 64-bit),
// and dgrad divides by the stride only where it is not 1.
#pragma once

#include <cstdint>
#include <limits>
#include <type_traits>

#include "cuda/cuda_or_emulation.h"

#include "common/conv_relu_maxpool_index.h"
#include "cuda/acc_convert.h"
#include "cuda/async_copy.h"
#include "cuda/conv_relu_maxpool_kernels.h"
#include "cuda/mma_sync.h"

namespace pyalexnet {
namespace crm {

constexpr int kThreads = 256;  // 8 warps
constexpr int kBM = 128;       // rows of a GEMM tile

// The tensor-core warp tiles: warp w computes the 32-row slab warp_slab(w) of the 128 x BN tile, in
// column half warp_half(w). Warps issue on the SM's four schedulers by w % 4, and the second half's
// slabs are rotated by two so that the warps of a partial tile (valid rows and columns are prefixes:
// k slabs, h halves; warps wholly outside idle) spread over the schedulers as evenly as k h warps
// can: a 64 x 128 tile's four warps issue on four schedulers (w % 4 for the slab put them on two).
constexpr int warp_slab(int w) { return (w % 4 + 2 * (w / 4)) % 4; }
constexpr int warp_half(int w) { return w / 4; }
constexpr bool warps_spread() {
  for (int k = 1; k <= 4; ++k)
    for (int h = 1; h <= 2; ++h) {
      int on[4] = {0, 0, 0, 0}, tiles = 0;  // active warps per scheduler; (slab, half) pairs owned
      for (int w = 0; w < kThreads / 32; ++w) {
        if (warp_slab(w) < k && warp_half(w) < h) ++on[w % 4];
        tiles |= 1 << (warp_slab(w) * 2 + warp_half(w));
      }
      if (tiles != 0xFF) return false;
      for (int s = 0; s < 4; ++s)
        if (on[s] > (k * h + 3) / 4) return false;
    }
  return true;
}
static_assert(kThreads == 256 && warps_spread(), "8 warps own the 4 x 2 warp tiles, any partial tile spread evenly");

__device__ __forceinline__ float tf32_round(float v) {
#if defined(__CUDACC__)
  uint32_t r;  // cvt.rna.tf32.f32: nearest, ties away; the result is a float with 13 zero low bits
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
#else
  return __float_to_tf32(v);
#endif
}

// The arithmetic of each dtype: Tc is what shared memory and the inner product hold, acc the
// accumulator; BN columns per tile, BK the K step (64 bytes of Tc: four 16-byte vectors per row).
template <typename T, bool kTF32> struct Cfg;
template <> struct Cfg<__nv_bfloat16, false> {
  using Tc = __nv_bfloat16; using acc = float;
  static constexpr bool kMma = true, kTf32 = false;
  static constexpr int BN = 128, BK = 32, PADK = 8, WK = 16;
};
template <> struct Cfg<__half, false> {
  using Tc = __half; using acc = float;
  static constexpr bool kMma = true, kTf32 = false;
  static constexpr int BN = 128, BK = 32, PADK = 8, WK = 16;
};
template <> struct Cfg<float, true> {
  using Tc = float; using acc = float;
  static constexpr bool kMma = true, kTf32 = true;
  static constexpr int BN = 128, BK = 16, PADK = 4, WK = 8;
};
template <> struct Cfg<float, false> {
  using Tc = float; using acc = float;
  static constexpr bool kMma = false, kTf32 = false;
  static constexpr int BN = 64, BK = 16, PADK = 4, WK = 0;
};
template <> struct Cfg<double, false> {
  using Tc = double; using acc = double;
  static constexpr bool kMma = false, kTf32 = false;
  static constexpr int BN = 32, BK = 8, PADK = 2, WK = 0;
};

// How the forward gathers its input patches (A). Tensor cores: kVectors, 16-byte cp.async copies
// of channels (Ci a multiple of 16 bytes of T); kQuads for any other Ci (conv1's 3 channels): 4
// channels at a time, loaded element by element through registers, zero past Ci, with the packed
// weights' K over Cp = Ci rounded up to 4 channels (packed_channels: conv1's K 363 -> 484, where
// 16-byte vectors would need 8 channels, 968). FMA: kVectors when Ci is a multiple of the K step
// (one (ky, kx) a step), else kElements (a column k a thread, no channel padding).
enum Gather : int { kElements, kVectors, kQuads };
template <class C> constexpr Gather gather_of(int64_t Ci) {
  if constexpr (C::kMma) return Ci % (16 / int64_t(sizeof(typename C::Tc))) == 0 ? kVectors : kQuads;
  else return Ci % C::BK == 0 ? kVectors : kElements;
}
// The channels a tap of the 4-channel gathers spans (kQuads: forward and wgrad): Ci rounded up to 4.
constexpr int64_t quad_channels(int64_t Ci) { return (Ci + 3) / 4 * 4; }
// Channels per kernel tap (ky, kx) in the packed forward weights: Ci, or with kQuads quad_channels.
template <class C> constexpr int64_t packed_channels(int64_t Ci) {
  return gather_of<C>(Ci) == kQuads ? quad_channels(Ci) : Ci;
}
// Channels of the un-pooled gradient dconv (N x Hc x Wc x Cd): Co rounded up to the K step, zero
// past Co, so that both backward GEMMs copy it by 16-byte vectors whatever Co, a dgrad K step being
// one tap's BK channels (its packed weights wt carry the same zero channels).
template <class C> constexpr int64_t dconv_channels(int64_t Co) { return (Co + C::BK - 1) / C::BK * C::BK; }

// Blocks per SM the GEMM kernels' registers must allow: 2 for FMA (128 registers a thread); 1 for
// the tensor cores, whose 128 x 128 tile holds 64 float accumulators a thread (at a cap of 128
// registers ptxas spilled in 11 of their variants); their 80 KB of shared memory allow 2.
template <typename T, bool kTF32> constexpr int kMinBlocks = Cfg<T, kTF32>::kMma ? 1 : 2;

// Shared memory of a GEMM tile: S stages of A (kBM x BK, row-major) and B (BN x BK: B's columns,
// k contiguous), and afterwards the result C (kBM x BN, acc) in the same bytes. Row pitches keep every
// ldmatrix row and 16-byte store aligned; the padding puts the 8 rows of an ldmatrix phase in
// distinct banks (80-byte rows, 272 k-major).
// S = kAsyncStages with cp.async. The bytes are dynamic shared memory (launch_gemm): 80 KB for a
// 128 x 128 tensor-core tile (66-68 KB k-major), 60 KB with float32 FMA, 50 KB float64.
// kKMajor: A stored BK x kBM and B BK x BN (m and n contiguous, 16 bytes of padding a row), for
// operands whose 16-byte vectors run along m or n (wgrad's channels), read as col-major A and
// row-major B fragments.
template <class C, int S = 2, bool kKM = false>
struct Lay {
  using Tc = typename C::Tc;
  using acc = typename C::acc;
  static constexpr bool kKMajor = kKM;
  static constexpr int PADT = 16 / int(sizeof(Tc));
  static constexpr int LDA = kKM ? kBM + PADT : C::BK + C::PADK, LDB = kKM ? C::BN + PADT : LDA;
  static constexpr int LDC = C::BN + (C::kMma ? 4 : 1);
  static constexpr int kASize = kKM ? C::BK * LDA : kBM * LDA;  // elements of A in one stage
  static constexpr int kStage = kASize + (kKM ? C::BK * LDB : C::BN * LDB);  // one stage: A then B
  static constexpr int kStages = S;
  static constexpr int kAB = S * kStage * int(sizeof(Tc));
  static constexpr int kC = kBM * LDC * int(sizeof(acc));
  static constexpr int kBytes = kAB > kC ? kAB : kC;
};

// Stages of the cp.async ring: three K steps in flight while a fourth is multiplied, so that with one
// tensor-core block per SM the copies have ~3 steps' products (~800-1500 clk) to land in.
constexpr int kAsyncStages = 4;
// The layout the forward and dgrad kernels use, named once for the kernel and for its launch
// (launch_gemm's bytes): kAsyncStages with cp.async, else 2. wgrad's: WgradLay.
template <class C, bool kAsync> using GemmLay = Lay<C, kAsync ? kAsyncStages : 2>;

using cuda_convert::from_acc;
using cuda_convert::to_acc;

__device__ __forceinline__ float fma_(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double fma_(double a, double b, double c) { return fma(a, b, c); }

// An accumulator value as the tile's compute type (TF32: rounded to nearest, ties away).
template <class C> __device__ __forceinline__ typename C::Tc to_c(typename C::acc v) {
  if constexpr (C::kTf32) return tf32_round(v);
  else return from_acc<typename C::Tc>(v);
}

// 16 bytes into shared memory; TF32 rounds each float on the way.
template <class C> __device__ __forceinline__ void put16(typename C::Tc* dst, uint4 v) {
  if constexpr (C::kTf32) {
    const float4 f = *reinterpret_cast<const float4*>(&v);
    *reinterpret_cast<float4*>(dst) = float4{tf32_round(f.x), tf32_round(f.y), tf32_round(f.z), tf32_round(f.w)};
  } else {
    *reinterpret_cast<uint4*>(dst) = v;
  }
}

// V elements held in registers, stored to shared memory as one V-element vector (the 4-channel
// gathers' deposit).
template <int V, class Tc> __device__ __forceinline__ void store_vec(Tc* dst, const Tc (&v)[V]) {
  struct alignas(V * sizeof(Tc)) Vec { Tc e[V]; } q;
#pragma unroll
  for (int e = 0; e < V; ++e) q.e[e] = v[e];
  *reinterpret_cast<Vec*>(dst) = q;
}

// The block's 128 x BN result. Tensor cores: warp w owns the 32 x BN/2 sub-tile at rows
// 32 warp_slab(w), columns BN/2 warp_half(w): 2 x BN/16 mma.sync tiles of 16 x 8
// (csrc/cuda/mma_sync.h), fragments read by ldmatrix.x4 from 32-bit shared addresses (each lane's
// row offsets computed once, in init); a warp whose rows or columns all lie past the tile's valid
// ones skips its products. k-major tiles (kKMajor) are read
// with ldmatrix.trans; TF32 ones, whose 32-bit elements ldmatrix cannot transpose, by 32-bit LDS.
// FMA: thread t owns rows t / NT + MT i and columns t % NT + NT j.
// kRound (TF32): kRoundA where A's tiles hold raw floats (the forward's cp.async copies and register
// gathers of x), rounded on the fragments. The others arrive rounded: the packed weights and the
// weight gradient's x (launch_conv_relu_maxpool_round_tf32), dconv (written rounded), tiles stored
// through to_c / put16.
enum Round : int { kRoundNone = 0, kRoundA = 1 };
template <class C, class L, int kRound = kRoundNone, bool kMma = C::kMma> struct Accum;

template <class C, class L, int kRound> struct Accum<C, L, kRound, true> {
  using Tc = typename C::Tc;
  static constexpr bool kKM = L::kKMajor, kTf32 = C::kTf32;
  static constexpr int E = int(sizeof(Tc));                 // bytes of an element
  static constexpr int SA = L::LDA * E, SB = L::LDB * E;    // bytes of a row of A / B
  static constexpr int WN = C::BN / 2, NJ = WN / 8;  // a warp's columns, its n8 tiles
  float d[2][NJ][4];  // [m16 tile][n8 tile][element]
  int wm, wn;
  // This lane's byte offsets of its ldmatrix rows (or LDS elements) in the first m16 tile of A and
  // the first n16 pair of B; the second ones lie 16 rows (k-major: 16 elements) further.
  uint32_t a_off, b_off;
  static constexpr uint32_t kA2 = kKM ? 16 * E : 16 * SA, kB2 = kKM ? 16 * E : 16 * SB;
  __device__ void init() {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    wm = warp_slab(warp), wn = warp_half(warp);
    const int l8 = lane % 8, q = lane / 8;  // row l8 of matrix q
    const int m = wm * 32, n = wn * WN;
    if constexpr (!kKM) {  // matrices q: A (rows +8 (q & 1), k +8 (q >> 1)), B (n +8 (q >> 1), k +8 (q & 1))
      a_off = (m + lane % 16) * SA + (q >> 1) * 16;
      b_off = (n + (q >> 1) * 8 + l8) * SB + (q & 1) * 16;
    } else if constexpr (!kTf32) {  // rows are k: A (m +8 (q & 1), k +8 (q >> 1)), B (k +8 (q & 1), n +8 (q >> 1))
      a_off = ((q >> 1) * 8 + l8) * SA + (m + (q & 1) * 8) * E;
      b_off = ((q & 1) * 8 + l8) * SB + (n + (q >> 1) * 8) * E;
    } else {  // LDS: element (k = t, m = g) of the first m16 / n8 tile
      a_off = (lane % 4) * SA + (m + lane / 4) * E;
      b_off = (lane % 4) * SB + (n + lane / 4) * E;
    }
    a_off = mma::kept(a_off), b_off = mma::kept(b_off);
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int e = 0; e < 4; ++e) d[i][j][e] = 0.0f;
  }
  __device__ static uint32_t rounded(uint32_t v) {  // cp.async lands raw floats: TF32 (nearest, ties away)
    return kTf32 ? __float_as_uint(tf32_round(__uint_as_float(v))) : v;
  }
  // A (m16 tiles 0, 1) and B (n8 tiles 0 .. NJ - 1, by pairs) fragments of K slice kk.
  __device__ void fragments(mma::saddr a0, mma::saddr b0, int kk, uint32_t (&a)[2][4], uint32_t (&b)[NJ][2]) const {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      if constexpr (!kKM) {
        mma::ldmatrix<4, false>(a[i], a0 + a_off + i * kA2 + kk * E);
      } else if constexpr (!kTf32) {
        mma::ldmatrix<4, true>(a[i], a0 + a_off + i * kA2 + kk * SA);
      } else {
        const mma::saddr pa = a0 + a_off + i * kA2 + kk * SA;
#pragma unroll
        for (int r = 0; r < 4; ++r) a[i][r] = mma::lds32(pa + (r >> 1) * 4 * SA + (r & 1) * 8 * E);
      }
    }
#pragma unroll
    for (int i = 0; i < NJ / 2; ++i) {
      uint32_t r[4];
      if constexpr (!kKM) {
        mma::ldmatrix<4, false>(r, b0 + b_off + i * kB2 + kk * E);
      } else if constexpr (!kTf32) {
        mma::ldmatrix<4, true>(r, b0 + b_off + i * kB2 + kk * SB);
      } else {
        const mma::saddr pb = b0 + b_off + i * kB2 + kk * SB;
#pragma unroll
        for (int q = 0; q < 4; ++q) r[q] = mma::lds32(pb + (q & 1) * 4 * SB + (q >> 1) * 8 * E);
      }
      b[2 * i][0] = r[0], b[2 * i][1] = r[1], b[2 * i + 1][0] = r[2], b[2 * i + 1][1] = r[3];
    }
  }
  // Whether this warp's rows and columns hold any of the tile's mvalid valid rows and nvalid valid
  // columns (warp-uniform): a warp wholly outside them issues no products (nor their ldmatrix).
  __device__ bool active(int mvalid, int nvalid) const { return wm * 32 < mvalid && wn * WN < nvalid; }
  // The products of one K step, from the tiles at shared addresses a0 and b0, if the warp is active.
  __device__ void step(mma::saddr a0, mma::saddr b0, uint32_t active) {
    if (!active) return;
#pragma unroll
    for (int kk = 0; kk < C::BK; kk += C::WK) {
      uint32_t a[2][4], b[NJ][2];
      fragments(a0, b0, kk, a, b);
      if constexpr (kTf32 && (kRound & kRoundA)) {
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
          for (int r = 0; r < 4; ++r) a[i][r] = rounded(a[i][r]);
      }
#pragma unroll
      for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < NJ; ++j) {
          if constexpr (kTf32) mma::mma_1688_tf32(d[i][j], a[i], b[j]);
          else mma::mma_16816<Tc>(d[i][j], a[i], b[j]);
        }
    }
  }
  __device__ void store(float* sC) const {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float* p = sC + (wm * 32 + i * 16 + g + 8 * h) * L::LDC + wn * WN + j * 8 + 2 * t;
          *reinterpret_cast<float2*>(p) = float2{d[i][j][2 * h], d[i][j][2 * h + 1]};
        }
  }
};

template <class C, class L, int kRound> struct Accum<C, L, kRound, false> {
  using Tc = typename C::Tc;
  using acc_t = typename C::acc;
  static constexpr bool kKM = L::kKMajor;
  static constexpr int NT = C::BN / 4, MT = kThreads / NT, TM = kBM / MT;
  acc_t v[TM][4];
  int tm, tn;
  __device__ void init() {
    tn = threadIdx.x % NT, tm = threadIdx.x / NT;
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < 4; ++j) v[i][j] = acc_t(0);
  }
  __device__ void step(const Tc* sA, const Tc* sB, int) {  // the tiles at sA and sB
#pragma unroll 4
    for (int k = 0; k < C::BK; ++k) {
      acc_t a[TM], b[4];
#pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = kKM ? sA[k * L::LDA + tm + i * MT] : sA[(tm + i * MT) * L::LDA + k];
#pragma unroll
      for (int j = 0; j < 4; ++j) b[j] = kKM ? sB[k * L::LDB + tn + j * NT] : sB[(tn + j * NT) * L::LDB + k];
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) v[i][j] = fma_(a[i], b[j], v[i][j]);
    }
  }
  __device__ void store(acc_t* sC) const {
    for (int i = 0; i < TM; ++i)
      for (int j = 0; j < 4; ++j) sC[(tm + i * MT) * L::LDC + tn + j * NT] = v[i][j];
  }
};

// C += A[:, kbeg:kend] B[kbeg:kend, :], one K step at a time, through L::kStages stages of shared
// memory in a ring: step i's operands are multiplied while the loaders fill step i + S - 1's tiles
// (zeros outside the operands) into the stage step i - 1 used; one barrier per step. Loaders either
// store (through registers) or issue cp.async copies; every thread commits one group per step, even an
// empty one, so that wait<S - 2> always means "step i has landed".
// S = 2 with storing loaders: the first version (the loads of step i + 1 stall each thread before its
// products of step i). S = kAsyncStages with cp.async: three steps in flight, nothing in registers.
// mvalid x nvalid: the tile's valid rows and columns (tensor cores: warps outside them idle).
// deposit() runs after each load that loaded a step, after the products of the step before it: a
// loader that gathers through registers (the forward's kQuads) stores there what it loaded, so that
// the products of step i hide its loads' latency; the stage it writes was last read in step i - 1,
// before this step's barrier.
template <class C, class L, bool kUnroll = true, int R, class LoadA, class LoadB, class Deposit>
__device__ void block_gemm(Accum<C, L, R>& acc, typename C::Tc* stages, int64_t kbeg, int64_t kend, int mvalid,
                           int nvalid, const LoadA& load_a, const LoadB& load_b, const Deposit& deposit) {
  constexpr int S = L::kStages;
  auto a_of = [&](int st) { return stages + st * L::kStage; };
  auto b_of = [&](int st) { return stages + st * L::kStage + L::kASize; };
  if (kbeg >= kend) return;
  // Fewer than 2^31 steps: K < 2^31 (the wrapper checks), a wgrad split < 2^30 positions
  // (backward_splits); kbeg and kend may pass 2^31 (wgrad's positions).
  const int steps = int((kend - kbeg + C::BK - 1) / C::BK);
  // Tensor cores: the stages' shared addresses, converted once (not in every step).
  const auto s0 = C::kMma ? mma::kept(mma::shared_addr(stages)) : mma::saddr{};
  constexpr uint32_t kStageB = L::kStage * sizeof(typename C::Tc), kAB = L::kASize * sizeof(typename C::Tc);
  uint32_t active = 1;
  if constexpr (C::kMma) active = mma::kept(uint32_t(acc.active(mvalid, nvalid)));
  auto load = [&](int i, int st) {  // step i into stage st = i % S, if there is a step i
    if (i < steps) {
      load_a(a_of(st), kbeg + int64_t(i) * C::BK);
      load_b(b_of(st), kbeg + int64_t(i) * C::BK);
    }
    async::commit();
  };
  for (int i = 0; i < S - 1; ++i) {
    load(i, i);
    if (i < steps) deposit();
  }
  // Step i, its operands in stage rd = i % S; the loads of step i + S - 1 go into the stage step
  // i - 1 used. Whether there is a step i + 1.
  auto step = [&](int i, int rd) {
    async::wait<S - 2>();  // this thread's copies of step i have landed
    __syncthreads();       // everyone's have; and everyone is done with step i - 1's stage
    load(i + S - 1, rd == 0 ? S - 1 : rd - 1);
    if constexpr (C::kMma) acc.step(s0 + rd * kStageB, s0 + rd * kStageB + kAB, active);
    else acc.step(a_of(rd), b_of(rd), mvalid);
    if (i + S - 1 < steps) deposit();
    return i + 1 < steps;
  };
  if constexpr (kUnroll) {  // the ring unrolled: every stage offset a constant
    for (int i0 = 0;; i0 += S)
      if (![&]<int... J>(std::integer_sequence<int, J...>) { return (... && step(i0 + J, J)); }(
              std::make_integer_sequence<int, S>{}))
        break;
  } else {  // the ring rolled (smaller code where the unrolled loop ran short of predicate registers)
    for (int i = 0, rd = 0; step(i, rd); ++i) rd = rd + 1 == S ? 0 : rd + 1;
  }
  async::wait<0>();
  __syncthreads();  // the caller reuses the stages
}
template <class C, class L, bool kUnroll = true, int R, class LoadA, class LoadB>
__device__ void block_gemm(Accum<C, L, R>& acc, typename C::Tc* stages, int64_t kbeg, int64_t kend, int mvalid,
                           int nvalid, const LoadA& load_a, const LoadB& load_b) {
  block_gemm<C, L, kUnroll>(acc, stages, kbeg, kend, mvalid, nvalid, load_a, load_b, [] {});
}

// B tiles from rows [row0, row0 + BN) of a packed row-major matrix (row pitch ld, a multiple of BK),
// one K step after another (block_gemm loads the steps in order): 16-byte copies (kAsync: cp.async,
// L2 only: each row is read once per block), zero rows past nrows. Each thread keeps the source of
// its vectors and moves it by BK a step.
template <class C, class L, bool kAsync>
struct RowLoader {
  using Tc = typename C::Tc;
  static constexpr int V = 16 / int(sizeof(Tc)), NV = C::BK / V, kTrips = (C::BN * NV + kThreads - 1) / kThreads;
  const Tc* p[kTrips];
  uint32_t ok[kTrips];  // the row exists (loads and stores: held, not recomputed a step)
  uint32_t d0;  // the first vector's offset in the tile (kept: not recomputed a step)
  __device__ RowLoader(const Tc* __restrict__ src, int64_t ld, int64_t row0, int64_t nrows) {
#pragma unroll
    for (int j = 0; j < kTrips; ++j) {
      const int e = int(threadIdx.x) + j * kThreads, n = e / NV, v = e % NV;
      ok[j] = e < C::BN * NV && row0 + n < nrows;
      if constexpr (!kAsync) ok[j] = mma::kept(ok[j]);
      p[j] = src + (ok[j] ? (row0 + n) * ld + v * V : 0);
    }
    d0 = mma::kept(uint32_t((threadIdx.x / NV) * L::LDB + (threadIdx.x % NV) * V));
  }
  __device__ void operator()(Tc* s) {
    static_assert(kThreads % NV == 0, "a thread's vectors sit kThreads / NV rows apart");
#pragma unroll
    for (int j = 0; j < kTrips; ++j) {
      const int e = int(threadIdx.x) + j * kThreads;
      if (C::BN * NV % kThreads != 0 && e >= C::BN * NV) break;
      Tc* d = s + d0 + j * (kThreads / NV) * L::LDB;
      if constexpr (kAsync) {
        async::copy16<false>(d, p[j], ok[j]);
      } else {
        uint4 val = {0u, 0u, 0u, 0u};
        if (ok[j]) val = __ldg(reinterpret_cast<const uint4*>(p[j]));
        put16<C>(d, val);
      }
      p[j] += C::BK;  // stays inside the row (or at its end) for valid rows; never read otherwise
    }
  }
};

// Column k of a GEMM K axis ordered (ky, kx, c) over nc channels: its (ky, kx, c). 32-bit: K < 2^31
// (the wrapper checks).
struct KPos {
  int ky, kx, c;
};
__device__ __forceinline__ KPos k_position(int k, int nc, int kw) {
  const int q = k / nc;
  return {q / kw, q % kw, k - q * nc};
}

// Input element (ih, iw, ci) of an image at base, zero in the padding.
template <typename T>
__device__ __forceinline__ bool patch_inside(const Shape& g, int ih, int iw) {
  return inside(ih, g.H) && inside(iw, g.W);
}

}  // namespace crm
}  // namespace pyalexnet
