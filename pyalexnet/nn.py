"""torch.nn modules built on pyalexnet's ops."""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import ops

__all__ = ["ConvReLUMaxPool2d", "SoftmaxCrossEntropyLoss"]


class SoftmaxCrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``nn.CrossEntropyLoss`` with class-index targets, computed by the fused op."""

    def __init__(self, weight: Optional[Tensor] = None, ignore_index: int = -100,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__()
        if reduction not in ("none", "mean", "sum"):
            raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        ops._check_label_smoothing(label_smoothing)
        self.register_buffer("weight", weight)
        self.ignore_index = ops._check_ignore_index(ignore_index)
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return ops.softmax_cross_entropy(logits, target, self.weight, self.ignore_index,
                                         self.reduction, self.label_smoothing)

    def extra_repr(self) -> str:
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}")


class ConvReLUMaxPool2d(torch.nn.Module):
    """``Conv2d -> ReLU -> MaxPool2d`` as one fused op. ``weight`` and ``bias`` have nn.Conv2d's
    layout and initialisation, so state_dicts move between the two; pool 1/1 means conv + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 pool_kernel_size=3, pool_stride=2, bias: bool = True, device=None, dtype=None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        # The op's own checks, at construction: a bad stride or pool used to surface at the first forward.
        pk = ops._pair(pool_kernel_size, "pool_kernel_size")
        ops._check_geometry_args(
            kernel_size=(ops._pair(kernel_size, "kernel_size"), 1), stride=(ops._pair(stride, "stride"), 1),
            padding=(ops._pair(padding, "padding"), 0), pool_kernel_size=(pk, 1),
            pool_stride=(ops._pair(pool_stride, "pool_stride"), 1))
        if pk[0] * pk[1] > 255:  # csrc's kMaxWindow: a pooled output's argmax is one byte
            raise ValueError(f"pool windows may have at most 255 positions, got pool_kernel_size={pk}")
        conv = torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias,
                               device=device, dtype=dtype)  # for its layout and initialisation
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.pool_kernel_size = ops._pair(pool_kernel_size, "pool_kernel_size")
        self.pool_stride = ops._pair(pool_stride, "pool_stride")
        self.weight = conv.weight
        # register_parameter, not `self.bias = conv.bias`: for bias=False that assignment made a plain
        # attribute None, which a later register_parameter("bias", None) refused (KeyError).
        self.register_parameter("bias", conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        return ops.conv_relu_maxpool(x, self.weight, self.bias, self.stride, self.padding,
                                     self.pool_kernel_size, self.pool_stride)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, pool_kernel_size={tuple(self.pool_kernel_size)}, "
                f"pool_stride={tuple(self.pool_stride)}, bias={self.bias is not None}")
