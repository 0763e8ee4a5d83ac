"""Measures against independent computations on small hand-built stages."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import euclidean
from scipy.stats import entropy as scipy_entropy

from txray_engine.accumulate import SparseStats
from txray_engine.measures import (align_vocabularies, compare, compare_streams, compat_hellinger,
                                   distributions, entropy, feature_group_mass, length,
                                   stage_table, top_features)


def from_dense(count, mass, freq=None):
    count, mass = np.asarray(count, np.int64), np.asarray(mass, np.float64)
    r, c = np.nonzero(count)
    freq = np.asarray(freq if freq is not None else count.sum(0), np.int64)
    return SparseStats.from_coo(count.shape[0], count.shape[1], r, c, count[r, c], mass[r, c],
                                mass[r, c].astype(np.float32), freq)


def random_stage(rng, n=6, v=9, density=0.4):
    count = rng.integers(1, 5, (n, v)) * (rng.random((n, v)) < density)
    mass = count * rng.random((n, v)) * 3
    return count, mass


def ref_hellinger(mass_a, mass_b):
    p, q = mass_a / mass_a.sum(), mass_b / mass_b.sum()
    return euclidean(np.sqrt(p), np.sqrt(q)) / math.sqrt(2)


def ref_compat(count_a, mass_a, count_b, mass_b):
    """Direct transcription of the published formula for one neuron (dicts over tokens)."""
    def values(count, mass):
        total = mass.sum()
        return {f: mass[f] / (total * count[f]) for f in range(len(count)) if count[f] > 0}
    va, vb = values(count_a, mass_a), values(count_b, mass_b)
    union = set(va) | set(vb)
    s = sum((math.sqrt(va.get(f, 0.0)) - math.sqrt(vb.get(f, 0.0))) ** 2 for f in union)
    return math.sqrt(s) / math.sqrt(2) / len(union), len(union)


def reference_rows_compat(records_a, records_b):
    """The public TX-Ray code's computation, row by row, in plain Python: one record per position
    (input token, maximum activation, its neuron); per neuron each maximum divided by the sum of
    the neuron's maxima, averaged per token; then its ``hellinger_distance`` over the union of
    tokens, divided by the union's size."""
    def per_neuron(records):
        rows = {}
        for token, value, neuron in records:
            rows.setdefault(neuron, []).append((token, value))
        out = {}
        for neuron, rs in rows.items():
            total = sum(v for _, v in rs)
            by_token = {}
            for token, v in rs:
                by_token.setdefault(token, []).append(v / total)
            out[neuron] = {t: sum(vs) / len(vs) for t, vs in by_token.items()}
        return out
    a, b = per_neuron(records_a), per_neuron(records_b)
    result = {}
    for neuron in set(a) & set(b):
        union = sorted(set(a[neuron]) | set(b[neuron]))
        s = sum((math.sqrt(a[neuron].get(t, 0)) - math.sqrt(b[neuron].get(t, 0))) ** 2
                for t in union)
        result[neuron] = (math.sqrt(s) / math.sqrt(2) / len(union), len(union))
    return result


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compat_equals_the_public_codes_row_by_row_computation(seed):
    """Collected with max-1 through the accumulator, as the engine does it, against the
    reference's per-position records of the same activations (all maxima above 0)."""
    from txray_engine.accumulate import Accumulator
    import torch

    rng = np.random.default_rng(seed)
    n, v, t = 7, 11, 400
    records, stats = [], []
    for _ in range(2):
        acts = torch.tensor(rng.gamma(2.0, 1.0, (t, n)) * rng.random(n) * 3 + 1e-3)
        tokens = torch.tensor(rng.zipf(1.6, t) % v)
        acc = Accumulator({"token": [str(i) for i in range(v)]}, k=1)
        acc.observe("l", acts, {"token": tokens})
        stats.append(acc.layers["l"].streams["token"].to_stats())
        a32 = acts.float().numpy()  # the engine selects and sums float32 activations
        records.append([(int(tok), float(row.max()), int(row.argmax()))
                        for tok, row in zip(tokens, a32)])
    cmp = compare(*stats)
    want = reference_rows_compat(*records)
    assert set(np.flatnonzero(cmp["shared"])) == set(want) and len(want) >= 3
    for neuron, (d, union) in want.items():
        assert cmp["compat_hellinger"][neuron] == pytest.approx(d, rel=1e-9, abs=1e-15)
        assert cmp["compat_union"][neuron] == union


def test_hellinger_and_compat_match_independent_references():
    rng = np.random.default_rng(0)
    ca, ma = random_stage(rng)
    cb, mb = random_stage(rng)
    ca[4] = 0
    ma[4] = 0  # neuron 4 dead in A
    cmp = compare(from_dense(ca, ma), from_dense(cb, mb))
    for n in range(6):
        if ca[n].sum() == 0 or cb[n].sum() == 0:
            assert not cmp["shared"][n] and np.isnan(cmp["hellinger"][n])
            continue
        assert cmp["shared"][n]
        assert cmp["hellinger"][n] == pytest.approx(ref_hellinger(ma[n], mb[n]), abs=1e-12)
        d, u = ref_compat(ca[n], ma[n], cb[n], mb[n])
        assert cmp["compat_hellinger"][n] == pytest.approx(d, abs=1e-12)
        assert cmp["compat_union"][n] == u == cmp["hellinger_length"][n]
        assert cmp["length_shift"][n] == (cb[n] > 0).sum() - (ca[n] > 0).sum()
        assert cmp["mass_shift"][n] == pytest.approx(mb[n].sum() - ma[n].sum())
    assert cmp["only_b"][4] and cmp.summary()["only_b"] >= 1


def test_count_based_distributions_and_min_count():
    count = np.array([[1, 3, 0, 6]])
    mass = np.array([[5.0, 1.0, 0.0, 2.0]])
    s = from_dense(count, mass)
    np.testing.assert_allclose(distributions(s, "count").toarray(), [[0.1, 0.3, 0, 0.6]])
    np.testing.assert_allclose(distributions(s, "mass").toarray(), [[5 / 8, 1 / 8, 0, 2 / 8]])
    np.testing.assert_allclose(distributions(s, "mass", min_count=2).toarray(),
                               [[0, 1 / 3, 0, 2 / 3]])
    assert length(s).tolist() == [3] and length(s, min_count=3).tolist() == [2]
    assert entropy(s, "count")[0] == pytest.approx(scipy_entropy([0.1, 0.3, 0.6], base=2))
    ids, shares = top_features(s, 2)
    assert ids.tolist() == [[0, 3]] and shares[0].tolist() == pytest.approx([5 / 8, 2 / 8])


def test_entropy_is_nan_for_neurons_without_a_distribution():
    # one feature only: 0 bits; never selected, only activations <= 0 (by mass), or every cell
    # under min_count: no distribution, so NaN (0 would read as "one feature only")
    count = np.array([[4, 0, 0], [0, 0, 0], [2, 1, 0], [1, 1, 0]])
    mass = np.array([[3.0, 0, 0], [0, 0, 0], [0.0, 0.0, 0], [1.0, 1.0, 0]])
    s = from_dense(count, mass)
    h = entropy(s)
    assert h[0] == 0 and np.isnan(h[1]) and np.isnan(h[2]) and h[3] == pytest.approx(1.0)
    assert entropy(s, "count")[2] == pytest.approx(scipy_entropy([2, 1], base=2))
    assert np.isnan(entropy(s, "count", min_count=2)[3])
    table = stage_table(s).sort("entropy")
    assert table["neuron"].tolist()[:2] == [3, 0]


def test_equal_distances_rank_by_mass_everywhere():
    """Neurons 0-2 moved to a disjoint feature (distance 1 each) with masses 1, 3, 2; neuron 3
    did not move. Most changed: more mass first, in the comparison and in pruning alike."""
    from txray_engine.prune import select_neurons
    a = from_dense(np.array([[1, 0, 0], [1, 0, 0], [1, 0, 0], [0, 0, 1]]),
                   np.array([[1.0, 0, 0], [3.0, 0, 0], [2.0, 0, 0], [0, 0, 1.0]]))
    b = from_dense(np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 1]]),
                   np.array([[0, 1.0, 0], [0, 3.0, 0], [0, 2.0, 0], [0, 0, 1.0]]))
    cmp = compare(a, b)
    assert cmp.ranked().tolist() == [1, 2, 0, 3] and cmp.ranked(most=False).tolist() == [3, 1, 2, 0]
    assert cmp.most_changed(2)["neuron"].tolist() == [1, 2]
    assert select_neurons(cmp, "most_changed", count=2).tolist() == [1, 2]


def test_min_neuron_count_marks_rare_neurons_dead():
    count = np.array([[1, 0], [5, 5]])
    s = from_dense(count, count * 1.0)
    cmp = compare(s, s, min_neuron_count=2)
    assert cmp["shared"].tolist() == [False, True]


def test_feature_group_mass_against_frequency():
    count = np.array([[2, 0, 1], [0, 1, 1]])
    mass = np.array([[4.0, 0, 1.0], [0, 3.0, 2.0]])
    s = from_dense(count, mass, freq=[10, 5, 5])
    g = feature_group_mass(s)
    np.testing.assert_allclose(g["mass_share"], [0.4, 0.3, 0.3])
    np.testing.assert_allclose(g["frequency_share"], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(g["ratio"], [0.8, 1.2, 1.2])


def test_different_vocabularies_align_by_string():
    rng = np.random.default_rng(3)
    ca, ma = random_stage(rng, v=5, density=0.9)
    vocab_a = ["a", "b", "c", "d", "e"]
    # B knows "c", "a", "x" (new) and "e" in another order; "b", "d" are unknown to B
    vocab_b = ["c", "x", "a", "e"]
    cb = np.array([[1, 2, 3, 0]] * 6)
    mb = cb * 1.5
    cmp = compare(from_dense(ca, ma), from_dense(cb, mb), vocab_a, vocab_b)
    union = vocab_a + ["x"]
    for n in range(6):
        a_u = np.zeros(6)
        a_u[:5] = ma[n]
        b_u = np.zeros(6)
        for j, s in enumerate(vocab_b):
            b_u[union.index(s)] = mb[n, j]
        assert cmp["hellinger"][n] == pytest.approx(ref_hellinger(a_u, b_u), abs=1e-12)
    assert cmp.unaligned == {"unaligned_a": int((ca[:, 1] > 0).any()) + int((ca[:, 3] > 0).any()),
                             "unaligned_b": 1}
    _, b2, u, _ = align_vocabularies(from_dense(ca, ma), from_dense(cb, mb), vocab_a, vocab_b)
    assert u == union and b2.n_features == 6


def test_mismatched_shapes_are_clear_errors():
    s = from_dense(np.ones((2, 3)), np.ones((2, 3)))
    t = from_dense(np.ones((3, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="same layer"):
        compare(s, t)
    with pytest.raises(ValueError, match="vocabularies"):
        compare(s, from_dense(np.ones((2, 4)), np.ones((2, 4))))


@pytest.mark.parametrize("vocab_a,vocab_b,match", [
    (["x", "y"], ["x", "z", "x"], "vocab_b holds 'x' more than once"),
    (["x", "x"], ["x", "z", "y"], "vocab_a holds 'x' more than once"),
    (["x"], ["x", "z", "y"], "vocab_a has 1 features, its stage 2"),
    (["x", "y"], ["x", "y"], "vocab_b has 2 features, its stage 3"),
    (["x", "y"], None, "give both vocabularies"),
])
def test_vocabularies_that_cannot_align_are_refused(vocab_a, vocab_b, match):
    """Duplicates sent two features to one union column (numba and numpy then disagreed, with a
    union of 4 for 3 strings); a vocabulary of the wrong length was used as it was."""
    a = from_dense(np.ones((1, 2)), np.ones((1, 2)))
    b = from_dense(np.ones((1, 3)), np.ones((1, 3)))
    with pytest.raises(ValueError, match=match):
        compare(a, b, vocab_a, vocab_b)


stages = st.integers(0, 10_000).map(lambda seed: random_stage(np.random.default_rng(seed)))


@settings(max_examples=40, deadline=None)
@given(a=stages, b=stages, scale=st.floats(0.01, 100))
def test_hellinger_properties(a, b, scale):
    sa, sb = from_dense(*a), from_dense(*b)
    h_aa = compare(sa, sa)["hellinger"]
    assert np.nanmax(np.abs(h_aa), initial=0) < 1e-7  # H(p, p) = 0
    ab, ba = compare(sa, sb)["hellinger"], compare(sb, sa)["hellinger"]
    np.testing.assert_allclose(ab, ba, equal_nan=True)  # symmetric
    ok = ~np.isnan(ab)
    assert np.all((ab[ok] >= 0) & (ab[ok] <= 1))
    scaled = from_dense(a[0], a[1] * scale)  # same distributions, scaled mass
    np.testing.assert_allclose(compare(scaled, sb)["hellinger"], ab, atol=1e-9, equal_nan=True)
    d, _ = compat_hellinger(sa, sa)
    assert np.abs(d).max(initial=0) < 1e-9


@settings(max_examples=40, deadline=None)
@given(a=stages, b=stages, by=st.sampled_from(["mass", "count"]), min_count=st.integers(1, 3))
def test_numba_join_equals_numpy_reference(a, b, by, min_count):
    sa, sb = from_dense(*a), from_dense(*b)
    x = compare(sa, sb, by=by, min_count=min_count, engine="numba")
    y = compare(sa, sb, by=by, min_count=min_count, engine="numpy")
    for col in x.columns:
        np.testing.assert_allclose(x[col].astype(float), y[col].astype(float), rtol=1e-12,
                                   atol=1e-12, equal_nan=True, err_msg=col)


def test_neuron_table_shows_its_rows():
    from txray_engine.measures.table import NeuronTable
    t = NeuronTable({"neuron": np.arange(12), "hellinger": np.linspace(0, 1, 12)})
    text = repr(t)
    lines = text.splitlines()
    assert lines[0] == "NeuronTable: 12 rows" and lines[1].split() == ["neuron", "hellinger"]
    assert lines[2].split() == ["0", "0"] and lines[-1] == "... 2 more rows"
    assert len(lines) == 2 + 10 + 1
    assert repr(t.head(3)).splitlines()[-1].split() == ["2", "0.1818"]


def test_csv_text_a_spreadsheet_would_run_is_quoted():
    """A layer named '=HYPERLINK(...)' in someone else's store reached --csv as a formula."""
    import csv
    import io

    from txray_engine.measures.table import NeuronTable
    names = np.array(["=HYPERLINK(\"http://x\")", "+1", "-x", "@sum", "\tx", "enc.0"])
    t = NeuronTable({"layer": names, "neuron": np.arange(6), "shift": np.array([-1.5] * 6)})
    rows = list(csv.reader(io.StringIO(t.to_csv())))
    assert [r[0] for r in rows[1:]] == ["'" + n for n in names[:5]] + ["enc.0"]
    assert {r[2] for r in rows[1:]} == {"-1.5"}  # numbers stay numbers


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_shared_neurons_without_a_distribution_get_no_distance(engine):
    """Neuron 0 fires once for 'a' in stage A and once for 'b' in stage B: with min_count=2 it
    has no distribution in either stage, so its distance is undefined (it was 0: 'unchanged');
    neuron 1 fired only below zero in B (mass 0): no distribution there by mass (it was
    1/sqrt(2)), one by count. Such neurons stay out of the summary's mean."""
    count_a = np.array([[1, 0, 0], [0, 3, 0], [0, 3, 0]])
    count_b = np.array([[0, 1, 0], [0, 3, 0], [0, 3, 0]])
    mass_a = np.array([[1.0, 0, 0], [0, 1.0, 0], [0, 1.0, 0]])
    mass_b = np.array([[0, 1.0, 0], [0, 0.0, 0], [0, 2.0, 0]])
    a, b = from_dense(count_a, mass_a), from_dense(count_b, mass_b)
    by_mass = compare(a, b, min_count=2, engine=engine)
    assert by_mass["shared"].tolist() == [True, True, True]
    assert np.isnan(by_mass["hellinger"][:2]).all() and by_mass["hellinger"][2] == 0.0
    assert np.isnan(by_mass["compat_hellinger"][:2]).all()
    summary = by_mass.summary()
    assert summary["shared_without_distribution"] == 2 and summary["hellinger_mean"] == 0.0
    assert by_mass.least_changed(3)["neuron"].tolist()[0] == 2  # not a neuron without one
    by_count = compare(a, b, by="count", min_count=2, engine=engine)
    assert np.isnan(by_count["hellinger"][0]) and by_count["hellinger"][1:].tolist() == [0, 0]
    assert compare(a, b, engine=engine)["hellinger"][0] == 1.0  # min_count=1: disjoint supports


def test_comparing_two_different_streams_needs_saying_so(tmp_path):
    import torch

    from txray_engine import Accumulator, StageWriter, open_store
    from txray_engine.errors import InputError
    acc = Accumulator({"token": ["a", "b", "c"], "pos": ["NN", "VB"]}, k=1)
    acc.observe("l", torch.randn(20, 4), {"token": torch.randint(0, 3, (20,)),
                                         "pos": torch.randint(0, 2, (20,))})
    with StageWriter(tmp_path / "s.zarr", "s", "new", {}) as w:
        w.commit(acc, {"units": 1}, "complete")
    layer = open_store(tmp_path / "s.zarr").stage("s").layer("l")
    with pytest.raises(InputError, match="other_streams=True"):
        compare(layer.stream("token"), layer.stream("pos"))
    cmp = compare_streams(layer.stream("token"), layer.stream("pos"), other_streams=True)
    assert cmp.summary()["unaligned_a"] == 3  # no feature string in common
