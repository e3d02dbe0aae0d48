"""Shared checks of pyalexnet's tests: the float64 reference of softmax cross-entropy, the tolerance
rule of each dtype, and the CUDA tests' skips on a machine without a GPU (counted in one line).

The helpers are imported by the test modules as ``from conftest import ...`` (tests/ is on sys.path
under pytest's default import mode). The markers ``cuda`` and ``bigmem`` are declared in
pyproject.toml, not here. Inputs are fresh random numbers every run; a failing test prints its seed,
and PYALEXNET_TEST_SEED=<seed> replays it.
"""
from __future__ import annotations

import functools
import os
import random
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import pyalexnet
from emulation import harness
from emulation.coverage import expected_launches
from pyalexnet.ops import softmax_cross_entropy

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGE = REPO_ROOT / "pyalexnet"

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
REDUCTIONS = ("none", "mean", "sum")
REDUCED = (torch.float16, torch.bfloat16)

# Tolerances of the float32-or-better dtypes against the float64 reference: rtol, and atol for
# results computed from terms of order one (scaled for gradients; see assert_matches).
TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5)}


@functools.cache  # asked for every test report (pytest_report_teststatus); the answer never changes
def why_no_cuda() -> str:
    """Why the CUDA kernels cannot be tested here, or "" when they can."""
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False)"
    if not pyalexnet.build_info()["cuda"]:
        return "pyalexnet was built without its CUDA kernels (build_info()['cuda'] is False)"
    return ""


# The marks of a CUDA test module: `pytestmark = CUDA_MARKS`.
CUDA_MARKS = [pytest.mark.cuda, pytest.mark.skipif(bool(why_no_cuda()), reason=why_no_cuda() or "-")]
NO_GPU = "skipped (no GPU)"  # the report category of the CUDA tests that cannot run here


def thorough_unless(values, quick) -> list:
    """Parameters for values; those for which quick(value) is false are marked `thorough`, so that
    `pytest --quick` leaves them out."""
    return [v if quick(v) else pytest.param(v, marks=pytest.mark.thorough) for v in values]


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true",
                     help="a quick check: leave out the tests marked `thorough` (about a third of the run's time)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--quick"):
        thorough = [item for item in items if "thorough" in item.keywords]
        if thorough:
            config.hook.pytest_deselected(items=thorough)
            items[:] = [item for item in items if "thorough" not in item.keywords]


def pytest_report_teststatus(report, config):
    """A test skipped for want of a GPU (a `cuda` test, or one whose reason names the GPU) prints no `s`
    and is not listed by -rs: hundreds of them would hide the other skips. They are counted in the
    closing line and explained in one line."""
    reason = str(report.longrepr) if report.skipped else ""
    if report.when in ("setup", "call") and report.skipped and why_no_cuda() and (
            "cuda" in report.keywords and why_no_cuda() in reason or "GPU" in reason):
        return NO_GPU, "", "SKIPPED (no GPU)"
    return None


def pytest_terminal_summary(terminalreporter):
    n = len(terminalreporter.stats.get(NO_GPU, []))
    if n:
        terminalreporter.write_line(f"{n} test{'s' * (n != 1)} skipped for want of a GPU: {why_no_cuda()}; they run on a machine "
                                    "with a GPU and a pyalexnet built with its CUDA kernels")


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
REQUIRE_TORCHVISION = "PYALEXNET_REQUIRE_TORCHVISION"  # set by CI, where the tests needing torchvision must run


def torchvision_or_skip():
    """torchvision, or a skip saying why not (not installed, or a build that does not fit this torch:
    PyPI's fails to import beside a CPU-only torch); a failure instead where REQUIRE_TORCHVISION is set."""
    try:
        import torchvision
        return torchvision
    except Exception as e:  # noqa: BLE001 - ImportError, or RuntimeError from a mismatched build
        if os.environ.get(REQUIRE_TORCHVISION):
            raise
        pytest.skip(f"torchvision not usable here ({type(e).__name__}: {e})")


_CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


@pytest.fixture(autouse=True)
def emulated_launches(request):
    """A test that tests/emulation/coverage.py lists for some CUDA kernels must have launched them
    (its driver runs' launch logs): otherwise the test errors, naming what it did launch."""
    expected = expected_launches(request.node.nodeid)
    harness.LAUNCHED.clear()
    yield
    if expected and request.node.stash.get(_CALL_PASSED, False):
        missing = expected - harness.LAUNCHED
        assert not missing, (f"tests/emulation/coverage.py lists this test for {sorted(missing)}, which its "
                             f"driver runs never launched (they launched {sorted(harness.LAUNCHED)})")


@pytest.fixture(autouse=True)
def fresh_seed():
    """Seeds torch (CPU and CUDA) afresh for every test and prints the seed, which pytest shows
    with the output of a failing test."""
    seed = int(os.environ.get("PYALEXNET_TEST_SEED") or random.SystemRandom().randrange(2**31))
    torch.manual_seed(seed)
    print(f"torch seed {seed}: rerun with PYALEXNET_TEST_SEED={seed}")
    return seed


def random_logits(*shape: int, dtype=torch.float32, device="cpu", scale: float = 3.0) -> Tensor:
    """Fresh random logits of a realistic spread (scale * N(0, 1)), rounded to dtype."""
    return (torch.randn(*shape, dtype=torch.float64, device=device) * scale).to(dtype)


def random_weight(C: int, dtype=torch.float32, device="cpu") -> Tensor:
    """Random positive class weights in [0.25, 2), rounded to dtype."""
    return (torch.rand(C, dtype=torch.float64, device=device) * 1.75 + 0.25).to(dtype)


def random_target(shape, C: int, ignore_index: Optional[int] = None, device="cpu") -> Tensor:
    """Random class indices in [0, C); with ignore_index, every third one (at least one) is set to it
    and, where C > 1, the others avoid it, so that a sample is never ignored as a whole by chance
    (an all-ignored mean is NaN: the tests that want one build it on purpose)."""
    shape = shape if isinstance(shape, tuple) else (shape,)
    if ignore_index is not None and 0 <= ignore_index < C and C > 1:
        t = torch.randint(0, C - 1, shape, device=device)
        t = t + (t >= ignore_index).long()  # skip the ignored class
    else:
        t = torch.randint(0, C, shape, device=device)
    if ignore_index is not None and t.numel() > 0:
        t.view(-1)[::3] = ignore_index
    return t


def upstream_grad(loss: Tensor) -> Tensor:
    """A random non-trivial incoming gradient for loss, in loss's dtype (never all ones)."""
    return (torch.randn(loss.shape, dtype=torch.float64, device=loss.device) + 0.5).to(loss.dtype)


LAYOUTS = ("transposed", "column_slice", "row_strided", "broadcast_rows",  # non-contiguous logits
           "strided_target", "int32_target")


def make_layout(kind: str, N: int, C: int, dtype, device="cpu") -> tuple[Tensor, Tensor]:
    """(N, C) logits and (N,) targets (every third one -100) in the named layout, asserted to be it:
    non-contiguous logits (the first four) or targets (strided_target), or int32 targets."""
    t = random_target(N, C, ignore_index=-100, device=device)
    if kind == "transposed":
        x = random_logits(C, N, dtype=dtype, device=device).t()
    elif kind == "column_slice":
        x = random_logits(N, C + 5, dtype=dtype, device=device)[:, 2:C + 2]
    elif kind == "row_strided":
        x = random_logits(2 * N, C, dtype=dtype, device=device)[::2]
    elif kind == "broadcast_rows":  # row stride 0: every row is the same memory
        x = random_logits(1, C, dtype=dtype, device=device).expand(N, C)
    elif kind == "strided_target":
        x = random_logits(N, C, dtype=dtype, device=device)
        t = random_target(2 * N, C, ignore_index=-100, device=device)[::2]
        assert not t.is_contiguous()
    elif kind == "int32_target":
        x = random_logits(N, C, dtype=dtype, device=device)
        t = t.int()
    else:
        raise ValueError(f"unknown layout {kind!r}")
    assert x.is_contiguous() == (kind in ("strided_target", "int32_target")), kind
    return x, t


def forward_op_samples(device="cpu") -> list:
    """pytest.params of a (args-building function, id) covering the forward op's options; logits
    require grad in half of them. The function builds the tensors when called, inside the test."""
    samples = []
    for reduction in REDUCTIONS:
        for weighted in (False, True):
            for smoothing, ignore_index in ((0.0, -100), (0.25, 1)):
                for dtype, C in ((torch.float32, 5), (torch.float64, 33), (torch.bfloat16, 3000)):
                    grad = weighted != (smoothing > 0)

                    def make(reduction=reduction, weighted=weighted, smoothing=smoothing,
                             ignore_index=ignore_index, dtype=dtype, C=C, grad=grad):
                        x = random_logits(6, C, dtype=dtype, device=device).requires_grad_(grad)
                        t = random_target(6, C, ignore_index, device=device)
                        w = random_weight(C, dtype, device=device) if weighted else None
                        return x, t, w, ignore_index, reduction, smoothing

                    name = f"{reduction}-w{int(weighted)}-ls{smoothing}-ii{ignore_index}-{dtype}-C{C}"
                    samples.append(pytest.param(make, id=f"{name}-grad{int(grad)}"))

    def non_contiguous():
        x, t = make_layout("column_slice", 6, 40, torch.float16, device=device)
        return x.requires_grad_(), t.int(), None, -100, "sum", 0.0

    def empty():
        x, t = random_logits(0, 5, device=device), random_target(0, 5, device=device)
        return x, t, None, -100, "sum", 0.0

    samples += [pytest.param(non_contiguous, id="column_slice-int32"), pytest.param(empty, id="empty")]
    return samples


# ------------------------------------------------------------------------------------------------
# Reference and comparison
# ------------------------------------------------------------------------------------------------
def loss_and_grad(fn: Callable, logits: Tensor, target: Tensor, weight: Optional[Tensor],
                  grad_out: Optional[Tensor], **opts) -> tuple[Tensor, Tensor]:
    """fn(logits, target, weight, **opts) and d(loss)/d(logits) for the incoming gradient grad_out.

    logits keeps its layout (a non-contiguous view stays one): it is detached, not copied.
    """
    x = logits.detach().requires_grad_()
    loss = fn(x, target, weight, **opts)
    (grad,) = torch.autograd.grad(loss, x, grad_out.to(loss.dtype))
    return loss.detach(), grad


def reference(logits: Tensor, target: Tensor, weight: Optional[Tensor], grad_out: Tensor, **opts):
    """Loss and gradient of F.cross_entropy in float64 on the same (already rounded) inputs."""
    w = None if weight is None else weight.double()
    return loss_and_grad(F.cross_entropy, logits.double(), target.long(), w, grad_out.double(), **opts)


def torch_same_dtype(logits: Tensor, target: Tensor, weight: Optional[Tensor], grad_out: Tensor, **opts):
    """Loss and gradient of PyTorch's own F.cross_entropy in logits' dtype (the 2x rule's baseline)."""
    w = None if weight is None else weight.to(logits.dtype)
    return loss_and_grad(F.cross_entropy, logits, target.long(), w, grad_out, **opts)


def assert_matches(actual: Tensor, ref: Tensor, baseline: Optional[Tensor] = None, what: str = "",
                   scale: float = 1.0):
    """actual (any dtype) against the float64 reference ref with the tolerance of actual's dtype.

    float64: rtol = 1e-10, atol = 1e-10 * scale; float32: rtol = 1e-5, atol = 1e-5 * scale, where scale
    is the size of the terms each element is computed from (1 for losses of O(1) logits; see
    grad_scale for gradients, whose elements can all be tiny, as the mean's over many rows).
    float16/bfloat16, flash-attention's rule: max|actual - ref| <= 2 max|baseline - ref| + floor, where
    baseline is PyTorch's own same-dtype result and floor = eps(dtype) * max|ref| is one unit in the
    last place of the largest value (rounding the float32 result to the output dtype costs half of it).
    NaNs must sit where the reference has them.
    """
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    a, r = actual.detach().double(), ref.detach().double()  # compared where they are (GPU: fast)
    if actual.dtype not in REDUCED:
        rtol, atol = TOLERANCES[actual.dtype]
        torch.testing.assert_close(a, r, rtol=rtol, atol=atol * scale, equal_nan=True,
                                   msg=lambda m: f"{what}: {m}")
        return
    assert baseline is not None, f"{what}: the {actual.dtype} rule needs PyTorch's same-dtype result"
    nan = r.isnan()
    assert torch.equal(a.isnan(), nan), (
        f"{what}: NaNs at {a.isnan().nonzero().tolist()}, expected at {nan.nonzero().tolist()}")
    if a.numel() == 0 or nan.all():
        return
    a, r, b = a[~nan], r[~nan], baseline.detach().double()[~nan]
    ours, theirs = (a - r).abs().max().item(), (b - r).abs().max().item()
    # PyTorch's own result with NaNs the reference lacks (torch 2.13's CPU bf16 conv weight gradient,
    # seed 956395684): the floor alone, stricter than any finite baseline
    if theirs != theirs:
        theirs = 0.0
    floor = torch.finfo(actual.dtype).eps * r.abs().max().item()
    assert ours <= 2 * theirs + floor, (
        f"{what}: {actual.dtype} error {ours:.3e} > 2 x PyTorch's {theirs:.3e} + floor {floor:.3e}")


def grad_scale(target: Tensor, weight: Optional[Tensor], grad_out: Tensor, reduction: str = "mean",
               ignore_index: int = -100, **_) -> float:
    """Size of the terms of one gradient element, g w (p - [j == t]) and the smoothing's g w_j: the
    largest incoming gradient times the largest class weight, over the mean's denominator (the sum of
    the used targets' weights). 1 where no target is used: the gradient must then be exactly 0."""
    if grad_out.numel() == 0:
        return 1.0
    s = grad_out.double().abs().max().item() * (1.0 if weight is None else weight.double().abs().max().item())
    if reduction == "mean":
        used = target.reshape(-1)[target.reshape(-1) != ignore_index].long()
        denom = used.numel() if weight is None else weight.double()[used].sum().item()
        if denom == 0:
            return 1.0
        s /= denom
    return s


def check_against_reference(logits: Tensor, target: Tensor, weight: Optional[Tensor] = None,
                            grad_out: Optional[Tensor] = None, fn: Callable = softmax_cross_entropy,
                            **opts) -> tuple[Tensor, Tensor]:
    """Runs fn forward and backward and checks loss and gradient against the float64 reference.

    grad_out: the incoming gradient (random when None). Returns fn's loss and gradient.
    """
    if grad_out is None:
        shape = target.shape if opts.get("reduction", "mean") == "none" else ()
        grad_out = upstream_grad(torch.empty(shape, dtype=logits.dtype, device=logits.device))
    loss, grad = loss_and_grad(fn, logits, target, weight, grad_out, **opts)
    assert loss.dtype == logits.dtype and grad.dtype == logits.dtype
    assert grad.shape == logits.shape
    ref_loss, ref_grad = reference(logits, target, weight, grad_out.to(logits.dtype), **opts)
    base_loss = base_grad = None
    if logits.dtype in REDUCED:
        base_loss, base_grad = torch_same_dtype(logits, target, weight, grad_out, **opts)
    assert_matches(loss, ref_loss, base_loss, "loss")
    assert_matches(grad, ref_grad, base_grad, "grad", scale=grad_scale(target, weight, grad_out, **opts))
    return loss, grad


def ulp(x: Tensor, dtype: torch.dtype) -> Tensor:
    """The spacing of dtype's numbers at |x| (x in float64): eps(dtype) * 2^floor(log2 |x|)."""
    _, exponent = torch.frexp(x.abs())
    return torch.finfo(dtype).eps * torch.pow(2.0, exponent.double() - 1)


def assert_backends_agree(a: Tensor, b: Tensor, what: str) -> None:
    """Two backends' results for the same inputs (CUDA or emulated CUDA against the CPU kernels), with
    margins scaled by b's largest magnitude (gradients of a mean over many rows are all tiny):
    float32-or-better within the float64 reference's tolerances, rtol and atol x max|b|;
    float16/bfloat16 within 2 units in the last place of each element of b (each is its float32
    result rounded once, and those differ in their last bits: __expf on the GPU, a polynomial on
    the CPU) plus the float32 atol x max|b| for elements near zero, where that float32 difference
    is larger than their spacing. NaNs must sit at the same places."""
    a, b64 = a.detach().cpu().double(), b.detach().double()
    assert a.shape == b64.shape, f"{what}: shape {tuple(a.shape)} != {tuple(b64.shape)}"
    nan = b64.isnan()
    assert torch.equal(a.isnan(), nan), f"{what}: NaNs at {a.isnan().nonzero().tolist()[:8]}, expected at " \
                                        f"{nan.nonzero().tolist()[:8]}"
    a, b64 = a[~nan], b64[~nan]
    scale = b64.abs().max().item() if b64.numel() else 0.0
    if b.dtype in REDUCED:
        allowed = 2 * ulp(b64, b.dtype) + TOLERANCES[torch.float32][1] * scale
    else:
        rtol, atol = TOLERANCES[b.dtype]
        allowed = rtol * b64.abs() + atol * scale
    bad = (a - b64).abs() > allowed
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {b64.numel()} elements differ by more than allowed "
                           f"(scale {scale:.3e}); first at {bad.nonzero()[0].tolist()}: {a[bad][0].item()!r} vs "
                           f"{b64[bad][0].item()!r}, allowed {allowed[bad][0].item():.3e}")


def check_tail_rows(x: Tensor, t: Tensor, go: Tensor, k: int) -> None:
    """softmax_cross_entropy(x, t, reduction='none') forward and backward on a large x, then the
    last k rows' loss and gradient against the float64 reference and PyTorch's same-dtype result
    (the rows whose offsets a 32-bit index would get wrong). The big gradient is freed first."""
    xr = x.requires_grad_()
    loss = softmax_cross_entropy(xr, t, reduction="none")
    (grad,) = torch.autograd.grad(loss, xr, go)
    assert loss.isfinite().all()
    tail_loss, tail_grad = loss[-k:].clone(), grad[-k:].clone()
    del loss, grad, xr
    tail = x[-k:].detach().clone()
    ref_loss, ref_grad = reference(tail, t[-k:], None, go[-k:], reduction="none")
    base_loss, base_grad = torch_same_dtype(tail, t[-k:], None, go[-k:], reduction="none")
    assert_matches(tail_loss, ref_loss, base_loss, "loss")
    assert_matches(tail_grad, ref_grad, base_grad, "grad")


def mem_available_gib() -> float:
    """MemAvailable of /proc/meminfo in GiB (0 where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0
