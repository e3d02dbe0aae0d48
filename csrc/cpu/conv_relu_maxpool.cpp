// Fused conv2d + ReLU + max-pool, CPU kernels: the op's entry points, which run the kernels of
// conv_brgemm.cpp where the micro-kernel runs (see cpu_conv_kernel), and the portable kernels below
// elsewhere (float64, other CPUs, PYALEXNET_CPU_PORTABLE=1).
//
// The portable kernels:
// Fused: the convolution of a chunk of images (or of one band of pooled rows of a large image) as
// im2col of just the conv rows the pooled rows need and one GEMM into a scratch matrix bounded by
// the chunk (see Plan), then bias, ReLU and the max-pool in the GEMM's epilogue. Written: the pooled
// output and one byte per pooled output (the window offset of the maximum, or kNoGrad where ReLU
// passes no gradient). Never written: the batch's full-resolution convolution or ReLU output
// (N x Co x Hc x Wc), nor its gradient: backward rebuilds one chunk's conv-output gradient at a time
// from the codes, then runs the weight-gradient GEMM (chunk gradient x im2col^T) and the
// input-gradient GEMM (W^T x chunk gradient, then col2im).
// Roofline per image: 2 Co K Hc Wc flops forward (K = Ci kh kw), twice that backward; minimal bytes:
// the input, the weights, the pooled output and its codes.
// The dense matrix products run on at::mm: the convolution, fusion and gradient routing are ours.
// float16/bfloat16 are converted to float32 in im2col and computed in float32.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "common/conv_relu_maxpool_index.h"
#include "conv_relu_maxpool_checks.h"
#include "cpu/conv_brgemm.h"

namespace pyalexnet {
namespace crm {
namespace {

template <typename T>
using acc_of = std::conditional_t<std::is_same_v<T, double>, double, float>;

// How the work is cut. A unit is one band of B pooled rows of one image (the conv rows it needs,
// recomputing the pk - ps rows where bands meet). Units are processed in chunks: the chunk's im2col
// columns side by side in one scratch matrix, ONE matrix product for the chunk on the calling thread
// (the matmul library threads it; it is never called from inside our parallel regions, where
// oneDNN's shared stream is not safe to use concurrently), and the chunk's im2col and epilogue
// parallel over (unit, channel). Images small enough for one band go G to a chunk, so that the
// product has ~kChunkColumns columns; a larger image is cut into bands of ~4 MiB of scratch, one per
// chunk. The scratch never holds more than a chunk: never the batch's full-resolution conv output.
struct Plan {
  int64_t B, nb;  // pooled rows per band, bands per image
  int64_t G;      // images per chunk (1 when nb > 1)
  int64_t Mmax;   // conv positions of the largest band
  int64_t ld() const { return G * Mmax; }  // row pitch of the scratch matrices
};

Plan make_plan(const Geometry& g, int64_t elem) {
  constexpr int64_t kChunkColumns = 512;
  Plan pl{};
  const int64_t budget = (int64_t(4) << 20) / elem;
  const int64_t per_row = (g.Co + g.K()) * g.Wc;  // scratch per conv row
  const int64_t rows = std::max<int64_t>(budget / std::max<int64_t>(per_row, 1), g.pkh);
  pl.B = std::clamp<int64_t>((rows - g.pkh) / g.psh + 1, 1, g.Hp);
  pl.nb = (g.Hp + pl.B - 1) / pl.B;
  pl.Mmax = band_rows(pl.B, g.pkh, g.psh) * g.Wc;
  pl.G = pl.nb == 1 ? std::clamp<int64_t>((kChunkColumns + pl.Mmax - 1) / pl.Mmax, 1, std::max<int64_t>(g.N, 1)) : 1;
  return pl;
}

// The units of chunk `c`: images [n0, n0 + G) with their one band, or band `p0` of image n0.
struct Chunk {
  int64_t n0, G, p0, np, r0, R, M;  // M: conv positions per unit
};

Chunk chunk_at(const Geometry& g, const Plan& pl, int64_t c) {
  Chunk k{};
  if (pl.nb == 1) {
    k.n0 = c * pl.G, k.G = std::min(pl.G, g.N - k.n0), k.p0 = 0, k.np = g.Hp;
  } else {
    k.n0 = c / pl.nb, k.G = 1, k.p0 = (c % pl.nb) * pl.B, k.np = std::min(pl.B, g.Hp - k.p0);
  }
  k.r0 = band_first_row(k.p0, g.psh), k.R = band_rows(k.np, g.pkh, g.psh), k.M = k.R * g.Wc;
  return k;
}

// Grain of the parallel loops: at least kMinTaskWork elements of work per task, so that a small chunk
// runs on one thread instead of paying for a parallel region that ends in a barrier. (On a machine
// with other work on it a preempted thread holds the others at each barrier for a scheduler time
// slice; the matrix library's own regions still do: at two threads with a busy second core, a
// small layer's forward + backward takes tens of times its one-thread time.) Which thread computes
// what never changes a result: every task writes its own outputs.
constexpr int64_t kMinTaskWork = int64_t(1) << 16;
inline int64_t grain(int64_t work_per_unit) {
  return std::max<int64_t>(1, kMinTaskWork / std::max<int64_t>(work_per_unit, 1));
}

int64_t chunks(const Geometry& g, const Plan& pl) {
  return pl.nb == 1 ? (g.N + pl.G - 1) / pl.G : g.N * pl.nb;
}

// Columns c of a conv row whose input column c*sw - pw + kx lies inside [0, W): [lo, hi).
inline void valid_columns(const Geometry& g, int64_t kx, int64_t& lo, int64_t& hi) {
  const int64_t off = kx - g.pw;  // input column of c = c*sw + off
  // lo at most Wc: where the left padding exceeds the row (pw - kx > (Wc - 1) sw), no column is
  // valid; an unclamped lo > Wc made im2col's fills run past the row (heap overflow, crash).
  lo = off >= 0 ? 0 : std::min<int64_t>(g.Wc, (-off + g.sw - 1) / g.sw);
  hi = g.W - off <= 0 ? 0 : std::min<int64_t>(g.Wc, (g.W - off + g.sw - 1) / g.sw);
  hi = std::max(hi, lo);
}

// cols (K x R*Wc, row pitch ld) = the input patches of conv rows [r0, r0 + R) of one image xn
// (strides sC, sH, sW).
// Input channels [c0, c1) only: rows (c0 kh kw) .. (c1 kh kw) of cols.
template <typename T, typename acc_t>
void im2col_rows(const T* xn, int64_t sC, int64_t sH, int64_t sW, const Geometry& g, int64_t r0,
                 int64_t R, acc_t* cols, int64_t ld, int64_t c0, int64_t c1) {
  for (int64_t ci = c0; ci < c1; ++ci)
    for (int64_t ky = 0; ky < g.kh; ++ky)
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        acc_t* row = cols + ((ci * g.kh + ky) * g.kw + kx) * ld;
        int64_t lo, hi;
        valid_columns(g, kx, lo, hi);
        for (int64_t r = 0; r < R; ++r) {
          acc_t* d = row + r * g.Wc;
          const int64_t iy = input_start(r0 + r, g.sh, g.ph) + ky;
          if (!inside(iy, g.H)) {
            std::fill(d, d + g.Wc, acc_t(0));
            continue;
          }
          const T* s = xn + ci * sC + iy * sH + (kx - g.pw) * sW;
          const int64_t step = g.sw * sW;
          std::fill(d, d + lo, acc_t(0));
          if (step == 1) {  // stride-1 conv over rows with unit stride: a plain (vectorised) copy
            for (int64_t c = lo; c < hi; ++c) d[c] = static_cast<acc_t>(s[c]);
          } else {
            for (int64_t c = lo; c < hi; ++c) d[c] = static_cast<acc_t>(s[c * step]);
          }
          std::fill(d + hi, d + g.Wc, acc_t(0));
        }
      }
}

// The adjoint of im2col_rows: dxn (Ci x H x W, contiguous) += the patches in dcols (K x R*Wc,
// row pitch ld).
template <typename acc_t>
void col2im_rows(const acc_t* dcols, const Geometry& g, int64_t r0, int64_t R, acc_t* dxn, int64_t ld,
                 int64_t c0, int64_t c1) {
  for (int64_t ci = c0; ci < c1; ++ci)
    for (int64_t ky = 0; ky < g.kh; ++ky)
      for (int64_t kx = 0; kx < g.kw; ++kx) {
        const acc_t* row = dcols + ((ci * g.kh + ky) * g.kw + kx) * ld;
        int64_t lo, hi;
        valid_columns(g, kx, lo, hi);
        for (int64_t r = 0; r < R; ++r) {
          const int64_t iy = input_start(r0 + r, g.sh, g.ph) + ky;
          if (!inside(iy, g.H)) continue;
          const acc_t* s = row + r * g.Wc;
          acc_t* d = dxn + (ci * g.H + iy) * g.W + (kx - g.pw);
          for (int64_t c = lo; c < hi; ++c) d[c * g.sw] += s[c];
        }
      }
}

// Scratch memory as a (rows x cols) matrix with row pitch ld, for the BLAS.
template <typename acc_t>
at::Tensor wrap(acc_t* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(p, {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// c = beta c + a . b on per-thread scratch matrices, by at::mm / addmm. Called only from the op's own
// thread, never from inside an at::parallel_for: the matrix library threads the product itself.
void gemm(const at::Tensor& a, const at::Tensor& b, at::Tensor& c, bool accumulate) {
  if (accumulate) {
    c.addmm_(a, b);
  } else {
    at::mm_out(c, a, b);
  }
}

// The scratch matrices of the calling thread, kept from call to call (two slots per type, each
// bounded by the Plan's ~4 MiB chunk): allocated anew per call, they came from fresh mmap'd pages
// whose page faults took ~9% of a CIFAR training step. Contents are stale: every user writes what
// it reads (im2col, the GEMMs with beta 0, the un-pooling's fill).
template <typename acc_t>
acc_t* scratch(int slot, int64_t n) {
  thread_local std::vector<acc_t> buffers[2];
  std::vector<acc_t>& b = buffers[slot];
  if (static_cast<int64_t>(b.size()) < n) b.resize(static_cast<size_t>(n));
  return b.data();
}

// One row of pooled outputs from the conv rows at v (row pitch Wc): max over each window of v + bias
// by max_update's rule (first maximum in row-major order; a NaN wins), then pooled_value/pooled_code.
// Window positions in the outer loops and outputs in the inner one, updated without branches: the
// comparisons depend on the data, and as branches (one per position) they were mispredicted often
// enough to make this epilogue the slowest part of a small-channel layer (CIFAR conv1: 3 of 4 parts
// of its forward time). Same results as max_update window by window, position by position.
template <typename T, typename acc_t>
void pool_row(const acc_t* v, const Geometry& g, acc_t bias, T* out, uint8_t* code) {
  constexpr int64_t kBlock = 64;
  acc_t m[kBlock];
  int32_t at[kBlock];
  for (int64_t q0 = 0; q0 < g.Wp; q0 += kBlock) {
    const int64_t nq = std::min(kBlock, g.Wp - q0);
    for (int64_t q = 0; q < nq; ++q) m[q] = -std::numeric_limits<acc_t>::infinity(), at[q] = 0;
    for (int64_t dy = 0; dy < g.pkh; ++dy)
      for (int64_t dx = 0; dx < g.pkw; ++dx) {
        const acc_t* src = v + dy * g.Wc + window_start(q0, g.psw) + dx;
        const int32_t pos = static_cast<int32_t>(dy * g.pkw + dx);
        for (int64_t q = 0; q < nq; ++q) {
          const acc_t x = src[q * g.psw] + bias;
          const bool take = (x > m[q]) | (x != x);
          m[q] = take ? x : m[q];
          at[q] = take ? pos : at[q];
        }
      }
    for (int64_t q = 0; q < nq; ++q) {
      out[q0 + q] = static_cast<T>(pooled_value(m[q]));
      code[q0 + q] = pooled_code(m[q], at[q]);
    }
  }
}

// x: N x Ci x H x W (any strides); w: Co x K (acc, contiguous); b: Co (acc) or nullptr.
// out: N x Co x Hp x Wp contiguous; code: same shape, uint8.
template <typename T, typename acc_t>
void conv_relu_maxpool_forward_kernel_impl(const T* x, c10::IntArrayRef xs, const acc_t* w,
                                           const acc_t* b, const Geometry& g, T* out, uint8_t* code) {
  const Plan pl = make_plan(g, sizeof(acc_t));
  const int64_t K = g.K(), ld = pl.ld();
  const at::Tensor wt = wrap(const_cast<acc_t*>(w), g.Co, K, K);
  acc_t* const cols_p = scratch<acc_t>(0, K * ld);
  acc_t* const conv_p = scratch<acc_t>(1, g.Co * ld);
  for (int64_t c = 0, nc = chunks(g, pl); c < nc; ++c) {
    const Chunk k = chunk_at(g, pl, c);
    at::parallel_for(0, k.G * g.Ci, grain(g.kh * g.kw * k.M), [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {  // u = (image, input channel)
        const int64_t i = u / g.Ci, ci = u % g.Ci;
        im2col_rows(x + (k.n0 + i) * xs[0], xs[1], xs[2], xs[3], g, k.r0, k.R, cols_p + i * k.M, ld,
                    ci, ci + 1);
      }
    });
    at::Tensor ct = wrap(conv_p, g.Co, k.G * k.M, ld);
    gemm(wt, wrap(cols_p, K, k.G * k.M, ld), ct, false);
    at::parallel_for(0, k.G * g.Co, grain(k.M), [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {  // u = (image, output channel)
        const int64_t i = u / g.Co, co = u % g.Co;
        const acc_t* v = conv_p + co * ld + i * k.M;
        const acc_t bias = b ? b[co] : acc_t(0);
        const int64_t o = (((k.n0 + i) * g.Co + co) * g.Hp + k.p0) * g.Wp;
        if (is_bitmask(g.pkh, g.pkw)) {  // no pooling window: bias + ReLU, and the ReLU mask's bits
          const int64_t cw = g.Wcode();
          for (int64_t p = 0; p < k.np; ++p) {
            const acc_t* vr = v + (window_start(k.p0 + p, g.psh) - k.r0) * g.Wc;
            T* orow = out + o + p * g.Wp;
            uint8_t* crow = code + (((k.n0 + i) * g.Co + co) * g.Hp + k.p0 + p) * cw;
            std::fill(crow, crow + cw, uint8_t(0));
            for (int64_t q = 0; q < g.Wp; ++q) {
              const acc_t m = vr[q * g.psw] + bias;
              orow[q] = static_cast<T>(pooled_value(m));
              crow[q >> 3] |= static_cast<uint8_t>((m > acc_t(0)) << (q & 7));
            }
          }
          continue;
        }
        for (int64_t p = 0; p < k.np; ++p)
          pool_row(v + (window_start(k.p0 + p, g.psh) - k.r0) * g.Wc, g, bias, out + o + p * g.Wp,
                   code + o + p * g.Wp);
      }
    });
  }
}

// gy: N x Co x Hp x Wp (strides gs); code: contiguous. Accumulates into dxa (N x Ci x H x W
// contiguous, acc, zeroed; when need_x), dw (Co x K, acc, zeroed) and db (Co, acc, zeroed).
template <typename T, typename acc_t>
void conv_relu_maxpool_backward_kernel_impl(const T* gy, c10::IntArrayRef gs, const uint8_t* code,
                                            const T* x, c10::IntArrayRef xs, const acc_t* w,
                                            const Geometry& g, bool need_x, bool need_w, acc_t* dxa,
                                            acc_t* dw, acc_t* db) {
  const Plan pl = make_plan(g, sizeof(acc_t));
  const int64_t K = g.K(), ld = pl.ld(), img = g.Ci * g.H * g.W;
  const at::Tensor wt = wrap(const_cast<acc_t*>(w), g.Co, K, K);
  at::Tensor dwt = need_w ? wrap(dw, g.Co, K, K) : at::Tensor();
  acc_t* const cols_p = scratch<acc_t>(0, K * ld);
  acc_t* const dyc_p = scratch<acc_t>(1, g.Co * ld);
  for (int64_t c = 0, nc = chunks(g, pl); c < nc; ++c) {
    const Chunk k = chunk_at(g, pl, c);
    // Un-pool: the conv-output gradient of the chunk, through the codes (argmax and ReLU mask). One
    // output channel per task, so db[co] has one writer.
    std::atomic<bool> any{false};
    at::parallel_for(0, g.Co, grain(k.G * k.M), [&](int64_t begin, int64_t end) {
      for (int64_t co = begin; co < end; ++co) {
        for (int64_t i = 0; i < k.G; ++i) {
          acc_t* d = dyc_p + co * ld + i * k.M;
          std::fill(d, d + k.M, acc_t(0));
          const uint8_t* crows = code + (((k.n0 + i) * g.Co + co) * g.Hp + k.p0) * g.Wcode();
          const T* gyc = gy + (k.n0 + i) * gs[0] + co * gs[1] + k.p0 * gs[2];
          const bool bits = is_bitmask(g.pkh, g.pkw);
          for (int64_t p = 0; p < k.np; ++p)
            for (int64_t q = 0; q < g.Wp; ++q) {
              const uint8_t* crow = crows + p * g.Wcode();
              const uint8_t cd = bits ? (mask_bit(crow, q) ? uint8_t(0) : kNoGrad) : crow[q];
              if (cd == kNoGrad) continue;
              const acc_t v = static_cast<acc_t>(gyc[p * gs[2] + q * gs[3]]);
              d[(window_start(k.p0 + p, g.psh) - k.r0 + code_dy(cd, g.pkw)) * g.Wc + window_start(q, g.psw) +
                code_dx(cd, g.pkw)] += v;
              db[co] += v;
              any.store(true, std::memory_order_relaxed);
            }
        }
      }
    });
    if (!any.load()) continue;
    const at::Tensor dyt = wrap(dyc_p, g.Co, k.G * k.M, ld);
    if (need_w) {
      at::parallel_for(0, k.G * g.Ci, grain(g.kh * g.kw * k.M), [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const int64_t i = u / g.Ci, ci = u % g.Ci;
          im2col_rows(x + (k.n0 + i) * xs[0], xs[1], xs[2], xs[3], g, k.r0, k.R, cols_p + i * k.M,
                      ld, ci, ci + 1);
        }
      });
      gemm(dyt, wrap(cols_p, K, k.G * k.M, ld).t(), dwt, true);
    }
    if (need_x) {
      at::Tensor dct = wrap(cols_p, K, k.G * k.M, ld);
      gemm(wt.t(), dyt, dct, false);
      // One (image, input channel) plane per task: each plane of dx has one writer.
      at::parallel_for(0, k.G * g.Ci, grain(g.kh * g.kw * k.M), [&](int64_t begin, int64_t end) {
        for (int64_t u = begin; u < end; ++u) {
          const int64_t i = u / g.Ci, ci = u % g.Ci;
          col2im_rows(cols_p + i * k.M, g, k.r0, k.R, dxa + (k.n0 + i) * img, ld, ci, ci + 1);
        }
      });
    }
  }
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> conv_relu_maxpool_forward_cpu(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride) {
  const Geometry g = check_inputs(x, weight, bias, stride, padding, pool_kernel, pool_stride);
  const at::MemoryFormat mf = output_format(x);
  if (g.N > 0 && brgemm_runs(x.scalar_type())) {
    at::Tensor out = at::empty({g.N, g.Co, g.Hp, g.Wp}, x.options().memory_format(mf));
    at::Tensor code = at::empty({g.N, g.Co, g.Hp, g.Wcode()}, x.options().dtype(at::kByte).memory_format(mf));
    brgemm_forward(x, weight, bias, g, out, code);
    return {out, code};
  }
  // The kernel writes NCHW; a channels-last input gets channels-last results (one copy).
  at::Tensor out = at::empty({g.N, g.Co, g.Hp, g.Wp}, x.options());
  at::Tensor code = at::empty({g.N, g.Co, g.Hp, g.Wcode()}, x.options().dtype(at::kByte));
  if (g.N == 0) return {in_format(out, mf), in_format(code, mf)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_relu_maxpool_forward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor w = weight.to(acc).contiguous();
    const at::Tensor b = bias.has_value() ? bias->to(acc).contiguous() : at::Tensor();
    conv_relu_maxpool_forward_kernel_impl<scalar_t, acc_t>(
        x.const_data_ptr<scalar_t>(), x.strides(), w.const_data_ptr<acc_t>(),
        b.defined() ? b.const_data_ptr<acc_t>() : nullptr, g, out.data_ptr<scalar_t>(),
        code.data_ptr<uint8_t>());
  });
  return {in_format(out, mf), in_format(code, mf)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_relu_maxpool_backward_cpu(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& code,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride, std::array<bool, 3> output_mask) {
  const Geometry g = check_backward_inputs(grad_out, x, weight, code, stride, padding, pool_kernel, pool_stride);
  const bool need_x = output_mask[0], need_w = output_mask[1], need_b = output_mask[2];
  // Gradients not asked for come back as empty tensors (the Python wrapper turns them into None).
  const at::MemoryFormat mf = output_format(x);
  at::Tensor dx = at::empty({need_x ? g.N : 0, g.Ci, g.H, g.W}, x.options());
  at::Tensor dw = at::empty({need_w ? g.Co : 0, g.Ci, g.kh, g.kw}, weight.options().memory_format(output_format(weight)));
  at::Tensor db = at::empty({need_b ? g.Co : 0}, weight.options());
  if (!need_x && !need_w && !need_b) return {in_format(dx, mf), dw, db};
  const at::Tensor gy = grad_out.to(x.scalar_type());
  if (brgemm_runs(x.scalar_type()) && brgemm_backward_fits(g)) {  // codes in any strides
    at::Tensor dxl = at::empty({need_x ? g.N : 0, g.Ci, g.H, g.W}, x.options().memory_format(mf));
    brgemm_backward(gy, x, weight, code, g, need_x ? &dxl : nullptr, need_w ? &dw : nullptr, need_b ? &db : nullptr);
    return {dxl, dw, db};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "conv_relu_maxpool_backward_cpu", [&] {
    using acc_t = acc_of<scalar_t>;
    const auto acc = c10::CppTypeToScalarType<acc_t>::value;
    const at::Tensor w = weight.to(acc).contiguous();
    const at::Tensor cc = code.contiguous();
    // float/double accumulate into dx itself; float16/bfloat16 into a float32 copy, cast at the end.
    at::Tensor dxa = !need_x ? at::Tensor()
                     : std::is_same_v<scalar_t, acc_t> ? dx.zero_() : at::zeros(dx.sizes(), x.options().dtype(acc));
    at::Tensor dwa = at::zeros({need_w ? g.Co * g.K() : 0}, x.options().dtype(acc));
    at::Tensor dba = at::zeros({g.Co}, x.options().dtype(acc));
    if (g.N > 0)
      conv_relu_maxpool_backward_kernel_impl<scalar_t, acc_t>(
          gy.const_data_ptr<scalar_t>(), gy.strides(), cc.const_data_ptr<uint8_t>(),
          x.const_data_ptr<scalar_t>(), x.strides(), w.const_data_ptr<acc_t>(), g, need_x, need_w,
          need_x ? dxa.data_ptr<acc_t>() : nullptr, need_w ? dwa.data_ptr<acc_t>() : nullptr,
          dba.data_ptr<acc_t>());
    if (need_x && !std::is_same_v<scalar_t, acc_t>) dx.copy_(dxa);
    if (need_w) dw.copy_(dwa.view(dw.sizes()));
    if (need_b) db.copy_(dba);
  });
  return {in_format(dx, mf), dw, db};
}

}  // namespace crm

TORCH_LIBRARY_IMPL(pyalexnet, CPU, m) {
  m.impl("conv_relu_maxpool_forward", &crm::conv_relu_maxpool_forward_cpu);
  m.impl("conv_relu_maxpool_backward", &crm::conv_relu_maxpool_backward_cpu);
}

}  // namespace pyalexnet
