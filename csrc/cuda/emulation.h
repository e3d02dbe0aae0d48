// CPU emulation of the CUDA execution model, for running our .cu kernel files unchanged as host C++
// in the tests (tests/emulation/: a driver built with AddressSanitizer and UBSan). Included by
// csrc/cuda/cuda_or_emulation.h when nvcc is not the compiler; never part of the extension. Parts,
// in csrc/cuda/emulation/: types.h (dim3, vectors, runtime API, atomics, intrinsics), scheduler.h
// (fibers, blocks, launches), warp.h (barrier, warp collectives, __trap, printf), half.h, wmma.h,
// mma_sync.h (ldmatrix, mma.sync), async_copy.h (cp.async).
//
// What it models
// - A launch (PYA_LAUNCH) runs the grid's blocks one after another on the calling OS thread; a block's
//   threads are fibers (ucontext, 256 KiB stacks over a guard page), one running at a time.
//   threadIdx/blockIdx/blockDim/gridDim are globals set at every switch. Kernel arguments are
//   copied per thread, as on the GPU. Invalid configurations (0 or > 1024 threads, too much dynamic
//   shared memory without cudaFuncSetAttribute) fail the launch.
// - Two schedules (pya_emu::set_schedule): between two blocking points (barrier, warp collective,
//   exit) the runnable threads run one after another in ascending, or descending, thread order,
//   and the blocks too. A result that depends on the order is a race (a missing __syncthreads(), a
//   dependence between blocks); the tests run both schedules and require identical bits.
// - __syncthreads() is a real barrier: all threads of the block must arrive at the same call (same
//   file:line, same count). Threads waiting at different barriers, or at a barrier while others have
//   exited (stricter than sm_70+, where exited threads count as arrived; CUDA calls it undefined),
//   or lanes missing from a warp collective, are reported as errors naming the threads and sites.
// - Warp collectives (__shfl*_sync, __ballot/__any/__all_sync, __reduce_*_sync, __syncwarp, WMMA
//   load/store/mma) are rendezvous of the lanes in the mask (lanes past a partial last warp are
//   dropped from it): each lane deposits its operand and waits; the last to arrive computes every
//   lane's result. Shuffle sources follow PTX (width segments; out of range: own value); a source
//   lane outside the mask (undefined on the GPU) also gives the caller's own value.
// - Static __shared__ is a function-local static: one copy, seen by each block in turn; it starts
//   zeroed in a fresh process and is NOT re-poisoned between blocks (the tests run each schedule in
//   a fresh process). `extern __shared__` cannot be expressed: kernels write PYA_DYNAMIC_SHARED(T,
//   name), here a per-block heap buffer of exactly the launch's size, filled with 0xFF bytes (NaN,
//   -1) at each block start. Out-of-bounds: ASan sees global and dynamic shared memory, UBSan's
//   bounds check sees indexing past a static __shared__ array.
// - __half/__nv_bfloat16 conversions round to nearest even, bit-exactly as cvt.rn (from double too:
//   no double rounding); __float_to_tf32 rounds to nearest, ties away (cvt.rna.tf32). Half/bf16
//   arithmetic is float arithmetic rounded once: the same result as native half + - * /.
// - WMMA (nvcuda::wmma): fragments of 16x16x16 half/bf16 and 16x16x8 tf32 (other m/n/k too); lane l
//   holds elements [l*n, (l+1)*n) of the row-major tile (the GPU's mapping is unspecified; element-
//   wise loops over x[] work with any). mma_sync multiplies the inputs (tf32: the low 13 bits of each
//   float ignored, as the tensor core ignores them) exactly and accumulates in float, k ascending,
//   from c. Float accumulators only.
// - ldmatrix (.x1/.x2/.x4, .trans) and mma.sync (m16n8k16 bf16/f16, m16n8k8 tf32; csrc/cuda/
//   mma_sync.h): warp collectives with the PTX ISA's fragment layouts, element for element (unlike
//   WMMA's, they are specified): a fragment built or read the wrong way gives wrong numbers. Row
//   addresses must be 16-byte aligned. Shared-memory addresses are host addresses.
// - cp.async (pya_emu::cp_async16, used through csrc/cuda/async_copy.h): the source is read when the
//   copy is issued, the destination is filled with 0xFF bytes (NaN) at once and gets the data only at
//   a cp.async.wait_group that covers the copy's commit group. A read before the wait, or a copy
//   issued into a buffer that other threads still read (a missing barrier), sees NaN. Misaligned
//   addresses are errors, as on the GPU.
// - Atomics are plain read-modify-writes (fibers are never preempted, so they are atomic).
// - printf prints at once and is kept per thread; __trap() throws pya_emu::KernelError quoting the
//   thread's last printf; the launch rethrows any error in a kernel with the kernel's full name,
//   block and thread. A watchdog (PYA_EMU_WATCHDOG_S, default 120 s) ends a process whose launch
//   never finishes (a thread spinning on another thread's write never yields).
// - Under ASan every fiber switch is annotated (__sanitizer_start/finish_switch_fiber), and glibc's
//   swapcontext is called directly: ASan's interceptor would clear the shadow of a whole stack each
//   switch (10x slower) and warn.
//
// What it does not model: timing and occupancy, memory coalescing and bank conflicts, real
// concurrency between blocks or between the threads of a warp (no lock-step: an intra-warp race
// without __syncwarp() shows only if the schedules differ on it), the memory model beyond barriers
// and collectives (fences are no-ops, all memory is coherent), register limits and
// __launch_bounds__, the fast-math intrinsics' reduced accuracy (__expf is std::exp), inline PTX
// (wrap it in a __device__ function with a host definition), streams (a launch is synchronous),
// texture/surface memory, cooperative groups, dynamic parallelism, __syncthreads_count/and/or.
#pragma once

#define PYA_CUDA_EMULATION 1

// Every standard header first: the macros below (__noinline__, printf) must not reach them; a kernel
// file that needs another standard header includes it before cuda_or_emulation.h.
#include <signal.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <source_location>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define PYA_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PYA_EMU_ASAN 1
#endif
#endif
#ifdef PYA_EMU_ASAN
#include <dlfcn.h>
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

// The parts, in dependency order.
#include "cuda/emulation/types.h"
#include "cuda/emulation/scheduler.h"
#include "cuda/emulation/warp.h"
#include "cuda/emulation/half.h"
#include "cuda/emulation/wmma.h"
#include "cuda/emulation/mma_sync.h"
#include "cuda/emulation/async_copy.h"

// ------------------------------------------------------------------------------------------------
// Launch and dynamic shared memory, spelled the same in both builds (see cuda_or_emulation.h)
// ------------------------------------------------------------------------------------------------
#define PYA_LAUNCH(grid, block, smem, stream, ...) ::pya_emu::launcher<__VA_ARGS__>(grid, block, smem, stream)
#define PYA_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(::pya_emu::dynamic_shared_memory())
#define printf pya_emu_device_printf
