"""Top examples per neuron: against a per-neuron sort, chunking and merging, store round trip."""

import numpy as np
import torch

from txray_engine import Accumulator, Batch, Collector, Stream, Vocabulary, merge, open_store
from txray_engine.accumulate.examples import context_windows


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
