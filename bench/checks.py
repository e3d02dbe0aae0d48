"""Verify-before-time: the check every benchmarked variant passes first.

The rule is the one the tests use for reduced precision (flash-attention's): against a float64
reference computed from the same inputs, a variant's relative error, ||got - ref|| / ||ref||, is
at most twice that of PyTorch's own eager result in the same precision, or under a floor. The
floors cover rounding and, for gradients, the odd ReLU or pooling decision that a last-bit
difference flips (in float32 each flip moves one element's gradient: ~1e-3 of a layer's norm).
Comparing two low-precision results with each other instead would blame one for the other's
error: in bfloat16, eager max_pool2d backward routes the gradient of bf16-rounded ties to the
first of them, 5-7% away from float64 on AlexNet's layers, where our kernels (which pool the
float32 accumulator) stay at 0.2%.

A variant that fails is not timed; its row says why, and compare.py exits non-zero at the end.
"""
from __future__ import annotations

import zlib

import torch

# (output floor, gradient floor) of relative error, per precision the computation runs in.
FLOORS = {"float32": (1e-5, 5e-3), "tf32": (5e-3, 1e-2), "bfloat16": (1e-2, 2e-2), "float16": (5e-3, 1e-2)}


def seed_row(key: dict) -> None:
    """Seeds torch's generators from a row's key, so that the row draws the same inputs in every run:
    its verification is reproducible, and a near-tie that float32 decides the other way from float64
    (a max-pool or ReLU flip moves ~4e-3 of dx's norm in CIFAR conv2 at batch 32) fails a row always
    or never, not one run in thirty."""
    torch.manual_seed(zlib.crc32(repr(sorted(key.items())).encode()))


def precision(dtype: torch.dtype, dev: torch.device) -> str:
    """The arithmetic a dtype gets: float32 on a GPU is TF32 in cuDNN and in our kernels (10-bit
    mantissa inputs) while torch.backends.cudnn.allow_tf32 is on, PyTorch's default."""
    if dtype == torch.float32 and dev.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return str(dtype).removeprefix("torch.")


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_as_accurate(got, base, ref, names, prec: str, outputs: int = 1) -> None:
    """got, base, ref: matching tensors (the first `outputs` of them outputs, the rest gradients)
    of the variant, of PyTorch's eager baseline in the same precision, and of float64."""
    for i, (g, b, r, name) in enumerate(zip(got, base, ref, names)):
        assert g.shape == r.shape, f"{name}: shape {tuple(g.shape)}, expected {tuple(r.shape)}"
        eg, eb = relative_error(g, r), relative_error(b, r)
        floor = FLOORS[prec][0 if i < outputs else 1]
        assert eg <= max(2 * eb, floor), (
            f"{name}: relative error {eg:.2e} against float64, PyTorch's own {eb:.2e} "
            f"(allowed: twice that, or {floor:.0e})")


def attempt(failures: dict, key: str, fn) -> bool:
    """Runs a check; on failure records its message under `key` and returns False."""
    try:
        fn()
        return True
    except Exception as e:  # noqa: BLE001 - any failure of a variant is reported, not fatal
        failures[key] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return False
