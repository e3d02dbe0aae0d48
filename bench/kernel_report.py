"""Register, spill and instruction report of our CUDA kernels, without a GPU.

Compiles each csrc/cuda/*.cu file with nvcc for one architecture (`-Xptxas -v`: registers, stack,
spills, shared memory per kernel), disassembles the object with cuobjdump (shipped in the triton
package that the CUDA build of torch installs) and counts, per kernel, the instructions that tell
whether the code is what it is meant to be: tensor-core MMAs (HMMA), 16-byte global loads, cp.async copies (LDGSTS) and
stores, local-memory traffic (LDL/STL: spills), FMAs.

Main loop: the innermost loop of the SASS that holds HMMA instructions (the span from a backward
branch's target to the branch; the smallest such span holding an HMMA). Its static instruction
count (NOPs left out) is what one K step issues per warp, counting each inner loop it contains once;
`loop HMMA%` is the tensor-core share of it, `loop LDSM` its ldmatrix loads, `loop LD` its generic
(address-space-less) loads, which a shared-memory operand path should not have.

    python bench/kernel_report.py                      # sm_90, every kernel file
    python bench/kernel_report.py --arch 80 --filter conv_relu_maxpool
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COUNTS = {  # column -> SASS opcode pattern
    "HMMA": r"\bHMMA\.",
    "LDG.128": r"\bLDG\.E\.(?:CONSTANT\.)?128\b|\bLDG\.E\.128\.CONSTANT\b",
    "STG.128": r"\bSTG\.E\.128\b",
    "LDGSTS": r"\bLDGSTS\b",
    "LDS": r"\bLDS(?:\.\w+)*\b",
    "LDL": r"\bLDL\b",
    "STL": r"\bSTL\b",
    "FFMA": r"\bFFMA\b",
    "DFMA": r"\bDFMA\b",
}


LOOP_COUNTS = {"HMMA": r"\bHMMA\.", "LDSM": r"\bLDSM\b", "LD": r"\bLD(?:\.|\s)", "LDS": r"\bLDS(?:\.\w+)*\s",
               "LDGSTS": r"\bLDGSTS\b", "BAR": r"\bBAR\."}
_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);")
# a branch and its target; the target may follow a predicate operand ("@!P3 BRA P4, 0x2460": taken
# when both hold), as ptxas writes the back edge of a loop whose exit test joins two conditions
_BACK_BRANCH = re.compile(r"\bBRA(?:\.\w+)*\s+(?:!?P[0-7T],\s*)?0x([0-9a-f]+)")


def main_loop(sass_function: str) -> dict | None:
    """Counts of the innermost loop holding an HMMA in one function's SASS, or None (no such loop)."""
    ins = [(int(a, 16), text.strip()) for a, text in _INSTRUCTION.findall(sass_function)]
    best = None
    for addr, text in ins:
        m = _BACK_BRANCH.search(text)
        if not m or int(m.group(1), 16) > addr:
            continue
        body = [t for a, t in ins if int(m.group(1), 16) <= a <= addr and not t.startswith("NOP")]
        if any(re.search(LOOP_COUNTS["HMMA"], t) for t in body) and (best is None or len(body) < len(best)):
            best = body
    if best is None:
        return None
    counts = {k: sum(1 for t in best if re.search(p, t)) for k, p in LOOP_COUNTS.items()}
    return {"instructions": len(best), **counts, "share": counts["HMMA"] / len(best)}


def cuobjdump() -> str:
    try:
        import triton
        p = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        if p.exists():
            return str(p)
    except ImportError:
        pass
    found = shutil.which("cuobjdump")
    if not found:
        sys.exit("cuobjdump not found: install the CUDA build of torch (its triton package ships it)")
    return found


def short(mangled: str) -> str:
    """The kernel's name with its template arguments, e.g. conv_relu_maxpool_forward_kernel_impl<bf16,0,1>."""
    name = subprocess.run(["c++filt", mangled], capture_output=True, text=True).stdout.strip() or mangled
    m = re.search(r"(\w+_kernel_impl)<(.*?)>\(", name)
    if not m:
        return name.split("(")[0].split("::")[-1]
    args = re.sub(r"\([^)]*\)", "", m.group(2))  # (anonymous namespace) and casts
    for long, short_ in (("__nv_bfloat16", "bf16"), ("__half", "f16"), ("float", "f32"), ("double", "f64"),
                         ("false", "0"), ("true", "1"), ("pyalexnet::", ""), ("xent::", ""), ("crm::", ""),
                         ("::", ""), (" ", "")):
        args = args.replace(long, short_)
    return f"{m.group(1)}<{args}>"


def report(cu: Path, arch: str, nvcc: str, work: Path) -> list[dict]:
    obj = work / (cu.stem + ".o")
    cmd = [nvcc, "-std=c++20", "-gencode", f"arch=compute_{arch},code=sm_{arch}", "--use_fast_math",
           "--expt-relaxed-constexpr", "-Xptxas", "-v", f"-I{ROOT / 'csrc'}", "-c", str(cu), "-o", str(obj)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"nvcc failed on {cu}:\n{r.stderr}")
    rows, cur = {}, None
    for line in r.stderr.splitlines():
        m = re.search(r"Compiling entry function '(\w+)'", line)
        p = re.search(r"Function properties for (\w+)", line)
        if m:
            cur = rows.setdefault(m.group(1), {"kernel": short(m.group(1)), "file": cu.name})
        elif p:  # a kernel's, or a device function's that follows it (not the kernel's numbers)
            cur = rows.get(p.group(1))
        elif cur is not None and "spill stores" in line:
            st, ss, sl = re.findall(r"(\d+) bytes", line)[:3]
            cur.update(stack=int(st), spill=int(ss) + int(sl))
        elif cur is not None and "Used" in line and "registers" in line:
            cur["regs"] = int(re.search(r"Used (\d+) registers", line).group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            cur["smem"] = int(sm.group(1)) if sm else 0
    sass = subprocess.run([cuobjdump(), "--dump-sass", str(obj)], capture_output=True, text=True).stdout
    for part in re.split(r"\n\s+Function : ", sass)[1:]:
        name = part.split("\n", 1)[0].strip()
        if name in rows:
            for col, pat in COUNTS.items():
                rows[name][col] = len(re.findall(pat, part))
            rows[name]["loop"] = main_loop(part)
    return list(rows.values())


def kernel_rows(arch: str = "90", name_filter: str = "") -> list[dict]:
    """One dict per kernel of csrc/cuda/*.cu (files whose name contains name_filter)."""
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.path.exists(nvcc):
        raise FileNotFoundError("nvcc not found (PATH or /usr/local/cuda/bin)")
    files = [f for f in sorted((ROOT / "csrc" / "cuda").glob("*.cu")) if name_filter in f.name]
    with tempfile.TemporaryDirectory() as d:
        return [r for f in files for r in report(f, arch, nvcc, Path(d))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="90", help="compute capability without the dot (default 90)")
    ap.add_argument("--filter", default="", help="only kernel files whose name contains this")
    args = ap.parse_args()
    try:
        rows = kernel_rows(args.arch, args.filter)
    except FileNotFoundError as e:
        sys.exit(str(e))
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    cols = ["regs", "stack", "spill", "smem", *COUNTS]
    loop_cols = ["instructions", "HMMA", "share", "LDSM", "LD", "LDS", "LDGSTS", "BAR"]
    print(f"sm_{args.arch}, {subprocess.run([nvcc, '--version'], capture_output=True, text=True).stdout.strip().splitlines()[-1]}")
    width = max([len(r["kernel"]) for r in rows] + [6])
    print(f"{'kernel':{width}s} " + " ".join(f"{c:>7s}" for c in cols)
          + " | main loop: " + " ".join(f"{c[:7]:>7s}" for c in loop_cols))
    for r in sorted(rows, key=lambda r: r["kernel"]):
        loop = r.get("loop")
        tail = "" if loop is None else " |            " + " ".join(
            f"{100 * loop[c]:6.1f}%" if c == "share" else f"{loop[c]:7d}" for c in loop_cols)
        print(f"{r['kernel']:{width}s} " + " ".join(f"{r.get(c, 0):7d}" for c in cols) + tail)
    return 0


if __name__ == "__main__":
    sys.exit(main())
