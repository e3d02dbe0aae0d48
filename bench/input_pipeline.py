"""The streamed input pipeline against torchvision's, side by side: `python bench/input_pipeline.py`.

    python bench/input_pipeline.py                        # 600 generated 500 x 375 JPEGs, 2 workers
    python bench/input_pipeline.py --data-dir TREE --workers 8 --json r.json

Ours: pyalexnet.stream.StreamTree (the trainer's --stream): Pillow decode, RandomResizedCrop(224) +
horizontal flip in the workers, uint8 batches. Theirs: torchvision.datasets.ImageFolder with
transforms.RandomResizedCrop(224), RandomHorizontalFlip() and PILToTensor() through a DataLoader of
the same worker count and batch size (persistent workers, prefetch 4). Both are checked first (the
same images per epoch, batches of the right shape), then timed over whole epochs, alternating, after
one warm-up epoch each: images/s, median of --rounds. Needs torchvision.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pyalexnet.stream import StreamTree, default_workers


def make_tree(root: Path, n: int, classes: int = 10) -> Path:
    """n JPEGs of 500 x 375 (ImageNet's typical size) in `classes` folders: smooth colour fields with
    noise, so that the files are photo-sized (about 40 KB), not noise-sized."""
    from PIL import Image
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:375, 0:500]
    for i in range(n):
        d = root / f"class{i % classes:02d}"
        d.mkdir(parents=True, exist_ok=True)
        base = rng.uniform(0, 255, 3) + 60 * np.sin(xx / rng.uniform(20, 80))[..., None] * rng.uniform(-1, 1, 3)
        a = np.clip(base + rng.normal(0, 8, (375, 500, 3)) + yy[..., None] / 6, 0, 255).astype(np.uint8)
        Image.fromarray(a).save(d / f"{i}.jpg", quality=90)
    return root


def theirs(root: Path, workers: int, batch: int):
    from torchvision import datasets, transforms
    t = transforms.Compose([transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
                            transforms.PILToTensor()])
    ds = datasets.ImageFolder(str(root), transform=t)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, prefetch_factor=4 if workers else None)
    return lambda: ((x, y) for x, y in loader), len(ds)


def ours(root: Path, workers: int, batch: int):
    tree = StreamTree(root, 224, holdout=1, workers=workers)  # (holdout: the flat layout tests one file)
    n, epoch = len(tree.train), [0]

    def one_epoch():
        epoch[0] += 1
        order = torch.randperm(n).tolist()
        return ((x, y) for x, y, _ in tree.train_batches(order, batch, 0, seed=0, epoch=epoch[0]))
    return one_epoch, n


def check(name: str, epoch, n: int) -> None:
    """One epoch: every image once, in batches of 224 x 224 x 3 uint8 (either channel order)."""
    seen = 0
    for x, y in epoch():
        assert x.dtype == torch.uint8 and sorted(x.shape[1:]) == [3, 224, 224], (name, tuple(x.shape))
        seen += len(y)
    assert seen == n, f"{name}: {seen} images in an epoch of {n}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", help="an image tree (default: one generated in a temporary folder)")
    p.add_argument("--images", type=int, default=600, help="images of the generated tree")
    p.add_argument("--workers", type=int, default=default_workers(), help="decoding processes (both)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="timed epochs of each, alternating")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args(argv)
    try:
        import torchvision
    except Exception as e:  # noqa: BLE001 - ImportError, or a build that does not fit this torch
        sys.exit(f"error: the comparison needs torchvision ({type(e).__name__}: {e})")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_dir) if args.data_dir else make_tree(Path(tmp) / "tree", args.images)
        pipelines = {"ours": ours(root, args.workers, args.batch_size),
                     "torchvision": theirs(root, args.workers, args.batch_size)}
        for name, (epoch, n) in pipelines.items():
            check(name, epoch, n)  # also the warm-up: the workers start
        rates = {name: [] for name in pipelines}
        for _ in range(args.rounds):
            for name, (epoch, n) in pipelines.items():
                t0 = time.perf_counter()
                for _ in epoch():
                    pass
                rates[name].append(n / (time.perf_counter() - t0))
    result = {"images": pipelines["ours"][1], "workers": args.workers, "batch_size": args.batch_size,
              "torch": torch.__version__, "torchvision": torchvision.__version__,
              "images_per_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
              "rounds": {k: [round(r, 1) for r in v] for k, v in rates.items()}}
    result["speedup"] = round(result["images_per_s"]["ours"] / result["images_per_s"]["torchvision"], 3)
    print(f"{result['images']} images, {args.workers} workers, batch {args.batch_size}: ours "
          f"{result['images_per_s']['ours']:.0f} images/s, torchvision {result['images_per_s']['torchvision']:.0f} "
          f"images/s, ours / theirs {result['speedup']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
