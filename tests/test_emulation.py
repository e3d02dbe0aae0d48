"""Self-tests of the CPU emulation of CUDA (csrc/cuda/emulation.h) that runs our kernels in CI: the
two schedules expose a missing barrier, the sanitizers catch out-of-bounds accesses, divergent
barriers and warp collectives are reported (no hang), a spinning kernel meets the watchdog, and the
warp intrinsics, atomics, conversions, WMMA, ldmatrix and mma.sync compute what the hardware computes
(ldmatrix and mma.sync element for element, against the PTX ISA's fragment tables).
The kernels are in tests/emulation/selftest_kernels.cu; the build and runner in tests/emulation/.

EMULATED_TESTS (tests/emulation/coverage.py) lists, for every CUDA kernel of the repository, the tests
that run it in the emulation; test_every_cuda_kernel_has_an_emulated_test fails when a kernel is added
without one, and conftest.py fails a listed test that did not launch its kernels."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from emulation import harness
from emulation.coverage import EMULATED_TESTS

TESTS_DIR = harness.REPO_ROOT / "tests"


def test_every_cuda_kernel_has_an_emulated_test():
    """Every kernel is listed in EMULATED_TESTS, and every test named there is collected (conftest.py
    checks, as each listed test runs, that its driver runs launched the kernel)."""
    kernels = harness.cuda_kernels()
    assert kernels, "no __global__ kernel found in csrc/cuda/*.cu: the pattern is out of date"
    missing = sorted(set(kernels) - set(EMULATED_TESTS))
    assert not missing, (f"CUDA kernels without an emulated test: {[f'{k} ({kernels[k]})' for k in missing]}; "
                         "add a test that launches them through tests/emulation/driver.cpp and list it in "
                         "tests/emulation/coverage.py")
    stale = sorted(set(EMULATED_TESTS) - set(kernels))
    assert not stale, f"EMULATED_TESTS names kernels that no longer exist: {stale}"
    files = sorted({t.split("::")[0] for tests in EMULATED_TESTS.values() for t in tests})
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                        "-o", "addopts=", *files], cwd=TESTS_DIR, capture_output=True, text=True, timeout=600)
    collected = {line.strip().rsplit("/", 1)[-1] for line in r.stdout.splitlines() if "::" in line}
    functions = {c.split("[", 1)[0] for c in collected}
    for kernel, tests in EMULATED_TESTS.items():
        for t in tests:
            assert t in collected or t in functions, f"{kernel}: no test {t} is collected\n{r.stdout[-2000:]}"


def _selftest(name: str, tmp_path, inputs=None, schedule="asc", **kw):
    if inputs is not None:
        (tmp_path / "in.bin").write_bytes(np.asarray(inputs, dtype=np.float32).tobytes())
    return harness.run(["selftest", name, str(tmp_path), f"schedule={schedule}"], **kw)


def _outputs(name: str, tmp_path, inputs, dtype) -> dict:
    """Runs the self-test under both schedules; {schedule: output array}."""
    out = {}
    for s in harness.SCHEDULES:
        r = _selftest(name, tmp_path, inputs, schedule=s)
        harness.check_ok(r, f"{name} ({s})")
        out[s] = np.frombuffer((tmp_path / f"{s}_out.bin").read_bytes(), dtype=dtype)
    return out


@pytest.mark.thorough
def test_missing_barrier_is_caught_by_the_two_schedules(tmp_path):
    """Thread t reads the shared value thread t + 1 wrote: without the barrier the result depends on
    the order the threads run in, so the two schedules disagree; with it they agree and are right."""
    x = np.random.default_rng().integers(1, 100, 128).astype(np.float32)
    bad = _outputs("missing_barrier", tmp_path, x, np.float32)
    assert not np.array_equal(bad["asc"], bad["desc"]), "the schedules did not expose the missing barrier"
    good = _outputs("with_barrier", tmp_path, x, np.float32)
    expect = (2 * x.reshape(2, 64)[:, np.r_[1:64, 0]]).ravel()
    for s in harness.SCHEDULES:
        np.testing.assert_array_equal(good[s], expect)


def test_dynamic_shared_memory_is_poisoned_per_block_and_barriers_repeat(tmp_path):
    """Each block finds its dynamic shared memory filled with 0xFF bytes (NaN), even after an earlier
    block wrote it; a tree reduction with a barrier per level sums each block's 64 values."""
    x = np.random.default_rng().integers(-50, 50, 3 * 64).astype(np.float32)
    out = _outputs("dynamic_shared_reduce", tmp_path, x, np.float32)
    for s in harness.SCHEDULES:
        o = out[s].reshape(3, 65)
        assert (o[:, :64].view(np.uint32) == 0xFFFFFFFF).all(), s
        np.testing.assert_array_equal(o[:, 64], x.reshape(3, 64).sum(axis=1))


@pytest.mark.parametrize("name, report", [
    ("oob_global", "heap-buffer-overflow"),            # a global-memory write past the end: ASan
    ("oob_dynamic_shared", "heap-buffer-overflow"),    # dynamic shared memory past its size: ASan
    ("oob_shared", "index 32 out of bounds"),          # a static __shared__ array: UBSan's bounds check
])
def test_out_of_bounds_write_is_caught_by_the_sanitizers(tmp_path, name, report):
    r = _selftest(name, tmp_path)
    assert r.returncode != 0, f"{name}: the out-of-bounds write went unnoticed\n{r.stderr}"
    assert report in r.stderr, r.stderr
    assert "selftest_kernels.cu" in r.stderr  # the report points at the kernel's line


def _at(marker: str) -> str:
    """"selftest_kernels.cu:<line>" of the line marked with // [marker]."""
    lines = (harness.HERE / "selftest_kernels.cu").read_text().splitlines()
    return f"selftest_kernels.cu:{next(i + 1 for i, l in enumerate(lines) if f'// [{marker}]' in l)}"


@pytest.mark.parametrize("name, message", [
    ("divergent_barrier", lambda: f"divergent __syncthreads(): threads wait at different barriers: threads 0-15 "
                                  f"at {_at('barrier-low')} (barrier #1); threads 16-63 at {_at('barrier-high')}"),
    ("barrier_after_exit", lambda: f"divergent __syncthreads(): threads 0-31 wait at {_at('barrier-after-exit')} "
                                   "while threads 32-63 have exited"),
    ("divergent_shuffle", lambda: f"a warp collective cannot complete: __shfl_xor_sync at "
                                  f"{_at('divergent-shuffle')}: threads 0-15 arrived, threads 16-31 of its mask exited"),
])
def test_divergence_is_reported_not_hung(tmp_path, name, message):
    r = _selftest(name, tmp_path, timeout=60)
    assert r.returncode == 3, r.stderr
    assert "KernelError: kernel selftest::" in r.stderr and message() in r.stderr, r.stderr


def test_watchdog_ends_a_spinning_kernel(tmp_path):
    r = _selftest("spin", tmp_path, timeout=60, env={"PYA_EMU_WATCHDOG_S": "1"})
    assert r.returncode == 124 and "pya_emu watchdog" in r.stderr, r.stderr


def _lanes_expected(v: np.ndarray) -> np.ndarray:
    """What warp_ops_kernel writes, from the PTX definitions, for 48 threads (warps of 32 and 16)."""
    out = np.zeros((48, 12), dtype=np.int64)
    for w0, n in ((0, 32), (32, 16)):
        vals = v[w0:w0 + n]
        mask = (1 << n) - 1
        for lane in range(n):
            src = lambda s: vals[s] if 0 <= s < n else vals[lane]  # noqa: E731 (absent lane: own value)
            o = out[w0 + lane]
            o[0] = src(5)
            o[1] = src((lane & ~7) + ((lane + 3) & 7))
            o[2] = src(lane - 3) if lane - 3 >= 0 else vals[lane]
            o[3] = src(lane + 3) if lane + 3 < 32 else vals[lane]
            o[4] = src(lane ^ 6)
            end = (lane & ~15) + 16
            o[5] = src(lane + 2) if lane + 2 < end else vals[lane]
            o[6] = sum(1 << i for i in range(n) if vals[i] % 3 == 0) & mask
            o[7] = int(any(vals == 7))
            o[8] = int(all(vals >= 0))
            o[9] = vals.sum()
            o[10] = vals.max()
            o[11] = (vals[lane ^ 2] if (lane ^ 2) < n else vals[lane]) if lane % 2 == 0 else -1
    return out.astype(np.int32).view(np.int32).ravel()


def test_warp_shuffles_votes_and_reductions(tmp_path):
    v = np.random.default_rng().integers(0, 40, 48)
    out = _outputs("warp_ops", tmp_path, v, np.int32)
    expect = _lanes_expected(v)
    for s in harness.SCHEDULES:
        got = out[s].reshape(48, 12)
        for col in range(12):
            np.testing.assert_array_equal(got[:, col], expect.reshape(48, 12)[:, col], err_msg=f"op {col} ({s})")


def test_atomics(tmp_path):
    x = np.random.default_rng().random(256).astype(np.float32)
    out = _outputs("atomics", tmp_path, x, np.float64)
    for s in harness.SCHEDULES:
        fsum, dsum, isum, umax, cmax, cnt, imax = out[s]
        assert fsum == pytest.approx(x.astype(np.float64).sum(), rel=1e-5)
        assert dsum == pytest.approx(x.astype(np.float64).sum(), rel=1e-12)
        assert isum == (x * np.float32(100)).astype(np.int32).sum()
        assert umax == (x * np.float32(1000)).astype(np.uint32).max()
        assert imax == ((x * np.float32(1000)).astype(np.int32) - 500).max()
        assert cmax == x.max() and cnt == 256


def test_conversions_round_like_the_hardware(tmp_path):
    """float -> half / bfloat16 (round to nearest even, subnormals, overflow to inf) bit-exactly as
    torch converts, and tf32 as cvt.rna (round to nearest, ties away from zero)."""
    rng = np.random.default_rng()
    special = np.array([0.0, -0.0, 1.0, 65504.0, 65519.99, 65520.0, 1e6, -1e6, 2.0**-14, 2.0**-24,
                        2.0**-25, 2.0**-25 * 1.0001, 3 * 2.0**-26, 1.5 * 2.0**-24, 2.0**-14 * (1 - 2.0**-12),
                        np.inf, -np.inf, 3.4e38, 1e-40, 1 + 2.0**-11, 1 + 3 * 2.0**-11, 1 + 2.0**-8,
                        1 + 3 * 2.0**-8, 1 + 2.0**-11 + 2.0**-20], dtype=np.float32)
    bits = rng.integers(0, 2**32, 4000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    bits = bits[np.isfinite(bits)]
    near = (rng.standard_normal(4000) * np.exp2(rng.integers(-30, 18, 4000))).astype(np.float32)
    x = np.concatenate([special, -special, bits, near]).astype(np.float32)
    out = _outputs("convert", tmp_path, x, np.uint32)
    t = torch.from_numpy(x.copy())
    h = t.half().view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    b = t.bfloat16().view(torch.int16).numpy().view(np.uint16).astype(np.uint32)
    hf = t.half().float().numpy().view(np.uint32)
    bf = t.bfloat16().float().numpy().view(np.uint32)
    u = x.view(np.uint32).astype(np.uint64)
    tf = np.where((u & 0x7F800000) == 0x7F800000, u, (u + 0x1000) & 0xFFFFE000).astype(np.uint32)
    for s in harness.SCHEDULES:
        got = out[s].reshape(-1, 5)
        for col, (want, what) in enumerate(((h, "half bits"), (hf, "half -> float"), (b, "bfloat16 bits"),
                                            (bf, "bfloat16 -> float"), (tf, "tf32"))):
            bad = np.nonzero(got[:, col] != want)[0]
            assert bad.size == 0, (f"{what} ({s}): {bad.size} differ, e.g. x = {x[bad[:5]]} "
                                   f"got {got[bad[:5], col]} want {want[bad[:5]]}")


@pytest.mark.parametrize("name, dtype, K, a_row, b_row", [
    ("wmma_f16_rr", torch.float16, 16, True, True),
    ("wmma_f16_cc", torch.float16, 16, False, False),
    ("wmma_bf16_rc", torch.bfloat16, 16, True, False),
    ("wmma_tf32_cr", "tf32", 8, False, True),
])
def test_wmma_matches_a_product_of_the_rounded_inputs(tmp_path, name, dtype, K, a_row, b_row):
    """C = A B + C0 through the emulated tensor-core path (fragments loaded from row/column-major shared
    memory, C0 from column-major memory, stored row-major) against float64 A B + C0 of the inputs
    rounded as the hardware rounds them; float accumulation of 16 exact products: rtol 1e-6."""
    a = torch.randn(16, K, dtype=torch.float32)
    b = torch.randn(K, 16, dtype=torch.float32)
    c0 = torch.randn(16, 16, dtype=torch.float32)
    inputs = np.concatenate([a.numpy().ravel(), b.numpy().ravel(), c0.t().contiguous().numpy().ravel()])
    out = _outputs(name, tmp_path, inputs, np.float32)

    def rounded(m):
        if dtype == "tf32":  # __float_to_tf32: round to nearest, ties away; 10 mantissa bits
            u = m.numpy().view(np.uint32).astype(np.uint64)
            return torch.from_numpy(((u + 0x1000) & 0xFFFFE000).astype(np.uint32).view(np.float32))
        return m.to(dtype).float()

    ref = rounded(a).double() @ rounded(b).double() + c0.double()
    plain = a.double() @ b.double() + c0.double()
    for s in harness.SCHEDULES:
        got = torch.from_numpy(out[s].copy()).reshape(16, 16).double()
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name} ({s}): {m}")
    # the rounding is really applied: the unrounded product differs measurably
    assert (ref - plain).abs().max() > 1e-4


# The PTX ISA's fragment tables ("Matrix Fragments for mma.m16n8k16 / mma.m16n8k8", "ldmatrix"), written
# out here as the ISA states them, independently of the emulation's code. Lane l: group g = l // 4,
# t = l % 4; a 32-bit register holds fragment elements 2r (low half) and 2r + 1 (high half).
def _ptx_a16(i, g, t):  # element i (0-7) of A (16 x 16)
    return (g if i < 2 or 4 <= i < 6 else g + 8), t * 2 + (i & 1) + (8 if i >= 4 else 0)


def _ptx_b16(i, g, t):  # element i (0-3) of B (16 x 8)
    return t * 2 + (i & 1) + (8 if i >= 2 else 0), g


def _ptx_a_tf32(i, g, t):  # register i (0-3) of A (16 x 8)
    return (g if i in (0, 2) else g + 8), (t if i < 2 else t + 4)


def _ptx_b_tf32(i, g, t):  # register i (0-1) of B (8 x 8)
    return (t if i == 0 else t + 4), g


def _ptx_c(i, g, t):  # element i (0-3) of C and D (16 x 8)
    return (g if i < 2 else g + 8), t * 2 + (i & 1)


@pytest.mark.parametrize("n, trans", [(1, False), (2, False), (4, False), (4, True), (2, True)])
def test_ldmatrix_gives_each_lane_the_ptx_isa_elements(tmp_path, n, trans):
    """ldmatrix.m8n8.x{1,2,4}[.trans].b16: lane 8 i + j gives the address of row j of matrix i (here a
    random permutation of 32 stored rows); lane l receives, per matrix, row l // 4, columns 2 (l % 4)
    and + 1, or with .trans those of the transpose. Stored value: 8 row + column."""
    rows = np.random.default_rng().permutation(32)
    name = f"ldmatrix_x{n}" + ("_trans" if trans else "")
    out = _outputs(name, tmp_path, rows.astype(np.float32), np.uint32)
    want = np.zeros((32, n), np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(n):
            if trans:
                lo, hi = rows[8 * i + 2 * t] * 8 + g, rows[8 * i + 2 * t + 1] * 8 + g
            else:
                lo, hi = rows[8 * i + g] * 8 + 2 * t, rows[8 * i + g] * 8 + 2 * t + 1
            want[lane, i] = lo | hi << 16
    for s in harness.SCHEDULES:
        np.testing.assert_array_equal(out[s].reshape(32, n), want, err_msg=f"{name} ({s})")


def _bits16(x: torch.Tensor, dtype) -> np.ndarray:
    return x.to(dtype).view(torch.int16).numpy().view(np.uint16).astype(np.uint32)


@pytest.mark.parametrize("name, dtype", [("mma_bf16", torch.bfloat16), ("mma_f16", torch.float16), ("mma_tf32", "tf32")])
def test_mma_sync_fragments_follow_the_ptx_isa(tmp_path, name, dtype):
    """mma.sync.m16n8k16 (bf16, f16) and m16n8k8 (tf32) with float accumulators: registers built from A,
    B and C by the PTX ISA's tables, D read back by them, against float64 A B + C of the inputs as the
    tensor core reads them (tf32: the low 13 bits of each float ignored). A fragment element in the
    wrong place gives a wrong product."""
    tf32 = dtype == "tf32"
    K = 8 if tf32 else 16
    a, b, c = torch.randn(16, K), torch.randn(K, 8), torch.randn(16, 8)
    regs = np.zeros((32, 10), np.uint32)
    if tf32:
        abits, bbits = a.numpy().view(np.uint32), b.numpy().view(np.uint32)
        ra = torch.from_numpy((abits & 0xFFFFE000).view(np.float32))
        rb = torch.from_numpy((bbits & 0xFFFFE000).view(np.float32))
    else:
        abits, bbits = _bits16(a, dtype).reshape(16, K), _bits16(b, dtype).reshape(K, 8)
        ra, rb = a.to(dtype).float(), b.to(dtype).float()
    cbits = c.numpy().view(np.uint32)
    for lane in range(32):
        g, t = lane // 4, lane % 4
        if tf32:
            for i in range(4):
                regs[lane, i] = abits[_ptx_a_tf32(i, g, t)]
            for i in range(2):
                regs[lane, 4 + i] = bbits[_ptx_b_tf32(i, g, t)]
        else:
            for i in range(8):
                regs[lane, i // 2] |= abits[_ptx_a16(i, g, t)] << (16 * (i % 2))
            for i in range(4):
                regs[lane, 4 + i // 2] |= bbits[_ptx_b16(i, g, t)] << (16 * (i % 2))
        for i in range(4):
            regs[lane, 6 + i] = cbits[_ptx_c(i, g, t)]
    out = _outputs(name, tmp_path, regs.view(np.float32).ravel(), np.float32)
    ref = ra.double() @ rb.double() + c.double()
    for s in harness.SCHEDULES:
        d = out[s].reshape(32, 4)
        got = torch.zeros(16, 8, dtype=torch.float64)
        for lane in range(32):
            for i in range(4):
                got[_ptx_c(i, lane // 4, lane % 4)] = float(d[lane, i])
        torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6, msg=lambda m: f"{name} ({s}): {m}")
    if tf32:  # the ignored bits are really ignored: the full floats give a measurably different product
        assert (a.double() @ b.double() + c.double() - ref).abs().max() > 1e-5


def test_async_copies_land_at_the_wait_and_not_before(tmp_path):
    """cp.async (csrc/cuda/async_copy.h): a copy's destination holds NaN until a wait_group that covers
    its commit group, then the source's bytes; the zero-fill form lands zeros. So a kernel that reads a
    stage before waiting for it, or copies into a stage other warps still read, computes NaN."""
    x = np.random.default_rng().uniform(1, 2, 128).astype(np.float32)
    out = _outputs("async_copy", tmp_path, x, np.float32)
    for s in harness.SCHEDULES:
        o = out[s].reshape(32, 4, 4)
        np.testing.assert_array_equal(o[:, 0], x.reshape(32, 4), err_msg=f"group 1 after wait<1> ({s})")
        assert np.isnan(o[:, 1]).all(), f"group 2 read before its wait must be NaN ({s})"
        np.testing.assert_array_equal(o[:, 2], x.reshape(32, 4), err_msg=f"group 2 after wait<0> ({s})")
        np.testing.assert_array_equal(o[:, 3], np.zeros((32, 4), np.float32), err_msg=f"zero-fill ({s})")


def test_misaligned_async_copy_is_an_error(tmp_path):
    r = _selftest("async_copy_misaligned", tmp_path, np.ones(8, np.float32))
    assert r.returncode != 0 and "misaligned address" in r.stderr, r.stderr
