"""AlexNet built from pyalexnet's fused conv + ReLU + max-pool op, switchable to PyTorch's own ops.

``alexnet(num_classes, variant, backend)``:

- ``variant="imagenet"``: torchvision's layout (64-192-384-256-256, 224x224 input, adaptive 6x6
  average pool, 61,100,840 parameters at 1000 classes) with the same state_dict keys and shapes as
  ``torchvision.models.alexnet``, so weights move both ways and give the same logits.
- ``variant="cifar"``: five 3x3 conv layers (64-128-192-192-128, narrowed so that ten CIFAR-10
  epochs take minutes on two CPU cores) and three 3/2 max-pools for 32x32 input (32 -> 15 -> 7 -> 3),
  each block followed by a BatchNorm2d, and a 4096-wide classifier.

Each conv layer (with the ReLU and pool that follow it) is one :class:`ConvBlock`, which sits at the
index torchvision's ``nn.Conv2d`` has in ``features``; the next index holds the cifar variant's
BatchNorm2d, and the other ReLU and pool indices parameter-free ``nn.Identity`` placeholders, so the
imagenet variant's keys are torchvision's, ``features.0.weight`` ... ``features.10.bias``.

The BatchNorm after each fused block (on its pooled, rectified output, which keeps the fusion) lets
the net (BN-free in torchvision) train at a high learning rate from the first step: without it, our
short runs of the cifar variant stayed at chance (loss 2.30) through their first 70 steps at every
learning rate tried (0.003 to 0.03), which a ten-epoch budget cannot spare.


``backend="custom"`` computes the blocks with ``pyalexnet.ops.conv_relu_maxpool``; ``"cudnn"`` with
``F.conv2d`` / ``F.relu`` / ``F.max_pool2d`` (cuDNN on a GPU, oneDNN on a CPU). ``set_backend``
switches in place without touching a weight.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import pyalexnet

from . import ops
from .layers import CONV_INDICES, FEATURES_LEN, LAYOUTS, POOL, Layout
from .nn import ConvReLUMaxPool2d

__all__ = ["AlexNet", "ConvBlock", "alexnet", "BACKENDS", "VARIANTS", "MIN_INPUT_SIZE",
           "CUDA_KERNELS_MISSING"]

BACKENDS = ("custom", "cudnn")
VARIANTS = ("imagenet", "cifar")

CUDA_KERNELS_MISSING = (
    "this pyalexnet was built without its CUDA kernels (pyalexnet.build_info()['cuda'] is False), so "
    "backend='custom' cannot run on a GPU. Rebuild on a machine with nvcc: "
    "`PYALEXNET_CUDA=ON pip install --no-build-isolation --no-deps .` from the pyalexnet sources, "
    "or use backend='cudnn'.")
_CUDA_BUILT = bool(pyalexnet.build_info()["cuda"])

class ConvBlock(ConvReLUMaxPool2d):
    """Conv2d -> ReLU -> MaxPool2d (pool 3/2, or none), by our fused op or by PyTorch's ops.

    Parameters are ``weight`` and ``bias`` in ``nn.Conv2d``'s layout. Under autocast the custom op
    runs in the autocast dtype (it has no autocast rule of its own), as ``F.conv2d`` would.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int = 0, pool: bool = True, backend: str = "custom"):
        pk, ps = POOL if pool else (1, 1)
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, pk, ps)
        self.backend = _check_backend(backend)

    def forward(self, x: Tensor) -> Tensor:
        if self.backend == "cudnn":
            y = F.relu(F.conv2d(x, self.weight, self.bias, self.stride, self.padding))
            if tuple(self.pool_kernel_size) != (1, 1):
                y = F.max_pool2d(y, self.pool_kernel_size, self.pool_stride)
            return y
        if x.device.type == "cuda" and not _CUDA_BUILT:
            raise RuntimeError(CUDA_KERNELS_MISSING)
        w, b = self.weight, self.bias
        if torch.is_autocast_enabled(x.device.type) and x.is_floating_point():
            dtype = torch.get_autocast_dtype(x.device.type)
            x, w = x.to(dtype), w.to(dtype)
            b = None if b is None else b.to(dtype)
        elif x.dtype != w.dtype and x.is_floating_point():  # e.g. float32 activations, float64 model
            x = x.to(w.dtype)  # (an integer input is not cast: the op refuses it, as F.conv2d does)
        return ops.conv_relu_maxpool(x, w, b, self.stride, self.padding, self.pool_kernel_size,
                                     self.pool_stride)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, backend={self.backend!r}"


def _smallest_input(layout: Layout) -> int:
    """The smallest image side for which every conv and pool of the layout has an output."""
    for side in range(1, 4096):
        h = side
        for _, k, s, p, pooled in layout.convs:
            if h + 2 * p < k:
                break
            h = (h + 2 * p - k) // s + 1
            if pooled:
                if h < POOL[0]:
                    break
                h = (h - POOL[0]) // POOL[1] + 1
        else:
            return side
    raise AssertionError("no input size fits the layout")


# The smallest input side of each variant: 63 pixels for imagenet, 15 for cifar.
MIN_INPUT_SIZE = {variant: _smallest_input(layout) for variant, layout in LAYOUTS.items()}


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class AlexNet(nn.Module):
    """AlexNet of a given variant; see the module docstring. ``forward`` returns logits."""

    def __init__(self, num_classes: int = 1000, variant: str = "imagenet", backend: str = "custom",
                 dropout: float = 0.5):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise ValueError(f"num_classes must be an int, got {num_classes!r} "
                             f"({type(num_classes).__name__})")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        layout = LAYOUTS[variant]
        self.variant, self.num_classes = variant, num_classes
        features: list[nn.Module] = [nn.Identity() for _ in range(FEATURES_LEN)]
        c = 3
        for i, (out, k, s, p, pooled) in zip(CONV_INDICES, layout.convs):
            features[i] = ConvBlock(c, out, k, s, p, pooled, _check_backend(backend))
            if layout.batchnorm:
                features[i + 1] = nn.BatchNorm2d(out)
            c = out
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(layout.avgpool)
        hidden, flat = layout.hidden, c * layout.avgpool ** 2
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(flat, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (Kaiming) normal initialisation of the conv weights and zero conv biases, which keeps the
        activations' scale through the conv layers; the linear layers keep PyTorch's default (as
        torchvision's AlexNet), whose small activations keep the 4096-wide classifier stable."""
        for block in self.conv_blocks():
            nn.init.kaiming_normal_(block.weight, nonlinearity="relu")
            nn.init.zeros_(block.bias)

    @property
    def backend(self) -> str:
        return self.conv_blocks()[0].backend

    def conv_blocks(self) -> list[ConvBlock]:
        return [m for m in self.features if isinstance(m, ConvBlock)]

    def set_backend(self, backend: str) -> "AlexNet":
        """Computes the conv layers with ``backend`` from now on ("custom" or "cudnn"); returns self."""
        _check_backend(backend)
        for block in self.conv_blocks():
            block.backend = backend
        return self

    def forward(self, x: Tensor) -> Tensor:
        # Checked here, in the model's terms, so that both backends refuse the same inputs with the
        # same words (the custom op named a conv layer's geometry, F.conv2d its own internals).
        if not x.is_floating_point():
            raise ValueError(f"AlexNet input must be floating point, got {x.dtype} (uint8 images need "
                             "pyalexnet.data.normalize first)")
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"AlexNet input must be (N, 3, H, W) images, got shape {tuple(x.shape)}")
        least = MIN_INPUT_SIZE[self.variant]
        if x.shape[2] < least or x.shape[3] < least:
            raise ValueError(f"AlexNet-{self.variant} input must be at least {least}x{least} pixels, got "
                             f"{x.shape[2]}x{x.shape[3]}")
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def alexnet(num_classes: int = 1000, variant: str = "imagenet", backend: str = "custom",
            dropout: float = 0.5, weights: Optional[dict] = None) -> AlexNet:
    """An :class:`AlexNet`; ``weights``: an optional state_dict (ours or torchvision's) to load."""
    model = AlexNet(num_classes, variant, backend, dropout)
    if weights is not None:
        model.load_state_dict(weights)
    return model
