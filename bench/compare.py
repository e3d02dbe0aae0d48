"""Our kernels against PyTorch's best, side by side in one run: `python bench/compare.py`.

    python bench/compare.py                          # everything, on the GPU if there is one
    python bench/compare.py --quick --json q.json    # under two minutes on two CPU cores (CI runs it)
    python bench/compare.py --gpu-check --time-limit 150 --save bench/results   # bench/gpu_check.sh's run
    python bench/compare.py --sections conv --variants imagenet --layers conv1,conv2 --batches 32 --plot s.png

Sections (--sections): 1. conv: the fused conv + ReLU + max-pool at every conv layer of both AlexNet
variants, forward, backward and both, against conv2d -> relu -> max_pool2d in NCHW, in channels_last
and under torch.compile, plus the memory each keeps for backward; 2. loss: the fused softmax
cross-entropy against F.cross_entropy (eager and compiled); 3. train: a whole AlexNet training step,
backend custom against cudnn: images/s and peak memory. cuDNN runs with benchmark mode on.

Every variant is verified against the baseline before it is timed (a failure is reported in its row
and makes the exit status 1). Times are medians over rotated input sets (CUDA events after an L2
flush on a GPU, torch.utils.benchmark on the CPU); speedup = the fastest verified baseline's time /
ours. A large matrix product (per dtype) and a large copy are timed first: rows state ours' TFLOP/s
and GB/s as shares of those two measured rates. --time-limit bounds the run: what does not fit is
listed as skipped, each section keeping a share of the time.
"""
from __future__ import annotations

import os

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # before torch is imported: the profiler's errors (section 3)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

# torch's C++ extension helpers (imported with torch.compile) warn "No CUDA runtime is found, using
# CUDA_HOME=..." whenever nvcc is installed on a machine without a GPU: nothing is wrong, the run is
# simply a CPU run (the header line names the device), so that one message is dropped.
logging.getLogger("torch.utils.cpp_extension").addFilter(
    lambda record: not record.getMessage().startswith("No CUDA runtime is found"))

if __name__ == "__main__" and not __package__:  # `python bench/compare.py`: run as bench.compare,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # with the repository root where bench/ was
    __package__ = "bench"
    import bench  # noqa: E402,F401

import torch  # noqa: E402

from . import conv_relu_maxpool, report, softmax_cross_entropy, train_step  # noqa: E402
from .load import busy_cores, check_busy  # noqa: E402
from .machine import describe, last_level_cache_bytes, measure_limits, slug  # noqa: E402
from .timing import Timer  # noqa: E402

SECTIONS = {"conv": conv_relu_maxpool, "loss": softmax_cross_entropy, "train": train_step}
TIME_SHARES = {"conv": 0.55, "loss": 0.2, "train": 0.25}  # of --time-limit, passed on when unused
ALL_SHAPES = ",".join(f"{n}x{c}" for n, c in softmax_cross_entropy.SHAPES)

# Defaults of the sweep options per mode and device; explicit options override them.
PRESETS = {
    "full": {
        "cpu": dict(variants="cifar,imagenet", layers="", batches="1,32,128", dtypes="float32,bfloat16",
                    shapes=ALL_SHAPES, compile_batches="all", compile_shapes="all", compile_dtypes="all",
                    train_batches="cifar:128,imagenet:16", train_dtypes="float32", min_run_time=0.2, rounds=3),
        "cuda": dict(variants="cifar,imagenet", layers="", batches="1,32,128,256", dtypes="bfloat16,float32",
                     shapes=ALL_SHAPES, compile_batches="all", compile_shapes="all", compile_dtypes="all",
                     train_batches="cifar:256,imagenet:128", train_dtypes="bfloat16,float32", min_run_time=0.05,
                     rounds=3),
    },
    # CI, on two CPU cores: two layers at batch 32 (with the compile column), three loss shapes, and
    # both networks at small batches; one thread, since with other work on the machine two threads
    # wait on each other's preemption (the run took 150 s at two threads, 40 s at one).
    "quick": {
        "cpu": dict(variants="cifar", layers="conv1,conv3", batches="32", dtypes="float32",
                    shapes="128x10,1024x1000,4096x1000", compile_batches="32", compile_shapes="none",
                    compile_dtypes="all",
                    train_batches="cifar:32,imagenet:2", train_dtypes="float32", min_run_time=0.05, rounds=1,
                    threads=1),
    },
    # bench/gpu_check.sh (with --time-limit): first the rows its bars need (the five ImageNet layers
    # at batch 128 in bfloat16, forward and forward+backward, kernel versions 2 and 1; the loss at
    # 16384 x 32768 and 16384 x 131072; a training step of each variant), then the rest as time
    # allows. No compile column: each new shape costs Inductor seconds of compilation, more than
    # the run has (`compare.py` alone measures it).
    "gpu-check": {
        "cuda": dict(variants="imagenet,cifar", layers="", batches="128,32,256", dtypes="bfloat16,float32",
                     shapes=",".join(dict.fromkeys(["16384x32768", "16384x131072", *ALL_SHAPES.split(",")])),
                     compile_batches="none", compile_shapes="none", compile_dtypes="none",
                     train_batches="imagenet:128,cifar:256", train_dtypes="bfloat16,float32",
                     min_run_time=0.02, rounds=1),
        # the rehearsal on a CPU (gpu_check.sh --rehearsal): the same plumbing on the smallest rows
        "cpu": dict(variants="imagenet", layers="conv3", batches="2", dtypes="float32", shapes="128x10",
                    compile_batches="none", compile_shapes="none", compile_dtypes="none",
                    train_batches="cifar:8", train_dtypes="float32", min_run_time=0.01, rounds=1, threads=1),
    },
}
PRESETS["quick"]["cuda"] = dict(PRESETS["quick"]["cpu"], batches="32,128", compile_batches="128",
                                train_batches="cifar:128,imagenet:32", threads=None)


@dataclass
class Config:
    device: torch.device
    sections: list
    variants: list
    layers: set
    batches: list
    dtypes: list
    shapes: list
    compile_batches: set | None   # None: every batch
    compile_shapes: set | None
    compile_dtypes: set | None
    train_batches: dict
    train_dtypes: list
    sets: int | None              # None: chosen per size (sets_for)

    def compile_for(self, size, dtype) -> bool:
        """Whether a conv batch size (int) or a loss shape (N, C) in `dtype` gets the compile column."""
        allowed = self.compile_batches if isinstance(size, int) else self.compile_shapes
        return (allowed is None or size in allowed) and (self.compile_dtypes is None or dtype in self.compile_dtypes)

    def sets_for(self, nbytes: int) -> int:
        """Input sets to rotate through: one when a set alone is far larger than any cache, else
        --sets, by default two on a GPU (its L2 is flushed before each call) and on the CPU enough
        to fill twice its last-level cache (at most 64)."""
        if nbytes > 256 * 2**20:
            return 1
        if self.sets:
            return self.sets
        if self.device.type == "cpu":
            return min(64, max(2, math.ceil(2 * last_level_cache_bytes() / max(nbytes, 1))))
        return 2


def _list(text: str, kind=str) -> list:
    return [kind(v) for v in text.split(",") if v.strip()] if text else []


def _shape(text: str):
    n, c = text.lower().split("x")
    return int(n), int(c)


def _subset(text: str, kind):
    return None if text == "all" else set() if text == "none" else set(_list(text, kind))


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", dest="mode", const="quick",
                      help="a small sweep: under two minutes on two CPU cores")
    mode.add_argument("--gpu-check", action="store_const", dest="mode", const="gpu-check",
                      help="the sweep bench/gpu_check.sh runs (with --time-limit)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own choice)")
    ap.add_argument("--sections", default="conv,loss,train", help="of: conv, loss, train")
    ap.add_argument("--variants", help="AlexNet variants of the conv section: cifar, imagenet")
    ap.add_argument("--layers", help="conv layer names, e.g. conv1,conv2 (empty: all)")
    ap.add_argument("--batches", help="conv section batch sizes")
    ap.add_argument("--dtypes", help="float32, bfloat16, float16 (conv and loss sections)")
    ap.add_argument("--shapes", help="loss section NxC list, e.g. 128x10,4096x1000")
    ap.add_argument("--compile-batches", help="conv batches with a torch.compile column: list, all or none")
    ap.add_argument("--compile-shapes", help="loss shapes with a torch.compile column: list, all or none")
    ap.add_argument("--compile-dtypes", help="dtypes with a torch.compile column: list, all or none")
    ap.add_argument("--no-compile", action="store_true", help="no torch.compile column anywhere")
    ap.add_argument("--train-batches", help="train section variant:batch list, e.g. cifar:128,imagenet:16")
    ap.add_argument("--train-dtypes", help="train section dtypes (bfloat16: autocast)")
    ap.add_argument("--min-run-time", type=float, help="seconds per timing")
    ap.add_argument("--rounds", type=int, help="alternating rounds of the variants (medians over them)")
    ap.add_argument("--sets", type=int, help="input sets to rotate through (default: see Config.sets_for)")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="keep N CPU cores busy with other processes for the whole run (a loaded machine)")
    ap.add_argument("--time-limit", type=float, help="seconds for the whole run; what does not fit is skipped")
    ap.add_argument("--json", help="write machine, limits, configuration and rows here")
    ap.add_argument("--markdown", help="write the short markdown summary here")
    ap.add_argument("--save", metavar="DIR", help="write DIR/<date>-<card>[-<mode>].json and .md")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart of the speedups (needs matplotlib)")
    args = ap.parse_args(argv)
    args.mode = args.mode or "full"
    dev = torch.device(args.device)
    for k, v in PRESETS[args.mode][dev.type].items():
        if getattr(args, k, None) is None:
            setattr(args, k, v)
    if args.no_compile:
        args.compile_batches = args.compile_shapes = args.compile_dtypes = "none"
    try:
        check_busy(args.busy)
    except ValueError as e:
        ap.error(str(e))
    for s in _list(args.sections):
        if s not in SECTIONS:
            ap.error(f"--sections: {s!r} is not one of {', '.join(SECTIONS)}")
    cfg = Config(
        device=dev, sections=_list(args.sections), variants=_list(args.variants),
        layers=set(_list(args.layers)), batches=_list(args.batches, int),
        dtypes=[getattr(torch, d) for d in _list(args.dtypes)], shapes=_list(args.shapes, _shape),
        compile_batches=_subset(args.compile_batches, int), compile_shapes=_subset(args.compile_shapes, _shape),
        compile_dtypes=_subset(args.compile_dtypes, lambda d: getattr(torch, d)),
        train_batches={v: int(b) for v, b in (p.split(":") for p in _list(args.train_batches))},
        train_dtypes=[getattr(torch, d) for d in _list(args.train_dtypes)], sets=args.sets)
    return args, cfg


def main(argv=None) -> int:
    args, cfg = parse(argv)
    with busy_cores(args.busy):  # the limits too are measured under the load
        return _run(args, cfg, argv)


def _run(args, cfg, argv) -> int:
    t0 = time.monotonic()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = True  # the baseline at its best: cuDNN picks its fastest algorithm
    timer = Timer(cfg.device, args.min_run_time, args.rounds)
    machine = describe(cfg.device)
    dtypes = sorted({str(d).removeprefix("torch.") for d in cfg.dtypes + cfg.train_dtypes})
    limits = measure_limits(cfg.device, [getattr(torch, d) for d in dtypes], timer)
    print(f"# {machine['card']} | torch {machine['torch']} | CUDA {machine['cuda']} | cuDNN {machine['cudnn']} | "
          f"pyalexnet {machine['pyalexnet']} | {machine['date']} | mode {args.mode}"
          + (f" | {args.busy} CPU core(s) kept busy by other processes" if args.busy else ""))
    print("# measured limits: matmul " + ", ".join(f"{k} {v:.3f} TFLOP/s" for k, v in limits["matmul_tflops"].items())
          + f"; copy {limits['copy_gbs']:.1f} GB/s")
    rows, failures = [], {}
    for i, name in enumerate(cfg.sections):
        if args.time_limit is not None:
            left = args.time_limit - (time.monotonic() - t0)
            shares = [TIME_SHARES[s] for s in cfg.sections[i:]]
            timer.deadline = time.monotonic() + max(left, 0) * shares[0] / sum(shares)
        started, table = time.monotonic(), report.Table(name)
        rows += SECTIONS[name].run(cfg, timer, limits, table, failures)
        table.note(f"section {name}: {time.monotonic() - started:.0f} s")
        table.legend()
    result = {"machine": machine, "limits": limits, "mode": args.mode, "argv": sys.argv[1:] if argv is None else argv,
              "config": {k: v for k, v in vars(args).items() if k not in ("json", "markdown", "save", "plot")},
              "busy_cores": args.busy, "rows": rows, "failures": failures, "wall_s": round(time.monotonic() - t0, 1),
              "load_average_end": os.getloadavg()[0]}
    write_outputs(args, result)
    print(f"\n# {len(rows)} rows in {result['wall_s']:.0f} s; "
          + (f"{len(failures)} FAILED: " + "; ".join(f"{k}: {v}" for k, v in failures.items()) if failures
             else "every timed variant verified"))
    return 1 if failures else 0


def write_outputs(args, result: dict) -> None:
    paths = []
    if args.save:
        stem = f"{result['machine']['date'][:10]}-{slug(result['machine']['card'])}"
        stem += "" if result["mode"] == "full" else f"-{result['mode']}"
        Path(args.save).mkdir(parents=True, exist_ok=True)
        paths += [(Path(args.save) / f"{stem}.json", "json"), (Path(args.save) / f"{stem}.md", "md")]
    paths += [(Path(p), kind) for p, kind in ((args.json, "json"), (args.markdown, "md")) if p]
    for path, kind in paths:
        with open(path, "w") as f:
            if kind == "json":
                json.dump(result, f, indent=1, default=str)
            else:
                f.write(report.markdown(result))
        print(f"# wrote {path}")
    if args.plot:
        report.plot(result, args.plot)
        print(f"# wrote {args.plot}")


if __name__ == "__main__":
    sys.exit(main())
