// Launch interface of the softmax cross-entropy CUDA kernels: raw pointers and a stream, no ATen,
// so that the .cu file compiles fast and stays runnable by a CPU emulation of the CUDA model.
#pragma once

#if defined(PYA_CUDA_EMULATION)
#include "cuda/emulation.h"  // the tests' CPU emulation of CUDA (tests/emulation)
#else
#include <cuda_runtime_api.h>
#endif

#include <cstdint>

namespace pyalexnet {
namespace xent {

enum class DType : int { kFloat, kHalf, kBFloat16, kDouble };

// acc below: float, or double for kDouble logits. Logits have unit column stride.
struct ForwardArgs {
  DType dtype;
  bool target_i32;
  const void* logits;     // N x C, row stride `row_stride` (elements)
  int64_t N, C, row_stride;
  const void* target;     // N, stride `target_stride`; int64 or int32
  int64_t target_stride;
  const void* weight;     // C (acc) or nullptr
  int64_t ignore_index;
  int reduction;          // xent::Reduction
  double label_smoothing;
  void* loss;             // N (reduction none) or scalar, logits' dtype
  void* lse;              // N x 2 (acc): row max, log sum exp(z - max)
  void* wstats;           // 2 (acc): {sum of used target weights, sum of all class weights}
  void* row_loss;         // N (acc) workspace; unused for reduction none
  void* row_weight;       // N (acc) workspace
};

struct BackwardArgs {
  DType dtype;
  bool target_i32;
  const void* grad_loss;  // N with stride `grad_stride` (reduction none) or scalar (acc)
  int64_t grad_stride;
  const void* logits;     // N x C, row stride `row_stride`
  int64_t N, C, row_stride;
  const void* target;     // N, stride `target_stride`
  int64_t target_stride;
  const void* weight;     // C (acc) or nullptr
  const void* lse;        // N x 2 (acc)
  const void* wstats;     // 2 (acc)
  int64_t ignore_index;
  int reduction;
  double label_smoothing;
  void* grad_logits;      // N x C contiguous, logits' dtype
};

cudaError_t launch_softmax_cross_entropy_forward(const ForwardArgs& a, cudaStream_t stream);
cudaError_t launch_softmax_cross_entropy_backward(const BackwardArgs& a, cudaStream_t stream);

}  // namespace xent
}  // namespace pyalexnet
