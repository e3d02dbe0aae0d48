// Kernels that test the CPU emulation of CUDA itself (csrc/cuda/emulation.h), some of them wrong on
// purpose: a missing barrier, out-of-bounds writes, divergent barriers and warp collectives, a spin
// that never ends. Compiled only into the tests' driver (tests/emulation/driver.cpp), never shipped.
// Each self-test reads float32 inputs and writes raw bytes; tests/test_emulation.py checks them.
#include "cuda/cuda_or_emulation.h"
#include "cuda/async_copy.h"
#include "cuda/mma_sync.h"

#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace selftest {
namespace {

constexpr int kShared = 64;

// Thread t writes s[t] and reads s[t + 1]: a race without the barrier, which the schedules expose.
template <bool kBarrier>
__global__ void neighbour_kernel(const float* in, float* out) {
  __shared__ float s[kShared];
  const int t = threadIdx.x;
  s[t] = in[blockIdx.x * kShared + t] * 2.0f;
  if (kBarrier) __syncthreads();
  out[blockIdx.x * kShared + t] = s[(t + 1) % kShared];
}

// One element too many: thread n writes out[n] of an n-element buffer.
__global__ void oob_global_kernel(float* out) { out[threadIdx.x] = 1.0f; }
__global__ void oob_shared_kernel(float* out) {
  __shared__ float s[32];
  s[threadIdx.x] = 1.0f;  // blockDim.x == 33
  out[0] = s[0];
}
__global__ void oob_dynamic_shared_kernel(float* out) {
  PYA_DYNAMIC_SHARED(float, s);
  s[threadIdx.x] = 2.0f;  // smem holds blockDim.x - 1 floats
  out[0] = s[0];
}

// Dynamic shared memory: what a block finds there before writing (0xFF bytes: NaN), then a tree
// reduction with a barrier per level (one call site, a new barrier each time round the loop).
// out per block: blockDim.x "before" values, then the block's sum.
__global__ void dynamic_shared_reduce_kernel(const float* in, float* out) {
  PYA_DYNAMIC_SHARED(float, s);
  const unsigned t = threadIdx.x, n = blockDim.x;
  float* o = out + blockIdx.x * (n + 1);
  o[t] = s[t];
  __syncthreads();
  s[t] = in[blockIdx.x * n + t];
  __syncthreads();
  for (unsigned h = n / 2; h > 0; h /= 2) {
    if (t < h) s[t] += s[t + h];
    __syncthreads();
  }
  if (t == 0) o[n] = s[0];
}

// Threads 0-15 wait at one barrier, the others at another.
__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();  // [barrier-low]
  } else {
    __syncthreads();  // [barrier-high]
  }
  out[threadIdx.x] = 1.0f;
}
// The upper half returns; the lower half waits at a barrier the others never reach.
__global__ void barrier_after_exit_kernel(float* out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();  // [barrier-after-exit]
  out[threadIdx.x] = 1.0f;
}
// Lanes 16-31 leave before a full-mask shuffle.
__global__ void divergent_shuffle_kernel(float* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, float(threadIdx.x), 1);  // [divergent-shuffle]
}
// Thread 0 spins on a flag that thread 1 sets only after it: never ends (the watchdog's case).
__global__ void spin_kernel(volatile int* flag) {
  if (threadIdx.x == 0)
    while (*flag == 0) {
    }
  else
    *flag = 1;
}

// Every shuffle mode, votes and reductions over a block of 48 threads (a full and a partial warp).
// out: 12 ints per thread.
__global__ void warp_ops_kernel(const float* in, int* out) {
  const int t = threadIdx.x, lane = t % 32;
  const int v = int(in[t]);
  int* o = out + 12 * t;
  o[0] = __shfl_sync(0xffffffffu, v, 5);
  o[1] = __shfl_sync(0xffffffffu, v, lane + 3, 8);
  o[2] = __shfl_up_sync(0xffffffffu, v, 3);
  o[3] = __shfl_down_sync(0xffffffffu, v, 3);
  o[4] = __shfl_xor_sync(0xffffffffu, v, 6);
  o[5] = __shfl_down_sync(0xffffffffu, v, 2, 16);
  o[6] = int(__ballot_sync(0xffffffffu, v % 3 == 0));
  o[7] = __any_sync(0xffffffffu, v == 7);
  o[8] = __all_sync(0xffffffffu, v >= 0);
  o[9] = __reduce_add_sync(0xffffffffu, v);
  o[10] = __reduce_max_sync(0xffffffffu, v);
  // a partial mask: the even lanes only
  o[11] = (lane % 2 == 0) ? __shfl_xor_sync(0x55555555u, v, 2) : -1;
  double d = __shfl_xor_sync(0xffffffffu, double(v) + 0.5, 1);  // 8-byte values
  if (d != double(__shfl_xor_sync(0xffffffffu, v, 1)) + 0.5) __trap();
}

// out: [0] float sum, [1] double sum (as float), [2] int sum, [3] unsigned max, [4] CAS float max,
// [5] ull count, [6] int max.
__global__ void atomics_kernel(const float* in, float* fsum, double* dsum, int* isum, unsigned* umax,
                               float* cmax, unsigned long long* cnt, int* imax) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const float v = in[i];
  atomicAdd(fsum, v);
  atomicAdd(dsum, double(v));
  atomicAdd(isum, int(v * 100.0f));
  atomicMax(umax, unsigned(v * 1000.0f));
  atomicMax(imax, int(v * 1000.0f) - 500);
  // float max by compare-and-swap, the usual pattern
  int* addr = reinterpret_cast<int*>(cmax);
  int old = *addr, assumed;
  do {
    assumed = old;
    if (__int_as_float(assumed) >= v) break;
    old = atomicCAS(addr, assumed, __float_as_int(v));
  } while (old != assumed);
  atomicAdd(cnt, 1ull);
}

// C (16 x 16) = A (16 x K) B (K x 16) + C0 on the tensor core path, inputs given as float and rounded
// to T in shared memory. kALayout/kBLayout: row_major or col_major storage of A and B.
template <typename T, typename Prec, int K, typename LA, typename LB>
__global__ void wmma_kernel(const float* a, const float* b, const float* c0, float* c) {
  namespace wm = nvcuda::wmma;
  __shared__ T sa[16 * K], sb[K * 16];
  constexpr bool a_row = std::is_same_v<LA, wm::row_major>, b_row = std::is_same_v<LB, wm::row_major>;
  for (int e = threadIdx.x; e < 16 * K; e += 32) {  // e: row-major index of A (16 x K) / B (K x 16)
    const int ar = e / K, ac = e % K, br = e / 16, bc = e % 16;
    sa[a_row ? e : ac * 16 + ar] = T(a[e]);
    sb[b_row ? e : bc * K + br] = T(b[e]);
  }
  __syncthreads();
  wm::fragment<wm::matrix_a, 16, 16, K, Prec, LA> fa;
  wm::fragment<wm::matrix_b, 16, 16, K, Prec, LB> fb;
  wm::fragment<wm::accumulator, 16, 16, K, float> acc;
  wm::load_matrix_sync(fa, sa, a_row ? K : 16);
  wm::load_matrix_sync(fb, sb, b_row ? 16 : K);
  if constexpr (std::is_same_v<Prec, wm::precision::tf32>) {
    for (int i = 0; i < fa.num_elements; ++i) fa.x[i] = __float_to_tf32(fa.x[i]);
    for (int i = 0; i < fb.num_elements; ++i) fb.x[i] = __float_to_tf32(fb.x[i]);
  }
  wm::fill_fragment(acc, 0.0f);
  wm::load_matrix_sync(acc, c0, 16, wm::mem_col_major);  // C0 stored column-major
  wm::mma_sync(acc, fa, fb, acc);
  wm::store_matrix_sync(c, acc, 16, wm::mem_row_major);
}

// ldmatrix: shared memory holds 32 rows of 8 16-bit values (value = 8 row + column); lane l points at
// row rows[l] (the test's permutation). out: N registers per lane, raw.
template <int N, bool kTrans>
__global__ void ldmatrix_kernel(const float* rows, unsigned* out) {
  __align__(16) __shared__ uint16_t s[32 * 8];
  const int l = threadIdx.x;
  for (int c = 0; c < 8; ++c) s[l * 8 + c] = uint16_t(l * 8 + c);
  __syncthreads();
  uint32_t r[N];
  pyalexnet::mma::ldmatrix<N, kTrans>(r, pyalexnet::mma::shared_addr(s + int(rows[l]) * 8));
  for (int i = 0; i < N; ++i) out[l * N + i] = r[i];
}

// mma.sync: in per lane: a0..a3, b0, b1 (raw 32-bit registers), c0..c3 (floats); out: d0..d3.
template <int kType>
__global__ void mma_sync_kernel(const float* in, float* out) {
  const int l = threadIdx.x;
  uint32_t a[4], b[2];
  float d[4];
  std::memcpy(a, in + 10 * l, 16);
  std::memcpy(b, in + 10 * l + 4, 8);
  for (int e = 0; e < 4; ++e) d[e] = in[10 * l + 6 + e];
  if constexpr (kType == 0) pyalexnet::mma::mma_16816<__nv_bfloat16>(d, a, b);
  else if constexpr (kType == 1) pyalexnet::mma::mma_16816<__half>(d, a, b);
  else pyalexnet::mma::mma_1688_tf32(d, a, b);
  for (int e = 0; e < 4; ++e) out[4 * l + e] = d[e];
}

// cp.async as the kernels use it: thread t copies in[4t, 4t + 4) in two commit groups (group 1 a
// zero-fill copy, group 2 the data again into a second buffer) and reads before and after the waits.
// out: 16 floats per thread: group 1 after wait<1> (landed: the data), group 2 after wait<1> (not
// yet: NaN), group 2 after wait<0> (the data), the zero-fill copy (zeros).
__global__ void async_copy_kernel(const float* in, float* out) {
  __align__(16) __shared__ float s[3][32 * 4];
  const int t = threadIdx.x;
  float* o = out + 16 * t;
  pyalexnet::async::copy16<true>(&s[0][4 * t], in + 4 * t, true);
  pyalexnet::async::copy16<false>(&s[2][4 * t], in, false);
  pyalexnet::async::commit();
  pyalexnet::async::copy16<false>(&s[1][4 * t], in + 4 * t, true);
  pyalexnet::async::commit();
  pyalexnet::async::wait<1>();
  for (int i = 0; i < 4; ++i) o[i] = s[0][4 * t + i], o[4 + i] = s[1][4 * t + i], o[12 + i] = s[2][4 * t + i];
  pyalexnet::async::wait<0>();
  for (int i = 0; i < 4; ++i) o[8 + i] = s[1][4 * t + i];
}

// A 16-byte copy from an address that is not 16-byte aligned: an error on the GPU, and here.
__global__ void async_copy_misaligned_kernel(const float* in) {
  __align__(16) __shared__ float s[4];
  pyalexnet::async::copy16<true>(s, in + 1, true);
  pyalexnet::async::commit();
  pyalexnet::async::wait<0>();
}

// Float -> half/bf16 (bits) -> float, and tf32 rounding, per element: out = 5 uint32 per input.
__global__ void convert_kernel(const float* in, unsigned* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const __half h = __float2half_rn(in[i]);
  const __nv_bfloat16 b = __float2bfloat16_rn(in[i]);
  out[5 * i] = __half_as_ushort(h);
  out[5 * i + 1] = __float_as_uint(__half2float(h));
  out[5 * i + 2] = __bfloat16_as_ushort(b);
  out[5 * i + 3] = __float_as_uint(__bfloat162float(b));
  out[5 * i + 4] = __float_as_uint(__float_to_tf32(in[i]));
}

template <typename T>
std::vector<T> zeros(size_t n) {
  return std::vector<T>(n, T(0));
}
template <typename T>
std::string bytes(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Exact-size heap buffers, so that ASan sees one element past the end.
struct Heap {
  float* p;
  explicit Heap(size_t n) : p(new float[n]) {}
  ~Heap() { delete[] p; }
};

template <typename T, typename Prec, int K, typename LA, typename LB>
std::string run_wmma(const std::vector<float>& in) {
  // in: A (16 x K) row-major, B (K x 16) row-major, C0 (16 x 16) column-major
  std::vector<float> c(256);
  PYA_LAUNCH(1, 32, 0, nullptr, wmma_kernel<T, Prec, K, LA, LB>)(in.data(), in.data() + 16 * K,
                                                                in.data() + 32 * K, c.data());
  return bytes(c);
}

template <int N, bool kTrans>
std::string run_ldmatrix(const std::vector<float>& in) {  // in: 32 row indices
  std::vector<unsigned> out(32 * N);
  PYA_LAUNCH(1, 32, 0, nullptr, ldmatrix_kernel<N, kTrans>)(in.data(), out.data());
  return bytes(out);
}
template <int kType>
std::string run_mma_sync(const std::vector<float>& in) {  // in: 10 values per lane
  std::vector<float> out(32 * 4);
  PYA_LAUNCH(1, 32, 0, nullptr, mma_sync_kernel<kType>)(in.data(), out.data());
  return bytes(out);
}

}  // namespace

using Fn = std::function<std::string(const std::vector<float>&)>;

const std::map<std::string, Fn>& selftests() {
  namespace wm = nvcuda::wmma;
  static const std::map<std::string, Fn> m = {
      {"missing_barrier", [](const std::vector<float>& in) {
         std::vector<float> out(in.size());
         PYA_LAUNCH(unsigned(in.size() / kShared), kShared, 0, nullptr, neighbour_kernel<false>)(in.data(), out.data());
         return bytes(out);
       }},
      {"with_barrier", [](const std::vector<float>& in) {
         std::vector<float> out(in.size());
         PYA_LAUNCH(unsigned(in.size() / kShared), kShared, 0, nullptr, neighbour_kernel<true>)(in.data(), out.data());
         return bytes(out);
       }},
      {"oob_global", [](const std::vector<float>&) {
         Heap out(32);
         PYA_LAUNCH(1, 33, 0, nullptr, oob_global_kernel)(out.p);
         return std::string();
       }},
      {"oob_shared", [](const std::vector<float>&) {
         Heap out(1);
         PYA_LAUNCH(1, 33, 0, nullptr, oob_shared_kernel)(out.p);
         return std::string();
       }},
      {"oob_dynamic_shared", [](const std::vector<float>&) {
         Heap out(1);
         PYA_LAUNCH(1, 33, 32 * sizeof(float), nullptr, oob_dynamic_shared_kernel)(out.p);
         return std::string();
       }},
      {"dynamic_shared_reduce", [](const std::vector<float>& in) {
         std::vector<float> out(in.size() / 64 * 65);
         PYA_LAUNCH(unsigned(in.size() / 64), 64, 64 * sizeof(float), nullptr, dynamic_shared_reduce_kernel)(
             in.data(), out.data());
         return bytes(out);
       }},
      {"divergent_barrier", [](const std::vector<float>&) {
         std::vector<float> out(64);
         PYA_LAUNCH(1, 64, 0, nullptr, divergent_barrier_kernel)(out.data());
         return bytes(out);
       }},
      {"barrier_after_exit", [](const std::vector<float>&) {
         std::vector<float> out(64);
         PYA_LAUNCH(1, 64, 0, nullptr, barrier_after_exit_kernel)(out.data());
         return bytes(out);
       }},
      {"divergent_shuffle", [](const std::vector<float>&) {
         std::vector<float> out(32);
         PYA_LAUNCH(1, 32, 0, nullptr, divergent_shuffle_kernel)(out.data());
         return bytes(out);
       }},
      {"spin", [](const std::vector<float>&) {
         int flag = 0;
         PYA_LAUNCH(1, 2, 0, nullptr, spin_kernel)(&flag);
         return std::string();
       }},
      {"warp_ops", [](const std::vector<float>& in) {
         std::vector<int> out(12 * 48);
         PYA_LAUNCH(1, 48, 0, nullptr, warp_ops_kernel)(in.data(), out.data());
         return bytes(out);
       }},
      {"atomics", [](const std::vector<float>& in) {
         float fsum = 0, cmax = -1e30f;
         double dsum = 0;
         int isum = 0, imax = -1 << 30;
         unsigned umax = 0;
         unsigned long long cnt = 0;
         PYA_LAUNCH(unsigned(in.size() / 64), 64, 0, nullptr, atomics_kernel)(in.data(), &fsum, &dsum, &isum,
                                                                               &umax, &cmax, &cnt, &imax);
         std::vector<double> out = {fsum, dsum, double(isum), double(umax), cmax, double(cnt), double(imax)};
         return bytes(out);
       }},
      {"wmma_f16_rr", run_wmma<__half, __half, 16, wm::row_major, wm::row_major>},
      {"wmma_f16_cc", run_wmma<__half, __half, 16, wm::col_major, wm::col_major>},
      {"wmma_bf16_rc", run_wmma<__nv_bfloat16, __nv_bfloat16, 16, wm::row_major, wm::col_major>},
      {"wmma_tf32_cr", run_wmma<float, wm::precision::tf32, 8, wm::col_major, wm::row_major>},
      {"ldmatrix_x1", run_ldmatrix<1, false>},
      {"ldmatrix_x2", run_ldmatrix<2, false>},
      {"ldmatrix_x4", run_ldmatrix<4, false>},
      {"ldmatrix_x4_trans", run_ldmatrix<4, true>},
      {"ldmatrix_x2_trans", run_ldmatrix<2, true>},
      {"mma_bf16", run_mma_sync<0>},
      {"mma_f16", run_mma_sync<1>},
      {"mma_tf32", run_mma_sync<2>},
      {"async_copy", [](const std::vector<float>& in) {
         std::vector<float> out(16 * 32);
         PYA_LAUNCH(1, 32, 0, nullptr, async_copy_kernel)(in.data(), out.data());
         return bytes(out);
       }},
      {"async_copy_misaligned", [](const std::vector<float>& in) {
         PYA_LAUNCH(1, 1, 0, nullptr, async_copy_misaligned_kernel)(in.data());
         return std::string();
       }},
      {"convert", [](const std::vector<float>& in) {
         std::vector<unsigned> out(5 * in.size());
         PYA_LAUNCH(unsigned((in.size() + 127) / 128), 128, 0, nullptr, convert_kernel)(in.data(), out.data(),
                                                                                       int(in.size()));
         return bytes(out);
       }},
  };
  return m;
}

}  // namespace selftest
