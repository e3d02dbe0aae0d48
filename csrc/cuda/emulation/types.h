// Built-in types and variables, the minimal runtime API, atomics, integer and float intrinsics, math.
// Part of the CPU emulation of CUDA: include csrc/cuda/emulation.h, not this file.
#pragma once

// ------------------------------------------------------------------------------------------------
// Built-in types and variables
// ------------------------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};
inline uint3 threadIdx{0, 0, 0}, blockIdx{0, 0, 0};
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

#define PYA_EMU_VEC2(T, N, A) struct alignas(A) N { T x, y; }; \
  inline N make_##N(T x, T y) { return N{x, y}; }
#define PYA_EMU_VEC4(T, N, A) struct alignas(A) N { T x, y, z, w; }; \
  inline N make_##N(T x, T y, T z, T w) { return N{x, y, z, w}; }
PYA_EMU_VEC2(float, float2, 8)
PYA_EMU_VEC4(float, float4, 16)
PYA_EMU_VEC2(int, int2, 8)
PYA_EMU_VEC4(int, int4, 16)
PYA_EMU_VEC2(unsigned, uint2, 8)
PYA_EMU_VEC4(unsigned, uint4, 16)
PYA_EMU_VEC2(double, double2, 16)
PYA_EMU_VEC2(long long, longlong2, 16)
#undef PYA_EMU_VEC2
#undef PYA_EMU_VEC4
struct float3 { float x, y, z; };
inline float3 make_float3(float x, float y, float z) { return float3{x, y, z}; }
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ------------------------------------------------------------------------------------------------
// Runtime API (minimal): launches are synchronous and report errors by exception.
// ------------------------------------------------------------------------------------------------
enum cudaError_t : int {
  cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719
};
struct CUstream_st;
using cudaStream_t = CUstream_st*;
enum cudaFuncAttribute : int { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaPeekAtLastError() { return cudaSuccess; }
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated error"; }


// ------------------------------------------------------------------------------------------------
// Atomics: fibers are never preempted, so a plain read-modify-write is atomic.
// ------------------------------------------------------------------------------------------------
#define PYA_EMU_ATOMIC(NAME, T, EXPR) \
  inline T NAME(T* p, T v) {          \
    T o = *p;                         \
    *p = (EXPR);                      \
    return o;                         \
  }
PYA_EMU_ATOMIC(atomicAdd, int, o + v)
PYA_EMU_ATOMIC(atomicAdd, unsigned, o + v)
PYA_EMU_ATOMIC(atomicAdd, unsigned long long, o + v)
PYA_EMU_ATOMIC(atomicAdd, float, o + v)
PYA_EMU_ATOMIC(atomicAdd, double, o + v)
PYA_EMU_ATOMIC(atomicSub, int, o - v)
PYA_EMU_ATOMIC(atomicSub, unsigned, o - v)
PYA_EMU_ATOMIC(atomicMax, int, o > v ? o : v)
PYA_EMU_ATOMIC(atomicMax, unsigned, o > v ? o : v)
PYA_EMU_ATOMIC(atomicMax, long long, o > v ? o : v)
PYA_EMU_ATOMIC(atomicMax, unsigned long long, o > v ? o : v)
PYA_EMU_ATOMIC(atomicMin, int, o < v ? o : v)
PYA_EMU_ATOMIC(atomicMin, unsigned, o < v ? o : v)
PYA_EMU_ATOMIC(atomicMin, long long, o < v ? o : v)
PYA_EMU_ATOMIC(atomicMin, unsigned long long, o < v ? o : v)
PYA_EMU_ATOMIC(atomicExch, int, v)
PYA_EMU_ATOMIC(atomicExch, unsigned, v)
PYA_EMU_ATOMIC(atomicExch, unsigned long long, v)
PYA_EMU_ATOMIC(atomicExch, float, v)
PYA_EMU_ATOMIC(atomicOr, int, o | v)
PYA_EMU_ATOMIC(atomicOr, unsigned, o | v)
PYA_EMU_ATOMIC(atomicAnd, int, o & v)
PYA_EMU_ATOMIC(atomicAnd, unsigned, o & v)
PYA_EMU_ATOMIC(atomicXor, int, o ^ v)
PYA_EMU_ATOMIC(atomicXor, unsigned, o ^ v)
#undef PYA_EMU_ATOMIC
#define PYA_EMU_CAS(T)                    \
  inline T atomicCAS(T* p, T cmp, T v) {  \
    T o = *p;                             \
    if (o == cmp) *p = v;                 \
    return o;                             \
  }
PYA_EMU_CAS(int)
PYA_EMU_CAS(unsigned)
PYA_EMU_CAS(unsigned long long)
PYA_EMU_CAS(unsigned short)
#undef PYA_EMU_CAS

// ------------------------------------------------------------------------------------------------
// Integer and float intrinsics, math
// ------------------------------------------------------------------------------------------------
template <class To, class From>
inline To pya_emu_bits(From f) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  std::memcpy(&t, &f, sizeof t);
  return t;
}
inline int __float_as_int(float x) { return pya_emu_bits<int>(x); }
inline unsigned __float_as_uint(float x) { return pya_emu_bits<unsigned>(x); }
inline float __int_as_float(int x) { return pya_emu_bits<float>(x); }
inline float __uint_as_float(unsigned x) { return pya_emu_bits<float>(x); }
inline long long __double_as_longlong(double x) { return pya_emu_bits<long long>(x); }
inline double __longlong_as_double(long long x) { return pya_emu_bits<double>(x); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __log10f(float x) { return std::log10(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : x > 1.0f ? 1.0f : x; }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline float __int2float_rn(int x) { return float(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
