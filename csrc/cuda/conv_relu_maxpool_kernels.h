// Launch interface of the fused conv2d + ReLU + max-pool CUDA kernels: raw pointers and a stream,
// no ATen, so that the .cu file compiles in seconds and runs unchanged in the CPU emulation of CUDA.
// Every tensor is channels-last (NHWC) and contiguous; the Tensor wrapper converts at the edge.
#pragma once

#if defined(PYA_CUDA_EMULATION)
#include "cuda/emulation.h"  // the tests' CPU emulation of CUDA (tests/emulation)
#else
#include <cuda_runtime_api.h>
#endif

#include <cstdint>

namespace pyalexnet {
namespace crm {

enum class DType : int { kFloat, kHalf, kBFloat16, kDouble };

// Sizes as in conv_relu_maxpool_index.h: input N x Ci x H x W, weight Co x Ci x kh x kw, conv output
// Hc x Wc, pooled output Hp x Wp.
struct Shape {
  int64_t N, Ci, H, W, Co, kh, kw, sh, sw, ph, pw, pkh, pkw, psh, psw, Hc, Wc, Hp, Wp;
};

// "compute type" below: float for float32 (rounded to TF32 in the kernel when `tf32`), double for
// float64, the input's own type for float16/bfloat16; "acc": double for float64, else float.
struct ForwardArgs {
  DType dtype;
  bool tf32;          // float32 on the tensor cores (TF32 inputs, float accumulation)
  int version;        // 2: cp.async operand copies, 4 stages; 1: the first version (loads + stores, 2);
                      // the backward has one version
  Shape g;
  const void* x;      // N x H x W x Ci, dtype
  const void* w;      // Co x Kp, compute type; column k = (ky kw + kx) Cp + ci, zero for ci >= Ci and
                      // past K = kh kw Cp, Cp = conv_relu_maxpool_packed_channels(dtype, tf32, Ci);
                      // tf32: rounded (launch_conv_relu_maxpool_round_tf32)
  int64_t Kp;         // K rounded up to a multiple of 64 bytes of the compute type
  const void* bias;   // Co (acc) or nullptr
  void* out;          // N x Hp x Wp x Co, dtype
  void* code;         // N x Hp x Wcode x Co, uint8 (conv_relu_maxpool_index.h)
  void* workspace;    // forward_workspace_bytes(*this) bytes, 16-byte aligned (nullptr where 0)
};

struct BackwardArgs {
  DType dtype;
  bool tf32;
  Shape g;
  int sm_count;        // multiprocessors: sizes the weight gradient's split over positions
  const void* gy;      // N x Hp x Wp x Co, dtype
  const void* code;    // N x Hp x Wcode x Co, uint8
  const void* x;       // N x H x W x Ci, dtype; tf32: rounded (launch_conv_relu_maxpool_round_tf32)
  const void* wt;      // Ci x Kdp, compute type; column k = (ky kw + kx) Cd + co, zero for co >= Co
                       // and past kh kw Cd, Cd = conv_relu_maxpool_dgrad_channels(dtype, tf32,
                       // Co); tf32: rounded (launch_conv_relu_maxpool_round_tf32)
  int64_t Kdp;
  void* dx;            // N x H x W x Ci, dtype; nullptr: not asked
  void* dw;            // Co x Ci x kh x kw, dtype; nullptr: not asked
  void* db;            // Co, dtype; nullptr: not asked
  void* workspace;     // workspace_bytes(*this) bytes, 16-byte aligned
};

cudaError_t launch_conv_relu_maxpool_forward(const ForwardArgs& a, cudaStream_t stream);
cudaError_t launch_conv_relu_maxpool_backward(const BackwardArgs& a, cudaStream_t stream);
// Bytes of workspace the forward needs: the conv output with its bias (N Hc Wc Co, acc) where a
// pooled layer's tiles run flat and a pooling kernel follows (ForwardTile's kFlatConv), else 0.
int64_t conv_relu_maxpool_forward_workspace_bytes(const ForwardArgs& a);
// Bytes of workspace the backward needs (the weight and bias gradients' partial sums; where dx or dw
// is asked, the un-pooled gradient, N Hc Wc Cd elements of the compute type, Cd = Co rounded up to
// the K step: conv_relu_maxpool_dgrad_channels).
int64_t conv_relu_maxpool_backward_workspace_bytes(const BackwardArgs& a);
// dst (n floats) = src rounded to TF32, in place where dst is src: with tf32, the packed weights
// (ForwardArgs::w, BackwardArgs::wt) and the backward's x (BackwardArgs::x, where dw is asked) as the
// kernels expect them: the tensor cores' loops do not round them.
cudaError_t launch_conv_relu_maxpool_round_tf32(const float* src, float* dst, int64_t n, cudaStream_t stream);
// Channels per kernel tap in the packed forward weights: Ci, or more (zero) where the tensor cores
// gather x by 4 channels (Ci not a multiple of 16 bytes).
int64_t conv_relu_maxpool_packed_channels(DType dtype, bool tf32, int64_t Ci);
// Channels per kernel tap in the data gradient's packed weights (BackwardArgs::wt): Co rounded up
// to the K step (zeros), so that its GEMMs copy the un-pooled gradient by 16-byte vectors.
int64_t conv_relu_maxpool_dgrad_channels(DType dtype, bool tf32, int64_t Co);
// Rounding of K for the packed weights: a multiple of this many elements of the compute type.
int64_t conv_relu_maxpool_k_multiple(DType dtype, bool tf32);

}  // namespace crm
}  // namespace pyalexnet
