"""Top examples per neuron: against a per-neuron sort, chunking and merging, store round trip."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import txray_kernels as kernels
from txray_kernels import triton_examples
from naive import assert_top_examples_match, naive_top_examples
from txray_engine import Accumulator, Batch, Collector, Stream, Vocabulary, merge, open_store
from txray_engine.accumulate import examples as examples_module
from txray_engine.errors import InputError
from txray_engine.accumulate.examples import TopExamples, context_windows

# how a batch is offered: the CPU kernel (numba), the torch way (candidates, or each column's best
# rows where they are many), every batch by its best rows, the CUDA way (each column's best rows
# above its floor, merged: txray_kernels.best_rows_above) with its torch reference (int64 keys on every
# column, or in blocks of one column) and with the Triton kernel (interpreted; its own test below)
PATHS = ["numba", "torch", "batch-best", "keys", "key-blocks"]


@st.composite
def offered_batches(draw):
    """Batches of a stream for one ``TopExamples``: few distinct values (ties across and inside
    batches, -0.0 beside 0.0, -inf) or any float32, batches shorter and longer than ``m``; some
    with padding rows of NaN around their kept rows (offered with ``rows``)."""
    n, m, w = draw(st.integers(1, 7)), draw(st.integers(1, 5)), draw(st.integers(1, 3))
    pool = st.sampled_from([-np.inf, -2.0, -0.0, 0.0, 0.5, 1.0, 3.0]) if draw(st.booleans()) \
        else st.floats(-1e3, 1e3, width=32)
    batches, at = [], 0
    for b in range(draw(st.integers(1, 5))):
        p = draw(st.integers(0, 9))
        acts = torch.tensor(draw(st.lists(pool, min_size=p * n, max_size=p * n)),
                            dtype=torch.float32).reshape(p, n)
        ctx = torch.arange(at, at + p).unsqueeze(1) * 10 + torch.arange(w)
        rows = None
        if draw(st.booleans()):  # kept rows among padding, in any order
            pad = draw(st.integers(0, 4))
            rows = torch.tensor(draw(st.permutations(range(p + pad)))[:p], dtype=torch.long)
            full = torch.full((p + pad, n), float("nan"))
            full[rows] = acts
            rows = rows if p else torch.zeros(0, dtype=torch.long)
        batches.append(((acts, torch.full((p,), b), torch.arange(p), ctx),
                        None if rows is None else (full, rows)))
        at += p
    return n, m, w, batches


def _offer_all(monkeypatch, path, n, m, w, batches):
    if path in ("torch", "batch-best"):
        monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    if path == "batch-best":
        monkeypatch.setattr(examples_module, "_CANDIDATES_PER_SLOT", -1)
    if path == "key-blocks":
        monkeypatch.setattr(kernels.reference, "KEY_BYTES", 8 * 10)  # one column of ≤ 10 rows
    if path == "triton":  # the CUDA tensors' kernel, on the CPU's tensors
        monkeypatch.setattr(kernels, "best_rows_above", triton_examples.best_rows_above)
    ex = TopExamples(n, m, w)
    for batch, padded in batches:
        if path in ("keys", "key-blocks", "triton"):  # update's CUDA branch
            if batch[0].shape[0]:  # update's own early return
                acts, rows = (batch[0], None) if padded is None else padded
                ex._offer_best_rows(acts, rows, *batch[1:])
        elif padded is None:
            ex.update(*batch)
        else:
            ex.update(padded[0], *batch[1:], rows=padded[1])
    return ex


def _plain(batches):
    return [batch for batch, _ in batches]


@pytest.mark.parametrize("path", PATHS)
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=offered_batches())
def test_top_examples_match_the_loop_with_ties(monkeypatch, path, case):
    n, m, w, batches = case
    with monkeypatch.context() as mp:
        ex = _offer_all(mp, path, n, m, w, batches)
    assert_top_examples_match(ex, naive_top_examples(_plain(batches), m), n)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=offered_batches())
def test_top_examples_through_the_triton_kernel_match_the_loop(monkeypatch, case):
    """The CUDA way with its Triton kernel (under the interpreter: fewer cases)."""
    n, m, w, batches = case
    with monkeypatch.context() as mp:
        ex = _offer_all(mp, "triton", n, m, w, batches)
    assert_top_examples_match(ex, naive_top_examples(_plain(batches), m), n)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=offered_batches(), cut=st.integers(0, 5))
def test_top_examples_of_parts_merge_to_the_whole(case, cut):
    n, m, w, batches = case
    first, second = TopExamples(n, m, w), TopExamples(n, m, w)
    for i, batch in enumerate(_plain(batches)):
        (first if i < cut else second).update(*batch)
    first.merge_(second)
    assert_top_examples_match(first, naive_top_examples(_plain(batches), m), n)


def test_top_examples_take_half_precision_as_float32():
    g = torch.Generator().manual_seed(3)
    acts = (torch.randn(40, 9, generator=g) * 4).round() / 4  # exact in bf16, many ties
    batch = (acts, torch.zeros(40, dtype=torch.long), torch.arange(40),
             torch.arange(40).unsqueeze(1))
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        ex = TopExamples(9, 3, 1)
        ex.update(acts.to(dtype), *batch[1:])
        assert_top_examples_match(ex, naive_top_examples([batch], 3), 9)


def test_top_examples_candidates_path_skips_neurons_without_any():
    """Once the lists are full, a batch below every neuron's m-th value changes nothing, and one
    above it in a single neuron changes only that neuron's list."""
    g = torch.Generator().manual_seed(0)
    ex = TopExamples(6, 2, 1)
    first = torch.rand(8, 6, generator=g) + 1.0
    ex.update(first, torch.zeros(8, dtype=torch.long), torch.arange(8),
              torch.arange(8).unsqueeze(1))
    before = ex.value.clone()
    ex.update(torch.zeros(5, 6), torch.ones(5, dtype=torch.long), torch.arange(5),
              torch.zeros(5, 1, dtype=torch.long))
    assert torch.equal(ex.value, before)
    spike = torch.zeros(5, 6)
    spike[3, 4] = 5.0
    ex.update(spike, torch.full((5,), 2), torch.arange(5), torch.zeros(5, 1, dtype=torch.long))
    changed = (ex.value != before).any(1)
    assert changed.tolist() == [False] * 4 + [True, False]
    assert (ex.value[4, 0], ex.doc[4, 0], ex.pos[4, 0]) == (5.0, 2, 3)


def _where(p, ids, offset=0, r=2):
    ctx = context_windows(ids.unsqueeze(0), None, r)[0]
    return {"doc": torch.full((p,), 7), "pos": torch.arange(offset, offset + p), "context": ctx}


def test_top_examples_match_per_neuron_sort_and_chunking():
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(50, 6, generator=g)
    ids = torch.randint(0, 9, (50,), generator=g)
    whole = Accumulator({"t": list("abcdefghi")}, examples=4, context_radius=2)
    whole.observe("l", acts, {"t": ids}, where=_where(50, ids))
    ex = whole.layers["l"].examples
    for n in range(6):
        want = np.sort(acts[:, n].numpy())[::-1][:4]
        np.testing.assert_array_equal(ex.value[n].numpy(), want)
        for j in range(4):
            p = int(ex.pos[n, j])
            assert acts[p, n] == ex.value[n, j]
            assert ex.context[n, j, 2] == ids[p]  # the token itself in the middle
    parts = [Accumulator({"t": list("abcdefghi")}, examples=4, context_radius=2) for _ in range(2)]
    ctx_all = _where(50, ids)["context"]
    for part, (a, b) in zip(parts, [(0, 23), (23, 50)]):
        part.observe("l", acts[a:b], {"t": ids[a:b]},
                     where={"doc": torch.full((b - a,), 7), "pos": torch.arange(a, b),
                            "context": ctx_all[a:b]})
    merged = merge(parts[0], parts[1]).layers["l"].examples
    assert torch.equal(merged.value, ex.value) and torch.equal(merged.pos, ex.pos)
    assert torch.equal(merged.context, ex.context)


def test_collector_stores_examples_with_documents(tmp_path):
    torch.manual_seed(0)
    from txray_engine.models import LSTMLanguageModel
    model = LSTMLanguageModel(12, 6, 5)
    streams = [Stream("token", Vocabulary.of_size(12), "input")]
    batches = [torch.randint(0, 12, (3, 6)) for _ in range(4)]
    with Collector(model, ["lstm"], streams, store=tmp_path / "s.zarr", stage="s",
                   examples=2, context_radius=1) as col:
        for ids in batches:
            mask = torch.ones_like(ids, dtype=torch.bool)
            mask[:, -1] = False
            col.step(Batch(input_ids=ids, mask=mask))
    ex = open_store(tmp_path / "s.zarr").stage("s").layer("lstm").examples
    assert ex["examples_value"].shape == (5, 2) and ex["examples_context"].shape == (5, 2, 3)
    assert ex["examples_doc"].max() < 12 and ex["examples_pos"].max() < 5  # never a padded slot
    all_ids = torch.cat(batches)
    for n in range(5):
        d, p = int(ex["examples_doc"][n, 0]), int(ex["examples_pos"][n, 0])
        assert ex["examples_context"][n, 0, 1] == all_ids[d, p]


def test_merged_shards_name_sequences_by_their_corpus_ids():
    """Shards number their sequences from 0; with ``unit_ids`` (each sequence's index in the
    corpus) the merged examples are the whole collection's, ids included."""
    torch.manual_seed(0)
    from txray_engine.models import LSTMLanguageModel
    model = LSTMLanguageModel(12, 6, 5)  # recurrent: no two positions tie
    streams = [Stream("token", Vocabulary.of_size(12), "input")]
    ids = torch.randint(0, 12, (6, 5))

    def run(parts):
        with Collector(model, ["lstm"], streams, k=1, examples=3) as col:
            for rows in parts:
                col.step(Batch(input_ids=ids[rows], unit_ids=torch.tensor(rows)))
        return col.accumulator

    whole = run([[0, 1], [2, 3], [4, 5]]).layers["lstm"].examples
    merged = merge(run([[0, 2]]), run([[1, 3], [4, 5]])).layers["lstm"].examples  # interleaved
    for name in ("value", "doc", "pos", "context"):
        assert torch.equal(getattr(merged, name), getattr(whole, name)), name
    with pytest.raises(InputError, match="unit_ids must be integer ids, one per sequence"):
        with Collector(model, ["lstm"], streams, k=1, examples=3) as col:
            col.step(Batch(input_ids=ids[:2], unit_ids=torch.tensor([0])))


@pytest.mark.parametrize("nonfinite", ["error", "skip"])
def test_engine_examples_of_masked_batches_match_the_loop(nonfinite):
    """The accumulator's top examples over masked batches (padding holds NaN and is never read;
    with ``skip`` a NaN at a kept position too) against the loop over the kept finite positions,
    in order: position (b, t) of a batch is row b * T + t."""
    g = torch.Generator().manual_seed(1)
    acc = Accumulator({"t": list("abcdefghi")}, k=2, examples=3, context_radius=1,
                      nonfinite=nonfinite)
    kept_batches = []
    for b in range(6):
        acts = (torch.randn(3, 8, 20, generator=g) * 2).round()  # ties
        ids = torch.randint(0, 9, (3, 8), generator=g)
        mask = torch.rand(3, 8, generator=g) > 0.3
        acts[~mask] = float("nan")
        if nonfinite == "skip" and b == 2:
            acts[1, 2, 5] = float("nan")
            mask[1, 2] = True
        where = {"doc": torch.arange(3).unsqueeze(1).expand(3, 8) + 10 * b,
                 "pos": torch.arange(8).expand(3, 8),
                 "context": context_windows(ids, mask, 1)}
        acc.observe("l", acts, {"t": ids}, mask=mask, where=where)
        keep = mask.reshape(-1) & ~acts.reshape(24, 20).isnan().any(1)
        kept_batches.append((acts.reshape(24, 20)[keep], where["doc"].reshape(-1)[keep],
                             where["pos"].reshape(-1)[keep],
                             where["context"].reshape(24, 3)[keep]))
    assert acc.layers["l"].skipped_nonfinite == (1 if nonfinite == "skip" else 0)
    assert_top_examples_match(acc.layers["l"].examples, naive_top_examples(kept_batches, 3), 20)



def _one_row(value):
    return (torch.tensor([value]), torch.tensor([1]), torch.tensor([0]),
            torch.zeros(1, 1, dtype=torch.long))


def test_restored_examples_own_their_lists(tmp_path):
    """``from_arrays`` copies: updating one restored state changes neither the arrays it came
    from (read-only memory maps included) nor another state restored from them."""
    ex = TopExamples(3, 2, 1)
    ex.update(torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), torch.tensor([0, 0]),
              torch.tensor([0, 1]), torch.zeros(2, 1, dtype=torch.long))
    saved = ex.arrays()
    np.save(tmp_path / "v.npy", saved["examples_value"])
    mapped = dict(saved, examples_value=np.load(tmp_path / "v.npy", mmap_mode="r"))
    before = {k: v.copy() for k, v in saved.items()}
    a, b, c = (TopExamples.from_arrays(arrays) for arrays in (saved, saved, mapped))
    for state in (a, c):
        state.update(*_one_row([9.0, 9.0, 9.0]))
        assert state.value[:, 0].tolist() == [9.0] * 3
    assert torch.equal(b.value, torch.from_numpy(before["examples_value"]))
    assert all(np.array_equal(saved[k], before[k]) for k in saved)


def test_restoring_lists_of_inconsistent_shapes_is_refused():
    arrays = TopExamples(3, 2, 1).arrays()
    arrays["examples_pos"] = arrays["examples_pos"][:2]
    with pytest.raises(ValueError, match=r"must be value, doc, pos \[N, m\]"):
        TopExamples.from_arrays(arrays)


def test_examples_made_under_inference_mode_take_later_batches():
    """Lists made under ``torch.inference_mode`` (a state, a restore, a merge) are normal tensors:
    later batches outside it update them in place."""
    src = TopExamples(3, 2, 1)
    src.update(*_one_row([1.0, 2.0, 3.0]))
    with torch.inference_mode():
        fresh, restored = TopExamples(3, 2, 1), TopExamples.from_arrays(src.arrays())
        merged = Accumulator({"t": ["a"]}, examples=2, context_radius=0)
        merged.merge_(_accumulator_with_examples())
    fresh.update(*_one_row([5.0, 5.0, 5.0]))
    restored.update(*_one_row([5.0, 5.0, 5.0]))
    assert fresh.value[:, 0].tolist() == restored.value[:, 0].tolist() == [5.0] * 3
    merged.observe("l", torch.full((1, 3), 7.0), {"t": torch.zeros(1, dtype=torch.long)},
                   where={"doc": torch.tensor([3]), "pos": torch.tensor([0]),
                          "context": torch.zeros(1, 1, dtype=torch.long)})
    assert merged.layers["l"].examples.value[:, 0].tolist() == [7.0] * 3


def _accumulator_with_examples():
    acc = Accumulator({"t": ["a"]}, examples=2, context_radius=0)
    acc.observe("l", torch.ones(2, 3), {"t": torch.zeros(2, dtype=torch.long)},
                where={"doc": torch.tensor([0, 0]), "pos": torch.tensor([0, 1]),
                       "context": torch.zeros(2, 1, dtype=torch.long)})
    return acc
