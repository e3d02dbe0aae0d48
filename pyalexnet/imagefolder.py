"""An ImageFolder tree (one folder of JPEG/PNG files per class) read into uint8 tensors.

``root/<class>/<image>`` with a held-out share (``holdout`` images, picked by a fixed-seed shuffle),
or ``root/train/<class>/...`` and ``root/val/<class>/...``. Each image is decoded once (Pillow),
resized so its shorter side is ``image_size`` and centre-cropped to a square, and kept in memory:
image_size**2 * 3 bytes each (150 KiB at 224), which suits small and medium trees, not all of
ImageNet (that needs a streaming loader).

The files are untrusted: a truncated or corrupt file, or one whose header claims more than
``max_pixels`` pixels (a decompression bomb: a few KiB of PNG can claim 100000 x 100000 pixels), is a
bad image. Its size is checked from the header, before any pixel is decoded, against ``max_pixels``
(Pillow's own ``Image.MAX_IMAGE_PIXELS`` check, which this module leaves as it is, still applies on
top). ``bad_images="error"`` stops at the first bad image with a :class:`DataError` naming it;
``"skip"`` leaves each one out with a warning line on stderr naming it and why, a count at the end,
and the list in ``ImageData.skipped``. A class left with no images is an error either way.
"""
from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .images import BAD_IMAGES, DataError, ImageData, check_int

EXTENSIONS = (".jpg", ".jpeg", ".png")
MAX_PIXELS = 50_000_000  # default max_pixels: a 50-megapixel photo decodes to 150 MB of RGB


class _BadImage(Exception):
    """Why one file is not a usable image (raised and caught inside _decode only)."""


def _scan(root: Path, classes: list[str]) -> list[tuple[Path, int]]:
    files = []
    for label, name in enumerate(classes):
        for p in sorted((root / name).iterdir()):
            if p.suffix.lower() in EXTENSIONS:
                files.append((p, label))
    if not files:
        raise DataError(f"{root}: no {'/'.join(EXTENSIONS)} files in its class folders")
    return files


def decode_file(path, max_pixels: int, transform: Callable) -> Union[np.ndarray, str]:
    """transform(image) of the image at path, decoded to RGB (grayscale, palette and CMYK files
    converted; EXIF orientation applied), or, for a bad image, the reason (a str).

    Runs in the loaders' worker threads and processes, so it never raises for a bad file: whatever
    Pillow raises on untrusted bytes (OSError for truncated data, SyntaxError, ValueError,
    struct.error, ..., DecompressionBombError, and DecompressionBombWarning where warnings are errors)
    becomes the reason. The pixel count is checked from the header, before any pixel is decoded.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
            if w * h > max_pixels:
                raise _BadImage(f"{w}x{h} = {w * h:,} pixels, more than max_pixels={max_pixels:,}; refused "
                                "before decoding (a decompression bomb?)")
            im.load()  # decodes the pixels: a truncated or corrupt file fails here, not at open
            ImageOps.exif_transpose(im, in_place=True)  # (in place: no copy of an upright image)
            return transform(im if im.mode == "RGB" else im.convert("RGB"))
    except _BadImage as e:
        return str(e)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        return f"too many pixels for Pillow's decompression-bomb limit ({e})"
    except UnidentifiedImageError as e:
        return f"not a readable JPEG/PNG image ({e})"
    except MemoryError:
        return "not a readable JPEG/PNG image (out of memory decoding it)"
    except Exception as e:  # noqa: BLE001 -- untrusted bytes: any failure of the decoder means a bad file
        return f"not a readable JPEG/PNG image ({type(e).__name__}: {e})"


def _centre_square(size: int) -> Callable:
    """Shorter side resized to size, the centre size x size kept: a uint8 3 x size x size array."""
    def transform(im):
        from PIL import Image
        w, h = im.size
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).transpose(2, 0, 1)
    return transform


def _decode(path: Path, size: int, max_pixels: int) -> Union[np.ndarray, str]:
    return decode_file(path, max_pixels, _centre_square(size))


def _read(files: list[tuple[Path, int]], size: int, bad_images: str, max_pixels: int
          ) -> tuple[list[np.ndarray], list[int], list[tuple[str, str]]]:
    """Decodes files in worker threads: the good images and their labels, and (path, reason) of
    each bad one. bad_images="error": a DataError at the first bad file (in file order)."""
    images, labels, skipped = [], [], []
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 1)
    try:
        results = pool.map(lambda f: _decode(f[0], size, max_pixels), files)
        for (path, label), r in zip(files, results):
            if isinstance(r, str):
                if bad_images == "error":
                    raise DataError(f"{path}: {r} (bad_images='skip', the trainer's --bad-images skip, "
                                    "leaves such files out)")
                skipped.append((str(path), r))
            else:
                images.append(r)
                labels.append(label)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # after an error, decode no further files
    return images, labels, skipped


def _check_classes(root: Path, classes: list[str], labels: list[int], skipped: list[tuple[str, str]]) -> None:
    """Every class keeps at least one image (after skipping bad ones)."""
    if not labels:
        raise DataError(f"{root}: no readable images left: all {len(skipped)} were bad and skipped")
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(classes))
    for name, n in zip(classes, counts.tolist()):
        if n == 0:
            folder = root / name
            bad = sum(Path(p).parent == folder for p, _ in skipped)
            raise DataError(f"{folder}: class {name!r} has no readable images" +
                            (f" left: all {bad} were bad and skipped" if bad else
                             f" (no {'/'.join(EXTENSIONS)} files in it)"))


def _tensors(images: list[np.ndarray], labels: list[int]) -> tuple[Tensor, Tensor]:
    return torch.from_numpy(np.stack(images)), torch.tensor(labels, dtype=torch.int64)


def _classes(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected a folder of class folders of images)")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root}: no class folders in it (expected root/<class>/<image files>)")
    return classes


def _warn_skipped(root: Path, skipped: list[tuple[str, str]], total: int) -> None:
    if not skipped:
        return
    for path, reason in skipped:
        print(f"warning: skipped bad image {path}: {reason}", file=sys.stderr)
    print(f"warning: skipped {len(skipped)} of {total} images under {root} (bad_images='skip')",
          file=sys.stderr, flush=True)


def _layout(root: Path) -> tuple[list[str], list, Optional[list]]:
    """The classes and files, (path, label), of the tree at root: those of train/ and of val/, or,
    for a tree of class folders, all its files in a fixed-seed shuffled order and None."""
    if (root / "train").is_dir() and (root / "val").is_dir():
        classes = _classes(root / "train")
        if _classes(root / "val") != classes:
            raise DataError(f"{root}: train/ and val/ have different class folders")
        return classes, _scan(root / "train", classes), _scan(root / "val", classes)
    classes = _classes(root)
    files = _scan(root, classes)
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(0)).tolist()
    return classes, [files[i] for i in order], None


def scan_tree(root: Path, holdout: int = 0) -> tuple[list[str], list, list, str]:
    """The classes, training files, test files and the test split's name of the tree at root:
    train/ and val/, or class folders whose files are split by a fixed-seed shuffle, the last
    `holdout` (default: a tenth) tested. Files are (path, label); nothing is decoded."""
    check_int("holdout", holdout, 0)
    classes, files, val_files = _layout(root)
    if val_files is not None:
        return classes, files, val_files, "val/"
    holdout = holdout or max(len(files) // 10, 1)
    if holdout >= len(files):
        raise DataError(f"{root}: holdout {holdout} leaves no training images (there are {len(files)})")
    return classes, files[:-holdout], files[-holdout:], f"{holdout} held-out images"


def load_imagefolder(root, image_size: int = 224, holdout: int = 0, bad_images: str = "error",
                     max_pixels: int = MAX_PIXELS) -> ImageData:
    """The tree at root (see the module docstring) as an :class:`ImageData` of image_size squares.

    bad_images: "error" (a bad image is a DataError naming it) or "skip" (left out with a warning;
    see ``ImageData.skipped``). max_pixels: images whose header claims more pixels are bad images,
    refused before their pixels are decoded.
    """
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
    for name, v, least in (("image_size", image_size, 1), ("holdout", holdout, 0),
                           ("max_pixels", max_pixels, 1)):
        check_int(name, v, least)
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DataError("--dataset imagefolder needs Pillow to decode images: pip install pillow") from None
    root = Path(root)
    pad = max(image_size // 8, 1)
    classes, train_files, val_files = _layout(root)
    if val_files is not None:
        xs, ys, skipped = _read(train_files, image_size, bad_images, max_pixels)
        txs, tys, tskipped = _read(val_files, image_size, bad_images, max_pixels)
        _warn_skipped(root, skipped + tskipped, len(train_files) + len(val_files))
        _check_classes(root / "train", classes, ys, skipped)
        _check_classes(root / "val", classes, tys, tskipped)
        (x, y), (tx, ty) = _tensors(xs, ys), _tensors(txs, tys)
        return ImageData("imagefolder", x, y, tx, ty, tuple(classes), crop_padding=pad, test_name="val/",
                         skipped=tuple(skipped + tskipped))
    files = train_files
    if holdout and holdout >= len(files):
        raise DataError(f"{root}: holdout {holdout} leaves no training images (there are {len(files)})")
    xs, ys, skipped = _read(files, image_size, bad_images, max_pixels)
    _warn_skipped(root, skipped, len(files))
    _check_classes(root, classes, ys, skipped)
    holdout = holdout or max(len(xs) // 10, 1)
    if holdout >= len(xs):
        raise DataError(f"{root}: holdout {holdout} leaves no training images (there are {len(xs)} readable "
                        f"ones, {len(skipped)} skipped)")
    x, y = _tensors(xs, ys)
    return ImageData("imagefolder", x[:-holdout], y[:-holdout], x[-holdout:], y[-holdout:],
                     tuple(classes), crop_padding=pad, test_name=f"{holdout} held-out images",
                     skipped=tuple(skipped))
