"""Flushing and loading a sweep-sized stage: 30 layers x 1,536 neurons, streams token / pos /
predicted (49,152 / 17 / 49,152 features), k = 8, 8 top examples per neuron: the state of
``txray collect --model smollm2 --layers 'model.layers.*.mlp.act_fn' -k 8 --examples 8``.

A flush (``StageWriter.commit``) writes about 840 Zarr nodes. It is timed against two ways of
writing the same arrays with Zarr's ``create_array`` (one at a time, and all concurrently in one
event loop) and against the floor of writing their bytes with ``numpy.save`` (no Zarr, no
compression), all in the same run. Loading the stage back (``Stage.accumulator``, what a resume
does) is timed too.
Run: ``.venv/bin/python -m pytest benchmarks/bench_store.py --benchmark-enable -s``
"""

import asyncio
import shutil
import time

import numpy as np
import pytest
import torch
import zarr
from zarr.core.sync import sync

from txray_engine.accumulate import Accumulator, same_sums
from txray_engine.store import Store, StageWriter
from txray_engine.store.format import ATTR
from txray_engine.store.writer import snapshot_nodes

LAYERS, N, POSITIONS, K, EXAMPLES = 30, 1536, 2000, 8, 8
STREAMS = {"token": 49_152, "pos": 17, "predicted": 49_152}


@pytest.fixture(scope="module")
def acc():
    g = torch.Generator().manual_seed(0)
    acc = Accumulator({s: [f"{s}{i}" for i in range(v)] for s, v in STREAMS.items()}, k=K,
                      examples=EXAMPLES)
    ids = {s: torch.randint(0, v, (POSITIONS,), generator=g) for s, v in STREAMS.items()}
    where = {"doc": torch.arange(POSITIONS), "pos": torch.arange(POSITIONS),
             "context": torch.randint(0, 49_152, (POSITIONS, 11), generator=g)}
    for layer in range(LAYERS):
        acc.observe(f"model.layers.{layer}.mlp.act_fn", torch.randn(POSITIONS, N, generator=g),
                    ids, where=where)
    return acc


def _chunks(data, chunk):
    return (max(1, min(chunk, data.shape[0] or 1)), *data.shape[1:])


def _create_each(path, groups, arrays):
    """Zarr's synchronous API, one node at a time."""
    root = zarr.open_group(str(path), mode="w")
    for name, attrs in groups.items():
        root.create_group(name, attributes=attrs)
    for name, (data, chunk) in arrays.items():
        root.create_array(name, data=np.ascontiguousarray(data), chunks=_chunks(data, chunk))


def _create_concurrently(path, groups, arrays):
    """Zarr's asynchronous ``create_array``, every array at once in one event loop."""
    root = zarr.open_group(str(path), mode="w")
    for name, attrs in groups.items():
        root.create_group(name, attributes=attrs)

    async def write():
        await asyncio.gather(*(root._async_group.create_array(
            name, data=np.ascontiguousarray(data), chunks=_chunks(data, chunk))
            for name, (data, chunk) in arrays.items()))
    sync(write())


def _numpy_files(path, groups, arrays):
    """The bytes alone: one ``.npy`` file per array."""
    for name in groups:
        (path / name).mkdir(parents=True, exist_ok=True)
    for name, (data, _) in arrays.items():
        np.save(path / f"{name}.npy", data)


def _best(fn, rounds=3):
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def test_flush_and_load(acc, tmp_path):
    groups, arrays = {}, {}
    for g, a in snapshot_nodes(acc, "snap"):  # the whole snapshot, for the baselines
        groups |= g
        arrays |= a
    mb = sum(data.nbytes for data, _ in arrays.values()) / 1e6
    writer = StageWriter(tmp_path / "store", "stage").open()
    try:
        units = iter(range(1, 100))
        engine = _best(lambda: writer.commit(acc, {"units": next(units)}))
    finally:
        writer.close()

    def fresh(fn, name):
        def run():
            shutil.rmtree(tmp_path / name, ignore_errors=True)
            (tmp_path / name).mkdir()
            fn(tmp_path / name, groups, arrays)
        return run
    baselines = {"zarr create_array, one at a time": _best(fresh(_create_each, "each")),
                 "zarr create_array, all concurrently": _best(fresh(_create_concurrently, "conc")),
                 "numpy.save per array (no Zarr, uncompressed)": _best(fresh(_numpy_files, "npy"))}

    stage = Store(tmp_path / "store").stage("stage")
    load = _best(stage.accumulator, rounds=2)
    loaded = stage.accumulator()
    assert same_sums(acc, loaded, mass_rtol=0)
    assert len(arrays) == LAYERS * (2 + 4 + 6 * len(STREAMS))

    print(f"\nflush of {LAYERS} layers x {len(STREAMS)} streams ({len(groups)} groups, "
          f"{len(arrays)} arrays, {mb:.0f} MB): engine {engine:.2f} s (best of 3)")
    for name, seconds in baselines.items():
        print(f"  {name}: {seconds:.2f} s, {seconds / engine:.2f}x the engine's time")
    print(f"load (Stage.accumulator, best of 2): {load:.2f} s")
    assert engine < baselines["zarr create_array, one at a time"]
    assert ATTR in dict(zarr.open_group(str(tmp_path / "each"), mode="r")["snap"].attrs)
