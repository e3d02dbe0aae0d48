// Row math of the fused softmax cross-entropy op, shared by the CPU kernels and the CUDA kernels so
// that the CPU tests exercise the very arithmetic the GPU runs.
//
// F.cross_entropy for class-index targets, written per row i with target t, class weights w
// (w_c = 1 without weights), smoothing eps, C classes and the row's log-sum-exp L = m + l, kept as
// its two parts m = max_c z_c and l = log sum_c exp(z_c - m) (a float holding m + l would lose the
// low bits of l when the logits are large, ~1e-3 at 1e4; z_j - m is exact):
//   nll_i    = -w_t ((z_t - m) - l)
//   smooth_i = -sum_c w_c (z_c - L) = Wsum ((m - r) + l) - sum_c w_c (z_c - r)     (any shift r; we use
//              z_0, so that the subtraction cancels at the scale of the logits' spread, not their offset;
//              0 when z_0 is infinite or NaN: smoothing_shift)
//   loss_i   = (1 - eps) nll_i + (eps / C) smooth_i           (ignored rows: 0, and weight 0)
//   mean     = sum_i loss_i / sum_i w_{t_i} over rows not ignored  (0/0 = NaN for an all-ignored batch)
// and its gradient with respect to the logits, p_j = exp((z_j - m) - l), g the incoming gradient:
//   dz_j = g [ (1 - eps) w_t (p_j - [j == t]) + (eps / C)(Wsum p_j - w_j) ] = A p_j - B [j == t] - E w_j
#pragma once

#include <cmath>
#include <cstdint>

#include "common/hd.h"

namespace pyalexnet {
namespace xent {

enum Reduction : int { kNone = 0, kMean = 1, kSum = 2 };

// A target is used when it is not ignore_index; a used target must lie in [0, C).
PYA_HD bool is_ignored(int64_t t, int64_t ignore_index) { return t == ignore_index; }
PYA_HD bool in_range(int64_t t, int64_t C) { return t >= 0 && t < C; }

// The shift r of the smoothing sum: the row's first logit, or 0 when it is not finite (with z_0 = -inf,
// z_0 - z_0 would make the loss NaN where PyTorch's is inf).
template <typename acc_t>
PYA_HD acc_t smoothing_shift(acc_t z0) {
  return z0 > -acc_t(INFINITY) && z0 < acc_t(INFINITY) ? z0 : acc_t(0);
}

// loss_i of a row that is not ignored. zt: logit of the target; wt: its class weight; m, l: the two
// parts of L; r: the shift of shifted_wsum = sum_c w_c (z_c - r); wsum = sum_c w_c. The smoothing term is left
// out when eps == 0 so that an infinite logit elsewhere in the row does not turn the loss into NaN,
// as in PyTorch, which then never computes it.
template <typename acc_t>
PYA_HD acc_t row_loss(acc_t zt, acc_t wt, acc_t m, acc_t l, acc_t r, acc_t shifted_wsum, acc_t wsum,
                      acc_t eps, int64_t C) {
  acc_t nll = -wt * ((zt - m) - l);
  if (eps == acc_t(0)) return nll;
  acc_t smooth = wsum * ((m - r) + l) - shifted_wsum;
  return (acc_t(1) - eps) * nll + eps / acc_t(C) * smooth;
}

// g: the gradient that reaches row i's loss, from the incoming gradient and the reduction.
// go: grad_loss[i] for kNone, the scalar grad_loss otherwise; denom: sum of used target weights.
template <typename acc_t>
PYA_HD acc_t row_grad_scale(acc_t go, int reduction, acc_t denom) {
  return reduction == kMean ? go / denom : go;
}

// The coefficients of dz_j = A p_j - B [j == t] - E w_j for a row that is not ignored, A = B + E wsum.
template <typename acc_t>
struct GradCoeffs {
  acc_t A, B, E;
};

template <typename acc_t>
PYA_HD GradCoeffs<acc_t> grad_coeffs(acc_t g, acc_t wt, acc_t wsum, acc_t eps, int64_t C) {
  GradCoeffs<acc_t> k;
  acc_t s = eps / acc_t(C);
  k.B = g * (acc_t(1) - eps) * wt;
  k.E = g * s;
  k.A = k.B + k.E * wsum;
  return k;
}

// dz_t of the target class as B (p_t - 1) + E (wsum p_t - w_t): exactly 0 where p_t = 1 (one class,
// or every other logit -inf), as in PyTorch. A p_t - B - E w_t keeps the rounding of A. The CPU
// backward's; the CUDA one still writes A p_t - B - E w_t (with this form ptxas spilled registers in
// its scalar 16-bit variants, which tests/test_kernel_code.py refuses).
template <typename acc_t>
PYA_HD acc_t target_grad(const GradCoeffs<acc_t>& k, acc_t p, acc_t wsum, acc_t wt) {
  return k.B * (p - acc_t(1)) + k.E * (wsum * p - wt);
}

}  // namespace xent
}  // namespace pyalexnet
