// Autograd of the softmax cross-entropy op, in C++ for every backend: at 128 x 10 the op itself takes
// a few microseconds, and a Python autograd kernel (torch.library.register_autograd) cost as much
// again per call, forward and backward. Forward and backward go through the dispatcher, so the CPU,
// CUDA and fake (meta) kernels all serve, and torch.compile traces it like a built-in op.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>

namespace pyalexnet {
namespace xent {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, c10::string_view,
    double);
using BackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
                               int64_t, c10::string_view, double);

const c10::TypedOperatorHandle<ForwardSig>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyalexnet::softmax_cross_entropy_forward", "")
                             .typed<ForwardSig>();
  return op;
}

const c10::TypedOperatorHandle<BackwardSig>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("pyalexnet::softmax_cross_entropy_backward", "")
                             .typed<BackwardSig>();
  return op;
}

// Outputs (loss, lse, wstats); only loss is differentiable. Saved: logits, target, weight (undefined
// when absent), lse, wstats: never the N x C softmax.
struct SoftmaxCrossEntropy : public torch::autograd::Function<SoftmaxCrossEntropy> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, const at::Tensor& target,
                               const std::optional<at::Tensor>& weight, int64_t ignore_index,
                               c10::string_view reduction, double label_smoothing) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [loss, lse, wstats] =
        forward_op().call(logits, target, weight, ignore_index, reduction, label_smoothing);
    ctx->save_for_backward({logits, target, weight.value_or(at::Tensor()), lse, wstats});
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["label_smoothing"] = label_smoothing;
    ctx->mark_non_differentiable({lse, wstats});
    // lse and wstats never get a gradient: left undefined rather than filled with zeros (two
    // at::zeros a backward call, ~6 us at 128 x 10)
    ctx->set_materialize_grads(false);
    return {loss, lse, wstats};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    at::Tensor grad_logits;
    if (ctx->needs_input_grad(0) && grads[0].defined()) {
      const variable_list s = ctx->get_saved_variables();
      const std::optional<at::Tensor> weight = s[2].defined() ? std::optional<at::Tensor>(s[2]) : std::nullopt;
      const std::string& reduction = ctx->saved_data["reduction"].toStringRef();
      grad_logits = backward_op().call(grads[0], s[0], s[1], weight, s[3], s[4],
                                       ctx->saved_data["ignore_index"].toInt(), reduction,
                                       ctx->saved_data["label_smoothing"].toDouble());
    }
    return {grad_logits, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> forward_autograd(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction, double label_smoothing) {
  variable_list out =
      SoftmaxCrossEntropy::apply(logits, target, weight, ignore_index, reduction, label_smoothing);
  return {out[0], out[1], out[2]};
}

}  // namespace
}  // namespace xent

TORCH_LIBRARY_IMPL(pyalexnet, Autograd, m) {
  m.impl("softmax_cross_entropy_forward", &xent::forward_autograd);
}

}  // namespace pyalexnet
