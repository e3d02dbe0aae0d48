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
// Bit q of a ReLU mask row whose bytes lie `stride` apart (1: a contiguous row).
PYA_HD bool mask_bit(const uint8_t* row, int64_t q, int64_t stride = 1) {
  return (row[(q >> 3) * stride] >> (q & 7)) & 1;
}

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

// Pooled rows (or columns) whose windows contain conv row r: [lo, hi], empty when lo > hi. The
// CUDA backward gathers each conv output's gradient from these windows instead of scattering.
PYA_HD void covering_windows(int64_t r, int64_t pk, int64_t ps, int64_t n_pooled, int64_t& lo, int64_t& hi) {
  lo = r < pk ? 0 : (r - pk) / ps + 1;  // first p with p*ps + pk - 1 >= r
  hi = r / ps;                          // last p with p*ps <= r
  if (hi > n_pooled - 1) hi = n_pooled - 1;
}

// The conv-output gradient at (r, c) of one image and channel: the sum of the pooled gradients
// whose window's saved maximum sits at (r, c). gy(p, q) and code(p, q) read the pooled gradient and
// the code byte (for a 1x1 window: the byte holding bit q % 8 of the ReLU mask).
template <typename acc_t, typename GyAt, typename CodeAt>
PYA_HD acc_t unpooled_gradient(int64_t r, int64_t c, int64_t pkh, int64_t pkw, int64_t psh, int64_t psw,
                               int64_t Hp, int64_t Wp, const GyAt& gy, const CodeAt& code) {
  acc_t s = acc_t(0);
  if (is_bitmask(pkh, pkw)) {
    if (r % psh != 0 || c % psw != 0) return s;
    const int64_t p = r / psh, q = c / psw;
    if (p < Hp && q < Wp && ((code(p, q) >> (q & 7)) & 1)) s = acc_t(gy(p, q));
    return s;
  }
  int64_t p0, p1, q0, q1;
  covering_windows(r, pkh, psh, Hp, p0, p1);
  covering_windows(c, pkw, psw, Wp, q0, q1);
  for (int64_t p = p0; p <= p1; ++p)
    for (int64_t q = q0; q <= q1; ++q)
      if (code(p, q) == encode(r - window_start(p, psh), c - window_start(q, psw), pkw)) s += acc_t(gy(p, q));
  return s;
}

// The CUDA forward tile: G whole images, or a PH x PW patch of one image's pooled outputs, whose
// conv patch (CH x CW conv outputs per image) fits the rows of one GEMM tile (rows); chosen to need
// the fewest 32-row slabs of GEMM work over the batch. The patch of a pooled patch is
// (PH-1) psh + pkh by (PW-1) psw + pkw conv outputs; with a 1x1 window (pool = subsampling) only the
// sampled conv outputs, PH x PW (conv row r0 + i psh), and PW is a multiple of 8 or the whole row,
// so that a tile writes whole bytes of the ReLU mask. A window larger than the tile
// (pkh pkw > rows) is computed in `passes` GEMMs of `rows` window positions each, keeping a running
// maximum (then G = PH = PW = 1).
// kFlatRows (1x1 windows only): the tiles run over the batch's N Hp pooled rows as one sequence, PH
// whole rows each, across image boundaries (G = 1, PW = Wp), so that small images waste no rows at
// a tile's end (CIFAR's 7x7: 126 of 128 rows, not 98).
// kFlatConv (pooled layers whose halo costs more than a round trip of the conv output, chosen by
// the CUDA forward's host code): tile tp holds conv outputs [tp rows, (tp + 1) rows) of the batch's N
// Hc Wc, written with the bias into a float workspace that a pooling kernel reads (G = PH = CH = 1,
// PW = CW = rows).
enum class TileKind : int32_t { kPatches, kFlatRows, kFlatConv };
struct ForwardTile {
  int64_t G, PH, PW, CH, CW, passes;
  int64_t tiles_h, tiles_w, groups;  // tiles along pooled rows, columns; image groups
  TileKind kind;
  int64_t count() const { return tiles_h * tiles_w * groups; }
};

// The 32-row slabs (a warp's rows of a GEMM tile) that `rows` tile rows occupy: the tile plans'
// cost, since a warp past the valid rows issues no products.
PYA_HD int64_t warp_slabs(int64_t rows) { return (rows + 31) / 32; }

PYA_HD int64_t tile_conv_rows(int64_t P, int64_t pk, int64_t ps, bool bits) { return bits ? P : (P - 1) * ps + pk; }

inline ForwardTile plan_forward_tile(int64_t N, int64_t Hp, int64_t Wp, int64_t pkh, int64_t pkw, int64_t psh,
                                     int64_t psw, int64_t rows) {
  if (pkh * pkw > rows)  // one window per tile, in several passes
    return ForwardTile{1, 1, 1, pkh, pkw, (pkh * pkw + rows - 1) / rows, Hp, Wp, N, TileKind::kPatches};
  const bool bits = is_bitmask(pkh, pkw);
  ForwardTile best{};
  int64_t best_cost = -1;
  for (int64_t PH = 1; PH <= Hp && tile_conv_rows(PH, pkh, psh, bits) <= rows; ++PH)
    for (int64_t PW = 1; PW <= Wp; ++PW) {
      const int64_t CH = tile_conv_rows(PH, pkh, psh, bits), CW = tile_conv_rows(PW, pkw, psw, bits);
      if (CH * CW > rows) break;
      if (bits && PW % 8 != 0 && PW != Wp) continue;
      const bool whole = PH == Hp && PW == Wp;
      const int64_t G = whole ? (rows / (CH * CW) < N ? rows / (CH * CW) : N) : 1;
      const int64_t th = (Hp + PH - 1) / PH, tw = (Wp + PW - 1) / PW, groups = (N + G - 1) / G;
      const int64_t cost = th * tw * groups * warp_slabs(G * CH * CW);
      if (best_cost < 0 || cost < best_cost || (cost == best_cost && PW > best.PW)) {
        best_cost = cost;
        best = ForwardTile{G, PH, PW, CH, CW, 1, th, tw, groups, TileKind::kPatches};
      }
    }
  if (bits && Wp <= rows && N * Hp > 0) {  // whole rows across images, where that needs fewer slabs
    const int64_t PH = rows / Wp < N * Hp ? rows / Wp : N * Hp, tiles = (N * Hp + PH - 1) / PH;
    if (tiles * warp_slabs(PH * Wp) < best_cost) best = ForwardTile{1, PH, Wp, PH, Wp, 1, tiles, 1, 1, TileKind::kFlatRows};
  }
  return best;  // PH = 1 with PW = min(8, Wp) (1x1 window) or PW = 1 always fits: never empty
}

}  // namespace crm
}  // namespace pyalexnet
