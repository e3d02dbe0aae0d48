"""compare.py section "loss": the fused softmax cross-entropy against F.cross_entropy.

N x C from 128 x 10 (CIFAR-10 batches) to 16384 x 131072 (a large vocabulary), forward and
forward + backward. Variants, each verified first (loss and gradient as accurate as
F.cross_entropy's against float64, checks.py):

    ours      pyalexnet.ops.softmax_cross_entropy
    eager     F.cross_entropy
    compile   torch.compile(F.cross_entropy) (Inductor fuses log-softmax and the gather)

The op reads N x C logits once forward and once more backward (writing the gradient), so its limit
is memory bandwidth: rows state GB/s against the measured copy rate, no TFLOP/s. A shape whose
tensors would not fit in the memory available is skipped, saying so.
Run it alone with `python bench/compare.py --sections loss`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from pyalexnet.ops import softmax_cross_entropy

from .checks import assert_as_accurate, attempt, seed_row
from .machine import available_bytes
from .rows import run_each, speed_row

SHAPES = [(128, 10), (1024, 10), (128, 1000), (1024, 1000), (4096, 1000), (4096, 32768),
          (16384, 32768), (16384, 131072)]
PASSES = ("fwd", "fwd+bwd")

_compiled = None


def compiled_cross_entropy():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(F.cross_entropy, dynamic=False)
    return _compiled


def min_bytes(n: int, c: int, pass_: str, elt: int) -> int:
    """Forward reads the logits and the int64 targets; backward reads both again and writes the gradient."""
    fwd = n * c * elt + n * 8
    return fwd if pass_ == "fwd" else 2 * fwd + n * c * elt


def run(cfg, timer, limits, table, failures) -> list[dict]:
    def items():
        for dtype in cfg.dtypes:
            for n, c in cfg.shapes:
                key = dict(section="loss", N=n, C=c, dtype=str(dtype).removeprefix("torch."))
                label = f"loss {n}x{c} {key['dtype']}"
                yield key, label, lambda a=(n, c, dtype, key, label): _one(cfg, timer, limits, *a, failures)
    return run_each(items(), timer, table, failures)


def _one(cfg, timer, limits, n, c, dtype, key, label, failures):
    dev = cfg.device
    seed_row(key)
    nsets = cfg.sets_for(n * c * dtype.itemsize)
    need, free = n * c * dtype.itemsize * (nsets + 4), available_bytes(dev)
    if need > 0.7 * free:
        return f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB available"
    variants = {"ours": softmax_cross_entropy, "eager": F.cross_entropy}
    if cfg.compile_for(n, dtype):
        variants["compile"] = compiled_cross_entropy()
    sets = [((3 * torch.randn(n, c, device=dev)).to(dtype).requires_grad_(), torch.randint(0, c, (n,), device=dev))
            for _ in range(nsets)]
    # -- verify on the first set: loss and the first rows' gradient as accurate as eager's, against
    # float64 (computed in chunks of rows, so the largest shapes need no float64 copy of the logits)
    x, t = sets[0]
    rows = min(n, 1024)
    with torch.no_grad():
        ref_loss = sum(F.cross_entropy(x[i:i + 2048].double(), t[i:i + 2048], reduction="sum")
                       for i in range(0, n, 2048)) / n
    x64 = x[:rows].detach().double().requires_grad_()
    ref = [ref_loss, *torch.autograd.grad(F.cross_entropy(x64, t[:rows], reduction="sum") / n, x64)]

    def result(fn):
        loss = fn(x, t)
        return [loss, torch.autograd.grad(loss, x)[0][:rows]]
    base = result(F.cross_entropy)
    ok = {name: name == "eager" or attempt(failures, f"{label} {name}", lambda fn=fn: assert_as_accurate(
        result(fn), base, ref, ["loss", "dlogits"], str(dtype).removeprefix("torch.")))
          for name, fn in variants.items()}
    ref = base = None  # noqa: F841 - frees them before timing
    live = {name: fn for name, fn in variants.items() if ok[name]}
    times = {}
    with torch.no_grad():
        times["fwd"] = timer.compare(live, {name: sets for name in live})
    times["fwd+bwd"] = timer.compare({name: _fwd_bwd(fn) for name, fn in live.items()}, {name: sets for name in live})
    failed = {name: failures[f"{label} {name}"] for name in variants if not ok[name]}
    return [speed_row(key, p, times[p], variants, limits, None, min_bytes(n, c, p, dtype.itemsize), failed)
            for p in PASSES]


def _fwd_bwd(fn):
    def run(x, t):
        return torch.autograd.grad(fn(x, t), x)
    return run

