// Fused conv2d + ReLU + max-pool, CUDA Tensor wrappers: checks, device guard, the conversions at
// the edge (input and incoming gradient to channels-last, weights packed as GEMM operands in the
// compute type), outputs, launch on the current stream. The kernels live in
// conv_relu_maxpool_{forward,unpool,dgrad,wgrad,backward}.cu, which include no ATen header.
#include <ATen/Context.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime_api.h>

#include <cstdlib>

#include "conv_relu_maxpool_checks.h"
#include "cuda/conv_relu_maxpool_kernels.h"

namespace pyalexnet {
namespace crm {
namespace {

constexpr auto kCL = at::MemoryFormat::ChannelsLast;

DType kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat;
    case at::kHalf: return DType::kHalf;
    case at::kBFloat16: return DType::kBFloat16;
    case at::kDouble: return DType::kDouble;
    default: TORCH_CHECK(false, "conv_relu_maxpool: unsupported dtype ", t);
  }
}

// The compute type of the packed weights and the accumulator type (bias) of each dtype.
at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// float32 runs as TF32 on the tensor cores where PyTorch lets cuDNN's convolutions do so.
bool use_tf32(at::ScalarType t) { return t == at::kFloat && at::globalContext().allowTF32CuDNN(); }

// The forward kernels' version: 2 (cp.async operand copies through 4 stages), unless
// PYALEXNET_CONV_VERSION=1 asks for the first version (loads and stores through 2 stages). Read at
// every call, so that one process can time both (bench/compare.py); both give the same bits. The
// backward has one version.
int kernels_version() {
  const char* v = std::getenv("PYALEXNET_CONV_VERSION");
  if (!v || !*v) return 2;
  TORCH_CHECK((v[0] == '1' || v[0] == '2') && v[1] == '\0', "PYALEXNET_CONV_VERSION must be 1 or 2, got '", v, "'");
  return v[0] - '0';
}

// The kernels index image rows, columns and GEMM K (the forward's kh kw Cp, the data gradient's kh
// kw Cd: the packed operands' channels a tap, K rounded up to the K step) in 32-bit arithmetic;
// offsets into tensors stay 64-bit.
void check_32bit_sizes(const Geometry& g, at::ScalarType dt) {
  const DType kd = kernel_dtype(dt);
  const bool tf32 = use_tf32(dt);
  const int64_t lim = (int64_t(1) << 31) - 1024, taps = g.kh * g.kw, km = conv_relu_maxpool_k_multiple(kd, tf32);
  const auto padded = [&](int64_t c) { return (taps * c + km - 1) / km * km; };
  const int64_t kf = padded(conv_relu_maxpool_packed_channels(kd, tf32, g.Ci));
  const int64_t kb = padded(conv_relu_maxpool_dgrad_channels(kd, tf32, g.Co));
  TORCH_CHECK(kf < lim && kb < lim && g.H + 2 * g.ph < lim && g.W + 2 * g.pw < lim,
              "conv_relu_maxpool (CUDA): kernel height x width x channels and the padded image size must be "
              "below 2^31, got kh kw Ci = ", g.K(), ", kh kw Co = ", g.kh * g.kw * g.Co, ", padded H x W = ",
              g.H + 2 * g.ph, " x ", g.W + 2 * g.pw);
}

// NHWC, contiguous, 16-byte aligned (the kernels' vector loads), in x's dtype.
at::Tensor nhwc(const at::Tensor& x, at::ScalarType dtype) {
  at::Tensor t = x.to(dtype).contiguous(kCL);
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 != 0) t = t.clone(kCL);  // a view at an odd offset
  return t;
}

// rows x cols (already permuted) as a row-major matrix of `dtype`, columns zero-padded to a
// multiple of `multiple`.
at::Tensor pack(const at::Tensor& m, int64_t rows, int64_t cols, int64_t multiple, at::ScalarType dtype) {
  const int64_t padded = (cols + multiple - 1) / multiple * multiple;
  at::Tensor t = m.reshape({rows, cols});
  if (padded != cols) t = at::constant_pad_nd(t, {0, padded - cols}, 0);
  t = t.to(dtype).contiguous();  // may be m itself, a view
  // The kernels copy 16-byte pieces of the rows: a weight viewed at an offset that is not a multiple
  // of 16 bytes (a slice of a larger tensor) is copied to fresh memory.
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % 16 != 0) t = t.clone();
  return t;
}

// m (rows x kh x kw x c, a permuted weight) packed as rows x (ky, kx, channel < cp): each tap's c
// channels zero-padded to cp, then as pack.
at::Tensor pack_taps(at::Tensor m, int64_t cp, int64_t multiple, at::ScalarType dtype) {
  const int64_t rows = m.size(0), taps = m.size(1) * m.size(2), c = m.size(3);
  if (cp != c) m = at::constant_pad_nd(m, {0, cp - c}, 0);
  return pack(m, rows, taps * cp, multiple, dtype);
}

// The packed float32 weights rounded to TF32 on the device, as the kernels expect them with `tf32`;
// a copy where pack gave back the weight itself (rows already padded, nothing converted).
at::Tensor rounded_tf32(at::Tensor w, const at::Tensor& weight) {
  if (w.is_alias_of(weight)) w = w.clone();
  float* p = w.mutable_data_ptr<float>();
  C10_CUDA_CHECK(launch_conv_relu_maxpool_round_tf32(p, p, w.numel(), c10::cuda::getCurrentCUDAStream()));
  return w;
}

// x rounded to TF32 into a new tensor (the weight gradient's operand with tf32).
at::Tensor rounded_tf32_copy(const at::Tensor& x) {
  at::Tensor r = at::empty_like(x, x.options().memory_format(kCL));
  C10_CUDA_CHECK(launch_conv_relu_maxpool_round_tf32(x.const_data_ptr<float>(), r.mutable_data_ptr<float>(), x.numel(),
                                                     c10::cuda::getCurrentCUDAStream()));
  return r;
}

Shape shape_of(const Geometry& g) {
  return Shape{g.N, g.Ci, g.H, g.W, g.Co, g.kh, g.kw, g.sh, g.sw, g.ph, g.pw, g.pkh, g.pkw, g.psh, g.psw,
               g.Hc, g.Wc, g.Hp, g.Wp};
}

int sm_count(const at::Device& d) {
  int v = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, d.index()));
  return v;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> conv_relu_maxpool_forward_cuda(
    const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride) {
  const Geometry g = check_inputs(x, weight, bias, stride, padding, pool_kernel, pool_stride);
  check_32bit_sizes(g, x.scalar_type());
  c10::cuda::CUDAGuard guard(x.device());
  const at::MemoryFormat mf = output_format(x);
  at::Tensor out = at::empty({g.N, g.Co, g.Hp, g.Wp}, x.options().memory_format(kCL));
  at::Tensor code = at::empty({g.N, g.Co, g.Hp, g.Wcode()}, x.options().dtype(at::kByte).memory_format(kCL));
  if (g.N > 0) {
    const auto dt = x.scalar_type();
    const bool tf32 = use_tf32(dt);
    const at::Tensor xc = nhwc(x, dt);
    const int64_t km = conv_relu_maxpool_k_multiple(kernel_dtype(dt), tf32);
    const auto ct = dt == at::kFloat ? at::kFloat : dt;  // the packed weights' type
    // Co x (ky, kx, ci): the forward GEMM's B operand, one row per output channel, its channels
    // zero-padded to the kernels' Cp.
    const int64_t cp = conv_relu_maxpool_packed_channels(kernel_dtype(dt), tf32, g.Ci);
    at::Tensor w = pack_taps(weight.permute({0, 2, 3, 1}), cp, km, ct);
    if (tf32) w = rounded_tf32(w, weight);
    const at::Tensor b = bias.has_value() ? bias->to(acc_type(dt)).contiguous() : at::Tensor();
    ForwardArgs a{};
    a.dtype = kernel_dtype(dt), a.tf32 = tf32, a.version = kernels_version(), a.g = shape_of(g);
    a.x = xc.const_data_ptr(), a.w = w.const_data_ptr(), a.Kp = w.size(1);
    a.bias = b.defined() ? b.const_data_ptr() : nullptr;
    a.out = out.data_ptr(), a.code = code.data_ptr();
    // the conv output where its tiles run flat (freed when the call returns; the caching allocator
    // keeps it for the next call)
    const int64_t wsb = conv_relu_maxpool_forward_workspace_bytes(a);
    const at::Tensor ws = wsb > 0 ? at::empty({wsb}, x.options().dtype(at::kByte)) : at::Tensor();
    a.workspace = wsb > 0 ? ws.data_ptr() : nullptr;
    C10_CUDA_CHECK(launch_conv_relu_maxpool_forward(a, c10::cuda::getCurrentCUDAStream()));
  }
  return {in_format(out, mf), in_format(code, mf)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> conv_relu_maxpool_backward_cuda(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& code,
    c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef pool_kernel,
    c10::IntArrayRef pool_stride, std::array<bool, 3> output_mask) {
  const Geometry g = check_backward_inputs(grad_out, x, weight, code, stride, padding, pool_kernel, pool_stride);
  check_32bit_sizes(g, x.scalar_type());
  c10::cuda::CUDAGuard guard(x.device());
  const bool need_x = output_mask[0], need_w = output_mask[1], need_b = output_mask[2];
  const at::MemoryFormat mf = output_format(x);
  // Gradients not asked for come back as empty tensors (the Python wrapper turns them into None).
  at::Tensor dx = at::empty({need_x ? g.N : 0, g.Ci, g.H, g.W}, x.options().memory_format(kCL));
  at::Tensor dw = at::empty({need_w ? g.Co : 0, g.Ci, g.kh, g.kw}, weight.options());
  at::Tensor db = at::empty({need_b ? g.Co : 0}, weight.options());
  const at::MemoryFormat wf = output_format(weight);
  if (g.N == 0) {  // no outputs: zero gradients
    dw.zero_(), db.zero_();
    return {in_format(dx, mf), in_format(dw, wf), db};
  }
  if (!need_x && !need_w && !need_b) return {in_format(dx, mf), in_format(dw, wf), db};
  const auto dt = x.scalar_type();
  const bool tf32 = use_tf32(dt);
  const at::Tensor gy = nhwc(grad_out, dt);
  const at::Tensor cc = code.contiguous(kCL);
  // x for the weight gradient; with TF32 a rounded copy, so that its K steps need not round it
  const at::Tensor xc = need_w ? (tf32 ? rounded_tf32_copy(nhwc(x, dt)) : nhwc(x, dt)) : at::Tensor();
  const int64_t km = conv_relu_maxpool_k_multiple(kernel_dtype(dt), tf32);
  // Ci x (ky, kx, co): the data gradient's B operand, one row per input channel, its channels
  // zero-padded to the kernels' Cd.
  at::Tensor wt;
  if (need_x) {
    const int64_t cd = conv_relu_maxpool_dgrad_channels(kernel_dtype(dt), tf32, g.Co);
    wt = pack_taps(weight.permute({1, 2, 3, 0}), cd, km, dt);
    if (tf32) wt = rounded_tf32(wt, weight);
  }
  BackwardArgs a{};
  a.dtype = kernel_dtype(dt), a.tf32 = tf32, a.g = shape_of(g);
  a.sm_count = sm_count(x.device());
  a.gy = gy.const_data_ptr(), a.code = cc.const_data_ptr();
  a.x = need_w ? xc.const_data_ptr() : nullptr;
  a.wt = need_x ? wt.const_data_ptr() : nullptr, a.Kdp = need_x ? wt.size(1) : 0;
  a.dx = need_x ? dx.data_ptr() : nullptr;
  a.dw = need_w ? dw.data_ptr() : nullptr;
  a.db = need_b ? db.data_ptr() : nullptr;
  const at::Tensor ws = at::empty({conv_relu_maxpool_backward_workspace_bytes(a)}, x.options().dtype(at::kByte));
  a.workspace = ws.data_ptr();
  C10_CUDA_CHECK(launch_conv_relu_maxpool_backward(a, c10::cuda::getCurrentCUDAStream()));
  return {in_format(dx, mf), in_format(dw, wf), db};
}

}  // namespace crm

TORCH_LIBRARY_IMPL(pyalexnet, CUDA, m) {
  m.impl("conv_relu_maxpool_forward", &crm::conv_relu_maxpool_forward_cuda);
  m.impl("conv_relu_maxpool_backward", &crm::conv_relu_maxpool_backward_cuda);
}

}  // namespace pyalexnet
