"""The hash of the sources the compiled extension is built from, so that a build can be matched with
a source tree: CMake runs this file as a script and writes the hash into ``_build_config.py``, and
``import pyalexnet`` from a source tree compares it with the tree's own.

No imports beyond the standard library: CMake runs it before anything is built.
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

# What the extension is compiled from, relative to the repository root: kernels, schemas, build files.
BUILD_INPUTS = ("csrc", "cmake", "CMakeLists.txt")


def _files(root: Path):
    for name in BUILD_INPUTS:
        p = root / name
        if p.is_file():
            yield p
        elif p.is_dir():
            yield from (f for f in p.rglob("*") if f.is_file() and "__pycache__" not in f.parts)


def source_hash(root) -> str:
    """SHA-256 over the relative path and the bytes of every build input under `root`, in path order."""
    root = Path(root)
    h = hashlib.sha256()
    for f in sorted(_files(root), key=lambda f: f.relative_to(root).as_posix()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0")
        h.update(f.read_bytes() + b"\0")
    return h.hexdigest()


def is_source_tree(root) -> bool:
    """Whether `root` holds the extension's sources (a repository checkout, not site-packages)."""
    root = Path(root)
    return (root / "CMakeLists.txt").is_file() and (root / "csrc").is_dir()


if __name__ == "__main__":  # CMake: python _source_hash.py <repository root>
    print(source_hash(sys.argv[1]), end="")
