"""Half-budget comparisons: how far a distance between two stages is from sampling noise.

Each neuron's distribution is estimated from the positions where it was selected, so two
collections of one model over two halves of one text differ by chance: that distance is the
*floor* of the model on that text. A comparison is repeated at the same half budget *across*
halves (model a on one half, model b on the other; both pairings, averaged), so that it meets the
same noise as the floors: a change stands out where the across-halves distance is above the floors
of both models. Comparing two models on the *same* positions (the stages of the store) would let
the text's noise cancel, and a floor over two different halves would then make real changes look
like noise.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import CorpusError
from ..measures import compare_layers
from .data import Docs

STREAMS = ("token", "pos")


def halves(collect, model, docs: Docs, seed: int) -> list:
    """``[LayerState, LayerState]`` of ``model`` over two random halves of ``docs`` (the same
    halves for every model given the same ``seed``); ``collect(model, docs)`` returns a layer."""
    if len(docs) < 4:
        raise CorpusError(f"{len(docs)} documents cannot be split into two halves to measure "
                          f"noise: use a configuration with more documents")
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [collect(model, docs.take(order[i::2])) for i in (0, 1)]


def distance(x, y, streams) -> dict:
    """Mean Hellinger and shared neurons of two layer states, per stream of ``STREAMS``."""
    out = {}
    for s in streams:
        if s.name not in STREAMS:
            continue
        summary = compare_layers(x, y, s.name).summary()
        out[s.name] = {"hellinger_mean": summary["hellinger_mean"], "shared": summary["shared"]}
    return out


def floor(h: list, streams) -> dict:
    """One model's two halves compared: the noise floor at half budget."""
    return distance(h[0], h[1], streams)


def across(ha: list, hb: list, streams) -> dict:
    """Model a on one half against model b on the other, both pairings averaged."""
    one, two = distance(ha[0], hb[1], streams), distance(ha[1], hb[0], streams)
    out = {}
    for name in one:
        values = [v for v in (one[name]["hellinger_mean"], two[name]["hellinger_mean"])
                  if v is not None and not np.isnan(v)]
        out[name] = {"hellinger_mean": float(np.mean(values)) if values else None,
                     "shared": min(one[name]["shared"], two[name]["shared"])}
    return out
