// __half, __nv_bfloat16 and tf32: bit-exact conversions, float arithmetic.
// Part of the CPU emulation of CUDA: include csrc/cuda/emulation.h, not this file.
#pragma once

// ------------------------------------------------------------------------------------------------
// __half, __nv_bfloat16: bit-exact round-to-nearest-even conversions (cvt.rn), float arithmetic
// ------------------------------------------------------------------------------------------------
namespace pya_emu {
inline uint16_t float_to_half_bits(float f) {
  uint32_t x = pya_emu_bits<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return 0x7fffu;                     // NaN: the canonical NaN
  if (x >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 (and inf): inf
  if (x >= 0x38800000u) {                                 // normal half: >= 2^-14
    uint32_t h = ((((x >> 23) - 112u) << 10) | ((x & 0x7fffffu) >> 13));
    const uint32_t rem = x & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry rounds up the exponent: right
    return uint16_t(sign | h);
  }
  const int shift = 126 - int(x >> 23);  // subnormal half: units of 2^-24
  if (shift > 25) return uint16_t(sign);
  const uint32_t m = (x & 0x7fffffu) | 0x800000u;
  uint32_t h = m >> shift;
  const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return uint16_t(sign | h);
}
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return pya_emu_bits<float>(sign | 0x7f800000u | (m << 13));
  if (e != 0) return pya_emu_bits<float>(sign | ((e + 112u) << 23) | (m << 13));
  const float v = std::ldexp(float(m), -24);  // subnormal (or zero): exact
  return sign ? -v : v;
}
inline uint16_t float_to_bf16_bits(float f) {
  const uint32_t x = pya_emu_bits<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return 0x7fffu;
  return uint16_t((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_bits_to_float(uint16_t b) { return pya_emu_bits<float>(uint32_t(b) << 16); }
// double -> float rounded to odd: rounding that float to half or bf16 (>= 2 bits shorter) then gives
// the correctly rounded result of the double, as a direct conversion would (no double rounding).
inline float round_to_odd(double d) {
  float f = float(d);
  if (std::isfinite(f) && double(f) != d) {
    if (std::fabs(double(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);  // truncate toward zero
    f = pya_emu_bits<float>(pya_emu_bits<uint32_t>(f) | 1u);                 // and make it odd
  }
  return f;
}
}  // namespace pya_emu

struct __half_raw { unsigned short x; };
struct __nv_bfloat16_raw { unsigned short x; };

#define PYA_EMU_HALF_TYPE(H, RAW, TO, FROM)                                                   \
  struct H {                                                                                  \
    unsigned short __x;                                                                       \
    H() = default;                                                                            \
    H(float f) : __x(pya_emu::TO(f)) {}                                                       \
    H(double f) : __x(pya_emu::TO(pya_emu::round_to_odd(f))) {}                               \
    template <class I, std::enable_if_t<std::is_integral_v<I>, int> = 0>                      \
    H(I i) : __x(pya_emu::TO(pya_emu::round_to_odd(double(i)))) {}                            \
    H(RAW r) : __x(r.x) {}                                                                    \
    operator float() const { return pya_emu::FROM(__x); }                                     \
    operator RAW() const { return RAW{__x}; }                                                 \
    H& operator+=(H o) { return *this = H(float(*this) + float(o)); }                         \
    H& operator-=(H o) { return *this = H(float(*this) - float(o)); }                         \
    H& operator*=(H o) { return *this = H(float(*this) * float(o)); }                         \
    H& operator/=(H o) { return *this = H(float(*this) / float(o)); }                         \
  };                                                                                          \
  inline H operator+(H a, H b) { return H(float(a) + float(b)); }                             \
  inline H operator-(H a, H b) { return H(float(a) - float(b)); }                             \
  inline H operator*(H a, H b) { return H(float(a) * float(b)); }                             \
  inline H operator/(H a, H b) { return H(float(a) / float(b)); }                             \
  inline H operator-(H a) { return H(RAW{static_cast<unsigned short>(a.__x ^ 0x8000u)}); }    \
  inline bool operator==(H a, H b) { return float(a) == float(b); }                           \
  inline bool operator!=(H a, H b) { return float(a) != float(b); }                           \
  inline bool operator<(H a, H b) { return float(a) < float(b); }                             \
  inline bool operator>(H a, H b) { return float(a) > float(b); }                             \
  inline bool operator<=(H a, H b) { return float(a) <= float(b); }                           \
  inline bool operator>=(H a, H b) { return float(a) >= float(b); }
PYA_EMU_HALF_TYPE(__half, __half_raw, float_to_half_bits, half_bits_to_float)
PYA_EMU_HALF_TYPE(__nv_bfloat16, __nv_bfloat16_raw, float_to_bf16_bits, bf16_bits_to_float)
#undef PYA_EMU_HALF_TYPE
using half = __half;
using nv_bfloat16 = __nv_bfloat16;
struct alignas(4) __half2 { __half x, y; };
struct alignas(4) __nv_bfloat162 { __nv_bfloat16 x, y; };
using half2 = __half2;
using nv_bfloat162 = __nv_bfloat162;

inline __half __float2half_rn(float f) { return __half(f); }
inline __half __float2half(float f) { return __half(f); }
inline float __half2float(__half h) { return float(h); }
inline __half __ushort_as_half(unsigned short x) { return __half_raw{x}; }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }
inline float __bfloat162float(__nv_bfloat16 b) { return float(b); }
inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16_raw{x}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 b) { return b.__x; }
inline __half2 __floats2half2_rn(float a, float b) { return {__half(a), __half(b)}; }
inline __half2 __float22half2_rn(float2 f) { return {__half(f.x), __half(f.y)}; }
inline __half2 __float2half2_rn(float f) { return {__half(f), __half(f)}; }
inline __half2 __halves2half2(__half a, __half b) { return {a, b}; }
inline float2 __half22float2(__half2 h) { return {float(h.x), float(h.y)}; }
inline float __low2float(__half2 h) { return float(h.x); }
inline float __high2float(__half2 h) { return float(h.y); }
inline __nv_bfloat162 __floats2bfloat162_rn(float a, float b) { return {__nv_bfloat16(a), __nv_bfloat16(b)}; }
inline __nv_bfloat162 __float22bfloat162_rn(float2 f) { return {__nv_bfloat16(f.x), __nv_bfloat16(f.y)}; }
inline __nv_bfloat162 __halves2bfloat162(__nv_bfloat16 a, __nv_bfloat16 b) { return {a, b}; }
inline float2 __bfloat1622float2(__nv_bfloat162 h) { return {float(h.x), float(h.y)}; }
inline float __low2float(__nv_bfloat162 h) { return float(h.x); }
inline float __high2float(__nv_bfloat162 h) { return float(h.y); }
inline __half __hadd(__half a, __half b) { return a + b; }
inline __half __hmul(__half a, __half b) { return a * b; }
inline __half __hfma(__half a, __half b, __half c) {  // one rounding: float's product of halves is exact
  return __half(float(a) * float(b) + float(c));
}
inline __nv_bfloat16 __hadd(__nv_bfloat16 a, __nv_bfloat16 b) { return a + b; }
inline __nv_bfloat16 __hmul(__nv_bfloat16 a, __nv_bfloat16 b) { return a * b; }
inline __nv_bfloat16 __hfma(__nv_bfloat16 a, __nv_bfloat16 b, __nv_bfloat16 c) {
  return __nv_bfloat16(float(a) * float(b) + float(c));
}

// tf32: round to nearest, ties away from zero, to 10 mantissa bits (cvt.rna.tf32.f32).
inline float __float_to_tf32(float f) {
  uint32_t x = pya_emu_bits<uint32_t>(f);
  if ((x & 0x7f800000u) != 0x7f800000u) x = (x + 0x1000u) & 0xffffe000u;
  return pya_emu_bits<float>(x);
}
