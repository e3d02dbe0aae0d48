"""The softmax cross-entropy CUDA kernels (csrc/cuda/softmax_cross_entropy_kernels.cu), run on the CPU in
the emulation of CUDA (csrc/cuda/emulation.h) with AddressSanitizer and UBSan: forward (both work
splits: a warp per row for C <= 2048, a 512-thread block per row above; 16-byte vector and scalar
paths), finalize and backward, every dtype and option, against the float64 F.cross_entropy reference
and the CPU kernels, under two thread schedules that must agree bit for bit. No GPU needed.

Its kernels are listed in tests/test_emulation.py's EMULATED_TESTS (the coverage check).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import (REDUCED, REDUCTIONS, assert_backends_agree, assert_matches, grad_scale, random_logits, random_target,
                      random_weight, reference, torch_same_dtype, upstream_grad)
from emulation import harness

FWD = torch.ops.pyalexnet.softmax_cross_entropy_forward.default
BWD = torch.ops.pyalexnet.softmax_cross_entropy_backward.default
CODE = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}
DTYPES = tuple(CODE)


@dataclass(frozen=True)
class Case:
    N: int
    C: int
    dtype: torch.dtype = torch.float32
    row_stride: Optional[int] = None  # elements; None: C
    offset: int = 0                   # elements the logits (and gradient) start past a 64-byte boundary
    target_stride: int = 1
    target_i32: bool = False
    weighted: bool = False
    ignore_index: int = -100
    ignore_hits: bool = False         # every third target is ignore_index
    reduction: str = "mean"
    smoothing: float = 0.0
    mask_first: bool = False          # logits[:, 0] = -inf, no target 0

    @property
    def rs(self) -> int:
        return self.C if self.row_stride is None else self.row_stride


def _acc(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _inputs(c: Case):
    """Logits (an (N, C) view of a buffer whose gaps hold NaN, so a read outside the rows shows), targets
    (a strided view), weights, the incoming gradient."""
    n_buf = (c.N - 1) * c.rs + c.C if c.N else 0
    buf = torch.full((n_buf,), float("nan"), dtype=c.dtype)
    x = buf.as_strided((c.N, c.C), (c.rs, 1))
    x.copy_(random_logits(c.N, c.C, dtype=c.dtype))
    t_buf = random_target(max((c.N - 1) * c.target_stride + 1, 0), c.C)
    t = t_buf[::c.target_stride] if c.N else t_buf
    if c.ignore_hits and c.N:
        t[::3] = c.ignore_index
    if c.mask_first:
        x[:, 0] = float("-inf")
        t[t == 0] = 1
    if c.target_i32:
        t_buf = t_buf.int()
        t = t_buf[::c.target_stride] if c.N else t_buf
    w = random_weight(c.C, c.dtype) if c.weighted else None
    shape = (c.N,) if c.reduction == "none" else ()
    g = upstream_grad(torch.empty(shape, dtype=c.dtype))
    return buf, x, t_buf, t, w, g


def _args(c: Case, tmp: Path, schedule: str, phase: str = "both") -> list[str]:
    kv = dict(dtype=CODE[c.dtype], tgt="i32" if c.target_i32 else "i64", N=c.N, C=c.C, row_stride=c.rs,
              offset=c.offset, target_stride=c.target_stride, weighted=int(c.weighted),
              ignore_index=c.ignore_index, reduction=REDUCTIONS.index(c.reduction), smoothing=repr(c.smoothing),
              phase=phase, schedule=schedule)
    return ["xent", str(tmp), *(f"{k}={v}" for k, v in kv.items())]


def _write(tmp: Path, c: Case, buf, t_buf, w, g):
    acc = _acc(c.dtype)
    (tmp / "logits.bin").write_bytes(harness.to_bytes(buf))
    (tmp / "target.bin").write_bytes(harness.to_bytes(t_buf))
    if w is not None:
        (tmp / "weight.bin").write_bytes(harness.to_bytes(w.to(acc)))
    (tmp / "grad.bin").write_bytes(harness.to_bytes(g.to(acc).reshape(-1)))


def emulate(c: Case, tmp: Path):
    """Runs forward + backward under both schedules; returns (inputs, outputs, launch log lines).
    The two schedules must agree bit for bit."""
    buf, x, t_buf, t, w, g = _inputs(c)
    _write(tmp, c, buf, t_buf, w, g)
    outs = {}
    for s in harness.SCHEDULES:
        r = harness.run(_args(c, tmp, s))
        harness.check_ok(r, f"{c} ({s})")
        outs[s] = {k: (tmp / f"{s}_{k}.bin").read_bytes() for k in ("loss", "lse", "wstats", "grad")}
    for k in outs["asc"]:
        assert outs["asc"][k] == outs["desc"][k], f"{k} differs between the two schedules: a race in the kernel"
    acc = _acc(c.dtype)
    o = outs["asc"]
    loss = harness.from_bytes(o["loss"], c.dtype)
    res = dict(loss=loss if c.reduction == "none" else loss.reshape(()),
               lse=harness.from_bytes(o["lse"], acc).reshape(c.N, 2), wstats=harness.from_bytes(o["wstats"], acc),
               grad=harness.from_bytes(o["grad"], c.dtype).reshape(c.N, c.C))
    launches = (tmp / "asc_launches.txt").read_text().splitlines()
    return (x, t, w, g), res, launches



def check_case(c: Case, tmp: Path) -> list[str]:
    """The emulated kernels' loss and gradient against the float64 reference (conftest's rule per
    dtype) and against the CPU kernels (loss, saved lse and wstats, gradient). Returns the launches."""
    (x, t, w, g), res, launches = emulate(c, tmp)
    opts = dict(reduction=c.reduction, ignore_index=c.ignore_index, label_smoothing=c.smoothing)
    ref_loss, ref_grad = reference(x, t, w, g, **opts)
    base_loss = base_grad = None
    if c.dtype in REDUCED:
        base_loss, base_grad = torch_same_dtype(x, t, w, g, **opts)
    assert_matches(res["loss"], ref_loss, base_loss, "loss")
    assert_matches(res["grad"], ref_grad, base_grad, "grad", scale=grad_scale(t, w, g, **opts))
    cpu_loss, cpu_lse, cpu_ws = FWD(x, t, w, c.ignore_index, c.reduction, c.smoothing)
    assert_backends_agree(res["loss"], cpu_loss, "loss vs CPU kernel")
    assert_backends_agree(res["lse"], cpu_lse, "lse vs CPU kernel")
    assert_backends_agree(res["wstats"], cpu_ws, "wstats vs CPU kernel")
    cpu_grad = BWD(g.to(_acc(c.dtype)), x, t, w, cpu_lse, cpu_ws, c.ignore_index, c.reduction, c.smoothing)
    assert_backends_agree(res["grad"], cpu_grad, "grad vs CPU kernel")
    return launches


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64), ids=str)
def test_first_class_masked_with_smoothing(tmp_path, dtype):
    """logits[:, 0] = -inf with label smoothing: the loss is +inf, as PyTorch's, not NaN (the smoothing
    sum's shift is the first logit only when that is finite); the gradient matches the reference."""
    c = Case(6, 40, dtype, reduction="none", smoothing=0.2, mask_first=True)
    (x, t, w, g), res, _ = emulate(c, tmp_path)
    want = F.cross_entropy(x.double(), t, reduction="none", label_smoothing=0.2)
    assert torch.isinf(want).all() and torch.equal(res["loss"].double(), want)
    opts = dict(reduction="none", ignore_index=-100, label_smoothing=0.2)
    _, ref_grad = reference(x, t, w, g, **opts)
    assert_matches(res["grad"], ref_grad, None, "grad", scale=grad_scale(t, w, g, **opts))


def _variants(launches: list[str], kernel: str) -> set[tuple[str, ...]]:
    """Template arguments of each launch of kernel, e.g. ('float', 'long int', '32', '256', 'true')."""
    pat = re.compile(re.escape(kernel) + r"<([^>]*)>")
    return {tuple(a.strip() for a in m.group(1).split(",")) for line in launches for m in pat.finditer(line)}


# ------------------------------------------------------------------------------------------------
# Every work split and memory path, every dtype
# ------------------------------------------------------------------------------------------------
# (N, C, row_stride, offset) -> which kernel variants it must take: (G, forward vector path,
# backward vector path). Row strides are multiples of 8 elements (16 bytes for every dtype) where the
# vector path is wanted; C = 21 / 2053 leave a scalar tail after the vectors (and send backward, which
# needs C * size % 16 == 0, to its scalar path); offset 1 misaligns the rows (scalar everywhere).
PATHS = {
    "warp_vec": ((37, 40, None, 0), ("32", "true", "true")),
    # C = 1000: lanes with four vectors left take the unrolled loop (four 16-byte loads, then the math)
    # and the rest the one-vector loop (float32 and bfloat16 alike; float64 has no unrolled loop)
    "warp_vec_unrolled": ((5, 1000, None, 0), ("32", "true", "true")),
    "warp_vec_tail": ((37, 21, 24, 0), ("32", "true", "false")),
    "warp_odd_stride": ((19, 40, 41, 0), ("32", "false", "false")),
    "warp_misaligned": ((19, 40, None, 1), ("32", "false", "false")),
    "block_vec": ((3, 2064, None, 0), ("512", "true", "true")),
    "block_vec_unrolled": ((2, 16400, None, 0), ("512", "true", "true")),
    "block_vec_tail": ((3, 2053, 2056, 0), ("512", "true", "false")),
    "block_misaligned": ((2, 2056, None, 1), ("512", "false", "false")),
}
# Option sets, rotated over the (path, dtype) grid so each dtype and each path meets several.
OPTION_SETS = (
    dict(reduction="mean"),
    dict(reduction="sum", weighted=True, smoothing=0.25, target_i32=True),
    dict(reduction="none", ignore_hits=True, target_stride=3),
    dict(reduction="mean", weighted=True, ignore_index=2, ignore_hits=True, smoothing=0.1, target_i32=True,
         target_stride=2),
    dict(reduction="none", weighted=True, smoothing=0.25),
)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("path", PATHS)
def test_matches_reference(tmp_path, path, dtype):
    (N, C, rs, off), (G, fwd_vec, bwd_vec) = PATHS[path]
    k = list(PATHS).index(path) + DTYPES.index(dtype)
    c = Case(N, C, dtype, rs, off, **OPTION_SETS[k % len(OPTION_SETS)])
    launches = check_case(c, tmp_path)
    fwd = _variants(launches, "softmax_cross_entropy_forward_kernel_impl")
    bwd = _variants(launches, "softmax_cross_entropy_backward_kernel_impl")
    assert {(v[2], v[4]) for v in fwd} == {(G, fwd_vec)}, f"forward took {fwd}"
    assert {(v[2], v[4]) for v in bwd} == {(G, bwd_vec)}, f"backward took {bwd}"
    assert any("softmax_cross_entropy_finalize_kernel_impl" in line for line in launches)


@pytest.mark.parametrize("smoothing", (0.0, 0.25))
@pytest.mark.parametrize("ignore", ("absent", "hit_default", "hit_class"))
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_options(tmp_path, reduction, weighted, ignore, smoothing):
    """The option grid of the CPU tests on the warp-per-row kernels: N = 11 rows (a partial block of 8
    rows), C = 13 (not a multiple of any vector width), int32 targets where a class is ignored."""
    ii = {"absent": -100, "hit_default": -100, "hit_class": 2}[ignore]
    c = Case(11, 13, torch.float32, weighted=weighted, ignore_index=ii, ignore_hits=ignore != "absent",
             reduction=reduction, smoothing=smoothing, target_i32=ignore == "hit_class")
    check_case(c, tmp_path)


@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_all_ignored(tmp_path, reduction):
    """Every target ignored: mean is 0/0 = NaN, sum 0, the gradient exact zeros."""
    c = Case(4, 7, torch.float32, ignore_index=-100, reduction=reduction)
    buf, x, t_buf, t, w, g = _inputs(c)
    t_buf.fill_(-100)
    _write(tmp_path, c, buf, t_buf, w, g)
    for s in harness.SCHEDULES:
        harness.check_ok(harness.run(_args(c, tmp_path, s)), s)
    loss = harness.from_bytes((tmp_path / "asc_loss.bin").read_bytes(), torch.float32)
    grad = harness.from_bytes((tmp_path / "asc_grad.bin").read_bytes(), torch.float32)
    assert (loss.isnan() if reduction == "mean" else loss == 0).all(), loss
    assert (grad == 0).all() and not grad.signbit().any()


@pytest.mark.parametrize("reduction", ("mean", "sum"))
def test_empty_batch(tmp_path, reduction):
    """N = 0: no row kernel runs, the finalize kernel alone writes the loss (NaN for mean, 0 for sum)
    and wstats; backward launches nothing."""
    c = Case(0, 5, torch.float32, reduction=reduction, weighted=True)
    buf, x, t_buf, t, w, g = _inputs(c)
    _write(tmp_path, c, buf, t_buf, w, g)
    r = harness.run(_args(c, tmp_path, "asc"))
    harness.check_ok(r, "empty batch")
    loss = harness.from_bytes((tmp_path / "asc_loss.bin").read_bytes(), torch.float32)
    ws = harness.from_bytes((tmp_path / "asc_wstats.bin").read_bytes(), torch.float32)
    assert (loss.isnan() if reduction == "mean" else loss == 0).all(), loss
    assert ws[0] == 0 and ws[1] == pytest.approx(w.double().sum().item(), rel=1e-6)
    launches = (tmp_path / "asc_launches.txt").read_text().splitlines()
    assert len(launches) == 1 and "finalize" in launches[0], launches


@pytest.mark.parametrize("phase", ("forward", "backward"))
@pytest.mark.parametrize("C", (9, 2050), ids=("warp_per_row", "block_per_row"))
def test_bad_target(tmp_path, phase, C):
    """A target outside [0, C) that is not ignore_index: the kernel's printf names it and its row, and
    its trap fails the launch (an error, not a wrong loss)."""
    c = Case(3, C, torch.float32, reduction="sum", target_i32=True)
    buf, x, t_buf, t, w, g = _inputs(c)
    t_buf[1] = C + 4
    _write(tmp_path, c, buf, t_buf, w, g)
    if phase == "backward":  # saved values from a good forward; the backward kernel must trap itself
        (tmp_path / "lse.bin").write_bytes(np.zeros(2 * c.N, np.float32).tobytes())
        (tmp_path / "wstats.bin").write_bytes(np.ones(2, np.float32).tobytes())
    r = harness.run(_args(c, tmp_path, "asc", phase="backward" if phase == "backward" else "both"))
    assert r.returncode == 3, f"rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    message = (f"target {C + 4} at position 1 is out of range for {C} classes (valid: 0..{C - 1}, or "
               f"ignore_index = -100)")
    assert message in r.stdout, r.stdout  # the kernel's printf
    kernel = "forward" if phase == "forward" else "backward"
    # the launch's error: the kernel, the trapping thread, and what it printed
    assert f"softmax_cross_entropy_{kernel}_kernel_impl" in r.stderr, r.stderr
    assert f"__trap() called after printing: pyalexnet softmax_cross_entropy: {message}" in r.stderr, r.stderr
