"""compare.py --busy N: other processes that keep N CPU cores busy for the whole run, so that the
kernels are measured the way a user's machine runs them, with something else on it (a training
step must not fall off a cliff when its threads are preempted)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

SPIN = "while True: pass"


def check_busy(n: int) -> None:
    """Refuses a count below 0 or one that leaves no core free."""
    if n < 0:
        raise ValueError(f"--busy must be >= 0, got {n}")
    cores = os.cpu_count() or 1
    if n >= cores:
        raise ValueError(f"--busy {n} would keep every one of this machine's {cores} cores busy")


@contextlib.contextmanager
def busy_cores(n: int):
    """Starts n spinning Python processes (one core each), yields them, and kills them on the way
    out, whatever happened inside."""
    check_busy(n)
    procs = []
    try:
        for _ in range(n):
            procs.append(subprocess.Popen([sys.executable, "-c", SPIN], stdin=subprocess.DEVNULL))
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
