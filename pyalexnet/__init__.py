"""pyalexnet: fused C++/CUDA kernels for training AlexNet-class networks from PyTorch.

Importing the package loads the compiled extension ``pyalexnet._C``, which registers the ops under
``torch.ops.pyalexnet``; :mod:`pyalexnet.ops` holds their Python API and :mod:`pyalexnet.nn` modules.

Imported from a source tree (``python -m pyalexnet`` in the repository root puts the tree first on
the path), the package runs the tree's Python modules with the installed build's compiled extension,
once it has checked that this build was compiled from the tree's kernel sources; otherwise the
import stops with one line that says to reinstall.
"""
import importlib.util as _importlib_util
import os as _os
import sys as _sys

import torch as _torch

from . import _source_hash

__version__ = "0.1.0"

_HERE = _os.path.dirname(_os.path.abspath(__file__))
_ROOT = _os.path.dirname(_HERE)
_INSTALL = "pip install ."  # what rebuilds and installs the extension, from the repository root


def _installed_copy():
    """The folder of an installed pyalexnet with a compiled extension elsewhere on sys.path, or None."""
    for entry in _sys.path:
        candidate = _os.path.join(_os.path.abspath(entry or "."), "pyalexnet")
        if _os.path.realpath(candidate) != _os.path.realpath(_HERE) and \
                _os.path.isfile(_os.path.join(candidate, "_build_config.py")):
            return candidate
    return None


def _find_build(source_tree: bool):
    """Imports _build_config: this folder's own, or, in a source tree without a build, the installed one."""
    if source_tree and not _os.path.isfile(_os.path.join(_HERE, "_build_config.py")):
        installed = _installed_copy()
        if installed is None:
            raise ImportError(
                f"pyalexnet is imported from the source tree {_HERE}, which holds no compiled extension, "
                f"and no installed pyalexnet was found on sys.path: run `{_INSTALL}` in {_ROOT} first.")
        __path__.append(installed)  # _build_config and _C come from there, the Python modules from here
    try:
        from . import _build_config
    except ImportError:
        raise ImportError(
            f"pyalexnet is imported from {_HERE}, which holds no compiled extension: "
            f"reinstall it with `{_INSTALL}` from the repository root.") from None
    return _build_config


def _check_sources(build) -> None:
    """Refuses an extension compiled from other kernel sources than this tree's (a stale build)."""
    built_from = getattr(build, "SOURCE_HASH", None)
    if built_from != _source_hash.source_hash(_ROOT):
        where = _os.path.dirname(_os.path.abspath(build.__file__))
        raise ImportError(
            f"pyalexnet's kernel sources in {_ROOT} ({', '.join(_source_hash.BUILD_INPUTS)}) differ from "
            f"those its compiled extension in {where} was built from: run `{_INSTALL}` in {_ROOT} to rebuild.")


def _check_torch(build) -> None:
    if build.TORCH_VERSION != _torch.__version__:
        raise ImportError(
            f"pyalexnet was compiled against torch {build.TORCH_VERSION}, but torch "
            f"{_torch.__version__} is installed; the compiled kernels are tied to the torch they were "
            "built with. Rebuild against the installed torch: "
            "`pip install --no-build-isolation --force-reinstall --no-deps .` from the pyalexnet "
            f"sources, or install torch=={build.TORCH_VERSION.split('+')[0]}.")


def _load_extension():
    source_tree = _source_hash.is_source_tree(_ROOT)
    build = _find_build(source_tree)
    if source_tree:
        _check_sources(build)
    _check_torch(build)  # before _C: a mismatching torch would fail there with a symbol error
    _check_extension_beside(build)
    from . import _C

    return _C, build


def _check_extension_beside(build) -> None:
    """Refuses a _C that is not the one beside the checked _build_config (a stray file from an old
    in-place build would shadow it), before it is loaded."""
    spec = _importlib_util.find_spec(__name__ + "._C")
    there = _os.path.dirname(_os.path.abspath(build.__file__))
    if spec is not None and _os.path.dirname(_os.path.abspath(spec.origin)) != there:
        raise ImportError(f"pyalexnet's compiled extension {spec.origin} does not belong to the build in "
                          f"{there}: remove it, or run `{_INSTALL}` in {_ROOT}.")


_C, _build_config = _load_extension()

from . import nn, ops  # noqa: E402  (needs the ops registered by _C)


def build_info() -> dict:
    """What the installed extension was built with: torch and CUDA versions, CUDA architectures,
    whether the CUDA kernels are in, the C++ compiler, the hash of the kernel sources and where the
    extension was loaded from."""
    return dict(_C.build_info(), source_hash=getattr(_build_config, "SOURCE_HASH", None),
                extension=_C.__file__)


__all__ = ["build_info", "nn", "ops", "__version__"]
