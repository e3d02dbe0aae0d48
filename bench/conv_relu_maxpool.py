"""Fused conv2d + ReLU + max-pool against conv2d -> relu -> max_pool2d, side by side in one run.

    python bench/conv_relu_maxpool.py                          # CIFAR-size AlexNet layers, batch 128
    python bench/conv_relu_maxpool.py --variant imagenet --batch 8 --json out.json

On the CPU the baseline is PyTorch's oneDNN path; on a GPU, cuDNN. Each layer is first checked
against the baseline (output and all three gradients); times are medians from torch.utils.benchmark
over rotated input sets. Also reports the bytes each path saves for backward beyond input and weights.
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
from pyalexnet.ops import conv_relu_maxpool

# (name, in, out, kernel, stride, padding, pool kernel, pool stride, input size)
LAYERS = {
    "cifar": [
        ("conv1", 3, 64, 3, 1, 1, 3, 2, 32),
        ("conv2", 64, 192, 3, 1, 1, 3, 2, 15),
        ("conv3", 192, 384, 3, 1, 1, 1, 1, 7),
        ("conv4", 384, 256, 3, 1, 1, 1, 1, 7),
        ("conv5", 256, 256, 3, 1, 1, 3, 2, 7),
    ],
    "imagenet": [
        ("conv1", 3, 64, 11, 4, 2, 3, 2, 224),
        ("conv2", 64, 192, 5, 1, 2, 3, 2, 27),
        ("conv3", 192, 384, 3, 1, 1, 1, 1, 13),
        ("conv4", 384, 256, 3, 1, 1, 1, 1, 13),
        ("conv5", 256, 256, 3, 1, 1, 3, 2, 13),
    ],
}


def eager(x, w, b, s, p, pk, ps):
    y = F.relu(F.conv2d(x, w, b, s, p))
    return F.max_pool2d(y, pk, ps) if pk > 1 or ps > 1 else y


def saved_bytes(fn, x, w, b):
    """Bytes of the tensors autograd saves for backward, other than the input and the parameters."""
    keep = {t.data_ptr() for t in (x, w, b)}
    seen = {}

    def pack(t):
        if t.data_ptr() not in keep:
            seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def verify(ours, base, x, w, b, dt):
    """Forward in the timed dtype; gradients in float64 on a few images, where both paths must agree
    exactly (in float32 a near-tie in a pooling window or a value near 0 at the ReLU can legitimately
    send a gradient elsewhere)."""
    tf32 = x.is_cuda and torch.backends.cudnn.allow_tf32  # both paths then round inputs to 10 bits
    tol = dict(rtol=1e-3, atol=1e-3) if dt == torch.float32 and not tf32 else dict(rtol=5e-2, atol=5e-2)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, w, b), base(x, w, b), **tol)
    x64, w64, b64 = (t.detach()[:4].double().requires_grad_() if i == 0 else t.detach().double().requires_grad_()
                     for i, t in enumerate((x, w, b)))
    yo, yb = ours(x64, w64, b64), base(x64, w64, b64)
    g = torch.randn_like(yb)
    torch.testing.assert_close(yo, yb)
    for a, c in zip(torch.autograd.grad(yo, (x64, w64, b64), g), torch.autograd.grad(yb, (x64, w64, b64), g)):
        torch.testing.assert_close(a, c)


def median_time(stmt, sets, min_run_time):
    ts = [tb.Timer(stmt="f(*s)", globals={"f": stmt, "s": s}, num_threads=torch.get_num_threads()).blocked_autorange(min_run_time=min_run_time).median
          for s in sets]
    return sorted(ts)[len(ts) // 2]


def paired_times(a, b, sets, min_run_time, rounds):
    """Medians over `rounds` alternating timings of a and b, so that drift in the machine's speed
    (a shared, noisy machine) hits both alike."""
    ta, tb_ = [], []
    for _ in range(rounds):
        ta.append(median_time(a, sets, min_run_time))
        tb_.append(median_time(b, sets, min_run_time))
    return sorted(ta)[len(ta) // 2], sorted(tb_)[len(tb_) // 2]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(LAYERS), default="cifar")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sets", type=int, default=2, help="input sets to rotate through")
    ap.add_argument("--min-run-time", type=float, default=0.2, help="seconds per timing")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of ours and baseline")
    ap.add_argument("--channels-last", action="store_true", help="inputs in channels_last (NHWC) memory")
    ap.add_argument("--json", help="write rows and the machine description here")
    args = ap.parse_args(argv)
    dev, dt = torch.device(args.device), getattr(torch, args.dtype)
    torch.backends.cudnn.benchmark = True  # the baseline at its best: cuDNN picks its fastest algorithm
    machine = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "pyalexnet": pyalexnet.__version__, "build": pyalexnet.build_info(),
    }
    print(f"# {machine['device']} | torch {machine['torch']} | CUDA {machine['cuda']} | {machine['threads']} "
          f"threads | {args.variant} batch {args.batch} | {args.dtype}"
          f"{' channels_last' if args.channels_last else ''} | {machine['date']}")
    print(f"{'layer':>6} | {'fwd ours ms':>11} | {'fwd base ms':>11} | {'ratio':>5} | {'f+b ours ms':>11} | "
          f"{'f+b base ms':>11} | {'ratio':>5} | {'saved ours/base':>15}")
    rows = []
    for name, ci, co, k, s, p, pk, ps, hw in LAYERS[args.variant]:
        sets = []
        for _ in range(args.sets):
            x = torch.randn(args.batch, ci, hw, hw, device=dev, dtype=dt)
            if args.channels_last:
                x = x.to(memory_format=torch.channels_last)
            x.requires_grad_()
            w = (torch.randn(co, ci, k, k, device=dev) / (ci * k * k) ** 0.5).to(dt).requires_grad_()
            b = (0.1 * torch.randn(co, device=dev)).to(dt).requires_grad_()
            sets.append((x, w, b))
        x, w, b = sets[0]
        ours = lambda x, w, b: conv_relu_maxpool(x, w, b, s, p, pk, ps)  # noqa: E731
        base = lambda x, w, b: eager(x, w, b, s, p, pk, ps)  # noqa: E731
        verify(ours, base, x, w, b, dt)
        g = torch.randn_like(base(x, w, b))

        def fb(f):
            def run(x, w, b):
                torch.autograd.backward(f(x, w, b), g)
            return run

        with torch.no_grad():
            tfo, tfb = paired_times(ours, base, sets, args.min_run_time, args.rounds)
        tbo, tbb = paired_times(fb(ours), fb(base), sets, args.min_run_time, args.rounds)
        so, sb = saved_bytes(lambda: ours(x, w, b), x, w, b), saved_bytes(lambda: base(x, w, b), x, w, b)
        rows.append({"layer": name, "fwd_ours_s": tfo, "fwd_base_s": tfb, "fb_ours_s": tbo, "fb_base_s": tbb,
                     "saved_ours_bytes": so, "saved_base_bytes": sb})
        print(f"{name:>6} | {tfo * 1e3:11.2f} | {tfb * 1e3:11.2f} | {tfb / tfo:5.2f} | {tbo * 1e3:11.2f} | "
              f"{tbb * 1e3:11.2f} | {tbb / tbo:5.2f} | {so / 2**20:6.1f}/{sb / 2**20:6.1f} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "variant": args.variant, "batch": args.batch, "dtype": args.dtype,
                       "channels_last": args.channels_last, "tf32": torch.backends.cudnn.allow_tf32,
                       "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
