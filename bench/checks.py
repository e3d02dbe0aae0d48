"""Verify-before-time: the checks every benchmarked variant passes against its baseline first.

A variant that fails is not timed; its row says why, and compare.py exits non-zero at the end.
"""
from __future__ import annotations

import torch

# Forward tolerance (rtol, atol) per dtype the benchmark runs in. float32 on a GPU is TF32 in both
# our kernels and cuDNN (10-bit mantissa inputs), so it gets the reduced-precision tolerance.
FORWARD_TOL = {torch.float32: (1e-3, 1e-3), torch.bfloat16: (5e-2, 5e-2), torch.float16: (1e-2, 1e-2)}
# Gradients are compared by relative error of the whole tensor, ||a - b|| / ||b||: in the timed
# dtype a near-tie in a pooling window, or a value near 0 at the ReLU, may legitimately send one
# element's gradient elsewhere, which elementwise checks would call a failure.
GRAD_TOL = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}


def reduced(dtype: torch.dtype, dev: torch.device) -> bool:
    """Whether the computation rounds to fewer than float32's bits (bf16/f16, or TF32 on a GPU)."""
    tf32 = dev.type == "cuda" and torch.backends.cudnn.allow_tf32
    return dtype != torch.float32 or tf32


def forward_tol(dtype: torch.dtype, dev: torch.device) -> dict:
    rtol, atol = FORWARD_TOL[torch.bfloat16 if dtype == torch.float32 and reduced(dtype, dev) else dtype]
    return dict(rtol=rtol, atol=atol)


def grad_tol(dtype: torch.dtype, dev: torch.device) -> float:
    return GRAD_TOL[torch.bfloat16 if dtype == torch.float32 and reduced(dtype, dev) else dtype]


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def assert_grads_close(got, want, tol: float, names=None) -> None:
    for i, (a, b) in enumerate(zip(got, want)):
        name = names[i] if names else f"gradient {i}"
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)}, expected {tuple(b.shape)}"
        err = relative_error(a, b)
        assert err <= tol, f"{name}: relative error {err:.2e} > {tol:.0e}"


def attempt(failures: dict, key: str, fn) -> bool:
    """Runs a check; on failure records its message under `key` and returns False."""
    try:
        fn()
        return True
    except Exception as e:  # noqa: BLE001 - any failure of a variant is reported, not fatal
        failures[key] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        return False
