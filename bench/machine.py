"""What the benchmarks ran on, and the machine's limits measured in the same run.

`describe()` is the record every result carries (a number without its machine is noise);
`measure_limits()` times a large matrix product per dtype and a large copy, the two rates each row's
"share of the machine" is stated against. Measured, not taken from a data sheet: a shared or
throttled machine shows its real ceiling, and the share stays honest there.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import time
from pathlib import Path

import torch

import pyalexnet
from pyalexnet import batches


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache_bytes() -> int:
    """The CPU's largest cache (sysfs), or 32 MiB where it cannot be read."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        m = re.fullmatch(r"(\d+)([KMG]?)", f.read_text().strip())
        if m:
            sizes.append(int(m.group(1)) * {"": 1, "K": 2**10, "M": 2**20, "G": 2**30}[m.group(2)])
    return max(sizes, default=32 * 2**20)


def card(dev: torch.device) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses: what a result is named by."""
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    n = torch.get_num_threads()
    return f"{cpu_model()}, {n} thread{'' if n == 1 else 's'}"


def slug(text: str) -> str:
    """A file-name form of a card's name: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def _version(package: str):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe(dev: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": dev.type,
        "card": card(dev),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_cache_bytes": last_level_cache_bytes(),
        "threads": torch.get_num_threads(),
        "hostname": platform.node(),
        "load_average": os.getloadavg()[0],  # other work on a shared machine: read the numbers with it
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "pyalexnet": pyalexnet.__version__,
        "build": pyalexnet.build_info(),
        "packages": {p: _version(p) for p in ("numpy", "triton", "matplotlib")},
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32": torch.backends.cudnn.allow_tf32,
    }
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        info.update(capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
                    memory_gib=round(p.total_memory / 2**30, 1), driver=_driver())
    return info


def _driver():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
        return out.splitlines()[0] if out else None
    except (OSError, subprocess.SubprocessError):
        return None


def measure_limits(dev: torch.device, dtypes, timer) -> dict:
    """{'matmul_tflops': {dtype name: TFLOP/s}, 'copy_gbs': GB/s, ...}, timed by `timer`.

    The matrix-product rate is that of the fastest library product of two n x n matrices: torch.mm
    (cuBLAS on a GPU), and on the CPU also oneDNN's (mkldnn) linear, which our CPU kernels use: on
    an AMD CPU the MKL sgemm behind torch.mm takes its AVX2 path, at half oneDNN's AVX-512 rate.
    Products run in the precision the convolutions get: float32 as TF32 on a GPU when cuDNN may use
    TF32 (PyTorch's default), since our kernels and cuDNN then both do. n doubles from 512 until one
    product takes 10 ms (or 8192): large enough to reach the machine's rate, short enough that on
    a shared machine many calls run without being preempted. The copy moves a buffer far larger
    than any cache (128 MiB on the CPU, 1 GiB on a GPU); its GB/s counts the bytes read plus those
    written. All are the best time seen, not the median: a limit is what the machine can do at its best.
    """
    products = {"torch.mm": torch.mm}
    if dev.type == "cpu" and torch.backends.mkldnn.is_available():
        products["onednn_linear"] = lambda a, b: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    out = {"matmul_tflops": {}, "matmul_by_library": {}, "matmul_n": {}}
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32
    try:
        with torch.no_grad():
            for dt in dtypes:
                name = str(dt).removeprefix("torch.")
                n = _matmul_size(dev, dt)
                a, b = (torch.randn(n, n, device=dev).to(dt) for _ in range(2))
                rates = {}
                for lib, fn in products.items():
                    try:
                        rates[lib] = 2 * n**3 / timer.time(fn, [(a, b)], best=True) / 1e12
                    except (RuntimeError, AttributeError):  # a library without this dtype, or this op
                        pass
                out["matmul_by_library"][name], out["matmul_n"][name] = rates, n
                out["matmul_tflops"][name] = max(rates.values())
                del a, b
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    numel = 2**25 if dev.type == "cpu" else 2**28
    src, dst = torch.randn(numel, device=dev), torch.empty(numel, device=dev)
    t = timer.time(lambda s, d: d.copy_(s), [(src, dst)], best=True)
    out.update(copy_gbs=2 * numel * 4 / t / 1e9, copy_bytes=numel * 4)
    return out


def _matmul_size(dev: torch.device, dt: torch.dtype) -> int:
    n = 512
    while n < 8192:
        a, b = (torch.randn(n, n, device=dev).to(dt) for _ in range(2))
        torch.mm(a, b)
        _sync(dev)
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(dev)
        if time.perf_counter() - t0 > 0.01:
            break
        n *= 2
    return n


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def share(limits: dict, dtype: str, flops, nbytes, seconds) -> dict:
    """Achieved TFLOP/s and GB/s of a timed call, and their share (%) of the measured limits."""
    out = {}
    if not seconds:
        return out
    if nbytes:
        out["gbs"] = nbytes / seconds / 1e9
        out["pct_copy"] = 100 * out["gbs"] / limits["copy_gbs"]
    if flops:
        out["tflops"] = flops / seconds / 1e12
        out["pct_matmul"] = 100 * out["tflops"] / limits["matmul_tflops"][dtype]
    return out


def available_bytes(dev: torch.device) -> int:
    """Memory a benchmark may still allocate: free GPU memory, or the kernel's MemAvailable."""
    if dev.type == "cuda":
        return torch.cuda.mem_get_info(dev)[0]
    return batches.available_bytes()
