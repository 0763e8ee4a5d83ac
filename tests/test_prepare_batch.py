"""``Accumulator.prepare_batch``: the layers of one forward pass prepared together (their
positions checked and kept once) give the sums of one ``observe`` per layer, and on the device
path the batch waits for the device twice, however many layers it has."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import txray_kernels as kernels
from txray_engine import Accumulator
from txray_engine.accumulate import same_sums
from txray_engine.errors import InputError, NonFiniteError

STREAMS = {"tok": [str(i) for i in range(30)], "pos": ["a", "b", "c"]}


def _batch(seed=0, b=3, t=7, widths=(5, 12, 9), nan_at=None):
    g = torch.Generator().manual_seed(seed)
    acts = {f"l{i}": torch.randn(b, t, n, generator=g) for i, n in enumerate(widths)}
    if nan_at is not None:
        layer, pos = nan_at
        acts[layer][pos] = float("nan")
    feats = {"tok": torch.randint(-1, 30, (b, t), generator=g),
             "pos": torch.randint(0, 3, (b, t), generator=g)}
    mask = torch.rand(b, t, generator=g) > 0.3
    doc = torch.arange(b).unsqueeze(1).expand(b, t)
    pos = torch.arange(t).unsqueeze(0).expand(b, t)
    where = {"doc": doc, "pos": pos, "context": torch.randint(0, 30, (b, t, 3), generator=g)}
    return acts, feats, mask, where


def _both(k, nonfinite="error", **batch):
    acts, feats, mask, where = _batch(**batch)
    one, many = (Accumulator(STREAMS, k=k, kind="dense", nonfinite=nonfinite, examples=2,
                             context_radius=1) for _ in range(2))
    for layer, a in acts.items():
        one.observe(layer, a, feats, mask, where)
    for p in many.prepare_batch(acts, feats, mask, where):
        many.commit(p)
    return one, many


@pytest.mark.parametrize("cpu_path", [True, False])
@pytest.mark.parametrize("k", [1, 3, "all"])
def test_batch_gives_the_sums_of_one_observe_per_layer(k, cpu_path, monkeypatch):
    if not cpu_path:
        monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    one, many = _both(k)
    assert same_sums(one, many) and set(many.layers) == {"l0", "l1", "l2"}
    for layer in one.layers:
        a, b = one.layers[layer].examples, many.layers[layer].examples
        assert torch.equal(a.value, b.value) and torch.equal(a.doc, b.doc)
        assert torch.equal(a.pos, b.pos) and torch.equal(a.context, b.context)


@pytest.mark.parametrize("cpu_path", [True, False])
def test_nonfinite_rows_skipped_per_layer(cpu_path, monkeypatch):
    if not cpu_path:
        monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    one, many = _both(1, nonfinite="skip", nan_at=("l1", (0, 0, 2)), seed=3)
    assert same_sums(one, many)
    skipped = {name: layer.skipped_nonfinite for name, layer in many.layers.items()}
    mask = _batch(seed=3)[2]
    assert skipped == {"l0": 0, "l1": int(mask[0, 0]), "l2": 0}


def test_errors_name_the_layer_and_position_and_change_nothing():
    acts, feats, mask, where = _batch(nan_at=("l2", (1, 4)))
    mask[1, 4] = True
    acc = Accumulator(STREAMS, k=2)
    with pytest.raises(NonFiniteError, match=r"layer 'l2'.*position \(1, 4\)"):
        acc.prepare_batch(acts, feats, mask)
    bad = dict(feats, tok=feats["tok"].clone())
    bad["tok"][2, 6] = 30
    with pytest.raises(InputError, match="feature id 30"):
        acc.prepare_batch({"l0": acts["l0"]}, bad, mask)
    with pytest.raises(InputError, match="feature id 30"):  # ids before where, as observe did
        Accumulator(STREAMS, k=1, examples=2).prepare_batch({"l0": acts["l0"]}, bad, mask,
                                                             where={"doc": 0})
    with pytest.raises(InputError, match="one activation vector per position"):
        acc.prepare_batch({"l0": acts["l0"], "x": torch.randn(3, 6, 4)}, feats, mask)
    assert not acc.layers and acc.prepare_batch({}, feats) == []


class _Waits(TorchDispatchMode):
    """Counts the operators that make a host wait for a device (sizes and values read back)."""

    WAITS = {"aten.nonzero.default", "aten._local_scalar_dense.default", "aten.item.default",
             "aten.is_nonzero.default", "aten.equal.default"}

    def __init__(self):
        super().__init__()
        self.waits = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in self.WAITS:
            self.waits.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("triton", [False, True])
def test_device_path_waits_twice_per_batch_whatever_the_layers(triton, monkeypatch):
    """The path CUDA tensors take (no numba) reads back the mask's size (``nonzero``) and then
    every id bound and non-finite count at once (one ``tolist``), for 1 or 12 layers. With
    ``triton``, CUDA's own branch: every row selected by the Triton kernel (the interpreter here),
    the kept rows taken after; without, the torch path, at k = 1 and k = N (at other k it reads
    its ties back, as it does on a GPU for rows wider than one fused tile). Waits that an
    operator count cannot see (a blocking host-to-device copy) are outside this test: the
    Collector hands the engine tensors already on the model's device."""
    monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    if triton:
        monkeypatch.setattr(kernels, "_select_every_row", lambda acts: True)
        monkeypatch.setattr(kernels, "_triton_ok", lambda t: True)
    reads = []
    tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or tolist(self))
    for layers, k in ((1, 1), (12, 1), (12, "all")) + (((3, 3),) if triton else ()):
        acts, feats, mask, _ = _batch(widths=(6,) * layers)
        acc = Accumulator(STREAMS, k=k)
        reads.clear()
        with _Waits() as w:
            prepared = acc.prepare_batch(acts, feats, mask)
        assert len(prepared) == layers
        assert w.waits == ["aten.nonzero.default"] and len(reads) == 1


@pytest.mark.parametrize("kind", ["dense", "sparse"])
@pytest.mark.parametrize("shared", [False, True])
def test_counting_positions_never_waits(kind, shared):
    """``add_positions`` (the positions of a commit on a GPU) adds without reading anything back,
    from the ids or from their position counts made ahead (``shared``, as the layers of one batch
    share them); missing ids are read back only when ``missing`` is asked."""
    from txray_engine.accumulate import make_state
    from txray_engine.accumulate.state import position_counts

    state = make_state(4, 6, kind)
    with _Waits() as w:
        for ids in (torch.tensor([0, -1, 5, 5, -1, 2]), torch.tensor([-1, 1])):
            state.add_positions(ids, position_counts(ids, 6) if shared else None)
    assert w.waits == []
    assert state.feature_freq.tolist() == [1, 1, 1, 0, 0, 2] and state.missing == 3
    state.missing = 1
    state.add_positions(torch.tensor([-1]))
    assert state.missing == 2 and state.tokens == 5


@pytest.mark.parametrize("k", [1, 3])
def test_cuda_branch_through_the_interpreter_gives_the_cpu_sums(k, monkeypatch):
    """The engine path CUDA tensors take, end to end (every row selected by the Triton kernel,
    kept rows taken after, positions counted without waits, events scattered by the Triton
    kernels into a dense and a sparse state), run on CPU tensors through the Triton interpreter:
    the sums of the numba path."""
    from txray_engine.accumulate import SparseState
    from txray_engine.accumulate.layer import LayerState

    acts, feats, mask, _ = _batch(seed=k, widths=(6, 9))
    acts["l1"][0, 1, 2] = float("nan")
    mask[0, 1] = True
    want = Accumulator(STREAMS, k=k, kind="dense", nonfinite="skip")
    for p in want.prepare_batch(acts, feats, mask):
        want.commit(p)
    monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    monkeypatch.setattr(kernels, "_select_every_row", lambda acts: True)
    monkeypatch.setattr(kernels, "_triton_ok", lambda t: True)
    got = Accumulator(STREAMS, k=k, kind="dense", nonfinite="skip")
    for name, a in acts.items():  # the token stream sparse, as a wide vocabulary would make it
        got.layers[name] = LayerState.create(a.shape[-1], got.vocab_sizes, "dense")
        got.layers[name].streams["tok"] = SparseState(a.shape[-1], 30, table=False)
    for p in got.prepare_batch(acts, feats, mask):
        got.commit(p)
    assert same_sums(want, got) and got.layers["l1"].skipped_nonfinite == 1


class _Ops(TorchDispatchMode):
    """Counts the operators dispatched (by name)."""

    def __enter__(self):
        self.ops = {}
        return super().__enter__()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops[name] = self.ops.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kind", ["dense", "sparse"])
def test_device_commit_counts_positions_once_per_batch_and_totals_in_the_launch(kind,
                                                                                 monkeypatch):
    """CUDA's commit (through the interpreter): the position counts of each stream's ids are made
    once per batch (one ``index_add_`` each), each layer adds them with one ``add_`` per stream
    (no sorting ``index_put_``), and the per-neuron totals ride in the streams' scatter launch;
    the sums stay the numba path's."""
    layers = 12
    acts, feats, mask, _ = _batch(seed=4, widths=(7,) * layers)
    want = Accumulator(STREAMS, k=2, kind=kind)
    for p in want.prepare_batch(acts, feats, mask):
        want.commit(p)
    monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    monkeypatch.setattr(kernels, "_select_every_row", lambda acts: True)
    monkeypatch.setattr(kernels, "_triton_ok", lambda t: True)
    got = Accumulator(STREAMS, k=2, kind=kind)
    with _Ops() as counted:
        for p in got.prepare_batch(acts, feats, mask):
            got.commit(p)
    assert counted.ops.get("clamp_") == len(STREAMS)
    assert counted.ops.get("index_add_") == len(STREAMS)
    assert counted.ops.get("add_") == layers * len(STREAMS)
    assert "index_put_" not in counted.ops
    assert same_sums(want, got)


def test_position_counts_are_made_once_per_batch_and_vocabulary():
    from txray_engine.accumulate.positions import Positions

    pos = Positions((5,), None, {"tok": torch.tensor([-1, 0, 2, 5, 2])})
    first = pos.position_counts("tok", 3)
    # bin 0: missing ids, bins 1..3: ids 0..2, bin 4: past the vocabulary
    assert first.tolist() == [1, 1, 0, 2, 1] and pos.position_counts("tok", 3) is first
    assert pos.position_counts("tok", 9).tolist() == [1, 1, 0, 2, 0, 0, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("skip_row", [False, True])
def test_device_commit_under_inference_mode(skip_row, monkeypatch):
    """Collections often run under ``torch.inference_mode`` (tensors without a version counter);
    with a non-finite row skipped, that layer's ids differ from the batch's and count alone."""
    acts, feats, mask, _ = _batch(seed=6, widths=(7, 7, 7))
    if skip_row:
        mask[0, 0] = True
        acts["l1"][0, 0, 3] = float("inf")
    want = Accumulator(STREAMS, k=2, nonfinite="skip")
    for p in want.prepare_batch(acts, feats, mask):
        want.commit(p)
    monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    monkeypatch.setattr(kernels, "_select_every_row", lambda acts: True)
    monkeypatch.setattr(kernels, "_triton_ok", lambda t: True)
    got = Accumulator(STREAMS, k=2, nonfinite="skip")
    with torch.inference_mode():
        for p in got.prepare_batch(acts, feats, mask):
            got.commit(p)
    assert same_sums(want, got)
    assert got.layers["l1"].skipped_nonfinite == int(skip_row)


def test_device_accumulate_totals_beside_five_streams(monkeypatch):
    """``txray_kernels.accumulate``'s CUDA branch with five dense streams: the totals take the second
    launch's free slot, and equal the reference's ``add_totals``."""
    from txray_kernels import reference
    from txray_engine.accumulate import DenseState

    g = torch.Generator().manual_seed(3)
    values, indices = reference.select_topk(torch.randn(40, 9, generator=g), 3)
    feats = [torch.randint(-1, 4, (40,), generator=g) for _ in range(5)]
    count, mass = torch.zeros(9, dtype=torch.int64), torch.zeros(9, dtype=torch.float64)
    ref_count, ref_mass = count.clone(), mass.clone()
    reference.add_totals(values, indices, ref_count, ref_mass)
    monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    monkeypatch.setattr(kernels, "_triton_ok", lambda t: True)
    states = [DenseState(9, 4) for _ in feats]
    kernels.accumulate(values, indices, list(zip(feats, states)), (count, mass))
    assert torch.equal(count, ref_count) and torch.allclose(mass, ref_mass, rtol=1e-12, atol=0)
    ref = DenseState(9, 4)
    reference.scatter_events(values, indices, [(feats[4], ref)])
    assert torch.equal(states[4].count, ref.count)


def test_device_accumulate_strided_totals_and_partial_mode(monkeypatch):
    """Totals the launch cannot take (strided) go through ``add_totals`` as before; the totals
    target also serves the partial mode (its states are weakly referenced there)."""
    from txray_kernels import reference, triton_dense
    from txray_engine.accumulate import DenseState

    values, indices = reference.select_topk(torch.randn(6, 5, generator=torch.Generator()
                                                        .manual_seed(1)), 2)
    feats = torch.tensor([0, 1, -1, 2, 0, 1])
    ref_count, ref_mass = torch.zeros(5, dtype=torch.int64), torch.zeros(5, dtype=torch.float64)
    reference.add_totals(values, indices, ref_count, ref_mass)
    monkeypatch.setattr(kernels.cpu, "AVAILABLE", False)
    monkeypatch.setattr(kernels, "_triton_ok", lambda t: True)
    count, mass = torch.zeros(10, dtype=torch.int64)[::2], torch.zeros(10, dtype=torch.float64)[::2]
    kernels.accumulate(values, indices, [(feats, DenseState(5, 3))], (count, mass))
    assert torch.equal(count, ref_count) and torch.allclose(mass, ref_mass, rtol=1e-12, atol=0)
    count, mass = torch.zeros(5, dtype=torch.int64), torch.zeros(5, dtype=torch.float64)
    target = triton_dense.totals_target(count, mass, 6)  # kept until flushed (partial mode)
    triton_dense.dense_scatter_events(values, indices, [target], mode="partial")
    triton_dense.flush(target[1])
    assert torch.equal(count, ref_count) and torch.allclose(mass, ref_mass, rtol=1e-6, atol=0)
