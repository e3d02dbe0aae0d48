"""An ImageFolder tree (one folder of JPEG/PNG files per class) read into uint8 tensors.

``root/<class>/<image>`` with a held-out share (``holdout`` images, picked by a fixed-seed shuffle),
or ``root/train/<class>/...`` and ``root/val/<class>/...``. Each image is decoded once (Pillow),
resized so its shorter side is ``image_size`` and centre-cropped to a square, and kept in memory:
image_size**2 * 3 bytes each (150 KiB at 224), which suits small and medium trees, not all of
ImageNet (that needs a streaming loader).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import DataError, ImageData

EXTENSIONS = (".jpg", ".jpeg", ".png")


def _scan(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in EXTENSIONS:
                files.append((p, label))
    if not files:
        raise DataError(f"{root}: no {'/'.join(EXTENSIONS)} files in its class folders")
    return files


def _decode(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = size / min(w, h)
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
            return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{path}: not a readable JPEG/PNG image ({e})") from None


def _read(files: list[tuple[Path, int]], size: int) -> tuple[Tensor, Tensor]:
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        images = list(pool.map(lambda f: _decode(f[0], size), files))
    return torch.from_numpy(np.stack(images)), torch.tensor([f[1] for f in files], dtype=torch.int64)


def _classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected a folder of class folders of images)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders in it (expected root/<class>/<image files>)")
    return classes


def load_imagefolder(root, image_size: int = 224, holdout: int = 0) -> ImageData:
    """The tree at root (see the module docstring) as an :class:`ImageData` of image_size squares."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DataError("--dataset imagefolder needs Pillow to decode images: pip install pillow") from None
    root = Path(root)
    pad = max(image_size // 8, 1)
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = _classes(root / "train")
        if _classes(root / "val") != classes:
            raise DataError(f"{root}: train/ and val/ have different class folders")
        x, y = _read(_scan(root / "train", classes), image_size)
        tx, ty = _read(_scan(root / "val", classes), image_size)
        return ImageData("imagefolder", x, y, tx, ty, tuple(classes), crop_padding=pad, test_name="val/")
    classes = _classes(root)
    files = _scan(root, classes)
    holdout = holdout or max(len(files) // 10, 1)
    if holdout >= len(files):
        raise DataError(f"{root}: holdout {holdout} leaves no training images (there are {len(files)})")
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
    x, y = _read([files[i] for i in order], image_size)
    return ImageData("imagefolder", x[:-holdout], y[:-holdout], x[-holdout:], y[-holdout:],
                     tuple(classes), crop_padding=pad, test_name=f"{holdout} held-out images")
