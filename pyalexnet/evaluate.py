"""Evaluation of a classifier: predictions over a test set, confusion matrix, per-class precision /
recall / F1 report, and PNG plots (training curves, confusion matrix) with matplotlib."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["predict_batches", "topk_accuracy", "confusion_matrix", "per_class_metrics", "classification_report",
           "format_confusion", "plot_curves", "plot_confusion"]


@torch.no_grad()
def predict_batches(model: torch.nn.Module, batches: Iterable[tuple[Tensor, Tensor]],
                    autocast=nullcontext) -> tuple[Tensor, Tensor, Tensor]:
    """model's predicted classes, float32 logits and the targets over (input, target) batches, in
    eval mode."""
    was_training = model.training
    model.eval()
    preds, logits, targets = [], [], []
    try:
        for xb, yb in batches:
            with autocast():
                out = model(xb).float()
            logits.append(out)
            preds.append(out.argmax(1))
            targets.append(yb)
    finally:
        model.train(was_training)
    if not preds:
        empty = torch.empty(0, dtype=torch.long)
        return empty, torch.empty(0, 0), empty
    return torch.cat(preds), torch.cat(logits), torch.cat(targets)


def topk_accuracy(logits: Tensor, target: Tensor, k: int = 5) -> float:
    """The share of rows whose target class is among the k largest logits (among all of them where
    there are fewer than k classes); NaN for no rows. Of tied logits, topk's choice counts."""
    if len(target) == 0:
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == target[:, None]).any(1).double().mean().item()


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """num_classes x num_classes int64 counts on the CPU: row = true class, column = predicted."""
    idx = target.long().cpu() * num_classes + pred.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_metrics(cm: Tensor) -> dict[str, Tensor]:
    """precision, recall, f1 and support per class (float64; 0 where undefined) from a confusion matrix."""
    cm = cm.double()
    tp, predicted, support = cm.diag(), cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(tp))
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def classification_report(cm: Tensor, classes: Sequence[str]) -> str:
    """A fixed-width table: per class precision, recall, F1, support; then accuracy and macro means."""
    m = per_class_metrics(cm)
    width = max([len(str(c)) for c in classes] + [12])
    lines = [f"{'class':>{width}}  precision  recall     f1  support"]
    for i, name in enumerate(classes):
        lines.append(f"{str(name):>{width}}  {m['precision'][i]:9.3f}  {m['recall'][i]:6.3f}  "
                     f"{m['f1'][i]:5.3f}  {int(m['support'][i]):7d}")
    total = int(cm.sum())
    acc = cm.diag().sum().item() / max(total, 1)
    lines.append(f"{'accuracy':>{width}}  {'':9}  {'':6}  {acc:5.3f}  {total:7d}")
    lines.append(f"{'macro avg':>{width}}  {m['precision'].mean():9.3f}  {m['recall'].mean():6.3f}  "
                 f"{m['f1'].mean():5.3f}  {total:7d}")
    return "\n".join(lines)


def format_confusion(cm: Tensor, classes: Sequence[str]) -> str:
    """The confusion matrix as text: rows are true classes, columns predicted (numbered as the rows)."""
    w = max(len(str(int(cm.max()))) if cm.numel() else 1, len(str(len(classes) - 1)), 3)
    names = [f"{i} {c}" for i, c in enumerate(classes)]
    corner = "true \\ predicted"
    nw = max([len(n) for n in names] + [len(corner)])
    lines = [f"{corner:>{nw}} " + " ".join(f"{i:>{w}}" for i in range(len(classes)))]
    for name, row in zip(names, cm.tolist()):
        lines.append(f"{name:>{nw}} " + " ".join(f"{v:>{w}}" for v in row))
    return "\n".join(lines)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_curves(history: Sequence[dict], path: str) -> None:
    """Training loss, and train / test accuracy, per epoch (history rows: epoch, train_loss,
    train_acc, test_loss, test_acc) as a PNG at path."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["test_loss"] for h in history], "o-", label="test")
    # the training loss is label-smoothed, on augmented images with dropout: above the test loss
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss (train: label-smoothed, augmented)")
    ax2.plot(epochs, [100 * h["train_acc"] for h in history], "o-", label="train")
    ax2.plot(epochs, [100 * h["test_acc"] for h in history], "o-", label="test")
    ax2.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(cm: Tensor, classes: Sequence[str], path: str) -> None:
    """The confusion matrix as a PNG heat map with counts, rows true, columns predicted."""
    plt = _pyplot()
    k = len(classes)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.6 + 0.6 * k))
    ax.imshow(cm.numpy(), cmap="Blues")
    ax.set_xticks(range(k), [str(c) for c in classes], rotation=60, ha="right")
    ax.set_yticks(range(k), [str(c) for c in classes])
    ax.set(xlabel="predicted", ylabel="true", title="confusion matrix")
    top = cm.max().item() if cm.numel() else 0
    for i in range(k):
        for j in range(k):
            v = int(cm[i, j])
            ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                    color="white" if v > top / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
