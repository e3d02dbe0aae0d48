"""Datasets of the trainer, read from local files only, and batches made on the device.

- ``synthetic``: generated here (:mod:`pyalexnet.synthetic`), no files.
- ``cifar10``: the "python version" layout (``data_batch_1`` .. ``data_batch_5``, ``test_batch``,
  ``batches.meta``), read with an unpickler that builds numpy arrays and nothing else.
- ``fashion-mnist``: the four idx ``.gz`` files of Debian's ``dataset-fashion-mnist``
  (/usr/share/datasets/fashion-mnist); 28x28 grey images padded to 32x32.
- ``imagefolder``: ``root/<class>/*.jpg|png`` (or ``root/train`` and ``root/val`` trees of them),
  decoded and resized once; see :mod:`pyalexnet.imagefolder`.

Every dataset is an :class:`ImageData` of uint8 N x C x H x W tensors, which the trainer moves to
the device once and indexes there, a shuffled batch at a time (:func:`shard` gives each process of a
data-parallel job its slice); :func:`augment` crops and flips a whole batch
at once on the device, :func:`normalize` makes the float input.
"""
from __future__ import annotations

import gzip
import io
import math
import pickle
import struct
import zlib
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from . import synthetic
from .imagefolder import MAX_PIXELS, load_imagefolder
from .images import BAD_IMAGES, DataError, ImageData, check_int

__all__ = ["ImageData", "DataError", "DATASETS", "BAD_IMAGES", "load_dataset", "shard", "augment",
           "normalize", "load_cifar10", "load_fashion_mnist", "RestrictedUnpickler"]

DATASETS = ("synthetic", "cifar10", "fashion-mnist", "imagefolder")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                         "sneaker", "bag", "ankle boot")


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------
class RestrictedUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's dicts of numpy arrays, lists and strings, refusing any other global
    (the way a crafted pickle runs code: os.system, builtins.eval, ...)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR-10 batch holds only numpy arrays, lists "
                "and strings")
        return super().find_class(module, name)


def _describe(v) -> str:
    """A short description of an unpickled value, for messages."""
    if v is None:
        return "none"
    if isinstance(v, np.ndarray):
        return f"a {v.dtype} array of shape {v.shape}"
    if isinstance(v, (list, tuple)):
        return f"a {type(v).__name__} of {len(v)}" + (f" starting with {v[0]!r:.40}" if len(v) else "")
    return f"{type(v).__name__} {v!r:.40}"


def _read_bytes(path: Path, what: str) -> bytes:
    """The bytes of path, or a DataError that says what is wrong with it and what was expected."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file (expected {what})") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder (expected {what})") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read it ({e.strerror or e}; expected {what})") from None


def _read_pickle(path: Path) -> dict:
    raw = _read_bytes(path, "a CIFAR-10 python-format batch")
    try:
        # From memory (a CIFAR-10 batch is 30 MB): the unpickler then never reads past the bytes there.
        d = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{path}: not a CIFAR-10 python-format pickle ({e})") from None
    except Exception as e:  # noqa: BLE001 -- untrusted bytes: any failure of the unpickler means a bad file
        raise DataError(f"{path}: not a CIFAR-10 python-format pickle ({type(e).__name__}: {e})") from None
    if not isinstance(d, dict):
        raise DataError(f"{path}: expected a pickled dict, got {type(d).__name__}")
    return {k.decode(errors="replace") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _cifar_batch(path: Path) -> tuple[Tensor, Tensor]:
    d = _read_pickle(path)
    data, labels = d.get("data"), d.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: expected 'data' as uint8 N x 3072 (R, G, B planes of 32x32), got {got}")
    y = None
    if isinstance(labels, (list, tuple, np.ndarray)):
        try:
            y = np.asarray(labels)
        except (ValueError, TypeError):  # ragged nesting
            y = None
    if y is None or y.ndim != 1 or (y.size and y.dtype.kind not in "iu"):
        raise DataError(f"{path}: expected 'labels' as a list of {len(data)} ints in 0..9, got "
                        f"{_describe(labels)}")
    if len(y) != len(data):
        raise DataError(f"{path}: expected 'labels', one per image ({len(data)}), got {len(y)}")
    y = torch.as_tensor(y.astype(np.int64))
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(f"{path}: labels must lie in 0..9, got {y.min().item()}..{y.max().item()}")
    return torch.from_numpy(data.copy()).view(-1, 3, 32, 32), y


def _check_folder(root: Path, what: str) -> None:
    if not root.exists():
        raise DataError(f"{root}: no such folder (expected {what})")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected {what})")


def _check_holdout(holdout) -> None:
    check_int("holdout", holdout, 0, " (0: the dataset's own test split)")


CIFAR10_LAYOUT = "CIFAR-10's python version: data_batch_1 .. data_batch_5, test_batch, batches.meta"


CIFAR10_HOLDOUT = 5000  # validation images when the test batch is not there (held back)


def load_cifar10(root, holdout: Optional[int] = None) -> ImageData:
    """CIFAR-10 from ``root``. holdout > 0: train on data_batch_1..5 less their last ``holdout``
    images, test on those; holdout == 0: train on all five, test on ``test_batch``; None (the
    default): ``test_batch`` where root has it, else the last CIFAR10_HOLDOUT training images."""
    root = Path(root)
    if holdout is None:
        holdout = 0 if (root / "test_batch").is_file() else CIFAR10_HOLDOUT
    _check_holdout(holdout)
    _check_folder(root, f"the folder of {CIFAR10_LAYOUT}")
    inner = root / "cifar-10-batches-py"
    if not (root / "data_batch_1").exists() and (inner / "data_batch_1").exists():
        raise DataError(f"{root}: no data_batch_1 here, but in {inner}: use that folder")
    parts = [_cifar_batch(root / f"data_batch_{i}") for i in range(1, 6)]
    x, y = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    meta = _read_pickle(root / "batches.meta")
    raw_names = meta.get("label_names")
    if not isinstance(raw_names, (list, tuple)) or len(raw_names) != 10:
        raise DataError(f"{root / 'batches.meta'}: expected 10 'label_names', got {_describe(raw_names)}")
    names = tuple(n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in raw_names)
    if holdout > 0:
        if holdout >= len(x):
            raise DataError(f"holdout {holdout} leaves no CIFAR-10 training images (there are {len(x)})")
        return ImageData("cifar10", x[:-holdout], y[:-holdout], x[-holdout:], y[-holdout:], names,
                         test_name=f"validation: last {holdout} training images")
    tx, ty = _cifar_batch(root / "test_batch")
    return ImageData("cifar10", x, y, tx, ty, names, test_name="test_batch")


# Fashion-MNIST's largest file is 47 MB uncompressed: reading stops past this (a gzip bomb of a few
# KiB can inflate to gigabytes).
IDX_MAX_BYTES = 256 << 20


def _read_idx(path: Path, ndim: int) -> Tensor:
    """An idx file (gzip'd): big-endian magic 0x00 0x00 0x08 ndim, ndim int32 sizes, uint8 data."""
    what = "a gzip'd idx file of Fashion-MNIST"
    packed = _read_bytes(path, what)
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(packed)) as f:
            raw = f.read(IDX_MAX_BYTES + 1)
    except EOFError as e:
        raise DataError(f"{path}: a truncated gzip file ({e})") from None
    except (OSError, ValueError, zlib.error) as e:  # gzip.BadGzipFile, bad CRC, corrupt stream, ...
        raise DataError(f"{path}: not a gzip file ({e})") from None
    if len(raw) > IDX_MAX_BYTES:
        raise DataError(f"{path}: inflates to more than {IDX_MAX_BYTES:,} bytes, larger than any "
                        f"Fashion-MNIST file (expected {what})")
    if len(raw) < 4 + 4 * ndim or raw[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f"{path}: expected an idx file of uint8 with {ndim} dimensions "
                        f"(magic 00 00 08 {ndim:02x}), got header {raw[:4].hex(' ')}")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    size = math.prod(dims)  # Python ints: np.prod of uint32s could wrap around to match
    if len(body) != size:
        raise DataError(f"{path}: header says {dims} = {size} bytes, file has {len(body)}")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*dims) if size else \
        torch.zeros(dims, dtype=torch.uint8)


def load_fashion_mnist(root=FASHION_MNIST_DIR) -> ImageData:
    """Fashion-MNIST's 60,000 training and 10,000 test images, zero-padded to 1 x 32 x 32."""
    root = Path(root)
    _check_folder(root, "the four idx .gz files of Fashion-MNIST, train-images-idx3-ubyte.gz ..." +
                  ("; apt-get install dataset-fashion-mnist" if root == Path(FASHION_MNIST_DIR) else ""))

    def split(prefix: str) -> tuple[Tensor, Tensor]:
        images, labels = root / f"{prefix}-images-idx3-ubyte.gz", root / f"{prefix}-labels-idx1-ubyte.gz"
        x = _read_idx(images, 3)
        if x.shape[1:] != (28, 28):
            raise DataError(f"{images}: expected 28x28 images (Fashion-MNIST), got "
                            f"{x.shape[1]}x{x.shape[2]}")
        y = _read_idx(labels, 1).long()
        if len(x) != len(y):
            raise DataError(f"{root}/{prefix}-*: {len(x)} images but {len(y)} labels")
        if len(y) and y.max() > 9:
            raise DataError(f"{labels}: labels must lie in 0..9, got {y.min().item()}..{y.max().item()}")
        return torch.nn.functional.pad(x.unsqueeze(1), (2, 2, 2, 2)), y

    (x, y), (tx, ty) = split("train"), split("t10k")
    return ImageData("fashion-mnist", x, y, tx, ty, FASHION_MNIST_CLASSES, crop_padding=2,
                     test_name="t10k test set")


def load_dataset(name: str, data_dir: Optional[str] = None, holdout: Optional[int] = None,
                 synthetic_size: int = 2000, image_size: int = 64, seed: int = 0, *,
                 bad_images: str = "error", max_pixels: Optional[int] = None) -> ImageData:
    """The named dataset (one of DATASETS). holdout: test on the last N training images
    (default: the dataset's own test split; for CIFAR-10 without its test batch, see load_cifar10).
    imagefolder only: bad_images ("error" or "skip") and max_pixels (None: imagefolder.MAX_PIXELS),
    see :func:`pyalexnet.imagefolder.load_imagefolder`."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; expected one of {DATASETS}")
    if bad_images not in BAD_IMAGES:
        raise ValueError(f"bad_images must be one of {BAD_IMAGES}, got {bad_images!r}")
    if holdout is not None:
        _check_holdout(holdout)
    if name == "synthetic":
        check_int("synthetic_size", synthetic_size, 1)
        n_test = max(synthetic_size // 5, 10)
        x, y = synthetic.generate(synthetic_size + n_test, seed=1000 + seed)
        return ImageData("synthetic", x[:-n_test], y[:-n_test], x[-n_test:], y[-n_test:],
                         synthetic.CLASSES, test_name=f"{n_test} generated images")
    if name == "cifar10":
        return load_cifar10(data_dir or "../shared/datasets/cifar10", holdout)
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir or FASHION_MNIST_DIR)
    if not data_dir:
        raise DataError("--dataset imagefolder needs --data-dir (a folder of class folders)")
    return load_imagefolder(data_dir, image_size, holdout or 0, bad_images=bad_images,
                            max_pixels=MAX_PIXELS if max_pixels is None else max_pixels)


# ------------------------------------------------------------------------------------------------
# Batches on the device
# ------------------------------------------------------------------------------------------------
def shard(n: int, rank: int, world: int) -> tuple[int, int]:
    """Process `rank`'s slice [lo, hi) of a global batch of n images split over `world` processes:
    in rank order, sizes differing by at most one. (The trainer draws each epoch's order with
    torch.randperm on the device and indexes the uint8 images there, a global batch at a time.)"""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


def augment(x: Tensor, padding: int, flip: bool, gen: Optional[torch.Generator] = None) -> Tensor:
    """Random crops (after zero padding by ``padding``) and horizontal flips of a uint8 batch
    N x C x H x W, each image its own, in one gather on x's device. Returns N x C x H x W
    (channels_last strides)."""
    n, c, h, w = x.shape
    if padding == 0 and not flip:
        return x
    dev = x.device
    if padding:
        x = torch.nn.functional.pad(x, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n, 1), device=dev, generator=gen)
    dx = torch.randint(0, 2 * padding + 1, (n, 1), device=dev, generator=gen)
    rows = dy + torch.arange(h, device=dev)                          # N x H
    cols = dx + torch.arange(w, device=dev)                          # N x W
    if flip:
        flipped = torch.rand(n, 1, device=dev, generator=gen) < 0.5
        cols = torch.where(flipped, cols.flip(1), cols)
    out = x[torch.arange(n, device=dev).view(n, 1, 1), :, rows.view(n, h, 1), cols.view(n, 1, w)]
    return out.permute(0, 3, 1, 2)                                   # N x H x W x C -> N x C x H x W


def normalize(x: Tensor, mean: Tensor, std: Tensor, channels: int = 3) -> Tensor:
    """uint8 N x c x H x W -> float32 N x channels x H x W, (x / 255 - mean) / std per channel
    (a grey image is repeated to `channels`)."""
    x = x.float().div_(255)
    x = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    if x.shape[1] == 1 and channels != 1:
        x = x.expand(-1, channels, -1, -1)
    return x
