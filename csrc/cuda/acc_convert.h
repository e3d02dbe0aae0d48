// Conversions between the kernels' storage types (float, double, __half, __nv_bfloat16) and their
// accumulator type (float; double for double), shared by the kernel files. Include after
// cuda/cuda_or_emulation.h, so that the same code serves nvcc and the CPU emulation.
#pragma once

namespace pyalexnet {
namespace cuda_convert {

__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }
__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }

// Round to nearest even into T; from a double accumulator (float64 kernels) there is nothing to round.
template <typename T> __device__ __forceinline__ T from_acc(float x);
template <> __device__ __forceinline__ float from_acc<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_acc<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <typename T> __device__ __forceinline__ T from_acc(double x) { return x; }

}  // namespace cuda_convert
}  // namespace pyalexnet
