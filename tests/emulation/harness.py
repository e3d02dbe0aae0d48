"""Builds and runs the emulation test driver (tests/emulation/driver.cpp): our CUDA kernel files compiled
as host C++ against the CPU emulation of CUDA (csrc/cuda/emulation.h), with AddressSanitizer and
UBSan, plus the emulation's self-test kernels. No torch inside: Python writes raw input arrays into a
directory, the driver writes raw outputs next to them.

The binary is built once per content (sources, headers, flags, compiler) into the temp directory and
reused by later sessions; PYALEXNET_EMULATION_REBUILD=1 forces a rebuild. Each run takes one
schedule (threads in ascending or descending order between barriers) in a fresh process, so that
static shared memory starts zeroed in both; callers compare the two.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Every .cu kernel file of the repository, plus the self-tests: the driver links them all.
KERNEL_FILES = sorted((REPO_ROOT / "csrc" / "cuda").glob("*.cu"))
SOURCES = KERNEL_FILES + [HERE / "selftest_kernels.cu", HERE / "driver.cpp"]
# What kernel files may include (they include no ATen, so nothing outside these folders).
HEADERS = sorted((REPO_ROOT / "csrc" / "cuda").rglob("*.h")) + sorted((REPO_ROOT / "csrc" / "common").glob("*.h"))
FLAGS = ["-std=c++20", "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
         "-fno-omit-frame-pointer", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function",
         f"-I{REPO_ROOT / 'csrc'}"]
SCHEDULES = ("asc", "desc")
# ASan: no leak check (fiber stacks are mapped, not leaked; LSan needs ptrace in some containers);
# UBSan: stop at the first error with a stack.
RUN_ENV = {"ASAN_OPTIONS": "detect_leaks=0:abort_on_error=0:allocator_may_return_null=0",
           "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def _cxx() -> str | None:
    return os.environ.get("CXX") if os.environ.get("CXX") and shutil.which(os.environ["CXX"]) else shutil.which("g++")


@functools.cache
def _build() -> tuple[Path | None, str]:
    """(path of the driver, "") or (None, why it cannot be built)."""
    cxx = _cxx()
    if cxx is None:
        return None, "no C++ compiler (g++) on PATH to build the CUDA emulation driver"
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    h = hashlib.sha256(("\0".join(FLAGS) + version).encode())
    for p in SOURCES + HEADERS:
        h.update(p.name.encode() + p.read_bytes())
    out_dir = Path(tempfile.gettempdir()) / f"pyalexnet-emulation-{h.hexdigest()[:16]}"
    exe = out_dir / "driver"
    if exe.exists() and not os.environ.get("PYALEXNET_EMULATION_REBUILD"):
        return exe, ""
    for old in Path(tempfile.gettempdir()).glob("pyalexnet-emulation-*"):  # builds unused for a day
        if old.is_dir() and time.time() - old.stat().st_mtime > 86400:
            shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix="pyalexnet-emulation-build-"))
    procs = []
    for i, src in enumerate(SOURCES):  # one compiler per file, in parallel
        lang = ["-x", "c++"] if src.suffix == ".cu" else []
        cmd = [cxx, *FLAGS, *lang, "-c", str(src), "-o", str(work / f"{i}.o")]
        procs.append((src, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
    errors = []
    for src, p in procs:
        out, _ = p.communicate()
        if p.returncode != 0:
            errors.append(f"{src}:\n{out}")
    if not errors:
        objs = [str(work / f"{i}.o") for i in range(len(SOURCES))]
        r = subprocess.run([cxx, "-fsanitize=address,undefined", *objs, "-ldl", "-o", str(work / "driver")],
                           capture_output=True, text=True)
        if r.returncode != 0:
            errors.append(f"link:\n{r.stdout}{r.stderr}")
    if errors:
        pytest.fail("the CUDA emulation driver does not compile:\n" + "\n".join(errors), pytrace=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f"driver.{os.getpid()}"
    shutil.copy2(work / "driver", tmp)
    os.replace(tmp, exe)  # atomic: a concurrent session sees the old binary or the new one
    shutil.rmtree(work, ignore_errors=True)
    return exe, ""


def driver() -> Path:
    """The driver's path; skips the calling test when no compiler can build it."""
    exe, why = _build()
    if exe is None:
        pytest.skip(why)
    return exe


# The kernels the driver launched since the last clear (read from its launch logs after each run):
# tests/conftest.py checks that each test of EMULATED_TESTS launched the kernels it is listed for.
LAUNCHED: set[str] = set()


def run(args: list[str], timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the driver with args; returns the completed process (stdout and stderr as text). The
    kernels it launched (its DIR/<schedule>_launches.txt) are added to LAUNCHED."""
    e = dict(os.environ, **RUN_ENV, **(env or {}))
    r = subprocess.run([str(driver()), *args], capture_output=True, text=True, timeout=timeout, env=e)
    if len(args) > 1:
        schedule = next((a.split("=", 1)[1] for a in args if a.startswith("schedule=")), "asc")
        LAUNCHED.update(launched(Path(args[1]) / f"{schedule}_launches.txt"))
    return r


def launched(log: Path) -> set[str]:
    """The names of the kernels in a driver's launch log (one launch per line, the kernel's full
    name with its template arguments first), without their template arguments."""
    if not log.is_file():
        return set()
    kernels = cuda_kernels()
    return {name for line in log.read_text().splitlines()
            for name in re.findall(r"\w+", line.split(" grid=")[0]) if name in kernels}


def check_ok(r: subprocess.CompletedProcess, what: str):
    assert r.returncode == 0, f"{what}: driver exited with {r.returncode}\n{r.stdout}\n{r.stderr}"


def to_bytes(t) -> bytes:
    """A tensor's elements as the raw bytes the driver reads (16-bit floats as their bit patterns)."""
    import torch
    t = t.contiguous()
    if t.element_size() == 2:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def from_bytes(data: bytes, dtype):
    """The driver's raw output as a 1-D tensor of dtype."""
    import torch
    return torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)


def cuda_kernels() -> dict[str, str]:
    """{kernel name: file name} of every __global__ function in csrc/cuda/*.cu."""
    pat = re.compile(r"__global__\s+(?:void\s+)?(?:__launch_bounds__\s*\([^)]*\)\s*)?(?:void\s+)?(\w+)\s*\(")
    return {name: f.name for f in KERNEL_FILES for name in pat.findall(f.read_text())}
