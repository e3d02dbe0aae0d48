"""Tests of the CUDA kernels of the fused conv2d + ReLU + max-pool op on a GPU: parity with the float64
reference on random and special configurations, bit-for-bit agreement with the CPU kernels on exact
inputs (every dtype, TF32 on and off), AlexNet's real layers, gradcheck, opcheck, layouts, streams,
offsets past 2^31, and one small case of every kernel for compute-sanitizer. Every test carries the
`cuda` marker and skips unless a GPU is present and pyalexnet was built with its CUDA kernels. Without
a GPU the same kernels run in the CPU emulation of CUDA (test_emulation_conv_relu_maxpool.py)."""
from __future__ import annotations

import random

import pytest
import torch

from conftest import CUDA_MARKS, REDUCED, assert_matches, thorough_unless
from test_conv_relu_maxpool import (CONV_TOL, GRADCHECK_CFGS, SPECIAL, Cfg, assert_close_scaled, draw_cfg, draw_separated, eager,
                                    exact_inputs, gaussian_inputs, nonzero_ints, reference, run)
from pyalexnet.layers import LAYERS, ConvLayer
from pyalexnet.ops import conv_relu_maxpool


pytestmark = CUDA_MARKS

DEV = "cuda"
FWD = torch.ops.pyalexnet.conv_relu_maxpool_forward.default
BWD = torch.ops.pyalexnet.conv_relu_maxpool_backward.default
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


def _real(layer: ConvLayer, batch: int) -> Cfg:
    """A conv layer of pyalexnet.layers.LAYERS at its real size, with a small batch."""
    two = lambda v: (v, v)  # noqa: E731
    return Cfg(batch, layer.cin, layer.hw, layer.hw, layer.cout, two(layer.k), two(layer.stride), two(layer.pad),
               two(layer.pool_k), two(layer.pool_s))


# AlexNet's conv layers at their real sizes (both variants; the cifar ones at a larger batch).
ALEXNET_REAL = {f"{variant}_{layer.name}": _real(layer, 4 if variant == "imagenet" else 8)
                for variant in ("imagenet", "cifar") for layer in LAYERS[variant]
                if variant == "imagenet" or layer.name in ("conv1", "conv2", "conv5")}


@pytest.fixture(params=[False, True], ids=["tf32_off", "tf32_on"])
def tf32(request, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", request.param)
    return request.param


def _cuda(*ts):
    return [None if t is None else t.to(DEV) for t in ts]


def _cpu(ts):
    return [None if t is None else t.cpu() for t in ts]


def check_cuda(c: Cfg, x, w, b, g, what: str, tf32: bool = False):
    """Ours on the GPU against the float64 reference (on the CPU), with the dtype's tolerance; float16,
    bfloat16 and TF32 float32 by flash-attention's rule against PyTorch's own GPU result."""
    ours = _cpu(run(conv_relu_maxpool, *_cuda(x, w, b, g), *c.args()))
    ref = reference(x, w, b, g, *c.args())
    rule = x.dtype in REDUCED or (x.dtype == torch.float32 and tf32)
    base = _cpu(run(eager, *_cuda(x, w, b, g), *c.args())) if rule else (None,) * 4
    for name, a, r, bl in zip(("out", "grad_x", "grad_weight", "grad_bias"), ours, ref, base):
        if r is None:
            continue
        assert a.dtype == x.dtype, f"{what} {name}: dtype {a.dtype}"
        if rule:
            assert_matches(a, r, bl, f"{what} {name}")
        else:
            assert_close_scaled(a, r, CONV_TOL[x.dtype], f"{what} {name}")


@pytest.fixture
def rng(fresh_seed) -> random.Random:
    return random.Random(fresh_seed)


# Random draws past the first few are `thorough`: their float64 references run on the CPU, most of
# such a test's time (`pytest -m cuda --quick` keeps the first ones).
@pytest.mark.parametrize("draw", thorough_unless(range(40), lambda d: d < 10))
def test_matches_reference_float64(rng, draw):
    c = draw_cfg(rng, max_macs=3e7)
    x, w, b = gaussian_inputs(c)
    check_cuda(c, x, w, b, torch.randn(c.N, c.Co, *c.out_size(), dtype=torch.float64), str(c))


@pytest.mark.parametrize("dtype", DTYPES[1:], ids=str)
@pytest.mark.parametrize("draw", thorough_unless(range(10), lambda d: d < 3))
def test_random_configs_every_dtype(rng, draw, dtype, tf32):
    c = draw_cfg(rng, max_macs=3e7)
    x, w, b = gaussian_inputs(c, dtype)
    check_cuda(c, x, w, b, torch.randn(c.N, c.Co, *c.out_size()).to(dtype), str(c), tf32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", sorted(SPECIAL))
def test_exact_inputs_match_the_cpu_kernels(name, dtype, tf32):
    """Exact inputs: every arithmetic is exact, so outputs, codes and gradients equal the CPU's bitwise."""
    c = SPECIAL[name]
    x, w, b = exact_inputs(c, dtype)
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
    cpu = FWD(x, w, b, *[list(a) for a in c.args()])
    gpu = _cpu(FWD(*_cuda(x, w, b), *[list(a) for a in c.args()]))
    assert torch.equal(gpu[0], cpu[0]) and torch.equal(gpu[1], cpu[1]), "out / argmax"
    for name_, a, e in zip(("grad_x", "grad_weight", "grad_bias"), _cpu(run(conv_relu_maxpool, *_cuda(x, w, b, g), *c.args())[1:]),
                           run(conv_relu_maxpool, x, w, b, g, *c.args())[1:]):
        if e is not None:
            assert torch.equal(a, e), f"{name_}: max diff {(a.double() - e.double()).abs().max().item()}"


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", sorted(ALEXNET_REAL))
def test_alexnet_layers(name, dtype, tf32):
    c = ALEXNET_REAL[name]
    x, w, b = gaussian_inputs(c, dtype)
    check_cuda(c, x, w, b, torch.randn(c.N, c.Co, *c.out_size()).to(dtype), name, tf32)


@pytest.mark.parametrize("name", thorough_unless(GRADCHECK_CFGS, lambda n: n in ("pool3s2_bias", "rectangular")))
def test_gradcheck(name):
    c = GRADCHECK_CFGS[name]
    x, w, b = draw_separated(c)
    inputs = [t.to(DEV).requires_grad_() for t in (x, w, b) if t is not None]

    def f(*t):
        return conv_relu_maxpool(t[0], t[1], t[2] if c.bias else None, *c.args())

    assert torch.autograd.gradcheck(f, inputs)


@pytest.mark.parametrize("layout", ("contiguous", "channels_last", "channels_last_weight"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float64), ids=str)
def test_opcheck(dtype, layout):
    """opcheck in each layout; grad_weight comes back in the weight's layout."""
    c = SPECIAL["conv2_5x5_p2_pool3s2"]
    x, w, b = _cuda(*gaussian_inputs(c, dtype))
    if layout != "contiguous":
        x = x.to(memory_format=torch.channels_last)
    wf = torch.channels_last if layout == "channels_last_weight" else torch.contiguous_format
    w = w.contiguous(memory_format=wf)
    args = [list(a) for a in c.args()]
    torch.library.opcheck(FWD, (x.requires_grad_(), w.requires_grad_(), b.requires_grad_(), *args))
    out, code = FWD(x.detach(), w.detach(), b.detach(), *args)
    g = torch.randn_like(out)
    torch.library.opcheck(BWD, (g, x.detach(), w.detach(), code, *args, [True, True, True]))
    assert BWD(g, x.detach(), w.detach(), code, *args, [True, True, True])[1].is_contiguous(memory_format=wf)


def test_layouts_and_formats():
    """NCHW in -> NCHW out, channels_last in -> channels_last out; the same values either way, and a
    non-contiguous incoming gradient."""
    c = SPECIAL["conv5_3x3_p1_pool3s2"]
    x, w, b = _cuda(*exact_inputs(c, torch.bfloat16))
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.bfloat16).to(DEV)
    base = run(conv_relu_maxpool, x, w, b, g, *c.args())
    xc = x.to(memory_format=torch.channels_last)
    got = run(conv_relu_maxpool, xc, w, b, g.transpose(2, 3).contiguous().transpose(2, 3), *c.args())
    assert got[0].is_contiguous(memory_format=torch.channels_last) and base[0].is_contiguous()
    for a, e in zip(got, base):
        assert torch.equal(a, e)


def test_side_stream_and_second_device():
    """Launches go to the current stream (a side stream here) and the device guard picks x's device.
    The side stream is kept busy (torch.cuda._sleep, ~30 ms) before it writes the input the op reads,
    so a launch on any other stream would read that input unwritten."""
    c = SPECIAL["conv2_5x5_p2_pool3s2"]
    x, w, b = exact_inputs(c, torch.float32)
    want = FWD(x, w, b, *[list(a) for a in c.args()])
    devs = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    for d in devs[-1:]:
        xd, wd, bd = x.to(d), w.to(d), b.to(d)
        s = torch.cuda.Stream(device=d)
        s.wait_stream(torch.cuda.current_stream(d))
        with torch.cuda.device(d), torch.cuda.stream(s):
            torch.cuda._sleep(50_000_000)
            xs = torch.empty_like(xd).copy_(xd)  # written on s, after the sleep
            got = FWD(xs, wd, bd, *[list(a) for a in c.args()])
        s.synchronize()
        assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
def test_weight_viewed_at_an_odd_offset(dtype, monkeypatch):
    """A channels_last weight viewed one element into a larger buffer: its packed form is the weight
    itself (K = 144 needs no padding), not 16-byte aligned, so it is copied before the kernels' 16-byte
    loads; the results equal the CPU kernels' on exact inputs."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    c = Cfg(2, 16, 9, 9, 32, (3, 3), padding=(1, 1))
    x, w, b = exact_inputs(c, dtype)
    want = FWD(x, w, b, *[list(a) for a in c.args()])
    wcl = w.contiguous(memory_format=torch.channels_last)
    buf = torch.empty(w.numel() + 1, dtype=dtype, device=DEV)
    wv = buf[1:].as_strided(w.shape, wcl.stride())
    wv.copy_(wcl)
    assert wv.data_ptr() % 16 != 0 and wv.permute(0, 2, 3, 1).is_contiguous()
    got = FWD(x.to(DEV), wv, b.to(DEV), *[list(a) for a in c.args()])
    assert torch.equal(got[0].cpu(), want[0]) and torch.equal(got[1].cpu(), want[1])


@pytest.mark.bigmem
def test_offsets_past_2_31():
    """An input and an input gradient of more than 2^31 elements: the last image's results are right,
    and the weight gradient, which sums over all of them, matches its float64 reference."""
    free = torch.cuda.mem_get_info()[0] / 2**30
    if free < 24:
        pytest.skip(f"needs 24 GiB of free GPU memory, {free:.1f} GiB free")
    c = Cfg(130, 256, 256, 256, 8, (1, 1), pool_kernel=(2, 2), pool_stride=(2, 2))
    assert c.N * c.Ci * c.H * c.W > 2**31
    x = torch.randn(c.N, c.Ci, c.H, c.W, dtype=torch.bfloat16, device=DEV)
    w, b = torch.randn(c.Co, c.Ci, 1, 1, dtype=torch.bfloat16, device=DEV) / 16, None
    out, code = FWD(x, w, b, *[list(a) for a in c.args()])
    g = torch.randn_like(out)
    gx, gw, _ = BWD(g, x, w, code, *[list(a) for a in c.args()], [True, True, False])
    last = Cfg(1, c.Ci, c.H, c.W, c.Co, c.k, pool_kernel=c.pool_kernel, pool_stride=c.pool_stride, bias=False)
    ref = run(eager, x[-1:].double(), w.double(), None, g[-1:].double(), *last.args())
    torch.testing.assert_close(out[-1:].double(), ref[0], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gx[-1:].double(), ref[1], rtol=2e-2, atol=2e-2)
    # the weight gradient sums over every position: its float64 reference, 10 images at a time
    full = Cfg(10, c.Ci, c.H, c.W, c.Co, c.k, pool_kernel=c.pool_kernel, pool_stride=c.pool_stride, bias=False)
    gw_ref = sum(run(eager, x[i:i + 10].double(), w.double(), None, g[i:i + 10].double(), *full.args())[2]
                 for i in range(0, c.N, 10))
    torch.testing.assert_close(gw.double(), gw_ref, rtol=2e-2, atol=1e-2 * gw_ref.abs().max().item())


@pytest.fixture(params=[2, 1], ids=["v2", "v1"])
def version(request, monkeypatch):
    """The forward kernels' version, which the op reads from PYALEXNET_CONV_VERSION at every call: 2
    (the default: cp.async through 4 stages) or 1 (loads and stores through 2 stages). The backward
    has one version."""
    monkeypatch.setenv("PYALEXNET_CONV_VERSION", str(request.param))
    return request.param


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("name", ("imagenet_conv1", "imagenet_conv2", "cifar_conv2", "cifar_conv5"))
def test_both_versions_give_the_same_bits(name, dtype, tf32, monkeypatch):
    """The forward's versions 1 and 2 multiply the same operands in the same order: all outputs
    equal bit for bit on Gaussian inputs (so TF32 rounding happens on both paths)."""
    c = ALEXNET_REAL[name]
    x, w, b = _cuda(*gaussian_inputs(c, dtype))
    g = torch.randn(c.N, c.Co, *c.out_size(), device=DEV).to(dtype)
    monkeypatch.delenv("PYALEXNET_CONV_VERSION", raising=False)
    new = run(conv_relu_maxpool, x, w, b, g, *c.args())
    monkeypatch.setenv("PYALEXNET_CONV_VERSION", "1")
    old = run(conv_relu_maxpool, x, w, b, g, *c.args())
    for what, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias"), new, old):
        if e is not None:
            assert torch.equal(a, e), f"{name} {what}: max diff {(a.double() - e.double()).abs().max().item()}"


def test_sizes_past_32_bits_are_refused():
    """The kernels index image rows and K in 32-bit arithmetic: a padded height of 2^31 is refused
    with the sizes named, before any launch (the conv output itself is tiny: stride 2^30)."""
    x = torch.randn(1, 1, 1, 2, device=DEV)
    w = torch.randn(1, 1, 1, 1, device=DEV)
    with pytest.raises(RuntimeError, match=r"below 2\^31, .*padded H x W = 2147483649 x 2"):
        FWD(x, w, None, [2**30, 1], [2**30, 0], [1, 1], [1, 1])


def test_version_setting_is_checked(monkeypatch):
    c = Cfg(1, 3, 8, 8, 4, (3, 3))
    x, w, b = _cuda(*exact_inputs(c, torch.float32))
    monkeypatch.setenv("PYALEXNET_CONV_VERSION", "3")
    with pytest.raises(RuntimeError, match="PYALEXNET_CONV_VERSION must be 1 or 2, got '3'"):
        FWD(x, w, b, *[list(a) for a in c.args()])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_small_case_every_kernel(dtype, tf32, version):
    """One small case through every kernel (forward, bias, weight and data gradients, reductions),
    both vector and element gathers, a 1x1 window and a multi-pass window, the flat tiles (whole
    rows across images; flat conv tiles and the pooling kernel on the tensor cores: the emulated
    tests' flat_rows and flat_conv), both kernel versions: compute-sanitizer's target."""
    for c in (Cfg(2, 3, 9, 9, 5, (3, 3), padding=(1, 1)), Cfg(2, 32, 6, 6, 70, (3, 3), padding=(1, 1),
              pool_kernel=(1, 1), pool_stride=(1, 1)), Cfg(1, 2, 17, 19, 3, (1, 1), pool_kernel=(15, 17)),
              Cfg(5, 16, 7, 7, 24, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
              Cfg(2, 16, 15, 15, 8, (5, 5), padding=(2, 2))):
        x, w, b = exact_inputs(c, dtype)
        g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
        got = _cpu(run(conv_relu_maxpool, *_cuda(x, w, b, g), *c.args()))
        for a, e in zip(got, run(conv_relu_maxpool, x, w, b, g, *c.args())):
            assert torch.equal(a, e)
