// ldmatrix and mma.sync (PTX warp-level matrix instructions), with the fragment layouts of the PTX
// ISA: which lane holds which element is part of the contract, so a kernel that builds or reads a
// fragment the wrong way gets wrong numbers here, as on the GPU. Used through csrc/cuda/mma_sync.h.
// Part of the CPU emulation of CUDA: include csrc/cuda/emulation.h, not this file.
//
// Lane l, group g = l / 4, t = l % 4 ("groupID", "threadID_in_group" of the PTX ISA). A 32-bit
// register holding two 16-bit elements has the lower-indexed one in its low half.
// - ldmatrix .m8n8 .x1/.x2/.x4 .b16: lane 8 i + j gives the address of row j of matrix i (16 bytes,
//   16-byte aligned); register i of lane l holds row g, columns 2t, 2t + 1 of matrix i; with .trans,
//   rows 2t and 2t + 1 of column g.
// - mma.m16n8k16 (.bf16/.f16 -> .f32), row A, col B: a0 (g, 2t..2t+1), a1 (g + 8, 2t..), a2 (g,
//   2t + 8..), a3 (g + 8, 2t + 8..); b0 (k = 2t..2t+1, n = g), b1 (k = 2t + 8.., n = g); c/d: c0 c1
//   (g, 2t), (g, 2t + 1), c2 c3 (g + 8, 2t), (g + 8, 2t + 1).
// - mma.m16n8k8 .tf32 -> .f32: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); b0 (k = t,
//   n = g), b1 (k = t + 4, n = g); c/d as above. The low 13 bits of each tf32 operand are ignored.
// Products of the rounded inputs are exact in float; they are added to c in k order (the hardware's
// order is unspecified; tests allow float rounding).
// Shared-memory addresses are host addresses here (uintptr_t), 32-bit on the GPU.
#pragma once

namespace pya_emu {

using shared_addr = uintptr_t;

template <int N, bool kTrans>
struct LdmatrixOp {
  shared_addr addr;
  uint32_t* r;  // N registers
};
template <int N, bool kTrans>
void ldmatrix_complete(void* const* d, unsigned) {
  using Op = LdmatrixOp<N, kTrans>;
  uint16_t m[N][8][8];  // matrix i, row j, column
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < 8; ++j) {
      const shared_addr a = static_cast<Op*>(d[8 * i + j])->addr;
      if (a % 16 != 0) throw KernelError("ldmatrix: a row address must be 16-byte aligned (misaligned address)");
      std::memcpy(m[i][j], reinterpret_cast<const void*>(a), 16);
    }
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int i = 0; i < N; ++i) {
      const uint16_t lo = kTrans ? m[i][2 * t][g] : m[i][g][2 * t];
      const uint16_t hi = kTrans ? m[i][2 * t + 1][g] : m[i][g][2 * t + 1];
      static_cast<Op*>(d[l])->r[i] = uint32_t(lo) | uint32_t(hi) << 16;
    }
  }
}
template <int N, bool kTrans>
inline void ldmatrix(uint32_t (&r)[N], shared_addr addr, const std::source_location& loc) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  if (warp_lanes(run(), run().cur->linear / 32) != 0xffffffffu) throw KernelError("ldmatrix in a partial warp");
  LdmatrixOp<N, kTrans> op{addr, r};
  collective(0xffffffffu, kTrans ? "ldmatrix.trans" : "ldmatrix", &ldmatrix_complete<N, kTrans>, &op, loc);
}

// 0: bf16, 1: f16, 2: tf32
template <int kType>
inline float mma_input(uint32_t bits) {
  if constexpr (kType == 0) return bf16_bits_to_float(uint16_t(bits));
  else if constexpr (kType == 1) return half_bits_to_float(uint16_t(bits));
  else return pya_emu_bits<float>(bits & 0xffffe000u);
}

struct MmaSyncOp {
  const uint32_t* a;  // 4 registers
  const uint32_t* b;  // 2 registers
  float* d;           // 4 accumulators, read as c and written as d
};
template <int kType>
void mma_sync_complete(void* const* dd, unsigned) {
  constexpr int K = kType == 2 ? 8 : 16;
  float A[16][K], B[K][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const auto* op = static_cast<MmaSyncOp*>(dd[l]);
    const int g = l / 4, t = l % 4;
    for (int r = 0; r < 4; ++r) {  // a_r: rows g (r even) / g + 8 (r odd); k block r / 2
      const int row = g + 8 * (r % 2);
      if constexpr (kType == 2) {
        A[row][t + 4 * (r / 2)] = mma_input<2>(op->a[r]);
      } else {
        A[row][2 * t + 8 * (r / 2)] = mma_input<kType>(op->a[r] & 0xffffu);
        A[row][2 * t + 8 * (r / 2) + 1] = mma_input<kType>(op->a[r] >> 16);
      }
    }
    for (int r = 0; r < 2; ++r) {
      if constexpr (kType == 2) {
        B[t + 4 * r][g] = mma_input<2>(op->b[r]);
      } else {
        B[2 * t + 8 * r][g] = mma_input<kType>(op->b[r] & 0xffffu);
        B[2 * t + 8 * r + 1][g] = mma_input<kType>(op->b[r] >> 16);
      }
    }
    for (int e = 0; e < 4; ++e) C[g + 8 * (e / 2)][2 * t + e % 2] = op->d[e];
  }
  for (int i = 0; i < 16; ++i)
    for (int j = 0; j < 8; ++j)
      for (int k = 0; k < K; ++k) C[i][j] += A[i][k] * B[k][j];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int e = 0; e < 4; ++e) static_cast<MmaSyncOp*>(dd[l])->d[e] = C[g + 8 * (e / 2)][2 * t + e % 2];
  }
}
template <int kType>
inline void mma_sync(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const std::source_location& loc) {
  if (warp_lanes(run(), run().cur->linear / 32) != 0xffffffffu) throw KernelError("mma.sync in a partial warp");
  MmaSyncOp op{a, b, d};
  collective(0xffffffffu, "mma.sync", &mma_sync_complete<kType>, &op, loc);
}

}  // namespace pya_emu
