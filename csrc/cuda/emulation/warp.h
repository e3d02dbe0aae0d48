// __syncthreads() and the warp collectives (shuffles, votes, reductions), __trap(), printf, __ldg.
// Part of the CPU emulation of CUDA: include csrc/cuda/emulation.h, not this file.
#pragma once

namespace pya_emu {

// ------------------------------------------------------------------------------------------------
// Barrier and warp collectives
// ------------------------------------------------------------------------------------------------
inline void syncthreads(const std::source_location& loc) {
  BlockRun& r = run();
  Fiber& f = *r.cur;
  f.state = State::kBarrier;
  f.wait_file = loc.file_name();
  f.wait_line = loc.line();
  f.wait_what = "__syncthreads()";
  yield();
}

// Lane mask of the threads that exist in the caller's warp (a partial last warp has fewer).
inline unsigned warp_lanes(const BlockRun& r, unsigned warp) {
  size_t n = r.fibers.size() - size_t(warp) * 32;
  return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

inline void collective(unsigned mask, const char* what, Complete fn, void* data, const std::source_location& loc) {
  BlockRun& r = run();
  Fiber& f = *r.cur;
  const unsigned warp = f.linear / 32, lane = f.linear % 32;
  mask &= warp_lanes(r, warp);
  if (!(mask >> lane & 1)) {
    char b[160];
    std::snprintf(b, sizeof b, "%s at %s: the calling lane %u is not in the mask 0x%08x", what,
                  where(loc.file_name(), loc.line()).c_str(), lane, mask);
    throw KernelError(b);
  }
  auto& gs = r.groups[warp];
  WarpGroup* g = nullptr;
  for (auto& x : gs)
    if (x.mask == mask && !(x.arrived >> lane & 1)) g = &x;
  if (!g) {
    gs.push_back(WarpGroup{mask, 0, fn, what, loc.file_name(), loc.line(), {}});
    g = &gs.back();
  } else if (g->fn != fn || g->line != loc.line() || std::strcmp(g->file, loc.file_name()) != 0) {
    throw KernelError(std::string("divergent warp collective: lane ") + std::to_string(lane) + " is at " + what +
                      " " + where(loc.file_name(), loc.line()) + " while other lanes of its mask are at " +
                      g->what + " " + where(g->file, g->line));
  }
  g->arrived |= 1u << lane;
  g->data[lane] = data;
  if (g->arrived == g->mask) {
    WarpGroup done = *g;
    gs.erase(gs.begin() + (g - gs.data()));
    done.fn(done.data, done.mask);
    for (unsigned l = 0; l < 32; ++l)
      if (done.mask >> l & 1) r.fibers[warp * 32 + l].state = State::kRunnable;
    yield();  // the others resume in schedule order
  } else {
    f.state = State::kWarp;
    f.wait_file = loc.file_name();
    f.wait_line = loc.line();
    f.wait_what = what;
    yield();
  }
}

template <class T>
struct ShflData {
  T in, out;
  int src;  // source lane; -1: keep own value
};
template <class T>
void shfl_complete(void* const* d, unsigned mask) {
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    auto* s = static_cast<ShflData<T>*>(d[l]);
    // A source lane outside the mask is undefined on the GPU; here the caller keeps its value.
    s->out = (s->src >= 0 && (mask >> s->src & 1)) ? static_cast<ShflData<T>*>(d[s->src])->in : s->in;
  }
}
template <class T>
T shfl(unsigned mask, T v, int src, const char* what, const std::source_location& loc) {
  ShflData<T> s{v, v, src};
  collective(mask, what, &shfl_complete<T>, &s, loc);
  return s.out;
}
inline unsigned lane_id() { return run().cur->linear % 32; }

struct VoteData {
  bool pred;
  unsigned out;
};
inline void vote_complete(void* const* d, unsigned mask) {
  unsigned b = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((mask >> l & 1) && static_cast<VoteData*>(d[l])->pred) b |= 1u << l;
  for (unsigned l = 0; l < 32; ++l)
    if (mask >> l & 1) static_cast<VoteData*>(d[l])->out = b;
}
inline unsigned vote(unsigned mask, bool p, const char* what, const std::source_location& loc) {
  VoteData v{p, 0};
  collective(mask, what, &vote_complete, &v, loc);
  return v.out;
}

template <class T, int Op>  // 0 add, 1 min, 2 max
void reduce_complete(void* const* d, unsigned mask) {
  bool first = true;
  T acc{};
  for (unsigned l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    T v = static_cast<ShflData<T>*>(d[l])->in;
    acc = first ? v : Op == 0 ? T(acc + v) : Op == 1 ? std::min(acc, v) : std::max(acc, v);
    first = false;
  }
  for (unsigned l = 0; l < 32; ++l)
    if (mask >> l & 1) static_cast<ShflData<T>*>(d[l])->out = acc;
}

inline void nothing_complete(void* const*, unsigned) {}

}  // namespace pya_emu

#define PYA_EMU_HERE const std::source_location& loc = std::source_location::current()

inline void __syncthreads(PYA_EMU_HERE) { pya_emu::syncthreads(loc); }
inline void __syncwarp(unsigned mask = 0xffffffffu, PYA_EMU_HERE) {
  pya_emu::collective(mask, "__syncwarp", &pya_emu::nothing_complete, nullptr, loc);
}
inline unsigned __activemask() {
  auto& r = pya_emu::run();
  unsigned w = r.cur->linear / 32, m = 0;
  for (unsigned l = 0; l < 32; ++l)
    if ((pya_emu::warp_lanes(r, w) >> l & 1) && r.fibers[w * 32 + l].state != pya_emu::State::kDone) m |= 1u << l;
  return m;
}

// Source lanes as the PTX shfl modes compute them; width splits the warp into segments.
template <class T>
T __shfl_sync(unsigned mask, T v, int src, int width = 32, PYA_EMU_HERE) {
  int lane = int(pya_emu::lane_id()), base = lane & ~(width - 1);
  return pya_emu::shfl(mask, v, base + (src & (width - 1)), "__shfl_sync", loc);
}
template <class T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = 32, PYA_EMU_HERE) {
  int lane = int(pya_emu::lane_id()), base = lane & ~(width - 1), s = lane - int(delta);
  return pya_emu::shfl(mask, v, s >= base ? s : -1, "__shfl_up_sync", loc);
}
template <class T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32, PYA_EMU_HERE) {
  int lane = int(pya_emu::lane_id()), end = (lane & ~(width - 1)) + width, s = lane + int(delta);
  return pya_emu::shfl(mask, v, s < end ? s : -1, "__shfl_down_sync", loc);
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32, PYA_EMU_HERE) {
  int lane = int(pya_emu::lane_id()), end = (lane & ~(width - 1)) + width, s = lane ^ lane_mask;
  return pya_emu::shfl(mask, v, s < end ? s : -1, "__shfl_xor_sync", loc);
}
inline unsigned __ballot_sync(unsigned mask, int p, PYA_EMU_HERE) {
  return pya_emu::vote(mask, p != 0, "__ballot_sync", loc);
}
inline int __any_sync(unsigned mask, int p, PYA_EMU_HERE) {
  return pya_emu::vote(mask, p != 0, "__any_sync", loc) != 0;
}
inline int __all_sync(unsigned mask, int p, PYA_EMU_HERE) {
  unsigned m = mask & pya_emu::warp_lanes(pya_emu::run(), pya_emu::run().cur->linear / 32);
  return pya_emu::vote(mask, p != 0, "__all_sync", loc) == m;
}
#define PYA_EMU_REDUCE(NAME, T, OP)                                                   \
  inline T NAME(unsigned mask, T v, PYA_EMU_HERE) {                                    \
    pya_emu::ShflData<T> s{v, v, -1};                                                  \
    pya_emu::collective(mask, #NAME, &pya_emu::reduce_complete<T, OP>, &s, loc);       \
    return s.out;                                                                      \
  }
PYA_EMU_REDUCE(__reduce_add_sync, unsigned, 0)
PYA_EMU_REDUCE(__reduce_add_sync, int, 0)
PYA_EMU_REDUCE(__reduce_min_sync, unsigned, 1)
PYA_EMU_REDUCE(__reduce_min_sync, int, 1)
PYA_EMU_REDUCE(__reduce_max_sync, unsigned, 2)
PYA_EMU_REDUCE(__reduce_max_sync, int, 2)
#undef PYA_EMU_REDUCE

[[noreturn]] inline void __trap() {
  std::string m = "__trap() called";
  if (pya_emu::g_run && pya_emu::g_run->cur && !pya_emu::g_run->cur->last_printf.empty()) {
    std::string p = pya_emu::g_run->cur->last_printf;
    while (!p.empty() && p.back() == '\n') p.pop_back();
    m += " after printing: " + p;
  }
  throw pya_emu::KernelError(m);
}

// Device printf: printed at once (the GPU prints at the end of the launch), and kept per thread.
// `printf` is a macro for this function, also visible as std::pya_emu_device_printf (std::printf).
__attribute__((format(printf, 1, 2))) inline int pya_emu_device_printf(const char* fmt, ...) {
  char buf[4096];
  va_list ap;
  va_start(ap, fmt);
  const int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  std::fputs(buf, stdout);
  if (pya_emu::g_run && pya_emu::g_run->cur) pya_emu::g_run->cur->last_printf = buf;
  return n;
}
namespace std {
using ::pya_emu_device_printf;
}
[[noreturn]] inline void __brkpt() { throw pya_emu::KernelError("__brkpt() called"); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}

template <class T>
inline T __ldg(const T* p) { return *p; }
template <class T>
inline T __ldcs(const T* p) { return *p; }
template <class T>
inline void __stcs(T* p, T v) { *p = v; }

inline cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) pya_emu::max_dynamic_smem()[fn] = size_t(value);
  return cudaSuccess;
}
template <class... P>
cudaError_t cudaFuncSetAttribute(void (*fn)(P...), cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(fn), attr, value);
}
