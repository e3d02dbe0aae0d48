"""Train or evaluate AlexNet with pyalexnet's fused kernels: ``python -m pyalexnet.train``.

Examples:

    python -m pyalexnet.train                                   # generated shapes, no files needed
    python -m pyalexnet.train --dataset cifar10 --data-dir ../shared/datasets/cifar10 --plot cifar.png
    python -m pyalexnet.train --dataset cifar10 --backend cudnn     # the same net on PyTorch's ops
    python -m pyalexnet.train --dataset fashion-mnist --epochs 10 --log fmnist.jsonl
    python -m pyalexnet.train --dataset imagefolder --data-dir photos/ --variant imagenet \\
        --pretrained alexnet-owt.pth --freeze-features --epochs 5   # transfer learning
    python -m pyalexnet.train --dataset cifar10 --checkpoint-dir ckpt --resume latest --eval-only

Without arguments it trains the 32x32 ("cifar") variant on a generated 10-class task (shapes and
textures in random colours, so colour tells nothing) with our kernels, on the GPU if there is one.
At the end it prints a per-class precision / recall / F1 report, the confusion matrix and a summary.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

try:
    from tqdm import tqdm
except ImportError:  # a machine without it (a GPU box with no package registry): one line per epoch
    tqdm = None

import pyalexnet

from . import data, evaluate
from .checkpoint import CheckpointError, load_checkpoint, load_pretrained, save_checkpoint
from .models import BACKENDS, CUDA_KERNELS_MISSING, VARIANTS, alexnet
from .nn import SoftmaxCrossEntropyLoss


class _NoBar:
    """What the loop uses of a tqdm bar, for a machine without tqdm: the batches, nothing shown."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return iter(self.it)

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def option(default, help: str, **kw):
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class Config:
    # data
    dataset: str = option("synthetic", "dataset", choices=data.DATASETS)
    data_dir: Optional[str] = option(None, "dataset folder (cifar10: ../shared/datasets/cifar10; "
                                  "fashion-mnist: /usr/share/datasets/fashion-mnist)")
    holdout: Optional[int] = option(None, "test on the last N training images (default: 5000 for cifar10, "
                                 "whose test batch is held back; else the dataset's own test split)")
    synthetic_size: int = option(2000, "training images generated for --dataset synthetic (plus 20%% for test)")
    image_size: int = option(224, "imagefolder: pixels of the square each image is resized and cropped to")
    # model
    variant: Optional[str] = option(None, "network (default: imagenet for imagefolder, else cifar)",
                                 choices=VARIANTS)
    backend: str = option("custom", "conv layers and loss: our kernels (custom) or PyTorch's (cudnn)",
                       choices=BACKENDS)
    dropout: float = option(0.5, "dropout probability in the classifier")
    pretrained: Optional[str] = option(None, "start from this checkpoint or torchvision AlexNet state_dict; "
                                    "the last layer is replaced when the class count differs")
    freeze_features: bool = option(False, "train only the classifier (with --pretrained)")
    # optimisation
    epochs: int = option(10, "passes over the training set")
    batch_size: int = option(256, "images per step")
    optimizer: str = option("sgd", "SGD with Nesterov momentum, or AdamW", choices=("sgd", "adamw"))
    lr: float = option(0.05, "peak learning rate (for AdamW try 1e-3)")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum for SGD (--no-nesterov: plain)")
    weight_decay: float = option(5e-4, "L2 weight decay of conv and linear weights (not biases)")
    schedule: str = option("onecycle", "learning rate after warm-up: linear to 0 (onecycle), cosine to 0, "
                        "or constant", choices=("onecycle", "cosine", "constant"))
    warmup_epochs: float = option(1.0, "epochs of linear warm-up from 0 to --lr")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy, in [0, 1]")
    # execution
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda if available)")
    threads: Optional[int] = option(None, "CPU threads of torch (default: torch's, one per core)")
    bf16: bool = option(False, "bfloat16 autocast")
    channels_last: bool = option(False, "channels-last memory format for activations and weights")
    compile: bool = option(False, "torch.compile the model")
    seed: int = option(0, "seed of weights, shuffling and augmentation")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True)")
    progress: bool = option(True, "a tqdm progress bar per epoch (--no-progress: one line per epoch)")
    # evaluation and checkpoints
    eval_only: bool = option(False, "only evaluate (weights from --resume or --pretrained)")
    checkpoint_dir: Optional[str] = option(None, "write last.pt (every epoch) and best.pt here")
    resume: Optional[str] = option(None, "continue from a checkpoint file, or 'latest' in --checkpoint-dir")
    log: Optional[str] = option(None, "per-epoch metrics log: .csv, or JSON lines otherwise")
    plot: Optional[str] = option(None, "PNG of loss / accuracy curves; the confusion matrix goes beside it")


def parse_args(argv=None) -> Config:
    p = argparse.ArgumentParser(prog="python -m pyalexnet.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in dataclasses.fields(Config):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        if f.type in (bool, "bool"):
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=meta["help"])
            continue
        kind = {"int": int, "float": float}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
        p.add_argument(flag, type=kind, default=f.default, **meta)
    return Config(**vars(p.parse_args(argv)))


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at a step: linear warm-up, then the schedule."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(total - warmup, 1)
    return 1.0 - t if schedule == "onecycle" else 0.5 * (1.0 + math.cos(math.pi * t))


def main(argv=None, cfg: Optional[Config] = None) -> dict:
    cfg = cfg or parse_args(argv)
    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.eval_only and not (cfg.resume or cfg.pretrained):
        raise ValueError("--eval-only needs weights: --resume PATH|latest or --pretrained PATH")
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    dev = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                       "cpu" if cfg.device == "auto" else cfg.device)
    if dev.type == "cuda" and cfg.backend == "custom" and not pyalexnet.build_info()["cuda"]:
        sys.exit(f"error: {CUDA_KERNELS_MISSING}")

    # ---- data: uint8 images on the device, crops / flips / normalisation there, batch by batch ----
    ds = data.load_dataset(cfg.dataset, cfg.data_dir, cfg.holdout, cfg.synthetic_size, cfg.image_size,
                           cfg.seed)
    train_x, train_y = ds.train_x.to(dev), ds.train_y.to(dev)
    test_x, test_y = ds.test_x.to(dev), ds.test_y.to(dev)
    mean, std = (t.to(dev) for t in ds.mean_std)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def prepare(xb: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        if gen is not None:
            xb = data.augment(xb, ds.crop_padding, ds.flip, gen)
        return data.normalize(xb, mean, std).contiguous(memory_format=memory_format)

    # ---- model ----
    variant = cfg.variant or ("imagenet" if cfg.dataset == "imagefolder" else "cifar")
    model = alexnet(len(ds.classes), variant, cfg.backend, cfg.dropout)
    if cfg.pretrained:
        for line in load_pretrained(model, cfg.pretrained):
            print(line)
    if cfg.freeze_features:
        model.features.requires_grad_(False)
    model = model.to(dev, memory_format=memory_format)
    run = torch.compile(model) if cfg.compile else model
    criterion = (SoftmaxCrossEntropyLoss(label_smoothing=cfg.label_smoothing) if cfg.backend == "custom"
                 else torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing))
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if cfg.bf16 else nullcontext

    # ---- optimisation ----
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.dim() <= 1], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_x) / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    state = {"epoch": 0, "step": 0, "best_acc": 0.0, "history": []}
    if cfg.resume:
        path = Path(cfg.checkpoint_dir or ".") / "last.pt" if cfg.resume == "latest" else Path(cfg.resume)
        state = load_checkpoint(path, model, None if cfg.eval_only else optimizer)
        print(f"resumed from {path} after epoch {state['epoch']}")

    print(f"pyalexnet {pyalexnet.__version__}: AlexNet-{variant} on {dev}, backend {cfg.backend}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters ({sum(p.numel() for p in trainable):,} "
          f"trained); {ds.name}: {len(train_x)} training images, {len(test_x)} test ({ds.test_name})")

    def test() -> tuple[float, float, torch.Tensor]:
        pred, logits = evaluate.predict(run, test_x, 2 * cfg.batch_size, prepare, autocast)
        loss = F.cross_entropy(logits, test_y).item() if len(test_y) else float("nan")
        return loss, (pred == test_y).float().mean().item(), pred

    # ---- loop: one epoch at a time, its shuffle and augmentation seeded by (seed, epoch) ----
    log = MetricsLog(cfg.log) if cfg.log and not cfg.eval_only else None
    train_time, train_images = 0.0, 0
    while not cfg.eval_only and state["epoch"] < cfg.epochs:
        epoch = state["epoch"] + 1
        gen = torch.Generator(device=dev).manual_seed(cfg.seed * 100_003 + epoch)
        model.train()
        if cfg.freeze_features:  # frozen features: BatchNorm keeps its running statistics too
            model.features.eval()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev, dtype=torch.long)
        seen = 0
        bar = tqdm(data.batches(train_x, train_y, cfg.batch_size, True, gen), total=steps_per_epoch,
                   desc=f"epoch {epoch}/{cfg.epochs}", disable=not cfg.progress, leave=False,
                   dynamic_ncols=True) if tqdm is not None else _NoBar(
                       data.batches(train_x, train_y, cfg.batch_size, True, gen))
        for i, (xb, yb) in enumerate(bar):
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(state["step"], total_steps, warmup, cfg.schedule)
            with autocast():
                logits = run(prepare(xb, gen))
            loss = criterion(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] += 1
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
            if i % 10 == 9 or i == steps_per_epoch - 1:  # reading the sums waits for the device
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}",
                                img_s=f"{seen / (time.perf_counter() - t0):.0f}")
        bar.close()
        seconds = time.perf_counter() - t0
        train_time, train_images = train_time + seconds, train_images + seen
        test_loss, test_acc, _ = test()
        row = {"epoch": epoch, "train_loss": loss_sum.item() / seen, "train_acc": correct.item() / seen,
               "test_loss": test_loss, "test_acc": test_acc, "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(seconds, 2), "images_per_s": round(seen / seconds, 1)}
        state["epoch"] = epoch
        state["history"].append(row)
        print(f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"
              f"  test loss {test_loss:.4f} acc {100 * test_acc:.2f}%  {seconds:.1f} s "
              f"({row['images_per_s']:.0f} img/s)", flush=True)
        if log:
            log.write(row)
        # ---- checkpoint: last.pt every epoch, best.pt when the test accuracy improves ----
        is_best = test_acc > state["best_acc"]
        state["best_acc"] = max(state["best_acc"], test_acc)
        if cfg.checkpoint_dir:
            ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "config": dataclasses.asdict(cfg), "variant": variant, "classes": list(ds.classes),
                    **state}
            save_checkpoint(ckpt, Path(cfg.checkpoint_dir) / "last.pt")
            if is_best:
                save_checkpoint(ckpt, Path(cfg.checkpoint_dir) / "best.pt")

    # ---- evaluation: per-class report, confusion matrix, plots, summary ----
    test_loss, test_acc, pred = test()
    cm = evaluate.confusion_matrix(pred, test_y, len(ds.classes))
    print(f"\n{ds.name} {ds.test_name}: per-class report\n{evaluate.classification_report(cm, ds.classes)}")
    print(f"\nconfusion matrix (rows: true class, columns: predicted)\n{evaluate.format_confusion(cm, ds.classes)}")
    if cfg.plot:
        confusion_png = str(Path(cfg.plot).with_suffix("")) + "-confusion.png"
        if state["history"]:
            evaluate.plot_curves(state["history"], cfg.plot)
        evaluate.plot_confusion(cm, ds.classes, confusion_png)
        print(f"plots: {cfg.plot if state['history'] else '(no epochs, no curves)'}, {confusion_png}")
    summary = {"dataset": ds.name, "variant": variant, "backend": cfg.backend, "device": str(dev),
               "epochs": state["epoch"], "final_test_acc": test_acc, "test_loss": test_loss,
               "best_test_acc": max(state["best_acc"], test_acc), "train_seconds": round(train_time, 1),
               "images_per_s": round(train_images / train_time, 1) if train_time else None,
               "wall_seconds": round(time.perf_counter() - t_start, 1)}
    print("\nsummary: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in summary.items()))
    summary["confusion_matrix"] = cm
    return summary


class MetricsLog:
    """Appends one row per epoch to a CSV file (path ends in .csv) or a JSON-lines file."""

    def __init__(self, path: str):
        self.path, self.csv = Path(path), path.endswith(".csv")
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, row: dict) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with open(self.path, "a", newline="") as f:
            if self.csv:
                w = csv.DictWriter(f, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
            else:
                f.write(json.dumps(row) + "\n")


def cli(argv=None) -> None:
    """main() with a missing or malformed file reported as one line, not a traceback."""
    try:
        main(argv)
    except (data.DataError, CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    cli()
