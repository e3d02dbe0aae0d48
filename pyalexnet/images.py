"""What every dataset loader shares (:mod:`pyalexnet.data` and :mod:`pyalexnet.imagefolder` both
build on it): the loaded dataset, the error a bad file raises, the checks of their arguments."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor

__all__ = ["ImageData", "DataError", "BAD_IMAGES", "check_int"]

BAD_IMAGES = ("error", "skip")  # what an unreadable image of an imagefolder tree does (bad_images=)


class DataError(ValueError):
    """A dataset file is missing or not in the expected format; the message names the file."""


@dataclass
class ImageData:
    """Train and test images (uint8, N x C x H x W) and labels (int64, N), with what they need."""

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    classes: tuple
    crop_padding: int = 4     # pixels of zero padding before the random crop (0: no crop)
    flip: bool = True         # random horizontal flips
    test_name: str = "test"   # what the test split is ("validation: last 5000 training images", ...)
    skipped: tuple = ()       # (path, reason) of each bad image left out (imagefolder, bad_images="skip")

    @property
    def mean_std(self) -> tuple[Tensor, Tensor]:
        """Per-channel mean and standard deviation of the training images, in [0, 1] units."""
        x = self.train_x[:10000].float().div_(255)
        return x.mean((0, 2, 3)), x.std((0, 2, 3)).clamp_min(1e-3)


def check_int(name: str, v, least: int, note: str = "") -> None:
    """A ValueError unless v is an int (not a bool) >= least; note says what a value means."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < least:
        raise ValueError(f"{name} must be an int >= {least}{note}, got {v!r}")
