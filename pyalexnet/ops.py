"""Python API of pyalexnet's ops: typed wrappers, fake (meta) kernels for torch.compile, autograd."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["softmax_cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")


def softmax_cross_entropy(
    logits: Tensor,
    target: Tensor,
    weight: Optional[Tensor] = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Tensor:
    """Fused log-softmax + cross-entropy with the semantics of ``F.cross_entropy`` for class indices.

    logits: (N, C), (C,) or (N, C, d1, ...); target: int64/int32 class indices of shape (N,), () or
    (N, d1, ...); weight: optional (C,) class weights. One pass over the logits forward, one backward.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1], got {label_smoothing}")
    if logits.dim() == 0:
        raise ValueError("logits must have a class dimension: shape (C,), (N, C) or (N, C, d1, ...)")
    shape = None
    if logits.dim() == 1:  # unbatched: one sample of C classes
        if target.dim() != 0:
            raise ValueError(f"for logits of shape (C,), target must be a scalar, got {tuple(target.shape)}")
        logits, target, shape = logits.unsqueeze(0), target.reshape(1), ()
    elif logits.dim() > 2:  # (N, C, d1, ...): classes to the last dimension, one row per position
        n, c, rest = logits.shape[0], logits.shape[1], logits.shape[2:]
        if tuple(target.shape) != (n, *rest):
            raise ValueError(
                f"for logits of shape {tuple(logits.shape)}, target must have shape {(n, *rest)}, "
                f"got {tuple(target.shape)}")
        logits, target, shape = logits.movedim(1, -1).reshape(-1, c), target.reshape(-1), (n, *rest)
    loss, _, _ = torch.ops.pyalexnet.softmax_cross_entropy_forward(
        logits, target, weight, int(ignore_index), reduction, float(label_smoothing))
    if shape is not None and reduction == "none":
        loss = loss.reshape(shape)
    return loss


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check_same_device(logits: Tensor, **tensors: Optional[Tensor]) -> None:
    # The fake kernels also serve the Meta key, which the dispatcher picks whenever any argument is
    # on 'meta': without this check, CPU logits with a meta weight returned uninitialised CPU memory.
    for name, t in tensors.items():
        torch._check(t is None or t.device == logits.device, lambda: (
            f"softmax_cross_entropy: {name} is on {t.device} but logits are on {logits.device}"))


@torch.library.register_fake("pyalexnet::softmax_cross_entropy_forward")
def _softmax_cross_entropy_forward_fake(logits, target, weight, ignore_index, reduction, label_smoothing):
    _check_same_device(logits, target=target, weight=weight)
    torch._check(logits.dim() == 2, lambda: f"logits must be 2-D (N, C), got {tuple(logits.shape)}")
    torch._check(target.shape == logits.shape[:1], lambda: "target must have shape (N,)")
    torch._check(reduction in _REDUCTIONS, lambda: f"unknown reduction {reduction!r}")
    n = logits.shape[0]
    acc = _acc_dtype(logits.dtype)
    loss = logits.new_empty((n,) if reduction == "none" else ())
    return loss, logits.new_empty((n,), dtype=acc), logits.new_empty((2,), dtype=acc)


@torch.library.register_fake("pyalexnet::softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward_fake(grad_loss, logits, target, weight, lse, wstats, ignore_index,
                                         reduction, label_smoothing):
    _check_same_device(logits, grad_loss=grad_loss, target=target, weight=weight, lse=lse, wstats=wstats)
    return logits.new_empty(logits.shape)


def _softmax_cross_entropy_setup_context(ctx, inputs, output):
    logits, target, weight, ignore_index, reduction, label_smoothing = inputs
    _, lse, wstats = output
    ctx.save_for_backward(logits, target, weight, lse, wstats)
    ctx.args = (ignore_index, reduction, label_smoothing)
    ctx.mark_non_differentiable(lse, wstats)


def _softmax_cross_entropy_backward(ctx, grad_loss, grad_lse, grad_wstats):
    grad_logits = None
    if ctx.needs_input_grad[0]:
        logits, target, weight, lse, wstats = ctx.saved_tensors
        grad_logits = torch.ops.pyalexnet.softmax_cross_entropy_backward(
            grad_loss, logits, target, weight, lse, wstats, *ctx.args)
    return grad_logits, None, None, None, None, None


torch.library.register_autograd(
    "pyalexnet::softmax_cross_entropy_forward",
    _softmax_cross_entropy_backward,
    setup_context=_softmax_cross_entropy_setup_context,
)
