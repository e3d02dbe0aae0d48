"""Shared checks of pyalexnet's tests: that the installed package is the one under test, the float64
reference of softmax cross-entropy, and the tolerance rule of each dtype.

The helpers are imported by the test modules as ``from conftest import ...`` (tests/ is on sys.path
under pytest's default import mode). The markers ``cuda`` and ``bigmem`` are declared in
pyproject.toml, not here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import pyalexnet
from pyalexnet.ops import softmax_cross_entropy

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGE = REPO_ROOT / "pyalexnet"

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
REDUCTIONS = ("none", "mean", "sum")
REDUCED = (torch.float16, torch.bfloat16)

# Fixed tolerances of the float32-or-better dtypes: (rtol, atol) against the float64 reference.
TOLERANCES = {torch.float64: (1e-10, 1e-10), torch.float32: (1e-5, 1e-5)}


@pytest.fixture(scope="session", autouse=True)
def installed_pyalexnet_under_test():
    """Fails every test when pyalexnet was imported from the source tree instead of site-packages."""
    imported = Path(pyalexnet.__file__).resolve().parent
    if imported == SOURCE_PACKAGE:
        pytest.fail(
            f"pyalexnet was imported from the source tree {imported}, not from the installed package, "
            "so these tests would run whatever stale _C sits there. Install with `pip install "
            "--no-build-isolation .` and run the `pytest` script (not `python -m pytest`, which puts "
            "the repository root first on sys.path).", pytrace=False)


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def random_logits(*shape: int, dtype=torch.float32, device="cpu", scale: float = 3.0) -> Tensor:
    """Fresh random logits of a realistic spread (scale * N(0, 1)), rounded to dtype."""
    return (torch.randn(*shape, dtype=torch.float64, device=device) * scale).to(dtype)


def random_weight(C: int, dtype=torch.float32, device="cpu") -> Tensor:
    """Random positive class weights in [0.25, 2), rounded to dtype."""
    return (torch.rand(C, dtype=torch.float64, device=device) * 1.75 + 0.25).to(dtype)


def random_target(shape, C: int, ignore_index: Optional[int] = None, device="cpu") -> Tensor:
    """Random class indices in [0, C); with ignore_index, every third one (at least one) is set to it."""
    t = torch.randint(0, C, shape if isinstance(shape, tuple) else (shape,), device=device)
    if ignore_index is not None and t.numel() > 0:
        t.view(-1)[::3] = ignore_index
    return t


def upstream_grad(loss: Tensor) -> Tensor:
    """A random non-trivial incoming gradient for loss, in loss's dtype (never all ones)."""
    return (torch.randn(loss.shape, dtype=torch.float64, device=loss.device) + 0.5).to(loss.dtype)


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
    """Loss and gradient of PyTorch's own F.cross_entropy in logits' dtype: the baseline of the 2x rule."""
    w = None if weight is None else weight.to(logits.dtype)
    return loss_and_grad(F.cross_entropy, logits, target.long(), w, grad_out, **opts)


def assert_matches(actual: Tensor, ref: Tensor, baseline: Optional[Tensor] = None, what: str = ""):
    """actual (any dtype) against the float64 reference ref with the tolerance of actual's dtype.

    float64: rtol = atol = 1e-10; float32: rtol = atol = 1e-5.
    float16/bfloat16, flash-attention's rule: max|actual - ref| <= 2 max|baseline - ref| + floor, where
    baseline is PyTorch's own same-dtype result and floor = eps(dtype) * max|ref| is one unit in the
    last place of the largest value (rounding the float32 result to the output dtype costs half of it).
    NaNs must sit where the reference has them.
    """
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    a = actual.detach().double().cpu()
    r = ref.detach().double().cpu()
    if actual.dtype not in REDUCED:
        rtol, atol = TOLERANCES[actual.dtype]
        torch.testing.assert_close(a, r, rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m: f"{what}: {m}")
        return
    assert baseline is not None, f"{what}: the {actual.dtype} rule needs PyTorch's same-dtype result"
    nan = r.isnan()
    assert torch.equal(a.isnan(), nan), (
        f"{what}: NaNs at {a.isnan().nonzero().tolist()}, expected at {nan.nonzero().tolist()}")
    if a.numel() == 0 or nan.all():
        return
    a, r, b = a[~nan], r[~nan], baseline.detach().double().cpu()[~nan]
    ours, theirs = (a - r).abs().max().item(), (b - r).abs().max().item()
    floor = torch.finfo(actual.dtype).eps * r.abs().max().item()
    assert ours <= 2 * theirs + floor, (
        f"{what}: {actual.dtype} error {ours:.3e} exceeds 2 x PyTorch's {theirs:.3e} + floor {floor:.3e}")


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
    assert_matches(grad, ref_grad, base_grad, "grad")
    return loss, grad


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
