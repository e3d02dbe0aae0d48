"""Timing for the benchmarks: medians over rotated input sets, warmed up, with a deadline.

On a GPU each call is timed by its own pair of CUDA events, after the L2 cache has been overwritten
(so a small problem cannot run from a cache its previous call filled); on the CPU by
torch.utils.benchmark's blocked_autorange, the calls cycling through enough input sets to
overflow the last-level cache (compare.Config.sets_for). `compare` alternates the variants over
rounds, so that drift in a shared machine's speed hits every variant alike.
"""
from __future__ import annotations

import itertools
import statistics
import time

import torch
import torch.utils.benchmark as tb


class OutOfTime(Exception):
    """The run's time limit has passed: what is left is reported as skipped."""


class Timer:
    def __init__(self, dev: torch.device, min_run_time: float = 0.2, rounds: int = 1,
                 time_limit: float | None = None):
        self.dev, self.min_run_time, self.rounds = dev, min_run_time, rounds
        self.start = time.monotonic()
        self.deadline = None if time_limit is None else self.start + time_limit
        self._flush = None

    # -- time left ------------------------------------------------------------------------------
    def left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise OutOfTime(f"time limit reached after {time.monotonic() - self.start:.0f} s")

    # -- one function ---------------------------------------------------------------------------
    def time(self, fn, sets, best: bool = False) -> float:
        """Median seconds of one call of fn(*s), the calls cycling through `sets` (best: the least
        over at least half a second of calls, for the machine's limits)."""
        if self.dev.type == "cuda":
            times = self._cuda(fn, sets)
        else:
            nxt = itertools.cycle(sets).__next__
            t = tb.Timer(stmt="f(*nxt())", globals={"f": fn, "nxt": nxt}, num_threads=torch.get_num_threads())
            m = t.blocked_autorange(min_run_time=max(self.min_run_time, 0.5) if best else self.min_run_time)
            times = m.times
        return min(times) if best else statistics.median(times)

    def _cuda(self, fn, sets) -> list:
        if self._flush is None:  # larger than any L2 so far (50 MiB on H100)
            self._flush = torch.empty(256 * 2**20, dtype=torch.int8, device=self.dev)
        for s in sets:  # warm-up: cuDNN's algorithm search, allocator, lazy module loading
            fn(*s)
        torch.cuda.synchronize(self.dev)
        t0 = time.perf_counter()
        fn(*sets[0])
        torch.cuda.synchronize(self.dev)
        estimate = max(time.perf_counter() - t0, 1e-6)
        reps = int(min(max(self.min_run_time / estimate, 10), 500))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(reps)]
        for (start, end), s in zip(events, itertools.cycle(sets)):
            self._flush.zero_()
            start.record()
            fn(*s)
            end.record()
        torch.cuda.synchronize(self.dev)
        return [start.elapsed_time(end) / 1e3 for start, end in events]

    # -- several variants side by side ----------------------------------------------------------
    def compare(self, fns: dict, sets: dict) -> dict:
        """{name: median seconds} of each fns[name] over sets[name], alternated over the rounds
        (each round starts with the next variant), the median over rounds."""
        names, times = list(fns), {n: [] for n in fns}
        for r in range(self.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                times[n].append(self.time(fns[n], sets[n]))
        return {n: statistics.median(ts) for n, ts in times.items()}
