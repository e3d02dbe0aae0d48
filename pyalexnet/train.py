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

import dataclasses
import math
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Optional, Union

import torch
import torch.nn.functional as F

import pyalexnet

from . import data, distributed, evaluate
from .batches import InMemory, Streamed, build_data
from .checkpoint import (CheckpointError, EpochState, RunState, apply_checkpoint, checkpoint_path, load_pretrained,
                         prune_checkpoints, read_latest, rng_state, save_checkpoint, set_rng_state)
from .config import SAME_RUN, Config, ConfigError, check_config, parse_args
from .interrupt import StopRequest
from .logs import MetricsLog, TensorBoardLog, progress
from .models import CUDA_KERNELS_MISSING, alexnet
from .nn import SoftmaxCrossEntropyLoss


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


def lr_factor(step: int, total: int, warmup: int, schedule: str, step_every: int = 1, gamma: float = 0.1) -> float:
    """Multiplier of the peak learning rate at a step: linear warm-up, then the schedule (step: gamma
    to the number of step_every-step periods done since the warm-up)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    if schedule == "step":
        return gamma ** ((step - warmup) // step_every)
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
    """The whole run, top to bottom: set up, (resume,) train epoch by epoch, report."""
    t_start = time.perf_counter()
    say = print if d.main else _silent
    set_up_torch(cfg, d, dev)
    resume = read_resume(cfg, say)  # first: a bad checkpoint is reported before minutes of data loading
    images = build_data(cfg, d, dev)
    run = Run(cfg, d, dev, images, build_net(cfg, d, dev, images, say), plan(cfg, d, images.n_train),
              RunState(), say)
    if resume is not None:
        resume_from(run, *resume)
    open_logs(run, resumed=resume is not None)
    say(describe(run))
    try:
        with StopRequest(announce=d.main) as stop:
            while not cfg.eval_only and run.state.epoch < cfg.epochs and run.interrupted is None:
                epoch = start_epoch(run)
                train_epoch(run, epoch, stop)
                if run.interrupted is None:
                    end_epoch(run, epoch, stop)
    finally:
        if run.board is not None:
            run.board.close()
    return final_report(run, time.perf_counter() - t_start)


def _silent(*args, **kwargs) -> None:
    """`say` on the processes other than rank 0: they print nothing."""


# ------------------------------------------------------------------------------------------------
# The run's parts, built once
# ------------------------------------------------------------------------------------------------
@dataclass
class Net:
    """The network and what trains it."""
    variant: str
    model: torch.nn.Module     # the module whose weights a checkpoint keeps
    run: Callable              # what a training step calls (DistributedDataParallel, torch.compile)
    run_eval: Callable         # what evaluation calls (on rank 0 alone, so never the DDP wrapper)
    criterion: torch.nn.Module
    optimizer: torch.optim.Optimizer
    bf16: bool
    autocast: Callable


@dataclass
class Schedule:
    """How the data is cut into steps, and the learning rate at each."""
    peak_lr: float
    shape: str               # onecycle, cosine or constant (after the warm-up)
    global_batch: int        # images per step over all processes
    steps_per_epoch: int
    total_steps: int
    warmup: int              # steps
    step_every: int          # steps between drops of the step schedule
    gamma: float             # the factor of each

    def lr(self, step: int) -> float:
        return self.peak_lr * lr_factor(step, self.total_steps, self.warmup, self.shape, self.step_every, self.gamma)


@dataclass
class Run:
    """One run of the trainer: its configuration, processes, data, network, schedule and state."""
    cfg: Config
    d: distributed.Dist
    dev: torch.device
    data: Union[InMemory, Streamed]
    net: Net
    sched: Schedule
    state: RunState
    say: Callable
    log: Optional[MetricsLog] = None       # one row per epoch (rank 0)
    step_log: Optional[MetricsLog] = None  # one row per step (rank 0)
    board: Optional[TensorBoardLog] = None   # TensorBoard scalars (rank 0)
    interrupted: Optional[str] = None      # the name of the signal that stopped the run
    last_eval: Optional["Evaluation"] = None  # the newest epoch's evaluation, the final report's
    train_seconds: float = 0.0
    train_images: int = 0

    @property
    def ckpt_dir(self) -> Path:
        return checkpoint_dir(self.cfg)

    @property
    def writing(self) -> bool:
        """Whether checkpoints are written as the run goes (a signal's checkpoint is written anyway)."""
        return bool(self.cfg.checkpoint_dir or self.cfg.checkpoint_every)


def checkpoint_dir(cfg: Config) -> Path:
    """Where checkpoints go: --checkpoint-dir, else ./checkpoints (a signal's, --checkpoint-every's)."""
    return Path(cfg.checkpoint_dir or "checkpoints")


def set_up_torch(cfg: Config, d: distributed.Dist, dev: torch.device) -> None:
    threads = cfg.threads or distributed.default_threads(d)
    if threads:
        torch.set_num_threads(threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if dev.type == "cuda" and cfg.backend == "custom" and not pyalexnet.build_info()["cuda"]:
        raise ConfigError(CUDA_KERNELS_MISSING)


def read_resume(cfg: Config, say: Callable) -> Optional[tuple[Path, dict]]:
    """The checkpoint --resume names (its path and contents), or None."""
    if not cfg.resume:
        return None
    target = checkpoint_dir(cfg) if cfg.resume == "latest" else cfg.resume
    return read_latest(target, warn=lambda m: say(m, file=sys.stderr, flush=True))


def build_net(cfg: Config, d: distributed.Dist, dev: torch.device, images, say: Callable) -> Net:
    """The model (the same initial weights on every rank; dropout draws its own stream per rank), its
    wrappers, loss, optimiser and precision."""
    torch.manual_seed(cfg.seed)
    variant = cfg.variant or ("imagenet" if cfg.dataset == "imagefolder" else "cifar")
    model = alexnet(len(images.classes), variant, cfg.backend, cfg.dropout)
    if cfg.pretrained:
        for line in load_pretrained(model, cfg.pretrained):
            say(line)
    if cfg.freeze_features:
        model.features.requires_grad_(False)
    model = model.to(dev, memory_format=images.memory_format)
    if d.enabled:
        model = distributed.convert_sync_batchnorm(model, dev)
    torch.manual_seed(cfg.seed * 1000 + 1 + d.rank)
    ddp = (torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
           if d.enabled and not cfg.eval_only else model)
    run = torch.compile(ddp) if cfg.compile else ddp
    criterion = (SoftmaxCrossEntropyLoss(label_smoothing=cfg.label_smoothing) if cfg.backend == "custom"
                 else torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing))
    bf16 = native_bf16(dev) if cfg.bf16 is None else cfg.bf16
    autocast = (lambda: torch.autocast(dev.type, dtype=torch.bfloat16)) if bf16 else nullcontext
    return Net(variant, model, run, model if d.enabled else run, criterion, make_optimizer(cfg, model), bf16,
               autocast)


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over the trained parameters; weight decay on weights only."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if p.dim() > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trainable if p.dim() <= 1], "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def plan(cfg: Config, d: distributed.Dist, n_train: int) -> Schedule:
    """Each rank takes its slice of every global batch; the warm-up never outlasts the run."""
    global_batch = cfg.batch_size * d.world
    steps_per_epoch = math.ceil(n_train / global_batch)
    total_steps = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total_steps)
    return Schedule(cfg.lr, cfg.schedule, global_batch, steps_per_epoch, total_steps, warmup,
                    cfg.lr_step_epochs * steps_per_epoch, cfg.lr_gamma)


def resume_from(run: Run, path: Path, ckpt: dict) -> None:
    """The checkpoint's weights, optimiser state, progress and random generators, into this run."""
    cfg, d = run.cfg, run.d
    run.state = apply_checkpoint(ckpt, path, run.net.model, None if cfg.eval_only else run.net.optimizer)
    if not cfg.eval_only:
        check_resumable(cfg, d, run.state, path, run.say)
        if run.state.rng is not None:
            set_rng_state(run.state.rng[d.rank], run.dev)
    run.say(f"resumed from {path}: {run.state.epoch} epoch(s) and {run.state.batch} batch(es) done, "
            f"step {run.state.step}")


def open_logs(run: Run, resumed: bool) -> None:
    """The metrics logs (rank 0 of a training run); on resume, rows of work the checkpoint does not
    hold are dropped, since the run does that work again."""
    cfg = run.cfg
    writes = run.d.main and not cfg.eval_only
    run.log = MetricsLog(cfg.log) if cfg.log and writes else None
    run.step_log = MetricsLog(cfg.step_log) if cfg.step_log and writes else None
    for log, key in ((run.log, "epoch"), (run.step_log, "step")):
        if log is not None and resumed:
            log.drop_after(key, getattr(run.state, key))
    if cfg.tensorboard and writes:  # on resume, the events past the checkpoint's step are dropped
        run.board = TensorBoardLog(cfg.tensorboard, run.state.step + 1 if resumed else None)


def describe(run: Run) -> str:
    cfg, d, net, images = run.cfg, run.d, run.net, run.data
    params = list(net.model.parameters())
    return (f"pyalexnet {pyalexnet.__version__}: AlexNet-{net.variant} on {run.dev}"
            f"{f' x {d.world} processes' if d.enabled else ''}, backend {cfg.backend}, "
            f"{'bfloat16 autocast' if net.bf16 else 'float32'}, {sum(p.numel() for p in params):,} parameters "
            f"({sum(p.numel() for p in params if p.requires_grad):,} trained); {images.name}: "
            f"{images.n_train} training images, {images.n_test} test ({images.test_name})"
            f"{f'; streamed from disk by {images.workers} worker process(es)' if images.workers else ''}")


# ------------------------------------------------------------------------------------------------
# An epoch: its shuffle and augmentation drawn from a generator seeded by (seed, epoch), the same on
# every rank; a checkpoint keeps its state mid-epoch
# ------------------------------------------------------------------------------------------------
@dataclass
class Epoch:
    """The epoch under way. Its running sums (loss sum, correct, images; float64 on the device) are
    `sums`, carried over from before a resume, plus `local`, this process's since."""
    number: int
    order: torch.Tensor
    gen: torch.Generator
    start: int               # the first batch this process runs (later than 0 after a resume)
    sums: torch.Tensor
    elapsed: float           # seconds the epoch took before a resume
    local: torch.Tensor
    t0: float
    seen: int = 0            # this process's images since t0
    wait: float = 0.0        # seconds the loop waited for batches since t0
    worker_seconds: float = 0.0  # the decoding workers' seconds on those batches (streamed data)

    def totals(self, d: distributed.Dist) -> torch.Tensor:
        """The running sums over all processes (reading them waits for the device)."""
        return self.sums + distributed.all_sum(self.local, d)

    def checkpoint_state(self, d: distributed.Dist) -> EpochState:
        return EpochState(self.order.cpu(), self.gen.get_state(), self.totals(d).cpu(),
                          self.elapsed + time.perf_counter() - self.t0)


def start_epoch(run: Run) -> Epoch:
    """The next epoch: fresh, or as a checkpoint left it mid-way (its order, generator and sums)."""
    state, dev = run.state, run.dev
    number = state.epoch + 1
    gen = torch.Generator(device=dev).manual_seed(run.cfg.seed * 100_003 + number)
    saved, state.epoch_state = state.epoch_state, None
    zeros = torch.zeros(3, device=dev, dtype=torch.float64)
    if saved is not None:
        gen.set_state(saved.gen)
        order, start, sums, elapsed = saved.order.to(dev), state.batch, saved.sums.to(dev), saved.seconds
    else:
        order = torch.randperm(run.data.n_train, device=dev, generator=gen)
        start, sums, elapsed = 0, zeros.clone(), 0.0
    run.net.model.train()
    if run.cfg.freeze_features:  # frozen features: BatchNorm keeps its running statistics too
        run.net.model.features.eval()
    return Epoch(number, order, gen, start, sums, elapsed, zeros, time.perf_counter())


def train_epoch(run: Run, ep: Epoch, stop: StopRequest) -> None:
    """The epoch's batches; a checkpoint every --checkpoint-every steps, and a signal's checkpoint
    and stop (run.interrupted set) when any rank received one."""
    steps = run.sched.steps_per_epoch
    bar = progress(range(ep.start, steps), run.cfg.progress if run.d.main else False, ep.number,
                   run.cfg.epochs, ep.start, steps)
    batches = run.data.train_batches(ep.order, run.sched.global_batch, ep.start, ep.gen, run.d, run.cfg.seed,
                                     ep.number)
    for b in bar:
        t = time.perf_counter()
        xb, yb, n_global, worker_seconds = next(batches)
        ep.wait, ep.worker_seconds = ep.wait + time.perf_counter() - t, ep.worker_seconds + worker_seconds
        train_step(run, ep, b, xb, yb, n_global)
        if b % 10 == 9 or b == steps - 1:
            tot = ep.totals(run.d)
            loss, acc = (tot[:2] / tot[2]).tolist()
            bar.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}",
                            img_s=f"{ep.seen * run.d.world / (time.perf_counter() - ep.t0):.0f}")
            if run.board is not None:
                run.board.running(run.state.step, loss, acc)
        stopping = distributed.any_rank(bool(stop), run.d, run.dev)
        every = run.cfg.checkpoint_every and run.state.step % run.cfg.checkpoint_every == 0
        if (stopping or (every and run.writing)) and b + 1 < steps:
            path = save(run, ep.checkpoint_state(run.d))
            if stopping:
                interrupt(run, stop, path)
                break
    bar.close()


def train_step(run: Run, ep: Epoch, b: int, xb: torch.Tensor, yb: torch.Tensor, n_global: int) -> None:
    """One optimiser step on this process's share (xb, yb) of the epoch's global batch b, which holds
    n_global images over all processes."""
    d, net, state = run.d, run.net, run.state
    weight = len(yb) * d.world / n_global if d.enabled else 1.0  # so the ranks' average is the global mean
    for group in net.optimizer.param_groups:
        group["lr"] = run.sched.lr(state.step)
    with net.autocast():
        logits = net.run(xb)
    loss = net.criterion(logits.float(), yb)
    net.optimizer.zero_grad(set_to_none=True)
    (loss * weight if weight != 1.0 else loss).backward()
    net.optimizer.step()
    state.step, state.batch = state.step + 1, b + 1
    ep.local += torch.stack([loss.detach().double() * len(yb), (logits.argmax(1) == yb).sum().double(),
                             torch.tensor(float(len(yb)), device=run.dev, dtype=torch.float64)])
    ep.seen += len(yb)
    if run.cfg.step_log:  # every rank: the step's loss is summed over them
        step_loss = distributed.all_sum(loss.detach().double() * len(yb), d).item() / n_global
        if run.step_log is not None:
            run.step_log.write({"step": state.step, "epoch": ep.number, "batch": b + 1, "loss": step_loss,
                                "lr": net.optimizer.param_groups[0]["lr"]})


def end_epoch(run: Run, ep: Epoch, stop: StopRequest) -> None:
    """A finished epoch: evaluated, reported, logged, checkpointed."""
    seconds = time.perf_counter() - ep.t0
    run.train_seconds += seconds
    run.train_images += ep.seen * run.d.world
    test_loss, accuracies = float("nan"), torch.zeros(2, dtype=torch.float64, device=run.dev)
    if run.d.main:  # evaluated on rank 0; its accuracies reach the others (which decide on best.pt too)
        run.last_eval = test(run)
        test_loss, accuracies[0], accuracies[1] = run.last_eval.loss, run.last_eval.acc, run.last_eval.top5
    test_acc, test_top5 = distributed.all_sum(accuracies, run.d).tolist()
    tot = ep.totals(run.d)
    n = max(tot[2].item(), 1.0)
    row = {"epoch": ep.number, "train_loss": tot[0].item() / n, "train_acc": tot[1].item() / n,
           "test_loss": test_loss, "test_acc": test_acc, "lr": run.net.optimizer.param_groups[0]["lr"],
           "seconds": round(ep.elapsed + seconds, 2), "images_per_s": round(ep.seen * run.d.world / seconds, 1),
           "test_top5": test_top5, **pipeline_rates(run, ep, seconds)}
    run.state.epoch, run.state.batch = ep.number, 0
    run.state.history.append(row)
    run.say(f"epoch {ep.number:3d}/{run.cfg.epochs}  train loss {row['train_loss']:.4f} acc "
            f"{100 * row['train_acc']:.2f}%  test loss {test_loss:.4f} acc {100 * test_acc:.2f}% "
            f"top-5 {100 * test_top5:.2f}%  {seconds:.1f} s ({row['images_per_s']:.0f} img/s"
            + (f"; input pipeline alone {row['pipeline_images_per_s']:.0f}" if "pipeline_images_per_s" in row else "")
            + ")", flush=True)
    if row.get("data_wait", 0) > 0.2:
        run.say(f"warning: the input pipeline, not the model, limits this run: the loop waited for images "
                f"{100 * row['data_wait']:.0f}% of the epoch; {run.data.workers} worker(s) decode "
                f"{row['pipeline_images_per_s']:.0f} images/s, the steps alone would take "
                f"{row['step_images_per_s']:.0f}. More --workers (or smaller files) would help", file=sys.stderr)
    if run.log:
        run.log.write(row)
    if run.board is not None:
        run.board.epoch(row, run.state.step)
    checkpoint_epoch(run, ep, test_acc, stop)


def pipeline_rates(run: Run, ep: Epoch, seconds: float) -> dict:
    """For streamed data: the images/s the decoding workers could give alone (all busy), the steps'
    rate without the waits for data, and the share of the epoch spent waiting."""
    if not run.data.workers or not ep.seen:
        return {}
    busy = seconds - ep.wait
    return {"pipeline_images_per_s": round(ep.seen * run.data.workers / max(ep.worker_seconds, 1e-9), 1),
            "step_images_per_s": round(ep.seen * run.d.world / max(busy, 1e-9), 1),
            "data_wait": round(ep.wait / seconds, 3)}


def checkpoint_epoch(run: Run, ep: Epoch, test_acc: float, stop: StopRequest) -> None:
    """Every epoch's checkpoint (the last K kept) and best.pt when the test accuracy improves; and a
    signal's stop between epochs."""
    is_best = test_acc > run.state.best_acc
    run.state.best_acc = max(run.state.best_acc, test_acc)
    stopping = distributed.any_rank(bool(stop), run.d, run.dev) and ep.number < run.cfg.epochs
    if run.writing or stopping:
        path = save(run, None, best=is_best and run.writing)
        if stopping:
            interrupt(run, stop, path)


class Evaluation(NamedTuple):
    loss: float
    acc: float       # top-1
    top5: float
    pred: torch.Tensor
    target: torch.Tensor  # the labels of the images tested (a streamed tree's bad files skipped)


def test(run: Run) -> Evaluation:
    """Test loss, top-1 and top-5 accuracy and predictions of the network as it stands."""
    pred, logits, target = evaluate.predict_batches(run.net.run_eval, run.data.test_batches(2 * run.cfg.batch_size),
                                                    run.net.autocast)
    loss = F.cross_entropy(logits, target).item() if len(target) else float("nan")
    return Evaluation(loss, (pred == target).double().mean().item(), evaluate.topk_accuracy(logits, target, 5),
                      pred, target)


# ------------------------------------------------------------------------------------------------
# Checkpoints and signals
# ------------------------------------------------------------------------------------------------
def save(run: Run, epoch_state: Optional[EpochState], best: bool = False) -> Optional[Path]:
    """A checkpoint of the run as it stands (every rank calls this: the RNG states are gathered);
    its path on rank 0, None elsewhere."""
    d, state = run.d, run.state
    rngs = [rng_state(run.dev)]
    if d.enabled:
        rngs = [None] * d.world
        torch.distributed.all_gather_object(rngs, rng_state(run.dev))
    if not d.main:
        return None
    held = dataclasses.replace(state, epoch_state=epoch_state, rng=rngs, config=dataclasses.asdict(run.cfg),
                               world_size=d.world, batch_size=run.cfg.batch_size)
    ckpt = {"model": run.net.model.state_dict(), "optimizer": run.net.optimizer.state_dict(),
            "variant": run.net.variant, "classes": list(run.data.classes), **held.to_checkpoint()}
    path = checkpoint_path(run.ckpt_dir, state.epoch + (1 if epoch_state else 0), state.step)
    save_checkpoint(ckpt, path)
    prune_checkpoints(run.ckpt_dir, run.cfg.keep_checkpoints)
    if best:
        save_checkpoint(ckpt, run.ckpt_dir / "best.pt")
    return path


def check_resumable(cfg: Config, d: distributed.Dist, state: RunState, path, say: Callable) -> None:
    """A resumed run must cut the data the same way; other differences are allowed but reported."""
    if (state.batch_size, state.world_size) not in ((cfg.batch_size, d.world), (None, 1)):
        raise CheckpointError(
            f"{path}: written by a run of --batch-size {state.batch_size} on {state.world_size} "
            f"process(es); this one has --batch-size {cfg.batch_size} on {d.world}. Resume with the same "
            "batch size and process count (they fix each step's images and the schedule)")
    old = state.config or {}
    for k in SAME_RUN:
        if k in old and old[k] != getattr(cfg, k):
            say(f"warning: --{k.replace('_', '-')} is {getattr(cfg, k)!r} here and {old[k]!r} in the checkpoint; "
                "continuing with this command line's value", file=sys.stderr)


def interrupt(run: Run, stop: StopRequest, path: Optional[Path]) -> None:
    """The run stops after a signal's checkpoint: says where it is and how to continue."""
    run.interrupted = stop.name or "SIGTERM"  # (another rank's signal)
    state, steps = run.state, run.sched.steps_per_epoch
    run.say(f"\n{run.interrupted}: stopped after step {state.step} (epoch {state.epoch + (1 if state.batch else 0)}, "
            f"batch {state.batch or steps}/{steps}); checkpoint written: {path}\n"
            f"To continue, run the same command with: --checkpoint-dir {path.parent if path else ''} --resume latest",
            file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# The final report (rank 0): per-class report, confusion matrix, plots, summary
# ------------------------------------------------------------------------------------------------
def final_report(run: Run, wall_seconds: float) -> dict:
    cfg, state = run.cfg, run.state
    summary = {"dataset": run.data.name, "test_split": run.data.test_name, "variant": run.net.variant,
               "backend": cfg.backend,
               "device": str(run.dev), "processes": run.d.world, "bf16": run.net.bf16,
               "threads": torch.get_num_threads() if run.dev.type == "cpu" else None,
               "epochs": state.epoch, "step": state.step, "interrupted": run.interrupted}
    if run.interrupted is not None or not run.d.main:
        return summary
    final = run.last_eval or test(run)
    cm = class_report(run, final)
    summary.update({"final_test_acc": final.acc, "final_test_top5": final.top5, "test_loss": final.loss,
                    "best_test_acc": max(state.best_acc, final.acc), "train_seconds": round(run.train_seconds, 1),
                    "images_per_s": round(run.train_images / run.train_seconds, 1) if run.train_seconds else None,
                    "wall_seconds": round(wall_seconds, 1)})
    print("\nsummary: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                    for k, v in summary.items() if v is not None))
    summary["confusion_matrix"] = cm
    return summary


def class_report(run: Run, final: Evaluation) -> torch.Tensor:
    """Prints the per-class report and the confusion matrix, draws the plots; returns the matrix."""
    ds, history = run.data, run.state.history
    cm = evaluate.confusion_matrix(final.pred, final.target, len(ds.classes))
    print(f"\n{ds.name} {ds.test_name}: per-class report\n{evaluate.classification_report(cm, ds.classes)}")
    print(f"\nconfusion matrix (rows: true class, columns: predicted)\n{evaluate.format_confusion(cm, ds.classes)}")
    if run.cfg.plot:
        confusion_png = str(Path(run.cfg.plot).with_suffix("")) + "-confusion.png"
        if history:
            evaluate.plot_curves(history, run.cfg.plot)
        evaluate.plot_confusion(cm, ds.classes, confusion_png)
        print(f"plots: {run.cfg.plot if history else '(no epochs, no curves)'}, {confusion_png}")
    return cm


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
