"""Sparse accumulation on the GPU: an open-addressing hash table in Triton.

:class:`TritonSparseTable` holds the cells of one ``[n_neurons, n_features]`` (layer, stream) keyed by
``neuron * n_features + feature`` (int64; ``-1`` marks an empty slot), with int64 count, float64
mass and float32 peak per slot. An insert launch claims slots with ``tl.atomic_cas`` and linear
probing from a multiplicative (Fibonacci) hash, then adds with 64-bit atomics (count, mass) and
``tl.atomic_max`` (peak), so the sums are the exact ones of :class:`SparseState` (counts and peaks
bit-identical, mass up to float64 rounding of the summation order).

Growth: before a launch of ``E`` events the table makes sure that ``size + E`` stays under
``HARD_LOAD * capacity`` (``E`` bounds the new cells: a running upper bound of the size, the true
size read back, one sync, only when the bound passes that limit), and a table whose true size
``+ E`` passes ``max_load * capacity`` (0.5 by default) rehashes into a power-of-two capacity at
least twice as large. So probing always terminates, the load stays under ``max_load`` after each
count of the cells and under ``HARD_LOAD`` between counts, and a stream whose cells recur (most
of its events fall on cells the table holds) counts them, and waits for the device, every few
calls rather than whenever its bound passes ``max_load``. Batches are
inserted in chunks of at most ``CHUNK_EVENTS`` events, which bounds the slack.

:func:`sparse_accumulate` feeds ``SparseState`` targets from a ``[P, k]`` selection: into the
state's own persistent table (a ``SparseState`` on a CUDA device keeps one as its whole state; a
read sorts a copy of its cells), or else by reducing the call's events in a per-state scratch table and pushing
the sorted reduced run into the state (the run ``SparseState.add_events`` would push). Either way
the state's ``to_stats()`` equals the reference's. :func:`select_accumulate` is the whole CUDA hot path for any
mix of dense and sparse targets (fused dense kernel + tables); :func:`scatter_events` is the same
for a selection made elsewhere (the counterpart of ``txray_kernels.reference.scatter_events``).

Under ``TRITON_INTERPRET=1`` (tests on CPU) CPU tensors are accepted; otherwise CUDA only.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch
import triton
import triton.language as tl

from . import reference, triton_dense
from .targets import is_sparse_state, split_targets
from .triton_dense import _cdiv, _interpret, _next_pow2

__all__ = ["CHUNK_EVENTS", "HARD_LOAD", "TritonSparseTable", "scatter_events", "select_accumulate",
           "sparse_accumulate", "sparse_select_accumulate"]

#: Events per insert launch (bounds the capacity slack reserved for one launch).
CHUNK_EVENTS = 1 << 20
#: Load a table may reach between two counts of its cells (see the module docstring).
HARD_LOAD = 0.9
_EMPTY = -1
_SRC_SELECTION, _SRC_ALL, _SRC_CELLS = 0, 1, 2


@triton.jit
def _insert_kernel(tab_key, tab_cnt, tab_mass, tab_peak,
                   a_ptr, s_ap, s_ak, v_ptr, s_vp, s_vk, f_ptr, c_ptr, m_ptr,
                   E, K, V, NN, cap_mask, hash_shift,
                   SOURCE: tl.constexpr, BLOCK: tl.constexpr):
    """Insert ``E`` events, event ``e`` at ``(row, col) = (e // K, e % K)`` of strided 2-D inputs.
    ``SOURCE`` 0: neuron ``a[row, col]``, value ``v[row, col]``, feature ``f[row]``; 1: neuron
    ``col`` (all neurons), value ``v[row, col]``, feature ``f[row]``; 2: cells with keys ``a[e]``,
    counts ``c[e]``, masses ``m[e]``, peaks ``v[e]`` (``K == 1``)."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = e < E
    row = e // K
    col = e - row * K
    val = tl.load(v_ptr + row * s_vp + col * s_vk, mask=ok, other=0.0)
    if SOURCE == 2:
        key = tl.load(a_ptr + row * s_ap + col * s_ak, mask=ok, other=0)
        cnt = tl.load(c_ptr + e, mask=ok, other=0)
        mass = tl.load(m_ptr + e, mask=ok, other=0.0)
        valid = ok
    else:
        if SOURCE == 0:
            n = tl.load(a_ptr + row * s_ap + col * s_ak, mask=ok, other=0).to(tl.int64)
        else:
            n = col
        f = tl.load(f_ptr + row, mask=ok, other=-1).to(tl.int64)
        # out-of-range ids are dropped, never written out of bounds
        valid = ok & (f >= 0) & (f < V) & (n >= 0) & (n < NN)
        key = tl.where(valid, n * V + f, 0)
        cnt = tl.full([BLOCK], 1, tl.int64)
        mass = tl.maximum(val, 0.0).to(tl.float64)
    # Fibonacci hashing: the top bits of key * 2**64 / phi (int64 wrap-around)
    h = key * -7046029254386353131
    # invalid lanes never write, but spread their (failing) CAS over distinct slots
    slot = tl.where(valid, (h >> hash_shift) & cap_mask, e & cap_mask)
    pending = valid
    while tl.max(pending.to(tl.int32), axis=0) > 0:
        # settled lanes compare with -2 (never stored): their CAS cannot write
        cmp = tl.where(pending, -1, -2).to(tl.int64)
        prev = tl.atomic_cas(tab_key + slot, cmp, key, sem="relaxed")
        hit = pending & ((prev == -1) | (prev == key))
        pending = pending & ~hit
        slot = tl.where(pending, (slot + 1) & cap_mask, slot)
    tl.atomic_add(tab_cnt + slot, cnt, mask=valid, sem="relaxed")
    tl.atomic_add(tab_mass + slot, mass, mask=valid, sem="relaxed")
    tl.atomic_max(tab_peak + slot, val, mask=valid, sem="relaxed")


def _check_device_ok(t: torch.Tensor, what: str) -> None:
    if t.device.type != "cuda" and not _interpret():
        raise ValueError(f"{what} must be a CUDA tensor for the Triton kernels, got {t.device} "
                         "(set TRITON_INTERPRET=1 to test on the CPU)")


def _span(t: torch.Tensor | None, i: int, j: int) -> torch.Tensor | None:
    """``t[i:j]``, or ``t`` itself where that is all of it (a call's events usually fit one
    launch, and each view costs the host about as much as a launch's own checks)."""
    return t if t is None or (i == 0 and j == t.shape[0]) else t[i:j]


class TritonSparseTable:
    """Open-addressing hash table of ``(key, count, mass, peak)`` cells on one device."""

    def __init__(self, n_neurons: int, n_features: int, device="cuda", capacity: int = 1 << 12,
                 max_load: float = 0.5):
        if n_neurons < 1 or n_features < 1:
            raise ValueError(f"a table needs n_neurons >= 1 and n_features >= 1, got "
                             f"{n_neurons} x {n_features}")
        if not 0.0 < max_load <= 0.9:
            raise ValueError(f"max_load must be in (0, 0.9], got {max_load}")
        self.n_neurons, self.n_features = int(n_neurons), int(n_features)
        # the device of the tensors ("cuda" becomes "cuda:0"), so it compares equal to theirs
        self.device = torch.empty(0, device=device).device
        self.max_load = float(max_load)
        self._alloc(max(16, _next_pow2(capacity)))

    # -- storage ---------------------------------------------------------------------------------
    def _alloc(self, capacity: int) -> None:
        self.capacity = capacity
        self.keys = torch.full((capacity,), _EMPTY, dtype=torch.int64, device=self.device)
        self.count = torch.zeros(capacity, dtype=torch.int64, device=self.device)
        self.mass = torch.zeros(capacity, dtype=torch.float64, device=self.device)
        self.peak = torch.full((capacity,), -torch.inf, dtype=torch.float32, device=self.device)
        self._size = 0  # exact after a sync
        self._size_ub = 0  # upper bound, maintained without syncs

    def clear(self) -> None:
        self.keys.fill_(_EMPTY)
        self.count.zero_()
        self.mass.zero_()
        self.peak.fill_(-torch.inf)
        self._size = self._size_ub = 0

    @property
    def nnz(self) -> int:
        """Cells held (one sync)."""
        self._size = self._size_ub = int((self.keys != _EMPTY).sum())
        return self._size

    @property
    def cells_upper_bound(self) -> int:
        """An upper bound of :attr:`nnz` known without a sync."""
        return self._size_ub

    @property
    def nbytes(self) -> int:
        return self.capacity * (8 + 8 + 8 + 4)

    def _occupied(self):
        slots = torch.nonzero(self.keys != _EMPTY).squeeze(1)
        return self.keys[slots], self.count[slots], self.mass[slots], self.peak[slots]

    def _reserve(self, events: int) -> None:
        """Make room for ``events`` possibly new cells under the load limit."""
        if self._size_ub + events <= max(HARD_LOAD, self.max_load) * self.capacity:
            return
        need = self.nnz + events  # (one wait for the device)
        if need <= self.max_load * self.capacity:
            return
        cap = max(2 * self.capacity, _next_pow2(int(need / self.max_load) + 1))
        cells = self._occupied()
        self._alloc(cap)
        self._insert(_SRC_CELLS, cells[0].numel(), 1, a=cells[0], v=cells[3], c=cells[1],
                     m=cells[2])

    def _insert(self, source: int, events: int, k: int, a=None, v=None, f=None, c=None, m=None):
        """One launch per ``events`` (the caller has reserved room); ``a`` and ``v`` are 1-D
        (``k == 1``) or 2-D ``[rows, k]``, any strides."""
        if events == 0:
            return
        self._size_ub += events
        # small blocks: a block loops until its longest probe sequence is done
        block = 64 if _interpret() else 128
        dummy = self.keys
        a = dummy if a is None else a
        sa = (a.stride(0), a.stride(1)) if a.dim() == 2 else (a.stride(0), 0)
        sv = (v.stride(0), v.stride(1)) if v.dim() == 2 else (v.stride(0), 0)
        cap_bits = self.capacity.bit_length() - 1
        _insert_kernel[(_cdiv(events, block),)](
            self.keys, self.count, self.mass, self.peak,
            a, *sa, v, *sv, dummy if f is None else f,
            dummy if c is None else c, self.mass if m is None else m,
            events, k, self.n_features, self.n_neurons, self.capacity - 1, 64 - cap_bits,
            SOURCE=source, BLOCK=block, num_warps=4)

    # -- updates ---------------------------------------------------------------------------------
    def _check(self, t: torch.Tensor, what: str, dim: int, dtypes, contiguous=True) -> torch.Tensor:
        if not isinstance(t, torch.Tensor) or t.dim() != dim:
            raise ValueError(f"{what} must be a {dim}-D tensor")
        if t.dtype not in dtypes:
            raise ValueError(f"{what} must be {' or '.join(map(str, dtypes))}, got {t.dtype}")
        _check_device_ok(t, what)
        if t.device != self.device:
            raise ValueError(f"{what} is on {t.device}, the table on {self.device}")
        return t.contiguous() if contiguous else t

    def add(self, neurons: torch.Tensor, features: torch.Tensor, values: torch.Tensor) -> None:
        """Add events: parallel 1-D tensors (features ``-1`` are skipped), like ``add_events``."""
        neurons = self._check(neurons, "neurons", 1, (torch.int64, torch.int32))
        features = self._check(features, "features", 1, (torch.int64, torch.int32))
        values = self._check(values, "values", 1, (torch.float32,))
        e = neurons.shape[0]
        if features.shape[0] != e or values.shape[0] != e:
            raise ValueError(f"neurons, features and values must have one length, got "
                             f"{e}, {features.shape[0]}, {values.shape[0]}")
        for i in range(0, e, CHUNK_EVENTS):
            j = min(e, i + CHUNK_EVENTS)
            self._reserve(j - i)
            self._insert(_SRC_SELECTION, j - i, 1, a=_span(neurons, i, j), v=_span(values, i, j),
                         f=_span(features, i, j))

    def add_selection(self, values: torch.Tensor, indices: torch.Tensor | None,
                      features: torch.Tensor) -> None:
        """Add a selection: ``values`` ``[P, k]`` float32 with ``indices`` ``[P, k]`` (any strides, e.g.
        an expanded ``arange``; ``None``: all neurons, ``k == n_neurons``), ``features`` ``[P]``
        (``-1`` = missing)."""
        values = self._check(values, "values", 2, (torch.float32,), contiguous=False)
        features = self._check(features, "features", 1, (torch.int64, torch.int32))
        p, k = values.shape
        if indices is not None:
            indices = self._check(indices, "indices", 2, (torch.int64, torch.int32), contiguous=False)
            if tuple(indices.shape) != (p, k):
                raise ValueError(f"indices {tuple(indices.shape)} and values {(p, k)} differ in shape")
        elif k != self.n_neurons:
            raise ValueError(f"indices=None means all {self.n_neurons} neurons, got {k} values per row")
        if features.shape[0] != p:
            raise ValueError(f"features must hold {p} ids, got {features.shape[0]}")
        if p == 0 or k == 0:  # nothing selected (as the dense scatter takes it)
            return
        rows = max(1, CHUNK_EVENTS // k)
        for i in range(0, p, rows):
            j = min(p, i + rows)
            self._reserve((j - i) * k)
            src = _SRC_ALL if indices is None else _SRC_SELECTION
            self._insert(src, (j - i) * k, k, a=_span(indices, i, j), v=_span(values, i, j),
                         f=_span(features, i, j))

    def add_cells(self, keys: torch.Tensor, count: torch.Tensor, mass: torch.Tensor,
                  peak: torch.Tensor) -> None:
        """Merge cells (keys ``neuron * n_features + feature``, each at most once per call)."""
        keys = self._check(keys, "keys", 1, (torch.int64,))
        count = self._check(count, "count", 1, (torch.int64,))
        mass = self._check(mass, "mass", 1, (torch.float64,))
        peak = self._check(peak, "peak", 1, (torch.float32,))
        e = keys.shape[0]
        for i in range(0, e, CHUNK_EVENTS):
            j = min(e, i + CHUNK_EVENTS)
            self._reserve(j - i)
            self._insert(_SRC_CELLS, j - i, 1, a=_span(keys, i, j), v=_span(peak, i, j),
                         c=_span(count, i, j), m=_span(mass, i, j))

    # -- reads -----------------------------------------------------------------------------------
    def to_coo(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(keys, count, mass, peak)`` of the held cells, keys sorted ascending (the format of a
        ``SparseState`` run)."""
        keys, count, mass, peak = self._occupied()
        self._size = self._size_ub = keys.numel()
        keys, order = torch.sort(keys)
        return keys, count[order], mass[order], peak[order]

    def drain(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`to_coo`, then the table is emptied (its capacity kept for the cells to come)."""
        run = self.to_coo()
        self.clear()
        return run


# ------------------------------------------------------------------------------------------------
# SparseState targets
# ------------------------------------------------------------------------------------------------
_SCRATCH: "weakref.WeakKeyDictionary[object, TritonSparseTable]" = weakref.WeakKeyDictionary()


def sparse_accumulate(values: torch.Tensor, indices: torch.Tensor | None,
                      targets: Sequence[tuple[torch.Tensor, object]]) -> None:
    """Add the selection ``(values, indices)`` ``[P, k]`` (any strides; ``indices=None``: all
    neurons) into every ``SparseState`` target ``(features [P], state)``: into the state's own hash
    table when it keeps one (on CUDA), otherwise as one reduced run per state and call, pushed the
    way ``SparseState.add_events`` pushes its own. Events only: positions are the caller's."""
    for i, (features, state) in enumerate(targets):
        if not is_sparse_state(state):
            raise ValueError(f"target {i}: {type(state).__name__} is not a SparseState")
        if features.device != values.device or state.device != values.device:
            raise ValueError(f"target {i}: features ({features.device}), state ({state.device}) "
                             f"and selection ({values.device}) must be on one device")
        own = getattr(state, "add_selection_events", None)
        if own is not None and own(values, indices, features):  # the state's own table
            continue
        table = _SCRATCH.get(state)
        if table is None:
            table = _SCRATCH[state] = TritonSparseTable(state.n_neurons, state.n_features,
                                                        device=values.device)
        table.add_selection(values, indices, features)
        state._push(table.drain())


def scatter_events(values: torch.Tensor, indices: torch.Tensor,
                   targets: Sequence[tuple[torch.Tensor, object]]) -> None:
    """GPU counterpart of :func:`txray_kernels.reference.scatter_events` for any mix of targets: dense
    states through the scatter kernel, sparse states through hash tables, others ``add_events``."""
    dense, sparse, other = split_targets(targets)
    if dense:
        triton_dense.dense_scatter_events(values, indices, dense)
    if sparse:
        sparse_accumulate(values, indices, sparse)
    if other:
        reference.scatter_events(values, indices, other)


def select_accumulate(acts: torch.Tensor, k: int, targets: Sequence[tuple[torch.Tensor, object]],
                      *, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """The CUDA hot path for any mix of targets, same contract as
    :func:`txray_kernels.reference.select_accumulate`: dense states are fed by the fused kernel (the
    activations are read once), sparse states by hash tables, any other state by ``add_events``."""
    dense, sparse, other = split_targets(targets)
    values, indices = triton_dense.dense_select_accumulate(acts, k, dense, method=method)
    if sparse:
        sparse_accumulate(values, None if k == acts.shape[1] else indices, sparse)
    if other:
        reference.scatter_events(values, indices, other)
    return values, indices


def sparse_select_accumulate(acts: torch.Tensor, k: int,
                             targets: Sequence[tuple[torch.Tensor, object]],
                             *, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k on the GPU, then :func:`sparse_accumulate` into ``SparseState`` targets."""
    values, indices = triton_dense.select_topk(acts, k, method=method)
    for i, (features, _) in enumerate(targets):
        if not isinstance(features, torch.Tensor) or features.dim() != 1 or \
                features.shape[0] != acts.shape[0]:
            raise ValueError(f"target {i}: features must be a 1-D tensor of {acts.shape[0]} ids")
    sparse_accumulate(values, None if k == acts.shape[1] else indices, targets)
    return values, indices
