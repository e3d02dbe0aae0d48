// 16-byte global -> shared copies that bypass the registers (cp.async, sm_80+), in both builds: PTX
// under nvcc, the CPU emulation's model otherwise (csrc/cuda/emulation/async_copy.h). A thread
// issues copies, closes them into a group with commit(), and wait<N>() returns once all but its N
// newest groups have landed; other threads see them after a barrier that follows the wait. That is
// what lets a kernel keep several K steps of operands in flight while the tensor cores work on an
// earlier one, without the registers a load-then-store prefetch would hold. Before sm_80 the copy is
// a plain load and store.
#pragma once

#include <cstdint>

#include "cuda/cuda_or_emulation.h"

namespace pyalexnet {
namespace async {

#if defined(__CUDACC__)
// kL1: keep the line in L1 too (.ca: data other K steps of the block read again, like overlapping
// input patches); else L2 only (.cg: streamed once per block, like weight rows). !valid: the 16
// bytes are zeros and src is not read.
template <bool kL1>
__device__ __forceinline__ void copy16(void* dst, const void* src, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned d = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  const unsigned n = valid ? 16u : 0u;
  if constexpr (kL1)
    asm volatile("cp.async.ca.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n) : "memory");
  else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n) : "memory");
#else
  *static_cast<uint4*>(dst) = valid ? __ldg(static_cast<const uint4*>(src)) : make_uint4(0u, 0u, 0u, 0u);
#endif
}
__device__ __forceinline__ void commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
#else
template <bool kL1>
inline void copy16(void* dst, const void* src, bool valid) { pya_emu::cp_async16(dst, src, valid); }
inline void commit() { pya_emu::cp_async_commit(); }
template <int N>
inline void wait() { pya_emu::cp_async_wait(unsigned(N)); }
#endif

}  // namespace async
}  // namespace pyalexnet
