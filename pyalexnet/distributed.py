"""Data-parallel training through PyTorch's own engine, launched by torchrun.

``torchrun --standalone --nproc-per-node=N -m pyalexnet.train ...`` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK (and MASTER_ADDR/PORT) in their environment; :func:`setup` joins them into one
process group (nccl on GPUs, gloo on CPUs), one GPU per process (cuda:LOCAL_RANK). The trainer wraps
the model in DistributedDataParallel, gives each rank its slice of every global batch, and lets
rank 0 alone print, log, evaluate and write checkpoints; every rank resumes from the same file.

BatchNorm: each rank would otherwise normalise with the statistics of its own slice, so N processes
would train a different function from one process given the combined batch. On GPUs the trainer
uses torch.nn.SyncBatchNorm; that one refuses CPU tensors, so on CPUs :class:`SyncBatchNorm2d`
(below) reduces the batch statistics across ranks with a differentiable all_reduce instead.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Dist", "setup", "teardown", "SyncBatchNorm2d", "convert_sync_batchnorm", "all_sum", "any_rank"]


@dataclass
class Dist:
    """This process's place in the job: rank, world size, local rank (the GPU it drives)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer (torchrun sets it)") from None


def setup(device: str) -> tuple[Dist, torch.device]:
    """Joins the torchrun job described by the environment (a single process when WORLD_SIZE is unset
    or 1) and returns it with this process's device. ``device``: "auto", "cpu", "cuda" or "cuda:N"."""
    d = Dist(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))
    if d.world < 1 or not 0 <= d.rank < d.world:
        raise ValueError(f"RANK={d.rank} and WORLD_SIZE={d.world} do not describe a process of a job")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {device}: this machine has no CUDA GPU that torch can use "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); "
                             "use --device cpu")
        if d.enabled:  # one GPU per process
            dev = torch.device("cuda", d.local_rank)
        index = 0 if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"--device {dev}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        dev = torch.device("cuda", index)
        torch.cuda.set_device(dev)
    elif dev.type != "cpu":
        raise ValueError(f"--device {device!r}: expected cpu, cuda, cuda:N or auto")
    if d.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo",
                                device_id=dev if dev.type == "cuda" else None)
    return d, dev


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(t: Tensor, d: Dist) -> Tensor:
    """The sum of t over the ranks (t itself in a single process)."""
    if d.enabled:
        t = t.clone()
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """Whether flag is set on any rank: every rank must call it at the same point."""
    if not d.enabled:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


class _AllSum(torch.autograd.Function):
    """Sum over the ranks, differentiable: the gradient of every rank's copy of the sum is the sum of
    the ranks' incoming gradients (each rank's loss depends on every rank's input through it)."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        g = g.clone()
        dist.all_reduce(g)
        return g


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are those of the whole global batch: each rank's
    per-channel sum, sum of squares and count (float64) are added across ranks by a differentiable
    all_reduce (:class:`_AllSum`), so the gradient flows through the shared statistics as it does in
    one process. Works with gloo (CPU) and nccl. In
    eval mode, or outside a process group, it is BatchNorm2d. Same parameters and buffers (and
    state_dict keys) as BatchNorm2d."""

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xd = x.double()
        count = torch.full((1,), float(x.numel() // max(c, 1)), dtype=torch.float64, device=x.device)
        stats = _AllSum.apply(torch.cat([xd.sum((0, 2, 3)), (xd * xd).sum((0, 2, 3)), count]))
        n = stats[2 * c]
        if n.item() < 2:
            raise ValueError(f"SyncBatchNorm2d: the global batch has {int(n.item())} value(s) per channel; "
                             "batch statistics need at least 2")
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                f = (1.0 / float(self.num_batches_tracked)) if self.momentum is None else self.momentum
                self.running_mean.mul_(1 - f).add_(mean.to(self.running_mean.dtype), alpha=f)
                self.running_var.mul_(1 - f).add_((var * n / (n - 1)).to(self.running_var.dtype), alpha=f)
        scale = torch.rsqrt(var + self.eps)
        shift = -mean * scale
        if self.affine:
            scale = scale * self.weight.double()
            shift = shift * self.weight.double() + self.bias.double()
        y = xd * scale.view(1, c, 1, 1) + shift.view(1, c, 1, 1)
        return y.to(x.dtype)  # as BatchNorm2d on a CPU: the input's dtype (bfloat16 under autocast)


def convert_sync_batchnorm(model: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm2d of model made batch-synchronous: torch.nn.SyncBatchNorm on a GPU,
    :class:`SyncBatchNorm2d` on a CPU (parameters and running statistics kept)."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    for name, child in model.named_children():
        if type(child) is nn.BatchNorm2d:
            sync = SyncBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                   child.track_running_stats, device=device)
            sync.load_state_dict(child.state_dict())
            setattr(model, name, sync)
        else:
            convert_sync_batchnorm(child, device)
    return model


def default_threads(d: Dist) -> Optional[int]:
    """CPU threads per process when several processes share a machine and neither --threads nor
    OMP_NUM_THREADS says: the cores split between the local processes."""
    if not d.enabled or "OMP_NUM_THREADS" in os.environ:
        return None
    local = _env_int("LOCAL_WORLD_SIZE", d.world)
    return max(1, (os.cpu_count() or 1) // max(local, 1))
