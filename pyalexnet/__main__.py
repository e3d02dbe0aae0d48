"""`python -m pyalexnet`: a short demo of the fused ops on a task generated here (no files needed).

Trains a small MLP on a 10-class task (points on ten noisy interleaved spirals in 2-D, lifted to 32
features by a fixed random map) with pyalexnet's fused softmax cross-entropy, on the GPU if there is
one, checks the op against F.cross_entropy on the way, and prints the held-out accuracy.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F

import pyalexnet
from pyalexnet.nn import SoftmaxCrossEntropyLoss


def spirals(n: int, classes: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n points on `classes` interleaved spiral arms: not linearly separable, not by any one feature."""
    y = torch.randint(0, classes, (n,), generator=gen)
    r = torch.rand(n, generator=gen)
    theta = 4.0 * r + 2 * math.pi * y / classes + 0.15 * torch.randn(n, generator=gen)
    pts = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    lift = torch.randn(2, 32, generator=torch.Generator().manual_seed(1234))
    return torch.cat([pts, torch.sin(3 * pts @ lift)], dim=1), y


def main(argv=None) -> float:
    p = argparse.ArgumentParser(prog="python -m pyalexnet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=30, help="passes over the training set (default 30)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu or cuda (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0, help="random seed for data and weights")
    args = p.parse_args(argv)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not pyalexnet.build_info()["cuda"]:
        p.error("--device cuda, but this pyalexnet was built without CUDA kernels: "
                "rebuild with PYALEXNET_CUDA=ON on a machine with nvcc")

    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    xtr, ytr = spirals(20000, 10, gen)
    xte, yte = spirals(4000, 10, gen)
    xtr, ytr, xte, yte = (t.to(dev) for t in (xtr, ytr, xte, yte))
    print(f"pyalexnet {pyalexnet.__version__} demo on {dev}: {pyalexnet.build_info()}")

    model = torch.nn.Sequential(
        torch.nn.Linear(34, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 10)).to(dev)
    loss_fn = SoftmaxCrossEntropyLoss(label_smoothing=0.05)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = args.epochs * math.ceil(len(xtr) / 256)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=max(steps, 1))

    with torch.no_grad():  # the fused op against PyTorch's on the untrained model
        logits = model(xte)
        ours = loss_fn(logits, yte)
        ref = F.cross_entropy(logits, yte, label_smoothing=0.05)
        print(f"initial loss: fused {ours.item():.6f}  F.cross_entropy {ref.item():.6f}")
        if not torch.allclose(ours, ref, rtol=1e-4, atol=1e-5):
            raise SystemExit("the fused loss disagrees with F.cross_entropy")

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xtr), device=dev)
        total = 0.0
        for i in range(0, len(xtr), 256):
            idx = perm[i:i + 256]
            loss = loss_fn(model(xtr[idx]), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            model.eval()
            with torch.no_grad():
                acc = (model(xte).argmax(1) == yte).float().mean().item()
            print(f"epoch {epoch + 1:3d}/{args.epochs}  train loss {total / len(xtr):.4f}  "
                  f"test accuracy {100 * acc:.1f}%  ({time.perf_counter() - t0:.1f} s)")
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    print(f"final test accuracy: {100 * acc:.1f}% (chance: 10.0%)")
    return acc


if __name__ == "__main__":
    main()
