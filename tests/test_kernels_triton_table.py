"""The GPU sparse state's hash table (``txray_kernels.triton_sparse.TritonSparseTable``) under
``TRITON_INTERPRET=1``: growth, merge, when it counts its cells, chunked launches; against the
engine's sparse state (``SparseState``)."""

from __future__ import annotations

import pytest
import torch

from txray_kernels import reference, triton_sparse
from test_kernels_triton import SparseState  # the states without the Zarr store (GPU image)


def test_table_growth_and_merge():
    gen = torch.Generator().manual_seed(1)
    n, v, e = 29, 11, 700
    table = triton_sparse.TritonSparseTable(n, v, device="cpu", capacity=16)
    neurons = torch.randint(0, n, (e,), generator=gen)
    features = torch.randint(-1, v, (e,), generator=gen)
    values = torch.randn(e, generator=gen)
    for i in range(0, e, 100):  # several adds, several growths
        table.add(neurons[i:i + 100], features[i:i + 100], values[i:i + 100])
    assert table.capacity > 16 and table.nnz <= triton_sparse.HARD_LOAD * table.capacity
    ref = SparseState(n, v)
    ok = features >= 0
    ref.add_events(neurons[ok], features[ok], values[ok])
    want = ref.to_stats()
    want = tuple(torch.from_numpy(a) for a in (want.keys(), want.count, want.mass, want.peak))
    got = table.to_coo()
    for a, b in zip(got[:2] + got[3:], want[:2] + want[3:]):
        assert torch.equal(a, b)
    assert torch.allclose(got[2], want[2], rtol=1e-12, atol=0)
    # merging the cells again doubles count and mass, keeps peak
    table.add_cells(*got)
    k2, c2, m2, p2 = table.to_coo()
    assert torch.equal(k2, got[0]) and torch.equal(c2, 2 * got[1]) and torch.equal(p2, got[3])
    assert torch.allclose(m2, 2 * got[2], rtol=1e-12, atol=0)


def test_table_counts_its_cells_every_few_calls_when_they_recur(monkeypatch):
    """A stream whose cells recur (the same 60 events per call) makes its table count its cells,
    a wait for the device, only when the bound on new cells passes ``HARD_LOAD``: once in several
    calls, the true load under ``HARD_LOAD`` throughout and under ``max_load`` after each count
    (with the bound held under ``max_load`` instead, it counted 10 times in these 12 calls)."""
    counts = []
    nnz = triton_sparse.TritonSparseTable.nnz

    def counted(table):
        counts.append(nnz.fget(table))
        return counts[-1]

    monkeypatch.setattr(triton_sparse.TritonSparseTable, "nnz", property(counted))
    gen = torch.Generator().manual_seed(4)
    n, v, e = 13, 11, 60
    neurons, features = torch.randint(0, n, (e,), generator=gen), torch.randint(0, v, (e,),
                                                                                 generator=gen)
    table = triton_sparse.TritonSparseTable(n, v, device="cpu", capacity=256)
    cells = int(torch.unique(neurons * v + features).numel())
    for _ in range(12):
        table.add(neurons, features, torch.ones(e))
        held = int((table.keys != -1).sum())
        assert held == cells <= triton_sparse.HARD_LOAD * table.capacity
    assert table.capacity == 256  # never grown: the cells fit under max_load
    assert 1 <= len(counts) <= 4 and all(c <= table.max_load * 256 for c in counts)
    assert int(table.count.sum()) == 12 * e


@pytest.mark.parametrize("chunk", [7, 64])
def test_table_chunks_give_the_whole_call(chunk, monkeypatch):
    """Events, selections and cells inserted in several launches (``CHUNK_EVENTS`` small; one
    launch takes the whole call when it fits) hold what one launch of everything holds."""
    gen = torch.Generator().manual_seed(3)
    n, v, p, k = 13, 5, 19, 3
    values, indices = reference.select_topk(torch.randn(p, n, generator=gen), k)
    features = torch.randint(-1, v, (p,), generator=gen)
    neurons = torch.randint(0, n, (p,), generator=gen)

    def fill():
        table = triton_sparse.TritonSparseTable(n, v, device="cpu", capacity=16)
        table.add_selection(values, indices, features)
        table.add_selection(values[:, :1].expand(p, n), None, features)  # all neurons
        table.add(neurons, features, values[:, 0])
        table.add_cells(*table.to_coo())
        return table.to_coo()

    whole = fill()
    monkeypatch.setattr(triton_sparse, "CHUNK_EVENTS", chunk)
    parts = fill()
    for a, b in zip(whole[:2] + whole[3:], parts[:2] + parts[3:]):
        assert torch.equal(a, b)
    assert torch.allclose(whole[2], parts[2], rtol=1e-12, atol=0)


@pytest.mark.parametrize("p,k", [(5, 0), (0, 3), (0, 0)])
def test_an_empty_selection_adds_nothing(p, k):
    """A selection of no neurons (k = 0) or of no rows adds nothing, as the dense scatter takes it
    (k = 0 divided by zero when the call was cut into chunks)."""
    n, v = 7, 4
    table = triton_sparse.TritonSparseTable(n, v, device="cpu", capacity=16)
    values = torch.randn(p, k)
    indices = torch.zeros(p, k, dtype=torch.int64)
    features = torch.zeros(p, dtype=torch.int64)
    table.add_selection(values, indices, features)
    assert table.nnz == 0
    state = SparseState(n, v)
    triton_sparse.sparse_accumulate(values, indices, [(features, state)])
    assert state.to_stats().nnz == 0
