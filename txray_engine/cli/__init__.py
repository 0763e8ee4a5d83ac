"""The ``txray`` command line."""

from . import analyze, collect, inspect  # noqa: F401  (register the commands)
from .base import main

__all__ = ["main"]
