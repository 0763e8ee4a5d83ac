"""The ``txray`` command line."""

from . import analyze, collect, demo, inspect, report  # noqa: F401  (register the commands)
from .base import main

__all__ = ["main"]
