"""Selectors: rank a layer's neurons from a comparison or a stage table and pick some to prune.

A selector reads columns of a :class:`~txray_engine.measures.NeuronTable`: a comparison table
(``Comparison.table()``, columns ``hellinger``, ``mass_a``/``mass_b``, ``length_a``/``length_b``,
``alive_a``/``alive_b``, ``shared``) or a stage table (``stage_table``: ``mass``, ``length``,
``alive``). For comparison tables ``side`` picks the stage (``"a"`` or ``"b"``) whose mass, length
or liveness is used.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ..errors import InputError, whole_number
from ..measures.table import NeuronTable

SELECTORS = ("most_changed", "least_changed", "lowest_mass", "highest_mass", "dead", "shortest",
             "longest", "random")


def _column(table: NeuronTable, name: str, side: str) -> np.ndarray:
    for key in (name, f"{name}_{side}"):
        if key in table.columns:
            return table[key]
    raise InputError(f"the table has no {name!r} column (columns: {', '.join(table.names)}): "
                     f"use a comparison for Hellinger-based selectors")


def how_many(n_neurons: int, count: int | None, fraction: float | None) -> int:
    """Neurons to select: ``count``, or ``fraction`` of ``n_neurons`` rounded half up (5% of 10
    neurons is 1, not 0 as rounding half to even would make it)."""
    if (count is None) == (fraction is None):
        raise InputError("give exactly one of count or fraction")
    if fraction is not None:
        if isinstance(fraction, (str, bytes, bool)) or not isinstance(fraction, numbers.Real) \
                or not 0.0 <= fraction <= 1.0:
            raise InputError(f"fraction must be in [0, 1], got {fraction}")
        # (rounded to 9 places first: 0.29 * 50 is 14.499999999999998 in floating point)
        return min(n_neurons, math.floor(round(fraction * n_neurons, 9) + 0.5))
    return whole_number(count, "count")


def select_neurons(table: NeuronTable, selector: str, *, count: int | None = None,
                   fraction: float | None = None, shared_only: bool = False, side: str = "b",
                   seed: int | np.random.Generator = 0) -> np.ndarray:
    """Neuron ids chosen by ``selector`` (sorted ascending).

    ``count`` or ``fraction`` (of the table's rows: all the layer's neurons for a comparison's or
    a stage's table, fewer for a table cut with ``where``) says how many; fewer come back when the
    pool is smaller (e.g. only shared neurons have a Hellinger distance, only dead ones are dead,
    ``shortest`` and ``longest`` rank alive neurons; ``lowest_mass`` and ``highest_mass`` rank
    every neuron, the dead with mass 0). Ties are broken by neuron id, for
    ``most_changed``/``least_changed`` first by more mass in both stages (the order
    ``Comparison.ranked``, ``txray compare`` and the report show). ``random`` is seeded: ``seed``
    an integer, or a ``numpy.random.Generator`` to draw from (one generator over several layers
    gives each its own ids; one integer seed, the same ids in layers of one width).
    """
    if hasattr(table, "table") and not isinstance(table, NeuronTable):  # a Comparison
        table = table.table()
    if not isinstance(table, NeuronTable):
        raise InputError(f"select_neurons takes a Comparison or a NeuronTable (compare_streams' "
                         f"result, or stage_table's), got {type(table).__name__}")
    if selector not in SELECTORS:
        raise InputError(f"unknown selector {selector!r}: choose from {', '.join(SELECTORS)}")
    if side not in ("a", "b"):
        raise InputError(f"side must be 'a' or 'b', got {side!r}")
    if not isinstance(seed, np.random.Generator):
        seed = whole_number(seed, "seed")
    neuron = table["neuron"] if "neuron" in table.columns else np.arange(len(table))
    k = how_many(len(table), count, fraction)
    pool = np.ones(len(table), bool)
    if selector in ("most_changed", "least_changed"):
        _column(table, "hellinger", side)  # a clear error before anything else
    if selector in ("shortest", "longest") and \
            {"alive", f"alive_{side}"} & set(table.columns):  # (a dead neuron's length 0 is no
        pool &= _column(table, "alive", side).astype(bool)  # length)
    if shared_only or selector in ("most_changed", "least_changed"):
        pool &= table["shared"] if "shared" in table.columns else _column(table, "alive", side)
    if selector == "dead":
        pool &= ~_column(table, "alive", side).astype(bool)
        score = np.zeros(len(table))
    elif selector == "random":
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        score = rng.random(len(table))
    else:
        name, descending = {"most_changed": ("hellinger", True),
                            "least_changed": ("hellinger", False),
                            "lowest_mass": ("mass", False), "highest_mass": ("mass", True),
                            "shortest": ("length", False), "longest": ("length", True)}[selector]
        score = _column(table, name, side).astype(np.float64)
        pool &= ~np.isnan(score)
        if descending:
            score = -score
    tie = np.zeros(len(table))
    if selector in ("most_changed", "least_changed") and \
            {"mass_a", "mass_b"} <= set(table.columns):
        tie = -(table["mass_a"] + table["mass_b"]).astype(np.float64)
    idx = np.flatnonzero(pool)
    order = idx[np.lexsort((neuron[idx], tie[idx], score[idx]))]
    return np.sort(neuron[order[:k]])
