// CPU emulation of the CUDA execution model, for running our .cu kernel files unchanged as host C++
// in the tests (tests/emulation/). Included by csrc/cuda/cuda_or_emulation.h when nvcc is not the
// compiler; never part of the extension.
//
// What it models
// - A launch (PYA_LAUNCH) runs the grid's blocks one after another on the calling OS thread; a block's
//   threads are fibers (ucontext) on that thread, one at a time. threadIdx/blockIdx/blockDim/gridDim
//   are globals set on every switch. Kernel arguments are copied per thread, as on the GPU.
// - Two schedules (set_schedule): between two blocking points (barrier, warp collective, exit) the
//   runnable threads run one after another in ascending or in descending thread order, and blocks
//   run in ascending or descending order. A kernel whose result depends on that order has a race
//   (a missing __syncthreads(), or an inter-block dependence); the tests run both and compare.
// - __syncthreads() is a real barrier: every thread of the block must arrive at the same call
//   (same file:line, same count). A barrier some threads never reach (they exited, or wait at a
//   different barrier or warp collective) is reported as an error naming the threads and sites.
// - Warp collectives (__shfl*_sync, __ballot/__any/__all_sync, __reduce_*_sync, __syncwarp, the WMMA
//   load/store/mma) are rendezvous of the lanes named in the mask (lanes past a partial last warp
//   are dropped from it): each lane deposits its operand and waits; the last to arrive computes all
//   results. A lane missing from a collective, or lanes at different collectives, is an error.
// - Static __shared__ is a function-local static (one copy, which every block of the launch sees, as
//   blocks run one at a time); `PYA_DYNAMIC_SHARED(T, name)` is a per-block buffer of the launch's
//   dynamic size, filled with 0xFF bytes (NaN / -1) at every block start. Static shared memory is NOT
//   re-poisoned between blocks; run each schedule in a fresh process so it starts zeroed in both.
// - __half/__nv_bfloat16 conversions round to nearest even bit-exactly as the hardware's cvt.rn;
//   __float_to_tf32 rounds to nearest, ties away (cvt.rna.tf32). Half/bf16 arithmetic is done in
//   float and rounded once, which gives the same result as native half arithmetic for + - * /.
// - WMMA (nvcuda::wmma): fragments of 16x16x16 half/bf16 and 16x16x8 tf32 (other m/n/k too); lane
//   l holds elements [l*n, (l+1)*n) of the row-major tile (the element mapping is unspecified on the
//   GPU; element-wise loops over x[] work with any). mma_sync multiplies the rounded inputs (tf32:
//   the low 13 bits of each float ignored, as the tensor core does) exactly and accumulates in
//   float, k ascending, from c. Float accumulators only.
// - Atomics are plain read-modify-writes (fibers are never preempted, so they are atomic).
// - __trap() throws pya_emu::KernelError; errors inside a kernel are rethrown by the launch with the
//   kernel, block and thread. A watchdog (PYA_EMU_WATCHDOG_S, default 120 s) ends a process whose
//   launch never finishes (a thread spinning on another thread's write never yields).
//
// What it does not model: timing and occupancy, memory coalescing and bank conflicts, real
// concurrency between blocks or between the threads of a warp (there is no lock-step execution:
// intra-warp races without __syncwarp() are not seen as such), the memory model beyond barriers and
// collectives (fences are no-ops, all memory is coherent), register limits and __launch_bounds__,
// the fast-math intrinsics' reduced accuracy (__expf is std::exp), inline PTX (wrap it in a function
// with a host definition), streams (a launch is synchronous), texture/surface memory, cooperative
// groups, and __syncthreads_count/and/or.
#pragma once

#define PYA_CUDA_EMULATION 1

// Every standard header first: the attribute macros below (__noinline__) must not reach them.
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <source_location>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define PYA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PYA_EMU_ASAN 1
#endif
#endif
#ifdef PYA_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __shared__ static
#define __CUDA_ARCH_EMULATED__ 1

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

namespace pya_emu {

struct KernelError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule { kAscending, kDescending };
inline Schedule g_schedule = Schedule::kAscending;
inline void set_schedule(Schedule s) { g_schedule = s; }

// Launch log: one line per launch, "<kernel> grid=x,y,z block=x,y,z smem=n", for the tests.
inline std::vector<std::string>& launch_log() {
  static std::vector<std::string> log;
  return log;
}

inline std::map<const void*, size_t>& max_dynamic_smem() {
  static std::map<const void*, size_t> m;
  return m;
}

#ifdef PYA_EMU_ASAN
constexpr size_t kStackBytes = size_t(1) << 20;  // ASan's redzones make frames several times larger
#else
constexpr size_t kStackBytes = size_t(256) << 10;
#endif
constexpr size_t kGuardBytes = 4096;  // PROT_NONE below each stack: an overflow faults

enum class State : uint8_t { kRunnable, kBarrier, kWarp, kDone };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  uint3 tid{0, 0, 0};
  unsigned linear = 0;
  State state = State::kRunnable;
  const char* wait_file = "";
  unsigned wait_line = 0;
  const char* wait_what = "";
  unsigned barriers = 0;
  std::exception_ptr error;
};

// A warp collective: lane_data[l] points at lane l's operands/results (a type the op knows).
using Complete = void (*)(void* const* lane_data, unsigned mask);

struct WarpGroup {
  unsigned mask = 0, arrived = 0;
  Complete fn = nullptr;
  const char* what = "";
  const char* file = "";
  unsigned line = 0;
  void* data[32] = {};
};

struct BlockRun {
  std::vector<Fiber> fibers;
  std::vector<std::vector<WarpGroup>> groups;  // pending collectives per warp
  ucontext_t sched;
  Fiber* cur = nullptr;
  const std::function<void()>* body = nullptr;
  unsigned char* dyn_smem = nullptr;
  const void* sched_bottom = nullptr;  // the scheduler's stack, for ASan's fiber switches
  size_t sched_size = 0;
};
inline BlockRun* g_run = nullptr;

inline char* stack_of(size_t i) {
  static std::vector<char*> pool;
  while (pool.size() <= i) {
    void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw KernelError("emulation: cannot map a fiber stack");
    mprotect(p, kGuardBytes, PROT_NONE);
    pool.push_back(static_cast<char*>(p) + kGuardBytes);
  }
  return pool[i];
}

inline BlockRun& run() {
  if (!g_run || !g_run->cur) throw KernelError("emulation: a device function was called outside a kernel");
  return *g_run;
}

// Scheduler -> fiber f, back when f blocks, yields or ends.
inline void resume(BlockRun& r, Fiber& f) {
  r.cur = &f;
  threadIdx = f.tid;
#ifdef PYA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
#endif
  swapcontext(&r.sched, &f.ctx);
#ifdef PYA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  r.cur = nullptr;
}

// Fiber -> scheduler. `ending`: the fiber will never be resumed.
inline void yield(bool ending = false) {
  BlockRun& r = *g_run;
  Fiber& f = *r.cur;
#ifdef PYA_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(ending ? nullptr : &fake, r.sched_bottom, r.sched_size);
#endif
  swapcontext(&f.ctx, &r.sched);
#ifdef PYA_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
  (void)ending;
}

inline void fiber_entry() {
  BlockRun& r = *g_run;
#ifdef PYA_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &r.sched_bottom, &r.sched_size);
#endif
  Fiber& f = *r.cur;
  try {
    (*r.body)();
  } catch (...) {
    f.error = std::current_exception();
  }
  f.state = State::kDone;
  yield(true);
  std::abort();  // never resumed
}

// "0-31, 64, 96-127": a set of thread indices, compactly.
inline std::string ranges(const std::vector<unsigned>& v) {
  std::string s;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    s += std::to_string(v[i]);
    if (j > i) s += "-" + std::to_string(v[j]);
    i = j + 1;
  }
  return s.empty() ? "none" : s;
}

inline std::string where(const char* file, unsigned line) {
  const char* base = std::strrchr(file, '/');
  return std::string(base ? base + 1 : file) + ":" + std::to_string(line);
}

// Nothing is runnable: release the barrier if every live thread waits at the same one, else explain.
inline bool release_or_explain(BlockRun& r, std::string& why) {
  std::vector<unsigned> done, barrier, warp;
  for (auto& f : r.fibers) {
    if (f.state == State::kDone) done.push_back(f.linear);
    else if (f.state == State::kBarrier) barrier.push_back(f.linear);
    else if (f.state == State::kWarp) warp.push_back(f.linear);
  }
  if (barrier.empty() && warp.empty()) return false;  // all done
  if (warp.empty() && done.empty()) {
    const Fiber& a = r.fibers[barrier[0]];
    std::string sites;
    bool same = true;
    for (auto& f : r.fibers)
      if (f.wait_line != a.wait_line || std::strcmp(f.wait_file, a.wait_file) != 0 || f.barriers != a.barriers)
        same = false;
    if (same) {
      for (auto& f : r.fibers) f.state = State::kRunnable, ++f.barriers;
      return true;
    }
    why = "divergent __syncthreads(): threads wait at different barriers:";
    std::map<std::string, std::vector<unsigned>> by;
    for (auto& f : r.fibers)
      by[where(f.wait_file, f.wait_line) + " (barrier #" + std::to_string(f.barriers + 1) + ")"].push_back(f.linear);
    for (auto& [k, v] : by) why += " threads " + ranges(v) + " at " + k + ";";
    return false;
  }
  if (!barrier.empty() && warp.empty()) {
    const Fiber& a = r.fibers[barrier[0]];
    why = "divergent __syncthreads(): threads " + ranges(barrier) + " wait at " +
          where(a.wait_file, a.wait_line) + " while threads " + ranges(done) + " have exited";
    return false;
  }
  why = "a warp collective cannot complete:";
  for (size_t w = 0; w < r.groups.size(); ++w)
    for (auto& g : r.groups[w]) {
      std::vector<unsigned> in, exited, elsewhere;
      for (unsigned l = 0; l < 32; ++l) {
        if (!(g.mask >> l & 1)) continue;
        unsigned t = unsigned(w) * 32 + l;
        if (g.arrived >> l & 1) in.push_back(t);
        else if (r.fibers[t].state == State::kDone) exited.push_back(t);
        else elsewhere.push_back(t);
      }
      why += " " + std::string(g.what) + " at " + where(g.file, g.line) + ": threads " + ranges(in) +
             " arrived, threads " + ranges(exited) + " of its mask exited";
      for (unsigned t : elsewhere)
        why += ", thread " + std::to_string(t) + " waits at " + r.fibers[t].wait_what + " " +
               where(r.fibers[t].wait_file, r.fibers[t].wait_line);
      why += ";";
    }
  return false;
}

inline void watchdog_fired(int) {
  static const char msg[] =
      "\npya_emu watchdog: a kernel launch did not finish in time (a thread spinning on another "
      "thread's write never yields; PYA_EMU_WATCHDOG_S sets the limit)\n";
  ssize_t n = write(2, msg, sizeof msg - 1);
  (void)n;
  _exit(124);
}

struct Watchdog {
  Watchdog() {
    const char* s = std::getenv("PYA_EMU_WATCHDOG_S");
    long sec = s ? std::atol(s) : 120;
    signal(SIGALRM, watchdog_fired);
    itimerval t{};
    t.it_value.tv_sec = sec > 0 ? sec : 120;
    setitimer(ITIMER_REAL, &t, nullptr);
  }
  ~Watchdog() {
    itimerval t{};
    setitimer(ITIMER_REAL, &t, nullptr);
  }
};

inline void run_grid(const std::string& name, const void* fn, dim3 grid, dim3 block, size_t smem,
                     const std::function<void()>& body) {
  const size_t nthreads = size_t(block.x) * block.y * block.z;
  const size_t nblocks = size_t(grid.x) * grid.y * grid.z;
  auto cfg = [&] {
    char b[160];
    std::snprintf(b, sizeof b, " grid=%u,%u,%u block=%u,%u,%u smem=%zu", grid.x, grid.y, grid.z, block.x,
                  block.y, block.z, smem);
    return name + b;
  };
  launch_log().push_back(cfg());
  size_t smem_max = 48 * 1024;
  if (auto it = max_dynamic_smem().find(fn); it != max_dynamic_smem().end()) smem_max = it->second;
  if (nthreads == 0 || nthreads > 1024 || nblocks == 0 || block.z > 64 || grid.y > 65535 || grid.z > 65535 ||
      smem > smem_max)
    throw KernelError("invalid launch configuration (cudaErrorInvalidConfiguration): " + cfg());
  if (g_run) throw KernelError("emulation: a kernel launched from inside a kernel: " + cfg());
  Watchdog dog;
  BlockRun r;
  r.body = &body;
  r.fibers.resize(nthreads);
  r.groups.resize((nthreads + 31) / 32);
  std::vector<unsigned char> dyn(smem ? smem : 1);
  r.dyn_smem = smem ? dyn.data() : nullptr;
  struct Reset {
    ~Reset() { g_run = nullptr; }
  } reset;
  g_run = &r;
  gridDim = grid;
  blockDim = block;
  const bool desc = g_schedule == Schedule::kDescending;
  for (size_t bi = 0; bi < nblocks; ++bi) {
    const size_t b = desc ? nblocks - 1 - bi : bi;
    blockIdx = uint3{unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / grid.x / grid.y)};
    if (smem) std::memset(r.dyn_smem, 0xFF, smem);
    for (size_t t = 0; t < nthreads; ++t) {
      Fiber& f = r.fibers[t];
      f = Fiber{};
      f.linear = unsigned(t);
      f.tid = uint3{unsigned(t % block.x), unsigned(t / block.x % block.y), unsigned(t / block.x / block.y)};
      f.stack = stack_of(t);
#ifdef PYA_EMU_ASAN
      __asan_unpoison_memory_region(f.stack, kStackBytes);  // frames abandoned by an earlier error
#endif
      getcontext(&f.ctx);
      f.ctx.uc_stack.ss_sp = f.stack;
      f.ctx.uc_stack.ss_size = kStackBytes;
      f.ctx.uc_link = nullptr;
      makecontext(&f.ctx, fiber_entry, 0);
    }
    for (auto& g : r.groups) g.clear();
    for (;;) {
      bool ran = false;
      for (size_t i = 0; i < nthreads; ++i) {
        Fiber& f = r.fibers[desc ? nthreads - 1 - i : i];
        if (f.state != State::kRunnable) continue;
        resume(r, f);
        ran = true;
        if (f.error) {
          std::string what = "unknown exception";
          try {
            std::rethrow_exception(f.error);
          } catch (const std::exception& e) {
            what = e.what();
          } catch (...) {
          }
          char b[96];
          std::snprintf(b, sizeof b, " block (%u,%u,%u) thread (%u,%u,%u): ", blockIdx.x, blockIdx.y,
                        blockIdx.z, f.tid.x, f.tid.y, f.tid.z);
          throw KernelError("kernel " + cfg() + b + what);
        }
      }
      if (ran) continue;
      std::string why;
      if (release_or_explain(r, why)) continue;
      if (why.empty()) break;  // every thread has exited
      char b[48];
      std::snprintf(b, sizeof b, " block (%u,%u,%u): ", blockIdx.x, blockIdx.y, blockIdx.z);
      throw KernelError("kernel " + cfg() + b + why);
    }
  }
}

// Kernel launch: PYA_LAUNCH(grid, block, smem, stream, kernel)(args...).
template <class Fn>
struct Launcher;
template <class... P>
struct Launcher<void (*)(P...)> {
  void (*fn)(P...);
  std::string name;
  dim3 grid, block;
  size_t smem;
  template <class... A>
  void operator()(A&&... a) const {
    std::tuple<P...> args(std::forward<A>(a)...);  // converted once, copied per thread
    std::function<void()> body = [&] { std::apply(fn, args); };
    run_grid(name, reinterpret_cast<const void*>(fn), grid, block, smem, body);
  }
};

// The kernel's full name (template arguments included) from this function's signature.
template <auto F>
std::string kernel_name() {
  std::string s = __PRETTY_FUNCTION__;
  size_t a = s.find("F = ");
  if (a == std::string::npos) return s;
  a += 4;
  size_t e = s.find_first_of(";]", a);
  // the template argument list can hold ';' only inside names, never here; ']' ends it
  return s.substr(a, e - a);
}

template <auto F>
Launcher<decltype(F)> launcher(dim3 grid, dim3 block, size_t smem, cudaStream_t) {
  return Launcher<decltype(F)>{F, kernel_name<F>(), grid, block, smem};
}

inline unsigned char* dynamic_shared_memory() { return run().dyn_smem; }

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

[[noreturn]] inline void __trap() { throw pya_emu::KernelError("__trap() called"); }
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
}  // namespace pya_emu

struct __half_raw { unsigned short x; };
struct __nv_bfloat16_raw { unsigned short x; };

#define PYA_EMU_HALF_TYPE(H, RAW, TO, FROM)                                                   \
  struct H {                                                                                  \
    unsigned short __x;                                                                       \
    H() = default;                                                                            \
    H(float f) : __x(pya_emu::TO(f)) {}                                                       \
    H(double f) : __x(pya_emu::TO(float(f))) {}                                               \
    H(int i) : __x(pya_emu::TO(float(i))) {}                                                  \
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

// ------------------------------------------------------------------------------------------------
// Launch and dynamic shared memory, spelled the same in both builds (see cuda_or_emulation.h)
// ------------------------------------------------------------------------------------------------
#define PYA_LAUNCH(grid, block, smem, stream, ...) ::pya_emu::launcher<__VA_ARGS__>(grid, block, smem, stream)
#define PYA_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::pya_emu::dynamic_shared_memory())
