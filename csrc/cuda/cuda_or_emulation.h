// The CUDA headers for a .cu kernel file, or, when the file is compiled as host C++ (no nvcc), the
// CPU emulation of CUDA in emulation.h, which the tests use to run the kernels without a GPU.
// Two spellings work in both builds:
//   PYA_LAUNCH(grid, block, smem, stream, kernel<...>)(args...)   for kernel<<<grid, block, smem, stream>>>(args...)
//   PYA_DYNAMIC_SHARED(T, name);   for extern __shared__ dynamic shared memory, seen as T* name
// A WMMA kernel file also includes <mma.h> under __CUDACC__ (the emulation always has nvcuda::wmma).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#define PYA_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define PYA_DYNAMIC_SHARED(T, name)                                   \
  extern __shared__ __align__(16) unsigned char pya_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(pya_dynamic_smem_)
#else
#include "cuda/emulation.h"
#endif
