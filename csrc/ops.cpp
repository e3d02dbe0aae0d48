// The one schema block of pyalexnet's ops (backward ops included) and the Python module _C.
// Kernels register themselves per backend: csrc/cpu/<op>.cpp and csrc/cuda/<op>.cpp.
#include <torch/library.h>

#include <Python.h>
#include <pybind11/pybind11.h>

#include "cpu/conv_brgemm.h"

#ifndef PYALEXNET_WITH_CUDA
#define PYALEXNET_WITH_CUDA 0
#endif

TORCH_LIBRARY(pyalexnet, m) {
  // loss (N,) for reduction 'none' else (), in logits' dtype; lse (N, 2) = per row {max, log of the
  // sum of exp(logit - max)} (their sum is the log-sum-exp) and wstats (2,) =
  // {sum of used target weights, sum of all class weights} in float32 (float64 for float64 logits).
  m.def(
      "softmax_cross_entropy_forward(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "str reduction, float label_smoothing) -> (Tensor loss, Tensor lse, Tensor wstats)");
  m.def(
      "softmax_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, "
      "Tensor lse, Tensor wstats, int ignore_index, str reduction, float label_smoothing) -> Tensor");
  // out: max_pool2d(relu(conv2d(x, weight, bias, stride, padding)), pool_kernel, pool_stride), floor
  // mode; argmax: uint8, per pooled output the offset of its window's maximum, or 255 where no
  // gradient flows; for a 1x1 pool window, the ReLU mask's bits, N x Co x Hp x ceil(Wp / 8). Backward returns empty tensors for the gradients output_mask does not ask for.
  m.def(
      "conv_relu_maxpool_forward(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] pool_kernel, int[2] pool_stride) -> (Tensor out, Tensor argmax)");
  m.def(
      "conv_relu_maxpool_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor argmax, int[2] stride, "
      "int[2] padding, int[2] pool_kernel, int[2] pool_stride, bool[3] output_mask) "
      "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}

namespace py = pybind11;

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "pyalexnet's compiled kernels; importing this module registers torch.ops.pyalexnet";
  mod.def("build_info", [] {
    py::dict d;
    d["torch_version"] = PYALEXNET_TORCH_VERSION;
    d["cuda"] = static_cast<bool>(PYALEXNET_WITH_CUDA);
    d["cuda_version"] = PYALEXNET_WITH_CUDA ? py::object(py::str(PYALEXNET_CUDA_VERSION)) : py::none();
    py::list archs;
    std::string a = PYALEXNET_CUDA_ARCHS;
    for (size_t start = 0; !a.empty() && start <= a.size();) {
      size_t end = a.find(',', start);
      if (end == std::string::npos) end = a.size();
      archs.append(a.substr(start, end - start));
      start = end + 1;
    }
    d["cuda_archs"] = archs;
    d["compiler"] = __VERSION__;
    return d;
  }, "What this extension was compiled with: torch and CUDA versions, architectures.");
  mod.def("cpu_conv_kernel", [](const std::string& dtype) {
    static const std::pair<const char*, at::ScalarType> names[] = {
        {"float32", at::kFloat}, {"float64", at::kDouble}, {"float16", at::kHalf}, {"bfloat16", at::kBFloat16}};
    for (const auto& [name, dt] : names)
      if (dtype == name) return pyalexnet::crm::cpu_conv_kernel(dt);
    throw py::value_error("cpu_conv_kernel: dtype must be float32, float64, float16 or bfloat16, not '" + dtype + "'");
  }, py::arg("dtype"),
     "The CPU kernel that runs the conv op for this dtype here and now: 'brgemm-bf16', 'brgemm-f16', "
     "'brgemm-f32' or 'portable' (PYALEXNET_CPU_PORTABLE=1 forces the latter).");
  mod.def("cpu_conv_tiling", &pyalexnet::crm::cpu_conv_tiling,
          "How the brgemm conv kernel cuts its products here and now: 'wide' (AVX-512: 64-channel blocks, one "
          "product per conv row) or 'narrow' (AVX2: 32-channel blocks, conv rows stacked); "
          "PYALEXNET_CPU_TILING=wide|narrow forces either.");
}
