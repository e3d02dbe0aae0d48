// Index arithmetic of the fused conv2d + ReLU + max-pool op, shared by the CPU and CUDA kernels so
// that the CPU tests exercise the arithmetic the GPU runs.
//
// Sizes (floor mode, no dilation, no pool padding):
//   conv:  Hc = (H + 2 ph - kh) / sh + 1          pool:  Hp = (Hc - pkh) / psh + 1
// Pooled output (p, q) covers conv rows p*psh .. p*psh + pkh - 1 and columns q*psw .. q*psw + pkw - 1.
// Conv output (r, c) reads input rows r*sh - ph + ky (ky < kh) and columns c*sw - pw + kx.
//
// The saved index ("code") of a pooled output is one byte: the offset dy * pkw + dx inside its window
// of the first maximum in row-major scan order (PyTorch's tie-breaking), or kNoGrad when the window's
// maximum is not positive (ReLU is flat there, so no gradient flows) or NaN. Windows therefore have at
// most 255 positions. With a pool window of one position (pool 1/1: conv + ReLU alone) the only thing
// to keep is whether ReLU passes the gradient: one bit per output, bit q % 8 of byte q / 8 of the
// output's row, so the codes are N x Co x Hp x ceil(Wp / 8) bytes (1/32 of a float32 ReLU output,
// 1/16 of a bfloat16 one) instead of N x Co x Hp x Wp.
#pragma once

#include <cstdint>

#include "common/hd.h"

namespace pyalexnet {
namespace crm {

constexpr uint8_t kNoGrad = 255;
constexpr int64_t kMaxWindow = 255;  // positions a window may have: codes 0..254

PYA_HD int64_t conv_out_size(int64_t in, int64_t k, int64_t s, int64_t p) {
  return (in + 2 * p - k) / s + 1;  // callers check in + 2p >= k first
}
PYA_HD int64_t pool_out_size(int64_t in, int64_t k, int64_t s) { return (in - k) / s + 1; }

// First input row/column that conv output row/column o reads (may be negative: padding).
PYA_HD int64_t input_start(int64_t o, int64_t s, int64_t p) { return o * s - p; }
PYA_HD bool inside(int64_t i, int64_t n) { return i >= 0 && i < n; }

// First conv row/column that pooled output row/column o covers.
PYA_HD int64_t window_start(int64_t o, int64_t ps) { return o * ps; }

PYA_HD bool is_bitmask(int64_t pkh, int64_t pkw) { return pkh == 1 && pkw == 1; }
// Bytes of codes per row of pooled outputs.
PYA_HD int64_t code_width(int64_t Wp, int64_t pkh, int64_t pkw) {
  return is_bitmask(pkh, pkw) ? (Wp + 7) / 8 : Wp;
}
PYA_HD bool mask_bit(const uint8_t* row, int64_t q) { return (row[q >> 3] >> (q & 7)) & 1; }

PYA_HD uint8_t encode(int64_t dy, int64_t dx, int64_t pkw) { return static_cast<uint8_t>(dy * pkw + dx); }
PYA_HD int64_t code_dy(uint8_t code, int64_t pkw) { return code / pkw; }
PYA_HD int64_t code_dx(uint8_t code, int64_t pkw) { return code % pkw; }

// Folds value v at window offset k into the running maximum (m, at): the first strict maximum wins,
// and NaN wins over everything, as in PyTorch's max_pool2d.
template <typename acc_t>
PYA_HD void max_update(acc_t v, int64_t k, acc_t& m, int64_t& at) {
  if (v > m || v != v) {
    m = v;
    at = k;
  }
}

// The pooled value and the code of a window whose pre-ReLU maximum is m at offset `at`:
// relu(max) == max(relu), and a window with no positive value passes no gradient.
template <typename acc_t>
PYA_HD acc_t pooled_value(acc_t m) { return m > acc_t(0) || m != m ? m : acc_t(0); }
template <typename acc_t>
PYA_HD uint8_t pooled_code(acc_t m, int64_t at) { return m > acc_t(0) ? static_cast<uint8_t>(at) : kNoGrad; }

// Conv rows [first, last) that pooled rows [p0, p1) need; last - first = (p1 - p0 - 1) * ps + pk.
PYA_HD int64_t band_first_row(int64_t p0, int64_t ps) { return p0 * ps; }
PYA_HD int64_t band_rows(int64_t np, int64_t pk, int64_t ps) { return (np - 1) * ps + pk; }

}  // namespace crm
}  // namespace pyalexnet
