// Fused softmax + cross-entropy, CPU kernels.
//
// Fused: log-softmax, the (weighted, smoothed) negative log-likelihood and the reduction, in one
// parallel pass over the rows; backward writes softmax minus the smoothed one-hot target in one pass.
// Saved for backward: the per-row log-sum-exp as (max, log-sum) (N x 2 floats) and wstats = {sum of used target weights,
// sum of all class weights}. Never written: log-softmax or softmax of the logits (N x C).
// Roofline per row: forward reads C logits (two sweeps over an L1/L2-resident row), ~3C flops and C
// exps; backward reads C logits and writes C gradients.
//
// Rows of any dtype and stride are first copied into a float (double for float64) scratch row;
// float32 rows with unit column stride are read in place. Rows of up to 32 classes go 16 at a time
// instead, transposed so that each row is a vector lane (row_stats' vector steps would be mostly
// tail). The float leaf loops are compiled three times (x86-64-v4 = AVX-512, x86-64-v3 = AVX2+FMA,
// baseline x86-64) and picked at load time.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <bit>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu/bf16_bits.h"
#include "common/softmax_cross_entropy_math.h"
#include "softmax_cross_entropy_checks.h"

namespace pyalexnet {
namespace xent {
namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define PYA_MULTIVERSION __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define PYA_MULTIVERSION
#endif
// The row loops are templates inlined into each multiversioned entry point, so that every clone
// gets its own vectorised copy.
#define PYA_INLINE __attribute__((always_inline)) inline

// exp for float in [-88, 88] (clamped), ~2 ulp: x = n ln2 + r, |r| <= ln2/2, exp(r) by Cephes'
// minimax polynomial, 2^n through the exponent bits. Branch-free so that the row loops vectorise;
// NaN propagates. Arguments below -87.3 may return 0 instead of a denormal.
PYA_INLINE float exp_f32(float x) {
  x = x < -88.0f ? -88.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float t = x * 1.44269504088896341f + shifter;
  int32_t n = __builtin_bit_cast(int32_t, t) - __builtin_bit_cast(int32_t, shifter);
  float nf = t - shifter;
  float r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t e = (n + 127) < 0 ? 0 : (n + 127);
  return p * __builtin_bit_cast(float, e << 23);
}
PYA_INLINE float exp_acc(float x) { return exp_f32(x); }
inline double exp_acc(double x) { return std::exp(x); }

// log for positive normal floats, ~1 ulp: x = 2^e m with m in [sqrt(1/2), sqrt(2)), log m by
// Cephes' logf polynomial in f = m - 1, e ln2 in two parts. Branch-free so that a block's lanes
// vectorise; callers send zeros, infinities, NaNs and denormals to std::log.
PYA_INLINE float log_f32(float x) {
  const int32_t i = __builtin_bit_cast(int32_t, x);
  int32_t e = ((i >> 23) & 0xff) - 127;
  float m = __builtin_bit_cast(float, (i & 0x007fffff) | 0x3f800000);  // [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? m * 0.5f : m;
  e = high ? e + 1 : e;
  const float f = m - 1.0f, z = f * f, ef = static_cast<float>(e);
  float y = 7.0376836292e-2f;
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z - 2.12194440e-4f * ef - 0.5f * z;
  return (f + y) + 0.693359375f * ef;
}
inline bool log_f32_domain(float x) { return x >= std::numeric_limits<float>::min() && x <= std::numeric_limits<float>::max(); }
PYA_INLINE float log_acc(float x) { return log_f32(x); }
inline double log_acc(double x) { return std::log(x); }

constexpr int kLanes = 16;  // independent accumulators: lets the compiler vectorise the sums

template <typename acc_t>
struct RowStats {
  acc_t max, shifted_wsum;
};

// max_c z_c and, when smoothing, sum_c w_c (z_c - r), r = smoothing_shift(z_0) (w == nullptr: all
// weights one).
template <typename acc_t>
PYA_INLINE RowStats<acc_t> row_stats(const acc_t* z, const acc_t* w, int64_t C, bool smooth) {
  acc_t m[kLanes], a[kLanes];
  for (int k = 0; k < kLanes; ++k) m[k] = -INFINITY, a[k] = 0;
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes)
    for (int k = 0; k < kLanes; ++k) m[k] = z[j + k] > m[k] ? z[j + k] : m[k];
  for (; j < C; ++j) m[0] = z[j] > m[0] ? z[j] : m[0];
  if (smooth) {
    const acc_t r = smoothing_shift(z[0]);
    j = 0;
    if (w) {
      for (; j + kLanes <= C; j += kLanes)
        for (int k = 0; k < kLanes; ++k) a[k] += w[j + k] * (z[j + k] - r);
      for (; j < C; ++j) a[0] += w[j] * (z[j] - r);
    } else {
      for (; j + kLanes <= C; j += kLanes)
        for (int k = 0; k < kLanes; ++k) a[k] += z[j + k] - r;
      for (; j < C; ++j) a[0] += z[j] - r;
    }
  }
  RowStats<acc_t> s{m[0], a[0]};
  for (int k = 1; k < kLanes; ++k) {
    s.max = m[k] > s.max ? m[k] : s.max;
    s.shifted_wsum += a[k];
  }
  return s;
}

// sum_c exp(z_c - m); an all -inf row (m = -inf) sums to 0, so its log-sum-exp is -inf.
template <typename acc_t>
PYA_INLINE acc_t row_sumexp(const acc_t* z, int64_t C, acc_t m) {
  if (m == -INFINITY) return 0;
  acc_t s[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= C; j += kLanes)
    for (int k = 0; k < kLanes; ++k) s[k] += exp_acc(z[j + k] - m);
  for (; j < C; ++j) s[0] += exp_acc(z[j] - m);
  acc_t t = 0;
  for (int k = 0; k < kLanes; ++k) t += s[k];
  return t;
}

// out_j = A exp((z_j - m) - l) - E w_j  (w == nullptr: w_j = 1); the target element j == t is the caller's (`target_grad`).
template <typename acc_t>
PYA_INLINE void row_grad(const acc_t* z, const acc_t* w, int64_t C, acc_t m, acc_t l, acc_t A,
                         acc_t E, acc_t* out) {
  if (w) {
    for (int64_t j = 0; j < C; ++j) out[j] = A * exp_acc((z[j] - m) - l) - E * w[j];
  } else {
    for (int64_t j = 0; j < C; ++j) out[j] = A * exp_acc((z[j] - m) - l) - E;
  }
}

// float entry points, compiled for AVX-512, AVX2+FMA and baseline x86-64.
PYA_MULTIVERSION RowStats<float> row_stats_f32(const float* z, const float* w, int64_t C, bool s) {
  return row_stats<float>(z, w, C, s);
}
PYA_MULTIVERSION float row_sumexp_f32(const float* z, int64_t C, float m) {
  return row_sumexp<float>(z, C, m);
}
PYA_MULTIVERSION void row_grad_f32(const float* z, const float* w, int64_t C, float m, float l,
                                   float A, float E, float* out) {
  row_grad<float>(z, w, C, m, l, A, E, out);
}
inline RowStats<float> stats(const float* z, const float* w, int64_t C, bool s) { return row_stats_f32(z, w, C, s); }
inline RowStats<double> stats(const double* z, const double* w, int64_t C, bool s) { return row_stats<double>(z, w, C, s); }
inline float sumexp(const float* z, int64_t C, float m) { return row_sumexp_f32(z, C, m); }
inline double sumexp(const double* z, int64_t C, double m) { return row_sumexp<double>(z, C, m); }
inline void grad(const float* z, const float* w, int64_t C, float m, float l, float A, float E, float* o) { row_grad_f32(z, w, C, m, l, A, E, o); }
inline void grad(const double* z, const double* w, int64_t C, double m, double l, double A, double E, double* o) { row_grad<double>(z, w, C, m, l, A, E, o); }

// Rows with few classes go kBlock at a time, one row a vector lane: a row of 10 classes is shorter
// than one step of the row loops above, which then cost ~100 ns a row in their tails and
// horizontal sums (3-4x F.cross_entropy at 1024 x 10). zt: the block transposed, zt[j kBlock + k]
// = class j of row k. Per lane the same arithmetic as row_stats and row_sumexp, summed in class
// order.
constexpr int kBlock = 16;
constexpr int64_t kBlockMaxC = 32;  // classes up to which rows go by blocks

template <typename acc_t>
struct BlockStats {
  acc_t max[kBlock], logsum[kBlock], shifted_wsum[kBlock];  // logsum: log sum_c exp(z_c - max)
};

// The sums in local arrays (the compiler keeps them in registers; in `b` it stored them every step,
// not knowing that zt and b do not overlap).
template <typename acc_t>
PYA_INLINE void block_stats(const acc_t* zt, const acc_t* w, int64_t C, bool smooth, BlockStats<acc_t>& b) {
  acc_t m[kBlock], s[kBlock], a[kBlock], r[kBlock];
  for (int k = 0; k < kBlock; ++k) m[k] = -INFINITY, s[k] = 0, a[k] = 0;
  for (int64_t j = 0; j < C; ++j)
    for (int k = 0; k < kBlock; ++k) m[k] = zt[j * kBlock + k] > m[k] ? zt[j * kBlock + k] : m[k];
  for (int64_t j = 0; j < C; ++j)
    for (int k = 0; k < kBlock; ++k) s[k] += exp_acc(zt[j * kBlock + k] - m[k]);
  if (smooth) {
    for (int k = 0; k < kBlock; ++k) r[k] = smoothing_shift(zt[k]);
    for (int64_t j = 0; j < C; ++j) {
      const acc_t wj = w ? w[j] : acc_t(1);
      for (int k = 0; k < kBlock; ++k) a[k] += wj * (zt[j * kBlock + k] - r[k]);
    }
  }
  for (int k = 0; k < kBlock; ++k) s[k] = m[k] == -INFINITY ? acc_t(0) : s[k];  // as row_sumexp
  for (int k = 0; k < kBlock; ++k) b.max[k] = m[k], b.logsum[k] = log_acc(s[k]), b.shifted_wsum[k] = a[k];
  if constexpr (std::is_same_v<acc_t, float>) {
    for (int k = 0; k < kBlock; ++k)  // 0 (a row of -inf), NaN, inf: outside log_f32's domain
      if (!log_f32_domain(s[k])) b.logsum[k] = std::log(s[k]);
  }
}
PYA_MULTIVERSION void block_stats_f32(const float* zt, const float* w, int64_t C, bool s, BlockStats<float>& b) {
  block_stats<float>(zt, w, C, s, b);
}
inline void stats(const float* zt, const float* w, int64_t C, bool s, BlockStats<float>& b) { block_stats_f32(zt, w, C, s, b); }
inline void stats(const double* zt, const double* w, int64_t C, bool s, BlockStats<double>& b) { block_stats<double>(zt, w, C, s, b); }

// Rows [i0, i0 + n) of x transposed into zt (kBlock lanes; lanes past n hold zeros).
template <typename T, typename acc_t>
void load_block(const T* x, int64_t i0, int64_t n, int64_t C, int64_t sN, int64_t sC, acc_t* zt) {
  for (int64_t k = 0; k < n; ++k) {
    const T* r = x + (i0 + k) * sN;
    for (int64_t j = 0; j < C; ++j) zt[j * kBlock + k] = static_cast<acc_t>(r[j * sC]);
  }
  for (int64_t k = n; k < kBlock; ++k)
    for (int64_t j = 0; j < C; ++j) zt[j * kBlock + k] = acc_t(0);
}

// bfloat16 <-> float rows, vectorised: widening is a shift; narrowing is bf16_bits, bit for bit
// the same as static_cast.
PYA_MULTIVERSION void widen_bf16(const uint16_t* x, int64_t sC, int64_t C, float* out) {
  if (sC == 1) {
    for (int64_t j = 0; j < C; ++j) out[j] = std::bit_cast<float>(uint32_t(x[j]) << 16);
  } else {
    for (int64_t j = 0; j < C; ++j) out[j] = std::bit_cast<float>(uint32_t(x[j * sC]) << 16);
  }
}
PYA_MULTIVERSION void narrow_bf16(const float* x, int64_t C, uint16_t* out) {
  for (int64_t j = 0; j < C; ++j) out[j] = bf16_bits(x[j]);
}

// Row i of x as acc_t: in place when it already is (unit column stride), else copied into buf.
template <typename T, typename acc_t>
inline const acc_t* load_row(const T* x, int64_t sC, int64_t C, acc_t* buf) {
  if constexpr (std::is_same_v<T, acc_t>) {
    if (sC == 1) return x;
  }
  if constexpr (std::is_same_v<T, at::BFloat16> && std::is_same_v<acc_t, float>) {
    widen_bf16(reinterpret_cast<const uint16_t*>(x), sC, C, buf);
    return buf;
  }
  for (int64_t j = 0; j < C; ++j) buf[j] = static_cast<acc_t>(x[j * sC]);
  return buf;
}

// A float row stored as T (C elements).
template <typename T, typename acc_t>
inline void store_row(const acc_t* x, int64_t C, T* out) {
  if constexpr (std::is_same_v<T, at::BFloat16> && std::is_same_v<acc_t, float>) {
    narrow_bf16(x, C, reinterpret_cast<uint16_t*>(out));
  } else {
    for (int64_t j = 0; j < C; ++j) out[j] = static_cast<T>(x[j]);
  }
}

// Rows per thread at least: ~8192 logits, so that 1024 x 10 goes to two threads (measured against
// 32768 and 4096: bench/results/2026-12-04-cpu-loss-small-classes.md).
inline int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 8192 / std::max<int64_t>(C, 1)); }

// x: N x C (strides sN, sC); tgt: N (stride sT); w: C or nullptr.
// Writes lse (N x 2: row max, log-sum of exp(z - max)), and either loss_none (N, reduction none) or row_loss (N); row_w (N) always.
template <typename T, typename acc_t, typename I>
void softmax_cross_entropy_forward_kernel_impl(
    const T* x, int64_t N, int64_t C, int64_t sN, int64_t sC, const I* tgt, int64_t sT,
    const acc_t* w, acc_t wsum, int64_t ignore, acc_t eps, int red, T* loss_none, acc_t* lse,
    acc_t* rloss, acc_t* row_w) {
  // Row i's outputs from its max m, log-sum l and smoothing sum sw; z(j): its logit j.
  const auto finish = [&](int64_t i, acc_t m, acc_t l, acc_t sw, const auto& z) {
    const int64_t t = static_cast<int64_t>(tgt[i * sT]);
    const bool ign = is_ignored(t, ignore);
    TORCH_CHECK(ign || in_range(t, C), "softmax_cross_entropy: target ", t, " at position ", i,
                " is out of range for ", C, " classes (valid: 0..", C - 1,
                ", or ignore_index = ", ignore, ")");
    lse[2 * i] = m;
    lse[2 * i + 1] = l;
    acc_t wt = 0, li = 0;
    if (!ign) {
      wt = w ? w[t] : acc_t(1);
      li = row_loss<acc_t>(z(t), wt, m, l, smoothing_shift(z(0)), sw, wsum, eps, C);
    }
    if (red == kNone) loss_none[i] = static_cast<T>(li);
    else rloss[i] = li;
    row_w[i] = wt;
  };
  if (C <= kBlockMaxC) {
    const int64_t blocks = (N + kBlock - 1) / kBlock;
    at::parallel_for(0, blocks, std::max<int64_t>(1, row_grain(C) / kBlock), [&](int64_t b, int64_t e) {
      std::vector<acc_t> zt(C * kBlock);
      BlockStats<acc_t> st;
      for (int64_t q = b; q < e; ++q) {
        const int64_t i0 = q * kBlock, n = std::min<int64_t>(kBlock, N - i0);
        load_block(x, i0, n, C, sN, sC, zt.data());
        stats(zt.data(), w, C, eps > 0, st);
        for (int64_t k = 0; k < n; ++k)
          finish(i0 + k, st.max[k], st.logsum[k], st.shifted_wsum[k],
                 [&](int64_t j) { return zt[j * kBlock + k]; });
      }
    });
    return;
  }
  at::parallel_for(0, N, row_grain(C), [&](int64_t b, int64_t e) {
    std::vector<acc_t> buf(C);
    for (int64_t i = b; i < e; ++i) {
      const acc_t* z = load_row<T, acc_t>(x + i * sN, sC, C, buf.data());
      const RowStats<acc_t> s = stats(z, w, C, eps > 0);
      finish(i, s.max, std::log(sumexp(z, C, s.max)), s.shifted_wsum, [&](int64_t j) { return z[j]; });
    }
  });
}

template <typename T, typename acc_t, typename I>
void softmax_cross_entropy_backward_kernel_impl(
    const T* x, int64_t N, int64_t C, int64_t sN, int64_t sC, const I* tgt, int64_t sT,
    const acc_t* w, int64_t ignore, acc_t eps, int red, const acc_t* go, int64_t sG,
    const acc_t* lse, acc_t denom, acc_t wsum, T* out) {
  at::parallel_for(0, N, row_grain(C), [&](int64_t b, int64_t e) {
    std::vector<acc_t> buf(C), gbuf(std::is_same_v<T, acc_t> ? 0 : C);
    for (int64_t i = b; i < e; ++i) {
      T* o = out + i * C;
      const int64_t t = static_cast<int64_t>(tgt[i * sT]);
      if (is_ignored(t, ignore)) {
        std::fill(o, o + C, T(0));
        continue;
      }
      TORCH_CHECK(in_range(t, C), "softmax_cross_entropy_backward: target ", t, " at position ",
                  i, " is out of range for ", C, " classes");
      const acc_t* z = load_row<T, acc_t>(x + i * sN, sC, C, buf.data());
      const acc_t g = row_grad_scale<acc_t>(go[red == kNone ? i * sG : 0], red, denom);
      const acc_t wt = w ? w[t] : acc_t(1), m = lse[2 * i], l = lse[2 * i + 1];
      const auto k = grad_coeffs<acc_t>(g, wt, wsum, eps, C);
      acc_t* acc_out;
      if constexpr (std::is_same_v<T, acc_t>) acc_out = o;
      else acc_out = gbuf.data();
      grad(z, w, C, m, l, k.A, k.E, acc_out);
      acc_out[t] = target_grad(k, std::exp((z[t] - m) - l), wsum, wt);
      if constexpr (!std::is_same_v<T, acc_t>) store_row<T, acc_t>(acc_out, C, o);
    }
  });
}

// sum_i v_i in double, in an order fixed by n alone (the same result whatever the number of
// threads): four running sums of every fourth value, then (s0 + s1) + (s2 + s3). One running sum
// was a chain of n dependent adds, ~2 us at 1024 rows.
template <typename acc_t>
double fixed_order_sum(const acc_t* v, int64_t n) {
  double s[4] = {};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) s[k] += static_cast<double>(v[i + k]);
  for (int k = 0; i < n; ++i, ++k) s[k] += static_cast<double>(v[i]);
  return (s[0] + s[1]) + (s[2] + s[3]);
}

// The one element of a CPU tensor, read in place.
double scalar_value(const at::Tensor& t) {
  double v = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "scalar_value",
                                  [&] { v = static_cast<double>(*t.const_data_ptr<scalar_t>()); });
  return v;
}

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy_forward_cpu(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction, double label_smoothing) {
  check_forward_inputs(logits, target, weight, label_smoothing);
  const int red = parse_reduction(std::string_view(reduction.data(), reduction.size()));
  const int64_t N = logits.size(0), C = logits.size(1);
  const auto acc = acc_dtype(logits.scalar_type());
  const at::Tensor w = weight_as_acc(weight, logits.scalar_type());
  at::Tensor lse = at::empty({N, 2}, logits.options().dtype(acc));
  at::Tensor wstats = at::empty({2}, logits.options().dtype(acc));
  at::Tensor loss = red == kNone ? at::empty({N}, logits.options()) : at::empty({}, logits.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "softmax_cross_entropy_forward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
    double wsum = 0;  // sum of all class weights
    if (wp) for (int64_t c = 0; c < C; ++c) wsum += wp[c];
    else wsum = double(C);
    // Per-row losses and used weights: plain scratch, not tensors (each at::empty is a dispatch).
    std::vector<acc_t> losses(red == kNone ? 0 : N), used_w(N);
    AT_DISPATCH_INDEX_TYPES(target.scalar_type(), "softmax_cross_entropy_forward_cpu", [&] {
      softmax_cross_entropy_forward_kernel_impl<scalar_t, acc_t, index_t>(
          logits.const_data_ptr<scalar_t>(), N, C, logits.stride(0), logits.stride(1),
          target.const_data_ptr<index_t>(), target.stride(0), wp, static_cast<acc_t>(wsum),
          ignore_index,
          static_cast<acc_t>(label_smoothing), red,
          red == kNone ? loss.data_ptr<scalar_t>() : nullptr, lse.data_ptr<acc_t>(),
          red == kNone ? nullptr : losses.data(), used_w.data());
    });
    const double denom = fixed_order_sum(used_w.data(), N);
    if (red != kNone) {
      const double total = fixed_order_sum(losses.data(), N);
      *loss.data_ptr<scalar_t>() = static_cast<scalar_t>(red == kMean ? total / denom : total);
    }
    wstats.data_ptr<acc_t>()[0] = static_cast<acc_t>(denom);
    wstats.data_ptr<acc_t>()[1] = static_cast<acc_t>(wsum);
  });
  return {loss, lse, wstats};
}

at::Tensor softmax_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse, const at::Tensor& wstats,
    int64_t ignore_index, c10::string_view reduction, double label_smoothing) {
  const int red = check_backward(grad_loss, logits, target, weight, lse, wstats, reduction, label_smoothing);
  const int64_t N = logits.size(0), C = logits.size(1);
  const at::Tensor w = weight_as_acc(weight, logits.scalar_type()), lse_c = lse.contiguous(),
                   ws = wstats.contiguous();
  // The incoming gradient: a vector for reduction 'none', else one scalar read in place (a dtype
  // conversion would cost a kernel call, as much as the whole op at 128 x 10).
  const at::Tensor go = red == kNone ? grad_loss.to(acc_dtype(logits.scalar_type())) : at::Tensor();
  const double g0 = red == kNone ? 0.0 : scalar_value(grad_loss);
  at::Tensor grad = at::empty({N, C}, logits.options());

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "softmax_cross_entropy_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const acc_t* wp = w.defined() ? w.data_ptr<acc_t>() : nullptr;
    const acc_t* st = ws.const_data_ptr<acc_t>();
    const acc_t g = static_cast<acc_t>(g0);
    AT_DISPATCH_INDEX_TYPES(target.scalar_type(), "softmax_cross_entropy_backward_cpu", [&] {
      softmax_cross_entropy_backward_kernel_impl<scalar_t, acc_t, index_t>(
          logits.const_data_ptr<scalar_t>(), N, C, logits.stride(0), logits.stride(1),
          target.const_data_ptr<index_t>(), target.stride(0), wp, ignore_index,
          static_cast<acc_t>(label_smoothing), red, go.defined() ? go.const_data_ptr<acc_t>() : &g,
          go.defined() ? go.stride(0) : 0, lse_c.const_data_ptr<acc_t>(), st[0], st[1],
          grad.data_ptr<scalar_t>());
    });
  });
  return grad;
}

}  // namespace xent

TORCH_LIBRARY_IMPL(pyalexnet, CPU, m) {
  m.impl("softmax_cross_entropy_forward", &xent::softmax_cross_entropy_forward_cpu);
  m.impl("softmax_cross_entropy_backward", &xent::softmax_cross_entropy_backward_cpu);
}

}  // namespace pyalexnet
