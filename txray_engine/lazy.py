"""Package exports loaded on first use (PEP 562), so that importing one part of the package does
not import torch, the numba kernels or zarr for the others: ``txray --help`` and the store
commands start in a fraction of a second, and the accumulators import where zarr is missing."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """``__getattr__`` and ``__dir__`` for ``package`` that import ``exports[name]`` (a module
    relative to the package) when ``name`` is first asked for, and keep it."""
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name):
        if name in exports:
            value = getattr(importlib.import_module(exports[name], package), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
