"""Tests of what the build records and of the guards of `import pyalexnet`: build_info(), the
torch-version mismatch error, and what importing the source tree does: run the installed build
when it was compiled from the tree's kernel sources, stop with one line otherwise."""
from __future__ import annotations

import importlib.machinery
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import pyalexnet
from pyalexnet import _source_hash
from conftest import REPO_ROOT, SOURCE_PACKAGE

REBUILD = "pip install --no-build-isolation --force-reinstall --no-deps ."


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def _import_error(cwd, before: str = "pass") -> str:
    """The ImportError of `import pyalexnet` in a fresh Python in cwd after the statement `before`;
    fails when the import succeeds or loaded _C first."""
    r = _python(f"""
        import os, sys
        import torch
        {before}
        try:
            import pyalexnet
        except ImportError as e:
            assert "pyalexnet._C" not in sys.modules, "_C was loaded before the check"
            print(e)
        else:
            sys.exit("import pyalexnet succeeded")
        """, cwd=cwd)
    assert r.returncode == 0, r.stderr + r.stdout
    return r.stdout.strip()


def test_build_info_keys_and_types():
    info = pyalexnet.build_info()
    assert set(info) == {"torch_version", "cuda", "cuda_version", "cuda_archs", "compiler", "source_hash",
                         "extension"}
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
    message = _import_error(tmp_path, before='torch.__version__ = "0.0.0-fake"')
    assert f"compiled against torch {built}" in message
    assert "torch 0.0.0-fake is installed" in message
    assert REBUILD in message
    assert f"torch=={built.split('+')[0]}" in message


def _source_copy(tmp_path):
    """A copy of the source tree's package and build inputs, as a fresh clone has them."""
    tree = tmp_path / "tree"
    shutil.copytree(SOURCE_PACKAGE, tree / "pyalexnet", ignore=shutil.ignore_patterns("__pycache__", "_C*",
                                                                                        "_build_config.py"))
    for name in _source_hash.BUILD_INPUTS:
        (shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy)(REPO_ROOT / name, tree / name)
    return tree


def test_source_hash_covers_the_build_inputs_only(tmp_path):
    tree = _source_copy(tmp_path)
    h = _source_hash.source_hash(tree)
    assert h == _source_hash.source_hash(REPO_ROOT) and re.fullmatch(r"[0-9a-f]{64}", h)
    (tree / "pyalexnet" / "ops.py").write_text("# the Python modules are not compiled\n")
    (tree / "README.md").write_text("not a build input\n")
    assert _source_hash.source_hash(tree) == h
    for name in ("csrc/cuda/conv_relu_maxpool_dgrad.cu", "csrc/cuda/conv_relu_maxpool_gemm.h",
                 "cmake/_build_config.py.in", "CMakeLists.txt"):
        (tree / name).write_text((tree / name).read_text() + " ")
        assert _source_hash.source_hash(tree) != h, name
        h = _source_hash.source_hash(tree)
    (tree / "csrc" / "new.h").write_text("")
    assert _source_hash.source_hash(tree) != h


def test_installed_build_is_this_trees():
    """CMake wrote the hash of these sources into the build under test (a stale install fails here)."""
    info = pyalexnet.build_info()
    assert info["source_hash"] == pyalexnet._build_config.SOURCE_HASH
    assert info["source_hash"] == _source_hash.source_hash(REPO_ROOT), (
        "the installed pyalexnet was built from other kernel sources than this tree's: `pip install .`")


def test_repository_root_runs_the_installed_build():
    """`python -m pyalexnet` in the repository root (which puts the source tree first on sys.path)
    runs the tree's Python modules with the installed build's compiled extension."""
    r = _python("""
        import sys
        assert sys.path[0] == "", sys.path[:2]  # the current directory (the repository root) first
        import pyalexnet
        print(pyalexnet.__file__)
        print(pyalexnet._C.__file__)
        """, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr
    package, extension = r.stdout.split()
    assert Path(package).parent == SOURCE_PACKAGE
    assert Path(extension).parent == Path(pyalexnet._C.__file__).parent != SOURCE_PACKAGE
    demo = subprocess.run([sys.executable, "-m", "pyalexnet", "--epochs", "1"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert "final test accuracy" in demo.stdout


def test_changed_kernel_sources_are_refused(tmp_path):
    """A tree whose kernels changed after the install: one line that says to reinstall, and _C is
    never loaded (it would run the old kernels)."""
    tree = _source_copy(tmp_path)
    ops = tree / "csrc" / "ops.cpp"
    ops.write_text(ops.read_text() + "// changed after the install\n")
    r = subprocess.run([sys.executable, "-m", "pyalexnet", "--epochs", "1"], cwd=tree, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"ImportError: pyalexnet's kernel sources in {re.escape(str(tree))} \(csrc, cmake, "
                        r"CMakeLists.txt\) differ from those its compiled extension in \S+ was built from: run "
                        rf"`pip install \.` in {re.escape(str(tree))} to rebuild\.", last), last


def test_source_tree_without_any_install(tmp_path):
    """No installed pyalexnet anywhere on sys.path: an ImportError that says to install, not a bare
    missing-module error."""
    tree = _source_copy(tmp_path)
    hide = ("sys.path[:] = [p for p in sys.path if p in ('', os.getcwd()) "
            "or not os.path.isdir(os.path.join(p, 'pyalexnet'))]")
    message = _import_error(tree, before=hide)
    assert message == (f"pyalexnet is imported from the source tree {tree / 'pyalexnet'}, which holds no "
                       f"compiled extension, and no installed pyalexnet was found on sys.path: run "
                       f"`pip install .` in {tree} first.")


def test_stray_extension_in_the_source_tree_is_refused(tmp_path):
    """A _C left in the source package by an old in-place build, without its _build_config: it would
    shadow the installed, checked one, so the import stops before loading it."""
    tree = _source_copy(tmp_path)
    stray = tree / "pyalexnet" / ("_C" + importlib.machinery.EXTENSION_SUFFIXES[0])
    stray.write_bytes(b"")  # never loaded: an empty file would fail to load
    message = _import_error(tree)
    assert message.startswith(f"pyalexnet's compiled extension {stray} does not belong to the build in ")
    assert f"remove it, or run `pip install .` in {tree}." in message
