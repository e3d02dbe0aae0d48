// The host side the conv kernels' files share: launch helpers, the dtype dispatch, and the passes
// of the backward, each launched from its own file in the order conv_relu_maxpool_backward.cu gives.
#pragma once

#include <utility>

#include "cuda/conv_relu_maxpool_gemm.h"

namespace pyalexnet {
namespace crm {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline dim3 grid_of(int64_t x, int64_t y, int64_t z = 1) { return dim3(unsigned(x), unsigned(y), unsigned(z)); }

// Launches a GEMM kernel with its tile's shared memory (L::kBytes) as dynamic shared memory: the
// tensor-core tiles (128 x 128, four stages) need more than the 48 KB a kernel gets by default.
template <auto kKernel, class... A>
void launch_gemm(dim3 grid, int smem, cudaStream_t stream, A... args) {
  if (smem > 48 * 1024)  // if this fails, so does the launch, which the caller checks
    (void)cudaFuncSetAttribute(kKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
  PYA_LAUNCH(grid, kThreads, smem, stream, kKernel)(args...);
}

// f(C{}, (T*)nullptr) with the tile arithmetic C (Cfg) and the element type T of the arguments.
template <class F>
auto dispatch(DType dtype, bool tf32, F&& f) {
  switch (dtype) {
    case DType::kHalf: return f(Cfg<__half, false>{}, static_cast<__half*>(nullptr));
    case DType::kBFloat16: return f(Cfg<__nv_bfloat16, false>{}, static_cast<__nv_bfloat16*>(nullptr));
    case DType::kDouble: return f(Cfg<double, false>{}, static_cast<double*>(nullptr));
    case DType::kFloat:
    default:
      return tf32 ? f(Cfg<float, true>{}, static_cast<float*>(nullptr)) : f(Cfg<float, false>{}, static_cast<float*>(nullptr));
  }
}

// The weight gradient's patch gathers (as the forward's Gather): kVectors (16-byte copies, Ci a
// multiple of 16 bytes), else kQuads on the tensor cores, else kElements.
template <class C>
Gather wgrad_gather(const BackwardArgs& a) {
  if (a.g.Ci % (16 / int64_t(sizeof(typename C::Tc))) == 0) return kVectors;
  return C::kMma ? kQuads : kElements;
}
// Channels a tap along the weight gradient's GEMM columns (its partial sums' K): kQuads rounds Ci
// up to 4 (the kernel's Cp), as the forward's packed weights do (the same rule since the backward
// has one version).
template <class C>
int64_t wgrad_channels(const BackwardArgs& a) {
  return packed_channels<C>(a.g.Ci);
}

// How the backward splits its reductions over blocks (a pure function of the arguments, so that
// the workspace size and the launches agree).
struct Splits {
  int64_t w_chunk, w_splits;  // weight gradient: conv positions per split, splits
  int64_t b_rows, b_splits;   // bias gradient: pooled outputs per split, splits
};

// The passes of the backward (BackwardArgs: what is asked; dconv: the un-pooled gradient in the
// workspace; part: the workspace's partial sums).
void launch_unpool(const BackwardArgs& a, void* dconv, cudaStream_t stream);                         // unpool.cu
void launch_bias_grad(const BackwardArgs& a, const Splits& s, void* part, cudaStream_t stream);       // wgrad.cu
void launch_wgrad(const BackwardArgs& a, const Splits& s, void* part, const void* dconv, cudaStream_t stream);  // wgrad.cu
void launch_dgrad(const BackwardArgs& a, const void* dconv, cudaStream_t stream);                    // dgrad.cu

}  // namespace crm
}  // namespace pyalexnet
