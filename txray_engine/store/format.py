"""Store format v1: names, attributes and the (de)serialisation of ``SparseStats``.

The layout is documented for other tools in ``docs/FORMAT.md``; keep the two in step.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import zarr
from zarr.core.array import AsyncArray
from zarr.core.buffer import default_buffer_prototype
from zarr.core.group import GroupMetadata
from zarr.core.metadata import ArrayV3Metadata
from zarr.core.sync import sync
from zarr.storage import MemoryStore, StorePath

from ..accumulate.stats import SparseStats
from ..errors import StageNotReadyError, StoreError, TxRayError
from ..version import FORMAT_VERSION, __version__

#: Attribute key under which every txray group keeps its metadata.
ATTR = "txray_engine"
#: Chunk length of the per-cell arrays (indices, count, mass, peak).
CELL_CHUNK = 1 << 18
#: Chunk length of per-neuron and per-feature arrays.
VECTOR_CHUNK = 1 << 16

CELL_ARRAYS = {"indices": np.int64, "count": np.int64, "mass": np.float64, "peak": np.float32}


def fingerprint(obj) -> str:
    """Stable hash of a JSON-able description (model, corpus, options) for resume checks."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def root_attrs() -> dict:
    return {ATTR: {"kind": "store", "format": "txray-store", "format_version": FORMAT_VERSION,
                   "engine_version": __version__}}


def open_root(path: str | os.PathLike, mode: str = "r", writer: bool = False) -> zarr.Group:
    """Open the root group of a store, checking that it is ours and of a format we read.

    ``mode`` is ``"r"`` (read) or ``"r+"`` (write an existing store); ``writer``: the caller
    holds the store's lock.
    """
    path = Path(path)
    if not path.exists():
        raise StoreError(f"no store at {str(path)!r}: check the path, or create one with "
                         f"`txray collect`")
    if not (path / "zarr.json").is_file():
        if not writer and path.is_dir() and _being_written(path):
            raise StageNotReadyError(f"store {str(path)!r} is being written by a collection that "
                                     f"has not committed its first snapshot yet (it flushes "
                                     f"every --flush-every seconds, 60 by default): wait for it")
        raise StoreError(f"{str(path)!r} is not a txray store (no zarr.json): point to a store "
                         f"made by txray, or choose a new path")
    try:
        root = zarr.open_group(str(path), mode=mode)
        meta = dict(root.attrs).get(ATTR)
    except Exception as e:  # zarr raises many kinds on damaged metadata
        raise StoreError(f"store {str(path)!r} is damaged or unreadable ({type(e).__name__}: {e}): "
                         f"restore it from a copy, or collect into a new store") from None
    if not isinstance(meta, dict) or meta.get("format") != "txray-store":
        raise StoreError(f"{str(path)!r} is a Zarr hierarchy but not a txray store: choose another "
                         f"path")
    check_version(meta, f"store {str(path)!r}")
    return root


def check_version(meta: dict, what: str) -> None:
    """Refuse a store or stage of another format version (a stage still without sums has none)."""
    version = meta.get("format_version", FORMAT_VERSION if meta.get("kind") == "stage" else None)
    if version != FORMAT_VERSION or type(version) is not int:
        raise StoreError(f"{what} has format version {version!r}; this engine ({__version__}) "
                         f"reads version {FORMAT_VERSION}: use a matching txray_engine")


#: What to do about a damaged stage (a merged one is written by `txray merge`, not collected).
REWRITE = ("restore it or write the stage again with --overwrite (`txray collect`, or `txray merge` "
           "for a merged stage)")


@contextlib.contextmanager
def damaged(what: str):
    """Turn any failure while reading ``what`` into one ``StoreError`` saying it is damaged."""
    try:
        yield
    except TxRayError:
        raise
    except Exception as e:
        raise unreadable(what, e) from None


def unreadable(what: str, e: Exception) -> StoreError:
    """The error for ``what`` of a store that failed to read with ``e``: damage, or, where the
    system refused the reading (permissions, a failing disk), that, with what to do (writing the
    stage again would not help)."""
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EIO):
        from .outputs import os_advice
        where = f": {e.filename}" if e.filename else ""
        return StoreError(f"{what} cannot be read ({e.strerror}{where}); {os_advice(e)}")
    return StoreError(f"{what} is damaged or unreadable ({type(e).__name__}: {e}); {REWRITE}")


def damage(what: str, why: str) -> StoreError:
    """The error for ``what`` of a store found damaged, ``why``, with what to do."""
    return StoreError(f"{what} is damaged: {why}; {REWRITE}")


def _being_written(path: Path) -> bool:
    """Whether a writer holds the store's lock (see :class:`~.writer.StageWriter`)."""
    import fcntl
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # (and with it a shared lock taken)


def group_attrs(group: zarr.Group) -> dict:
    meta = dict(group.attrs).get(ATTR)
    if not isinstance(meta, dict):
        raise StoreError(f"group {group.path!r} has no {ATTR} attributes: the store is damaged")
    return meta


@functools.cache
def _encoding(dtype: str, ndim: int) -> dict:
    """Zarr's default metadata for arrays of ``dtype`` (codecs, fill value, key encoding), as a
    dict to give each array its shape and chunks."""
    meta = zarr.create_array(store=MemoryStore(), shape=(1,) * ndim, dtype=np.dtype(dtype),
                             chunks=(1,) * ndim).metadata
    return meta.to_dict()


def array_metadata(data: np.ndarray, chunk: int) -> ArrayV3Metadata:
    """Metadata of an array holding ``data``, chunked by ``chunk`` along its first axis (an
    array shorter than that is one chunk of its length)."""
    chunks = (max(1, min(chunk, data.shape[0] or 1)), *data.shape[1:])
    return ArrayV3Metadata.from_dict({
        **_encoding(data.dtype.str, data.ndim), "shape": list(data.shape),
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": list(chunks)}}})


def stream_nodes(stats: SparseStats) -> tuple[dict, dict]:
    """One (layer, stream) as CSR arrays: its group's attributes and ``{name: (data, chunk)}``."""
    arrays = {"indptr": (stats.indptr.astype(np.int64, copy=False), VECTOR_CHUNK),
              "feature_freq": (stats.feature_freq.astype(np.int64, copy=False), VECTOR_CHUNK)}
    arrays |= {c: (getattr(stats, c).astype(dt, copy=False), CELL_CHUNK)
               for c, dt in CELL_ARRAYS.items()}
    return stream_attrs(stats), arrays


def write_hierarchy(store, groups: dict[str, dict], arrays: dict[str, tuple]) -> None:
    """Create new groups ``{path: attributes}`` and arrays ``{path: (data, chunk)}`` (paths
    relative to ``store``'s root; existing parent groups are left as they are) and fill the
    arrays, all concurrently.

    One call writes a whole snapshot: each node's metadata document and its chunks, at once,
    without the existence checks and per-array round trips of ``create_array`` and
    ``create_hierarchy``, which cost more than the data (a snapshot's paths are new, and every
    parent is named). All writes are waited for, failed or not, before the first failure is
    raised: none goes on writing into a snapshot being removed, and a full disk is one error,
    not a traceback per write that failed beside it.
    """
    nodes = {path: GroupMetadata(attributes=attrs) for path, attrs in groups.items()}
    metas = {path: array_metadata(data, chunk) for path, (data, chunk) in arrays.items()}
    documents = [(f"{path}/{key}", buffer) for path, node in {**nodes, **metas}.items()
                 for key, buffer in node.to_buffer_dict(default_buffer_prototype()).items()]

    async def fill(path, data):
        if data.size:  # all chunks are written: checking each for the fill value costs more
            array = AsyncArray(metadata=metas[path], store_path=StorePath(store, path),
                               config={"write_empty_chunks": True})
            await array.setitem(slice(None), np.ascontiguousarray(data))

    async def write():
        return await asyncio.gather(*(store.set(key, buffer) for key, buffer in documents),
                                    *(fill(path, data) for path, (data, _) in arrays.items()),
                                    return_exceptions=True)

    failed = [r for r in sync(write()) if isinstance(r, BaseException)]
    if failed:
        raise failed[0]


def stream_attrs(stats: SparseStats) -> dict:
    return {ATTR: {"kind": "stream", "n_neurons": stats.n_neurons, "n_features": stats.n_features,
                   "nnz": stats.nnz, "tokens": stats.tokens, "missing": stats.missing}}


def read_arrays(group: zarr.Group, names) -> dict[str, np.ndarray]:
    """Whole arrays ``names`` of ``group``, opened and read concurrently: one trip through
    Zarr's event loop instead of two per array (a stage's load waited mostly on those)."""
    names = list(names)

    async def one(name):
        array = await group._async_group.getitem(name)
        return np.asarray(await array.getitem(slice(None)))

    async def every():
        return await asyncio.gather(*(one(name) for name in names))

    return dict(zip(names, sync(every())))


def stage_attrs_wrong(meta: dict) -> str | None:
    """What in a stage's attributes no writer makes (the commands would stop in a traceback)."""
    k, tokens = meta.get("k"), meta.get("tokens", 0)
    if not (k == "all" or (type(k) is int and k >= 1)):
        return f"k is {k!r}"
    if type(tokens) is not int or tokens < 0:
        return f"tokens is {tokens!r}"
    for key in ("layers", "streams", "cursor"):
        if not isinstance(meta.get(key, {}), dict):
            return f"{key} is a {type(meta[key]).__name__}, not a mapping"
    for key in ("units", "documents"):
        value = (meta.get("cursor") or {}).get(key, 0)
        if type(value) is not int or value < 0:
            return f"the cursor's {key} is {value!r}"
    return None


def _inconsistent(arrays: dict, n: int, v: int, meta: dict) -> str | None:
    """What in one stream's arrays no writer makes (what scipy, reading them, would overrun
    memory on): rows that do not follow each other, features outside the vocabulary or out of
    order in a row, cells never counted, sums that are not finite, negative frequencies."""
    indptr, indices = arrays["indptr"], arrays["indices"]
    if n and (indptr[0] != 0 or (np.diff(indptr) < 0).any()):
        return "its rows' offsets (indptr) do not grow from 0"
    if indices.size and (int(indices.min()) < 0 or int(indices.max()) >= v):
        return f"a feature id outside its vocabulary of {v}"
    starts = np.zeros(indices.size + 1, bool)  # where a row begins (its first cell follows none)
    starts[indptr[:-1]] = True
    step = 1 << 22  # (cells at a time: the check's memory stays a few MB at any size)
    for a in range(1, indices.size, step):
        b = min(a + step, indices.size)
        follows = indices[a:b].astype(np.int64) > indices[a - 1:b - 1]
        if not (follows | starts[a:b]).all():
            return "a row's features out of order"
    if (arrays["count"] < 1).any():
        return "a cell with a count below 1"
    if not (np.isfinite(arrays["mass"]).all() and np.isfinite(arrays["peak"]).all()):
        return "a mass or peak that is not finite"
    if (arrays["feature_freq"] < 0).any() or int(meta["tokens"]) < 0 or int(meta["missing"]) < 0:
        return "a negative frequency or token count"
    return None


def row_wrong(a: int, b: int, nnz: int, cells: dict, v: int) -> str | None:
    """:func:`_inconsistent` for one row's offsets ``a:b`` into ``nnz`` cells and its ``cells``
    (a reader of single rows meets the same damage as one of whole streams)."""
    if not 0 <= a <= b <= nnz:
        return f"a row's offsets ({a}, {b}) outside its {nnz} cells"
    if any(c.shape != (b - a,) for c in cells.values()):
        return "a row's cell arrays of different lengths"
    row = {"indptr": np.array([0, b - a]), "feature_freq": np.zeros(0), **cells}
    return _inconsistent(row, 1, v, {"tokens": 0, "missing": 0})


def read_stats(group: zarr.Group) -> SparseStats:
    """Read one (layer, stream) written from :func:`stream_nodes`, checking its consistency."""
    meta = group_attrs(group)
    try:
        n, v, nnz = int(meta["n_neurons"]), int(meta["n_features"]), int(meta["nnz"])
        arrays = read_arrays(group, ("indptr", *CELL_ARRAYS, "feature_freq"))
    except Exception as e:
        raise unreadable(f"stream group {group.path!r}", e) from None
    ok = (arrays["indptr"].shape == (n + 1,) and arrays["feature_freq"].shape == (v,)
          and all(arrays[c].shape == (nnz,) for c in CELL_ARRAYS)
          and (n == 0 or int(arrays["indptr"][-1]) == nnz))
    if not ok:
        raise StoreError(f"stream group {group.path!r} is damaged: array shapes disagree with its "
                         f"attributes")
    wrong = _inconsistent(arrays, n, v, meta)
    if wrong:
        raise damage(f"stream group {group.path!r}", wrong)
    return SparseStats(n, v, arrays["indptr"], arrays["indices"], arrays["count"], arrays["mass"],
                       arrays["peak"], arrays["feature_freq"], int(meta["tokens"]),
                       int(meta["missing"]))
