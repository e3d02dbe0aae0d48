"""compare.py section "train": one whole training step of each AlexNet variant, custom against cudnn.

The same network (pyalexnet.models.alexnet, the same weights) with backend="custom" (our conv
and loss kernels) and backend="cudnn" (F.conv2d/relu/max_pool2d and F.cross_entropy: cuDNN on a
GPU, oneDNN on the CPU). A step is zero_grad, forward (bf16 autocast for bfloat16), the
label-smoothed loss, backward and an SGD-with-momentum update, as in pyalexnet.train. Each backend
at its best: custom in channels_last (the layout our kernels compute in), cudnn in channels_last
and, on the CPU, also in NCHW (`cudnn_nchw`: oneDNN's faster layout differs by net and dtype), the
speedup against the faster of the two. Verified first (checks.py), with the last layer's weights
made non-zero: in eval mode, custom's loss and every gradient are as accurate as cudnn's against
the same net in float64. Reported: images/s,
peak memory during a step (weights, gradients and optimizer state included; on the CPU from the
profiler's allocation record) and the bytes the forward saves for backward.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import sys
import tempfile

import torch
from torch import nn

from pyalexnet import models
from pyalexnet.layers import INPUT_SIZE
from pyalexnet.nn import ConvReLUMaxPool2d, SoftmaxCrossEntropyLoss

from .checks import assert_as_accurate, attempt, precision
from .conv_relu_maxpool import saved_bytes
from .rows import run_each, speed_row

CL, NCHW = torch.channels_last, torch.contiguous_format


def runs(dev: torch.device) -> dict:
    """The timed runs: name -> (backend, memory format of the net and its input)."""
    r = {"custom": ("custom", CL), "cudnn": ("cudnn", CL)}
    if dev.type == "cpu":
        r["cudnn_nchw"] = ("cudnn", NCHW)
    return r


CLASSES = {"cifar": 10, "imagenet": 1000}


def run(cfg, timer, limits, table, failures) -> list[dict]:
    def items():
        for dtype in cfg.train_dtypes:
            for variant, batch in cfg.train_batches.items():
                key = dict(section="train", variant=variant, batch=batch, dtype=str(dtype).removeprefix("torch."))
                label = f"train {variant} batch {batch} {key['dtype']}"
                yield key, label, lambda a=(variant, batch, dtype, key, label): _one(
                    cfg, timer, limits, *a, failures)
    torch.set_flush_denormal(True)  # as pyalexnet.train does: denormals are slow on CPUs
    try:
        return run_each(items(), timer, table, failures)
    finally:
        torch.set_flush_denormal(False)  # PyTorch's default, for whatever runs next


def _one(cfg, timer, limits, variant, batch, dtype, key, label, failures):
    dev = cfg.device
    hw, classes = INPUT_SIZE[variant], CLASSES[variant]
    plan = runs(dev)
    torch.manual_seed(0)
    nets = {r: models.alexnet(classes, variant, backend=b) for r, (b, _) in plan.items()}
    last = [m for m in nets["custom"].modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(last.weight, std=0.01)  # the zero init would make every conv gradient zero
    for r, (_, layout) in plan.items():
        if r != "custom":
            nets[r].load_state_dict(nets["custom"].state_dict())
        nets[r].to(dev, memory_format=layout)
    losses = {r: SoftmaxCrossEntropyLoss(label_smoothing=0.1) if b == "custom" else nn.CrossEntropyLoss(label_smoothing=0.1)
              for r, (b, _) in plan.items()}
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if dtype == torch.bfloat16 else contextlib.nullcontext
    inputs = [(torch.randn(batch, 3, hw, hw, device=dev), torch.randint(0, classes, (batch,), device=dev))
              for _ in range(2)]
    sets = {r: [(x.contiguous(memory_format=layout), y) for x, y in inputs] for r, (_, layout) in plan.items()}

    # -- verify in eval mode (no dropout; BatchNorm on its running statistics): the loss and every
    # parameter's gradient as accurate as the cudnn backend's (in NCHW where that runs, as the conv
    # section's eager NCHW), against the same net in float64 ----------------------------------------
    x0, y0 = {r: s[0][0] for r, s in sets.items()}, inputs[0][1]

    def result(r, net, x, context):
        with context():
            logits = net.eval()(x)
        loss = losses[r](logits.to(torch.promote_types(logits.dtype, torch.float32)), y0)
        return [loss, *torch.autograd.grad(loss, list(net.parameters()))]
    b0 = "cudnn_nchw" if "cudnn_nchw" in plan else "cudnn"  # PyTorch's own error: eager NCHW's where timed
    ref = result(b0, copy.deepcopy(nets[b0]).double(), x0[b0].double(), contextlib.nullcontext)
    base = result(b0, nets[b0], x0[b0], autocast)
    names = ["loss", *(n for n, _ in nets["custom"].named_parameters())]
    ok = {r: r == b0 or attempt(failures, f"{label} {_name(r)}", lambda r=r: assert_as_accurate(
        result(r, nets[r], x0[r], autocast), base, ref, names, precision(dtype, dev))) for r in plan}
    ref = base = None  # noqa: F841 - frees them before timing

    # -- the FLOPs of a step, and the bytes each backend's forward saves for backward (train mode) --
    saved = {}
    with flop_counter(nets["custom"]) as counted:
        for b, net in nets.items():
            def forward(net=net, x=x0[b]):
                with autocast():
                    net.train()(x)
            saved[b] = saved_bytes(forward, [x0[b], *net.parameters()])
    flops = 3 * sum(counted) - counted[0]  # forward and both gradients; no input gradient for images
    opts = {b: torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9) for b, net in nets.items()}

    def step(b):
        net, crit, opt = nets[b], losses[b], opts[b]

        def run(x, y):
            with autocast():
                logits = net(x)
            loss = crit(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return run

    live = [r for r in plan if ok[r]]
    for r in live:  # one step each first: momentum buffers exist before memory is measured
        step(r)(*sets[r][0])
    times = timer.compare({_name(r): step(r) for r in live}, {_name(r): sets[r] for r in live})
    row = speed_row(key, "step", times, [_name(r) for r in plan], limits, flops, None,
                    {_name(r): failures[f"{label} {_name(r)}"] for r in plan if not ok[r]})
    row["images_per_s"] = {r: batch / times[_name(r)] for r in live}
    row["peak_bytes"] = {r: peak_bytes(nets[r], opts[r], step(r), sets[r][0]) for r in live}
    row["saved_bytes"] = saved
    row["layout"] = {r: "channels_last" if layout == CL else "nchw" for r, (_, layout) in plan.items()}
    return [row]


def _name(backend: str) -> str:
    return "ours" if backend == "custom" else backend


@contextlib.contextmanager
def flop_counter(net):
    """Collects the forward FLOPs of every conv and linear layer of `net` while it runs, in order."""
    counted = []

    def hook(m, inp, out):
        x = inp[0]
        if isinstance(m, nn.Linear):
            counted.append(2 * x.shape[0] * m.in_features * m.out_features)
        else:
            (kh, kw), (sh, sw), (ph, pw) = m.kernel_size, m.stride, m.padding
            hc, wc = (x.shape[2] + 2 * ph - kh) // sh + 1, (x.shape[3] + 2 * pw - kw) // sw + 1
            counted.append(2 * x.shape[0] * m.out_channels * hc * wc * m.in_channels * kh * kw)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Linear, ConvReLUMaxPool2d))]
    try:
        yield counted
    finally:
        for h in handles:
            h.remove()


def peak_bytes(net, opt, step, batch) -> int:
    """Peak bytes allocated during one step, weights, gradients and optimizer state included."""
    opt.zero_grad(set_to_none=True)
    if batch[0].is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step(*batch)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    # The CPU has no allocator statistics: the profiler records every allocation and free with the
    # running total since it started, so the peak is what was live before plus the highest total.
    live = sum(t.numel() * t.element_size() for t in [*net.parameters(), *batch])
    live += sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values() if torch.is_tensor(v))
    with _quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                 profile_memory=True) as prof:
        step(*batch)
    with tempfile.TemporaryDirectory() as d:
        prof.export_chrome_trace(f"{d}/trace.json")
        with open(f"{d}/trace.json") as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return live + max(totals, default=0)


@contextlib.contextmanager
def _quiet_stderr():
    """The profiler's C++ side logs its start and stop straight to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
