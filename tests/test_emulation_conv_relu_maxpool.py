"""The fused conv + ReLU + max-pool CUDA kernels (csrc/cuda/conv_relu_maxpool_*.cu), run on the CPU
in the emulation of CUDA (csrc/cuda/emulation.h) with AddressSanitizer and UBSan: forward (16-byte and
element gathers, image groups, patches with halos, 1x1 windows with their mask bits, windows larger
than a tile in several passes), the data, weight and bias gradients and their reductions, for every
dtype and math mode (mma.sync bf16/f16 and TF32, FP32 and FP64 FMA), under two thread schedules that
must agree bit for bit. No GPU needed.

- Exact inputs (small integers scaled by powers of 2, as in test_conv_relu_maxpool.py): every product
  and sum is exact in every arithmetic, so the kernels must give the CPU kernels' results bit for bit,
  codes included.
- Gaussian inputs in float64 and float32 (FMA) against the float64 reference, and in bfloat16 with
  flash-attention's rule, on fixed and randomly drawn configurations.

Its kernels are listed in tests/test_emulation.py's EMULATED_TESTS (the coverage check).
"""
from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pytest
import torch

from conftest import REDUCED, assert_matches, thorough_unless
from emulation import harness
from test_conv_relu_maxpool import (CONV_TOL, SPECIAL, Cfg, assert_close_scaled, draw_cfg, draw_separated, exact_inputs,
                                    eager, gaussian_inputs, nonzero_ints, reference, run)
from pyalexnet.ops import conv_relu_maxpool

FWD = torch.ops.pyalexnet.conv_relu_maxpool_forward.default
CODE = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}
# (dtype, tf32): every arithmetic of the kernels
MODES = [(torch.float32, False), (torch.float32, True), (torch.float16, False), (torch.bfloat16, False),
         (torch.float64, False)]
MODE_IDS = ["f32", "tf32", "f16", "bf16", "f64"]

CASES = {
    # conv1: 3 channels (the tensor cores' 4-channel gathers, FMA's element gathers), stride 4, halo patches
    "conv1_like": Cfg(2, 3, 35, 35, 16, (11, 11), (4, 4), (2, 2)),
    # 32 channels: 16-byte gathers in every dtype; a conv patch larger than one tile (3x3 pooled)
    "conv2_like": Cfg(2, 32, 13, 13, 24, (5, 5), padding=(2, 2)),
    # 1x1 windows: two images per tile, two channel tiles with FMA (one on the tensor cores), the
    # ReLU mask's bits
    "conv3_like_groups": Cfg(3, 16, 7, 7, 70, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
    # 1x1 windows, small images: tiles of 18 whole rows running across images (ForwardTile's
    # kFlatRows), 5 x 7 rows in two tiles, the first ending inside image 2
    "flat_rows": Cfg(5, 16, 7, 7, 24, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
    # the same, subsampling (stride 2x2: 6x6 of 11x11 conv outputs), 7 x 6 rows in tiles of 21
    "flat_rows_subsampled": Cfg(7, 8, 11, 11, 16, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(2, 2)),
    # a pooled layer whose halo (2 x 7 pooled tiles of 5 x 15 conv outputs: 768 rows for 450) costs
    # more than the conv output's round trip: flat tiles of 128 conv outputs across the images, then
    # the pooling kernel (kFlatConv, on the tensor cores; FMA keeps the fused tiles)
    "flat_conv": Cfg(2, 16, 15, 15, 8, (5, 5), padding=(2, 2)),
    # 1x1 windows subsampling (stride 1x2) with 20 outputs a row: tiles of whole mask bytes
    "mask_bytes": Cfg(1, 5, 12, 40, 6, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 2), bias=False),
    # a 255-position window: two passes with a running maximum
    "window_in_passes": Cfg(1, 4, 20, 21, 5, (2, 2), pool_kernel=(15, 17), pool_stride=(4, 5)),
    # 40 channels: the vector path only where 40 is a multiple of the K step (float64)
    "k_tail": Cfg(2, 40, 6, 7, 9, (3, 2), padding=(1, 0), pool_kernel=(2, 2), pool_stride=(2, 1)),
    # 64 output channels, a multiple of every K step: the data gradient copies 16-byte vectors of
    # the un-pooled gradient with no zero channels; stride 2 leaves input pixels that no conv output reads
    "co_multiple_of_k_step": Cfg(2, 16, 11, 10, 64, (3, 3), (2, 2), (1, 1), (2, 2), (1, 2)),
    # 1x1 windows with 32 channels: the mask bits un-pooled 16 bytes of channels at a time
    "mask_bits_vec": Cfg(2, 8, 9, 20, 32, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 2)),
    # 136 channels in and out: two channel tiles, the second partial, in every pass of the 128-column
    # tensor-core tiles (forward's output channels, dgrad's input channels)
    "channel_tiles": Cfg(1, 136, 5, 6, 136, (3, 3), padding=(1, 1), pool_kernel=(2, 2), pool_stride=(2, 2)),
    # 10 channels (4-channel gathers, 12 a tap, the forward's and the weight gradient's) and 2-wide
    # kernels: a K step spans several kernel columns and rows, the last one passes K; the weight
    # gradient's 144 columns make two column tiles, its 192 positions splits of two K steps
    "quads_across_taps": Cfg(4, 10, 7, 9, 24, (6, 2), padding=(2, 0)),
    "rect_everything": SPECIAL["rect_everything"],
    "padding_beyond_row": SPECIAL["padding_beyond_row"],
}
BIG = {"conv1_like"}  # half a minute and more per mode: `thorough` where a test repeats it (pytest --quick)


def case_modes(names, quick_modes=()):
    """(name, mode) parameters with ids name-mode; the big cases marked `thorough` but in quick_modes."""
    return [pytest.param(n, m, id=f"{n}-{i}", marks=[pytest.mark.thorough] if n in BIG and i not in quick_modes
                         else []) for n in names for m, i in zip(MODES, MODE_IDS)]


def emulate(c: Cfg, x, w, b, gy, tmp: Path, tf32: bool = False, need: str = "111", sm_count: int = 3,
            version: int = 2) -> dict:
    """The kernels' out, code, dx, dw, db (NCHW, as the op returns them) for both schedules, after
    checking that the schedules agree bit for bit. version 1: the forward kernels' first version
    (operand loads and stores through 2 stages); 2 (the default): cp.async through 4 stages. The
    backward has one version."""
    dtype = x.dtype
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    (tmp / "x.bin").write_bytes(harness.to_bytes(x.permute(0, 2, 3, 1)))
    (tmp / "w.bin").write_bytes(harness.to_bytes(w.permute(0, 2, 3, 1).to(dtype)))  # the driver packs it
    (tmp / "gy.bin").write_bytes(harness.to_bytes(gy.permute(0, 2, 3, 1)))
    if b is not None:
        (tmp / "bias.bin").write_bytes(harness.to_bytes(b.to(acc)))
    args = ["crm", str(tmp), f"dtype={CODE[dtype]}", f"tf32={int(tf32)}", f"N={c.N}", f"Ci={c.Ci}", f"H={c.H}",
            f"W={c.W}", f"Co={c.Co}", f"kh={c.k[0]}", f"kw={c.k[1]}", f"sh={c.stride[0]}", f"sw={c.stride[1]}",
            f"ph={c.padding[0]}", f"pw={c.padding[1]}", f"pkh={c.pool_kernel[0]}", f"pkw={c.pool_kernel[1]}",
            f"psh={c.pool_stride[0]}", f"psw={c.pool_stride[1]}", f"bias={int(b is not None)}", f"need={need}",
            f"sm_count={sm_count}", f"version={version}"]
    outs = {}
    for s in harness.SCHEDULES:
        r = harness.run(args + [f"schedule={s}"], timeout=600)
        harness.check_ok(r, f"{c} ({s})")
        outs[s] = {k: (tmp / f"{s}_{k}.bin").read_bytes() for k in ("out", "code", "dx", "dw", "db")}
    for k in outs["asc"]:
        assert outs["asc"][k] == outs["desc"][k], f"{c}: {k} differs between the two thread schedules (a race)"
    o = outs["asc"]
    hp, wp = c.out_size()
    wcode = (wp + 7) // 8 if tuple(c.pool_kernel) == (1, 1) else wp
    res = {"out": harness.from_bytes(o["out"], dtype).view(c.N, hp, wp, c.Co).permute(0, 3, 1, 2),
           "code": harness.from_bytes(o["code"], torch.uint8).view(c.N, hp, wcode, c.Co).permute(0, 3, 1, 2)}
    res["dx"] = harness.from_bytes(o["dx"], dtype).view(c.N, c.H, c.W, c.Ci).permute(0, 3, 1, 2) if need[0] == "1" else None
    res["dw"] = harness.from_bytes(o["dw"], dtype).view(c.Co, c.Ci, *c.k) if need[1] == "1" else None
    res["db"] = harness.from_bytes(o["db"], dtype) if need[2] == "1" else None
    res["bytes"] = {k: len(o[k]) for k in ("dx", "dw", "db")}  # what the driver wrote of each gradient
    res["launched"] = harness.launched(tmp / "asc_launches.txt")
    return res


def _cpu(c: Cfg, x, w, b, gy):
    out, code = FWD(x, w, b, *[list(a) for a in c.args()])
    _, dx, dw, db = run(conv_relu_maxpool, x, w, b, gy, *c.args())
    return {"out": out, "code": code, "dx": dx, "dw": dw, "db": db}


@pytest.mark.parametrize("name, mode", case_modes(sorted(CASES), quick_modes=("f32",)))
def test_exact_inputs_match_the_cpu_kernels(tmp_path, name, mode):
    """Exact inputs: outputs, codes and all three gradients equal the CPU kernels' bit for bit."""
    dtype, tf32 = mode
    c = CASES[name]
    x, w, b = exact_inputs(c, dtype)
    gy = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
    got, want = emulate(c, x, w, b, gy, tmp_path, tf32=tf32), _cpu(c, x, w, b, gy)
    for k in ("out", "code", "dx", "dw", "db"):
        if want[k] is None:
            continue
        a, e = got[k], want[k]
        assert a.shape == e.shape, f"{k}: shape {tuple(a.shape)} != {tuple(e.shape)}"
        assert torch.equal(a, e), f"{name} {k}: {(a.double() - e.double()).abs().max().item()} max diff"


# The forward's tiles in the flat cases (blocks along the grid's x, one channel tile): flat tiles
# across images, where per-image tiles would need 3, 3 and 8 blocks.
FLAT_TILES = {"flat_rows": 2, "flat_rows_subsampled": 2, "flat_conv": 4}


@pytest.mark.parametrize("name", sorted(FLAT_TILES))
def test_flat_tiles_where_they_save_rows(tmp_path, name):
    """The planner takes the flat tiles for these cases (kFlatRows: whole pooled rows across
    images; kFlatConv: 128 conv outputs across images, then the pooling kernel), read from the
    forward's launch."""
    c = CASES[name]
    x, w, b = exact_inputs(c, torch.bfloat16)
    gy = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.bfloat16)
    got = emulate(c, x, w, b, gy, tmp_path, need="000")
    log = (tmp_path / "asc_launches.txt").read_text().splitlines()
    grids = [re.search(r" grid=(\d+),", line).group(1) for line in log if "forward_kernel_impl" in line]
    assert grids == [str(FLAT_TILES[name])], log
    assert ("conv_relu_maxpool_pool_kernel_impl" in got["launched"]) == (name == "flat_conv")


@pytest.mark.parametrize("mode", MODES, ids=MODE_IDS)
@pytest.mark.parametrize("name", thorough_unless(("conv1_like", "conv2_like", "k_tail", "co_multiple_of_k_step",
                                                   "conv3_like_groups", "flat_rows", "flat_conv"), lambda n: n not in BIG))
def test_both_versions_give_the_same_bits(tmp_path, name, mode):
    """The forward kernels' two versions (cp.async through 4 stages, the default; loads and stores
    through 2 stages) run the same products in the same order, so on Gaussian inputs (every TF32
    input rounded, bf16/f16 not exact) the output and the codes agree bit for bit. Between them the
    cases take every loader: element, 4-channel and 16-byte gathers of the input; the version-2
    run's backward takes the un-pooled gradient's (channels a multiple of the K step, of 16 bytes,
    or neither)."""
    dtype, tf32 = mode
    c = CASES[name]
    x, w, b = gaussian_inputs(c, dtype)
    gy = torch.randn(c.N, c.Co, *c.out_size(), dtype=torch.float64).to(dtype)
    (tmp_path / "a").mkdir(), (tmp_path / "s").mkdir()
    new = emulate(c, x, w, b, gy, tmp_path / "a", tf32=tf32)
    old = emulate(c, x, w, b, gy, tmp_path / "s", tf32=tf32, need="000", version=1)
    for k in ("out", "code"):
        assert torch.equal(new[k], old[k]), f"{name} {k}: {(new[k].double() - old[k].double()).abs().max().item()}"
    if tf32:  # the TF32 rounding really happened: float32 FMA gives other bits
        fma = emulate(c, x, w, b, gy, tmp_path / "a", need="000")
        assert not torch.equal(new["out"], fma["out"])


def _check_gaussian(c: Cfg, dtype, tmp: Path, what: str):
    # float32 against float64: a window whose top two conv values (or whose maximum and 0) lie closer
    # than float32's rounding may route its gradient elsewhere, legitimately (test_conv_relu_maxpool's
    # note on ties; seed 1891627494 drew a gap of 3e-8 in conv2_like). Such draws are redrawn.
    x, w, b = draw_separated(c, 1e-4, dtype=dtype) if dtype == torch.float32 else gaussian_inputs(c, dtype)
    gy = torch.randn(c.N, c.Co, *c.out_size(), dtype=torch.float64).to(dtype)
    got = emulate(c, x, w, b, gy, tmp)
    ref = reference(x, w, b, gy, *c.args())
    base = run(eager, x, w, b, gy, *c.args()) if dtype in REDUCED else (None,) * 4
    for k, r, bl in zip(("out", "dx", "dw", "db"), ref, base):
        if r is None:
            continue
        if dtype in REDUCED:
            assert_matches(got[k], r, bl, f"{what} {k}")
        else:
            assert_close_scaled(got[k], r, CONV_TOL[dtype], f"{what} {k}")


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", thorough_unless(("conv1_like", "conv2_like", "conv3_like_groups", "window_in_passes"),
                                                  lambda n: n not in BIG))
def test_gaussian_inputs_match_the_reference(tmp_path, name, dtype):
    _check_gaussian(CASES[name], dtype, tmp_path, name)


@pytest.mark.parametrize("dtype", (torch.float64, torch.bfloat16), ids=str)
def test_random_configurations(tmp_path, fresh_seed, dtype):
    """Configurations drawn at random (kernels 1..11, strides 1..4, padding, pools, channels)."""
    rng = random.Random(fresh_seed)
    for i in range(2):
        c = draw_cfg(rng, max_macs=4e5)
        d = tmp_path / str(i)
        d.mkdir()
        _check_gaussian(c, dtype, d, str(c))


@pytest.mark.parametrize("mode", [(torch.bfloat16, False), (torch.float32, True)], ids=["bf16", "tf32"])
def test_random_configurations_both_versions(tmp_path, fresh_seed, mode):
    """Random configurations, half of them with channel counts rounded up to a multiple of 8 or 32
    (the 16-byte and K-step paths): the forward's version 2 gives version 1's bits."""
    dtype, tf32 = mode
    rng = random.Random(fresh_seed)
    for i in range(2):
        c = draw_cfg(rng, max_macs=3e5)
        if rng.random() < 0.5:
            m = rng.choice((8, 32))
            c = dataclasses.replace(c, Ci=-(-c.Ci // m) * m, Co=-(-c.Co // m) * m)
        x, w, b = gaussian_inputs(c, dtype)
        gy = torch.randn(c.N, c.Co, *c.out_size(), dtype=torch.float64).to(dtype)
        d1, d2 = tmp_path / f"{i}v1", tmp_path / f"{i}v2"
        d1.mkdir(), d2.mkdir()
        old = emulate(c, x, w, b, gy, d1, tf32=tf32, need="000", version=1)
        new = emulate(c, x, w, b, gy, d2, tf32=tf32)  # its backward too: memory errors and races
        for k in ("out", "code"):
            assert torch.equal(new[k], old[k]), f"{c} {k}: {(new[k].double() - old[k].double()).abs().max().item()}"


GRADIENT_KERNELS = {"dx": "conv_relu_maxpool_dgrad_kernel_impl", "dw": "conv_relu_maxpool_wgrad_kernel_impl",
                    "db": "conv_relu_maxpool_bias_grad_kernel_impl"}


@pytest.mark.parametrize("need", ("100", "010", "001", "011"))
def test_only_the_asked_gradients(tmp_path, need):
    """Each gradient on its own: the same values as all three together, its own kernels launched and
    no other gradient's, nothing written for a gradient not asked for."""
    c = CASES["conv2_like"]
    x, w, b = exact_inputs(c, torch.bfloat16)
    gy = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.bfloat16)
    want = _cpu(c, x, w, b, gy)
    got = emulate(c, x, w, b, gy, tmp_path, need=need)
    for k, flag in zip(("dx", "dw", "db"), need):
        if flag == "1":
            assert torch.equal(got[k], want[k]), k
        else:
            assert got["bytes"][k] == 0, f"{k}: {got['bytes'][k]} bytes written, not asked for"
        assert (GRADIENT_KERNELS[k] in got["launched"]) == (flag == "1"), (k, sorted(got["launched"]))


def test_many_splits_of_the_weight_gradient(tmp_path):
    """A large multiprocessor count cuts the weight gradient's positions into many partial sums."""
    c = CASES["conv1_like"]
    x, w, b = exact_inputs(c, torch.float32)
    gy = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.float32)
    got = emulate(c, x, w, b, gy, tmp_path, sm_count=64)
    want = _cpu(c, x, w, b, gy)
    for k in ("dw", "db", "dx"):
        assert torch.equal(got[k], want[k]), k
