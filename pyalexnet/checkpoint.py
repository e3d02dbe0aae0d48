"""Checkpoints of the trainer: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only: ``model`` and ``optimizer``
state_dicts, ``epoch``, ``step``, ``best_acc``, ``history`` (one dict per epoch), ``config``,
``variant`` and ``classes``. ``load_pretrained`` also takes a bare state_dict, such as torchvision's
AlexNet weights file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "load_pretrained", "CheckpointError"]

LAST_LAYER = "classifier.6."


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or does not fit the model; the message names it."""


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


def load_checkpoint(path, model: torch.nn.Module, optimizer=None) -> dict:
    """Loads a trainer checkpoint into model (and optimizer); returns its epoch, step, best_acc and
    history to continue from."""
    ckpt = _read(path)
    if "model" not in ckpt:
        raise CheckpointError(f"{path}: a state_dict, not a trainer checkpoint (use --pretrained for it)")
    try:
        model.load_state_dict(ckpt["model"])
        if optimizer is not None and "optimizer" in ckpt:
            optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: does not fit this model / optimiser: {e}") from None
    return {k: ckpt.get(k, d) for k, d in (("epoch", 0), ("step", 0), ("best_acc", 0.0), ("history", []))}


def load_pretrained(model: torch.nn.Module, path) -> list[str]:
    """Loads weights from a trainer checkpoint or a bare state_dict (ours or torchvision's AlexNet);
    a last layer of another class count is left freshly initialised. Returns lines to print."""
    obj = _read(path)
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
