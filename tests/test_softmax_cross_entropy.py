"""Tests of the fused softmax cross-entropy op on the CPU: values and gradients against a float64
F.cross_entropy reference, odd shapes and layouts, gradcheck, opcheck, torch.compile, bad inputs, the
nn module, and one bigmem case with offsets past 2^31. Tolerances: see conftest.assert_matches."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import pyalexnet
from conftest import (DTYPES, LAYOUTS, REDUCTIONS, assert_backends_agree, assert_matches, check_against_reference, check_tail_rows,
                      forward_op_samples, make_layout, mem_available_gib, random_logits, random_target,
                      random_weight, reference, torch_same_dtype, ulp)
from pyalexnet.ops import softmax_cross_entropy

FWD = torch.ops.pyalexnet.softmax_cross_entropy_forward.default
BWD = torch.ops.pyalexnet.softmax_cross_entropy_backward.default

# How targets meet ignore_index: never (the default -100, absent); the default hit by some targets;
# a class inside [0, C) hit by some targets.
IGNORE_CASES = {"absent": None, "hit_default": -100, "hit_class": 2}


def ignore_opts(case: str) -> dict:
    return {} if IGNORE_CASES[case] is None else {"ignore_index": IGNORE_CASES[case]}


# ------------------------------------------------------------------------------------------------
# Values and gradients against the float64 reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.25))
@pytest.mark.parametrize("ignore", IGNORE_CASES)
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("C", (19, 45))  # the CPU kernel's two paths: rows by blocks (C <= 32) and one by one
def test_matches_reference(C, reduction, weighted, ignore, label_smoothing, dtype):
    N = 33
    x = random_logits(N, C, dtype=dtype)
    t = random_target(N, C, IGNORE_CASES[ignore])
    if ignore == "absent":
        assert not (t == -100).any()
    w = random_weight(C, dtype) if weighted else None
    check_against_reference(x, t, w, reduction=reduction, label_smoothing=label_smoothing,
                            **ignore_opts(ignore))


@pytest.mark.parametrize("options", ("plain", "weighted_smoothed_ignored"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("N", (0, 1, 7, 33))
@pytest.mark.parametrize("C", (1, 2, 3, 1000, 32769))
@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
def test_odd_shapes(dtype, C, N, reduction, options):
    x = random_logits(N, C, dtype=dtype)
    if options == "plain":
        check_against_reference(x, random_target(N, C), reduction=reduction)
    else:
        t = random_target(N, C, ignore_index=-100)
        check_against_reference(x, t, random_weight(C, dtype), reduction=reduction, label_smoothing=0.25)


@pytest.mark.parametrize("N", (5, 40))  # one row at a time, and by blocks of 16
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_target_gradient_exactly_zero(dtype, N):
    """p_t = 1: the target's gradient is exactly 0 as in PyTorch, with one class and any weights and
    label smoothing (A p_t - B - E w_t kept the rounding of A = B + E wsum), and with every other
    logit -inf and no smoothing (with it, E (wsum - w_t) is the true value)."""
    for C, smoothing in ((1, (0.0, 0.3)), (9, (0.0,))):
        x = random_logits(N, C, dtype=dtype)
        t = torch.zeros(N, dtype=torch.long)
        x[:, 1:] = float("-inf")
        for w in (None, random_weight(C, dtype)):
            for eps in smoothing:
                x1 = x.clone().requires_grad_()
                softmax_cross_entropy(x1, t, w, reduction="sum", label_smoothing=eps).backward()
                assert (x1.grad[:, 0] == 0).all(), (C, w, eps, x1.grad[:, 0])


@pytest.mark.parametrize("options", ({}, {"label_smoothing": 0.3}, {"weight": True}))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batch(reduction, dtype, options):
    """N = 0: the mean of nothing is NaN (0/0) as in PyTorch, the sum 0, 'none' an empty loss."""
    C = 5
    x = random_logits(0, C, dtype=dtype)
    w = random_weight(C, dtype) if options.get("weight") else None
    opts = {k: v for k, v in options.items() if k != "weight"}
    loss, grad = check_against_reference(x, random_target(0, C), w, reduction=reduction, **opts)
    expected = F.cross_entropy(x.double(), torch.zeros(0, dtype=torch.long), reduction=reduction)
    assert loss.shape == expected.shape and grad.shape == (0, C)
    assert torch.equal(loss.double().isnan(), expected.isnan())
    if reduction == "mean":
        assert loss.isnan()


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.25))
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_all_targets_ignored(reduction, weighted, label_smoothing, dtype):
    """Every target == ignore_index: mean is NaN like PyTorch, sum 0, gradient as PyTorch gives."""
    N, C, ignore_index = 9, 6, 4
    x = random_logits(N, C, dtype=dtype)
    t = torch.full((N,), ignore_index)
    w = random_weight(C, dtype) if weighted else None
    loss, grad = check_against_reference(x, t, w, reduction=reduction, ignore_index=ignore_index,
                                         label_smoothing=label_smoothing)
    if reduction == "mean":
        assert loss.isnan()
    else:
        assert (loss == 0).all()
    assert (grad == 0).all()


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16, torch.bfloat16), ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", LAYOUTS)
def test_layouts(kind, reduction, dtype):
    N, C = 13, 37
    x, t = make_layout(kind, N, C, dtype)
    check_against_reference(x, t, random_weight(C, dtype), reduction=reduction, label_smoothing=0.25)


@pytest.mark.parametrize("memory_format", (torch.contiguous_format, torch.channels_last), ids=str)
@pytest.mark.parametrize("options", ({}, {"label_smoothing": 0.25, "ignore_index": 1, "weight": True}))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_spatial_input(reduction, dtype, options, memory_format):
    """(N, C, d1, d2) logits and (N, d1, d2) targets, as for segmentation."""
    N, C, H, W = 3, 7, 5, 4
    x = random_logits(N, C, H, W, dtype=dtype).contiguous(memory_format=memory_format)
    t = random_target((N, H, W), C)
    w = random_weight(C, dtype) if options.get("weight") else None
    opts = {k: v for k, v in options.items() if k != "weight"}
    if "ignore_index" in opts:
        t.view(-1)[::4] = opts["ignore_index"]
    loss, _ = check_against_reference(x, t, w, reduction=reduction, **opts)
    assert loss.shape == ((N, H, W) if reduction == "none" else ())


@pytest.mark.parametrize("target_class", ("hit", "ignored"))
@pytest.mark.parametrize("options", ({}, {"label_smoothing": 0.25, "weight": True}))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unbatched(reduction, dtype, options, target_class):
    """(C,) logits with a scalar target; an ignored one gives NaN under mean, as in PyTorch."""
    C = 11
    x = random_logits(C, dtype=dtype)
    t = torch.tensor(-100 if target_class == "ignored" else int(torch.randint(0, C, ())))
    w = random_weight(C, dtype) if options.get("weight") else None
    opts = {k: v for k, v in options.items() if k != "weight"}
    loss, grad = check_against_reference(x, t, w, reduction=reduction, **opts)
    assert loss.shape == () and grad.shape == (C,)


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.float16), ids=str)
def test_stride0_grad_output(dtype):
    """reduction='none' with the incoming gradient a scalar expanded to (N,) (stride 0), as
    loss.backward(g.expand(N)) gives; our backward must see the stride-0 tensor itself."""
    N, C = 17, 23
    x = random_logits(N, C, dtype=dtype)
    t = random_target(N, C, ignore_index=-100)
    go = torch.randn((), dtype=dtype).expand(N)
    assert go.stride() == (0,)
    seen = []

    def op(x, t, w, **opts):
        loss = softmax_cross_entropy(x, t, w, **opts)
        loss.register_hook(lambda g: seen.append(g.stride()))
        return loss

    check_against_reference(x, t, random_weight(C, dtype), go, fn=op, reduction="none",
                            label_smoothing=0.1)
    assert seen == [(0,)]
    # The same through loss.backward, which the issue names.
    xx = x.detach().requires_grad_()
    softmax_cross_entropy(xx, t, reduction="none").backward(go)
    _, ref_grad = reference(x, t, None, go, reduction="none")
    _, base_grad = torch_same_dtype(x, t, None, go, reduction="none")
    assert_matches(xx.grad, ref_grad, base_grad, "grad")


@pytest.mark.parametrize("layout", ("contiguous", "column_strided"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bfloat16_rows_converted_exactly(reduction, layout):
    """bfloat16 rows are widened to float32 and the gradient narrowed back by vectorised loops: the
    bfloat16 op must equal the float32 op on the same values, rounded by torch, bit for bit (large
    values and equal logits included; NaN where it is NaN), whatever the dtype of a scalar incoming gradient."""
    N, C = 37, 45
    x = random_logits(N, C, dtype=torch.bfloat16)
    x[3, 5] = float("nan")
    x[6] = x[6] * 1000
    x[7, ::2] = x[7, 0]  # many equal logits (ties: test_bfloat16_gradient_rounds_ties_to_even)
    if layout == "column_strided":
        x = x.t().contiguous().t()
        assert x.stride(1) != 1
    t = random_target(N, C, ignore_index=-100)
    t[3], t[6], t[7] = 1, 2, 3  # the special rows are not ignored
    w = random_weight(C, torch.float32)
    opts = (-100, reduction, 0.1)
    go = (torch.randn(N) if reduction == "none" else torch.randn(())).to(torch.bfloat16)
    gos = (go,) if reduction == "none" else (go, go.double(), go.float())
    _, lse16, ws16 = FWD(x, t, w, *opts)
    _, lse32, ws32 = FWD(x.float(), t, w, *opts)
    for g in gos:
        got = BWD(g, x, t, w, lse16, ws16, *opts)
        want = BWD(g.float(), x.float(), t, w, lse32, ws32, *opts).to(torch.bfloat16)
        nan = got.isnan()
        assert nan.any() and torch.equal(nan, want.isnan())
        # NaN bits differ: c10::BFloat16 (and so ours) writes 0x7FC0, torch's vectorised cast 0xFFFF
        assert torch.equal(got.view(torch.int16)[~nan], want.view(torch.int16)[~nan]), g.dtype


def test_bfloat16_gradient_rounds_ties_to_even():
    """About one float32 gradient in 2^16 lies half-way between two bfloat16 values: over 2^20 of
    them the bfloat16 op must round those to even, as torch does."""
    N, C = 8, 1 << 17
    x = random_logits(N, C, dtype=torch.bfloat16)
    t = random_target(N, C)
    w = random_weight(C, torch.float32)
    opts = (-100, "sum", 0.3)
    _, lse16, ws16 = FWD(x, t, w, *opts)
    _, lse32, ws32 = FWD(x.float(), t, w, *opts)
    g = torch.ones((), dtype=torch.bfloat16)
    exact = BWD(g.float(), x.float(), t, w, lse32, ws32, *opts)
    ties = ((exact.view(torch.int32) & 0xFFFF) == 0x8000).sum().item()
    assert ties >= 4, ties
    got = BWD(g, x, t, w, lse16, ws16, *opts)
    assert torch.equal(got.view(torch.int16), exact.to(torch.bfloat16).view(torch.int16))


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.2))
@pytest.mark.parametrize("masked", ("tail", "first"))
@pytest.mark.parametrize("C", (10, 40))
def test_masked_classes(C, dtype, label_smoothing, masked):
    """-inf logits at non-target classes (masked vocabulary) give finite losses and zero gradient
    there, as in PyTorch; with smoothing the loss is +inf, as PyTorch's, also when the first class
    is masked (the smoothing sum's shift is the first logit, unless that is infinite)."""
    N = 6
    x = random_logits(N, C, dtype=dtype)
    if masked == "tail":
        t, cols = torch.arange(N) % 5, slice(5, None)
    else:
        t, cols = 1 + torch.arange(N) % 4, [0, 7]
    x[:, cols] = float("-inf")
    if label_smoothing == 0:
        loss, grad = check_against_reference(x, t, reduction="none")
        assert loss.isfinite().all() and (grad[:, cols] == 0).all()
    else:
        loss = softmax_cross_entropy(x, t, reduction="none", label_smoothing=label_smoothing)
        ref = F.cross_entropy(x.double(), t, reduction="none", label_smoothing=label_smoothing)
        assert torch.equal(loss.double(), ref)


@pytest.mark.parametrize("C", (1, 2, 10, 32, 33))
@pytest.mark.parametrize("N", (15, 16, 17, 4099))
@pytest.mark.parametrize("dtype", (torch.float64, torch.float32, torch.bfloat16), ids=str)
def test_row_blocks(dtype, N, C):
    """Few classes go 16 rows at a time on the CPU (C <= 32): a partial last block, blocks split
    over threads (4099 rows), every option, and the first class past the block path (33)."""
    x = random_logits(N, C, dtype=dtype)
    t = random_target(N, C, ignore_index=-100)
    check_against_reference(x, t, random_weight(C, dtype), reduction="none", label_smoothing=0.2)
    check_against_reference(x, t, reduction="mean")


@pytest.mark.parametrize("C", (10, 40))
def test_rows_of_infinities_and_nan(C):
    """Rows of all -inf, with a +inf, with a NaN: the same non-finite losses as F.cross_entropy in
    float64 (and the finite rows' losses close), on both CPU paths (by blocks and one by one)."""
    x = random_logits(20, C, dtype=torch.float32)
    x[0] = float("-inf")
    x[5, 3] = float("inf")
    x[9, 1] = float("nan")
    x[17, 2:] = float("-inf")
    t = torch.arange(20) % 2
    for opts in ({}, {"label_smoothing": 0.1}):
        got = softmax_cross_entropy(x, t, reduction="none", **opts).double()
        want = F.cross_entropy(x.double(), t, reduction="none", **opts)
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), (got, want)
        fin = want.isfinite()
        torch.testing.assert_close(got[fin], want[fin], rtol=1e-5, atol=1e-5)
    # the saved (max, log-sum) of the all -inf row: log of an empty sum, as for any other row
    lse = FWD(x, t, None, -100, "none", 0.0)[1]
    assert lse[0].tolist() == [float("-inf")] * 2 and lse[1:].isfinite().any()


@pytest.mark.parametrize("dtype", (torch.float64, torch.float32), ids=str)
def test_large_logits(dtype):
    """Logits of realistic large magnitude: N(0, 8^2) plus a per-row offset of up to +-50."""
    N, C = 64, 300
    offset = (torch.rand(N, 1, dtype=torch.float64) - 0.5) * 100
    x = (torch.randn(N, C, dtype=torch.float64) * 8 + offset).to(dtype)
    check_against_reference(x, random_target(N, C), random_weight(C, dtype), reduction="none",
                            label_smoothing=0.1)


@pytest.mark.parametrize("offset", (1e3, 1e4, -3e4))
def test_large_logit_offset_float32(offset):
    """Every logit of a row far from 0: the log-sum-exp is kept as (max, log-sum), so the loss and
    gradient stay float32-accurate (a float holding max + log-sum would be off by ~ulp(offset))."""
    N, C = 32, 257
    x = (torch.randn(N, C, dtype=torch.float64) * 4 + offset).float()
    check_against_reference(x, random_target(N, C), random_weight(C, torch.float32), reduction="none",
                            label_smoothing=0.1)
    check_against_reference(x, random_target(N, C), reduction="mean")


@pytest.mark.parametrize("N, C", ((257, 129), (5003, 10)))  # rows one by one; by blocks, over several threads
def test_deterministic_across_threads(N, C):
    """The reduction sums in an order fixed by N: the loss does not depend on the number of threads."""
    x, t = random_logits(N, C), random_target(N, C, ignore_index=-100)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = softmax_cross_entropy(x, t, label_smoothing=0.1)
        torch.set_num_threads(max(2, threads))
        many = softmax_cross_entropy(x, t, label_smoothing=0.1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, many)


# ------------------------------------------------------------------------------------------------
# gradcheck, opcheck, torch.compile
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", ((5, 4), (2, 3, 2, 2), (4,)), ids=str)
@pytest.mark.parametrize("label_smoothing", (0.0, 0.3))
@pytest.mark.parametrize("weighted", (False, True), ids=("unweighted", "weighted"))
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck(reduction, weighted, label_smoothing, shape):
    C = shape[1] if len(shape) > 1 else shape[0]
    x = random_logits(*shape, dtype=torch.float64).requires_grad_()
    t_shape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    t = random_target(t_shape, C)
    if t.dim() > 0:
        t.view(-1)[1] = 2  # some targets hit ignore_index = 2, a class
        t.view(-1)[0] = 0  # and one is used: an all-ignored mean is NaN, which gradcheck can't check
    elif t == 2:
        t = torch.tensor(3)  # the one target of an unbatched sample: used (ignored gives NaN)
    w = random_weight(C, torch.float64) if weighted else None

    def f(x):
        return softmax_cross_entropy(x, t, w, ignore_index=2, reduction=reduction,
                                     label_smoothing=label_smoothing)

    assert torch.autograd.gradcheck(f, (x,), fast_mode=True)


@pytest.mark.parametrize("make_args", forward_op_samples())
def test_opcheck_forward(make_args):
    torch.library.opcheck(FWD, make_args())


@pytest.mark.parametrize("N", (0, 4), ids=("empty", "all_ignored"))
def test_opcheck_forward_nan_mean(N):
    """A NaN mean (no target used): opcheck's AOT check compares with assert_close without equal_nan,
    so it is left out and the compiled op is compared here, NaN for NaN."""
    x = random_logits(N, 5).requires_grad_()
    args = (x, torch.full((N,), 2), random_weight(5), 2, "mean", 0.1)
    torch.library.opcheck(FWD, args,
                          test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    torch._dynamo.reset()
    eager = FWD(*args)
    compiled = torch.compile(FWD, backend="aot_eager", fullgraph=True)(*args)
    assert eager[0].isnan()
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, equal_nan=True)


@pytest.mark.parametrize("dtype", (torch.float32, torch.float16), ids=str)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_opcheck_backward(reduction, dtype):
    N, C = 7, 6
    x, t, w = random_logits(N, C, dtype=dtype), random_target(N, C, ignore_index=3), random_weight(C)
    loss, lse, wstats = FWD(x, t, w, 3, reduction, 0.1)
    go = torch.randn_like(loss)
    torch.library.opcheck(BWD, (go, x, t, w, lse, wstats, 3, reduction, 0.1))


class _TinyClassifier(torch.nn.Module):
    def __init__(self, features: int, classes: int, **loss_opts):
        super().__init__()
        self.linear = torch.nn.Linear(features, classes)
        self.loss = pyalexnet.nn.SoftmaxCrossEntropyLoss(**loss_opts)

    def forward(self, x, t):
        return self.loss(self.linear(x), t)


def _compare_compiled(backend: str, loss_opts: dict, x, t, **compile_opts):
    model = _TinyClassifier(x.shape[1], 9, **loss_opts).double()
    compiled = torch.compile(model, backend=backend, fullgraph=True, **compile_opts)
    eager_loss = model(x, t)
    eager_grads = torch.autograd.grad(eager_loss.sum(), list(model.parameters()))
    compiled_loss = compiled(x, t)
    compiled_grads = torch.autograd.grad(compiled_loss.sum(), list(model.parameters()))
    torch.testing.assert_close(compiled_loss, eager_loss, rtol=1e-12, atol=1e-12)
    for a, b in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # and both match F.cross_entropy through the same linear layer
    ref_opts = {**loss_opts, "weight": model.loss.weight}
    ref = F.cross_entropy(model.linear(x), t, **ref_opts)
    torch.testing.assert_close(eager_loss, ref, rtol=1e-10, atol=1e-10)


COMPILE_OPTIONS = ({},
                   {"weight": "random", "ignore_index": 3, "label_smoothing": 0.2, "reduction": "sum"},
                   {"reduction": "none", "label_smoothing": 0.1})


def _loss_opts(opts: dict, C: int = 9) -> dict:
    return {k: (random_weight(C, torch.float64) if k == "weight" else v) for k, v in opts.items()}


@pytest.mark.parametrize("dynamic", (False, True))
@pytest.mark.parametrize("opts", COMPILE_OPTIONS, ids=("default", "weighted_sum", "none"))
def test_compile_aot_eager(opts, dynamic):
    torch._dynamo.reset()
    x, t = torch.randn(12, 16, dtype=torch.float64), random_target(12, 9, ignore_index=3)
    _compare_compiled("aot_eager", _loss_opts(opts), x, t, dynamic=dynamic)


def test_compile_aot_eager_spatial():
    """The (N, C, d1) path of the wrapper (movedim + reshape) traced by Dynamo."""
    torch._dynamo.reset()
    w = random_weight(6, torch.float64)

    def f(x, t):
        return softmax_cross_entropy(torch.tanh(x) * 4, t, w, label_smoothing=0.1)

    x, t = random_logits(3, 6, 5, dtype=torch.float64), random_target((3, 5), 6)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    eager = f(x1, t)
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(x2, t)
    torch.testing.assert_close(compiled, eager, rtol=1e-12, atol=1e-12)
    eager.backward()
    compiled.backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-12, atol=1e-12)


def test_compile_inductor(tmp_path, monkeypatch):
    """The default backend (inductor, which generates C++ here): one case, compiling takes ~15 s.
    A fresh inductor cache: a graph cached by an older build of the op must not be reused."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    torch._dynamo.reset()
    x, t = torch.randn(12, 16, dtype=torch.float64), random_target(12, 9, ignore_index=3)
    _compare_compiled("inductor", _loss_opts(COMPILE_OPTIONS[1]), x, t)


# ------------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------------
def _ok_inputs(N=4, C=5):
    return random_logits(N, C), random_target(N, C)


@pytest.mark.parametrize("bad", (5, 7, -3, -101))
def test_target_out_of_range(bad):
    x, t = _ok_inputs()
    t[2] = bad
    with pytest.raises(RuntimeError, match=rf"target {bad} at position 2 is out of range for 5 classes"):
        softmax_cross_entropy(x, t)
    with pytest.raises(RuntimeError, match=rf"target {bad} at position 2 is out of range"):
        FWD(x, t, None, -100, "none", 0.0)


def test_target_out_of_range_backward_op():
    x, t = _ok_inputs()
    loss, lse, wstats = FWD(x, t, None, -100, "sum", 0.0)
    t[1] = 9
    with pytest.raises(RuntimeError, match="target 9 at position 1 is out of range for 5 classes"):
        BWD(torch.ones(()), x, t, None, lse, wstats, -100, "sum", 0.0)


def test_target_shape_mismatch():
    x, t = _ok_inputs()
    with pytest.raises(RuntimeError, match=r"target must have shape \(N,\) = \(4,\)"):
        softmax_cross_entropy(x, t[:3])
    with pytest.raises(RuntimeError, match=r"target must have shape \(N,\)"):
        softmax_cross_entropy(x, t.view(2, 2))
    with pytest.raises(ValueError, match=r"target must have shape \(3, 2\), got \(3, 3\)"):
        softmax_cross_entropy(random_logits(3, 5, 2), random_target((3, 3), 5))
    with pytest.raises(ValueError, match=r"for logits of shape \(C,\), target must be a scalar"):
        softmax_cross_entropy(random_logits(5), random_target(1, 5))


def test_weight_wrong():
    x, t = _ok_inputs()
    with pytest.raises(RuntimeError, match=r"weight must have one entry per class, shape \(5,\), got \[4"):
        softmax_cross_entropy(x, t, random_weight(4))
    with pytest.raises(RuntimeError, match=r"weight must have one entry per class"):
        softmax_cross_entropy(x, t, random_weight(5).view(5, 1))
    with pytest.raises(RuntimeError, match="weight must be floating point, got Long"):
        softmax_cross_entropy(x, t, torch.ones(5, dtype=torch.long))


@pytest.mark.parametrize("dtype", (torch.int64, torch.int32, torch.uint8, torch.bool), ids=str)
def test_integer_logits(dtype):
    x, t = _ok_inputs()
    with pytest.raises(RuntimeError, match="logits must be float32, float16, bfloat16 or float64, got"):
        softmax_cross_entropy(x.to(dtype), t)


def test_other_bad_dtypes_and_shapes():
    x, t = _ok_inputs()
    with pytest.raises(RuntimeError, match="target must hold class indices as int64 or int32, got Flo"):
        softmax_cross_entropy(x, t.float())
    with pytest.raises(RuntimeError, match="logits need at least one class"):
        softmax_cross_entropy(random_logits(4, 0), t)
    with pytest.raises(ValueError, match="logits must have a class dimension"):
        softmax_cross_entropy(torch.tensor(1.0), torch.tensor(0))
    with pytest.raises(RuntimeError, match="logits must be 2-D"):
        FWD(random_logits(2, 3, 4), random_target(2, 3), None, -100, "mean", 0.0)


def test_unknown_reduction():
    x, t = _ok_inputs()
    with pytest.raises(ValueError, match=r"reduction must be one of \('none', 'mean', 'sum'\), got 'av"):
        softmax_cross_entropy(x, t, reduction="avg")
    with pytest.raises(RuntimeError, match="reduction must be 'none', 'mean' or 'sum', got 'avg'"):
        FWD(x, t, None, -100, "avg", 0.0)
    loss, lse, wstats = FWD(x, t, None, -100, "mean", 0.0)
    with pytest.raises(RuntimeError, match="reduction must be 'none', 'mean' or 'sum', got 'elementw"):
        BWD(torch.ones(()), x, t, None, lse, wstats, -100, "elementwise", 0.0)


@pytest.mark.parametrize("label_smoothing", (-0.1, 1.5, float("nan")))
def test_label_smoothing_out_of_range(label_smoothing):
    x, t = _ok_inputs()
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got"):
        softmax_cross_entropy(x, t, label_smoothing=label_smoothing)
    with pytest.raises(RuntimeError, match=r"label_smoothing must lie in \[0, 1\], got"):
        FWD(x, t, None, -100, "mean", label_smoothing)


def test_backward_op_bad_saved_tensors():
    x, t = _ok_inputs()
    loss, lse, wstats = FWD(x, t, None, -100, "none", 0.0)
    with pytest.raises(RuntimeError, match=r"grad_loss must have shape \(N,\) = \(4,\), got \[3\]"):
        BWD(torch.ones(3), x, t, None, lse, wstats, -100, "none", 0.0)
    with pytest.raises(RuntimeError, match=r"grad_loss must be a scalar"):
        BWD(torch.ones(4), x, t, None, lse, wstats, -100, "mean", 0.0)
    with pytest.raises(RuntimeError, match="lse must be the \\(N, 2\\) Float \\(row max, log-sum-exp\\)"):
        BWD(torch.ones(4), x, t, None, lse.double(), wstats, -100, "none", 0.0)
    with pytest.raises(RuntimeError, match="wstats must be the 2-element Float tensor"):
        BWD(torch.ones(4), x, t, None, lse, wstats[:1], -100, "none", 0.0)


@pytest.mark.parametrize("on_meta, message", (
    ("target", "target is on meta but logits are on cpu"),
    ("weight", "weight is on meta but logits are on cpu"),
    ("logits", "target is on cpu but logits are on meta"),
))
def test_tensors_on_different_devices(on_meta, message):
    """One tensor on 'meta' next to CPU ones: the dispatcher then runs the fake kernel, which must
    refuse (it used to return uninitialised CPU memory as the loss)."""
    args = {"logits": random_logits(4, 5), "target": random_target(4, 5), "weight": random_weight(5)}
    args[on_meta] = args[on_meta].to("meta")
    with pytest.raises(RuntimeError, match=message):
        softmax_cross_entropy(args["logits"], args["target"], args["weight"])


def test_backward_op_devices():
    x, t = _ok_inputs()
    loss, lse, wstats = FWD(x, t, None, -100, "none", 0.0)
    for name, meta_args in (("lse", (lse.to("meta"), wstats)), ("wstats", (lse, wstats.to("meta")))):
        with pytest.raises(RuntimeError, match=f"{name} is on meta but logits are on cpu"):
            BWD(torch.ones(4), x, t, None, *meta_args, -100, "none", 0.0)


def test_meta_tensors():
    """All on 'meta': shapes and dtypes only, as the fake kernel gives them."""
    x = torch.empty(6, 7, device="meta", dtype=torch.bfloat16)
    t = torch.empty(6, device="meta", dtype=torch.long)
    loss, lse, wstats = FWD(x, t, None, -100, "none", 0.0)
    assert loss.shape == (6,) and loss.dtype == torch.bfloat16 and loss.device.type == "meta"
    assert lse.shape == (6, 2) and lse.dtype == torch.float32 and wstats.shape == (2,)
    assert softmax_cross_entropy(x, t).shape == ()


# ------------------------------------------------------------------------------------------------
# nn.SoftmaxCrossEntropyLoss
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", ({}, {"weight": True, "ignore_index": 2, "label_smoothing": 0.1},
                                     {"reduction": "sum", "label_smoothing": 0.3},
                                     {"reduction": "none", "weight": True}))
def test_module_matches_cross_entropy_loss(options):
    C = 8
    kwargs = {k: (random_weight(C, torch.float64) if k == "weight" else v) for k, v in options.items()}
    ours, theirs = pyalexnet.nn.SoftmaxCrossEntropyLoss(**kwargs), torch.nn.CrossEntropyLoss(**kwargs)
    x, t = random_logits(10, C, dtype=torch.float64), random_target(10, C, ignore_index=2)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = ours(x1, t), theirs(x2, t)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(a)
    a.backward(g)
    b.backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-10, atol=1e-10)
    assert "SoftmaxCrossEntropyLoss" in repr(ours)


def test_module_weight_is_buffer():
    w = random_weight(6)
    m = pyalexnet.nn.SoftmaxCrossEntropyLoss(weight=w, label_smoothing=0.2)
    assert "weight" in dict(m.named_buffers())
    assert torch.equal(m.state_dict()["weight"], w)
    assert list(m.parameters()) == []
    m64 = m.to(torch.float64)
    assert m64.weight.dtype == torch.float64
    m_meta = pyalexnet.nn.SoftmaxCrossEntropyLoss(weight=w).to("meta")
    assert m_meta.weight.device.type == "meta"
    # a state_dict round trip restores the weight
    fresh = pyalexnet.nn.SoftmaxCrossEntropyLoss(weight=torch.ones(6), label_smoothing=0.2)
    fresh.load_state_dict(m.state_dict())
    x, t = random_logits(5, 6), random_target(5, 6)
    torch.testing.assert_close(fresh(x, t), F.cross_entropy(x, t, w, label_smoothing=0.2))
    assert "weight" not in pyalexnet.nn.SoftmaxCrossEntropyLoss().state_dict()


def test_module_bad_options():
    with pytest.raises(ValueError, match="reduction must be 'none', 'mean' or 'sum', got 'batchmean'"):
        pyalexnet.nn.SoftmaxCrossEntropyLoss(reduction="batchmean")
    with pytest.raises(ValueError, match=r"label_smoothing must lie in \[0, 1\], got 2"):
        pyalexnet.nn.SoftmaxCrossEntropyLoss(label_smoothing=2)


# ------------------------------------------------------------------------------------------------
# Offsets past 2^31
# ------------------------------------------------------------------------------------------------
@pytest.mark.thorough
@pytest.mark.bigmem
@pytest.mark.skipif(mem_available_gib() < 14, reason="needs 14 GiB of available memory (MemAvailable)")
def test_offsets_past_2_31():
    """N * C just above 2^31 float16 elements (8 GiB for logits and gradient): the last rows start
    past element 2^31, so a 32-bit offset anywhere would read or write the wrong memory there."""
    start = time.perf_counter()
    C, extra = 32768, 4
    N = 2**31 // C + extra  # rows N - extra .. N - 1 start at or past element 2^31
    k = 2 * extra           # rows checked: half below 2^31, half past it
    x = torch.empty(N, C, dtype=torch.float16)
    block = random_logits(1000, C, dtype=torch.float16)  # 1000 does not divide 2^16
    for s in range(0, N, 1000):
        x[s:s + 1000] = block[:N - s]
    del block
    x[-k:] = random_logits(k, C, dtype=torch.float16)
    t = random_target(N, C)
    go = (torch.rand(N) + 0.5).half()
    check_tail_rows(x, t, go, k)
    print(f"\n[bigmem] N={N} C={C} float16: {time.perf_counter() - start:.1f} s")


# ------------------------------------------------------------------------------------------------
# The rule two backends' results are compared by (conftest.assert_backends_agree)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16), ids=str)
def test_backends_agree_within_two_ulp_not_three(dtype):
    """Half precision: 2 units in the last place of each element pass, 3 fail, whatever the element's
    place within its binade (just above a power of two and just below the next)."""
    b = torch.tensor([1.0, 1.984375, 3.0, -0.75], dtype=torch.float64).to(dtype)
    spacing = ulp(b.double(), dtype)
    assert_backends_agree((b.double() + 2 * spacing).to(dtype), b, "2 ulp")
    for i in range(len(b)):
        off = b.double().clone()
        off[i] -= 3 * spacing[i]  # (downwards: exactly representable, within or below the binade)
        with pytest.raises(AssertionError, match="differ by more than allowed"):
            assert_backends_agree(off.to(dtype), b, f"3 ulp at {i}")


def test_backends_agree_scales_float32_with_the_values():
    """float32 gradients of a mean over 32769 classes are ~1e-6 each: a 10% error there must fail,
    as it would at O(1) values; a 1e-6 relative one passes."""
    b = torch.full((4, 32769), 1.0 / 32769, dtype=torch.float32) * torch.linspace(0.5, 1.5, 32769)
    assert_backends_agree(b * (1 + 1e-6), b, "1e-6 relative")
    with pytest.raises(AssertionError, match="differ by more than allowed"):
        assert_backends_agree(b * 1.1, b, "10%")
    with pytest.raises(AssertionError, match="NaNs at"):
        assert_backends_agree(torch.where(b > 4e-5, torch.nan, b), b, "NaN")
