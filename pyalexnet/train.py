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

import csv
import dataclasses
import io
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

try:
    from tqdm import tqdm
except ImportError:  # a machine without it (a GPU box with no package registry): one line per epoch
    tqdm = None

import pyalexnet

from . import data, distributed, evaluate
from .config import SAME_RUN, Config, ConfigError, check_config, parse_args
from .checkpoint import (CheckpointError, apply_checkpoint, checkpoint_path, load_pretrained, prune_checkpoints,
                         read_latest, rng_state, save_checkpoint, set_rng_state)
from .interrupt import StopRequest
from .models import CUDA_KERNELS_MISSING, alexnet
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


def native_bf16(dev: torch.device) -> bool:
    """Whether ``dev`` computes bfloat16 natively: a CUDA GPU with bf16 support (Ampere and newer), or
    a CPU whose flags (Linux /proc/cpuinfo) list avx512_bf16 or amx_bf16. There bf16 autocast is the
    default: on this project's 2-core AMD CPU (Zen 4) it takes a CIFAR training step of the custom
    backend from ~390 to ~470 images/s (the classifier's matrix products run at 2x)."""
    if dev.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak learning rate at a step: linear warm-up, then the schedule."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(total - warmup, 1)
    return 1.0 - t if schedule == "onecycle" else 0.5 * (1.0 + math.cos(math.pi * t))


def main(argv=None, cfg: Optional[Config] = None) -> dict:
    """Runs the trainer; returns the summary (with ``interrupted`` set when a signal stopped it)."""
    cfg = cfg or parse_args(argv, __doc__)
    check_config(cfg)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    d, dev = distributed.setup(cfg.device)
    try:
        return _train(cfg, d, dev)
    finally:  # a program that calls main() keeps its own settings
        distributed.teardown(d)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


def _train(cfg: Config, d: distributed.Dist, dev: torch.device) -> dict:
    t_start = time.perf_counter()
    say = print if d.main else (lambda *a, **k: None)
    threads = cfg.threads or distributed.default_threads(d)
    if threads:
        torch.set_num_threads(threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if dev.type == "cuda" and cfg.backend == "custom" and not pyalexnet.build_info()["cuda"]:
        raise ConfigError(CUDA_KERNELS_MISSING)
    ckpt_dir = Path(cfg.checkpoint_dir or "checkpoints")
    writing = bool(cfg.checkpoint_dir or cfg.checkpoint_every)  # checkpoints as the run goes
    resume_path, ckpt = None, None
    if cfg.resume:  # read first: a bad checkpoint is reported before minutes of data loading
        resume_path, ckpt = read_latest(ckpt_dir if cfg.resume == "latest" else cfg.resume,
                                        warn=lambda m: say(m, file=sys.stderr, flush=True))

    # ---- data: uint8 images on the device, crops / flips / normalisation there, batch by batch ----
    ds = data.load_dataset(cfg.dataset, cfg.data_dir, cfg.holdout, cfg.synthetic_size, cfg.image_size,
                           cfg.seed, bad_images=cfg.bad_images)
    train_x, train_y = ds.train_x.to(dev), ds.train_y.to(dev)
    test_x, test_y = ds.test_x.to(dev), ds.test_y.to(dev)
    mean, std = (t.to(dev) for t in ds.mean_std)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    def prepare(xb: torch.Tensor, gen: Optional[torch.Generator] = None) -> torch.Tensor:
        if gen is not None:
            xb = data.augment(xb, ds.crop_padding, ds.flip, gen)
        return data.normalize(xb, mean, std).contiguous(memory_format=memory_format)

    # ---- model: the same initial weights on every rank; dropout draws its own stream per rank ----
    torch.manual_seed(cfg.seed)
    variant = cfg.variant or ("imagenet" if cfg.dataset == "imagefolder" else "cifar")
    model = alexnet(len(ds.classes), variant, cfg.backend, cfg.dropout)
    if cfg.pretrained:
        for line in load_pretrained(model, cfg.pretrained):
            say(line)
    if cfg.freeze_features:
        model.features.requires_grad_(False)
    model = model.to(dev, memory_format=memory_format)
    if d.enabled:
        model = distributed.convert_sync_batchnorm(model, dev)
    torch.manual_seed(cfg.seed * 1000 + 1 + d.rank)
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
           if d.enabled and not cfg.eval_only else model)
    run = torch.compile(ddp) if cfg.compile else ddp
    run_eval = model if d.enabled else run
    criterion = (SoftmaxCrossEntropyLoss(label_smoothing=cfg.label_smoothing) if cfg.backend == "custom"
                 else torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing))
    bf16 = native_bf16(dev) if cfg.bf16 is None else cfg.bf16
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else nullcontext

    # ---- optimisation ----
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.dim() <= 1], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    else:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    global_batch = cfg.batch_size * d.world  # each rank takes its slice of every global batch
    steps_per_epoch = math.ceil(len(train_x) / global_batch)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    state = {"epoch": 0, "step": 0, "batch": 0, "epoch_state": None, "best_acc": 0.0, "history": []}
    if ckpt is not None:
        state = apply_checkpoint(ckpt, resume_path, model, None if cfg.eval_only else optimizer)
        if not cfg.eval_only:
            _check_resumable(cfg, d, state, resume_path, say)
            if state["rng"] is not None:
                set_rng_state(state["rng"][d.rank], dev)
        say(f"resumed from {resume_path}: {state['epoch']} epoch(s) and {state['batch']} batch(es) done, "
            f"step {state['step']}")

    say(f"pyalexnet {pyalexnet.__version__}: AlexNet-{variant} on {dev}"
        f"{f' x {d.world} processes' if d.enabled else ''}, backend {cfg.backend}, "
        f"{'bfloat16 autocast' if bf16 else 'float32'}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters ({sum(p.numel() for p in trainable):,} "
        f"trained); {ds.name}: {len(train_x)} training images, {len(test_x)} test ({ds.test_name})")

    def test() -> tuple[float, float, torch.Tensor]:
        pred, logits = evaluate.predict(run_eval, test_x, 2 * cfg.batch_size, prepare, autocast)
        loss = F.cross_entropy(logits, test_y).item() if len(test_y) else float("nan")
        return loss, (pred == test_y).float().mean().item(), pred

    def save(epoch_state: Optional[dict], best: bool = False) -> Optional[Path]:
        """A checkpoint of the run as it stands (every rank calls this: the RNG states are gathered)."""
        rngs = [rng_state(dev)]
        if d.enabled:
            rngs = [None] * d.world
            torch.distributed.all_gather_object(rngs, rng_state(dev))
        if not d.main:
            return None
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "config": dataclasses.asdict(cfg), "variant": variant, "classes": list(ds.classes),
                "epoch": state["epoch"], "step": state["step"], "batch": state["batch"],
                "epoch_state": epoch_state, "rng": rngs, "best_acc": state["best_acc"],
                "history": state["history"], "world_size": d.world, "batch_size": cfg.batch_size}
        path = checkpoint_path(ckpt_dir, state["epoch"] + (1 if epoch_state else 0), state["step"])
        save_checkpoint(ckpt, path)
        prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        if best:
            save_checkpoint(ckpt, ckpt_dir / "best.pt")
        return path

    # ---- loop: one epoch at a time, its shuffle and augmentation drawn from a generator seeded by
    # (seed, epoch) and identical on every rank; a checkpoint keeps its state mid-epoch ----
    log = MetricsLog(cfg.log) if cfg.log and d.main and not cfg.eval_only else None
    step_log = MetricsLog(cfg.step_log) if cfg.step_log and d.main and not cfg.eval_only else None
    for lg, key in ((log, "epoch"), (step_log, "step")):
        if lg is not None and ckpt is not None:
            lg.drop_after(key, state[key])  # rows of work the checkpoint does not hold are redone
    train_time, train_images = 0.0, 0
    interrupted: Optional[str] = None
    last_eval = None  # the newest epoch's test loss, accuracy and predictions (the final report's)
    with StopRequest(announce=d.main) as stop:
        while not cfg.eval_only and state["epoch"] < cfg.epochs and interrupted is None:
            epoch = state["epoch"] + 1
            gen = torch.Generator(device=dev).manual_seed(cfg.seed * 100_003 + epoch)
            es = state["epoch_state"]
            if es is not None:  # resume mid-epoch: its order, generator and sums as they were
                order, start = es["order"].to(dev), state["batch"]
                gen.set_state(es["gen"])
                sums, elapsed = es["sums"].to(dev), es["seconds"]
            else:
                order, start = torch.randperm(len(train_x), device=dev, generator=gen), 0
                sums, elapsed = torch.zeros(3, device=dev, dtype=torch.float64), 0.0
            state["epoch_state"] = None
            local = torch.zeros(3, device=dev, dtype=torch.float64)  # loss sum, correct, images
            model.train()
            if cfg.freeze_features:  # frozen features: BatchNorm keeps its running statistics too
                model.features.eval()
            t0, seen0 = time.perf_counter(), 0
            bar = _progress(range(start, steps_per_epoch), cfg.progress if d.main else False, epoch, cfg.epochs,
                            start, steps_per_epoch)
            for b in bar:
                idx = order[b * global_batch:(b + 1) * global_batch]
                xb, yb = prepare(train_x[idx], gen), train_y[idx]
                weight = 1.0
                if d.enabled:  # this rank's slice; a short last batch is split as evenly as it goes
                    lo, hi = data.shard(len(idx), d.rank, d.world)
                    xb, yb = xb[lo:hi], yb[lo:hi]
                    weight = (hi - lo) * d.world / len(idx)  # so the ranks' average is the global mean
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * lr_factor(state["step"], total_steps, warmup, cfg.schedule)
                with autocast():
                    logits = run(xb)
                loss = criterion(logits.float(), yb)
                optimizer.zero_grad(set_to_none=True)
                (loss * weight if weight != 1.0 else loss).backward()
                optimizer.step()
                state["step"], state["batch"] = state["step"] + 1, b + 1
                local += torch.stack([loss.detach().double() * len(yb), (logits.argmax(1) == yb).sum().double(),
                                      torch.tensor(float(len(yb)), device=dev, dtype=torch.float64)])
                seen0 += len(yb)
                if cfg.step_log:  # every rank: the step's loss is summed over them
                    step_loss = distributed.all_sum(loss.detach().double() * len(yb), d).item() / len(idx)
                    if step_log is not None:
                        step_log.write({"step": state["step"], "epoch": epoch, "batch": b + 1,
                                        "loss": step_loss, "lr": optimizer.param_groups[0]["lr"]})
                if b % 10 == 9 or b == steps_per_epoch - 1:  # reading the sums waits for the device
                    tot = sums + distributed.all_sum(local, d)
                    bar.set_postfix(loss=f"{tot[0].item() / tot[2].item():.3f}",
                                    acc=f"{tot[1].item() / tot[2].item():.3f}",
                                    img_s=f"{seen0 * d.world / (time.perf_counter() - t0):.0f}")
                stopping = distributed.any_rank(bool(stop), d, dev)
                every = cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0
                if (stopping or (every and writing)) and b + 1 < steps_per_epoch:
                    path = save({"order": order.cpu(), "gen": gen.get_state(),
                                 "sums": (sums + distributed.all_sum(local, d)).cpu(),
                                 "seconds": elapsed + time.perf_counter() - t0})
                    if stopping:
                        interrupted = stop.name or "SIGTERM"  # another rank's signal
                        _say_interrupted(say, interrupted, path, state, steps_per_epoch)
                        break
            bar.close()
            if interrupted is not None:
                break
            seconds = time.perf_counter() - t0
            train_time, train_images = train_time + seconds, train_images + seen0 * d.world
            tot = sums + distributed.all_sum(local, d)
            test_loss, test_acc = float("nan"), 0.0
            if d.main:
                last_eval = test()
                test_loss, test_acc, _ = last_eval
            test_acc = distributed.all_sum(torch.tensor([test_acc], dtype=torch.float64, device=dev), d).item()
            n = max(tot[2].item(), 1.0)
            row = {"epoch": epoch, "train_loss": tot[0].item() / n, "train_acc": tot[1].item() / n,
                   "test_loss": test_loss, "test_acc": test_acc, "lr": optimizer.param_groups[0]["lr"],
                   "seconds": round(elapsed + seconds, 2), "images_per_s": round(seen0 * d.world / seconds, 1)}
            state["epoch"], state["batch"] = epoch, 0
            state["history"].append(row)
            say(f"epoch {epoch:3d}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {100 * row['train_acc']:.2f}%"
                f"  test loss {test_loss:.4f} acc {100 * test_acc:.2f}%  {seconds:.1f} s "
                f"({row['images_per_s']:.0f} img/s)", flush=True)
            if log:
                log.write(row)
            # ---- checkpoint: every epoch (the last K kept), best.pt when the test accuracy improves ----
            is_best = test_acc > state["best_acc"]
            state["best_acc"] = max(state["best_acc"], test_acc)
            stopping = distributed.any_rank(bool(stop), d, dev) and epoch < cfg.epochs
            if writing or stopping:
                path = save(None, best=is_best and writing)
                if stopping:
                    interrupted = stop.name or "SIGTERM"
                    _say_interrupted(say, interrupted, path, state, steps_per_epoch)

    # ---- evaluation: per-class report, confusion matrix, plots, summary (rank 0) ----
    summary = {"dataset": ds.name, "variant": variant, "backend": cfg.backend, "device": str(dev),
               "processes": d.world, "bf16": bf16, "threads": torch.get_num_threads() if dev.type == "cpu" else None,
               "epochs": state["epoch"], "step": state["step"], "interrupted": interrupted}
    if interrupted is not None or not d.main:
        return summary
    test_loss, test_acc, pred = last_eval or test()
    cm = evaluate.confusion_matrix(pred, test_y, len(ds.classes))
    print(f"\n{ds.name} {ds.test_name}: per-class report\n{evaluate.classification_report(cm, ds.classes)}")
    print(f"\nconfusion matrix (rows: true class, columns: predicted)\n{evaluate.format_confusion(cm, ds.classes)}")
    if cfg.plot:
        confusion_png = str(Path(cfg.plot).with_suffix("")) + "-confusion.png"
        if state["history"]:
            evaluate.plot_curves(state["history"], cfg.plot)
        evaluate.plot_confusion(cm, ds.classes, confusion_png)
        print(f"plots: {cfg.plot if state['history'] else '(no epochs, no curves)'}, {confusion_png}")
    summary.update({"final_test_acc": test_acc, "test_loss": test_loss,
                    "best_test_acc": max(state["best_acc"], test_acc), "train_seconds": round(train_time, 1),
                    "images_per_s": round(train_images / train_time, 1) if train_time else None,
                    "wall_seconds": round(time.perf_counter() - t_start, 1)})
    print("\nsummary: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in summary.items() if v is not None))
    summary["confusion_matrix"] = cm
    return summary


def _progress(it, show: Optional[bool], epoch: int, epochs: int, initial: int, total: int):
    """A tqdm bar over `it` when asked for, or by default (show None) when stderr is a terminal: in a
    log file a bar is a stream of carriage-return fragments."""
    if show is None:
        show = sys.stderr.isatty()
    if tqdm is None or not show:
        return _NoBar(it)
    return tqdm(it, initial=initial, total=total, desc=f"epoch {epoch}/{epochs}", leave=False, dynamic_ncols=True)


def _check_resumable(cfg: Config, d: distributed.Dist, state: dict, path, say) -> None:
    """A resumed run must cut the data the same way; other differences are allowed but reported."""
    if (state["batch_size"], state["world_size"]) not in ((cfg.batch_size, d.world), (None, 1)):
        raise CheckpointError(
            f"{path}: written by a run of --batch-size {state['batch_size']} on {state['world_size']} "
            f"process(es); this one has --batch-size {cfg.batch_size} on {d.world}. Resume with the same "
            "batch size and process count (they fix each step's images and the schedule)")
    old = state["config"] or {}
    for k in SAME_RUN:
        if k in old and old[k] != getattr(cfg, k):
            say(f"warning: --{k.replace('_', '-')} is {getattr(cfg, k)!r} here and {old[k]!r} in the checkpoint; "
                "continuing with this command line's value", file=sys.stderr)


def _say_interrupted(say, signame: str, path, state: dict, steps_per_epoch: int) -> None:
    say(f"\n{signame}: stopped after step {state['step']} (epoch {state['epoch'] + (1 if state['batch'] else 0)}, "
        f"batch {state['batch'] or steps_per_epoch}/{steps_per_epoch}); checkpoint written: {path}\n"
        f"To continue, run the same command with: --checkpoint-dir {path.parent} --resume latest",
        file=sys.stderr, flush=True)


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


def cli(argv=None) -> None:
    """main() with a missing or malformed file or a nonsensical flag reported as one line, not a
    traceback; a run stopped by SIGINT/SIGTERM (after its checkpoint) exits with 128 + the signal."""
    try:
        summary = main(argv)
    except (data.DataError, CheckpointError, ValueError) as e:
        sys.exit(f"error: {e}")
    if summary.get("interrupted"):
        sys.exit(128 + int(signal.Signals[summary["interrupted"]]))


if __name__ == "__main__":
    cli()
