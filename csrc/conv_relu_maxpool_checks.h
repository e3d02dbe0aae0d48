// Input checks and geometry of the fused conv + ReLU + max-pool op, shared by its CPU and CUDA
// Tensor wrappers so that both backends accept and refuse the same inputs with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/ArrayRef.h>
#include <c10/util/Exception.h>

#include <optional>
#include <vector>

#include "common/conv_relu_maxpool_index.h"

namespace pyalexnet {
namespace crm {

struct Geometry {
  int64_t N, Ci, H, W;        // input
  int64_t Co, kh, kw;         // weight: Co x Ci x kh x kw
  int64_t sh, sw, ph, pw;     // conv stride, padding
  int64_t pkh, pkw, psh, psw; // pool kernel, stride
  int64_t Hc, Wc;             // conv output (never stored whole)
  int64_t Hp, Wp;             // pooled output
  int64_t K() const { return Ci * kh * kw; }
  int64_t Wcode() const { return code_width(Wp, pkh, pkw); }  // bytes of codes per pooled row
};

inline void check_pair(c10::IntArrayRef v, const char* name, int64_t min) {
  TORCH_CHECK(v.size() == 2, "conv_relu_maxpool: ", name, " must have 2 values (h, w), got ", v);
  TORCH_CHECK(v[0] >= min && v[1] >= min, "conv_relu_maxpool: ", name, " must be >= ", min,
              ", got ", v);
}

inline Geometry check_inputs(const at::Tensor& x, const at::Tensor& w, const std::optional<at::Tensor>& b,
                             c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef pool_kernel, c10::IntArrayRef pool_stride) {
  const char* op = "conv_relu_maxpool: ";
  auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op,
              "input must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(x.dim() == 4, op, "input must be 4-D (N, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(w.dim() == 4, op, "weight must be 4-D (out_channels, in_channels, kh, kw), got shape ",
              w.sizes());
  TORCH_CHECK(w.scalar_type() == dt, op, "weight dtype ", w.scalar_type(), " differs from input dtype ", dt);
  TORCH_CHECK(w.device() == x.device(), op, "weight is on ", w.device(), " but input is on ", x.device());
  TORCH_CHECK(x.size(1) == w.size(1), op, "input has ", x.size(1), " channels but weight expects ",
              w.size(1), " (weight shape ", w.sizes(), ")");
  TORCH_CHECK(w.size(0) > 0 && w.size(2) > 0 && w.size(3) > 0, op, "weight has an empty dimension: ",
              w.sizes());
  if (b.has_value()) {
    TORCH_CHECK(b->dim() == 1 && b->size(0) == w.size(0), op, "bias must have shape (", w.size(0),
                ",), got ", b->sizes());
    TORCH_CHECK(b->scalar_type() == dt, op, "bias dtype ", b->scalar_type(), " differs from input dtype ", dt);
    TORCH_CHECK(b->device() == x.device(), op, "bias is on ", b->device(), " but input is on ", x.device());
  }
  check_pair(stride, "stride", 1);
  check_pair(padding, "padding", 0);
  check_pair(pool_kernel, "pool_kernel", 1);
  check_pair(pool_stride, "pool_stride", 1);
  Geometry g{};
  g.N = x.size(0), g.Ci = x.size(1), g.H = x.size(2), g.W = x.size(3);
  g.Co = w.size(0), g.kh = w.size(2), g.kw = w.size(3);
  g.sh = stride[0], g.sw = stride[1], g.ph = padding[0], g.pw = padding[1];
  g.pkh = pool_kernel[0], g.pkw = pool_kernel[1], g.psh = pool_stride[0], g.psw = pool_stride[1];
  TORCH_CHECK(g.pkh * g.pkw <= kMaxWindow, op, "pool windows may have at most ", kMaxWindow,
              " positions, got ", pool_kernel);
  TORCH_CHECK(g.H + 2 * g.ph >= g.kh && g.W + 2 * g.pw >= g.kw, op, "input ", x.sizes(),
              " padded by ", padding, " is smaller than the kernel ", g.kh, "x", g.kw,
              ": the convolution output would be empty");
  g.Hc = conv_out_size(g.H, g.kh, g.sh, g.ph), g.Wc = conv_out_size(g.W, g.kw, g.sw, g.pw);
  TORCH_CHECK(g.Hc >= g.pkh && g.Wc >= g.pkw, op, "the convolution output is ", g.Hc, "x", g.Wc,
              ", smaller than the pool window ", pool_kernel, ": the output would be empty");
  g.Hp = pool_out_size(g.Hc, g.pkh, g.psh), g.Wp = pool_out_size(g.Wc, g.pkw, g.psw);
  return g;
}

// The layout of the op's outputs (out, argmax, grad_x): channels-last for a channels-last input
// (the layout the CUDA kernels compute in, so a channels-last network stays channels-last end to
// end), else contiguous NCHW; grad_weight's from the weight the same way (as autograd would copy it
// to). pyalexnet/ops.py's fake kernels make the same choice.
inline at::MemoryFormat output_format(const at::Tensor& x) {
  return !x.is_contiguous() && x.is_contiguous(at::MemoryFormat::ChannelsLast) ? at::MemoryFormat::ChannelsLast
                                                                               : at::MemoryFormat::Contiguous;
}

// t in memory format mf (a copy only when needed; an empty t is remade with mf's strides, which
// contiguous() would not do).
inline at::Tensor in_format(const at::Tensor& t, at::MemoryFormat mf) {
  return t.numel() ? t.contiguous(mf) : at::empty(t.sizes(), t.options().memory_format(mf));
}

// The backward op's checks beyond check_inputs: grad_out and argmax must be what forward made.
inline Geometry check_backward_inputs(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& code, c10::IntArrayRef stride, c10::IntArrayRef padding,
                                      c10::IntArrayRef pool_kernel, c10::IntArrayRef pool_stride) {
  const Geometry g = check_inputs(x, weight, std::nullopt, stride, padding, pool_kernel, pool_stride);
  const char* op = "conv_relu_maxpool_backward: ";
  const std::vector<int64_t> oshape{g.N, g.Co, g.Hp, g.Wp};
  TORCH_CHECK(grad_out.sizes() == c10::IntArrayRef(oshape), op, "grad_out must have shape ",
              c10::IntArrayRef(oshape), ", got ", grad_out.sizes());
  const std::vector<int64_t> cshape{g.N, g.Co, g.Hp, g.Wcode()};
  TORCH_CHECK(code.sizes() == c10::IntArrayRef(cshape) && code.scalar_type() == at::kByte, op,
              "argmax must be the uint8 tensor of shape ", c10::IntArrayRef(cshape), " that forward returned");
  TORCH_CHECK(grad_out.device() == x.device() && code.device() == x.device(), op,
              "grad_out and argmax must be on ", x.device());
  return g;
}

}  // namespace crm
}  // namespace pyalexnet
