"""Image trees streamed from disk: files read, decoded and augmented by DataLoader worker processes,
batch by batch, so that memory does not grow with the number of images (ImageNet's 1.28 M included).

The layouts and untrusted-file rules are :mod:`pyalexnet.imagefolder`'s (``root/train`` + ``root/val``,
or ``root/<class>`` with a held-out share of the files; sorted class folders, as torchvision's
``ImageFolder``; JPEG and PNG, grayscale, palette and CMYK converted to RGB, EXIF orientation
applied; a pixel count over ``max_pixels`` refused from the header). Training images get the ImageNet
augmentation, RandomResizedCrop(size, scale 0.08-1, ratio 3/4-4/3) and a horizontal flip, drawn
from a generator seeded by (seed, epoch, image), so that a resumed run sees the same crops as one
never stopped; test images are resized (shorter side size x 256/224) and centre-cropped. Batches
leave the workers as uint8 (N, size, size, 3); normalisation happens on the device.

A bad file never raises in a worker: its reason travels with the batch, and the main process stops
with a DataError naming it (``bad_images="error"``) or leaves it out with a warning (``"skip"``). A
worker that dies, or a batch that takes longer than ``timeout`` seconds, becomes one DataError naming
the files the workers were reading.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from .data import shard
from .images import DataError
from .imagefolder import MAX_PIXELS, decode_file, scan_tree

__all__ = ["StreamTree", "ImageFiles", "EpochBatches", "random_resized_box", "default_workers"]

EVAL_RESIZE = 256 / 224   # test images: shorter side to size x this, then the centre size x size
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)
MAX_WORKERS = 64          # the in-flight table's size


def default_workers() -> int:
    """One decoding process per core this process may run on, at most 8."""
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def random_resized_box(w: int, h: int, rng: random.Random) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop box (left, top, width, height) in a w x h image: ten tries at a
    random area share in SCALE and log-uniform aspect ratio in RATIO, then the centre crop of the
    ratio clamped to RATIO."""
    area, log_ratio = w * h, (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target, ratio = area * rng.uniform(*SCALE), math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, w - cw), rng.randint(0, h - ch), cw, ch
    if w / h < RATIO[0]:
        cw, ch = w, round(w / RATIO[0])
    elif w / h > RATIO[1]:
        cw, ch = round(h * RATIO[1]), h
    else:
        cw, ch = w, h
    return (w - cw) // 2, (h - ch) // 2, cw, ch


def augment_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


def _train_transform(size: int, aug_seed: int) -> Callable:
    def transform(im):
        from PIL import Image
        rng = random.Random(aug_seed)
        left, top, cw, ch = random_resized_box(*im.size, rng)
        im = im.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
        if rng.random() < 0.5:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        return np.array(im, dtype=np.uint8)  # a writable copy (torch.from_numpy)
    return transform


def _test_transform(size: int) -> Callable:
    def transform(im):
        from PIL import Image
        w, h = im.size
        crop = size * min(w, h) / round(size * EVAL_RESIZE)  # the centre crop, in the image's pixels
        box = ((w - crop) / 2, (h - crop) / 2, (w + crop) / 2, (h + crop) / 2)
        return np.array(im.resize((size, size), Image.BILINEAR, box=box), dtype=np.uint8)
    return transform


class ImageFiles(Dataset):
    """Item (index, augmentation seed or None) -> (uint8 size x size x 3 image, or an empty tensor for a
    bad file; label; index; seconds the worker spent on it; "" or why the file is bad). Seed None: the
    test transform. Each worker notes the index it is reading in a shared table (`reading`)."""

    def __init__(self, files: list[tuple[Path, int]], size: int, max_pixels: int = MAX_PIXELS,
                 decode: Callable = decode_file):
        self.paths = np.array([str(p) for p, _ in files])  # one buffer: no per-path object in the workers
        self.labels = torch.tensor([label for _, label in files], dtype=torch.int64)
        self.size, self.max_pixels, self.decode = size, max_pixels, decode
        self.reading = torch.full((MAX_WORKERS,), -1, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: tuple[int, Optional[int]]):
        i, aug_seed = key
        info = get_worker_info()
        slot = info.id % MAX_WORKERS if info is not None else 0
        self.reading[slot] = i
        t0 = time.perf_counter()
        transform = _test_transform(self.size) if aug_seed is None else _train_transform(self.size, aug_seed)
        out = self.decode(self.paths[i], self.max_pixels, transform)
        self.reading[slot] = -1
        seconds = time.perf_counter() - t0
        if isinstance(out, str):
            return torch.empty(0, dtype=torch.uint8), int(self.labels[i]), i, seconds, out
        return torch.from_numpy(out), int(self.labels[i]), i, seconds, ""

    def being_read(self) -> list[str]:
        return [str(self.paths[i]) for i in self.reading.tolist() if i >= 0]


def collate(items: list) -> tuple:
    """A batch: the good images stacked (N, size, size, 3), their labels and indices, the workers'
    seconds for the whole batch, and (index, reason) of each bad file."""
    good = [it for it in items if not it[4]]
    images = torch.stack([it[0] for it in good]) if good else torch.empty(0, dtype=torch.uint8)
    return (images, torch.tensor([it[1] for it in good], dtype=torch.int64),
            torch.tensor([it[2] for it in good], dtype=torch.int64), sum(it[3] for it in items),
            [(it[2], it[4]) for it in items if it[4]])


class EpochBatches(Sampler):
    """This process's share of each global batch of an epoch, from batch `start` on: lists of
    (index, augmentation seed) keys, or (index, None) for test batches. Set `plan` before iterating."""

    def __init__(self, rank: int = 0, world: int = 1):
        self.rank, self.world = rank, world
        self.order, self.global_batch, self.start, self.seeds = [], 1, 0, None

    def plan(self, order: list[int], global_batch: int, start: int = 0,
             seeds: Optional[Callable[[int], int]] = None) -> None:
        self.order, self.global_batch, self.start, self.seeds = order, global_batch, start, seeds

    def __len__(self) -> int:
        return max(math.ceil(len(self.order) / self.global_batch) - self.start, 0)

    def __iter__(self) -> Iterator[list]:
        for b in range(self.start, self.start + len(self)):
            idx = self.order[b * self.global_batch:(b + 1) * self.global_batch]
            lo, hi = shard(len(idx), self.rank, self.world)
            yield [(i, self.seeds(i) if self.seeds else None) for i in idx[lo:hi]]


class StreamTree:
    """An image tree streamed from disk: its classes, files, and the loaders of its batches."""

    def __init__(self, root, size: int, holdout: int = 0, bad_images: str = "error", max_pixels: int = MAX_PIXELS,
                 workers: Optional[int] = None, rank: int = 0, world: int = 1, pin_memory: bool = False,
                 timeout: float = 300.0, decode: Callable = decode_file):
        self.root, self.size, self.bad_images = Path(root), size, bad_images
        self.classes, train_files, test_files, self.test_name = scan_tree(self.root, holdout)
        self.train, self.test = (ImageFiles(f, size, max_pixels, decode) for f in (train_files, test_files))
        self.workers = default_workers() if workers is None else workers
        self.skipped: list[tuple[str, str]] = []
        self.train_sampler, self.test_sampler = EpochBatches(rank, world), EpochBatches()
        kw = dict(num_workers=self.workers, collate_fn=collate, pin_memory=pin_memory,
                  timeout=timeout if self.workers else 0, persistent_workers=self.workers > 0,
                  prefetch_factor=4 if self.workers else None)
        self.train_loader = DataLoader(self.train, batch_sampler=self.train_sampler, **kw)
        self.test_loader = DataLoader(self.test, batch_sampler=self.test_sampler, **kw)

    def train_batches(self, order: list[int], global_batch: int, start: int, seed: int, epoch: int) -> Iterator:
        """(uint8 images, labels, worker seconds) of this process's share of each global batch."""
        self.train_sampler.plan(order, global_batch, start, lambda i: augment_seed(seed, epoch, i))
        yield from self._batches(self.train_loader, self.train)

    def test_batches(self, batch_size: int) -> Iterator:
        self.test_sampler.plan(list(range(len(self.test))), batch_size)
        yield from self._batches(self.test_loader, self.test)

    def _batches(self, loader: DataLoader, files: ImageFiles) -> Iterator:
        it = iter(loader)
        while True:
            try:
                images, labels, _, seconds, bad = next(it)
            except StopIteration:
                return
            except RuntimeError as e:  # a worker that died, or a batch past the timeout
                if "DataLoader" not in str(e):
                    raise
                raise DataError(f"an image-decoding worker failed ({str(e).splitlines()[0]}) while reading "
                                f"{', '.join(files.being_read()) or 'no file'} under {self.root}") from None
            for i, reason in bad:
                self._bad(str(files.paths[i]), reason)
            yield images, labels, seconds

    def _bad(self, path: str, reason: str) -> None:
        if self.bad_images == "error":
            raise DataError(f"{path}: {reason} (--bad-images skip leaves such files out)")
        if (path, reason) not in self.skipped:
            self.skipped.append((path, reason))
            print(f"warning: skipped bad image {path}: {reason}", file=sys.stderr, flush=True)
