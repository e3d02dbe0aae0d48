"""The conv op's two CPU kernels: the one on oneDNN's batch-reduce GEMM micro-kernel (brgemm, the
default where it runs) and the portable one (float64, other CPUs, PYALEXNET_CPU_PORTABLE=1).

test_conv_relu_maxpool.py tests the op through whichever kernel the machine picks (CI also runs it
once with the portable kernel forced). Here: which kernel and which tiling run where; random
geometries in every dtype on the brgemm kernel specifically, in both of its tilings (whatever this
CPU would choose), with AMX's shapes (AMX CPUs' 16-bit default) and both layouts; the two kernels
bit-identical where the conv values are exact; results that do not depend on the thread count; float32's Winograd products (3x3, stride 1) against
the direct ones.
"""
from __future__ import annotations

import dataclasses
import random
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import pyalexnet  # noqa: F401  (registers torch.ops.pyalexnet)
from pyalexnet import _C
from pyalexnet.ops import conv_relu_maxpool
from test_conv_relu_maxpool import (CONV_TOL, NO_GRAD, Cfg, SPECIAL, assert_close_scaled, check, draw_cfg, eager, exact_inputs,
                                    gaussian, gaussian_inputs, nonzero_ints, reference, run)

FWD = torch.ops.pyalexnet.conv_relu_maxpool_forward.default
BWD = torch.ops.pyalexnet.conv_relu_maxpool_backward.default
DTYPES = ("float32", "bfloat16", "float16", "float64")


def cpu_flags() -> set[str]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def brgemm_here() -> bool:
    return {"avx2", "fma"} <= cpu_flags() and torch.backends.mkldnn.is_available()


needs_brgemm = pytest.mark.skipif(not brgemm_here(), reason="the brgemm kernel needs an x86 CPU with AVX2 and FMA")


@pytest.fixture(params=("wide", "narrow", "wide-amx"))
def brgemm(monkeypatch, request):
    """The brgemm kernel, in each of its two tilings whatever this CPU would choose, and the wide one
    with AMX's shapes (short conv rows merged into one product, the weight gradient's K in whole
    tiles and a tail: what AMX CPUs run in 16-bit types) in every dtype."""
    monkeypatch.delenv("PYALEXNET_CPU_PORTABLE", raising=False)
    if not brgemm_here():
        pytest.skip("the brgemm kernel needs an x86 CPU with AVX2 and FMA")
    tiling, amx = request.param.split("-")[0], request.param.endswith("-amx")
    monkeypatch.setenv("PYALEXNET_CPU_TILING", tiling)
    monkeypatch.setenv("PYALEXNET_CPU_AMX_SHAPES", "1" if amx else "0")
    assert _C.cpu_conv_tiling() == tiling


def test_kernel_choice(monkeypatch):
    """float64 always portable; float32 on brgemm where AVX2 + FMA are; bfloat16 multiplied as
    bfloat16 with AVX-512 (core: F, BW, VL, DQ), float16 with AMX-FP16 (whose kernel reads B in VNNI
    pairs, as ours is packed; AVX512-FP16's alone reads it plainly), else in float32;
    PYALEXNET_CPU_PORTABLE=1 forces the portable kernel for every dtype, "0" or "" does not."""
    monkeypatch.delenv("PYALEXNET_CPU_PORTABLE", raising=False)
    flags = cpu_flags()
    got = {d: _C.cpu_conv_kernel(d) for d in DTYPES}
    assert got["float64"] == "portable"
    if not brgemm_here():
        assert set(got.values()) == {"portable"}
        return
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    assert got["float32"] == "brgemm-f32"
    assert got["bfloat16"] == ("brgemm-bf16" if avx512 else "brgemm-f32")
    assert got["float16"] == ("brgemm-f16" if avx512 and "amx_fp16" in flags else "brgemm-f32")
    for off in ("0", ""):
        monkeypatch.setenv("PYALEXNET_CPU_PORTABLE", off)
        assert _C.cpu_conv_kernel("float32") == "brgemm-f32"
    monkeypatch.setenv("PYALEXNET_CPU_PORTABLE", "1")
    assert {_C.cpu_conv_kernel(d) for d in DTYPES} == {"portable"}
    with pytest.raises(ValueError, match="float32, float64, float16 or bfloat16"):
        _C.cpu_conv_kernel("int8")


def test_tiling_choice(monkeypatch):
    """AVX-512 CPUs cut the products wide (64-channel blocks, one product per conv row), others
    narrow (32, conv rows stacked); PYALEXNET_CPU_TILING forces either and refuses anything else."""
    monkeypatch.delenv("PYALEXNET_CPU_PORTABLE", raising=False)  # the refusal is the brgemm kernel's
    monkeypatch.delenv("PYALEXNET_CPU_TILING", raising=False)
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= cpu_flags()
    assert _C.cpu_conv_tiling() == ("wide" if avx512 else "narrow")
    for t in ("wide", "narrow"):
        monkeypatch.setenv("PYALEXNET_CPU_TILING", t)
        assert _C.cpu_conv_tiling() == t
    monkeypatch.setenv("PYALEXNET_CPU_TILING", "widest")
    with pytest.raises(RuntimeError, match="PYALEXNET_CPU_TILING must be 'wide', 'narrow' or unset, not 'widest'"):
        _C.cpu_conv_tiling()
    if brgemm_here():
        c = SPECIAL["conv3_3x3_p1_pool1s1"]
        with pytest.raises(RuntimeError, match="PYALEXNET_CPU_TILING"):
            conv_relu_maxpool(*exact_inputs(c, torch.float32), *c.args())


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16, torch.float16), ids=str)
@pytest.mark.parametrize("draw", range(12))
def test_random_geometries(brgemm, fresh_seed, draw, dtype, channels_last):
    """Random geometries (kernels, strides, paddings past the kernel, pools, odd channel counts and
    counts past the 64-channel blocks) with exact inputs: values and all gradients against float64,
    by the tolerance of the dtype (conftest.assert_matches for 16-bit: <= 2 x PyTorch's own error)."""
    rng = random.Random(fresh_seed * 1000 + draw)
    c = draw_cfg(rng, max_macs=1e6)
    print(c)
    x, w, b = exact_inputs(c, dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grad_out = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
    check(c, x, w, b, grad_out, what=f"{c} {dtype}")


WIDE = {  # past one block (32 or 64 wide) of output channels, input channels, and kernel-row columns
    "co_blocks_ci_blocks": Cfg(2, 130, 6, 7, 129, (3, 3), padding=(1, 1)),
    "stride1_pad_ge_kernel": Cfg(2, 5, 6, 6, 7, (2, 2), padding=(2, 2), pool_kernel=(1, 1), pool_stride=(1, 1)),
    "stride2_kernel_rows_wide": Cfg(3, 33, 13, 12, 70, (3, 5), (2, 2), (1, 2), (2, 2), (2, 2)),
    # kernel rows over padding alone are skipped, unstacked (Kt = 130, 22 columns): the first two and
    # last two conv rows read nothing but padding (bias + ReLU alone), the next ones part of it
    "rows_of_padding_only": Cfg(2, 130, 5, 20, 20, (2, 1), padding=(3, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
    # a 1x1 window at stride 2: mask bits kept for every other conv value, 20 columns (3 mask bytes)
    "subsampled_mask": Cfg(2, 8, 40, 40, 20, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(2, 2)),
    "one_column": Cfg(2, 4, 9, 1, 5, (3, 1), padding=(1, 0), pool_kernel=(2, 1), pool_stride=(1, 1)),
    # the weight gradient's products over several images (K = images x positions): 19 images in 4
    # groups, 25 positions (odd: a VNNI zero column per image), then 225 positions, 2 images a
    # product, so that groups of 5 end on a product of one image
    "images_per_product": Cfg(19, 8, 5, 5, 12, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
    "images_per_product_partial": Cfg(19, 4, 15, 15, 6, (3, 3), padding=(1, 1)),
    # short kernel rows (3 x 20 input channels forward, 3 x 40 output channels in the data
    # gradient): stacked products of 8 conv rows of 9 columns, bands and images ending on a partial
    # group, past one block of output channels (forward) and of input channels (data gradient)
    "stacked_rows_forward": Cfg(2, 20, 30, 9, 70, (3, 3), padding=(1, 1)),
    "stacked_rows_data_gradient": Cfg(2, 70, 30, 9, 40, (3, 3), padding=(1, 1)),
    # the weight gradient's inputs past one range (16 MiB: 8 of these images), the second range of 2
    # images split between the 2 groups of dw copies (5 column blocks)
    "weight_gradient_ranges": Cfg(10, 32, 56, 56, 128, (3, 3), padding=(1, 1)),
}


@needs_brgemm
def test_amx_shapes_setting_refused(monkeypatch):
    """PYALEXNET_CPU_AMX_SHAPES takes '0', '1' or nothing: a conv on the brgemm kernel refuses
    anything else."""
    monkeypatch.delenv("PYALEXNET_CPU_PORTABLE", raising=False)
    monkeypatch.setenv("PYALEXNET_CPU_TILING", "wide")
    monkeypatch.setenv("PYALEXNET_CPU_AMX_SHAPES", "yes")
    c = WIDE["co_blocks_ci_blocks"]  # 7 columns a conv row, 390 values a kernel row: merged
    with pytest.raises(RuntimeError, match="PYALEXNET_CPU_AMX_SHAPES must be '0', '1' or unset, not 'yes'"):
        conv_relu_maxpool(*exact_inputs(c, torch.float32), *c.args())


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", WIDE)
def test_block_edges(brgemm, name, dtype):
    c = WIDE[name]
    x, w, b = exact_inputs(c, dtype)
    grad_out = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
    check(c, x, w, b, grad_out, what=f"{name} {dtype}")


@pytest.mark.parametrize("name", [n for n, c in WIDE.items() if c.k == (3, 3) and c.stride == (1, 1)])
def test_block_edges_direct_float32(brgemm, monkeypatch, name):
    """The 3x3 stride-1 cases again on the direct products, which float32 takes at 16 or more
    channels only with PYALEXNET_CPU_WINOGRAD=0 (or for non-finite values)."""
    monkeypatch.setenv("PYALEXNET_CPU_WINOGRAD", "0")
    c = WIDE[name]
    x, w, b = exact_inputs(c, torch.float32)
    check(c, x, w, b, nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.float32), what=name)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_stacked_products_pad_k_with_zeros(brgemm, dtype):
    """Stacked products of few input channels (3 x 3 x 3 = 27 values a patch) keep the channels
    unpadded and pad K to even at its end for bfloat16's VNNI pairs, writing that padding as 0 every
    time: the patches a previous call left in the scratch (here all NaN) must not reach the result.
    One thread, so that both calls use the same scratch."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = Cfg(2, 3, 12, 11, 8, (3, 3), padding=(1, 1))
        stale = Cfg(2, 4, 12, 11, 8, (3, 3), padding=(1, 1))  # 36 values a patch, all NaN
        _, w0, b0 = exact_inputs(stale, dtype)
        FWD(torch.full((2, 4, 12, 11), float("nan"), dtype=dtype), w0, b0, *stale.args())
        x, w, b = exact_inputs(c, dtype)
        check(c, x, w, b, nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype), what=f"after NaN patches {dtype}")
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("co", (17, 70, 129), ids=lambda v: f"co{v}")
@pytest.mark.parametrize("ci", (40, 64), ids=("stacked", "unstacked"))
def test_channels_last_weights_packed_whole(brgemm, dtype, co, ci):
    """Channels-last weights are packed straight from their rows, 16 rows of a channel block at a
    time: every output channel must be written, in partial row groups and partial blocks, over what
    a call with NaN weights left in the scratch. One thread, so that both calls use the same one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = Cfg(2, ci, 9, 8, co, (3, 3), padding=(1, 1))
        x, w, b = exact_inputs(c, dtype)
        x = x.contiguous(memory_format=torch.channels_last)
        FWD(x, torch.full_like(w, float("nan")).contiguous(memory_format=torch.channels_last), b, *c.args())
        wl = w.contiguous(memory_format=torch.channels_last)
        check(c, x, wl, b, nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype), what=f"{c} {dtype}")
    finally:
        torch.set_num_threads(before)


def mask_bits(code: torch.Tensor, wp: int) -> torch.Tensor:
    """The ReLU mask of an unpooled conv's codes (N x Co x Hp x ceil(Wp/8) bytes) as N x Co x Hp x Wp
    booleans: bit q % 8 of byte q // 8."""
    q = torch.arange(wp)
    return ((code[..., q // 8].long() >> (q % 8)) & 1).bool()


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_unpooled_output_nan_and_mask(brgemm, dtype, channels_last):
    """Without pooling each output is bias + ReLU of its conv value, a NaN kept, and its mask bit is
    set where that value is > 0 (a NaN: not). 19 channels: the epilogue's 8-channel steps and a
    3-channel tail; 14 columns: a whole mask byte and a part of one."""
    c = Cfg(2, 2, 15, 14, 19, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1))
    x, w, b = exact_inputs(c, dtype)
    x[1, 1, 6, 9] = float("nan")
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out, code = FWD(x, w, b, *[list(a) for a in c.args()])
    conv = F.conv2d(x.double(), w.double(), b.double(), c.stride, c.padding)
    ref = F.relu(conv)
    nan = conv.isnan()
    assert nan.any() and (~nan).any() and torch.equal(out.isnan(), nan)
    assert torch.equal(out[~nan].double(), ref[~nan].to(dtype).double())
    assert torch.equal(mask_bits(code, c.out_size()[1]), conv > 0)


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_unpooled_backward_of_a_channels_last_gradient(brgemm, dtype):
    """The backward of an unpooled conv whose incoming gradient is channels-last, as the next layer
    hands it back in training: exact inputs, so dx, dw and db equal the float64 reference rounded to
    the dtype. 40 channels: two 16-channel mask steps and an 8-channel tail; 13 columns: a whole
    mask byte and a part of one."""
    c = Cfg(3, 6, 9, 13, 40, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1))
    x, w, b = exact_inputs(c, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype).contiguous(memory_format=torch.channels_last)
    _, gx, gw, gb = run(conv_relu_maxpool, x, w, b, g, *c.args())
    ref = reference(x, w, b, g, *c.args())
    for what, a, e in zip(("dx", "dw", "db"), (gx, gw, gb), ref[1:]):
        assert torch.equal(a.double(), e.to(dtype).double()), what


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("pool", ((1, 1), (3, 2)), ids=("unpooled", "pool3s2"))
def test_bfloat16_output_rounds_to_nearest_even(brgemm, pool, channels_last):
    """Conv values 256 + k (k = 1, 3, 5, 7) lie halfway between two bfloat16 numbers: the output
    rounds them to even, as torch's conversion does (257 -> 256, 259 -> 260, 261 -> 260, 263 -> 264)."""
    k = torch.tensor([1.0, 3.0, 5.0, 7.0]).repeat(25)[:81].reshape(9, 9)
    x = torch.stack([torch.full((9, 9), 256.0), k])[None].to(torch.bfloat16)
    w = torch.ones(19, 2, 1, 1, dtype=torch.bfloat16)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    out, _ = FWD(x, w, None, [1, 1], [0, 0], list(pool), [pool[1]] * 2)
    ref = F.max_pool2d(F.relu(F.conv2d(x.double(), w.double())), pool[0], pool[1])
    assert torch.equal(out.float(), ref.to(torch.bfloat16).float())
    assert (ref.to(torch.bfloat16).double() > ref).any()  # ties that round up, not only down


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("name", ("conv2_5x5_p2_pool3s2", "conv3_3x3_p1_pool1s1", "conv1_11x11_s4_p2_pool3s2",
                                  "wide_channels", "padding_ge_kernel"))
def test_kernels_bit_identical_on_exact_inputs(brgemm, monkeypatch, name, channels_last):
    """Exact conv values leave nothing to rounding: the two kernels must agree bit for bit, in the
    output, the argmax codes and all three gradients."""
    c = SPECIAL[name]
    x, w, b = exact_inputs(c, torch.float32)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.float32)
    results = {}
    for kernel in ("brgemm", "portable"):
        monkeypatch.setenv("PYALEXNET_CPU_PORTABLE", "1" if kernel == "portable" else "0")
        assert _C.cpu_conv_kernel("float32").startswith(kernel)
        codes = FWD(x, w, b, *c.args())[1]
        results[kernel] = (*run(conv_relu_maxpool, x, w, b, g, *c.args()), codes)
    for what, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias", "codes"), *results.values()):
        assert torch.equal(a, e), f"{what}: brgemm and portable differ"
        assert a.stride() == e.stride(), f"{what}: strides {a.stride()} vs {e.stride()}"


@pytest.mark.parametrize("name", ("many_bands_pool1", "conv2_5x5_p2_pool3s2", "pool_stride_gt_kernel",
                                  "subsampled_mask"))
def test_codes_read_in_any_layout(brgemm, name):
    """The codes come back in the output's memory format, and the backward reads them in whatever
    strides they have: given them copied into the other layout, it returns the same gradients."""
    c = {**SPECIAL, **WIDE}[name]
    x, w, b = exact_inputs(c, torch.float32)
    for fmt in (torch.contiguous_format, torch.channels_last):
        xf = x.contiguous(memory_format=fmt)
        out, code = FWD(xf, w, b, *c.args())
        assert code.is_contiguous(memory_format=fmt) and out.is_contiguous(memory_format=fmt)
        other = torch.contiguous_format if fmt == torch.channels_last else torch.channels_last
        g = nonzero_ints(tuple(out.shape), 4, -1, torch.float32)
        ref = BWD(g, xf, w, code, *c.args(), [True, True, True])
        got = BWD(g, xf, w, code.contiguous(memory_format=other), *c.args(), [True, True, True])
        for what, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got, ref):
            assert torch.equal(a, e), f"{what}: codes in the other layout give other gradients ({fmt})"


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_thread_count_does_not_change_results(brgemm, dtype):
    """Threads take work items as they come free, so which thread computes what varies from run to
    run; results must not: 1 and 2 threads, bit for bit (batch large enough for several weight
    gradient groups, image large enough for several bands)."""
    cases = (Cfg(9, 16, 40, 37, 70, (3, 3), padding=(1, 1)), Cfg(12, 8, 9, 9, 24, (3, 3), padding=(1, 1)))
    before = torch.get_num_threads()
    try:
        for c in cases:
            x, w, b = (t.to(dtype) if t is not None else None for t in gaussian_inputs(c))
            g = gaussian(c.N, c.Co, *c.out_size(), dtype=dtype)
            got = []
            for threads in (1, 2, 2):
                torch.set_num_threads(threads)
                got.append(run(conv_relu_maxpool, x, w, b, g, *c.args()))
            for r in got[1:]:
                for what, a, e in zip(("out", "grad_x", "grad_weight", "grad_bias"), r, got[0]):
                    assert torch.equal(a, e), f"{c} {what}: differs between thread counts"
    finally:
        torch.set_num_threads(before)


# float32 3x3 stride-1 convs with enough channels (forward: 16 in, 24 out, no pooling window;
# backward: 48 in, 32 out) take the Winograd F(2x2, 3x3) products: pooled and unpooled, odd edges (tiles past the last row
# and column), output channels past a block, padding 0-2, one image whose blocks are shared among
# the threads' items, images cut into bands, and a batch whose weight gradient takes two ranges of
# images.
WINOGRAD = {
    "pooled_odd_rows_blocks": Cfg(3, 48, 9, 12, 70, (3, 3), padding=(1, 1)),
    "unpooled_odd": Cfg(2, 48, 7, 7, 33, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
    "no_padding_pool2": Cfg(2, 50, 8, 11, 33, (3, 3), pool_kernel=(2, 2), pool_stride=(2, 2)),
    "padding2_bands": Cfg(1, 48, 30, 31, 64, (3, 3), padding=(2, 2)),
    "rectangular_padding": Cfg(2, 48, 10, 9, 40, (3, 3), padding=(2, 0), pool_kernel=(1, 1), pool_stride=(1, 1)),
    "one_row_blocks_split": Cfg(1, 48, 3, 6, 130, (3, 3), pool_kernel=(1, 1), pool_stride=(1, 1)),
    "unpooled_bands": Cfg(2, 48, 33, 8, 32, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
    "pool_stride3_bands": Cfg(1, 48, 40, 9, 32, (3, 3), padding=(1, 1), pool_kernel=(3, 3), pool_stride=(3, 3)),
    # the weight gradient's transforms past one range (16 MiB: 6 of these images), so its products
    # add a second range's to the first's
    "weight_gradient_ranges": Cfg(10, 48, 32, 32, 96, (3, 3), padding=(1, 1)),
}


def forward_with(monkeypatch, winograd: bool, x, w, b, c: Cfg):
    monkeypatch.setenv("PYALEXNET_CPU_WINOGRAD", "1" if winograd else "0")
    return FWD(x, w, b, *c.args())


def backward_with(monkeypatch, winograd: bool, g, x, w, code, c: Cfg):
    monkeypatch.setenv("PYALEXNET_CPU_WINOGRAD", "1" if winograd else "0")
    return BWD(g, x, w, code, *c.args(), [True, True, True])


@pytest.mark.parametrize("channels_last", (False, True), ids=("nchw", "nhwc"))
@pytest.mark.parametrize("name", WINOGRAD)
def test_winograd_exact(brgemm, monkeypatch, name, channels_last):
    """Exact inputs: the transforms' halves and quarters and the sums stay exact, so the Winograd
    forward, data gradient and weight gradient give the direct products' output, codes and
    gradients bit for bit, and the float64 reference."""
    c = WINOGRAD[name]
    x, w, b = exact_inputs(c, torch.float32)
    if channels_last:
        x, w = (t.contiguous(memory_format=torch.channels_last) for t in (x, w))
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.float32)
    got = forward_with(monkeypatch, True, x, w, b, c)
    direct = forward_with(monkeypatch, False, x, w, b, c)
    got += backward_with(monkeypatch, True, g, x, w, got[1], c)
    direct += backward_with(monkeypatch, False, g, x, w, direct[1], c)
    for what, a, e in zip(("out", "codes", "grad_x", "grad_weight", "grad_bias"), got, direct):
        assert torch.equal(a, e), f"{what}: Winograd and direct products differ"
    monkeypatch.setenv("PYALEXNET_CPU_WINOGRAD", "1")
    check(c, x, w, b, g, what=name)


@pytest.mark.parametrize("name", [n for n, c in WINOGRAD.items() if c.pool_kernel == (1, 1)])
def test_winograd_forward_accuracy(brgemm, monkeypatch, name):
    """Gaussian inputs: within float32's tolerance of float64, and at most twice as far from it as
    PyTorch's own float32 result (or under 1e-6, relative); not the direct products' bits (so the
    Winograd products did run)."""
    c = WINOGRAD[name]
    torch.manual_seed(0)
    x, w, b = (t.float() for t in gaussian_inputs(c))
    got = forward_with(monkeypatch, True, x, w, b, c)[0]
    direct = forward_with(monkeypatch, False, x, w, b, c)[0]
    ref = reference(x, w, b, torch.zeros_like(got.double()), *c.args())[0]
    assert_close_scaled(got, ref, CONV_TOL[torch.float32], name)
    err, eager_err = (((t.double() - ref).norm() / ref.norm()).item() for t in (got, eager(x, w, b, *c.args())))
    assert err <= max(2 * eager_err, 1e-6), f"relative error {err:.2e}, PyTorch's {eager_err:.2e}"
    assert not torch.equal(got, direct)


@pytest.mark.parametrize("name", WINOGRAD)
def test_winograd_gradient_accuracy(brgemm, monkeypatch, name):
    """Gaussian inputs and gradient, the codes given: dx and dw within float32's tolerance of the
    float64 backward through the same codes, at most twice as far from it as the direct products'
    (or under 1e-6, relative), and not their bits (so the Winograd products did run)."""
    c = WINOGRAD[name]
    torch.manual_seed(0)
    x, w, b = (t.float() for t in gaussian_inputs(c))
    code = FWD(x, w, b, *c.args())[1]
    g = gaussian(c.N, c.Co, *c.out_size(), dtype=torch.float32)
    got = backward_with(monkeypatch, True, g, x, w, code, c)
    direct = backward_with(monkeypatch, False, g, x, w, code, c)
    ref = BWD(g.double(), x.double(), w.double(), code, *c.args(), [True, True, False])
    for what, a, d, r in zip(("grad_x", "grad_weight"), got, direct, ref):
        assert_close_scaled(a, r, CONV_TOL[torch.float32], f"{name} {what}")
        err, direct_err = (((t.double() - r).norm() / r.norm()).item() for t in (a, d))
        assert err <= max(2 * direct_err, 1e-6), f"{what}: relative error {err:.2e}, the direct products' {direct_err:.2e}"
        assert not torch.equal(a, d), what


def test_winograd_results_do_not_depend_on_the_batch(brgemm, monkeypatch):
    """The bands an image is cut into depend on the batch (a small batch is cut finer); the tiles
    do not: each image's output and codes are the same bits alone and in a batch of 8."""
    monkeypatch.setenv("PYALEXNET_CPU_WINOGRAD", "1")
    for c in (WINOGRAD["unpooled_bands"], WINOGRAD["pool_stride3_bands"]):
        torch.manual_seed(0)
        x, w, b = (t.float() for t in gaussian_inputs(Cfg(8, *dataclasses.astuple(c)[1:])))
        out, code = FWD(x, w, b, *c.args())
        for n in (0, 5):
            one = FWD(x[n:n + 1], w, b, *c.args())
            assert torch.equal(one[0], out[n:n + 1]) and torch.equal(one[1], code[n:n + 1]), n


@pytest.mark.parametrize("where", ("nan", "inf", "huge_input", "huge_weight"))
def test_winograd_non_finite_takes_the_direct_products(brgemm, monkeypatch, where):
    """The transforms would spread a NaN or an infinity over whole tiles, and could overflow on
    huge values: such bands (or, for a weight, the whole call) take the direct products, whose
    NaNs cover exactly the outputs whose window holds one. Images 0 and 2 of 3 hold the value (in
    the input, then in the incoming gradient); image 1 stays on the Winograd products."""
    c = Cfg(3, 48, 12, 11, 40, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1))
    x, w, b = exact_inputs(c, torch.float32)
    value = {"nan": float("nan"), "inf": float("inf"), "huge_input": 3e30, "huge_weight": 3e30}[where]
    if where == "huge_weight":
        w[3, 5, 1, 2] = value
    else:
        x[0, 2, 5, 4] = x[2, 7, 11, 10] = value
    got = forward_with(monkeypatch, True, x, w, b, c)
    direct = forward_with(monkeypatch, False, x, w, b, c)
    for what, a, e in zip(("out", "codes"), got, direct):
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.nan_to_num(), e.nan_to_num()), what
    ref = eager(x.double(), w.double(), b.double(), *c.args())
    assert torch.equal(got[0].isnan(), ref.isnan()) and torch.equal(got[0].isinf(), ref.isinf())
    # the data gradient: the value in the incoming gradient of images 0 and 2 (or the weight)
    x, w, b = exact_inputs(c, torch.float32)
    if where == "huge_weight":
        w[3, 5, 1, 2] = value
    code = forward_with(monkeypatch, False, x, w, b, c)[1]
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, torch.float32)
    if where != "huge_weight":
        g[0, 2, 5, 4] = g[2, 7, 11, 10] = value
    got = backward_with(monkeypatch, True, g, x, w, code, c)
    direct = backward_with(monkeypatch, False, g, x, w, code, c)
    for what, a, e in zip(("grad_x", "grad_weight", "grad_bias"), got, direct):
        assert torch.equal(a.isnan(), e.isnan()) and torch.equal(a.nan_to_num(), e.nan_to_num()), what


@pytest.mark.parametrize("ci,co,pool,forward,backward", [
    (16, 16, 1, False, False), (16, 24, 1, True, False), (64, 16, 1, False, False), (47, 64, 1, True, False),
    (48, 32, 1, True, True), (48, 31, 1, True, False), (48, 32, 2, False, True), (64, 64, 3, False, True)])
def test_winograd_only_with_enough_channels(brgemm, monkeypatch, ci, co, pool, forward, backward):
    """Few channels leave the transforms too large a share: the forward takes the Winograd products
    from 16 input and 24 output channels without a pooling window, the backward (both gradients)
    from 48 and 32. Gaussian inputs: the two products differ in their last bits exactly where the
    Winograd ones run."""
    c = Cfg(2, ci, 8, 8, co, (3, 3), padding=(1, 1), pool_kernel=(pool, pool), pool_stride=(min(pool, 2),) * 2)
    torch.manual_seed(0)
    x, w, b = (t.float() for t in gaussian_inputs(c))
    got, direct = (forward_with(monkeypatch, on, x, w, b, c) for on in (True, False))
    assert torch.equal(got[0], direct[0]) != forward
    g = gaussian(c.N, c.Co, *c.out_size(), dtype=torch.float32)
    got, direct = (backward_with(monkeypatch, on, g, x, w, direct[1], c) for on in (True, False))
    assert torch.equal(got[0], direct[0]) != backward and torch.equal(got[1], direct[1]) != backward


@pytest.mark.parametrize("pool", ((2, 2), (3, 2)))
def test_pooling_ties_stay_exact(brgemm, monkeypatch, pool):
    """A flat region of the input makes exactly equal conv values; a pooling window among them must
    pick the first (as the direct products do, summing every position alike), not whichever a
    rounding favours: float32 pooled layers keep the direct products forward, whatever the
    Winograd setting. Constant images, so every interior window is a tie."""
    c = Cfg(2, 64, 12, 12, 64, (3, 3), padding=(1, 1), pool_kernel=pool, pool_stride=(2, 2))
    torch.manual_seed(0)
    x = torch.full((c.N, c.Ci, c.H, c.W), 0.7) * torch.rand(1, c.Ci, 1, 1)
    w, b = torch.randn(c.Co, c.Ci, 3, 3) / 24, torch.zeros(c.Co)
    got = forward_with(monkeypatch, True, x, w, b, c)
    direct = forward_with(monkeypatch, False, x, w, b, c)
    assert torch.equal(got[0], direct[0]) and torch.equal(got[1], direct[1])
    interior = direct[1][:, :, 1:-1, 1:-1]
    assert ((interior == 0) | (interior == NO_GRAD)).all()  # the first of each tie (or no gradient)


FLAT = {  # the weight gradient over flat images (AMX's shapes, stride 1, kernel rows of >= 128 values):
    # input rows W + pw positions apart, images whole 32-position tiles apart, each tap's products at
    # its own offset
    "channel_blocks_partial": Cfg(6, 70, 7, 9, 33, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
    "no_padding": Cfg(5, 48, 9, 12, 16, (2, 3), pool_kernel=(2, 2), pool_stride=(2, 2)),  # a position's first value is data
    "uneven_padding": Cfg(3, 44, 10, 7, 24, (5, 3), padding=(1, 2)),
    # 40 images: several groups of dw copies, each over products that span images; 70 output
    # channels: two parts of rows
    "many_images": Cfg(40, 48, 13, 13, 70, (3, 3), padding=(1, 1)),
    "odd_channels_and_width": Cfg(4, 45, 11, 5, 7, (3, 3), padding=(2, 1), pool_kernel=(1, 1), pool_stride=(1, 1)),
}


def backward_amx(monkeypatch, amx: bool, g, x, w, code, c: Cfg):
    monkeypatch.setenv("PYALEXNET_CPU_AMX_SHAPES", "1" if amx else "0")
    return BWD(g, x, w, code, *c.args(), [True, True, True])


@needs_brgemm
@pytest.mark.parametrize("tiling", ("wide", "narrow"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("name", FLAT)
def test_flat_weight_gradient_exact(monkeypatch, name, dtype, tiling):
    """Exact inputs: the weight gradient over flat images (AMX's shapes) gives the per-patch products'
    gradients bit for bit (float32 also the portable kernel's), whatever the padding, channel blocks
    and images a product."""
    monkeypatch.delenv("PYALEXNET_CPU_PORTABLE", raising=False)
    monkeypatch.setenv("PYALEXNET_CPU_TILING", tiling)
    monkeypatch.setenv("PYALEXNET_CPU_WINOGRAD", "0")
    c = FLAT[name]
    x, w, b = exact_inputs(c, dtype)
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
    for x in (x, x.contiguous(memory_format=torch.channels_last)):
        code = FWD(x, w, b, *c.args())[1]
        flat = backward_amx(monkeypatch, True, g, x, w, code, c)
        patches = backward_amx(monkeypatch, False, g, x, w, code, c)
        for what, a, e in zip(("grad_x", "grad_weight", "grad_bias"), flat, patches):
            assert torch.equal(a, e), what
        if dtype == torch.float32:
            monkeypatch.setenv("PYALEXNET_CPU_PORTABLE", "1")
            assert torch.equal(flat[1], BWD(g, x, w, code, *c.args(), [True, True, True])[1])
            monkeypatch.setenv("PYALEXNET_CPU_PORTABLE", "0")


@needs_brgemm
@pytest.mark.parametrize("value", (float("inf"), float("nan")), ids=("inf", "nan"))
@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_flat_weight_gradient_non_finite_input(monkeypatch, dtype, value):
    """Over flat images a tap also multiplies input values that its conv never reads by the zeros
    between the conv rows: a non-finite input takes the per-patch products, whose NaNs stand exactly
    where a conv reads the value (here the last pixel, which tap (0, 0) never reads)."""
    monkeypatch.delenv("PYALEXNET_CPU_PORTABLE", raising=False)
    monkeypatch.setenv("PYALEXNET_CPU_TILING", "wide")
    monkeypatch.setenv("PYALEXNET_CPU_WINOGRAD", "0")
    c = Cfg(3, 48, 9, 10, 16, (3, 3), padding=(1, 1), pool_kernel=(1, 1), pool_stride=(1, 1))
    x, w, b = exact_inputs(c, dtype)
    x[1, 2, -1, -1] = value
    code = FWD(x, w, b, *c.args())[1]
    g = nonzero_ints((c.N, c.Co, *c.out_size()), 4, -1, dtype)
    flat = backward_amx(monkeypatch, True, g, x, w, code, c)[1]
    patches = backward_amx(monkeypatch, False, g, x, w, code, c)[1]
    assert torch.equal(flat.isnan(), patches.isnan()) and torch.equal(flat.nan_to_num(), patches.nan_to_num())
    assert flat[:, 2, 0, 0].isfinite().all() and not flat[:, 2, 2, 2].isfinite().any()
