"""The CUDA kernels' machine code, read without a GPU (bench/kernel_report.py: nvcc for sm_90, ptxas -v,
cuobjdump's SASS): no kernel spills, and the tensor-core GEMM kernels (every bf16, f16 and TF32
variant of the conv's forward, data gradient and weight gradient) read their fragments in the main
loop through shared-memory instructions, ldmatrix for 16-bit operands, and never through generic
loads (which lose the address space and rebuild 64-bit pointers every K step).
Skipped where nvcc or cuobjdump is missing."""
from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # the bench package; appended, so pyalexnet stays the installed one
    sys.path.append(str(REPO_ROOT))
from bench import kernel_report  # noqa: E402

GEMM = re.compile(r"conv_relu_maxpool_(forward|dgrad|wgrad)_kernel_impl<(bf16|f16|f32,1),")
# variants per pass and arithmetic (bf16, f16, TF32): forward 4 (16-byte or 4-channel gathers,
# version 1 or 2), dgrad 2 (dconv by 16-byte copies, at stride 1 walked a step at a time), wgrad 2
# (k-major tiles with 16-byte or 4-channel patches). dconv has its channels padded to the K step,
# so no backward variant gathers it by elements.
VARIANTS = {"forward": 4, "dgrad": 2, "wgrad": 2}


@pytest.fixture(scope="module")
def rows():
    if not (shutil.which("nvcc") or os.path.exists("/usr/local/cuda/bin/nvcc")):
        pytest.skip("nvcc not found")
    try:
        kernel_report.cuobjdump()
    except SystemExit:
        pytest.skip("cuobjdump not found")
    return kernel_report.kernel_rows("90")


def test_no_kernel_spills(rows):
    """No kernel spills registers; the conv kernels use no local memory at all (the loss kernels' is
    the argument buffer of the bad-target printf)."""
    conv = [r for r in rows if r["file"].startswith("conv_relu_maxpool_")]
    assert len(conv) > 36 and len(rows) > len(conv)
    spilled = [(r["kernel"], r.get("spill")) for r in rows if r.get("spill", 0)]
    assert not spilled, f"kernels with spills: {spilled}"
    local = [(r["kernel"], r.get("stack")) for r in conv if r.get("stack", 0) or r.get("LDL", 0)]
    assert not local, f"conv kernels with local memory: {local}"


def test_tensor_core_main_loops_read_fragments_from_shared_memory(rows):
    gemm = [r for r in rows if GEMM.match(r["kernel"])]
    for p, n in VARIANTS.items():
        got = [r["kernel"] for r in gemm if f"_{p}_" in r["kernel"]]
        assert len(got) == 3 * n, f"{p}: expected {3 * n} tensor-core variants, found {got}"
    bad = []
    for r in gemm:
        loop = r["loop"]
        if loop is None or loop["HMMA"] == 0:
            bad.append(f"{r['kernel']}: no main loop with HMMA found")
            continue
        if loop["LD"]:
            bad.append(f"{r['kernel']}: {loop['LD']} generic loads in the main loop")
        if not r["kernel"].split("<")[1].startswith("f32") and not loop["LDSM"]:
            bad.append(f"{r['kernel']}: 16-bit operands without ldmatrix in the main loop")
    assert not bad, "\n".join(bad)


# Issue 17's budget: HMMA >= 15% of the main loop's instructions (about 213 instructions for a K
# step's 32 MMAs), for every tensor-core variant (bf16, f16 and TF32) of every pass: the forward's
# 16-byte and 4-channel gathers in both versions, dgrad at stride 1 and above, wgrad's k-major tiles
# with 16-byte and 4-channel patches. Counts: bench/results/2026-12-03-cuda-main-loop-sass.md.


def test_main_loops_meet_the_instruction_budget(rows):
    budget = [r for r in rows if GEMM.match(r["kernel"])]
    assert len(budget) == 3 * sum(VARIANTS.values()), [r["kernel"] for r in budget]
    over = [f"{r['kernel']}: {r['loop']['HMMA']} HMMA in {r['loop']['instructions']} instructions "
            f"({100 * r['loop']['share']:.1f}%)" for r in budget if r["loop"]["share"] < 0.15]
    assert not over, "main loops over the budget:\n" + "\n".join(over)


def test_main_loop_finder_takes_the_innermost_loop_holding_the_mma():
    """The SASS loop finder on a hand-written listing: an outer loop holding an inner loop with the HMMA
    and a later loop without one; the inner loop is the main loop, NOPs are not counted."""
    sass = "\n".join(f"        /*{a:04x}*/                   {t} ;" for a, t in [
        (0x00, "MOV R1, c[0x0][0x28]"),
        (0x10, "IADD3 R2, R2, 0x1, RZ"),
        (0x20, "LDSM.16.M88.4 R4, [R3]"),
        (0x30, "HMMA.16816.F32.BF16 R8, R4, R6, R8"),
        (0x40, "NOP"),
        (0x50, "@P0 BRA 0x20"),
        (0x60, "LD.E R9, [R10.64]"),
        (0x70, "@P1 BRA 0x10"),
        (0x80, "@P2 BRA 0x80"),
        (0x90, "EXIT"),
    ])
    loop = kernel_report.main_loop(sass)
    assert loop is not None
    assert (loop["instructions"], loop["HMMA"], loop["LDSM"], loop["LD"]) == (3, 1, 1, 0)
    assert kernel_report.main_loop(sass.replace("HMMA", "FFMA")) is None


def test_main_loop_finder_reads_a_back_edge_with_a_predicate_operand():
    """ptxas writes the back edge of a loop whose exit test joins two conditions with the branch's own
    predicate operand ("@!P3 BRA P4, 0x..", the unrolled stage ring's loops): it is still a back edge."""
    sass = "\n".join(f"        /*{a:04x}*/                   {t} ;" for a, t in [
        (0x00, "MOV R1, c[0x0][0x28]"),
        (0x10, "LDSM.16.M88.4 R4, [R3]"),
        (0x20, "HMMA.16816.F32.BF16 R8, R4, R6, R8"),
        (0x30, "ISETP.GE.AND P3, PT, R2, R5, PT"),
        (0x40, "@!P3 BRA P4, 0x10"),
        (0x50, "EXIT"),
    ])
    loop = kernel_report.main_loop(sass)
    assert loop is not None and (loop["instructions"], loop["HMMA"]) == (4, 1)
    assert kernel_report.main_loop(sass.replace("@!P3 BRA P4, 0x10", "@!P3 BRA !P4, 0x10"))["instructions"] == 4
