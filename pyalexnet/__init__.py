"""pyalexnet: fused C++/CUDA kernels for training AlexNet-class networks from PyTorch.

Importing the package loads the compiled extension ``pyalexnet._C``, which registers the ops under
``torch.ops.pyalexnet``; :mod:`pyalexnet.ops` holds their Python API and :mod:`pyalexnet.nn` modules.
"""
import os as _os

import torch as _torch

__version__ = "0.1.0"


def _load_extension():
    here = _os.path.dirname(_os.path.abspath(__file__))
    try:
        from . import _build_config
    except ImportError:
        raise ImportError(
            f"pyalexnet is imported from {here}, which holds no compiled extension. Install it with "
            "`pip install .` (from the repository root) and run Python from another directory, "
            "or use `pytest` rather than `python -m pytest`, so that the installed package is found."
        ) from None
    if _build_config.TORCH_VERSION != _torch.__version__:
        raise ImportError(
            f"pyalexnet was compiled against torch {_build_config.TORCH_VERSION}, but torch "
            f"{_torch.__version__} is installed; the compiled kernels are tied to the torch they were "
            "built with. Rebuild against the installed torch: "
            "`pip install --no-build-isolation --force-reinstall --no-deps .` from the pyalexnet "
            f"sources, or install torch=={_build_config.TORCH_VERSION.split('+')[0]}."
        )
    from . import _C

    return _C


_C = _load_extension()

from . import nn, ops  # noqa: E402  (needs the ops registered by _C)


def build_info() -> dict:
    """What the installed extension was built with: torch and CUDA versions, CUDA architectures,
    whether the CUDA kernels are in, and the C++ compiler."""
    return dict(_C.build_info())


__all__ = ["build_info", "nn", "ops", "__version__"]
