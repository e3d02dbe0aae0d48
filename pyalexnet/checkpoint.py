"""Checkpoints of the trainer: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists, tuples and dicts only, holding everything
a run needs to continue exactly where it stopped: ``model`` and ``optimizer`` state_dicts, ``epoch``
(epochs completed), ``step`` (optimiser steps taken), ``batch`` (batches done of the epoch under way,
0 at an epoch's end) and ``epoch_state`` (that epoch's data order, its shuffle/augmentation generator
and its running loss/accuracy sums), ``rng`` (every random generator: torch's CPU and CUDA ones,
Python's, numpy's), ``best_acc``, ``history`` (one dict per epoch), ``config``, ``variant``,
``classes``, ``world_size`` and ``batch_size``. (The trainer's mixed precision is bfloat16 autocast,
which needs no gradient scaler, so there is no scaler state to keep.)

In a checkpoint folder the trainer keeps the last K of them, ``ckpt-e<epoch>-s<step>.pt``, and
``best.pt``; :func:`read_latest` takes the newest that reads, reporting and passing over a corrupt
or truncated one. ``load_pretrained`` also takes a bare state_dict, such as torchvision's AlexNet
weights file.
"""
from __future__ import annotations

import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "load_pretrained", "CheckpointError", "checkpoint_path",
           "list_checkpoints", "prune_checkpoints", "read_latest", "read_checkpoint", "apply_checkpoint",
           "rng_state", "set_rng_state", "RunState", "EpochState"]

LAST_LAYER = "classifier.6."


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model; the message names it."""


@dataclass
class EpochState:
    """An epoch cut short by a checkpoint: its data order, its shuffle/augmentation generator's state,
    its running sums (loss sum, correct, images; float64) and the seconds it has taken so far."""
    order: torch.Tensor
    gen: torch.Tensor
    sums: torch.Tensor
    seconds: float

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class RunState:
    """Where a run stands: what the trainer updates as it goes, a checkpoint keeps, and a resumed run
    starts from. The last four fields describe the run that wrote a checkpoint (read on resume)."""
    epoch: int = 0                          # epochs completed
    step: int = 0                           # optimiser steps taken
    batch: int = 0                          # batches done of the epoch under way (0 at an epoch's end)
    epoch_state: Optional[EpochState] = None
    best_acc: float = 0.0
    history: list = field(default_factory=list)  # one row (dict) per epoch
    rng: Optional[list] = None              # every rank's random generators (rng_state())
    world_size: int = 1
    batch_size: Optional[int] = None
    config: dict = field(default_factory=dict)

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> "RunState":
        """The state a checkpoint holds; keys an older checkpoint lacks take their defaults."""
        state = cls(**{f.name: ckpt[f.name] for f in fields(cls) if ckpt.get(f.name) is not None})
        if isinstance(state.epoch_state, dict):
            state.epoch_state = EpochState(**state.epoch_state)
        return state

    def to_checkpoint(self) -> dict:
        """The checkpoint's keys for this state (plain types only: torch.load(weights_only=True))."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["epoch_state"] = self.epoch_state and self.epoch_state.to_dict()
        return out


def save_checkpoint(obj: dict, path) -> None:
    """torch.save(obj) to path atomically: a temporary file in the same folder, fsync'd, then
    os.replace, so a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def _read(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected a pyalexnet checkpoint or a state_dict)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, a zip that is not torch's, refused globals, ...
        raise CheckpointError(f"{path}: not a checkpoint that torch.load(weights_only=True) reads ({e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (checkpoint or state_dict), got {type(obj).__name__}")
    return obj


_NAME = re.compile(r"^ckpt-e(\d+)-s(\d+)\.pt$")


def checkpoint_path(directory, epoch: int, step: int) -> Path:
    """Where the checkpoint after `step` steps (in epoch `epoch`) goes: names sort by step."""
    return Path(directory) / f"ckpt-e{epoch:04d}-s{step:09d}.pt"


def list_checkpoints(directory) -> list[Path]:
    """The rotating checkpoints in directory, newest (most steps) first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(2)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def prune_checkpoints(directory, keep: int) -> None:
    """Deletes all but the newest `keep` rotating checkpoints (best.pt is not one of them)."""
    for old in list_checkpoints(directory)[max(keep, 1):]:
        try:
            old.unlink()
        except FileNotFoundError:
            pass


def read_checkpoint(path) -> dict:
    """A trainer checkpoint file, read safely; CheckpointError (naming it) when it is not one."""
    ckpt = _read(path)
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: a state_dict, not a trainer checkpoint (use --pretrained for it)")
    return ckpt


def read_latest(target, warn=None) -> tuple[Path, dict]:
    """The newest readable checkpoint: target is a checkpoint folder (its rotating checkpoints, then
    best.pt) or a file. A corrupt or truncated one is reported through warn (default: a
    line on stderr) with its path and the reason, and the previous one is tried."""
    warn = warn or (lambda msg: print(msg, file=sys.stderr, flush=True))
    target = Path(target)
    if target.is_file():
        return target, read_checkpoint(target)
    if not target.is_dir():
        raise CheckpointError(f"{target}: no such checkpoint file or folder")
    candidates = list_checkpoints(target) + [p for p in (target / "best.pt",) if p.is_file()]
    for path in candidates:
        try:
            return path, read_checkpoint(path)
        except CheckpointError as e:
            warn(f"warning: skipping an unreadable checkpoint: {e}")
    raise CheckpointError(f"{target}: no readable checkpoint in it "
                          f"({len(candidates)} tried; expected ckpt-e*-s*.pt files written by the trainer)")


def apply_checkpoint(ckpt: dict, path, model: torch.nn.Module, optimizer=None) -> RunState:
    """Loads a read checkpoint into model (and optimizer); returns the rest of its state."""
    try:
        model.load_state_dict(ckpt["model"])
        if optimizer is not None and "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not fit this model / optimiser: {e}") from None
    return RunState.from_checkpoint(ckpt)


def load_checkpoint(path, model: torch.nn.Module, optimizer=None) -> RunState:
    """Loads the trainer checkpoint at path (a file, or the newest readable one in a folder) into
    model (and optimizer); returns its epoch, step, best_acc, history, ... to continue from."""
    path, ckpt = read_latest(path)
    return apply_checkpoint(ckpt, path, model, optimizer)


def rng_state(device: Optional[torch.device] = None) -> dict:
    """Every random generator the trainer's process draws from (dropout uses torch's default ones)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: Optional[torch.device] = None) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(x):
    """random.setstate wants the tuples that random.getstate gave (a round trip may give lists)."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def load_pretrained(model: torch.nn.Module, path) -> list[str]:
    """Loads weights from a trainer checkpoint or a bare state_dict (ours or torchvision's AlexNet);
    a last layer of another class count is left freshly initialised; path may be a checkpoint folder
    (its newest readable checkpoint). Returns lines to print."""
    path = Path(path)
    obj = read_latest(path)[1] if path.is_dir() else _read(path)
    src = obj["model"] if isinstance(obj.get("model"), dict) else obj
    own = model.state_dict()
    skipped = [k for k in src if k.startswith(LAST_LAYER) and k in own and src[k].shape != own[k].shape]
    sd = {k: v for k, v in src.items() if k not in skipped}
    missing = [k for k in own if k not in sd and k not in skipped]
    unexpected = [k for k in sd if k not in own]
    wrong = [f"{k} {tuple(sd[k].shape)} (model: {tuple(own[k].shape)})"
             for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: weights do not fit this AlexNet variant: missing {missing[:6]}, unexpected "
            f"{unexpected[:6]}, other shapes {wrong[:6]} (is it the other --variant?)")
    model.load_state_dict(sd, strict=False)
    lines = [f"pretrained weights from {path}: {len(sd)} tensors"]
    if skipped:
        lines.append(f"  replaced the last layer (classifier.6: {tuple(src[LAST_LAYER + 'weight'].shape)} -> "
                     f"{tuple(own[LAST_LAYER + 'weight'].shape)}), trained from scratch")
    return lines
