// The conv op's CPU kernels on oneDNN's batch-reduce GEMM micro-kernel (at::native::cpublas::brgemm),
// and the choice between them and the portable kernels of conv_relu_maxpool.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>

#include "conv_relu_maxpool_checks.h"

namespace pyalexnet {
namespace crm {

// "brgemm-bf16", "brgemm-f16" (16-bit products, float32 sums), "brgemm-f32", or "portable": the CPU
// kernel that runs the conv op for inputs of dtype dt on this machine. "portable" for float64, where
// the micro-kernel is missing or refuses this CPU, and whenever the environment variable
// PYALEXNET_CPU_PORTABLE is set to anything but "" or "0" (read at each call).
std::string cpu_conv_kernel(at::ScalarType dt);
bool brgemm_runs(at::ScalarType dt);  // cpu_conv_kernel(dt) != "portable"
// How the brgemm kernel cuts its products here and now: "wide" (64-channel blocks, one product per
// conv row: AVX-512) or "narrow" (32, conv rows stacked: AVX2); PYALEXNET_CPU_TILING forces either.
std::string cpu_conv_tiling();

// The brgemm backward works a whole image at a time in per-thread scratch, and keeps the weight
// gradient's inputs for a range of images (up to 16 MiB) in scratch the threads share (all kept for
// the next call); shapes whose scratch would pass kBackwardScratchBytes go to the portable kernels,
// whose scratch is bounded by their chunks.
constexpr int64_t kBackwardScratchBytes = int64_t(256) << 20;
bool brgemm_backward_fits(const Geometry& g);

// out: N x Co x Hp x Wp and code: N x Co x Hp x Wcode, each with any strides (the caller allocates
// both in the output's memory format, so that neither is copied).
void brgemm_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    const Geometry& g, at::Tensor& out, at::Tensor& code);

// code with any strides. The gradients asked for (dx: N x Ci x H x W with any strides; dw:
// Co x Ci x kh x kw and db: Co, contiguous) are written whole; nullptr: not asked for.
void brgemm_backward(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight,
                     const at::Tensor& code, const Geometry& g, at::Tensor* dx, at::Tensor* dw, at::Tensor* db);

}  // namespace crm
}  // namespace pyalexnet
