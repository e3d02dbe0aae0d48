"""The one table of AlexNet's layers, for both variants: what :mod:`pyalexnet.models` builds, what
``bench/`` times and what the tests run at real size.

``LAYOUTS[variant]`` is the network's plan (its five conv layers, the average pool, the classifier
width, whether a BatchNorm follows each conv block); ``LAYERS[variant]`` lists the five conv layers as
:class:`ConvLayer`, each with the input size it sees when the network gets ``INPUT_SIZE[variant]``
pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ConvLayer", "Layout", "LAYOUTS", "LAYERS", "INPUT_SIZE", "CONV_INDICES", "FEATURES_LEN"]


@dataclass(frozen=True)
class ConvLayer:
    """A conv layer with the ReLU and max-pool after it (pool 1/1: none), square throughout."""
    name: str
    cin: int
    cout: int
    k: int
    stride: int
    pad: int
    pool_k: int
    pool_s: int
    hw: int  # input height = width

    @property
    def pooled(self) -> bool:
        return (self.pool_k, self.pool_s) != (1, 1)

    @property
    def conv_hw(self) -> int:
        return (self.hw + 2 * self.pad - self.k) // self.stride + 1

    @property
    def out_hw(self) -> int:
        return (self.conv_hw - self.pool_k) // self.pool_s + 1

    def args(self) -> tuple[int, int, int, int]:
        """stride, padding, pool kernel, pool stride: the op's arguments after (x, weight, bias)."""
        return self.stride, self.pad, self.pool_k, self.pool_s


@dataclass(frozen=True)
class Layout:
    convs: tuple  # (out_channels, kernel, stride, padding, pooled) of the five conv layers
    avgpool: int  # the adaptive average pool's output side
    hidden: int   # the classifier's width
    batchnorm: bool  # a BatchNorm2d after each conv block


POOL = (3, 2)  # AlexNet's overlapping max-pool: 3x3 windows, stride 2
LAYOUTS = {
    # torchvision's ImageNet AlexNet, weight for weight
    "imagenet": Layout(convs=((64, 11, 4, 2, True), (192, 5, 1, 2, True), (384, 3, 1, 1, False),
                              (256, 3, 1, 1, False), (256, 3, 1, 1, True)), avgpool=6, hidden=4096,
                       batchnorm=False),
    # narrowed for 32x32 images, so that ten CIFAR-10 epochs take minutes on two CPU cores
    "cifar": Layout(convs=((64, 3, 1, 1, True), (128, 3, 1, 1, True), (192, 3, 1, 1, False),
                           (192, 3, 1, 1, False), (128, 3, 1, 1, True)), avgpool=3, hidden=4096,
                    batchnorm=True),
}
INPUT_SIZE = {"imagenet": 224, "cifar": 32}
# torchvision's indices of the five Conv2d modules in `features` (ReLU and MaxPool2d in between).
CONV_INDICES = (0, 3, 6, 8, 10)
FEATURES_LEN = 13


def conv_layers(layout: Layout, hw: int, cin: int = 3) -> list[ConvLayer]:
    """The layout's conv layers for a `hw` x `hw` input of `cin` channels."""
    layers = []
    for i, (cout, k, s, p, pooled) in enumerate(layout.convs):
        pk, ps = POOL if pooled else (1, 1)
        layers.append(ConvLayer(f"conv{i + 1}", cin, cout, k, s, p, pk, ps, hw))
        cin, hw = cout, layers[-1].out_hw
    return layers


LAYERS = {variant: conv_layers(layout, INPUT_SIZE[variant]) for variant, layout in LAYOUTS.items()}
