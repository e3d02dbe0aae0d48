"""Tests of the CUDA kernels of the fused softmax cross-entropy op: the float64-reference parity of
the CPU tests on the GPU, agreement with the CPU kernels, odd shapes and layouts, a large case, offsets
past 2^31, opcheck, and the device-side trap on a bad target. Every test carries the `cuda` marker and
skips unless a GPU is present and pyalexnet was built with its CUDA kernels."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from conftest import (CUDA_MARKS, DTYPES, LAYOUTS, REDUCTIONS, assert_backends_agree, assert_matches,
                      check_against_reference, check_tail_rows, forward_op_samples, make_layout,
                      random_logits, random_target, random_weight, reference, thorough_unless, torch_same_dtype)
from pyalexnet.ops import softmax_cross_entropy


pytestmark = CUDA_MARKS

DEV = "cuda"


def _need_gpu_gib(gib: float):
    free = torch.cuda.mem_get_info()[0] / 2**30
    if free < gib:
        pytest.skip(f"needs {gib} GiB of free GPU memory, {free:.1f} GiB free")


FWD = torch.ops.pyalexnet.softmax_cross_entropy_forward.default
BWD = torch.ops.pyalexnet.softmax_cross_entropy_backward.default
IGNORE_CASES = {"absent": None, "hit_default": -100, "hit_class": 2}


# ------------------------------------------------------------------------------------------------
# Parity with the float64 reference and with the CPU kernels
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.25))
@pytest.mark.parametrize("ignore", IGNORE_CASES)
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("C", (19, 3000), ids=("warp_per_row", "block_per_row"))
def test_matches_reference(C, reduction, weighted, ignore, label_smoothing, dtype):
    """The grid of the CPU test; C = 19 and 3000 take the warp-per-row and block-per-row kernels."""
    N = 33
    x = random_logits(N, C, dtype=dtype, device=DEV)
    t = random_target(N, C, IGNORE_CASES[ignore], device=DEV)
    w = random_weight(C, dtype, device=DEV) if weighted else None
    opts = {} if IGNORE_CASES[ignore] is None else {"ignore_index": IGNORE_CASES[ignore]}
    check_against_reference(x, t, w, reduction=reduction, label_smoothing=label_smoothing, **opts)



@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("options", ({}, {"weight": True, "ignore_index": 2, "label_smoothing": 0.25}),
                         ids=("plain", "weighted_ignored_smoothed"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("N, C", ((33, 19), (7, 1000), (5, 32769), (2, 1), (3, 2048), (3, 2049)),
                         ids=str)
def test_agrees_with_cpu(N, C, reduction, options, dtype):
    x = random_logits(N, C, dtype=dtype)
    t = random_target(N, C, options.get("ignore_index"))
    w = random_weight(C, dtype) if options.get("weight") else None
    opts = {k: v for k, v in options.items() if k != "weight"}
    go = (torch.randn(N if reduction == "none" else ()) + 0.5).to(dtype)
    results = {}
    for device in ("cpu", DEV):
        xx = x.to(device).requires_grad_()
        ww = None if w is None else w.to(device)
        loss = softmax_cross_entropy(xx, t.to(device), ww, reduction=reduction, **opts)
        (grad,) = torch.autograd.grad(loss, xx, go.to(device))
        results[device] = (loss.detach(), grad)
    assert_backends_agree(results[DEV][0], results["cpu"][0], "loss")
    assert_backends_agree(results[DEV][1], results["cpu"][1], "grad")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(reduction, dtype):
    x = random_logits(0, 7, dtype=dtype, device=DEV)
    t, w = random_target(0, 7, device=DEV), random_weight(7, dtype, device=DEV)
    loss, grad = check_against_reference(x, t, w, reduction=reduction, label_smoothing=0.1)
    assert grad.shape == (0, 7)
    if reduction == "mean":
        assert loss.isnan()


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored(reduction, weighted, dtype):
    N, C = 9, 6
    x = random_logits(N, C, dtype=dtype, device=DEV)
    t = torch.full((N,), 4, device=DEV)
    w = random_weight(C, dtype, device=DEV) if weighted else None
    loss, grad = check_against_reference(x, t, w, reduction=reduction, ignore_index=4,
                                         label_smoothing=0.25)
    assert loss.isnan().all() if reduction == "mean" else (loss == 0).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("C", (37, 3001))
def test_layouts(C, kind, reduction, dtype):
    """Non-contiguous inputs; odd C also leaves rows misaligned for the 16-byte vector loads."""
    x, t = make_layout(kind, 13, C, dtype, device=DEV)
    w = random_weight(C, dtype, device=DEV)
    check_against_reference(x, t, w, reduction=reduction, label_smoothing=0.25)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_spatial_input(reduction):
    x = random_logits(2, 5, 4, 3, device=DEV).contiguous(memory_format=torch.channels_last)
    t = random_target((2, 4, 3), 5, device=DEV)
    check_against_reference(x, t, random_weight(5, device=DEV), reduction=reduction, label_smoothing=0.1)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
def test_stride0_grad_output(dtype):
    N, C = 17, 2500
    x = random_logits(N, C, dtype=dtype, device=DEV)
    t = random_target(N, C, ignore_index=-100, device=DEV)
    go = torch.randn((), dtype=dtype, device=DEV).expand(N)
    xx = x.detach().requires_grad_()
    softmax_cross_entropy(xx, t, reduction="none", label_smoothing=0.1).backward(go)
    _, ref_grad = reference(x, t, None, go, reduction="none", label_smoothing=0.1)
    _, base_grad = torch_same_dtype(x, t, None, go, reduction="none", label_smoothing=0.1)
    assert_matches(xx.grad, ref_grad, base_grad, "grad")


def test_current_stream():
    """The kernels run on the current stream: on a side stream that is still busy (a GPU sleep) when
    the logits are written, a launch on any other stream would read the zeros they held before."""
    N, C = 64, 4099
    logits, t = random_logits(N, C, device=DEV), random_target(N, C, device=DEV)
    x = torch.zeros(N, C, device=DEV)
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        torch.cuda._sleep(50_000_000)  # ~tens of ms of GPU cycles
        x.copy_(logits)
        loss = softmax_cross_entropy(x, t, reduction="none")
    torch.cuda.synchronize()
    torch.testing.assert_close(loss.double(), F.cross_entropy(logits.double(), t, reduction="none"),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_second_device():
    """Tensors on cuda:1 while cuda:0 is current: the device guard sends the launch to cuda:1."""
    x, t = random_logits(8, 3000, device="cuda:1"), random_target(8, 3000, device="cuda:1")
    with torch.cuda.device(0):
        loss, grad = check_against_reference(x, t, reduction="sum")
    assert loss.device == grad.device == torch.device("cuda:1")


@pytest.mark.parametrize("reduction", ("none", "mean"))
def test_large(reduction):
    """N = 16384, C = 32768 float32 (2 GiB of logits), weighted and smoothed; the float64 reference
    and the comparison on the GPU take most of the ~30 GiB."""
    _need_gpu_gib(32)
    N, C = 16384, 32768
    x = random_logits(N, C, device=DEV)
    t = random_target(N, C, ignore_index=-100, device=DEV)
    w = random_weight(C, device=DEV)
    check_against_reference(x, t, w, reduction=reduction, label_smoothing=0.1)


@pytest.mark.bigmem
def test_offsets_past_2_31():
    """N * C just above 2^31 float16 elements (8 GiB of logits and gradient on the GPU): the last
    rows start past element 2^31."""
    _need_gpu_gib(12)
    C, extra = 32768, 4
    N, k = 2**31 // C + extra, 2 * extra
    x = torch.randn(N, C, dtype=torch.float16, device=DEV).mul_(3)
    t = random_target(N, C, device=DEV)
    go = (torch.rand(N, device=DEV) + 0.5).half()
    check_tail_rows(x, t, go, k)


# ------------------------------------------------------------------------------------------------
# opcheck and torch.compile
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_args", forward_op_samples(DEV))
def test_opcheck_forward(make_args):
    torch.library.opcheck(FWD, make_args())


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_opcheck_backward(reduction, dtype):
    x = random_logits(7, 3000, dtype=dtype, device=DEV)
    t, w = random_target(7, 3000, ignore_index=3, device=DEV), random_weight(3000, device=DEV)
    loss, lse, wstats = FWD(x, t, w, 3, reduction, 0.1)
    torch.library.opcheck(BWD, (torch.randn_like(loss), x, t, w, lse, wstats, 3, reduction, 0.1))


def test_compile_aot_eager():
    torch._dynamo.reset()
    lin = torch.nn.Linear(16, 300, device=DEV)
    w = random_weight(300, device=DEV)

    def f(x, t):
        return softmax_cross_entropy(lin(x), t, w, ignore_index=3, label_smoothing=0.1)

    x, t = torch.randn(32, 16, device=DEV), random_target(32, 300, ignore_index=3, device=DEV)
    eager = f(x, t)
    eager_grads = torch.autograd.grad(eager, list(lin.parameters()))
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(x, t)
    compiled_grads = torch.autograd.grad(compiled, list(lin.parameters()))
    torch.testing.assert_close(compiled, eager)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------
def test_host_checks_on_cuda():
    """Shape, dtype and device errors are found on the host, before any launch."""
    x, t = random_logits(4, 5, device=DEV), random_target(4, 5, device=DEV)
    with pytest.raises(RuntimeError, match=r"weight must have one entry per class, shape \(5,\), got \[4"):
        softmax_cross_entropy(x, t, random_weight(4, device=DEV))
    with pytest.raises(RuntimeError, match="logits must be float32, float16, bfloat16 or float64"):
        softmax_cross_entropy(x.long(), t)
    with pytest.raises(RuntimeError, match=r"target must have shape \(N,\) = \(4,\)"):
        softmax_cross_entropy(x, t[:3])
    with pytest.raises(RuntimeError, match="target is on cpu but logits are on cuda"):
        softmax_cross_entropy(x, t.cpu())
    with pytest.raises(RuntimeError, match="weight is on cpu but logits are on cuda"):
        softmax_cross_entropy(x, t, random_weight(5))
    with pytest.raises(RuntimeError, match="reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        FWD(x, t, None, -100, "avg", 0.0)
    # the context is still usable: none of the above launched a kernel
    torch.testing.assert_close(softmax_cross_entropy(x, t).double(), F.cross_entropy(x.double(), t),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", thorough_unless((10, -3), lambda b: b == 10))  # a Python start-up each
def test_bad_target_traps(tmp_path, bad):
    """A target outside [0, C) that is not ignore_index: the kernel prints the target and traps, which
    poisons the CUDA context, so it runs in a subprocess. It must fail, name the target, and never
    print a loss. The device printf goes to the process's stdout, the CUDA error to stderr."""
    code = f"""
        import torch, pyalexnet
        x = torch.randn(4, 10, device="cuda")
        t = torch.tensor([1, 2, {bad}, 3], device="cuda")
        loss = pyalexnet.ops.softmax_cross_entropy(x, t)
        value = loss.item()  # synchronises: the trap surfaces here at the latest
        print("LOSS", value, flush=True)
        """
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "LOSS" not in r.stdout, out
    printed = f"pyalexnet softmax_cross_entropy: target {bad} at position 2 is out of range for 10 classes"
    assert printed in out, out
    assert "CUDA error" in r.stderr or "AcceleratorError" in r.stderr, r.stderr
