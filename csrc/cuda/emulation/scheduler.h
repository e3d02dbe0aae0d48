// Fibers, blocks and the grid: the schedules, barrier release, deadlock reports, the watchdog, launches.
// Part of the CPU emulation of CUDA: include csrc/cuda/emulation.h, not this file.
#pragma once

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

constexpr size_t kStackBytes = size_t(256) << 10;  // ~10x what our kernels use under ASan
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
  std::string last_printf;  // what the thread printed last: a __trap() error quotes it
  // cp.async (async_copy.h): copies issued and not yet landed, in issue order; commits so far.
  struct AsyncCopy {
    unsigned char* dst;
    unsigned char data[16];
    unsigned group;
  };
  std::vector<AsyncCopy> async_copies;
  unsigned async_commits = 0;
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
// Set when a block ends by an error: its fibers' frames (and ASan's poisoned redzones) were abandoned.
inline bool& stacks_dirty() {
  static bool dirty = false;
  return dirty;
}

inline std::vector<char*>& stack_pool() {
  static std::vector<char*> pool;
  return pool;
}

inline char* stack_of(size_t i) {
  auto& pool = stack_pool();
  while (pool.size() <= i) {
    void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw KernelError("emulation: cannot map a fiber stack");
    mprotect(p, kGuardBytes, PROT_NONE);
    pool.push_back(static_cast<char*>(p) + kGuardBytes);
  }
  return pool[i];
}

// ASan's swapcontext interceptor clears the shadow of the whole target stack on every switch (slow,
// and it warns); we annotate the switches ourselves (below), so we call glibc's swapcontext directly.
inline int swap(ucontext_t* from, const ucontext_t* to) {
#ifdef PYA_EMU_ASAN
  using Fn = int (*)(ucontext_t*, const ucontext_t*);
  static const Fn real = [] {
    void* h = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void* f = h ? dlsym(h, "swapcontext") : nullptr;
    return f ? reinterpret_cast<Fn>(f) : &swapcontext;
  }();
  return real(from, to);
#else
  return swapcontext(from, to);
#endif
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
  swap(&r.sched, &f.ctx);
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
  swap(&f.ctx, &r.sched);
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

// A fresh context that starts fiber_entry on f's stack. Out of line: getcontext "returns twice" for
// the compiler, which would otherwise keep the launch loop's variables out of registers (-Wclobbered).
__attribute__((noinline)) inline void start_context(Fiber& f) {
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStackBytes;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, fiber_entry, 0);
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
  if (stacks_dirty()) {  // an earlier launch ended by an error, abandoning frames on these stacks
#ifdef PYA_EMU_ASAN
    for (char* st : stack_pool()) __asan_unpoison_memory_region(st, kStackBytes);
#endif
    stacks_dirty() = false;
  }
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
      start_context(f);
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
          stacks_dirty() = true;
          throw KernelError("kernel " + cfg() + b + what);
        }
      }
      if (ran) continue;
      std::string why;
      if (release_or_explain(r, why)) continue;
      if (why.empty()) break;  // every thread has exited
      char b[48];
      std::snprintf(b, sizeof b, " block (%u,%u,%u): ", blockIdx.x, blockIdx.y, blockIdx.z);
      stacks_dirty() = true;
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

}  // namespace pya_emu
