"""Accumulate: exact, mergeable sums per (layer, stream), dense or sparse behind one interface."""

from .accumulator import Accumulator, merge, same_sums
from .dense import DenseState
from .examples import context_windows
from .layer import LayerState
from .sparse import SparseState
from .state import DEFAULT_DENSE_BUDGET, StreamState, dense_bytes, make_state
from .stats import SparseStats

__all__ = ["Accumulator", "merge", "same_sums", "DEFAULT_DENSE_BUDGET", "DenseState", "LayerState", "SparseState", "SparseStats",
           "StreamState", "context_windows", "dense_bytes", "make_state"]
