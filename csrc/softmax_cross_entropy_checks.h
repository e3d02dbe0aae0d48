// Input checks of the softmax cross-entropy op, shared by its CPU and CUDA Tensor wrappers so that
// both backends refuse the same inputs with the same messages.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <string_view>

#include "common/softmax_cross_entropy_math.h"

namespace pyalexnet {
namespace xent {

inline int parse_reduction(std::string_view r) {
  if (r == "none") return kNone;
  if (r == "mean") return kMean;
  if (r == "sum") return kSum;
  TORCH_CHECK(false, "softmax_cross_entropy: reduction must be 'none', 'mean' or 'sum', got '",
              std::string(r), "'");
}

// The dtype of every float32-or-better intermediate: the log-sum-exp, the weights, the sums.
inline at::ScalarType acc_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void check_forward_inputs(const at::Tensor& logits, const at::Tensor& target,
                                 const std::optional<at::Tensor>& weight, double label_smoothing) {
  const char* op = "softmax_cross_entropy: ";
  auto dt = logits.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble, op,
              "logits must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK(logits.dim() == 2, op, "logits must be 2-D (N, C) here, got shape ", logits.sizes());
  TORCH_CHECK(logits.size(1) > 0, op, "logits need at least one class, got shape ", logits.sizes());
  TORCH_CHECK(target.scalar_type() == at::kLong || target.scalar_type() == at::kInt, op,
              "target must hold class indices as int64 or int32, got ", target.scalar_type());
  TORCH_CHECK(target.dim() == 1 && target.size(0) == logits.size(0), op,
              "target must have shape (N,) = (", logits.size(0), ",) to match logits ",
              logits.sizes(), ", got ", target.sizes());
  TORCH_CHECK(target.device() == logits.device(), op, "target is on ", target.device(),
              " but logits are on ", logits.device());
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK(w.device() == logits.device(), op, "weight is on ", w.device(),
                " but logits are on ", logits.device());
    TORCH_CHECK(at::isFloatingType(w.scalar_type()), op, "weight must be floating point, got ",
                w.scalar_type());
    TORCH_CHECK(w.dim() == 1 && w.size(0) == logits.size(1), op,
                "weight must have one entry per class, shape (", logits.size(1), ",), got ",
                w.sizes());
  }
  TORCH_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0, op,
              "label_smoothing must lie in [0, 1], got ", label_smoothing);
}

inline void check_backward_inputs(const at::Tensor& grad_loss, const at::Tensor& logits,
                                  const at::Tensor& lse, const at::Tensor& wstats, int reduction) {
  const char* op = "softmax_cross_entropy_backward: ";
  if (reduction == kNone) {
    TORCH_CHECK(grad_loss.dim() == 1 && grad_loss.size(0) == logits.size(0), op,
                "grad_loss must have shape (N,) = (", logits.size(0), ",), got ", grad_loss.sizes());
  } else {
    TORCH_CHECK(grad_loss.numel() == 1, op, "grad_loss must be a scalar, got ", grad_loss.sizes());
  }
  TORCH_CHECK(at::isFloatingType(grad_loss.scalar_type()), op, "grad_loss must be floating point");
  auto acc = acc_dtype(logits.scalar_type());
  TORCH_CHECK(lse.dim() == 2 && lse.size(0) == logits.size(0) && lse.size(1) == 2 &&
                  lse.scalar_type() == acc, op,
              "lse must be the (N, 2) ", acc, " (row max, log-sum-exp) that forward returned, got ",
              lse.sizes(), " ", lse.scalar_type());
  TORCH_CHECK(wstats.numel() == 2 && wstats.scalar_type() == acc, op,
              "wstats must be the 2-element ", acc, " tensor that forward returned");
  for (const at::Tensor* t : {&grad_loss, &lse, &wstats}) {
    TORCH_CHECK(t->device() == logits.device(), op, "all tensors must be on ", logits.device(),
                ", got one on ", t->device());
  }
}

// The class weights as a contiguous vector of the accumulation dtype (C elements: cheap), or an
// undefined tensor when there are none.
inline at::Tensor weight_as_acc(const std::optional<at::Tensor>& weight, at::ScalarType logits_dt) {
  if (!weight.has_value()) return at::Tensor();
  return weight->to(acc_dtype(logits_dt)).contiguous();
}

// Every check of the backward op; returns the reduction.
inline int check_backward(const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
                          const std::optional<at::Tensor>& weight, const at::Tensor& lse,
                          const at::Tensor& wstats, c10::string_view reduction, double label_smoothing) {
  check_forward_inputs(logits, target, weight, label_smoothing);
  const int red = parse_reduction(std::string_view(reduction.data(), reduction.size()));
  check_backward_inputs(grad_loss, logits, lse, wstats, red);
  return red;
}

// The small inputs of backward in the layout its kernels read: weights and the incoming gradient in
// the accumulation dtype (the gradient keeps its strides, stride 0 included, when it already is),
// the row statistics contiguous. On CUDA call it under the device guard: conversions allocate.
struct BackwardSmallInputs {
  at::Tensor w, go, lse, wstats;
};

inline BackwardSmallInputs backward_small_inputs(const at::Tensor& grad_loss, at::ScalarType logits_dt,
                                                 const std::optional<at::Tensor>& weight,
                                                 const at::Tensor& lse, const at::Tensor& wstats) {
  return {weight_as_acc(weight, logits_dt), grad_loss.to(acc_dtype(logits_dt)), lse.contiguous(),
          wstats.contiguous()};
}

}  // namespace xent
}  // namespace pyalexnet
