"""Evaluate pruning configurations (selector × fraction × seed) with a user-supplied metric."""

from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
from torch import nn

from ..errors import whole_number
from ..measures.table import NeuronTable
from .apply import mask_units
from .select import select_neurons


def evaluate_pruning(model: nn.Module, tables: dict[str, NeuronTable],
                     metric: Callable[[nn.Module], float], selectors: Iterable[str],
                     fractions: Iterable[float], seeds: Iterable[int] = (0,),
                     shared_only: bool = False, side: str = "b",
                     layouts: dict | None = None) -> list[dict]:
    """Run ``metric(model)`` with each configuration's neurons masked in every layer of
    ``tables`` (layer → neuron table); returns one row (a dict) per configuration. ``layouts``
    as given to the collection (a channels-first layer's units are its axis 1; see
    :func:`mask_units`).

    Deterministic selectors are evaluated once per fraction (their rows carry ``seed=None``);
    ``random`` once per seed. The model is left unmasked.
    """
    # (each is gone over more than once: a generator gave its configurations to the first only)
    selectors = [selectors] if isinstance(selectors, str) else list(selectors)
    fractions, seeds = list(fractions), [whole_number(s, "seed") for s in seeds]
    rows = []
    for selector in selectors:
        for fraction in fractions:
            for seed in (seeds if selector == "random" else (None,)):
                rng = np.random.default_rng(seed or 0)  # one stream over the layers: each
                # layer its own ids (the first layer's as select_neurons(seed=seed) draws them)
                selection = {layer: select_neurons(t, selector, fraction=fraction,
                                                   shared_only=shared_only, side=side, seed=rng)
                             for layer, t in tables.items()}
                with mask_units(model, selection, layouts):
                    value = float(metric(model))
                rows.append({"selector": selector, "fraction": float(fraction), "seed": seed,
                             "pruned": int(sum(len(v) for v in selection.values())),
                             "metric": value})
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation of the metric over seeds, per (selector, fraction), with the
    fewest and most units pruned (``pruned_min``, ``pruned_max``): a selector whose pool is
    smaller than the fraction (shared neurons for ``most_changed``, dead ones for ``dead``)
    prunes fewer, and a table of fractions alone would hide it."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["selector"], r["fraction"]), []).append(r)
    out = []
    for (s, f), group in groups.items():
        v = [r["metric"] for r in group]
        row = {"selector": s, "fraction": f, "runs": len(v), "mean": float(np.mean(v)),
               "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
        if all("pruned" in r for r in group):
            row |= {"pruned_min": min(r["pruned"] for r in group),
                    "pruned_max": max(r["pruned"] for r in group)}
        out.append(row)
    return out
