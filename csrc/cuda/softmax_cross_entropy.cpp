// Fused softmax + cross-entropy, CUDA Tensor wrappers: checks, device guard, outputs, launch on the
// current stream. The kernels live in softmax_cross_entropy_kernels.cu, which includes no ATen
// header: nvcc then compiles it in seconds, and a CPU emulation of CUDA can run it unchanged.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/softmax_cross_entropy_kernels.h"
#include "softmax_cross_entropy_checks.h"

namespace pyalexnet {
namespace xent {
namespace {

DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kDouble;
    default: TORCH_CHECK(false, "softmax_cross_entropy: unsupported logits dtype ", t);
  }
}

// The kernels read rows with unit column stride; any other layout is copied once.
at::Tensor unit_column_stride(const at::Tensor& x) {
  return (x.size(1) == 1 || x.stride(1) == 1) ? x : x.contiguous();
}

const void* opt_ptr(const at::Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> softmax_cross_entropy_forward_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction, double label_smoothing) {
  check_forward_inputs(logits, target, weight, label_smoothing);
  const int red = parse_reduction(std::string_view(reduction.data(), reduction.size()));
  c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = unit_column_stride(logits);
  const int64_t N = x.size(0), C = x.size(1);
  const auto acc = acc_dtype(x.scalar_type());
  const at::Tensor w = weight_as_acc(weight, x.scalar_type());
  auto acc_opts = x.options().dtype(acc);
  at::Tensor lse = at::empty({N, 2}, acc_opts);
  at::Tensor wstats = at::empty({2}, acc_opts);
  at::Tensor loss = red == kNone ? at::empty({N}, x.options()) : at::empty({}, x.options());
  at::Tensor row_loss = at::empty({red == kNone ? 0 : N}, acc_opts);
  at::Tensor row_w = at::empty({N}, acc_opts);

  ForwardArgs a{};
  a.dtype = kernel_dtype(x.scalar_type());
  a.target_i32 = target.scalar_type() == at::kInt;
  a.logits = x.const_data_ptr();
  a.N = N, a.C = C, a.row_stride = x.stride(0);
  a.target = target.const_data_ptr(), a.target_stride = target.stride(0);
  a.weight = opt_ptr(w);
  a.ignore_index = ignore_index, a.reduction = red, a.label_smoothing = label_smoothing;
  a.loss = loss.data_ptr(), a.lse = lse.data_ptr(), a.wstats = wstats.data_ptr();
  a.row_loss = red == kNone ? nullptr : row_loss.data_ptr();
  a.row_weight = row_w.data_ptr();
  C10_CUDA_CHECK(launch_softmax_cross_entropy_forward(a, c10::cuda::getCurrentCUDAStream()));
  return {loss, lse, wstats};
}

at::Tensor softmax_cross_entropy_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, const at::Tensor& lse, const at::Tensor& wstats,
    int64_t ignore_index, c10::string_view reduction, double label_smoothing) {
  const int red = check_backward(grad_loss, logits, target, weight, lse, wstats, reduction, label_smoothing);
  c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor x = unit_column_stride(logits);
  const int64_t N = x.size(0), C = x.size(1);
  const auto [w, go, lse_c, ws] = backward_small_inputs(grad_loss, x.scalar_type(), weight, lse, wstats);
  at::Tensor grad = at::empty({N, C}, x.options());

  BackwardArgs a{};
  a.dtype = kernel_dtype(x.scalar_type());
  a.target_i32 = target.scalar_type() == at::kInt;
  a.grad_loss = go.const_data_ptr(), a.grad_stride = go.dim() == 1 ? go.stride(0) : 0;
  a.logits = x.const_data_ptr();
  a.N = N, a.C = C, a.row_stride = x.stride(0);
  a.target = target.const_data_ptr(), a.target_stride = target.stride(0);
  a.weight = opt_ptr(w);
  a.lse = lse_c.const_data_ptr(), a.wstats = ws.const_data_ptr();
  a.ignore_index = ignore_index, a.reduction = red, a.label_smoothing = label_smoothing;
  a.grad_logits = grad.data_ptr();
  C10_CUDA_CHECK(launch_softmax_cross_entropy_backward(a, c10::cuda::getCurrentCUDAStream()));
  return grad;
}

}  // namespace xent

TORCH_LIBRARY_IMPL(pyalexnet, CUDA, m) {
  m.impl("softmax_cross_entropy_forward", &xent::softmax_cross_entropy_forward_cuda);
  m.impl("softmax_cross_entropy_backward", &xent::softmax_cross_entropy_backward_cuda);
}

}  // namespace pyalexnet
