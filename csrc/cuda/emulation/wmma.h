// nvcuda::wmma: fragments as warp collectives, tensor-core input rounding, float accumulation.
// Part of the CPU emulation of CUDA: include csrc/cuda/emulation.h, not this file.
#pragma once

// ------------------------------------------------------------------------------------------------
// WMMA: warp-collective fragments (see the header comment for the element mapping and rounding)
// ------------------------------------------------------------------------------------------------
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
namespace precision {
struct tf32 {};
}
enum layout_t { mem_row_major, mem_col_major };

template <class T> struct storage { using type = T; };
template <> struct storage<precision::tf32> { using type = float; };
template <class Use, int M, int N, int K> struct dims;
template <int M, int N, int K> struct dims<matrix_a, M, N, K> { static constexpr int rows = M, cols = K; };
template <int M, int N, int K> struct dims<matrix_b, M, N, K> { static constexpr int rows = K, cols = N; };
template <int M, int N, int K> struct dims<accumulator, M, N, K> { static constexpr int rows = M, cols = N; };

template <class Use, int M, int N, int K, class T, class Layout = void>
class fragment {
 public:
  using element_type = typename storage<T>::type;
  using storage_element_type = element_type;
  static constexpr int rows = dims<Use, M, N, K>::rows, cols = dims<Use, M, N, K>::cols;
  static_assert(rows * cols % 32 == 0, "a WMMA tile must split evenly over 32 lanes");
  static constexpr int num_elements = rows * cols / 32;
  element_type x[num_elements];
};

template <class Use, int M, int N, int K, class T, class L, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, const V& v) {
  for (int i = 0; i < f.num_elements; ++i) f.x[i] = typename fragment<Use, M, N, K, T, L>::element_type(v);
}

namespace detail {
template <class Frag, class P>
struct MemOp {
  Frag* f;
  P* p;
  unsigned ldm;
  bool row_major;
};
// Element (r, c) of lane l's chunk: flat row-major index l * n + i.
template <class Frag, class P, bool kStore>
void memop_complete(void* const* d, unsigned mask) {
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    auto* op = static_cast<MemOp<Frag, P>*>(d[l]);
    for (int i = 0; i < Frag::num_elements; ++i) {
      const int e = int(l) * Frag::num_elements + i, r = e / Frag::cols, c = e % Frag::cols;
      const size_t off = op->row_major ? size_t(r) * op->ldm + c : size_t(c) * op->ldm + r;
      if constexpr (kStore) op->p[off] = static_cast<P>(op->f->x[i]);
      else op->f->x[i] = static_cast<typename Frag::element_type>(op->p[off]);
    }
  }
}
template <class F>
void need_full_warp(const char* what) {
  unsigned m = pya_emu::warp_lanes(pya_emu::run(), pya_emu::run().cur->linear / 32);
  if (m != 0xffffffffu) throw pya_emu::KernelError(std::string(what) + " in a partial warp");
}
}  // namespace detail

template <class Use, int M, int N, int K, class T, class L, class P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm, PYA_EMU_HERE) {
  static_assert(!std::is_same_v<Use, accumulator>, "accumulators need a layout_t");
  using F = fragment<Use, M, N, K, T, L>;
  detail::need_full_warp<F>("load_matrix_sync");
  detail::MemOp<F, const P> op{&f, p, ldm, std::is_same_v<L, row_major>};
  pya_emu::collective(0xffffffffu, "wmma::load_matrix_sync", &detail::memop_complete<F, const P, false>, &op, loc);
}
template <int M, int N, int K, class T, class P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T>& f, const P* p, unsigned ldm, layout_t layout,
                             PYA_EMU_HERE) {
  using F = fragment<accumulator, M, N, K, T>;
  detail::need_full_warp<F>("load_matrix_sync");
  detail::MemOp<F, const P> op{&f, p, ldm, layout == mem_row_major};
  pya_emu::collective(0xffffffffu, "wmma::load_matrix_sync", &detail::memop_complete<F, const P, false>, &op, loc);
}
template <int M, int N, int K, class T, class P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T>& f, unsigned ldm, layout_t layout,
                              PYA_EMU_HERE) {
  using F = const fragment<accumulator, M, N, K, T>;
  detail::need_full_warp<F>("store_matrix_sync");
  detail::MemOp<F, P> op{&f, p, ldm, layout == mem_row_major};
  pya_emu::collective(0xffffffffu, "wmma::store_matrix_sync", &detail::memop_complete<F, P, true>, &op, loc);
}

namespace detail {
template <class T>
inline float tensor_core_input(T v) { return float(v); }
// tf32 operands: the tensor core reads 19 bits of each float (sign, exponent, 10 mantissa bits).
inline float tensor_core_tf32(float v) { return pya_emu_bits<float>(pya_emu_bits<uint32_t>(v) & 0xffffe000u); }

template <class FA, class FB, class FC, class FD, bool kTf32>
struct MmaOp {
  FD* d;
  const FA* a;
  const FB* b;
  const FC* c;
};
template <class FA, class FB, class FC, class FD, bool kTf32>
void mma_complete(void* const* dd, unsigned) {
  constexpr int M = FA::rows, K = FA::cols, N = FB::cols;
  using Op = MmaOp<FA, FB, FC, FD, kTf32>;
  auto lane = [&](int e, int n) { return static_cast<Op*>(dd[e / n]); };  // whose chunk holds flat e
  float out[M * N];
  for (int i = 0; i < M; ++i)
    for (int j = 0; j < N; ++j) {
      const int ec = i * N + j;
      float s = lane(ec, FC::num_elements)->c->x[ec % FC::num_elements];
      for (int k = 0; k < K; ++k) {
        const int ea = i * K + k, eb = k * N + j;
        float a = tensor_core_input(lane(ea, FA::num_elements)->a->x[ea % FA::num_elements]);
        float b = tensor_core_input(lane(eb, FB::num_elements)->b->x[eb % FB::num_elements]);
        if constexpr (kTf32) a = tensor_core_tf32(a), b = tensor_core_tf32(b);
        s += a * b;  // the product of two rounded inputs is exact in float
      }
      out[i * N + j] = s;
    }
  for (int e = 0; e < M * N; ++e)
    static_cast<Op*>(dd[e / FD::num_elements])->d->x[e % FD::num_elements] = out[e];
}
}  // namespace detail

template <int M, int N, int K, class TA, class LA, class LB, class TC>
inline void mma_sync(fragment<accumulator, M, N, K, TC>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TA, LB>& b, const fragment<accumulator, M, N, K, TC>& c,
                     PYA_EMU_HERE) {
  static_assert(std::is_same_v<TC, float>, "the emulation has float accumulators only");
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TA, LB>;
  using FC = fragment<accumulator, M, N, K, TC>;
  constexpr bool kTf32 = std::is_same_v<TA, precision::tf32>;
  detail::need_full_warp<FA>("mma_sync");
  detail::MmaOp<FA, FB, FC, FC, kTf32> op{&d, &a, &b, &c};
  pya_emu::collective(0xffffffffu, "wmma::mma_sync", &detail::mma_complete<FA, FB, FC, FC, kTf32>, &op, loc);
}
}  // namespace wmma
}  // namespace nvcuda
