"""The memory the fused conv + ReLU + max-pool op costs, against the eager Conv2d -> ReLU -> MaxPool2d.

What is measured, and why it is honest:
- Saved for backward (saved_tensors_hooks sees every tensor autograd keeps): beyond the input and the
  parameters (which both paths keep), the eager path keeps the full-resolution ReLU output (which
  max_pool2d saves too, the same storage) and int64 pool indices; the fused op keeps one uint8 code
  per pooled output. The fused extra must be at most a quarter of the eager extra (float32), and be
  exactly the codes.
- Never allocated during forward: a tensor the size of the convolution's full-resolution output. The
  op's scratch is std::vector memory, which torch's profiler does not see, so the test measures the
  process's peak resident memory (VmHWM) in a fresh subprocess around one forward of a layer whose
  conv output (32 MiB) dwarfs its input, output and parameters; the eager path run after it must
  raise the same peak by at least the conv output, which shows that the measurement sees such an
  allocation.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from pyalexnet.layers import LAYERS as ALEXNET
from pyalexnet.ops import conv_relu_maxpool

# ImageNet AlexNet's layers (kernel, stride, padding and pooling from pyalexnet.layers) at a reduced
# batch, channel count and image size: (N, Ci, H, W, Co, k, stride, pad, pool k, pool s).
_REDUCED = {"conv1": (3, 32, 127), "conv2": (32, 48, 27), "conv3": (48, 64, 13), "conv5": (64, 32, 13)}  # Ci, Co, H
LAYERS = {f"{a.name}_pool{a.pool_k}s{a.pool_s}": (2, _REDUCED[a.name][0], _REDUCED[a.name][2], _REDUCED[a.name][2],
                                                 _REDUCED[a.name][1], a.k, a.stride, a.pad, a.pool_k, a.pool_s)
          for a in ALEXNET["imagenet"] if a.name in _REDUCED}


def saved_extra_bytes(fn, *params) -> tuple[int, list]:
    """Bytes of the tensors autograd saves during fn() whose storage is none of params' storages,
    each storage counted once; and those tensors' (shape, dtype)."""
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    own = {p.untyped_storage().data_ptr() for p in params if p is not None}
    seen, total, kinds = set(), 0, []
    for t in saved:
        ptr = t.untyped_storage().data_ptr()
        if ptr in own or ptr in seen:
            continue
        seen.add(ptr)
        total += t.untyped_storage().nbytes()
        kinds.append((tuple(t.shape), t.dtype))
    del out
    return total, kinds


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", LAYERS)
def test_saved_for_backward_at_most_a_quarter(name, dtype):
    """In bfloat16 the eager path's ReLU output costs half as much, so the bound is twice as hard."""
    N, Ci, H, W, Co, k, s, p, pk, ps = LAYERS[name]
    x = torch.randn(N, Ci, H, W).to(dtype).requires_grad_()
    w = (torch.randn(Co, Ci, k, k) / (Ci * k * k) ** 0.5).to(dtype).requires_grad_()
    b = torch.randn(Co).to(dtype).requires_grad_()

    def eager():
        y = F.relu(F.conv2d(x, w, b, s, p))
        return F.max_pool2d(y, pk, ps) if (pk, ps) != (1, 1) else y  # pool 1/1: conv + ReLU only

    fused_bytes, fused_kinds = saved_extra_bytes(lambda: conv_relu_maxpool(x, w, b, s, p, pk, ps), x, w, b)
    eager_bytes, eager_kinds = saved_extra_bytes(eager, x, w, b)
    out = conv_relu_maxpool(x, w, b, s, p, pk, ps)
    hc = (H + 2 * p - k) // s + 1
    # eager: the ReLU output in the input's dtype, plus int64 indices where it pools
    expected_eager = N * Co * hc * hc * x.element_size() + (out.numel() * 8 if (pk, ps) != (1, 1) else 0)
    assert eager_bytes == expected_eager, eager_kinds
    # fused: exactly the uint8 codes, one per pooled output; with a 1x1 pool window, the ReLU mask's
    # bits, 8 outputs of a row to a byte
    code_shape = (*out.shape[:-1], (out.shape[-1] + 7) // 8) if pk == 1 else tuple(out.shape)
    assert fused_kinds == [(code_shape, torch.uint8)], fused_kinds
    assert fused_bytes == math.prod(code_shape)
    ratio = fused_bytes / eager_bytes
    print(f"{name}: fused saves {fused_bytes} B, eager {eager_bytes} B, ratio {ratio:.3f}")
    assert ratio <= 0.25


def test_saved_tensors_are_the_inputs_themselves():
    """x and weight are saved as they are (no copy, e.g. no contiguous() of a channels_last x), so
    that they cost nothing beyond what the caller holds anyway."""
    x = torch.randn(2, 3, 17, 17).to(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(8, 3, 3, 3, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        conv_relu_maxpool(x, w, None, 1, 1)
    ptrs = {t.untyped_storage().data_ptr() for t in saved}
    assert x.untyped_storage().data_ptr() in ptrs and w.untyped_storage().data_ptr() in ptrs
    assert len(saved) == 3


_PEAK_SCRIPT = textwrap.dedent("""
    import json, torch, torch.nn.functional as F
    from pyalexnet.ops import conv_relu_maxpool

    def hwm():  # peak resident set size of this process, bytes
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

    torch.set_num_threads(2)
    N, Ci, H, Co, k, p, pk = 1, 3, 256, 128, 3, 1, 8
    x = torch.randn(N, Ci, H, H, requires_grad=True)
    w = (torch.randn(Co, Ci, k, k) / 5).requires_grad_()
    b = torch.randn(Co, requires_grad=True)
    # warm up on a small image: libraries, thread pools, matmul primitives
    conv_relu_maxpool(x[:, :, :32, :32], w, b, 1, p, pk, pk).sum().backward()
    x.grad = w.grad = b.grad = None
    base = hwm()
    out = conv_relu_maxpool(x, w, b, 1, p, pk, pk)
    fused = hwm() - base
    ref = F.max_pool2d(F.relu(F.conv2d(x, w, b, 1, p)), pk, pk)
    eager = hwm() - base
    conv_bytes = N * Co * H * H * 4
    print(json.dumps(dict(fused=fused, eager=eager, conv=conv_bytes, out=out.numel() * 4,
                          max_diff=(out - ref).abs().max().item())))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_forward_never_holds_the_full_conv_output(tmp_path):
    """Peak resident memory of one fused forward (with autograd) grows by less than a quarter of the
    full-resolution conv output; the eager path's grows by at least that output."""
    # a fresh process (its own peak), run outside the repository so that the installed package loads
    r = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout.strip().splitlines()[-1])
    print(m)
    assert m["max_diff"] < 1e-3
    assert m["eager"] >= 0.9 * m["conv"], f"the measurement does not see the eager conv output: {m}"
    assert m["fused"] <= 0.25 * m["conv"], f"the fused forward's peak grew by {m['fused']} B: {m}"
