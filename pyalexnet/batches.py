"""The trainer's data, batch by batch, as the model takes it: normalised float images on the device
in the run's memory format, with their labels.

Two sources with the same interface (``name``, ``classes``, ``test_name``, ``n_train``, ``n_test``,
``train_batches``, ``test_batches``, ``workers``):

- :class:`InMemory`: a dataset held on the device as uint8 (synthetic, CIFAR-10, Fashion-MNIST, a
  small image tree decoded once); each batch is cropped and flipped there, image by image in one
  gather, from the epoch's generator.
- :class:`Streamed`: an image tree read, decoded and augmented by worker processes batch by batch
  (:mod:`pyalexnet.stream`); chosen by ``--stream``, or for a tree whose decoded images would take more
  than a quarter of the memory available.
"""
from __future__ import annotations

import os
from typing import Iterator, Optional

import torch

from . import data, distributed
from .config import Config
from .images import ImageData
from .imagefolder import EXTENSIONS
from .stream import StreamTree

__all__ = ["InMemory", "Streamed", "build_data", "IMAGENET_MEAN_STD"]

# Streamed trees are normalised with ImageNet's statistics (a pass over the tree to measure its own
# would read every file once more).
IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


class InMemory:
    def __init__(self, ds: ImageData, dev: torch.device, memory_format: torch.memory_format):
        self.ds, self.dev, self.memory_format = ds, dev, memory_format
        self.train_x, self.train_y = ds.train_x.to(dev), ds.train_y.to(dev)
        self.test_x, self.test_y = ds.test_x.to(dev), ds.test_y.to(dev)
        self.mean, self.std = (t.to(dev) for t in ds.mean_std)
        self.name, self.classes, self.test_name = ds.name, ds.classes, ds.test_name
        self.n_train, self.n_test, self.workers = len(self.train_x), len(self.test_x), 0

    def prepare(self, xb: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        if gen is not None:
            xb = data.augment(xb, self.ds.crop_padding, self.ds.flip, gen)
        return data.normalize(xb, self.mean, self.std).contiguous(memory_format=self.memory_format)

    def train_batches(self, order: torch.Tensor, global_batch: int, start: int, gen: torch.Generator,
                      d: distributed.Dist, seed: int, epoch: int) -> Iterator[tuple]:
        """(input, labels, images in the global batch, worker seconds) of this process's share of each
        global batch of the epoch from batch `start` on."""
        for b in range(start, -(-len(order) // global_batch)):
            idx = order[b * global_batch:(b + 1) * global_batch]
            xb, yb = self.prepare(self.train_x[idx], gen), self.train_y[idx]
            lo, hi = data.shard(len(idx), d.rank, d.world)  # a short last batch split as evenly as it goes
            yield xb[lo:hi], yb[lo:hi], len(idx), 0.0

    def test_batches(self, batch_size: int) -> Iterator[tuple]:
        for i in range(0, self.n_test, batch_size):
            yield self.prepare(self.test_x[i:i + batch_size]), self.test_y[i:i + batch_size]


class Streamed:
    def __init__(self, tree: StreamTree, dev: torch.device, memory_format: torch.memory_format):
        self.tree, self.dev, self.memory_format = tree, dev, memory_format
        self.mean, self.std = (torch.tensor(v, device=dev) for v in IMAGENET_MEAN_STD)
        self.name, self.classes, self.test_name = "imagefolder", tuple(tree.classes), tree.test_name
        self.n_train, self.n_test, self.workers = len(tree.train), len(tree.test), tree.workers

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N, H, W, 3) from the workers -> normalised (N, 3, H, W) on the device."""
        x = images.to(self.dev, non_blocking=True).permute(0, 3, 1, 2)
        return data.normalize(x, self.mean, self.std).contiguous(memory_format=self.memory_format)

    def train_batches(self, order: torch.Tensor, global_batch: int, start: int, gen: torch.Generator,
                      d: distributed.Dist, seed: int, epoch: int) -> Iterator[tuple]:
        batches = self.tree.train_batches(order.tolist(), global_batch, start, seed, epoch)
        for b, (images, labels, seconds) in enumerate(batches, start):
            n_global = min(global_batch, len(order) - b * global_batch)
            yield self.prepare(images), labels.to(self.dev, non_blocking=True), n_global, seconds

    def test_batches(self, batch_size: int) -> Iterator[tuple]:
        for images, labels, _ in self.tree.test_batches(batch_size):
            yield self.prepare(images), labels.to(self.dev, non_blocking=True)


def build_data(cfg: Config, d: distributed.Dist, dev: torch.device):
    """The run's data: streamed for an image tree with --stream, or too large to hold; else in memory."""
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    if cfg.dataset == "imagefolder" and (cfg.stream or (cfg.stream is None and _too_large(cfg))):
        if not cfg.data_dir:
            raise data.DataError("--dataset imagefolder needs --data-dir (a folder of class folders)")
        tree = StreamTree(cfg.data_dir, cfg.image_size, cfg.holdout or 0, cfg.bad_images, workers=cfg.workers,
                          rank=d.rank, world=d.world, pin_memory=dev.type == "cuda")
        return Streamed(tree, dev, memory_format)
    ds = data.load_dataset(cfg.dataset, cfg.data_dir, cfg.holdout, cfg.synthetic_size, cfg.image_size,
                           cfg.seed, bad_images=cfg.bad_images)
    return InMemory(ds, dev, memory_format)


def _too_large(cfg: Config) -> bool:
    """Whether the tree's images, decoded to --image-size squares, would take more than a quarter of
    the memory available (counted from the file names: nothing is decoded)."""
    if not cfg.data_dir or not os.path.isdir(cfg.data_dir):
        return False
    n = sum(name.lower().endswith(EXTENSIONS) for _, _, names in os.walk(cfg.data_dir) for name in names)
    return n * cfg.image_size ** 2 * 3 > available_bytes() / 4


def available_bytes() -> int:
    """MemAvailable of /proc/meminfo (a large number where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62
