"""compare.py section "train": one whole training step of each AlexNet variant, custom against cudnn.

The same network (pyalexnet.models.alexnet, the same weights) with backend="custom" (our conv
and loss kernels) and backend="cudnn" (F.conv2d/relu/max_pool2d and F.cross_entropy: cuDNN on a
GPU, oneDNN on the CPU). A step is zero_grad, forward (bf16 autocast for bfloat16), the
label-smoothed loss, backward and an SGD-with-momentum update, as in pyalexnet.train; channels_last
on a GPU, NCHW on the CPU, for both. Verified first (checks.py), with the last layer's weights made
non-zero: in eval mode, custom's loss and every gradient are as accurate as cudnn's against the same
net in float64. Reported: images/s,
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

BACKENDS = ("custom", "cudnn")
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
    layout = torch.channels_last if dev.type == "cuda" else torch.contiguous_format
    torch.manual_seed(0)
    nets = {b: models.alexnet(classes, variant, backend=b) for b in BACKENDS}
    last = [m for m in nets["custom"].modules() if isinstance(m, nn.Linear)][-1]
    nn.init.normal_(last.weight, std=0.01)  # the zero init would make every conv gradient zero
    nets["cudnn"].load_state_dict(nets["custom"].state_dict())
    for net in nets.values():
        net.to(dev, memory_format=layout)
    losses = {"custom": SoftmaxCrossEntropyLoss(label_smoothing=0.1), "cudnn": nn.CrossEntropyLoss(label_smoothing=0.1)}
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if dtype == torch.bfloat16 else contextlib.nullcontext
    sets = [(torch.randn(batch, 3, hw, hw, device=dev).contiguous(memory_format=layout),
             torch.randint(0, classes, (batch,), device=dev)) for _ in range(2)]

    # -- verify in eval mode (no dropout; BatchNorm on its running statistics): the loss and every
    # parameter's gradient as accurate as the cudnn backend's, against the same net in float64 -----
    x0, y0 = sets[0]

    def result(net, crit, x, context):
        with context():
            logits = net.eval()(x)
        loss = crit(logits.to(torch.promote_types(logits.dtype, torch.float32)), y0)
        return [loss, *torch.autograd.grad(loss, list(net.parameters()))]
    ref = result(copy.deepcopy(nets["cudnn"]).double(), losses["cudnn"], x0.double(), contextlib.nullcontext)
    base = result(nets["cudnn"], losses["cudnn"], x0, autocast)
    names = ["loss", *(n for n, _ in nets["custom"].named_parameters())]
    ok = attempt(failures, f"{label} ours", lambda: assert_as_accurate(
        result(nets["custom"], losses["custom"], x0, autocast), base, ref, names, precision(dtype, dev)))
    ref = base = None  # noqa: F841 - frees them before timing

    # -- the FLOPs of a step, and the bytes each backend's forward saves for backward (train mode) --
    saved = {}
    with flop_counter(nets["custom"]) as counted:
        for b, net in nets.items():
            def forward(net=net):
                with autocast():
                    net.train()(x0)
            saved[b] = saved_bytes(forward, [x0, *net.parameters()])
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

    live = [b for b in BACKENDS if ok or b == "cudnn"]
    for b in live:  # one step each first: momentum buffers exist before memory is measured
        step(b)(*sets[0])
    times = timer.compare({_name(b): step(b) for b in live}, {_name(b): sets for b in live})
    row = speed_row(key, "step", times, ("ours", "cudnn"), limits, flops, None,
                    {} if ok else {"ours": failures[f"{label} ours"]})
    row["images_per_s"] = {b: batch / times[_name(b)] for b in live}
    row["peak_bytes"] = {b: peak_bytes(nets[b], opts[b], step(b), sets[0]) for b in live}
    row["saved_bytes"] = saved
    row["layout"] = "channels_last" if layout == torch.channels_last else "nchw"
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
