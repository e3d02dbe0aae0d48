// Fused conv2d + ReLU + max-pool, CUDA kernels: implicit GEMM on the tensor cores, channels-last.
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
// Backward, from the pooled gradient and the codes alone (nothing full-resolution is saved for it).
// The un-pooled gradient (unpooled_gradient: each conv output gathers the pooled gradients whose
// saved maximum sits on it) is, in version 2 (the default), computed once into the workspace as
// dconv (N Hc Wc x Co, unpool kernel) and freed after the backward; version 1 recomputes it inside
// the GEMM loaders, (kh kw) times per conv output in dgrad and once per BN-column tile in wgrad:
//   dgrad: dx (N H W x Ci) = unpooled (N H W x kh kw Co, gathered) . W (kh kw Co x Ci); one block per
//          128 input pixels x BN input channels, the whole reduction in the block, dx written once;
//   wgrad: dw (Co x kh kw Ci) = unpooled^T . patches, split over conv positions into partial sums
//          (workspace), summed by a reduce kernel in a fixed order: deterministic, no atomics;
//   bias:  db = the sum of the pooled gradients that passed (same split + reduce).
// Arithmetic: bfloat16/float16 on the tensor cores (mma.sync m16n8k16, fragments by ldmatrix.x4 from
// 32-bit shared addresses: csrc/cuda/mma_sync.h) with float accumulation; float32 as TF32 on the
// tensor cores (m16n8k8) when allowed (torch.backends.cudnn.allow_tf32), else exact FP32 FMA; float64
// FMA. The tile loops are the same for all: only the warp tile's inner product (Accum) differs.
// Operand pipeline (block_gemm), version 2: cp.async (cuda/async_copy.h) copies the 16-byte input
// gathers, the weight rows, dgrad's dconv gathers and wgrad's tiles straight into a ring of 3
// shared-memory stages, two K steps ahead of the tensor cores, one barrier per step. wgrad's
// operands run along the channels (m and n), so its tiles are k-major (a row per conv position) and
// read by ldmatrix.trans (TF32: 32-bit LDS). 4-channel gathers (the forward's and wgrad's patches
// where Ci is not a multiple of 16 bytes) load through registers and store after the next step's
// products (block_gemm's deposit); element gathers (FMA; the backward where Co is not a multiple of
// 16 bytes) still load and store in place. TF32: the packed weights are rounded once a call, dconv
// when written; raw input tiles round on the fragments. The forward's loaders keep each thread's
// rows in registers and walk (ky, kx, c) by one K step at a time (no division a step). Values the
// main loops reuse are computed once and held (mma::kept) where nvcc would recompute them each step.
// Version 1 (loads and stores, 2 stages, un-pooling in the loaders) stays selectable,
// PYALEXNET_CONV_VERSION=1, so that one GPU run times both (bench/compare.py's ours_v1); both give
// the same bits (tests).
// Machine code: `python bench/kernel_report.py --filter conv` prints registers, spills and, per
// kernel, the main loop's instructions per K step, its HMMA share, ldmatrix and generic loads;
// tests/test_kernel_code.py checks no spills and no generic loads in the tensor-core main loops.
// Counts and the performance model built on them: bench/results/2026-12-03-cuda-main-loop-sass.md
// (no GPU has run these kernels yet).
// Index arithmetic inside the K loops and the forward's epilogue is 32-bit (K, image rows and
// columns < 2^31, which the wrapper checks; tile-local indices < kBM x BN; offsets stay 64-bit),
// and dgrad divides by the stride only where it is not 1.
// Compiled without nvcc (tests/emulation), the same source runs in the CPU emulation of CUDA.
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
namespace {

constexpr int kThreads = 256;  // 8 warps
constexpr int kBM = 128;       // rows of a GEMM tile

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
// Channels of version 2's un-pooled gradient dconv (N x Hc x Wc x Cd): Co rounded up to the K step,
// zero past Co, so that both backward GEMMs copy it by 16-byte vectors whatever Co, a dgrad K step
// being one tap's BK channels (its packed weights wt carry the same zero channels). Version 1
// un-pools inside its loaders, over Co.
template <class C> constexpr int64_t dconv_channels(int64_t Co) { return (Co + C::BK - 1) / C::BK * C::BK; }
template <class C> constexpr int64_t dgrad_channels(int version, int64_t Co) {
  return version >= 2 ? dconv_channels<C>(Co) : Co;
}

// Blocks per SM the GEMM kernels' registers must allow: 2 for FMA (128 registers a thread); 1 for
// the tensor cores, whose 128 x 128 tile holds 64 float accumulators a thread (at a cap of 128
// registers ptxas spilled in 11 of their variants); their 68 KB of shared memory allow 3.
template <typename T, bool kTF32> constexpr int kMinBlocks = Cfg<T, kTF32>::kMma ? 1 : 2;

// Shared memory of a GEMM tile: S stages of A (kBM x BK, row-major) and B (BN x BK: B's columns,
// k contiguous), and afterwards the result C (kBM x BN, acc) in the same bytes. Row pitches keep every
// ldmatrix row and 16-byte store aligned; the padding puts the 8 rows of an ldmatrix phase in
// distinct banks (80-byte rows, 272 k-major).
// S = 3 (cp.async: two K steps in flight while a third is multiplied). The bytes are dynamic shared
// memory (launch_gemm): 66 KB for a 128 x 128 tensor-core tile (the float result), 45 KB with FMA.
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

// The layout the forward and dgrad kernels use, named once for the kernel and for its launch
// (launch_gemm's bytes): 3 stages with cp.async, else 2. wgrad's: WgradLay.
template <class C, bool kAsync> using GemmLay = Lay<C, kAsync ? 3 : 2>;

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

// The block's 128 x BN result. Tensor cores: warp w owns the 32 x BN/2 sub-tile at rows 32 (w % 4),
// columns BN/2 (w / 4): 2 x BN/16 mma.sync tiles of 16 x 8 (csrc/cuda/mma_sync.h), fragments read by
// ldmatrix.x4 from 32-bit shared addresses (each lane's row offsets computed once, in init); a warp
// whose rows all lie past the tile's valid rows skips its products. k-major tiles (kKMajor) are read
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
    wm = warp % 4, wn = warp / 4;
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
// products of step i). S = 3 with cp.async: two steps in flight, nothing in registers.
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

}  // namespace

// ------------------------------------------------------------------------------------------------
// Forward
// ------------------------------------------------------------------------------------------------
// x: N x H x W x Ci; w: Co x Kp (Tc); bias: Co (acc) or nullptr; out: N x Hp x Wp x Co;
// code: N x Hp x Wcode x Co. Block (tile, channel tile): tile = (image group, pooled row tile,
// pooled column tile) of plan_forward_tile; kGather: how x is gathered (Gather: w's K runs over
// packed_channels(Ci) a tap); kAsync: the 16-byte gathers and the weight rows by cp.async through 3
// stages (else loads and stores, 2).
template <typename T, bool kTF32, int kGather, bool kAsync>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, kTF32>) conv_relu_maxpool_forward_kernel_impl(
    const T* __restrict__ x, const typename Cfg<T, kTF32>::Tc* __restrict__ w, int64_t Kp,
    const typename Cfg<T, kTF32>::acc* __restrict__ bias, T* __restrict__ out, uint8_t* __restrict__ code,
    Shape g, ForwardTile t) {
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
        const int64_t m = m0 + tid, gg = m / per, rem = m % per;
        const int64_t r = r0 + (rem / t.CW) * step_h, c = c0 + (rem % t.CW) * step_w, n = gi * t.G + gg;
        if (n < g.N && r < g.Hc && c < g.Wc)
          base = n * img, ih = int(input_start(r, g.sh, g.ph)), iw = int(input_start(c, g.sw, g.pw));
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
    } else if (bits) {  // 1x1 windows: bias + ReLU, and 8 mask bits to a byte
      // Tile-local indices (a tile holds at most kBM conv outputs) in 32-bit arithmetic.
      const int bytes = int(t.PW + 7) / 8, PHB = int(t.PH) * bytes, P8 = int(t.G) * PHB;
      for (int e = tid; e < P8 * C::BN; e += kThreads) {
        const int j = e % C::BN, pi = e / C::BN, gg = pi / PHB, rem = pi - gg * PHB, pp = rem / bytes;
        const int bq = rem - pp * bytes;
        const int64_t co = co0 + j, n = gi * t.G + gg, p = tp * t.PH + pp, q0 = tq * t.PW + 8 * bq;
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

// dst = src rounded to TF32 (nearest, ties away: as the fragments round; in place where dst is src):
// the packed float32 weights and the weight gradient's copy of x, once a call, so that the tensor
// cores' K steps need not round them.
__global__ void __launch_bounds__(kThreads) conv_relu_maxpool_round_tf32_kernel_impl(const float* src, float* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * kThreads + threadIdx.x; i < n; i += int64_t(gridDim.x) * kThreads)
    dst[i] = tf32_round(src[i]);
}

// ------------------------------------------------------------------------------------------------
// Backward
// ------------------------------------------------------------------------------------------------
// The un-pooled gradient, materialised (version 2): dconv (N x Hc x Wc x Cd, compute type, zero
// past Co: dconv_channels) at each conv output = the sum of the pooled gradients whose window's
// saved maximum sits there, rounded to the compute type exactly as the version-1 GEMM loaders round it. gy: N x Hp x Wp x Co; code:
// N x Hp x Wcode x Co. Computed once per conv output, where version 1 recomputes it in every
// (ky, kx) of the data gradient and every column tile of the weight gradient.
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

// Where the A operands of the backward GEMMs come from: kFused, un-pooled inside the loader (version
// 1); kDconvVec, 16-byte cp.async copies of the materialised dconv (version 2, its Cd channels a
// multiple of the K step); kDconvVecUnit, the same for dgrad at stride 1, each thread's rows in
// registers and (ky, kx, co) walked a step at a time.
enum Src : int { kFused, kDconvVec, kDconvVecUnit };

// wgrad's layout, for the kernel and its launch: k-major tiles through 3 stages when both operands
// come by 16-byte vectors along the channels (the un-pooled gradient as kDconvVec, the patches as
// kVecX kVectors or kQuads), else 2 stages.
template <class C, int kSrc, int kGatherX>
using WgradLay = Lay<C, kSrc == kDconvVec && kGatherX != kElements ? 3 : 2, kSrc == kDconvVec && kGatherX != kElements>;

// dgrad's A tiles at stride > 1 (kDconvVec), one K step (BK channels of one tap) after another
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
// gy: N x Hp x Wp x Co; code: N x Hp x Wcode x Co (kFused, Cd = Co), or dconv: N x Hc x Wc x Cd
// (compute type, Cd = dgrad_channels); wt: Ci x Kdp (Tc), zero for co >= Co. Block: 128
// consecutive input pixels x BN input channels. kAsync: the weight rows (and with
// kDconvVec/kDconvVecUnit the gradient) by cp.async through 3 stages.
template <typename T, bool kTF32, bool kAsync, int kSrc>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, kTF32>) conv_relu_maxpool_dgrad_kernel_impl(
    const T* __restrict__ gy, const uint8_t* __restrict__ code, const typename Cfg<T, kTF32>::Tc* __restrict__ dconv,
    const typename Cfg<T, kTF32>::Tc* __restrict__ wt, int64_t Kdp, T* __restrict__ dx, Shape g) {
  using C = Cfg<T, kTF32>;
  using Tc = typename C::Tc;
  using acc_t = typename C::acc;
  using L = GemmLay<C, kAsync>;
  PYA_DYNAMIC_SHARED(unsigned char, smem);  // L::kBytes, set by launch_gemm
  __shared__ int64_t rn[kBM];         // per tile row: image, -1 past the batch
  __shared__ int rih[kBM], riw[kBM];  // input row/column + padding: conv row = (rih - ky) / sh
  Tc* stages = reinterpret_cast<Tc*>(smem);
  acc_t* sC = reinterpret_cast<acc_t*>(smem);
  const int tid = threadIdx.x;
  const int64_t pix0 = int64_t(blockIdx.x) * kBM, ci0 = int64_t(blockIdx.y) * C::BN, HW = g.H * g.W;
  const int64_t Cd = kSrc == kFused ? g.Co : dconv_channels<C>(g.Co);
  const int64_t total = g.N * HW, K = g.kh * g.kw * Cd;
  if (tid < kBM) {
    const int64_t pix = pix0 + tid;
    rn[tid] = pix < total ? pix / HW : -1;
    rih[tid] = int((pix % HW) / g.W + g.ph), riw[tid] = int(pix % g.W + g.pw);
  }
  __syncthreads();
  // Conv output (pr, pc) = (rr / sh, cc / sw) of image rn[m] feeds input pixel row m at (ky, kx) if
  // it exists. 32-bit arithmetic, and no division at all for stride 1 (every AlexNet layer whose
  // input needs a gradient).
  const int sh = int(g.sh), sw = int(g.sw), Hc32 = int(g.Hc), Wc32 = int(g.Wc), Cd32 = int(Cd), kw32 = int(g.kw);
  const bool unit = sh == 1 && sw == 1;
  auto feeds = [&](int m, int rr, int cc, int& pr, int& pc) {
    pr = unit ? rr : rr / sh, pc = unit ? cc : cc / sw;
    return rn[m] >= 0 && rr >= 0 && cc >= 0 && (unit || (pr * sh == rr && pc * sw == cc)) && pr < Hc32 && pc < Wc32;
  };
  // kDconvVecUnit: thread tid copies vector tid % NV of the rows tid / NV + (kThreads / NV) j: conv
  // output (rih - ky, riw - kx) at offset roff - ((ky Wc + kx) Cd - co0) of dconv.
  constexpr int V = 16 / int(sizeof(Tc)), NV = C::BK / V, RPT = kSrc == kDconvVecUnit ? kBM * NV / kThreads : 1;
  int64_t roff[RPT];
  int rh[RPT], rw[RPT];  // far negative past the batch
  if constexpr (kSrc == kDconvVecUnit) {
    static_assert(kBM * NV % kThreads == 0 && kThreads % NV == 0, "whole rows of vectors per thread");
#pragma unroll
    for (int j = 0; j < RPT; ++j) {
      const int m = tid / NV + (kThreads / NV) * j;
      const bool live = rn[m] >= 0;
      rh[j] = live ? rih[m] : -(1 << 30), rw[j] = live ? riw[m] : -(1 << 30);
      roff[j] = live ? ((rn[m] * g.Hc + rih[m]) * g.Wc + riw[m]) * Cd + (tid % NV) * V : 0;
    }
  }
  int wky = 0, wkx = 0, wco = 0;  // kDconvVecUnit: the next step's (ky, kx, first channel)
  int64_t koff = 0;               // and co0 - (ky Wc + kx) Cd
  DgradStridedRows<C, L> strided;
  if constexpr (kSrc == kDconvVec) {
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
  auto load_a = [&](Tc* s, int64_t k0) {
    if constexpr (kSrc == kDconvVecUnit) {
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
    } else if constexpr (kSrc == kDconvVec) {  // one (ky, kx) and BK consecutive channels: 16-byte copies
      strided(s);
    } else {  // kFused
      const int kk = tid % C::BK;
      const int k = int(k0) + kk;
      const auto [ky, kx, co] = k < K ? k_position(k, Cd32, kw32) : KPos{0, 0, 0};
      for (int m = tid / C::BK; m < kBM; m += kThreads / C::BK) {
        int pr, pc;
        const bool ok = feeds(m, rih[m] - ky, riw[m] - kx, pr, pc) && k < K;
        s[m * L::LDA + kk] = to_c<C>(ok ? unpooled_at<acc_t>(g, gy, code, rn[m], pr, pc, co) : acc_t(0));
      }
    }
  };
  RowLoader<C, L, kAsync> rows_b(wt, Kdp, ci0, g.Ci);
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
  __device__ void operator()(Tc* s) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      async::copy16<false>(s + d[j], p[j], left[j] > 0);
      p[j] += step_, left[j] -= C::BK;
    }
  }
};
template <class T, class C, class L>
struct WgradPatchRows {
  using Tc = typename C::Tc;
  static constexpr int V = 16 / int(sizeof(T)), NV = C::BN / V, R = (C::BK * NV + kThreads - 1) / kThreads;
  int64_t xo[R];  // offset in x of this copy's patch element (may lie outside x when !ok)
  int left[R];    // positions of the split from this copy's on; far negative for a column past K
  int oh[R], ow[R], ih0[R], iw0[R];  // conv row/column; input row/column at conv (0, 0)
  const T* x_;
  int64_t step_o, row_o, img_o;  // x offsets: BK positions along a row, a conv row on, an image on
  int H_, W_, Hc_, Wc_, sh_, sw_;
  __device__ void operator()(Tc* s) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int e = int(threadIdx.x) + j * kThreads;
      if (C::BK * NV % kThreads != 0 && e >= C::BK * NV) break;
      const int ih = ih0[j] + oh[j] * sh_, iw = iw0[j] + ow[j] * sw_;
      const bool ok = left[j] > 0 && uint32_t(ih) < uint32_t(H_) && uint32_t(iw) < uint32_t(W_);
      async::copy16<true>(s + (e / NV) * L::LDB + (e % NV) * V, x_ + xo[j], ok);  // read only when ok
      left[j] -= C::BK, xo[j] += step_o;
      for (ow[j] += C::BK; ow[j] >= Wc_;) {  // BK positions on: the next conv row(s), image(s)
        ow[j] -= Wc_, xo[j] += row_o;
        if (++oh[j] == Hc_) oh[j] = 0, xo[j] += img_o;
      }
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
  int64_t coff[R];         // offset in x of quad j's first element from the position's input pixel
  int ih0[R], iw0[R], nc[R];  // its tap's row/column offsets (ky - ph, kx - pw); channels inside x
  int64_t po;              // offset in x of this thread's position's input pixel (oh sh, ow sw)
  int left, oh, ow;        // positions of the split from this one on; conv row/column
  Tc quad[R][4];
  Tc* pend_s;
  uint32_t d0;             // offset of quad 0 in the tile
  const T* x_;
  int64_t step_o, row_o, img_o;  // as WgradPatchRows'
  int H_, W_, Hc_, Wc_, sh_, sw_;
  __device__ void operator()(Tc* s) {
    static_assert(C::kMma && kThreads % C::BK == 0 && C::BN == 4 * Q * R, "whole rows of quads (tensor cores)");
    const int ohs = oh * sh_, ows = ow * sw_;
    const T* xp = x_ + po;
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const int ih = ohs + ih0[j], iw = ows + iw0[j];
      const bool ok = (left > 0) & (uint32_t(ih) < uint32_t(H_)) & (uint32_t(iw) < uint32_t(W_));
      const T* p = xp + coff[j];  // read only when ok
#pragma unroll
      for (int c = 0; c < 4; ++c)  // nc >= 1 inside K, 0 past it where ih0 keeps ok false
        quad[j][c] = ok && (c == 0 || c < nc[j]) ? p[c] : Tc(to_c<C>(typename C::acc(0)));
    }
    pend_s = s;
    left -= C::BK, po += step_o;
    for (ow += C::BK; ow >= Wc_;) {  // BK positions on: the next conv row(s), image(s)
      ow -= Wc_, po += row_o;
      if (++oh == Hc_) oh = 0, po += img_o;
    }
  }
  __device__ void deposit() const {
#pragma unroll
    for (int j = 0; j < R; ++j) store_vec(pend_s + d0 + 4 * Q * j, quad[j]);
  }
};

// Partial weight gradients: part[s] (Co x K, k = (ky kw + kx) Ci + ci) = sum over conv positions
// [s p_chunk, (s + 1) p_chunk) of unpooled gradient (Co) x input patch (K). Block: 128 output
// channels x BN columns of K x one split.
// kSrc: kFused (un-pooled inside the loader, version 1) or kDconvVec (16-byte loads of dconv along
// its Cd channels); kVecX: the patches
// by 16-byte loads along ci (Ci a multiple of 16 bytes of T). With both, the tiles are k-major
// (Lay's kKMajor: a row per conv position) and filled by cp.async through 3 stages. With one, its
// 16-byte loads go through registers and are stored down a column (k = position contiguous): lanes
// take consecutive positions, so that their 2- or 4-byte stores fall in distinct banks.
template <typename T, bool kTF32, int kSrc, int kVecX>
__global__ void __launch_bounds__(kThreads, kMinBlocks<T, kTF32>) conv_relu_maxpool_wgrad_kernel_impl(
    const T* __restrict__ gy, const uint8_t* __restrict__ code, const typename Cfg<T, kTF32>::Tc* __restrict__ dconv,
    const T* __restrict__ x, typename Cfg<T, kTF32>::acc* __restrict__ part, Shape g, int64_t p_chunk) {
  using C = Cfg<T, kTF32>;
  using Tc = typename C::Tc;
  using acc_t = typename C::acc;
  using L = WgradLay<C, kSrc, kVecX>;
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
  WgradDconvRows<C, L> ka{};
  WgradPatchRows<T, C, L> kb{};
  WgradPatchQuads<T, C, L> kq{};
  if constexpr (kKM) {
    using PA = WgradDconvRows<C, L>;
    ka.step_ = int64_t(C::BK) * Cd;
#pragma unroll
    for (int j = 0; j < PA::R; ++j) {
      const int e = tid + j * kThreads;
      const int64_t co = co0 + (e % PA::NV) * PA::V, pos = pbeg + e / PA::NV;
      const bool in = co < g.Co;
      ka.left[j] = in ? int(pend - pos) : -(1 << 30);
      ka.p[j] = dconv + (in ? pos * Cd + co : 0);
      ka.d[j] = mma::kept(uint32_t((e / PA::NV) * L::LDA + (e % PA::NV) * PA::V));
    }
    const int64_t step_o = C::BK * g.sw * g.Ci;                 // ow + BK
    const int64_t row_o = (g.sh * g.W - g.Wc * g.sw) * g.Ci;      // ow - Wc, oh + 1
    const int64_t img_o = (g.H * g.W - g.Hc * g.sh * g.W) * g.Ci;  // oh - Hc, n + 1
    if constexpr (kQ) {
      using PB = WgradPatchQuads<T, C, L>;
      kq.x_ = x;
      kq.H_ = int(g.H), kq.W_ = int(g.W), kq.Hc_ = int(g.Hc), kq.Wc_ = int(g.Wc), kq.sh_ = int(g.sh), kq.sw_ = int(g.sw);
      kq.step_o = step_o, kq.row_o = row_o, kq.img_o = img_o;
      const int64_t pos = pbeg + tid / PB::Q, n = pos / HWc;
      kq.oh = int((pos % HWc) / g.Wc), kq.ow = int(pos % g.Wc), kq.left = int(pend - pos);
      kq.po = ((n * g.H + int64_t(kq.oh) * g.sh) * g.W + int64_t(kq.ow) * g.sw) * g.Ci;
      kq.d0 = mma::kept(uint32_t((tid / PB::Q) * L::LDB + (tid % PB::Q) * 4));
#pragma unroll
      for (int j = 0; j < PB::R; ++j) {
        const int c = 4 * (tid % PB::Q + PB::Q * j);  // the quad's first column
        // past K no element: ok stays false (or, in an image of more than 2^30 rows, reads a valid
        // element of x into a column that is not stored)
        kq.ih0[j] = cci[c] >= 0 ? cky[c] - int(g.ph) : -(1 << 30), kq.iw0[j] = ckx[c] - int(g.pw);
        kq.nc[j] = cci[c] >= 0 ? int(g.Ci) - cci[c] : 0;
        kq.coff[j] = (int64_t(cky[c] - g.ph) * g.W + kq.iw0[j]) * g.Ci + (cci[c] >= 0 ? cci[c] : 0);
      }
    } else {
      using PB = WgradPatchRows<T, C, L>;
      kb.x_ = x;
      kb.H_ = int(g.H), kb.W_ = int(g.W), kb.Hc_ = int(g.Hc), kb.Wc_ = int(g.Wc), kb.sh_ = int(g.sh), kb.sw_ = int(g.sw);
      kb.step_o = step_o, kb.row_o = row_o, kb.img_o = img_o;
#pragma unroll
      for (int j = 0; j < PB::R; ++j) {
        const int e = tid + j * kThreads, c = e < C::BK * PB::NV ? (e % PB::NV) * PB::V : 0;
        const int64_t pos = pbeg + e / PB::NV, n = pos / HWc;
        const int oh = int((pos % HWc) / g.Wc), ow = int(pos % g.Wc);
        kb.left[j] = cci[c] >= 0 ? int(pend - pos) : -(1 << 30), kb.oh[j] = oh, kb.ow[j] = ow;
        kb.ih0[j] = cky[c] - int(g.ph), kb.iw0[j] = ckx[c] - int(g.pw);
        kb.xo[j] = ((n * g.H + kb.ih0[j] + int64_t(oh) * g.sh) * g.W + kb.iw0[j] + int64_t(ow) * g.sw) * g.Ci + cci[c];
      }
    }
  }
  auto load_a = [&](Tc* s, int64_t k0) {  // A[co][p]: the unpooled gradient
    const int kk = tid % C::BK;
    const int64_t p = k0 + kk;  // dconv's row of position p: p Cd (positions are n, r, c in order)
    if constexpr (kKM) {  // row r of the tile = kBM channels of position k0 + r: 16-byte copies
      ka(s);
    } else if constexpr (kSrc == kDconvVec) {
      constexpr int V = 16 / int(sizeof(Tc));
#pragma unroll 1
      for (int v = tid / C::BK; v < kBM / V; v += kThreads / C::BK) {
        uint4 val = {0u, 0u, 0u, 0u};
        if (p < pend && co0 + v * V < g.Co) val = __ldg(reinterpret_cast<const uint4*>(dconv + p * Cd + co0 + v * V));
        const Tc* e = reinterpret_cast<const Tc*>(&val);
#pragma unroll
        for (int i = 0; i < V; ++i) s[(v * V + i) * L::LDA + kk] = e[i];
      }
    } else {  // kFused
      const Pos ps = position(k0);
      for (int m = tid / C::BK; m < kBM; m += kThreads / C::BK) {
        const bool ok = ps.n >= 0 && co0 + m < g.Co;
        s[m * L::LDA + kk] = to_c<C>(ok ? unpooled_at<acc_t>(g, gy, code, ps.n, ps.r, ps.c, co0 + m) : acc_t(0));
      }
    }
  };
  auto load_b = [&](Tc* s, int64_t k0) {  // B[k][p]: the input patch of position p
    if constexpr (kKM) {  // row r of the tile = BN columns k of position k0 + r
      if constexpr (kQ) kq(s);
      else kb(s);
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
    if constexpr (kQ) kq.deposit();
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

// ------------------------------------------------------------------------------------------------
// Host side
// ------------------------------------------------------------------------------------------------
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The weight gradient's patch gathers (as the forward's Gather): kVectors (16-byte copies, Ci a
// multiple of 16 bytes), else on the tensor cores with the un-pooled gradient by 16-byte copies
// (version 2) kQuads, else kElements.
template <class C>
Gather wgrad_gather(const BackwardArgs& a) {
  if (a.g.Ci % (16 / int64_t(sizeof(typename C::Tc))) == 0) return kVectors;
  return C::kMma && a.version >= 2 ? kQuads : kElements;
}
// Channels a tap along the weight gradient's GEMM columns (its partial sums' K): kQuads rounds Ci
// up to 4 (the kernel's Cp), the others keep Ci.
template <class C>
int64_t wgrad_channels(const BackwardArgs& a) {
  return wgrad_gather<C>(a) == kQuads ? quad_channels(a.g.Ci) : a.g.Ci;
}

// How the backward splits its reductions over blocks (a pure function of the arguments, so that
// the workspace size and the launches agree).
struct Splits {
  int64_t w_chunk, w_splits;  // weight gradient: conv positions per split, splits
  int64_t b_rows, b_splits;   // bias gradient: pooled outputs per split, splits
};

template <class C>
Splits backward_splits(const BackwardArgs& a) {
  const Shape& g = a.g;
  const int64_t target = 2 * int64_t(a.sm_count > 0 ? a.sm_count : 1);
  Splits s{};
  const int64_t K = g.kh * g.kw * wgrad_channels<C>(a), P = g.N * g.Hc * g.Wc, steps = ceil_div(P, C::BK);
  const int64_t tiles = ceil_div(K, C::BN) * ceil_div(g.Co, kBM);
  const int64_t cap = (int64_t(256) << 20) / (g.Co * K * int64_t(sizeof(typename C::acc)));  // <= 256 MiB
  int64_t n = ceil_div(target, tiles);
  n = n < steps ? n : steps;
  n = n < cap ? n : cap;
  n = n > 1 ? n : 1;
  const int64_t fit = ceil_div(steps, (int64_t(1) << 30) / C::BK);  // < 2^30 positions a split (32-bit counts)
  n = n > fit ? n : fit;
  s.w_chunk = ceil_div(steps, n) * C::BK;
  s.w_splits = ceil_div(P, s.w_chunk);
  const int64_t R = g.N * g.Hp * g.Wp, ct = ceil_div(g.Co, 64);
  int64_t nb = ceil_div(target, ct);
  nb = nb < ceil_div(R, 64) ? nb : ceil_div(R, 64);
  nb = nb > 1 ? nb : 1;
  s.b_rows = ceil_div(R, nb);
  s.b_splits = ceil_div(R, s.b_rows);
  return s;
}

// Workspace: the weight gradient's partial sums, the bias gradient's, then (version 2, when dx or
// dw is asked) the un-pooled gradient dconv; each part starts 16-byte aligned.
struct Workspace {
  int64_t w, b, dconv, total;  // byte offsets of the parts, and the size
};

template <class C>
Workspace workspace_of(const BackwardArgs& a, const Splits& s) {
  const Shape& g = a.g;
  const int64_t K = g.kh * g.kw * wgrad_channels<C>(a), acc = sizeof(typename C::acc);
  const int64_t w = a.dw ? s.w_splits * g.Co * K * acc : 0, b = a.db ? s.b_splits * g.Co * acc : 0;
  const int64_t d = a.version >= 2 && (a.dx || a.dw) ? g.N * g.Hc * g.Wc * dconv_channels<C>(g.Co) * int64_t(sizeof(typename C::Tc)) : 0;
  Workspace ws{0, ceil_div(w, 16) * 16, 0, 0};
  ws.dconv = ws.b + ceil_div(b, 16) * 16;
  ws.total = ws.dconv + d;
  return ws;
}

dim3 grid_of(int64_t x, int64_t y, int64_t z = 1) { return dim3(unsigned(x), unsigned(y), unsigned(z)); }

// Launches a GEMM kernel with its tile's shared memory (L::kBytes) as dynamic shared memory: the
// tensor-core tiles (128 x 128, three stages) need more than the 48 KB a kernel gets by default.
template <auto kKernel, class... A>
void launch_gemm(dim3 grid, int smem, cudaStream_t stream, A... args) {
  if (smem > 48 * 1024)  // if this fails, so does the launch, which the caller checks
    (void)cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  PYA_LAUNCH(grid, kThreads, smem, stream, kKernel)(args...);
}

template <typename T, bool kTF32>
cudaError_t forward(const ForwardArgs& a, cudaStream_t stream) {
  using C = Cfg<T, kTF32>;
  const Shape& g = a.g;
  const ForwardTile t = plan_forward_tile(g.N, g.Hp, g.Wp, g.pkh, g.pkw, g.psh, g.psw, kBM);
  const dim3 grid = grid_of(t.count(), ceil_div(g.Co, C::BN));
  const auto* x = static_cast<const T*>(a.x);
  const auto* w = static_cast<const typename C::Tc*>(a.w);
  const auto* bias = static_cast<const typename C::acc*>(a.bias);
  auto* out = static_cast<T*>(a.out);
  auto* code = static_cast<uint8_t*>(a.code);
  auto launch = [&](auto gather, auto async_copy) {
    constexpr int G = decltype(gather)::value;
    constexpr bool A = decltype(async_copy)::value;
    launch_gemm<conv_relu_maxpool_forward_kernel_impl<T, kTF32, G, A>>(grid, GemmLay<C, A>::kBytes, stream, x, w, a.Kp, bias, out, code, g, t);
  };
  using Async = std::true_type;
  using Sync = std::false_type;
  using Vec = std::integral_constant<int, kVectors>;
  using Other = std::integral_constant<int, C::kMma ? kQuads : kElements>;
  const bool v2 = a.version >= 2;
  if (gather_of<C>(g.Ci) == kVectors) v2 ? launch(Vec{}, Async{}) : launch(Vec{}, Sync{});
  else v2 ? launch(Other{}, Async{}) : launch(Other{}, Sync{});
  return cudaGetLastError();
}

template <typename T, bool kTF32>
cudaError_t backward(const BackwardArgs& a, cudaStream_t stream) {
  using C = Cfg<T, kTF32>;
  using acc_t = typename C::acc;
  using Tc = typename C::Tc;
  const Shape& g = a.g;
  const Splits s = backward_splits<C>(a);
  const Workspace wl = workspace_of<C>(a, s);
  const auto* gy = static_cast<const T*>(a.gy);
  const auto* code = static_cast<const uint8_t*>(a.code);
  const int64_t K = g.kh * g.kw * g.Ci;
  auto* ws = static_cast<unsigned char*>(a.workspace);
  auto* wpart = reinterpret_cast<acc_t*>(ws + wl.w);
  auto* bpart = reinterpret_cast<acc_t*>(ws + wl.b);
  const bool v2 = a.version >= 2 && (a.dx || a.dw);
  auto* dconv = v2 ? reinterpret_cast<Tc*>(ws + wl.dconv) : nullptr;
  const auto* x = static_cast<const T*>(a.x);
  const auto* wt = static_cast<const Tc*>(a.wt);
  auto* dx = static_cast<T*>(a.dx);
  if (const int64_t total = g.N * g.Hc * g.Wc * dconv_channels<C>(g.Co); v2 && total > 0) {
    constexpr int64_t V = 16 / int64_t(sizeof(T));
    if (g.Co % V == 0) {  // 16-byte loads of gy and the codes
      const int64_t blocks = ceil_div(total / V, kThreads);
      PYA_LAUNCH(grid_of(blocks < 65536 ? blocks : 65536, 1), kThreads, 0, stream,
                 conv_relu_maxpool_unpool_vec_kernel_impl<T, kTF32>)(gy, code, dconv, g);
    } else {
      const int64_t blocks = ceil_div(total, kThreads);
      PYA_LAUNCH(grid_of(blocks < 65536 ? blocks : 65536, 1), kThreads, 0, stream,
                 conv_relu_maxpool_unpool_kernel_impl<T, kTF32>)(gy, code, dconv, g);
    }
  }
  if (a.db) {
    PYA_LAUNCH(grid_of(ceil_div(g.Co, 64), s.b_splits), kThreads, 0, stream,
               conv_relu_maxpool_bias_grad_kernel_impl<T, acc_t>)(gy, code, bpart, g, s.b_rows);
    PYA_LAUNCH(grid_of(ceil_div(g.Co, kThreads), 1), kThreads, 0, stream, conv_relu_maxpool_reduce_kernel_impl<T, acc_t>)(
        bpart, s.b_splits, g.Co, g.Co, static_cast<T*>(a.db), g, int64_t(0));
  }
  if (a.dw) {
    const int64_t cw = wgrad_channels<C>(a), Kw = g.kh * g.kw * cw;  // the partial sums' columns
    const dim3 grid = grid_of(ceil_div(Kw, C::BN), ceil_div(g.Co, kBM), s.w_splits);
    auto launch = [&](auto src, auto gather) {
      constexpr int S = decltype(src)::value, G = decltype(gather)::value;
      launch_gemm<conv_relu_maxpool_wgrad_kernel_impl<T, kTF32, S, G>>(grid, WgradLay<C, S, G>::kBytes, stream, gy, code, dconv, x, wpart, g, s.w_chunk);
    };
    using Fused = std::integral_constant<int, kFused>;
    using Vec = std::integral_constant<int, kDconvVec>;
    using XElems = std::integral_constant<int, kElements>;
    using XVec = std::integral_constant<int, kVectors>;
    using XQuads = std::integral_constant<int, C::kMma ? kQuads : kElements>;
    const Gather gx = wgrad_gather<C>(a);
    if (!v2) launch(Fused{}, XElems{});
    else if (gx == kVectors) launch(Vec{}, XVec{});
    else launch(Vec{}, XQuads{});  // gx: kQuads on the tensor cores, else kElements
    PYA_LAUNCH(grid_of(ceil_div(g.Co * K, kThreads), 1), kThreads, 0, stream, conv_relu_maxpool_reduce_kernel_impl<T, acc_t>)(
        wpart, s.w_splits, g.Co * Kw, g.Co * K, static_cast<T*>(a.dw), g, cw);
  }
  if (a.dx) {
    const dim3 grid = grid_of(ceil_div(g.N * g.H * g.W, kBM), ceil_div(g.Ci, C::BN));
    if (!v2)
      launch_gemm<conv_relu_maxpool_dgrad_kernel_impl<T, kTF32, false, kFused>>(grid, GemmLay<C, false>::kBytes, stream, gy, code, dconv, wt, a.Kdp, dx, g);
    else if (g.sh == 1 && g.sw == 1)
      launch_gemm<conv_relu_maxpool_dgrad_kernel_impl<T, kTF32, true, kDconvVecUnit>>(grid, GemmLay<C, true>::kBytes, stream, gy, code, dconv, wt, a.Kdp, dx, g);
    else
      launch_gemm<conv_relu_maxpool_dgrad_kernel_impl<T, kTF32, true, kDconvVec>>(grid, GemmLay<C, true>::kBytes, stream, gy, code, dconv, wt, a.Kdp, dx, g);
  }
  return cudaGetLastError();
}

template <class F>
auto dispatch(DType dtype, bool tf32, F&& f) {
  switch (dtype) {
    case DType::kHalf: return f(Cfg<__half, false>{}, static_cast<__half*>(nullptr));
    case DType::kBFloat16: return f(Cfg<__nv_bfloat16, false>{}, static_cast<__nv_bfloat16*>(nullptr));
    case DType::kDouble: return f(Cfg<double, false>{}, static_cast<double*>(nullptr));
    case DType::kFloat:
    default:
      return tf32 ? f(Cfg<float, true>{}, static_cast<float*>(nullptr)) : f(Cfg<float, false>{}, static_cast<float*>(nullptr));
  }
}

}  // namespace

cudaError_t launch_conv_relu_maxpool_forward(const ForwardArgs& a, cudaStream_t stream) {
  return dispatch(a.dtype, a.tf32, [&](auto c, auto* tp) {
    using T = std::remove_pointer_t<decltype(tp)>;
    return forward<T, decltype(c)::kTf32>(a, stream);
  });
}

cudaError_t launch_conv_relu_maxpool_backward(const BackwardArgs& a, cudaStream_t stream) {
  return dispatch(a.dtype, a.tf32, [&](auto c, auto* tp) {
    using T = std::remove_pointer_t<decltype(tp)>;
    return backward<T, decltype(c)::kTf32>(a, stream);
  });
}

int64_t conv_relu_maxpool_backward_workspace_bytes(const BackwardArgs& a) {
  return dispatch(a.dtype, a.tf32, [&](auto c, auto*) {
    using C = decltype(c);
    return workspace_of<C>(a, backward_splits<C>(a)).total;
  });
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

int64_t conv_relu_maxpool_dgrad_channels(DType dtype, bool tf32, int version, int64_t Co) {
  return dispatch(dtype, tf32, [&](auto c, auto*) { return dgrad_channels<decltype(c)>(version, Co); });
}

int64_t conv_relu_maxpool_k_multiple(DType dtype, bool tf32) {
  return dispatch(dtype, tf32, [&](auto c, auto*) { return int64_t(decltype(c)::BK); });
}

}  // namespace crm
}  // namespace pyalexnet
