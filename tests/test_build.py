"""Tests of what the build records and of the guards of `import pyalexnet`: build_info(), the
torch-version mismatch error, and the error of importing the source tree (which has no _C)."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
import torch

import pyalexnet
from conftest import REPO_ROOT, SOURCE_PACKAGE

REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_build_info_keys_and_types():
    info = pyalexnet.build_info()
    assert set(info) == {"torch_version", "cuda", "cuda_version", "cuda_archs", "compiler"}
    assert isinstance(info["torch_version"], str)
    assert isinstance(info["cuda"], bool)
    assert isinstance(info["cuda_archs"], list) and all(isinstance(a, str) for a in info["cuda_archs"])
    assert isinstance(info["compiler"], str) and info["compiler"]
    if info["cuda"]:
        assert isinstance(info["cuda_version"], str)
        assert re.fullmatch(r"\d+\.\d+(\.\d+)?", info["cuda_version"]), info["cuda_version"]
        assert info["cuda_archs"], "a CUDA build names the architectures it was compiled for"
        for arch in info["cuda_archs"]:  # CMake's list syntax: 80-real, 90, 90a-virtual, ...
            assert re.fullmatch(r"\d+[a-z]?(-real|-virtual)?", arch), info["cuda_archs"]
    else:
        assert info["cuda_version"] is None and info["cuda_archs"] == []


def test_build_info_consistent_with_torch():
    info = pyalexnet.build_info()
    assert info["torch_version"] == torch.__version__
    assert info["torch_version"] == pyalexnet._build_config.TORCH_VERSION
    if info["cuda"]:
        assert torch.version.cuda is not None, "CUDA kernels in a build against a CPU-only torch"
        # kernels and torch must share the CUDA major version (one libcudart.so.<major>)
        assert info["cuda_version"].split(".")[0] == torch.version.cuda.split(".")[0]
    # the CUDA kernels are registered exactly when build_info says they were built
    for op in ("softmax_cross_entropy_forward", "softmax_cross_entropy_backward"):
        has_kernel = torch._C._dispatch_has_kernel_for_dispatch_key
        assert has_kernel(f"pyalexnet::{op}", "CPU")
        assert has_kernel(f"pyalexnet::{op}", "CUDA") == info["cuda"]


def test_torch_version_mismatch(tmp_path):
    """A torch other than the one pyalexnet was built against: ImportError naming both versions and
    the rebuild command, raised before _C (whose symbols would not match) is loaded."""
    built = pyalexnet._build_config.TORCH_VERSION
    r = _python("""
        import sys
        import torch
        torch.__version__ = "0.0.0-fake"
        try:
            import pyalexnet
        except ImportError as e:
            assert "pyalexnet._C" not in sys.modules, "_C was loaded before the version check"
            print(e)
        else:
            sys.exit("import pyalexnet succeeded against a mismatching torch")
        """, cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    message = r.stdout
    assert f"compiled against torch {built}" in message
    assert "torch 0.0.0-fake is installed" in message
    assert REBUILD in message
    assert f"torch=={built.split('+')[0]}" in message


def test_import_from_source_tree():
    """`python -c "import pyalexnet"` in the repository root imports the source package, which holds
    no compiled extension: a clear ImportError that says what to do, not a bare missing-module error."""
    if (SOURCE_PACKAGE / "_build_config.py").exists():
        pytest.skip(f"{SOURCE_PACKAGE} holds an in-place build (_build_config.py)")
    r = _python("""
        import sys
        assert sys.path[0] == "", sys.path[:2]  # the current directory (the repository root) first
        import pyalexnet
        """, cwd=REPO_ROOT)
    assert r.returncode != 0, "importing the source tree succeeded"
    assert "ImportError" in r.stderr
    assert re.search(r"pyalexnet is imported from \S*pyalexnet, which holds no compiled extension",
                     r.stderr), r.stderr
    assert "pip install ." in r.stderr and "python -m pytest" in r.stderr
