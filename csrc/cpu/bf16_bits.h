// float -> bfloat16 rounding shared by the CPU kernels' vector loops.
#pragma once

#include <bit>
#include <cstdint>

namespace pyalexnet {

// The bits of bfloat16(f) as c10::BFloat16's conversion gives them (round to nearest even, any NaN
// -> 0x7FC0), without its branch: loops that call it vectorise. Inlined into each caller's target.
__attribute__((always_inline)) inline uint16_t bf16_bits(float f) {
  const uint32_t u = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7FFFFFFFu) > 0x7F800000u ? 0x7FC0u : rounded);
}

}  // namespace pyalexnet
