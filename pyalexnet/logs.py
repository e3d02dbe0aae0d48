"""What a run shows and keeps as it goes: a progress bar per epoch (tqdm, on a terminal), the
metrics logs (per epoch and per step, CSV or JSON lines), each row on disk when it is written, and
TensorBoard scalars."""
from __future__ import annotations

import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Optional

try:
    from tqdm import tqdm
except ImportError:  # a machine without it (a GPU box with no package registry): one line per epoch
    tqdm = None

__all__ = ["MetricsLog", "TensorBoardLog", "progress"]


class NoBar:
    """What the loop uses of a tqdm bar, for a machine without tqdm: the batches, nothing shown."""

    def __init__(self, it):
        self.it = it

    def __iter__(self):
        return iter(self.it)

    def set_postfix(self, **kw):
        pass

    def close(self):
        pass


def progress(it, show: Optional[bool], epoch: int, epochs: int, initial: int, total: int):
    """A tqdm bar over `it` when asked for, or by default (show None) when stderr is a terminal: in a
    log file a bar is a stream of carriage-return fragments."""
    if show is None:
        show = sys.stderr.isatty()
    if tqdm is None or not show:
        return NoBar(it)
    return tqdm(it, initial=initial, total=total, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)


class MetricsLog:
    """Appends rows (one per epoch, or per step) to a CSV file (path ends in .csv) or a JSON-lines file,
    each row on disk when write returns (the file is closed after it)."""

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

    def drop_after(self, key: str, last) -> None:
        """Keeps the rows with row[key] <= last (a resumed run redoes the others), and drops a line
        cut short by a crash; rewritten atomically."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        if self.csv:
            rows = list(csv.DictReader(lines))
            kept = [r for r in rows if None not in r.values() and _num(r.get(key)) is not None
                    and _num(r[key]) <= last]
            out = io.StringIO()
            if kept:
                w = csv.DictWriter(out, fieldnames=list(kept[0]))
                w.writeheader()
                w.writerows(kept)
            text = out.getvalue()
        else:
            kept = []
            for line in lines:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and _num(row.get(key)) is not None and _num(row[key]) <= last:
                    kept.append(line)
            text = "".join(line + "\n" for line in kept)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.path)


def _num(v) -> Optional[float]:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


class TensorBoardLog:
    """TensorBoard scalars (torch.utils.tensorboard) against the optimiser step: every epoch its
    losses, top-1 and top-5 accuracies, learning rate and images/s; as it goes, the running training
    loss and accuracy. A resumed run purges the events past its checkpoint's step (a stopped run's),
    which it computes again."""

    EPOCH = {"loss/train": "train_loss", "loss/test": "test_loss", "accuracy/train": "train_acc",
             "accuracy/test": "test_acc", "accuracy/test_top5": "test_top5", "lr": "lr",
             "images_per_s": "images_per_s"}

    def __init__(self, folder: str, purge_step: Optional[int] = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ValueError(f"--tensorboard needs the tensorboard package ({e}): pip install tensorboard") from None
        self.writer = SummaryWriter(folder, purge_step=purge_step)  # events from it on are dropped

    def epoch(self, row: dict, step: int) -> None:
        for name, key in self.EPOCH.items():
            self.writer.add_scalar(name, row[key], step)
        self.writer.add_scalar("epoch", row["epoch"], step)
        self.writer.flush()

    def running(self, step: int, loss: float, acc: float) -> None:
        self.writer.add_scalar("loss/train_running", loss, step)
        self.writer.add_scalar("accuracy/train_running", acc, step)

    def close(self) -> None:
        self.writer.close()
