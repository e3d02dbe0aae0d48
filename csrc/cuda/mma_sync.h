// Warp-level tensor-core instructions on 32-bit shared-memory addresses, in both builds: PTX
// (ldmatrix, mma.sync) under nvcc, the CPU emulation's models otherwise (csrc/cuda/emulation/
// mma_sync.h, which documents the fragment layouts: they are the PTX ISA's). sm_80 and up.
//   shared_addr(p)              the shared-memory address of a generic pointer into shared memory
//   ldmatrix<N, kTrans>(r, a)   N 8x8 matrices of 16-bit elements (or 8x4 of 32-bit ones, as pairs)
//   mma_16816<T>(d, a, b)       d (16x8 f32) += a (16x16 row) b (16x8 col), T bf16 or half
//   mma_1688_tf32(d, a, b)      d (16x8 f32) += a (16x8 row) b (8x8 col), tf32 operands
//   lds32(a)                    one 32-bit shared-memory load
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/cuda_or_emulation.h"

namespace pyalexnet {
namespace mma {

#if defined(__CUDACC__)
using saddr = uint32_t;

__device__ __forceinline__ saddr shared_addr(const void* p) {
  return static_cast<saddr>(__cvta_generic_to_shared(p));
}

// v, held in a register from here on: ptxas cannot recompute it from what it was computed of (it
// rematerialises such addresses inside main loops, 20 instructions a K step, rather than keep them).
__device__ __forceinline__ uint32_t kept(uint32_t v) {
  asm volatile("mov.b32 %0, %0;\n" : "+r"(v));
  return v;
}
__device__ __forceinline__ int64_t kept(int64_t v) {
  asm volatile("mov.b64 %0, %0;\n" : "+l"(v));
  return v;
}

template <int N, bool kTrans>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[N], saddr a) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  if constexpr (N == 4 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else if constexpr (N == 4)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else if constexpr (N == 2 && kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  else if constexpr (N == 2)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
  else if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
}

template <class T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or f16 operands");
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
               "{%8, %9}, {%0, %1, %2, %3};\n"
               : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ uint32_t lds32(saddr a) {
  uint32_t v;
  asm volatile("ld.shared.b32 %0, [%1];\n" : "=r"(v) : "r"(a));
  return v;
}
#else
using saddr = pya_emu::shared_addr;

inline saddr shared_addr(const void* p) { return reinterpret_cast<saddr>(p); }

template <class V>
inline V kept(V v) { return v; }

template <int N, bool kTrans>
inline void ldmatrix(uint32_t (&r)[N], saddr a, PYA_EMU_HERE) { pya_emu::ldmatrix<N, kTrans>(r, a, loc); }

template <class T>
inline void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], PYA_EMU_HERE) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or f16 operands");
  pya_emu::mma_sync<std::is_same_v<T, __nv_bfloat16> ? 0 : 1>(d, a, b, loc);
}

inline void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], PYA_EMU_HERE) {
  pya_emu::mma_sync<2>(d, a, b, loc);
}

inline uint32_t lds32(saddr a) {
  if (a % 4 != 0) throw pya_emu::KernelError("ld.shared.b32: misaligned address");
  uint32_t v;
  std::memcpy(&v, reinterpret_cast<const void*>(a), 4);
  return v;
}
#endif

}  // namespace mma
}  // namespace pyalexnet
