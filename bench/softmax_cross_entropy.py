"""Fused softmax cross-entropy against F.cross_entropy, side by side in one run.

    python bench/softmax_cross_entropy.py                      # CPU (or GPU if present), default shapes
    python bench/softmax_cross_entropy.py --shapes 1024x1000 --dtype float32 --json out.json

Each variant is checked against F.cross_entropy (loss and gradient) before it is timed; times are
medians from torch.utils.benchmark over several input sets (so caches don't flatter).
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform

import torch
import torch.nn.functional as F
import torch.utils.benchmark as tb

import pyalexnet
from pyalexnet.ops import softmax_cross_entropy


def timed(fn, sets, min_run_time):
    """Median seconds of fn(*s) over the input sets, each timed by torch.utils.benchmark."""
    ts = [tb.Timer(stmt="fn(*s)", globals={"fn": fn, "s": s}, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time).median
          for s in sets]
    return sorted(ts)[len(ts) // 2]


def fwd(loss_fn):
    return lambda x, t: loss_fn(x, t)


def fwd_bwd(loss_fn):
    def run(x, t):
        x.grad = None
        loss_fn(x, t).backward()
    return run


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--shapes", default="128x10,1024x10,1024x1000,4096x1000",
                   help="comma-separated NxC list")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--sets", type=int, default=3, help="input sets to rotate through")
    p.add_argument("--min-run-time", type=float, default=0.3, help="seconds per timing")
    p.add_argument("--json", help="write the rows and the machine description here")
    args = p.parse_args(argv)
    dev, dt = torch.device(args.device), getattr(torch, args.dtype)
    ls = args.label_smoothing
    ours = lambda x, t: softmax_cross_entropy(x, t, label_smoothing=ls)  # noqa: E731
    base = lambda x, t: F.cross_entropy(x, t, label_smoothing=ls)  # noqa: E731

    machine = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "pyalexnet": pyalexnet.__version__, "build": pyalexnet.build_info(), "python": platform.python_version(),
    }
    print(f"# {machine['device']} | torch {machine['torch']} | CUDA {machine['cuda']} | "
          f"{machine['threads']} threads | {args.dtype} | label_smoothing {ls} | {machine['date']}")
    print(f"{'N x C':>14} | {'pass':>8} | {'ours us':>10} | {'torch us':>10} | {'speedup':>7}")
    rows = []
    for shape in args.shapes.split(","):
        n, c = (int(v) for v in shape.lower().split("x"))
        sets = []
        for _ in range(args.sets):
            x = (3 * torch.randn(n, c, device=dev)).to(dt).requires_grad_()
            sets.append((x, torch.randint(0, c, (n,), device=dev)))
        x, t = sets[0]  # verify before timing
        a = ours(x, t)
        ga, = torch.autograd.grad(a, x)
        b = base(x, t)
        gb, = torch.autograd.grad(b, x)
        tol = dict(rtol=1e-4, atol=1e-5) if dt == torch.float32 else dict(rtol=2e-2, atol=2e-3)
        torch.testing.assert_close(a.float(), b.float(), **tol)
        torch.testing.assert_close(ga.float(), gb.float(), **tol)
        for name, mk in (("fwd", fwd), ("fwd+bwd", fwd_bwd)):
            to, tt = timed(mk(ours), sets, args.min_run_time), timed(mk(base), sets, args.min_run_time)
            rows.append({"N": n, "C": c, "pass": name, "ours_s": to, "torch_s": tt, "speedup": tt / to})
            print(f"{f'{n} x {c}':>14} | {name:>8} | {to * 1e6:10.1f} | {tt * 1e6:10.1f} | {tt / to:6.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "dtype": args.dtype, "label_smoothing": ls, "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
