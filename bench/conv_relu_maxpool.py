"""compare.py section "conv": the fused conv2d + ReLU + max-pool against conv2d -> relu -> max_pool2d.

At every conv layer of both AlexNet variants (pyalexnet.layers.LAYERS, the table the models are
built from). Variants, each verified against eager NCHW before it is timed:

    ours      pyalexnet.ops.conv_relu_maxpool, channels_last input and weights: the layout our kernels
              compute in on both devices (on the CPU NCHW input costs them 1-22% forward, 0-6% backward:
              bench/results/2026-12-05c-zen4-ours-channels-last.txt)
    nchw      F.conv2d -> F.relu -> F.max_pool2d, NCHW (cuDNN in benchmark mode / oneDNN)
    nhwc      the same with channels_last input and weights
    compile   torch.compile of the same sequence in NCHW (Inductor fuses ReLU and pooling)
    compile_nhwc  the same in channels_last (each layout wins some rows)
    ours_v1   on a GPU, ours with the CUDA forward kernels' first version (PYALEXNET_CONV_VERSION=1:
              loads and stores through 2 stages) instead of version 2 (cp.async through 4 stages):
              the A/B of that change, timed side by side (the backward has one version); not a
              baseline

Passes: fwd (under no_grad), bwd (on a retained graph), fwd+bwd. The first layer's input needs no
gradient, as in training. Verified (checks.py): output and gradients as accurate as eager NCHW's
against float64, and ours in float64 on four images within torch.testing.assert_close's float64
tolerances of eager. Also reported: the bytes each variant saves for backward beyond its inputs and
weights. Run it alone with `python bench/compare.py --sections conv`.
"""
from __future__ import annotations

import os

import torch
import torch._functorch.config
import torch.nn.functional as F

from pyalexnet.layers import LAYERS, ConvLayer
from pyalexnet.ops import conv_relu_maxpool

from .checks import assert_as_accurate, attempt, precision, seed_row
from .rows import run_each, speed_row


def flops(layer: ConvLayer, batch: int, pass_: str, input_grad: bool) -> int:
    """Forward: 2 N Hc Wc Co Ci kh kw; backward: the weight gradient, plus as much again for the
    input gradient when it is needed."""
    f = 2 * batch * layer.conv_hw**2 * layer.cout * layer.cin * layer.k**2
    b = f * (2 if input_grad else 1)
    return {"fwd": f, "bwd": b, "fwd+bwd": f + b}[pass_]


def min_bytes(layer: ConvLayer, batch: int, pass_: str, input_grad: bool, elt: int) -> int:
    """Bytes no implementation can avoid: forward reads x, w, b and writes the pooled output;
    backward reads the output gradient, x and w and writes dw, db (and dx)."""
    x, y = batch * layer.cin * layer.hw**2, batch * layer.cout * layer.out_hw**2
    w = layer.cout * (layer.cin * layer.k**2 + 1)
    f, b = x + w + y, y + x + 2 * w + (x if input_grad else 0)
    return elt * {"fwd": f, "bwd": b, "fwd+bwd": f + b}[pass_]


PASSES = ("fwd", "bwd", "fwd+bwd")


def eager(x, w, b, s, p, pk, ps):
    y = F.relu(F.conv2d(x, w, b, s, p))
    return F.max_pool2d(y, pk, ps) if pk > 1 or ps > 1 else y


_compiled = None


def compiled_eager():
    """One torch.compile of `eager` for every layer: its cache must hold every shape it meets.
    Donated buffers are off so that its backward can be timed on a retained graph (they let the
    backward reuse saved tensors' memory; they save memory, not time)."""
    global _compiled
    if _compiled is None:
        torch._functorch.config.donated_buffer = False
        for knob in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                     "accumulated_recompile_limit"):
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, max(getattr(torch._dynamo.config, knob), 1024))
        _compiled = torch.compile(eager, dynamic=False)
    return _compiled


def saved_bytes(fn, keep) -> int:
    """Bytes of the tensors autograd saves for backward while fn() runs, other than `keep`."""
    skip = {t.data_ptr() for t in keep if t is not None}
    seen = {}

    def pack(t):
        if t.data_ptr() not in skip:
            seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def verify_float64(layer: ConvLayer, x, w, b) -> None:
    """Ours against eager in float64 on up to four images: output and every gradient, within
    torch.testing.assert_close's float64 tolerances (rtol 1e-7, atol 1e-7)."""
    x64, w64, b64 = (t.detach()[:4] if i == 0 else t.detach() for i, t in enumerate((x, w, b)))
    x64, w64, b64 = (t.double().requires_grad_() for t in (x64, w64, b64))
    a = layer.args()
    yo, yb = conv_relu_maxpool(x64, w64, b64, *a), eager(x64, w64, b64, *a)
    torch.testing.assert_close(yo, yb)
    g = torch.randn_like(yb)
    for got, want in zip(torch.autograd.grad(yo, (x64, w64, b64), g), torch.autograd.grad(yb, (x64, w64, b64), g)):
        torch.testing.assert_close(got, want)


FIRST_VERSION = "ours_v1"
VERSION_ENV = "PYALEXNET_CONV_VERSION"  # read by the CUDA op at every call


def first_version(fn):
    """fn, run with the CUDA kernels' first version (PYALEXNET_CONV_VERSION=1)."""
    def run(*a):
        old = os.environ.get(VERSION_ENV)
        os.environ[VERSION_ENV] = "1"
        try:
            return fn(*a)
        finally:
            if old is None:
                del os.environ[VERSION_ENV]
            else:
                os.environ[VERSION_ENV] = old
    return run


def run(cfg, timer, limits, table, failures) -> list[dict]:
    def items():
        for dtype in cfg.dtypes:
            for batch in cfg.batches:
                for variant in cfg.variants:
                    for i, layer in enumerate(LAYERS[variant]):
                        if not cfg.layers or layer.name in cfg.layers:
                            key = dict(section="conv", variant=variant, layer=layer.name, batch=batch,
                                       dtype=str(dtype).removeprefix("torch."))
                            yield key, _label(key), lambda a=(layer, batch, dtype, i > 0, key): _one(
                                cfg, timer, limits, *a, failures)
    return run_each(items(), timer, table, failures)


def _one(cfg, timer, limits, layer, batch, dtype, input_grad, key, failures):
    dev = cfg.device
    seed_row(key)
    cl = torch.channels_last
    ours_layout = "nhwc"
    variants = {"ours": (lambda *s: conv_relu_maxpool(*s, *layer.args()), ours_layout),
                "nchw": (lambda *s: eager(*s, *layer.args()), "nchw"),
                "nhwc": (lambda *s: eager(*s, *layer.args()), "nhwc")}
    if cfg.compile_for(batch, dtype):
        c = compiled_eager()
        variants["compile"] = (lambda *s: c(*s, *layer.args()), "nchw")
        variants["compile_nhwc"] = (lambda *s: c(*s, *layer.args()), "nhwc")
    if dev.type == "cuda":
        variants[FIRST_VERSION] = variants["ours"]

    def env(name, fn):  # the whole call, backward included, under the variant's version
        return first_version(fn) if name == FIRST_VERSION else fn
    sets = {"nchw": [], "nhwc": []}
    set_bytes = (batch * layer.cin * layer.hw**2 + layer.cout * layer.cin * layer.k**2) * dtype.itemsize
    for _ in range(cfg.sets_for(set_bytes)):
        x = torch.randn(batch, layer.cin, layer.hw, layer.hw, device=dev).to(dtype)
        w = (torch.randn(layer.cout, layer.cin, layer.k, layer.k, device=dev) / (layer.cin * layer.k**2) ** 0.5)
        w, b = w.to(dtype), (0.1 * torch.randn(layer.cout, device=dev)).to(dtype).requires_grad_()
        sets["nchw"].append((x.clone().requires_grad_(input_grad), w.clone().requires_grad_(), b))
        # weights too, as model.to(memory_format=torch.channels_last) leaves them
        sets["nhwc"].append((x.to(memory_format=cl).requires_grad_(input_grad),
                             w.to(memory_format=cl).requires_grad_(), b))
    grads_of = (lambda s: s) if input_grad else (lambda s: s[1:])  # noqa: E731
    g0 = torch.randn(batch, layer.cout, layer.out_hw, layer.out_hw, device=dev).to(dtype)
    gs = {"nchw": g0, "nhwc": g0.contiguous(memory_format=cl)}

    # -- verify every variant on the first input set: as accurate as eager NCHW, against float64 ---
    names = ["output", *(["dx"] if input_grad else []), "dw", "db"]
    ref_in = [t.detach().double().requires_grad_(t.requires_grad) for t in sets["nchw"][0]]
    ref_y = eager(*ref_in, *layer.args())
    ref = [ref_y, *torch.autograd.grad(ref_y, grads_of(ref_in), gs["nchw"].double())]

    def result(fn, lay):
        s = sets[lay][0]
        y = fn(*s)
        return [y, *torch.autograd.grad(y, grads_of(s), gs[lay])]
    base = result(variants["nchw"][0], "nchw")
    ok = {}
    for name, (fn, lay) in variants.items():
        def check(name=name, fn=fn, lay=lay):
            assert_as_accurate(result(fn, lay), base, ref, names, precision(dtype, dev))
            if name.startswith("ours"):
                verify_float64(layer, *sets[lay][0])
        ok[name] = name == "nchw" or attempt(failures, f"{_label(key)} {name}", env(name, check))
    ref = base = None  # noqa: F841 - frees them before timing
    live = {n: v for n, v in variants.items() if ok[n]}

    # -- time ---------------------------------------------------------------------------------------
    times = {}
    with torch.no_grad():
        times["fwd"] = timer.compare({n: env(n, fn) for n, (fn, _) in live.items()},
                                     {n: sets[lay] for n, (_, lay) in live.items()})
    graphs = {n: [(fn(*s), gs[lay], grads_of(s)) for s in sets[lay]] for n, (fn, lay) in live.items()}
    times["bwd"] = timer.compare({n: env(n, _backward) for n in live}, graphs)
    del graphs
    times["fwd+bwd"] = timer.compare({n: env(n, _fwd_bwd(fn, gs[lay], grads_of)) for n, (fn, lay) in live.items()},
                                     {n: sets[lay] for n, (_, lay) in live.items()})
    saved = {n: saved_bytes(lambda: fn(*sets[lay][0]), sets[lay][0]) for n, (fn, lay) in live.items()
             if n != FIRST_VERSION}

    failed = {n: failures[f"{_label(key)} {n}"] for n in variants if not ok[n]}
    rows = [speed_row({**key, "ours_layout": ours_layout}, p, times[p], variants, limits,
                      flops(layer, batch, p, input_grad), min_bytes(layer, batch, p, input_grad, dtype.itemsize),
                      failed) for p in PASSES]
    rows[-1]["saved_bytes"] = saved
    return rows


def _backward(y, g, inputs):
    return torch.autograd.grad(y, inputs, g, retain_graph=True)


def _fwd_bwd(fn, g, grads_of):
    def run(*s):
        return torch.autograd.grad(fn(*s), grads_of(s), g)
    return run


def _label(key: dict) -> str:
    return f"conv {key['variant']} {key['layer']} batch {key['batch']} {key['dtype']}"

