// PYA_HD marks the small inline functions that CPU and CUDA code share: host + device under nvcc,
// plain inline in host C++ (the CPU kernels, and the CUDA emulation).
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define PYA_HD __host__ __device__ __forceinline__
#else
#define PYA_HD inline
#endif
