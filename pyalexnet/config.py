"""The trainer's configuration: one dataclass whose fields are the command-line flags (each with its
help text), the parser that builds it, and the checks that refuse nonsense before any work starts."""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

from . import data
from .layers import INPUT_SIZE
from .models import BACKENDS, VARIANTS

__all__ = ["Config", "ConfigError", "parse_args", "check_config", "SAME_RUN"]


# --recipe: the values it gives the flags the command line leaves out.
RECIPES = {
    "ours": {},
    "imagenet": dict(epochs=90, batch_size=256, optimizer="sgd", lr=0.01, momentum=0.9, nesterov=False,
                     weight_decay=1e-4, schedule="step", lr_step_epochs=30, lr_gamma=0.1, warmup_epochs=0.0,
                     label_smoothing=0.0),
}


def _flags(values: dict) -> str:
    return ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items()).replace("%", "%%")


def option(default, help: str, **kw):
    return field(default=default, metadata=dict(help=help, **kw))


@dataclass
class Config:
    # data
    dataset: str = option("synthetic", "dataset", choices=data.DATASETS)
    data_dir: Optional[str] = option(None, "dataset folder (cifar10: ../shared/datasets/cifar10; "
                                  "fashion-mnist: /usr/share/datasets/fashion-mnist)")
    holdout: Optional[int] = option(None, "test on the last N training images, 0: on the dataset's own test "
                                 "split (default: cifar10's test_batch where --data-dir has it, else its "
                                 "last 5000 training images; the other datasets' own test split)")
    synthetic_size: int = option(2000, "training images generated for --dataset synthetic (plus 20%% for test)")
    image_size: int = option(INPUT_SIZE["imagenet"], "imagefolder: pixels of the square each image is resized and cropped to")
    stream: Optional[bool] = option(None, "imagefolder: read, decode and augment the images in worker processes, "
                                    "batch by batch (RandomResizedCrop + flip; test: resize + centre crop), "
                                    "instead of decoding the tree once into memory (--no-stream); "
                                    "by default when the decoded tree would fill more than a quarter of the "
                                    "available memory")
    workers: Optional[int] = option(None, "--stream: decoding processes (default: one per core, at most 8; 0: "
                                 "decode in the training process)")
    bad_images: str = option("error", "imagefolder: a truncated, corrupt or oversized image stops the run "
                          "(error) or is reported and left out (skip)", choices=("error", "skip"))
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
    recipe: str = option("ours", "the values of the flags below that the command line leaves out: ours (as "
                      "listed), or imagenet, torchvision's reference recipe for AlexNet: "
                      f"{_flags(RECIPES['imagenet'])}", choices=tuple(RECIPES))
    epochs: int = option(10, "passes over the training set")
    batch_size: int = option(256, "images per step")
    optimizer: str = option("sgd", "SGD with Nesterov momentum, or AdamW", choices=("sgd", "adamw"))
    lr: float = option(0.05, "peak learning rate (for AdamW try 1e-3)")
    momentum: float = option(0.9, "SGD momentum")
    nesterov: bool = option(True, "Nesterov momentum for SGD (--no-nesterov: plain)")
    weight_decay: float = option(5e-4, "L2 weight decay of conv and linear weights (not biases)")
    schedule: str = option("onecycle", "learning rate after warm-up: linear to 0 (onecycle), cosine to 0, "
                        "constant, or step (x --lr-gamma every --lr-step-epochs)",
                        choices=("onecycle", "cosine", "constant", "step"))
    lr_step_epochs: int = option(30, "--schedule step: epochs between learning-rate drops")
    lr_gamma: float = option(0.1, "--schedule step: the factor of each drop")
    warmup_epochs: float = option(1.0, "epochs of linear warm-up from 0 to --lr")
    label_smoothing: float = option(0.1, "label smoothing of the cross-entropy, in [0, 1]")
    # execution
    device: str = option("auto", "cpu, cuda, cuda:N, or auto (cuda if available)")
    threads: Optional[int] = option(None, "CPU threads of torch (default: torch's, one per core)")
    bf16: Optional[bool] = option(None, "bfloat16 autocast (default: on where the hardware computes bfloat16 "
                                  "natively: a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX)")
    channels_last: bool = option(False, "channels-last memory format for activations and weights")
    compile: bool = option(False, "torch.compile the model")
    seed: int = option(0, "seed of weights, shuffling and augmentation")
    deterministic: bool = option(False, "torch.use_deterministic_algorithms(True)")
    progress: Optional[bool] = option(None, "a tqdm progress bar per epoch (default: when the output is a "
                                      "terminal; --no-progress: one line per epoch)")
    # evaluation and checkpoints
    eval_only: bool = option(False, "only evaluate (weights from --resume or --pretrained)")
    checkpoint_dir: Optional[str] = option(None, "write checkpoints here: every epoch (and every "
                                        "--checkpoint-every steps) ckpt-e<epoch>-s<step>.pt, the last "
                                        "--keep-checkpoints kept, and best.pt. A signal's checkpoint goes "
                                        "to ./checkpoints without it")
    checkpoint_every: int = option(0, "also checkpoint every N optimiser steps (0: at epoch ends only); "
                                      "without --checkpoint-dir, into ./checkpoints")
    keep_checkpoints: int = option(3, "rotating checkpoints kept (best.pt besides)")
    resume: Optional[str] = option(None, "continue exactly where a run stopped: a checkpoint file, a folder "
                                "(its newest readable checkpoint), or 'latest' (in --checkpoint-dir)")
    log: Optional[str] = option(None, "per-epoch metrics log: .csv, or JSON lines otherwise")
    step_log: Optional[str] = option(None, "per-step log (JSON lines: step, epoch, batch, loss, lr)")
    tensorboard: Optional[str] = option(None, "write TensorBoard scalars to this folder: losses, top-1 and top-5 "
                                     "accuracy, lr, images/s (needs the tensorboard package)")
    plot: Optional[str] = option(None, "PNG of loss / accuracy curves; the confusion matrix goes beside it")


def parse_args(argv=None, description: str = "") -> Config:
    """The command line as a Config: each flag given, else the --recipe's value, else its default."""
    cfg = Config(**vars(_parser(description).parse_args(argv)))
    given = vars(_parser(description, defaults=False).parse_args(argv))
    for name, value in RECIPES[cfg.recipe].items():
        if name not in given:
            setattr(cfg, name, value)
    return cfg


def _parser(description: str, defaults: bool = True) -> argparse.ArgumentParser:
    """The flags of Config's fields; without defaults, parsing gives only the flags given."""
    p = argparse.ArgumentParser(prog="python -m pyalexnet.train", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=None if defaults else argparse.SUPPRESS)
    for f in dataclasses.fields(Config):
        flag, meta = "--" + f.name.replace("_", "-"), dict(f.metadata)
        default = f.default if defaults else argparse.SUPPRESS
        if f.type in (bool, "bool", "Optional[bool]"):
            action = p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                    help=meta["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type).replace("Optional[", "").rstrip("]"), str)
            action = p.add_argument(flag, type=kind, default=default, **meta)
        if f.default is not None and "default" not in action.help:  # (Python 3.10 adds it to booleans)
            action.help += " (default: %(default)s)"
    return p


class ConfigError(ValueError):
    """A command-line value that makes no sense; the message says which and what is accepted."""


def check_config(cfg: Config) -> None:
    """Refuses nonsense before any work starts, naming the flag and what it accepts."""
    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise ConfigError(msg)

    need(cfg.epochs >= 0, f"--epochs {cfg.epochs}: expected 0 (evaluate only) or more")
    need(cfg.batch_size >= 1, f"--batch-size {cfg.batch_size}: expected a positive number of images per step")
    need(cfg.lr > 0 and math.isfinite(cfg.lr), f"--lr {cfg.lr}: expected a positive learning rate")
    need(0 <= cfg.momentum < 1, f"--momentum {cfg.momentum}: expected a value in [0, 1)")
    need(cfg.weight_decay >= 0, f"--weight-decay {cfg.weight_decay}: expected 0 or more")
    need(0 <= cfg.label_smoothing <= 1, f"--label-smoothing {cfg.label_smoothing}: expected a value in [0, 1]")
    need(0 <= cfg.dropout < 1, f"--dropout {cfg.dropout}: expected a probability in [0, 1)")
    need(cfg.warmup_epochs >= 0, f"--warmup-epochs {cfg.warmup_epochs}: expected 0 or more")
    need(cfg.lr_step_epochs >= 1, f"--lr-step-epochs {cfg.lr_step_epochs}: expected 1 or more")
    need(0 < cfg.lr_gamma <= 1, f"--lr-gamma {cfg.lr_gamma}: expected a factor in (0, 1]")
    need(cfg.threads is None or cfg.threads >= 1, f"--threads {cfg.threads}: expected 1 or more")
    need(cfg.synthetic_size >= 10, f"--synthetic-size {cfg.synthetic_size}: expected at least 10 images")
    need(cfg.holdout is None or cfg.holdout >= 0, f"--holdout {cfg.holdout}: expected 0 or more images")
    need(cfg.image_size >= 32, f"--image-size {cfg.image_size}: expected at least 32 pixels")
    need(not cfg.stream or cfg.dataset == "imagefolder", f"--stream reads image trees: --dataset imagefolder, "
                                                         f"not {cfg.dataset}")
    need(cfg.workers is None or cfg.workers >= 0, f"--workers {cfg.workers}: expected 0 or more")
    need(cfg.checkpoint_every >= 0, f"--checkpoint-every {cfg.checkpoint_every}: expected 0 (epochs only) "
                                    "or a number of steps")
    need(cfg.keep_checkpoints >= 1, f"--keep-checkpoints {cfg.keep_checkpoints}: expected 1 or more")
    need(not cfg.eval_only or bool(cfg.resume or cfg.pretrained),
         "--eval-only needs weights: --resume PATH|latest or --pretrained PATH")
    need(not cfg.freeze_features or bool(cfg.pretrained or cfg.resume),
         "--freeze-features needs --pretrained PATH (frozen random features would learn nothing)")
    if cfg.variant == "imagenet" and cfg.dataset != "imagefolder":
        side = INPUT_SIZE["imagenet"]
        need(False, f"--variant imagenet takes {side}x{side} images; --dataset {cfg.dataset} has 32x32 ones "
                    "(use --variant cifar)")


# Config fields that must match a checkpoint's for the resumed run to be the one that stopped.
SAME_RUN = ("dataset", "data_dir", "holdout", "synthetic_size", "image_size", "variant", "backend", "dropout",
             "batch_size", "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
             "lr_step_epochs", "lr_gamma", "warmup_epochs", "label_smoothing", "bf16", "channels_last", "seed")
