// cp.async: asynchronous 16-byte global -> shared copies, commit groups and waits, emulated so that a
// kernel that reads a copy's destination too early sees NaN instead of the data.
// Part of the CPU emulation of CUDA: include csrc/cuda/emulation.h, not this file.
#pragma once

namespace pya_emu {

// Issue: read the source now (zeros when !valid, the src-size 0 form), poison the destination until a
// wait lands it.
inline void cp_async16(void* dst, const void* src, bool valid) {
  Fiber& f = *run().cur;
  if (reinterpret_cast<uintptr_t>(dst) % 16 != 0 || (valid && reinterpret_cast<uintptr_t>(src) % 16 != 0))
    throw KernelError("cp.async: a 16-byte copy needs 16-byte aligned addresses (misaligned address)");
  Fiber::AsyncCopy c{static_cast<unsigned char*>(dst), {}, f.async_commits};
  if (valid) std::memcpy(c.data, src, 16);
  std::memset(dst, 0xFF, 16);
  f.async_copies.push_back(c);
}

// cp.async.commit_group: the copies issued since the last commit form one group.
inline void cp_async_commit() { ++run().cur->async_commits; }

// cp.async.wait_group n: every committed group but the newest n has landed (copies not yet
// committed are not waited for).
inline void cp_async_wait(unsigned n) {
  Fiber& f = *run().cur;
  const unsigned done = f.async_commits > n ? f.async_commits - n : 0;
  auto& q = f.async_copies;
  size_t keep = 0;
  for (size_t i = 0; i < q.size(); ++i) {
    if (q[i].group < done) std::memcpy(q[i].dst, q[i].data, 16);
    else q[keep++] = q[i];
  }
  q.resize(keep);
}

}  // namespace pya_emu
