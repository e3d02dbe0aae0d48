"""Python API of pyalexnet's ops: typed wrappers, fake (meta) kernels for torch.compile, autograd."""
from __future__ import annotations

import math
import operator
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["conv_relu_maxpool", "softmax_cross_entropy"]

_REDUCTIONS = ("none", "mean", "sum")
_XENT_FORWARD = torch.ops.pyalexnet.softmax_cross_entropy_forward.default  # registered by _C, loaded first


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
    # (Python costs count here: a 128 x 10 call takes ~10 us. Plain floats and ints skip the checkers.)
    for name, t in (("logits", logits), ("target", target)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if type(label_smoothing) is not float or not 0.0 <= label_smoothing <= 1.0:
        label_smoothing = _check_label_smoothing(label_smoothing)
    if type(ignore_index) is not int:
        ignore_index = _check_ignore_index(ignore_index)
    dim = logits.dim()
    if dim == 0:
        raise ValueError("logits must have a class dimension: shape (C,), (N, C) or (N, C, d1, ...)")
    shape = None
    if dim == 1:  # unbatched: one sample of C classes
        if target.dim() != 0:
            raise ValueError(f"for logits of shape (C,), target must be a scalar, got {tuple(target.shape)}")
        logits, target, shape = logits.unsqueeze(0), target.reshape(1), ()
    elif dim > 2:  # (N, C, d1, ...): classes to the last dimension, one row per position
        n, c, rest = logits.shape[0], logits.shape[1], logits.shape[2:]
        if tuple(target.shape) != (n, *rest):
            raise ValueError(
                f"for logits of shape {tuple(logits.shape)}, target must have shape {(n, *rest)}, "
                f"got {tuple(target.shape)}")
        logits, target, shape = logits.movedim(1, -1).reshape(-1, c), target.reshape(-1), (n, *rest)
    loss = _XENT_FORWARD(logits, target, weight, ignore_index, reduction, label_smoothing)[0]
    if shape is not None and reduction == "none":
        loss = loss.reshape(shape)
    return loss


def _check_label_smoothing(v) -> float:
    """v as a float in [0, 1] (a Python or numpy number, or a one-element tensor), else a ValueError."""
    try:
        f = float(v) if not isinstance(v, (str, bytes, bool)) else math.nan
    except (TypeError, ValueError, RuntimeError):
        f = math.nan
    if not 0.0 <= f <= 1.0:
        got = v if isinstance(v, (int, float)) else repr(v)
        raise ValueError(f"label_smoothing must lie in [0, 1], got {got}")
    return f


def _check_ignore_index(v) -> int:
    """v as an int (a float such as 1.5 is refused, not truncated), else a ValueError."""
    try:
        if isinstance(v, bool):
            raise TypeError
        return operator.index(v)
    except TypeError:
        raise ValueError(f"ignore_index must be an int (the target value to ignore, e.g. -100), got {v!r}"
                         ) from None


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
    return loss, logits.new_empty((n, 2), dtype=acc), logits.new_empty((2,), dtype=acc)


@torch.library.register_fake("pyalexnet::softmax_cross_entropy_backward")
def _softmax_cross_entropy_backward_fake(grad_loss, logits, target, weight, lse, wstats, ignore_index,
                                         reduction, label_smoothing):
    _check_same_device(logits, grad_loss=grad_loss, target=target, weight=weight, lse=lse, wstats=wstats)
    return logits.new_empty(logits.shape)


# The loss op's autograd is registered in C++ (csrc/softmax_cross_entropy_autograd.cpp): a Python
# autograd kernel cost as much per call as the op itself at small sizes.


# --- fused conv2d + ReLU + max-pool ---------------------------------------------------------------

_IntPair = Union[int, Sequence[int]]


def _int(e) -> int:
    if isinstance(e, bool):  # True is an int to Python, never a size or stride
        raise TypeError
    return operator.index(e)  # ints, numpy ints, integer 0-d tensors; 1.5 or "1" raise TypeError


def _pair(v: _IntPair, name: str) -> list[int]:
    """v (an int or a pair of ints) as [h, w]; a float, bool, string or other length is a ValueError
    (1.5 used to become 1 silently)."""
    try:
        if isinstance(v, Sequence) and not isinstance(v, (str, bytes)):
            vals = [_int(e) for e in v]
        else:
            vals = [_int(v)] * 2
    except TypeError:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if len(vals) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {vals}")
    return vals


def _check_geometry_args(**pairs: tuple[list[int], int]) -> None:
    """Each name=(pair, least): the pair's values must be >= least (as the op checks at run time,
    for modules to refuse bad arguments when they are built)."""
    for name, (v, least) in pairs.items():
        if min(v) < least:
            raise ValueError(f"{name} must be >= {least}, got {v}")


def conv_relu_maxpool(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: _IntPair = 1,
    padding: _IntPair = 0,
    pool_kernel: _IntPair = 3,
    pool_stride: _IntPair = 2,
) -> Tensor:
    """``F.max_pool2d(F.relu(F.conv2d(x, weight, bias, stride, padding)), pool_kernel, pool_stride)``
    in one op that never stores the convolution's full-resolution output; pool 1/1 is conv + ReLU."""
    out, _ = torch.ops.pyalexnet.conv_relu_maxpool_forward(
        x, weight, bias, _pair(stride, "stride"), _pair(padding, "padding"),
        _pair(pool_kernel, "pool_kernel"), _pair(pool_stride, "pool_stride"))
    return out


def _crm_check_devices(x: Tensor, **tensors: Optional[Tensor]) -> None:
    # As _check_same_device: the fakes also serve the Meta key, which the dispatcher picks whenever
    # any argument is on 'meta' (CPU input with a meta weight returned uninitialised CPU memory).
    for name, t in tensors.items():
        torch._check(t is None or t.device == x.device,
                     lambda: f"conv_relu_maxpool: {name} is on {t.device} but input is on {x.device}")


def _crm_sizes(x, weight, stride, padding, pool_kernel, pool_stride):
    # The checks of csrc/conv_relu_maxpool_checks.h that decide the shapes (with its messages), so that
    # the fake refuses what the kernels refuse instead of dividing by zero or making negative sizes.
    op = "conv_relu_maxpool: "
    torch._check(x.dim() == 4, lambda: f"{op}input must be 4-D (N, C, H, W), got {tuple(x.shape)}")
    torch._check(weight.dim() == 4, lambda: f"{op}weight must be 4-D, got {tuple(weight.shape)}")
    torch._check(weight.dtype == x.dtype,
                 lambda: f"{op}weight dtype {weight.dtype} differs from input dtype {x.dtype}")
    torch._check(x.shape[1] == weight.shape[1],
                 lambda: f"{op}input has {x.shape[1]} channels but weight expects {weight.shape[1]}")
    for v, name, least in ((stride, "stride", 1), (padding, "padding", 0),
                           (pool_kernel, "pool_kernel", 1), (pool_stride, "pool_stride", 1)):
        torch._check(len(v) == 2, lambda: f"{op}{name} must have 2 values (h, w), got {list(v)}")
        torch._check(min(v) >= least, lambda: f"{op}{name} must be >= {least}, got {list(v)}")
    torch._check(pool_kernel[0] * pool_kernel[1] <= 255,
                 lambda: f"{op}pool windows may have at most 255 positions, got {list(pool_kernel)}")
    for d in (2, 3):  # one check per dimension: each may be symbolic under torch.compile
        torch._check(x.shape[d] + 2 * padding[d - 2] >= weight.shape[d], lambda: (
            f"{op}input {tuple(x.shape)} padded by {list(padding)} is smaller than the kernel "
            f"{weight.shape[2]}x{weight.shape[3]}: the convolution output would be empty"))
    hc = (x.shape[2] + 2 * padding[0] - weight.shape[2]) // stride[0] + 1
    wc = (x.shape[3] + 2 * padding[1] - weight.shape[3]) // stride[1] + 1
    for c, k in ((hc, pool_kernel[0]), (wc, pool_kernel[1])):
        torch._check(c >= k, lambda: f"{op}the convolution output is {hc}x{wc}, smaller than the pool "
                                     f"window {list(pool_kernel)}: the output would be empty")
    return (x.shape[0], weight.shape[0], (hc - pool_kernel[0]) // pool_stride[0] + 1,
            (wc - pool_kernel[1]) // pool_stride[1] + 1)


def _crm_format(x: Tensor) -> torch.memory_format:
    """The layout of the op's outputs (out, argmax, grad_x; grad_weight from the weight), as
    csrc/conv_relu_maxpool_checks.h's output_format: channels_last for a channels_last input, else
    contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


@torch.library.register_fake("pyalexnet::conv_relu_maxpool_forward")
def _conv_relu_maxpool_forward_fake(x, weight, bias, stride, padding, pool_kernel, pool_stride):
    _crm_check_devices(x, weight=weight, bias=bias)
    shape = _crm_sizes(x, weight, stride, padding, pool_kernel, pool_stride)
    n, co, hp, wp = shape
    # a 1x1 pool window keeps only the ReLU mask, 8 outputs of a row to a byte
    code_shape = (n, co, hp, (wp + 7) // 8) if tuple(pool_kernel) == (1, 1) else shape
    mf = _crm_format(x)
    return (torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=mf),
            torch.empty(code_shape, dtype=torch.uint8, device=x.device, memory_format=mf))


@torch.library.register_fake("pyalexnet::conv_relu_maxpool_backward")
def _conv_relu_maxpool_backward_fake(grad_out, x, weight, argmax, stride, padding, pool_kernel,
                                     pool_stride, output_mask):
    _crm_check_devices(x, grad_out=grad_out, weight=weight, argmax=argmax)
    n, ci, h, w = x.shape
    co, _, kh, kw = weight.shape
    return (torch.empty((n if output_mask[0] else 0, ci, h, w), dtype=x.dtype, device=x.device,
                        memory_format=_crm_format(x)),
            torch.empty((co if output_mask[1] else 0, ci, kh, kw), dtype=weight.dtype, device=weight.device,
                        memory_format=_crm_format(weight)),
            weight.new_empty((co if output_mask[2] else 0,)))


def _conv_relu_maxpool_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, pool_kernel, pool_stride = inputs
    _, argmax = output
    # Saved: the input and weights (which the eager path keeps too) and one byte per pooled output.
    ctx.save_for_backward(x, weight, argmax)
    ctx.args = (stride, padding, pool_kernel, pool_stride)
    ctx.has_bias = bias is not None
    ctx.mark_non_differentiable(argmax)


def _conv_relu_maxpool_backward(ctx, grad_out, grad_argmax):
    x, weight, argmax = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
    if not any(mask):
        return None, None, None, None, None, None, None
    gx, gw, gb = torch.ops.pyalexnet.conv_relu_maxpool_backward(
        grad_out, x, weight, argmax, *ctx.args, mask)
    return (gx if mask[0] else None, gw if mask[1] else None, gb if mask[2] else None,
            None, None, None, None)


torch.library.register_autograd(
    "pyalexnet::conv_relu_maxpool_forward",
    _conv_relu_maxpool_backward,
    setup_context=_conv_relu_maxpool_setup_context,
)
