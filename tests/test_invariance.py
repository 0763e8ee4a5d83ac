"""Mergeability: any chunking gives the same state; merge is associative and commutative."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from txray_engine import Accumulator, merge, same_sums

VOCAB = {"tok": [f"w{i}" for i in range(11)], "lab": ["neg", "pos"]}


def _data(seed, t=60, n=9):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(t, n, generator=g)
    acts[::7] = acts[::7].round()  # some ties
    feats = {"tok": torch.randint(-1, 11, (t,), generator=g),
             "lab": torch.randint(0, 2, (t,), generator=g)}
    mask = torch.rand(t, generator=g) > 0.2
    return acts, feats, mask


def _acc(kind, k=2):
    return Accumulator(VOCAB, k=k, kind=kind)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cuts=st.lists(st.integers(0, 60), max_size=6),
       kind=st.sampled_from(["dense", "sparse"]), k=st.integers(1, 9))
def test_any_chunking_gives_the_same_state(seed, cuts, kind, k):
    acts, feats, mask = _data(seed)
    whole = _acc(kind, k)
    whole.observe("l", acts, feats, mask)
    chunked = _acc(kind, k)
    bounds = [0, *sorted(cuts), 60]
    for a, b in zip(bounds, bounds[1:]):
        chunked.observe("l", acts[a:b], {s: f[a:b] for s, f in feats.items()}, mask[a:b])
    assert same_sums(whole, chunked)


@settings(max_examples=15, deadline=None)
@given(seeds=st.lists(st.integers(0, 10_000), min_size=3, max_size=3),
       kinds=st.lists(st.sampled_from(["dense", "sparse"]), min_size=3, max_size=3))
def test_merge_is_associative_commutative_and_equals_concatenation(seeds, kinds):
    parts = []
    for seed, kind in zip(seeds, kinds):
        acc = _acc(kind)
        acts, feats, mask = _data(seed)
        acc.observe("l", acts, feats, mask)
        parts.append((acc, (acts, feats, mask)))
    a, b, c = (p[0] for p in parts)
    assert same_sums(merge(a, b), merge(b, a))
    assert same_sums(merge(merge(a, b), c), merge(a, merge(b, c)))
    concat = _acc("dense")
    for _, (acts, feats, mask) in parts:
        concat.observe("l", acts, feats, mask)
    assert same_sums(merge(merge(a, b), c), concat)


def test_merge_leaves_inputs_unchanged_and_adds_new_layers():
    a, b = _acc("dense"), _acc("sparse")
    acts, feats, mask = _data(1)
    a.observe("x", acts, feats, mask)
    b.observe("y", acts, feats, mask)
    before = a.layers["x"].neuron_count.clone()
    m = merge(a, b)
    assert set(m.layers) == {"x", "y"}
    assert torch.equal(a.layers["x"].neuron_count, before) and "y" not in a.layers
