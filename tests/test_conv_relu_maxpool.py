"""Tests of the fused conv2d + ReLU + max-pool op on the CPU: values and all three gradients against a
float64 ``F.max_pool2d(F.relu(F.conv2d(...)))`` reference over many random configurations, every
dtype, gradcheck, opcheck, torch.compile, needs_input_grad, layouts, the saved argmax codes, bad
inputs, and the nn module. (The memory the op saves for backward: test_conv_relu_maxpool_memory.py.)

Inputs are fresh random numbers every run (conftest.fresh_seed seeds torch and prints the seed; the
configuration draws use the same seed, so PYALEXNET_TEST_SEED=<seed> replays a failure).

Gradients and ties. A max-pool routes the gradient to its window's first maximum and ReLU passes it
only where the conv output is > 0: both are discontinuous decisions. Two computations of the same
conv that differ by rounding can decide differently where two window values are nearly tied or a
window's maximum is nearly 0, and then the gradient legitimately lands on another input position. So:
- float64 with Gaussian inputs (test_matches_reference_float64): our conv and PyTorch's differ by
  ~1e-15 relative, and a near-tie that close has a probability of ~1e-13 per window: the decisions
  agree, and values and gradients are compared tightly.
- every dtype (test_dtypes): inputs, weights, bias and incoming gradients are small nonzero integers
  scaled by powers of 2 (exact in float16 and bfloat16), so every conv output is an exact multiple of
  2^-5 below 2^24 units: exact in any summation order in float32 (the accumulator of every dtype) and
  float64. Exact ties and exact zeros do occur, but every computation sees the same exact values and
  breaks them the same way (first maximum; 0 passes no gradient), so the gradient routing is the
  reference's. What remains is rounding of the results to the dtype.
- gradcheck draws Gaussian inputs and redraws until every window's top two conv values and its
  maximum's distance to 0 are > 1e-3 (well_separated), far beyond gradcheck's 1e-6 perturbations.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import pyalexnet  # noqa: F401  (registers torch.ops.pyalexnet)
from conftest import REDUCED, assert_matches
from pyalexnet.nn import ConvReLUMaxPool2d
from pyalexnet.ops import conv_relu_maxpool

FWD = torch.ops.pyalexnet.conv_relu_maxpool_forward.default
BWD = torch.ops.pyalexnet.conv_relu_maxpool_backward.default
NO_GRAD = 255

# Tolerances against the float64 reference for float64 and float32: rtol, and atol as a fraction of
# the compared tensor's largest reference value (its scale). float16/bfloat16: conftest.assert_matches
# (flash-attention's rule: error <= 2 x PyTorch's own same-dtype error + eps(dtype) * max|ref|).
CONV_TOL = {torch.float64: 1e-10, torch.float32: 1e-4}


# ------------------------------------------------------------------------------------------------
# Configurations, inputs, reference
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Cfg:
    N: int
    Ci: int
    H: int
    W: int
    Co: int
    k: tuple
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    pool_kernel: tuple = (3, 3)
    pool_stride: tuple = (2, 2)
    bias: bool = True

    def conv_size(self) -> tuple:
        return tuple((n + 2 * p - k) // s + 1 if n + 2 * p >= k else 0
                     for n, k, s, p in zip((self.H, self.W), self.k, self.stride, self.padding))

    def out_size(self) -> tuple:
        return tuple((c - pk) // ps + 1 if c >= pk else 0
                     for c, pk, ps in zip(self.conv_size(), self.pool_kernel, self.pool_stride))

    def args(self) -> tuple:
        return self.stride, self.padding, self.pool_kernel, self.pool_stride

    def macs(self) -> int:
        hc, wc = self.conv_size()
        return self.N * self.Co * self.Ci * self.k[0] * self.k[1] * hc * wc


def draw_cfg(rng: random.Random, max_macs: float = 3e6) -> Cfg:
    """A random configuration with a non-empty output: kernels 1..11, strides 1..4, padding 0..5
    (square or rectangular), pools 1/2/3 with strides 1/2/3, H and W 1..41, N 1..5, channels 1..130
    (log-uniform, so that small ones are common), bias or not; draws over max_macs are redrawn."""
    def pair(lo, hi, choices=None):
        a = rng.choice(choices) if choices else rng.randint(lo, hi)
        if rng.random() < 0.5:
            return (a, a)
        return (a, rng.choice(choices) if choices else rng.randint(lo, hi))

    def channels():
        return max(1, min(130, int(round(math.exp(rng.uniform(0, math.log(130)))))))

    while True:
        c = Cfg(N=rng.randint(1, 5), Ci=channels(), H=rng.randint(1, 41), W=rng.randint(1, 41),
                Co=channels(), k=pair(1, 11), stride=pair(1, 4), padding=pair(0, 5),
                pool_kernel=pair(0, 0, (1, 2, 3)), pool_stride=pair(0, 0, (1, 2, 3)),
                bias=rng.random() < 0.7)
        if min(c.out_size()) >= 1 and c.macs() <= max_macs:  # skip empty outputs and slow draws
            return c


# AlexNet's layers with fewer channels and smaller images (the real ones: 224 -> conv1 55 -> pool 27
# -> conv2 27 -> pool 13 -> conv3..5 13 -> pool 6), and configurations that cut the work into several
# bands of pooled rows (large images) or group several images into one GEMM (small outputs).
ALEXNET = {
    "conv1_11x11_s4_p2_pool3s2": Cfg(2, 3, 67, 67, 16, (11, 11), (4, 4), (2, 2)),
    "conv2_5x5_p2_pool3s2": Cfg(2, 16, 15, 15, 24, (5, 5), padding=(2, 2)),
    "conv3_3x3_p1_pool1s1": Cfg(2, 24, 7, 7, 32, (3, 3), padding=(1, 1), pool_kernel=(1, 1),
                                pool_stride=(1, 1)),
    "conv5_3x3_p1_pool3s2": Cfg(2, 32, 13, 13, 16, (3, 3), padding=(1, 1)),
}
SPECIAL = {
    **ALEXNET,
    "many_bands": Cfg(1, 3, 131, 127, 64, (3, 3), padding=(1, 1)),
    "many_bands_pool1": Cfg(2, 8, 97, 45, 40, (3, 3), padding=(1, 1), pool_kernel=(1, 1),
                            pool_stride=(1, 1)),
    "image_groups": Cfg(5, 20, 9, 9, 24, (3, 3), padding=(1, 1), bias=False),
    "wide_channels": Cfg(3, 130, 6, 5, 129, (3, 2), (1, 2), (1, 0), (2, 1), (1, 2)),
    "rect_everything": Cfg(2, 5, 23, 18, 7, (5, 2), (2, 1), (1, 3), (3, 2), (1, 3)),
    "kernel_1x1": Cfg(3, 9, 10, 11, 6, (1, 1), pool_kernel=(2, 2)),
    "pool_stride_gt_kernel": Cfg(2, 4, 17, 19, 5, (3, 3), pool_kernel=(1, 2), pool_stride=(3, 3)),
    "padding_ge_kernel": Cfg(2, 3, 4, 5, 4, (2, 3), (3, 1), (5, 4)),
    # left padding wider than the conv rows reach: for kx < pw - (Wc - 1) sw no column is valid (an
    # unclamped first valid column > Wc once made im2col write past its row and crash)
    "padding_beyond_row": Cfg(1, 2, 8, 3, 2, (10, 10), padding=(5, 5), pool_kernel=(3, 2),
                              pool_stride=(2, 3), bias=False),
    "padding_beyond_row_strided": Cfg(2, 3, 5, 1, 4, (3, 11), (1, 2), (2, 6), (1, 1), (1, 1)),
    "single_output": Cfg(1, 2, 5, 5, 1, (3, 3), pool_kernel=(3, 3)),
}


def gaussian(*shape, dtype=torch.float64) -> Tensor:
    return torch.randn(*shape, dtype=torch.float64).to(dtype)


def nonzero_ints(shape, hi: int, exponent: int, dtype) -> Tensor:
    """Random integers in +-[1, hi] times 2^exponent, exact in every floating dtype."""
    mag = torch.randint(1, hi + 1, shape, dtype=torch.float64)
    sign = torch.randint(0, 2, shape, dtype=torch.float64) * 2 - 1
    return (mag * sign * 2.0 ** exponent).to(dtype)


def gaussian_inputs(c: Cfg, dtype=torch.float64):
    x = gaussian(c.N, c.Ci, c.H, c.W, dtype=dtype)
    w = gaussian(c.Co, c.Ci, *c.k, dtype=dtype) / math.sqrt(c.Ci * c.k[0] * c.k[1])
    b = gaussian(c.Co, dtype=dtype) * 0.5 if c.bias else None
    return x, w, b


def exact_inputs(c: Cfg, dtype):
    """Integer-valued inputs scaled by powers of 2: x in +-{1..4}/4, w in +-{1..4}/8, bias in
    +-{1..16}/32 (the conv products' unit), so every conv output is an exact multiple of 2^-5."""
    x = nonzero_ints((c.N, c.Ci, c.H, c.W), 4, -2, dtype)
    w = nonzero_ints((c.Co, c.Ci, *c.k), 4, -3, dtype)
    b = nonzero_ints((c.Co,), 16, -5, dtype) if c.bias else None
    return x, w, b


def run(fn, x, w, b, grad_out, *args):
    """fn(x, w, b, *args) and its gradients d/d(x, w, b) for the incoming gradient grad_out (None
    for b without bias). The inputs keep their layout (detached, not copied)."""
    leaves = [t.detach().requires_grad_() for t in (x, w)] + ([] if b is None else [b.detach().requires_grad_()])
    out = fn(leaves[0], leaves[1], leaves[2] if b is not None else None, *args)
    grads = torch.autograd.grad(out, leaves, grad_out)
    return out.detach(), grads[0], grads[1], (grads[2] if b is not None else None)


def eager(x, w, b, stride, padding, pool_kernel, pool_stride):
    """The unfused path: the reference in float64 and PyTorch's same-dtype baseline otherwise."""
    return F.max_pool2d(F.relu(F.conv2d(x, w, b, stride, padding)), pool_kernel, pool_stride)


def reference(x, w, b, grad_out, *args):
    return run(eager, x.double(), w.double(), None if b is None else b.double(), grad_out.double(), *args)


def assert_close_scaled(actual: Tensor, ref: Tensor, tol: float, what: str):
    """|actual - ref| <= tol * |ref| + tol * max|ref| elementwise, shapes equal."""
    assert actual.shape == ref.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(ref.shape)}"
    scale = max(ref.abs().max().item(), 1e-30) if ref.numel() else 1.0
    torch.testing.assert_close(actual.double(), ref.double(), rtol=tol, atol=tol * scale,
                               msg=lambda m: f"{what} (scale {scale:.3e}): {m}")


def check(c: Cfg, x, w, b, grad_out=None, baseline: bool = False, what: str = ""):
    """Our op's output and gradients against the float64 reference, with the tolerance of x's dtype;
    for float16/bfloat16 with PyTorch's same-dtype eager path as the baseline. Returns ours."""
    dtype = x.dtype
    if grad_out is None:
        grad_out = gaussian(c.N, c.Co, *c.out_size(), dtype=dtype)
    ours = run(conv_relu_maxpool, x, w, b, grad_out, *c.args())
    ref = reference(x, w, b, grad_out, *c.args())
    base = run(eager, x, w, b, grad_out, *c.args()) if dtype in REDUCED else (None,) * 4
    for name, a, r, bl in zip(("out", "grad_x", "grad_weight", "grad_bias"), ours, ref, base):
        if r is None:
            assert a is None, name
            continue
        assert a.dtype == dtype, f"{what} {name}: dtype {a.dtype}"
        if dtype in REDUCED:
            assert_matches(a, r, bl, f"{what} {name}")
        else:
            assert_close_scaled(a, r, CONV_TOL[dtype], f"{what} {name}")
    return ours


def conv_values(c: Cfg, x, w, b) -> Tensor:
    return F.conv2d(x.double(), w.double(), None if b is None else b.double(), c.stride, c.padding)


def well_separated(c: Cfg, x, w, b, delta: float) -> bool:
    """Whether every pool window's largest conv value is > delta away from 0 and from the window's
    second largest: then small perturbations change neither the argmax nor the ReLU decision."""
    v = conv_values(c, x, w, b)
    win = F.unfold(v, c.pool_kernel, stride=c.pool_stride)  # (N, Co * pkh * pkw, L)
    win = win.view(c.N, c.Co, c.pool_kernel[0] * c.pool_kernel[1], -1)
    top = win.topk(min(2, win.shape[2]), dim=2).values
    ok = top[:, :, 0].abs() > delta
    if top.shape[2] == 2:
        ok &= (top[:, :, 0] - top[:, :, 1]) > delta
    return bool(ok.all())


@pytest.fixture
def rng(fresh_seed) -> random.Random:
    """Configuration draws seeded by the test's torch seed (printed; PYALEXNET_TEST_SEED replays)."""
    return random.Random(fresh_seed)


# ------------------------------------------------------------------------------------------------
# 1. Values and gradients against the float64 reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("draw", range(48))
def test_matches_reference_float64(rng, draw):
    """One random configuration per case (48 per run, fresh each run): output and all gradients."""
    for _ in range(draw):  # a different configuration per case from the same seed
        draw_cfg(rng)
    c = draw_cfg(rng)
    print(c)
    check(c, *gaussian_inputs(c), what=str(c))


@pytest.mark.parametrize("name", SPECIAL)
def test_special_configs_float64(name):
    c = SPECIAL[name]
    assert min(c.out_size()) >= 1
    check(c, *gaussian_inputs(c), what=name)


@pytest.mark.parametrize("name", ALEXNET)
def test_alexnet_float32_gaussian(name):
    """Realistic float32 values (Gaussian, Kaiming-scaled weights): the output, whose value is
    continuous across ties, to 1e-4 of its scale. (Gradients in float32: test_dtypes.)"""
    c = ALEXNET[name]
    x, w, b = gaussian_inputs(c, torch.float32)
    ours = conv_relu_maxpool(x, w, b, *c.args())
    ref = eager(x.double(), w.double(), b.double(), *c.args())
    assert_close_scaled(ours, ref, CONV_TOL[torch.float32], name)


# ------------------------------------------------------------------------------------------------
# 2. Every dtype, with exactly representable conv outputs (see the module docstring)
# ------------------------------------------------------------------------------------------------
DTYPE_CFGS = {**ALEXNET, "rect_everything": SPECIAL["rect_everything"],
              "image_groups": SPECIAL["image_groups"], "wide_channels": SPECIAL["wide_channels"]}


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", [*DTYPE_CFGS, "random1", "random2"])
def test_dtypes(name, dtype, rng):
    """float64 to 1e-10 and float32 to 1e-4 of the scale; float16/bfloat16 by flash-attention's rule
    (conftest.assert_matches: error <= 2 x PyTorch's same-dtype eager error + eps(dtype) max|ref|).
    The incoming gradient is +-{1..4}/2: exact in every dtype, never zero."""
    if name.startswith("random"):
        for _ in range(int(name[-1])):
            c = draw_cfg(rng, max_macs=1e6)
    else:
        c = DTYPE_CFGS[name]
    print(c)
    x, w, b = exact_inputs(c, dtype)
    grad_out = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
    check(c, x, w, b, grad_out, what=f"{name} {dtype}")


@pytest.mark.parametrize("name", ("conv2_5x5_p2_pool3s2", "conv3_3x3_p1_pool1s1"))
def test_float32_exact_inputs_are_exact(name):
    """With exact conv values, float32 accumulation makes the float32 results exact, routing
    included: any misrouted gradient or dropped term shows here as a nonzero difference."""
    c = ALEXNET[name]
    x, w, b = exact_inputs(c, torch.float32)
    grad_out = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.float32)
    ours = run(conv_relu_maxpool, x, w, b, grad_out, *c.args())
    ref = reference(x, w, b, grad_out, *c.args())
    for name_, a, r in zip(("out", "grad_x", "grad_weight", "grad_bias"), ours, ref):
        assert torch.equal(a.double(), r), f"{name_}: max diff {(a.double() - r).abs().max().item()}"


# ------------------------------------------------------------------------------------------------
# 3. gradcheck, opcheck, torch.compile
# ------------------------------------------------------------------------------------------------
GRADCHECK_CFGS = {
    "pool3s2_bias": Cfg(2, 2, 7, 6, 3, (3, 3), padding=(1, 1)),
    "pool3s2_no_bias": Cfg(1, 3, 6, 7, 2, (3, 3), padding=(1, 1), bias=False),
    "pool1s1": Cfg(2, 2, 5, 4, 3, (2, 2), pool_kernel=(1, 1), pool_stride=(1, 1)),
    "rectangular": Cfg(2, 2, 7, 8, 3, (2, 3), (2, 1), (1, 0), (2, 3), (1, 2)),
    "overlapping_pool3s1": Cfg(1, 2, 6, 6, 2, (3, 3), padding=(1, 1), pool_stride=(1, 1)),
}


def draw_separated(c: Cfg, delta=1e-3, tries=500, dtype=torch.float64):
    for _ in range(tries):
        x, w, b = gaussian_inputs(c, dtype)
        if well_separated(c, x, w, b, delta):
            return x, w, b
    pytest.fail(f"no input with windows separated by {delta} in {tries} draws for {c}")


@pytest.mark.parametrize("name", GRADCHECK_CFGS)
def test_gradcheck(name):
    c = GRADCHECK_CFGS[name]
    x, w, b = draw_separated(c)
    inputs = [t.requires_grad_() for t in (x, w, b) if t is not None]

    def f(*t):
        return conv_relu_maxpool(t[0], t[1], t[2] if c.bias else None, *c.args())

    assert torch.autograd.gradcheck(f, inputs)


def test_well_separated_detects_ties():
    """The guard of gradcheck's inputs must reject a tie and a window maximum at 0."""
    c = Cfg(1, 1, 4, 4, 1, (1, 1), pool_kernel=(2, 2), pool_stride=(2, 2), bias=False)
    w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    x = torch.tensor([[[[1., 2, 5, 3], [0.5, 0.25, 4, 1], [-1, -2, 7, 7.5], [-3, -4, 6, 2]]]],
                     dtype=torch.float64)
    assert well_separated(c, x, w, None, 0.1)
    assert not well_separated(c, x, w, None, 0.6)  # 7.5 vs 7
    x[0, 0, 2:, :2] = torch.tensor([[-1., 1e-3], [-2, -4]])  # a window whose max is ~0
    assert not well_separated(c, x, w, None, 0.01)


def _opcheck_forward_samples():
    s = []
    for dtype, grads, bias, cfg in (
            (torch.float32, (True, True, True), True, "pool3s2_bias"),
            (torch.float32, (True, False, False), True, "rectangular"),
            (torch.float32, (False, True, False), True, "pool1s1"),
            (torch.float32, (False, False, True), True, "pool3s2_bias"),
            (torch.float64, (False, True, None), False, "pool3s2_no_bias"),
            (torch.float64, (True, True, None), False, "overlapping_pool3s1"),
            (torch.float16, (True, True, True), True, "pool3s2_bias"),
            (torch.bfloat16, (False, False, False), True, "rectangular"),
    ):
        s.append(pytest.param(dtype, grads, cfg, id=f"{cfg}-{dtype}-grads{''.join(str(int(bool(g))) for g in grads)}"))
    return s


@pytest.mark.parametrize("dtype, grads, cfg", _opcheck_forward_samples())
def test_opcheck_forward(dtype, grads, cfg):
    c = GRADCHECK_CFGS[cfg]
    x, w, b = exact_inputs(c, dtype)
    for t, g in zip((x, w, b), grads):
        if t is not None:
            t.requires_grad_(bool(g))
    torch.library.opcheck(FWD, (x, w, b, *[list(a) for a in c.args()]))


def test_opcheck_forward_channels_last():
    c = GRADCHECK_CFGS["pool3s2_bias"]
    x, w, b = exact_inputs(c, torch.float32)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    torch.library.opcheck(FWD, (x, w.requires_grad_(), b, *[list(a) for a in c.args()]))


@pytest.mark.parametrize("mask", ((True, True, True), (True, False, False), (False, True, False),
                                  (False, False, True), (False, False, False)), ids=str)
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_opcheck_backward(dtype, mask):
    c = GRADCHECK_CFGS["rectangular"]
    x, w, b = exact_inputs(c, dtype)
    args = [list(a) for a in c.args()]
    _, argmax = FWD(x, w, b, *args)
    grad_out = nonzero_ints(tuple(argmax.shape), 4, -1, dtype)
    torch.library.opcheck(BWD, (grad_out, x, w, argmax, *args, list(mask)))


def _compare_compiled(backend: str, c: Cfg, dtype=torch.float64, **compile_opts):
    x, w, b = exact_inputs(c, dtype)
    scale = torch.linspace(0.5, 1.5, c.out_size()[1], dtype=dtype)

    def f(x, w, b):  # x * 0.5 keeps the conv values exact: ties break the same way in both
        return (conv_relu_maxpool(x * 0.5, w, b, *c.args()) * scale).sum(dim=(2, 3))

    compiled = torch.compile(f, backend=backend, fullgraph=True, **compile_opts)
    grad_out = gaussian(c.N, c.Co, dtype=dtype)
    e = run(f, x, w, b, grad_out)
    k = run(compiled, x, w, b, grad_out)
    for name, a, r in zip(("out", "grad_x", "grad_weight", "grad_bias"), k, e):
        if r is None:
            assert a is None
        else:
            tol = 1e-12 if dtype == torch.float64 else 1e-5  # generated code may sum in another order
            torch.testing.assert_close(a, r, rtol=tol, atol=tol * r.abs().max().item(),
                                       msg=lambda m: f"{name}: {m}")


@pytest.mark.parametrize("dynamic", (False, True))
@pytest.mark.parametrize("cfg", ("pool3s2_bias", "pool3s2_no_bias", "rectangular", "pool1s1"))
def test_compile_aot_eager(cfg, dynamic):
    torch._dynamo.reset()
    _compare_compiled("aot_eager", GRADCHECK_CFGS[cfg], dynamic=dynamic)


def test_compile_aot_eager_module():
    torch._dynamo.reset()
    m = ConvReLUMaxPool2d(3, 5, (3, 2), stride=(1, 2), padding=1, pool_kernel_size=(2, 3), pool_stride=2)
    m = m.double()
    x = gaussian(2, 3, 11, 12).requires_grad_()
    out = m(x)
    compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
    out_c = compiled(x)
    torch.testing.assert_close(out_c, out, rtol=1e-12, atol=1e-12)
    g = gaussian(*out.shape)
    ge = torch.autograd.grad(out, [x, m.weight, m.bias], g)
    gc = torch.autograd.grad(out_c, [x, m.weight, m.bias], g)
    for a, r in zip(gc, ge):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.thorough
def test_compile_inductor(monkeypatch, tmp_path):
    """The default backend (inductor, which generates C++ here): one case, on a fresh inductor cache
    (a graph cached by an older build of the op must not be reused)."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    _compare_compiled("inductor", GRADCHECK_CFGS["rectangular"], dtype=torch.float32)


# ------------------------------------------------------------------------------------------------
# 4. needs_input_grad
# ------------------------------------------------------------------------------------------------
class _SpyBackward:
    """Stands in for torch.ops.pyalexnet.conv_relu_maxpool_backward and records its output_mask."""

    def __init__(self):
        self.real = torch.ops.pyalexnet.conv_relu_maxpool_backward
        self.masks = []

    def __call__(self, *args):
        self.masks.append(list(args[-1]))
        return self.real(*args)


@pytest.mark.parametrize("bias", (True, False), ids=("bias", "no_bias"))
@pytest.mark.parametrize("grads", ((False, True, True), (True, False, False), (False, False, True),
                                   (True, True, False), (False, True, False), (True, True, True)), ids=str)
def test_needs_input_grad(grads, bias, monkeypatch):
    """Backward asks the kernel only for the gradients autograd needs (output_mask), gradients of
    inputs without requires_grad stay None, and the others match the float64 reference."""
    c = Cfg(2, 3, 9, 8, 4, (3, 3), padding=(1, 1), bias=bias)
    x, w, b = exact_inputs(c, torch.float64)
    leaves = [t.detach().requires_grad_(g) if t is not None else None for t, g in zip((x, w, b), grads)]
    spy = _SpyBackward()
    monkeypatch.setattr(torch.ops.pyalexnet, "conv_relu_maxpool_backward", spy)
    grad_out = gaussian(c.N, c.Co, *c.out_size())
    out = conv_relu_maxpool(leaves[0], leaves[1], leaves[2], *c.args())
    wanted = [g and t is not None for g, t in zip(grads, leaves)]
    if not any(wanted):
        assert not out.requires_grad
        return
    out.backward(grad_out)
    assert spy.masks == [wanted]
    ref = reference(x, w, b, grad_out, *c.args())
    for name, leaf, want, r in zip(("x", "weight", "bias"), leaves, wanted, ref[1:]):
        if leaf is None:
            continue
        if not want:
            assert leaf.grad is None, f"{name}.grad should stay None"
        else:
            assert_close_scaled(leaf.grad, r, 1e-10, f"grad_{name}")


def test_backward_op_mask_gives_empty_tensors():
    c = GRADCHECK_CFGS["rectangular"]
    x, w, b = exact_inputs(c, torch.float32)
    args = [list(a) for a in c.args()]
    _, argmax = FWD(x, w, b, *args)
    g = nonzero_ints(tuple(argmax.shape), 4, -1, torch.float32)
    full = BWD(g, x, w, argmax, *args, [True, True, True])
    for i in range(3):
        mask = [j == i for j in range(3)]
        part = BWD(g, x, w, argmax, *args, mask)
        for j, (p, f) in enumerate(zip(part, full)):
            if j == i:
                assert torch.equal(p, f)
            else:
                assert p.shape[0] == 0 and p.shape[1:] == f.shape[1:], (i, j, p.shape)


# ------------------------------------------------------------------------------------------------
# 5. Layouts: non-contiguous and channels_last inputs give the contiguous results
# ------------------------------------------------------------------------------------------------
def _layout(kind: str, c: Cfg, x: Tensor) -> Tensor:
    """x (contiguous) with the same values in the named layout, asserted not contiguous."""
    if kind == "h_stride2":
        big = torch.zeros(c.N, c.Ci, 2 * c.H, c.W, dtype=x.dtype)
        big[:, :, ::2] = x
        v = big[:, :, ::2]
    elif kind == "transposed_hw":
        v = x.transpose(2, 3).contiguous().transpose(2, 3)
    elif kind == "slice_of_bigger":
        big = torch.zeros(c.N + 1, c.Ci + 3, c.H + 2, c.W + 5, dtype=x.dtype)
        big[1:, 2:c.Ci + 2, 1:c.H + 1, 3:c.W + 3] = x
        v = big[1:, 2:c.Ci + 2, 1:c.H + 1, 3:c.W + 3]
    elif kind == "channels_last":
        v = x.to(memory_format=torch.channels_last)
    elif kind == "channel_major":  # the batch stride smaller than the channel stride
        v = x.permute(1, 0, 2, 3).contiguous().permute(1, 0, 2, 3)
    else:
        raise ValueError(kind)
    assert torch.equal(v, x)
    assert not v.is_contiguous() or (kind == "channels_last" and (c.H * c.W == 1 or c.Ci == 1))
    return v


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("kind", ("h_stride2", "transposed_hw", "slice_of_bigger", "channels_last",
                                  "channel_major"))
def test_layouts(kind, dtype):
    """Exact inputs, so that every layout must give bitwise the contiguous results whatever order a
    kernel sums in; channels_last weight and a non-contiguous incoming gradient too."""
    c = Cfg(3, 5, 13, 11, 6, (3, 3), padding=(1, 1))
    x, w, b = exact_inputs(c, dtype)
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
    expected = run(conv_relu_maxpool, x, w, b, g, *c.args())
    xv = _layout(kind, c, x)
    wv = w.to(memory_format=torch.channels_last) if kind in ("channels_last", "transposed_hw") else w
    if kind == "h_stride2":  # an incoming gradient with column stride 2
        gv = torch.zeros(*g.shape[:3], 2 * g.shape[3], dtype=dtype)
        gv[..., ::2] = g
        gv = gv[..., ::2]
    else:
        gv = g.transpose(2, 3).contiguous().transpose(2, 3)
    assert torch.equal(gv, g) and not gv.is_contiguous()
    got = run(conv_relu_maxpool, xv, wv, b, gv, *c.args())
    for name, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias"), got, expected):
        assert torch.equal(a, e), f"{name}: max diff {(a.double() - e.double()).abs().max().item()}"
    ref = reference(x, w, b, g, *c.args())
    assert_matches(got[0], ref[0], run(eager, x, w, b, g, *c.args())[0] if dtype in REDUCED else None, "out")


@pytest.mark.parametrize("pool", ((3, 2), (1, 1)))
def test_channels_last_in_channels_last_out(pool):
    """A channels_last input gives channels_last out, argmax and grad_x (the layout the CUDA kernels
    compute in, so that a channels_last network stays so); a contiguous one contiguous results."""
    c = Cfg(2, 4, 11, 9, 5, (3, 3), padding=(1, 1), pool_kernel=(pool[0],) * 2, pool_stride=(pool[1],) * 2)
    x, w, b = gaussian_inputs(c)
    for xv, fmt in ((x, torch.contiguous_format), (x.to(memory_format=torch.channels_last), torch.channels_last)):
        out, code = FWD(xv, w, b, *[list(a) for a in c.args()])
        assert out.is_contiguous(memory_format=fmt) and code.is_contiguous(memory_format=fmt)
        gx, gw, gb = BWD(torch.ones_like(out), xv, w, code, *[list(a) for a in c.args()], [True, True, True])
        assert gx.is_contiguous(memory_format=fmt) and gw.is_contiguous()
    ref = FWD(x, w, b, *[list(a) for a in c.args()])
    assert torch.equal(out, ref[0]) and torch.equal(code, ref[1])


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
@pytest.mark.parametrize("ci", (4, 24), ids=lambda v: f"ci{v}")
def test_grad_weight_in_weight_layout(dtype, ci):
    """grad_weight comes back in the weight's layout (channels_last for a channels_last weight, the
    layout autograd would otherwise copy it to), with the contiguous weight's values, bitwise."""
    c = Cfg(2, ci, 11, 9, 5, (3, 3), padding=(1, 1))
    x, w, b = exact_inputs(c, dtype)
    args = [list(a) for a in c.args()]
    out, code = FWD(x, w, b, *args)
    g = nonzero_ints(tuple(out.shape), 4, -1, dtype)
    want = BWD(g, x, w, code, *args, [True, True, True])[1]
    wl = w.to(memory_format=torch.channels_last)
    got = BWD(g, x, wl, code, *args, [True, True, True])[1]
    assert want.is_contiguous()
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert torch.equal(got, want)
    torch.library.opcheck(BWD, (g, x, wl, code, *args, [True, True, True]))


def test_broadcast_grad_out():
    """out.sum() backward: an incoming gradient with stride 0 everywhere."""
    c = SPECIAL["rect_everything"]
    x, w, b = gaussian_inputs(c)
    xs = x.requires_grad_()
    conv_relu_maxpool(xs, w, b, *c.args()).sum().backward()
    g = torch.ones(c.N, c.Co, *c.out_size(), dtype=torch.float64)
    ref = reference(x, w, b, g, *c.args())
    assert_close_scaled(xs.grad, ref[1], 1e-10, "grad_x")


def test_deterministic():
    """Two runs on the same inputs give bitwise the same results (per-thread partial sums are added
    in thread order)."""
    c = SPECIAL["many_bands"]
    x, w, b = gaussian_inputs(c, torch.float32)
    g = gaussian(c.N, c.Co, *c.out_size(), dtype=torch.float32)
    first = run(conv_relu_maxpool, x, w, b, g, *c.args())
    second = run(conv_relu_maxpool, x, w, b, g, *c.args())
    for a, e in zip(first, second):
        assert torch.equal(a, e)


def test_batch_of_zero():
    x = torch.randn(0, 3, 9, 9)
    w = torch.randn(4, 3, 3, 3, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    out = conv_relu_maxpool(x.requires_grad_(), w, b)
    assert out.shape == (0, 4, 3, 3)
    out.sum().backward()
    assert x.grad.shape == x.shape and torch.equal(w.grad, torch.zeros_like(w))
    assert torch.equal(b.grad, torch.zeros_like(b))


# ------------------------------------------------------------------------------------------------
# 9. The saved argmax codes: PyTorch's tie-breaking, 255 where no gradient flows, NaN
# ------------------------------------------------------------------------------------------------
def torch_codes(v: Tensor, pk, ps) -> tuple[Tensor, Tensor]:
    """(window maxima of relu(v), window offsets dy * pkw + dx of PyTorch's max_pool2d indices)."""
    m, idx = F.max_pool2d(F.relu(v), pk, ps, return_indices=True)
    Wc = v.shape[3]
    r, col = idx // Wc, idx % Wc
    p = torch.arange(m.shape[2]).view(1, 1, -1, 1)
    q = torch.arange(m.shape[3]).view(1, 1, 1, -1)
    return m, (r - p * ps[0]) * pk[1] + (col - q * ps[1])


def unpacked_codes(code: Tensor, out: Tensor, pool_kernel) -> Tensor:
    """The saved codes as one byte per pooled output. A 1x1 pool window saves only the ReLU mask,
    packed 8 outputs of a row to a byte (bit q % 8 of byte q // 8): unpacked to offset 0 where the
    bit is set and NO_GRAD where not. Checks the saved layout on the way."""
    assert code.dtype == torch.uint8
    if tuple(pool_kernel) != (1, 1):
        assert code.shape == out.shape
        return code
    wp = out.shape[-1]
    assert code.shape == (*out.shape[:-1], (wp + 7) // 8)
    bits = (code.long().unsqueeze(-1) >> torch.arange(8)) & 1  # ... x bytes x 8
    bits = bits.flatten(-2)
    assert (bits[..., wp:] == 0).all(), "padding bits of the last byte are set"
    return torch.where(bits[..., :wp] == 1, 0, NO_GRAD).to(torch.uint8)


@pytest.mark.parametrize("pool", (((2, 2), (2, 2)), ((3, 3), (2, 2)), ((3, 2), (1, 3)), ((1, 1), (1, 1)),
                                  ((1, 1), (2, 3)),
                                  ((15, 17), (4, 5))), ids=str)
@pytest.mark.parametrize("source", ("identity_conv", "integer_conv"))
def test_argmax_codes_and_ties(source, pool):
    """On inputs full of exact ties, the code is the first maximum's window offset (row-major), as
    PyTorch's max_pool2d(return_indices=True) picks it, where the window max is > 0, and 255 where it
    is <= 0; the gradients, routed through these codes, equal the float64 eager path's exactly."""
    pk, ps = pool
    if source == "identity_conv":  # conv = x: a 1x1 kernel of 1, values in {-2, -1, 0, 1, 2}
        c = Cfg(2, 1, 37, 41, 1, (1, 1), pool_kernel=pk, pool_stride=ps, bias=False)
        x = torch.randint(-2, 3, (c.N, 1, c.H, c.W)).double()
        x[0, 0, :pk[0], :pk[1]] = 0  # a window whose maximum is exactly 0
        x[1, 0, :pk[0], -pk[1]:] = -1  # and one whose maximum is negative
        w = torch.ones(1, 1, 1, 1, dtype=torch.float64)
        b = None
    else:  # small integers: many tied and zero conv outputs
        c = Cfg(2, 2, 36, 40, 3, (2, 2), padding=(1, 0), pool_kernel=pk, pool_stride=ps)
        x = torch.randint(-1, 2, (c.N, c.Ci, c.H, c.W)).double()
        w = torch.randint(-1, 2, (c.Co, c.Ci, 2, 2)).double()
        b = torch.randint(-1, 2, (c.Co,)).double()
        b[0] = -9  # channel 0: |sum| <= 8, so every window's maximum is negative
    out, code = FWD(x, w, b, *[list(a) for a in c.args()])
    code = unpacked_codes(code, out, pk)
    m, expected = torch_codes(conv_values(c, x, w, b), pk, ps)
    assert torch.equal(out, m)
    positive = m > 0
    assert positive.any() and (~positive).any()
    code = code.long()
    assert torch.equal(code[positive], expected[positive])
    assert (code[~positive] == NO_GRAD).all()
    g = nonzero_ints(tuple(out.shape), 4, 0, torch.float64)
    ours, ref = run(conv_relu_maxpool, x, w, b, g, *c.args()), reference(x, w, b, g, *c.args())
    for name, a, r in zip(("out", "grad_x", "grad_weight", "grad_bias"), ours, ref):
        if r is not None:
            assert torch.equal(a, r), f"{name}: max diff {(a - r).abs().max().item()}"


def test_all_negative_windows_pass_no_gradient():
    c = Cfg(2, 3, 9, 9, 4, (3, 3), padding=(1, 1))
    x, w, _ = gaussian_inputs(c)
    b = torch.full((c.Co,), -1e3, dtype=torch.float64)  # every conv output < 0
    out, code = FWD(x, w, b, *[list(a) for a in c.args()])
    assert torch.equal(out, torch.zeros_like(out)) and (code == NO_GRAD).all()
    gx, gw, gb = BWD(torch.ones_like(out), x, w, code, *[list(a) for a in c.args()], [True, True, True])
    assert not gx.any() and not gw.any() and not gb.any()


@pytest.mark.parametrize("co", (3, 40), ids=("3_channels", "40_channels"))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
def test_nan_propagates(dtype, co):
    """A NaN input makes NaN conv outputs over its receptive field: the pooled outputs whose window
    holds one are NaN, as in the eager path, and pass no gradient (code 255); the others are exact.
    40 channels: the CPU epilogue's 16-channel vector steps and their 8-channel tail."""
    c = Cfg(1, 2, 15, 14, co, (3, 3), padding=(1, 1))
    x, w, b = exact_inputs(c, dtype)
    x[0, 1, 6, 9] = float("nan")
    out, code = FWD(x, w, b, *[list(a) for a in c.args()])
    ref = eager(x.double(), w.double(), b.double(), *c.args())
    nan = ref.isnan()
    assert nan.any() and (~nan).any()
    assert torch.equal(out.isnan(), nan)
    assert (code[nan] == NO_GRAD).all()
    assert torch.equal(out[~nan].double(), ref[~nan].to(dtype).double())


# ------------------------------------------------------------------------------------------------
# 6. Bad inputs
# ------------------------------------------------------------------------------------------------
def _ok(dtype=torch.float32):
    return torch.randn(2, 3, 9, 9, dtype=dtype), torch.randn(4, 3, 3, 3, dtype=dtype), torch.randn(4, dtype=dtype)


def test_channel_mismatch():
    x, w, b = _ok()
    with pytest.raises(RuntimeError, match=r"input has 3 channels but weight expects 2"):
        conv_relu_maxpool(x, w[:, :2], b)


def test_empty_output():
    x, w, b = _ok()
    with pytest.raises(RuntimeError, match=r"padded by \[0, 0\] is smaller than the kernel 3x3: the "
                                           r"convolution output would be empty"):
        conv_relu_maxpool(x[:, :, :2], w, b)
    with pytest.raises(RuntimeError, match=r"smaller than the kernel 3x3"):
        conv_relu_maxpool(x[:, :, :, :1], w, b, padding=(0, 0))
    with pytest.raises(RuntimeError, match=r"the convolution output is 2x7, smaller than the pool window "
                                           r"\[3, 3\]: the output would be empty"):
        conv_relu_maxpool(x[:, :, :4], w, b)
    with pytest.raises(RuntimeError, match=r"the convolution output is 4x4, smaller than the pool window "
                                           r"\[5, 2\]"):
        conv_relu_maxpool(x, w, b, stride=2, pool_kernel=(5, 2))


def test_mixed_dtypes():
    x, w, b = _ok()
    with pytest.raises(RuntimeError, match=r"weight dtype Double differs from input dtype Float"):
        conv_relu_maxpool(x, w.double(), b)
    with pytest.raises(RuntimeError, match=r"bias dtype Half differs from input dtype Float"):
        conv_relu_maxpool(x, w, b.half())


def test_mixed_devices_meta():
    """A meta argument sends the call to the fake kernel (the Meta key wins dispatch): it must refuse
    mixed devices as clearly as the CPU kernel, not return uninitialised CPU memory."""
    x, w, b = _ok()
    with pytest.raises(RuntimeError, match=r"conv_relu_maxpool: weight is on meta but input is on cpu"):
        conv_relu_maxpool(x, w.to("meta"), b)
    with pytest.raises(RuntimeError, match=r"conv_relu_maxpool: bias is on meta but input is on cpu"):
        conv_relu_maxpool(x, w, b.to("meta"))
    with pytest.raises(RuntimeError, match=r"conv_relu_maxpool: weight is on cpu but input is on meta"):
        conv_relu_maxpool(x.to("meta"), w, b)
    args = [[1, 1], [0, 0], [3, 3], [2, 2]]
    out, code = FWD(x, w, b, *args)
    with pytest.raises(RuntimeError, match=r"conv_relu_maxpool: argmax is on meta but input is on cpu"):
        BWD(torch.ones_like(out), x, w, code.to("meta"), *args, [True, True, True])
    # all on meta: the fake's shapes are the CPU kernel's
    mo, mc = FWD(x.to("meta"), w.to("meta"), b.to("meta"), *args)
    assert mo.device.type == "meta" and mo.shape == out.shape and mc.dtype == torch.uint8


@pytest.mark.parametrize("device", ("cpu", "meta"))
def test_bad_geometry_args(device):
    """The CPU kernel and the fake (meta) refuse the same bad arguments with the same words."""
    x, w, b = (t.to(device) for t in _ok())
    cases = (
        (dict(stride=0), r"stride must be >= 1, got \[0, 0\]"),
        (dict(stride=(2, -1)), r"stride must be >= 1, got \[2, -1\]"),
        (dict(padding=(-1, 0)), r"padding must be >= 0, got \[-1, 0\]"),
        (dict(pool_kernel=(0, 2)), r"pool_kernel must be >= 1, got \[0, 2\]"),
        (dict(pool_stride=0), r"pool_stride must be >= 1, got \[0, 0\]"),
        (dict(pool_kernel=16), r"pool windows may have at most 255 positions, got \[16, 16\]"),
    )
    for kwargs, msg in cases:
        with pytest.raises(RuntimeError, match=msg):
            conv_relu_maxpool(x, w, b, **kwargs)


def test_pool_window_of_255_positions_works():
    """The largest window a one-byte code allows (15 x 17 = 255 positions) still works."""
    c = Cfg(1, 2, 20, 21, 3, (3, 3), pool_kernel=(15, 17), pool_stride=(2, 3))
    check(c, *gaussian_inputs(c), what="255-position window")


def test_bad_ranks_and_shapes():
    x, w, b = _ok()
    with pytest.raises(RuntimeError, match=r"weight must be 4-D \(out_channels, in_channels, kh, kw\), "
                                           r"got shape \[4, 3, 3\]"):
        conv_relu_maxpool(x, w[:, :, 0], b)
    with pytest.raises(RuntimeError, match=r"input must be 4-D \(N, C, H, W\), got shape \[3, 9, 9\]"):
        conv_relu_maxpool(x[0], w, b)
    with pytest.raises(RuntimeError, match=r"bias must have shape \(4,\), got \[5\]"):
        conv_relu_maxpool(x, w, torch.randn(5))
    with pytest.raises(RuntimeError, match=r"bias must have shape \(4,\), got \[4, 1\]"):
        conv_relu_maxpool(x, w, b.view(4, 1))
    with pytest.raises(RuntimeError, match=r"weight has an empty dimension"):
        conv_relu_maxpool(x, w[:0], b[:0])
    with pytest.raises(ValueError, match=r"stride must be an int or a pair of ints, got \[1, 1, 1\]"):
        conv_relu_maxpool(x, w, b, stride=(1, 1, 1))
    with pytest.raises(RuntimeError, match=r"stride must have 2 values \(h, w\), got \[1\]"):
        FWD(x, w, b, [1], [0, 0], [3, 3], [2, 2])


@pytest.mark.parametrize("dtype", (torch.int64, torch.int32, torch.uint8, torch.bool), ids=str)
def test_integer_input(dtype):
    x, w, b = _ok()
    with pytest.raises(RuntimeError, match=r"input must be float32, float16, bfloat16 or float64, got"):
        conv_relu_maxpool(x.to(dtype), w.to(dtype), b.to(dtype))


def test_backward_op_bad_args():
    x, w, b = _ok()
    args = [[1, 1], [0, 0], [3, 3], [2, 2]]
    out, code = FWD(x, w, b, *args)
    g = torch.ones_like(out)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \[2, 4, 3, 3\], got \[2, 4, 3, 2\]"):
        BWD(g[..., :2], x, w, code, *args, [True, True, True])
    with pytest.raises(RuntimeError, match=r"argmax must be the uint8 tensor of shape \[2, 4, 3, 3\]"):
        BWD(g, x, w, code.long(), *args, [True, True, True])
    with pytest.raises(RuntimeError, match=r"argmax must be the uint8 tensor"):
        BWD(g, x, w, code[:1], *args, [True, True, True])


# ------------------------------------------------------------------------------------------------
# 7. nn.ConvReLUMaxPool2d
# ------------------------------------------------------------------------------------------------
MODULE_CASES = {  # small geometries for the module's tests: (in, out, kernel, stride, padding, pool kernel, pool stride)
    "conv1": (3, 8, 11, 4, 2, 3, 2),
    "conv2": (8, 12, 5, 1, 2, 3, 2),
    "conv3": (12, 10, 3, 1, 1, 1, 1),
    "rect": (4, 6, (3, 2), (2, 1), (0, 1), (2, 3), (1, 2)),
}


def _pair(v):
    return v if isinstance(v, tuple) else (v, v)


def _modules(name, bias=True):
    ci, co, k, s, p, pk, ps = MODULE_CASES[name]
    conv = torch.nn.Conv2d(ci, co, k, s, p, bias=bias, dtype=torch.float64)
    seq = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.MaxPool2d(pk, ps))
    fused = ConvReLUMaxPool2d(ci, co, k, s, p, pk, ps, bias=bias, dtype=torch.float64)
    return conv, seq, fused


def _image(name, N=2):
    ci, _, k, s, p, pk, ps = MODULE_CASES[name]
    hw = {"conv1": (67, 63), "conv2": (15, 13), "conv3": (7, 9), "rect": (12, 11)}[name]
    return gaussian(N, ci, *hw)


@pytest.mark.parametrize("bias", (True, False), ids=("bias", "no_bias"))
@pytest.mark.parametrize("name", MODULE_CASES)
def test_module_state_dict_round_trip(name, bias):
    conv, seq, fused = _modules(name, bias)
    assert list(fused.state_dict()) == list(conv.state_dict()) == (["weight", "bias"] if bias else ["weight"])
    assert (fused.bias is None) == (not bias)
    assert len(list(fused.parameters())) == (2 if bias else 1)
    x = _image(name)
    # Conv2d -> fused
    fused.load_state_dict(conv.state_dict())
    assert_close_scaled(fused(x).detach(), seq(x).detach(), 1e-10, "conv -> fused")
    # fused -> Conv2d (fresh parameters in the fused module first)
    with torch.no_grad():
        fused.weight.normal_()
        if bias:
            fused.bias.normal_()
    conv.load_state_dict(fused.state_dict())
    assert torch.equal(conv.weight, fused.weight)
    assert_close_scaled(seq(x).detach(), fused(x).detach(), 1e-10, "fused -> conv")
    # gradients reach the module's parameters, as the eager layer's
    g = gaussian(*seq(x).shape)
    ge = torch.autograd.grad(seq(x), list(seq.parameters()), g)
    gf = torch.autograd.grad(fused(x), list(fused.parameters()), g)
    for a, r in zip(gf, ge):
        assert_close_scaled(a, r, 1e-10, "parameter gradient")


@pytest.mark.parametrize("bias", (True, False), ids=("bias", "no_bias"))
@pytest.mark.parametrize("name", MODULE_CASES)
def test_module_init_matches_conv2d(name, bias, fresh_seed):
    """Same seed -> the same parameters as nn.Conv2d: same shapes, layout and initialisation."""
    ci, co, k, s, p, pk, ps = MODULE_CASES[name]
    torch.manual_seed(fresh_seed)
    conv = torch.nn.Conv2d(ci, co, k, s, p, bias=bias)
    torch.manual_seed(fresh_seed)
    fused = ConvReLUMaxPool2d(ci, co, k, s, p, pk, ps, bias=bias)
    assert fused.weight.shape == conv.weight.shape and fused.weight.stride() == conv.weight.stride()
    assert torch.equal(fused.weight, conv.weight)
    assert fused.weight.dtype == torch.float32 and isinstance(fused.weight, torch.nn.Parameter)
    if bias:
        assert torch.equal(fused.bias, conv.bias)
    assert (fused.kernel_size, fused.stride, fused.padding) == (conv.kernel_size, conv.stride, conv.padding)
    assert tuple(fused.pool_kernel_size) == _pair(pk) and tuple(fused.pool_stride) == _pair(ps)


def test_module_init_statistics():
    """Kaiming-uniform(a=sqrt(5)) as nn.Conv2d: weights and bias uniform in +-1/sqrt(fan_in)."""
    m = ConvReLUMaxPool2d(64, 96, 5)
    bound = 1 / math.sqrt(64 * 25)
    for t in (m.weight, m.bias):
        assert t.abs().max().item() <= bound * (1 + 1e-6)  # float32 rounding of the bound
    w = m.weight.detach().double()
    assert abs(w.mean().item()) < 0.02 * bound
    assert abs(w.std().item() - bound / math.sqrt(3)) < 0.02 * bound
    assert w.abs().max().item() > 0.99 * bound


def test_module_extra_repr_and_dtype():
    m = ConvReLUMaxPool2d(3, 4, (3, 2), stride=2, padding=(1, 0), pool_kernel_size=1, pool_stride=1,
                          bias=False, dtype=torch.bfloat16)
    assert m.weight.dtype == torch.bfloat16
    r = repr(m)
    assert "kernel_size=(3, 2)" in r and "pool_kernel_size=(1, 1)" in r and "bias=False" in r
